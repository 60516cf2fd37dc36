"""The ``clr-jax`` command line (also ``python -m clr_jax``).

Every user error ends as one line on stderr and a non-zero exit status, never a
traceback: the library raises ``ValueError`` / ``OSError`` with a message that names
what was wrong, and `main` prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

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


# Settings whose flag is not --<name>: "decay" is also the name of a policy.
_FLAG_NAMES = {"decay": "exp-decay"}


def _schedule_settings() -> dict[str, tuple[str, list[str], object]]:
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


def _add_schedule_flags(parser: argparse.ArgumentParser) -> None:
    from clr_jax.policies import POLICIES, SWITCH_CHOICES

    group = parser.add_argument_group("schedule")
    group.add_argument("--policy", choices=list(POLICIES), help="learning-rate policy: "
                       + "; ".join(f"{p.name}: {p.description}" for p in POLICIES.values()))
    for name, (text, users, default) in _schedule_settings().items():
        flag = "--" + _FLAG_NAMES.get(name, name.replace("_", "-"))
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
        type=_stage,
        metavar="'POLICY key=value ... steps=N'",
        help="a stage of a staged policy (repeat the flag); each restarts its own "
        "cycle count, e.g. --stage 'triangular2 base_lr=0.001 max_lr=0.005 "
        "step_size=2000 steps=16000'",
    )


def schedule_stages(args: argparse.Namespace) -> tuple:
    """The stages that the schedule flags describe (`clr_jax.policies.parse_stages`)."""
    from clr_jax.policies import parse_stages

    settings = {key: getattr(args, key) for key in _schedule_settings()
                if getattr(args, key, None) is not None}
    if args.stage:
        if args.policy or settings:
            raise UsageError("give either --stage flags or --policy and its settings, not both")
        for index, (_, _, steps) in enumerate(args.stage[:-1]):
            if steps is None:
                raise UsageError(f"stage {index + 1} needs steps=N (only the last may omit it)")
        return parse_stages([(policy, stage_settings, 1 if steps is None else steps)
                             for policy, stage_settings, steps in args.stage], "--stage")
    if args.policy is None:
        raise UsageError("--policy (or --stage) is required")
    return parse_stages({"policy": args.policy, **settings}, f"--policy {args.policy}")


def _policy_settings(policy: str) -> tuple[str, ...]:
    from clr_jax.policies import POLICIES

    return tuple(POLICIES[policy].settings) if policy in POLICIES else ()


def schedule_from_args(args: argparse.Namespace):
    """The schedule that the schedule flags describe."""
    from clr_jax.policies import staged

    return staged(schedule_stages(args))


def _cmd_schedule(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
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


# Run settings named in the library's messages, and the flag that sets each.
_ARGUMENT_FLAGS = {"resume=True": "--resume", "overwrite=True": "--overwrite",
                   "batch_size": "--batch-size", "num_steps": "--steps",
                   "eval_every": "--eval-every", "log_every": "--log-every",
                   "checkpoint_every": "--checkpoint-every",
                   "members_per_chunk": "--members-per-chunk",
                   "member_devices": "--member-devices", "target_accuracy": "--target-accuracy",
                   "data_dir": "--data-dir"}
_ARGUMENT_PATTERN = re.compile(
    r"(?<![\w.-])(" + "|".join(map(re.escape, _ARGUMENT_FLAGS)) + r")(?![\w])")


def in_flags(message: str) -> str:
    """A library message with the run settings it names written as this command's flags
    (``batch_size=1000`` -> ``--batch-size=1000``, ``pass resume=True`` -> ``pass
    --resume``)."""
    return _ARGUMENT_PATTERN.sub(lambda m: _ARGUMENT_FLAGS[m.group(1)], message)


HARNESS_MISSING = ("this command needs the training harness: "
                   "pip install \"clr-jax[harness]\"")


def _harness_names():
    try:
        from clr_jax.harness.kernels import KERNELS
        from clr_jax.harness.models import MODELS
        from clr_jax.harness.optim import OPTIMIZERS
    except ImportError:  # the core install: schedule still works
        return None
    from clr_jax.harness.device_data import PREPROCESS

    return {"models": list(MODELS), "optimizers": list(OPTIMIZERS), "kernels": KERNELS,
            "preprocess": PREPROCESS}


def _add_data_model_flags(parser: argparse.ArgumentParser, *, steps_help: str) -> None:
    names = _harness_names() or {}

    data = parser.add_argument_group("data and model")
    data.add_argument("--dataset", default="sample",
                      help="'sample' (the bundled CIFAR-10 sample), cifar10, cifar100, mnist, "
                      "fashion_mnist (tensorflow-datasets, prepared in --data-dir), or the "
                      "path of an image folder or .tar.gz with train/ and test/ (default: "
                      "sample)")
    data.add_argument("--data-dir", help="tensorflow-datasets folder holding prepared sets")
    data.add_argument("--model", default="caffe_cifar10", choices=names.get("models"))
    data.add_argument("--kernels", default="auto", choices=names.get("kernels"),
                      help="the models' CPU kernels and compiler options: fast, lax (plain "
                      "jax.lax and XLA's defaults) or auto (fast on CPU; default)")
    data.add_argument("--optimizer", default="caffe_sgd", choices=names.get("optimizers"))
    data.add_argument("--momentum", type=float, default=0.9)
    data.add_argument("--weight-decay", type=float, default=0.004)
    data.add_argument("--no-caffe-multipliers", action="store_true",
                      help="don't apply the paper's per-layer lr/decay multipliers")
    data.add_argument("--preprocess", choices=names.get("preprocess"), default="caffe",
                      help="caffe: subtract the mean image (0-255, the paper); standard: "
                      "per-channel mean/std")
    data.add_argument("--augment", action="store_true", help="random crops and flips")
    data.add_argument("--no-shuffle", action="store_true",
                      help="read the training set in one fixed (seeded) order every epoch, "
                      "as Caffe read its pre-shuffled database")
    data.add_argument("--batch-size", type=int, default=100)
    data.add_argument("--seed", type=int, default=0)
    run = parser.add_argument_group("run")
    run.add_argument("--steps", type=int, help=steps_help)
    run.add_argument("--epochs", type=float, help="length in epochs instead of --steps")
    run.add_argument("--eval-every", type=int, help="steps between test evaluations")
    run.add_argument("--out", required=True, type=Path, help="output folder")
    run.add_argument("--overwrite", action="store_true", help="replace results in --out")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--verbose", action="store_true",
                     help="show the libraries' own logging (Orbax, absl, TensorStore, tfds)")
    hosts = parser.add_argument_group(
        "several processes", "run one process per host (or per device group), all with the "
        "same command; see docs/guide/training.md")
    hosts.add_argument("--distributed", action="store_true",
                       help="join the other processes of a multi-process run; the settings "
                       "below, or those of the cluster (Slurm, Open MPI, Kubernetes, a TPU "
                       "pod slice)")
    hosts.add_argument("--coordinator", metavar="HOST:PORT",
                       help="address of process 0 (implies --distributed)")
    hosts.add_argument("--num-processes", type=int, help="processes in the run")
    hosts.add_argument("--process-id", type=int, help="this process's index, from 0")


def _add_repeat_flags(group, repeats: str, rounds: str) -> None:
    group.add_argument(repeats, dest="range_test_repeats", type=int, default=3,
                       help="range tests per round, each with its own seed (initialisation "
                       "and data order); the spread of their readings is the interval "
                       "(default 3)")
    group.add_argument(rounds, dest="range_test_rounds", type=int, default=3,
                       help="rounds of range tests at most: while the reading is flagged, "
                       "the next round extends the ramp, doubles the steps or the repeats "
                       "(default 3)")


def _start_distributed(args) -> None:
    given = [getattr(args, k, None) for k in ("coordinator", "num_processes", "process_id")]
    if not (getattr(args, "distributed", False) or any(x is not None for x in given)):
        return
    if any(x is not None for x in given) and any(x is None for x in given):
        raise UsageError("give --coordinator, --num-processes and --process-id together "
                         "(or --distributed alone under a cluster JAX detects)")
    from clr_jax.harness import distributed

    distributed.initialize(*given)


def _add_loop_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--log-every", type=int, help="steps between metrics.jsonl lines")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write the metrics as TensorBoard event files in "
                        "--out/tensorboard (needs tensorboardX)")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    parser.add_argument("--resume", action="store_true",
                        help=f"continue the {what} in --out from its latest checkpoint")


def _load_data(args):
    from clr_jax.harness.data import load_dataset

    return load_dataset(args.dataset, args.data_dir)


def _steps(args, dataset, default=None) -> int:
    import clr_jax

    if args.steps is not None and args.epochs is not None:
        raise UsageError("give --steps or --epochs, not both")
    if args.epochs is not None:
        return clr_jax.step_size_from_epochs(args.epochs, len(dataset.train_labels),
                                             args.batch_size)
    if args.steps is None:
        if default is None:
            raise UsageError("--steps or --epochs is required")
        return default
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    return args.steps


def _train_config(args, num_steps: int, **extra):
    """The TrainConfig of the data, model and run flags; evaluation every tenth of the run
    and a log row every 100 steps (at most) unless the flags (or ``extra``) say
    otherwise."""
    from clr_jax.harness.train import TrainConfig

    eval_every = args.eval_every if args.eval_every is not None else max(1, num_steps // 10)
    log_every = getattr(args, "log_every", None)
    settings = dict(
        model=args.model, optimizer=args.optimizer, momentum=args.momentum,
        weight_decay=args.weight_decay, caffe_multipliers=not args.no_caffe_multipliers,
        batch_size=args.batch_size, num_steps=num_steps, eval_every=eval_every,
        seed=args.seed, preprocess=args.preprocess, augment=args.augment,
        shuffle=not args.no_shuffle, kernels=args.kernels,
        checkpoint_every=getattr(args, "checkpoint_every", None),
        log_every=log_every if log_every is not None else max(1, min(100, eval_every)))
    settings.update(extra)
    return TrainConfig(**settings)


def _print_round(record: dict) -> None:
    """One line per round of range tests, as it ends."""
    reading = record.get("bounds")
    what = (f"max_lr {reading['max_lr']:.3g} [{reading['max_interval'][0]:.3g}, "
            f"{reading['max_interval'][1]:.3g}]" if reading and reading.get("max_interval")
            else f"max_lr {reading['max_lr']:.3g}" if reading else "no reading")
    flags = ", ".join(f["code"] for f in record["flags"]) or "trusted"
    say(f"range test round {record['round']}: {len(record['seeds'])} repeats of "
        f"{record['min_lr']:.3g} to {record['max_lr']:.3g} over {record['num_steps']} steps: "
        f"{what} ({flags})", file=sys.stderr)


def _print_bounds(bounds) -> None:
    for b in bounds:
        say(b.describe())
        for flag in b.flags:
            say(f"    {flag.code}: {flag.message}")


def _range_test_options(args, repeats_flag: str, rounds_flag: str) -> dict:
    if args.range_test_repeats < 1:
        raise UsageError(f"{repeats_flag} must be >= 1, got {args.range_test_repeats}")
    if args.range_test_rounds < 1:
        raise UsageError(f"{rounds_flag} must be >= 1, got {args.range_test_rounds}")
    return {"repeats": args.range_test_repeats, "max_rounds": args.range_test_rounds}


def _cmd_range_test(args: argparse.Namespace) -> int:
    from clr_jax.harness.jobs import run_range_test
    from clr_jax.suggest import METHODS

    options = _range_test_options(args, "--repeats", "--max-rounds")
    dataset = _load_data(args)
    num_steps = _steps(args, dataset, default=200)
    eval_every = args.eval_every if args.eval_every is not None else max(1, num_steps // 20)
    config = _train_config(args, num_steps, log_every=eval_every, eval_every=eval_every)
    methods = tuple(dict.fromkeys(args.method)) if args.method else \
        tuple(m for m in METHODS if m != "auto")
    found, bounds = run_range_test(
        config, dataset, args.out, min_lr=args.min_lr, max_lr=args.max_lr,
        num_steps=num_steps, mode=args.mode, eval_every=eval_every,
        overwrite=args.overwrite, progress=not args.no_progress, methods=methods,
        on_round=_print_round, **options)
    _print_bounds(bounds)
    if not bounds:
        say("no rule could read bounds from this test (see range_test.png)")
    say(f"wrote {args.out / 'range_test.json'} and {args.out / 'range_test.png'}")
    return 0


def _found_bounds(args, dataset, num_steps: int):
    """The bounds of ``train --bounds RULE``: read back from the run's folder on
    --resume, else found by range tests whose report goes to OUT/range_test."""
    import json

    import clr_jax
    from clr_jax.harness.jobs import find_model_bounds, read_all, write_range_test_report

    folder = args.out / "range_test"
    if args.resume and (folder / "range_test.json").exists():
        saved = json.loads((folder / "range_test.json").read_text())
        bounds = clr_jax.Bounds.from_dict(saved["found"]["bounds"])
        say(f"bounds from {folder / 'range_test.json'}: {bounds.describe()}")
        return bounds
    from clr_jax.harness.rundir import RunDir
    from clr_jax.range_test import _check_common

    options = _range_test_options(args, "--range-test-repeats", "--range-test-rounds")
    steps = args.range_test_steps
    if steps < 2:
        raise UsageError(f"--range-test-steps must be >= 2, got {steps}")
    if not args.range_test_max_lr > args.range_test_min_lr > 0:
        raise UsageError("--range-test-max-lr must be > --range-test-min-lr > 0, got "
                         f"{args.range_test_min_lr:g} and {args.range_test_max_lr:g}")
    _check_common(args.range_test_min_lr, args.range_test_max_lr, steps, "exponential")
    config = _train_config(args, steps, eval_every=max(1, steps // 20))
    config.validate(dataset)
    RunDir(args.out, overwrite=args.overwrite)  # refuse a used folder before testing
    import time

    started = time.perf_counter()
    found = find_model_bounds(
        config, dataset, min_lr=args.range_test_min_lr, max_lr=args.range_test_max_lr,
        num_steps=steps, method=args.bounds, progress=not args.no_progress,
        on_round=_print_round, strict=False, **options)
    write_range_test_report(found, read_all(found, (found.bounds.method,)), folder,
                            config=config, seconds=time.perf_counter() - started)
    if not found.trusted:
        raise UsageError(
            "the range tests gave no trusted bounds ("
            + "; ".join(f.message for f in found.bounds.flags)
            + f"); nothing was trained. See {folder / 'range_test.png'}; give "
            "--base-lr and --max-lr yourself, or change the --range-test-* flags")
    say(f"bounds: {found.bounds.describe()}")
    return found.bounds


def _cmd_train(args: argparse.Namespace) -> int:
    import clr_jax
    from clr_jax import plotting
    from clr_jax.harness import distributed
    from clr_jax.harness.rundir import read_metrics
    from clr_jax.harness.train import train

    dataset = _load_data(args)
    num_steps = _steps(args, dataset)
    if args.step_size_epochs is not None:
        if args.step_size is not None:
            raise UsageError("give --step-size or --step-size-epochs, not both")
        args.step_size = clr_jax.step_size_from_epochs(
            args.step_size_epochs, len(dataset.train_labels), args.batch_size)
    if args.bounds is not None:
        if args.stage:
            raise UsageError("--bounds sets the bounds of one policy; it does not take --stage")
        if args.base_lr is not None or args.max_lr is not None:
            raise UsageError("give --bounds or --base-lr/--max-lr, not both")
        bounds = _found_bounds(args, dataset, num_steps)
        args.policy = args.policy or "triangular"
        args.base_lr, args.max_lr = bounds.base_lr, bounds.max_lr
        if args.step_size is None and "step_size" in _policy_settings(args.policy):
            args.step_size = max(1, num_steps // 4)  # two cycles, ending at base_lr
    config = _train_config(args, num_steps, schedule=schedule_stages(args))
    summary = train(config, dataset, args.out, resume=args.resume, overwrite=args.overwrite,
                    progress=not args.no_progress, describe={"dataset": args.dataset},
                    tensorboard=args.tensorboard)
    if summary.get("finished_before"):
        say(f"the run in {args.out} has finished ({summary['steps']} steps, final test "
            f"accuracy {summary['final_test_accuracy']:.4f}); nothing to resume, nothing "
            "changed")
        return 0
    if distributed.is_primary():
        plotting.save_figure(plotting.plot_learning_curves(
            {"run": read_metrics(args.out / "metrics.jsonl")}), args.out / "learning_curves.png")
    say(f"final test accuracy {summary['final_test_accuracy']:.4f} "
          f"(best {summary['best_test_accuracy']:.4f} at step {summary['best_step']}), "
          f"{summary['images_per_second']:.0f} images/s")
    say(f"wrote {args.out / 'summary.json'}, metrics.jsonl and learning_curves.png")
    return 0


def _member(text: str) -> dict:
    """'NAME POLICY key=value ...' -> a member dict for `parse_members`."""
    parts = text.split()
    if len(parts) < 2:
        raise argparse.ArgumentTypeError(
            f"--member {text!r} needs a name and a policy, e.g. "
            "'tri triangular base_lr=0.001 max_lr=0.006 step_size=2000'")
    policy, settings, steps = _stage(" ".join(parts[1:]))
    member = {"name": parts[0], "policy": policy, **settings}
    if steps is not None:
        member["steps"] = steps
    return member


# TrainConfig fields a sweep file's [train] table may set, and the flag each replaces.
_TRAIN_FLAGS = {"model": "model", "optimizer": "optimizer", "momentum": "momentum",
                "weight_decay": "weight_decay", "batch_size": "batch_size", "seed": "seed",
                "preprocess": "preprocess", "augment": "augment", "num_steps": "steps",
                "eval_every": "eval_every", "log_every": "log_every",
                "checkpoint_every": "checkpoint_every", "kernels": "kernels"}


def _sweep_file_defaults(train: dict) -> dict:
    defaults = {}
    for key, value in train.items():
        if key == "shuffle":
            defaults["no_shuffle"] = not value
        elif key == "caffe_multipliers":
            defaults["no_caffe_multipliers"] = not value
        elif key in _TRAIN_FLAGS:
            defaults[_TRAIN_FLAGS[key]] = value
        else:
            defaults.setdefault("_train_extra", {})[key] = value
    return defaults


def _cmd_sweep(args: argparse.Namespace) -> int:
    from clr_jax.harness.members import load_members, parse_members
    from clr_jax.harness.sweep import sweep

    if bool(args.config) == bool(args.member):
        raise UsageError("give the members with --config FILE or with --member (repeated), "
                         "not both or neither")
    members = load_members(args.config)[1] if args.config else parse_members(args.member)
    dataset = _load_data(args)
    num_steps = _steps(args, dataset)
    config = _train_config(args, num_steps, **getattr(args, "_train_extra", {}))
    summary = sweep(config, dataset, members, args.out, resume=args.resume,
                    overwrite=args.overwrite, progress=not args.no_progress,
                    members_per_chunk=args.members_per_chunk,
                    member_devices=args.member_devices,
                    target_accuracy=args.target_accuracy,
                    describe={"dataset": args.dataset}, tensorboard=args.tensorboard)
    if summary.get("finished_before"):
        say(f"the sweep in {args.out} has finished ({summary['steps']} steps); nothing to "
            "resume, nothing changed")
        return 0
    say((args.out / "table.md").read_text(), end="")
    say(f"{len(members)} members in {summary['wall_seconds_this_session']:.0f} s "
          f"({summary['members_per_chunk']} per chunk); wrote {args.out / 'sweep.json'}, "
          "table.md, table.csv, curves.png and schedules.png")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from clr_jax.harness.jobs import run_demo

    if args.seeds < 2:
        raise UsageError(f"--seeds must be >= 2 (the verdict needs a spread), got {args.seeds}")
    report = run_demo(args.out, overwrite=args.overwrite, progress=not args.no_progress,
                      seeds=args.seeds, range_test_seed=args.range_test_seed,
                      perturbation=args.perturb_init)
    say(f"bounds: {report['bounds_line']}")
    say(report["headline"])
    say(f"report: {args.out / 'summary.md'} ({report['seconds']:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from clr_jax.range_test import MODES
    from clr_jax.suggest import METHODS

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

    demo = commands.add_parser(
        "demo", help="range test, then CLR vs fixed training on the bundled sample",
        description="The main job, offline: on the bundled CIFAR-10 sample, run the range "
        "test with the paper's network, read bounds, train with CLR and with a fixed rate "
        "for the same steps, several seeds each, and write a report with their means, "
        "spreads and what they support (summary.md and plots).")
    demo.add_argument("--out", type=Path, default=Path("clr-jax-demo"),
                      help="report folder (default: clr-jax-demo)")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing report")
    demo.add_argument("--seeds", type=int, default=3,
                      help="runs of each schedule, for the spread (default: 3)")
    demo.add_argument("--range-test-seed", type=int, default=0,
                      help="the first seed of the three range tests (default 0)")
    demo.add_argument("--perturb-init", type=float, default=0.0,
                      help="scale the range tests' initial weights by 1 + this (e.g. 1e-6, "
                      "to check that the bounds do not hang on the last bits of the "
                      "arithmetic; default 0)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=_cmd_demo)

    range_test = commands.add_parser(
        "range-test", help="run the LR range test on a data set",
        description="Train while the learning rate rises; write range_test.json/.png "
        "and print the bounds each rule reads.")
    _add_data_model_flags(range_test, steps_help="length of the ramp in steps (default 200)")
    range_test.add_argument("--min-lr", type=float, default=1e-5,
                            help="the ramp's first rate (default 1e-5)")
    range_test.add_argument("--max-lr", type=float, default=10.0,
                            help="the ramp's last rate (default 10)")
    range_test.add_argument("--mode", choices=MODES, default="exponential",
                            help="the ramp's shape (default exponential; the paper's test is "
                            "linear, e.g. --mode linear --min-lr 1e-4 --max-lr 0.02)")
    range_test.add_argument("--method", action="append",
                            choices=[m for m in METHODS if m != "auto"],
                            help="suggestion rule (repeat; default: all, 'fall' first; the "
                            "first one decides whether the test is extended or repeated)")
    _add_repeat_flags(range_test, "--repeats", "--max-rounds")
    range_test.set_defaults(run=_cmd_range_test)

    train = commands.add_parser(
        "train", help="train with a learning-rate schedule",
        description="Train and evaluate; write summary.json, metrics.jsonl, "
        "learning_curves.png and (with --checkpoint-every) checkpoints for --resume.")
    _add_data_model_flags(train, steps_help="training steps")
    _add_schedule_flags(train)
    train.add_argument("--step-size-epochs", type=float, help="step size in epochs")
    found = train.add_argument_group(
        "bounds from range tests", "find the bounds first (docs/guide/range_test.md)")
    found.add_argument("--bounds", choices=[m for m in METHODS if m != "auto"] + ["auto"],
                       help="run range tests and train between the bounds this rule reads "
                       "(auto: 'fall'); sets --base-lr and --max-lr, the policy defaults "
                       "to triangular and the step size to a quarter of the run")
    found.add_argument("--range-test-steps", type=int, default=200,
                       help="steps of each range test (default 200)")
    found.add_argument("--range-test-min-lr", type=float, default=1e-5,
                       help="the ramp's first rate (default 1e-5)")
    found.add_argument("--range-test-max-lr", type=float, default=10.0,
                       help="the ramp's last rate (default 10; raised x10 while the "
                       "reading is at its end)")
    _add_repeat_flags(found, "--range-test-repeats", "--range-test-rounds")
    _add_loop_flags(train, "run")
    train.set_defaults(run=_cmd_train)

    sweep = commands.add_parser(
        "sweep", help="train many schedules at once (vmapped, sharded over devices)",
        description="Train K models with their own schedules in one compiled program; "
        "write sweep.json, table.md, table.csv, curves.png and schedules.png.")
    members = sweep.add_argument_group("members")
    members.add_argument("--config", type=Path,
                         help="a .toml or .json file with [[member]] tables (and [train])")
    members.add_argument("--member", action="append", type=_member,
                         help="'NAME POLICY key=value ...' (repeat for each member), e.g. "
                         "'tri triangular base_lr=0.001 max_lr=0.006 step_size=2000'")
    _add_data_model_flags(sweep, steps_help="training steps for every member")
    _add_loop_flags(sweep, "sweep")
    sweep.add_argument("--members-per-chunk", type=int,
                       help="members trained at once (default: as many as fit; one on "
                       "CPU for convolutional models)")
    sweep.add_argument("--member-devices", type=int,
                       help="devices the member axis is sharded over (the rest split "
                       "each batch)")
    sweep.add_argument("--target-accuracy", type=float,
                       help="report the steps each member needs to reach it (default: "
                       "the final accuracy of the fixed-rate members)")
    sweep.set_defaults(run=_cmd_sweep)
    return parser


@contextlib.contextmanager
def _quiet_libraries(verbose: bool):
    """Orbax, absl, TensorStore and tensorflow-datasets log through Python's logging (and
    absl's): their messages stay out of the terminal unless --verbose asks for them;
    clr-jax says in one line what went wrong. Orbax's asynchronous reads also leave
    failed coroutines and closed event loops behind when a checkpoint is damaged, which
    Python would report at exit; clr-jax reports the damage itself."""
    if verbose:
        yield
        return
    import logging
    import threading

    loggers = {name: logging.getLogger(name) for name in
               ("absl", "orbax", "jax", "tensorstore", "tensorflow_datasets", "etils")}
    levels = {name: logger.level for name, logger in loggers.items()}
    for logger in loggers.values():
        logger.setLevel(logging.CRITICAL + 1)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    hooks = sys.unraisablehook, threading.excepthook
    sys.unraisablehook = lambda info: None
    threading.excepthook = lambda args: None
    try:
        yield
    finally:
        sys.unraisablehook, threading.excepthook = hooks
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        with _quiet_libraries(getattr(args, "verbose", False)):
            return _run(parser, args, argv)
    except UsageError as error:
        print(f"clr-jax: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _run(parser, args, argv) -> int:
    """The command, with every user error as one line."""
    try:
        if args.command != "schedule" and _harness_names() is None:
            raise UsageError(HARNESS_MISSING)
        if args.command == "sweep" and args.config is not None:
            # the file's [train] table replaces the defaults; flags given still win
            from clr_jax.harness.members import load_members

            train_settings = load_members(args.config)[0]
            commands = next(a for a in parser._actions
                            if isinstance(a, argparse._SubParsersAction))
            commands.choices["sweep"].set_defaults(**_sweep_file_defaults(train_settings))
            args = parser.parse_args(argv)
        _start_distributed(args)
        if args.command != "schedule":
            from clr_jax.harness.compilation import enable_compilation_cache

            enable_compilation_cache()
        return args.run(args)
    except UsageError as error:
        print(f"clr-jax: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as error:
        print(f"clr-jax: error: {in_flags(str(error))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as stop:
        # A second Ctrl-C while the process shuts down must not print a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            from clr_jax.harness.rundir import Terminated
        except ImportError:  # the core install: only Ctrl-C reaches here
            Terminated = ()  # noqa: N806
        terminated = isinstance(stop, Terminated)
        hint = ""
        out = getattr(args, "out", None)
        if getattr(args, "command", None) in ("train", "sweep") and out is not None \
                and (Path(out) / "checkpoints").exists():
            hint = "; a checkpoint was saved: add --resume to the same command to continue"
        say(f"clr-jax: {'stopped by SIGTERM' if terminated else 'interrupted'}{hint}",
            file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - TrainingError and friends, one line
        from clr_jax.harness.rundir import StorageError
        from clr_jax.harness.train import TrainingError

        if isinstance(error, (TrainingError, StorageError)):
            print(f"clr-jax: error: {in_flags(str(error))}", file=sys.stderr)
            return 1
        raise


def main_entry() -> None:
    """Console-script entry point."""
    code = main()
    if "--verbose" not in sys.argv:
        # what Orbax's abandoned coroutines would report as the interpreter exits
        sys.unraisablehook = lambda info: None
    raise SystemExit(code)
