"""Training over several processes (hosts) with JAX's multi-controller runtime.

Every process runs the same program; `initialize` joins them (JAX's
``jax.distributed.initialize``, with CPU collectives through Gloo when the backend is the
CPU), after which ``jax.devices()`` spans every process and the harness's device mesh
shards each batch over all of them. Every process computes; only the primary process
(index 0) writes the run's files, and checkpoints are written by Orbax from all of them
together.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["barrier", "initialize", "is_primary", "on_primary", "to_numpy"]


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins this process to the others of a multi-process run; call it first.

    With no arguments the settings come from the cluster (Slurm, Open MPI, Kubernetes, a
    TPU pod slice) or from ``$JAX_COORDINATOR_ADDRESS``, as ``jax.distributed.initialize``
    detects them; on one machine give all three.

    Args:
      coordinator: ``host:port`` of process 0, where the others connect.
      num_processes: how many processes take part.
      process_id: this process's index, 0 to ``num_processes - 1``.

    Raises:
      ValueError: if the settings are incomplete or wrong, or JAX's backend is already
        running (this must come before any JAX computation).
    """
    if process_id is not None and num_processes is not None \
            and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in 0..{num_processes - 1}, got {process_id}.")
    try:
        if jax.config.jax_platforms in (None, "", "cpu"):
            # CPU devices of different processes talk through Gloo (the default has none).
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator,
                                   num_processes=num_processes, process_id=process_id)
    except (RuntimeError, ValueError, TypeError) as error:
        raise ValueError(
            f"cannot start the multi-process run: {str(error).splitlines()[0]} (give the "
            "coordinator host:port, the number of processes and this process's id, or run "
            "under a cluster JAX detects: Slurm, Open MPI, Kubernetes, a TPU pod slice)."
        ) from None


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process has reached the barrier ``name`` (no-op alone)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def on_primary(fn, what: str):
    """Runs ``fn()`` on the primary process only; every process then learns whether it
    succeeded. A ``ValueError`` there is raised again on the primary and reported on the
    others, so no process waits for one that failed.

    Returns:
      What ``fn`` returned on the primary, None elsewhere.
    """
    result, failed = None, False
    if is_primary():
        try:
            result = fn()
        except ValueError:
            failed = True
            if jax.process_count() == 1:
                raise
            _agree(failed, what)
            raise
    _agree(failed, what)
    return result


def _agree(failed: bool, what: str) -> None:
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    if int(multihost_utils.broadcast_one_to_all(np.int32(failed))) and not is_primary():
        raise ValueError(f"process 0 failed to {what}; see its message.")


def to_numpy(x: jax.Array) -> np.ndarray:
    """The whole value of ``x`` as a NumPy array on this process, gathering it from the
    other processes when it is split across them."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
