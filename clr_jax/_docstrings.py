"""Google-style docstring sections, read for help texts (policy settings, settings
dataclasses)."""

from __future__ import annotations

import inspect
import re

__all__ = ["section_items"]


def section_items(obj, section: str) -> dict[str, str]:
    """Each item's text in ``section`` (``"Args"``, ``"Attributes"``) of ``obj``'s
    docstring: ``  name: text`` lines, continued by lines indented four spaces."""
    doc = inspect.getdoc(obj) or ""
    match = re.search(rf"^{section}:\n((?:[ \t]+.*\n?|\n)*)", doc, re.MULTILINE)
    if not match:
        return {}
    described: dict[str, str] = {}
    name = None
    for line in match.group(1).splitlines():
        item = re.match(r"^  (\w+): (.*)$", line)
        if item:
            name = item.group(1)
            described[name] = item.group(2).strip()
        elif name and line.startswith("    "):
            described[name] += " " + line.strip()
    return described
