"""The loop that runs a training or a sweep in its folder (`run_loop`): chunks of
compiled steps, a metrics row per chunk handed to metric writers (metrics.jsonl,
TensorBoard, a callback: small objects, as CLU's ``metric_writers``), checkpoints,
resume, the progress bar, and stopping on Ctrl-C or SIGTERM with the last finished
chunk saved. `open_run` is the prologue that `train` and `sweep` share.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from clr_jax.harness import distributed
from clr_jax.harness.rundir import RunDir, StorageError, _no_space, _reason
from clr_jax.harness.stopping import STOP_SIGNALS, any_process, stop_requests

__all__ = ["CallbackWriter", "JsonlWriter", "MetricWriter", "Steppable", "TensorBoardWriter",
           "metric_writers", "open_run", "run_loop"]


class MetricWriter(Protocol):
    """Where `run_loop` sends each metrics row: ``open(step)`` once the step the loop
    starts from is known (0, or the checkpoint a run resumes from), ``write(row)`` for
    each row, ``close()`` at the end."""

    def open(self, step: int) -> None: ...

    def write(self, row: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlWriter:
    """Appends each row as one JSON line to a run's metrics.jsonl (rows after the
    resumed checkpoint are dropped from it first, as they are written again)."""

    def __init__(self, run_dir: RunDir):
        self.run_dir, self._file = run_dir, None

    def open(self, step: int) -> None:
        self._file = open(self.run_dir.metrics_path, "a")  # noqa: SIM115 - closed in close

    def write(self, row: Mapping[str, Any]) -> None:
        try:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        except OSError as error:
            raise StorageError(
                f"{'no space left on device' if _no_space(error) else _reason(error)} while "
                f"writing {self.run_dir.metrics_path}; the checkpoints are kept. Free some "
                "space there, then run the same command with resume=True.") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class CallbackWriter:
    """Calls ``fn(row)`` with each row (on every process)."""

    def __init__(self, fn: Callable[[dict], None]):
        self.fn = fn

    def open(self, step: int) -> None:
        pass

    def write(self, row: Mapping[str, Any]) -> None:
        self.fn(row)

    def close(self) -> None:
        pass


class TensorBoardWriter:
    """Writes metrics rows as TensorBoard scalars (with tensorboardX, which needs no
    TensorFlow) into ``folder``.

    A metric writer (`MetricWriter`). A row's numbers become scalars tagged by their
    key; a list (a sweep's per-member values) becomes one scalar per member, tagged
    ``key/name``. TensorBoard hides the
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
        self.names, self.folder, self._summary_writer = names, folder, SummaryWriter
        self._writer = None
        if purge_step is not None:
            self.open(purge_step - 1)

    def open(self, step: int) -> None:
        """Starts writing after ``step`` (the events of earlier sessions after it are
        hidden)."""
        self.close()
        self._writer = self._summary_writer(os.fspath(self.folder), purge_step=step + 1)

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
        if self._writer is not None:
            self._writer.close()


class Steppable(Protocol):
    """What `run_loop` needs of a trainer."""

    chunk: int
    initial_state: Any

    def run_steps(self, state: Any, first_step: int, num_steps: int) -> tuple[Any, Any]: ...

    def place(self, state: Any) -> Any: ...


def metric_writers(run_dir: RunDir, *, tensorboard: bool = False,
                   names: list[str] | None = None,
                   on_log: Callable[[dict], None] | None = None) -> list[MetricWriter]:
    """The writers of `train` and `sweep`: metrics.jsonl and, with ``tensorboard``,
    TensorBoard event files in ``tensorboard/`` (a sweep's per-member lists tagged by
    ``names``), both on the primary process only; and ``on_log``."""
    writers: list[MetricWriter] = []
    if distributed.is_primary():
        writers.append(JsonlWriter(run_dir))
        if tensorboard:
            writers.append(TensorBoardWriter(run_dir.path / "tensorboard", names=names))
    if on_log is not None:
        writers.append(CallbackWriter(on_log))
    return writers


def open_run(config, dataset, out: str | os.PathLike, *, resume: bool, overwrite: bool,
             summary: str) -> RunDir:
    """The checks `train` and `sweep` make before building anything: the settings (on
    this data set), the folder, and on resume that there is something to resume
    (``summary`` names the file of a finished run, which a resume returns as it is)."""
    config.validate(dataset)
    run_dir = RunDir(out, resume=resume, overwrite=overwrite)
    if resume and run_dir.finished(summary) is None:
        run_dir.check_resumable()
    return run_dir


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
    writers: Sequence[MetricWriter] = (),
    desc: str = "train",
) -> tuple[Any, int, int, float]:
    """Chunks of compiled steps until ``num_steps``, from the latest checkpoint when the
    run resumes.

    ``make_row(step, length, losses, state)`` turns a finished chunk into its metrics
    row (evaluating when due); ``postfix(row)`` gives the progress bar's fields. A row
    goes to the ``writers`` every ``log_every`` steps, whenever it holds test metrics,
    and at the end. On Ctrl-C or SIGTERM the state of the last finished chunk is saved
    before `KeyboardInterrupt` (or `clr_jax.harness.stopping.Terminated`) is raised
    again.

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
    for writer in writers:
        writer.open(step)
    bar = None
    if progress and distributed.is_primary():
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=step, unit="step", desc=desc, dynamic_ncols=True)
    started, steps_run = time.perf_counter(), 0
    several = jax.process_count() > 1
    try:
        with stop_requests(several) as received:
            while step < num_steps:
                length = min(trainer.chunk, num_steps - step)
                new_state, losses = trainer.run_steps(state, step, length)
                row = make_row(step + length, length, np.asarray(losses), new_state)
                row["seconds"] = round(time.perf_counter() - started, 3)  # of this session
                state = new_state
                step += length
                steps_run += length
                if step % log_every == 0 or "test_accuracy" in row or step == num_steps:
                    for writer in writers:
                        writer.write(row)
                if checkpoint_every and (step % checkpoint_every == 0 or step == num_steps):
                    run_dir.save(step, state)
                asked = any_process(received) if several else min(received, default=None)
                if asked is not None:  # every process stops after this chunk
                    if run_dir.latest_step() != step:
                        run_dir.save(step, state)
                    raise STOP_SIGNALS[asked]()
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
        for writer in writers:
            writer.close()
    return state, step, steps_run, time.perf_counter() - started
