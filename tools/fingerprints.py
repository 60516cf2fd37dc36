"""Fingerprints of the harness's numerics, to show that a refactoring changed none of them.

    python tools/fingerprints.py --out tools/fingerprints_<commit>.json [--skip-demo]

Runs, on the bundled CIFAR-10 sample, in one process with the default devices:

- the demo (`clr-jax demo`): the bounds its range tests read and every run's final
  test accuracy;
- 16 steps of each model from the same start (caffe_cifar10 with the CPU kernels and
  with the plain `lax` kernels, caffe_cifar10 configured as a 4,000-step run so the
  long-run compiler options apply, resnet20, mlp), batch 50, triangular2: sha256 of
  the parameters and of the losses;
- a short sweep of three members (fixed, triangular, exp_range) of the MLP and of the
  Caffe net: sha256 of every member's loss and accuracy history.

Two commits give equal files exactly when every one of these runs is bit-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

import jax
import numpy as np

import clr_jax
from clr_jax.harness.data import load_dataset
from clr_jax.harness.train import TrainConfig, Trainer, fingerprint

ROOT = Path(__file__).resolve().parents[1]


def _digest(values) -> str:
    return hashlib.sha256(np.asarray(values, np.float64).tobytes()).hexdigest()


def _trainer(dataset, kernels: str, **settings):
    return Trainer(TrainConfig(kernels=kernels, **settings), dataset,
                   clr_jax.triangular2(0.001, 0.006, 8))


def short_runs(dataset) -> dict:
    runs = {"caffe_cifar10_fast": ("caffe_cifar10", "fast", 32),
            "caffe_cifar10_lax": ("caffe_cifar10", "lax", 32),
            "caffe_cifar10_long_run_options": ("caffe_cifar10", "fast", 4000),
            "resnet20": ("resnet20", "fast", 32), "mlp": ("mlp", "fast", 32)}
    out = {}
    for name, (model, kernels, num_steps) in runs.items():
        settings = dict(model=model, batch_size=50, num_steps=num_steps, eval_every=16,
                        log_every=16)
        trainer = _trainer(dataset, kernels, **settings)
        state, losses = trainer.run_steps(trainer.initial_state, 0, 16)
        out[name] = {"params": fingerprint(state["params"]), "losses": _digest(losses),
                     "loss_last": float(np.asarray(losses)[-1]),
                     "compiler_options": trainer.compiler_options}
        print(name, out[name], flush=True)
    return out


def short_sweeps(dataset) -> dict:
    from clr_jax.harness.members import parse_members
    from clr_jax.harness.sweep import sweep

    members = parse_members([
        {"name": "fixed", "policy": "fixed", "base_lr": 0.002},
        {"name": "tri", "policy": "triangular", "base_lr": 0.001, "max_lr": 0.006,
         "step_size": 8},
        {"name": "exp_range", "policy": "exp_range", "base_lr": 0.001, "max_lr": 0.006,
         "step_size": 8, "gamma": 0.99, "seed": 1},
    ])
    out = {}
    for model in ("mlp", "caffe_cifar10"):
        config = TrainConfig(model=model, batch_size=50, num_steps=32, eval_every=16,
                             log_every=8)
        with tempfile.TemporaryDirectory() as folder:
            summary = sweep(config, dataset, members, Path(folder) / "sweep", progress=False)
        histories = {m["name"]: _digest(m["history"]["loss"] + m["history"]["test_accuracy"])
                     for m in summary["members"]}
        out[f"sweep_{model}"] = histories
        print(model, histories, flush=True)
    return out


def demo() -> dict:
    from clr_jax.harness.jobs import run_demo

    with tempfile.TemporaryDirectory() as folder:
        report = run_demo(Path(folder) / "demo", progress=False)
    out = {"bounds": [{k: b[k] for k in ("method", "base_lr", "max_lr")}
                      for b in report["bounds"]],
           "final_test_accuracy": report["final_test_accuracy"]}
    print("demo", out, flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()
    dataset = load_dataset("sample")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    result = {"commit": commit, "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
              "short_runs": short_runs(dataset), "sweeps": short_sweeps(dataset)}
    if not args.skip_demo:
        result["demo"] = demo()
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
