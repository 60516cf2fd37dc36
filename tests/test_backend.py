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


def _written_out(body, carry, xs):
    """The unrolled group as it was first written: the body traced once per step."""
    outputs = []
    for i in range(len(xs)):
        carry, out = body(carry, xs[i])
        outputs.append(out)
    return carry, jnp.stack(outputs)


def test_unrolled_steps_trace_once_and_compute_exactly_the_written_out_loop():
    """The body is one nested function called once per step (traced and lowered once),
    and XLA's inlining makes the compiled result bit-identical to the body written out
    step by step: here four SGD steps of a small convolutional net."""
    kernel = jax.random.normal(jax.random.key(0), (3, 3, 3, 4)) * 0.3
    images = jax.random.normal(jax.random.key(1), (4, 8, 8, 3, 3))

    def loss(w, x):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.mean(jax.nn.relu(y) ** 2) + 1e-3 * jnp.sum(w * w)

    traces = []

    def step(w, x):
        traces.append(1)
        value, grad = jax.value_and_grad(loss)(w, x)
        return w - 0.1 * grad, value

    xs = jnp.moveaxis(images, 3, 0)  # 3 steps, each a batch of 4 images
    ours = jax.jit(lambda w, x: _backend.scan(step, w, x, unroll=True))
    text = ours.lower(kernel, xs).as_text()
    assert len(traces) == 1 and "while" not in text
    assert text.count("call @step(") == 3 and text.count("func.func private @step(") == 1
    reference = jax.jit(lambda w, x: _written_out(step, w, x))
    for got, expected in zip(ours(kernel, xs), reference(kernel, xs)):
        np.testing.assert_array_equal(got, expected)


def _conv_sgd_loop(conv, strides=(1, 1)):
    """Three SGD steps of a one-convolution net in a rolled ``lax.scan``: its jaxpr's
    gradient, and its optimized HLO's convolutions (one line each)."""
    kernel = jax.random.normal(jax.random.key(0), (5, 5, 3, 8)) * 0.1
    images = jax.random.normal(jax.random.key(1), (3, 4, 12, 12, 3))

    def loss(w, x):
        y = conv(x, w, strides, ((2, 2), (2, 2)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.mean(jax.nn.relu(y) ** 2)

    def step(w, x):
        return w - 0.1 * jax.grad(loss)(w, x), None

    grad_jaxpr = jax.make_jaxpr(jax.grad(loss))(kernel, images[0])
    text = jax.jit(lambda w, xs: jax.lax.scan(step, w, xs)[0]).lower(kernel, images) \
        .compile().as_text()
    return grad_jaxpr, [line for line in text.splitlines() if " convolution(" in line]


def test_conv_nhwc_gradients_are_loop_friendly_and_autodiffs_are_not():
    """The rule `group_size` applies: autodiff's kernel gradient of an NHWC convolution is
    a convolution in another layout, which XLA's CPU backend keeps in that layout inside
    a loop (where it ran ~15x slower); `kernels.conv_nhwc` writes its gradient as an
    NHWC convolution, which stays in the native b01f_01io->b01f form in the loop."""
    from clr_jax.harness.kernels import conv_nhwc

    plain_jaxpr, plain_hlo = _conv_sgd_loop(jax.lax.conv_general_dilated)
    ours_jaxpr, ours_hlo = _conv_sgd_loop(conv_nhwc)
    assert _backend.slow_in_loops(plain_jaxpr)
    assert not _backend.slow_in_loops(ours_jaxpr)
    assert ours_hlo and all("dim_labels=b01f_01io->b01f" in line for line in ours_hlo)
    if _backend.on_cpu():
        assert any("dim_labels=b01f_01io->b01f" not in line for line in plain_hlo)
    # a strided convolution is passed to lax unchanged, so its gradient unrolls
    assert _backend.slow_in_loops(_conv_sgd_loop(conv_nhwc, strides=(2, 2))[0])
    # the forward convolution alone, and a model without convolutions, are loop friendly
    x, w = jnp.zeros((2, 8, 8, 3)), jnp.zeros((3, 3, 3, 4))
    assert not _backend.slow_in_loops(jax.make_jaxpr(
        lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=(
            "NHWC", "HWIO", "NHWC")))(x, w))
    assert not _backend.slow_in_loops(jax.make_jaxpr(jax.grad(
        lambda w, x: jnp.sum(jnp.tanh(x @ w))))(jnp.ones((3, 2)), jnp.ones((4, 3))))


def test_group_size_unrolls_only_what_is_slow_in_loops():
    if not _backend.on_cpu():
        assert _backend.group_size(100, True) == (100, False)
        return
    assert _backend.group_size(100, True) == (10, True)
    assert _backend.group_size(48, True) == (16, True)
    assert _backend.group_size(100, False) == (100, False)
