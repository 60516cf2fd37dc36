"""Stopping a run cleanly: Ctrl-C (SIGINT) and SIGTERM, what batch schedulers send
before they kill a job, end a run after its last finished chunk is saved; while a
checkpoint is written they wait; the processes of a multi-process run agree on the
step at which all of them stop."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

import jax
import numpy as np

__all__ = ["STOP_SIGNALS", "Terminated", "any_process", "interrupts_deferred",
           "stop_requests"]


class Terminated(KeyboardInterrupt):
    """The run was asked to stop by SIGTERM (what batch schedulers such as Slurm and
    Kubernetes send before they kill a job); handled like Ctrl-C: the state is saved."""


STOP_SIGNALS = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Holds Ctrl-C and SIGTERM back while a checkpoint is written, then delivers them: a
    save is never cut in half by a request to stop (a kill still can cut it; Orbax then
    keeps the previous checkpoint, since a save becomes visible only when complete)."""
    if jax.process_count() > 1:  # the signals only set a flag there (see `stop_requests`)
        yield
        return
    received: list[int] = []
    try:
        previous = {sig: signal.signal(sig, lambda signum, _: received.append(signum))
                    for sig in STOP_SIGNALS}
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise STOP_SIGNALS[received[0]]()


@contextlib.contextmanager
def stop_requests(several: bool) -> Iterator[list[int]]:
    """How a request to stop reaches the loop. Ctrl-C (SIGINT) and SIGTERM are noted in
    the yielded list. One process: the handler also raises `KeyboardInterrupt` or
    `Terminated` at once, so the loop saves the last finished chunk and stops; where
    Python swallows that exception (a signal landing inside a garbage-collection
    callback, such as JAX's, whose exceptions are only reported), the loop finds the
    note after the chunk and stops then, and the swallowed exception is not reported.
    Several processes: the signals are only noted, and the processes agree after each
    chunk (see `any_process`), so that all of them save the same step together."""
    received: list[int] = []

    def stop(signum, frame):
        received.append(signum)
        if not several:
            raise STOP_SIGNALS[signum]()

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


def any_process(received: list[int]) -> int | None:
    """The stop signal any process has received (the lowest number), else None: a
    collective, so every process learns the same answer after the same chunk."""
    from jax.experimental import multihost_utils

    mine = min(received) if received else 0
    every = np.asarray(multihost_utils.process_allgather(np.int32(mine)))
    asked = every[every > 0]
    return int(asked.min()) if asked.size else None
