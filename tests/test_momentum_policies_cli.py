"""Cycling momentum through Optax, named policies and staged schedules, the schedule command."""

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import clr_jax
from clr_jax import cli
from clr_jax.policies import make_schedule, staged
from tests import reference as ref


class TestWithCyclicalMomentum:
    def test_sgd_momentum_follows_schedule(self):
        # Two updates of heavy-ball SGD with gradient 1: trace = g, then mu_1 * trace + g.
        lr = optax.constant_schedule(1.0)
        mom = lambda t: jnp.where(t == 0, 0.9, 0.5)  # noqa: E731
        tx = clr_jax.with_cyclical_momentum(optax.sgd, learning_rate=lr, momentum=mom)
        state = tx.init(jnp.zeros(()))
        u1, state = tx.update(jnp.ones(()), state)
        u2, state = tx.update(jnp.ones(()), state)
        assert float(u1) == pytest.approx(-1.0)
        assert float(u2) == pytest.approx(-(0.5 * 1.0 + 1.0))

    def test_adam_gets_b1(self):
        mom = clr_jax.cyclical_momentum(0.85, 0.95, 5)
        tx = clr_jax.with_cyclical_momentum(optax.adam, learning_rate=0.1, momentum=mom)
        state = tx.init({"w": jnp.zeros(2)})
        for step in range(6):
            _, state = tx.update({"w": jnp.ones(2)}, state)
            assert float(state.hyperparams["b1"]) == pytest.approx(
                0.95 - 0.1 * ref.triangular(step, 0.0, 1.0, 5), rel=1e-6)

    def test_explicit_hyperparam(self):
        tx = clr_jax.with_cyclical_momentum(
            optax.rmsprop, learning_rate=0.1, momentum=0.5, hyperparam="decay")
        state = tx.init(jnp.zeros(1))
        assert float(state.hyperparams["decay"]) == 0.5

    def test_errors(self):
        with pytest.raises(ValueError, match="no 'momentum' or 'b1'"):
            clr_jax.with_cyclical_momentum(optax.adagrad, learning_rate=0.1, momentum=0.9)
        with pytest.raises(ValueError, match="hyperparam='beta' is not an argument"):
            clr_jax.with_cyclical_momentum(optax.sgd, learning_rate=0.1, momentum=0.9,
                                           hyperparam="beta")


class TestPolicies:
    def test_each_policy_builds(self):
        settings = dict(base_lr=0.001, max_lr=0.006, step_size=100)
        assert float(make_schedule("triangular", **settings)(100)) == pytest.approx(0.006)
        assert float(make_schedule("exp", base_lr=0.001, gamma=0.5)(2)) == pytest.approx(0.00025)
        assert float(make_schedule("fixed", base_lr=0.01)(99)) == pytest.approx(0.01)
        assert float(make_schedule("hann", **settings)(50)) == pytest.approx(0.0035)
        assert float(make_schedule("one_cycle", max_lr=1.0, total_steps=10)(0)) == \
            pytest.approx(0.04)

    def test_table2_staged_triangular2(self):
        s = staged([
            ("triangular2", dict(base_lr=0.001, max_lr=0.005, step_size=2000), 16_000),
            ("triangular2", dict(base_lr=0.0001, max_lr=0.0005, step_size=1000), 6000),
            ("triangular2", dict(base_lr=0.00001, max_lr=0.00005, step_size=500), 3000),
        ])
        steps = np.array([0, 2000, 6000, 15_999, 16_000, 17_000, 21_000, 22_000, 22_500, 24_999])
        expected = [
            ref.triangular2(0, 0.001, 0.005, 2000), 0.005, 0.003, ref.triangular2(15_999, 0.001,
                                                                                   0.005, 2000),
            0.0001, 0.0005, ref.triangular2(5000, 0.0001, 0.0005, 1000),
            0.00001, 0.00005, ref.triangular2(2999, 0.00001, 0.00005, 500),
        ]
        got = [float(s(jnp.uint32(t))) for t in steps]
        np.testing.assert_allclose(got, expected, rtol=1e-6)

    @pytest.mark.parametrize("call, match", [
        (lambda: make_schedule("cosine"), "policy must be one of"),
        (lambda: make_schedule("triangular", base_lr=0.1), "needs max_lr, step_size"),
        (lambda: make_schedule("fixed", base_lr=0.1, gamma=0.5), "does not take gamma"),
        (lambda: make_schedule("exp", base_lr=0.1, gamma=2.0), "gamma"),
        (lambda: staged([]), "stages is empty"),
        (lambda: staged([("fixed", {"base_lr": 0.1}, 0), ("fixed", {"base_lr": 0.1}, 1)]),
         r"stages\[0\] num_steps"),
    ])
    def test_errors(self, call, match):
        with pytest.raises(ValueError, match=match):
            call()


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
