"""Training with a learning-rate schedule: the run's settings, the compiled steps, `train`.

The data set lives on the device (`DeviceData`); shuffling and augmentation happen
inside the compiled step. Steps are pure functions (`make_loss`, `train_steps`,
`make_eval_step`) that `Trainer` compiles for one run and a sweep vmaps over many.
Steps run in compiled chunks: one ``lax.scan`` per chunk, or on CPU, for models whose
gradient holds convolutions XLA runs slowly inside a loop, fully unrolled groups of
steps (`clr_jax._backend`). Python touches the loop
only between chunks (`clr_jax.harness.loop.run_loop`): logging, evaluation,
checkpoints, the progress bar.

Because every step depends only on (seed, step) and the state, and checkpoints fall
on chunk boundaries, a resumed run ends with the same parameters, bit for bit, as an
uninterrupted one on the same device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from clr_jax import _backend
from clr_jax import _validation as v
from clr_jax._io import write_json
from clr_jax.harness import distributed
from clr_jax.harness import kernels as kernel_choice
from clr_jax.harness.data import ImageDataset
from clr_jax.harness.device_data import PREPROCESS, DeviceData
from clr_jax.harness.models import CAFFE_MULTIPLIERS, MODELS, build_model
from clr_jax.harness.optim import OPTIMIZERS, eval_params, make_optimizer, multipliers_for
from clr_jax.harness.loop import metric_writers, open_run, run_loop
from clr_jax.policies import Stage, parse_stages, staged

__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "fingerprint",
    "make_eval_step",
    "make_loss",
    "schedule_digest",
    "train",
    "train_steps",
]

State = dict[str, Any]  # {"params", "rest", "opt_state"}


class TrainingError(Exception):
    """Training could not go on (for example a non-finite loss); the message says why."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What to train and how: everything a run's results depend on, recorded in its
    config.json and checked when it resumes. Lengths are in steps (updates).

    Attributes:
      model: the network (`clr_jax.harness.models.MODELS`).
      optimizer: the optimizer (`clr_jax.harness.optim.OPTIMIZERS`).
      momentum: the optimizer's momentum (where it has one).
      weight_decay: L2 added to the gradient, times each layer's decay multiplier.
      caffe_multipliers: the Caffe net's per-layer lr and decay multipliers (the
        paper's).
      batch_size: training images per step.
      num_steps: the run's length.
      eval_every: steps between test evaluations.
      log_every: steps between metrics.jsonl rows.
      checkpoint_every: steps between checkpoints (None: only on interrupt).
      seed: initialisation and data order.
      preprocess: caffe (subtract the mean image, 0-255, as the paper) or standard
        (per-channel mean and std) (`clr_jax.harness.device_data`).
      augment: random crops and flips.
      shuffle: a new order every epoch (else one fixed seeded order every epoch, as
        Caffe read its pre-shuffled database).
      eval_batch_size: test images per evaluation batch.
      kernels: the models' CPU kernels and compiler options: fast, lax (plain jax.lax and
        XLA's defaults) or auto (fast on CPU) (`clr_jax.harness.kernels`).
      schedule: the learning-rate schedule as stages (`clr_jax.policies.parse_stages`
        accepts the forms; e.g. ``{"policy": "triangular2", "base_lr": 0.001,
        "max_lr": 0.006, "step_size": 2000}``). Empty when the schedule is passed to
        `train` as a function instead.
    """

    # metadata: the command line's flag name where it is not the field's, and the
    # choices (clr_jax._flags generates the flags from these fields and the docstring)
    model: str = dataclasses.field(default="caffe_cifar10",
                                   metadata={"choices": lambda: tuple(MODELS)})
    optimizer: str = dataclasses.field(default="caffe_sgd", metadata={"choices": OPTIMIZERS})
    momentum: float = 0.9
    weight_decay: float = 0.004
    caffe_multipliers: bool = True
    batch_size: int = 100
    num_steps: int = dataclasses.field(default=1000, metadata={"flag": "steps"})
    eval_every: int = 500
    log_every: int = 100
    checkpoint_every: int | None = None
    seed: int = 0
    preprocess: str = dataclasses.field(default="caffe", metadata={"choices": PREPROCESS})
    augment: bool = False
    shuffle: bool = True
    eval_batch_size: int = 500
    kernels: str = dataclasses.field(default="auto",
                                     metadata={"choices": kernel_choice.KERNELS})
    schedule: tuple[Stage, ...] = dataclasses.field(default=(), metadata={"flag": None})

    def __post_init__(self):
        if self.schedule is not None and len(self.schedule):
            object.__setattr__(self, "schedule", parse_stages(self.schedule))
        else:
            object.__setattr__(self, "schedule", ())

    def validate(self, dataset: ImageDataset | None = None) -> None:
        """Raises ValueError naming the first bad setting."""
        v.choice("model", self.model, tuple(MODELS))
        v.choice("optimizer", self.optimizer, OPTIMIZERS)
        for name in ("batch_size", "num_steps", "eval_every", "log_every", "eval_batch_size"):
            v.positive_int(name, getattr(self, name))
        if self.checkpoint_every is not None:
            v.positive_int("checkpoint_every", self.checkpoint_every)
        v.check("momentum", self.momentum, lambda m: (m >= 0) & (m < 1), "in [0, 1)")
        v.finite_nonnegative("weight_decay", self.weight_decay)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be an integer from 0 to 2**31 - 1, got {self.seed!r}.")
        for name in ("caffe_multipliers", "augment", "shuffle"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        v.choice("preprocess", self.preprocess, PREPROCESS)
        kernel_choice.resolve(self.kernels)
        if dataset is not None and self.batch_size > len(dataset.train_labels):
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the training set "
                f"({len(dataset.train_labels)} images); lower batch_size."
            )
        devices = jax.device_count()
        if self.batch_size % devices:
            raise ValueError(
                f"batch_size={self.batch_size} does not split over {devices} devices; use a "
                f"multiple of {devices}."
            )

    @property
    def chunk(self) -> int:
        """Steps between the loop's visits to Python: every log, eval and checkpoint
        step falls on a chunk boundary."""
        lengths = [self.log_every, self.eval_every]
        if self.checkpoint_every:
            lengths.append(self.checkpoint_every)
        return math.gcd(*lengths)


def fingerprint(tree: Any) -> str:
    """sha256 over the bytes of every leaf, in tree order: equal iff bit-identical."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        array = np.asarray(leaf)
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def schedule_digest(schedule: optax.Schedule, num_steps: int) -> str:
    """sha256 of a schedule's float32 values at steps 0 .. num_steps - 1 (at most a
    million evenly spaced steps): a run resumed with another schedule is caught even
    when the schedule is a function rather than stages."""
    steps = np.unique(np.linspace(0, num_steps - 1, min(num_steps, 1_000_000)).astype(np.int32))
    values = jax.jit(jax.vmap(schedule))(jnp.asarray(steps))
    return hashlib.sha256(np.asarray(values, np.float32).tobytes()).hexdigest()


