"""Small data sets and folders shared by the tests."""

import jax.numpy as jnp
import numpy as np

import clr_jax
from clr_jax.harness.data import ImageDataset

# Stochastic least squares: loss = mean((x.w - y)^2) with E[x x^T] = diag(VARIANCES).
# Its Hessian is 2 diag(VARIANCES), so gradient descent diverges for
# lr > 2 / (2 * max variance) = 1.0.
VARIANCES = np.array([1.0, 0.5, 0.25, 0.1, 0.05])
CRITICAL_LR = 2 / (2 * VARIANCES.max())


def least_squares(num_batches=300, batch=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_batches, batch, VARIANCES.size)) * np.sqrt(VARIANCES)
    w = rng.normal(size=VARIANCES.size)
    y = x @ w + 0.1 * rng.normal(size=(num_batches, batch))
    return {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}


def loss_fn(w, batch):
    return jnp.mean((batch["x"] @ w - batch["y"]) ** 2)


def tiny_dataset(n_train=64, n_test=20, size=8, seed=0) -> ImageDataset:
    """Three classes told apart by which channel is brighter: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n_train + n_test).astype(np.int32)
    images = rng.integers(0, 120, (n_train + n_test, size, size, 3))
    images[np.arange(len(labels)), :, :, labels] += 100
    images = images.astype(np.uint8)
    return ImageDataset(images[:n_train], labels[:n_train], images[n_train:],
                        labels[n_train:], ("a", "b", "c"))


def write_image_folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(20 if split == "train" else 6):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    folder / f"{i}.png")


def synthetic_result(rates, accuracy):
    """A range test result whose accuracy curve is given (the loss is flat)."""
    n = len(rates)
    return clr_jax.RangeTestResult(
        learning_rates=np.asarray(rates), losses=np.ones(n), smoothed_losses=np.ones(n),
        eval_steps=np.arange(1, n + 1), eval_learning_rates=np.asarray(rates),
        eval_metrics={"accuracy": np.asarray(accuracy)}, stop_reason=None, stop_step=None,
        mode="linear", min_lr=float(rates[0]), max_lr=float(rates[-1]), num_steps=n)


def read_tensorboard(folder) -> dict[str, dict[int, list[float]]]:
    """The scalars of the TensorBoard event files in ``folder`` as TensorBoard shows
    them: tag -> {step: [values]}.

    Event files are TFRecord files (a little-endian uint64 length, its CRC, the record,
    its CRC) of ``Event`` protocol buffers, read in the order they were written. A
    session-start event at step T hides every value written before it at steps >= T
    (how a resumed writer's ``purge_step`` works).
    """
    import struct
    from pathlib import Path

    from tensorboardX.proto.event_pb2 import Event, SessionLog

    scalars: dict[str, dict[int, list[float]]] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*"),
                       key=lambda p: p.stat().st_mtime_ns):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            record = data[offset + 12:offset + 12 + length]
            offset += 12 + length + 4
            event = Event.FromString(record)
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                for values in scalars.values():
                    for step in [s for s in values if s >= event.step]:
                        del values[step]
            for value in event.summary.value:
                scalars.setdefault(value.tag, {}).setdefault(event.step, []).append(
                    value.simple_value)
    return scalars
