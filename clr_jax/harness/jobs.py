"""The jobs behind the command line: the range test of a harness model, and the demo."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import clr_jax
from clr_jax import plotting
from clr_jax._io import write_json
from clr_jax.harness import distributed
from clr_jax.harness.data import ImageDataset
from clr_jax.harness.rundir import RunDir, read_metrics
from clr_jax.harness.train import Trainer, TrainConfig, make_eval_step, train

__all__ = ["run_demo", "run_range_test"]


def _report_folder(out, report: str, overwrite: bool) -> Path:
    """``out``, checked: it may not hold ``report`` already unless ``overwrite``."""
    out = Path(out)
    if (out / report).exists() and not overwrite:
        raise ValueError(f"{out} already holds {report}; pass overwrite=True or choose "
                         "another folder.")
    RunDir(out, overwrite=overwrite)
    return out


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
    overwrite: bool = False,
    progress: bool = True,
    methods: tuple[str, ...] = ("paper", "valley"),
) -> tuple[clr_jax.RangeTestResult, list[clr_jax.Bounds]]:
    """A range test of the harness's model on ``dataset``; writes range_test.json/.png.

    Batches are index arrays into the data set held on the device, so the test reads
    the same shuffled, preprocessed batches as training would. Bounds are read with
    each of ``methods`` that can read them.
    """
    out = _report_folder(out, "range_test.json", overwrite)
    trainer = Trainer(config, dataset, optax.constant_schedule(min_lr))
    data, state = trainer.data, trainer.initial_state
    b, spe = config.batch_size, data.steps_per_epoch
    order = np.concatenate([np.asarray(data.permutation(jnp.int32(e), config.seed))
                            for e in range(-(-num_steps // spe))])
    indices = {"index": jnp.asarray(order[: num_steps * b].reshape(num_steps, b))}

    def loss_fn(params, batch):
        images = data.prepare(data.train_images[batch["index"]])
        return trainer.loss(params, state["rest"], images,
                            data.train_labels[batch["index"]])[0]

    options = trainer.compiler_options_for(num_steps)
    eval_fn = None
    if eval_every:
        # The range test updates only the parameters, so BatchNorm running statistics
        # stay at their initial values: evaluate with batch statistics (train mode).
        evaluate = jax.jit(make_eval_step(trainer.parts.graphdef, data),
                           compiler_options=options)

        def eval_fn(params):
            metrics = evaluate(params, state["rest"])
            return {"accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"]}

    started = time.perf_counter()
    result = clr_jax.range_test(
        loss_fn, state["params"], indices, min_lr=min_lr, max_lr=max_lr, num_steps=num_steps,
        optimizer=lambda lr: trainer.parts.optimizer(config, lr), mode=mode, eval_fn=eval_fn,
        eval_every=eval_every, seed=config.seed, progress=progress, compiler_options=options)
    seconds = time.perf_counter() - started
    bounds = []
    for method in methods:
        try:
            bounds.append(clr_jax.suggest_bounds(result, method))
        except ValueError:
            continue
    report = {"result": result.to_dict(), "bounds": [x.to_dict() for x in bounds],
              "seconds": seconds, "config": dataclasses.asdict(config),
              "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}

    def write():
        write_json(out / "range_test.json", report)
        plotting.save_figure(plotting.plot_range_test(result, bounds, title="LR range test"),
                             out / "range_test.png")

    distributed.on_primary(write, "write the range test's report")
    return result, bounds


def run_demo(out: Path, *, overwrite: bool = False, progress: bool = True,
             dataset: ImageDataset | None = None, scale: float = 1.0) -> dict[str, Any]:
    """The main job: range test, bounds, CLR vs fixed training on the bundled sample.

    Writes ``out/summary.md`` and PNGs of the range test, the schedule and both
    learning curves. ``scale`` shrinks every length (for tests).
    """
    from clr_jax.harness.data import load_dataset

    out = _report_folder(out, "summary.md", overwrite)
    dataset = dataset if dataset is not None else load_dataset("sample")
    started = time.perf_counter()
    n = lambda steps: max(4, int(round(steps * scale)))  # noqa: E731
    devices = jax.device_count()
    batch = devices * -(-50 // devices)  # 50, or the next multiple of the device count
    steps_per_epoch = len(dataset.train_labels) // batch
    base = dict(model="caffe_cifar10", optimizer="caffe_sgd", batch_size=batch,
                eval_batch_size=500 if len(dataset.test_labels) % 500 == 0 else 100)
    test_steps = n(200)
    result, bounds = run_range_test(
        TrainConfig(num_steps=test_steps, eval_every=max(1, test_steps // 20),
                    log_every=max(1, test_steps // 20), **base),
        dataset, out / "range_test", min_lr=1e-4, max_lr=0.02, num_steps=test_steps,
        eval_every=max(1, test_steps // 20), overwrite=True, progress=progress)
    chosen = bounds[0] if bounds else clr_jax.Bounds(0.001, 0.006, "paper's CIFAR-10 bounds",
                                                     {})
    step_size = max(2, n(steps_per_epoch // 2))
    train_steps = clr_jax.steps_for_cycles(4, step_size)
    schedules = {
        f"triangular {chosen.base_lr:.2g}-{chosen.max_lr:.2g}":
            clr_jax.triangular(chosen.base_lr, chosen.max_lr, step_size),
        f"fixed {chosen.base_lr:.2g}": optax.constant_schedule(chosen.base_lr),
    }
    summaries, folders = {}, {}
    eval_every = max(1, train_steps // 8)
    for (label, schedule), name in zip(schedules.items(), ("clr", "fixed")):
        config = TrainConfig(num_steps=train_steps, eval_every=eval_every,
                             log_every=max(1, eval_every // 2), **base)
        folders[label] = out / name
        summaries[label] = train(config, dataset, out / name, schedule=schedule,
                                 overwrite=True, progress=progress,
                                 describe={"schedule": label, "data": "bundled CIFAR-10 sample"})
    plotting.save_figure(plotting.plot_schedule(schedules, train_steps, title="schedules"),
                         out / "schedule.png")
    curves = {label: read_metrics(folder / "metrics.jsonl") for label, folder in folders.items()}
    plotting.save_figure(plotting.plot_learning_curves(
        curves, title="CLR vs fixed, bundled CIFAR-10 sample"), out / "learning_curves.png")
    seconds = time.perf_counter() - started
    lines = [
        "# clr-jax demo",
        "",
        f"Data: the bundled CIFAR-10 sample ({len(dataset.train_labels)} training, "
        f"{len(dataset.test_labels)} test images, JPEG copy). Model: the paper's Caffe "
        f"CIFAR-10 network, Caffe-style SGD (momentum 0.9, weight decay 0.004), batch {batch}. "
        f"Device: {jax.device_count()} x {jax.devices()[0].device_kind}. "
        f"Total time: {seconds:.0f} s.",
        "",
        "## Range test",
        "",
        f"Linear ramp 1e-4 to 0.02 over {test_steps} steps, test accuracy every "
        f"{max(1, test_steps // 20)} steps"
        + (f"; stopped early ({result.stop_reason})." if result.stop_reason else "."),
        "",
        "| rule | base_lr | max_lr |",
        "|---|---|---|",
        *[f"| {b.method} | {b.base_lr:.4g} | {b.max_lr:.4g} |" for b in bounds],
        "",
        f"Training uses the `{chosen.method}` bounds.",
        "",
        "![range test](range_test/range_test.png)",
        "",
        "## Training, same number of steps",
        "",
        f"{train_steps} steps (4 cycles of step size {step_size}).",
        "",
        "| schedule | final test accuracy | best test accuracy | images/s |",
        "|---|---|---|---|",
        *[f"| {label} | {s['final_test_accuracy']:.4f} | {s['best_test_accuracy']:.4f} | "
          f"{s['images_per_second']:.0f} |" for label, s in summaries.items()],
        "",
        "![schedules](schedule.png)",
        "",
        "![learning curves](learning_curves.png)",
        "",
    ]
    (out / "summary.md").write_text("\n".join(lines))
    return {"bounds": [b.to_dict() for b in bounds], "runs": summaries, "seconds": seconds}
