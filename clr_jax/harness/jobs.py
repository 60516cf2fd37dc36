"""The jobs behind the command line: the range test of a harness model, and the demo."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import clr_jax
from clr_jax import plotting, policies
from clr_jax._io import write_json
from clr_jax.harness import distributed
from clr_jax.harness.data import ImageDataset
from clr_jax.harness.rundir import RunDir
from clr_jax.harness.train import Trainer, TrainConfig, make_eval_step
from clr_jax.range_test import MODES
from clr_jax.range_test import _check_common as _check_range

__all__ = ["RangeTestPieces", "RangeTestSettings", "compare", "find_model_bounds", "range_test_pieces", "read_all",
           "run_demo", "run_range_test", "write_range_test_report"]


def _report_folder(out, report: str, overwrite: bool) -> Path:
    """``out``, checked: it may not hold ``report`` already unless ``overwrite``."""
    out = Path(out)
    if (out / report).exists() and not overwrite:
        raise ValueError(f"{out} already holds {report}; pass overwrite=True or choose "
                         "another folder.")
    RunDir(out, overwrite=overwrite)
    return out


@dataclasses.dataclass(frozen=True)
class RangeTestSettings:
    """The range tests' own settings (model, data and optimizer come from the run's
    `TrainConfig`); `find_model_bounds` takes them as keywords, and the command line
    makes its flags from them.

    Attributes:
      num_steps: steps of each range test (the ramp's length).
      min_lr: the ramp's first rate.
      max_lr: the ramp's last rate (raised x10 in the next round while the reading is at
        its end).
      mode: the ramp's shape; the paper's test is linear (e.g. min_lr 1e-4, max_lr
        0.02).
      repeats: range tests per round, each with its own seed (initialisation and data
        order); the spread of their readings is the interval.
      max_rounds: rounds of range tests at most: while the reading is flagged, the next
        round extends the ramp, doubles the steps or the repeats.
    """

    num_steps: int = dataclasses.field(default=200, metadata={"flag": "steps"})
    min_lr: float = 1e-5
    max_lr: float = 10.0
    mode: str = dataclasses.field(default="exponential",
                                  metadata={"choices": MODES})
    repeats: int = 3
    max_rounds: int = 3

    def validate(self) -> None:
        """Raises ValueError naming the first bad setting."""
        _check_range(self.min_lr, self.max_lr, self.num_steps, self.mode)
        for name in ("repeats", "max_rounds"):
            if isinstance(getattr(self, name), bool) or not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}.")


@dataclasses.dataclass(frozen=True)
class RangeTestPieces:
    """What `clr_jax.find_bounds` (or `clr_jax.range_test`) needs to test a harness
    model, in the public functional form with model state: the loss
    ``loss_fn(params, model_state, batch) -> (loss, new_model_state)`` of a batch of
    indices into the data set held on the device, each seed's starting parameters and
    batches (in that seed's data order, as training would read them), the model's
    starting state (BatchNorm statistics), the test-set evaluation
    ``eval_fn(params, model_state)`` in evaluation mode (BatchNorm with the statistics
    gathered during the test) and the configured optimizer."""

    loss_fn: Callable
    init_fn: Callable
    batches: Callable
    model_state: Any
    eval_fn: Callable
    optimizer: Callable
    compiler_options: dict | None


def range_test_pieces(config: TrainConfig, dataset: ImageDataset, num_steps: int
                      ) -> RangeTestPieces:
    """The pieces of a range test of ``config``'s model on ``dataset``."""
    from clr_jax.harness.train import ModelParts

    trainer = Trainer(config, dataset, optax.constant_schedule(1e-3))
    data, state = trainer.data, trainer.initial_state
    b, spe = config.batch_size, data.steps_per_epoch
    image_shape = dataset.train_images.shape[1:]

    def batches(seed, steps):
        order = np.concatenate([np.asarray(data.permutation(jnp.int32(e), seed))
                                for e in range(-(-steps // spe))])
        return {"index": jnp.asarray(order[: steps * b].reshape(steps, b))}

    def init_fn(key):
        parts = ModelParts.build(config, dataset.num_classes, image_shape, key)
        return trainer.place(parts.params)

    def loss_fn(params, model_state, batch):
        images = data.prepare(data.train_images[batch["index"]])
        return trainer.loss(params, model_state, images, data.train_labels[batch["index"]])

    options = trainer.compiler_options_for(num_steps)
    evaluate = jax.jit(make_eval_step(trainer.parts.eval_graphdef, data),
                       compiler_options=options)

    def eval_fn(params, model_state):
        metrics = evaluate(params, model_state)
        return {"accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"]}

    return RangeTestPieces(loss_fn, init_fn, batches, state["rest"], eval_fn,
                           lambda lr: trainer.parts.optimizer(config, lr), options)


def find_model_bounds(
    config: TrainConfig,
    dataset: ImageDataset,
    *,
    min_lr: float = RangeTestSettings.min_lr,
    max_lr: float = RangeTestSettings.max_lr,
    num_steps: int = RangeTestSettings.num_steps,
    mode: str = RangeTestSettings.mode,
    eval_every: int | None = None,
    repeats: int = RangeTestSettings.repeats,
    method: str = "auto",
    max_rounds: int = RangeTestSettings.max_rounds,
    strict: bool = True,
    progress: bool = True,
    on_round: Callable[[dict], None] | None = None,
    perturbation: float = 0.0,
) -> clr_jax.FoundBounds:
    """`clr_jax.find_bounds` for a harness model: ``repeats`` range tests (seeds
    ``config.seed``, ``config.seed + 1``, ...: each its own initialisation and data
    order), read with ``method``, extended or repeated while the reading is flagged.
    ``perturbation`` scales every initial weight by ``1 + perturbation`` (to check that
    a reading does not hang on the last bits of the arithmetic)."""
    pieces = range_test_pieces(config, dataset, num_steps)
    eval_every = eval_every if eval_every is not None else max(1, num_steps // 20)
    init_fn = pieces.init_fn
    if perturbation:
        def init_fn(key):
            return jax.tree.map(lambda p: p * (1 + perturbation), pieces.init_fn(key))
    return clr_jax.find_bounds(
        pieces.loss_fn, None, pieces.batches, init_fn=init_fn, min_lr=min_lr,
        max_lr=max_lr, num_steps=num_steps, optimizer=pieces.optimizer, mode=mode,
        eval_fn=pieces.eval_fn, eval_every=eval_every,
        seeds=tuple(config.seed + i for i in range(repeats)), method=method,
        max_rounds=max_rounds, strict=strict, progress=progress,
        compiler_options=pieces.compiler_options, on_round=on_round,
        model_state=pieces.model_state)


def read_all(found: clr_jax.FoundBounds, methods: Sequence[str]) -> list[clr_jax.Bounds]:
    """The bounds each rule in ``methods`` reads from the repeats of ``found`` (the
    reading ``found`` made itself for its own rule; the rules that cannot read them are
    left out)."""
    from clr_jax.suggest import suggest_all

    others = suggest_all(list(found.results), [m for m in methods if m != found.bounds.method])
    by_method = {b.method: b for b in others} | {found.bounds.method: found.bounds}
    return [by_method[m] for m in methods if m in by_method]


def write_range_test_report(found: clr_jax.FoundBounds, bounds: Sequence[clr_jax.Bounds],
                            out: Path, *, config: TrainConfig, seconds: float,
                            title: str = "LR range test") -> None:
    """range_test.json (every round, every repeat, every rule's bounds) and
    range_test.png, written by the primary process."""
    report = {"found": found.to_dict(), "bounds": [x.to_dict() for x in bounds],
              "seconds": seconds, "config": dataclasses.asdict(config),
              "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}

    def write():
        write_json(out / "range_test.json", report)
        plotting.save_figure(plotting.plot_range_test(list(found.results), list(bounds),
                                                      title=title), out / "range_test.png")

    distributed.on_primary(write, "write the range test's report")


def run_range_test(
    config: TrainConfig,
    dataset: ImageDataset,
    out: Path,
    *,
    min_lr: float,
    max_lr: float,
    num_steps: int,
    mode: str = "linear",
    eval_every: int | None = None,
    repeats: int = 3,
    max_rounds: int = 3,
    overwrite: bool = False,
    progress: bool = True,
    methods: tuple[str, ...] = ("fall", "paper", "valley"),
    on_round: Callable[[dict], None] | None = None,
) -> tuple[clr_jax.FoundBounds, list[clr_jax.Bounds]]:
    """Range tests of the harness's model on ``dataset`` (`find_model_bounds`, read
    with the first of ``methods``), and the bounds every rule in ``methods`` reads from
    the last round's repeats; writes range_test.json/.png. A reading still flagged after
    ``max_rounds`` is reported with its flags, not raised.

    Batches are index arrays into the data set held on the device, so the test reads
    the same shuffled, preprocessed batches as training would.
    """
    _check_range(min_lr, max_lr, num_steps, mode)  # refused before anything is written
    config.validate(dataset)
    out = _report_folder(out, "range_test.json", overwrite)
    started = time.perf_counter()
    try:
        found = find_model_bounds(config, dataset, min_lr=min_lr, max_lr=max_lr,
                                  num_steps=num_steps, mode=mode, eval_every=eval_every,
                                  repeats=repeats, method=methods[0], max_rounds=max_rounds,
                                  strict=False, progress=progress, on_round=on_round)
    except clr_jax.BoundsError as error:  # nothing could be read: keep the curves
        if error.results:
            plotting.save_figure(plotting.plot_range_test(list(error.results),
                                                          title="LR range test"),
                                 out / "range_test.png")
        raise
    bounds = read_all(found, methods)
    write_range_test_report(found, bounds, out, config=config,
                            seconds=time.perf_counter() - started)
    return found, bounds


def compare(a: list[float], b: list[float]) -> dict[str, Any]:
    """Means, spreads and a verdict for two sets of final accuracies (one per seed).

    The difference of means counts as real when it exceeds twice its standard error
    (Welch's, from the two sample variances): about a 95% level for normal spreads. With
    3 seeds a side this is a rough screen, not a test; the verdict says which side is
    ahead only then, and "no clear difference" otherwise.
    """
    a_, b_ = np.asarray(a, np.float64), np.asarray(b, np.float64)
    difference = float(a_.mean() - b_.mean())
    error = float(np.sqrt(a_.var(ddof=1) / a_.size + b_.var(ddof=1) / b_.size)) \
        if min(a_.size, b_.size) > 1 else float("inf")
    clear = abs(difference) > 2 * error
    return {"difference": difference, "standard_error": error, "clear": bool(clear),
            "verdict": ("ahead" if difference > 0 else "behind") if clear
            else "no clear difference"}


def _stats(values: list[float]) -> dict[str, float]:
    x = np.asarray(values, np.float64)
    return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
            "min": float(x.min()), "max": float(x.max())}


def run_demo(out: Path, *, overwrite: bool = False, progress: bool = True,
             dataset: ImageDataset | None = None, scale: float = 1.0,
             seeds: int = 3, range_test_seed: int = 0,
             perturbation: float = 0.0) -> dict[str, Any]:
    """The main job: a range test, bounds read from it, then CLR against the fixed rate,
    ``seeds`` runs each, trained together as one sweep, on the bundled CIFAR-10 sample.

    Writes ``out/summary.md`` (and ``summary.json``): the bounds, every run's accuracy,
    each schedule's mean and spread over the seeds, and the verdict they support; PNGs
    of the range test, the schedules and the learning curves. ``scale`` shrinks every
    length (for tests).
    """
    from clr_jax.harness.data import load_dataset
    from clr_jax.harness.members import Member
    from clr_jax.harness.sweep import sweep

    out = _report_folder(out, "summary.md", overwrite)
    dataset = dataset if dataset is not None else load_dataset("sample")
    started = time.perf_counter()
    n = lambda steps: max(4, int(round(steps * scale)))  # noqa: E731
    devices = jax.device_count()
    batch = devices * -(-50 // devices)  # 50, or the next multiple of the device count
    steps_per_epoch = len(dataset.train_labels) // batch
    base = dict(model="caffe_cifar10", optimizer="caffe_sgd", batch_size=batch,
                eval_batch_size=500 if len(dataset.test_labels) % 500 == 0 else 100)
    test_steps = max(40, n(200))  # a range test needs some 20 points to be read
    test_config = TrainConfig(num_steps=test_steps, eval_every=max(1, test_steps // 10),
                              log_every=max(1, test_steps // 10), seed=range_test_seed,
                              **base)
    say = print if progress else (lambda *a, **k: None)
    test_started = time.perf_counter()
    found = find_model_bounds(
        test_config, dataset, num_steps=test_steps, eval_every=max(1, test_steps // 10),
        max_rounds=2, strict=False, progress=progress, perturbation=perturbation,
        on_round=lambda r: say(f"range test round {r['round']}: "
                               + (", ".join(f["code"] for f in r["flags"]) or "trusted")))
    bounds = read_all(found, ("edge", "paper", "valley", "steepest", "minimum"))
    write_range_test_report(found, bounds, out / "range_test", config=test_config,
                            seconds=time.perf_counter() - test_started,
                            title="LR range test (3 repeats), bundled CIFAR-10 sample")
    chosen = found.bounds
    if not chosen.trusted:
        raise clr_jax.BoundsError(
            "the demo's range tests gave no trusted bounds ("
            + "; ".join(f.message for f in chosen.flags) + f"); nothing was trained. See "
            f"{out / 'range_test' / 'range_test.png'}", chosen.flags, chosen)
    # Two cycles of one epoch each (half an epoch a step): 2 epochs of 3 seeds x 2
    # schedules keep the whole job, compiling included, within 150 s on a 2-core CPU.
    step_size = max(2, n(steps_per_epoch // 2))
    train_steps = clr_jax.steps_for_cycles(2, step_size)  # end at a cycle's end
    clr = ("triangular", {"base_lr": chosen.base_lr, "max_lr": chosen.max_lr,
                          "step_size": step_size}, 1)
    fixed = ("fixed", {"base_lr": chosen.base_lr}, 1)
    labels = {"clr": f"triangular {chosen.base_lr:.2g}-{chosen.max_lr:.2g}",
              "fixed": f"fixed {chosen.base_lr:.2g}"}
    members = [Member(f"{kind}-seed{seed}", (stages,), seed=seed)
               for kind, stages in (("clr", clr), ("fixed", fixed)) for seed in range(seeds)]
    # Test accuracy every half epoch (on a CPU, evaluating the 1,000 test images costs
    # about a tenth of an epoch's training), training loss every quarter epoch.
    config = TrainConfig(num_steps=train_steps, eval_every=max(1, train_steps // 4),
                         log_every=max(1, train_steps // 8), **base)
    summary = sweep(config, dataset, members, out / "runs", overwrite=True,
                    progress=progress, describe={"data": "bundled CIFAR-10 sample"})
    final = {kind: [m["final_test_accuracy"] for m in summary["members"]
                    if m["name"].startswith(kind + "-")] for kind in labels}
    stats = {kind: _stats(values) for kind, values in final.items()}
    verdict = compare(final["clr"], final["fixed"])

    def write_figures():
        schedules = {labels["clr"]: policies.staged([clr]),
                     labels["fixed"]: policies.staged([fixed])}
        plotting.save_figure(plotting.plot_schedule(schedules, train_steps, title="schedules"),
                             out / "schedule.png")
        curves = {m["name"]: (m["history"]["eval_step"], m["history"]["test_accuracy"])
                  for m in summary["members"]}
        plotting.save_figure(plotting.plot_accuracy(
            curves, title=f"CLR vs fixed, {seeds} seeds each, bundled CIFAR-10 sample"),
            out / "learning_curves.png")

    distributed.on_primary(write_figures, "draw the demo's figures")
    seconds = time.perf_counter() - started
    ahead = {"ahead": "CLR is ahead of", "behind": "CLR is behind",
             "no clear difference": "no clear difference between CLR and"}[verdict["verdict"]]
    headline = (
        f"CLR {100 * stats['clr']['mean']:.1f}% ± {100 * stats['clr']['std']:.1f} against "
        f"fixed {100 * stats['fixed']['mean']:.1f}% ± {100 * stats['fixed']['std']:.1f} "
        f"(test accuracy after {train_steps} steps, mean ± standard deviation over "
        f"{seeds} seeds): {ahead} the fixed rate.")
    lines = [
        "# clr-jax demo",
        "",
        f"Data: the bundled CIFAR-10 sample ({len(dataset.train_labels)} training, "
        f"{len(dataset.test_labels)} test images, JPEG copy). Model: the paper's Caffe "
        f"CIFAR-10 network, Caffe-style SGD (momentum 0.9, weight decay 0.004), batch {batch}. "
        f"Device: {jax.device_count()} x {jax.devices()[0].device_kind}. "
        f"Total time: {seconds:.0f} s.",
        "",
        f"**{headline}**",
        "",
        "## Range test",
        "",
        f"Three range tests (seeds {range_test_seed} to {range_test_seed + 2}: each its own "
        f"initialisation and data order), each an exponential ramp from "
        f"{found.rounds[-1]['min_lr']:g} to {found.rounds[-1]['max_lr']:g} over "
        f"{found.rounds[-1]['num_steps']} steps, test accuracy every "
        f"{max(1, test_steps // 10)} steps ({len(found.rounds)} round(s); "
        f"{found.steps_run} steps in all). Each rule reads the pooled curve; the interval "
        "of max_lr is that of the reading when the repeats are drawn again "
        "(docs/guide/range_test.md).",
        "",
        "| rule | base_lr | max_lr | max_lr interval | verdict |",
        "|---|---|---|---|---|",
        *[f"| {b.method} | {b.base_lr:.3g} | {b.max_lr:.3g} | "
          + ("-" if b.max_interval is None else
             f"{b.max_interval[0]:.3g} - {b.max_interval[1]:.3g}")
          + " | " + ("trusted" if b.trusted else
                     "flagged: " + ", ".join(f.code for f in b.flags)) + " |"
          for b in bounds],
        "",
        f"Training uses the `{chosen.method}` bounds (the default rule: a fifth of the rate "
        f"at which the loss turns up, {chosen.evidence.get('lr_loss_turns_up', 0):.3g}): "
        "CLR cycles between them, the fixed rate is their lower bound (as the paper "
        "compares them).",
        "",
        "![range test](range_test/range_test.png)",
        "",
        f"## Training: {seeds} seeds of each schedule, the same number of steps",
        "",
        f"{train_steps} steps ({train_steps / steps_per_epoch:g} epochs; CLR: 2 cycles of "
        f"step size {step_size}, ending at the lower bound). Seeds set the initialisation "
        "and the order of the data; the same seeds serve both schedules. All runs were "
        "trained together as one sweep (`clr-jax sweep`).",
        "",
        "| schedule | " + " | ".join(f"seed {s}" for s in range(seeds))
        + " | mean | std | range |",
        "|---" * (seeds + 4) + "|",
        *[f"| {labels[kind]} | " + " | ".join(f"{100 * a:.1f}%" for a in final[kind])
          + f" | {100 * stats[kind]['mean']:.1f}% | {100 * stats[kind]['std']:.1f} | "
          f"{100 * stats[kind]['min']:.1f}-{100 * stats[kind]['max']:.1f}% |" for kind in labels],
        "",
        f"Difference of means: {100 * verdict['difference']:+.1f} points, its standard "
        f"error {100 * verdict['standard_error']:.1f} points: "
        + ("more than twice the standard error, so the difference is read as real."
           if verdict["clear"] else
           "within twice the standard error, so this run shows no clear difference.")
        + " This compares the two schedules at one short budget (2 epochs of 5,000 "
        "images), not the paper's claim of reaching an accuracy in fewer iterations; "
        "experiments/README.md has the paper-scale runs.",
        "",
        "![schedules](schedule.png)",
        "",
        "![learning curves](learning_curves.png)",
        "",
    ]
    report = {"bounds": [b.to_dict() for b in bounds], "chosen": chosen.method,
              "range_test_seed": range_test_seed, "perturbation": perturbation,
              "range_test_rounds": found.rounds, "range_test_steps": found.steps_run,
              "steps": train_steps, "step_size": step_size, "seeds": seeds,
              "final_test_accuracy": final, "stats": stats, "comparison": verdict,
              "headline": headline, "bounds_line": chosen.describe(), "seconds": seconds,
              "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}

    def write():
        (out / "summary.md").write_text("\n".join(lines))
        write_json(out / "summary.json", report)

    distributed.on_primary(write, "write the demo's report")
    return report
