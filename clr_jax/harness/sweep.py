"""Schedule sweeps: K models, each with its own schedule, trained in one compiled program.

The K model and optimizer states are stacked on a leading member axis and the training
step is vmapped over it. Schedules are data (`clr_jax.policies.vectorize`): a sweep that
mixes policies, bounds, step sizes, gamma and staged segments compiles once. Seeds,
momentum and weight decay may differ per member too; members with the same seed see the
same batches, members with different seeds their own initialisation and shuffle.

The member axis is sharded over a ("members", "data") device mesh. Members run in
chunks of ``members_per_chunk`` (one compiled program serves every chunk): by default
all members at once where they fit in memory; on CPU, convolutional models run one
member per chunk, because XLA's CPU backend runs vmapped (grouped) convolutions ~2.6x
slower than separate ones (benchmarks/RESULTS.md), so there the sweep gives one
compilation and one data pipeline, not parallel arithmetic.

A member whose loss stops being finite is marked diverged (the step is recorded) and
the others go on.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from clr_jax import _validation as v
from clr_jax._io import write_json
from clr_jax.harness.data import ImageDataset
from clr_jax.harness.models import build_model
from clr_jax.harness.train import (TrainConfig, Trainer, _read_metrics, prepare_out_dir,
                                   run_loop)
from clr_jax.policies import POLICIES, vectorize

__all__ = ["Member", "SweepTrainer", "load_members", "parse_members", "sweep",
           "write_report"]

_MEMBER_KEYS = ("name", "policy", "stages", "seed", "momentum", "weight_decay")


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of a sweep: its schedule as stages, and what else differs.

    ``stages`` is a tuple of ``(policy, settings, num_steps)`` as for
    `clr_jax.policies.staged`; ``seed``, ``momentum`` and ``weight_decay`` default to
    the sweep's `TrainConfig` when None.
    """

    name: str
    stages: tuple[tuple[str, dict, int], ...]
    seed: int | None = None
    momentum: float | None = None
    weight_decay: float | None = None


def _number(where: str, key: str, value, kind=float):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {key} must be a number, got {value!r}.")
    if kind is int and value != int(value):
        raise ValueError(f"{where}: {key} must be a whole number, got {value!r}.")
    return kind(value)


def parse_members(spec: Sequence[Mapping[str, Any]]) -> list[Member]:
    """Members from plain dicts (as read from JSON/TOML or the command line).

    Each dict has a ``name`` and either a ``policy`` with its settings
    (``{"name": "tri", "policy": "triangular", "base_lr": 0.001, ...}``) or
    ``stages``, a list of such dicts each with ``steps`` (its length); optional
    ``seed``, ``momentum`` and ``weight_decay``.

    Raises:
      ValueError: one line naming the member and what is wrong (no members, unknown
        policy or key, missing settings, duplicate names, stages without lengths).
    """
    if isinstance(spec, Mapping) or not isinstance(spec, Sequence) or not spec:
        raise ValueError("the sweep has no members; give at least one (a list of "
                         "{name, policy, settings...}).")
    members, names = [], set()
    for index, item in enumerate(spec):
        where = f"member {index}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} must be a table of settings, got {item!r}.")
        name = str(item.get("name", f"member{index}"))
        where = f"member {index} ({name!r})"
        if name in names:
            raise ValueError(f"{where}: the name is used twice; names must be unique.")
        names.add(name)
        if ("policy" in item) == ("stages" in item):
            raise ValueError(f"{where}: give either a policy with its settings or a list "
                             "of stages, not both or neither.")
        if "stages" in item:
            unknown = sorted(set(item) - set(_MEMBER_KEYS))
            if unknown:
                raise ValueError(f"{where}: unknown keys {', '.join(unknown)} next to "
                                 "stages (settings belong inside each stage).")
            raw = item["stages"]
            if not isinstance(raw, Sequence) or isinstance(raw, (str, Mapping)) or not raw:
                raise ValueError(f"{where}: stages must be a non-empty list of tables.")
        else:
            raw = [{k: val for k, val in item.items() if k not in _MEMBER_KEYS
                    or k == "policy"}]
        stages = []
        for s, stage in enumerate(raw):
            if not isinstance(stage, Mapping) or "policy" not in stage:
                raise ValueError(f"{where}: stage {s} needs a policy.")
            policy = stage["policy"]
            if policy not in POLICIES:
                raise ValueError(f"{where}: unknown policy {policy!r}; choose from "
                                 f"{', '.join(POLICIES)}.")
            last = s == len(raw) - 1
            if "steps" not in stage and not last:
                raise ValueError(f"{where}: stage {s} needs steps (its length); only the "
                                 "last stage may leave it out.")
            steps = _number(where, f"stage {s} steps", stage.get("steps", 1), int)
            settings = {k: val for k, val in stage.items() if k not in ("policy", "steps")}
            stages.append((policy, settings, steps))
        try:
            vectorize([stages])  # every check a single schedule gets
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        extras = {}
        for key, kind in (("seed", int), ("momentum", float), ("weight_decay", float)):
            if item.get(key) is not None:
                extras[key] = _number(where, key, item[key], kind)
        if "momentum" in extras:
            v.check(f"{where} momentum", extras["momentum"], lambda m: (m >= 0) & (m < 1),
                    "in [0, 1)")
        if "weight_decay" in extras:
            v.finite_nonnegative(f"{where} weight_decay", extras["weight_decay"])
        members.append(Member(name, tuple(stages), **extras))
    return members


