"""Schedules by name: the one place that turns a policy name and settings into a schedule.

Used by the command line, the training harness and sweeps, so all accept the same
policies and report the same errors. `vectorize` turns many (possibly staged, mixed)
policies into one schedule function of a per-member parameter array, so a sweep over
them compiles once and runs under `jax.vmap`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clr_jax import schedules
from clr_jax import _validation as v

__all__ = ["POLICIES", "make_schedule", "staged", "vectorize"]

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
        lambda base_lr, gamma: schedules._exponential(base_lr, schedules._log_gamma(gamma)),
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


# -- many schedules as one function of a parameter array (for sweeps) --------------------

# The settings a vectorised stage carries, as float32 columns. gamma travels as its
# logarithm, taken in float64 on the host (see `schedules._log_gamma`).
_FIELDS = ("base_lr", "max_lr", "step_size", "step_size_down", "log_gamma", "decay_steps",
           "total_steps", "pct_start", "div_factor", "final_div_factor")
_DEFAULTS = {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4}
# Settings that pick code rather than values: each combination is its own branch.
_SWITCHES = {"exp_range": ("decay",), "one_cycle": ("anneal", "three_phase")}
_SWITCH_DEFAULTS = {"decay": "amplitude", "anneal": "cos", "three_phase": False}


def _branch(policy: str, switches: tuple) -> Any:
    """The schedule of ``policy`` built from a dict of (traced) float columns."""
    def build(f):
        if policy == "fixed":
            return lambda step: f["base_lr"] + 0 * step
        if policy in ("triangular", "triangular2", "welch", "hann"):
            factory = {"triangular": schedules.triangular,
                       "triangular2": schedules.triangular2}.get(policy)
            kwargs = dict(step_size_down=f["step_size_down"])
            if factory is None:
                factory, kwargs["window"] = schedules.cyclical, policy
            return factory(f["base_lr"], f["max_lr"], f["step_size"], **kwargs)
        if policy == "exp_range":
            return schedules._exp_range(f["base_lr"], f["max_lr"], f["step_size"],
                                        f["log_gamma"], step_size_down=f["step_size_down"],
                                        decay=switches[0])
        if policy == "exp":
            return schedules._exponential(f["base_lr"], f["log_gamma"])
        if policy == "decay":
            return schedules.decay(f["max_lr"], f["base_lr"], f["decay_steps"])
        anneal, three_phase = switches
        return schedules.one_cycle(f["max_lr"], f["total_steps"], pct_start=f["pct_start"],
                                   anneal=anneal, div_factor=f["div_factor"],
                                   final_div_factor=f["final_div_factor"],
                                   three_phase=three_phase)
    return build


def vectorize(
    members: Sequence[Sequence[tuple[str, Mapping[str, Any], int]]],
) -> tuple[Any, dict[str, np.ndarray]]:
    """Many schedules, each a list of stages, as one function of a parameter array.

    Each member is a list of ``(policy, settings, num_steps)`` stages, as for
    `staged` (a single policy is a one-stage list). The result is ``(schedule_fn,
    params)``: ``params`` holds one row per member (NumPy arrays with a leading
    member axis), and ``schedule_fn(row, step)`` is that member's rate at ``step``.
    Because policy and settings are data, ``jax.vmap(schedule_fn, (0, None))``
    evaluates every member in one compiled function, whatever mix of policies.

    Each member's values equal those of ``staged(member)`` to float32 rounding (gamma
    is passed as ``log(gamma)`` computed in float64, as the single schedules do).

    Args:
      members: the stage lists, one per member.

    Returns:
      ``(schedule_fn, params)``.

    Raises:
      ValueError: on an empty list, or a stage as `staged` and `make_schedule` reject.

    Examples:
      >>> import jax
      >>> from clr_jax.policies import vectorize
      >>> fn, params = vectorize([
      ...     [("triangular", dict(base_lr=0.001, max_lr=0.006, step_size=2000), 1)],
      ...     [("decay", dict(max_lr=0.007, base_lr=0.001, decay_steps=4000), 1)],
      ... ])
      >>> [round(float(x), 6) for x in jax.vmap(fn, (0, None))(params, 2000)]
      [0.006, 0.004]
    """
    if not members:
        raise ValueError("no schedules to vectorize; give at least one member.")
    branches: list[tuple[str, tuple]] = []
    rows = []
    for index, stages in enumerate(members):
        if not stages:
            raise ValueError(f"member {index} has no stages.")
        staged(stages)  # every check that a single schedule gets
        row = []
        for policy, settings, num_steps in stages:
            given = {k: val for k, val in settings.items() if val is not None}
            key = (policy, tuple(given.get(name, _SWITCH_DEFAULTS[name])
                                 for name in _SWITCHES.get(policy, ())))
            if key not in branches:
                branches.append(key)
            values = {**_DEFAULTS, **{k: val for k, val in given.items()
                                      if k in _FIELDS}}
            values.setdefault("step_size_down", given.get("step_size"))
            if "gamma" in given:
                with np.errstate(divide="ignore"):
                    values["log_gamma"] = np.log(np.float64(given["gamma"]))
            row.append((branches.index(key), int(num_steps),
                        [float(values.get(name) or 0.0) for name in _FIELDS]))
        rows.append(row)

    depth = max(len(row) for row in rows)
    never = np.iinfo(np.int32).max  # padding stages start after any step
    params = {"branch": np.zeros((len(rows), depth), np.int32),
              "start": np.full((len(rows), depth), never, np.int32),
              "values": np.ones((len(rows), depth, len(_FIELDS)), np.float32)}
    for m, row in enumerate(rows):
        start = 0
        for s, (branch, num_steps, values) in enumerate(row):
            params["branch"][m, s], params["start"][m, s] = branch, start
            params["values"][m, s] = values
            start += num_steps
    builders = [_branch(policy, switches) for policy, switches in branches]

    def schedule_fn(row: Mapping[str, jax.Array], step: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.asarray(step)
        stage = jnp.sum(step >= row["start"]) - 1
        stage = jnp.clip(stage, 0, row["start"].shape[0] - 1)
        local = step - row["start"][stage].astype(step.dtype)
        fields = dict(zip(_FIELDS, row["values"][stage]))
        values = jnp.stack([build(fields)(local).astype(jnp.float32) for build in builders])
        return values[row["branch"][stage]]

    return schedule_fn, params