# -- the steps, as pure functions ---------------------------------------------------------

Loss = Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, Any]]


def make_loss(graphdef: nnx.GraphDef) -> Loss:
    """``loss(params, rest, images, labels) -> (mean cross-entropy, new rest)`` of the
    model ``graphdef`` (``rest`` is its non-parameter state, e.g. BatchNorm's)."""

    def loss(params, rest, images, labels):
        model = nnx.merge(graphdef, params, rest, copy=True)
        logits = model(images)
        value = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return value, nnx.state(model, nnx.Not(nnx.Param))

    return loss


def train_steps(loss: Loss, data: DeviceData, tx: optax.GradientTransformation, state: State,
                first_step: jax.Array, length: int, *, seed: jax.typing.ArrayLike,
                unroll: bool, permutation: jax.Array | None = None
                ) -> tuple[State, jax.Array]:
    """``length`` training steps from ``first_step``: ``(state, losses)``.

    A pure function of its inputs: each step's batch comes from ``data`` by (seed,
    step), so a sweep vmaps it over members with their own ``tx`` and ``seed``.
    ``permutation`` is the order of ``first_step``'s epoch
    (``data.permutation(epoch, seed)``), when the caller has it already: computing it
    is a sort of the training set, worth doing once an epoch rather than once a call.
    """
    epoch0 = first_step // data.steps_per_epoch
    if permutation is None:
        permutation = data.permutation(epoch0, seed)

    def body(carry, step):
        state, permutation, epoch = carry
        new_epoch = step // data.steps_per_epoch
        permutation = jax.lax.cond(new_epoch == epoch, lambda: permutation,
                                   lambda: data.permutation(new_epoch, seed))
        images, labels = data.batch(step, permutation, seed)
        (value, rest), grads = jax.value_and_grad(loss, has_aux=True)(
            state["params"], state["rest"], images, labels)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return ({"params": params, "rest": rest, "opt_state": opt_state},
                permutation, new_epoch), value

    steps = first_step + jnp.arange(length, dtype=jnp.int32)
    (state, _, _), losses = _backend.scan(body, (state, permutation, epoch0), steps,
                                          unroll=unroll)
    return state, losses


