"""Faults a long run meets, made for real (no mocks): damaged and truncated checkpoints,
a full disk (a small tmpfs, when the tests run as root), damaged caches. Each through
the command line as a user runs it: the exit status, the one line, what is left on disk,
and a resumed run that ends bit-identical to an uninterrupted one."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ARGS = ["train", "--model", "mlp", "--optimizer", "momentum", "--preprocess", "standard",
        "--batch-size", "48", "--steps", "40", "--eval-every", "20", "--checkpoint-every",
        "10", "--policy", "fixed", "--base-lr", "0.01", "--no-progress"]


def clr_jax(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "clr_jax", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (checkpoints at 30 and 40 kept) and its final fingerprint."""
    root = tmp_path_factory.mktemp("finished")
    done = clr_jax(*ARGS, "--out", "run", cwd=root)
    assert done.returncode == 0, done.stderr
    summary = json.loads((root / "run" / "summary.json").read_text())
    return root / "run", summary["fingerprint"]


def interrupted_copy(finished, tmp_path):
    """The finished run as an interrupted one would leave it: no summary."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    (run / "summary.json").unlink()
    return run


def largest_array_file(run, step):
    files = sorted((run / "checkpoints" / str(step)).rglob("ocdbt.process_0/d/*"),
                   key=lambda p: p.stat().st_size)
    return files[-1]


def overwrite(path, offset, size=4096):
    data = bytearray(path.read_bytes())
    data[offset:offset + size] = np.random.default_rng(0).bytes(size)[: len(data) - offset]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["overwritten in the middle", "truncated"])
def test_a_damaged_newest_checkpoint_is_set_aside(finished, tmp_path, damage):
    """The newest checkpoint (step 40) damaged two ways: Orbax reads the first back
    without complaint (the digest written with it catches it), fails on the other.
    The run resumes from step 30 and ends bit-identical to the uninterrupted one."""
    run = interrupted_copy(finished, tmp_path)
    target = largest_array_file(run, 40)
    if damage == "truncated":
        os.truncate(target, target.stat().st_size // 3)
    else:
        overwrite(target, target.stat().st_size // 2 if "middle" in damage else 0)
    done = clr_jax(*ARGS, "--out", "run", "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("clr-jax: the checkpoint of step 40 does not read back whole")
    assert lines[0].endswith("kept aside as run/damaged-checkpoint-40; resuming from step 30")
    assert (run / "damaged-checkpoint-40").is_dir()  # kept, not deleted
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fingerprint"] == finished[1]


def test_no_readable_checkpoint_is_one_line_and_nothing_moves(finished, tmp_path):
    """Every array file truncated: Orbax reads the arrays side by side, several reads
    fail, and the ones it does not raise were printed by asyncio (with tracebacks) in
    some runs and not others. Three tries, each exactly one line."""
    run = interrupted_copy(finished, tmp_path)
    for step in (30, 40):
        for path in (run / "checkpoints" / str(step)).rglob("ocdbt.process_0/d/*"):
            os.truncate(path, min(100, path.stat().st_size))
    before = sorted(p.name for p in run.rglob("*"))
    for _ in range(3):
        done = clr_jax(*ARGS, "--out", "run", "--resume", cwd=tmp_path)
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("clr-jax: error: no checkpoint in run/")
        assert "--overwrite" in lines[0] and "nothing was moved or deleted" in lines[0]
        assert sorted(p.name for p in run.rglob("*")) == before


UNRETRIEVED = """
import asyncio, gc
from clr_jax.harness import rundir
with rundir._quiet_threads():
    pass
loop = asyncio.new_event_loop()
for message in {messages!r}:
    future = loop.create_future()
    future.set_exception(Exception(message))
    del future
    gc.collect()
