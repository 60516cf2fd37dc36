"""Schedules by name: the one place that turns a policy name and settings into a schedule.

Used by the command line and the training harness, so both accept the same policies
and report the same errors. Policies that Optax already has are built with Optax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optax

from clr_jax import schedules
from clr_jax import _validation as v

__all__ = ["POLICIES", "make_schedule", "staged"]

# Each policy: the factory and the settings it requires (others are optional).
POLICIES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "fixed": (lambda base_lr: optax.constant_schedule(base_lr), ("base_lr",)),
    "triangular": (schedules.triangular, ("base_lr", "max_lr", "step_size")),
    "triangular2": (schedules.triangular2, ("base_lr", "max_lr", "step_size")),
    "exp_range": (schedules.exp_range, ("base_lr", "max_lr", "step_size", "gamma")),
    "welch": (
        lambda **kw: schedules.cyclical(window="welch", **kw),
        ("base_lr", "max_lr", "step_size"),
    ),
    "hann": (
        lambda **kw: schedules.cyclical(window="hann", **kw),
        ("base_lr", "max_lr", "step_size"),
    ),
    "decay": (schedules.decay, ("max_lr", "base_lr", "decay_steps")),
    "exp": (
        lambda base_lr, gamma: optax.exponential_decay(base_lr, 1, gamma),
        ("base_lr", "gamma"),
    ),
    "one_cycle": (schedules.one_cycle, ("max_lr", "total_steps")),
}

_OPTIONAL = {
    "triangular": ("step_size_down",),
    "triangular2": ("step_size_down",),
    "exp_range": ("step_size_down", "decay"),
    "welch": ("step_size_down",),
    "hann": ("step_size_down",),
    "one_cycle": ("pct_start", "anneal", "div_factor", "final_div_factor", "three_phase"),
}


def make_schedule(policy: str, **settings: Any) -> optax.Schedule:
    """Builds the schedule of a named policy from keyword settings.

    Settings given as None are ignored, so command-line flags can be passed through
    unchanged.

    Args:
      policy: one of `POLICIES`.
      **settings: the policy's arguments.

    Returns:
      The schedule.

    Raises:
      ValueError: on an unknown policy, a missing required setting, a setting the
        policy does not take, or a bad value.

    Examples:
      >>> from clr_jax.policies import make_schedule
      >>> schedule = make_schedule("triangular", base_lr=0.001, max_lr=0.006, step_size=2000)
      >>> round(float(schedule(2000)), 6)
      0.006
    """
    v.choice("policy", policy, tuple(POLICIES))
    factory, required = POLICIES[policy]
    given = {k: val for k, val in settings.items() if val is not None}
    missing = [name for name in required if name not in given]
    if missing:
        raise ValueError(
            f"policy {policy!r} needs {', '.join(missing)}; it takes "
            f"{', '.join(required + _OPTIONAL.get(policy, ()))}."
        )
    allowed = set(required) | set(_OPTIONAL.get(policy, ()))
    extra = sorted(set(given) - allowed)
    if extra:
        raise ValueError(
            f"policy {policy!r} does not take {', '.join(extra)}; it takes "
            f"{', '.join(required + _OPTIONAL.get(policy, ()))}."
        )
    if policy == "exp":
        v.check("gamma", given["gamma"], lambda g: (g > 0) & (g <= 1), "in (0, 1]")
        v.finite_nonnegative("base_lr", given["base_lr"])
    if policy == "fixed":
        v.finite_nonnegative("base_lr", given["base_lr"])
    return factory(**given)


def staged(stages: Sequence[tuple[str, Mapping[str, Any], int]]) -> optax.Schedule:
    """Several policies one after another, each restarting its own step count.

    The paper's Table 2 triangular2 run on CIFAR-10 is three such stages. Built with
    ``optax.join_schedules``.

    Args:
      stages: ``(policy, settings, num_steps)`` for each stage; the last stage's
        length is ignored (it runs on).

    Returns:
      The joined schedule.

    Raises:
      ValueError: if there are no stages or a stage's length is not a positive
        integer, or as `make_schedule`.

    Examples:
      >>> from clr_jax.policies import staged
      >>> schedule = staged([
      ...     ("triangular2", dict(base_lr=0.001, max_lr=0.005, step_size=2000), 16000),
      ...     ("triangular2", dict(base_lr=0.0001, max_lr=0.0005, step_size=1000), 6000),
      ...     ("triangular2", dict(base_lr=0.00001, max_lr=0.00005, step_size=500), 3000),
      ... ])
      >>> [round(float(schedule(t)), 6) for t in (2000, 16000, 17000, 22500)]
      [0.005, 0.0001, 0.0005, 5e-05]
    """
    if not stages:
        raise ValueError("stages is empty; give at least one (policy, settings, num_steps).")
    built, boundaries, start = [], [], 0
    for index, (policy, settings, num_steps) in enumerate(stages):
        built.append(make_schedule(policy, **settings))
        if index < len(stages) - 1:
            start += v.positive_int(f"stages[{index}] num_steps", num_steps)
            boundaries.append(start)
    if len(built) == 1:
        return built[0]
    return optax.join_schedules(built, boundaries)
