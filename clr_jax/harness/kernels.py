"""The harness models' CPU speed work: faster kernels beside their `lax` references, and
the XLA compiler options per model.

A model takes ``kernels="auto" | "fast" | "lax"`` (`TrainConfig.kernels`, recorded in
every run's config.json): ``"fast"`` uses the kernels below and the compiler options of
`compiler_options`; ``"lax"`` the plain `jax.lax` formulations and XLA's defaults;
``"auto"`` (the default) means ``"fast"`` on CPU, where each was measured to help
(benchmarks/caffe_kernels_cpu.py, benchmarks/compiler_options_cpu.py), and ``"lax"``
elsewhere. The two agree up to float32 rounding (tests/test_kernels.py); gradients of
the fast kernels are exact adjoints, not approximations.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from clr_jax import _backend
from clr_jax import _validation as v

__all__ = [
    "KERNELS",
    "ceil_padding",
    "separable_window3x3",
    "LOOP_EMITTERS_MIN_STEPS",
    "YNN_REDUCE_ELTWISE",
    "YNN_REDUCTIONS_ONLY",
    "avg_pool_ceil",
    "compiler_options",
    "conv_nhwc",
    "conv_spectral",
    "forward_channel_multiple",
    "lrn_custom_gradient",
    "lrn_within_channel",
    "max_pool_ceil",
    "max_pool_ceil_fast",
    "NATIVE",
    "native_kernel",
    "resolve",
    "separable_max_pool_gradient",
]

KERNELS = ("auto", "fast", "lax")


def resolve(kernels: str) -> str:
    """``"fast"`` or ``"lax"``: ``"auto"`` is ``"fast"`` on CPU and ``"lax"`` elsewhere."""
    v.choice("kernels", kernels, KERNELS)
    if kernels == "auto":
        return "fast" if _backend.on_cpu() else "lax"
    return kernels


# -- pooling with Caffe's rounding up of the output size -----------------------------------

def ceil_padding(x: jax.Array) -> tuple[tuple[int, int], ...]:
    """Caffe's output size is ceil((H - 3) / 2) + 1 (32 -> 16 -> 8 -> 4): as if one extra
    row and column were padded at the high end."""
    h, w = x.shape[1], x.shape[2]
    return ((0, 0), (0, -(h - 3) % 2), (0, -(w - 3) % 2), (0, 0))


def max_pool_ceil(x: jax.Array) -> jax.Array:
    """3x3 stride-2 max pooling with Caffe's output size; the padding takes no part."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                 ceil_padding(x))


def _window3(x: jax.Array, axis: int, stride: int, pad: tuple[int, int], op, fill):
    """Along ``axis``: ``op`` of three neighbours (x padded with ``fill``), every
    ``stride``-th window: a window sum or max as two elementwise ops on shifted slices,
    which XLA fuses with their neighbours, where a ``reduce_window`` is a loop of its
    own (benchmarks/caffe_kernels_cpu.py)."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = pad
    x = jnp.pad(x, widths, constant_values=fill)
    n = (x.shape[axis] - 3) // stride + 1

    def shifted(k):
        return jax.lax.slice_in_dim(x, k, k + stride * (n - 1) + 1, stride, axis)

    return op(op(shifted(0), shifted(1)), shifted(2))


def separable_window3x3(x: jax.Array, stride: int, pads, op, fill) -> jax.Array:
    """A 3x3 window reduction (``op``: ``jnp.add``, ``jnp.maximum``) over H and W of NHWC
    ``x``, as two separable passes of shifted slices, with ``pads`` per axis (as
    `ceil_padding` gives them) filled with ``fill``; the fast form of
    ``jax.lax.reduce_window`` for Caffe's pooling and LRN windows."""
    return _window3(_window3(x, 1, stride, pads[1], op, fill), 2, stride, pads[2], op, fill)


