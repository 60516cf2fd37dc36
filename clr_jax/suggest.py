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

The loss rules each give one rate ``r`` in the manner of fastai's and
pytorch-lr-finder's suggestions; the bounds are then ``max_lr = r`` and
``base_lr = base_fraction * r`` (the paper's "base_lr = max_lr / 3 or / 4").
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from clr_jax import _validation as v
from clr_jax.range_test import ParallelRangeTestResult, RangeTestResult

__all__ = ["Bounds", "METHODS", "suggest_bounds"]

METHODS = ("auto", "paper", "paper_peak", "steepest", "valley", "minimum")
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


def _longest_valley(losses: np.ndarray) -> tuple[int, int]:
    """Start and end index of the longest strictly decreasing subsequence."""
    n = losses.size
    length = np.ones(n, dtype=np.int64)
    start = np.arange(n)
    for i in range(1, n):
        higher = np.flatnonzero(losses[:i] > losses[i])
        if higher.size:
            j = higher[np.argmax(length[higher])]
            length[i] = length[j] + 1
            start[i] = start[j]
    end = int(np.argmax(length))
    return int(start[end]), end


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
    skip_start: float = 0.1,
) -> Bounds:
    """Suggests ``base_lr`` and ``max_lr`` from a range test.

    Methods:

    - ``"paper"``: from the ``metric`` curve (accuracy), the rise rule described in
      this module's docstring. The paper's CIFAR-10 test gave 0.001 and 0.006.
    - ``"paper_peak"``: the paper's alternative, ``max_lr`` at the smoothed accuracy
      peak and ``base_lr = base_fraction * max_lr``.
    - ``"steepest"``: ``max_lr`` at the steepest descent of the loss against
      log(rate), searched up to the loss minimum (pytorch-lr-finder's suggestion).
    - ``"valley"``: ``max_lr`` halfway through the longest stretch over which the loss
      keeps falling (after fastai's "valley").
    - ``"minimum"``: ``max_lr`` = the rate at the loss minimum / 10 (fastai's
      "minimum").
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
      skip_start: for a sequential `RangeTestResult`, the fraction of the first loss
        points that "steepest" and "valley" ignore: early in the test the loss falls
        because training has just begun, whatever the rate (pytorch-lr-finder skips
        its first 10 points for the same reason).

    Returns:
      `Bounds` with the method's evidence.

    Raises:
      ValueError: on an unknown method, a missing metric, too few finite points for
        the method, or an accuracy curve that never rises.
    """
    v.choice("method", method, METHODS)
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

    rates, loss = _finite_prefix(np.asarray(lrs), np.asarray(losses), method)
    lowest = int(np.argmin(loss))
    first = int(skip_start * rates.size) if isinstance(result, RangeTestResult) else 0
    evidence = {"lr_at_minimum": float(rates[lowest]), "minimum_loss": float(loss[lowest])}
    if method == "minimum":
        return _from_point(rates[lowest] / 10, method, base_fraction, evidence)
    if method == "steepest":
        if lowest - first < 2:
            raise ValueError(
                "method 'steepest' found the loss lowest at the start of the test: it never "
                "falls; lower min_lr."
            )
        window = slice(first, lowest + 1)
        slope = np.gradient(loss[window], np.log(rates[window]))
        k = int(np.argmin(slope))  # index into the window
        return _from_point(rates[first + k], method, base_fraction,
                           {**evidence, "steepest_slope_per_log_lr": float(slope[k])})
    start, end = _longest_valley(loss[first:])
    start, end = start + first, end + first
    j = start + (end - start) // 2
    return _from_point(rates[j], method, base_fraction,
                       {**evidence, "valley_lrs": [float(rates[start]), float(rates[end])]})
