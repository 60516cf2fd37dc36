"""The Caffe net's training steps in a rolled loop against unrolled groups on CPU, with
conv1's gradient as autodiff writes it and as `kernels.conv_nhwc` writes it.

    python benchmarks/rolled_loop_cpu.py [--rounds 6]

The harness's training steps (`train_steps`: the Caffe net with its CPU kernels and
compiler options, Caffe SGD, batch 100, the bundled sample) compiled four ways: steps
unrolled in a group of 10 (what a 1,000-step job with a chunk of 100 ran before) or in
a rolled ``lax.scan`` (a while loop), each with conv1 (a plain 5x5 convolution; conv2
and conv3 are spectral) differentiated by autodiff or by `kernels.conv_nhwc`; plus the
rolled loop over a whole chunk of 100 steps, which is what the harness runs now. Each
variant is compiled once (in this order, one process; the first compilation of a
process also pays for setting up XLA's compiler, so the first variant's compile time
reads high) and timed in alternation, `--rounds` times, one call per timing. Reported:
compile seconds, the median step time and its range, compile + 1,000 steps, and the
largest difference of the first 10 steps' losses from the unrolled autodiff variant's.

Writes benchmarks/results/rolled_loop_<backend>.json and its RESULTS.md section.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import clr_jax
from _caffe_group import CaffeGroup
from _report import machine, update_section, write_result
from clr_jax.harness import kernels
from clr_jax.harness.train import train_steps

# (name, conv1's gradient, unrolled, steps per call)
VARIANTS = [
    ("unrolled, autodiff", "autodiff", True, 10),
    ("unrolled, conv_nhwc", "conv_nhwc", True, 10),
    ("rolled, conv_nhwc", "conv_nhwc", False, 10),
    ("rolled, autodiff", "autodiff", False, 10),
    ("rolled, conv_nhwc, 100 per call", "conv_nhwc", False, 100),
]


def build(gradient: str) -> CaffeGroup:
    """The Caffe group with conv1 built on ``kernels.conv_nhwc`` or on the plain lax
    convolution (the model picks the function up when it is built)."""
    conv_nhwc = kernels.conv_nhwc
    if gradient == "autodiff":
        kernels.conv_nhwc = jax.lax.conv_general_dilated
    try:
        return CaffeGroup(num_steps=1000, log_every=100)
    finally:
        kernels.conv_nhwc = conv_nhwc


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    groups = {g: build(g) for g in ("autodiff", "conv_nhwc")}
    compiled, compile_seconds, losses = {}, {}, {}
    for name, gradient, unroll, length in VARIANTS:
        caffe = groups[gradient]
        trainer = caffe.trainer

        def fn(state, first_step, permutation, trainer=trainer, unroll=unroll, length=length):
            return train_steps(trainer.loss, trainer.data, trainer.tx, state, first_step,
                               length, seed=0, unroll=unroll, permutation=permutation)

        lowered = jax.jit(fn, compiler_options=trainer.compiler_options).lower(
            caffe.state, jnp.int32(0), caffe.permutation)
        started = time.perf_counter()
        compiled[name] = lowered.compile()
        compile_seconds[name] = time.perf_counter() - started
        _, out = compiled[name](caffe.state, jnp.int32(0), caffe.permutation)
        losses[name] = np.asarray(out)[:10]
        print(name, f"compiled in {compile_seconds[name]:.1f} s", flush=True)
    times = {name: [] for name in compiled}
    for _ in range(args.rounds):
        for name, gradient, _, length in VARIANTS:
            caffe = groups[gradient]
            started = time.perf_counter()
            jax.block_until_ready(compiled[name](caffe.state, jnp.int32(0), caffe.permutation))
            times[name].append((time.perf_counter() - started) / length)
    reference = losses[VARIANTS[0][0]]
    rows = {}
    for name, gradient, unroll, length in VARIANTS:
        step = statistics.median(times[name])
        rows[name] = {"conv1_gradient": gradient, "unrolled": unroll, "steps_per_call": length,
                      "compile_seconds": compile_seconds[name],
                      "step_ms_median": 1000 * step,
                      "step_ms_range": [1000 * min(times[name]), 1000 * max(times[name])],
                      "job_1000_steps_seconds": compile_seconds[name] + 1000 * step,
                      "max_abs_loss_difference": float(np.max(np.abs(losses[name]
                                                                      - reference)))}
    result = {"benchmark": "rolled_loop", "rounds": args.rounds, "batch_size": 100,
              "compiler_options": groups["conv_nhwc"].trainer.compiler_options,
              "machine": machine(), "clr_jax": clr_jax.__version__, "variants": rows}
    path = write_result("rolled_loop", result)
    m = result["machine"]
    md = [f"## Rolled loops: the Caffe net's steps in a while loop ({jax.default_backend()})",
          "", f"`python benchmarks/rolled_loop_cpu.py --rounds {args.rounds}` → "
          f"`results/{path.name}`", "",
          "The harness's Caffe-net training steps with its current kernels and compiler "
          f"options; {m['cpu']} ({m['cores']} cores), jax {m['jax']}; steps unrolled or in "
          "a rolled `lax.scan`, conv1's gradient by autodiff or by `kernels.conv_nhwc`; "
          f"compiled once each in this order in one process (the first pays for XLA's "
          f"set-up) and alternated {args.rounds} times. Loss difference: the largest over "
          "the first 10 steps, against the first row.", "",
          "| variant | compile (s) | step (ms, median, range) | compile + 1,000 steps (s) | "
          "largest loss difference |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        md.append(f"| {name} | {row['compile_seconds']:.1f} | {row['step_ms_median']:.1f} "
                  f"({row['step_ms_range'][0]:.1f}-{row['step_ms_range'][1]:.1f}) | "
                  f"{row['job_1000_steps_seconds']:.1f} | "
                  f"{row['max_abs_loss_difference']:.1e} |")
    update_section(f"rolled_loop_{jax.default_backend()}", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
