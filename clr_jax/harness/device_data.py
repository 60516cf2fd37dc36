"""The data set on the device: uint8 images, preprocessing, the order of each epoch,
augmentation and batches, all inside compiled code.

Shuffling is a pure function of (seed, epoch) and a batch of (seed, step), so a run
resumed from a checkpoint sees exactly the batches it would have seen.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from clr_jax import _validation as v
from clr_jax.harness.data import ImageDataset

__all__ = ["PREPROCESS", "DeviceData"]

PREPROCESS = ("caffe", "standard")


class DeviceData:
    """A data set held on the devices of ``mesh``, replicated, with the batch of each step.

    Args:
      dataset: the `ImageDataset`.
      mesh: the device mesh; batches are split over its ``"data"`` axis.
      batch_size: training images per step.
      eval_batch_size: test images per evaluation batch (the test set is padded to a
        multiple of it with images labelled -1, which count nowhere).
      preprocess: ``"caffe"`` subtracts the per-pixel mean image on the 0-255 scale (the
        paper's); ``"standard"`` subtracts each channel's mean and divides by its
        standard deviation.
      augment: random crops after 4-pixel zero padding, and random horizontal flips.
      shuffle: a fresh order every epoch; with False one fixed seeded order for every
        epoch (as Caffe read its pre-shuffled database).
    """

    def __init__(self, dataset: ImageDataset, mesh: jax.sharding.Mesh, *, batch_size: int,
                 eval_batch_size: int = 500, preprocess: str = "caffe", augment: bool = False,
                 shuffle: bool = True):
        v.choice("preprocess", preprocess, PREPROCESS)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.augment, self.shuffle = augment, shuffle
        self.image_shape = dataset.train_images.shape[1:]
        self.num_classes = dataset.num_classes
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
        put = lambda x: jax.device_put(x, self.replicated)  # noqa: E731
        self.train_images = put(dataset.train_images)
        self.train_labels = put(dataset.train_labels)
        test_pad = -len(dataset.test_labels) % eval_batch_size
        self.test_images = put(np.concatenate(
            [dataset.test_images, np.zeros((test_pad, *self.image_shape), np.uint8)]))
        self.test_labels = put(np.concatenate([dataset.test_labels,
                                               np.full(test_pad, -1, np.int32)]))
        offset, scale = _statistics(dataset.train_images, preprocess)
        self.offset, self.scale = put(offset), put(scale)
        self.steps_per_epoch = len(dataset.train_labels) // batch_size

    def permutation(self, epoch: jax.typing.ArrayLike, seed: jax.typing.ArrayLike) -> jax.Array:
        """The order of the training set in ``epoch`` (one fixed order without shuffle;
        the identity would feed class-sorted folders class by class)."""
        n = self.train_labels.shape[0]
        if not self.shuffle:
            epoch = jnp.zeros_like(epoch)
        key = jax.random.fold_in(jax.random.key(seed), epoch)
        return jax.random.permutation(key, n).astype(jnp.int32)

    def prepare(self, images: jax.Array) -> jax.Array:
        """uint8 images -> the float32 network input."""
        return (images.astype(jnp.float32) - self.offset) * self.scale

    def augmented(self, images: jax.Array, key: jax.Array) -> jax.Array:
        """Random crops after 4-pixel zero padding, and random horizontal flips."""
        b, h, w, _ = images.shape
        crop_key, flip_key = jax.random.split(key)
        padded = jnp.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
        offsets = jax.random.randint(crop_key, (b, 2), 0, 9)
        crop = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0),
                                                            (h, w, im.shape[-1])))
        images = crop(padded, offsets)
        flip = jax.random.bernoulli(flip_key, 0.5, (b, 1, 1, 1))
        return jnp.where(flip, images[:, :, ::-1, :], images)

    def batch(self, step: jax.Array, permutation: jax.Array, seed: jax.typing.ArrayLike
              ) -> tuple[jax.Array, jax.Array]:
        """The prepared (images, labels) of training step ``step`` in its epoch's order."""
        b = self.batch_size
        start = (step % self.steps_per_epoch) * b
        index = jax.lax.dynamic_slice(permutation, (start,), (b,))
        images = self.prepare(self.train_images[index])
        if self.augment:
            images = self.augmented(images, jax.random.fold_in(jax.random.key(seed + 1), step))
        images = jax.lax.with_sharding_constraint(images, self.batch_sharding)
        return images, self.train_labels[index]

    def test_batches(self) -> tuple[jax.Array, jax.Array]:
        """The (uint8 images, labels) of the test set, shaped [batches, eval_batch_size,
        ...]; padding labels are -1."""
        shape = (-1, self.eval_batch_size)
        return (self.test_images.reshape(*shape, *self.image_shape),
                self.test_labels.reshape(shape))


def _statistics(images: np.ndarray, preprocess: str) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) with input = (pixels - offset) * scale. Statistics accumulate in
    float64 without a float64 copy of the images (which would be 1.2 GB for CIFAR-10)."""
    if preprocess == "caffe":  # the per-pixel mean image, 0-255 scale
        mean = images.mean(axis=0, keepdims=True, dtype=np.float64)
        return mean.astype(np.float32), np.ones((1, 1, 1, 1), np.float32)
    channels = images.reshape(-1, images.shape[-1])
    levels = np.arange(256, dtype=np.float64)
    counts = np.stack([np.bincount(channels[:, c], minlength=256)
                       for c in range(channels.shape[1])]) / len(channels)
    mean = counts @ levels
    std = np.sqrt(counts @ levels**2 - mean**2)
    return (mean.reshape(1, 1, 1, -1).astype(np.float32),
            (1 / std).reshape(1, 1, 1, -1).astype(np.float32))
