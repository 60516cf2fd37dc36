"""The ``clr-jax`` command line (also ``python -m clr_jax``).

This module parses the flags and reports; the ``schedule`` command is here, the
training harness's commands (``range-test``, ``train``, ``sweep``, ``demo``) are in
`clr_jax.harness.commands`. Every user error ends as one line on stderr and a non-zero
exit status, never a traceback: the library raises ``ValueError`` / ``OSError`` with a message that names
what was wrong, and `main` prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from clr_jax import _flags
from clr_jax._quiet import quiet_libraries

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


def say(*parts, **kwargs) -> None:
    """print, on the process that reports (every process of a multi-process run runs the
    command; process 0 speaks for them)."""
    if "jax" in sys.modules:
        import jax

        if jax.process_index() != 0:
            return
    print(*parts, **kwargs)


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


def _cmd_schedule(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from clr_jax import plotting
    from clr_jax.policies import staged

    schedule = staged(_flags.schedule_stages(
        args.policy, _flags.given_policy_settings(args), args.stage))
    if args.num_steps is not None and args.num_steps < 1:
        raise UsageError(f"--num-steps must be >= 1, got {args.num_steps}")
    if args.every is not None and args.every < 1:
        raise UsageError(f"--every must be >= 1, got {args.every}")
    num_steps = args.num_steps
    if num_steps is None:
        num_steps = int(4 * (args.step_size or 0)) or 1000
    if args.steps is not None:
        steps = np.asarray(args.steps, np.int64)
    else:
        steps = np.arange(0, num_steps, args.every or max(1, num_steps // 20))
    if steps.max() > np.iinfo(np.int32).max:
        raise UsageError(f"steps go up to {2**31 - 1}; got {int(steps.max())}")
    values = np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32)))
    bad = steps[~np.isfinite(values)]
    if bad.size:
        raise UsageError(f"the schedule is not finite at step {int(bad[0])}; check its "
                         "settings")
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


HARNESS_MISSING = ("this command needs the training harness: "
                   "pip install \"clr-jax[harness]\"")


def _harness():
    """The harness's commands (`clr_jax.harness.commands`), or None on the core install
    (where only ``schedule`` works)."""
    try:
        from clr_jax.harness import commands
    except ImportError:
        return None
    return commands


class Command:
    """A subcommand's parser and the flags it generated, by the setting each sets (for
    error messages that name settings)."""

    def __init__(self, commands, name: str, run, **kwargs):
        self.parser = commands.add_parser(name, **kwargs)
        self.names: dict[str, str] = {}
        self.parser.set_defaults(run=run, flag_names=self.names)

    def add(self, group, *flags, **kwargs):
        """A hand-written flag (run options that are not settings: --out, --resume)."""
        action = (group or self.parser).add_argument(*flags, **kwargs)
        self.names[action.dest] = flags[0]

    def add_settings(self, group, cls, **kwargs):
        """The flags of a settings dataclass's fields (`clr_jax._flags.add_flags`)."""
        self.names.update(_flags.add_flags(group or self.parser, cls, **kwargs))


def _cmd_harness_missing(args) -> int:
    raise UsageError(HARNESS_MISSING)


_HARNESS_COMMANDS = {
    "demo": "range test, then CLR vs fixed training on the bundled sample",
    "range-test": "run the LR range test on a data set",
    "train": "train with a learning-rate schedule",
    "sweep": "train many schedules at once (vmapped, sharded over devices)"}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="clr-jax",
                     description="Cyclical learning rates and the LR range test for JAX.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    schedule = Command(commands, "schedule", _cmd_schedule,
                       help="print and plot a learning-rate schedule",
                       description="Print a schedule's values and optionally draw it as "
                       "a PNG.")
    _flags.add_policy_flags(schedule.parser)
    out = schedule.parser.add_argument_group("output")
    out.add_argument("--steps", type=_number_list, help="print these steps, e.g. 0,1000,2000")
    out.add_argument("--num-steps", type=int, help="steps to draw (default: 2 cycles)")
    out.add_argument("--every", type=int, help="print every K-th step")
    out.add_argument("--plot", metavar="FILE", help="write the schedule as a PNG")
    out.add_argument("--log-scale", action="store_true", help="log y axis")

    harness = _harness()
    if harness is None:  # the core install: the harness's commands say what to install
        for name, text in _HARNESS_COMMANDS.items():
            Command(commands, name, _cmd_harness_missing, help=text)
    else:
        harness.add_commands(commands, _HARNESS_COMMANDS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        with _ctrl_c_deferred() as received:
            if argv and argv[0] in _HARNESS_COMMANDS and _harness() is None:
                raise UsageError(HARNESS_MISSING)  # before its flags are parsed
            args = build_parser().parse_args(argv)
        if received:
            raise KeyboardInterrupt
        with quiet_libraries(getattr(args, "verbose", False)):
            return _run(args)
    except UsageError as error:
        print(f"clr-jax: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # while the harness was imported, before a command ran
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        say("clr-jax: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


@contextlib.contextmanager
def _ctrl_c_deferred():
    """While JAX and the harness are imported, a Ctrl-C is only noted (``main`` stops
    once the imports are done, within ~2 s): raised inside an import, it would crash
    jaxlib's extension while it initialises, or surface as an ImportError and library
    tracebacks. Leaves an ignored or custom SIGINT handler alone."""
    received: list[int] = []
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield received
        return

    def note(signum, frame):
        received.append(signum)

    try:
        signal.signal(signal.SIGINT, note)
    except ValueError:  # not the main thread
        yield received
        return
    try:
        yield received
    finally:
        if signal.getsignal(signal.SIGINT) is note:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _run(args) -> int:
    """The command, with every user error as one line."""
    try:
        if args.command != "schedule":
            from clr_jax.harness.commands import start_distributed
            from clr_jax.harness.compilation import enable_compilation_cache

            start_distributed(args)
            enable_compilation_cache()
        return args.run(args)
    except UsageError as error:
        print(f"clr-jax: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as error:
        print(f"clr-jax: error: {_flags.in_flags(str(error), args.flag_names)}",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as stop:
        # A second Ctrl-C while the process shuts down must not print a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            from clr_jax.harness.stopping import Terminated
        except ImportError:  # the core install: only Ctrl-C reaches here
            Terminated = ()  # noqa: N806
        terminated = isinstance(stop, Terminated)
        hint = ""
        out = getattr(args, "out", None)
        if args.command in ("train", "sweep") and out is not None \
                and (Path(out) / "checkpoints").exists():
            hint = "; a checkpoint was saved: add --resume to the same command to continue"
        say(f"clr-jax: {'stopped by SIGTERM' if terminated else 'interrupted'}{hint}",
            file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - TrainingError and friends, one line
        from clr_jax.harness.rundir import StorageError
        from clr_jax.harness.train import TrainingError

        if isinstance(error, (TrainingError, StorageError)):
            print(f"clr-jax: error: {_flags.in_flags(str(error), args.flag_names)}",
                  file=sys.stderr)
            return 1
        raise


def main_entry() -> None:
    """Console-script entry point (also ``python -m clr_jax``)."""
    code = main()
    if "--verbose" not in sys.argv:
        # what Orbax's abandoned coroutines would report as the interpreter exits
        sys.unraisablehook = lambda info: None
    raise SystemExit(code)
