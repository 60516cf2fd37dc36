"""A scaled-down LR range test on real CIFAR-10, for the range-test guide's figures.

    python experiments/range_test_cifar10_small.py --data ../shared/data/cifar10-jpg.tar.gz

(or set CLR_JAX_DATA to the archive). Runs on a 2-core CPU in a few minutes. Not the
paper's Figure 3 protocol (that needs the Caffe network and 4,000 iterations): a small
CNN (conv 5x5x16 - pool - conv 5x5x32 - pool - dense 10, inputs standardised per
channel), SGD with momentum 0.9, batch 100, on the full CIFAR-10 (JPEG copy) training
set in a seeded shuffled order, test accuracy on the first 2,000 test images.

Three tests, each written to experiments/results/range_test_cifar10_small.json and
drawn to docs/images/range_test_cifar10_<name>.png:

- linear: the paper's test, 0.0001 -> 0.06 over 800 steps, accuracy every 25 steps;
- exponential: 1e-4 -> 1.0 over 400 steps, the loss-based rules;
- parallel: 6 fixed rates from 0.003 to 0.3, 150 steps each, trained at once.
"""

import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _common import experiment_parser, require_data, run_main

import clr_jax
from clr_jax.suggest import suggest_all
from clr_jax import plotting
from clr_jax.harness.data import load_image_folder

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "range_test_cifar10_small.json"
IMAGES = ROOT / "docs" / "images"


def init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    he = lambda k, shape, fan_in: jax.random.normal(k, shape) * np.sqrt(2 / fan_in)  # noqa
    return {"c1": he(k1, (5, 5, 3, 16), 75), "b1": jnp.zeros(16),
            "c2": he(k2, (5, 5, 16, 32), 400), "b2": jnp.zeros(32),
            "w": he(k3, (8 * 8 * 32, 10), 2048) / 4, "b": jnp.zeros(10)}


def conv(x, w, b):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y + b)


def pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def logits_fn(p, images):
    x = pool(conv(images, p["c1"], p["b1"]))
    x = pool(conv(x, p["c2"], p["b2"]))
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"]


METHODS = {"linear": ("paper", "paper_peak"),
           "exponential": ("valley", "minimum", "steep", "slide", "steepest"),
           "parallel": ("valley", "paper_peak")}
TITLES = {"linear": "linear range test, CIFAR-10 (JPEG copy), small CNN",
          "exponential": "exponential range test, CIFAR-10 (JPEG copy), small CNN",
          "parallel": "parallel range test (6 rates at once), CIFAR-10 (JPEG copy)"}


def read_bounds(result, methods):
    """The bounds of every rule that can read this result (a short test may be too short
    for some)."""
    return suggest_all(result, methods)


def reread(args):
    """The bounds of the recorded tests, read again with the current rules."""
    report = json.loads(args.out.read_text())
    for name, test in report["tests"].items():
        kind = (clr_jax.ParallelRangeTestResult if name == "parallel"
                else clr_jax.RangeTestResult)
        result = kind.from_dict(test["result"])
        bounds = read_bounds(result, METHODS[name])
        test["bounds"] = [b.to_dict() for b in bounds]
        plotting.save_figure(plotting.plot_range_test(result, bounds, title=TITLES[name]),
                             args.images / f"range_test_cifar10_{name}.png")
        for b in bounds:
            print(f"{name:12s} {b.method:11s} base {b.base_lr:.4g}  max {b.max_lr:.4g}")
    args.out.write_text(json.dumps(report, indent=1) + "\n")


def main():
    parser = experiment_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="a few steps, for smoke tests")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--reread", action="store_true",
                        help="read the bounds again from the recorded tests in --out (after "
                        "the rules change), without training")
    args = parser.parse_args()
    if args.reread:
        return reread(args)
    require_data(parser, args)
    scale = 0.02 if args.quick else 1.0
    steps = {k: max(4, int(n * scale)) for k, n in
             (("linear", 800), ("exponential", 400), ("parallel", 150))}

    data = load_image_folder(args.data)
    mean = data.train_images.reshape(-1, 3).mean(0) / 255
    std = data.train_images.reshape(-1, 3).std(0) / 255

    def prep(images):
        return (jnp.asarray(images, jnp.float32) / 255 - mean) / std

    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.train_labels))
    need = max(steps.values()) * 100
    idx = order[np.arange(need) % len(order)].reshape(-1, 100)
    batches = {"x": prep(data.train_images[idx]), "y": jnp.asarray(data.train_labels[idx])}
    n_test = 200 if args.quick else 2000  # --quick: a smoke test, not a measurement
    test_x = prep(data.test_images[:n_test])
    test_y = jnp.asarray(data.test_labels[:n_test])

    def loss_fn(p, batch):
        return optax.softmax_cross_entropy_with_integer_labels(
            logits_fn(p, batch["x"]), batch["y"]).mean()

    @jax.jit
    def accuracy(p):
        return {"accuracy": (logits_fn(p, test_x).argmax(-1) == test_y).mean()}

    sgd = lambda lr: optax.sgd(lr, momentum=0.9)  # noqa: E731
    params = init(jax.random.key(0))
    report = {"experiment": "range_test_cifar10_small", "scale": "quick" if args.quick else
              "cpu (scaled down)", "data": "CIFAR-10 (JPEG copy)", "device":
              jax.devices()[0].device_kind, "machine": platform.machine(),
              "clr_jax": clr_jax.__version__, "jax": jax.__version__, "tests": {}}

    def record(name, run, methods, title):
        """Times one test, reads its bounds, stores it and draws it."""
        started = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - started
        bounds = read_bounds(result, methods)
        report["tests"][name] = {"result": result.to_dict(), "seconds": seconds,
                                 "bounds": [b.to_dict() for b in bounds]}
        plotting.save_figure(plotting.plot_range_test(result, bounds, title=title),
                             args.images / f"range_test_cifar10_{name}.png")

    record("linear", lambda: clr_jax.range_test(
        loss_fn, params, batches, min_lr=0.0001, max_lr=0.06, num_steps=steps["linear"],
        optimizer=sgd, eval_fn=accuracy, eval_every=max(1, steps["linear"] // 32),
        progress=True), METHODS["linear"],
        "linear range test, CIFAR-10 (JPEG copy), small CNN")
    record("exponential", lambda: clr_jax.range_test(
        loss_fn, params, batches, min_lr=1e-4, max_lr=1.0, num_steps=steps["exponential"],
        optimizer=sgd, mode="exponential", progress=True), METHODS["exponential"],
        "exponential range test, CIFAR-10 (JPEG copy), small CNN")
    record("parallel", lambda: clr_jax.parallel_range_test(
        loss_fn, params, batches, learning_rates=np.geomspace(0.003, 0.3, 3 if args.quick else 6),
        num_steps=steps["parallel"], optimizer=sgd, eval_fn=accuracy, progress=True),
        METHODS["parallel"],
        "parallel range test (6 rates at once), CIFAR-10 (JPEG copy)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for name, test in report["tests"].items():
        for b in test["bounds"]:
            print(f"{name:12s} {b['method']:11s} base {b['base_lr']:.4g}  max {b['max_lr']:.4g}"
                  f"   ({test['seconds']:.0f} s)")


if __name__ == "__main__":
    run_main(main)
