"""A run's folder: the checks before anything is written, the settings record and its
check on resume, metrics.jsonl, Orbax checkpoints (with their digests, damaged ones moved
aside). The loop that fills it is `clr_jax.harness.loop`; stopping on Ctrl-C and SIGTERM
is `clr_jax.harness.stopping`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from clr_jax._io import atomic_write, write_json
from clr_jax.harness import distributed
from clr_jax.harness.stopping import interrupts_deferred

__all__ = ["RunDir", "StorageError", "read_metrics", "tree_digest"]

RESULT_FILES = ("summary.json", "metrics.jsonl", "config.json", "checkpoints", "tensorboard",
                "checkpoint_digests.json")
DIGESTS = "checkpoint_digests.json"


class StorageError(Exception):
    """The run's folder could not be written (a full disk, a lost mount): the message
    says what was being written, what is kept and how to go on."""


def tree_digest(tree: Any) -> str:
    """sha256 over the dtype, shape and bytes of every leaf, in tree order (PRNG keys by
    their key data): equal iff bit-identical."""
    import hashlib

    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        array = np.asarray(leaf)
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _reason(error: BaseException) -> str:
    """An exception in a few words: its first line, or its cause's."""
    while error.__cause__ is not None and not str(error).strip():
        error = error.__cause__
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = text.split(" See full TensorStore details")[0].rstrip(".")
    return text if len(text) <= 120 else text[:117] + "..."


def _no_space(error: BaseException) -> bool:
    seen = error
    while seen is not None:
        if getattr(seen, "errno", None) == 28 or "No space left on device" in str(seen) \
                or "RESOURCE_EXHAUSTED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _from_storage(error: BaseException | None) -> bool:
    """Whether ``error`` (or an exception it was raised from) came out of Orbax or
    TensorStore: raised in their code, or worded as their read and write errors are."""
    seen = 0
    while error is not None and seen < 16:
        text = str(error)
        if any(mark in text for mark in ("TensorStore", "OCDBT", "Encountered error while")):
            return True
        tb = error.__traceback__
        while tb is not None:
            name = tb.tb_frame.f_code.co_filename
            if f"{os.sep}orbax{os.sep}" in name or f"{os.sep}tensorstore{os.sep}" in name:
                return True
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
        seen += 1
    return False


