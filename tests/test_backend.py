"""How compiled loops are shaped: unrolled groups hold no loop, at any length."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clr_jax import _backend


def body(carry, x):
    return carry * 2.0 + x, carry - x


@pytest.mark.parametrize("length", [1, 2, 5])
def test_unrolled_scan_equals_lax_scan_and_holds_no_loop(length):
    xs = jnp.arange(length, dtype=jnp.float32)
    expected = jax.lax.scan(body, 1.0, xs)
    got = _backend.scan(body, 1.0, xs, unroll=True)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    text = jax.jit(lambda c, x: _backend.scan(body, c, x, unroll=True)).lower(1.0, xs).as_text()
    assert "while" not in text
    # lax.scan's own full unrolling keeps a one-trip loop at length 1: the reason for the helper
    rolled = jax.jit(lambda c, x: jax.lax.scan(body, c, x, unroll=True)).lower(1.0, xs).as_text()
    assert ("while" in rolled) == (length == 1)


def test_unrolled_scan_without_inputs_uses_length():
    carry, outs = _backend.scan(lambda c, _: (c + 1, c), 0, length=3, unroll=True)
    assert int(carry) == 3 and outs.tolist() == [0, 1, 2]
