"""XLA's compiled programs kept on disk (JAX's persistent compilation cache), so that a
second run of the same job, in a new process, skips compilation.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
import zlib
from pathlib import Path

import jax

__all__ = ["enable_compilation_cache"]

# Every program is kept: loading even a small one from disk is faster than compiling it
# (the many small helpers of a run add up to a noticeable part of its start-up).
MIN_COMPILE_SECONDS = 0.0


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path | None:
    """Keeps compiled programs in ``directory`` and reuses them in later processes.

    The folder is, in order: ``directory``; ``$CLR_JAX_COMPILATION_CACHE``; the cache
    JAX is already configured with (``$JAX_COMPILATION_CACHE_DIR`` or
    ``jax_compilation_cache_dir``), which is kept as it is; else
    ``$CLR_JAX_CACHE/xla`` (``~/.cache/clr_jax/xla``). ``"off"`` turns it off. A
    program's entry depends on the program, the compiler options and the device, so a
    change of any of them compiles anew.

    Returns:
      The folder in use, or None when off.
    """
    from clr_jax.harness.data import cache_dir

    chosen = directory if directory is not None else os.environ.get("CLR_JAX_COMPILATION_CACHE")
    if chosen is not None and str(chosen).lower() in ("off", "none", ""):
        return None
    configured = jax.config.jax_compilation_cache_dir
    if chosen is None and configured:
        return Path(configured)
    folder = Path(chosen).expanduser() if chosen is not None else cache_dir() / "xla"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache
        return None
    discard_damaged_entries(folder)
    # a damaged entry left by another process is compiled anew; the one line above
    # (or the next run's) says so, JAX's warning per entry is not needed
    warnings.filterwarnings("ignore", message="Error reading persistent compilation cache",
                            category=UserWarning)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return folder


def _decompresses(data: bytes) -> bool:
    """Whether an entry's bytes decompress as JAX writes them (zstandard when it is
    installed, zlib otherwise); both check their streams, so a cut or damaged entry
    fails."""
    try:
        import zstandard
    except ImportError:
        zstandard = None
    if zstandard is not None:
        with contextlib.suppress(Exception):
            zstandard.ZstdDecompressor().decompress(data)
            return True
    try:
        zlib.decompress(data)
    except zlib.error:
        return False
    return True


def discard_damaged_entries(folder: str | os.PathLike) -> list[Path]:
    """Removes the entries of the compilation cache in ``folder`` that do not read back
    whole (cut short or damaged, e.g. by a full disk or a killed process), with one line
    saying so; their programs are compiled again when next needed. Returns them."""
    damaged = []
    for path in Path(folder).glob("*-cache"):
        try:
            whole = _decompresses(path.read_bytes())
        except OSError:
            whole = False
        if not whole:
            damaged.append(path)
            with contextlib.suppress(OSError):
                path.unlink()
    if damaged:
        print(f"clr-jax: {len(damaged)} entries of the compilation cache {folder} did not "
              "read back whole; removed, their programs are compiled again", file=sys.stderr)
    return damaged
