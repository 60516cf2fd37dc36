"""The training harness's commands of the ``clr-jax`` command line: ``range-test``,
``train``, ``sweep`` and ``demo``.

`clr_jax.cli` parses and reports; this module adds these commands' flags (generated
from `TrainConfig` and `RangeTestSettings` by `clr_jax._flags`, plus the options of a
run that are not settings: data set, output folder, processes) and does what each
command does: load the data, build the settings under the flags given, run the job
and print its result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import clr_jax
from clr_jax import _flags
from clr_jax.cli import Command, UsageError, say
from clr_jax.harness import distributed
from clr_jax.harness.data import load_dataset
from clr_jax.harness.jobs import (
    RangeTestSettings,
    find_model_bounds,
    read_all,
    run_demo,
    run_range_test,
    write_range_test_report,
)
from clr_jax.harness.members import load_members, parse_members
from clr_jax.harness.rundir import RunDir, read_metrics
from clr_jax.harness.sweep import sweep
from clr_jax.harness.train import TrainConfig, train
from clr_jax.suggest import METHODS

__all__ = ["add_commands", "start_distributed", "train_config"]

_RULES = [m for m in METHODS if m != "auto"]


def add_commands(commands, helps: dict[str, str]) -> None:
    """Adds ``demo``, ``range-test``, ``train`` and ``sweep`` to ``commands`` (an
    argparse subparsers action), with ``helps`` as their one-line help."""
    demo = Command(
        commands, "demo", _cmd_demo, help=helps["demo"],
        description="The main job, offline: on the bundled CIFAR-10 sample, run the range "
        "test with the paper's network, read bounds, train with CLR and with a fixed rate "
        "for the same steps, several seeds each, and write a report with their means, "
        "spreads and what they support (summary.md and plots).")
    demo.add(None, "--out", type=Path, default=Path("clr-jax-demo"),
             help="report folder (default: clr-jax-demo)")
    demo.add(None, "--overwrite", action="store_true", help="replace an existing report")
    demo.add(None, "--seeds", type=int, default=3,
             help="runs of each schedule, for the spread (default: 3)")
    demo.add(None, "--range-test-seed", type=int, default=0,
             help="the first seed of the three range tests (default 0)")
    demo.add(None, "--perturb-init", type=float, default=0.0,
             help="scale the range tests' initial weights by 1 + this (e.g. 1e-6, to check "
             "that the bounds do not hang on the last bits of the arithmetic; default 0)")
    demo.add(None, "--no-progress", action="store_true", help="no progress bars")

    range_test = Command(
        commands, "range-test", _cmd_range_test, help=helps["range-test"],
        description="Train while the learning rate rises; write range_test.json/.png "
        "and print the bounds each rule reads.")
    _add_data_model_flags(range_test, steps=str(RangeTestSettings.num_steps), loop=None)
    ramp = range_test.parser.add_argument_group("range test")
    range_test.add_settings(ramp, RangeTestSettings, skip=("num_steps",))
    range_test.add(ramp, "--method", action="append", choices=_RULES,
                   help="suggestion rule (repeat; default: all, 'fall' first; the first one "
                   "decides whether the test is extended or repeated)")

    train_cmd = Command(
        commands, "train", _cmd_train, help=helps["train"],
        description="Train and evaluate; write summary.json, metrics.jsonl, "
        "learning_curves.png and (with --checkpoint-every) checkpoints for --resume.")
    _add_data_model_flags(train_cmd, steps="required", loop="run")
    _flags.add_policy_flags(train_cmd.parser)
    train_cmd.add(None, "--step-size-epochs", type=float, help="step size in epochs")
    found = train_cmd.parser.add_argument_group(
        "bounds from range tests", "find the bounds first (docs/guide/range_test.md)")
    train_cmd.add(found, "--bounds", choices=[*_RULES, "auto"],
              help="run range tests and train between the bounds this rule reads (auto: "
              "'edge'); sets --base-lr and --max-lr, the policy defaults to triangular and "
              "the step size to a quarter of the run")
    train_cmd.add_settings(found, RangeTestSettings, prefix="range_test_")

    sweep_cmd = Command(
        commands, "sweep", _cmd_sweep, help=helps["sweep"],
        description="Train K models with their own schedules in one compiled program; "
        "write sweep.json, table.md, table.csv, curves.png and schedules.png.")
    members = sweep_cmd.parser.add_argument_group("members")
    sweep_cmd.add(members, "--config", type=Path,
              help="a .toml or .json file with [[member]] tables (and [train], which the "
              "flags given override)")
    sweep_cmd.add(members, "--member", action="append", type=_member,
              help="'NAME POLICY key=value ...' (repeat for each member), e.g. "
              "'tri triangular base_lr=0.001 max_lr=0.006 step_size=2000'")
    _add_data_model_flags(sweep_cmd, steps="required", loop="sweep")
    sweep_cmd.add(None, "--members-per-chunk", type=int,
              help="members trained at once (default: as many as fit; one on CPU for "
              "convolutional models)")
    sweep_cmd.add(None, "--member-devices", type=int,
              help="devices the member axis is sharded over (the rest split each batch)")
    sweep_cmd.add(None, "--target-accuracy", type=float,
              help="report the steps each member needs to reach it (default: the final "
              "accuracy of the fixed-rate members)")


def _add_data_model_flags(command: Command, *, steps: str, loop: str | None) -> None:
    """Data set, TrainConfig and run flags; ``loop`` names what --resume continues
    (None: no log, checkpoint or resume flags)."""
    data = command.parser.add_argument_group("data and model")
    command.add(data, "--dataset", default="sample",
                help="'sample' (the bundled CIFAR-10 sample), cifar10, cifar100, mnist, "
                "fashion_mnist (tensorflow-datasets, prepared in --data-dir), any other "
                "tfds name, or the path of an image folder or .tar.gz with train/ and "
                "test/ (default: sample)")
    command.add(data, "--data-dir", help="tensorflow-datasets folder holding prepared sets")
    loop_fields = ("log_every", "checkpoint_every")
    command.add_settings(data, TrainConfig, skip=("num_steps", "eval_every", *loop_fields))
    run = command.parser.add_argument_group("run")
    command.add_settings(run, TrainConfig, only=("num_steps",), defaults={"num_steps": steps})
    command.add(run, "--epochs", type=float, help="length in epochs instead of --steps")
    command.add_settings(run, TrainConfig, only=("eval_every",) + (loop_fields if loop else ()),
                         defaults={"eval_every": "a tenth of the run" if loop else
                                   "a twentieth of the ramp",
                                   "log_every": "eval_every, at most 100"})
    command.add(run, "--out", required=True, type=Path, help="output folder")
    command.add(run, "--overwrite", action="store_true", help="replace results in --out")
    command.add(run, "--no-progress", action="store_true", help="no progress bar")
    command.add(run, "--verbose", action="store_true",
                help="show the libraries' own logging (Orbax, absl, TensorStore, tfds)")
    if loop:
        command.add(run, "--tensorboard", action="store_true",
                    help="also write the metrics as TensorBoard event files in "
                    "--out/tensorboard (needs tensorboardX)")
        command.add(run, "--resume", action="store_true",
                    help=f"continue the {loop} in --out from its latest checkpoint")
    hosts = command.parser.add_argument_group(
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


def start_distributed(args) -> None:
    """Joins a multi-process run when the flags (or the cluster) ask for one."""
    given = [getattr(args, k, None) for k in ("coordinator", "num_processes", "process_id")]
    if not (getattr(args, "distributed", False) or any(x is not None for x in given)):
        return
    if any(x is not None for x in given) and any(x is None for x in given):
        raise UsageError("give --coordinator, --num-processes and --process-id together "
                         "(or --distributed alone under a cluster JAX detects)")
    distributed.initialize(*given)


def _load_data(args):
    return load_dataset(args.dataset, args.data_dir)


def train_config(args, dataset, *, settings=None, default_steps=None, eval_part=10,
                 **extra):
    """The TrainConfig of ``settings`` (a sweep file's [train] table) under the flags
    given: --epochs as steps, evaluation every ``eval_part``-th of the run and a log row
    every evaluation (at most every 100 steps) unless set."""
    flags = _flags.given(args, TrainConfig)
    settings = {**(settings or {}), **flags, **extra}
    if args.epochs is not None:
        if "num_steps" in flags:
            raise UsageError("give --steps or --epochs, not both")
        settings["num_steps"] = clr_jax.step_size_from_epochs(
            args.epochs, len(dataset.train_labels),
            settings.get("batch_size", TrainConfig.batch_size))
    if "num_steps" not in settings:
        if default_steps is None:
            raise UsageError("--steps or --epochs is required")
        settings["num_steps"] = default_steps
    if isinstance(settings["num_steps"], int) and settings["num_steps"] < 1:
        raise UsageError(f"--steps must be >= 1, got {settings['num_steps']}")
    settings.setdefault("eval_every", max(1, settings["num_steps"] // eval_part))
    if isinstance(settings["eval_every"], int):
        settings.setdefault("log_every", max(1, min(100, settings["eval_every"])))
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


def _range_settings(args, *, prefix: str = "", **extra):
    """The RangeTestSettings of the flags given, validated, errors in flag names."""
    settings = RangeTestSettings(**{**_flags.given(args, RangeTestSettings, prefix=prefix),
                                    **extra})
    try:
        settings.validate()
    except ValueError as error:
        names = {f.name: args.flag_names.get(prefix + f.name, "--steps")
                 for f in dataclasses.fields(RangeTestSettings)}
        raise UsageError(_flags.in_flags(str(error), names, plain_words=True)) from None
    return settings


def _cmd_range_test(args: argparse.Namespace) -> int:
    dataset = _load_data(args)
    config = train_config(args, dataset, default_steps=RangeTestSettings.num_steps,
                          eval_part=20)
    config = dataclasses.replace(config, log_every=config.eval_every)
    settings = _range_settings(args, num_steps=config.num_steps)
    methods = tuple(dict.fromkeys(args.method or _RULES))
    found, bounds = run_range_test(
        config, dataset, args.out, **dataclasses.asdict(settings),
        eval_every=config.eval_every, overwrite=args.overwrite,
        progress=not args.no_progress, methods=methods, on_round=_print_round)
    for reading in bounds:
        say(reading.describe())
        for flag in reading.flags:
            say(f"    {flag.code}: {flag.message}")
    if not bounds:
        say("no rule could read bounds from this test (see range_test.png)")
    say(f"wrote {args.out / 'range_test.json'} and {args.out / 'range_test.png'}")
    return 0


def _found_bounds(args, dataset, config):
    """The bounds of ``train --bounds RULE``: read back from the run's folder on
    --resume, else found by range tests whose report goes to OUT/range_test."""
    folder = args.out / "range_test"
    if args.resume and (folder / "range_test.json").exists():
        saved = json.loads((folder / "range_test.json").read_text())
        bounds = clr_jax.Bounds.from_dict(saved["found"]["bounds"])
        say(f"bounds from {folder / 'range_test.json'}: {bounds.describe()}")
        return bounds
    settings = _range_settings(args, prefix="range_test_")
    config = dataclasses.replace(config, num_steps=settings.num_steps, schedule=(),
                                 eval_every=max(1, settings.num_steps // 20))
    config.validate(dataset)
    RunDir(args.out, overwrite=args.overwrite)  # refuse a used folder before testing
    started = time.perf_counter()
    found = find_model_bounds(config, dataset, **dataclasses.asdict(settings),
                              method=args.bounds, progress=not args.no_progress,
                              on_round=_print_round, strict=False)
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
    from clr_jax import plotting
    dataset = _load_data(args)
    config = train_config(args, dataset)
    policy, settings = args.policy, _flags.given_policy_settings(args)
    if args.step_size_epochs is not None:
        if "step_size" in settings:
            raise UsageError("give --step-size or --step-size-epochs, not both")
        settings["step_size"] = clr_jax.step_size_from_epochs(
            args.step_size_epochs, len(dataset.train_labels), config.batch_size)
    if args.bounds is not None:
        if args.stage:
            raise UsageError("--bounds sets the bounds of one policy; it does not take --stage")
        if "base_lr" in settings or "max_lr" in settings:
            raise UsageError("give --bounds or --base-lr/--max-lr, not both")
        bounds = _found_bounds(args, dataset, config)
        policy = policy or "triangular"
        settings.update(base_lr=bounds.base_lr, max_lr=bounds.max_lr)
        if "step_size" in _flags.policy_settings(policy):  # two cycles, ending at base_lr
            settings.setdefault("step_size", max(1, config.num_steps // 4))
    config = dataclasses.replace(config, schedule=_flags.schedule_stages(policy, settings, args.stage))
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
    policy, settings, steps = _flags.parse_stage(" ".join(parts[1:]))
    member = {"name": parts[0], "policy": policy, **settings}
    if steps is not None:
        member["steps"] = steps
    return member


def _cmd_sweep(args: argparse.Namespace) -> int:
    if bool(args.config) == bool(args.member):
        raise UsageError("give the members with --config FILE or with --member (repeated), "
                         "not both or neither")
    # the file's [train] table sets what the flags do not
    file_settings, members = (load_members(args.config) if args.config
                              else ({}, parse_members(args.member)))
    dataset = _load_data(args)
    config = train_config(args, dataset, settings=file_settings)
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
    if args.seeds < 2:
        raise UsageError(f"--seeds must be >= 2 (the verdict needs a spread), got {args.seeds}")
    report = run_demo(args.out, overwrite=args.overwrite, progress=not args.no_progress,
                      seeds=args.seeds, range_test_seed=args.range_test_seed,
                      perturbation=args.perturb_init)
    say(f"bounds: {report['bounds_line']}")
    say(report["headline"])
    say(f"report: {args.out / 'summary.md'} ({report['seconds']:.0f} s)")
    return 0
