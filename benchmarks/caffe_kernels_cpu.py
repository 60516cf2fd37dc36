"""What each CPU kernel choice of the Caffe network is worth: one training step, A/B.

    python benchmarks/caffe_kernels_cpu.py [--rounds 12]

One SGD step (forward, gradient, momentum update) of the paper's network, batch 100,
float32, compiled once per variant; the variants are timed in alternation, `--rounds`
times each, in one process. Variants:

- plain: `reduce_window` max pooling differentiated by JAX, `lax.conv` everywhere, LRN
  with `**`, XLA's default compilation;
- max_pool_vjp: max pooling with the custom VJP (`models._max_pool_ceil`);
- spectral: the 32-channel convolutions as products of spectra
  (`models._conv_spectral`);
- lrn_sqrt: LRN's power -0.75 as two square roots (`models._lrn_within_channel`);
- ynn_reductions_only: only reductions left to YNNPACK, convolutions and matrix
  products through XLA's Eigen kernels (`models.YNN_REDUCTIONS_ONLY`);
- loop_emitters: XLA's older loop emitters (``xla_cpu_use_fusion_emitters=False``);
- kernels: the three kernels above, XLA's default compilation;
- all: the committed model and options (every switch of `models.FAST_KERNELS` on;
  `models.compiler_options` of a long run).

Writes benchmarks/results/caffe_kernels_<backend>.json and its RESULTS.md section.
"""

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import clr_jax
from _report import machine, update_section, write_result
from clr_jax.harness import models

VARIANTS = {
    "plain": (),
    "max_pool_vjp": ("max_pool",),
    "spectral": ("conv_spectral",),
    "lrn_sqrt": ("lrn_sqrt",),
    "ynn_reductions_only": ("ynn_reductions_only",),
    "loop_emitters": ("loop_emitters",),
    "kernels": ("max_pool", "conv_spectral", "lrn_sqrt"),
    "all": tuple(models.FAST_KERNELS),
}


def configure(switches):
    for name in models.FAST_KERNELS:
        models.FAST_KERNELS[name] = name in switches


def compiled_step(switches):
    configure(switches)
    model = models.CaffeCifar10(rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.sgd(0.001, momentum=0.9)
    x = jax.random.normal(jax.random.key(1), (100, 32, 32, 3)) * 50
    y = jax.random.randint(jax.random.key(2), (100,), 0, 10)

    def loss(p):
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @functools.partial(jax.jit, compiler_options=models.compiler_options(model))
    def step(p, o):
        value, grads = jax.value_and_grad(loss)(p)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, value, grads

    opt = tx.init(params)
    out = step(params, opt)
    jax.block_until_ready(out)
    configure(tuple(models.FAST_KERNELS))
    return step, params, opt, out[3]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    built = {name: compiled_step(switches) for name, switches in VARIANTS.items()}
    reference = built["plain"][3]
    errors = {name: max(float(jnp.abs(a - b).max() / jnp.abs(b).max())
                        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(reference)))
              for name, (_, _, _, g) in built.items()}
    times = {name: [] for name in built}
    for _ in range(args.rounds):
        for name, (step, params, opt, _) in built.items():
            started = time.perf_counter()
            jax.block_until_ready(step(params, opt))
            times[name].append(time.perf_counter() - started)
    rows = {name: {"median_seconds": statistics.median(t), "min_seconds": min(t),
                   "ratio_to_plain_median": statistics.median(
                       [a / b for a, b in zip(t, times["plain"])]),
                   "max_relative_gradient_difference": errors[name]}
            for name, t in times.items()}
    result = {"benchmark": "caffe_kernels", "rounds": args.rounds, "batch_size": 100,
              "machine": machine(), "clr_jax": clr_jax.__version__, "variants": rows}
    backend = jax.default_backend()
    path = write_result("caffe_kernels", result)
    m = result["machine"]
    md = [f"## Caffe network kernels ({backend})", "",
          f"`python benchmarks/caffe_kernels_cpu.py --rounds {args.rounds}` → "
          f"`results/{path.name}`", "",
          f"One SGD step of the paper's network, batch 100, float32; {m['cpu']} "
          f"({m['cores']} cores), jax {m['jax']}; variants alternated {args.rounds} times.",
          "", "| variant | median step (ms) | time / plain (median of pairs) | "
          "max relative gradient difference to plain |", "|---|---|---|---|"]
    for name, row in rows.items():
        md.append(f"| {name} | {1000 * row['median_seconds']:.0f} | "
                  f"{row['ratio_to_plain_median']:.3f} | "
                  f"{row['max_relative_gradient_difference']:.1e} |")
    update_section(f"caffe_kernels_{backend}", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
