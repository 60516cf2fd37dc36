"""Schedule sweeps: K models, each with its own schedule, trained in one compiled program.

The K model and optimizer states are stacked on a leading member axis and the training
step of `clr_jax.harness.train.train_steps` is vmapped over it. Schedules are data
(`clr_jax.policies.vectorize`): a sweep that mixes policies, bounds, step sizes, gamma
and staged segments compiles once. Seeds, momentum and weight decay may differ per
member too; members with the same seed see the same batches, members with different
seeds their own initialisation and shuffle.

The member axis is sharded over a ("members", "data") device mesh. Members run in
chunks of ``members_per_chunk`` (one compiled program serves every chunk): by default
all members at once where they fit in memory (measured from the compiled program); on
CPU, convolutional models run one member per chunk, because XLA's CPU backend runs
vmapped (grouped) convolutions ~2.6x slower than separate ones (benchmarks/RESULTS.md),
so there the sweep gives one compilation and one data pipeline, not parallel arithmetic.

A member whose loss stops being finite is marked diverged (the step is recorded) and
the others go on.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from clr_jax import _backend, plotting
from clr_jax import _validation as v
from clr_jax._io import write_json
from clr_jax.harness import distributed
from clr_jax.harness import kernels as kernel_choice
from clr_jax.harness.data import ImageDataset
from clr_jax.harness.device_data import DeviceData
from clr_jax.harness.members import Member
from clr_jax.harness.loop import metric_writers, open_run, run_loop
from clr_jax.harness.optim import eval_params
from clr_jax.harness.train import (ModelParts, TrainConfig, make_eval_step, make_loss,
                                   train_steps)
from clr_jax.policies import vectorize

__all__ = ["SweepTrainer", "sweep", "write_report"]


def _free_memory(device) -> int:
    stats = getattr(device, "memory_stats", lambda: None)()
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


class SweepTrainer:
    """The compiled pieces of a sweep: the same step as a single run, vmapped over members.

    Args:
      config: the shared `TrainConfig` (each member may override seed, momentum and
        weight decay; ``config.schedule`` must be empty: each member has its own).
      dataset: the data.
      members: the `Member` list.
      members_per_chunk: members trained at once; None picks (see the module doc).
      member_devices: devices the member axis is sharded over (the rest split the
        batch); None uses as many as divide the chunk.
    """

    def __init__(self, config: TrainConfig, dataset: ImageDataset, members: Sequence[Member],
                 *, members_per_chunk: int | None = None, member_devices: int | None = None):
        if not members:
            raise ValueError("the sweep has no members.")
        if config.schedule:
            raise ValueError("a sweep takes its schedules from its members; leave "
                             "TrainConfig.schedule empty.")
        config.validate(dataset)
        if members_per_chunk is not None:
            v.positive_int("members_per_chunk", members_per_chunk)
        if member_devices is not None:
            v.positive_int("member_devices", member_devices)
            if jax.device_count() % member_devices:
                raise ValueError(f"member_devices={member_devices} does not divide the "
                                 f"{jax.device_count()} devices.")
        self.config, self.members = config, list(members)
        self.schedule_fn, hp = vectorize([m.stages for m in self.members])
        hp["seed"] = np.array([config.seed if m.seed is None else m.seed
                               for m in self.members], np.int32)
        hp["momentum"] = np.array([config.momentum if m.momentum is None else m.momentum
                                   for m in self.members], np.float32)
        hp["weight_decay"] = np.array([config.weight_decay if m.weight_decay is None
                                       else m.weight_decay for m in self.members], np.float32)
        self.hyperparameters = hp
        image_shape = dataset.train_images.shape[1:]
        self.parts = ModelParts.build(config, dataset.num_classes, image_shape, config.seed)
        self.loss = make_loss(self.parts.graphdef)
        self.convolutional = self.parts.is_convolutional(config.batch_size, image_shape)
        self.chunk = config.chunk
        self.group, self._unroll = _backend.group_size(
            self.chunk, self.parts.unrolls_on_cpu(config.batch_size, image_shape))
        self.compiler_options = kernel_choice.compiler_options(config.model, config.kernels,
                                                               config.num_steps)

        k, devices = len(self.members), jax.device_count()
        chunk = members_per_chunk
        if chunk is None:
            chunk = k if _backend.vmap_members(self.convolutional) else 1
        chunk = min(chunk, k)
        if member_devices is None:
            member_devices = math.gcd(chunk, devices)
        if config.batch_size % (devices // member_devices):
            raise ValueError(f"batch_size={config.batch_size} does not split over the "
                             f"{devices // member_devices} data devices.")
        self.member_devices = member_devices
        self.mesh = jax.make_mesh((member_devices, devices // member_devices),
                                  ("members", "data"),
                                  axis_types=(jax.sharding.AxisType.Auto,) * 2)
        self.data = DeviceData(dataset, self.mesh, batch_size=config.batch_size,
                               eval_batch_size=config.eval_batch_size,
                               preprocess=config.preprocess, augment=config.augment,
                               shuffle=config.shuffle)
        self._member_sharding = NamedSharding(self.mesh, PartitionSpec("members"))
        self._run_group = jax.jit(jax.vmap(self._member_steps, in_axes=(0, 0, None, None),
                                           spmd_axis_name="members"),
                                  static_argnums=3, compiler_options=self.compiler_options)
        self._evaluate = jax.jit(
            jax.vmap(make_eval_step(self.parts.eval_graphdef, self.data),
                     spmd_axis_name="members"), compiler_options=self.compiler_options)
        self._eval_params = jax.jit(jax.vmap(eval_params))
        if members_per_chunk is None and chunk > 1:
            chunk = min(chunk, self._members_that_fit(dataset))
        self._set_chunks(-(-chunk // member_devices) * member_devices)
        self.initial_state = self._initial_states(dataset.num_classes, image_shape)
        self._rates = jax.jit(jax.vmap(self.schedule_fn, (0, None)))

    # -- layout --------------------------------------------------------------------------
    def _set_chunks(self, chunk: int) -> None:
        k = len(self.members)
        self.members_per_chunk, self.num_chunks = chunk, -(-k // chunk)
        # The last chunk is padded with copies of its first member; their results are
        # dropped.
        self._chunk_index = [
            np.arange(i * chunk, (i + 1) * chunk) if (i + 1) * chunk <= k
            else np.concatenate([np.arange(i * chunk, k), np.full((i + 1) * chunk - k, i * chunk)])
            for i in range(self.num_chunks)]
        # placed once, not on every chunk of steps
        self._chunk_hyperparameters = [self.member_hyperparameters(index)
                                       for index in self._chunk_index]

    def _members_that_fit(self, dataset: ImageDataset) -> int:
        """The most members per chunk whose compiled program fits the device's free
        memory: arguments, outputs and temporaries of one member's vmapped group of
        steps (`memory_analysis` of the compiled program), per member, next to the data
        set, with 20% to spare."""
        one = lambda x: jax.ShapeDtypeStruct((1, *np.shape(x)), np.asarray(x).dtype)  # noqa: E731
        state = {"params": self.parts.params, "rest": self.parts.rest,
                 "opt_state": self._init_optimizer(self.parts.params)}
        hp = jax.tree.map(lambda x: x[:1], self.hyperparameters)
        compiled = self._run_group.lower(jax.tree.map(one, state),
                                         jax.tree.map(lambda x: x, hp),
                                         jnp.int32(0), self.group).compile()
        stats = compiled.memory_analysis()
        per_member = (stats.argument_size_in_bytes + stats.output_size_in_bytes
                      + stats.temp_size_in_bytes)
        data = dataset.train_images.nbytes + dataset.test_images.nbytes
        free = _free_memory(jax.devices()[0]) - data
        return max(1, int(0.8 * free // max(per_member, 1)))

    def _init_optimizer(self, params):
        # Every member's optimizer state has the same structure (the rate is a schedule).
        return self.parts.optimizer(self.config, lambda count: 0.0).init(params)

    def _optimizer(self, hp):
        return self.parts.optimizer(self.config, lambda count: self.schedule_fn(hp, count),
                                    momentum=hp["momentum"], weight_decay=hp["weight_decay"])

    def _member_steps(self, state, hp, first_step, group):
        return train_steps(self.loss, self.data, self._optimizer(hp), state, first_step,
                           group, seed=hp["seed"], unroll=self._unroll)

    def _initial_states(self, num_classes: int, image_shape):
        states, chunks = {}, []
        for index in self._chunk_index:
            rows = []
            for m in index:
                seed = int(self.hyperparameters["seed"][m])
                if seed not in states:
                    parts = ModelParts.build(self.config, num_classes, image_shape, seed)
                    states[seed] = {"params": parts.params, "rest": parts.rest,
                                    "opt_state": self._init_optimizer(parts.params)}
                rows.append(states[seed])
            stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *rows)
            chunks.append(jax.device_put(stacked, self._member_sharding))
        return chunks

    def place(self, state):
        """Puts (restored) states where the compiled steps expect them."""
        return jax.device_put(state, self._member_sharding)

    def member_hyperparameters(self, index: Sequence[int]):
        """The schedule and optimizer settings of members ``index``, on the devices."""
        rows = jax.tree.map(lambda x: x[np.asarray(index)], self.hyperparameters)
        return jax.device_put(rows, self._member_sharding)

    def learning_rates(self, step: int) -> np.ndarray:
        """Every member's rate at ``step``."""
        return np.asarray(self._rates(self.hyperparameters, jnp.int32(step)))

    def schedule_values(self, steps: np.ndarray) -> np.ndarray:
        """Every member's rate at each of ``steps``: shape [len(steps), K]."""
        return np.asarray(jax.vmap(jax.vmap(self.schedule_fn, (0, None)), (None, 0))(
            self.hyperparameters, jnp.asarray(steps)))

    # -- steps ---------------------------------------------------------------------------
    def run_steps(self, states, first_step: int, num_steps: int):
        """Runs every chunk ``num_steps`` steps; returns the states and losses [steps, K]."""
        group = math.gcd(self.group, num_steps)
        new_states, losses = [], []
        for state, hp in zip(states, self._chunk_hyperparameters):
            parts = []
            for start in range(first_step, first_step + num_steps, group):
                state, part = self._run_group(state, hp, jnp.int32(start), group)
                parts.append(part)
            new_states.append(state)
            losses.append(jnp.concatenate(parts, axis=1))
        k = len(self.members)
        return new_states, np.concatenate([distributed.to_numpy(x) for x in losses]).T[:, :k]

    def evaluate(self, states) -> dict[str, list[float]]:
        results = [self._evaluate(self._eval_params(s["opt_state"], s["params"]), s["rest"])
                   for s in states]
        k = len(self.members)
        return {name: [float(x) for x in np.concatenate(
                    [distributed.to_numpy(r[name]) for r in results])[:k]]
                for name in results[0]}


