"""The ``clr-jax`` command line (also ``python -m clr_jax``).

Every user error ends as one line on stderr and a non-zero exit status, never a
traceback: the library raises ``ValueError`` / ``OSError`` with a message that names
what was wrong, and `main` prints it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A mistake in the command line, reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage dump
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _number_list(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,1000,2000, got {text!r}"
        ) from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected steps >= 0, got {text!r}")
    return values


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


def _stage(text: str):
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


def _add_schedule_flags(parser: argparse.ArgumentParser) -> None:
    from clr_jax.policies import POLICIES

    group = parser.add_argument_group("schedule")
    group.add_argument("--policy", choices=sorted(POLICIES), help="learning-rate policy")
    group.add_argument("--base-lr", type=float, help="lower bound")
    group.add_argument("--max-lr", type=float, help="upper bound")
    group.add_argument("--step-size", type=float, help="steps in the rising half-cycle")
    group.add_argument("--step-size-down", type=float, help="steps in the falling half")
    group.add_argument("--gamma", type=float, help="decay per step (exp, exp_range)")
    group.add_argument(
        "--exp-decay",
        dest="decay",
        choices=("amplitude", "both"),
        help="exp_range: decay the amplitude only (PyTorch, Keras) or both bounds (the "
        "paper's literal reading)",
    )
    group.add_argument("--decay-steps", type=float, help="decay: length of the fall")
    group.add_argument("--total-steps", type=float, help="one_cycle: length")
    group.add_argument("--pct-start", type=float, help="one_cycle: rising fraction")
    group.add_argument("--anneal", choices=("cos", "linear"), help="one_cycle: shape")
    group.add_argument("--div-factor", type=float, help="one_cycle: max / initial")
    group.add_argument("--final-div-factor", type=float, help="one_cycle: initial / final")
    group.add_argument(
        "--three-phase", action="store_true", default=None, help="one_cycle: 3 phases"
    )
    group.add_argument(
        "--stage",
        action="append",
        type=_stage,
        metavar="'POLICY key=value ... steps=N'",
        help="a stage of a staged policy (repeat the flag); each restarts its own "
        "cycle count, e.g. --stage 'triangular2 base_lr=0.001 max_lr=0.005 "
        "step_size=2000 steps=16000'",
    )


_SCHEDULE_KEYS = (
    "base_lr", "max_lr", "step_size", "step_size_down", "gamma", "decay", "decay_steps",
    "total_steps", "pct_start", "anneal", "div_factor", "final_div_factor", "three_phase",
)


def schedule_from_args(args: argparse.Namespace):
    """The schedule that the schedule flags describe."""
    from clr_jax.policies import make_schedule, staged

    settings = {key: getattr(args, key) for key in _SCHEDULE_KEYS}
    if args.stage:
        if args.policy or any(value is not None for value in settings.values()):
            raise UsageError("give either --stage flags or --policy and its settings, not both")
        for index, (_, _, steps) in enumerate(args.stage[:-1]):
            if steps is None:
                raise UsageError(f"stage {index + 1} needs steps=N (only the last may omit it)")
        return staged(args.stage)
    if args.policy is None:
        raise UsageError("--policy (or --stage) is required")
    return make_schedule(args.policy, **settings)


def _cmd_schedule(args: argparse.Namespace) -> int:
    import numpy as np

    from clr_jax import plotting

    schedule = schedule_from_args(args)
    if args.num_steps is not None and args.num_steps < 1:
        raise UsageError(f"--num-steps must be >= 1, got {args.num_steps}")
    if args.every is not None and args.every < 1:
        raise UsageError(f"--every must be >= 1, got {args.every}")
    num_steps = args.num_steps
    if num_steps is None:
        num_steps = int(4 * (args.step_size or 0)) or 1000
    if args.steps is not None:
        steps = np.asarray(args.steps)
        values = plotting.schedule_values(schedule, int(steps.max()) + 1)[steps]
    else:
        every = args.every or max(1, num_steps // 20)
        steps = np.arange(0, num_steps, every)
        values = plotting.schedule_values(schedule, num_steps)[steps]
    print("step\tvalue")
    for step, value in zip(steps, values):
        print(f"{int(step)}\t{float(value):.6g}")
    if args.plot:
        title = args.policy or "staged"
        figure = plotting.plot_schedule(
            schedule, num_steps, title=title, log_scale=args.log_scale
        )
        plotting.save_figure(figure, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clr-jax",
        description="Cyclical learning rates and the LR range test for JAX.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    schedule = commands.add_parser(
        "schedule",
        help="print and plot a learning-rate schedule",
        description="Print a schedule's values and optionally draw it as a PNG.",
    )
    _add_schedule_flags(schedule)
    out = schedule.add_argument_group("output")
    out.add_argument("--steps", type=_number_list, help="print these steps, e.g. 0,1000,2000")
    out.add_argument("--num-steps", type=int, help="steps to draw (default: 2 cycles)")
    out.add_argument("--every", type=int, help="print every K-th step")
    out.add_argument("--plot", metavar="FILE", help="write the schedule as a PNG")
    out.add_argument("--log-scale", action="store_true", help="log y axis")
    schedule.set_defaults(run=_cmd_schedule)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.run(args)
    except UsageError as error:
        print(f"clr-jax: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as error:
        print(f"clr-jax: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("clr-jax: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def main_entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
