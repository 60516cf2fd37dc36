"""Matplotlib figures: schedules, range tests, learning curves and accuracy curves.

Figures are built with ``matplotlib.figure.Figure`` directly, not ``pyplot``, so they
need no display, hold no global state and are safe to make from scripts and tests.
matplotlib is an optional dependency: ``pip install "clr-jax[harness]"``.
"""

from __future__ import annotations

import os
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


_BOUND_COLOURS = ("tab:green", "tab:red", "tab:purple", "tab:brown", "tab:olive")


def plot_range_test(
    result: RangeTestResult | ParallelRangeTestResult,
    bounds: Bounds | Sequence[Bounds] | None = None,
    *,
    metric: str = "accuracy",
    title: str | None = None,
    log_x: bool | None = None,
) -> Figure:
    """Draws a range test: loss (raw and smoothed) and a metric against the rate.

    Args:
      result: a `RangeTestResult` or `ParallelRangeTestResult`. For the parallel test
        the final loss is drawn as the mean over seeds with a band of +- one standard
        deviation.
      bounds: a `Bounds` or a sequence of them, drawn as vertical lines.
      metric: the evaluation metric drawn on the right axis, when present.
      title: the figure title.
      log_x: a log rate axis; by default on for exponential ramps and for parallel
        tests whose rates span more than a factor of 20.

    Returns:
      The matplotlib Figure.
    """
    fig = figure((7.5, 4.0))
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
        lrs = result.learning_rates
        ax.plot(lrs, result.losses, color="tab:blue", alpha=0.25, lw=0.8, label="loss")
        ax.plot(lrs, result.smoothed_losses, color="tab:blue", lw=1.6, label="smoothed loss")
        eval_lrs = result.eval_learning_rates
        metrics = {k: x[None] for k, x in result.eval_metrics.items()}
        default_log = result.mode == "exponential"
        finite = result.smoothed_losses[np.isfinite(result.smoothed_losses)]
        if finite.size:  # keep the divergence spike from flattening the useful part
            top = min(finite.max(), 3 * np.nanpercentile(finite, 90))
            ax.set_ylim(max(0.0, finite.min() - 0.05 * (top - finite.min())), top * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss", color="tab:blue")
    if log_x if log_x is not None else default_log:
        ax.set_xscale("log")
    handles, labels = ax.get_legend_handles_labels()
    if metric in metrics and len(eval_lrs):
        values = metrics[metric]
        twin = ax.twinx()
        twin.plot(eval_lrs, values.mean(axis=0), "s-", color="tab:orange", ms=3, label=metric)
        if values.shape[0] > 1:
            twin.fill_between(eval_lrs, values.min(axis=0), values.max(axis=0),
                              color="tab:orange", alpha=0.2, label=f"{metric} range over seeds")
        twin.set_ylabel(metric, color="tab:orange")
        more_h, more_l = twin.get_legend_handles_labels()
        handles, labels = handles + more_h, labels + more_l
    if bounds is not None:
        if not isinstance(bounds, Sequence):
            bounds = [bounds]
        for colour, b in zip(_BOUND_COLOURS, bounds):
            for rate, style in ((b.base_lr, ":"), (b.max_lr, "--")):
                line = ax.axvline(rate, color=colour, ls=style, lw=1.2)
            handles.append(line)
            labels.append(f"{b.method}: {b.base_lr:.3g} - {b.max_lr:.3g}")
    ax.legend(handles, labels, frameon=False, fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if isinstance(result, RangeTestResult) and result.stop_reason:
        ax.annotate(f"stopped: {result.stop_reason} at step {result.stop_step}",
                    xy=(0.99, 0.02), xycoords="axes fraction", ha="right", fontsize=8)
    return fig


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