def avg_pool_ceil(x: jax.Array, *, fast: bool = False) -> jax.Array:
    """3x3 stride-2 average pooling with Caffe's output size, dividing by the number of
    real pixels in each window; with ``fast`` the sums are separable shifted slices, or
    the native CPU kernel where `native_kernel` says so."""
    window, strides, padding = (1, 3, 3, 1), (1, 2, 2, 1), ceil_padding(x)
    if fast and x.dtype == jnp.float32 and native_kernel("avg_pool"):
        return _avg_pool_native(x, (x.shape[-3], x.shape[-2]))
    if fast:
        total = separable_window3x3(x, 2, padding, jnp.add, 0.0)
        # real pixels per window, a constant: 3 except where the window leaves the image
        rows, cols = (np.minimum(2 * np.arange(m) + 3, n) - 2 * np.arange(m)
                      for m, n in ((total.shape[1], x.shape[1]), (total.shape[2], x.shape[2])))
        count = (rows[:, None] * cols[None, :]).astype(x.dtype)[None, :, :, None]
        return total / count
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, padding)
    return total / count


def max_pool_ceil_fast(x: jax.Array) -> jax.Array:
    """`max_pool_ceil` whose gradient goes to the first maximum of each window (in
    row-major order, as Caffe's).

    Autodiff of ``reduce_window(max)`` tracks argmax indices through a variadic
    reduce_window, which XLA's CPU backend runs ~4x slower than the whole rest of the
    pooling (benchmarks/RESULTS.md). Where `native_kernel` says so, forward and
    gradient are the native CPU kernels (`clr_jax.harness.native`): the maxima with
    each window's first-maximum position, and the gradient placed by it in one pass.
    Otherwise the maxima come from separable shifted slices and the gradient is routed
    in one of two equal ways (`separable_max_pool_gradient`): through the 9 strided
    window slices, each masked by the windows before it, or in two separable passes,
    first to the first row of the window holding its maximum, then to that row's first
    maximal column (the same cell: the first maximum in row-major order).
    """
    if x.dtype == jnp.float32 and native_kernel("max_pool"):
        return _max_pool_native(x, (x.shape[-3], x.shape[-2]))
    return _max_pool_xla(x)


# The fast kernels that run as native CPU kernels (`clr_jax.harness.native`) where
# `native_kernel` says so.
NATIVE = ("max_pool", "avg_pool", "lrn")


_xla_forms_only = 0


@contextlib.contextmanager
def xla_forms():
    """Within it, `native_kernel` is False: sweeps trace their vmapped members so, since
    XLA's CPU backend then assigns a layout to the members' convolutions that its
    YNNPACK fusions refuse beside the native calls."""
    global _xla_forms_only
    _xla_forms_only += 1
    try:
        yield
    finally:
        _xla_forms_only -= 1


def native_kernel(name: str) -> bool:
    """Whether the fast kernel ``name`` (one of `NATIVE`: ``"max_pool"`` for
    `max_pool_ceil_fast`, ``"avg_pool"`` for `avg_pool_ceil`, ``"lrn"`` for
    `lrn_within_channel`) runs as a native CPU kernel: on a CPU with AVX-512, where they
    were measured faster (benchmarks/native_kernels_cpu.py), when they can be built
    there (`clr_jax.harness.native.available`); elsewhere, where they were not
    measured, the XLA forms stay."""
    from clr_jax.harness import native

    return (name in NATIVE and not _xla_forms_only and _backend.on_cpu()
            and _backend.cpu_has_avx512() and native.available())


