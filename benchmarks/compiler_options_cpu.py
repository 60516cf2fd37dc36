"""Which XLA CPU compiler options make each harness model train faster: one step, A/B.

    python benchmarks/compiler_options_cpu.py [--rounds 8]

For each harness model (the paper's Caffe network, ResNet-20, the MLP), one SGD step
with momentum (forward, gradient, update; batch 100, float32, the bundled CIFAR-10
sample) compiled four ways: with XLA's default options; with only reductions left to
YNNPACK (``kernels.YNN_REDUCTIONS_ONLY``: convolutions and matrix products through XLA's
own Eigen kernels); with XLA's older loop emitters (``xla_cpu_use_fusion_emitters=False``);
and with both. They are timed in alternation, `--rounds` times, 4 steps per timing, in
one process. This is the measurement behind `clr_jax.harness.kernels.compiler_options`,
which applies an option only to the models it makes faster. The Caffe network uses its
committed CPU kernels.

Also the compile time of the harness's unrolled group of 16 Caffe-network steps with
reductions only in YNNPACK, with and without the loop emitters, and the run length after
which the faster steps pay for the longer compile (extra compile seconds / seconds saved
per step): why `kernels.compiler_options` does not use the loop emitters.

Writes benchmarks/results/compiler_options_<backend>.json and its RESULTS.md section.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import clr_jax
from _report import machine, update_section, write_result
from clr_jax.harness.data import load_dataset
from clr_jax.harness.kernels import YNN_REDUCTIONS_ONLY
from clr_jax.harness.models import build_model
from clr_jax.harness.train import TrainConfig, Trainer, train_steps

LOOP_EMITTERS = {"xla_cpu_use_fusion_emitters": False}
# reductions and elementwise fusions in YNNPACK, convolutions and products in XLA's own
YNN_REDUCE_ELTWISE = {"xla_cpu_experimental_ynn_fusion_type":
                      "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_ELTWISE"}
VARIANTS = {"default": None, "ynn_reductions_only": YNN_REDUCTIONS_ONLY,
            "loop_emitters": LOOP_EMITTERS, "both": {**YNN_REDUCTIONS_ONLY, **LOOP_EMITTERS},
            "ynn_reduce_eltwise": YNN_REDUCE_ELTWISE}
STEPS_PER_TIMING = 4


def steps(name, images, labels):
    model = build_model(name, 10, images.shape[1:])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.sgd(0.001, momentum=0.9)

    def loss(p):
        logits = nnx.merge(graphdef, p, rest, copy=True)(images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def step(p, o):
        value, grads = jax.value_and_grad(loss)(p)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, value

    opt = tx.init(params)
    compiled = {variant: jax.jit(step, compiler_options=options)
                for variant, options in VARIANTS.items()}
    losses = {}
    for variant, fn in compiled.items():
        p, o = params, opt
        for _ in range(STEPS_PER_TIMING):  # compile, and the loss after 4 steps
            p, o, value = fn(p, o)
        losses[variant] = float(value)

    def run(fn):
        p, o = params, opt
        for _ in range(STEPS_PER_TIMING):
            p, o, value = fn(p, o)
        jax.block_until_ready(value)

    return compiled, losses, run


def group_compile_seconds():
    """Seconds to compile the harness's group of Caffe-network steps, with reductions
    only in YNNPACK, without and with the loop emitters."""
    trainer = Trainer(TrainConfig(num_steps=70_000, eval_every=16, log_every=16),
                      load_dataset("sample"), optax.constant_schedule(0.001))
    def fn(state, first_step, group):
        return train_steps(trainer.loss, trainer.data, trainer.tx, state, first_step, group,
                           seed=0, unroll=True)

    seconds = {"group": trainer.group}
    for variant in ("ynn_reductions_only", "both"):
        lowered = jax.jit(fn, static_argnames="group",
                          compiler_options=VARIANTS[variant]).lower(
            trainer.initial_state, jnp.int32(0), trainer.group)
        started = time.perf_counter()
        lowered.compile()
        seconds[variant] = time.perf_counter() - started
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--models", default="caffe_cifar10,resnet20,mlp")
    args = parser.parse_args()
    data = load_dataset("sample")
    images = jnp.asarray(data.train_images[:100], jnp.float32)
    images = (images - images.mean(0)) / 64
    labels = jnp.asarray(data.train_labels[:100])
    rows = {}
    for name in args.models.split(","):
        compiled, losses, run = steps(name, images, labels)
        times = {variant: [] for variant in compiled}
        for _ in range(args.rounds):
            for variant, fn in compiled.items():
                started = time.perf_counter()
                run(fn)
                times[variant].append((time.perf_counter() - started) / STEPS_PER_TIMING)
        rows[name] = {"median_seconds": {v: statistics.median(t) for v, t in times.items()},
                      "loss_after_4_steps": losses}
        for variant in VARIANTS:
            ratios = [a / b for a, b in zip(times[variant], times["default"])]
            rows[name][variant] = {"ratio_median": statistics.median(ratios),
                                   "ratio_min": min(ratios), "ratio_max": max(ratios)}
        print(name, json.dumps(rows[name]), flush=True)
    compile_seconds = group_compile_seconds() if "caffe_cifar10" in rows else None
    if compile_seconds:
        seconds = rows["caffe_cifar10"]["median_seconds"]
        saved = seconds["ynn_reductions_only"] - seconds["both"]
        compile_seconds["break_even_steps"] = (
            (compile_seconds["both"] - compile_seconds["ynn_reductions_only"]) / saved
            if saved > 0 else None)
        print("compile", json.dumps(compile_seconds), flush=True)
    result = {"benchmark": "compiler_options", "rounds": args.rounds, "batch_size": 100,
              "caffe_group_compile_seconds": compile_seconds,
              "options": VARIANTS, "machine": machine(), "clr_jax": clr_jax.__version__,
              "models": rows}
    backend = jax.default_backend()
    path = write_result("compiler_options", result)
    m = result["machine"]
    md = [f"## XLA compiler options, per model ({backend})", "",
          f"`python benchmarks/compiler_options_cpu.py --rounds {args.rounds}` → "
          f"`results/{path.name}`", "",
          f"One SGD step, batch 100, float32; {m['cpu']} ({m['cores']} cores), jax "
          f"{m['jax']}; five compilations alternated {args.rounds} times: XLA's default, "
          "only reductions in YNNPACK (`kernels.YNN_REDUCTIONS_ONLY`), the older loop "
          "emitters (`xla_cpu_use_fusion_emitters=False`), both, and reductions and "
          "elementwise fusions in YNNPACK. "
          "`kernels.compiler_options` applies each option to the models where it is "
          "faster. Ratios are step time / default step time (median of pairs, range).", "",
          "| model | default step (ms) | reductions only in YNNPACK | loop emitters | both "
          "| reductions and elementwise in YNNPACK | loss after 4 steps: default, both |",
          "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        loss = row["loss_after_4_steps"]
        cells = [f"{row[v]['ratio_median']:.3f} ({row[v]['ratio_min']:.2f}-"
                 f"{row[v]['ratio_max']:.2f})" for v in list(VARIANTS)[1:]]
        md.append(f"| {name} | {1000 * row['median_seconds']['default']:.1f} | "
                  + " | ".join(cells) + f" | {loss['default']:.6f}, {loss['both']:.6f} |")
    if compile_seconds:
        even = compile_seconds["break_even_steps"]
        md += ["", f"Compiling the harness's group of {compile_seconds['group']} Caffe-network "
               f"steps with reductions only in YNNPACK: "
               f"{compile_seconds['ynn_reductions_only']:.1f} s with XLA's default emitters, "
               f"{compile_seconds['both']:.1f} s with the loop emitters; "
               + (f"their faster steps repay the difference after ~{even:.0f} steps."
                  if even else "their steps are not faster, so nothing repays it.")]
    update_section(f"compiler_options_{backend}", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
