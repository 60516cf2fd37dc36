"""Every experiment script runs end to end in a tiny configuration on the bundled sample,
so the scripts cannot silently rot. (The real runs are minutes to hours; see
experiments/README.md.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "experiments")}
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_figure3_range_test(tmp_path):
    out = run("figure3_range_test.py", "--data", "sample", "--scale", "tiny", "--model", "mlp", "--out-dir",
              str(tmp_path), "--no-progress", cwd=tmp_path)
    report = json.loads((tmp_path / "figure3_range_test_tiny.json").read_text())
    assert report["paper_bounds"] == {"base_lr": 0.001, "max_lr": 0.006}
    assert 0 < len(report["curve"]["learning_rates"]) <= 8  # may stop early: it diverges
    assert (tmp_path / "figure3_range_test_tiny.png").stat().st_size > 0
    assert "paper:" in out


def test_table1(tmp_path):
    run("table1_cifar10.py", "--data", "sample", "--scale", "0.0005", "--policies",
        "fixed,triangular2,exp", "--out", str(tmp_path / "runs"), "--report-dir",
        str(tmp_path), "--batch-size", "20", "--eval-every", "5", "--model", "mlp", "--no-progress",
        cwd=tmp_path)
    report = json.loads((tmp_path / "table1_cifar10_0.0005.json").read_text())
    fixed, tri = report["policies"]["fixed"], report["policies"]["triangular2"]
    assert fixed["steps"] == 35 and tri["steps"] == 12  # 70,000 and 25,000 x 0.0005
    assert report["equal_budget_steps"] == 12
    assert report["target_fixed_final"] == fixed["final_test_accuracy"]
    assert fixed["steps_to_fixed_final"] <= 35
    assert (tmp_path / "table1_cifar10_0.0005.md").read_text().count("| ") > 3
    # the result file carries the policies' settings and the assumptions made
    for policy in ("fixed:", "triangular2:", "decay:", "exp:", "exp_range_amplitude"):
        assert policy in report["assumptions"]
    assert "assumption" in report["assumptions"]
    # finished policies are not trained again; the report is rebuilt from their files
    run("table1_cifar10.py", "--data", "sample", "--scale", "0.0005", "--policies", "fixed",
        "--out", str(tmp_path / "runs"), "--report-dir", str(tmp_path), "--report-only",
        cwd=tmp_path)


def test_table3(tmp_path):
    out = run("table3_optimizers.py", "--data", "sample", "--scale", "0.0002",
              "--runs", "adam-fixed,adam-triangular,nesterov-triangular",
              "--out", str(tmp_path / "runs"), "--report-dir", str(tmp_path),
              "--batch-size", "20", "--model", "mlp", "--no-progress", cwd=tmp_path)
    report = json.loads((tmp_path / "table3_optimizers_0.0002.json").read_text())
    adam, nesterov = report["rows"]["adam"], report["rows"]["nesterov"]
    assert adam["bounds"] == [0.0005, 0.002]
    assert adam["paper"] == {"fixed_70k": 81.4, "triangular_25k": 79.8, "triangular_70k": 81.1}
    # 70,000 x 0.0002 = 14 iterations for fixed and Adam's triangular (the paper has a 70k
    # column for it), 25,000 x 0.0002 = 5 for Nesterov's; the 25k column is read at step 5
    assert adam["fixed"][0]["steps"] == 14 and adam["triangular"][0]["steps"] == 14
    assert nesterov["triangular"][0]["steps"] == 5 and "fixed" not in nesterov
    tri = adam["triangular"][0]
    assert tri["at_25k"] == tri["test_accuracy"][tri["eval_steps"].index(5)]
    assert "adam-triangular" in out
    table = (tmp_path / "table3_optimizers_0.0002.md").read_text()
    assert f"{100 * tri['at_25k']:.1f} (79.8)" in table
    # a cycle is 2 x s(2000) = 2 iterations here: the last cycle ends are 4 (25,000 x
    # 0.0002 = 5 is part-way up a cycle) and 14 (the run's end)
    assert tri["cycle_end_25k"] == {"step": 4, "test_accuracy": tri["test_accuracy"][3]}
    assert tri["cycle_end_last"] == {"step": 14, "test_accuracy": tri["test_accuracy"][13]}
    assert nesterov["triangular"][0]["cycle_end_last"]["step"] == 4
    assert "cycle_end_25k" not in adam["fixed"][0]
    assert f"{100 * tri['test_accuracy'][3]:.1f} (4)" in table
    # a finished run is not trained again: the second call only reads its summary
    metrics = (tmp_path / "runs" / "adam-fixed" / "metrics.jsonl").read_text()
    again = run("table3_optimizers.py", "--data", "sample", "--scale", "0.0002",
                "--runs", "adam-fixed", "--out", str(tmp_path / "runs"),
                "--report-dir", str(tmp_path), "--batch-size", "20", "--model", "mlp",
                "--no-progress", cwd=tmp_path)
    assert "adam-fixed" in again
    assert (tmp_path / "runs" / "adam-fixed" / "metrics.jsonl").read_text() == metrics


def test_schedules_25k(tmp_path):
    out = run("schedules_25k.py", "--data", "sample", "--scale", "0.0008", "--model", "mlp",
              "--batch-size", "20", "--peak", "1e-4", "--out", str(tmp_path / "runs"),
              "--report-dir", str(tmp_path), "--runs", "one_cycle,schedule_free",
              "--no-progress", cwd=tmp_path)
    report = json.loads((tmp_path / "schedules_25k_0.0008.json").read_text())
    assert set(report["runs"]) == {"one_cycle", "schedule_free"}  # no Table 1 run at 20 steps
    assert report["steps"] == 20 and report["runs"]["one_cycle"]["at_10k"] is not None
    peak = report["range_test_bounds"]["max_lr"]
    assert peak == json.loads((tmp_path / "runs" / "range_test.json").read_text())[
        "bounds"]["max_lr"]
    assert "one_cycle" in out


def test_schedules_25k_schedule_free_rates(monkeypatch):
    """Schedule-free SGD's rate: the range test's max_lr, or max_lr / (1 - b1), the plain
    gradient step that momentum SGD's steps grow to at max_lr."""
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "experiments"))  # its _common
    spec = importlib.util.spec_from_file_location(
        "schedules_25k", ROOT / "experiments" / "schedules_25k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for run, factor in (("schedule_free", 1.0), ("schedule_free_matched", 10.0)):
        optimizer, rates = module.schedule(run, 0.002, 1000)
        assert optimizer == "schedule_free_sgd"
        assert float(rates(0)) == 0.0  # warmed up over 5% of the run
        assert float(rates(25)) == pytest.approx(0.5 * factor * 0.002)
        assert float(rates(999)) == pytest.approx(factor * 0.002)


@pytest.mark.parametrize("script, args", [
    ("table4_resnet.py", ["--epochs", "0.05", "--batch-size", "20", "--model", "mlp"]),
])
def test_table4(tmp_path, script, args):
    run(script, "--data", "sample", *args, "--out-dir", str(tmp_path), "--no-progress",
        cwd=tmp_path)
    report = json.loads((tmp_path / "table4_resnet_mlp_0.05ep.json").read_text())
    assert set(report["members"]) == {"fixed 0.1", "CLR 0.1-0.3"}


def test_caffe_cifar10_cpu(tmp_path):
    run("caffe_cifar10_cpu.py", "--data", "sample", "--steps", "4", "--out",
        str(tmp_path / "run"), cwd=tmp_path)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 4


def test_range_test_cifar10_small(tmp_path):
    sample = ROOT / "clr_jax" / "data" / "cifar10_sample.tar.gz"
    run("range_test_cifar10_small.py", "--data", str(sample), "--quick", "--out",
        str(tmp_path / "r.json"), "--images", str(tmp_path), cwd=tmp_path)
    assert (tmp_path / "r.json").exists()


@pytest.mark.parametrize("quality, subsampling, name", [(60, 0, "4:4:4"), (90, 2, "4:2:0")])
def test_jpeg_copy(tmp_path, quality, subsampling, name):
    from PIL import Image

    # flat colours: JPEG keeps a flat block's colour to within rounding, so the decoded
    # training mean is the colours' mean, and each channel's spread is the colours' spread
    colours = np.array([[200, 40, 10], [10, 120, 250], [60, 60, 60]], np.float64)
    for split, picks in (("train", colours), ("test", colours[:1])):
        for i, colour in enumerate(picks):
            folder = tmp_path / "data" / split / f"class{i}"
            folder.mkdir(parents=True)
            Image.new("RGB", (32, 32), tuple(int(c) for c in colour)).save(
                folder / "0000.jpg", quality=quality, subsampling=subsampling)
    run("jpeg_copy.py", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "j.json"),
        cwd=tmp_path)
    result = json.loads((tmp_path / "j.json").read_text())
    assert result["images"] == {"train": 3, "test": 1}
    assert result["encoder_settings"] == {f"quality {quality}, {name}": 4}
    np.testing.assert_allclose(result["train_mean"], colours.mean(0) / 255, atol=2 / 255)
    np.testing.assert_allclose(result["train_std"], colours.std(0) / 255, atol=2 / 255)
    assert result["first_encode_mse_estimate"] < 1  # flat colours survive an encode


