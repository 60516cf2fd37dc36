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
import types
import weakref
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
      eval_mode: how a module was evaluated (``"eval"``, ``"batch_stats"``,
        ``"train"``; see `range_test`), or None when ``eval_fn`` decided.
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
    eval_mode: str | None = None

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
      eval_mode: how a module was evaluated (see `range_test`), or None.
    """

    learning_rates: np.ndarray
    seeds: np.ndarray
    losses: np.ndarray
    final_losses: np.ndarray
    eval_metrics: dict[str, np.ndarray]
    num_steps: int
    diverge_threshold: float = 4.0
    eval_mode: str | None = None

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
    model_state: Any  # the model's non-trainable state (BatchNorm statistics, RNG counts)
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


EVAL_MODES = ("eval", "batch_stats", "train")


def _is_module(value) -> bool:
    """Whether ``value`` is a Flax NNX module (False when Flax is not installed)."""
    try:
        from flax import nnx
    except ImportError:
        return False
    return isinstance(value, nnx.Module)


@dataclasses.dataclass(frozen=True)
class _Loss:
    """The caller's loss in one form: ``(params, model_state, batch, key) -> (loss,
    new model_state)``. ``form`` is "plain" (``loss_fn(params, batch)``), "state"
    (``loss_fn(params, model_state, batch) -> (loss, new_model_state)``) or "module"
    (``loss_fn(model, batch)`` of an NNX module, rebuilt from ``graphdef``). Hashable,
    so that a second test of the same loss reuses its compiled program."""

    fn: Callable
    form: str
    takes_key: bool
    graphdef: Any = None

    def __call__(self, params, model_state, batch, key):
        kwargs = {"key": key} if self.takes_key else {}
        if self.form == "plain":
            return _scalar_loss(self.fn(params, batch, **kwargs)), model_state
        if self.form == "state":
            out = self.fn(params, model_state, batch, **kwargs)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError(
                    "with model_state, loss_fn must return (loss, new_model_state), as "
                    f"loss_fn(params, model_state, batch) does in Flax; got {type(out).__name__}.")
            return _scalar_loss(out[0]), out[1]
        from flax import nnx

        model = nnx.merge(self.graphdef, params, model_state, copy=True)
        value = self.fn(model, batch, **kwargs)
        return _scalar_loss(value), nnx.state(model, nnx.Not(nnx.Param))


def _scalar_loss(value):
    """``value`` if it is one floating-point number; else a ValueError that says what
    loss_fn returned and what to do."""
    if isinstance(value, (tuple, list, dict)):
        raise ValueError(
            f"loss_fn must return the loss alone (one number); it returned a "
            f"{type(value).__name__}. A loss that also returns new state (BatchNorm "
            "statistics) takes model_state: loss_fn(params, model_state, batch) -> (loss, "
            "new_model_state), with model_state= given.")
    shape, dtype = np.shape(value), jnp.result_type(value)
    if shape != ():
        raise ValueError(f"loss_fn must return a scalar loss; it returned an array of shape "
                         f"{shape}. Reduce it over the batch (e.g. .mean()).")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"loss_fn must return a floating-point loss; it returned {dtype}.")
    return value


def _check_params(params) -> None:
    """Every trained leaf must be floating point: the test differentiates the loss with
    respect to all of them."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if isinstance(leaf, (float, complex)):
            continue
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            what = f"of dtype {dtype}" if dtype is not None else type(leaf).__name__
            raise ValueError(
                f"params{jax.tree_util.keystr(path)} is {what}; the range test trains every "
                "leaf of params, so each must be a floating-point array. Keep integer or "
                "fixed state out of params (in model_state, or closed over by loss_fn).")


class _Model(NamedTuple):
    """A range test's model in the functional form the compiled steps take."""

    loss: _Loss
    params: Any
    model_state: Any
    evaluate: Callable | None  # (params, model_state) -> metrics
    eval_mode: str | None


