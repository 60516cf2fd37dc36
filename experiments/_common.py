"""Shared by the experiment scripts: metadata, and a sweep run written as one result file."""

import json
import platform
import time
from pathlib import Path

import jax

import clr_jax
from clr_jax.harness.sweep import sweep

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"


def metadata() -> dict:
    return {"device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "machine": platform.machine(), "clr_jax": clr_jax.__version__,
            "jax": jax.__version__}


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
    summary["wall_seconds_total"] = time.perf_counter() - started
    return summary


def accuracy_at(member: dict, step: int):
    """The test accuracy a member's history holds at ``step`` (None if not evaluated)."""
    history = member["history"]
    if step in history["eval_step"]:
        return history["test_accuracy"][history["eval_step"].index(step)]
    return None