def _pooled_size(size: tuple[int, int]) -> tuple[int, int]:
    return tuple((n - 3 + -(n - 3) % 2) // 2 + 1 for n in size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_native(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    return _max_pool_native_fwd(x, size)[0]


def _max_pool_native_fwd(x, size):
    from clr_jax.harness import native

    return native.max_pool(x, (3, 3), (2, 2), _pooled_size(size))


def _max_pool_native_bwd(size, index, g):
    from clr_jax.harness import native

    return (native.max_pool_gradient(index, g, (3, 3), (2, 2), size),)


_max_pool_native.defvjp(_max_pool_native_fwd, _max_pool_native_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _avg_pool_native(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    from clr_jax.harness import native

    return native.avg_pool(x, (3, 3), (2, 2), _pooled_size(size))


def _avg_pool_native_fwd(x, size):
    return _avg_pool_native(x, size), None


def _avg_pool_native_bwd(size, _, g):
    from clr_jax.harness import native

    return (native.avg_pool_gradient(g, (3, 3), (2, 2), size),)


_avg_pool_native.defvjp(_avg_pool_native_fwd, _avg_pool_native_bwd)


@jax.custom_vjp
def _max_pool_xla(x: jax.Array) -> jax.Array:
    return max_pool_ceil(x)


def separable_max_pool_gradient() -> bool:
    """Whether `max_pool_ceil_fast` routes its gradient in two separable passes: on a CPU
    with AVX-512, where it was measured faster (benchmarks/max_pool_gradient_cpu.py);
    elsewhere, where it was not measured, through the 9 masked window slices."""
    return _backend.on_cpu() and _backend.cpu_has_avx512()


def _max_pool_fwd(x):
    pads = ceil_padding(x)
    if separable_max_pool_gradient():
        # columns first, then rows: the same maxima; the column maxima are kept for
        # the backward pass's second stage
        columns = _window3(x, 2, 2, pads[2], jnp.maximum, -jnp.inf)
        y = _window3(columns, 1, 2, pads[1], jnp.maximum, -jnp.inf)
        return y, (x, columns, y)
    y = separable_window3x3(x, 2, pads, jnp.maximum, -jnp.inf)  # the same maxima
    return y, (x, y)


def _max_pool_bwd(residuals, g):
    if len(residuals) == 3:
        x, columns, y = residuals
        pads = ceil_padding(x)
        d_columns = _first_max_route(columns, y, g, 1, pads[1])
        return (_first_max_route(x, columns, d_columns, 2, pads[2]),)
    return (_masked_windows_route(*residuals, g),)


def _first_max_route(x: jax.Array, y: jax.Array, g: jax.Array, axis: int,
                     pad: tuple[int, int]) -> jax.Array:
    """The adjoint of ``y = _window3(x, axis, 2, pad, max)`` that sends each of ``g``'s
    entries to the first of its window's three entries equal to the maximum ``y``;
    ``pad`` is (0, extra), as `ceil_padding` gives it."""
    length, n = x.shape[axis], y.shape[axis]
    x = jnp.pad(x, [pad if a == axis else (0, 0) for a in range(x.ndim)],
                constant_values=-jnp.inf)
    first, second, third = (jax.lax.slice_in_dim(x, k, k + 2 * n - 1, 2, axis)
                            for k in range(3))
    at0 = first == y
    at1 = (second == y) & ~at0
    at2 = (third == y) & ~(at0 | at1)
    zero = jnp.zeros((), g.dtype)

    def place(at, low):  # window k's share at entry 2k + low, where that is in the input
        count = min(n, (length - 1 - low) // 2 + 1)
        shares = jax.lax.slice_in_dim(jnp.where(at, g, zero), 0, count, 1, axis)
        config = [(0, 0, 0)] * g.ndim
        config[axis] = (low, length - low - max(0, 2 * count - 1), 1)
        return jax.lax.pad(shares, zero, config)

    return place(at0, 0) + place(at1, 1) + place(at2, 2)


def _masked_windows_route(x: jax.Array, y: jax.Array, g: jax.Array) -> jax.Array:
    """The first-maximum routing through the 9 strided window slices, each masked by
    the windows before it, assembled by output parity."""
    n, h, w, c = x.shape
    oh, ow = y.shape[1], y.shape[2]
    hp, wp = 2 * oh + 1, 2 * ow + 1  # the padded extent the windows cover
    xp = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)), constant_values=-jnp.inf)
    taken = jnp.zeros(y.shape, bool)
    zero = jnp.zeros((), g.dtype)
    part = {}
    for i in range(3):
        for j in range(3):
            window = jax.lax.slice(xp, (0, i, j, 0), (n, i + 2 * oh - 1, j + 2 * ow - 1, c),
                                   (1, 2, 2, 1))
            first = (window == y) & ~taken
            taken = taken | first
            part[i, j] = jnp.where(first, g, zero)

    def at(a, down, right):  # (n, oh, ow, c) -> (n, oh + 1, ow + 1, c), shifted
        return jnp.pad(a, ((0, 0), (down, 1 - down), (right, 1 - right), (0, 0)))

    # Input row 2a receives from window row offsets 0 (window a) and 2 (window a - 1),
    # row 2a + 1 from offset 1 only; the same for columns. Assemble the four parities
    # and interleave them, instead of nine strided scatters over the whole input.
    even_even = at(part[0, 0], 0, 0) + at(part[2, 0], 1, 0) + at(part[0, 2], 0, 1) \
        + at(part[2, 2], 1, 1)
    even_odd = at(part[0, 1], 0, 0) + at(part[2, 1], 1, 0)
    odd_even = at(part[1, 0], 0, 0) + at(part[1, 2], 0, 1)
    odd_odd = at(part[1, 1], 0, 0)
    dx = jnp.stack([jnp.stack([even_even, even_odd], 3), jnp.stack([odd_even, odd_odd], 3)], 2)
    return dx.reshape(n, 2 * oh + 2, 2 * ow + 2, c)[:, :h, :w, :]


_max_pool_xla.defvjp(_max_pool_fwd, _max_pool_bwd)


# -- the 5x5 "same" convolution as a product of spectra ---------------------------------------

@functools.cache
def _dft_tables(h: int, w: int, kh: int, kw: int) -> tuple[np.ndarray, ...]:
    """Real matrices of the 2-D DFTs behind `conv_spectral`, in float64.

    Signals are zero-padded to L1 x L2 = (h + kh // 2) x (w + kw // 2): the smallest size
    at which the circular correlation agrees with the "same" one on the h x w outputs
    (a tap reaching kh // 2 rows past either edge lands on padding, not on the other
    edge). Only the F2 = L2 // 2 + 1 non-redundant columns of the real signal's spectrum
    are kept. A complex number travels as a (real, imaginary) axis of size 2, so every
    stage is one real matrix product.

    Returns:
      forward_w (w, 2, F2): real row -> half spectrum along w;
      forward_h (h, 2, L1, 2): complex, along h (input rows 0..h-1 only);
      inverse_h (L1, 2, h, 2): complex, along h (output rows 0..h-1 only);
      inverse_w (2, F2, w): half spectrum -> real row (weights of the Hermitian
        half, 1 / (L1 L2) included);
      phases (2, kh * kw, L1 * F2): the taps' phases; tap (d1, d2) of a "same"
        correlation sits at offset (d1 - kh // 2, d2 - kw // 2).
    """
    l1, l2 = h + kh // 2, w + kw // 2
    f2 = l2 // 2 + 1
    a = 2 * np.pi * np.outer(np.arange(w), np.arange(f2)) / l2
    forward_w = np.stack([np.cos(a), -np.sin(a)], 1)
    t = 2 * np.pi * np.outer(np.arange(h), np.arange(l1)) / l1
    cos, sin = np.cos(t), np.sin(t)
    forward_h = np.zeros((h, 2, l1, 2))
    forward_h[:, 0, :, 0], forward_h[:, 1, :, 0] = cos, sin  # (cos - i sin)(re + i im)
    forward_h[:, 1, :, 1], forward_h[:, 0, :, 1] = cos, -sin
    inverse_h = np.zeros((l1, 2, h, 2))
    inverse_h[:, 0, :, 0], inverse_h[:, 1, :, 0] = cos.T, -sin.T  # (cos + i sin)(re + i im)
    inverse_h[:, 0, :, 1], inverse_h[:, 1, :, 1] = sin.T, cos.T
    weight = np.full(f2, 2.0)
    weight[0] = 1.0
    if l2 % 2 == 0:
        weight[-1] = 1.0
    b = a.T  # (F2, w)
    inverse_w = np.stack([np.cos(b), -np.sin(b)], 0) * weight[:, None] / (l1 * l2)
    d1 = np.arange(kh)[:, None, None, None] - kh // 2
    d2 = np.arange(kw)[None, :, None, None] - kw // 2
    phase = 2 * np.pi * (np.arange(l1)[:, None] * d1 / l1 + np.arange(f2) * d2 / l2)
    phases = np.stack([np.cos(phase), np.sin(phase)]).reshape(2, kh * kw, l1 * f2)
    return forward_w, forward_h, inverse_h, inverse_w, phases


def _spectral_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    kh, kw, _, o = kernel.shape
    tables = [jnp.asarray(t, x.dtype) for t in _dft_tables(h, w, kh, kw)]
    forward_w, forward_h, inverse_h, inverse_w, phases = tables
    l1, f2 = forward_h.shape[2], forward_w.shape[2]
    spectrum = jnp.einsum("nhwc,wpf->nhpfc", x, forward_w)
    spectrum = jnp.einsum("nhpfc,hpgq->gfnqc", spectrum, forward_h).reshape(l1 * f2, n, 2 * c)
    k_re, k_im = jnp.einsum("sdf,dco->sfco", phases, kernel.reshape(kh * kw, c, o))
    # [re | im] @ [[Kre, Kim], [-Kim, Kre]] = [re Kre - im Kim | re Kim + im Kre]
    mix = jnp.concatenate([jnp.concatenate([k_re, k_im], 2),
                           jnp.concatenate([-k_im, k_re], 2)], 1)
    product = jnp.matmul(spectrum, mix).reshape(l1, f2, n, 2, o)
    rows = jnp.einsum("gfnpo,gphq->nhqfo", product, inverse_h)
    return jnp.einsum("nhqfo,qfw->nhwo", rows, inverse_w)


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, jax.lax.ConvDimensionNumbers):
        return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return tuple(dimension_numbers) == ("NHWC", "HWIO", "NHWC")


