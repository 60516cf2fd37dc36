"""The docs: their Python code blocks run (in order, one namespace per page), and the README
quotes the committed results it names."""

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


def test_readme_quotes_the_committed_demo_report():
    """The README's account of `clr-jax demo` is the committed report's, word for word."""
    import json

    summary = json.loads((ROOT / "experiments/results/demo/summary.json").read_text())
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert summary["headline"] in readme
    assert f"took {summary['seconds']:.0f} s" in readme
    assert f"{summary['steps']} steps" in readme
    paper = next(b for b in summary["bounds"] if b["method"] == "paper")
    assert f"{paper['base_lr']:.3f}-{paper['max_lr']:.3f}" in readme
