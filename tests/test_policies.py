"""Schedules by name: the registry, staged schedules, vectorised schedules for sweeps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import inspect

from clr_jax import cli
from clr_jax.policies import POLICIES, Policy, make_schedule, parse_stages, staged, vectorize
from tests import reference as ref


class TestRegistry:
    @pytest.mark.parametrize("name", list(POLICIES))
    def test_settings_come_from_the_factory(self, name):
        policy = POLICIES[name]
        parameters = inspect.signature(policy.factory).parameters
        assert set(policy.settings) == set(parameters) - set(policy.fixed) - set(policy.hidden)
        assert all(parameters[n].default is inspect.Parameter.empty for n in policy.required)
        assert all(isinstance(policy.defaults[n], (str, bool)) for n in policy.switches)
        assert policy.description and all(n in policy.help for n in policy.settings)

    def test_a_new_policy_is_one_entry(self, monkeypatch, capsys):
        """Registered once, a policy works by name, in stages, in sweeps and on the
        command line, with its settings, defaults and help read from the factory."""

        def sawtooth(base_lr, max_lr, period, *, rising: bool = True):
            """A sawtooth between two rates.

            Args:
              base_lr: the rate at the start of each period.
              max_lr: the rate approached at its end.
              period: steps per tooth.
              rising: rise (True) or fall (False) within each period.
            """
            def schedule(step):
                frac = (jnp.asarray(step, jnp.float32) % period) / period
                frac = frac if rising else 1 - frac
                return base_lr + (max_lr - base_lr) * frac
            return schedule

        monkeypatch.setitem(POLICIES, "sawtooth", Policy("sawtooth", sawtooth))
        assert float(make_schedule("sawtooth", base_lr=0.0, max_lr=1.0, period=4)(2)) == 0.5
        fn, params = vectorize([[("sawtooth", dict(base_lr=0.0, max_lr=1.0, period=4), 1)],
                                [("sawtooth", dict(base_lr=0.0, max_lr=1.0, period=4,
                                                   rising=False), 1)]])
        np.testing.assert_allclose(jax.vmap(fn, (0, None))(params, 1), [0.25, 0.75])
        assert parse_stages({"policy": "sawtooth", "base_lr": 0, "max_lr": 1, "period": 2})
        code = cli.main(["schedule", "--policy", "sawtooth", "--base-lr", "0", "--max-lr",
                         "1", "--period", "4", "--steps", "0,3"])
        assert code == 0 and "3\t0.75" in capsys.readouterr().out
        with pytest.raises(SystemExit):
            cli.main(["schedule", "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "--period PERIOD steps per tooth (sawtooth)" in help_text


class TestParseStages:
    def test_forms(self):
        one = parse_stages({"policy": "fixed", "base_lr": 0.1})
        assert one == (("fixed", {"base_lr": 0.1}, 1),)
        many = parse_stages([{"policy": "fixed", "base_lr": 0.1, "steps": 5},
                             {"policy": "exp", "base_lr": 0.1, "gamma": 0.9}])
        assert many == (("fixed", {"base_lr": 0.1}, 5), ("exp", {"base_lr": 0.1, "gamma": 0.9}, 1))
        assert parse_stages(list(many)) == many
        assert parse_stages([["fixed", {"base_lr": 0.1}, 5.0]]) == (("fixed", {"base_lr": 0.1}, 5),)

    @pytest.mark.parametrize("spec, match", [
        ([], "non-empty list"),
        ("triangular", "non-empty list"),
        ([{"base_lr": 0.1}], "stage 0 needs a policy"),
        ([{"policy": "nope"}], "unknown policy 'nope'"),
        ([{"policy": "fixed", "base_lr": 0.1}, {"policy": "fixed", "base_lr": 0.1}],
         "stage 0 needs steps"),
        ([{"policy": "fixed", "base_lr": 0.1, "steps": 2.5}], "positive whole number"),
        ([{"policy": "fixed", "base_lr": 0.1, "steps": 0}], "positive whole number"),
        ([("fixed", 0.1, 3)], "must be \\(policy, settings, num_steps\\)"),
        ({"policy": "triangular", "base_lr": 0.2, "max_lr": 0.1, "step_size": 5},
         "schedule: max_lr must be >= base_lr"),
    ])
    def test_errors(self, spec, match):
        with pytest.raises(ValueError, match=match):
            parse_stages(spec)


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


MIXED = [
    [("fixed", dict(base_lr=0.001), 600), ("fixed", dict(base_lr=0.0001), 50),
     ("fixed", dict(base_lr=0.00001), 50)],
    [("triangular2", dict(base_lr=0.001, max_lr=0.005, step_size=20), 160),
     ("triangular2", dict(base_lr=0.0001, max_lr=0.0005, step_size=10), 60),
     ("triangular2", dict(base_lr=1e-5, max_lr=5e-5, step_size=5), 30)],
    [("exp", dict(base_lr=0.001, gamma=0.99994), 1)],
    [("exp_range", dict(base_lr=0.001, max_lr=0.006, step_size=2000, gamma=0.99994), 1)],
    [("exp_range", dict(base_lr=0.001, max_lr=0.006, step_size=2000, gamma=0.99994,
                        decay="both"), 1)],
    [("decay", dict(max_lr=0.007, base_lr=0.001, decay_steps=40), 1)],
    [("one_cycle", dict(max_lr=0.1, total_steps=500, three_phase=True, pct_start=0.25), 1)],
    [("one_cycle", dict(max_lr=0.1, total_steps=300, anneal="linear"), 1)],
    [("hann", dict(base_lr=0.1, max_lr=0.5, step_size=7, step_size_down=11), 1)],
    [("welch", dict(base_lr=0.1, max_lr=0.5, step_size=5), 1)],
    [("triangular", dict(base_lr=0.001, max_lr=0.006, step_size=2000), 1)],
]


class TestVectorize:
    def test_every_member_equals_its_own_schedule(self):
        fn, params = vectorize(MIXED)
        steps = np.arange(0, 70_000, 7)
        got = np.asarray(jax.jit(jax.vmap(jax.vmap(fn, (0, None)), (None, 0)))(params, steps))
        for m, stages in enumerate(MIXED):
            want = np.asarray(jax.vmap(staged(stages))(steps))
            np.testing.assert_allclose(got[:, m], want, rtol=1e-6, atol=1e-12, err_msg=str(m))

    def test_closed_forms(self):
        fn, params = vectorize(MIXED[:3])
        t = np.array([0, 599, 600, 649, 650, 700, 170, 69_999])
        got = np.asarray(jax.vmap(jax.vmap(fn, (0, None)), (None, 0))(params, t))
        np.testing.assert_allclose(got[:, 0], [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-3, 1e-5],
                                   rtol=1e-6)
        # gamma**t from a float64 log: 0.99994**69999 to float32 rounding
        np.testing.assert_allclose(got[:, 2], 0.001 * 0.99994 ** t.astype(np.float64),
                                   rtol=2e-6)
        # triangular2 stage 2 starts at 160 with its own cycle: step 170 is its peak
        assert got[6, 1] == pytest.approx(0.0005, rel=1e-6)

    def test_one_compilation_for_any_mix(self):
        traces = []

        def value(params, step):
            traces.append(1)
            return jax.vmap(fn, (0, None))(params, step)

        fn, params = vectorize(MIXED)
        compiled = jax.jit(value)
        for mix in (params, jax.tree.map(lambda x: x[::-1].copy(), params)):
            compiled(mix, 10)
        assert len(traces) == 1

    @pytest.mark.parametrize("members, match", [
        ([], "no schedules"),
        ([[]], "no stages"),
        ([[("bogus", {}, 1)]], "bogus"),
        ([[("triangular", dict(base_lr=0.1), 1)]], "needs max_lr"),
        ([[("fixed", dict(base_lr=0.1), 0), ("fixed", dict(base_lr=0.1), 1)]], "num_steps"),
    ])
    def test_errors(self, members, match):
        with pytest.raises(ValueError, match=match):
            vectorize(members)
