"""The LR range test: a short run with a rising learning rate, and parallel fixed-rate runs.

`range_test` trains while the rate rises from ``min_lr`` to ``max_lr`` (the paper's
linear ramp, or the exponential ramp of later practice), recording the loss, a
bias-corrected smoothed loss and optional evaluation metrics, and stops when the loss
diverges. Steps between evaluations run inside one compiled ``lax.scan``.

`parallel_range_test` trains K copies at K fixed rates at once under ``jax.vmap``
(optionally several seeds each) and reports each one's final loss and metrics.

Bounds are read from either result with `clr_jax.suggest_bounds`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clr_jax import _backend
from clr_jax import _validation as v
from clr_jax._io import float_array, jsonable, write_json

__all__ = [
    "ParallelRangeTestResult",
    "RangeTestResult",
    "parallel_range_test",
    "range_test",
]

MODES = ("linear", "exponential")
_REASONS = {0: None, 1: "diverged", 2: "non-finite loss"}


class _JsonResult:
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN written as None)."""
        return jsonable(dataclasses.asdict(self))

    def save_json(self, path: str | os.PathLike) -> None:
        """Writes `to_dict` as JSON, atomically."""
        write_json(path, self.to_dict())


@dataclasses.dataclass(frozen=True)
class RangeTestResult(_JsonResult):
    """What `range_test` measured. Arrays hold one entry per step taken.

    Attributes:
      learning_rates: the rate used by each update.
      losses: the raw training loss at each update (NaN where it was not finite).
      smoothed_losses: the bias-corrected exponential moving average of the loss.
      eval_steps: the steps (updates applied) at which ``eval_fn`` ran.
      eval_learning_rates: the rate of the last update before each evaluation.
      eval_metrics: each metric's values at ``eval_steps``.
      stop_reason: None if all ``num_steps`` ran, else ``"diverged"`` (smoothed loss
        above ``diverge_threshold`` times its best) or ``"non-finite loss"``.
      stop_step: the step at which the test stopped, or None.
      mode: ``"linear"`` or ``"exponential"``.
      min_lr: the first rate of the ramp.
      max_lr: the last rate of the ramp.
      num_steps: the steps the ramp was planned for.
      smoothing: the factor of the smoothed loss's moving average.
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    eval_steps: np.ndarray
    eval_learning_rates: np.ndarray
    eval_metrics: dict[str, np.ndarray]
    stop_reason: str | None
    stop_step: int | None
    mode: str
    min_lr: float
    max_lr: float
    num_steps: int
    smoothing: float = 0.98

    @property
    def stopped_early(self) -> bool:
        """Whether the test stopped before ``num_steps``."""
        return self.stop_reason is not None


    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RangeTestResult:
        """The inverse of `to_dict`."""
        data = dict(data)
        for key in ("learning_rates", "losses", "smoothed_losses", "eval_steps",
                    "eval_learning_rates"):
            data[key] = float_array(data[key])
        data["eval_metrics"] = {k: float_array(x) for k, x in data["eval_metrics"].items()}
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class ParallelRangeTestResult(_JsonResult):
    """What `parallel_range_test` measured; S seeds by K learning rates.

    Attributes:
      learning_rates: the K fixed rates, shape (K,).
      seeds: the S seeds, shape (S,).
      losses: every member's training loss at every step, shape (S, K, T).
      final_losses: the mean loss over each member's last ``tail_fraction`` of
        steps, shape (S, K); NaN for members whose loss turned non-finite.
      eval_metrics: each metric of ``eval_fn`` at the end, shape (S, K).
      num_steps: T, the steps each member trained.
      diverge_threshold: a member whose final loss exceeds this multiple of its
        first loss counts as diverged.
    """

    learning_rates: np.ndarray
    seeds: np.ndarray
    losses: np.ndarray
    final_losses: np.ndarray
    eval_metrics: dict[str, np.ndarray]
    num_steps: int
    diverge_threshold: float = 4.0

    @property
    def diverged(self) -> np.ndarray:
        """(S, K) booleans: members whose loss became non-finite or grew past
        ``diverge_threshold`` times their first loss."""
        with np.errstate(invalid="ignore"):
            grew = self.final_losses > self.diverge_threshold * self.losses[..., 0]
        return ~np.isfinite(self.final_losses) | grew


    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParallelRangeTestResult:
        """The inverse of `to_dict`."""
        data = dict(data)
        for key in ("learning_rates", "seeds", "losses", "final_losses"):
            data[key] = float_array(data[key])
        data["seeds"] = data["seeds"].astype(np.int64)
        data["eval_metrics"] = {k: float_array(x) for k, x in data["eval_metrics"].items()}
        return cls(**data)

    def sorted_by_rate(self) -> ParallelRangeTestResult:
        """The same result with the rates (and every per-rate array) in rising order."""
        order = np.argsort(self.learning_rates)
        return dataclasses.replace(
            self, learning_rates=self.learning_rates[order], losses=self.losses[:, order],
            final_losses=self.final_losses[:, order],
            eval_metrics={k: x[:, order] for k, x in self.eval_metrics.items()})


class _Carry(NamedTuple):
    """What the range test's steps carry from one to the next."""

    params: Any
    opt_state: Any
    average: jax.Array  # the loss's moving average, before bias correction
    best: jax.Array  # the lowest smoothed loss so far
    stopped: jax.Array
    step: jax.Array  # updates applied