class _UnretrievedStorageErrors(logging.Filter):
    """Drops asyncio's "exception was never retrieved" records for Orbax's reads and
    writes. Orbax runs them side by side; when several fail, the first failure is raised
    (and reported here in one line), and the others were printed with their tracebacks
    whenever the garbage collector met them. Every other asyncio record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in str(record.msg):
            return True
        return not _from_storage(record.exc_info[1] if record.exc_info else None)


_UNRETRIEVED_STORAGE_ERRORS = _UnretrievedStorageErrors()


@contextlib.contextmanager
def _quiet_threads() -> Iterator[None]:
    """Exceptions that Orbax's worker threads do not catch are reported by the error the
    save or restore raises; they are not printed a second time (with tracebacks)."""
    import threading

    asyncio_log = logging.getLogger("asyncio")
    if _UNRETRIEVED_STORAGE_ERRORS not in asyncio_log.filters:
        asyncio_log.addFilter(_UNRETRIEVED_STORAGE_ERRORS)
    previous = threading.excepthook
    threading.excepthook = lambda args: None
    try:
        yield
    finally:
        threading.excepthook = previous


def read_metrics(path: str | os.PathLike, up_to_step: int | None = None) -> list[dict]:
    """The rows of a metrics.jsonl (one JSON object per line, each with a ``step``), up to
    ``up_to_step`` if given; no file gives no rows."""
    path = Path(path)
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if up_to_step is None or row["step"] <= up_to_step]


def _differences(saved: Mapping[str, Any], record: Mapping[str, Any]) -> list[str]:
    """Settings that differ between a saved record and a new one. Keys the saved record
    does not have (settings added by a later version) are not differences."""
    changed = []
    for key in sorted(set(saved) | set(record)):
        if key not in saved:
            continue
        old, new = saved.get(key), record.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            changed += [f"{key}.{k}" for k in _differences(old, new)]
        elif old != new:
            changed.append(key)
    return changed


class RunDir:
    """The folder of one run (or sweep), checked before anything is written.

    Args:
      path: the folder.
      resume: continue the run saved there.
      overwrite: replace results already there.

    Raises:
      ValueError: if the folder holds results and neither ``resume`` nor ``overwrite``
        is given, or it cannot be written.
    """

    def __init__(self, path: str | os.PathLike, *, resume: bool = False,
                 overwrite: bool = False):
        self.path = Path(path)
        self.resume = resume
        has_results = self.path.exists() and any(
            (self.path / name).exists() for name in ("summary.json", "metrics.jsonl",
                                                     "checkpoints"))
        if has_results and not (resume or overwrite):
            raise ValueError(
                f"{self.path} already holds results; pass resume=True to continue that run "
                "or overwrite=True to replace it (or choose another folder)."
            )
        self._manager = None
        if resume and not self.path.exists():  # refused before the folder is made
            raise ValueError(f"nothing to resume in {self.path}: the folder does not exist; "
                             "start the run without resume=True.")
        distributed.on_primary(lambda: self._prepare(overwrite), f"prepare {self.path}")

    def _prepare(self, overwrite: bool) -> None:
        if overwrite and not self.resume and self.path.exists():
            for name in RESULT_FILES:
                target = self.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise ValueError(f"cannot write to {self.path}: {error.strerror or error}") from None

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def check_record(self, record: Mapping[str, Any],
                     on_demand: Mapping[str, Callable[[], Any]] | None = None) -> dict:
        """Writes config.json; on resume, first checks it against the saved one.

        ``on_demand`` holds entries that cost something to compute and are checked only
        when the saved record has them (e.g. a digest of the schedule's values, which a
        run whose stages are recorded does not need, but an earlier run recorded).

        Returns the record as it was saved (through JSON).

        Raises:
          ValueError: naming the settings that differ from the saved run's.
        """
        config_path = self.path / "config.json"
        saved = json.loads(config_path.read_text()) if config_path.exists() else None
        record = dict(record)
        for key, compute in (on_demand or {}).items():
            if key not in record and self.resume and saved is not None and key in saved:
                record[key] = compute()
        record = json.loads(json.dumps(record))
        if self.resume and saved is not None:
            changed = _differences(saved, record)
            if changed:
                raise ValueError(
                    f"resuming {self.path} with settings that differ from the saved run: "
                    f"{', '.join(changed)}; resume with the same settings, or pass "
                    "overwrite=True to start again."
                )

        def write():
            if saved != record:
                write_json(config_path, record)

        # Every process takes part, whatever it found: the primary may have written
        # config.json before another process looked (a collective joined by only some
        # processes would pair with the wrong one and hang the run).
        distributed.on_primary(write, "write config.json")
        return record

    def finished(self, summary: str = "summary.json") -> dict | None:
        """The saved summary of a run that has finished, or None."""
        path = self.path / summary
        return json.loads(path.read_text()) if path.exists() else None

    def check_resumable(self) -> None:
        """On resume, something must be there to resume from.

        Raises:
          ValueError: when the folder holds no checkpoint.
        """
        if self.resume and self.latest_step() is None:
            raise ValueError(
                f"nothing to resume in {self.path}: it holds no checkpoint (the run never "
                "started, or stopped before its first one); start it without resume=True"
                + (", with overwrite=True to replace what is there." if self.path.exists()
                   and any(self.path.iterdir()) else "."))

    def read_metrics(self, up_to_step: int | None = None) -> list[dict]:
        return read_metrics(self.metrics_path, up_to_step)

    def truncate_metrics(self, step: int) -> list[dict]:
        """Drops rows after ``step`` (written after the checkpoint a run resumes from)."""
        rows = self.read_metrics(step)

        def write():
            with atomic_write(self.metrics_path) as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)

        distributed.on_primary(write, "rewrite metrics.jsonl")
        return rows

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoints(self):
        """The Orbax ``CheckpointManager`` of ``path/checkpoints`` (the last two kept)."""
        if self._manager is None:
            import orbax.checkpoint as ocp

            self._manager = ocp.CheckpointManager(
                (self.path / "checkpoints").resolve(),
                options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
        return self._manager

    def has_checkpoints(self) -> bool:
        return (self.path / "checkpoints").exists()

    def latest_step(self) -> int | None:
        step = self.checkpoints.latest_step() if self.has_checkpoints() else None
        return None if step is None else int(step)

    def save(self, step: int, state: Any) -> None:
        """Saves ``state`` at ``step``, completely, with Ctrl-C held back meanwhile, and
        records the digest of its contents (checked when it is restored).

        Raises:
          StorageError: when the save fails (a full disk): the partial checkpoint is
            removed, the earlier ones and the metrics are kept.
        """
        import orbax.checkpoint as ocp

        with interrupts_deferred():
            try:
                with _quiet_threads():
                    self.checkpoints.save(step, args=ocp.args.StandardSave(state), force=True)
                    self.checkpoints.wait_until_finished()
                if jax.process_count() == 1:  # a process sees only its shards otherwise
                    self._record_digest(step, tree_digest(state))
            except Exception as error:  # noqa: BLE001 - whatever Orbax raises for it
                self._remove_partial(step)
                last = self._reload_steps()
                kept = (f"the checkpoint of step {last[-1]} and metrics.jsonl are kept"
                        if last else "metrics.jsonl is kept (no earlier checkpoint)")
                what = ("no space left on device" if _no_space(error) else _reason(error))
                raise StorageError(
                    f"{what} while saving the checkpoint of step {step} in "
                    f"{self.path / 'checkpoints'}; the partial checkpoint was removed, {kept}. "
                    + ("Free some space there (or move the run folder), then run the same "
                       "command with resume=True." if _no_space(error) else
                       "Fix the folder, then run the same command with resume=True.")
                ) from None

    def _digests(self) -> dict[str, str]:
        path = self.path / DIGESTS
        try:
            return json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):  # a damaged record checks nothing
            return {}

    def _record_digest(self, step: int, digest: str) -> None:
        kept = {str(s) for s in self._reload_steps()}
        digests = {k: x for k, x in self._digests().items() if k in kept}
        digests[str(step)] = digest
        distributed.on_primary(lambda: write_json(self.path / DIGESTS, digests),
                               "record the checkpoint's digest")

    def _reload_steps(self) -> list[int]:
        with contextlib.suppress(Exception):
            self.checkpoints.reload()
        try:
            return sorted(int(s) for s in self.checkpoints.all_steps())
        except Exception:  # noqa: BLE001 - an unreadable folder has no usable step
            return []

    def _remove_partial(self, step: int) -> None:
        """Orbax's temporary folders of an unfinished save, and the step's own folder if
        the save got as far as naming it; first the manager's background work is let
        finish (or fail), so that nothing writes there afterwards."""
        with contextlib.suppress(Exception), _quiet_threads():
            self.checkpoints.wait_until_finished()
        with contextlib.suppress(Exception), _quiet_threads():
            self.checkpoints.close()
        self._manager = None
        folder = self.path / "checkpoints"
        # A write still in flight when the save failed can recreate a removed folder
        # (TensorStore makes the parents of what it writes): remove until none is seen
        # on three checks in a row, for at most ~3 s.
        quiet = 0
        for _ in range(30):
            partials = list(folder.glob(f"{step}.orbax-checkpoint-tmp*"))
            if (folder / str(step)).exists() and str(step) not in self._digests():
                partials.append(folder / str(step))
            for partial in partials:
                shutil.rmtree(partial, ignore_errors=True)
            quiet = 0 if partials else quiet + 1
            if quiet == 3:
                break
            time.sleep(0.1)

    def restore(self, step: int, like: Any) -> Any:
        """The state saved at ``step``, with the structure, shapes and dtypes of ``like``."""
        import jax
        import orbax.checkpoint as ocp

        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        with _quiet_threads():
            return self.checkpoints.restore(step, args=ocp.args.StandardRestore(target))

    def restore_latest(self, like: Any) -> tuple[int | None, Any]:
        """The newest checkpoint that reads back whole and unchanged: ``(step, state)``,
        or ``(None, None)`` when there is none. A checkpoint that cannot be read, or
        whose contents differ from the digest written with it, is moved aside to
        ``damaged-checkpoint-<step>`` (never deleted), with one line saying so, and the
        one before it is tried.

        Raises:
          ValueError: when checkpoints exist but none reads back whole (nothing is
            moved or deleted then).
        """
        steps = sorted(self._reload_steps(), reverse=True)
        digests = self._digests()
        damaged: list[tuple[int, str]] = []
        for step in steps:
            try:
                state = self.restore(step, like)
                recorded = digests.get(str(step))
                if recorded is not None and tree_digest(state) != recorded:
                    raise ValueError("its contents differ from the digest written with it")
            except Exception as error:  # noqa: BLE001 - any way a checkpoint can be damaged
                damaged.append((step, _reason(error)))
                continue
            for bad, reason in damaged:
                aside = self._move_aside(bad)
                print(f"clr-jax: the checkpoint of step {bad} does not read back whole "
                      f"({reason}); kept aside as {aside}; resuming from step {step}",
                      file=sys.stderr)
            if damaged:
                self._reload_steps()
            return step, state
        if damaged:
            raise ValueError(
                f"no checkpoint in {self.path / 'checkpoints'} reads back whole (step "
                + ", ".join(f"{s}: {r}" for s, r in damaged) + "); nothing was moved or "
                "deleted. Start the run again with overwrite=True, or restore the folder "
                "from a copy.")
        return None, None

    def _move_aside(self, step: int) -> Path:
        aside = self.path / f"damaged-checkpoint-{step}"
        n = 1
        while aside.exists():
            n += 1
            aside = self.path / f"damaged-checkpoint-{step}-{n}"

        def move():
            shutil.move(str(self.path / "checkpoints" / str(step)), str(aside))

        distributed.on_primary(move, f"move the damaged checkpoint of step {step} aside")
        return aside


def __getattr__(name: str):
    """The names that moved to `clr_jax.harness.loop` and `clr_jax.harness.stopping`,
    still importable from here."""
    from clr_jax.harness import loop, stopping

    for module in (loop, stopping):
        if name in module.__all__:
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
