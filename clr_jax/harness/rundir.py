"""A run's folder and the loop that fills it: the checks before anything is written,
the settings record and its check on resume, metrics.jsonl (and TensorBoard event files
when asked), Orbax checkpoints, Ctrl-C, and `run_loop`, shared by single runs and sweeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np

from clr_jax._io import atomic_write, write_json
from clr_jax.harness import distributed

__all__ = ["RunDir", "Steppable", "StorageError", "TensorBoardWriter", "Terminated",
           "interrupts_deferred", "read_metrics", "run_loop", "tree_digest"]

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


@contextlib.contextmanager
def _quiet_threads() -> Iterator[None]:
    """Exceptions that Orbax's worker threads do not catch are reported by the error the
    save or restore raises; they are not printed a second time (with tracebacks)."""
    import threading

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


class Terminated(KeyboardInterrupt):
    """The run was asked to stop by SIGTERM (what batch schedulers such as Slurm and
    Kubernetes send before they kill a job); handled like Ctrl-C: the state is saved."""


_STOP_SIGNALS = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Holds Ctrl-C and SIGTERM back while a checkpoint is written, then delivers them: a
    save is never cut in half by a request to stop (a kill still can cut it; Orbax then
    keeps the previous checkpoint, since a save becomes visible only when complete)."""
    if jax.process_count() > 1:  # the signals only set a flag there (see run_loop)
        yield
        return
    received: list[int] = []
    try:
        previous = {sig: signal.signal(sig, lambda signum, _: received.append(signum))
                    for sig in _STOP_SIGNALS}
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise _STOP_SIGNALS[received[0]]()


@contextlib.contextmanager
def _stop_requests(several: bool) -> Iterator[list[int]]:
    """How a request to stop reaches the loop. Ctrl-C (SIGINT) and SIGTERM are noted in
    the yielded list. One process: the handler also raises `KeyboardInterrupt` or
    `Terminated` at once, so the loop saves the last finished chunk and stops; where
    Python swallows that exception (a signal landing inside a garbage-collection
    callback, such as JAX's, whose exceptions are only reported), the loop finds the
    note after the chunk and stops then, and the swallowed exception is not reported.
    Several processes: the signals are only noted, and the processes agree after each
    chunk (see `_any_process`), so that all of them save the same step together."""
    received: list[int] = []

    def stop(signum, frame):
        received.append(signum)
        if not several:
            raise _STOP_SIGNALS[signum]()

    def unraisable(info):  # a stop request swallowed where exceptions cannot propagate
        if not (received and isinstance(info.exc_value, KeyboardInterrupt)):
            previous_hook(info)

    signals = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = {sig: signal.signal(sig, stop) for sig in signals}
    except ValueError:  # not the main thread
        yield received
        return
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield received
    finally:
        sys.unraisablehook = previous_hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _any_process(received: list[int]) -> int | None:
    """The stop signal any process has received (the lowest number), else None: a
    collective, so every process learns the same answer after the same chunk."""
    from jax.experimental import multihost_utils

    mine = min(received) if received else 0
    every = np.asarray(multihost_utils.process_allgather(np.int32(mine)))
    asked = every[every > 0]
    return int(asked.min()) if asked.size else None


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

    def check_record(self, record: Mapping[str, Any]) -> dict:
        """Writes config.json; on resume, first checks it against the saved one.

        Returns the record as it was saved (through JSON).

        Raises:
          ValueError: naming the settings that differ from the saved run's.
        """
        record = json.loads(json.dumps(record))
        config_path = self.path / "config.json"
        saved = json.loads(config_path.read_text()) if config_path.exists() else None
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
        for partial in folder.glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)
        if (folder / str(step)).exists() and str(step) not in self._digests():
            shutil.rmtree(folder / str(step), ignore_errors=True)

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


class TensorBoardWriter:
    """Writes metrics rows as TensorBoard scalars (with tensorboardX, which needs no
    TensorFlow) into ``folder``.

    A row's numbers become scalars tagged by their key; a list (a sweep's per-member
    values) becomes one scalar per member, tagged ``key/name``. TensorBoard hides the
    events at or after ``purge_step`` that earlier sessions wrote, so a resumed run
    shows one curve.

    Raises:
      ValueError: if tensorboardX is not installed.
    """

    def __init__(self, folder: str | os.PathLike, *, names: list[str] | None = None,
                 purge_step: int | None = None):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ValueError('TensorBoard files need tensorboardX: pip install '
                             '"clr-jax[tensorboard]"') from None
        self.names = names
        self._writer = SummaryWriter(os.fspath(folder), purge_step=purge_step or None)

    def write(self, row: Mapping[str, Any]) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key == "step":
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, step)
            elif isinstance(value, list) and self.names and len(value) == len(self.names):
                for name, item in zip(self.names, value):
                    if isinstance(item, (int, float)) and not isinstance(item, bool):
                        self._writer.add_scalar(f"{key}/{name}", item, step)

    def close(self) -> None:
        self._writer.close()


