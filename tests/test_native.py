"""The native CPU kernels (C++ XLA FFI handlers) against NumPy loops, under jit, vmap and
a rolled loop; their build cache and errors."""

import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clr_jax.harness import native

pytestmark = pytest.mark.skipif(native.compiler() is None,
                                reason="the native kernels need a C++ compiler")


@pytest.fixture(scope="module", autouse=True)
def built():
    if not native.available():
        pytest.fail("a C++ compiler is here but the native kernels did not build")


def pooled(size, k, s):
    """Output size with every window starting inside the input (Caffe's rounding up)."""
    return -(-(size - k) // s) + 1 if size > k else 1


def reference(x, window, strides, out):
    """Maxima, first-maximum positions (row-major within the window) and the routing's
    adjoint, window by window, in NumPy."""
    (kh, kw), (sh, sw) = window, strides
    lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
    y = np.empty((*lead, *out, c), x.dtype)
    index = np.empty(y.shape, np.int8)
    for *b, a, bb, ch in np.ndindex(*y.shape):
        cells = [(i, j) for i in range(kh) for j in range(kw)
                 if a * sh + i < h and bb * sw + j < w]
        values = np.array([x[(*b, a * sh + i, bb * sw + j, ch)] for i, j in cells])
        first = int(np.argmax(values))  # the first maximum; a NaN wins (NumPy's argmax)
        y[(*b, a, bb, ch)] = values[first]
        index[(*b, a, bb, ch)] = cells[first][0] * kw + cells[first][1]
    return y, index


def scatter(index, g, window, strides, size):
    kw, (sh, sw) = window[1], strides
    dx = np.zeros((*g.shape[:-3], *size, g.shape[-1]), np.float64)
    for *b, a, bb, ch in np.ndindex(*g.shape):
        i, j = divmod(int(index[(*b, a, bb, ch)]), kw)
        dx[(*b, a * sh + i, bb * sw + j, ch)] += g[(*b, a, bb, ch)]
    return dx


CASES = [((2, 9, 9, 5), (3, 3), (2, 2)), ((1, 32, 32, 32), (3, 3), (2, 2)),
         ((3, 8, 5, 3), (3, 3), (2, 2)), ((2, 7, 6, 4), (2, 2), (2, 2)),
         ((2, 6, 7, 3), (3, 2), (1, 2)), ((1, 5, 5, 17), (5, 5), (3, 3)),
         ((2, 3, 4, 1), (3, 3), (2, 2)), ((4, 4, 3), (2, 3), (1, 1))]


@pytest.mark.parametrize("shape, window, strides", CASES)
def test_max_pool_and_gradient_equal_loops(shape, window, strides):
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(0, 4, shape).astype(np.float32)  # many ties
    out = tuple(pooled(n, k, s) for n, k, s in zip(shape[-3:-1], window, strides))
    y, index = jax.jit(native.max_pool, static_argnums=(1, 2, 3))(jnp.asarray(x), window,
                                                                   strides, out)
    want_y, want_index = reference(x, window, strides, out)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(index, want_index)
    g = rng.normal(size=want_y.shape).astype(np.float32)
    dx = jax.jit(native.max_pool_gradient, static_argnums=(2, 3, 4))(
        index, jnp.asarray(g), window, strides, shape[-3:-1])
    np.testing.assert_allclose(dx, scatter(want_index, g, window, strides, shape[-3:-1]),
                               rtol=1e-6, atol=1e-6)


def test_gradient_sums_shares_in_window_order():
    """A cell shared by four windows gets their shares added in the windows' row-major
    order, from zero: in float32, 1e8 + 1 - 1e8 + 1 is 1 that way (and 2 or 0 in others)."""
    x = np.zeros((1, 5, 5, 1), np.float32)
    x[0, 2, 2, 0] = 1.0  # the maximum of all four 3x3 windows (stride 2)
    _, index = native.max_pool(jnp.asarray(x), (3, 3), (2, 2), (2, 2))
    g = np.array([1e8, 1.0, -1e8, 1.0], np.float32).reshape(1, 2, 2, 1)
    dx = np.asarray(native.max_pool_gradient(index, jnp.asarray(g), (3, 3), (2, 2), (5, 5)))
    want = np.float32(0)
    for share in g.ravel():
        want = np.float32(want + share)
    assert dx[0, 2, 2, 0] == want == 1.0
    assert np.count_nonzero(dx) == 1


def test_nan_and_infinities():
    x = np.full((1, 3, 3, 4), -np.inf, np.float32)
    x[0, 1, 1, 1] = np.nan
    x[0, 2, 0, 1] = 5.0  # after the NaN: the NaN stays the maximum
    x[0, 0, 0, 2] = np.nan
    x[0, :, :, 3] = np.inf
    y, index = native.max_pool(jnp.asarray(x), (3, 3), (2, 2), (1, 1))
    y, index = np.asarray(y)[0, 0, 0], np.asarray(index)[0, 0, 0]
    assert y[0] == -np.inf and index[0] == 0  # all -inf: the first entry
    assert np.isnan(y[1]) and index[1] == 4
    assert np.isnan(y[2]) and index[2] == 0
    assert y[3] == np.inf and index[3] == 0
    jax_max = jax.lax.reduce_window(jnp.asarray(x), -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                                    (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(np.isnan(jax_max[0, 0, 0]), np.isnan(y))


def test_vmap_and_rolled_loop_equal_the_members():
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(3, 2, 9, 7, 4)).astype(np.float32))
    gs = jnp.asarray(rng.normal(size=(3, 2, 4, 3, 4)).astype(np.float32))

    def step(x, g):
        y, index = native.max_pool(x, (3, 3), (2, 2), (4, 3))
        return y, native.max_pool_gradient(index, g, (3, 3), (2, 2), (9, 7))

    batched = jax.jit(jax.vmap(step))(xs, gs)
    members = [step(x, g) for x, g in zip(xs, gs)]
    for got, want in zip(batched, zip(*members)):
        np.testing.assert_array_equal(got, np.stack(want))
    # one operand batched, the other shared
    shared = jax.vmap(step, in_axes=(None, 0))(xs[0], gs)
    np.testing.assert_array_equal(shared[1][1], step(xs[0], gs[1])[1])

    def body(carry, xg):
        y, dx = step(*xg)
        return carry + y.sum() + dx.sum(), dx

    total, dxs = jax.jit(lambda: jax.lax.scan(body, 0.0, (xs, gs)))()
    np.testing.assert_array_equal(dxs, batched[1])


def test_errors_name_the_problem():
    x = jnp.zeros((1, 6, 6, 2))
    with pytest.raises(ValueError, match="float32"):
        native.max_pool(x.astype(jnp.float16), (3, 3), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="must start inside"):
        native.max_pool(x, (3, 3), (2, 2), (4, 2))
    with pytest.raises(ValueError, match="at most 127"):
        native.max_pool(x, (12, 12), (1, 1), (1, 1))
    y, index = native.max_pool(x, (3, 3), (2, 2), (3, 3))
    with pytest.raises(ValueError, match="int8"):
        native.max_pool_gradient(index.astype(jnp.int32), y, (3, 3), (2, 2), (6, 6))


def test_build_is_cached_and_compiler_failures_are_reported(tmp_path, monkeypatch):
    first = native.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert native.build(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".part"] == []
    # a compiler that fails: the error carries its message, nothing is left behind
    fake = tmp_path / "broken-c++"
    fake.write_text("#!/bin/sh\necho 'broken compiler: no luck' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    with pytest.raises(native.NativeBuildError, match="no luck"):
        native.build(tmp_path / "other")
    assert not any((tmp_path / "other").glob("*.so*"))
    monkeypatch.setenv("CXX", str(tmp_path / "missing-c++"))
    with pytest.raises(native.NativeBuildError, match="no C\\+\\+ compiler"):
        native.build(tmp_path / "other")


@pytest.mark.parametrize("setting, expected", [("0", False), ("off", False), ("1", True)])
def test_the_switch_and_a_failed_build(tmp_path, setting, expected):
    """In a fresh process: CLR_JAX_NATIVE=0 turns the kernels off; a compiler that fails
    warns once and leaves them off."""
    env = {**os.environ, "CLR_JAX_NATIVE": setting, "CLR_JAX_CACHE": str(tmp_path),
           "JAX_PLATFORMS": "cpu"}
    code = "from clr_jax.harness import native; print(native.available())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == str(expected)
    if not expected:
        return
    fake = tmp_path / "broken-c++"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    done = subprocess.run([sys.executable, "-W", "always", "-c", code],
                          env={**env, "CXX": str(fake), "CLR_JAX_NATIVE": "1"},
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert "native CPU kernels are not used" in done.stderr


def test_chunks_do_not_change_results():
    """Batches of 1 to 9 images (one chunk each up to several per thread) give every
    image the same result as alone."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(9, 11, 10, 6)).astype(np.float32))
    g = jnp.asarray(rng.normal(size=(9, 5, 5, 6)).astype(np.float32))
    alone = [native.max_pool_gradient(native.max_pool(x[i:i + 1], (3, 3), (2, 2), (5, 5))[1],
                                      g[i:i + 1], (3, 3), (2, 2), (11, 10)) for i in range(9)]
    for n in itertools.chain(range(1, 4), [9]):
        index = native.max_pool(x[:n], (3, 3), (2, 2), (5, 5))[1]
        together = native.max_pool_gradient(index, g[:n], (3, 3), (2, 2), (11, 10))
        np.testing.assert_array_equal(together, np.concatenate(alone[:n]))


@pytest.mark.parametrize("shape, window, strides", CASES)
def test_avg_pool_and_gradient_equal_loops(shape, window, strides):
    """Each window's sum over its entries inside the input, divided by their number;
    the gradient gives each entry its windows' shares."""
    (kh, kw), (sh, sw) = window, strides
    rng = np.random.default_rng(sum(shape) + 1)
    x = rng.normal(size=shape).astype(np.float32)
    h, w = shape[-3:-1]
    out = tuple(pooled(n, k, s) for n, k, s in zip((h, w), window, strides))
    y = np.asarray(native.avg_pool(jnp.asarray(x), window, strides, out))
    g = rng.normal(size=y.shape).astype(np.float32)
    dx = np.asarray(native.avg_pool_gradient(jnp.asarray(g), window, strides, (h, w)))
    want_y, want_dx = np.zeros(y.shape), np.zeros(x.shape)
    for *b, a, bb in np.ndindex(*y.shape[:-1]):
        rows = slice(a * sh, min(a * sh + kh, h))
        cols = slice(bb * sw, min(bb * sw + kw, w))
        count = (rows.stop - rows.start) * (cols.stop - cols.start)
        want_y[(*b, a, bb)] = x[(*b, rows, cols)].astype(np.float64).sum((0, 1)) / count
        want_dx[(*b, rows, cols)] += g[(*b, a, bb)] / count
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha, beta, size", [(5e-5, 0.75, 3), (0.3, 0.75, 3),
                                               (0.5, 0.6, 3), (0.2, 0.75, 5), (1.0, 0.5, 1)])
def test_lrn_and_gradient_equal_float64_references(alpha, beta, size):
    """Forward against the formula in float64 NumPy; gradient against JAX's float64
    derivative of a reduce_window form, with alphas large enough that the window term
    of the gradient matters."""
    rng = np.random.default_rng(size)
    x = (rng.normal(size=(2, 7, 9, 5)) * 3).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    r = size // 2
    x64 = x.astype(np.float64)
    padded = np.pad(x64 ** 2, ((0, 0), (r, r), (r, r), (0, 0)))
    sums = sum(padded[:, i:i + 7, j:j + 9] for i in range(size) for j in range(size))
    want = x64 * (1 + alpha / size ** 2 * sums) ** -beta
    np.testing.assert_allclose(native.lrn(jnp.asarray(x), alpha, beta, size), want,
                               rtol=2e-6, atol=1e-7)
    with jax.enable_x64(True):
        def lrn64(x):
            window = jax.lax.reduce_window(x * x, 0.0, jax.lax.add, (1, size, size, 1),
                                           (1, 1, 1, 1), ((0, 0), (r, r), (r, r), (0, 0)))
            return x * (1 + alpha / size ** 2 * window) ** -beta
        want_dx = np.asarray(jax.vjp(lrn64, jnp.asarray(x64))[1](jnp.asarray(g, jnp.float64))[0])
    dx = np.asarray(native.lrn_gradient(jnp.asarray(x), jnp.asarray(g), alpha, beta, size))
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5 * np.abs(want_dx).max())
    with pytest.raises(ValueError, match="odd"):
        native.lrn(jnp.asarray(x), alpha, beta, 4)
    with pytest.raises(ValueError, match="shape"):
        native.lrn_gradient(jnp.asarray(x), jnp.asarray(g[:1]), alpha, beta, size)


def test_layers_under_vmap_equal_the_members():
    rng = np.random.default_rng(2)
    xs = jnp.asarray(rng.normal(size=(3, 2, 9, 8, 4)).astype(np.float32))
    gs = jnp.asarray(rng.normal(size=(3, 2, 4, 4, 4)).astype(np.float32))

    def step(x, g):
        y = native.avg_pool(native.lrn(x, 0.3, 0.75), (3, 3), (2, 2), (4, 4))
        return y, native.lrn_gradient(x, native.avg_pool_gradient(g, (3, 3), (2, 2), (9, 8)),
                                      0.3, 0.75)

    batched = jax.jit(jax.vmap(step))(xs, gs)
    for got, want in zip(batched, zip(*[step(x, g) for x, g in zip(xs, gs)])):
        np.testing.assert_array_equal(got, np.stack(want))
