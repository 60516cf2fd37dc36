"""The libraries' own logging, kept out of the terminal unless asked for."""

from __future__ import annotations

import contextlib
import os
import sys

__all__ = ["quiet_libraries"]


@contextlib.contextmanager
def quiet_libraries(verbose: bool):
    """Orbax, absl, TensorStore and tensorflow-datasets log through Python's logging (and
    absl's): their messages stay out of the terminal unless --verbose asks for them;
    clr-jax says in one line what went wrong. Orbax's asynchronous reads also leave
    failed coroutines and closed event loops behind when a checkpoint is damaged, which
    Python would report at exit; clr-jax reports the damage itself."""
    if verbose:
        yield
        return
    import logging
    import threading

    loggers = {name: logging.getLogger(name) for name in
               ("absl", "orbax", "jax", "tensorstore", "tensorflow_datasets", "etils")}
    levels = {name: logger.level for name, logger in loggers.items()}
    for logger in loggers.values():
        logger.setLevel(logging.CRITICAL + 1)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    hooks = sys.unraisablehook, threading.excepthook
    sys.unraisablehook = lambda info: None
    threading.excepthook = lambda args: None
    try:
        yield
    finally:
        sys.unraisablehook, threading.excepthook = hooks
        for name, logger in loggers.items():
            logger.setLevel(levels[name])