# -- the run ------------------------------------------------------------------------------

def _finite(x):
    return x if x is None or math.isfinite(x) else None


def _sweep(
    config: TrainConfig,
    dataset: ImageDataset,
    members: Sequence[Member],
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    members_per_chunk: int | None = None,
    member_devices: int | None = None,
    target_accuracy: float | None = None,
    describe: dict | None = None,
    tensorboard: bool = False,
) -> dict[str, Any]:
    """Trains every member for ``config.num_steps`` steps; writes histories and a report.

    Writes into ``out``: ``metrics.jsonl`` (one row per log step with per-member lists),
    ``sweep.json`` (per-member histories and results), ``table.md`` and ``table.csv``,
    ``curves.png`` and ``schedules.png``, and checkpoints (``config.checkpoint_every``)
    so that ``resume=True`` continues an interrupted sweep.

    Args:
      config: the shared settings.
      dataset: the data.
      members: the `Member` list (see `clr_jax.harness.members.parse_members`).
      out: the sweep's folder.
      resume: continue from the latest checkpoint in ``out``.
      overwrite: replace results already in ``out``.
      progress: show a progress bar.
      members_per_chunk: see `SweepTrainer`.
      member_devices: see `SweepTrainer`.
      target_accuracy: report the first evaluated step at which each member reached it
        (default: the best final accuracy of any member whose policy is "fixed", else
        none).
      describe: extra fields for ``config.json`` (data set name and so on).
      tensorboard: also write the logged rows as TensorBoard scalars in
        ``out/tensorboard``, one curve per member (needs tensorboardX).

    Returns:
      The content of ``sweep.json``.

    Raises:
      ValueError: on bad settings or an unusable ``out``.
      KeyboardInterrupt: after saving a checkpoint, when interrupted.
    """
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy}.")
    for name, value in (("members_per_chunk", members_per_chunk),
                        ("member_devices", member_devices)):
        if value is not None:
            v.positive_int(name, value)
    run_dir = open_run(config, dataset, out, resume=resume, overwrite=overwrite,
                       summary="sweep.json")  # before anything is built or written
    trainer = SweepTrainer(config, dataset, members, members_per_chunk=members_per_chunk,
                           member_devices=member_devices)
    diverged: dict[int, int] = {}
    for row in run_dir.read_metrics(config.num_steps):
        for m, at in enumerate(row.get("diverged_at", [])):
            if at is not None:
                diverged.setdefault(m, at)

    def make_row(step, length, losses, state):
        for m in np.flatnonzero(~np.isfinite(losses).all(axis=0)):
            diverged.setdefault(int(m), step - length + int(
                np.flatnonzero(~np.isfinite(losses[:, m]))[0]))
        row = {"step": step, "lr": trainer.learning_rates(step - 1).tolist(),
               "loss": [_finite(float(x)) for x in losses.mean(axis=0)],
               "diverged_at": [diverged.get(m) for m in range(len(members))]}
        if step % config.eval_every == 0 or step == config.num_steps:
            row.update({k: [_finite(x) for x in xs]
                        for k, xs in trainer.evaluate(state).items()})
        return row

    def postfix(row):
        accuracy = [a for a in row.get("test_accuracy", []) if a is not None]
        return {"diverged": len(diverged),
                **({"best_acc": f"{max(accuracy):.3f}"} if accuracy else {})}

    record = run_dir.check_record({
        "config": dataclasses.asdict(config),
        "members": [dataclasses.asdict(m) for m in members],
        "members_per_chunk": trainer.members_per_chunk,
        "member_devices": trainer.member_devices, **(describe or {})})
    if resume and (finished := run_dir.finished("sweep.json")) is not None:
        return {**finished, "finished_before": True}  # nothing to do, nothing rewritten
    state, step, steps_run, seconds = run_loop(
        trainer, run_dir, num_steps=config.num_steps, log_every=config.log_every,
        checkpoint_every=config.checkpoint_every, make_row=make_row, postfix=postfix,
        progress=progress, desc=f"sweep x{len(members)}",
        writers=metric_writers(run_dir, tensorboard=tensorboard,
                               names=[m.name for m in members]))
    results = _results(members, run_dir.read_metrics(step), diverged, target_accuracy)
    summary = {
        "members": results["members"],
        "target_accuracy": results["target_accuracy"],
        "steps": step,
        "wall_seconds_this_session": seconds,
        "member_images_per_second": (steps_run * config.batch_size * len(members) / seconds
                                     if seconds else None),
        "members_per_chunk": trainer.members_per_chunk,
        "member_devices": trainer.member_devices,
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "kernels": kernel_choice.resolve(config.kernels),
        **{k: val for k, val in record.items() if k != "members"},
    }

    def write():
        write_json(run_dir.path / "sweep.json", summary)
        write_report(summary, run_dir.path, schedule=trainer.schedule_values)

    distributed.on_primary(write, "write the sweep's report")
    return summary


