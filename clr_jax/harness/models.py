"""Models for the harness, in Flax NNX: the paper's Caffe CIFAR-10 net, CIFAR ResNets, an MLP.

All take NHWC float images and return logits. `build_model` makes one by name. The Caffe
net's CPU kernels live in `clr_jax.harness.kernels` and are chosen by its ``kernels``
argument.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from clr_jax import _validation as v
from clr_jax.harness import kernels as k

__all__ = ["CAFFE_MULTIPLIERS", "MODELS", "MLP", "CaffeCifar10", "CifarResNet", "build_model"]


class CaffeCifar10(nnx.Module):
    """Caffe's "cifar10_full" network, as in the paper (89,578 parameters).

    conv1 5x5x32 (std 1e-4) - max pool 3/2 - ReLU - LRN - conv2 5x5x32 (std 0.01) -
    ReLU - avg pool 3/2 - LRN - conv3 5x5x64 (std 0.01) - ReLU - avg pool 3/2 -
    ip1 10 (std 0.01); biases start at 0; pooling rounds the output size up.

    Args:
      num_classes: outputs of ip1.
      in_channels: channels of the input images.
      kernels: ``"fast"`` computes conv2 and conv3 as products of spectra, max
        pooling's gradient from strided slices and LRN's power with square roots
        (`clr_jax.harness.kernels`); ``"lax"`` uses the plain `jax.lax` forms; ``"auto"``
        picks ``"fast"`` on CPU, where they are faster, and ``"lax"`` elsewhere. The
        choice is resolved here and kept in ``self.kernels``. Same parameters, same
        values up to rounding.
      rngs: the initialisation's random state.
    """

    def __init__(self, num_classes: int = 10, *, in_channels: int = 3, kernels: str = "auto",
                 rngs: nnx.Rngs):
        self.kernels = k.resolve(kernels)
        fast = self.kernels == "fast"

        def conv(cin, cout, std, spectral):
            return nnx.Conv(cin, cout, (5, 5), padding=((2, 2), (2, 2)),
                            kernel_init=nnx.initializers.normal(std),
                            bias_init=nnx.initializers.zeros_init(), rngs=rngs,
                            conv_general_dilated=(k.conv_spectral if spectral
                                                  else k.conv_nhwc if fast
                                                  else jax.lax.conv_general_dilated))

        # conv1's 3 input channels are too few for the spectral form to pay.
        self.conv1 = conv(in_channels, 32, 1e-4, spectral=False)
        self.conv2 = conv(32, 32, 0.01, spectral=fast)
        self.conv3 = conv(32, 64, 0.01, spectral=fast)
        self.ip1 = nnx.Linear(4 * 4 * 64, num_classes,
                              kernel_init=nnx.initializers.normal(0.01),
                              bias_init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        fast = self.kernels == "fast"
        max_pool = k.max_pool_ceil_fast if fast else k.max_pool_ceil
        x = k.lrn_within_channel(jax.nn.relu(max_pool(self.conv1(x))), fast=fast)
        x = k.lrn_within_channel(k.avg_pool_ceil(jax.nn.relu(self.conv2(x)), fast=fast),
                                 fast=fast)
        x = k.avg_pool_ceil(jax.nn.relu(self.conv3(x)), fast=fast)
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
    (ResNet-20: 0.27M parameters); ``depth=8`` (n = 1) is a small one for quick studies.
    Identity shortcuts with zero padding (option A).
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
    "caffe_cifar10": lambda num_classes, shape, rngs, kernels: CaffeCifar10(
        num_classes, in_channels=shape[-1], kernels=kernels, rngs=rngs),
    "resnet8": lambda num_classes, shape, rngs, kernels: CifarResNet(
        8, num_classes, in_channels=shape[-1], rngs=rngs),
    "resnet20": lambda num_classes, shape, rngs, kernels: CifarResNet(
        20, num_classes, in_channels=shape[-1], rngs=rngs),
    "resnet56": lambda num_classes, shape, rngs, kernels: CifarResNet(
        56, num_classes, in_channels=shape[-1], rngs=rngs),
    "mlp": lambda num_classes, shape, rngs, kernels: MLP(
        num_classes, in_features=shape[0] * shape[1] * shape[2], rngs=rngs),
}


def build_model(name: str, num_classes: int, image_shape: tuple[int, int, int],
                seed: int = 0, *, kernels: str = "auto") -> nnx.Module:
    """Builds a model by name for images of ``image_shape`` (H, W, C).

    Args:
      name: one of `MODELS`.
      num_classes: the number of outputs.
      image_shape: (H, W, C) of the input images.
      seed: the initialisation's seed.
      kernels: ``"auto"``, ``"fast"`` or ``"lax"`` (see `CaffeCifar10`; the other models
        have no kernels of their own, their compiler options follow the same choice,
        see `clr_jax.harness.kernels.compiler_options`).

    Raises:
      ValueError: on an unknown name or kernels, or the Caffe net on images that are not
        32x32.
    """
    v.choice("model", name, tuple(MODELS))
    k.resolve(kernels)
    if name == "caffe_cifar10" and tuple(image_shape[:2]) != (32, 32):
        raise ValueError(
            f"model 'caffe_cifar10' takes 32x32 images (its ip1 layer has 1024 inputs), got "
            f"{image_shape[0]}x{image_shape[1]}; use 'mlp' or 'resnet20'."
        )
    return MODELS[name](num_classes, tuple(image_shape), nnx.Rngs(seed), kernels)
