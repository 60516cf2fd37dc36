"""Reading CLR bounds off range tests, with an interval and a verdict for every reading.

Every rule works on two curves of a result: the loss against the learning rate and an
evaluation metric, normally test accuracy, against the learning rate. A suggestion can
be read from one test or from several repeats of the same ramp (other seeds: another
initialisation and order of the batches, `clr_jax.find_bounds`); then the rule reads
the pooled curve (the median over the repeats at each step), and the spread of that
reading when the repeats are drawn again (a bootstrap) is the suggestion's interval.

The default rule, ``"fall"`` (``"auto"``), reads the loss: ``max_lr`` is the first rate
at which the loss has made ``fall`` (90%) of its fall from its starting level to its
lowest, ``base_lr = base_fraction * max_lr``. It is the paper's accuracy rule
transposed to the loss ("max_lr where the rise slows") and it is read on a curve
smoothed by a centred moving average (no lag, unlike the exponential average that the
loss rules of fastai and torch-lr-finder read): the crossing lies where the loss still
falls steeply, so noise moves it little. The reasoning and the measurements behind it
are in docs/guide/range_test.md.

The paper's rule reads the accuracy curve: ``base_lr`` where accuracy starts to rise,
``max_lr`` where the rise stops. The curve of a sequential test is first smoothed with a
running median of three evaluations (a parallel test's points are separate runs and are
used as they are), and with ``lo`` its lowest value before the peak and ``hi`` its peak:

- ``base_lr`` is the first rate at which accuracy has made ``rise[0]`` (10%) of its
  total rise ``hi - lo``;
- ``max_lr`` is the first rate at which it has made ``rise[1]`` (90%) of it: past that
  point accuracy only creeps up, turns ragged or falls.

The loss rules reproduce the suggestions users know, each on the same window of the
loss curve as its original: fastai's ``lr_find`` (``valley``, ``minimum``, ``steep``,
``slide``), which drops the first tenth of the planned steps and the last 5 points, and
torch-lr-finder's ``LRFinder.plot(suggest_lr=True)`` (``steepest``), which drops the
first 10 and the last 5 points; both cut the curve at its first non-finite point. Each
gives one rate ``r``; the bounds are then ``max_lr = r`` and ``base_lr = base_fraction *
r`` (the paper's "base_lr = max_lr / 3 or / 4"). A parallel test's points are separate
runs at rising rates: there nothing is dropped.

Each suggestion carries ``flags``, the reasons not to trust it, each with what to do
(`FLAGS`): the reading at the end of the ramp, a fall (or rise) no larger than the
curve's noise, too few points, divergence before the loss fell, and repeats that
disagree. A reading with no flag is ``trusted``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from clr_jax import _validation as v
from clr_jax.range_test import ParallelRangeTestResult, RangeTestResult

__all__ = ["Bounds", "BoundsError", "FLAGS", "Flag", "METHODS", "suggest_all", "suggest_bounds"]

METHODS = ("auto", "edge", "fall", "paper", "paper_peak", "valley", "minimum", "steep", "slide",
           "steepest")
MIN_LOSS_POINTS = 5
MIN_EVAL_POINTS = 3
# Below these a reading is made but flagged as coarse.
FEW_LOSS_POINTS = 20
FEW_EVAL_POINTS = 8
# A fall (rise) must exceed this many times the curve's noise to count as learning.
NOISE_MULTIPLE = 3.0
# Repeats whose readings of max_lr span more than this factor disagree.
UNSTABLE_RATIO = 2.0
BOOTSTRAP_SAMPLES = 64

FLAGS = {
    "ramp_end": "the reading is at or next to the end of the ramp: the ramp is too short; "
                "raise max_lr (e.g. x10) and run the test again",
    "below_noise": "the curve moves less than its noise: the test shows no clear learning; "
                   "run more steps, or check the loss and the rate range",
    "few_points": "too few points to place the bounds finely: run more steps or evaluate "
                  "more often",
    "early_divergence": "the loss diverged before it fell: min_lr is too high; lower it "
                        "(e.g. /100) and run the test again",
    "unstable": "the repeats disagree: run more repeats (seeds) or longer tests",
}


@dataclasses.dataclass(frozen=True)
class Flag:
    """A reason not to trust a suggestion.

    Attributes:
      code: one of `FLAGS`.
      message: what was seen, with numbers, and what to do.
    """

    code: str
    message: str


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Suggested cyclical bounds, with their intervals and the verdict on the reading.

    Attributes:
      base_lr: the lower bound.
      max_lr: the upper bound.
      method: the rule that produced them.
      evidence: what the rule read off the curves (rates, losses, accuracies, each
        repeat's reading), so a suggestion can be checked without a plot.
      base_interval: ``(low, high)`` for ``base_lr``: the spread of the readings of the
        repeats (or of resampled curves, for a single test); None if not computed.
      max_interval: the same for ``max_lr``.
      flags: the `Flag` s raised on this reading; empty when it can be trusted.
      edge: ``(low, high)``, where training stopped working in the test: from the rate
        at the loss's lowest point (10% quantile of the resampled readings) to the rate
        at which it had climbed back to its starting level or the test stopped on
        divergence (90% quantile); ``high`` is None when neither happened within the
        ramp. A fixed rate above the edge does not train; the loss's rise begins below
        the stability limit when the rate's noise grows with it (stochastic gradients)
        and the test sees divergence only after it.
    """

    base_lr: float
    max_lr: float
    method: str
    evidence: dict[str, Any]
    base_interval: tuple[float, float] | None = None
    max_interval: tuple[float, float] | None = None
    flags: tuple[Flag, ...] = ()
    edge: tuple[float, float | None] | None = None

    @property
    def trusted(self) -> bool:
        """Whether no flag was raised on the reading."""
        return not self.flags

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["trusted"] = self.trusted
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Bounds:
        """The inverse of `to_dict`."""
        data = {k: x for k, x in data.items() if k != "trusted"}
        for key in ("base_interval", "max_interval", "edge"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        data["flags"] = tuple(Flag(**f) for f in data.get("flags", ()))
        return cls(**data)

    def describe(self) -> str:
        """One line: the bounds with their intervals and the verdict."""
        def one(value, interval):
            if interval is None:
                return f"{value:.3g}"
            return f"{value:.3g} [{interval[0]:.3g}, {interval[1]:.3g}]"

        verdict = "trusted" if self.trusted else \
            "flagged: " + ", ".join(f.code for f in self.flags)
        return (f"{self.method}: base_lr {one(self.base_lr, self.base_interval)}, "
                f"max_lr {one(self.max_lr, self.max_interval)} ({verdict})")


class BoundsError(ValueError):
    """No bounds could be read (or, from `clr_jax.find_bounds`, none could be trusted
    within its budget). ``flags`` says why, ``bounds`` is the last reading if any;
    from `clr_jax.find_bounds`, ``results`` holds the last round's tests and ``rounds``
    the record of every round."""

    def __init__(self, message: str, flags: Sequence[Flag] = (), bounds: Bounds | None = None,
                 results: Sequence[Any] = (), rounds: Sequence[dict] = ()):
        super().__init__(message)
        self.flags = tuple(flags)
        self.bounds = bounds
        self.results = tuple(results)
        self.rounds = tuple(rounds)


def _fail(code: str, detail: str) -> BoundsError:
    return BoundsError(f"{detail}; {FLAGS[code]}.", (Flag(code, detail),))


class _Curve(NamedTuple):
    """One curve to read: the rates, raw and smoothed losses up to the first non-finite
    loss, the evaluations, and how the test ended."""

    lrs: np.ndarray
    raw: np.ndarray
    smoothed: np.ndarray
    eval_lrs: np.ndarray
    metrics: dict[str, np.ndarray]
    stopped: bool
    num_steps: int
    parallel: bool
    smoothing: float


def _finite_prefix_length(losses: np.ndarray) -> int:
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else int(losses.size)


def _sequential(result: RangeTestResult) -> _Curve:
    raw = np.asarray(result.losses, np.float64)
    smoothed = np.asarray(result.smoothed_losses, np.float64)
    end = min(_finite_prefix_length(raw), _finite_prefix_length(smoothed))
    return _Curve(np.asarray(result.learning_rates, np.float64)[:end], raw[:end],
                  smoothed[:end], np.asarray(result.eval_learning_rates, np.float64),
                  {k: np.asarray(x, np.float64) for k, x in result.eval_metrics.items()},
                  result.stop_reason is not None, int(result.num_steps), False,
                  float(getattr(result, "smoothing", 0.98)))


def _parallel(result: ParallelRangeTestResult) -> list[_Curve]:
    result = result.sorted_by_rate()
    diverged = result.diverged
    curves = []
    for s in range(result.final_losses.shape[0]):
        losses = np.where(diverged[s], np.nan, result.final_losses[s])
        end = _finite_prefix_length(losses)
        curves.append(_Curve(result.learning_rates[:end], losses[:end], losses[:end],
                             result.learning_rates,
                             {k: x[s] for k, x in result.eval_metrics.items()},
                             bool(end < losses.size), int(result.num_steps), True, 0.0))
    return curves


def _curves(result) -> list[_Curve]:
    """The repeats a suggestion reads: one curve per test (or per seed of a parallel
    test)."""
    if isinstance(result, RangeTestResult):
        return [_sequential(result)]
    if isinstance(result, ParallelRangeTestResult):
        return _parallel(result)
    if isinstance(result, Sequence) and not isinstance(result, (str, bytes)) and result \
            and all(isinstance(r, RangeTestResult) for r in result):
        ramps = {(r.mode, r.min_lr, r.max_lr, r.num_steps) for r in result}
        if len(ramps) > 1:
            raise ValueError(
                "repeated range tests must share one ramp (mode, min_lr, max_lr, num_steps) "
                f"to be pooled; got {sorted(ramps)}. Read each test on its own.")
        return [_sequential(r) for r in result]
    raise ValueError(
        "result must be a RangeTestResult, a list of them (repeats of one ramp) or a "
        f"ParallelRangeTestResult, got {type(result)!r}.")


def _median_pool(rows: list[np.ndarray], fill: float) -> np.ndarray:
    """The median over rows of unequal lengths, a missing tail counting as ``fill``
    (a stopped test: +inf for losses, -inf for accuracy); cut where it is infinite."""
    n = max(r.size for r in rows)
    table = np.full((len(rows), n), fill)
    for i, r in enumerate(rows):
        table[i, :r.size] = np.where(np.isfinite(r), r, fill)
    pooled = np.median(table, axis=0)
    return pooled[:_finite_prefix_length(pooled)]


def _pool(curves: list[_Curve]) -> _Curve:
    """One curve from the repeats: the median over them at each step (sequential) or
    the mean over seeds at each rate (parallel; a rate where any seed diverged counts as
    diverged)."""
    if len(curves) == 1:
        return curves[0]
    first = curves[0]
    if first.parallel:
        n = min(c.lrs.size for c in curves)
        raw = np.mean([c.raw[:n] for c in curves], axis=0)
        metrics = {k: np.mean([c.metrics[k] for c in curves], axis=0) for k in first.metrics}
        return first._replace(lrs=first.lrs[:n], raw=raw, smoothed=raw, metrics=metrics)
    raw = _median_pool([c.raw for c in curves], np.inf)
    smoothed = _median_pool([c.smoothed for c in curves], np.inf)
    n = min(raw.size, smoothed.size)
    longest = max(curves, key=lambda c: c.lrs.size)
    evals = max(curves, key=lambda c: c.eval_lrs.size)
    metrics = {}
    for k in first.metrics:
        pooled = _median_pool([c.metrics.get(k, np.zeros(0)) for c in curves], -np.inf)
        metrics[k] = pooled
    m = min([evals.eval_lrs.size, *(x.size for x in metrics.values())]) if metrics else 0
    return first._replace(
        lrs=longest.lrs[:n], raw=raw[:n], smoothed=smoothed[:n],
        eval_lrs=evals.eval_lrs[:m], metrics={k: x[:m] for k, x in metrics.items()},
        stopped=sum(c.stopped for c in curves) * 2 > len(curves))


def _centred_mean(x: np.ndarray, width: int) -> np.ndarray:
    """A centred moving average over ``width`` points (odd), the ends padded with the
    end values: no lag."""
    half = width // 2
    if half == 0 or x.size < 3:
        return x.copy()
    padded = np.concatenate([np.full(half, x[0]), x, np.full(half, x[-1])])
    return np.convolve(padded, np.ones(2 * half + 1) / (2 * half + 1), mode="valid")


def _window(curve: _Curve) -> int:
    """The centred smoothing width of the "fall" rule: 5% of the planned steps, at
    least 5 points (1 for a parallel test, whose points are separate runs)."""
    return 1 if curve.parallel else max(5, (curve.num_steps // 20) | 1)


def _noise(x: np.ndarray, smooth: np.ndarray) -> float:
    """The scatter of a curve about its smoothed form (a robust standard deviation)."""
    residual = x - smooth
    if residual.size < 3:
        return 0.0
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


def _running_median3(x: np.ndarray) -> np.ndarray:
    if x.size < 3:
        return x.copy()
    padded = np.concatenate([x[:1], x, x[-1:]])
    return np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)


def _ema(raw: np.ndarray, beta: float) -> np.ndarray:
    """The range test's bias-corrected exponential moving average."""
    out, average = np.empty_like(raw), 0.0
    for t, x in enumerate(raw):
        average = beta * average + (1 - beta) * x
        out[t] = average / (1 - beta ** (t + 1))
    return out


def _fastai_valley(losses: np.ndarray) -> tuple[int, dict]:
    """fastai's valley: the longest run of falling losses (not necessarily consecutive
    points), and a point a third plus a sixth of the way into it.

    As fastai computes it: ``length[i]`` is the longest falling run ending at point i,
    grown over the earlier points in order; the run's end moves to i as soon as
    ``length[i]`` passes the longest so far, and its start is then set to i minus
    ``length[i]`` as it stands at that moment. The point is start + int(s) + int(s / 2),
    s = (end - start) / 3.
    """
    n = losses.size
    length = np.ones(n, dtype=np.int64)
    start = end = 0
    for i in range(1, n):
        longer = np.where(losses[:i] > losses[i], length[:i] + 1, 1)
        grown = np.maximum.accumulate(longer)
        length[i] = grown[-1]
        passed = np.flatnonzero(grown > length[end])
        if passed.size:
            end, start = i, i - int(grown[passed[0]])
    section = (end - start) / 3
    # fastai's point falls before the curve (-1) when the longest fall is one step from
    # the first point; fastai then reads the last rate (a negative index), clr_jax the first.
    index = max(start + int(section) + int(section / 2), 0)
    return index, {"valley_indices": [start, end]}


def _fastai_slide(losses: np.ndarray, lr_diff: int = 15, thresh: float = 0.005) -> int:
    """fastai's slide: an interval of ``lr_diff`` points, from the last point back, moves
    left while the loss's gradient at its two ends differs by more than ``thresh``; the
    index of the left end it last moved from (the first interval's, if it never moved).
    """
    if losses.size <= lr_diff:
        raise BoundsError(f"method 'slide' needs more than {lr_diff} loss points, got "
                         f"{losses.size}; run more steps.")
    grad = np.gradient(losses)
    right, left = losses.size - 1, losses.size - 1 - lr_diff
    index = left
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        index = left
        right, left = right - 1, left - 1
    return index


class _Reading(NamedTuple):
    base: float
    max: float
    evidence: dict
    at_end: bool  # the max_lr reading is at or next to the end of what was read
    points: int  # points the rule read
    fall: float  # how far the read curve moves (loss fall or metric rise)
    noise: float  # the read curve's noise


@dataclasses.dataclass(frozen=True)
class _Options:
    method: str
    metric: str
    base_fraction: float
    rise: tuple[float, float]
    min_rise: float
    skip_start: int | None
    skip_end: int | None
    fall: float
    safety: float


def _read_fall(curve: _Curve, o: _Options) -> _Reading:
    lrs, raw = curve.lrs, curve.raw
    if raw.size < MIN_LOSS_POINTS:
        raise _fail("early_divergence" if curve.stopped else "few_points",
                    f"method 'fall' needs at least {MIN_LOSS_POINTS} finite loss points, "
                    f"got {raw.size}")
    width = _window(curve)
    smooth = _centred_mean(raw, width)
    lowest = int(np.argmin(smooth))
    top = int(np.argmax(smooth[: lowest + 1]))
    start, bottom = float(smooth[top]), float(smooth[lowest])
    drop = start - bottom
    level = bottom + (1 - o.fall) * drop
    index = top + int(np.flatnonzero(smooth[top: lowest + 1] <= level)[0])
    turned = np.flatnonzero(smooth[lowest:] > level)
    rate = float(lrs[index])
    evidence = {"loss_start": start, "loss_lowest": bottom, "lr_at_lowest": float(lrs[lowest]),
                "loss_at_max": float(smooth[index]), "smoothing_window": width,
                "lr_loss_turns_up": float(lrs[lowest + turned[0]]) if turned.size else None}
    return _Reading(rate * o.base_fraction, rate, evidence, at_end=not turned.size,
                    points=int(raw.size), fall=drop, noise=_noise(raw, smooth))


def _read_edge(curve: _Curve, o: _Options) -> _Reading:
    lrs, raw = curve.lrs, curve.raw
    if raw.size < MIN_LOSS_POINTS:
        raise _fail("early_divergence" if curve.stopped else "few_points",
                    f"method 'edge' needs at least {MIN_LOSS_POINTS} finite loss points, "
                    f"got {raw.size}")
    width = _window(curve)
    smooth = _centred_mean(raw, width)
    lowest = int(np.argmin(smooth))
    top = int(np.argmax(smooth[: lowest + 1]))
    start, bottom = float(smooth[top]), float(smooth[lowest])
    drop = start - bottom
    level = bottom + (1 - o.fall) * drop
    # the rise that lasts: the first point from which the loss stays above the level
    # to the end of the curve (a noisy floor may poke above it and come back)
    below = np.flatnonzero(smooth[lowest:] <= level)
    index = lowest + int(below[-1]) + 1
    turned = index < raw.size
    index = min(index, raw.size - 1)
    edge = float(lrs[index])
    rate = edge / o.safety
    evidence = {"loss_start": start, "loss_lowest": bottom, "lr_at_lowest": float(lrs[lowest]),
                "lr_loss_turns_up": edge if turned else None, "safety": o.safety,
                "smoothing_window": width}
    return _Reading(rate * o.base_fraction, rate, evidence, at_end=not turned,
                    points=int(raw.size), fall=drop, noise=_noise(raw, smooth))


def _read_paper(curve: _Curve, o: _Options) -> _Reading:
    method, metric = o.method, o.metric
    if metric not in curve.metrics:
        raise BoundsError(
            f"method {method!r} reads the {metric!r} metric, but the result has "
            f"{sorted(curve.metrics) or 'no metrics'}; run the test with eval_fn returning "
            f"{metric!r}, or use a loss rule ('fall', 'valley', 'minimum').")
    values = np.asarray(curve.metrics[metric], np.float64)
    keep = np.isfinite(values)
    rates, values = np.asarray(curve.eval_lrs)[: values.size][keep], values[keep]
    if rates.size < MIN_EVAL_POINTS:
        raise _fail("few_points", f"method {method!r} needs at least {MIN_EVAL_POINTS} "
                    f"finite {metric!r} points, got {rates.size}; evaluate more often "
                    "(smaller eval_every)")
    # A sequential test's evaluations are single noisy readings; a parallel test's
    # are separate runs (averaged over seeds), often only a handful, which a
    # running median would flatten.
    smooth = values if curve.parallel else _running_median3(values)
    noise = _noise(values, smooth)
    peak = int(np.argmax(smooth))
    if method == "paper_peak":
        low = int(np.argmin(smooth[: peak + 1]))
        return _Reading(float(rates[peak]) * o.base_fraction, float(rates[peak]),
                        {"peak_" + metric: float(smooth[peak])},
                        at_end=peak >= rates.size - 2, points=int(rates.size),
                        fall=float(smooth[peak] - smooth[low]), noise=noise)
    low = int(np.argmin(smooth[: peak + 1]))
    lo, hi = smooth[low], smooth[peak]
    if hi - lo < o.min_rise:
        raise _fail("below_noise", f"{metric!r} rises by only {hi - lo:.4g} (< min_rise="
                    f"{o.min_rise}) over the test")
    after = np.arange(smooth.size) >= low
    b = int(np.flatnonzero(after & (smooth >= lo + o.rise[0] * (hi - lo)))[0])
    m = int(np.flatnonzero(after & (smooth >= lo + o.rise[1] * (hi - lo)))[0])
    if m == b:
        b = max(b - 1, low)
    return _Reading(
        float(rates[b]), float(rates[m]),
        {f"{metric}_start": float(lo), f"{metric}_peak": float(hi),
         "lr_at_peak": float(rates[peak]), f"{metric}_at_base": float(smooth[b]),
         f"{metric}_at_max": float(smooth[m])},
        at_end=m >= rates.size - 2, points=int(rates.size), fall=float(hi - lo), noise=noise)


def _read_loss_rule(curve: _Curve, o: _Options) -> _Reading:
    method = o.method
    lrs, losses = curve.lrs, curve.smoothed
    if not curve.parallel:  # the original's window
        first = o.skip_start if o.skip_start is not None else (
            10 if method == "steepest" else curve.num_steps // 10)
        last = 5 if o.skip_end is None else o.skip_end
        window = slice(first, lrs.size - last)
        lrs, losses = lrs[window], losses[window]
    if losses.size < MIN_LOSS_POINTS:
        raise _fail("early_divergence" if curve.stopped else "few_points",
                    f"method {method!r} needs at least {MIN_LOSS_POINTS} finite loss points "
                    f"before the loss diverges, got {losses.size}; run more steps or lower "
                    "max_lr/min_lr")
    lowest = int(np.argmin(losses))
    evidence = {"lr_at_minimum": float(lrs[lowest]), "minimum_loss": float(losses[lowest]),
                "points_read": int(lrs.size)}
    if method == "minimum":
        index, rate = lowest, lrs[lowest] / 10
        evidence = evidence
    elif method == "valley":
        index, found = _fastai_valley(losses)
        rate, evidence = lrs[index], {**evidence, **found}
    elif method == "steep":
        slopes = np.diff(losses) / np.diff(np.log(lrs))
        index = int(np.argmin(slopes))
        rate = lrs[index]
        evidence = {**evidence, "steepest_slope_per_log_lr": float(slopes[index])}
    elif method == "slide":
        index = _fastai_slide(losses)
        rate = lrs[index]
    else:  # "steepest", torch-lr-finder's
        gradient = np.gradient(losses)
        index = int(np.argmin(gradient))
        rate = lrs[index]
        evidence = {**evidence, "steepest_gradient_per_point": float(gradient[index])}
    rate = float(rate)
    # the curve's movement and noise, as the "fall" rule measures them on the raw losses
    smooth = _centred_mean(curve.raw, _window(curve))
    low = int(np.argmin(smooth))
    return _Reading(rate * o.base_fraction, rate, {"suggested_lr": rate, **evidence},
                    at_end=index >= losses.size - 2, points=int(losses.size),
                    fall=float(smooth[: low + 1].max() - smooth[low]),
                    noise=_noise(curve.raw, smooth))


def _edge(curve: _Curve) -> tuple[float, float | None] | None:
    """(rate at the lowest centred loss, rate where it climbed back to its start or the
    curve ends on divergence), or None when the loss never fell."""
    if curve.raw.size < MIN_LOSS_POINTS:
        return None
    smooth = _centred_mean(curve.raw, _window(curve))
    lowest = int(np.argmin(smooth))
    start = float(smooth[: lowest + 1].max())
    back = np.flatnonzero(smooth[lowest:] >= start)
    if back.size:
        return float(curve.lrs[lowest]), float(curve.lrs[lowest + back[0]])
    return float(curve.lrs[lowest]), float(curve.lrs[-1]) if curve.stopped else None


def _read(curve: _Curve, o: _Options) -> _Reading:
    if o.method == "edge":
        return _read_edge(curve, o)
    if o.method == "fall":
        return _read_fall(curve, o)
    if o.method in ("paper", "paper_peak"):
        return _read_paper(curve, o)
    return _read_loss_rule(curve, o)


def _resampled(curve: _Curve, rng: np.random.Generator) -> _Curve:
    """The curve with its noise drawn again (a wild bootstrap): each residual about the
    smoothed form keeps its place and size and gets a random sign, one sign per block
    as long as the smoothing window (neighbouring residuals are correlated); the
    evaluations likewise about their running median, a sign each."""
    width = _window(curve)
    smooth = _centred_mean(curve.raw, width)
    n = smooth.size
    signs = np.repeat(rng.choice([-1.0, 1.0], -(-n // width)), width)[:n]
    raw = smooth + signs * (curve.raw - smooth)
    metrics = {}
    for k, x in curve.metrics.items():
        med = _running_median3(x)
        metrics[k] = med + rng.choice([-1.0, 1.0], x.size) * (x - med)
    return curve._replace(raw=raw, smoothed=_ema(raw, curve.smoothing), metrics=metrics)


def _interval(values: list[float], point: float) -> tuple[float, float]:
    """10% to 90% of the resampled readings, widened to hold the reading itself."""
    low, high = np.quantile(np.asarray(values, np.float64), [0.1, 0.9])
    return float(min(low, point)), float(max(high, point))


def suggest_bounds(
    result: RangeTestResult | Sequence[RangeTestResult] | ParallelRangeTestResult,
    method: str = "auto",
    *,
    metric: str = "accuracy",
    base_fraction: float = 0.25,
    fall: float = 0.9,
    safety: float = 5.0,
    rise: tuple[float, float] = (0.1, 0.9),
    min_rise: float = 0.02,
    skip_start: int | None = None,
    skip_end: int | None = None,
) -> Bounds:
    """Suggests ``base_lr`` and ``max_lr`` from a range test, with intervals and flags.

    Methods:

    - ``"fall"`` (and ``"auto"``, the default): from the loss, the first rate at which
      the loss (smoothed by a centred moving average of 5% of the planned steps) has
      made ``fall`` (90%) of its fall from its starting level to its lowest point.
    - ``"paper"``: from the ``metric`` curve (accuracy), the rise rule described in
      this module's docstring. The paper's CIFAR-10 test gave 0.001 and 0.006.
    - ``"paper_peak"``: the paper's alternative, ``max_lr`` at the smoothed accuracy
      peak and ``base_lr = base_fraction * max_lr``.
    - ``"valley"``: fastai's ``valley``: a point a half of the way into the longest
      stretch over which the loss keeps falling.
    - ``"minimum"``: fastai's ``minimum``: the rate at the loss minimum / 10.
    - ``"steep"``: fastai's ``steep``: the rate where the loss falls fastest against
      log(rate) (slopes between neighbouring points).
    - ``"slide"``: fastai's ``slide``: the interval slide rule (``lr_diff`` 15 points,
      gradient threshold 0.005).
    - ``"steepest"``: torch-lr-finder's suggestion: the rate at the most negative
      gradient of the loss against the point index.

    For every rule but ``"paper"``, ``base_lr = base_fraction * max_lr``. The loss
    rules of the peers read the smoothed loss of the result (its exponential moving
    average), as their originals do.

    Several repeats of one ramp (a list of results) are read pooled: the median over
    the repeats at each step. The interval is that of the pooled reading: the rule
    reads 64 pools of repeats drawn again with replacement (a bootstrap over the
    repeats), and the interval runs from 10% to 90% of those readings, so it narrows as
    repeats are added. A single test's interval comes from the test itself: the rule
    reads 64 copies of the curve whose noise (the scatter about its smoothed form) gets
    random signs (a wild bootstrap). Each repeat's own reading is in the evidence.

    Flags (`FLAGS`) are raised when the reading is at or next to the end of the ramp
    (for ``"fall"``: the loss never turned up by a tenth of its fall after its lowest
    point); when the curve's fall (or rise) is less than 3 times its noise; when fewer
    than 20 loss points (8 evaluations) were read; when the test diverged before the
    loss fell; and when the interval of ``max_lr`` spans more than a factor 2 (or more
    than half the resampled curves could not be read).

    Args:
      result: a `RangeTestResult`, a list of them (repeats of the same ramp, e.g. from
        `clr_jax.find_bounds`) or a `ParallelRangeTestResult`.
      method: one of `METHODS`.
      metric: the evaluation metric the paper rules read; higher is better.
      base_fraction: ``base_lr / max_lr`` where a rule gives only ``max_lr``; the paper
        suggests 1/3 to 1/4.
      fall: the fraction of the loss's fall that marks ``max_lr`` (``"fall"``).
      rise: the fractions of the accuracy rise that mark ``base_lr`` and ``max_lr``.
      min_rise: the least rise of the metric (in its own units) that counts as one.
      skip_start: loss points a sequential test's peer loss rules drop at the start
        (early in a test the loss falls because training has just begun, whatever the
        rate); by default the rule's original: a tenth of the planned steps for fastai's
        rules, 10 for torch-lr-finder's.
      skip_end: loss points dropped at the end; by default 5, as both originals.

    Returns:
      `Bounds` with the method's evidence, intervals and flags.

    Raises:
      ValueError: on an unknown method or bad settings, repeats with different ramps,
        or a missing metric; `BoundsError` (a ValueError) when no bounds can be read
        (too few finite points, divergence before the loss fell, an accuracy curve
        that never rises), with its flags.
    """
    v.choice("method", method, METHODS)
    for name, count in (("skip_start", skip_start), ("skip_end", skip_end)):
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 0):
            raise ValueError(f"{name} must be a whole number >= 0 or None, got {count!r}.")
    v.check("base_fraction", base_fraction, lambda f: (f > 0) & (f < 1), "in (0, 1)")
    v.check("fall", fall, lambda f: (f > 0) & (f < 1), "in (0, 1)")
    v.check("safety", safety, lambda f: f >= 1, ">= 1")
    if not (0 <= rise[0] < rise[1] <= 1):
        raise ValueError(f"rise must be two fractions 0 <= a < b <= 1, got {rise!r}.")
    method = "edge" if method == "auto" else method
    options = _Options(method, metric, float(base_fraction), tuple(rise), float(min_rise),
                       skip_start, skip_end, float(fall), float(safety))
    curves = _curves(result)
    pooled = _pool(curves)
    reading = _read(pooled, options)

    # the interval: the reading of the pooled curve of repeats drawn again (with
    # replacement), or of a single curve with its noise drawn again
    rng = np.random.default_rng(0)
    resampled, failed, edges = [], 0, [_edge(pooled)]
    if len(curves) > 1 or not curves[0].parallel:
        for _ in range(BOOTSTRAP_SAMPLES):
            if len(curves) > 1:
                drawn = _pool([curves[i] for i in rng.integers(0, len(curves), len(curves))])
            else:
                drawn = _resampled(curves[0], rng)
            edges.append(_edge(drawn))
            try:
                resampled.append(_read(drawn, options))
            except ValueError:
                failed += 1
    edge = None
    if edges[0] is not None:
        lows = [e[0] for e in edges if e is not None]
        highs = [e[1] for e in edges if e is not None and e[1] is not None]
        high = float(np.quantile(highs, 0.9)) if edges[0][1] is not None and highs else None
        edge = (float(min(np.quantile(lows, 0.1), edges[0][0])),
                None if high is None else max(high, edges[0][1]))
    base_interval = max_interval = None
    if resampled:
        base_interval = _interval([r.base for r in resampled], reading.base)
        max_interval = _interval([r.max for r in resampled], reading.max)
    evidence = dict(reading.evidence)
    evidence.update(points_read=reading.points, movement=reading.fall, noise=reading.noise,
                    repeats=len(curves))
    if len(curves) > 1:
        each = []
        for curve in curves:
            try:
                each.append(_read(curve, options).max)
            except ValueError:
                each.append(None)
        evidence["repeat_max_lr"] = each

    flags = []
    what = "rise" if method in ("paper", "paper_peak") else "fall"
    if reading.at_end:
        flags.append(Flag("ramp_end", f"max_lr {reading.max:.3g} is at the end of what the "
                          f"test read (up to {float(pooled.lrs[-1]):.3g}); "
                          + FLAGS["ramp_end"]))
    if reading.fall <= NOISE_MULTIPLE * reading.noise:
        code = "early_divergence" if pooled.stopped else "below_noise"
        flags.append(Flag(code, f"the {what} of the curve ({reading.fall:.3g}) is no more "
                          f"than {NOISE_MULTIPLE:g} times its noise ({reading.noise:.3g}); "
                          + FLAGS[code]))
    few = FEW_EVAL_POINTS if method in ("paper", "paper_peak") else FEW_LOSS_POINTS
    if reading.points < few:
        flags.append(Flag("few_points", f"only {reading.points} points were read; "
                          + FLAGS["few_points"]))
    if max_interval is not None and (max_interval[1] > UNSTABLE_RATIO * max_interval[0]
                                     or failed * 2 > BOOTSTRAP_SAMPLES):
        source = "resampled repeats" if len(curves) > 1 else "resampled curves"
        flags.append(Flag("unstable", f"the {source} read max_lr from {max_interval[0]:.3g} "
                          f"to {max_interval[1]:.3g}"
                          + (f" ({failed} could not be read)" if failed else "")
                          + "; " + FLAGS["unstable"]))
    return Bounds(base_lr=reading.base, max_lr=reading.max, method=method, evidence=evidence,
                  base_interval=base_interval, max_interval=max_interval, flags=tuple(flags),
                  edge=edge)


def suggest_all(result, methods: Sequence[str] | None = None, **settings: Any) -> list[Bounds]:
    """The bounds of every rule in ``methods`` (by default all but ``"auto"``) that can
    read ``result`` (a short test may be too short for some), in that order; the others
    are left out. ``settings`` go to `suggest_bounds`."""
    bounds = []
    for method in methods if methods is not None else [m for m in METHODS if m != "auto"]:
        try:
            bounds.append(suggest_bounds(result, method, **settings))
        except BoundsError:
            continue
    return bounds
