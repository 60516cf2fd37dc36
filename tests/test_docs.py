"""The Python code blocks of the docs and README run, in order, one namespace per page."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


@pytest.mark.parametrize("page", [p for p in PAGES if BLOCK.search(p.read_text())],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_run(page):
    namespace = {"__name__": "__docs__"}
    for index, block in enumerate(BLOCK.findall(page.read_text())):
        code = compile(block, f"{page.name}[block {index}]", "exec")
        exec(code, namespace)  # noqa: S102 - the docs' own examples