class Steppable(Protocol):
    """What `run_loop` needs of a trainer."""

    chunk: int
    initial_state: Any

    def run_steps(self, state: Any, first_step: int, num_steps: int) -> tuple[Any, Any]: ...

    def place(self, state: Any) -> Any: ...


def run_loop(
    trainer: Steppable,
    run_dir: RunDir,
    *,
    num_steps: int,
    log_every: int,
    checkpoint_every: int | None,
    make_row: Callable[[int, int, Any, Any], dict],
    postfix: Callable[[dict], dict],
    progress: bool,
    on_log: Callable[[dict], None] | None = None,
    desc: str = "train",
    tensorboard: bool = False,
    member_names: list[str] | None = None,
) -> tuple[Any, int, int, float]:
    """The loop shared by single runs and sweeps: chunks of compiled steps, metrics rows,
    checkpoints, resume, the progress bar and Ctrl-C.

    ``make_row(step, length, losses, state)`` turns a finished chunk into its metrics
    row (evaluating when due); ``postfix(row)`` gives the progress bar's fields. A row
    is written every ``log_every`` steps, whenever it holds test metrics, and at the
    end, to metrics.jsonl and, with ``tensorboard``, as TensorBoard scalars in
    ``tensorboard/`` (a sweep's per-member lists tagged by ``member_names``). On
    Ctrl-C the state of the last finished chunk is saved before ``KeyboardInterrupt``
    is raised again.

    Returns:
      ``(state, step, steps_run, seconds)``: the final state, its step, the steps run in
      this call and their wall time.
    """
    state, step = trainer.initial_state, 0
    if run_dir.resume:
        latest, restored = run_dir.restore_latest(state)
        if latest is not None:
            step, state = latest, trainer.place(restored)
    run_dir.truncate_metrics(step)
    # Rows after the checkpoint that an interrupted session wrote are written again.
    primary = distributed.is_primary()
    board = (TensorBoardWriter(run_dir.path / "tensorboard", names=member_names,
                               purge_step=step + 1) if tensorboard and primary else None)

    bar = None
    if progress and primary:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=step, unit="step", desc=desc, dynamic_ncols=True)
    started, steps_run = time.perf_counter(), 0
    several = jax.process_count() > 1
    try:
        with open(run_dir.metrics_path if primary else os.devnull, "a") as metrics_file, \
                _stop_requests(several) as received:
            while step < num_steps:
                length = min(trainer.chunk, num_steps - step)
                new_state, losses = trainer.run_steps(state, step, length)
                row = make_row(step + length, length, np.asarray(losses), new_state)
                row["seconds"] = round(time.perf_counter() - started, 3)  # of this session
                state = new_state
                step += length
                steps_run += length
                if step % log_every == 0 or "test_accuracy" in row or step == num_steps:
                    try:
                        metrics_file.write(json.dumps(row) + "\n")
                        metrics_file.flush()
                    except OSError as error:
                        raise StorageError(
                            f"{'no space left on device' if _no_space(error) else _reason(error)}"
                            f" while writing {run_dir.metrics_path}; the checkpoints are kept. "
                            "Free some space there, then run the same command with "
                            "resume=True.") from None
                    if board is not None:
                        board.write(row)
                    if on_log is not None:
                        on_log(row)
                if checkpoint_every and (step % checkpoint_every == 0 or step == num_steps):
                    run_dir.save(step, state)
                asked = _any_process(received) if several else min(received, default=None)
                if asked is not None:  # every process stops after this chunk
                    if run_dir.latest_step() != step:
                        run_dir.save(step, state)
                    raise _STOP_SIGNALS[asked]()
                if bar is not None:
                    bar.update(length)
                    bar.set_postfix(**postfix(row))
    except KeyboardInterrupt:
        if run_dir.latest_step() != step:  # the chunk may have been saved already
            run_dir.save(step, state)
        raise
    finally:
        if bar is not None:
            bar.close()
        if board is not None:
            board.close()
    return state, step, steps_run, time.perf_counter() - started