class _Settings(NamedTuple):
    """The range test's numbers, passed to the compiled steps as arrays so that one
    compiled program serves every ramp, smoothing and threshold."""

    min_lr: jax.Array
    max_lr: jax.Array
    span: jax.Array  # num_steps - 1: the ramp reaches max_lr there
    beta: jax.Array
    threshold: jax.Array
    num_steps: jax.Array
    key: jax.Array

    @classmethod
    def of(cls, min_lr, max_lr, num_steps, smoothing=0.98, diverge_threshold=4.0, seed=0):
        f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        return cls(f32(min_lr), f32(max_lr), f32(max(num_steps - 1, 1)), f32(smoothing),
                   f32(diverge_threshold), jnp.int32(num_steps), jax.random.key(seed))


def _ramp_value(step, settings: _Settings, mode: str) -> jax.Array:
    frac = jnp.clip(jnp.asarray(step).astype(jnp.float32) / settings.span, 0, 1)
    lo, hi = settings.min_lr, settings.max_lr
    if mode == "exponential":
        return lo * (hi / lo) ** frac
    return lo + (hi - lo) * frac


def ramp(min_lr: float, max_lr: float, num_steps: int, mode: str = "linear") -> optax.Schedule:
    """The range test's rate: ``min_lr`` at step 0 to ``max_lr`` at step num_steps - 1."""
    settings = _Settings.of(min_lr, max_lr, num_steps)
    return lambda step: _ramp_value(step, settings, mode)


def _takes_key(loss_fn: Callable) -> bool:
    try:
        return "key" in inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):
        return False


def _leading_length(batches) -> int | None:
    """The step axis length of a pytree of arrays, or None for an iterable of batches.

    Iterators (generators, ``iter(...)``, data loaders) and lists are sequences of
    batches; dicts, tuples and arrays are pytrees of stacked batches.
    """
    if isinstance(batches, (Iterator, list)) or (
            isinstance(batches, Iterable) and not isinstance(batches, (tuple, dict))
            and not hasattr(batches, "shape")):
        return None
    leaves = jax.tree.leaves(batches)
    if not leaves or not all(isinstance(x, (np.ndarray, jax.Array)) for x in leaves):
        return None
    lengths = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(lengths) != 1 or None in lengths:
        raise ValueError(
            "batches must be arrays sharing one leading step axis, got leading sizes "
            f"{sorted(str(n) for n in lengths)}."
        )
    return lengths.pop()


def _take(iterator: Iterator, count: int, done: int, num_steps: int) -> list:
    """The next ``count`` batches of ``iterator``, ``done`` having been taken already."""
    items = list(itertools.islice(iterator, count))
    if len(items) < count:
        raise ValueError(f"batches ran out after {done + len(items)} of num_steps="
                         f"{num_steps}; give at least num_steps batches.")
    return items


def _check_optimizer(optimizer) -> None:
    if isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(
            "optimizer must be a function of the learning rate, such as optax.sgd or "
            "lambda lr: optax.adam(lr), not a built transformation: the test sets the rate "
            f"itself. Got {type(optimizer).__name__}; pass the factory without its rate.")
    if not callable(optimizer):
        raise ValueError(f"optimizer must be a function of the learning rate, such as "
                         f"optax.sgd; got {optimizer!r}.")


