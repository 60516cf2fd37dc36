"""Max pooling's gradient routed two ways: through the 9 masked window slices, or in two
separable passes (rows, then columns); alone and in the harness's training chunk.

    python benchmarks/max_pool_gradient_cpu.py [--rounds 10]

`kernels.max_pool_ceil_fast` sends each window's gradient to its first maximum in
row-major order (Caffe's). Two equal ways (`kernels.separable_max_pool_gradient` picks):

- masked windows: the 9 strided window slices of the input, each compared with the
  maxima and masked by the windows before it, assembled by output parity. XLA's CPU
  backend fuses the chain of masks into each of the 8 consumers that need it, so the
  first windows' comparisons run up to 8 times;
- separable: the maxima as column maxima, then row maxima, and the gradient routed back
  through each 3-wide pass to its first maximal entry (3 comparisons a pass), placed by
  interior padding: the same cell, first row holding the maximum, then its first
  maximal column.

1. The Caffe net's pool1 (batch 100, 32x32x32 -> 16x16x32): forward and gradient under
   the harness's compiler options for the Caffe net; the largest difference of the two
   gradients. Each timing is 10 calls; the two alternate --rounds times.
2. The harness's training chunk (`Trainer.run_steps`, 100 steps in one rolled loop, the
   Caffe net with its CPU kernels on the bundled sample, triangular2, Caffe SGD) with
   each routing, alternated --rounds times; the largest difference of the 100 losses.

Writes benchmarks/results/max_pool_gradient_cpu.json (max_pool_gradient_avx512_cpu.json
on an AVX-512 machine) and its RESULTS.md section. Keep every other job paused while it
runs.
"""

import argparse

import jax
import numpy as np

from _chunk_ab import alternate, chunk_table, patch, summary, training_chunk
from _report import machine, update_section, write_result
from clr_jax.harness import kernels

ROUTINGS = {"masked windows": False, "separable": True}


def pool_alone(rounds: int) -> dict:
    x = jax.random.normal(jax.random.key(0), (100, 32, 32, 32))
    g = jax.random.normal(jax.random.key(1), (100, 16, 16, 32))
    options = kernels.compiler_options("caffe_cifar10", "fast")
    compiled, gradients = {}, {}
    for name, separable in ROUTINGS.items():
        undo = patch(kernels, "separable_max_pool_gradient", lambda s=separable: s)()
        try:
            def forward_and_gradient(x, g):
                y, vjp = jax.vjp(kernels.max_pool_ceil_fast, x)
                return y, vjp(g)[0]
            compiled[name] = jax.jit(forward_and_gradient, compiler_options=options).lower(
                x, g).compile()
        finally:
            undo()
        gradients[name] = np.asarray(compiled[name](x, g)[1])

    def ten(f):
        return lambda: jax.block_until_ready([f(x, g) for _ in range(10)])

    rows = summary(alternate({n: ten(f) for n, f in compiled.items()}, rounds),
                   "masked windows", 10)
    for name in rows:
        rows[name]["max_abs_gradient_difference"] = float(
            np.abs(gradients[name] - gradients["masked windows"]).max())
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    # the Caffe net's pooling and LRN in their XLA forms, as when these results were
    # taken (benchmarks/native_kernels_cpu.py measures the native kernels)
    kernels.native_kernel = lambda name: False
    chunk = training_chunk({name: patch(kernels, "separable_max_pool_gradient",
                                        lambda s=separable: s)
                            for name, separable in ROUTINGS.items()}, args.rounds)
    result = {"benchmark": "max_pool_gradient", "rounds": args.rounds, "machine": machine(),
              "harness_separable": kernels.separable_max_pool_gradient(),
              "pool1": pool_alone(args.rounds), "training_chunk": chunk}
    path = write_result("max_pool_gradient", result)
    m = result["machine"]
    md = ["## Max pooling's gradient, masked windows or separable (cpu)", "",
          f"`python benchmarks/max_pool_gradient_cpu.py --rounds {args.rounds}` → "
          f"`results/{path.name}`", "",
          f"{m['cpu']} ({m['cores']} cores; {', '.join(m['vector_flags'])}), jax {m['jax']}. "
          "The Caffe net's pool1 (batch 100, 32x32x32 -> 16x16x32), forward and gradient, "
          "under the harness's compiler options, the gradient routed to each window's "
          "first maximum through the 9 masked window slices or in two separable passes. "
          f"Medians of {args.rounds} alternated rounds of 10 calls; ratio to the masked "
          "windows.", "",
          "| pool1 forward and gradient | ms | ratio | largest gradient difference |",
          "|---|---|---|---|"]
    for name, row in result["pool1"].items():
        md.append(f"| {name} | {row['ms_median']:.2f} | {row['ratio_median']:.3f} | "
                  f"{row['max_abs_gradient_difference']:.1e} |")
    rows = chunk["variants"]
    md += chunk_table(chunk, args.rounds, "routing")
    md += ["", "Largest difference of the 100 losses, separable against masked: "
           f"{rows['separable']['max_abs_loss_difference']:.1e} (the gradients differ in "
           "their summation order only; 100 steps carry that rounding on). This machine's "
           f"harness routes {'separably' if result['harness_separable'] else 'through the masked windows'}."]
    update_section(f"max_pool_gradient_{jax.default_backend()}", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
