"""Training with a learning-rate schedule: compiled steps, periodic eval, checkpoints, resume.

The data set lives on the device as uint8; shuffling (a permutation per epoch, a pure
function of the seed and the epoch) and augmentation happen on the device inside the
compiled step. Steps run in compiled chunks: one ``lax.scan`` per chunk, or on CPU for
convolutional models fully unrolled groups of steps (XLA's CPU backend runs convolution
gradients inside while loops ~15x slower; benchmarks/RESULTS.md). Python touches the
loop only between chunks: logging, evaluation, checkpoints, the progress bar.

Because every step depends only on (seed, step) and the state, and checkpoints fall
on chunk boundaries, a resumed run ends with the same parameters, bit for bit, as an
uninterrupted one on the same device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from clr_jax import _validation as v
from clr_jax._io import write_json
from clr_jax.harness.data import ImageDataset
from clr_jax.harness.models import CAFFE_MULTIPLIERS, build_model, compiler_options
from clr_jax.harness.optim import make_optimizer, multipliers_for
from clr_jax.range_test import _group_size, _uses_convolution

__all__ = ["TrainConfig", "TrainingError", "Trainer", "fingerprint", "run_loop", "train"]

PREPROCESS = ("caffe", "standard")


class TrainingError(Exception):
    """Training could not go on (for example a non-finite loss); the message says why."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What to train and how. Lengths are in steps (updates)."""

    model: str = "caffe_cifar10"
    optimizer: str = "caffe_sgd"
    momentum: float = 0.9
    weight_decay: float = 0.004
    caffe_multipliers: bool = True
    batch_size: int = 100
    num_steps: int = 1000
    eval_every: int = 500
    log_every: int = 100
    checkpoint_every: int | None = None
    seed: int = 0
    preprocess: str = "caffe"
    augment: bool = False
    shuffle: bool = True
    eval_batch_size: int = 500

    def validate(self, dataset: ImageDataset | None = None) -> None:
        for name in ("batch_size", "num_steps", "eval_every", "log_every", "eval_batch_size"):
            v.positive_int(name, getattr(self, name))
        if self.checkpoint_every is not None:
            v.positive_int("checkpoint_every", self.checkpoint_every)
        v.choice("preprocess", self.preprocess, PREPROCESS)
        if dataset is not None and self.batch_size > len(dataset.train_labels):
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the training set "
                f"({len(dataset.train_labels)} images); lower --batch-size."
            )
        devices = jax.device_count()
        if self.batch_size % devices:
            raise ValueError(
                f"batch_size={self.batch_size} does not split over {devices} devices; use a "
                f"multiple of {devices}."
            )


