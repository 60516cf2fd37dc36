"""What each CPU kernel choice of the Caffe network is worth: one training step, A/B.

    python benchmarks/caffe_kernels_cpu.py [--rounds 12]

One SGD step (forward, gradient, momentum update) of the paper's network, batch 100,
float32, compiled once per variant; the variants are timed in alternation, `--rounds`
times each, in one process. Variants:

- plain: `reduce_window` max pooling differentiated by JAX, `lax.conv` everywhere, LRN
  with `**`, XLA's default compilation;
- max_pool_vjp: max pooling with the custom VJP (`kernels.max_pool_ceil_fast`);
- spectral: the 32-channel convolutions as products of spectra
  (`kernels.conv_spectral`);
- lrn_sqrt: LRN's power -0.75 as two square roots (`kernels.lrn_within_channel`);
- separable_windows: the 3x3 window sums and maxima of pooling and LRN as two
  elementwise ops on shifted slices instead of `reduce_window`;
- ynn_reductions_only: only reductions left to YNNPACK, convolutions and matrix
  products through XLA's Eigen kernels (`kernels.YNN_REDUCTIONS_ONLY`);
- loop_emitters: XLA's older loop emitters (``xla_cpu_use_fusion_emitters=False``);
- kernels: the three kernels above, XLA's default compilation;
- all: what the harness runs, ``CaffeCifar10(kernels="fast")`` compiled with
  `kernels.compiler_options` of a long run;
- all_block_vjp: "all" with the first block (max pooling, ReLU, LRN) as one custom VJP
  (`pool_relu_lrn` below): its gradient written out by hand, LRN's adjoint as one more
  separable window sum, so that autodiff's separate passes over ReLU's mask and LRN's
  window transposes become one fused backward pass. A lead not kept (RESULTS.md).

Each variant is its own model (`Variant` below picks each kernel explicitly); the
parameters are the same.

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
from clr_jax.harness import kernels, models

KERNELS = ("max_pool", "conv_spectral", "lrn_sqrt", "separable_windows")
VARIANTS = {
    "plain": (),
    "max_pool_vjp": ("max_pool",),
    "spectral": ("conv_spectral",),
    "lrn_sqrt": ("lrn_sqrt",),
    "separable_windows": ("separable_windows",),
    "ynn_reductions_only": ("ynn_reductions_only",),
    "loop_emitters": ("loop_emitters",),
    "kernels": KERNELS,
    "all": (*KERNELS, "ynn_reductions_only", "loop_emitters"),
    "all_block_vjp": ("block_vjp",),
}

_ALPHA, _BETA = 5e-5, 0.75  # the Caffe net's LRN
_SAME = ((0, 0), (1, 1), (1, 1), (0, 0))


def _block_forward(x):
    maxima = kernels.separable_window3x3(x, 2, kernels.ceil_padding(x), jnp.maximum, -jnp.inf)
    r = jnp.maximum(maxima, 0.0)
    scale = 1 + (_ALPHA / 9) * kernels.separable_window3x3(r * r, 1, _SAME, jnp.add, 0.0)
    root = jax.lax.rsqrt(scale)
    return maxima, r, scale, root * jnp.sqrt(root)  # scale ** -0.75


@jax.custom_vjp
def pool_relu_lrn(x):
    """``lrn_within_channel(relu(max_pool_ceil(x)))`` with the whole block's gradient
    written out: for out = r * s^-b, s = 1 + a * sum_3x3 r^2, the adjoint is
    g s^-b - 2ab r * sum_3x3(g r s^(-b-1)) (the window is symmetric), masked by r > 0,
    then routed to each window's first maximum as `kernels.max_pool_ceil_fast` does."""
    _, r, _, power = _block_forward(x)
    return r * power


def _block_fwd(x):
    maxima, r, scale, power = _block_forward(x)
    return r * power, (x, maxima, r, scale, power)


def _block_bwd(residuals, g):
    x, maxima, r, scale, power = residuals
    window = kernels.separable_window3x3(g * r * power / scale, 1, _SAME, jnp.add, 0.0)
    dr = g * power - (2 * _ALPHA / 9 * _BETA) * r * window
    return kernels._max_pool_bwd((x, maxima), jnp.where(maxima > 0, dr, 0.0))


