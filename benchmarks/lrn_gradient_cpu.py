"""LRN's gradient derived by JAX or written out; alone and in the harness's training chunk.

    python benchmarks/lrn_gradient_cpu.py [--rounds 16]

`kernels.lrn_within_channel` (fast form: separable window sums, the power 0.75 as
square roots) has two equal gradients (`kernels.lrn_custom_gradient` picks; for now the
derived one everywhere):

- derived: JAX differentiates the forward pass; each shifted slice of the window sums
  is transposed into a pad, and the pads are added;
- written: dx = g s^-beta - (2 alpha beta / 9) x W(g y / s), with s = 1 + alpha/9 W(x^2)
  kept from the forward pass and W the 3x3 window sum (its own adjoint): one more window
  sum of the same shifted slices as the forward pass.

1. The Caffe net's norm1 (batch 100, 16x16x32): forward and gradient under the harness's
   compiler options for the Caffe net; the largest difference of the two gradients.
   Each timing is 10 calls; the two alternate --rounds times.
2. The harness's training chunk (`Trainer.run_steps`, 100 steps in one rolled loop, the
   Caffe net with its CPU kernels on the bundled sample, triangular2, Caffe SGD) with
   each gradient, alternated --rounds times; the largest difference of the 100 losses.

Writes benchmarks/results/lrn_gradient_cpu.json (lrn_gradient_avx512_cpu.json on an
AVX-512 machine) and its RESULTS.md section. Keep every other job paused while it runs.
"""

import argparse

import jax
import numpy as np

from _chunk_ab import alternate, chunk_table, patch, summary, training_chunk
from _report import machine, update_section, write_result
from clr_jax.harness import kernels

GRADIENTS = {"derived": False, "written": True}


def norm1_alone(rounds: int) -> dict:
    x = jax.random.normal(jax.random.key(0), (100, 16, 16, 32)) * 30
    g = jax.random.normal(jax.random.key(1), x.shape)
    options = kernels.compiler_options("caffe_cifar10", "fast")
    compiled, gradients = {}, {}
    for name, written in GRADIENTS.items():
        undo = patch(kernels, "lrn_custom_gradient", lambda w=written: w)()
        try:
            def forward_and_gradient(x, g):
                y, vjp = jax.vjp(lambda x: kernels.lrn_within_channel(x, fast=True), x)
                return y, vjp(g)[0]
            compiled[name] = jax.jit(forward_and_gradient, compiler_options=options).lower(
                x, g).compile()
        finally:
            undo()
        gradients[name] = np.asarray(compiled[name](x, g)[1])

    def ten(f):
        return lambda: jax.block_until_ready([f(x, g) for _ in range(10)])

    rows = summary(alternate({n: ten(f) for n, f in compiled.items()}, rounds), "derived", 10)
    scale = float(np.abs(gradients["derived"]).max())
    for name in rows:
        rows[name]["max_relative_gradient_difference"] = float(
            np.abs(gradients[name] - gradients["derived"]).max()) / scale
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=16)
    args = parser.parse_args()
    # the Caffe net's pooling and LRN in their XLA forms, as when these results were
    # taken (benchmarks/native_kernels_cpu.py measures the native kernels)
    kernels.native_kernel = lambda name: False
    chunk = training_chunk({name: patch(kernels, "lrn_custom_gradient", lambda w=written: w)
                            for name, written in GRADIENTS.items()}, args.rounds)
    result = {"benchmark": "lrn_gradient", "rounds": args.rounds, "machine": machine(),
              "harness_written": kernels.lrn_custom_gradient(),
              "norm1": norm1_alone(args.rounds), "training_chunk": chunk}
    path = write_result("lrn_gradient", result)
    m = result["machine"]
    md = ["## LRN's gradient, derived or written out (cpu)", "",
          f"`python benchmarks/lrn_gradient_cpu.py --rounds {args.rounds}` → "
          f"`results/{path.name}`", "",
          f"{m['cpu']} ({m['cores']} cores; {', '.join(m['vector_flags'])}), jax {m['jax']}. "
          "The Caffe net's norm1 (batch 100, 16x16x32), forward and gradient, under the "
          "harness's compiler options, the gradient derived by JAX or written out. Medians "
          f"of {args.rounds} alternated rounds of 10 calls; ratio to the derived one.", "",
          "| norm1 forward and gradient | ms | ratio | largest relative gradient difference |",
          "|---|---|---|---|"]
    for name, row in result["norm1"].items():
        md.append(f"| {name} | {row['ms_median']:.2f} | {row['ratio_median']:.3f} | "
                  f"{row['max_relative_gradient_difference']:.1e} |")
    rows = chunk["variants"]
    md += chunk_table(chunk, args.rounds, "gradient")
    md += ["", "Largest difference of the 100 losses, written against derived: "
           f"{rows['written']['max_abs_loss_difference']:.1e} (the gradients differ by "
           "rounding; 100 steps carry it on). This machine's harness uses the "
           f"{'written' if result['harness_written'] else 'derived'} gradient."]
    update_section(f"lrn_gradient_{jax.default_backend()}", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