def _metric_values(metrics: Any) -> dict[str, float]:
    """eval_fn's result as {name: float}, checked."""
    if not isinstance(metrics, Mapping):
        raise ValueError(
            "eval_fn must return a dict of scalar metrics, such as {'accuracy': 0.93}; got "
            f"{type(metrics).__name__} {metrics!r:.60}.")
    values = {}
    for name, value in metrics.items():
        if np.ndim(value) != 0:
            raise ValueError(f"eval_fn's metric {name!r} must be a scalar, got shape "
                             f"{np.shape(value)}; reduce it (e.g. with .mean()).")
        values[str(name)] = float(value)
    return values


def _check_common(min_lr, max_lr, num_steps, mode):
    v.finite_positive("min_lr", min_lr)
    v.finite_positive("max_lr", max_lr)
    if not float(max_lr) > float(min_lr):
        raise ValueError(f"max_lr must be > min_lr, got min_lr={min_lr!r} and max_lr={max_lr!r}.")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) \
            or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}.")
    v.choice("mode", mode, MODES)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with the harness extra; without it, no bar
        return None
    return tqdm(total=total, desc=desc, unit="step", leave=False)


class _Runner:
    """The compiled steps of range tests of one loss function and optimizer: built once
    and kept (the last few), so that a second test of the same model, with any ramp,
    smoothing or threshold and batches of the same shapes, reuses the compiled program
    instead of tracing and compiling again."""

    _cache: dict[tuple, _Runner] = {}
    _size = 8

    @classmethod
    def get(cls, loss_fn, optimizer, mode, takes_key, compiler_options) -> _Runner:
        key = (loss_fn, optimizer, mode, takes_key,
               tuple(sorted((compiler_options or {}).items())))
        try:
            runner = cls._cache.pop(key)
        except (KeyError, TypeError):  # TypeError: an unhashable option value
            runner = cls(loss_fn, optimizer, mode, takes_key, compiler_options)
        if len(cls._cache) >= cls._size:
            cls._cache.pop(next(iter(cls._cache)))
        cls._cache[key] = runner
        return runner

    def __init__(self, loss_fn, optimizer, mode, takes_key, compiler_options):
        self.loss_fn, self.optimizer, self.mode, self.takes_key = \
            loss_fn, optimizer, mode, takes_key
        self._programs: dict = {}  # the first chunk's compiled loop, per input shapes
        jit = functools.partial(jax.jit, compiler_options=compiler_options)
        self.init = jit(self._init)
        self._while = jit(self._run_while, static_argnums=5)
        # the first chunk starts from the parameters: one program, one compilation
        self._start = jit(lambda params, *args: self._run_while(
            self._init(params, args[3]), *args), static_argnums=5)
        self._unrolled = jit(self._run_unrolled, static_argnums=5)

    def tx(self, settings: _Settings) -> optax.GradientTransformation:
        return self.optimizer(lambda count: _ramp_value(count, settings, self.mode))

    def loss_at(self, params, batch, t, settings: _Settings):
        if self.takes_key:
            return self.loss_fn(params, batch, key=jax.random.fold_in(settings.key, t))
        return self.loss_fn(params, batch)

    def start(self, params, batches, offset, count, settings, chunk):
        """The first chunk, from the parameters, in one compiled loop: the carry and the
        step outputs; or None when the program holds a convolution and runs on CPU,
        where the steps must be unrolled instead (`clr_jax._backend.group_size`). The
        program is traced once per input shapes: its jaxpr answers that question too."""
        signature = jax.tree.map(lambda x: (np.shape(x), str(getattr(x, "dtype", type(x)))),
                                 (params, batches, settings))
        leaves, tree = jax.tree.flatten(signature)
        key = (tuple(leaves), str(tree), chunk)
        if key not in self._programs:
            traced = self._start.trace(params, batches, offset, count, settings, chunk)
            convolutional = _backend.on_cpu() and _backend.has_convolution(traced.jaxpr)
            self._programs[key] = None if convolutional else traced.lower().compile()
        program = self._programs[key]
        return None if program is None else program(params, batches, offset, count, settings)

    def _init(self, params, settings):
        return _Carry(params, self.tx(settings).init(params), jnp.float32(0.0),
                      jnp.float32(jnp.inf), jnp.bool_(False), jnp.int32(0))

    def _step(self, carry: _Carry, batch, settings: _Settings):
        p, opt_state, avg, best, stopped, t = carry
        beta = settings.beta
        loss, grads = jax.value_and_grad(self.loss_at)(p, batch, t, settings)
        loss = jnp.asarray(loss, jnp.float32)
        updates, new_state = self.tx(settings).update(grads, opt_state, p)
        new_p = optax.apply_updates(p, updates)
        new_avg = beta * avg + (1 - beta) * loss
        smoothed = new_avg / (1 - beta ** (t + 1).astype(jnp.float32))
        diverged = (t > 0) & (smoothed > settings.threshold * best)
        reason = jnp.where(~jnp.isfinite(loss), 2, jnp.where(diverged, 1, 0))
        new_best = jnp.where(t == 0, smoothed, jnp.minimum(best, smoothed))
        active = ~stopped
        out = _Carry(new_p, new_state, jnp.where(active, new_avg, avg),
                     jnp.where(active, new_best, best),
                     stopped | (reason > 0) | (t + 1 >= settings.num_steps),
                     jnp.where(active, t + 1, t))
        nan = jnp.float32(jnp.nan)
        return out, (jnp.where(active, loss, nan), jnp.where(active, smoothed, nan),
                     jnp.where(active, reason, -1), _ramp_value(t, settings, self.mode))

    @staticmethod
    def _batch(batches, t, offset, count):
        return jax.tree.map(lambda x: x[(t - offset) % count], batches)

    def _run_while(self, carry, batches, offset, count, settings, length):
        """Up to ``length`` steps in one while loop that ends at the stop."""
        outs = (jnp.full(length, jnp.nan, jnp.float32), jnp.full(length, jnp.nan, jnp.float32),
                jnp.full(length, -1, jnp.int32), jnp.zeros(length, jnp.float32))

        def more(state):
            c, _, i = state
            return (i < length) & ~c.stopped

        def body(state):
            c, outs, i = state
            c, values = self._step(c, self._batch(batches, c.step, offset, count), settings)
            return c, tuple(o.at[i].set(x) for o, x in zip(outs, values)), i + 1

        carry, outs, _ = jax.lax.while_loop(more, body, (carry, outs, jnp.int32(0)))
        return carry, outs

    def _run_unrolled(self, carry, batches, offset, count, settings, group):
        """``group`` steps unrolled; steps after a stop run but are not recorded (no
        lax.cond, which XLA's CPU backend runs slowly around convolutions)."""
        def body(c, _):
            return self._step(c, self._batch(batches, c.step, offset, count), settings)

        return _backend.scan(body, carry, length=group, unroll=True)

    def run_chunk(self, carry, batches, offset, count, settings, chunk, group, unroll):
        """``chunk`` steps (fewer after a stop): the carry and the step outputs."""
        if not unroll:
            return self._while(carry, batches, offset, count, settings, chunk)
        outputs = []
        for _ in range(0, chunk, group):
            carry, out = self._unrolled(carry, batches, offset, count, settings, group)
            outputs.append(out)
        return carry, tuple(jnp.concatenate(x) for x in zip(*outputs))