def test_jpeg_copy_reencode(tmp_path):
    """--reencode writes the same names at the asked quality (4:2:0), and its distance
    from the copy is the one two independent decodes of the archives give."""
    import tarfile
    from io import BytesIO

    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in (("train", 2), ("test", 1)):
        for i in range(classes):
            folder = tmp_path / "data" / split / f"class{i}"
            folder.mkdir(parents=True)
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "0000.jpg", quality=90)
    archive = tmp_path / "q30.tar.gz"
    run("jpeg_copy.py", "--data", str(tmp_path / "data"), "--reencode", "30", "--write",
        str(archive), "--out", str(tmp_path / "r.json"), cwd=tmp_path)
    result = json.loads((tmp_path / "r.json").read_text())
    squared, count = 0.0, 0
    with tarfile.open(archive) as tar:
        names = sorted(m.name for m in tar.getmembers())
        assert names == ["test/class0/0000.jpg", "train/class0/0000.jpg",
                         "train/class1/0000.jpg"]
        for name in names:
            with Image.open(BytesIO(tar.extractfile(name).read())) as image:
                after = np.asarray(image.convert("RGB"), np.float64)
            with Image.open(tmp_path / "data" / name) as image:
                before = np.asarray(image.convert("RGB"), np.float64)
            squared += ((after - before) ** 2).sum()
            count += after.size
    assert result["images_reencoded"] == 3
    assert result["mse_to_copy"] == pytest.approx(squared / count, abs=1e-3)
    assert result["psnr_to_copy_db"] == pytest.approx(
        10 * np.log10(255 ** 2 / (squared / count)), abs=1e-2)
    run("jpeg_copy.py", "--data", str(archive), "--out", str(tmp_path / "j.json"),
        cwd=tmp_path)
    inspected = json.loads((tmp_path / "j.json").read_text())
    assert inspected["encoder_settings"] == {"quality 30, 4:2:0": 3}
    # the first-encode estimate grows as the quality falls (the noise images' own at 90)
    run("jpeg_copy.py", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o.json"),
        cwd=tmp_path)
    at90 = json.loads((tmp_path / "o.json").read_text())["first_encode_mse_estimate"]
    assert 0 < at90 < inspected["first_encode_mse_estimate"]


