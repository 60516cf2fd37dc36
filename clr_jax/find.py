"""Bounds in one call: repeated range tests, a reading with its interval and verdict, and
a test extended or repeated (within a stated budget) until the reading can be trusted.

    found = clr_jax.find_bounds(loss_fn, params, batches, optimizer=optax.adam)
    schedule = clr_jax.triangular(found.base_lr, found.max_lr, step_size=2000)

What fastai users do with ``lr_find`` then ``fit_one_cycle``, with the evidence kept:
``found.bounds`` (intervals and flags), ``found.results`` (every repeat of the last
round) and ``found.rounds`` (what each round ran and why the next one changed it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from clr_jax import _validation as v
from clr_jax._io import jsonable
from clr_jax.range_test import MODES, RangeTestResult, _JsonResult, _leading_length, _take, \
    range_test
from clr_jax.suggest import Bounds, BoundsError, suggest_bounds

__all__ = ["FoundBounds", "find_bounds"]


@dataclasses.dataclass(frozen=True)
class FoundBounds(_JsonResult):
    """What `find_bounds` found.

    Attributes:
      bounds: the `Bounds` of the last round: the suggestion, its intervals and flags.
      results: the repeats of the last round's range test, one `RangeTestResult` each.
      rounds: one dict per round: its ramp (``min_lr``, ``max_lr``, ``num_steps``), its
        ``seeds``, its reading (``bounds``) or why none could be made (``error``), and
        its ``flags``.
    """

    bounds: Bounds
    results: tuple[RangeTestResult, ...]
    rounds: tuple[dict[str, Any], ...]

    @property
    def base_lr(self) -> float:
        return self.bounds.base_lr

    @property
    def max_lr(self) -> float:
        return self.bounds.max_lr

    @property
    def trusted(self) -> bool:
        """Whether the last reading raised no flag."""
        return self.bounds.trusted

    @property
    def steps_run(self) -> int:
        """Training steps taken by every range test of every round."""
        return int(sum(r["steps_run"] for r in self.rounds))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN written as None)."""
        return jsonable({"bounds": self.bounds.to_dict(),
                         "results": [r.to_dict() for r in self.results],
                         "rounds": list(self.rounds), "trusted": self.trusted})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FoundBounds:
        """The inverse of `to_dict`."""
        return cls(Bounds.from_dict(dict(data["bounds"])),
                   tuple(RangeTestResult.from_dict(r) for r in data["results"]),
                   tuple(dict(r) for r in data["rounds"]))


def _batches_for(batches, num_steps: int):
    """A function (seed, num_steps) -> the batches of one repeat. A callable is the
    user's own; arrays (or an iterable, read once) are shared by every repeat, each
    after the first reading them in its own order of the leading step axis."""
    if callable(batches) and not hasattr(batches, "__iter__") \
            and not hasattr(batches, "shape"):
        return batches
    count = _leading_length(batches)
    if count is None:
        items = _take(iter(batches), num_steps, 0, num_steps)
        batches = jax.tree.map(lambda *xs: np.stack(xs), *items)
        count = num_steps
    if count == 0:
        raise ValueError("batches has 0 entries on its leading step axis.")
    first = [None]

    def for_seed(seed, _num_steps):
        if first[0] is None:
            first[0] = seed
        if seed == first[0]:
            return batches
        order = np.random.default_rng(seed).permutation(count)
        return jax.tree.map(lambda x: x[order], batches)

    return for_seed