def range_test(
    loss_fn: Callable[..., jax.Array],
    params: Any,
    batches: Any,
    *,
    min_lr: float,
    max_lr: float,
    num_steps: int,
    optimizer: Callable[[optax.ScalarOrSchedule], optax.GradientTransformation] = optax.sgd,
    mode: str = "linear",
    eval_fn: Callable[[Any], Mapping[str, Any]] | None = None,
    eval_every: int | None = None,
    smoothing: float = 0.98,
    diverge_threshold: float = 4.0,
    seed: int = 0,
    progress: bool = False,
    compiler_options: Mapping[str, Any] | None = None,
) -> RangeTestResult:
    r"""Runs the LR range test: train while the learning rate rises, record the loss.

    The rate at update ``t`` is ``min_lr + (max_lr - min_lr) t / (N - 1)`` (linear, the
    paper's test) or ``min_lr (max_lr / min_lr)^{t / (N - 1)}`` (exponential). The
    smoothed loss is the bias-corrected moving average
    ``a_t = smoothing a_{t-1} + (1 - smoothing) loss_t``, ``a_t / (1 - smoothing^{t+1})``.
    The test stops after the update whose smoothed loss exceeds ``diverge_threshold``
    times the lowest smoothed loss so far, or whose loss is not finite (that update is
    not applied). Losses are assumed positive, as cross-entropy and squared errors are.

    The caller's ``params`` are not modified. Steps between evaluations run in one
    compiled loop that ends at the stop; with array ``batches`` there is no host round
    trip per step. The compiled program is kept: a second test with the same
    ``loss_fn`` and ``optimizer`` objects and batches of the same shapes (any rates,
    lengths, smoothing or threshold) does not trace or compile again.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``; if it takes a ``key`` argument it
        is called as ``loss_fn(params, batch, key=key)`` with a per-step PRNG key.
      params: a pytree of arrays, the starting point.
      batches: a pytree of arrays with a leading step axis (used in order, cycled if
        shorter than ``num_steps``), or an iterable of batches (at least
        ``num_steps`` of them).
      min_lr: the first rate, > 0.
      max_lr: the last rate, > ``min_lr``.
      num_steps: the length of the ramp, >= 2.
      optimizer: ``learning_rate -> optax.GradientTransformation``, e.g. ``optax.adam``
        or ``lambda lr: optax.sgd(lr, momentum=0.9)``.
      mode: ``"linear"`` or ``"exponential"``.
      eval_fn: ``eval_fn(params) -> {name: scalar}``, e.g. test accuracy, which is what
        the paper reads; called every ``eval_every`` steps.
      eval_every: steps between evaluations; required with ``eval_fn``.
      smoothing: the moving-average factor in [0, 1).
      diverge_threshold: stop when the smoothed loss exceeds this multiple of its
        lowest value; must be > 1.
      seed: derives the per-step keys for a ``loss_fn`` that takes ``key``; the test
        is reproducible given the seed.
      progress: show a progress bar (needs tqdm).
      compiler_options: XLA options for compiling the steps (``jax.jit``'s
        ``compiler_options``), e.g. ``{"xla_cpu_use_fusion_emitters": False}``, which
        the harness uses for the Caffe net on CPU.

    Returns:
      A `RangeTestResult`.

    Raises:
      ValueError: on bad settings (``min_lr >= max_lr``, ``num_steps < 2``,
        ``eval_every`` without ``eval_fn`` or the reverse, an unknown mode, too few
        batches, ...).

    Examples:
      >>> import jax.numpy as jnp, clr_jax
      >>> loss = lambda w, batch: jnp.mean((batch["x"] * w - batch["y"]) ** 2)
      >>> batches = {"x": jnp.ones((100, 8)), "y": jnp.zeros((100, 8))}
      >>> result = clr_jax.range_test(loss, jnp.float32(1.0), batches, min_lr=0.01,
      ...                             max_lr=3.0, num_steps=100)
      >>> result.stop_reason  # gradient descent on 2 w^2 diverges for lr > 1
      'diverged'
      >>> bool(result.learning_rates[-1] > 1.0)
      True
    """
    _check_common(min_lr, max_lr, num_steps, mode)
    if eval_fn is not None and eval_every is None:
        raise ValueError("eval_fn is given but eval_every is not; pass eval_every=N steps.")
    if eval_every is not None and eval_fn is None:
        raise ValueError(f"eval_every={eval_every!r} is given but eval_fn is not; "
                         "pass eval_fn=lambda params: {'accuracy': ...}.")
    if eval_every is not None:
        eval_every = v.positive_int("eval_every", eval_every)
    v.check("smoothing", smoothing, lambda b: (b >= 0) & (b < 1), "in [0, 1)")
    v.check("diverge_threshold", diverge_threshold, lambda d: d > 1, "> 1")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable, got {loss_fn!r}.")

    _check_optimizer(optimizer)
    tx = optimizer(ramp(float(min_lr), float(max_lr), num_steps, mode))
    if not isinstance(tx, optax.GradientTransformation):
        raise ValueError(
            "optimizer must map a learning rate to an optax.GradientTransformation, e.g. "
            f"optax.sgd or lambda lr: optax.adam(lr); got {tx!r} from {optimizer!r}."
        )
    if eval_every is not None:
        chunk = eval_every
    else:  # one compiled call for the whole test, or 20 to show progress
        chunk = max(1, math.ceil(num_steps / 20)) if progress else num_steps
    num_batches = _leading_length(batches)
    if num_batches == 0:
        raise ValueError("batches has 0 entries on its leading step axis.")
    takes_key = _takes_key(loss_fn)
    if num_batches is None:
        iterator = iter(batches)
        try:
            first_batch = next(iterator)
        except StopIteration:
            raise ValueError("batches is empty; give at least num_steps batches.") from None
        iterator = itertools.chain([first_batch], iterator)
    settings = _Settings.of(min_lr, max_lr, num_steps, smoothing, diverge_threshold, seed)
    runner = _Runner.get(loss_fn, optimizer, mode, takes_key, compiler_options)
    carry, group, unroll = None, chunk, False
    outputs: list[tuple[np.ndarray, ...]] = []
    eval_steps, eval_metrics = [], {}
    bar = _progress(num_steps, "range test", progress)
    done = 0
    while done < num_steps:
        if num_batches is None:
            items = _take(iterator, min(chunk, num_steps - done), done, num_steps)
            while len(items) < chunk:  # pad the last chunk; those steps are skipped
                items.append(items[-1])
            chunk_batches = jax.tree.map(lambda *xs: jnp.stack(xs), *items)
            offset, count = done, chunk
        else:
            chunk_batches, offset, count = batches, 0, num_batches
        offset, count = jnp.int32(offset), jnp.int32(count)
        started = None if carry is not None or unroll else runner.start(
            params, chunk_batches, offset, count, settings, chunk)
        if started is not None:
            carry, out = started
        else:
            if carry is None:  # convolutions on CPU: unrolled groups of steps
                group, unroll = _backend.group_size(chunk, True)
                carry = runner.init(params, settings)
            carry, out = runner.run_chunk(carry, chunk_batches, offset, count, settings,
                                          chunk, group, unroll)
        out = tuple(np.asarray(x) for x in out)
        ran = int((out[2] >= 0).sum())
        outputs.append(tuple(x[:ran] for x in out))
        done += ran
        if bar is not None:
            bar.update(ran)
        # Evaluate at chunk ends only: parameters after a non-finite loss are meaningless.
        full_chunk = ran == chunk and not (ran and out[2][ran - 1] == 2)
        if eval_fn is not None and full_chunk and done % eval_every == 0:
            for name, value in _metric_values(eval_fn(carry.params)).items():
                eval_metrics.setdefault(name, []).append(value)
            eval_steps.append(done)
        if bool(carry.stopped):
            break
    if bar is not None:
        bar.close()

    losses, smoothed, reasons, rates = (np.concatenate(x) for x in zip(*outputs))
    stop_code = int(reasons[-1]) if reasons.size else 0
    learning_rates = rates.astype(np.float64)
    eval_steps = np.asarray(eval_steps, np.int64)
    return RangeTestResult(
        learning_rates=learning_rates,
        losses=losses.astype(np.float64),
        smoothed_losses=smoothed.astype(np.float64),
        eval_steps=eval_steps,
        eval_learning_rates=learning_rates[eval_steps - 1] if eval_steps.size else np.zeros(0),
        eval_metrics={k: np.asarray(x, np.float64) for k, x in eval_metrics.items()},
        stop_reason=_REASONS[stop_code],
        stop_step=done if stop_code else None,
        mode=mode,
        min_lr=float(min_lr),
        max_lr=float(max_lr),
        num_steps=int(num_steps),
        smoothing=float(smoothing),
    )


