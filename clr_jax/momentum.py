"""Scheduling the momentum of any Optax optimizer, next to its learning rate."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clr_jax import _validation as v
from clr_jax.schedules import (ANNEALS, SCALE_MODES, _as_float, _as_step,
                               _check_step_sizes, _fits, _freeze, _halve_per_cycle,
                               _log_gamma, _one_cycle_phases, _wave)

__all__ = ["cyclical_momentum", "one_cycle_momentum", "with_cyclical_momentum"]

# The name each optimizer family gives its momentum: SGD-style optimizers call it
# "momentum", Adam-style ones call the first-moment decay "b1".
_MOMENTUM_NAMES = ("momentum", "b1")


def _momentum_name(optimizer: Callable[..., optax.GradientTransformation]) -> str:
    try:
        parameters = inspect.signature(optimizer).parameters
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"cannot read the arguments of optimizer {optimizer!r}; pass "
            "hyperparam='...' naming its momentum argument."
        ) from error
    for name in _MOMENTUM_NAMES:
        if name in parameters:
            return name
    raise ValueError(
        f"optimizer {getattr(optimizer, '__name__', optimizer)!r} has no 'momentum' or "
        "'b1' argument; pass hyperparam='...' naming the argument to schedule."
    )


def with_cyclical_momentum(
    optimizer: Callable[..., optax.GradientTransformation],
    *,
    learning_rate: optax.ScalarOrSchedule,
    momentum: optax.ScalarOrSchedule,
    hyperparam: str | None = None,
    **kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
    """Builds an Optax optimizer whose learning rate and momentum both follow schedules.

    A thin layer over ``optax.inject_hyperparams`` that finds the optimizer's momentum
    argument for you: ``momentum`` for ``optax.sgd`` (and any optimizer that names it
    so), ``b1`` for ``optax.adam``, ``optax.adamw``, ``optax.nadam``, ``optax.lamb``
    and the rest of the Adam family. The values used by the latest update are in the
    optimizer state, ``state.hyperparams["learning_rate"]`` and
    ``state.hyperparams[name]``.

    Args:
      optimizer: an Optax optimizer factory such as ``optax.sgd`` or ``optax.adam``
        (the function, not a built transformation).
      learning_rate: a float or a schedule (e.g. `clr_jax.triangular`).
      momentum: a float or a schedule (e.g. `clr_jax.cyclical_momentum`).
      hyperparam: the name of the momentum argument, when the optimizer calls it
        neither ``momentum`` nor ``b1``.
      **kwargs: other arguments of ``optimizer``, passed on unchanged.

    Returns:
      The optimizer, as ``optax.inject_hyperparams(optimizer)(...)`` returns it.

    Raises:
      ValueError: if the optimizer has no momentum argument and ``hyperparam`` is
        not given, or ``hyperparam`` is not one of its arguments.

    Examples:
      >>> import clr_jax, jax.numpy as jnp, optax
      >>> lr = clr_jax.triangular(0.1, 1.0, step_size=10)
      >>> mom = clr_jax.cyclical_momentum(0.85, 0.95, step_size=10)
      >>> tx = clr_jax.with_cyclical_momentum(optax.sgd, learning_rate=lr, momentum=mom)
      >>> state = tx.init(jnp.zeros(3))
      >>> for _ in range(11):  # the 11th update uses t = 10, the rate's peak
      ...     _, state = tx.update(jnp.ones(3), state)
      >>> round(float(state.hyperparams["learning_rate"]), 4)
      1.0
      >>> round(float(state.hyperparams["momentum"]), 4)
      0.85
    """
    name = hyperparam if hyperparam is not None else _momentum_name(optimizer)
    if hyperparam is not None:
        try:
            parameters = inspect.signature(optimizer).parameters
        except (TypeError, ValueError):
            parameters = None
        accepts_any = parameters is not None and any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
        )
        if parameters is not None and name not in parameters and not accepts_any:
            raise ValueError(
                f"hyperparam={name!r} is not an argument of optimizer "
                f"{getattr(optimizer, '__name__', optimizer)!r}; its arguments are "
                f"{', '.join(parameters)}."
            )
    if name in kwargs:
        raise ValueError(f"{name!r} is given twice: once as momentum and once in kwargs.")
    return optax.inject_hyperparams(optimizer)(
        learning_rate=learning_rate, **{name: momentum}, **kwargs
    )


def one_cycle_momentum(
    total_steps: jax.typing.ArrayLike,
    *,
    base_momentum: jax.typing.ArrayLike = 0.85,
    max_momentum: jax.typing.ArrayLike = 0.95,
    pct_start: jax.typing.ArrayLike = 0.3,
    anneal: str = "cos",
    three_phase: bool = False,
) -> optax.Schedule:
    r"""The momentum of the 1cycle policy, mirrored to `one_cycle`'s rate, as PyTorch's
    ``OneCycleLR(cycle_momentum=True)`` (and fastai's ``fit_one_cycle``) cycles it.

    The momentum starts at ``max_momentum``, falls to ``base_momentum`` while the rate
    rises (by step ``pct_start * total_steps - 1``) and rises back to ``max_momentum``
    while the rate anneals (at step ``total_steps - 1``). With ``three_phase=True`` it
    rises back while the rate falls back to its initial value and stays at
    ``max_momentum`` in the last phase. Give it the ``total_steps``, ``pct_start``,
    ``anneal`` and ``three_phase`` of the rate's `one_cycle`.

    Args:
      total_steps: the length of the cycle in steps.
      base_momentum: the momentum at the rate's peak.
      max_momentum: the momentum at the start and the end.
      pct_start: fraction of the steps the rate spends rising, in (0, 1); below 0.5
        with ``three_phase``.
      anneal: ``"cos"`` or ``"linear"`` interpolation within a phase.
      three_phase: the three-phase variant.

    Returns:
      An ``optax.Schedule``, for `clr_jax.with_cyclical_momentum`.

    Raises:
      ValueError: on a momentum outside [0, 1], ``max_momentum < base_momentum``, a
        non-positive ``total_steps``, ``pct_start`` outside its range or an unknown
        ``anneal``.

    Examples:
      >>> import clr_jax
      >>> momentum = clr_jax.one_cycle_momentum(100, anneal="linear", pct_start=0.5)
      >>> [round(float(momentum(t)), 4) for t in (0, 49, 99)]
      [0.95, 0.85, 0.95]
    """
    _check_momenta(base_momentum, max_momentum)
    v.finite_positive("total_steps", total_steps)
    _fits(total_steps=total_steps)
    if not isinstance(three_phase, (bool, np.bool_)):
        raise ValueError(f"three_phase must be True or False, got {three_phase!r}.")
    three_phase = bool(three_phase)
    v.check("pct_start", pct_start, lambda p: (p > 0) & (p < 1), "in (0, 1)")
    if three_phase:
        v.check("pct_start", pct_start, lambda p: p < 0.5, "< 0.5 with three_phase=True")
    v.choice("anneal", anneal, ANNEALS)
    v.broadcastable(base_momentum=base_momentum, max_momentum=max_momentum,
                    total_steps=total_steps, pct_start=pct_start)
    base_momentum, max_momentum, total_steps, pct_start = _freeze(
        base_momentum, max_momentum, total_steps, pct_start)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        hi, lo = _as_float(max_momentum), _as_float(base_momentum)
        return _one_cycle_phases(step, total_steps, pct_start, three_phase, anneal, hi, lo, hi)

    return schedule


def _check_momenta(base_momentum, max_momentum) -> None:
    for name, value in (("base_momentum", base_momentum), ("max_momentum", max_momentum)):
        v.check(name, value, lambda m: (m >= 0) & (m <= 1), "in [0, 1]")
    v.broadcastable(base_momentum=base_momentum, max_momentum=max_momentum)
    v.not_less("max_momentum", max_momentum, "base_momentum", base_momentum)


MOMENTUM_MODES = ("triangular", "triangular2", "exp_range")


def cyclical_momentum(
    base_momentum: jax.typing.ArrayLike,
    max_momentum: jax.typing.ArrayLike,
    step_size: jax.typing.ArrayLike,
    *,
    step_size_down: jax.typing.ArrayLike | None = None,
    mode: str = "triangular",
    gamma: jax.typing.ArrayLike | None = None,
    scale_fn: Callable[[jax.Array], jax.Array] | None = None,
    scale_mode: str = "cycle",
) -> optax.Schedule:
    r"""A momentum that cycles opposite to a cyclical learning rate.

    $$
    \mu_t = \mu_{max} - (\mu_{max} - \mu_{base})\, s_t\, f(\cdot)
    $$

    so momentum is at ``max_momentum`` where the rate is at its lower bound and swings
    down toward ``base_momentum`` as the rate rises (as PyTorch's ``CyclicLR`` cycles
    it). The swing is scaled by the same ``f`` as the rate's amplitude: pass the rate's
    policy as ``mode`` (``"triangular2"`` halves the swing every cycle, ``"exp_range"``
    multiplies it by ``gamma**t``) or any ``scale_fn``, exactly as PyTorch applies its
    ``scale_fn`` to both. Use the same step sizes (and mode) as the learning-rate
    schedule, and pass it to an optimizer with `clr_jax.with_cyclical_momentum`.

    Args:
      base_momentum: momentum at the learning rate's (first) peak.
      max_momentum: momentum at the learning rate's trough.
      step_size: steps in the rising half of the learning-rate cycle.
      step_size_down: steps in the falling half; defaults to ``step_size``.
      mode: the rate's policy: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
      gamma: the decay per step of ``"exp_range"`` (PyTorch's amplitude reading).
      scale_fn: a function of a float array scaling the swing, instead of ``mode``;
        it must use ``jax.numpy`` only.
      scale_mode: what ``scale_fn`` receives: the 1-based ``"cycle"`` or the step
        (``"iterations"``).

    Returns:
      An ``optax.Schedule``.

    Raises:
      ValueError: on a momentum outside [0, 1], ``max_momentum < base_momentum``, a
        step size under one step, an unknown ``mode`` or ``scale_mode``, ``gamma``
        missing for ``"exp_range"`` (or given for another mode), or both ``mode`` and
        ``scale_fn``.

    Examples:
      >>> import clr_jax
      >>> momentum = clr_jax.cyclical_momentum(0.85, 0.95, step_size=100)
      >>> [round(float(momentum(t)), 4) for t in (0, 50, 100, 200)]
      [0.95, 0.9, 0.85, 0.95]
      >>> halving = clr_jax.cyclical_momentum(0.85, 0.95, step_size=100, mode="triangular2")
      >>> [round(float(halving(t)), 4) for t in (100, 300, 500)]
      [0.85, 0.9, 0.925]
    """
    _check_momenta(base_momentum, max_momentum)
    step_size_down = _check_step_sizes(step_size, step_size_down)
    v.choice("mode", mode, MOMENTUM_MODES)
    v.choice("scale_mode", scale_mode, SCALE_MODES)
    if scale_fn is not None and not callable(scale_fn):
        raise ValueError(f"scale_fn must be a callable or None, got {scale_fn!r}.")
    if scale_fn is not None and mode != "triangular":
        raise ValueError(f"give mode={mode!r} or a scale_fn, not both.")
    if (gamma is not None) != (mode == "exp_range"):
        raise ValueError("gamma goes with mode='exp_range' (and only there); got "
                         f"mode={mode!r} and gamma={gamma!r}.")
    if mode == "triangular2":
        scale_fn, scale_mode = _halve_per_cycle, "cycle"
    elif mode == "exp_range":
        log_gamma = _log_gamma(gamma, None)
        scale_fn, scale_mode = (lambda t: jnp.exp(t * log_gamma)), "iterations"
    base_momentum, max_momentum, step_size, step_size_down = _freeze(
        base_momentum, max_momentum, step_size, step_size_down)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        step = _as_step(step)
        cycle, s = _wave(step, _as_float(step_size), _as_float(step_size_down))
        hi = _as_float(max_momentum)
        swing = (hi - _as_float(base_momentum)) * s
        if scale_fn is not None:
            x = cycle if scale_mode == "cycle" else step.astype(cycle.dtype)
            swing = swing * scale_fn(x)
        return hi - swing

    return schedule
