"""Result files: atomic writes (a temporary file, then a rename) and JSON of arrays."""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Iterator
from typing import IO, Any

import numpy as np


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Opens a temporary file beside ``path`` and renames it over ``path`` on success,
    so a crash leaves the old file or the new one, never half of one. The folder is
    made if needed. On an error the temporary file is removed and the error raised.

    The temporary file's name is unique to the writer, so that several processes (the
    processes of one distributed run filling the same data cache) can write the same
    file at once: the last rename wins, each whole."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}."
                                  f"{secrets.token_hex(4)}.tmp")
    try:
        if os.path.isdir(path):
            raise IsADirectoryError(21, "Is a directory", path)
        os.makedirs(directory, exist_ok=True)
        f = open(tmp, mode)
    except OSError as error:
        raise ValueError(_unwritable(path, error)) from None
    try:
        with f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _unwritable(path: str, error: OSError) -> str:
    """Why ``path`` cannot be written, in words: the part of it that is in the way."""
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        return f"cannot write {path}: {parent} is a file, not a folder."
    if os.path.isdir(path):
        return f"cannot write {path}: it is a folder; give a file name."
    return f"cannot write {path}: {error.strerror or error}."


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Writes ``data`` as indented JSON, atomically."""
    with atomic_write(path) as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def jsonable(value: Any) -> Any:
    """``value`` with arrays as lists and NaN/inf as None, ready for `json.dumps`."""
    if isinstance(value, dict):
        return {k: jsonable(x) for k, x in value.items()}
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [jsonable(x) for x in value]
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def float_array(values: Any) -> np.ndarray:
    """The inverse of `jsonable` for a (nested) list of numbers: None becomes NaN."""
    flat = np.ravel(np.asarray(values, dtype=object)) if np.size(values) else []
    if not len(flat):
        return np.zeros(0)
    return np.array([np.nan if x is None else x for x in flat], np.float64
                    ).reshape(np.shape(values))