def _results(members, rows, diverged, target):
    names = [m.name for m in members]
    evaluated = [r for r in rows if "test_accuracy" in r]
    if target is None:
        fixed = [m for m, member in enumerate(members)
                 if all(stage[0] == "fixed" for stage in member.stages)]
        if fixed and evaluated:
            finals = [evaluated[-1]["test_accuracy"][m] for m in fixed]
            finals = [a for a in finals if a is not None]
            target = max(finals) if finals else None
    out = []
    for m, name in enumerate(names):
        history = {"step": [r["step"] for r in rows],
                   "lr": [r["lr"][m] for r in rows],
                   "loss": [r["loss"][m] for r in rows],
                   "eval_step": [r["step"] for r in evaluated],
                   "test_accuracy": [r["test_accuracy"][m] for r in evaluated],
                   "test_loss": [r["test_loss"][m] for r in evaluated]}
        accuracies = [(a, s) for a, s in zip(history["test_accuracy"], history["eval_step"])
                      if a is not None]
        best = max(accuracies, key=lambda x: x[0], default=(None, None))  # earliest best
        reached = next((s for a, s in accuracies if target is not None and a >= target), None)
        out.append({"name": name, "stages": [list(s) for s in members[m].stages],
                    "final_test_accuracy": (history["test_accuracy"][-1]
                                            if evaluated else None),
                    "best_test_accuracy": best[0], "best_step": best[1],
                    "steps_to_target": reached, "diverged_at": diverged.get(m),
                    "history": history})
    return {"members": out, "target_accuracy": target}