def parallel_range_test(
    loss_fn: Callable[..., jax.Array],
    params: Any,
    batches: Any,
    *,
    learning_rates: Sequence[float] | np.ndarray,
    num_steps: int,
    optimizer: Callable[[Any], optax.GradientTransformation] = optax.sgd,
    eval_fn: Callable[[Any], Mapping[str, jax.Array]] | None = None,
    seeds: Sequence[int] = (0,),
    init_fn: Callable[[jax.Array], Any] | None = None,
    tail_fraction: float = 0.1,
    diverge_threshold: float = 4.0,
    vectorize: bool | None = None,
    progress: bool = False,
    compiler_options: Mapping[str, Any] | None = None,
) -> ParallelRangeTestResult:
    """Trains K copies at K fixed learning rates at once, in one vmapped program.

    Each member starts from ``params`` (or from ``init_fn(key)`` for its seed), sees the
    same batches, and trains ``num_steps`` steps at its own constant rate. The members
    are vmapped into one program, except convolutional models on CPU, where XLA's
    vmapped convolutions are slower than separate runs: they run one after another
    through the same compiled functions (one compilation either way). With several
    seeds the spread across seeds gives a confidence band. Bounds are read from the
    result with `clr_jax.suggest_bounds` exactly as from a `range_test`.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, or with a ``key`` argument as in
        `range_test` (the key then also depends on the seed).
      params: the starting pytree; ignored when ``init_fn`` is given.
      batches: a pytree of arrays with a leading step axis (cycled if shorter than
        ``num_steps``), or an iterable of at least ``num_steps`` batches.
      learning_rates: the K rates to try, all > 0.
      num_steps: steps each member trains, >= 1.
      optimizer: ``learning_rate -> optax.GradientTransformation``; it receives a traced
        scalar rate.
      eval_fn: ``eval_fn(params) -> {name: scalar}``, a JAX function (it is vmapped),
        run once at the end.
      seeds: the seeds; each is run at every rate.
      init_fn: ``init_fn(key) -> params``, to start each seed from its own init.
      tail_fraction: the final loss is the mean over this last fraction of steps.
      diverge_threshold: members whose final loss exceeds this multiple of their first
        loss count as diverged.
      vectorize: vmap the members into one program (True) or run them one after
        another (False); by default True except for convolutional models on CPU.
      progress: show a progress bar (needs tqdm).
      compiler_options: XLA options for compiling the steps, as in `range_test`.

    Returns:
      A `ParallelRangeTestResult`.

    Raises:
      ValueError: on an empty or non-positive rate list, ``num_steps < 1``, no seeds,
        ``tail_fraction`` outside (0, 1], or too few batches.
    """
    rates = np.asarray(learning_rates, dtype=np.float64).reshape(-1)
    if rates.size == 0:
        raise ValueError("learning_rates is empty; give at least one rate.")
    v.finite_positive("learning_rates", rates)
    num_steps = v.positive_int("num_steps", num_steps)
    seeds = np.asarray(list(seeds), dtype=np.int64).reshape(-1)
    if seeds.size == 0:
        raise ValueError("seeds is empty; give at least one seed, e.g. seeds=(0,).")
    v.check("tail_fraction", tail_fraction, lambda f: (f > 0) & (f <= 1), "in (0, 1]")
    v.check("diverge_threshold", diverge_threshold, lambda d: d > 1, "> 1")
    num_batches = _leading_length(batches)
    if num_batches is None:
        items = _take(iter(batches), num_steps, 0, num_steps)
        batches = jax.tree.map(lambda *xs: jnp.stack(xs), *items)
        num_batches = num_steps
    if num_batches == 0:
        raise ValueError("batches has 0 entries on its leading step axis.")
    _check_optimizer(optimizer)
    takes_key = _takes_key(loss_fn)
    tail = max(1, round(tail_fraction * num_steps))

    first_batch = jax.tree.map(lambda x: x[0], batches)
    first_params = init_fn(jax.random.key(0)) if init_fn is not None else params
    convolutional = _backend.uses_convolution(
        lambda p: loss_fn(p, first_batch, key=jax.random.key(0)) if takes_key
        else loss_fn(p, first_batch), first_params)
    group, unroll = _backend.group_size(
        _backend.MAX_UNROLLED_STEPS if convolutional else num_steps, convolutional)
    if eval_fn is not None:  # its structure, before it is vmapped
        try:
            shapes = jax.eval_shape(eval_fn, first_params)
        except Exception as error:  # noqa: BLE001 - any failure to trace is the user's fn
            raise ValueError(f"eval_fn must be a JAX function of the parameters (it is "
                             f"vmapped over the members); tracing it failed: "
                             f"{type(error).__name__}: {str(error).splitlines()[0]}") from None
        if not isinstance(shapes, Mapping):
            raise ValueError("eval_fn must return a dict of scalar metrics, such as "
                             "{'accuracy': 0.93}; got a single value.")
        _metric_values({k: np.zeros(np.shape(x)) for k, x in shapes.items()})
    num_groups = math.ceil(num_steps / group)

    def start(lr, seed):
        init_key, key = jax.random.split(jax.random.key(seed))
        p = init_fn(init_key) if init_fn is not None else params
        return p, optimizer(lr).init(p), jnp.bool_(True), key

    def advance(lr, carry, first_step):
        p, state, ok, key = carry
        tx = optimizer(lr)

        def body(c, t):
            p, state, ok = c
            batch = jax.tree.map(lambda x: x[t % num_batches], batches)
            if takes_key:
                loss, grads = jax.value_and_grad(
                    lambda q: loss_fn(q, batch, key=jax.random.fold_in(key, t)))(p)
            else:
                loss, grads = jax.value_and_grad(loss_fn)(p, batch)
            updates, new_state = tx.update(grads, state, p)
            # Stop a member at its first non-finite loss, and at num_steps (the last
            # group may run past it).
            ok = ok & jnp.isfinite(loss) & (t < num_steps)
            keep = lambda new, old: jax.tree.map(  # noqa: E731
                lambda a, b: jnp.where(ok, a, b), new, old)
            return (keep(optax.apply_updates(p, updates), p), keep(new_state, state), ok), \
                jnp.where(ok, jnp.asarray(loss, jnp.float32), jnp.nan)

        (p, state, ok), losses = _backend.scan(
            body, (p, state, ok), first_step + jnp.arange(group), unroll=unroll)
        return (p, state, ok, key), losses

    def finish(carry):
        metrics = dict(eval_fn(carry[0])) if eval_fn is not None else {}
        return {k: jnp.asarray(x, jnp.float32) for k, x in metrics.items()}

    lrs = jnp.asarray(rates, jnp.float32)
    seeds_array = jnp.asarray(seeds, jnp.uint32)
    jit = functools.partial(jax.jit, compiler_options=compiler_options)
    if vectorize is None:
        vectorize = _backend.vmap_members(convolutional)
    if vectorize:
        def both(f, in_axes):  # vmap over rates (inner) and seeds (outer)
            return jit(jax.vmap(jax.vmap(f, in_axes=in_axes[0]), in_axes=in_axes[1]))

        carry = both(start, ((0, None), (None, 0)))(lrs, seeds_array)
        run_group = both(advance, ((0, 0, None), (None, 0, None)))
        parts = []
        bar = _progress(num_groups * group, "parallel range test", progress)
        for g in range(num_groups):
            carry, part = run_group(lrs, carry, jnp.int32(g * group))
            parts.append(part)
            if bar is not None:
                bar.update(group)
        if bar is not None:
            bar.close()
        losses = jnp.concatenate(parts, axis=-1)[..., :num_steps]
        metrics = both(finish, (0, 0))(carry)
    else:
        # XLA's CPU backend turns vmapped convolutions into grouped convolutions that
        # ran slower than separate runs (benchmarks/RESULTS.md), so on CPU the members
        # run one after another through the same compiled functions.
        start_j, advance_j, finish_j = jit(start), jit(advance), jit(finish)
        rows, metric_rows = [], []
        bar = _progress(seeds_array.size * lrs.size * num_groups * group,
                        "parallel range test", progress)
        for seed in seeds_array:
            row, metric_row = [], []
            for lr in lrs:
                carry = start_j(lr, seed)
                parts = []
                for g in range(num_groups):
                    carry, part = advance_j(lr, carry, jnp.int32(g * group))
                    parts.append(part)
                    if bar is not None:
                        jax.block_until_ready(part)
                        bar.update(group)
                row.append(jnp.concatenate(parts)[:num_steps])
                metric_row.append(finish_j(carry))
            rows.append(jnp.stack(row))
            metric_rows.append(jax.tree.map(lambda *xs: jnp.stack(xs), *metric_row))
        if bar is not None:
            bar.close()
        losses = jnp.stack(rows)
        metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *metric_rows)
    losses = np.asarray(losses, np.float64)
    return ParallelRangeTestResult(
        learning_rates=rates,
        seeds=seeds,
        losses=losses,
        final_losses=losses[..., -tail:].mean(axis=-1),
        eval_metrics={k: np.asarray(x, np.float64) for k, x in metrics.items()},
        num_steps=num_steps,
        diverge_threshold=float(diverge_threshold),
    )

