"""Range test of N steps against N plain training steps of the same model, side by side.

    python benchmarks/range_test_overhead.py [--steps 2000] [--repeats 5]

Model: an MLP 3072-256-10 (CIFAR-10-shaped input, batch 100, float32) trained with
optax.sgd(momentum=0.9) on synthetic device arrays. "plain" is a jitted lax.scan over
the N steps at a fixed rate; "range test" is clr_jax.range_test over the same N steps
and batches (linear ramp, smoothing and divergence check, 20 compiled chunks). Both are
timed end to end from a fresh function, compilation included, alternating A B A B, and
the ratio is taken pair by pair. Writes benchmarks/results/range_test_overhead.json.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import clr_jax

OUT = Path(__file__).resolve().parent / "results" / "range_test_overhead.json"


def init(key):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (3072, 256)) * 0.02, "b1": jnp.zeros(256),
            "w2": jax.random.normal(k2, (256, 10)) * 0.05, "b2": jnp.zeros(10)}


def loss_fn(p, batch):
    h = jax.nn.relu(batch["x"] @ p["w1"] + p["b1"])
    logits = h @ p["w2"] + p["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def plain_training(params, batches, steps):
    tx = optax.sgd(0.01, momentum=0.9)
    n = batches["x"].shape[0]

    @jax.jit
    def run(params, batches):
        def body(carry, t):
            p, s = carry
            batch = jax.tree.map(lambda x: x[t % n], batches)
            loss, g = jax.value_and_grad(loss_fn)(p, batch)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss
        (p, _), losses = jax.lax.scan(body, (params, tx.init(params)), jnp.arange(steps))
        return p, losses

    p, losses = run(params, batches)
    return np.asarray(losses)


def range_test(params, batches, steps):
    r = clr_jax.range_test(loss_fn, params, batches, min_lr=1e-4, max_lr=0.05,
                           num_steps=steps, optimizer=lambda lr: optax.sgd(lr, momentum=0.9),
                           diverge_threshold=1e9)
    assert len(r.losses) == steps, r.stop_reason
    return r.losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    batches = {"x": jnp.asarray(rng.normal(size=(100, 100, 3072)), jnp.float32),
               "y": jnp.asarray(rng.integers(0, 10, size=(100, 100)), jnp.int32)}
    params = init(jax.random.key(0))
    plain_times, test_times = [], []
    for _ in range(args.repeats):
        for fn, times in ((plain_training, plain_times), (range_test, test_times)):
            start = time.perf_counter()
            fn(params, batches, args.steps)
            times.append(time.perf_counter() - start)
    ratios = np.array(test_times) / np.array(plain_times)
    result = {
        "benchmark": "range_test_overhead",
        "steps": args.steps,
        "repeats": args.repeats,
        "model": "MLP 3072-256-10, batch 100, float32, sgd momentum 0.9",
        "plain_seconds": plain_times,
        "range_test_seconds": test_times,
        "ratio_median": float(np.median(ratios)),
        "ratio_min": float(ratios.min()),
        "ratio_max": float(ratios.max()),
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "cpu_count": jax.local_device_count() if jax.default_backend() != "cpu" else None,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "jax": jax.__version__,
        "clr_jax": clr_jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"plain median {np.median(plain_times):.3f}s, range test median "
          f"{np.median(test_times):.3f}s, ratio median {result['ratio_median']:.3f} "
          f"(min {result['ratio_min']:.3f}, max {result['ratio_max']:.3f})")


if __name__ == "__main__":
    main()
