"""Cyclical learning-rate policies as Optax schedules.

Every factory here checks its concrete settings in Python and returns a closure that
does only `jax.numpy` arithmetic on the step, so the schedules work under `jax.jit`,
`jax.vmap` and `jax.grad`, and every float hyperparameter may be a traced array (one
compilation serves every value). The value at step ``t`` is the policy's formula with
``t`` = the number of updates already applied: the first update uses ``t = 0``, as in
Optax and PyTorch's ``CyclicLR``.

Steps may be int32, int64, uint32 (Flax NNX's ``Optimizer.step``) or float. With an
integer step and a whole-number cycle length the position inside the cycle is computed
in integer arithmetic, so values stay exact to float32 rounding for every step up to
``2**31 - 1``. Negative steps are treated as step 0.

Policies that Optax already has are not repeated here: a fixed rate is
`optax.constant_schedule`, step drops `optax.piecewise_constant_schedule`, staged
policies `optax.join_schedules`, SGDR `optax.sgdr_schedule` and plateau drops
`optax.contrib.reduce_on_plateau`. The paper's "exp" policy is `exponential` rather than
``optax.exponential_decay``, which raises a float32 gamma to the power t (0.99994**70000
off by ~1e-3 relative).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clr_jax import _validation as v

__all__ = [
    "cyclical",
    "decay",
    "exp_range",
    "exponential",
    "one_cycle",
    "step_size_from_epochs",
    "steps_for_cycles",
    "triangular",
    "triangular2",
]

WINDOWS = ("triangular", "welch", "hann")
SCALE_MODES = ("cycle", "iterations")
EXP_RANGE_DECAYS = ("amplitude", "both")
ANNEALS = ("cos", "linear")


def _float_dtype():
    """float32, or float64 when jax_enable_x64 is on."""
    return jax.dtypes.canonicalize_dtype(np.float64)


def _as_float(x) -> jax.Array:
    return jnp.asarray(x, dtype=_float_dtype())


def _as_step(step) -> jax.Array:
    """The step as an array, negative steps clamped to 0 (unsigned stay as they are)."""
    step = jnp.asarray(step)
    if step.dtype == jnp.bool_:
        step = step.astype(jnp.int32)
    if jnp.issubdtype(step.dtype, jnp.unsignedinteger):
        return step
    return jnp.maximum(step, jnp.zeros((), step.dtype))


def _cycle_and_position(step: jax.Array, total: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The 1-based cycle number and the offset inside it, both as floats.

    For integer steps and a whole-number cycle length the division is done in the
    step's integer type, which is exact where float32 ``t / total`` is not (t > 2**24).
    """
    t = step.astype(total.dtype)
    cycle = jnp.floor(t / total)
    position = t - cycle * total
    if jnp.issubdtype(step.dtype, jnp.integer):
        limit = float(jnp.iinfo(step.dtype).max) + 1.0
        exact = (total == jnp.round(total)) & (total >= 1) & (total < limit)
        total_int = jnp.where(exact, total, 1).astype(step.dtype)
        cycle_int = step // total_int
        position_int = step - cycle_int * total_int
        cycle = jnp.where(exact, cycle_int.astype(total.dtype), cycle)
        position = jnp.where(exact, position_int.astype(total.dtype), position)
    return cycle + 1, jnp.clip(position, 0, total)


