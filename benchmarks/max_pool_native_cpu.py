"""Max pooling as the native CPU kernels (`clr_jax.harness.native`) against its XLA forms;
alone and in the harness's training chunk.

    python benchmarks/max_pool_native_cpu.py [--rounds 10]

`kernels.max_pool_ceil_fast` sends each window's gradient to its first maximum in
row-major order (Caffe's). In XLA it is the maxima from shifted slices and a gradient of
several masked, padded and summed passes (routed as `kernels.separable_max_pool_gradient`
picks on this machine); the native kernels (C++, XLA FFI handlers) keep each window's
first-maximum position as an int8 in the forward pass and place the gradient by it in
one pass over the input.

1. The Caffe net's pool1 (batch 100, 32x32x32 -> 16x16x32): forward and gradient under
   the harness's compiler options for the Caffe net; the largest differences of the two
   forms' maxima and gradients. Each timing is 10 calls; the two alternate --rounds
   times.
2. The harness's training chunk (`Trainer.run_steps`, 100 steps in one rolled loop, the
   Caffe net with its CPU kernels on the bundled sample, triangular2, Caffe SGD) with
   each form, alternated --rounds times; the largest difference of the 100 losses.

Needs a C++ compiler (the native library is built once, before any timing). Writes
benchmarks/results/max_pool_native_cpu.json (max_pool_native_avx512_cpu.json on an
AVX-512 machine) and its RESULTS.md section. Keep every other job paused while it runs.
"""

import argparse
import sys

import jax
import numpy as np

from _chunk_ab import alternate, chunk_table, patch, summary, training_chunk
from _report import machine, update_section, write_result
from clr_jax.harness import kernels, native

FORMS = {"XLA": False, "native": True}


def use(native_kernels: bool):
    return patch(kernels, "native_max_pool", lambda: native_kernels)


def pool_alone(rounds: int) -> dict:
    x = jax.random.normal(jax.random.key(0), (100, 32, 32, 32))
    g = jax.random.normal(jax.random.key(1), (100, 16, 16, 32))
    options = kernels.compiler_options("caffe_cifar10", "fast")
    compiled, outputs = {}, {}
    for name, form in FORMS.items():
        undo = use(form)()
        try:
            def forward_and_gradient(x, g):
                y, vjp = jax.vjp(kernels.max_pool_ceil_fast, x)
                return y, vjp(g)[0]
            compiled[name] = jax.jit(forward_and_gradient, compiler_options=options).lower(
                x, g).compile()
        finally:
            undo()
        outputs[name] = [np.asarray(a) for a in compiled[name](x, g)]

    def ten(f):
        return lambda: jax.block_until_ready([f(x, g) for _ in range(10)])

    rows = summary(alternate({n: ten(f) for n, f in compiled.items()}, rounds), "XLA", 10)
    for name in rows:
        rows[name]["max_abs_output_difference"] = float(
            np.abs(outputs[name][0] - outputs["XLA"][0]).max())
        rows[name]["max_abs_gradient_difference"] = float(
            np.abs(outputs[name][1] - outputs["XLA"][1]).max())
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if not native.available():
        sys.exit("the native kernels cannot be used here (no C++ compiler, CLR_JAX_NATIVE=0, "
                 "or not on the CPU): nothing to compare")
    chunk = training_chunk({name: use(form) for name, form in FORMS.items()}, args.rounds)
    result = {"benchmark": "max_pool_native", "rounds": args.rounds, "machine": machine(),
              "compiler": native.compiler(), "harness_native": kernels.native_max_pool(),
              "harness_separable": kernels.separable_max_pool_gradient(),
              "pool1": pool_alone(args.rounds), "training_chunk": chunk}
    path = write_result("max_pool_native", result)
    m = result["machine"]
    routing = "two separable passes" if result["harness_separable"] else "the 9 masked windows"
    md = ["## Max pooling as native CPU kernels (cpu)", "",
          f"`python benchmarks/max_pool_native_cpu.py --rounds {args.rounds}` → "
          f"`results/{path.name}`", "",
          f"{m['cpu']} ({m['cores']} cores; {', '.join(m['vector_flags'])}), jax {m['jax']}. "
          "The Caffe net's pool1 (batch 100, 32x32x32 -> 16x16x32), forward and gradient, "
          "under the harness's compiler options: in XLA (maxima from shifted slices, the "
          f"gradient routed through {routing}) or as the native kernels (maxima with "
          "their first-maximum positions, the gradient placed by them in one pass). "
          f"Medians of {args.rounds} alternated rounds of 10 calls; ratio to XLA's.", "",
          "| pool1 forward and gradient | ms | ratio | largest difference: maxima, gradient |",
          "|---|---|---|---|"]
    for name, row in result["pool1"].items():
        md.append(f"| {name} | {row['ms_median']:.2f} | {row['ratio_median']:.3f} | "
                  f"{row['max_abs_output_difference']:.1e}, "
                  f"{row['max_abs_gradient_difference']:.1e} |")
    md += chunk_table(chunk, args.rounds, "form")
    md += ["", "Largest difference of the 100 losses, native against XLA: "
           f"{chunk['variants']['native']['max_abs_loss_difference']:.1e} (the same maxima; "
           "the gradients differ in their summation order only, and 100 steps carry that "
           "rounding on). This machine's harness uses the "
           f"{'native kernels' if result['harness_native'] else 'XLA forms'}."]
    update_section(f"max_pool_native_{jax.default_backend()}", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