def _fold_keys(tree, seed: int):
    """Every PRNG key in ``tree`` with ``seed`` folded in (a module's own streams, such as
    dropout's, varied by the test's seed)."""
    def fold(x):
        if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.fold_in(x, seed)
        return x

    return jax.tree.map(fold, tree)


def _as_model(loss_fn, params, model_state, eval_fn, eval_mode, seed) -> _Model:
    """The caller's loss, parameters and evaluation in one functional form.

    - an NNX module as ``params``: split into its parameters (``nnx.Param``, trained)
      and the rest (its state: BatchNorm statistics, random streams), ``loss_fn(model,
      batch)`` and ``eval_fn(model)`` called on the module rebuilt from both, the
      latter in ``eval_mode``; a seed other than 0 is folded into its random streams;
    - ``model_state`` given: ``loss_fn(params, model_state, batch) -> (loss,
      new_model_state)`` and ``eval_fn(params, model_state)``;
    - else ``loss_fn(params, batch)`` and ``eval_fn(params)``.

    Every trained leaf is checked to be floating point (`_check_params`).
    """
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable, got {loss_fn!r}.")
    takes_key = _takes_key(loss_fn)
    if _is_module(params):
        from flax import nnx

        if model_state is not None:
            raise ValueError("model_state is for a loss of (params, model_state, batch); an "
                             "NNX module carries its own state: leave model_state out.")
        mode = "eval" if eval_mode is None else eval_mode
        v.choice("eval_mode", mode, EVAL_MODES)
        graphdef, trained, rest = nnx.split(params, nnx.Param, ...)
        if seed:
            rest = _fold_keys(rest, seed)
        evaluate = None
        if eval_fn is not None:
            def evaluate(p, s):
                model = nnx.merge(graphdef, p, s, copy=True)
                model.train() if mode == "train" else model.eval()
                if mode == "batch_stats":
                    model.set_attributes(use_running_average=False, raise_if_not_found=False)
                return eval_fn(model)
        _check_params(trained)
        return _Model(_Loss(loss_fn, "module", takes_key, graphdef), trained, rest, evaluate,
                      mode if eval_fn is not None else None)
    if eval_mode is not None:
        raise ValueError(f"eval_mode={eval_mode!r} is for an NNX module given as params; "
                         "with a loss of arrays, eval_fn decides how it evaluates.")
    _check_params(params)
    if model_state is not None:
        evaluate = None if eval_fn is None else (lambda p, s: eval_fn(p, s))
        return _Model(_Loss(loss_fn, "state", takes_key), params, model_state, evaluate, None)
    evaluate = None if eval_fn is None else (lambda p, s: eval_fn(p))
    return _Model(_Loss(loss_fn, "plain", takes_key), params, None, evaluate, None)


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


def _owner(fn: Callable) -> tuple[Any, Callable | None]:
    """The object whose life a loss's compiled programs share: the function itself, or
    for a bound method the object it is bound to (a bound method object is made anew
    at every attribute access) with the method's function."""
    if inspect.ismethod(fn):
        return fn.__self__, fn.__func__
    return fn, None


class _WeakLoss:
    """A `_Loss` that does not keep its function alive: the compiled programs hold this,
    so that they die with the caller's loss function (`_PROGRAMS` is keyed weakly)."""

    def __init__(self, loss: _Loss):
        owner, method = _owner(loss.fn)
        self._owner = weakref.ref(owner)
        self._method = method
        self._loss = dataclasses.replace(loss, fn=None)

    def __call__(self, *args):
        owner = self._owner()
        if owner is None:  # pragma: no cover - the cache entry dies with it
            raise RuntimeError("the loss function of this range test no longer exists")
        fn = owner if self._method is None else types.MethodType(self._method, owner)
        return dataclasses.replace(self._loss, fn=fn)(*args)