def find_bounds(
    loss_fn: Callable[..., jax.Array],
    params: Any,
    batches: Any,
    *,
    min_lr: float = 1e-5,
    max_lr: float = 10.0,
    num_steps: int = 200,
    optimizer: Callable[[optax.ScalarOrSchedule], optax.GradientTransformation] = optax.sgd,
    mode: str = "exponential",
    eval_fn: Callable[[Any], Mapping[str, Any]] | None = None,
    eval_every: int | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    init_fn: Callable[[jax.Array], Any] | None = None,
    method: str = "auto",
    base_fraction: float = 0.25,
    max_rounds: int = 3,
    strict: bool = True,
    smoothing: float = 0.98,
    diverge_threshold: float = 4.0,
    progress: bool = False,
    compiler_options: Mapping[str, Any] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    model_state: Any = None,
    eval_mode: str | None = None,
) -> FoundBounds:
    """Finds CLR bounds: repeated range tests, read with their interval and verdict.

    Each round runs ``len(seeds)`` range tests of one ramp (`clr_jax.range_test`), each
    repeat from its own starting point (``init_fn(jax.random.key(seed))``, or ``params``
    for every repeat) and with its own order of the batches (the first seed reads them
    as given), and reads them with `clr_jax.suggest_bounds`: the pooled curve for the
    bounds, each repeat for their interval. A reading with flags is not trusted; the
    next round changes what the flags point at:

    - ``ramp_end`` (the reading is at the end of the ramp): ``max_lr`` x10 (x3 for a
      linear ramp);
    - ``early_divergence`` (the loss diverged before it fell): ``min_lr`` /100 (/10);
    - ``below_noise`` or ``few_points``: twice the steps (evaluations as often in
      steps, so twice as many);
    - ``unstable`` (the repeats disagree): twice the repeats.

    The budget is ``max_rounds`` rounds (by default 3: at most 3 x 2 x the steps of the
    first round's repeats, or 4 x once steps double twice). When the last round's reading
    is still flagged, ``strict`` raises `clr_jax.BoundsError` with every round's flags;
    with ``strict=False`` the flagged reading is returned (``found.trusted`` is False).

    Models with state are taken as `clr_jax.range_test` takes them: an NNX module as
    ``params`` with ``loss_fn(model, batch)`` (each repeat after the first folds its seed
    into the module's random streams), or ``model_state`` with ``loss_fn(params,
    model_state, batch) -> (loss, new_model_state)``. The caller's module and arrays are
    left as they were.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, or with a ``key`` argument as in
        `clr_jax.range_test` (its key then depends on the repeat's seed).
      params: the starting pytree or NNX module (for every repeat unless ``init_fn``
        is given).
      batches: a pytree of arrays with a leading step axis, an iterable of at least
        ``num_steps`` batches (read once and reused), or a function
        ``batches(seed, num_steps)`` giving each repeat its own.
      min_lr: the ramp's first rate.
      max_lr: the ramp's last rate.
      num_steps: the ramp's length in steps.
      optimizer: ``learning_rate -> optax.GradientTransformation``.
      mode: ``"exponential"`` (default: it covers decades evenly) or ``"linear"``.
      eval_fn: ``eval_fn(params) -> {name: scalar}`` for the paper's accuracy rules.
      eval_every: steps between evaluations; required with ``eval_fn``.
      seeds: one range test per seed, each with its own start and batch order.
      init_fn: ``init_fn(key) -> params``, each repeat's starting point.
      method: the `clr_jax.suggest_bounds` rule; ``"auto"`` is ``"fall"``.
      base_fraction: ``base_lr / max_lr`` for the rules that read one rate.
      max_rounds: the most rounds of tests.
      strict: raise when no trusted reading was found within ``max_rounds``.
      smoothing: as `clr_jax.range_test`.
      diverge_threshold: as `clr_jax.range_test`.
      progress: show a progress bar per test.
      compiler_options: as `clr_jax.range_test`.
      on_round: called with each round's record as it ends (e.g. to print it).
      model_state: as `clr_jax.range_test`.
      eval_mode: as `clr_jax.range_test`.

    Returns:
      A `FoundBounds`: ``.base_lr``, ``.max_lr``, ``.bounds`` (with intervals and
      flags), ``.results`` and ``.rounds``.

    Raises:
      ValueError: on bad settings (as `clr_jax.range_test`, or no seeds).
      BoundsError: with ``strict``, when no round's reading could be trusted.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed, e.g. seeds=(0, 1, 2).")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must differ from one another, got {seeds}.")
    max_rounds = v.positive_int("max_rounds", max_rounds)
    v.choice("mode", mode, MODES)
    if init_fn is not None and not callable(init_fn):
        raise ValueError(f"init_fn must be a function of a PRNG key, got {init_fn!r}.")
    batches_for = _batches_for(batches, num_steps)
    rounds: list[dict[str, Any]] = []
    results: list[RangeTestResult] = []
    bounds, flags = None, ()
    for index in range(max_rounds):
        results = []
        for seed in seeds:
            start = init_fn(jax.random.key(seed)) if init_fn is not None else params
            results.append(range_test(
                loss_fn, start, batches_for(seed, num_steps), min_lr=min_lr, max_lr=max_lr,
                num_steps=num_steps, optimizer=optimizer, mode=mode, eval_fn=eval_fn,
                eval_every=eval_every, smoothing=smoothing,
                diverge_threshold=diverge_threshold, seed=seed, progress=progress,
                compiler_options=compiler_options, model_state=model_state,
                eval_mode=eval_mode))
        record: dict[str, Any] = {
            "round": index + 1, "min_lr": float(min_lr), "max_lr": float(max_lr),
            "num_steps": int(num_steps), "mode": mode, "seeds": list(seeds),
            "steps_run": int(sum(len(r.losses) for r in results))}
        try:
            bounds = suggest_bounds(results, method, base_fraction=base_fraction)
            flags = bounds.flags
            record["bounds"] = bounds.to_dict()
        except BoundsError as error:
            bounds, flags = None, error.flags
            record["error"] = str(error)
        record["flags"] = [dataclasses.asdict(f) for f in flags]
        record = json.loads(json.dumps(jsonable(record)))  # plain JSON, as saved
        rounds.append(record)
        if on_round is not None:
            on_round(record)
        if bounds is not None and bounds.trusted:
            break
        codes = {f.code for f in flags}
        exponential = mode == "exponential"
        if "early_divergence" in codes:
            min_lr = min_lr / (100 if exponential else 10)
        elif "ramp_end" in codes:
            max_lr = max_lr * (10 if exponential else 3)
        if codes & {"below_noise", "few_points"} and "early_divergence" not in codes:
            num_steps *= 2
        if "unstable" in codes:
            extra = max(seeds) + 1
            seeds = seeds + list(range(extra, extra + len(seeds)))
    if bounds is None or not bounds.trusted:
        last = rounds[-1]
        detail = "; ".join(f["message"] for f in last["flags"]) or last.get("error", "")
        message = (f"no trusted bounds after {len(rounds)} round(s) of range tests "
                   f"(last ramp {last['min_lr']:.3g} to {last['max_lr']:.3g} over "
                   f"{last['num_steps']} steps, {len(last['seeds'])} repeats): {detail}")
        if strict or bounds is None:
            raise BoundsError(message, flags, bounds, results, rounds)
    return FoundBounds(bounds, tuple(results), tuple(rounds))