pool_relu_lrn.defvjp(_block_fwd, _block_bwd)


class BlockVjp(models.CaffeCifar10):
    """The harness's fast Caffe net with the first block as `pool_relu_lrn`."""

    def __call__(self, x):
        x = pool_relu_lrn(self.conv1(x))
        x = kernels.lrn_within_channel(
            kernels.avg_pool_ceil(jax.nn.relu(self.conv2(x)), fast=True), fast=True)
        x = kernels.avg_pool_ceil(jax.nn.relu(self.conv3(x)), fast=True)
        return self.ip1(x.reshape(x.shape[0], -1))


class Variant(models.CaffeCifar10):
    """The Caffe net with each fast kernel chosen on its own."""

    def __init__(self, switches, rngs):
        super().__init__(kernels="lax", rngs=rngs)
        self.switches = tuple(switches)
        if "conv_spectral" in switches:
            self.conv2.conv_general_dilated = kernels.conv_spectral
            self.conv3.conv_general_dilated = kernels.conv_spectral

    def lrn(self, x):
        squares = (kernels.separable_window3x3(x * x, 1, ((0, 0), (1, 1), (1, 1), (0, 0)), jnp.add, 0.0)
                   if "separable_windows" in self.switches else jax.lax.reduce_window(
                       x * x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1),
                       ((0, 0), (1, 1), (1, 1), (0, 0))))
        scale = 1 + (5e-5 / 9) * squares
        if "lrn_sqrt" in self.switches:
            root = jax.lax.rsqrt(scale)
            return x * (root * jnp.sqrt(root))
        return x * scale ** -0.75

    def __call__(self, x):
        separable = "separable_windows" in self.switches
        if "max_pool" in self.switches:  # its forward maxima are separable
            max_pool = kernels.max_pool_ceil_fast
        elif separable:
            max_pool = lambda x: kernels.separable_window3x3(  # noqa: E731
                x, 2, kernels.ceil_padding(x), jnp.maximum, -jnp.inf)
        else:
            max_pool = kernels.max_pool_ceil
        x = self.lrn(jax.nn.relu(max_pool(self.conv1(x))))
        x = self.lrn(kernels.avg_pool_ceil(jax.nn.relu(self.conv2(x)), fast=separable))
        x = kernels.avg_pool_ceil(jax.nn.relu(self.conv3(x)), fast=separable)
        return self.ip1(x.reshape(x.shape[0], -1))


def options(switches):
    chosen = {}
    if "ynn_reductions_only" in switches:
        chosen.update(kernels.YNN_REDUCTIONS_ONLY)
    if "loop_emitters" in switches:
        chosen["xla_cpu_use_fusion_emitters"] = False
    return chosen or None


def compiled_step(switches):
    if switches in (VARIANTS["all"], VARIANTS["all_block_vjp"]):  # the harness's
        cls = BlockVjp if switches == VARIANTS["all_block_vjp"] else models.CaffeCifar10
        model = cls(kernels="fast", rngs=nnx.Rngs(0))
        compiler_options = kernels.compiler_options("caffe_cifar10", "fast")
    else:
        model, compiler_options = Variant(switches, nnx.Rngs(0)), options(switches)
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.sgd(0.001, momentum=0.9)
    x = jax.random.normal(jax.random.key(1), (100, 32, 32, 3)) * 50
    y = jax.random.randint(jax.random.key(2), (100,), 0, 10)

    def loss(p):
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @functools.partial(jax.jit, compiler_options=compiler_options)
    def step(p, o):
        value, grads = jax.value_and_grad(loss)(p)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, value, grads

    opt = tx.init(params)
    out = step(params, opt)
    jax.block_until_ready(out)
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
              "machine": machine(), "clr_jax": clr_jax.__version__, "variants": rows,
              "all_block_vjp_over_all_median_of_pairs": statistics.median(
                  [a / b for a, b in zip(times["all_block_vjp"], times["all"])])}
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
    md += ["", "all_block_vjp / all (median of pairs): "
           f"{result['all_block_vjp_over_all_median_of_pairs']:.3f}."]
    update_section(f"caffe_kernels_{backend}", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
