"""Reading CLR bounds off a range test: the paper's accuracy rule and the loss-based rules.

Every rule works on two curves of a result: the loss against the learning rate (the
smoothed loss of `range_test`, or each rate's final loss of `parallel_range_test`)
and an evaluation metric, normally test accuracy, against the learning rate.

The paper's rule reads the accuracy curve: ``base_lr`` where accuracy starts to rise,
``max_lr`` where the rise stops. On a noisy curve "starts to rise" and "stops" need a
definition; here the curve of a sequential test is first smoothed with a running
median of three evaluations (a parallel test's points are separate runs and are used
as they are), and with ``lo`` its lowest value before the peak and ``hi`` its peak:

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
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from clr_jax import _validation as v
from clr_jax.range_test import ParallelRangeTestResult, RangeTestResult

__all__ = ["Bounds", "METHODS", "suggest_bounds"]

METHODS = ("auto", "paper", "paper_peak", "valley", "minimum", "steep", "slide", "steepest")
MIN_LOSS_POINTS = 5
MIN_EVAL_POINTS = 3


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Suggested cyclical bounds.

    Attributes:
      base_lr: the lower bound.
      max_lr: the upper bound.
      method: the rule that produced them.
      evidence: what the rule read off the curves (rates, losses, accuracies), so a
        suggestion can be checked without a plot.
    """

    base_lr: float
    max_lr: float
    method: str
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _curves(result) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(lrs, losses, eval_lrs, metrics), sorted by rate."""
    if isinstance(result, RangeTestResult):
        return (result.learning_rates, result.smoothed_losses, result.eval_learning_rates,
                result.eval_metrics)
    if isinstance(result, ParallelRangeTestResult):
        result = result.sorted_by_rate()
        # A rate where any seed diverged counts as diverged.
        diverged = result.diverged.any(axis=0)
        losses = np.where(diverged, np.nan, result.final_losses.mean(axis=0))
        metrics = {k: x.mean(axis=0) for k, x in result.eval_metrics.items()}
        return result.learning_rates, losses, result.learning_rates, metrics
    raise ValueError(
        f"result must be a RangeTestResult or ParallelRangeTestResult, got {type(result)!r}."
    )


def _finite_prefix(lrs: np.ndarray, losses: np.ndarray, method: str):
    bad = np.flatnonzero(~np.isfinite(losses))
    end = bad[0] if bad.size else losses.size
    if end < MIN_LOSS_POINTS:
        raise ValueError(
            f"method {method!r} needs at least {MIN_LOSS_POINTS} finite loss points before "
            f"the loss diverges, got {end}; run more steps or lower max_lr/min_lr."
        )
    return lrs[:end], losses[:end]


def _running_median3(x: np.ndarray) -> np.ndarray:
    if x.size < 3:
        return x.copy()
    padded = np.concatenate([x[:1], x, x[-1:]])
    return np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)


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


def _fastai_slide(lrs: np.ndarray, losses: np.ndarray, lr_diff: int = 15,
                  thresh: float = 0.005) -> float:
    """fastai's slide: an interval of ``lr_diff`` points, from the last point back, moves
    left while the loss's gradient at its two ends differs by more than ``thresh``; the
    rate at the left end it last moved from (the first interval's, if it never moved).
    """
    if losses.size <= lr_diff:
        raise ValueError(f"method 'slide' needs more than {lr_diff} loss points, got "
                         f"{losses.size}; run more steps.")
    grad = np.gradient(losses)
    right, left = losses.size - 1, losses.size - 1 - lr_diff
    rate = lrs[left]
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        rate = lrs[left]
        right, left = right - 1, left - 1
    return float(rate)


def _from_point(rate: float, method: str, base_fraction: float, evidence) -> Bounds:
    return Bounds(base_lr=float(rate * base_fraction), max_lr=float(rate), method=method,
                  evidence={"suggested_lr": float(rate), **evidence})


def suggest_bounds(
    result: RangeTestResult | ParallelRangeTestResult,
    method: str = "auto",
    *,
    metric: str = "accuracy",
    base_fraction: float = 0.25,
    rise: tuple[float, float] = (0.1, 0.9),
    min_rise: float = 0.02,
    skip_start: int | None = None,
    skip_end: int | None = None,
) -> Bounds:
    """Suggests ``base_lr`` and ``max_lr`` from a range test.

    Methods:

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
    - ``"auto"``: ``"paper"`` when ``metric`` was evaluated at 3 or more points, else
      ``"valley"``.

    For the loss rules ``base_lr = base_fraction * max_lr``.

    Args:
      result: a `RangeTestResult` or `ParallelRangeTestResult`.
      method: one of `METHODS`.
      metric: the evaluation metric the paper rules read; higher is better.
      base_fraction: ``base_lr / max_lr`` where a rule gives only ``max_lr``; the paper
        suggests 1/3 to 1/4.
      rise: the fractions of the accuracy rise that mark ``base_lr`` and ``max_lr``.
      min_rise: the least rise of the metric (in its own units) that counts as one.
      skip_start: loss points a sequential test's loss rules drop at the start (early
        in a test the loss falls because training has just begun, whatever the rate);
        by default the rule's original: a tenth of the planned steps for fastai's
        rules, 10 for torch-lr-finder's.
      skip_end: loss points dropped at the end; by default 5, as both originals.

    Returns:
      `Bounds` with the method's evidence.

    Raises:
      ValueError: on an unknown method, a missing metric, too few finite points for
        the method, or an accuracy curve that never rises.
    """
    v.choice("method", method, METHODS)
    for name, count in (("skip_start", skip_start), ("skip_end", skip_end)):
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 0):
            raise ValueError(f"{name} must be a whole number >= 0 or None, got {count!r}.")
    v.check("base_fraction", base_fraction, lambda f: (f > 0) & (f < 1), "in (0, 1)")
    if not (0 <= rise[0] < rise[1] <= 1):
        raise ValueError(f"rise must be two fractions 0 <= a < b <= 1, got {rise!r}.")
    lrs, losses, eval_lrs, metrics = _curves(result)
    if method == "auto":
        enough = metric in metrics and np.isfinite(metrics[metric]).sum() >= MIN_EVAL_POINTS
        method = "paper" if enough else "valley"

    if method in ("paper", "paper_peak"):
        if metric not in metrics:
            raise ValueError(
                f"method {method!r} reads the {metric!r} metric, but the result has "
                f"{sorted(metrics) or 'no metrics'}; run the test with eval_fn returning "
                f"{metric!r}, or use a loss rule ('steepest', 'valley', 'minimum')."
            )
        values = np.asarray(metrics[metric], np.float64)
        keep = np.isfinite(values)
        rates, values = np.asarray(eval_lrs)[keep], values[keep]
        if rates.size < MIN_EVAL_POINTS:
            raise ValueError(
                f"method {method!r} needs at least {MIN_EVAL_POINTS} finite {metric!r} "
                f"points, got {rates.size}; evaluate more often (smaller eval_every)."
            )
        # A sequential test's evaluations are single noisy readings; a parallel test's
        # are separate runs (averaged over seeds), often only a handful, which a
        # running median would flatten.
        smooth = _running_median3(values) if isinstance(result, RangeTestResult) else values
        peak = int(np.argmax(smooth))
        if method == "paper_peak":
            return _from_point(rates[peak], method, base_fraction,
                               {"peak_" + metric: float(smooth[peak])})
        low = int(np.argmin(smooth[: peak + 1]))
        lo, hi = smooth[low], smooth[peak]
        if hi - lo < min_rise:
            raise ValueError(
                f"{metric!r} rises by only {hi - lo:.4g} (< min_rise={min_rise}) over the "
                "test; widen the rate range or train longer per step."
            )
        after = np.arange(smooth.size) >= low
        b = int(np.flatnonzero(after & (smooth >= lo + rise[0] * (hi - lo)))[0])
        m = int(np.flatnonzero(after & (smooth >= lo + rise[1] * (hi - lo)))[0])
        if m == b:
            b = max(b - 1, low)
        return Bounds(
            base_lr=float(rates[b]), max_lr=float(rates[m]), method=method,
            evidence={f"{metric}_start": float(lo), f"{metric}_peak": float(hi),
                      "lr_at_peak": float(rates[peak]), f"{metric}_at_base": float(smooth[b]),
                      f"{metric}_at_max": float(smooth[m])},
        )

    lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
    if isinstance(result, RangeTestResult):  # the original's window
        first = skip_start if skip_start is not None else (
            10 if method == "steepest" else result.num_steps // 10)
        last = 5 if skip_end is None else skip_end
        window = slice(first, lrs.size - last)
        lrs, losses = lrs[window], losses[window]
    rates, loss = _finite_prefix(lrs, losses, method)
    lowest = int(np.argmin(loss))
    evidence = {"lr_at_minimum": float(rates[lowest]), "minimum_loss": float(loss[lowest]),
                "points_read": int(rates.size)}
    if method == "minimum":
        return _from_point(rates[lowest] / 10, method, base_fraction, evidence)
    if method == "valley":
        index, found = _fastai_valley(loss)
        return _from_point(rates[index], method, base_fraction, {**evidence, **found})
    if method == "steep":
        slopes = np.diff(loss) / np.diff(np.log(rates))
        k = int(np.argmin(slopes))
        return _from_point(rates[k], method, base_fraction,
                           {**evidence, "steepest_slope_per_log_lr": float(slopes[k])})
    if method == "slide":
        return _from_point(_fastai_slide(rates, loss), method, base_fraction, evidence)
    gradient = np.gradient(loss)  # "steepest", torch-lr-finder's
    k = int(np.argmin(gradient))
    return _from_point(rates[k], method, base_fraction,
                       {**evidence, "steepest_gradient_per_point": float(gradient[k])})
