"""Command-line flags generated from a settings dataclass: the field is the one source
of each flag's name, type, choices and default, and the class docstring's
``Attributes:`` section of its help.

A field's metadata may set ``flag`` (the flag's name when it is not the field's, e.g.
``"steps"`` for ``num_steps``) and ``choices`` (a tuple, or a function returning one,
called when the parser is built). Flags default to "not given" (`argparse.SUPPRESS`):
`given` returns only what the command line set, so that defaults from elsewhere (a
file, the command's own) apply underneath with `dataclasses.replace`.

The schedule's flags come the same way from the policy registry
(`clr_jax.policies.POLICIES`: each policy's settings, help and defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Mapping

from clr_jax._docstrings import section_items

__all__ = ["add_flags", "add_policy_flags", "field_docs", "given", "given_policy_settings",
           "in_flags", "parse_stage", "policy_settings", "schedule_stages"]


def field_docs(cls) -> dict[str, str]:
    """Each field's text in the ``Attributes:`` section of ``cls``'s docstring."""
    docs = section_items(cls, "Attributes")
    return {k: re.sub(r"`+", "", text) for k, text in docs.items()}


def _scalar_type(hint):
    """``int | None`` -> int; bool, int, float, str as they are."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def add_flags(group, cls, *, prefix: str = "", only: Iterable[str] | None = None,
              skip: Iterable[str] = (), defaults: Mapping[str, str] | None = None
              ) -> dict[str, str]:
    """Adds a flag for each field of ``cls`` (those in ``only``, less ``skip``) to the
    argparse parser or group ``group``; returns ``{destination: flag}``. ``prefix`` goes in
    front of each flag and destination (``"range_test_"`` -> ``--range-test-steps``);
    ``defaults`` describes, by field, what the command uses when the flag is not given
    (else the field's default is shown)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    defaults = dict(defaults or {})
    wanted = set(only) if only is not None else None
    names = {}
    for field in dataclasses.fields(cls):
        if field.name in set(skip) or (wanted is not None and field.name not in wanted) \
                or field.metadata.get("flag", "") is None:
            continue
        flag = "--" + (prefix + field.metadata.get("flag", field.name)).replace("_", "-")
        kind = _scalar_type(hints[field.name])
        shown = defaults.get(field.name, field.default)
        text = docs.get(field.name, field.name).rstrip(".")
        if shown is not None:
            text += f" (default: {shown})"
        options = dict(dest=prefix + field.name, default=argparse.SUPPRESS,
                       help=text.replace("%", "%%"))
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind
            options["metavar"] = field.metadata.get("flag", field.name).upper()
            choices = field.metadata.get("choices")
            if callable(choices):
                choices = choices()
            if choices:
                options["choices"] = list(choices)
                del options["metavar"]
        group.add_argument(flag, **options)
        names[prefix + field.name] = flag
    return names


def given(args: argparse.Namespace, cls, *, prefix: str = "") -> dict:
    """The fields of ``cls`` that the command line set, by field name."""
    return {f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(cls)
            if hasattr(args, prefix + f.name)}


def in_flags(message: str, names: Mapping[str, str], *, plain_words: bool = False) -> str:
    """A library message with the settings it names written as the command's flags
    (``batch_size=1000`` -> ``--batch-size=1000``, ``pass resume=True`` -> ``pass
    --resume``). A name without an underscore (``model``, ``seed``) is a plain word
    too, so it is rewritten only where ``=`` follows it, unless ``plain_words`` (a
    message about settings only)."""
    def flag(match):
        name, value = match.group(1), match.group(2) or ""
        if not value and "_" not in name and not plain_words:
            return match.group(0)
        return names[name] + ("" if value == "=True" else value)

    if not names:
        return message
    alternatives = "|".join(map(re.escape, sorted(names, key=len, reverse=True)))
    return re.sub(r"(?<![\w.-])(" + alternatives + r")(=True\b|=|(?![\w]))", flag, message)


# -- the schedule's flags, from the policy registry ----------------------------------

def _parse_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_stage(text: str):
    """'POLICY key=value ... steps=N' -> (policy, settings, steps)."""
    policy, *pairs = text.split()
    settings, steps = {}, None
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(
                f"stage item {pair!r} is not key=value (in stage {text!r})"
            )
        if key == "steps":
            steps = _parse_value(value)
        else:
            settings[key] = _parse_value(value)
    return policy, settings, steps


def _policy_settings_by_name() -> dict[str, tuple[str, list[str], object]]:
    """Every setting a policy takes by name: (help, policies, example default), in the
    registry's order. ``log_*`` twins are for traced values in Python, not flags."""
    from clr_jax.policies import POLICIES

    settings: dict[str, tuple[str, list[str], object]] = {}
    for policy in POLICIES.values():
        for name in policy.settings:
            if name.startswith("log_"):
                continue
            text, users, default = settings.get(name, (policy.help.get(name, name), [], None))
            settings[name] = (text, [*users, policy.name],
                              policy.defaults.get(name, default))
    return settings


def add_policy_flags(parser: argparse.ArgumentParser) -> None:
    from clr_jax.policies import POLICIES, SWITCH_CHOICES

    group = parser.add_argument_group("schedule")
    group.add_argument("--policy", choices=list(POLICIES), help="learning-rate policy: "
                       + "; ".join(f"{p.name}: {p.description}" for p in POLICIES.values()))
    for name, (text, users, default) in _policy_settings_by_name().items():
        # a setting named like a policy ("decay", exp_range's switch) would read as that
        # policy: its flag names the first policy that takes it (--exp-range-decay)
        flag = "--" + (f"{users[0]}_{name}" if name in POLICIES else name).replace("_", "-")
        where = f" ({', '.join(users)})"
        text = text.replace("%", "%%") + where
        if isinstance(default, bool):
            group.add_argument(flag, dest=name, action="store_true", default=None, help=text)
        elif isinstance(default, str):
            group.add_argument(flag, dest=name, choices=SWITCH_CHOICES.get(name), help=text)
        else:
            group.add_argument(flag, dest=name, type=float, help=text)
    group.add_argument(
        "--stage",
        action="append",
        type=parse_stage,
        metavar="'POLICY key=value ... steps=N'",
        help="a stage of a staged policy (repeat the flag); each restarts its own "
        "cycle count, e.g. --stage 'triangular2 base_lr=0.001 max_lr=0.005 "
        "step_size=2000 steps=16000'",
    )


def given_policy_settings(args: argparse.Namespace) -> dict:
    """The schedule settings given as flags, by name."""
    return {key: getattr(args, key) for key in _policy_settings_by_name()
            if getattr(args, key, None) is not None}


def schedule_stages(policy: str | None, settings: dict, stages: list | None) -> tuple:
    """The stages that the schedule flags describe (`clr_jax.policies.parse_stages`):
    ``--stage`` flags, or ``--policy`` with its settings."""
    from clr_jax.policies import parse_stages

    if stages:
        if policy or settings:
            raise ValueError("give either --stage flags or --policy and its settings, not both")
        for index, (_, _, steps) in enumerate(stages[:-1]):
            if steps is None:
                raise ValueError(f"stage {index + 1} needs steps=N (only the last may omit it)")
        return parse_stages([(name, stage_settings, 1 if steps is None else steps)
                             for name, stage_settings, steps in stages], "--stage")
    if policy is None:
        raise ValueError("--policy (or --stage) is required")
    return parse_stages({"policy": policy, **settings}, f"--policy {policy}")


def policy_settings(policy: str) -> tuple[str, ...]:
    from clr_jax.policies import POLICIES

    return tuple(POLICIES[policy].settings) if policy in POLICIES else ()
