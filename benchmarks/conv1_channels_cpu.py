"""Conv1 with 3 input channels: YNNPACK's convolution with the channels as they are and
padded with zeros, alone and in the harness's training chunk.

    python benchmarks/conv1_channels_cpu.py [--rounds 8]

1. The Caffe net's conv1 forward (batch 100, 32x32x3 -> 32x32x32, 5x5, padding 2, plus
   the bias, as `nnx.Conv` adds it) compiled with the harness's options for the Caffe
   net (`kernels.compiler_options`: reductions and elementwise fusions in YNNPACK, which
   then runs this convolution too), with the input channels as they are (3) and padded
   with zeros to 4 and 8; and with only reductions in YNNPACK (XLA's Eigen convolution)
   for comparison. Each timing is 10 calls; the variants alternate --rounds times.
2. The harness's own training chunk (`Trainer.run_steps`, 100 steps in one rolled loop,
   the Caffe net with its CPU kernels on the bundled sample, triangular2, Caffe SGD)
   with `kernels.forward_channel_multiple` at 1 (no padding) and 4, alternated --rounds
   times; and the largest difference of their 100 losses.

Writes benchmarks/results/conv1_channels_cpu.json (conv1_channels_avx512_cpu.json on an
AVX-512 machine) and its RESULTS.md section. Keep every other job paused while it runs.
"""

import argparse

import jax
import numpy as np

from _chunk_ab import alternate, patch, summary, training_chunk
from _report import machine, update_section, write_result
from clr_jax.harness import kernels


def conv1(channels):
    """Conv1's forward with its input channels padded to ``channels`` (3: none), as
    `kernels.conv_nhwc` pads them."""
    def forward(x, w, b):
        return kernels._nhwc(x, w, ((2, 2), (2, 2)), None, channels) + b
    return forward


def conv1_alone(rounds: int) -> dict:
    x = jax.random.normal(jax.random.key(0), (100, 32, 32, 3)) * 50
    w = jax.random.normal(jax.random.key(1), (5, 5, 3, 32)) * 1e-4
    b = jax.random.normal(jax.random.key(2), (32,))
    harness = kernels.compiler_options("caffe_cifar10", "fast")
    variants = {"3 channels (as is)": (3, harness), "padded to 4": (4, harness),
                "padded to 8": (8, harness),
                "3 channels, Eigen (only reductions in YNNPACK)":
                    (3, kernels.YNN_REDUCTIONS_ONLY)}
    compiled = {name: jax.jit(conv1(c), compiler_options=o) for name, (c, o) in variants.items()}
    reference = np.asarray(compiled["3 channels (as is)"](x, w, b))
    difference = {name: float(np.abs(np.asarray(f(x, w, b)) - reference).max())
                  for name, f in compiled.items()}

    def ten(f):
        return lambda: jax.block_until_ready([f(x, w, b) for _ in range(10)])

    rows = summary(alternate({n: ten(f) for n, f in compiled.items()}, rounds),
                   "3 channels (as is)", 10)
    for name in rows:
        rows[name]["max_abs_difference"] = difference[name]
    return rows


def chunk(rounds: int) -> dict:
    """The training chunk with conv1's forward padded to 4 or not."""
    return training_chunk({"no padding": patch(kernels, "forward_channel_multiple", lambda: 1),
                           "padded to 4": patch(kernels, "forward_channel_multiple",
                                                lambda: 4)}, rounds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    # the Caffe net's pooling and LRN in their XLA forms, as when these results were
    # taken (benchmarks/native_kernels_cpu.py measures the native kernels)
    kernels.native_kernel = lambda name: False
    result = {"benchmark": "conv1_channels", "rounds": args.rounds, "machine": machine(),
              "harness_forward_channel_multiple": kernels.forward_channel_multiple(),
              "conv1_forward": conv1_alone(args.rounds), "training_chunk": chunk(args.rounds)}
    path = write_result("conv1_channels", result)
    m = result["machine"]
    md = ["## Conv1 with 3 input channels (cpu)", "",
          f"`python benchmarks/conv1_channels_cpu.py --rounds {args.rounds}` → "
          f"`results/{path.name}`", "",
          f"{m['cpu']} ({m['cores']} cores; {', '.join(m['vector_flags'])}), jax {m['jax']}. "
          "The Caffe net's conv1 forward (batch 100, 32x32x3 -> 32x32x32, 5x5, plus the "
          "bias) under the harness's compiler options, YNNPACK running it; the input "
          "channels padded with zeros or not. Medians of "
          f"{args.rounds} alternated rounds of 10 calls; ratio to the unpadded convolution.",
          "", "| conv1 forward | ms | ratio | largest difference from 3 channels |",
          "|---|---|---|---|"]
    for name, row in result["conv1_forward"].items():
        md.append(f"| {name} | {row['ms_median']:.2f} | {row['ratio_median']:.2f} | "
                  f"{row['max_abs_difference']:.1e} |")
    rows = result["training_chunk"]["variants"]
    md += ["", f"The harness's training chunk ({result['training_chunk']['steps_per_call']} "
           "steps of the Caffe net in one rolled loop, bundled sample, triangular2), conv1's "
           f"forward padded by `kernels.forward_channel_multiple` or not, {args.rounds} "
           "alternated rounds:", "", "| training chunk | ms/step | ratio |", "|---|---|---|"]
    for name, row in rows.items():
        md.append(f"| {name} | {row['ms_median']:.1f} | {row['ratio_median']:.3f} |")
    md += ["", "Largest difference of the 100 losses, padded against not: "
           f"{rows['padded to 4']['max_abs_loss_difference']:.1e}. This machine's harness "
           f"pads to {result['harness_forward_channel_multiple']}."]
    update_section(f"conv1_channels_{jax.default_backend()}", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