def conv_spectral(lhs: jax.Array, rhs: jax.Array, window_strides, padding, *,
                  lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                  feature_group_count: int = 1, precision=None, **kwargs: Any) -> jax.Array:
    """``jax.lax.conv_general_dilated`` for the "same" NHWC convolution with an odd
    kernel, computed as a product of spectra, every transform a matrix product; any
    other configuration goes to ``jax.lax.conv_general_dilated`` unchanged. Pass it as
    ``nnx.Conv(..., conv_general_dilated=conv_spectral)``.

    For the Caffe net's 5x5 layers with 32 input channels this is less than a third of
    the direct convolution's arithmetic (the channel mixing is one (2C x 2O) product per
    frequency), all of it in matrix products, which XLA's CPU backend runs far better
    than its convolutions of these shapes (benchmarks/RESULTS.md). JAX differentiates
    it: every stage is a real linear map, so the gradient is the exact adjoint of the
    convolution. Results differ from ``lax.conv`` by rounding (~2e-6 relative).
    """
    options = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                   dimension_numbers=dimension_numbers,
                   feature_group_count=feature_group_count, precision=precision, **kwargs)
    kh, kw = rhs.shape[0], rhs.shape[1]
    same = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    if not (_plain_nhwc(window_strides, options) and kh % 2 == 1 and kw % 2 == 1
            and not isinstance(padding, str)
            and tuple(tuple(p) for p in padding) == same):
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **options)
    return _spectral_same(lhs, rhs)