def fingerprint(tree: Any) -> str:
    """sha256 over the bytes of every leaf, in tree order: equal iff bit-identical."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        array = np.asarray(leaf)
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _chunk_length(config: TrainConfig) -> int:
    lengths = [config.log_every, config.eval_every]
    if config.checkpoint_every:
        lengths.append(config.checkpoint_every)
    return math.gcd(*lengths)


class Trainer:
    """Holds the compiled pieces of one training run on one data set.

    Args:
      config: the `TrainConfig`.
      dataset: the `ImageDataset`.
      schedule: the learning-rate schedule (any ``optax.Schedule``).
    """

    def __init__(self, config: TrainConfig, dataset: ImageDataset, schedule: optax.Schedule):
        config.validate(dataset)
        self.config, self.schedule = config, schedule
        self.image_shape = dataset.train_images.shape[1:]
        model = build_model(config.model, dataset.num_classes, self.image_shape, config.seed)
        model.train()
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        model.eval()
        self.eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
        self._multipliers = (multipliers_for(params, CAFFE_MULTIPLIERS)
                             if config.caffe_multipliers and config.model == "caffe_cifar10"
                             else None)
        self.tx = self.make_tx(schedule)
        b = config.batch_size
        # (rest is an argument, not a constant: BatchNorm updates its statistics)
        self.convolutional = _uses_convolution(
            lambda p, r: self._loss(p, r, jnp.zeros((b, *dataset.train_images.shape[1:])),
                                    jnp.zeros((b,), jnp.int32))[0], params, rest)

        self.mesh = self._make_mesh()
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        put = lambda x: jax.device_put(x, self.replicated)  # noqa: E731
        self.train_images = put(dataset.train_images)
        self.train_labels = put(dataset.train_labels)
        test_pad = -len(dataset.test_labels) % config.eval_batch_size
        self.test_images = put(np.concatenate(
            [dataset.test_images, np.zeros((test_pad, *self.image_shape), np.uint8)]))
        self.test_labels = put(np.concatenate([dataset.test_labels,
                                               np.full(test_pad, -1, np.int32)]))
        # Statistics accumulate in float64 without a float64 copy of the images
        # (which would be 1.2 GB for CIFAR-10).
        images = dataset.train_images
        if config.preprocess == "caffe":  # the per-pixel mean image, 0-255 scale
            mean = images.mean(axis=0, keepdims=True, dtype=np.float64)
            self.offset = put(mean.astype(np.float32))
            self.scale = put(np.ones((1, 1, 1, 1), np.float32))
        else:  # per-channel mean and standard deviation, from uint8 histograms
            channels = images.reshape(-1, images.shape[-1])
            levels = np.arange(256, dtype=np.float64)
            counts = np.stack([np.bincount(channels[:, c], minlength=256)
                               for c in range(channels.shape[1])]) / len(channels)
            mean = counts @ levels
            std = np.sqrt(counts @ levels**2 - mean**2)
            self.offset = put(mean.reshape(1, 1, 1, -1).astype(np.float32))
            self.scale = put((1 / std).reshape(1, 1, 1, -1).astype(np.float32))
        self.steps_per_epoch = len(dataset.train_labels) // config.batch_size
        self.initial_state = put({"params": params, "rest": rest,
                                  "opt_state": self.tx.init(params)})

        self.chunk = _chunk_length(config)
        self.group, unroll = _group_size(self.chunk, self.convolutional)
        self._model = model
        self.compiler_options = self.compiler_options_for(config.num_steps)
        # No buffer donation: an interrupt between groups must still find the state
        # of the last finished chunk intact, to checkpoint it.
        self._run_group = jax.jit(self._make_group(unroll), static_argnames="group",
                                  compiler_options=self.compiler_options)
        self._evaluate = jax.jit(self._make_eval(), compiler_options=self.compiler_options)

    def compiler_options_for(self, num_steps: int) -> dict | None:
        """XLA compiler options for a run of ``num_steps`` steps of this model
        (`clr_jax.harness.models.compiler_options`)."""
        return compiler_options(self._model, num_steps)

    def _make_mesh(self) -> jax.sharding.Mesh:
        return jax.make_mesh((jax.device_count(),), ("data",),
                             axis_types=(jax.sharding.AxisType.Auto,))

    def make_tx(self, learning_rate: optax.ScalarOrSchedule, momentum=None,
                weight_decay=None) -> optax.GradientTransformation:
        """The configured optimizer, with the model's multipliers, at another rate
        (and optionally another momentum and weight decay, which may be traced)."""
        c = self.config
        return make_optimizer(
            c.optimizer, learning_rate,
            momentum=c.momentum if momentum is None else momentum,
            weight_decay=c.weight_decay if weight_decay is None else weight_decay,
            multipliers=self._multipliers)

    def place(self, state):
        """Puts a (restored) state where the compiled steps expect it."""
        return jax.device_put(state, self.replicated)

    # -- data --------------------------------------------------------------------------
    def _permutation(self, epoch, seed=None):
        """The order of the training set in ``epoch``: a fresh permutation per epoch, or
        with ``shuffle=False`` one fixed permutation for every epoch (as Caffe read its
        pre-shuffled LMDB; the identity would feed class-sorted folders class by class).
        """
        n = self.train_labels.shape[0]
        if not self.config.shuffle:
            epoch = jnp.zeros_like(epoch)
        seed = self.config.seed if seed is None else seed
        key = jax.random.fold_in(jax.random.key(seed), epoch)
        return jax.random.permutation(key, n).astype(jnp.int32)

    def _prepare(self, images):
        return (images.astype(jnp.float32) - self.offset) * self.scale

    def _augment(self, images, key):
        """Random crop after 4-pixel zero padding, and random horizontal flips."""
        b, h, w, _ = images.shape
        crop_key, flip_key = jax.random.split(key)
        padded = jnp.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
        offsets = jax.random.randint(crop_key, (b, 2), 0, 9)
        crop = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0),
                                                            (h, w, im.shape[-1])))
        images = crop(padded, offsets)
        flip = jax.random.bernoulli(flip_key, 0.5, (b, 1, 1, 1))
        return jnp.where(flip, images[:, :, ::-1, :], images)

    def _batch(self, step, permutation, seed=None):
        b = self.config.batch_size
        seed = self.config.seed if seed is None else seed
        start = (step % self.steps_per_epoch) * b
        index = jax.lax.dynamic_slice(permutation, (start,), (b,))
        images = self._prepare(self.train_images[index])
        if self.config.augment:
            images = self._augment(images, jax.random.fold_in(
                jax.random.key(seed + 1), step))
        images = jax.lax.with_sharding_constraint(images, self.batch_sharding)
        return images, self.train_labels[index]

    # -- steps -------------------------------------------------------------------------
    def _loss(self, params, rest, images, labels):
        model = nnx.merge(self.graphdef, params, rest, copy=True)
        logits = model(images)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, nnx.state(model, nnx.Not(nnx.Param))

    def _steps(self, state, first_step, group, unroll, tx, seed=None):
        """``group`` training steps from ``first_step`` with ``tx``: (state, losses)."""
        epoch0 = first_step // self.steps_per_epoch

        def body(carry, step):
            state, permutation, epoch = carry
            new_epoch = step // self.steps_per_epoch
            permutation = jax.lax.cond(new_epoch == epoch, lambda: permutation,
                                       lambda: self._permutation(new_epoch, seed))
            images, labels = self._batch(step, permutation, seed)
            (loss, rest), grads = jax.value_and_grad(self._loss, has_aux=True)(
                state["params"], state["rest"], images, labels)
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            return ({"params": params, "rest": rest, "opt_state": opt_state},
                    permutation, new_epoch), loss

        steps = first_step + jnp.arange(group, dtype=jnp.int32)
        (state, _, _), losses = jax.lax.scan(
            body, (state, self._permutation(epoch0, seed), epoch0), steps, unroll=unroll)
        return state, losses

    def _make_group(self, unroll: bool) -> Callable:
        return lambda state, first_step, group: self._steps(state, first_step, group,
                                                            unroll, self.tx)

    def _make_eval(self, graphdef=None) -> Callable:
        """Test loss and accuracy; ``graphdef`` defaults to the eval-mode model."""
        size = self.config.eval_batch_size
        graphdef = self.eval_graphdef if graphdef is None else graphdef

        def run(params, rest):
            model = nnx.merge(graphdef, params, rest)

            def one(batch):
                images, labels = batch
                logits = model(self._prepare(images))
                valid = labels >= 0
                safe = jnp.where(valid, labels, 0)
                losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
                correct = (logits.argmax(-1) == labels) & valid
                return jnp.sum(jnp.where(valid, losses, 0)), jnp.sum(correct), jnp.sum(valid)

            shape = (-1, size)
            batches = (self.test_images.reshape(*shape, *self.image_shape),
                       self.test_labels.reshape(shape))
            loss, correct, count = jax.tree.map(jnp.sum, jax.lax.map(one, batches))
            return {"test_loss": loss / count, "test_accuracy": correct / count}

        return run

    def run_steps(self, state, first_step: int, num_steps: int):
        """Runs ``num_steps`` steps from ``first_step``; returns the state and losses."""
        group = math.gcd(self.group, num_steps)  # a short last chunk may need smaller groups
        losses = []
        for start in range(first_step, first_step + num_steps, group):
            state, part = self._run_group(state, jnp.int32(start), group)
            losses.append(part)
        return state, jnp.concatenate(losses)

    def evaluate(self, state) -> dict[str, float]:
        return {k: float(x) for k, x in self._evaluate(state["params"], state["rest"]).items()}


# -- the run: files, checkpoints, resume -------------------------------------------------

@contextlib.contextmanager
def _interrupts_deferred():
    """Holds Ctrl-C back while a checkpoint is written, then delivers it: a save is
    never cut in half by the user (a kill still can be; Orbax then keeps the previous
    checkpoint, since a save becomes visible only when it is complete)."""
    received = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _checkpointer(directory: Path):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        directory.resolve(), options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def _read_metrics(path: Path, up_to_step: int) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["step"] <= up_to_step]


def prepare_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Checks that ``out`` may be written, without deleting anything unless asked."""
    has_results = out.exists() and any((out / name).exists() for name in
                                       ("summary.json", "metrics.jsonl", "checkpoints"))
    if has_results and not (resume or overwrite):
        raise ValueError(
            f"{out} already holds results; pass --resume to continue that run or "
            "--overwrite to replace it (or choose another --out)."
        )
    if overwrite and not resume and out.exists():
        for name in ("summary.json", "metrics.jsonl", "config.json", "checkpoints"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"cannot write to --out {out}: {error.strerror or error}") from None