def _wave(step: jax.Array, up: jax.Array, down: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cycle, s): the 1-based cycle and the triangular wave s in [0, 1].

    s rises linearly from 0 to 1 over ``up`` steps and falls back to 0 over ``down``.
    """
    total = up + down
    cycle, position = _cycle_and_position(step, total)
    rising = position / up
    falling = (total - position) / down
    return cycle, jnp.clip(jnp.where(position <= up, rising, falling), 0, 1)


def _apply_window(s: jax.Array, window: str) -> jax.Array:
    if window == "welch":
        return 1 - (1 - s) ** 2
    if window == "hann":
        # (1 - cos(pi s)) / 2 as sin(pi s / 2)**2: accurate near s = 0 too.
        return jnp.sin(jnp.pi / 2 * s) ** 2
    return s


def _freeze(*values):
    """Concrete hyperparameters copied at construction, so that changing the caller's
    NumPy array or tensor afterwards does not change the schedule (nor bypass the
    checks it passed); Python numbers, JAX arrays (immutable) and traced values are
    used as they are."""
    def freeze(value):
        if value is None or isinstance(value, (int, float, complex, jax.Array)):
            return value
        array = v.concrete(value)
        if array is None:
            return value
        frozen = np.array(array, copy=True)
        frozen.setflags(write=False)
        return frozen

    return tuple(freeze(x) for x in values) if len(values) != 1 else freeze(values[0])


def _fits(**values) -> None:
    """Each concrete value must be a normal number of the dtype the schedules compute in."""
    for name, value in values.items():
        if value is not None:
            v.fits(name, value, _float_dtype())


def _check_bounds(lo_name: str, lo, hi_name: str, hi) -> None:
    v.finite_nonnegative(lo_name, lo)
    v.finite_nonnegative(hi_name, hi)
    _fits(**{lo_name: lo, hi_name: hi})
    v.broadcastable(**{lo_name: lo, hi_name: hi})
    v.not_less(hi_name, hi, lo_name, lo)


def _check_step_sizes(step_size, step_size_down):
    """Both halves of a cycle must last at least one step: a cycle shorter than that is
    sampled only near its start at integer steps, so the rate would hardly move (PyTorch
    accepts such sizes and stays at base_lr)."""
    for name, size in (("step_size", step_size), ("step_size_down", step_size_down)):
        if size is not None:
            v.check(name, size, lambda x: np.isfinite(x) & (x >= 1),
                    "a number of steps >= 1 (a half cycle under one step leaves the rate "
                    "at base_lr at every integer step)")
            _fits(**{name: size})
    v.broadcastable(step_size=step_size, step_size_down=step_size_down)
    down = step_size if step_size_down is None else step_size_down
    total = v.concrete(step_size), v.concrete(down)
    if total[0] is not None and total[1] is not None:
        _fits(**{"step_size + step_size_down": total[0].astype(np.float64) + total[1]})
    return down


def cyclical(
    base_lr: jax.typing.ArrayLike,
    max_lr: jax.typing.ArrayLike,
    step_size: jax.typing.ArrayLike,
    *,
    step_size_down: jax.typing.ArrayLike | None = None,
    window: str = "triangular",
    scale_fn: Callable[[jax.Array], jax.Array] | None = None,
    scale_mode: str = "cycle",
) -> optax.Schedule:
    r"""A cyclical learning rate with any window shape and amplitude scaling.

    $$
    \eta_t = \eta_{base} + (\eta_{max} - \eta_{base})\, w(s_t)\, f(\cdot)
    $$

    where $s_t \in [0, 1]$ rises linearly over ``step_size`` steps and falls
    over ``step_size_down`` steps (Smith, 2017, with PyTorch's asymmetric cycles),
    $w$ is the window and $f$ is ``scale_fn`` evaluated at the 1-based
    cycle number (``scale_mode="cycle"``) or at the step (``"iterations"``).

    Args:
      base_lr: lower bound, reached at the start and end of every cycle.
      max_lr: upper bound, reached after ``step_size`` steps of every cycle.
      step_size: steps from the lower to the upper bound (half a cycle when the
        cycle is symmetric). The paper suggests 2 to 10 epochs' worth of steps.
      step_size_down: steps from the upper back to the lower bound; defaults to
        ``step_size``.
      window: ``"triangular"`` (linear ramps), ``"welch"`` (parabolic,
        $1 - (1 - s)^2$) or ``"hann"`` (sinusoidal,
        $(1 - \cos \pi s) / 2$).
      scale_fn: optional function of a float array scaling the amplitude
        ``max_lr - base_lr``; it must use ``jax.numpy`` only.
      scale_mode: what ``scale_fn`` receives: ``"cycle"`` (1, 2, 3, ...) or
        ``"iterations"`` (the step, as a float).

    Returns:
      An ``optax.Schedule`` mapping the step to the learning rate.

    Raises:
      ValueError: if a concrete bound is negative or not finite, ``max_lr <
        base_lr``, a step size is not positive, or ``window`` / ``scale_mode``
        is unknown.

    Examples:
      >>> import clr_jax
      >>> schedule = clr_jax.cyclical(0.0, 1.0, step_size=4, window="hann")
      >>> [round(float(schedule(t)), 4) for t in range(0, 9, 2)]
      [0.0, 0.5, 1.0, 0.5, 0.0]

    References:
      Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017.
    """
    _check_bounds("base_lr", base_lr, "max_lr", max_lr)
    step_size_down = _check_step_sizes(step_size, step_size_down)
    v.broadcastable(base_lr=base_lr, max_lr=max_lr, step_size=step_size,
                    step_size_down=step_size_down)
    v.choice("window", window, WINDOWS)
    v.choice("scale_mode", scale_mode, SCALE_MODES)
    if scale_fn is not None and not callable(scale_fn):
        raise ValueError(f"scale_fn must be a callable or None, got {scale_fn!r}.")
    base_lr, max_lr, step_size, step_size_down = _freeze(
        base_lr, max_lr, step_size, step_size_down)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        lo, hi = _as_float(base_lr), _as_float(max_lr)
        step = _as_step(step)
        cycle, s = _wave(step, _as_float(step_size), _as_float(step_size_down))
        amplitude = (hi - lo) * _apply_window(s, window)
        if scale_fn is not None:
            x = cycle if scale_mode == "cycle" else step.astype(cycle.dtype)
            amplitude = amplitude * scale_fn(x)
        return lo + amplitude

    return schedule


def triangular(
    base_lr: jax.typing.ArrayLike,
    max_lr: jax.typing.ArrayLike,
    step_size: jax.typing.ArrayLike,
    *,
    step_size_down: jax.typing.ArrayLike | None = None,
) -> optax.Schedule:
    r"""The triangular policy: linear ramps between fixed bounds.

    $$
    c = \lfloor 1 + t / (2s) \rfloor, \quad x = |t/s - 2c + 1|, \quad
    \eta_t = \eta_{base} + (\eta_{max} - \eta_{base}) \max(0, 1 - x)
    $$

    Args:
      base_lr: lower bound, at steps 0, 2s, 4s, ...
      max_lr: upper bound, at steps s, 3s, 5s, ...
      step_size: ``s``, the number of steps in half a cycle.
      step_size_down: steps of the falling half, for asymmetric cycles; defaults
        to ``step_size``.

    Returns:
      An ``optax.Schedule``; equals PyTorch's ``CyclicLR(mode="triangular")``.

    Raises:
      ValueError: on a negative or non-finite bound, ``max_lr < base_lr`` or a
        non-positive step size.

    Examples:
      >>> import clr_jax, optax
      >>> schedule = clr_jax.triangular(0.001, 0.006, step_size=2000)
      >>> [round(float(schedule(t)), 6) for t in (0, 1000, 2000, 3000, 4000)]
      [0.001, 0.0035, 0.006, 0.0035, 0.001]
      >>> optimizer = optax.sgd(schedule, momentum=0.9)

    References:
      Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017.
    """
    return cyclical(base_lr, max_lr, step_size, step_size_down=step_size_down)


def _halve_per_cycle(cycle: jax.Array) -> jax.Array:
    return jnp.exp2(1 - cycle)


def triangular2(
    base_lr: jax.typing.ArrayLike,
    max_lr: jax.typing.ArrayLike,
    step_size: jax.typing.ArrayLike,
    *,
    step_size_down: jax.typing.ArrayLike | None = None,
) -> optax.Schedule:
    r"""The triangular2 policy: the amplitude halves at the end of every cycle.

    $$
    \eta_t = \eta_{base} + (\eta_{max} - \eta_{base}) \max(0, 1 - x)
    / 2^{c - 1}
    $$

    with ``c`` and ``x`` as in `triangular`.

    Args:
      base_lr: lower bound.
      max_lr: upper bound of the first cycle; the peak of cycle ``c`` is
        ``base_lr + (max_lr - base_lr) / 2**(c - 1)``.
      step_size: steps in half a cycle.
      step_size_down: steps of the falling half; defaults to ``step_size``.

    Returns:
      An ``optax.Schedule``; equals PyTorch's ``CyclicLR(mode="triangular2")``.

    Raises:
      ValueError: as `triangular`.

    Examples:
      >>> import clr_jax
      >>> schedule = clr_jax.triangular2(1.0, 5.0, step_size=10)
      >>> [float(schedule(t)) for t in (0, 10, 20, 30, 50)]
      [1.0, 5.0, 1.0, 3.0, 2.0]
    """
    return cyclical(
        base_lr, max_lr, step_size, step_size_down=step_size_down, scale_fn=_halve_per_cycle
    )


def _log_gamma(gamma, log_gamma) -> jax.Array:
    """log(gamma) from exactly one of ``gamma`` and ``log_gamma``, checked.

    gamma close to 1 (the paper's 0.99994) loses three digits when rounded to float32
    before the logarithm; a concrete gamma's log is therefore taken in float64 on the
    host, which keeps gamma**t accurate to ~1e-7 times |t log gamma|. A traced value
    keeps that accuracy only when given as ``log_gamma``.
    """
    if (gamma is None) == (log_gamma is None):
        raise ValueError(
            "give gamma (the decay per step) or log_gamma (its natural log), not both "
            f"or neither; got gamma={gamma!r} and log_gamma={log_gamma!r}."
        )
    if log_gamma is not None:
        v.check("log_gamma", log_gamma, lambda g: np.isfinite(g) & (g <= 0),
                "a finite number <= 0 (gamma in (0, 1])")
        _fits(log_gamma=log_gamma)
        return _as_float(log_gamma)
    v.check("gamma", gamma, lambda g: (g > 0) & (g <= 1), "in (0, 1]")
    array = v.concrete(gamma)
    if array is None:
        return jnp.log(_as_float(gamma))
    with np.errstate(divide="ignore"):
        return _as_float(np.log(array.astype(np.float64)))


def exp_range(
    base_lr: jax.typing.ArrayLike,
    max_lr: jax.typing.ArrayLike,
    step_size: jax.typing.ArrayLike,
    gamma: jax.typing.ArrayLike | None = None,
    *,
    log_gamma: jax.typing.ArrayLike | None = None,
    step_size_down: jax.typing.ArrayLike | None = None,
    decay: str = "amplitude",
) -> optax.Schedule:
    r"""The exp_range policy: the cycle's bounds decay as ``gamma**t``.

    With $s_t$ the triangular wave of `triangular`:

    - ``decay="amplitude"`` (the Keras code the paper links, TF Addons, PyTorch):
      $\eta_t = \eta_{base} + (\eta_{max} - \eta_{base})\, s_t\, \gamma^t$
    - ``decay="both"`` (the paper's literal wording, "each boundary value declines"):
      $\eta_t = \gamma^t \left(\eta_{base} + (\eta_{max} - \eta_{base})\, s_t\right)$

    Args:
      base_lr: lower bound at step 0.
      max_lr: upper bound at step 0.
      step_size: steps in half a cycle.
      gamma: decay per step, in (0, 1]. The paper uses 0.99994 on CIFAR-10. A
        concrete gamma is turned into ``log(gamma)`` in float64, so values stay
        accurate for gamma close to 1; a traced float32 gamma is rounded first
        (0.99994 becomes 0.9999399781), which moves ``gamma**70000`` by ~1e-3
        relative.
      log_gamma: ``log(gamma)`` instead of ``gamma`` (<= 0), for a traced decay
        that must keep full precision (a sweep over gamma passes it this way).
      step_size_down: steps of the falling half; defaults to ``step_size``.
      decay: ``"amplitude"`` or ``"both"``.

    Returns:
      An ``optax.Schedule``; with ``decay="amplitude"`` it equals PyTorch's
      ``CyclicLR(mode="exp_range")``.

    Raises:
      ValueError: as `triangular`, or if gamma is outside (0, 1], both or neither of
        ``gamma`` and ``log_gamma`` are given, or ``decay`` is unknown.

    Examples:
      >>> import clr_jax
      >>> schedule = clr_jax.exp_range(1.0, 3.0, step_size=1, gamma=0.5)
      >>> [float(schedule(t)) for t in (0, 1, 2, 3)]
      [1.0, 2.0, 1.0, 1.25]
      >>> both = clr_jax.exp_range(1.0, 3.0, step_size=1, gamma=0.5, decay="both")
      >>> [float(both(t)) for t in (0, 1, 2, 3)]
      [1.0, 1.5, 0.25, 0.375]
    """
    v.choice("decay", decay, EXP_RANGE_DECAYS)
    log_gamma = _log_gamma(gamma, log_gamma)

    def gamma_power(t: jax.Array) -> jax.Array:
        return jnp.exp(t * log_gamma)

    if decay == "amplitude":
        return cyclical(base_lr, max_lr, step_size, step_size_down=step_size_down,
                        scale_fn=gamma_power, scale_mode="iterations")
    inner = cyclical(base_lr, max_lr, step_size, step_size_down=step_size_down)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _as_step(step).astype(_float_dtype())
        return gamma_power(t) * inner(step)

    return schedule


def exponential(
    base_lr: jax.typing.ArrayLike,
    gamma: jax.typing.ArrayLike | None = None,
    *,
    log_gamma: jax.typing.ArrayLike | None = None,
) -> optax.Schedule:
    r"""The paper's "exp" policy: an exponential fall from ``base_lr``.

    $$
    \eta_t = \eta_{base}\, \gamma^t
    $$

    Unlike ``optax.exponential_decay``, which raises a float32 gamma to the power t,
    the logarithm of a concrete gamma is taken in float64: 0.99994**70000 stays
    accurate to ~1e-6 instead of ~1e-3.

    Args:
      base_lr: the rate at step 0.
      gamma: decay per step, in (0, 1]; the paper's CIFAR-10 runs use 0.99994.
      log_gamma: ``log(gamma)`` instead of ``gamma`` (<= 0), for a traced decay
        that must keep full precision.

    Returns:
      An ``optax.Schedule``.

    Raises:
      ValueError: on a negative or non-finite ``base_lr``, gamma outside (0, 1], or
        both or neither of ``gamma`` and ``log_gamma``.

    Examples:
      >>> import clr_jax
      >>> schedule = clr_jax.exponential(0.001, gamma=0.5)
      >>> [round(float(schedule(t)), 9) for t in (0, 1, 3)]
      [0.001, 0.0005, 0.000125]
    """
    v.finite_nonnegative("base_lr", base_lr)
    _fits(base_lr=base_lr)
    log_gamma = _log_gamma(gamma, log_gamma)
    v.broadcastable(base_lr=base_lr, gamma=gamma, log_gamma=log_gamma)
    base_lr = _freeze(base_lr)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _as_step(step).astype(_float_dtype())
        return _as_float(base_lr) * jnp.exp(t * log_gamma)

    return schedule


def decay(
    max_lr: jax.typing.ArrayLike,
    base_lr: jax.typing.ArrayLike,
    decay_steps: jax.typing.ArrayLike,
) -> optax.Schedule:
    r"""The paper's "decay" policy: a linear fall from ``max_lr`` to ``base_lr``.

    $$
    \eta_t = \eta_{max} (1 - f) + \eta_{base} f, \quad f = \min(t / N, 1)
    $$

    It gives the same values as ``optax.linear_schedule(max_lr, base_lr, N)``, but
    ``decay_steps`` may be traced (so a sweep can vmap over it) and bad values raise
    instead of falling back to a constant.

    Args:
      max_lr: the rate at step 0.
      base_lr: the rate from step ``decay_steps`` on.
      decay_steps: ``N``, the length of the fall.

    Returns:
      An ``optax.Schedule``.

    Raises:
      ValueError: on a negative or non-finite rate, ``max_lr < base_lr`` or a
        non-positive ``decay_steps``.

    Examples:
      >>> import clr_jax
      >>> schedule = clr_jax.decay(0.007, 0.001, decay_steps=4000)
      >>> [round(float(schedule(t)), 6) for t in (0, 2000, 4000, 25000)]
      [0.007, 0.004, 0.001, 0.001]
    """
    _check_bounds("base_lr", base_lr, "max_lr", max_lr)
    v.finite_positive("decay_steps", decay_steps)
    _fits(decay_steps=decay_steps)
    v.broadcastable(max_lr=max_lr, base_lr=base_lr, decay_steps=decay_steps)
    max_lr, base_lr, decay_steps = _freeze(max_lr, base_lr, decay_steps)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = _as_step(step).astype(_float_dtype())
        n = _as_float(decay_steps)
        done, left = jnp.clip(t / n, 0, 1), jnp.clip((n - t) / n, 0, 1)
        return _as_float(max_lr) * left + _as_float(base_lr) * done

    return schedule


def _anneal(start, end, done, left, anneal: str):
    """Interpolates from start to end; ``done`` and ``left`` = 1 - done are both computed
    from the step directly, so values near either end keep full relative precision."""
    if anneal == "cos":
        # (1 + cos(pi * done)) / 2 written as sin(pi / 2 * left)**2: no cancellation.
        return end + (start - end) * jnp.sin(jnp.pi / 2 * left) ** 2
    return start * left + end * done


def one_cycle(
    max_lr: jax.typing.ArrayLike,
    total_steps: jax.typing.ArrayLike,
    *,
    pct_start: jax.typing.ArrayLike = 0.3,
    anneal: str = "cos",
    div_factor: jax.typing.ArrayLike = 25.0,
    final_div_factor: jax.typing.ArrayLike = 1e4,
    three_phase: bool = False,
) -> optax.Schedule:
    r"""The 1cycle policy with the phase boundaries of PyTorch's ``OneCycleLR``.

    The rate starts at ``max_lr / div_factor``, rises to ``max_lr`` at step
    ``pct_start * total_steps - 1``, then anneals to ``max_lr / (div_factor *
    final_div_factor)`` at step ``total_steps - 1`` and stays there. With
    ``three_phase=True`` it first falls back to the initial rate at step
    ``2 * pct_start * total_steps - 2`` and anneals to the final rate from there.

    Args:
      max_lr: the peak rate.
      total_steps: the length of the cycle in steps.
      pct_start: fraction of the steps spent rising, in (0, 1); below 0.5 with
        ``three_phase``.
      anneal: ``"cos"`` (cosine) or ``"linear"`` interpolation within a phase.
      div_factor: initial rate = ``max_lr / div_factor``.
      final_div_factor: final rate = initial rate / ``final_div_factor``.
      three_phase: use the three-phase variant.

    Returns:
      An ``optax.Schedule`` that equals ``OneCycleLR`` for steps 0 to
      ``total_steps - 1`` (``optax.cosine_onecycle_schedule`` places its phase
      boundaries differently).

    Raises:
      ValueError: on a negative or non-finite ``max_lr``, a non-positive
        ``total_steps``, ``div_factor`` or ``final_div_factor``, ``pct_start``
        outside (0, 1) or an unknown ``anneal``.

    Examples:
      >>> import clr_jax
      >>> schedule = clr_jax.one_cycle(1.0, total_steps=11, pct_start=0.5,
      ...                              anneal="linear", div_factor=10.0,
      ...                              final_div_factor=1.0)
      >>> [round(float(schedule(t)), 4) for t in (0, 2, 4, 7, 10, 20)]
      [0.1, 0.5, 0.9, 0.5909, 0.1, 0.1]
    """
    v.finite_nonnegative("max_lr", max_lr)
    v.finite_positive("total_steps", total_steps)
    if not isinstance(three_phase, (bool, np.bool_)):
        raise ValueError(f"three_phase must be True or False, got {three_phase!r}.")
    three_phase = bool(three_phase)
    v.check("pct_start", pct_start, lambda p: (p > 0) & (p < 1), "in (0, 1)")
    if three_phase:  # the fall back to the initial rate must end before the end
        v.check("pct_start", pct_start, lambda p: p < 0.5, "< 0.5 with three_phase=True")
    v.finite_positive("div_factor", div_factor)
    v.finite_positive("final_div_factor", final_div_factor)
    _fits(max_lr=max_lr, total_steps=total_steps, div_factor=div_factor,
          final_div_factor=final_div_factor)
    v.broadcastable(max_lr=max_lr, total_steps=total_steps, pct_start=pct_start,
                    div_factor=div_factor, final_div_factor=final_div_factor)
    concrete = [v.concrete(x) for x in (max_lr, div_factor, final_div_factor)]
    if all(x is not None for x in concrete):
        peak, div, final_div = (x.astype(np.float64) for x in concrete)
        with np.errstate(over="ignore", under="ignore", divide="ignore"):
            _fits(**{"max_lr / div_factor (the initial rate)": peak / div,
                     "max_lr / (div_factor * final_div_factor) (the final rate)":
                         peak / div / final_div})
    v.choice("anneal", anneal, ANNEALS)

    max_lr, total_steps, pct_start, div_factor, final_div_factor = _freeze(
        max_lr, total_steps, pct_start, div_factor, final_div_factor)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        peak = _as_float(max_lr)
        initial = peak / _as_float(div_factor)
        final = initial / _as_float(final_div_factor)
        return _one_cycle_phases(step, total_steps, pct_start, three_phase, anneal,
                                 initial, peak, final)

    return schedule


def _one_cycle_phases(step, total_steps, pct_start, three_phase: bool, anneal: str,
                      first, turn, last) -> jax.Array:
    """OneCycleLR's phases: ``first`` -> ``turn`` by step ``pct_start * total - 1``, then
    to ``last`` at step ``total - 1``; with ``three_phase``, ``turn`` -> ``first`` by step
    ``2 pct_start total - 2`` and then ``first`` -> ``last``."""
    t = _as_step(step).astype(_float_dtype())
    total, pct = _as_float(total_steps), _as_float(pct_start)
    rise_end = pct * total - 1
    if three_phase:
        fall_end = 2 * pct * total - 2
        phases = [(0.0, rise_end, first, turn), (rise_end, fall_end, turn, first),
                  (fall_end, total - 1, first, last)]
    else:
        phases = [(0.0, rise_end, first, turn), (rise_end, total - 1, turn, last)]
    value = None
    # The first phase whose end is >= t wins, else the last (OneCycleLR's rule).
    for index, (start, end, begin_value, end_value) in reversed(list(enumerate(phases))):
        length = end - start
        safe_length = jnp.where(length > 0, length, 1)
        done = jnp.clip(jnp.where(length > 0, (t - start) / safe_length, 1), 0, 1)
        left = jnp.clip(jnp.where(length > 0, (end - t) / safe_length, 0), 0, 1)
        phase_value = _anneal(begin_value, end_value, done, left, anneal)
        value = phase_value if index == len(phases) - 1 \
            else jnp.where(t <= end, phase_value, value)
    return value


def step_size_from_epochs(
    epochs: float, num_examples: int, batch_size: int, *, drop_remainder: bool = True
) -> int:
    """Converts a step size given in epochs to steps.

    The paper's advice is a step size of 2 to 10 epochs; with 50,000 training
    images and batch 100 an epoch is 500 steps.

    Args:
      epochs: the length in epochs (may be fractional).
      num_examples: training examples per epoch.
      batch_size: examples per step.
      drop_remainder: whether the last partial batch of an epoch is dropped
        (``num_examples // batch_size`` steps per epoch) or kept (rounded up).

    Returns:
      The number of steps, rounded to the nearest integer.

    Raises:
      ValueError: if an argument is not positive, or the result is under 1 step.

    Examples:
      >>> import clr_jax
      >>> clr_jax.step_size_from_epochs(4, num_examples=50_000, batch_size=100)
      2000
    """
    num_examples = v.positive_int("num_examples", num_examples)
    batch_size = v.positive_int("batch_size", batch_size)
    v.finite_positive("epochs", epochs)
    if drop_remainder:
        per_epoch = num_examples // batch_size
    else:
        per_epoch = -(-num_examples // batch_size)
    if per_epoch < 1:
        raise ValueError(
            f"batch_size={batch_size} is larger than num_examples={num_examples}: "
            "an epoch has no full batch; lower batch_size or pass drop_remainder=False."
        )
    steps = round(float(epochs) * per_epoch)
    if steps < 1:
        raise ValueError(
            f"epochs={epochs} is under one step ({per_epoch} steps per epoch); "
            "use a longer step size."
        )
    return steps


def steps_for_cycles(
    num_cycles: float, step_size: float, *, step_size_down: float | None = None
) -> int:
    """The number of steps in ``num_cycles`` whole cycles.

    The paper advises stopping training at the end of a cycle (where the rate is at
    its minimum), after at least 3 and preferably 4 or more cycles.

    Args:
      num_cycles: number of cycles; 0.5 is the rising half of one cycle (the shape of
        a linear range test).
      step_size: steps in the rising half of a cycle.
      step_size_down: steps in the falling half; defaults to ``step_size``.

    Returns:
      ``num_cycles * (step_size + step_size_down)`` as an int.

    Raises:
      ValueError: if an argument is not positive or the result is not a whole
        number of steps.

    Examples:
      >>> import clr_jax
      >>> clr_jax.steps_for_cycles(4, step_size=2000)
      16000
    """
    v.finite_positive("num_cycles", num_cycles)
    step_size_down = _check_step_sizes(step_size, step_size_down)
    total = float(num_cycles) * (float(step_size) + float(step_size_down))
    if not math.isclose(total, round(total), rel_tol=0, abs_tol=1e-9):
        raise ValueError(
            f"num_cycles={num_cycles} cycles of {step_size}+{step_size_down} steps is "
            f"{total} steps, not a whole number; choose whole-step cycle lengths."
        )
    return round(total)