def make_eval_step(graphdef: nnx.GraphDef, data: DeviceData
                   ) -> Callable[[Any, Any], dict[str, jax.Array]]:
    """``evaluate(params, rest) -> {"test_loss", "test_accuracy"}`` over the whole test
    set of ``data``, with the model ``graphdef`` (normally in eval mode)."""

    def evaluate(params, rest):
        model = nnx.merge(graphdef, params, rest)

        def one(batch):
            images, labels = batch
            logits = model(data.prepare(images))
            valid = labels >= 0
            safe = jnp.where(valid, labels, 0)
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
            correct = (logits.argmax(-1) == labels) & valid
            return jnp.sum(jnp.where(valid, losses, 0)), jnp.sum(correct), jnp.sum(valid)

        loss, correct, count = jax.tree.map(jnp.sum, jax.lax.map(one, data.test_batches()))
        return {"test_loss": loss / count, "test_accuracy": correct / count}

    return evaluate


# -- one run, compiled ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelParts:
    """A model split for the functional loop: train- and eval-mode graphs, its initial
    parameters and other state, and the Caffe multipliers when they apply."""

    graphdef: nnx.GraphDef
    eval_graphdef: nnx.GraphDef
    params: Any
    rest: Any
    multipliers: Any

    @classmethod
    def build(cls, config: TrainConfig, num_classes: int, image_shape: tuple[int, ...],
              seed: int, *, abstract: bool = False) -> ModelParts:
        """The parts of the configured model; with ``abstract``, its parameters and state
        as shapes and dtypes only (``jax.ShapeDtypeStruct``), with nothing computed."""
        def make():
            return build_model(config.model, num_classes, image_shape, seed,
                               kernels=config.kernels)

        model = nnx.eval_shape(make) if abstract else make()
        model.train()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        model.eval()
        eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
        multipliers = (multipliers_for(params, CAFFE_MULTIPLIERS)
                       if config.caffe_multipliers and config.model == "caffe_cifar10" else None)
        return cls(graphdef, eval_graphdef, params, rest, multipliers)

    def optimizer(self, config: TrainConfig, learning_rate: optax.ScalarOrSchedule,
                  momentum=None, weight_decay=None) -> optax.GradientTransformation:
        """The configured optimizer at ``learning_rate`` (momentum and weight decay may
        be traced, per sweep member)."""
        return make_optimizer(
            config.optimizer, learning_rate,
            momentum=config.momentum if momentum is None else momentum,
            weight_decay=config.weight_decay if weight_decay is None else weight_decay,
            multipliers=self.multipliers)

    def is_convolutional(self, batch_size: int, image_shape: tuple[int, ...]) -> bool:
        """Whether the model convolves (a sweep's members then run one after another on
        CPU, `clr_jax._backend.vmap_members`): read from the jaxpr of one forward pass on
        abstract inputs, with no gradient traced and no batch allocated (a forward
        convolution is what puts convolutions in the gradient)."""
        images = jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32)
        labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
        jaxpr = jax.make_jaxpr(make_loss(self.graphdef))(self.params, self.rest, images,
                                                          labels)
        return _backend.has_convolution(jaxpr)

    def unrolls_on_cpu(self, batch_size: int, image_shape: tuple[int, ...]) -> bool:
        """Whether the training steps run in unrolled groups on CPU
        (`clr_jax._backend.group_size`): whether the gradient, traced on abstract
        inputs, holds a convolution that XLA's CPU backend runs slowly inside a loop
        (`clr_jax._backend.slow_in_loops`). Never elsewhere, where nothing is traced."""
        if not _backend.on_cpu():
            return False
        images = jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32)
        labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
        grad = jax.grad(make_loss(self.graphdef), has_aux=True)
        return _backend.slow_in_loops(jax.make_jaxpr(grad)(self.params, self.rest, images,
                                                           labels))