def _plain_nhwc(window_strides, options: dict) -> bool:
    """Unit strides, no dilation, one group, NHWC x HWIO -> NHWC and no other option set
    (``precision`` aside)."""
    return (tuple(window_strides) == (1, 1)
            and all(options[d] is None or tuple(options[d]) == (1, 1)
                    for d in ("lhs_dilation", "rhs_dilation"))
            and options["feature_group_count"] == 1
            and _is_nhwc(options["dimension_numbers"])
            and not any(value is not None for name, value in options.items()
                        if name not in ("lhs_dilation", "rhs_dilation", "dimension_numbers",
                                        "feature_group_count", "precision")))


def conv_nhwc(lhs: jax.Array, rhs: jax.Array, window_strides, padding, *,
              lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
              feature_group_count: int = 1, precision=None, **kwargs: Any) -> jax.Array:
    """``jax.lax.conv_general_dilated`` whose gradients are NHWC convolutions too.

    For an NHWC x HWIO -> NHWC convolution with unit strides, no dilation, one group and
    padding between 0 and the kernel's size - 1 on each side, the forward pass is the
    same ``lax`` convolution, and the custom VJP writes both gradients as convolutions of
    that same layout: the kernel's as the correlation of the input (channels as the
    batch, images as the features) with the output's cotangent, the input's as the
    correlation of the cotangent with the flipped, transposed kernel. Those are the
    forms XLA's CPU backend rewrites autodiff's own gradient convolutions into when they
    stand alone (so the values are the same), but inside a while loop (a rolled
    ``lax.scan`` of training steps) it does not, and conv1's kernel gradient there ran
    ~15x slower than the whole rest of the step (benchmarks/RESULTS.md, "Rolled
    loops"). Any other configuration goes to ``jax.lax.conv_general_dilated`` unchanged.
    Pass it as ``nnx.Conv(..., conv_general_dilated=conv_nhwc)``.

    On a CPU with AVX-512 the forward convolution pads the input channels with zeros
    to a multiple of 4 (`forward_channel_multiple`): YNNPACK, which runs it there, took
    ~3.7x as long for conv1's 3 input channels as for 4 (benchmarks/RESULTS.md, "Conv1
    with 3 input channels"). The zero channels add exact zeros, so the result is the
    same convolution, summed in another order.
    """
    options = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                   dimension_numbers=dimension_numbers,
                   feature_group_count=feature_group_count, precision=precision, **kwargs)
    kh, kw = rhs.shape[0], rhs.shape[1]
    pads = None if isinstance(padding, str) else tuple(tuple(int(q) for q in p) for p in padding)
    if not (_plain_nhwc(window_strides, options) and pads is not None and len(pads) == 2
            and all(0 <= q < k for (lo, hi), k in zip(pads, (kh, kw)) for q in (lo, hi))):
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **options)
    return _conv_nhwc(lhs, rhs, pads, precision)


