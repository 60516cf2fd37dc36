"""Matplotlib figures: schedules, range tests, learning curves and accuracy curves.

Figures are built with ``matplotlib.figure.Figure`` directly, not ``pyplot``, so they
need no display, hold no global state and are safe to make from scripts and tests.
matplotlib is an optional dependency: ``pip install "clr-jax[harness]"``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clr_jax._io import atomic_write
from clr_jax.range_test import ParallelRangeTestResult, RangeTestResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from clr_jax.suggest import Bounds

__all__ = ["figure", "plot_accuracy", "plot_learning_curves", "plot_lines", "plot_range_test",
           "plot_schedule", "save_figure", "schedule_values"]


def figure(figsize: tuple[float, float] = (7.0, 3.5)) -> Figure:
    """A new matplotlib Figure with constrained layout (no pyplot, no global state)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'plotting needs matplotlib: pip install "clr-jax[harness]"'
        ) from error
    return Figure(figsize=figsize, layout="constrained")


def schedule_values(schedule: optax.Schedule, num_steps: int) -> np.ndarray:
    """The schedule's values at steps 0 .. num_steps - 1, in one compiled call."""
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(num_steps)))


def plot_schedule(
    schedules: optax.Schedule | Mapping[str, optax.Schedule],
    num_steps: int,
    *,
    title: str | None = None,
    ylabel: str = "learning rate",
    log_scale: bool = False,
    ax: Axes | None = None,
) -> Figure:
    """Draws one or several schedules against the step.

    Args:
      schedules: a schedule, or a mapping from label to schedule.
      num_steps: how many steps to draw, from step 0.
      title: the axes title.
      ylabel: the y-axis label.
      log_scale: draw the values on a log axis.
      ax: a matplotlib Axes to draw into; a new figure is made when None.

    Returns:
      The matplotlib Figure.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps!r}.")
    if ax is None:
        fig = figure()
        ax = fig.subplots()
    else:
        fig = ax.figure
    if callable(schedules):
        schedules = {"": schedules}
    steps = np.arange(num_steps)
    for label, schedule in schedules.items():
        ax.plot(steps, schedule_values(schedule, num_steps), label=label or None, lw=1.5)
    if any(schedules):
        ax.legend(frameon=False)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("step (updates already applied)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> None:
    """Saves a figure as PNG, atomically (a crash leaves no half-written image)."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=dpi, format="png")


_BOUND_COLOURS = ("tab:green", "tab:red", "tab:purple", "tab:brown", "tab:olive", "tab:cyan",
                  "tab:pink", "tab:gray", "black")


