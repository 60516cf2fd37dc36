"""The Caffe net's pooling and LRN as native CPU kernels (`clr_jax.harness.native`) against
their XLA forms; each layer alone and the harness's training chunk.

    python benchmarks/native_kernels_cpu.py [--rounds 10]

The fast kernels (`clr_jax.harness.kernels`) in XLA: max pooling's maxima from shifted
slices and its gradient as several masked, padded and summed passes (routed as
`kernels.separable_max_pool_gradient` picks on this machine); average pooling and LRN
as separable window sums, whose gradients autodiff writes as a pad per shifted slice.
As native kernels (C++, XLA FFI handlers): max pooling keeps each window's
first-maximum position (int8) and places the gradient by it in one pass; average
pooling and LRN run each pass over an image once (LRN's gradient written out, its
scale recomputed from x).

1. The Caffe net's pool1 (max, batch 100, 32x32x32 -> 16x16x32), pool2 (average,
   16x16x32 -> 8x8x32) and norm1 (LRN, 16x16x32): forward and gradient under the
   harness's compiler options for the Caffe net, each form; the largest differences of
   the two forms' outputs and gradients (relative to the largest entry). Each timing
   is 10 calls; the forms alternate --rounds times.
2. The harness's training chunk (`Trainer.run_steps`, 100 steps in one rolled loop, the
   Caffe net with its CPU kernels on the bundled sample, triangular2, Caffe SGD): all
   in XLA, only max pooling native, and all three native, alternated --rounds times;
   the largest difference of the 100 losses from XLA's.

Needs a C++ compiler (the native library is built once, before any timing). Writes
benchmarks/results/native_kernels_cpu.json (native_kernels_avx512_cpu.json on an
AVX-512 machine) and its RESULTS.md section. Keep every other job paused while it runs.
"""

import argparse
import sys

import jax
import numpy as np

from _chunk_ab import alternate, chunk_table, patch, summary, training_chunk
from _report import machine, update_section, write_result
from clr_jax.harness import kernels, native

LAYERS = {  # name: (fast kernel, input shape, which native kernel)
    "pool1 (max)": (kernels.max_pool_ceil_fast, (100, 32, 32, 32), "max_pool"),
    "pool2 (average)": (lambda x: kernels.avg_pool_ceil(x, fast=True), (100, 16, 16, 32),
                        "avg_pool"),
    "norm1 (LRN)": (lambda x: kernels.lrn_within_channel(x, fast=True), (100, 16, 16, 32),
                    "lrn"),
}
CHUNK = {"XLA": (), "max pooling native": ("max_pool",), "all three native": kernels.NATIVE}


def use(names):
    return patch(kernels, "native_kernel", lambda name: name in names)


def layers_alone(rounds: int) -> dict:
    options = kernels.compiler_options("caffe_cifar10", "fast")
    rows = {}
    for layer, (kernel, shape, name) in LAYERS.items():
        x = jax.random.normal(jax.random.key(0), shape) * 3
        g = jax.random.normal(jax.random.key(1), jax.eval_shape(kernel, x).shape)
        compiled, outputs = {}, {}
        for form, names in (("XLA", ()), ("native", (name,))):
            undo = use(names)()
            try:
                def forward_and_gradient(x, g):
                    y, vjp = jax.vjp(kernel, x)
                    return y, vjp(g)[0]
                compiled[form] = jax.jit(forward_and_gradient,
                                         compiler_options=options).lower(x, g).compile()
            finally:
                undo()
            outputs[form] = [np.asarray(a) for a in compiled[form](x, g)]

        def ten(f):
            return lambda: jax.block_until_ready([f(x, g) for _ in range(10)])

        rows[layer] = summary(alternate({n: ten(f) for n, f in compiled.items()}, rounds),
                              "XLA", 10)
        for form in rows[layer]:
            for i, what in enumerate(("output", "gradient")):
                reference = outputs["XLA"][i]
                rows[layer][form][f"max_relative_{what}_difference"] = float(
                    np.abs(outputs[form][i] - reference).max() / np.abs(reference).max())
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if not native.available():
        sys.exit("the native kernels cannot be used here (no C++ compiler, CLR_JAX_NATIVE=0, "
                 "or not on the CPU): nothing to compare")
    chunk = training_chunk({form: use(names) for form, names in CHUNK.items()}, args.rounds)
    result = {"benchmark": "native_kernels", "rounds": args.rounds, "machine": machine(),
              "compiler": native.compiler(),
              "harness_native": [n for n in kernels.NATIVE if kernels.native_kernel(n)],
              "harness_separable": kernels.separable_max_pool_gradient(),
              "layers": layers_alone(args.rounds), "training_chunk": chunk}
    path = write_result("native_kernels", result)
    m = result["machine"]
    routing = "two separable passes" if result["harness_separable"] else "the 9 masked windows"
    md = ["## Pooling and LRN as native CPU kernels (cpu)", "",
          f"`python benchmarks/native_kernels_cpu.py --rounds {args.rounds}` → "
          f"`results/{path.name}`", "",
          f"{m['cpu']} ({m['cores']} cores; {', '.join(m['vector_flags'])}), jax {m['jax']}; "
          f"native kernels built by `{result['compiler']}`. The Caffe net's layers alone "
          "(batch 100), forward and gradient, under the harness's compiler options: in XLA "
          f"(max pooling's gradient routed through {routing}; the window sums as shifted "
          "slices) or as the native kernels. Medians of "
          f"{args.rounds} alternated rounds of 10 calls; ratio to XLA's; the largest "
          "differences relative to the largest entry.", "",
          "| layer, forward and gradient | form | ms | ratio | output, gradient difference |",
          "|---|---|---|---|---|"]
    for layer, forms in result["layers"].items():
        for form, row in forms.items():
            md.append(f"| {layer} | {form} | {row['ms_median']:.2f} | "
                      f"{row['ratio_median']:.3f} | "
                      f"{row['max_relative_output_difference']:.1e}, "
                      f"{row['max_relative_gradient_difference']:.1e} |")
    md += chunk_table(chunk, args.rounds, "form")
    md += ["", "Largest difference of the 100 losses from XLA's: " + ", ".join(
        f"{form} {row['max_abs_loss_difference']:.1e}"
        for form, row in chunk["variants"].items() if form != "XLA")
        + " (the same maxima; the rest differ in summation order only, and 100 steps "
        "carry that rounding on). This machine's harness runs natively: "
        + (", ".join(result["harness_native"]) or "none") + "."]
    update_section(f"native_kernels_{jax.default_backend()}", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