def forward_channel_multiple() -> int:
    """The multiple `conv_nhwc`'s forward convolution pads its input channels to: 4 on a
    CPU with AVX-512, where it was measured faster (benchmarks/conv1_channels_cpu.py),
    1 (no padding) elsewhere, where it was not measured."""
    return 4 if _backend.on_cpu() and _backend.cpu_has_avx512() else 1


def _nhwc(x, w, padding, precision, channel_multiple: int = 1):
    extra = -x.shape[-1] % channel_multiple
    if extra:  # zero channels in the input and the kernel: exact zeros in every sum
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
        w = jnp.pad(w, ((0, 0), (0, 0), (0, extra), (0, 0)))
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, precision=precision,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_nhwc(x, w, padding, precision):
    return _nhwc(x, w, padding, precision, forward_channel_multiple())


def _conv_nhwc_fwd(x, w, padding, precision):
    return _nhwc(x, w, padding, precision, forward_channel_multiple()), (x, w)


def _conv_nhwc_bwd(padding, precision, residuals, g):
    x, w = residuals
    kh, kw = w.shape[0], w.shape[1]
    # d/dx: the cotangent correlated with the kernel flipped in space, in and out swapped
    flipped = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
    back = tuple((k - 1 - lo, k - 1 - hi) for (lo, hi), k in zip(padding, (kh, kw)))
    dx = _nhwc(g, flipped, back, precision)
    # d/dw: (C, H, W, N) correlated with (H', W', N, O) -> (C, kh, kw, O)
    dw = _nhwc(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), padding,
               precision)
    return dx, jnp.transpose(dw, (1, 2, 0, 3))


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


