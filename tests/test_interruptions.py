"""clr-jax train killed (SIGKILL) or interrupted (SIGINT) and resumed ends where an
uninterrupted run ends: the same parameter fingerprint."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 8)):
        for c, cls in enumerate(("x", "y")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 100, (8, 8, 3)) + 100 * c
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def command(folder, out, *extra):
    return [sys.executable, "-m", "clr_jax", "train", "--dataset", str(folder), "--model",
            "mlp", "--batch-size", "8", "--preprocess", "standard", "--augment",
            "--steps", "3000", "--eval-every", "500", "--checkpoint-every", "100",
            "--policy", "triangular2", "--base-lr", "0.001", "--max-lr", "0.02",
            "--step-size", "250", "--no-progress", "--out", str(out), *extra]


ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def fingerprint(out: Path) -> str:
    return json.loads((out / "summary.json").read_text())["fingerprint"]


def start_and_stop(folder, out, sig):
    """Starts a run, waits for its first checkpoint, then a random moment, then signals."""
    process = subprocess.Popen(command(folder, out), env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any((out / "checkpoints").glob("[0-9]*")) and time.monotonic() < deadline:
        if process.poll() is not None:
            break
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 0.3))
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


@pytest.fixture(scope="module")
def uninterrupted(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    subprocess.run(command(folder, out), env=ENV, check=True, capture_output=True)
    return fingerprint(out)


def test_sigkill_then_resume(folder, tmp_path, uninterrupted):
    out = tmp_path / "run"
    code, _ = start_and_stop(folder, out, signal.SIGKILL)
    if code == 0:
        pytest.skip("the run finished before the kill; nothing to resume")
    assert code == -signal.SIGKILL and not (out / "summary.json").exists()
    subprocess.run(command(folder, out, "--resume"), env=ENV, check=True, capture_output=True)
    assert fingerprint(out) == uninterrupted


def test_sigint_saves_and_says_how_to_resume(folder, tmp_path, uninterrupted):
    out = tmp_path / "run"
    code, err = start_and_stop(folder, out, signal.SIGINT)
    if code == 0:
        pytest.skip("the run finished before the interrupt")
    assert code == 130, err
    assert "add --resume" in err and "Traceback" not in err
    assert any((out / "checkpoints").glob("[0-9]*"))
    subprocess.run(command(folder, out, "--resume"), env=ENV, check=True, capture_output=True)
    assert fingerprint(out) == uninterrupted
