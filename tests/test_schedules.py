"""Schedules against hand-computed values, the paper's formulas, PyTorch, and JAX transforms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import clr_jax
from tests import reference as ref


@pytest.fixture(autouse=True)
def strict_dtypes():
    """Schedules must not rely on implicit dtype promotion (int steps, float rates)."""
    with jax.numpy_dtype_promotion("strict"):
        yield


def values(schedule, steps):
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps)), dtype=np.float64)


STEPS = np.arange(0, 20_001, 7)


class TestTriangular:
    def test_hand_values(self):
        s = clr_jax.triangular(0.001, 0.006, step_size=2000)
        # start, quarter, peak, three quarters, trough, next peak
        np.testing.assert_allclose(
            values(s, [0, 500, 1000, 2000, 3000, 4000, 6000]),
            [0.001, 0.00225, 0.0035, 0.006, 0.0035, 0.001, 0.006],
            rtol=1e-6,
        )

    def test_paper_formula(self):
        s = clr_jax.triangular(0.001, 0.006, step_size=2000)
        expected = [ref.triangular(t, 0.001, 0.006, 2000) for t in STEPS]
        np.testing.assert_allclose(values(s, STEPS), expected, rtol=1e-6)

    def test_stays_within_bounds(self):
        v = values(clr_jax.triangular(0.1, 0.3, 17), np.arange(1000))
        assert v.min() >= 0.1 * (1 - 1e-6) and v.max() <= 0.3 * (1 + 1e-6)

    def test_non_integer_step_size(self):
        s = clr_jax.triangular(0.0, 1.0, step_size=2.5)
        expected = [ref.triangular(t, 0.0, 1.0, 2.5) for t in range(40)]
        np.testing.assert_allclose(values(s, np.arange(40)), expected, atol=1e-6)

    def test_asymmetric(self):
        s = clr_jax.triangular(1.0, 2.0, step_size=3, step_size_down=7)
        # up 3 steps to the peak, down 7 steps to the trough, period 10
        np.testing.assert_allclose(
            values(s, [0, 1, 3, 4, 10, 13, 17]),
            [1.0, 1 + 1 / 3, 2.0, 2 - 1 / 7, 1.0, 2.0, 2 - 4 / 7],
            rtol=1e-6,
        )

    def test_negative_step_is_step_zero(self):
        assert float(clr_jax.triangular(0.5, 1.0, 10)(-5)) == 0.5


class TestTriangular2:
    def test_hand_values(self):
        s = clr_jax.triangular2(1.0, 5.0, step_size=10)
        # peaks: 5, 3, 2, 1.5 ; troughs 1
        np.testing.assert_allclose(
            values(s, [0, 10, 20, 30, 40, 50, 70, 75]),
            [1.0, 5.0, 1.0, 3.0, 1.0, 2.0, 1.5, 1.25],
            rtol=1e-6,
        )

    def test_paper_formula(self):
        s = clr_jax.triangular2(0.001, 0.006, step_size=2000)
        expected = [ref.triangular2(t, 0.001, 0.006, 2000) for t in STEPS]
        np.testing.assert_allclose(values(s, STEPS), expected, rtol=1e-6)


class TestExponential:
    def test_closed_form_at_the_papers_length(self):
        s = clr_jax.exponential(0.001, 0.99994)
        t = np.array([0, 1, 1000, 42_000, 70_000])
        np.testing.assert_allclose(values(s, t), 0.001 * 0.99994 ** t.astype(np.float64),
                                   rtol=2e-6)

    def test_traced_log_gamma_keeps_the_precision(self):
        gammas = np.array([0.99994, 0.9999, 0.99998])
        want = 0.001 * gammas ** 70_000
        by_log = jax.vmap(lambda lg: clr_jax.exponential(0.001, log_gamma=lg)(70_000))(
            np.log(gammas).astype(np.float32))
        np.testing.assert_allclose(by_log, want, rtol=1e-6)
        # a traced float32 gamma is rounded before its power: ~1e-3 off at 70,000 steps
        by_gamma = jax.vmap(lambda g: clr_jax.exponential(0.001, gamma=g)(70_000))(
            gammas.astype(np.float32))
        assert np.abs(by_gamma[0] / want[0] - 1) > 1e-4


class TestExpRange:
    def test_hand_values(self):
        s = clr_jax.exp_range(1.0, 3.0, step_size=1, gamma=0.5)
        np.testing.assert_allclose(values(s, [0, 1, 2, 3]), [1.0, 2.0, 1.0, 1.25])
        b = clr_jax.exp_range(1.0, 3.0, step_size=1, gamma=0.5, decay="both")
        np.testing.assert_allclose(values(b, [0, 1, 2, 3]), [1.0, 1.5, 0.25, 0.375])

    @pytest.mark.parametrize("decay", ["amplitude", "both"])
    def test_paper_gamma_long_run(self, decay):
        # gamma close to 1 over tens of thousands of steps: float32 rounding of gamma
        # would give ~1e-3 error at t = 70,000; log(gamma) is taken in float64.
        gamma = 0.99994
        s = clr_jax.exp_range(0.001, 0.006, 2000, gamma, decay=decay)
        steps = np.arange(0, 70_001, 13)
        f = ref.exp_range_amplitude if decay == "amplitude" else ref.exp_range_both
        expected = [f(t, 0.001, 0.006, 2000, gamma) for t in steps]
        np.testing.assert_allclose(values(s, steps), expected, rtol=1e-6)

    def test_gamma_one_is_triangular(self):
        a = clr_jax.exp_range(0.1, 0.5, 100, 1.0)
        b = clr_jax.triangular(0.1, 0.5, 100)
        np.testing.assert_allclose(values(a, STEPS), values(b, STEPS), rtol=1e-7)


class TestWindows:
    def test_welch_and_hann(self):
        s = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
        steps = [0, 1, 2, 3, 4]  # step_size 4: s = t / 4 on the way up
        welch = clr_jax.cyclical(0.0, 1.0, 4, window="welch")
        hann = clr_jax.cyclical(0.0, 1.0, 4, window="hann")
        np.testing.assert_allclose(values(welch, steps), 1 - (1 - s) ** 2, atol=1e-7)
        np.testing.assert_allclose(values(hann, steps), (1 - np.cos(np.pi * s)) / 2, atol=1e-7)

    def test_windows_share_peaks_and_troughs(self):
        for window in clr_jax.schedules.WINDOWS:
            s = clr_jax.cyclical(0.2, 0.8, 50, window=window)
            np.testing.assert_allclose(values(s, [0, 50, 100, 150]), [0.2, 0.8, 0.2, 0.8])

    def test_scale_fn_modes(self):
        cyc = clr_jax.cyclical(0.0, 1.0, 5, scale_fn=lambda c: 1 / c)
        np.testing.assert_allclose(values(cyc, [5, 15, 25]), [1.0, 0.5, 1 / 3], rtol=1e-6)
        it = clr_jax.cyclical(0.0, 1.0, 5, scale_fn=lambda t: 1 / (1 + t), scale_mode="iterations")
        np.testing.assert_allclose(values(it, [5, 15]), [1 / 6, 1 / 16], rtol=1e-6)


class TestDecay:
    def test_hand_values(self):
        s = clr_jax.decay(0.007, 0.001, decay_steps=4000)
        np.testing.assert_allclose(
            values(s, [0, 1000, 2000, 4000, 25_000]),
            [0.007, 0.0055, 0.004, 0.001, 0.001],
            rtol=1e-6,
        )

    def test_matches_optax_linear_schedule(self):
        ours = clr_jax.decay(0.007, 0.001, 4000)
        theirs = optax.linear_schedule(0.007, 0.001, 4000)
        np.testing.assert_allclose(values(ours, STEPS), values(theirs, STEPS), rtol=1e-6)


class TestOneCycle:
    @pytest.mark.parametrize("anneal", ["cos", "linear"])
    @pytest.mark.parametrize("three_phase", [False, True])
    def test_reference(self, anneal, three_phase):
        s = clr_jax.one_cycle(0.1, 1000, pct_start=0.25, anneal=anneal, three_phase=three_phase)
        steps = np.arange(1000)
        expected = [ref.one_cycle(t, 0.1, 1000, 0.25, anneal, three=three_phase) for t in steps]
        np.testing.assert_allclose(values(s, steps), expected, rtol=2e-6, atol=1e-12)

    def test_start_peak_end(self):
        s = clr_jax.one_cycle(1.0, 101, pct_start=0.5, div_factor=10.0, final_div_factor=100.0)
        start, peak, end, after = values(s, [0, 49.5, 100, 5000])
        assert start == pytest.approx(0.1, rel=1e-6)
        assert peak == pytest.approx(1.0, rel=1e-6)
        assert end == pytest.approx(0.001, rel=1e-5)
        assert after == pytest.approx(0.001, rel=1e-5)


class TestCyclicalMomentum:
    def test_opposite_to_rate(self):
        lr = values(clr_jax.triangular(0.1, 1.0, 10), np.arange(60))
        mom = values(clr_jax.cyclical_momentum(0.85, 0.95, 10), np.arange(60))
        # momentum = max - (max - base) * s, rate = base + (top - base) * s, same s
        np.testing.assert_allclose((0.95 - mom) / 0.1, (lr - 0.1) / 0.9, atol=1e-5)

    def test_hand_values(self):
        m = clr_jax.cyclical_momentum(0.8, 0.9, 4, step_size_down=6)
        np.testing.assert_allclose(values(m, [0, 2, 4, 7, 10]), [0.9, 0.85, 0.8, 0.85, 0.9],
                                   rtol=1e-6)


class TestFrozenSettings:
    """Concrete settings are copied when the schedule is built: changing the caller's
    array or tensor afterwards changes nothing (PyTorch tests the same of its own)."""

    @pytest.mark.parametrize("build, argument", [
        (lambda a: clr_jax.triangular(0.01, a, 10), 0.1),
        (lambda a: clr_jax.triangular2(a, 0.5, 10), 0.1),
        (lambda a: clr_jax.exp_range(0.01, a, 10, 0.99), 0.1),
        (lambda a: clr_jax.exp_range(0.01, 0.1, 10, gamma=a, decay="both"), 0.99),
        (lambda a: clr_jax.cyclical(0.01, 0.1, a, window="hann"), 10.0),
        (lambda a: clr_jax.decay(a, 0.01, 10), 0.1),
        (lambda a: clr_jax.exponential(a, 0.99), 0.1),
        (lambda a: clr_jax.one_cycle(a, 100), 0.1),
        (lambda a: clr_jax.one_cycle(0.1, 100, div_factor=a), 25.0),
        (lambda a: clr_jax.cyclical_momentum(0.8, a, 10), 0.9),
        (lambda a: clr_jax.one_cycle_momentum(100, base_momentum=a), 0.85),
    ])
    @pytest.mark.parametrize("kind", ["numpy", "torch"])
    def test_changing_the_input_afterwards_changes_nothing(self, build, argument, kind):
        import torch

        def make():
            return np.array(argument) if kind == "numpy" else torch.tensor(argument)

        given = make()
        schedule = build(given)
        before = values(schedule, STEPS[:50])
        given[...] = argument * 0.5  # in place, after the checks have passed
        np.testing.assert_array_equal(values(schedule, STEPS[:50]), before)
        np.testing.assert_array_equal(values(build(make()), STEPS[:50]), before)


class TestStepDtypes:
    @pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32, np.float32])
    def test_dtypes_agree(self, dtype):
        s = clr_jax.triangular2(0.001, 0.006, 2000)
        steps = np.arange(0, 9000, 250).astype(dtype)
        expected = [ref.triangular2(int(t), 0.001, 0.006, 2000) for t in steps]
        got = np.array([float(jax.jit(s)(t)) for t in steps])
        np.testing.assert_allclose(got, expected, rtol=1e-6)

    def test_flax_optimizer_step_uint32(self):
        s = clr_jax.triangular(0.1, 0.2, 3)
        assert float(s(jnp.uint32(3))) == pytest.approx(0.2)

    @pytest.mark.parametrize("make, formula", [
        (lambda: clr_jax.triangular(0.001, 0.006, 2000),
         lambda t: ref.triangular(t, 0.001, 0.006, 2000)),
        (lambda: clr_jax.triangular(0.1, 0.3, 3, step_size_down=7),
         lambda t: 0.1 + 0.2 * ref.asymmetric_scale(t, 3, 7)[0]),
        (lambda: clr_jax.cyclical(0.0, 1.0, 1000, window="hann"),
         lambda t: (1 - math.cos(math.pi * ref.triangular(t, 0.0, 1.0, 1000))) / 2),
        (lambda: clr_jax.cyclical_momentum(0.85, 0.95, 1999),
         lambda t: 0.95 - 0.1 * ref.triangular(t, 0.0, 1.0, 1999)),
    ])
    @pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32])
    def test_huge_steps(self, make, formula, dtype):
        """Exact up to 2**31 - 1, where float32 t / step_size has no bits left."""
        steps = [2**31 - 1, 2**31 - 2, 2**31 - 1001, 2**30 + 999, 2**24 + 1, 123_456_789]
        schedule = jax.jit(make())
        got = np.array([float(schedule(dtype(t))) for t in steps])
        expected = np.array([formula(t) for t in steps])
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)

    def test_int64_beyond_int32_with_x64(self):
        with jax.enable_x64(True):
            s = clr_jax.triangular(0.001, 0.006, 2000)
            t = 2**40 + 5
            # float64 t / 2000 has too few bits left here: position in cycle by hand.
            position = t % 4000
            assert position == 3781
            expected = 0.001 + 0.005 * (4000 - position) / 2000
            assert float(s(np.int64(t))) == pytest.approx(expected, rel=1e-12)


class TestTransforms:
    def test_vmap_over_every_hyperparameter(self):
        t = 2600
        bases = jnp.array([0.001, 0.002])
        tops = jnp.array([0.006, 0.01])
        sizes = jnp.array([2000.0, 1000.0])
        downs = jnp.array([1000.0, 3000.0])
        gammas = jnp.array([0.9999, 0.999])

        def lr(b, m, s, d, g):
            return clr_jax.exp_range(b, m, s, g, step_size_down=d)(t)

        got = np.asarray(jax.vmap(lr)(bases, tops, sizes, downs, gammas))
        for i in range(2):
            b, m, s, d, g = (float(a[i]) for a in (bases, tops, sizes, downs, gammas))
            scale, _ = ref.asymmetric_scale(t, s, d)
            np.testing.assert_allclose(got[i], b + (m - b) * scale * g**t, rtol=1e-5)

    def test_vmap_one_cycle_and_decay(self):
        got = jax.vmap(lambda n, p: clr_jax.one_cycle(1.0, n, pct_start=p)(0))(
            jnp.array([100.0, 200.0]), jnp.array([0.2, 0.4]))
        np.testing.assert_allclose(got, [0.04, 0.04], rtol=1e-6)
        got = jax.vmap(lambda n: clr_jax.decay(1.0, 0.0, n)(50))(jnp.array([100.0, 200.0]))
        np.testing.assert_allclose(got, [0.5, 0.75], rtol=1e-6)

    def test_jit_does_not_retrace_for_new_values(self):
        traces = []

        @jax.jit
        def lr(base, top, size, gamma, step):
            traces.append(None)
            return clr_jax.exp_range(base, top, size, gamma)(step)

        for base, top, size in [(0.1, 0.2, 10.0), (0.3, 0.9, 25.0), (0.0, 1.0, 7.0)]:
            out = lr(jnp.float32(base), jnp.float32(top), jnp.float32(size), jnp.float32(1.0),
                     jnp.int32(size))
            assert float(out) == pytest.approx(top, rel=1e-6)
        assert len(traces) == 1

    def test_grad_with_respect_to_bounds(self):
        # triangular2 at t = 25, step 10: cycle 2, s = 0.5, scale 1/2 -> lr = b + (m - b)/4
        grad = jax.grad(lambda b, m: clr_jax.triangular2(b, m, 10)(25), argnums=(0, 1))
        db, dm = grad(0.1, 1.0)
        assert float(db) == pytest.approx(0.75) and float(dm) == pytest.approx(0.25)
        g = jax.grad(lambda m: clr_jax.one_cycle(m, 100)(0))(2.0)
        assert float(g) == pytest.approx(1 / 25)

    def test_in_optax_sgd_and_chain(self):
        schedule = clr_jax.triangular(0.1, 0.5, step_size=2)
        params = jnp.zeros(2)
        for tx in (optax.sgd(schedule),
                   optax.chain(optax.scale_by_schedule(schedule), optax.scale(-1.0))):
            state = tx.init(params)
            seen = []
            for _ in range(5):
                updates, state = tx.update(jnp.ones(2), state, params)
                seen.append(-float(updates[0]))
            np.testing.assert_allclose(seen, [0.1, 0.3, 0.5, 0.3, 0.1], rtol=1e-6)


class TestHelpers:
    def test_step_size_from_epochs(self):
        assert clr_jax.step_size_from_epochs(4, 50_000, 100) == 2000
        assert clr_jax.step_size_from_epochs(2.5, 1000, 64) == 38  # 15 steps/epoch
        assert clr_jax.step_size_from_epochs(1, 1000, 64, drop_remainder=False) == 16

    def test_steps_for_cycles(self):
        assert clr_jax.steps_for_cycles(4, 2000) == 16_000
        assert clr_jax.steps_for_cycles(3, 1000, step_size_down=500) == 4500
        assert clr_jax.steps_for_cycles(0.5, 4000) == 4000


def _bad(factory, match):
    return pytest.param(factory, match, id=match)


BAD_INPUTS = [
    _bad(lambda: clr_jax.triangular(-0.1, 1.0, 10), "base_lr"),
    _bad(lambda: clr_jax.triangular(float("nan"), 1.0, 10), r"base_lr .*nan"),
    _bad(lambda: clr_jax.triangular(0.1, float("inf"), 10), "max_lr"),
    _bad(lambda: clr_jax.triangular(0.5, 0.1, 10), r"max_lr must be >= base_lr"),
    _bad(lambda: clr_jax.triangular2(0.1, 0.5, 0), r"step_size must be .* got 0"),
    _bad(lambda: clr_jax.triangular2(0.1, 0.5, -3), r"step_size .*-3"),
    _bad(lambda: clr_jax.triangular(0.1, 0.5, 10, step_size_down=0), "step_size_down"),
    _bad(lambda: clr_jax.triangular(jnp.array([0.1, 0.9]), 0.5, 10), "max_lr must be >="),
    _bad(lambda: clr_jax.exp_range(0.1, 0.5, 10, 0.0), r"gamma must be in \(0, 1\]"),
    _bad(lambda: clr_jax.exp_range(0.1, 0.5, 10, 1.5), r"gamma .*1.5"),
    _bad(lambda: clr_jax.exp_range(0.1, 0.5, 10, 0.9, decay="bounds"), "decay must be one of"),
    _bad(lambda: clr_jax.cyclical(0.1, 0.5, 10, window="cosine"), "window must be one of"),
    _bad(lambda: clr_jax.cyclical(0.1, 0.5, 10, scale_mode="epoch"), "scale_mode"),
    _bad(lambda: clr_jax.cyclical(0.1, 0.5, 10, scale_fn=3), "scale_fn"),
    _bad(lambda: clr_jax.decay(0.001, 0.007, 100), "max_lr must be >= base_lr"),
    _bad(lambda: clr_jax.decay(0.007, 0.001, 0), "decay_steps"),
    _bad(lambda: clr_jax.one_cycle(0.1, 0), "total_steps"),
    _bad(lambda: clr_jax.one_cycle(-0.1, 100), "max_lr"),
    _bad(lambda: clr_jax.one_cycle(0.1, 100, pct_start=1.0), r"pct_start must be in \(0, 1\)"),
    _bad(lambda: clr_jax.one_cycle(0.1, 100, pct_start=0.0), "pct_start"),
    _bad(lambda: clr_jax.one_cycle(0.1, 100, anneal="exp"), "anneal"),
    _bad(lambda: clr_jax.one_cycle(0.1, 100, pct_start=0.6, three_phase=True),
         "pct_start must be < 0.5 with three_phase=True"),
    _bad(lambda: clr_jax.one_cycle(0.1, 100, pct_start=0.6, three_phase=np.True_),
         "pct_start must be < 0.5 with three_phase=True"),
    _bad(lambda: clr_jax.exponential(0.1, gamma=1.5), "gamma must be in"),
    # settings that are finite in float64 but not in the float32 the schedules use
    _bad(lambda: clr_jax.triangular(0.001, 1e39, 100), "max_lr must be representable in float32"),
    _bad(lambda: clr_jax.triangular(0.001, 0.1, 1e39), "step_size must be representable"),
    _bad(lambda: clr_jax.triangular(0.001, 0.1, 2e38), "step_size \\+ step_size_down must be"),
    _bad(lambda: clr_jax.triangular(1e-42, 0.1, 10), "base_lr must be representable"),
    _bad(lambda: clr_jax.one_cycle(0.1, 100, div_factor=1e-300), "div_factor must be repr"),
    _bad(lambda: clr_jax.one_cycle(1e30, 100, div_factor=1e-10), "the initial rate"),
    _bad(lambda: clr_jax.decay(0.1, 0.01, 1e39), "decay_steps must be representable"),
    # half cycles under one step would leave the rate at base_lr
    _bad(lambda: clr_jax.triangular(0.001, 0.1, 0.5), "step_size must be a number of steps >= 1"),
    _bad(lambda: clr_jax.triangular(0.001, 0.1, 10, step_size_down=0.5), "step_size_down must"),
    _bad(lambda: clr_jax.cyclical_momentum(0.8, 0.9, 0.3), "step_size must be a number of steps"),
    # arrays that do not broadcast
    _bad(lambda: clr_jax.triangular(np.array([0.1, 0.2]), np.array([1.0, 2.0, 3.0]), 10),
         r"shapes do not broadcast together: base_lr \(2,\), max_lr \(3,\)"),
    _bad(lambda: clr_jax.triangular(0.1, 1.0, np.array([10, 20]),
                                    step_size_down=np.array([1, 2, 3])), "step_size \\(2,\\)"),
    _bad(lambda: clr_jax.one_cycle(np.ones(2), np.array([10, 20, 30])), "total_steps \\(3,\\)"),
    _bad(lambda: clr_jax.exponential(-0.1, gamma=0.5), "base_lr must be"),
    _bad(lambda: clr_jax.exponential(0.1), "give gamma .* or log_gamma"),
    _bad(lambda: clr_jax.exponential(0.1, gamma=0.5, log_gamma=-0.1), "not both"),
    _bad(lambda: clr_jax.exp_range(0.1, 0.2, 10, log_gamma=0.1), "log_gamma must be"),
    _bad(lambda: clr_jax.one_cycle(0.1, 100, div_factor=0.0), "div_factor"),
    _bad(lambda: clr_jax.one_cycle(0.1, 100, final_div_factor=-1.0), "final_div_factor"),
    _bad(lambda: clr_jax.one_cycle(0.1, 100, three_phase="yes"), "three_phase"),
    _bad(lambda: clr_jax.cyclical_momentum(0.95, 0.85, 10), "max_momentum must be >="),
    _bad(lambda: clr_jax.cyclical_momentum(0.85, 1.5, 10), r"max_momentum must be in \[0, 1\]"),
    _bad(lambda: clr_jax.step_size_from_epochs(0, 100, 10), "epochs"),
    _bad(lambda: clr_jax.step_size_from_epochs(1, 10, 100), "batch_size=100 is larger"),
    _bad(lambda: clr_jax.step_size_from_epochs(1, 100, 2.5), "batch_size"),
    _bad(lambda: clr_jax.steps_for_cycles(0, 100), "num_cycles"),
    _bad(lambda: clr_jax.steps_for_cycles(1, 2.5, step_size_down=2), "not a whole number"),
    _bad(lambda: clr_jax.triangular("fast", 1.0, 10), "base_lr must be a number"),
]


@pytest.mark.parametrize("factory, match", BAD_INPUTS)
def test_bad_input_raises_value_error(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_traced_hyperparameters_skip_checks():
    # Under jit the values are unknown: construction must not fail or force them.
    out = jax.jit(lambda b, m: clr_jax.triangular(b, m, 10)(5))(0.5, 0.1)
    assert np.isfinite(float(out))
