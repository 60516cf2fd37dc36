"""Shared by the experiment scripts: metadata, result files, and resumable sweeps."""

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax

import clr_jax
from clr_jax._io import write_json  # noqa: F401 - the experiments' JSON writer
from clr_jax.harness.sweep import sweep

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"


def experiment_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with the flag every experiment takes: --data. Also keeps the
    compiled programs on disk for the next run (`compilation_cache`)."""
    compilation_cache()
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("CLR_JAX_DATA"),
                        help="the CIFAR-10 image folder or .tar.gz (or $CLR_JAX_DATA)")
    return parser


def run_main(main: Callable[[], object]) -> None:
    """Runs an experiment's ``main``; a Ctrl-C or SIGTERM ends it with one line instead of
    a traceback (the training loop has already saved a checkpoint, and finished runs keep
    their result files) and the shell's exit status (130 or 143)."""
    try:
        main()
    except KeyboardInterrupt as stop:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C on the way out
        from clr_jax.harness.stopping import Terminated

        terminated = isinstance(stop, Terminated)
        print(f"{Path(sys.argv[0]).name}: {'stopped by SIGTERM' if terminated else 'interrupted'}"
              "; finished runs and the last checkpoint are kept: run the same command again"
              " to resume", file=sys.stderr)
        raise SystemExit(143 if terminated else 130) from None


def require_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.data:
        parser.error("give --data PATH (or set CLR_JAX_DATA) to the CIFAR-10 archive")


def chosen_runs(parser: argparse.ArgumentParser, names: str, runs) -> list[str]:
    """The comma-separated run names of ``--runs``, each checked against ``runs``."""
    chosen = names.split(",")
    unknown = sorted(set(chosen) - set(runs))
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {', '.join(runs)}")
    return chosen


def compilation_cache() -> None:
    """A second run of an experiment skips compilation (clr_jax's CLI does the same)."""
    from clr_jax.harness.compilation import enable_compilation_cache

    enable_compilation_cache()


def commit() -> str | None:
    """The git commit the code runs from."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def metadata() -> dict:
    return {"device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "machine": platform.machine(), "clr_jax": clr_jax.__version__,
            "jax": jax.__version__, "commit": commit()}


def data_name(path) -> str:
    return "CIFAR-10 (JPEG copy)" if "cifar10" in str(path) else str(path)


def run_sweep(config, dataset, members, folder: Path, progress: bool) -> dict:
    """A sweep that resumes where an earlier session stopped (checkpoints in folder)."""
    resume = (folder / "checkpoints").exists() and not (folder / "sweep.json").exists()
    if (folder / "sweep.json").exists():
        return json.loads((folder / "sweep.json").read_text())
    started = time.perf_counter()
    summary = sweep(config, dataset, members, folder, resume=resume, overwrite=not resume,
                    progress=progress)
    summary["wall_seconds_last_part"] = time.perf_counter() - started
    return summary


def train_or_load(config, dataset, folder: Path, *, schedule=None, describe=None,
                  progress: bool = True) -> dict:
    """One resumable training run: its summary if it finished earlier, else the run,
    resumed from its checkpoints where an earlier session stopped. The summary records
    the commit the code ran from and the wall time of this last part."""
    from clr_jax.harness.train import train

    if (folder / "summary.json").exists():
        return json.loads((folder / "summary.json").read_text())
    resume = (folder / "checkpoints").exists()
    started = time.perf_counter()
    summary = train(config, dataset, folder, schedule=schedule, resume=resume,
                    overwrite=not resume, progress=progress, describe=describe)
    summary["wall_seconds_last_part"] = time.perf_counter() - started
    summary["commit"] = commit()
    write_json(folder / "summary.json", summary)
    return summary


def read_metrics(folder: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl (none if it has not started)."""
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_part_seconds(summary: dict) -> float | None:
    """Wall seconds of a run's last part (since it was started or last resumed, setup
    included): its whole wall time only if it never stopped. Older result files call it
    wall_seconds_total."""
    return summary.get("wall_seconds_last_part", summary.get("wall_seconds_total"))


def accuracy_at(member: dict, step: int):
    """The test accuracy a member's history holds at ``step`` (None if not evaluated)."""
    history = member["history"]
    if step in history["eval_step"]:
        return history["test_accuracy"][history["eval_step"].index(step)]
    return None
