"""The cost of the harness's pieces on the paper's network, side by side in one process.

    python benchmarks/throughput_cpu.py [--steps 48] [--repeats 5]

One process, alternating the variants of each pair `--repeats` times, so machine noise
hits both; every figure is the median ratio of the pair. Both variants of a pair are
clr_jax: the comparison with PyTorch is benchmarks/vs_pytorch.py, process against
process (two frameworks alternating in one process fight over threads and caches).
The network is the paper's Caffe "cifar10_full", batch 100, float32.

b. the harness with triangular2 against the harness with a constant rate;
d. the harness on the real data set against the same steps fed prepared batches that
   are already on the device (the input pipeline's cost);
e. FLOPs per training image (XLA's cost analysis) and the fraction of the machine's
   peak reached, the peak taken as the best float32 matmul rate measured here.

The range test's overhead over plain steps has its own script (range_test_overhead.py).

Writes benchmarks/results/throughput_<backend>.json and its section of RESULTS.md.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import clr_jax
from _report import machine, update_section, write_result
from clr_jax.harness.data import load_dataset
from clr_jax.harness.train import TrainConfig, Trainer, train_steps

BATCH = 100


def harness(schedule, steps):
    data = load_dataset("sample")
    # A paper-length run (its fixed-rate run has 70,000 steps); the length decides
    # `kernels.compiler_options`. Only `steps` at a time are run here.
    config = TrainConfig(num_steps=70_000, eval_every=steps, log_every=steps,
                         shuffle=False)
    trainer = Trainer(config, data, schedule)
    state = {"state": trainer.initial_state, "step": 0}

    def run():
        state["state"], losses = trainer.run_steps(state["state"], state["step"], steps)
        state["step"] += steps
        return float(losses[-1])

    return run, trainer


def synthetic(trainer, steps):
    """The harness's compiled steps fed device batches that are already prepared: one
    distinct batch per step of a group (the same batch in every step would let XLA
    share the work that depends only on the images across the unrolled steps), passed
    in as arguments (not folded in as constants)."""
    g = trainer.group
    data = trainer.data
    images = data.prepare(data.train_images[:g * BATCH]).reshape(
        g, BATCH, *data.train_images.shape[1:])
    labels = data.train_labels[:g * BATCH].reshape(g, BATCH)

    def group(state, images, labels):
        def body(state, batch):
            (loss, rest), grads = jax.value_and_grad(trainer.loss, has_aux=True)(
                state["params"], state["rest"], *batch)
            updates, opt_state = trainer.tx.update(grads, state["opt_state"], state["params"])
            return {"params": optax.apply_updates(state["params"], updates), "rest": rest,
                    "opt_state": opt_state}, loss
        return jax.lax.scan(body, state, (images, labels), unroll=True)

    group = jax.jit(group, compiler_options=trainer.compiler_options)
    state = {"state": trainer.initial_state}

    def run():
        for _ in range(0, steps, g):
            state["state"], losses = group(state["state"], images, labels)
        return float(losses[-1])

    return run, lambda state: group.lower(state, images, labels)


def pair(a, b, repeats):
    a(), b()  # compile and warm up
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((a, times_a), (b, times_b)):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    ratios = [x / y for x, y in zip(times_a, times_b)]
    return {"seconds_a": times_a, "seconds_b": times_b, "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios)}


def cost(lowered):
    analysis = lowered.compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


def matmul_peak():
    x = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(10):
        started = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - started)
    return 2 * 2048**3 / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    steps = args.steps
    clr = clr_jax.triangular2(0.001, 0.006, 2000)
    jax_clr, trainer = harness(clr, steps)
    jax_fixed, fixed_trainer = harness(optax.constant_schedule(0.001), steps)
    jax_synth, lower = synthetic(trainer, steps)

    b = pair(jax_clr, jax_fixed, args.repeats)
    d = pair(jax_clr, jax_synth, args.repeats)
    flops = cost(lower(trainer.initial_state)) / (trainer.group * BATCH)
    # b's arithmetic: one group of harness steps with each schedule, as XLA counts it
    group_flops = [cost(jax.jit(lambda state, first, t=t: train_steps(
        t.loss, t.data, t.tx, state, first, t.group, seed=0, unroll=True),
        compiler_options=t.compiler_options).lower(t.initial_state, jnp.int32(0)))
        for t in (trainer, fixed_trainer)]
    peak = matmul_peak()
    jax_images = BATCH * steps / statistics.median(b["seconds_a"])
    result = {
        "benchmark": "throughput", "steps_per_timing": steps, "repeats": args.repeats,
        "machine": machine(), "clr_jax": clr_jax.__version__,
        "b_clr_over_constant": b, "d_real_over_synthetic": d,
        "b_flops_clr_over_constant": group_flops[0] / group_flops[1],
        "harness_images_per_second": jax_images,
        "flops_per_image": flops, "matmul_peak_flops": peak,
        "fraction_of_peak": flops * jax_images / peak,
    }
    backend = jax.default_backend()
    path = write_result("throughput", result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))
    m = result["machine"]
    md = [
        f"## The harness's pieces on the paper's network ({backend})", "",
        f"`python benchmarks/throughput_cpu.py --steps {steps} --repeats {args.repeats}` "
        f"→ `results/{path.name}`", "",
        f"{m['cpu']} ({m['cores']} cores), {m['devices']} x {m['device_kind']}, jax "
        f"{m['jax']}. Caffe cifar10_full, batch 100, float32; medians of "
        f"{args.repeats} alternated pairs of {steps} steps (harness: {jax_images:.0f} "
        "images/s in this process). Against PyTorch: the whole-job section.", "",
        "| figure | value | target |", "|---|---|---|",
        f"| b. harness time with triangular2 / with a constant rate | "
        f"{b['ratio_median']:.3f} (range {b['ratio_min']:.3f}-{b['ratio_max']:.3f}) | "
        "<= 1.01 |",
        f"| b. the same, XLA's FLOP count of a group of steps | "
        f"{result['b_flops_clr_over_constant']:.6f} | |",
        f"| d. harness time on the data set / on prepared device batches | "
        f"{d['ratio_median']:.3f} (range {d['ratio_min']:.3f}-{d['ratio_max']:.3f}) | "
        "<= 1.05 |",
        f"| e. FLOPs per training image (XLA cost analysis) | {flops / 1e6:.1f} MFLOP | |",
        f"| e. fraction of peak (peak = best 2048² float32 matmul here, "
        f"{peak / 1e9:.0f} GFLOP/s) | {result['fraction_of_peak']:.1%} | |",
    ]
    update_section(f"throughput_{backend}", "\n".join(md))


if __name__ == "__main__":
    main()
