"""Schedules by name: one registry of policies, read from the factories' signatures.

Each policy is a `Policy`: a schedule factory of `clr_jax.schedules` (and the name's
fixed arguments, such as ``window="welch"``). What a policy's settings are, which are
required, their defaults, which pick code rather than values (``str`` and ``bool``
arguments) and what each means (the factory's docstring) are all read from the factory,
so adding a policy is one entry in `POLICIES`.

The command line, the training harness and sweeps all go through this module, so they
accept the same policies and report the same errors. `vectorize` turns many (possibly
staged, mixed) policies into one schedule function of a per-member parameter array, so
a sweep over them compiles once and runs under `jax.vmap`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clr_jax import _validation as v
from clr_jax._docstrings import section_items
from clr_jax import schedules

__all__ = ["POLICIES", "SWITCH_CHOICES", "Policy", "make_schedule", "parse_stages", "staged",
           "vectorize"]

Stage = tuple[str, Mapping[str, Any], int]


def _fixed(base_lr: jax.typing.ArrayLike) -> optax.Schedule:
    """A fixed learning rate (``optax.constant_schedule``).

    Args:
      base_lr: the rate at every step.
    """
    v.finite_nonnegative("base_lr", base_lr)
    return optax.constant_schedule(base_lr)


def _docstring_args(factory: Callable) -> dict[str, str]:
    """Each argument's description from a Google-style docstring's Args section, up to
    its first full stop."""
    described = section_items(factory, "Args")
    return {k: re.sub(r"(?<!\.)\.$", "", re.split(r"(?<=[^.]\.)\s", text)[0])
            for k, text in described.items()}


@dataclasses.dataclass(frozen=True)
class Policy:
    """A named policy: a schedule factory, the arguments its name fixes, and the ones it
    does not offer by name (such as callables).

    Everything else is read from the factory: `settings` are its other arguments,
    `required` those without a default, `switches` those whose default is a ``str`` or
    ``bool`` (they choose code, not values), `numeric` the rest.
    """

    name: str
    factory: Callable[..., optax.Schedule]
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    hidden: tuple[str, ...] = ()

    @functools.cached_property
    def _parameters(self) -> dict[str, inspect.Parameter]:
        return {name: p for name, p in inspect.signature(self.factory).parameters.items()
                if name not in self.fixed and name not in self.hidden
                and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}

    @property
    def settings(self) -> tuple[str, ...]:
        return tuple(self._parameters)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(n for n, p in self._parameters.items() if p.default is p.empty)

    @property
    def defaults(self) -> dict[str, Any]:
        return {n: p.default for n, p in self._parameters.items() if p.default is not p.empty}

    @property
    def switches(self) -> tuple[str, ...]:
        return tuple(n for n, d in self.defaults.items() if isinstance(d, (str, bool)))

    @property
    def numeric(self) -> tuple[str, ...]:
        return tuple(n for n in self.settings if n not in self.switches)

    @property
    def description(self) -> str:
        """The factory's one-line summary."""
        return (inspect.getdoc(self.factory) or self.name).splitlines()[0].rstrip(".")

    @functools.cached_property
    def help(self) -> dict[str, str]:
        """What each setting means, from the factory's docstring."""
        return _docstring_args(self.factory)

    def check_settings(self, given: Mapping[str, Any]) -> None:
        missing = [n for n in self.required if n not in given]
        extra = sorted(set(given) - set(self.settings))
        if missing or extra:
            problem = (f"needs {', '.join(missing)}" if missing
                       else f"does not take {', '.join(extra)}")
            raise ValueError(f"policy {self.name!r} {problem}; it takes "
                             f"{', '.join(self.settings)}.")

    def __call__(self, **settings: Any) -> optax.Schedule:
        self.check_settings(settings)
        return self.factory(**self.fixed, **settings)


_HIDDEN_CYCLICAL = ("scale_fn", "scale_mode")

# The values each str-valued setting accepts (the factories check them too).
SWITCH_CHOICES: dict[str, tuple[str, ...]] = {
    "decay": schedules.EXP_RANGE_DECAYS, "anneal": schedules.ANNEALS,
    "window": schedules.WINDOWS, "scale_mode": schedules.SCALE_MODES}

POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("fixed", _fixed),
    Policy("triangular", schedules.triangular),
    Policy("triangular2", schedules.triangular2),
    Policy("exp_range", schedules.exp_range),
    Policy("welch", schedules.cyclical, {"window": "welch"}, _HIDDEN_CYCLICAL),
    Policy("hann", schedules.cyclical, {"window": "hann"}, _HIDDEN_CYCLICAL),
    Policy("decay", schedules.decay),
    Policy("exp", schedules.exponential),
    Policy("one_cycle", schedules.one_cycle),
)}


def _given(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: val for k, val in settings.items() if val is not None}


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
    return POLICIES[policy](**_given(settings))


def staged(stages: Sequence[Stage]) -> optax.Schedule:
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


