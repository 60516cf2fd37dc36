"""The jobs behind the command line: the demo, and its verdict."""

import json

import numpy as np
import pytest

from clr_jax.harness.jobs import compare, run_demo
from tests.helpers import tiny_dataset


def test_demo_writes_a_report_with_seeds_and_spread(tmp_path):
    report = run_demo(tmp_path / "demo", progress=False, scale=0.04, seeds=2,
                      dataset=tiny_dataset(n_train=400, n_test=100, size=32))
    for name in ("summary.md", "summary.json", "schedule.png", "learning_curves.png",
                 "range_test/range_test.png", "runs/sweep.json"):
        assert (tmp_path / "demo" / name).exists(), name
    sweep = json.loads((tmp_path / "demo" / "runs" / "sweep.json").read_text())
    assert [m["name"] for m in sweep["members"]] == ["clr-seed0", "clr-seed1", "fixed-seed0",
                                                     "fixed-seed1"]
    for kind in ("clr", "fixed"):  # the report's numbers are the runs' own
        finals = [m["final_test_accuracy"] for m in sweep["members"]
                  if m["name"].startswith(kind)]
        assert report["final_test_accuracy"][kind] == finals
        assert report["stats"][kind]["mean"] == pytest.approx(np.mean(finals))
    summary = (tmp_path / "demo" / "summary.md").read_text()
    assert report["headline"] in summary and "seed 1" in summary
    with pytest.raises(ValueError, match="already holds summary.md"):
        run_demo(tmp_path / "demo", progress=False, scale=0.04,
                 dataset=tiny_dataset(n_train=400, n_test=100, size=32))


@pytest.mark.parametrize("a, b, verdict", [
    ([0.50, 0.51, 0.52], [0.40, 0.41, 0.42], "ahead"),  # 10 points, standard error 0.8
    ([0.40, 0.41, 0.42], [0.50, 0.51, 0.52], "behind"),
    ([0.40, 0.50, 0.45], [0.44, 0.47, 0.42], "no clear difference"),  # spreads overlap
    ([0.45, 0.45, 0.45], [0.45, 0.45, 0.45], "no clear difference"),
])
def test_the_verdict_follows_the_spread(a, b, verdict):
    result = compare(a, b)
    assert result["verdict"] == verdict
    # Welch's standard error of the difference of means, by hand
    se = np.sqrt(np.var(a, ddof=1) / 3 + np.var(b, ddof=1) / 3)
    assert result["standard_error"] == pytest.approx(se)
