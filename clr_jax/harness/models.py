"""Models for the harness, in Flax NNX: the paper's Caffe CIFAR-10 net, CIFAR ResNets, an MLP.

All take NHWC float images and return logits. `build_model` makes one by name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clr_jax import _validation as v

__all__ = ["MODELS", "MLP", "YNN_REDUCTIONS_ONLY", "CaffeCifar10", "CifarResNet", "build_model",
           "compiler_options"]


# The faster CPU kernels of the Caffe net and the compiler settings of the convolutional
# nets (each measured in benchmarks/caffe_kernels_cpu.py and
# benchmarks/compiler_options_cpu.py); switching one off gives the plain `lax`
# formulation (or XLA's default compilation), for tests and benchmarks.
FAST_KERNELS = {"max_pool": True, "conv_spectral": True, "lrn_sqrt": True,
                "ynn_reductions_only": True, "loop_emitters": True}


def _pool_ceil(x: jax.Array, kind: str) -> jax.Array:
    """3x3 stride-2 pooling with Caffe's rounding up of the output size.

    Caffe's output size is ceil((H - 3) / 2) + 1 (32 -> 16 -> 8 -> 4): as if one extra
    row and column were padded at the high end. That padding takes no part in the max,
    and the average divides by the number of real pixels in the window.
    """
    h, w = x.shape[1], x.shape[2]
    pad_h = (-(h - 3) % 2)
    pad_w = (-(w - 3) % 2)
    padding = ((0, 0), (0, pad_h), (0, pad_w), (0, 0))
    window, strides = (1, 3, 3, 1), (1, 2, 2, 1)
    if kind == "max":
        return _max_pool_ceil(x) if FAST_KERNELS["max_pool"] else _reduce_max(x)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)
    ones = jnp.ones((1, h, w, 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, padding)
    return total / count


@jax.custom_vjp
def _max_pool_ceil(x: jax.Array) -> jax.Array:
    """`_pool_ceil(x, "max")` whose gradient goes to the first maximum of each window
    (in row-major order, as Caffe's), computed from 9 strided slices.

    Autodiff of ``reduce_window(max)`` tracks argmax indices through a variadic
    reduce_window, which XLA's CPU backend runs ~4x slower than the whole rest of the
    pooling (benchmarks/RESULTS.md).
    """
    return _reduce_max(x)


def _reduce_max(x):
    h, w = x.shape[1], x.shape[2]
    padding = ((0, 0), (0, -(h - 3) % 2), (0, -(w - 3) % 2), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), padding)


def _max_pool_fwd(x):
    y = _reduce_max(x)
    return y, (x, y)


def _max_pool_bwd(residuals, g):
    x, y = residuals
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
    return (dx.reshape(n, 2 * oh + 2, 2 * ow + 2, c)[:, :h, :w, :],)


_max_pool_ceil.defvjp(_max_pool_fwd, _max_pool_bwd)


def _conv_same(x, kernel):
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((ph, ph), (pw, pw)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.lru_cache(maxsize=None)
def _dft_tables(h: int, w: int, kh: int, kw: int) -> tuple[np.ndarray, ...]:
    """Real matrices of the 2-D DFTs behind `_conv_spectral`, in float64.

    Signals are zero-padded to L1 x L2 = (h + kh // 2) x (w + kw // 2): the smallest size
    at which the circular correlation agrees with the "same" one on the h x w outputs
    (a tap reaching kh // 2 rows past either edge lands on padding, not on the other
    edge). Only the F2 = L2 // 2 + 1 non-redundant columns of the real signal's spectrum
    are kept. A complex number travels as a (real, imaginary)
    axis of size 2, so every stage is one real matrix product.

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


def _conv_spectral(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`_conv_same` computed as a product of spectra, every transform a matrix product.

    For the Caffe net's 5x5 layers with 32 input channels this is less than a third of
    the direct convolution's arithmetic (the channel mixing is one (2C x 2O) product per
    frequency), all of it in matrix products, which XLA's CPU backend runs far better
    than its convolutions of these shapes: alone, it takes the training step to ~0.73 of
    the plain step time (benchmarks/RESULTS.md). JAX differentiates it: every stage
    is a real linear map, so the gradient is the exact adjoint of the convolution.
    Results differ from `lax.conv` by rounding (~2e-6 relative).
    """
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


class _CaffeConv(nnx.Conv):
    """``nnx.Conv`` (5x5, stride 1, padding 2) whose layers with more than 4 input
    channels go through `_conv_spectral` on CPU (`FAST_KERNELS`). Same parameters, same
    values up to rounding."""

    def __call__(self, x):
        if (jax.default_backend() != "cpu" or self.in_features <= 4
                or not FAST_KERNELS["conv_spectral"]):
            return super().__call__(x)
        return _conv_spectral(x, self.kernel[...]) + self.bias[...].reshape(1, 1, 1, -1)


def _lrn_within_channel(x: jax.Array, alpha: float = 5e-5, beta: float = 0.75) -> jax.Array:
    """Caffe's WITHIN_CHANNEL LRN, local size 3: x * (1 + alpha/9 * sum_3x3 x^2)^-beta.

    For the usual beta = 0.75 the power is rsqrt(s) * sqrt(rsqrt(s)) (`FAST_KERNELS`
    "lrn_sqrt"): two square roots instead of an exponential and a logarithm, forward and
    backward; equal to the power up to rounding.
    """
    squares = jax.lax.reduce_window(x * x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1),
                                    ((0, 0), (1, 1), (1, 1), (0, 0)))
    scale = 1 + (alpha / 9) * squares
    if beta == 0.75 and FAST_KERNELS["lrn_sqrt"]:
        inverse_root = jax.lax.rsqrt(scale)
        return x * (inverse_root * jnp.sqrt(inverse_root))
    return x * scale ** -beta


class CaffeCifar10(nnx.Module):
    """Caffe's "cifar10_full" network, as in the paper (89,578 parameters).

    conv1 5x5x32 (std 1e-4) - max pool 3/2 - ReLU - LRN - conv2 5x5x32 (std 0.01) -
    ReLU - avg pool 3/2 - LRN - conv3 5x5x64 (std 0.01) - ReLU - avg pool 3/2 -
    ip1 10 (std 0.01); biases start at 0; pooling rounds the output size up.
    """

    def __init__(self, num_classes: int = 10, *, in_channels: int = 3, rngs: nnx.Rngs):
        def conv(cin, cout, std):
            return _CaffeConv(cin, cout, (5, 5), padding=((2, 2), (2, 2)),
                            kernel_init=nnx.initializers.normal(std),
                            bias_init=nnx.initializers.zeros_init(), rngs=rngs)

        self.conv1 = conv(in_channels, 32, 1e-4)
        self.conv2 = conv(32, 32, 0.01)
        self.conv3 = conv(32, 64, 0.01)
        self.ip1 = nnx.Linear(4 * 4 * 64, num_classes,
                              kernel_init=nnx.initializers.normal(0.01),
                              bias_init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _lrn_within_channel(jax.nn.relu(_pool_ceil(self.conv1(x), "max")))
        x = _lrn_within_channel(_pool_ceil(jax.nn.relu(self.conv2(x)), "avg"))
        x = _pool_ceil(jax.nn.relu(self.conv3(x)), "avg")
        return self.ip1(x.reshape(x.shape[0], -1))


# Caffe's per-parameter (lr_mult, decay_mult) for CaffeCifar10, by module and kind.
CAFFE_MULTIPLIERS = {
    ("conv1", "kernel"): (1.0, 1.0), ("conv1", "bias"): (2.0, 1.0),
    ("conv2", "kernel"): (1.0, 1.0), ("conv2", "bias"): (2.0, 1.0),
    ("conv3", "kernel"): (1.0, 1.0), ("conv3", "bias"): (1.0, 1.0),
    ("ip1", "kernel"): (1.0, 250.0), ("ip1", "bias"): (2.0, 0.0),
}


class _BasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.he_normal()
        self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding=1, use_bias=False,
                              kernel_init=init, rngs=rngs)
        self.bn1 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding=1, use_bias=False,
                              kernel_init=init, rngs=rngs)
        self.bn2 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        self.stride, self.extra = stride, cout - cin

    def __call__(self, x):
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x[:, :: self.stride, :: self.stride, :]
        if self.extra:  # option A: identity with zero-padded channels
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (0, self.extra)))
        return jax.nn.relu(y + shortcut)


class CifarResNet(nnx.Module):
    """The CIFAR ResNet of He et al. (2016): 6n + 2 layers, widths 16-32-64.

    ``depth=20`` (n = 3) and ``depth=56`` (n = 9) are the paper's Table 4 networks
    (ResNet-20: 0.27M parameters). Identity shortcuts with zero padding (option A).
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, *, in_channels: int = 3,
                 rngs: nnx.Rngs):
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}.")
        n = (depth - 2) // 6
        self.conv = nnx.Conv(in_channels, 16, (3, 3), padding=1, use_bias=False,
                             kernel_init=nnx.initializers.he_normal(), rngs=rngs)
        self.bn = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        blocks, cin = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(_BasicBlock(cin, width, 2 if stage and not i else 1, rngs=rngs))
                cin = width
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(64, num_classes, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.bn(self.conv(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))


class MLP(nnx.Module):
    """Flatten - Dense(hidden) - ReLU - Dense(num_classes)."""

    def __init__(self, num_classes: int = 10, *, in_features: int = 3072, hidden: int = 256,
                 rngs: nnx.Rngs):
        self.hidden = nnx.Linear(in_features, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1))))