# -- local response normalisation ----------------------------------------------------------

def lrn_within_channel(x: jax.Array, alpha: float = 5e-5, beta: float = 0.75, *,
                       fast: bool = False) -> jax.Array:
    """Caffe's WITHIN_CHANNEL LRN, local size 3: x * (1 + alpha/9 * sum_3x3 x^2)^-beta.

    With ``fast`` the window sums are separable shifted slices, and for the usual beta =
    0.75 the power is rsqrt(s) * sqrt(rsqrt(s)): two square roots instead of an
    exponential and a logarithm, forward and backward; equal to the power up to
    rounding. Where `native_kernel` says so, the fast form is the native CPU kernel
    (the same square roots, its gradient written out as in `_lrn_fast`); else, where
    `lrn_custom_gradient` says so, the fast form's gradient is written out
    (`_lrn_fast`): the same gradient up to rounding.
    """
    if fast and x.dtype == jnp.float32 and native_kernel("lrn"):
        return _lrn_native(x, float(alpha), float(beta))
    if fast and lrn_custom_gradient():
        return _lrn_fast(x, float(alpha), float(beta))
    scale = _lrn_scale(x, alpha) if fast else 1 + (alpha / 9) * jax.lax.reduce_window(
        x * x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), _SAME3)
    return x * _lrn_power(scale, beta, fast)


_SAME3 = ((0, 0), (1, 1), (1, 1), (0, 0))


def _lrn_power(scale: jax.Array, beta: float, fast: bool) -> jax.Array:
    if fast and beta == 0.75:
        inverse_root = jax.lax.rsqrt(scale)
        return inverse_root * jnp.sqrt(inverse_root)
    return scale ** -beta


def lrn_custom_gradient() -> bool:
    """Whether the fast `lrn_within_channel` uses its written-out gradient (`_lrn_fast`)
    instead of JAX's derivative of its forward pass: not yet anywhere. On the AVX-512
    machine the written gradient made the Caffe net's norm1 (forward and gradient)
    0.77-0.84x as long, but the whole training step not measurably shorter (0.99-1.01x,
    within that machine's noise; benchmarks/lrn_gradient_cpu.py), so the programs, their
    fingerprints and the published numbers stay as they are until a quieter measurement
    shows the step's gain."""
    return False


