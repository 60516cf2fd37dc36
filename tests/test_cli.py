"""The command line: every command end to end, and user errors as one line."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from clr_jax import cli
from tests.helpers import write_image_folder


class TestScheduleCommand:
    def test_prints_values(self, capsys):
        code = cli.main(["schedule", "--policy", "triangular", "--base-lr", "0.001",
                         "--max-lr", "0.006", "--step-size", "2000", "--steps", "0,1000,2000"])
        out = capsys.readouterr().out.split("\n")
        assert code == 0
        assert out[0] == "step\tvalue"
        assert [float(line.split("\t")[1]) for line in out[1:4]] == pytest.approx(
            [0.001, 0.0035, 0.006], rel=1e-5)

    def test_staged_and_plot(self, tmp_path, capsys):
        png = tmp_path / "sub" / "s.png"
        code = cli.main([
            "schedule", "--stage", "triangular2 base_lr=0.001 max_lr=0.005 step_size=20 steps=80",
            "--stage", "fixed base_lr=0.0001", "--steps", "20,80", "--plot", str(png),
            "--num-steps", "120"])
        assert code == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        lines = capsys.readouterr().out.split("\n")
        assert float(lines[1].split("\t")[1]) == pytest.approx(0.005, rel=1e-5)
        assert float(lines[2].split("\t")[1]) == pytest.approx(0.0001, rel=1e-5)

    @pytest.mark.parametrize("argv, match", [
        (["schedule", "--policy", "nope"], "invalid choice: 'nope'"),
        (["schedule"], "--policy (or --stage) is required"),
        (["schedule", "--policy", "triangular", "--base-lr", "0.1"], "needs max_lr, step_size"),
        (["schedule", "--policy", "triangular", "--base-lr", "0.5", "--max-lr", "0.1",
          "--step-size", "10"], "max_lr must be >= base_lr"),
        (["schedule", "--policy", "fixed", "--base-lr", "x"], "invalid float value: 'x'"),
        (["schedule", "--policy", "fixed", "--base-lr", "0.1", "--steps", "1,-2"], "steps >= 0"),
        (["schedule", "--stage", "triangular base_lr"], "not key=value"),
        (["schedule", "--stage", "fixed base_lr=0.1", "--stage", "fixed base_lr=0.2",
          "--policy", "fixed"], "not both"),
        (["schedule", "--stage", "fixed base_lr=0.1", "--stage", "fixed base_lr=0.2"],
         "stage 1 needs steps=N"),
        (["frobnicate"], "invalid choice"),
    ])
    def test_user_errors_are_one_line(self, argv, match, capsys):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert match in err
        assert err.count("\n") == 1 and "Traceback" not in err

    def test_unwritable_plot_is_one_line(self, tmp_path, capsys):
        blocker = tmp_path / "file"
        blocker.write_text("x")
        code = cli.main(["schedule", "--policy", "fixed", "--base-lr", "0.1",
                         "--plot", str(blocker / "x.png")])
        assert code == 2
        assert "Traceback" not in capsys.readouterr().err

    def test_python_dash_m(self):
        out = subprocess.run(
            [sys.executable, "-m", "clr_jax", "schedule", "--policy", "fixed", "--base-lr",
             "0.5", "--steps", "3"], capture_output=True, text=True, check=True)
        assert out.stdout.split("\n")[1] == "3\t0.5"


class TestTrainAndRangeTest:
    def test_train_and_range_test_on_a_folder(self, tmp_path, capsys):
        from PIL import Image

        rng = np.random.default_rng(0)
        for split, n in (("train", 40), ("test", 10)):
            for c, cls in enumerate(("x", "y")):
                folder = tmp_path / "data" / split / cls
                folder.mkdir(parents=True)
                for i in range(n):
                    pixels = rng.integers(0, 100, (8, 8, 3)) + 100 * c
                    Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
        with tarfile.open(tmp_path / "data.tar.gz", "w:gz") as tar:
            tar.add(tmp_path / "data", arcname="data")
        common = ["--dataset", str(tmp_path / "data.tar.gz"), "--model", "mlp",
                  "--batch-size", "8", "--no-progress", "--preprocess", "standard"]
        code = cli.main(["train", *common, "--steps", "16", "--eval-every", "8",
                         "--policy", "triangular", "--base-lr", "0.001", "--max-lr", "0.01",
                         "--step-size-epochs", "1", "--out", str(tmp_path / "run"),
                         "--kernels", "lax", "--tensorboard"])
        assert code == 0
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["steps"] == 16 and summary["config"]["kernels"] == "lax"
        assert summary["kernels"] == "lax"
        assert (tmp_path / "run" / "tensorboard").is_dir()
        assert summary["config"]["schedule"] == [["triangular", {
            "base_lr": 0.001, "max_lr": 0.01, "step_size": 10}, 1]]
        assert (tmp_path / "run" / "learning_curves.png").exists()
        capsys.readouterr()
        code = cli.main(["train", *common, "--steps", "16", "--eval-every", "8",
                         "--policy", "triangular", "--base-lr", "0.001", "--max-lr", "0.02",
                         "--step-size-epochs", "1", "--out", str(tmp_path / "run"), "--resume",
                         "--kernels", "lax"])
        assert code == 2 and "differ from the saved run" in capsys.readouterr().err
        code = cli.main(["range-test", *common, "--steps", "20", "--eval-every", "4",
                         "--min-lr", "0.001", "--max-lr", "0.5", "--max-rounds", "2",
                         "--repeats", "2", "--out", str(tmp_path / "rt")])
        assert code == 0
        assert (tmp_path / "rt" / "range_test.png").exists()
        captured = capsys.readouterr()
        # each rule's reading with its interval and verdict; a round line per round
        assert "edge: base_lr " in captured.out and "max_lr " in captured.out
        assert "range test round 1: 2 repeats of 0.001 to 0.5 over 20 steps" in captured.err
        report = json.loads((tmp_path / "rt" / "range_test.json").read_text())
        assert len(report["found"]["results"]) == 2 and report["bounds"][0]["method"] == "edge"
        assert 1 <= len(report["found"]["rounds"]) <= 2

    @staticmethod
    def _two_class_archive(tmp_path, learnable=True):
        """Class "y" brighter by 40 (learnable, not separable), or noise either way."""
        from PIL import Image

        rng = np.random.default_rng(0)
        for split, n in (("train", 48), ("test", 12)):
            for c, cls in enumerate(("x", "y")):
                folder = tmp_path / "data" / split / cls
                folder.mkdir(parents=True)
                for i in range(n):
                    pixels = rng.integers(0, 200, (8, 8, 3)) + (40 * c if learnable else 20)
                    Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
        with tarfile.open(tmp_path / "data.tar.gz", "w:gz") as tar:
            tar.add(tmp_path / "data", arcname="data")
        return ["--dataset", str(tmp_path / "data.tar.gz"), "--model", "mlp",
                "--batch-size", "8", "--no-progress", "--preprocess", "standard",
                "--optimizer", "momentum", "--no-caffe-multipliers", "--kernels", "lax"]

    def test_train_with_bounds_from_range_tests(self, tmp_path, capsys):
        common = self._two_class_archive(tmp_path)
        out = tmp_path / "run"
        code = cli.main(["train", *common, "--bounds", "auto", "--range-test-steps", "100",
                         "--steps", "24", "--eval-every", "12", "--out", str(out)])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        report = json.loads((out / "range_test" / "range_test.json").read_text())
        found = report["found"]["bounds"]
        assert found["trusted"] and found["method"] == "edge"
        summary = json.loads((out / "summary.json").read_text())
        # triangular between the bounds read, two cycles over the run
        assert summary["config"]["schedule"] == [["triangular", {
            "base_lr": found["base_lr"], "max_lr": found["max_lr"], "step_size": 6}, 1]]
        assert f"bounds: edge: base_lr {found['base_lr']:.3g}" in captured.out
        assert (out / "range_test" / "range_test.png").exists()
        # a resume reads the bounds back instead of testing again
        code = cli.main(["train", *common, "--bounds", "auto", "--range-test-steps", "100",
                         "--steps", "24", "--eval-every", "12", "--out", str(out), "--resume"])
        assert code == 0 and "bounds from" in capsys.readouterr().out

    def test_a_flagged_reading_trains_nothing(self, tmp_path, capsys):
        common = self._two_class_archive(tmp_path, learnable=False)
        out = tmp_path / "run"
        code = cli.main(["train", *common, "--bounds", "auto", "--range-test-steps", "30",
                         "--range-test-max-rounds", "1", "--range-test-repeats", "2",
                         "--steps", "24", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2
        message = err.strip().split("\n")[-1]
        assert message.startswith("clr-jax: error: the range tests gave no trusted bounds")
        assert "nothing was trained" in message and "Traceback" not in err
        assert not (out / "summary.json").exists() and not (out / "metrics.jsonl").exists()
        assert (out / "range_test" / "range_test.png").exists()

    @pytest.mark.parametrize("argv, match", [
        (["train", "--dataset", "nowhere", "--out", "{tmp}/a", "--steps", "5", "--policy",
          "fixed", "--base-lr", "0.1"], "unknown data set 'nowhere'"),
        (["train", "--model", "vgg", "--out", "{tmp}/a"], "invalid choice: 'vgg'"),
        (["train", "--optimizer", "lbfgs", "--out", "{tmp}/a"], "invalid choice: 'lbfgs'"),
        (["train", "--out", "{tmp}/a", "--steps", "5"], "--policy (or --stage) is required"),
        (["train", "--out", "{tmp}/a", "--steps", "5", "--epochs", "1", "--policy", "fixed",
          "--base-lr", "0.1"], "--steps or --epochs, not both"),
        (["train", "--out", "{tmp}/a", "--steps", "-5", "--policy", "fixed", "--base-lr",
          "0.1"], "--steps must be >= 1"),
        (["train", "--out", "{tmp}/a", "--steps", "5", "--batch-size", "9999", "--policy",
          "fixed", "--base-lr", "0.1"], "--batch-size=9999 is larger than the training set"),
        (["train", "--out", "{tmp}/file/a", "--steps", "5", "--policy", "fixed",
          "--base-lr", "0.1"], "cannot write to"),
        (["range-test", "--out", "{tmp}/b", "--steps", "1"], "--steps must be an integer >= 2"),
        (["range-test", "--out", "{tmp}/b", "--steps", "5", "--min-lr", "0.1", "--max-lr",
          "0.01"], "--max-lr must be > --min-lr, got --min-lr=0.1 and --max-lr=0.01"),
        (["train", "--out", "{tmp}/a", "--steps", "5", "--bounds", "auto",
          "--range-test-min-lr", "1", "--range-test-max-lr", "0.1"],
         "--range-test-max-lr must be > --range-test-min-lr, got --range-test-min-lr=1.0"),
        (["train", "--out", "{tmp}/a", "--steps", "5", "--bounds", "auto",
          "--range-test-repeats", "0"], "--range-test-repeats must be >= 1"),
        (["range-test", "--out", "{tmp}/b", "--steps", "5", "--min-lr", "0.5", "--max-lr",
          "0.1"], "--max-lr must be > --min-lr"),
        (["train", "--dataset", "{tmp}/broken.tar.gz", "--out", "{tmp}/a", "--steps", "5",
          "--policy", "fixed", "--base-lr", "0.1"], "cannot read archive"),
        # settings that overflow the float32 the schedules compute in
        (["train", "--out", "{tmp}/a", "--steps", "5", "--policy", "triangular",
          "--base-lr", "0.001", "--max-lr", "0.006", "--step-size", "1e39"],
         "step_size must be representable in float32"),
        (["train", "--out", "{tmp}/a", "--steps", "5", "--policy", "triangular",
          "--base-lr", "0.001", "--max-lr", "0.006", "--step-size", "0.5"],
         "step_size must be a number of steps >= 1"),
        (["train", "--out", "{tmp}/a", "--steps", "5", "--policy", "one_cycle",
          "--max-lr", "0.1", "--total-steps", "100", "--div-factor", "1e-300"],
         "div_factor must be representable"),
        # every other run setting
        (["train", "--out", "{tmp}/a", "--steps", "5", "--batch-size", "0", "--policy",
          "fixed", "--base-lr", "0.1"], "--batch-size must be a positive integer"),
        (["train", "--out", "{tmp}/a", "--steps", "5", "--eval-every", "0", "--policy",
          "fixed", "--base-lr", "0.1"], "--eval-every must be a positive integer"),
        (["train", "--out", "{tmp}/a", "--steps", "5", "--checkpoint-every", "-1", "--policy",
          "fixed", "--base-lr", "0.1"], "--checkpoint-every must be a positive integer"),
        (["train", "--out", "{tmp}/a", "--steps", "5", "--momentum", "1.5", "--policy",
          "fixed", "--base-lr", "0.1"], "momentum must be in [0, 1)"),
        (["train", "--out", "{tmp}/a", "--steps", "5", "--weight-decay", "nan", "--policy",
          "fixed", "--base-lr", "0.1"], "--weight-decay must be a finite number >= 0"),
        (["train", "--out", "{tmp}/a", "--steps", "5", "--seed", "-3", "--policy",
          "fixed", "--base-lr", "0.1"], "seed must be an integer from 0"),
        (["train", "--out", "{tmp}/a", "--epochs", "-1", "--policy", "fixed",
          "--base-lr", "0.1"], "epochs must be a finite number > 0"),
        (["train", "--out", "{tmp}/a", "--steps", "5", "--policy", "fixed", "--base-lr",
          "0.1", "--resume"], "nothing to resume in"),
        (["train", "--out", "{tmp}/a", "--steps", "5", "--policy", "fixed", "--base-lr",
          "0.1", "--coordinator", "localhost:1"], "give --coordinator, --num-processes"),
        (["range-test", "--out", "{tmp}/b", "--steps", "5", "--min-lr", "nan"],
         "--min-lr must be a finite number > 0"),
        (["sweep", "--out", "{tmp}/c", "--steps", "5", "--member", "a fixed base_lr=0.1",
          "--members-per-chunk", "0"], "--members-per-chunk must be a positive integer"),
        (["sweep", "--out", "{tmp}/c", "--steps", "5", "--member", "a fixed base_lr=0.1",
          "--target-accuracy", "2"], "--target-accuracy must be in (0, 1]"),
        (["schedule", "--policy", "triangular", "--base-lr", "0.001", "--max-lr", "1e39",
          "--step-size", "10"], "max_lr must be representable in float32"),
        (["schedule", "--policy", "fixed", "--base-lr", "0.1", "--plot", "{tmp}/file/s.png"],
         "file is a file, not a folder"),
        (["schedule", "--policy", "fixed", "--base-lr", "0.1", "--steps", "0,3000000000"],
         "steps go up to 2147483647"),
    ])
    def test_user_errors_are_one_line(self, tmp_path, argv, match, capsys):
        (tmp_path / "file").write_text("")
        (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b garbage")
        code = cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
        err = capsys.readouterr().err
        assert code == cli.EXIT_USAGE and match in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
        for run in ("a", "b", "c"):  # bad settings are refused before anything is written
            assert not (tmp_path / run).exists(), run

    def test_a_diverging_run_names_the_flag_not_the_argument(self, tmp_path, capsys):
        code = cli.main(["train", "--model", "mlp", "--batch-size", "48", "--steps", "8",
                         "--eval-every", "4", "--policy", "fixed", "--base-lr", "1e30",
                         "--no-progress", "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert code == 1 and "the loss became" in err
        assert "--overwrite" in err and "overwrite=True" not in err
        assert err.count("\n") == 1 and "Traceback" not in err

    def test_resume_of_a_finished_run_changes_nothing(self, tmp_path, capsys):
        argv = ["train", "--model", "mlp", "--batch-size", "48", "--steps", "4",
                "--eval-every", "2", "--policy", "fixed", "--base-lr", "0.001", "--no-progress",
                "--out", str(tmp_path / "run")]
        assert cli.main(argv) == 0
        files = sorted(p for p in (tmp_path / "run").rglob("*") if p.is_file())
        stamps = [p.stat().st_mtime_ns for p in files]
        capsys.readouterr()
        assert cli.main([*argv, "--resume"]) == 0
        assert "has finished (4 steps" in capsys.readouterr().out
        assert sorted(p for p in (tmp_path / "run").rglob("*") if p.is_file()) == files
        assert [p.stat().st_mtime_ns for p in files] == stamps


class TestSweep:
    def test_sweep_from_file(self, tmp_path, capsys):
        config = tmp_path / "sweep.toml"
        config.write_text(
            '[train]\nmodel = "mlp"\noptimizer = "momentum"\npreprocess = "standard"\n'
            'num_steps = 6\neval_every = 3\nbatch_size = 16\n\n'
            '[[member]]\nname = "fixed"\npolicy = "fixed"\nbase_lr = 0.01\n\n'
            '[[member]]\nname = "tri"\npolicy = "triangular"\nbase_lr = 0.01\n'
            'max_lr = 0.05\nstep_size = 2\n')
        out = tmp_path / "out"
        data = tmp_path / "data"
        write_image_folder(data)
        code = cli.main(["sweep", "--config", str(config), "--dataset", str(data),
                         "--out", str(out), "--no-progress", "--steps", "4"])
        assert code == 0
        printed = capsys.readouterr().out
        assert "| fixed |" in printed and "| tri |" in printed
        summary = json.loads((out / "sweep.json").read_text())
        assert summary["steps"] == 4  # the flag wins over the file
        assert summary["config"]["model"] == "mlp"  # the file wins over the default

    @pytest.mark.parametrize("argv, message", [
        (["sweep", "--out", "X", "--steps", "2"], "--config FILE or with --member"),
        (["sweep", "--member", "a", "--out", "X"], "needs a name and a policy"),
        (["sweep", "--member", "a fixed", "--out", "X", "--steps", "2"], "needs base_lr"),
        (["sweep", "--config", "missing.toml", "--out", "X"], "does not exist"),
    ])
    def test_bad_input_is_one_line(self, argv, message, capsys, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        assert cli.main(argv) == cli.EXIT_USAGE
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_a_second_run_reuses_the_compiled_programs(tmp_path):
    """The command line keeps XLA's programs in $CLR_JAX_COMPILATION_CACHE: a second run
    of the same job loads them instead of compiling; "off" keeps nothing."""
    probe = ("import sys, jax.monitoring as m; events = [];"
             "m.register_event_listener(lambda e, **kw: events.append(e));"
             "from clr_jax import cli; code = cli.main(sys.argv[1:]);"
             "print('HITS', events.count('/jax/compilation_cache/cache_hits'));"
             "sys.exit(code)")
    argv = ["train", "--model", "mlp", "--batch-size", "50", "--steps", "4", "--eval-every",
            "2", "--policy", "fixed", "--base-lr", "0.001", "--no-progress"]

    def run(name, cache):
        env = {**os.environ, "CLR_JAX_COMPILATION_CACHE": str(cache),
               "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
        out = subprocess.run([sys.executable, "-c", probe, *argv, "--out", str(tmp_path / name)],
                             env=env, capture_output=True, text=True, check=True)
        return int(out.stdout.split("HITS")[1].split()[0])

    assert run("first", tmp_path / "cache") == 0
    assert len(list((tmp_path / "cache").iterdir())) > 0
    assert run("second", tmp_path / "cache") > 0
    assert run("off", "off") == 0


class TestStartUp:
    """What the command line does before a command runs: it imports light, and a Ctrl-C
    during the heavy imports is one line."""

    def test_the_command_line_imports_without_jax(self):
        probe = "import sys, clr_jax.cli; print('jax' in sys.modules, 'optax' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             check=True)
        assert out.stdout.split() == ["False", "False"]

    def test_public_names_survive_their_submodules_import(self):
        # The submodule clr_jax.range_test imported first (as the harness does) must not
        # hide the function of that name, with the package loading its names lazily.
        probe = ("import clr_jax.harness.train, clr_jax, inspect; "
                 "from clr_jax import range_test; "
                 "print(inspect.isfunction(clr_jax.range_test), range_test is "
                 "clr_jax.range_test, sorted(clr_jax.__all__) == sorted(n for v in "
                 "clr_jax._EXPORTS.values() for n in v))")
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             check=True)
        assert out.stdout.split() == ["True", "True", "True"]

    @pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
    @pytest.mark.parametrize("delay", [0.0, 0.3])
    def test_ctrl_c_while_jax_is_imported_is_one_line(self, tmp_path, delay):
        # Past the interpreter's own start-up (where any Python program prints a
        # traceback on Ctrl-C), while JAX and the harness are imported (~2 s): the
        # interrupt waits for the imports (one cut short can crash jaxlib's extension).
        # Sent once jaxlib's library is being loaded (seen in the process's memory map),
        # so that a slow or busy machine moves the moment with the imports. SIGINT as
        # in a terminal: a test run started in the background has it ignored, which a
        # child inherits; a handled one reaches the child as the default.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "clr_jax", "train", "--dataset", "sample", "--policy",
                 "triangular", "--base-lr", "0.001", "--max-lr", "0.006", "--step-size",
                 "20", "--steps", "40", "--out", str(tmp_path / "run")],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finally:
            signal.signal(signal.SIGINT, previous)
        maps, deadline = Path(f"/proc/{process.pid}/maps"), time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            if "jaxlib" in maps.read_text():
                break
            time.sleep(0.01)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 130, err
        assert err.strip().startswith("clr-jax: interrupted"), err
        assert len(err.strip().splitlines()) == 1, err
