"""Test settings shared by the test suite and the doctests.

Rank promotion raises, so a silent broadcast in library code fails a test. Strict
dtype promotion is switched on per test module where only clr_jax code runs (Optax's
own Adam is not strict-clean).

The suite leaves the user's home alone: the data cache, tensorflow-datasets' folder and
matplotlib's cache live in one temporary folder for the session (subprocesses inherit
it), compiled programs are kept there too (the tests of that cache give it their own
folder), and the session fails if ``~/.cache/clr_jax`` changed while it ran.
"""

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
_HOME_CACHE = Path.home() / ".cache" / "clr_jax"
_SCRATCH = Path(tempfile.mkdtemp(prefix="clr-jax-tests-"))
os.environ["CLR_JAX_CACHE"] = str(_SCRATCH / "cache")
# compiled programs are kept for the session only (subprocesses of later tests reuse
# them); the tests of the cache give it their own folder
os.environ["CLR_JAX_COMPILATION_CACHE"] = str(_SCRATCH / "xla")
os.environ["TFDS_DATA_DIR"] = str(_SCRATCH / "tensorflow_datasets")
os.environ["MPLCONFIGDIR"] = str(_SCRATCH / "matplotlib")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def _listing(folder: Path):
    if not folder.exists():
        return None
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*"))


_HOME_BEFORE = _listing(_HOME_CACHE)


def pytest_sessionfinish(session, exitstatus):
    changed = _listing(_HOME_CACHE) != _HOME_BEFORE
    shutil.rmtree(_SCRATCH, ignore_errors=True)
    if changed:
        import sys

        print(f"\nFAILED: the test suite wrote into {_HOME_CACHE}; tests must keep their "
              "caches in temporary folders (conftest.py).", file=sys.stderr)
        session.exitstatus = 1