"""


def test_unretrieved_storage_errors_are_not_printed_and_others_are(tmp_path):
    """asyncio prints a future's exception that nobody retrieved when the future is
    collected. After the harness has used Orbax, such records for Orbax's reads and
    writes are dropped (their first failure is raised and reported); any other is not."""
    orbax_read = ("Encountered error while reading array index: (slice(0, 3, 1),). See "
                  "full TensorStore details: {}")
    other = "a failure of the user's own asynchronous code"
    code = UNRETRIEVED.format(messages=[orbax_read, other])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Encountered error while reading" not in done.stderr
    assert done.stderr.count("exception was never retrieved") == 1
    assert other in done.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size (needs root and a kernel that allows it; else skipped)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = []

    def make(size_kb):
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs",
                               str(mount)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(mount)
        return mount

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_full_disk_is_one_line_and_resume_works_once_there_is_space(finished, tmp_path,
                                                                       small_disk):
    """A disk with room for one checkpoint and a half: the second save fails."""
    size = sum(p.stat().st_size for p in (finished[0] / "checkpoints" / "40").rglob("*")
               if p.is_file())
    disk = small_disk(int(size * 1.5 / 1024))
    done = clr_jax(*ARGS, "--out", str(disk / "run"), cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("clr-jax: error: no space left on device while saving the "
                               "checkpoint of step 20 in ")
    assert "the checkpoint of step 10 and metrics.jsonl are kept" in lines[0]
    assert "--resume" in lines[0]
    assert sorted(p.name for p in (disk / "run" / "checkpoints").iterdir()) == ["10"]
    rows = [json.loads(line)
            for line in (disk / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20]  # written before the save that failed
    subprocess.run(["mount", "-o", f"remount,size={int(size * 6 / 1024)}k", str(disk)],
                   check=True)
    done = clr_jax(*ARGS, "--out", str(disk / "run"), "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((disk / "run" / "summary.json").read_text())
    assert summary["fingerprint"] == finished[1]


def test_a_damaged_data_cache_is_rebuilt(tmp_path):
    """The decoded arrays of the bundled sample, cut short: one line, then the data read
    again; the run is the same as from a sound cache."""
    cache = tmp_path / "cache"
    env = {"CLR_JAX_CACHE": str(cache)}
    args = [*ARGS[:ARGS.index("--steps")], "--steps", "4", "--eval-every", "4",
            "--policy", "fixed", "--base-lr", "0.01", "--no-progress"]
    first = clr_jax(*args, "--out", "a", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    (cached,) = cache.glob("cifar10_sample*.npz")
    os.truncate(cached, cached.stat().st_size // 2)
    second = clr_jax(*args, "--out", "b", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "do not read back whole" in lines[0]
    fingerprints = [json.loads((tmp_path / r / "summary.json").read_text())["fingerprint"]
                    for r in ("a", "b")]
    assert fingerprints[0] == fingerprints[1]
    assert cached.exists()  # written again, whole


def test_a_damaged_compilation_cache_is_rebuilt(tmp_path):
    env = {"CLR_JAX_COMPILATION_CACHE": str(tmp_path / "xla")}
    args = [*ARGS[:ARGS.index("--steps")], "--steps", "4", "--eval-every", "4",
            "--policy", "fixed", "--base-lr", "0.01", "--no-progress"]
    assert clr_jax(*args, "--out", "a", cwd=tmp_path, env=env).returncode == 0
    entries = sorted((tmp_path / "xla").glob("*-cache"))
    assert entries
    for entry in entries:
        os.truncate(entry, 50)
    done = clr_jax(*args, "--out", "b", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"clr-jax: {len(entries)} entries of the "
                                                   "compilation cache")
    assert all(e.stat().st_size > 50 for e in (tmp_path / "xla").glob("*-cache"))


def test_libraries_speak_only_when_asked(finished, tmp_path, caplog):
    """A damaged checkpoint is reported in one line of clr-jax's own; the libraries'
    logging (Orbax, absl, TensorStore, tfds) is let through with --verbose only."""
    import logging

    from clr_jax._quiet import quiet_libraries as _quiet_libraries

    run = interrupted_copy(finished, tmp_path)
    os.truncate(largest_array_file(run, 40), 1000)
    quiet = clr_jax(*ARGS, "--out", "run", "--resume", cwd=tmp_path)
    assert quiet.returncode == 0
    assert len(quiet.stderr.strip().splitlines()) == 1
    caplog.set_level(logging.INFO)
    for verbose in (False, True):
        caplog.clear()
        with _quiet_libraries(verbose):
            for name in ("orbax.checkpoint", "absl", "tensorstore", "tensorflow_datasets"):
                logging.getLogger(name).warning("a report from %s", name)
        assert len(caplog.records) == (4 if verbose else 0)
    # the levels are put back afterwards
    assert logging.getLogger("orbax").level == logging.NOTSET


def test_python_api_messages_name_arguments(finished, tmp_path):
    """The same fault through the Python API speaks of arguments, not flags."""
    from clr_jax.harness import TrainConfig, load_dataset
    from clr_jax.harness.train import train

    run = interrupted_copy(finished, tmp_path)
    for step in (30, 40):
        os.truncate(largest_array_file(run, step), 100)
    saved = json.loads((run / "config.json").read_text())
    config = TrainConfig(**{k: (tuple(x) if k == "schedule" else x)
                            for k, x in saved["config"].items()})
    with pytest.raises(ValueError, match="overwrite=True") as error:
        train(config, load_dataset("sample"), Path(run), resume=True, progress=False)
    assert "--overwrite" not in str(error.value)