MODELS: dict[str, Callable[..., nnx.Module]] = {
    "caffe_cifar10": lambda num_classes, shape, rngs: CaffeCifar10(
        num_classes, in_channels=shape[-1], rngs=rngs),
    "resnet20": lambda num_classes, shape, rngs: CifarResNet(
        20, num_classes, in_channels=shape[-1], rngs=rngs),
    "resnet56": lambda num_classes, shape, rngs: CifarResNet(
        56, num_classes, in_channels=shape[-1], rngs=rngs),
    "mlp": lambda num_classes, shape, rngs: MLP(
        num_classes, in_features=shape[0] * shape[1] * shape[2], rngs=rngs),
}


# Runs shorter than this keep XLA's default emitters: the loop emitters take about three
# times as long to compile a 16-step group, which the faster steps pay back only after
# about 3,500 steps (benchmarks/compiler_options_cpu.py).
LOOP_EMITTERS_MIN_STEPS = 4000

# XLA's CPU backend hands convolutions, matrix products and reductions to YNNPACK by
# default. In this jaxlib YNNPACK runs the convolutions and small products of these nets
# on one thread (benchmarks/cpu_threads.py), so the convolutional nets keep only the
# reductions there; XLA's own (Eigen) convolutions use every core.
YNN_REDUCTIONS_ONLY = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(model: nnx.Module, num_steps: int | None = None) -> dict[str, Any] | None:
    """XLA compiler options for ``model``'s compiled steps on the current backend.

    On CPU, the convolutional nets (the Caffe net, the ResNets) leave only reductions to
    YNNPACK (``YNN_REDUCTIONS_ONLY``): the training step of ResNet-20 takes ~0.67 of the
    time with XLA's default, the Caffe net's ~0.64; the MLP, all matrix products, keeps
    the default (~1.02x with it). The Caffe net also compiles with XLA's older loop emitters
    (``xla_cpu_use_fusion_emitters=False``) for runs of at least
    ``LOOP_EMITTERS_MIN_STEPS`` steps (or ``num_steps=None``): they make its step faster
    and ResNet-20's slower, and take longer to compile, so short runs keep the default
    emitters (benchmarks/compiler_options_cpu.py). The losses agree to rounding. None for
    the MLP and on other backends.
    """
    if jax.default_backend() != "cpu":
        return None
    options = {}
    if isinstance(model, (CaffeCifar10, CifarResNet)) and FAST_KERNELS["ynn_reductions_only"]:
        options.update(YNN_REDUCTIONS_ONLY)
    if (isinstance(model, CaffeCifar10) and FAST_KERNELS["loop_emitters"]
            and (num_steps is None or num_steps >= LOOP_EMITTERS_MIN_STEPS)):
        options["xla_cpu_use_fusion_emitters"] = False
    return options or None


def build_model(name: str, num_classes: int, image_shape: tuple[int, int, int],
                seed: int = 0) -> nnx.Module:
    """Builds a model by name for images of ``image_shape`` (H, W, C).

    Raises:
      ValueError: on an unknown name, or the Caffe net on images that are not 32x32.
    """
    v.choice("model", name, tuple(MODELS))
    if name == "caffe_cifar10" and tuple(image_shape[:2]) != (32, 32):
        raise ValueError(
            f"model 'caffe_cifar10' takes 32x32 images (its ip1 layer has 1024 inputs), got "
            f"{image_shape[0]}x{image_shape[1]}; use 'mlp' or 'resnet20'."
        )
    return MODELS[name](num_classes, tuple(image_shape), nnx.Rngs(seed))