def train(
    config: TrainConfig,
    dataset: ImageDataset,
    schedule: optax.Schedule,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    describe: dict | None = None,
    on_log: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Trains and evaluates, writing ``metrics.jsonl``, ``summary.json`` and checkpoints.

    Args:
      config: the `TrainConfig`.
      dataset: the data.
      schedule: the learning-rate schedule.
      out: the run's folder.
      resume: continue from the latest checkpoint in ``out``.
      overwrite: replace results already in ``out``.
      progress: show a progress bar.
      describe: extra fields for ``config.json`` and the summary (data set, schedule).
      on_log: called with each logged row.

    Returns:
      The summary: final and best test accuracy, steps, wall time, images per second,
      device, and ``fingerprint`` (sha256 of the final parameters).

    Raises:
      ValueError: on bad settings or an unusable ``out``.
      TrainingError: when the loss stops being finite (the last checkpoint is kept).
      KeyboardInterrupt: after saving a checkpoint, when interrupted.
    """
    out = Path(out)
    prepare_out_dir(out, resume=resume, overwrite=overwrite)
    trainer = Trainer(config, dataset, schedule)

    def make_row(step, length, losses, state):
        if not np.isfinite(losses).all():
            bad = step - length + int(np.flatnonzero(~np.isfinite(losses))[0])
            raise TrainingError(
                f"the loss became {losses[bad - step + length]} at step {bad} (learning "
                f"rate {float(schedule(bad)):.4g}); the last checkpoint is kept. Lower the "
                "learning rate (run a range test) and train again."
            )
        row = {"step": step, "lr": float(schedule(step - 1)), "loss": float(losses.mean())}
        if step % config.eval_every == 0 or step == config.num_steps:
            row.update(trainer.evaluate(state))
        return row

    def postfix(row):
        return {"loss": f"{row['loss']:.3f}", "lr": f"{row['lr']:.3g}",
                **({"acc": f"{row['test_accuracy']:.3f}"} if "test_accuracy" in row else {})}

    record = {"config": dataclasses.asdict(config), **(describe or {})}
    state, step, steps_run, seconds = run_loop(
        trainer, out, record, resume=resume, progress=progress, make_row=make_row,
        postfix=postfix, on_log=on_log)
    final = trainer.evaluate(state)
    rows = _read_metrics(out / "metrics.jsonl", step)
    evaluated = [r for r in rows if "test_accuracy" in r]
    best_row = max(evaluated, key=lambda r: r["test_accuracy"]) if evaluated else None
    summary = {
        "final_test_accuracy": final["test_accuracy"],
        "final_test_loss": final["test_loss"],
        "best_test_accuracy": best_row["test_accuracy"] if best_row else None,
        "best_step": best_row["step"] if best_row else None,
        "steps": step,
        "wall_seconds_this_session": seconds,
        "images_per_second": steps_run * config.batch_size / seconds if seconds else None,
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "fingerprint": fingerprint(state["params"]),
        **json.loads(json.dumps(record)),
    }
    write_json(out / "summary.json", summary)
    return summary


def run_loop(
    trainer: Trainer,
    out: Path,
    record: dict,
    *,
    resume: bool,
    progress: bool,
    make_row: Callable,
    postfix: Callable,
    on_log: Callable[[dict], None] | None = None,
    desc: str = "train",
):
    """The loop shared by `train` and sweeps: chunks of compiled steps, metrics rows,
    checkpoints, resume, the progress bar and Ctrl-C.

    ``make_row(step, length, losses, state)`` turns a finished chunk into its metrics
    row (evaluating when due); ``postfix(row)`` gives the progress bar's fields.
    Returns ``(state, step, steps_run, seconds)``.
    """
    config = trainer.config
    # Through JSON, so that what is compared on --resume is what was saved.
    record = json.loads(json.dumps(record))
    config_path = out / "config.json"
    if resume and config_path.exists():
        saved = json.loads(config_path.read_text())
        if saved != record:
            changed = sorted(
                [f"config.{k}" for k in record["config"]
                 if saved.get("config", {}).get(k) != record["config"][k]]
                + [k for k in set(record) | set(saved) if k != "config"
                   and saved.get(k) != record.get(k)])
            raise ValueError(
                f"--resume with settings that differ from the saved run in {out}: "
                f"{', '.join(changed)}; resume with the same settings or use --overwrite."
            )
    write_json(config_path, record)

    manager = (_checkpointer(out / "checkpoints")
               if config.checkpoint_every or resume else None)
    state, step = trainer.initial_state, 0
    if resume and manager is not None and manager.latest_step() is not None:
        import orbax.checkpoint as ocp

        step = int(manager.latest_step())
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        state = manager.restore(step, args=ocp.args.StandardRestore(target))
        state = trainer.place(state)
    metrics_path = out / "metrics.jsonl"
    rows = _read_metrics(metrics_path, step)
    with open(metrics_path.with_name(".metrics.tmp"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(metrics_path.with_name(".metrics.tmp"), metrics_path)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.num_steps, initial=step, unit="step", desc=desc,
                   dynamic_ncols=True)
    started, steps_run = time.perf_counter(), 0

    def save(at_step):
        import orbax.checkpoint as ocp

        with _interrupts_deferred():
            manager.save(at_step, args=ocp.args.StandardSave(state), force=True)
            manager.wait_until_finished()

    try:
        with open(metrics_path, "a") as metrics_file:
            while step < config.num_steps:
                length = min(trainer.chunk, config.num_steps - step)
                new_state, losses = trainer.run_steps(state, step, length)
                row = make_row(step + length, length, np.asarray(losses), new_state)
                state = new_state
                step += length
                steps_run += length
                if step % config.log_every == 0 or "test_accuracy" in row \
                        or step == config.num_steps:
                    metrics_file.write(json.dumps(row) + "\n")
                    metrics_file.flush()
                    if on_log is not None:
                        on_log(row)
                if manager is not None and config.checkpoint_every and (
                        step % config.checkpoint_every == 0 or step == config.num_steps):
                    save(step)
                if bar is not None:
                    bar.update(length)
                    bar.set_postfix(**postfix(row))
    except KeyboardInterrupt:
        if manager is None:
            manager = _checkpointer(out / "checkpoints")
        if manager.latest_step() != step:  # the chunk may have been saved already
            save(step)
        raise
    finally:
        if bar is not None:
            bar.close()
    return state, step, steps_run, time.perf_counter() - started