# The compiled range tests of each loss function, for as long as the function (or the
# object its method is bound to) lives: the function is the weak key, and the
# programs hold it weakly, so that a test's device data and model go when the caller
# drops its loss function. Within one function, the last few optimizer / mode / option
# combinations are kept.
_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PER_LOSS = 8


class _Runner:
    """The compiled steps of range tests of one loss function and optimizer: built once
    and kept while the loss function lives (`_PROGRAMS`), so that a second test of the
    same model, with any ramp, smoothing or threshold and batches of the same shapes,
    reuses the compiled program instead of tracing and compiling again."""

    @classmethod
    def get(cls, loss: _Loss, optimizer, mode, compiler_options) -> _Runner:
        owner, method = _owner(loss.fn)
        key = (dataclasses.replace(loss, fn=method), optimizer, mode,
               tuple(sorted((compiler_options or {}).items())))
        try:
            programs = _PROGRAMS.setdefault(owner, {})
            runner = programs.pop(key)
        except KeyError:
            runner = cls(loss, optimizer, mode, compiler_options)
        except TypeError:  # not weakly referable, or an unhashable setting: not kept
            return cls(loss, optimizer, mode, compiler_options)
        if len(programs) >= _PER_LOSS:
            programs.pop(next(iter(programs)))
        programs[key] = runner
        return runner

    def __init__(self, loss: _Loss, optimizer, mode, compiler_options):
        self.loss, self.optimizer, self.mode = _WeakLoss(loss), optimizer, mode
        self._programs: dict = {}  # the first chunk's compiled loop, per input shapes
        jit = functools.partial(jax.jit, compiler_options=compiler_options)
        self.init = jit(self._init)
        self._while = jit(self._run_while, static_argnums=5)
        # the first chunk starts from the parameters: one program, one compilation
        self._start = jit(lambda params, model_state, *args: self._run_while(
            self._init(params, model_state, args[3]), *args), static_argnums=6)
        self._unrolled = jit(self._run_unrolled, static_argnums=5)

    def tx(self, settings: _Settings) -> optax.GradientTransformation:
        return self.optimizer(lambda count: _ramp_value(count, settings, self.mode))

    def loss_at(self, params, model_state, batch, t, settings: _Settings):
        loss, model_state = self.loss(params, model_state, batch,
                                      jax.random.fold_in(settings.key, t))
        return jnp.asarray(loss, jnp.float32), model_state

    def start(self, params, model_state, batches, offset, count, settings, chunk):
        """The first chunk, from the parameters, in one compiled loop: the carry and the
        step outputs; or None when the program holds a convolution that is slow inside
        a loop and runs on CPU, where the steps must be unrolled instead
        (`clr_jax._backend.group_size`, `clr_jax._backend.slow_in_loops`). The
        program is traced once per input shapes: its jaxpr answers that question too."""
        signature = jax.tree.map(lambda x: (np.shape(x), str(getattr(x, "dtype", type(x)))),
                                 (params, model_state, batches, settings))
        leaves, tree = jax.tree.flatten(signature)
        key = (tuple(leaves), str(tree), chunk)
        if key not in self._programs:
            traced = self._start.trace(params, model_state, batches, offset, count, settings,
                                       chunk)
            unroll = _backend.on_cpu() and _backend.slow_in_loops(traced.jaxpr)
            self._programs[key] = None if unroll else traced.lower().compile()
        program = self._programs[key]
        return None if program is None else program(params, model_state, batches, offset,
                                                    count, settings)

    def _init(self, params, model_state, settings):
        return _Carry(params, model_state, self.tx(settings).init(params), jnp.float32(0.0),
                      jnp.float32(jnp.inf), jnp.bool_(False), jnp.int32(0))

    def _step(self, carry: _Carry, batch, settings: _Settings):
        p, model_state, opt_state, avg, best, stopped, t = carry
        beta = settings.beta
        (loss, new_model_state), grads = jax.value_and_grad(self.loss_at, has_aux=True)(
            p, model_state, batch, t, settings)
        updates, new_state = self.tx(settings).update(grads, opt_state, p)
        new_p = optax.apply_updates(p, updates)
        new_avg = beta * avg + (1 - beta) * loss
        smoothed = new_avg / (1 - beta ** (t + 1).astype(jnp.float32))
        diverged = (t > 0) & (smoothed > settings.threshold * best)
        reason = jnp.where(~jnp.isfinite(loss), 2, jnp.where(diverged, 1, 0))
        new_best = jnp.where(t == 0, smoothed, jnp.minimum(best, smoothed))
        active = ~stopped
        # a non-finite loss's update (and model state) is not applied
        applied = active & jnp.isfinite(loss)
        keep = lambda new, old: jax.tree.map(  # noqa: E731
            lambda a, b: jnp.where(applied, a, b), new, old)
        out = _Carry(keep(new_p, p), keep(new_model_state, model_state),
                     keep(new_state, opt_state), jnp.where(active, new_avg, avg),
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
    model_state: Any = None,
    eval_mode: str | None = None,
) -> RangeTestResult:
    r"""Runs the LR range test: train while the learning rate rises, record the loss.

    The rate at update ``t`` is ``min_lr + (max_lr - min_lr) t / (N - 1)`` (linear, the
    paper's test) or ``min_lr (max_lr / min_lr)^{t / (N - 1)}`` (exponential). The
    smoothed loss is the bias-corrected moving average
    ``a_t = smoothing a_{t-1} + (1 - smoothing) loss_t``, ``a_t / (1 - smoothing^{t+1})``.
    The test stops after the update whose smoothed loss exceeds ``diverge_threshold``
    times the lowest smoothed loss so far, or whose loss is not finite (that update is
    not applied). Losses are assumed positive, as cross-entropy and squared errors are.

    Models with state (BatchNorm statistics, dropout's random streams) are taken in
    either of JAX's two ways: an NNX module as ``params`` with ``loss_fn(model, batch)``
    (its ``nnx.Param`` variables are trained, the rest is its state, carried from step
    to step), or arrays with ``model_state`` and ``loss_fn(params, model_state, batch)
    -> (loss, new_model_state)``, as Flax's ``mutable=["batch_stats"]`` gives it.

    The caller's ``params`` (and module) are not modified. Steps between evaluations run in one
    compiled loop that ends at the stop; with array ``batches`` there is no host round
    trip per step. The compiled program is kept: a second test with the same
    ``loss_fn`` and ``optimizer`` objects and batches of the same shapes (any rates,
    lengths, smoothing or threshold) does not trace or compile again.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (``loss_fn(model, batch)`` for a
        module; ``loss_fn(params, model_state, batch) -> (scalar, new_model_state)``
        with ``model_state``); if it takes a ``key`` argument it is called with
        ``key=`` a per-step PRNG key as well.
      params: a pytree of arrays, the starting point, or a Flax NNX module.
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
        the paper reads; called every ``eval_every`` steps (``eval_fn(model)`` for a
        module, ``eval_fn(params, model_state)`` with ``model_state``).
      eval_every: steps between evaluations; required with ``eval_fn``.
      smoothing: the moving-average factor in [0, 1).
      diverge_threshold: stop when the smoothed loss exceeds this multiple of its
        lowest value; must be > 1.
      seed: derives the per-step keys for a ``loss_fn`` that takes ``key``, and for a
        module, a seed other than 0 is folded into its random streams (dropout); the
        test is reproducible given the seed.
      progress: show a progress bar (needs tqdm).
      compiler_options: XLA options for compiling the steps (``jax.jit``'s
        ``compiler_options``), e.g. ``{"xla_cpu_use_fusion_emitters": False}``, which
        the harness uses for the Caffe net on CPU.
      model_state: the starting state of a loss of ``(params, model_state, batch)``.
      eval_mode: how a module is evaluated: ``"eval"`` (the default: ``model.eval()``,
        BatchNorm with the running statistics gathered during the test so far, no
        dropout), ``"batch_stats"`` (as eval, but BatchNorm normalising with each
        evaluation batch's own statistics) or ``"train"`` (``model.train()``). The
        result records it.

    Returns:
      A `RangeTestResult`.

    Raises:
      ValueError: on bad settings (``min_lr >= max_lr``, ``num_steps < 2``,
        ``eval_every`` without ``eval_fn`` or the reverse, an unknown mode, too few
        batches, ...), on a ``loss_fn`` that does not return one floating-point number,
        and on a leaf of ``params`` that is not a floating-point array.

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
    model = _as_model(loss_fn, params, model_state, eval_fn, eval_mode, seed)

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
    if num_batches is None:
        iterator = iter(batches)
        try:
            first_batch = next(iterator)
        except StopIteration:
            raise ValueError("batches is empty; give at least num_steps batches.") from None
        iterator = itertools.chain([first_batch], iterator)
    settings = _Settings.of(min_lr, max_lr, num_steps, smoothing, diverge_threshold, seed)
    runner = _Runner.get(model.loss, optimizer, mode, compiler_options)
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
            model.params, model.model_state, chunk_batches, offset, count, settings, chunk)
        if started is not None:
            carry, out = started
        else:
            if carry is None:  # convolutions on CPU: unrolled groups of steps
                group, unroll = _backend.group_size(chunk, True)
                carry = runner.init(model.params, model.model_state, settings)
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
            for name, value in _metric_values(model.evaluate(carry.params,
                                                             carry.model_state)).items():
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
        eval_mode=model.eval_mode,
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
    model_state: Any = None,
    eval_mode: str | None = None,
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
        `range_test` (the key then also depends on the seed); ``loss_fn(model, batch)``
        for an NNX module, ``loss_fn(params, model_state, batch) -> (scalar,
        new_model_state)`` with ``model_state``, as in `range_test`.
      params: the starting pytree or NNX module; ignored when ``init_fn`` is given.
      batches: a pytree of arrays with a leading step axis (cycled if shorter than
        ``num_steps``), or an iterable of at least ``num_steps`` batches.
      learning_rates: the K rates to try, all > 0.
      num_steps: steps each member trains, >= 1.
      optimizer: ``learning_rate -> optax.GradientTransformation``; it receives a traced
        scalar rate.
      eval_fn: ``eval_fn(params) -> {name: scalar}``, a JAX function (it is vmapped),
        run once at the end.
      seeds: the seeds; each is run at every rate.
      init_fn: ``init_fn(key) -> params`` (or a module), to start each seed from its
        own init; called once per seed.
      tail_fraction: the final loss is the mean over this last fraction of steps.
      diverge_threshold: members whose final loss exceeds this multiple of their first
        loss count as diverged.
      vectorize: vmap the members into one program (True) or run them one after
        another (False); by default True except for convolutional models on CPU.
      progress: show a progress bar (needs tqdm).
      compiler_options: XLA options for compiling the steps, as in `range_test`.
      model_state: as in `range_test`.
      eval_mode: as in `range_test`.

    Returns:
      A `ParallelRangeTestResult`.

    Raises:
      ValueError: on an empty or non-positive rate list, ``num_steps < 1``, no seeds,
        ``tail_fraction`` outside (0, 1], too few batches, a ``loss_fn`` that does not
        return one floating-point number, or a leaf of ``params`` that is not a
        floating-point array.
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
    if init_fn is not None and not callable(init_fn):
        raise ValueError(f"init_fn must be a function of a PRNG key, got {init_fn!r}.")
    tail = max(1, round(tail_fraction * num_steps))

    def initial(seed):
        """Seed's starting (params, model_state) and per-step key root."""
        init_key, key = jax.random.split(jax.random.key(seed))
        start = init_fn(init_key) if init_fn is not None else params
        return _as_model(loss_fn, start, model_state, eval_fn, eval_mode, int(seed)), key

    starts = [initial(seed) for seed in seeds]
    model = starts[0][0]
    if len({str(jax.tree.structure((m.params, m.model_state))) for m, _ in starts}) > 1:
        raise ValueError("init_fn must give every seed parameters of the same structure.")
    first_batch = jax.tree.map(lambda x: x[0], batches)
    gradient = jax.make_jaxpr(jax.grad(
        lambda p, s: model.loss(p, s, first_batch, jax.random.key(0))[0]))(
        model.params, model.model_state)
    convolutional = _backend.has_convolution(gradient)
    slow_loop = _backend.on_cpu() and _backend.slow_in_loops(gradient)
    group, unroll = _backend.group_size(
        _backend.MAX_UNROLLED_STEPS if slow_loop else num_steps, slow_loop)
    if eval_fn is not None:  # its structure, before it is vmapped
        try:
            shapes = jax.eval_shape(model.evaluate, model.params, model.model_state)
        except Exception as error:  # noqa: BLE001 - any failure to trace is the user's fn
            raise ValueError(f"eval_fn must be a JAX function of the parameters (it is "
                             f"vmapped over the members); tracing it failed: "
                             f"{type(error).__name__}: {str(error).splitlines()[0]}") from None
        if not isinstance(shapes, Mapping):
            raise ValueError("eval_fn must return a dict of scalar metrics, such as "
                             "{'accuracy': 0.93}; got a single value.")
        _metric_values({k: np.zeros(np.shape(x)) for k, x in shapes.items()})
    num_groups = math.ceil(num_steps / group)

    def start(lr, p, s, key):
        return p, s, optimizer(lr).init(p), jnp.bool_(True), key

    def advance(lr, carry, first_step):
        p, s, state, ok, key = carry
        tx = optimizer(lr)

        def body(c, t):
            p, s, state, ok = c
            batch = jax.tree.map(lambda x: x[t % num_batches], batches)
            (loss, new_s), grads = jax.value_and_grad(
                lambda q: model.loss(q, s, batch, jax.random.fold_in(key, t)),
                has_aux=True)(p)
            updates, new_state = tx.update(grads, state, p)
            # Stop a member at its first non-finite loss, and at num_steps (the last
            # group may run past it).
            ok = ok & jnp.isfinite(loss) & (t < num_steps)
            keep = lambda new, old: jax.tree.map(  # noqa: E731
                lambda a, b: jnp.where(ok, a, b), new, old)
            return (keep(optax.apply_updates(p, updates), p), keep(new_s, s),
                    keep(new_state, state), ok), \
                jnp.where(ok, jnp.asarray(loss, jnp.float32), jnp.nan)

        (p, s, state, ok), losses = _backend.scan(
            body, (p, s, state, ok), first_step + jnp.arange(group), unroll=unroll)
        return (p, s, state, ok, key), losses

    def finish(carry):
        metrics = dict(model.evaluate(carry[0], carry[1])) if eval_fn is not None else {}
        return {k: jnp.asarray(x, jnp.float32) for k, x in metrics.items()}

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs),
                           *[(m.params, m.model_state, key) for m, key in starts])
    lrs = jnp.asarray(rates, jnp.float32)
    seeds_array = jnp.asarray(seeds, jnp.uint32)
    jit = functools.partial(jax.jit, compiler_options=compiler_options)
    if vectorize is None:
        vectorize = _backend.vmap_members(convolutional)
    if vectorize:
        def both(f, in_axes):  # vmap over rates (inner) and seeds (outer)
            return jit(jax.vmap(jax.vmap(f, in_axes=in_axes[0]), in_axes=in_axes[1]))

        carry = both(start, ((0, None, None, None), (None, 0, 0, 0)))(lrs, *stacked)
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
        for first, _ in enumerate(seeds_array):
            row, metric_row = [], []
            for lr in lrs:
                carry = start_j(lr, *jax.tree.map(lambda x: x[first], stacked))
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
        eval_mode=model.eval_mode,
    )