class Trainer:
    """The compiled training and evaluation of one run.

    Args:
      config: the `TrainConfig`.
      dataset: the `ImageDataset`.
      schedule: the learning-rate schedule (any ``optax.Schedule``); by default the one
        ``config.schedule`` describes.

    Attributes:
      data: the `DeviceData`.
      parts: the `ModelParts`.
      tx: the optimizer.
      initial_state: ``{"params", "rest", "opt_state"}`` on the devices.
      chunk: steps per visit to Python (`TrainConfig.chunk`).
      group: steps per compiled call: the chunk, or on CPU a divisor of it when
        ``unrolled``.
      unrolled: whether the steps run in unrolled groups (on CPU, when the gradient
        holds a convolution XLA runs slowly in a loop: `ModelParts.unrolls_on_cpu`).
      compiler_options: XLA options of the compiled steps
        (`clr_jax.harness.kernels.compiler_options`).
    """

    def __init__(self, config: TrainConfig, dataset: ImageDataset,
                 schedule: optax.Schedule | None = None):
        config.validate(dataset)
        if schedule is None:
            if not config.schedule:
                raise ValueError("no learning-rate schedule: set TrainConfig.schedule or pass "
                                 "schedule=.")
            schedule = staged(config.schedule)
        self.config, self.schedule = config, schedule
        image_shape = dataset.train_images.shape[1:]
        # The model's shapes first: the training steps compile from them (in a thread)
        # while the parameters are initialised, which compiles programs of its own.
        shapes = ModelParts.build(config, dataset.num_classes, image_shape, config.seed,
                                  abstract=True)
        self.loss = make_loss(shapes.graphdef)
        self.tx = shapes.optimizer(config, schedule)
        self.unrolled = shapes.unrolls_on_cpu(config.batch_size, image_shape)

        self.mesh = jax.make_mesh((jax.device_count(),), ("data",),
                                  axis_types=(jax.sharding.AxisType.Auto,))
        self.data = DeviceData(dataset, self.mesh, batch_size=config.batch_size,
                               eval_batch_size=config.eval_batch_size,
                               preprocess=config.preprocess, augment=config.augment,
                               shuffle=config.shuffle)
        self.chunk = config.chunk
        self.group, unroll = _backend.group_size(self.chunk, self.unrolled)
        self.compiler_options = self.compiler_options_for(config.num_steps)
        # No buffer donation: an interrupt between groups must still find the state
        # of the last finished chunk intact, to checkpoint it.
        def train_group(state, first_step, permutation, group):
            return train_steps(self.loss, self.data, self.tx, state, first_step, group,
                               seed=config.seed, unroll=unroll, permutation=permutation)

        self._run_group = jax.jit(train_group, static_argnames="group",
                                  compiler_options=self.compiler_options)
        self._permutation = jax.jit(lambda epoch: self.data.permutation(epoch, config.seed))
        self._epoch_order: tuple[int, jax.Array] | None = None
        self._evaluate = jax.jit(make_eval_step(shapes.eval_graphdef, self.data),
                                 compiler_options=self.compiler_options)
        self._eval_params = jax.jit(eval_params)
        self._learning_rate = jax.jit(schedule)
        self._eval_ahead: threading.Thread | None = None
        self._steps_ahead = self._compile_steps_ahead(shapes)
        self.parts = ModelParts.build(config, dataset.num_classes, image_shape, config.seed)
        self.initial_state = self.place({"params": self.parts.params, "rest": self.parts.rest,
                                         "opt_state": self.tx.init(self.parts.params)})

    def compiler_options_for(self, num_steps: int) -> dict | None:
        """XLA compiler options for a run of ``num_steps`` steps of this model."""
        return kernel_choice.compiler_options(self.config.model, self.config.kernels,
                                              num_steps)

    def place(self, state: State) -> State:
        """Puts a (restored) state where the compiled steps expect it."""
        return jax.device_put(state, self.data.replicated)

    def run_steps(self, state: State, first_step: int, num_steps: int
                  ) -> tuple[State, jax.Array]:
        """Runs ``num_steps`` steps from ``first_step``; returns the state and losses."""
        group = math.gcd(self.group, num_steps)  # a short last chunk may need smaller groups
        if self._eval_ahead is None:  # beside the steps' compilation, if still running
            self._eval_ahead = self._compile_evaluation_ahead(state)
        if self._steps_ahead is not None:
            self._steps_ahead.join()  # one compilation of the steps, not two
            self._steps_ahead = None
        losses = []
        for start in range(first_step, first_step + num_steps, group):
            state, part = self._run_group(state, jnp.int32(start), self.epoch_order(start),
                                          group)
            losses.append(part)
        return state, (losses[0] if len(losses) == 1 else jnp.concatenate(losses))

    def epoch_order(self, step: int) -> jax.Array:
        """The order of the training set in ``step``'s epoch (kept for the epoch)."""
        epoch = step // self.data.steps_per_epoch
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            self._epoch_order = (epoch, self._permutation(jnp.int32(epoch)))
        return self._epoch_order[1]

    def _compile_steps_ahead(self, shapes: ModelParts) -> threading.Thread:
        """Compiles a group of training steps in a thread, from the model's shapes, while
        this one initialises the parameters; the program lands in JAX's cache, where
        `run_steps` finds it. Any failure is left for `run_steps` to raise."""
        def like(tree):
            return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
                x.shape, x.dtype, sharding=self.data.replicated, weak_type=x.weak_type), tree)

        state = like({"params": shapes.params, "rest": shapes.rest,
                      "opt_state": jax.eval_shape(self.tx.init, shapes.params)})

        def compile_steps():
            try:
                self._run_group.lower(state, jnp.int32(0), self.epoch_order(0),
                                      self.group).compile()
            except Exception:  # noqa: BLE001, S110 - run_steps() raises it, in its place
                pass

        thread = threading.Thread(target=compile_steps, name="clr-jax-compile-steps")
        thread.start()
        return thread

    def _compile_evaluation_ahead(self, state: State) -> threading.Thread:
        """Compiles the evaluation in a thread, beside the steps' compilation (the
        thread `_compile_steps_ahead` started): XLA's compiler leaves part of the cores
        idle, and the evaluation's program would otherwise be compiled at the first
        evaluation, with the steps waiting. The compiled program lands in JAX's cache,
        where `evaluate` finds it; any failure is left for `evaluate` to raise."""
        def compile_evaluation():
            try:
                params = self._eval_params(state["opt_state"], state["params"])
                self._evaluate.lower(params, state["rest"]).compile()
            except Exception:  # noqa: BLE001, S110 - evaluate() raises it, in its place
                pass

        thread = threading.Thread(target=compile_evaluation, name="clr-jax-compile-eval")
        thread.start()
        return thread

    def evaluate(self, state: State) -> dict[str, float]:
        """Test loss and accuracy of ``state`` (at a schedule-free optimizer's averaged
        point, `clr_jax.harness.optim.eval_params`)."""
        if self._eval_ahead is not None:
            self._eval_ahead.join()  # one compilation of the evaluation, not two
        params = self._eval_params(state["opt_state"], state["params"])
        return {k: float(x) for k, x in self._evaluate(params, state["rest"]).items()}

    def learning_rate(self, step: int) -> float:
        """The rate of the update at ``step`` (counting from 0)."""
        return float(self._learning_rate(jnp.int32(step)))