@pytest.mark.parametrize("args, said", [
    (["--reencode", "50"], "--reencode needs --write"),
    (["--write", "x.tar.gz"], "--write is only used with --reencode"),
    (["--reencode", "0", "--write", "x.tar.gz"], "a JPEG quality is 1 to 95"),
])
def test_jpeg_copy_reencode_bad_flags(tmp_path, args, said):
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "jpeg_copy.py"),
                           "--data", "sample", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr


def test_jpeg_dose(tmp_path):
    """The dose-response trains the policy on the copy and on a re-encoded copy, and
    reports each re-encode's distance and its change from the copy's run."""
    run("jpeg_dose.py", "--data", "sample", "--qualities", "50", "--scale", "0.002",
        "--model", "mlp", "--batch-size", "20", "--out", str(tmp_path / "out"), "--work",
        str(tmp_path / "work"), "--report-dir", str(tmp_path / "rep"), "--no-progress",
        cwd=tmp_path)
    result = json.loads((tmp_path / "rep" / "jpeg_dose_triangular2_0.002.json").read_text())
    distance = json.loads((tmp_path / "rep" / "jpeg_reencode_q50.json").read_text())
    copy = result["runs"]["copy (quality 75), seed 0"]
    dosed = result["runs"]["re-encoded at quality 50, seed 0"]
    assert dosed["mse_to_copy"] == distance["mse_to_copy"] > 0
    for row, folder in ((copy, "copy"), (dosed, "q50")):
        summary = json.loads(
            (tmp_path / "out" / folder / "triangular2" / "summary.json").read_text())
        assert row["final_test_accuracy"] == summary["final_test_accuracy"]
        assert row["steps"] == 50  # 25,000 x 0.002
    assert dosed["change_from_copy_seed0"] == pytest.approx(
        dosed["final_test_accuracy"] - copy["final_test_accuracy"])
    # one re-encoded run: the line through the origin passes through it
    assert result["change_per_unit_mse"] == pytest.approx(
        dosed["change_from_copy_seed0"] / dosed["mse_to_copy"])
    assert (tmp_path / "work" / "cifar10-q50.tar.gz").exists()
    assert (tmp_path / "rep" / "jpeg_dose_triangular2_0.002.png").exists()