def _lrn_scale(x: jax.Array, alpha: float) -> jax.Array:
    return 1 + (alpha / 9) * separable_window3x3(x * x, 1, _SAME3, jnp.add, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _lrn_fast(x: jax.Array, alpha: float, beta: float) -> jax.Array:
    """The fast LRN with its gradient written out. With s = 1 + alpha/9 W(x^2) (W the
    3x3 window sum, which is its own adjoint) and y = x s^-beta:
    dx = g s^-beta - (2 alpha beta / 9) x W(g y / s): one more window sum of the same
    shifted slices as the forward pass, where autodiff transposes each slice into a pad
    and adds the pads."""
    return x * _lrn_power(_lrn_scale(x, alpha), beta, True)


def _lrn_fast_fwd(x, alpha, beta):
    scale = _lrn_scale(x, alpha)
    return x * _lrn_power(scale, beta, True), (x, scale)


def _lrn_fast_bwd(alpha, beta, residuals, g):
    x, scale = residuals
    power = _lrn_power(scale, beta, True)
    window = separable_window3x3(g * (x * power) / scale, 1, _SAME3, jnp.add, 0.0)
    return (g * power - (2 * alpha * beta / 9) * x * window,)


_lrn_fast.defvjp(_lrn_fast_fwd, _lrn_fast_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _lrn_native(x: jax.Array, alpha: float, beta: float) -> jax.Array:
    from clr_jax.harness import native

    return native.lrn(x, alpha, beta)


def _lrn_native_fwd(x, alpha, beta):
    return _lrn_native(x, alpha, beta), x


def _lrn_native_bwd(alpha, beta, x, g):
    from clr_jax.harness import native

    return (native.lrn_gradient(x, g, alpha, beta),)


_lrn_native.defvjp(_lrn_native_fwd, _lrn_native_bwd)


# -- XLA compiler options -----------------------------------------------------------------

# Runs at least this long may compile with XLA's older loop emitters
# (``xla_cpu_use_fusion_emitters=False``), which take about three times as long to compile
# a 16-step group. With elementwise fusions in YNNPACK (below) they no longer make any
# model's step faster, so no model uses them now (benchmarks/compiler_options_cpu.py).
LOOP_EMITTERS_MIN_STEPS = 4000

# XLA's CPU backend hands convolutions, matrix products and reductions to YNNPACK by
# default. In this jaxlib YNNPACK runs the convolutions and small products of these nets
# on one thread (benchmarks/cpu_threads.py), so the convolutional nets keep them in XLA's
# own (Eigen) kernels, which use every core, and give YNNPACK the reductions and the
# elementwise fusions (pooling, LRN, ReLU, the update): benchmarks/xla_cpu_leads.py.
YNN_REDUCTIONS_ONLY = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
YNN_REDUCE_ELTWISE = {"xla_cpu_experimental_ynn_fusion_type":
                      "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_ELTWISE"}

# Per model name: (its YNNPACK fusions, use the loop emitters for long runs).
_CPU_OPTIONS = {"caffe_cifar10": (YNN_REDUCE_ELTWISE, False),
                "resnet20": (YNN_REDUCE_ELTWISE, False),
                "resnet56": (YNN_REDUCE_ELTWISE, False), "mlp": ({}, False)}


def compiler_options(model: str, kernels: str = "auto",
                     num_steps: int | None = None) -> dict[str, Any] | None:
    """XLA compiler options for the compiled steps of model ``model`` (a `build_model`
    name), or None for XLA's defaults.

    Only with fast kernels on CPU: the convolutional nets (the Caffe net, the ResNets)
    give YNNPACK only the reductions and the elementwise fusions (`YNN_REDUCE_ELTWISE`):
    one training step of the Caffe net takes ~0.55 of the time with XLA's defaults,
    ResNet-20's ~0.46, against ~0.62 and ~0.57 with reductions alone; the MLP, all
    matrix products, keeps the defaults. The older loop emitters, once used by the Caffe
    net for runs of at least `LOOP_EMITTERS_MIN_STEPS` steps, no longer make any step
    faster and take three times as long to compile (benchmarks/compiler_options_cpu.py,
    benchmarks/xla_cpu_leads.py). The losses agree to rounding (tests/test_kernels.py).
    """
    if resolve(kernels) != "fast" or not _backend.on_cpu():
        return None
    ynn_fusions, loop_emitters = _CPU_OPTIONS.get(model, ({}, False))
    options: dict[str, Any] = dict(ynn_fusions)
    if loop_emitters and (num_steps is None or num_steps >= LOOP_EMITTERS_MIN_STEPS):
        options["xla_cpu_use_fusion_emitters"] = False
    return options or None
