"""Convolution gradients on XLA's CPU backend: inside a while loop, and vmapped.

    python benchmarks/scan_conv_cpu.py

20 SGD steps of a small CNN (conv 5x5x16 - pool - conv 5x5x32 - pool - dense 10,
batch 100 of 32x32x3, float32), three ways, each timed after a warm-up call:
a lax.scan (a while loop), the same scan fully unrolled, and a Python loop over a
jitted single step. Then one gradient of K = 4 models vmapped (XLA makes grouped
convolutions of it) against 4 separate gradients. Writes
benchmarks/results/scan_conv_cpu.json. This is why, on CPU, the range test runs its
steps in unrolled groups and the parallel range test runs members one by one.
"""

import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from range_test_cifar10_small import init, logits_fn  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "scan_conv_cpu.json"
STEPS = 20


def main():
    rng = np.random.default_rng(0)
    batches = {"x": jnp.asarray(rng.normal(size=(STEPS, 100, 32, 32, 3)), jnp.float32),
               "y": jnp.asarray(rng.integers(0, 10, (STEPS, 100)), jnp.int32)}
    params = init(jax.random.key(0))

    def loss(p, batch):
        return optax.softmax_cross_entropy_with_integer_labels(
            logits_fn(p, batch["x"]), batch["y"]).mean()

    def sgd(p, batch):
        return jax.tree.map(lambda a, g: a - 1e-3 * g, p, jax.grad(loss)(p, batch))

    def scanned(unroll):
        @jax.jit
        def run(p, b):
            return jax.lax.scan(lambda c, batch: (sgd(c, batch), None), p, b,
                                unroll=unroll)[0]
        return lambda: run(params, batches)

    step = jax.jit(sgd)

    def python_loop():
        p = params
        for i in range(STEPS):
            p = step(p, jax.tree.map(lambda x: x[i], batches))
        return p

    seconds = {}

    def measure(variants, repeats):
        for name, fn in variants.items():
            jax.block_until_ready(fn())  # compile and warm up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(fn())
                times.append(time.perf_counter() - start)
            seconds[name] = float(np.median(times))
            print(f"{name:30s} {seconds[name]:.3f} s")

    measure({"lax.scan (while loop)": scanned(1), "lax.scan unroll=True": scanned(True),
             "Python loop of jitted steps": python_loop}, repeats=3)
    members = jax.vmap(init)(jax.random.split(jax.random.key(1), 4))
    batch = jax.tree.map(lambda x: x[0], batches)
    vmapped = jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, None)))
    single = jax.jit(jax.grad(loss))
    split = [jax.tree.map(lambda x, i=i: x[i], members) for i in range(4)]
    measure({"vmapped grad of 4 models": lambda: vmapped(members, batch),
             "4 separate grads": lambda: [single(m, batch) for m in split]}, repeats=5)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "benchmark": "scan_conv_cpu", "steps": STEPS, "median_of": "3 (scan), 5 (vmap)",
        "seconds": seconds,
        "vmapped_over_separate": seconds["vmapped grad of 4 models"]
        / seconds["4 separate grads"],
        "while_loop_over_unrolled": seconds["lax.scan (while loop)"]
        / seconds["lax.scan unroll=True"],
        "backend": jax.default_backend(), "machine": platform.machine(),
        "jax": jax.__version__, "date": time.strftime("%Y-%m-%d")}, indent=1) + "\n")


if __name__ == "__main__":
    main()
