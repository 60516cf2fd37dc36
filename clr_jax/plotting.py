"""Matplotlib figures: schedules (and, with the harness, range tests and learning curves).

Figures are built with ``matplotlib.figure.Figure`` directly, not ``pyplot``, so they
need no display, hold no global state and are safe to make from scripts and tests.
matplotlib is an optional dependency: ``pip install "clr-jax[harness]"``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import optax

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_schedule", "save_figure", "schedule_values"]


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
