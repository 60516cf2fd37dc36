"""Matplotlib figures: schedules (and, with the harness, range tests and learning curves).

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

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from clr_jax.range_test import ParallelRangeTestResult, RangeTestResult
    from clr_jax.suggest import Bounds

__all__ = ["plot_range_test", "plot_schedule", "save_figure", "schedule_values"]


def _figure(figsize: tuple[float, float] = (7.0, 3.5)) -> Figure:
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
        figure = _figure()
        ax = figure.subplots()
    else:
        figure = ax.figure
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
    return figure


def save_figure(figure: Figure, path: str | os.PathLike, *, dpi: int = 120) -> None:
    """Saves a figure as PNG, writing a temporary file first so a crash leaves no
    half-written image behind."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    figure.savefig(tmp, dpi=dpi, format="png")
    os.replace(tmp, path)


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
    from clr_jax.range_test import ParallelRangeTestResult

    figure = _figure((7.5, 4.0))
    ax = figure.subplots()
    parallel = isinstance(result, ParallelRangeTestResult)
    if parallel:
        order = np.argsort(result.learning_rates)
        lrs = result.learning_rates[order]
        final = result.final_losses[:, order]
        mean, std = final.mean(axis=0), final.std(axis=0)
        ax.plot(lrs, mean, "o-", color="tab:blue", label="final loss (mean over seeds)")
        if final.shape[0] > 1:
            ax.fill_between(lrs, mean - std, mean + std, color="tab:blue", alpha=0.2,
                            label="+- 1 std over seeds")
        eval_lrs = lrs
        metrics = {k: x[:, order] for k, x in result.eval_metrics.items()}
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
    if result.__class__.__name__ == "RangeTestResult" and result.stop_reason:
        ax.annotate(f"stopped: {result.stop_reason} at step {result.stop_step}",
                    xy=(0.99, 0.02), xycoords="axes fraction", ha="right", fontsize=8)
    return figure