def parse_stages(spec: Any, where: str = "schedule") -> tuple[Stage, ...]:
    """A schedule's stages from the forms users write them in, checked.

    Accepts ``(policy, settings, num_steps)`` stages as `staged` takes them, a dict
    ``{"policy": "triangular", "base_lr": 0.001, ...}`` for a single policy, or a list
    of such dicts each with ``steps`` (its length; the last may leave it out), as in
    sweep files and JSON.

    Returns:
      The stages as a tuple of ``(policy, settings, num_steps)``.

    Raises:
      ValueError: one line starting with ``where``, naming what is wrong.

    Examples:
      >>> from clr_jax.policies import parse_stages
      >>> parse_stages({"policy": "triangular", "base_lr": 0.001, "max_lr": 0.006,
      ...               "step_size": 2000})
      (('triangular', {'base_lr': 0.001, 'max_lr': 0.006, 'step_size': 2000}, 1),)
    """
    if isinstance(spec, Mapping):
        spec = [spec]
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence) or not spec:
        raise ValueError(f"{where}: give a policy with its settings, or a non-empty list of "
                         f"stages; got {spec!r}.")
    stages = []
    for s, stage in enumerate(spec):
        last = s == len(spec) - 1
        if isinstance(stage, Mapping):
            if "policy" not in stage:
                raise ValueError(f"{where}: stage {s} needs a policy.")
            if "steps" not in stage and not last:
                raise ValueError(f"{where}: stage {s} needs steps (its length); only the "
                                 "last stage may leave it out.")
            policy, steps = stage["policy"], stage.get("steps", 1)
            settings = {k: val for k, val in stage.items() if k not in ("policy", "steps")}
        elif (isinstance(stage, Sequence) and not isinstance(stage, str) and len(stage) == 3
              and isinstance(stage[1], Mapping)):
            policy, settings, steps = stage
        else:
            raise ValueError(f"{where}: stage {s} must be (policy, settings, num_steps) or a "
                             f"table with a policy; got {stage!r}.")
        if policy not in POLICIES:
            raise ValueError(f"{where}: unknown policy {policy!r}; choose from "
                             f"{', '.join(POLICIES)}.")
        if isinstance(steps, bool) or not isinstance(steps, (int, float, np.integer)) \
                or steps != int(steps) or steps < 1:
            raise ValueError(f"{where}: stage {s} steps must be a positive whole number, got "
                             f"{steps!r}.")
        stages.append((str(policy), dict(settings), int(steps)))
    try:
        staged(stages)  # every check a single schedule gets
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return tuple(stages)


# -- many schedules as one function of a parameter array (for sweeps) --------------------

def _columns(policy: Policy, given: Mapping[str, Any]) -> dict[str, float]:
    """A stage's numeric settings as they travel in a sweep's float32 table: every
    given or defaulted number, and a setting with a ``log_`` twin (gamma) as that twin,
    its logarithm taken in float64 on the host."""
    values = {n: d for n, d in policy.defaults.items()
              if n in policy.numeric and d is not None}
    values.update({n: x for n, x in given.items() if n in policy.numeric})
    for name in list(values):
        if f"log_{name}" in policy.numeric:
            with np.errstate(divide="ignore"):
                values[f"log_{name}"] = float(np.log(np.float64(values.pop(name))))
    return {n: float(x) for n, x in values.items()}


def _builder(policy: Policy, switches: tuple, names: tuple[str, ...]):
    """The schedule of one branch, built from a dict of traced float columns."""
    def build(columns: Mapping[str, jax.Array]) -> optax.Schedule:
        return policy.factory(**policy.fixed, **dict(switches),
                              **{n: columns[n] for n in names})
    return build


def vectorize(
    members: Sequence[Sequence[Stage]],
) -> tuple[Callable[[Mapping[str, jax.Array], jax.typing.ArrayLike], jax.Array],
           dict[str, np.ndarray]]:
    """Many schedules, each a list of stages, as one function of a parameter array.

    Each member is a list of ``(policy, settings, num_steps)`` stages, as for
    `staged` (a single policy is a one-stage list). The result is ``(schedule_fn,
    params)``: ``params`` holds one row per member (NumPy arrays with a leading
    member axis), and ``schedule_fn(row, step)`` is that member's rate at ``step``.
    Because policy and settings are data, ``jax.vmap(schedule_fn, (0, None))``
    evaluates every member in one compiled function, whatever mix of policies: each
    distinct (policy, switch settings) pair is one branch of that function.

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
    branches: list[tuple[str, tuple, tuple[str, ...]]] = []
    rows = []
    for index, stages in enumerate(members):
        if not stages:
            raise ValueError(f"member {index} has no stages.")
        staged(stages)  # every check that a single schedule gets
        row = []
        for policy_name, settings, num_steps in stages:
            policy, given = POLICIES[policy_name], _given(settings)
            columns = _columns(policy, given)
            switches = tuple((n, given.get(n, policy.defaults[n])) for n in policy.switches)
            key = (policy_name, switches, tuple(columns))
            if key not in branches:
                branches.append(key)
            row.append((branches.index(key), int(num_steps), columns))
        rows.append(row)

    fields = tuple(dict.fromkeys(n for _, _, names in branches for n in names))
    depth = max(len(row) for row in rows)
    never = np.iinfo(np.int32).max  # padding stages start after any step
    params = {"branch": np.zeros((len(rows), depth), np.int32),
              "start": np.full((len(rows), depth), never, np.int32),
              "values": np.ones((len(rows), depth, len(fields)), np.float32)}
    for m, row in enumerate(rows):
        start = 0
        for s, (branch, num_steps, columns) in enumerate(row):
            params["branch"][m, s], params["start"][m, s] = branch, start
            params["values"][m, s] = [columns.get(n, 0.0) for n in fields]
            start += num_steps
    builders = [_builder(POLICIES[name], switches, names) for name, switches, names in branches]

    def schedule_fn(row: Mapping[str, jax.Array], step: jax.typing.ArrayLike) -> jax.Array:
        step = jnp.asarray(step)
        stage = jnp.sum(step >= row["start"]) - 1
        stage = jnp.clip(stage, 0, row["start"].shape[0] - 1)
        local = step - row["start"][stage].astype(step.dtype)
        columns = dict(zip(fields, row["values"][stage]))
        values = jnp.stack([build(columns)(local).astype(jnp.float32) for build in builders])
        return values[row["branch"][stage]]

    return schedule_fn, params