# -- the run: files, checkpoints, resume -------------------------------------------------

def train(
    config: TrainConfig,
    dataset: ImageDataset,
    out: str | os.PathLike,
    *,
    schedule: optax.Schedule | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    describe: Mapping[str, Any] | None = None,
    on_log: Callable[[dict], None] | None = None,
    tensorboard: bool = False,
) -> dict[str, Any]:
    """Trains and evaluates, writing ``metrics.jsonl``, ``summary.json`` and checkpoints.

    Args:
      config: the `TrainConfig`, whose ``schedule`` gives the learning rate.
      dataset: the data.
      out: the run's folder.
      schedule: a schedule function instead of ``config.schedule`` (its values are
        recorded as a digest, so a resume with another schedule is still caught).
      resume: continue from the latest checkpoint in ``out``.
      overwrite: replace results already in ``out``.
      progress: show a progress bar.
      describe: extra fields for ``config.json`` and the summary (data set name, ...).
      on_log: called with each logged row.
      tensorboard: also write the logged rows as TensorBoard scalars in
        ``out/tensorboard`` (needs tensorboardX).

    Returns:
      The summary: final and best test accuracy, steps, wall time, images per second,
      device, kernels, and ``fingerprint`` (sha256 of the final parameters). Resuming a
      run that has finished changes nothing and returns its saved summary, with
      ``"finished_before": True``.

    Raises:
      ValueError: on bad settings, an unusable ``out``, a resume whose settings differ
        from the saved run's, or a resume with no checkpoint to resume from.
      TrainingError: when the loss stops being finite (the last checkpoint is kept).
      KeyboardInterrupt: after saving a checkpoint, when interrupted by Ctrl-C, or
        `clr_jax.harness.stopping.Terminated` (a subclass) by SIGTERM.
    """
    if schedule is not None and config.schedule:
        raise ValueError("give the schedule once: TrainConfig.schedule or schedule=, not both.")
    run_dir = open_run(config, dataset, out, resume=resume, overwrite=overwrite,
                       summary="summary.json")  # before anything is built or written
    trainer = Trainer(config, dataset, schedule)
    # The stages are recorded in the config; a schedule function only as its values'
    # digest (computed for stages too when an earlier run's record has one).
    digest = {"schedule_sha256": lambda: schedule_digest(trainer.schedule, config.num_steps)}
    record = run_dir.check_record(
        {"config": dataclasses.asdict(config), **(describe or {}),
         **({} if config.schedule else {k: f() for k, f in digest.items()})},
        on_demand=digest)
    if resume and (finished := run_dir.finished()) is not None:
        return {**finished, "finished_before": True}  # nothing to do, nothing rewritten

    def make_row(step, length, losses, state):
        if not np.isfinite(losses).all():
            bad = step - length + int(np.flatnonzero(~np.isfinite(losses))[0])
            kept = run_dir.latest_step()
            raise TrainingError(
                f"the loss became {losses[bad - step + length]} at step {bad} (learning "
                f"rate {trainer.learning_rate(bad):.4g}). Lower the learning rate (a range "
                "test shows where training diverges) and train again with overwrite=True"
                + (f"; the checkpoint of step {kept} is kept." if kept is not None else ".")
            )
        row = {"step": step, "lr": trainer.learning_rate(step - 1), "loss": float(losses.mean())}
        if step % config.eval_every == 0 or step == config.num_steps:
            row.update(trainer.evaluate(state))
        return row

    def postfix(row):
        return {"loss": f"{row['loss']:.3f}", "lr": f"{row['lr']:.3g}",
                **({"acc": f"{row['test_accuracy']:.3f}"} if "test_accuracy" in row else {})}

    state, step, steps_run, seconds = run_loop(
        trainer, run_dir, num_steps=config.num_steps, log_every=config.log_every,
        checkpoint_every=config.checkpoint_every, make_row=make_row, postfix=postfix,
        progress=progress, writers=metric_writers(run_dir, tensorboard=tensorboard,
                                                  on_log=on_log))
    final = trainer.evaluate(state)
    evaluated = [r for r in run_dir.read_metrics(step) if "test_accuracy" in r]
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
        "kernels": kernel_choice.resolve(config.kernels),
        "fingerprint": fingerprint(state["params"]),
        **record,
    }
    distributed.on_primary(lambda: write_json(run_dir.path / "summary.json", summary),
                           "write summary.json")
    return summary