def plot_range_test(
    result: RangeTestResult | Sequence[RangeTestResult] | ParallelRangeTestResult,
    bounds: Bounds | Sequence[Bounds] | None = None,
    *,
    metric: str = "accuracy",
    title: str | None = None,
    log_x: bool | None = None,
) -> Figure:
    """Draws a range test: loss (raw and smoothed) and a metric against the rate.

    Args:
      result: a `RangeTestResult`, repeats of one ramp (a list of them, or a
        `clr_jax.FoundBounds`, whose bounds are then drawn unless ``bounds`` is given),
        or a `ParallelRangeTestResult`. Repeats are drawn each in a faint line, with
        their median; for the parallel test the final loss is drawn as the mean over
        seeds with a band of +- one standard deviation.
      bounds: a `Bounds` or a sequence of them, drawn as vertical lines (dotted: base,
        dashed: max), the first one's ``max_lr`` interval shaded; the legend, below the
        axes, names every one with its interval and whether it was flagged.
      metric: the evaluation metric drawn on the right axis, when present.
      title: the figure title.
      log_x: a log rate axis; by default on for exponential ramps and for parallel
        tests whose rates span more than a factor of 20.

    Returns:
      The matplotlib Figure.
    """
    from clr_jax.find import FoundBounds

    if isinstance(result, FoundBounds):
        bounds = result.bounds if bounds is None else bounds
        result = list(result.results)
    bounds = [] if bounds is None else [bounds] if not isinstance(bounds, Sequence) \
        else list(bounds)
    fig = figure((7.5, 4.8 + 0.17 * len(bounds)))
    ax = fig.subplots()
    parallel = isinstance(result, ParallelRangeTestResult)
    if parallel:
        result = result.sorted_by_rate()
        lrs, final = result.learning_rates, result.final_losses
        mean, std = final.mean(axis=0), final.std(axis=0)
        ax.plot(lrs, mean, "o-", color="tab:blue", label="final loss (mean over seeds)")
        if final.shape[0] > 1:
            ax.fill_between(lrs, mean - std, mean + std, color="tab:blue", alpha=0.2,
                            label="+- 1 std over seeds")
        eval_lrs = lrs
        metrics = result.eval_metrics
        default_log = lrs[-1] / lrs[0] > 20
    else:
        repeats = [result] if isinstance(result, RangeTestResult) else list(result)
        longest = max(repeats, key=lambda r: len(r.learning_rates))
        for i, r in enumerate(repeats):
            ax.plot(r.learning_rates, r.losses, color="tab:blue", alpha=0.25, lw=0.8,
                    label="loss" if len(repeats) == 1 else
                    (f"loss of each of {len(repeats)} repeats" if i == 0 else None))
        smoothed = _median_rows([r.smoothed_losses for r in repeats])
        pooled = " (median of the repeats)" if len(repeats) > 1 else ""
        ax.plot(longest.learning_rates[:smoothed.size], smoothed, color="tab:blue", lw=1.0,
                ls="--", label="moving average of the loss" + pooled)
        raw = _median_rows([r.losses for r in repeats])
        centred = _centred_mean(raw, max(5, (longest.num_steps // 20) | 1))
        ax.plot(longest.learning_rates[:centred.size], centred, color="tab:blue", lw=1.8,
                label="centred mean of the loss" + pooled + " (what 'edge' reads)")
        evaluated = max(repeats, key=lambda r: len(r.eval_learning_rates))
        eval_lrs = evaluated.eval_learning_rates
        metrics = {}
        for name in evaluated.eval_metrics:
            rows = np.full((len(repeats), eval_lrs.size), np.nan)
            for i, r in enumerate(repeats):
                values = r.eval_metrics.get(name, np.zeros(0))[: eval_lrs.size]
                rows[i, :values.size] = values
            metrics[name] = rows
        default_log = longest.mode == "exponential"
        finite = centred[np.isfinite(centred)]
        if finite.size:  # the fall and the turn, not the divergence spikes
            lowest = int(np.argmin(finite))
            start, bottom = float(finite[: lowest + 1].max()), float(finite[lowest])
            drop = max(start - bottom, 1e-12)
            top = min(float(finite.max()), start + 0.6 * drop)
            ax.set_ylim(bottom - 0.15 * drop, top + 0.05 * drop)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss", color="tab:blue")
    if log_x if log_x is not None else default_log:
        ax.set_xscale("log")
    handles, labels = ax.get_legend_handles_labels()
    if metric in metrics and len(eval_lrs):
        values = metrics[metric]
        twin = ax.twinx()
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no point
            twin.plot(eval_lrs, np.nanmean(values, axis=0), "s-", color="tab:orange", ms=3,
                      label=metric + (" (mean of the repeats)" if values.shape[0] > 1 else ""))
            if values.shape[0] > 1:
                twin.fill_between(eval_lrs, np.nanmin(values, axis=0),
                                  np.nanmax(values, axis=0), color="tab:orange", alpha=0.2,
                                  label=f"{metric} range over the repeats")
        twin.set_ylabel(metric, color="tab:orange")
        more_h, more_l = twin.get_legend_handles_labels()
        handles, labels = handles + more_h, labels + more_l
    for index, b in enumerate(bounds):
        colour = _BOUND_COLOURS[index % len(_BOUND_COLOURS)]
        turn = b.evidence.get("lr_loss_turns_up") if index == 0 else None
        if turn:
            ax.axvline(turn, color=colour, ls="-", lw=0.8, alpha=0.6)
            ax.annotate(f"loss turns up: {turn:.3g}", xy=(turn, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -10), textcoords="offset points", fontsize=7, color=colour)
        ax.axvline(b.base_lr, color=colour, ls=":", lw=1.2)
        line = ax.axvline(b.max_lr, color=colour, ls="--", lw=1.2)
        if b.max_interval is not None and index == 0:  # the first (chosen) rule's only
            ax.axvspan(*b.max_interval, color=colour, alpha=0.15)
        handles.append(line)
        interval = "" if b.max_interval is None else \
            f" (max in {b.max_interval[0]:.3g}-{b.max_interval[1]:.3g})"
        verdict = "" if b.trusted else "; flagged: " + ", ".join(f.code for f in b.flags)
        labels.append(f"{b.method}: {b.base_lr:.3g} - {b.max_lr:.3g}{interval}{verdict}")
    ax.legend(handles, labels, frameon=False, fontsize=7.5, loc="upper center",
              bbox_to_anchor=(0.5, -0.14), ncol=1)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    stopped = [r for r in ([result] if isinstance(result, RangeTestResult) else
                           [] if parallel else result) if r.stop_reason]
    if stopped:
        text = (f"stopped: {stopped[0].stop_reason} at step {stopped[0].stop_step}"
                if isinstance(result, RangeTestResult) else
                f"{len(stopped)} of {len(result)} repeats stopped early")
        ax.annotate(text, xy=(0.99, 0.02), xycoords="axes fraction", ha="right", fontsize=8)
    return fig


def _centred_mean(x: np.ndarray, width: int) -> np.ndarray:
    from clr_jax.suggest import _centred_mean

    return _centred_mean(x, width)


def _median_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    """The median of rows of unequal lengths (a missing tail is left out), up to the
    first point where no row is finite."""
    n = max(len(r) for r in rows)
    table = np.full((len(rows), n), np.nan)
    for i, r in enumerate(rows):
        table[i, :len(r)] = np.where(np.isfinite(r), r, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pooled = np.nanmedian(table, axis=0)
    bad = np.flatnonzero(~np.isfinite(pooled))
    return pooled[: bad[0]] if bad.size else pooled


def plot_learning_curves(runs: Mapping[str, Sequence[Mapping]], *, title: str | None = None
                         ) -> Figure:
    """Training loss and test accuracy against the step, for runs' metrics rows.

    Args:
      runs: label -> the rows of a run's metrics.jsonl (each with ``step`` and ``loss``,
        and ``test_accuracy`` where evaluated;
        `clr_jax.harness.rundir.read_metrics` reads them).
      title: the figure title.

    Returns:
      The matplotlib Figure.
    """
    fig = figure((9.0, 3.6))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for label, rows in runs.items():
        loss_ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label)
        evaluated = [r for r in rows if "test_accuracy" in r]
        acc_ax.plot([r["step"] for r in evaluated], [r["test_accuracy"] for r in evaluated],
                    "o-", ms=3, label=label)
    loss_ax.set(xlabel="step", ylabel="training loss (mean over the logged interval)")
    acc_ax.set(xlabel="step", ylabel="test accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def plot_lines(lines: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
               xlabel: str, ylabel: str, title: str | None = None,
               hline: tuple[float, str] | None = None, marker: str | None = None,
               figsize: tuple[float, float] = (7.0, 3.5)) -> Figure:
    """Labelled (x, y) lines on one axes; None values in y are gaps.

    Args:
      lines: label -> (x values, y values).
      xlabel: the x-axis label.
      ylabel: the y-axis label.
      title: the axes title.
      hline: an optional (y, label) horizontal reference line.
      marker: a matplotlib marker for the points.
      figsize: the figure size in inches.

    Returns:
      The matplotlib Figure.
    """
    fig = figure(figsize)
    ax = fig.add_subplot()
    for label, (x, y) in lines.items():
        ax.plot(x, [np.nan if value is None else value for value in y], marker=marker,
                label=label)
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle=":", label=hline[1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_accuracy(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                  target: float | None = None, title: str | None = None,
                  figsize: tuple[float, float] = (7.0, 3.5)) -> Figure:
    """Test accuracy against the iteration for several runs, with an optional target.

    Args:
      curves: label -> (evaluated iterations, test accuracies).
      target: a reference accuracy drawn as a horizontal line.
      title: the axes title.
      figsize: the figure size in inches.

    Returns:
      The matplotlib Figure.
    """
    return plot_lines(curves, xlabel="iteration", ylabel="test accuracy", title=title,
                      hline=None if target is None else (target, f"target {target:.3f}"),
                      marker=".", figsize=figsize)
