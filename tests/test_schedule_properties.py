"""Property-based tests of the schedules (hypothesis): invariants that hold for any settings."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import clr_jax

rates = st.floats(min_value=1e-6, max_value=10.0, allow_nan=False, allow_infinity=False)
sizes = st.integers(min_value=1, max_value=5000)
steps = st.integers(min_value=0, max_value=2**31 - 1)

SETTINGS = settings(max_examples=40, deadline=None)


def at(schedule, t):
    # Eager: each example builds a new schedule, and compiling each would be slow.
    return float(schedule(jnp.int32(t)))


def ordered(a, b):
    return (a, b) if a <= b else (b, a)


@SETTINGS
@given(rates, rates, sizes, sizes, steps)
def test_triangular_family_stays_within_bounds(a, b, up, down, t):
    base, top = ordered(a, b)
    for make in (clr_jax.triangular, clr_jax.triangular2):
        lr = at(make(base, top, up, step_size_down=down), t)
        assert base * (1 - 1e-6) <= lr <= top * (1 + 1e-6)


@SETTINGS
@given(rates, rates, sizes, sizes, st.integers(min_value=0, max_value=10**6),
       st.integers(min_value=1, max_value=50))
def test_triangular_is_periodic(a, b, up, down, t, k):
    base, top = ordered(a, b)
    s = clr_jax.triangular(base, top, up, step_size_down=down)
    assert math.isclose(at(s, t), at(s, t + k * (up + down)), rel_tol=1e-6)


@SETTINGS
@given(rates, rates, sizes, st.integers(min_value=1, max_value=20))
def test_triangular2_halves_its_amplitude_every_cycle(a, b, size, cycle):
    base, top = ordered(a, b)
    s = clr_jax.triangular2(base, top, size)
    peak = lambda c: at(s, (2 * c - 1) * size) - base  # noqa: E731 - cycle c's peak
    # float32 values: the difference from base carries ~1e-7 * top of rounding
    assert math.isclose(peak(cycle + 1), peak(cycle) / 2, rel_tol=1e-5, abs_tol=1e-6 * top)


@SETTINGS
@given(rates, rates, sizes, st.floats(min_value=0.9, max_value=1.0),
       st.sampled_from(["amplitude", "both"]))
def test_exp_range_envelope_decays(a, b, size, gamma, decay):
    base, top = ordered(a, b)
    s = clr_jax.exp_range(base, top, size, gamma, decay=decay)
    peaks = [at(s, (2 * c - 1) * size) for c in range(1, 6)]
    assert all(later <= earlier * (1 + 1e-6) for earlier, later in zip(peaks, peaks[1:]))


@SETTINGS
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), sizes, sizes, steps)
def test_momentum_moves_opposite_to_the_rate(a, b, up, down, t):
    low, high = ordered(a, b)
    lr = clr_jax.triangular(0.0, 1.0, up, step_size_down=down)
    mom = clr_jax.cyclical_momentum(low, high, up, step_size_down=down)
    # With the same wave s: momentum = high - (high - low) * s, rate = s.
    assert math.isclose(at(mom, t), high - (high - low) * at(lr, t), abs_tol=1e-6)


@SETTINGS
@given(rates, st.integers(min_value=10, max_value=10**6), st.floats(0.05, 0.95),
       st.floats(1.0, 100.0), st.floats(1.0, 1e5), st.booleans())
def test_one_cycle_start_peak_end(top, total, pct, div, final_div, three_phase):
    if three_phase:
        pct = pct / 2  # three phases need pct_start < 0.5
    s = clr_jax.one_cycle(top, total, pct_start=pct, div_factor=div,
                          final_div_factor=final_div, three_phase=three_phase)
    values = np.asarray(jax.vmap(s)(jnp.arange(0, total, max(1, total // 500))))
    # The warm-up ends at step pct * total - 1 (PyTorch's OneCycleLR): when that is
    # below 0 the warm-up is empty and step 0 is already on the way down.
    if pct * total >= 1:
        assert math.isclose(at(s, 0), top / div, rel_tol=1e-5)
    else:
        assert top / div / final_div * (1 - 1e-5) <= at(s, 0) <= top * (1 + 1e-5)
    assert values.max() <= top * (1 + 1e-5)
    assert math.isclose(at(s, total - 1), top / div / final_div, rel_tol=1e-4)
    assert math.isclose(at(s, 10 * total), top / div / final_div, rel_tol=1e-4)
