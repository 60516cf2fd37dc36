"""Sweep members: each one's schedule and what else differs, from Python, JSON, TOML or the
command line."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clr_jax import _validation as v
from clr_jax.policies import Stage, parse_stages

__all__ = ["Member", "load_members", "parse_members"]

MEMBER_KEYS = ("name", "policy", "stages", "seed", "momentum", "weight_decay")


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of a sweep: its schedule as stages, and what else differs.

    ``stages`` is a tuple of ``(policy, settings, num_steps)`` as for
    `clr_jax.policies.staged`; ``seed``, ``momentum`` and ``weight_decay`` default to
    the sweep's `TrainConfig` when None.
    """

    name: str
    stages: tuple[Stage, ...]
    seed: int | None = None
    momentum: float | None = None
    weight_decay: float | None = None


def _number(where: str, key: str, value, kind=float):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {key} must be a number, got {value!r}.")
    if kind is int and value != int(value):
        raise ValueError(f"{where}: {key} must be a whole number, got {value!r}.")
    return kind(value)


def parse_members(spec: Sequence[Mapping[str, Any]]) -> list[Member]:
    """Members from plain dicts (as read from JSON/TOML or the command line).

    Each dict has a ``name`` and either a ``policy`` with its settings
    (``{"name": "tri", "policy": "triangular", "base_lr": 0.001, ...}``) or
    ``stages``, a list of such dicts each with ``steps`` (its length); optional
    ``seed``, ``momentum`` and ``weight_decay``.

    Raises:
      ValueError: one line naming the member and what is wrong (no members, unknown
        policy or key, missing settings, duplicate names, stages without lengths).
    """
    if isinstance(spec, Mapping) or not isinstance(spec, Sequence) or not spec:
        raise ValueError("the sweep has no members; give at least one (a list of "
                         "{name, policy, settings...}).")
    members, names = [], set()
    for index, item in enumerate(spec):
        where = f"member {index}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} must be a table of settings, got {item!r}.")
        name = str(item.get("name", f"member{index}"))
        where = f"member {index} ({name!r})"
        if name in names:
            raise ValueError(f"{where}: the name is used twice; names must be unique.")
        names.add(name)
        if ("policy" in item) == ("stages" in item):
            raise ValueError(f"{where}: give either a policy with its settings or a list "
                             "of stages, not both or neither.")
        if "stages" in item:
            unknown = sorted(set(item) - set(MEMBER_KEYS))
            if unknown:
                raise ValueError(f"{where}: unknown keys {', '.join(unknown)} next to "
                                 "stages (settings belong inside each stage).")
            raw = item["stages"]
            if not isinstance(raw, Sequence) or isinstance(raw, (str, Mapping)) or not raw:
                raise ValueError(f"{where}: stages must be a non-empty list of tables.")
        else:
            raw = [{k: val for k, val in item.items() if k not in MEMBER_KEYS
                    or k == "policy"}]
        stages = parse_stages(raw, where)
        extras = {}
        for key, kind in (("seed", int), ("momentum", float), ("weight_decay", float)):
            if item.get(key) is not None:
                extras[key] = _number(where, key, item[key], kind)
        if "momentum" in extras:
            v.check(f"{where} momentum", extras["momentum"], lambda m: (m >= 0) & (m < 1),
                    "in [0, 1)")
        if "weight_decay" in extras:
            v.finite_nonnegative(f"{where} weight_decay", extras["weight_decay"])
        members.append(Member(name, stages, **extras))
    return members


def load_members(path: str | os.PathLike) -> tuple[dict, list[Member]]:
    """Reads a sweep file (``.json`` or ``.toml``): ``(train settings, members)``.

    The file holds ``member`` (or ``members``), a list of member tables as for
    `parse_members`, and optionally ``train``, a table of `TrainConfig` fields.

    Raises:
      ValueError: if the file is missing or unreadable, or its content is wrong.
    """
    from clr_jax.harness.train import TrainConfig

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file {path} does not exist.")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise ValueError(f"sweep file {path} must end in .json or .toml.")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read sweep file {path}: {error}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"sweep file {path} must hold a table with a member list.")
    unknown = sorted(set(data) - {"member", "members", "train"})
    if unknown:
        raise ValueError(f"sweep file {path}: unknown keys {', '.join(unknown)}; "
                         "use member (a list) and train (a table).")
    train = data.get("train", {})
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"schedule"}
    if not isinstance(train, Mapping) or set(train) - fields:
        bad = sorted(set(train) - fields) if isinstance(train, Mapping) else [train]
        raise ValueError(f"sweep file {path}: unknown train settings {bad}; "
                         f"known: {', '.join(sorted(fields))}.")
    return dict(train), parse_members(data.get("member", data.get("members", [])))
