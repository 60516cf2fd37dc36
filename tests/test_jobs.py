"""The jobs behind the command line: the demo."""

import pytest

from clr_jax.harness.jobs import run_demo
from tests.helpers import tiny_dataset


def test_demo_writes_a_report(tmp_path):
    report = run_demo(tmp_path / "demo", progress=False, scale=0.04,
                      dataset=tiny_dataset(n_train=400, n_test=100, size=32))
    for name in ("summary.md", "schedule.png", "learning_curves.png",
                 "range_test/range_test.png", "clr/summary.json", "fixed/summary.json"):
        assert (tmp_path / "demo" / name).exists(), name
    assert len(report["runs"]) == 2
    with pytest.raises(ValueError, match="already holds summary.md"):
        run_demo(tmp_path / "demo", progress=False, scale=0.04,
                 dataset=tiny_dataset(n_train=400, n_test=100, size=32))