def write_report(summary: Mapping[str, Any], out: str | os.PathLike, schedule=None) -> None:
    """Writes ``table.md``, ``table.csv``, ``curves.png`` and ``schedules.png``."""
    out = Path(out)
    target = summary.get("target_accuracy")
    header = ["member", "final accuracy", "best accuracy", "best at step",
              f"steps to {target:.4f}" if target is not None else "steps to target",
              "diverged at"]
    fmt = lambda x: "" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))  # noqa: E731
    lines = [[m["name"], fmt(m["final_test_accuracy"]), fmt(m["best_test_accuracy"]),
              fmt(m["best_step"]), fmt(m["steps_to_target"]) or ("not reached" if target
                                                                  else ""),
              fmt(m["diverged_at"])] for m in summary["members"]]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(line) + " |" for line in lines]
    steps = summary.get("steps")
    md.append("")
    md.append(f"{len(lines)} members, {steps} steps each"
              + (f"; target accuracy {target:.4f}" if target is not None else "") + ".")
    (out / "table.md").write_text("\n".join(md) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(lines)
    (out / "table.csv").write_text(buffer.getvalue())
    curves = {m["name"]: (m["history"]["eval_step"], m["history"]["test_accuracy"])
              for m in summary["members"]}
    plotting.save_figure(plotting.plot_accuracy(curves, target=target,
                                                title="Sweep: test accuracy"),
                         out / "curves.png")
    if schedule is not None and steps:
        grid = np.unique(np.linspace(0, steps - 1, min(steps, 2000)).astype(np.int32))
        values = schedule(grid)
        lines = {m["name"]: (grid, values[:, i]) for i, m in enumerate(summary["members"])}
        plotting.save_figure(plotting.plot_lines(lines, xlabel="iteration",
                                                 ylabel="learning rate",
                                                 title="Sweep: schedules"),
                             out / "schedules.png")


@functools.wraps(_sweep)
def sweep(*args, **kwargs) -> dict[str, Any]:
    from clr_jax.harness import kernels

    with kernels.xla_forms():  # see kernels.xla_forms
        return _sweep(*args, **kwargs)