def load_members(path: str | os.PathLike) -> tuple[dict, list[Member]]:
    """Reads a sweep file (``.json`` or ``.toml``): ``(train settings, members)``.

    The file holds ``member`` (or ``members``), a list of member tables as for
    `parse_members`, and optionally ``train``, a table of `TrainConfig` fields.

    Raises:
      ValueError: if the file is missing or unreadable, or its content is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file {path} does not exist.")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise ValueError(f"sweep file {path} must end in .json or .toml.")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read sweep file {path}: {error}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"sweep file {path} must hold a table with a member list.")
    unknown = sorted(set(data) - {"member", "members", "train"})
    if unknown:
        raise ValueError(f"sweep file {path}: unknown keys {', '.join(unknown)}; "
                         "use member (a list) and train (a table).")
    train = data.get("train", {})
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(train, Mapping) or set(train) - fields:
        bad = sorted(set(train) - fields) if isinstance(train, Mapping) else [train]
        raise ValueError(f"sweep file {path}: unknown train settings {bad}; "
                         f"known: {', '.join(sorted(fields))}.")
    return dict(train), parse_members(data.get("member", data.get("members", [])))


def _memory_limit(device) -> int:
    stats = getattr(device, "memory_stats", lambda: None)()
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


class SweepTrainer(Trainer):
    """The compiled pieces of a sweep: `Trainer`'s data and model, vmapped over members.

    Args:
      config: the shared `TrainConfig` (each member may override seed, momentum and
        weight decay).
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
        self.members = list(members)
        self._requested = (members_per_chunk, member_devices)
        if members_per_chunk is not None:
            v.positive_int("members_per_chunk", members_per_chunk)
        if member_devices is not None:
            v.positive_int("member_devices", member_devices)
            if jax.device_count() % member_devices:
                raise ValueError(f"member_devices={member_devices} does not divide the "
                                 f"{jax.device_count()} devices.")
        self.schedule_fn, hp = vectorize([m.stages for m in self.members])
        hp["seed"] = np.array([config.seed if m.seed is None else m.seed
                               for m in self.members], np.int32)
        hp["momentum"] = np.array([config.momentum if m.momentum is None else m.momentum
                                   for m in self.members], np.float32)
        hp["weight_decay"] = np.array([config.weight_decay if m.weight_decay is None
                                       else m.weight_decay for m in self.members], np.float32)
        self._hp = hp
        self._dataset_shape = dataset.train_images.shape[1:]
        super().__init__(config, dataset, lambda step: 0.0)
        self.initial_state = self._initial_states(dataset.num_classes)
        # placed once, not on every chunk of steps
        self._chunk_params = [self.member_params(index) for index in self._chunk_slices()]
        self._rates = jax.jit(jax.vmap(self.schedule_fn, (0, None)))

    # -- layout --------------------------------------------------------------------------
    def _make_mesh(self):
        k, devices = len(self.members), jax.device_count()
        chunk, member_devices = self._requested
        if chunk is None:
            chunk = 1 if (self.convolutional and jax.default_backend() == "cpu") \
                else self._fit_chunk(k)
        chunk = min(chunk, k)
        if member_devices is None:
            member_devices = math.gcd(chunk, devices)
        chunk = -(-chunk // member_devices) * member_devices
        if self.config.batch_size % (devices // member_devices):
            raise ValueError(f"batch_size={self.config.batch_size} does not split over the "
                             f"{devices // member_devices} data devices.")
        self.members_per_chunk, self.member_devices = chunk, member_devices
        self.num_chunks = -(-k // chunk)
        return jax.make_mesh((member_devices, devices // member_devices), ("members", "data"),
                             axis_types=(jax.sharding.AxisType.Auto,) * 2)

    def _fit_chunk(self, k: int) -> int:
        """The most members per chunk whose estimated memory fits the device."""
        model = build_model(self.config.model, 10, self._dataset_shape, 0)
        from flax import nnx

        state = nnx.state(model)
        per_member = 4 * sum(x.size for x in jax.tree.leaves(state))  # params
        # params, gradients, optimizer state (up to 2 moments), update: ~6 copies, and
        # the activations of one batch, estimated from the forward pass's outputs.
        graphdef = nnx.graphdef(model)
        shape = jax.ShapeDtypeStruct((self.config.batch_size, *self._dataset_shape),
                                     jnp.float32)
        jaxpr = jax.make_jaxpr(lambda x: nnx.merge(graphdef, state)(x))(shape)
        activations = sum(4 * math.prod(var.aval.shape) for eqn in jaxpr.eqns
                          for var in eqn.outvars if hasattr(var.aval, "shape"))
        need = 6 * per_member + 2 * activations
        free = _memory_limit(jax.devices()[0]) - 4 * math.prod(self._dataset_shape) * 60_000
        return max(1, min(k, int(0.7 * free // max(need, 1))))

    def _chunk_slices(self):
        c, k = self.members_per_chunk, len(self.members)
        # The last chunk is padded with copies of its first member; their results are
        # dropped.
        return [np.minimum(np.arange(i * c, (i + 1) * c), k - 1) if (i + 1) * c <= k
                else np.concatenate([np.arange(i * c, k), np.full((i + 1) * c - k, i * c)])
                for i in range(self.num_chunks)]

    def _initial_states(self, num_classes: int):
        from flax import nnx

        member_sharding = NamedSharding(self.mesh, PartitionSpec("members"))
        states = {}
        chunks = []
        for index in self._chunk_slices():
            rows = []
            for m in index:
                seed = int(self._hp["seed"][m])
                if seed not in states:
                    model = build_model(self.config.model, num_classes, self.image_shape,
                                        seed)
                    model.train()
                    _, params, rest = nnx.split(model, nnx.Param, ...)
                    states[seed] = {"params": params, "rest": rest,
                                    "opt_state": self.tx.init(params)}
                rows.append(states[seed])
            stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *rows)
            chunks.append(jax.device_put(stacked, member_sharding))
        return chunks

    def place(self, state):
        member_sharding = NamedSharding(self.mesh, PartitionSpec("members"))
        return jax.device_put(state, member_sharding)

    def member_params(self, index: Sequence[int]):
        """The schedule and optimizer settings of members ``index``, on the devices."""
        rows = jax.tree.map(lambda x: x[np.asarray(index)], self._hp)
        return jax.device_put(rows, NamedSharding(self.mesh, PartitionSpec("members")))

    def learning_rates(self, step: int) -> np.ndarray:
        """Every member's rate at ``step``."""
        return np.asarray(self._rates(self._hp, jnp.int32(step)))

    # -- steps ---------------------------------------------------------------------------
    def _make_group(self, unroll: bool):
        def one(state, hp, first_step, group):
            tx = self.make_tx(lambda count: self.schedule_fn(hp, count),
                              momentum=hp["momentum"], weight_decay=hp["weight_decay"])
            return self._steps(state, first_step, group, unroll, tx, seed=hp["seed"])

        def run(state, hp, first_step, group):
            return jax.vmap(lambda s, h: one(s, h, first_step, group),
                            spmd_axis_name="members")(state, hp)

        return run

    def _make_eval(self, graphdef=None):
        single = super()._make_eval(graphdef)
        return jax.vmap(single, spmd_axis_name="members")

    def run_steps(self, states, first_step: int, num_steps: int):
        """Runs every chunk ``num_steps`` steps; returns the states and losses [steps, K]."""
        group = math.gcd(self.group, num_steps)
        new_states, losses = [], []
        for state, hp in zip(states, self._chunk_params):
            parts = []
            for start in range(first_step, first_step + num_steps, group):
                state, part = self._run_group(state, hp, jnp.int32(start), group)
                parts.append(part)
            new_states.append(state)
            losses.append(jnp.concatenate(parts, axis=1))
        k = len(self.members)
        return new_states, np.concatenate([np.asarray(x) for x in losses]).T[:, :k]

    def evaluate(self, states) -> dict[str, list[float]]:
        results = [self._evaluate(s["params"], s["rest"]) for s in states]
        k = len(self.members)
        return {name: [float(x) for x in np.concatenate([np.asarray(r[name]) for r in results])[:k]]
                for name in results[0]}


# -- the run ------------------------------------------------------------------------------

def _finite(x):
    return x if x is None or math.isfinite(x) else None


def sweep(
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
) -> dict[str, Any]:
    """Trains every member for ``config.num_steps`` steps; writes histories and a report.

    Writes into ``out``: ``metrics.jsonl`` (one row per log step with per-member lists),
    ``sweep.json`` (per-member histories and results), ``table.md`` and ``table.csv``,
    ``curves.png`` and ``schedules.png``, and checkpoints (``config.checkpoint_every``)
    so that ``resume=True`` continues an interrupted sweep.

    Args:
      config: the shared settings.
      dataset: the data.
      members: the `Member` list (see `parse_members`).
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

    Returns:
      The content of ``sweep.json``.

    Raises:
      ValueError: on bad settings or an unusable ``out``.
      KeyboardInterrupt: after saving a checkpoint, when interrupted.
    """
    out = Path(out)
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy}.")
    prepare_out_dir(out, resume=resume, overwrite=overwrite)
    trainer = SweepTrainer(config, dataset, members, members_per_chunk=members_per_chunk,
                           member_devices=member_devices)
    diverged: dict[int, int] = {}
    previous = _read_metrics(out / "metrics.jsonl", config.num_steps)
    for row in previous:
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

    record = {"config": dataclasses.asdict(config),
              "members": [dataclasses.asdict(m) for m in members],
              "members_per_chunk": trainer.members_per_chunk,
              "member_devices": trainer.member_devices, **(describe or {})}
    state, step, steps_run, seconds = run_loop(
        trainer, out, record, resume=resume, progress=progress, make_row=make_row,
        postfix=postfix, desc=f"sweep x{len(members)}")
    rows = _read_metrics(out / "metrics.jsonl", step)
    results = _results(members, rows, diverged, target_accuracy)
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
        "config": dataclasses.asdict(config),
        **(describe or {}),
    }
    write_json(out / "sweep.json", summary)
    write_report(summary, out, schedule=lambda steps: np.asarray(jax.vmap(
        jax.vmap(trainer.schedule_fn, (0, None)), (None, 0))(trainer._hp, steps)))
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

    from clr_jax.plotting import _figure, save_figure

    fig = _figure()
    ax = fig.add_subplot()
    for m in summary["members"]:
        h = m["history"]
        ax.plot(h["eval_step"], [np.nan if a is None else a for a in h["test_accuracy"]],
                marker=".", label=m["name"])
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", label=f"target {target:.3f}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("test accuracy")
    ax.set_title("Sweep: test accuracy")
    ax.legend(fontsize="small")
    save_figure(fig, out / "curves.png")

    if schedule is not None and steps:
        grid = np.unique(np.linspace(0, steps - 1, min(steps, 2000)).astype(np.int32))
        values = schedule(grid)
        fig = _figure()
        ax = fig.add_subplot()
        for m, member in enumerate(summary["members"]):
            ax.plot(grid, values[:, m], label=member["name"])
        ax.set_xlabel("iteration")
        ax.set_ylabel("learning rate")
        ax.set_title("Sweep: schedules")
        ax.legend(fontsize="small")
        save_figure(fig, out / "schedules.png")