@pytest.mark.parametrize("args, said", [
    (["--qualities", "80"], "below the copy's own quality 75"),
    (["--qualities", "fifty"], "give whole numbers"),
    (["--policy", "cosine"], "choose from fixed"),
    (["--baseline", "nowhere", "--report-only"], "--baseline nowhere: no such folder"),
])
def test_jpeg_dose_bad_flags(tmp_path, args, said):
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "jpeg_dose.py"),
                           "--data", "sample", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("stop, code, said", [("Terminated()", 143, "stopped by SIGTERM"),
                                              ("KeyboardInterrupt()", 130, "interrupted")])
def test_a_stopped_experiment_says_so_in_one_line(tmp_path, stop, code, said):
    """Ctrl-C or SIGTERM (which the training loop turns into these, after saving a
    checkpoint) ends an experiment script with one line and the shell's status."""
    script = ("from _common import run_main\n"
              "from clr_jax.harness.stopping import Terminated\n"
              "def main():\n"
              f"    raise {stop}\n"
              "run_main(main)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "experiments")}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == code
    assert "Traceback" not in done.stderr
    assert said in done.stderr and "run the same command again to resume" in done.stderr


def test_table1_against_the_paper_figure(monkeypatch):
    """The paper-scale comparison draws one bar per policy for us and one per paper number,
    and a mark for every seed."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import table1_cifar10

    runs = {"fixed": {"final_test_accuracy": 0.80, "paper_accuracy": 81.4, "steps": 70_000,
                      "seeds": {"mean": 0.799, "final_test_accuracy": [0.80, 0.798]}},
            "triangular": {"final_test_accuracy": 0.74, "paper_accuracy": None,
                           "steps": 25_000}}
    axes = table1_cifar10._against_paper(runs).axes[0]
    widths = [bar.get_width() for bar in axes.patches]
    assert sorted(round(w, 3) for w in widths if not np.isnan(w)) == [74.0, 79.9, 81.4]
    assert sum(np.isnan(widths)) == 1  # triangular: no number in the paper
    assert [t.get_text() for t in axes.get_yticklabels()] == [
        "triangular (25,000 it.)", "fixed (70,000 it.)"]
    seed_marks = [line for line in axes.get_lines() if line.get_marker() == "|"]
    assert sorted(len(line.get_xdata()) for line in seed_marks) == [1, 2]
