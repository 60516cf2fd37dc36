"""Writing result files atomically: a temporary file, then a rename."""

from __future__ import annotations

import json
import os
from typing import Any


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Writes ``data`` as JSON so that a crash leaves the old file or the new one."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
