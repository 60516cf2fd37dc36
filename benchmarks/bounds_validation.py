"""How good is a suggested bound? CLR trained with each rule's bounds against the best fixed
rate of a grid, on tasks that differ in model, data, optimizer and loss.

    python benchmarks/bounds_validation.py --data ../shared/data/cifar10-jpg.tar.gz \
        [--tasks lstsq_momentum,digits_mlp_adam,...] [--out benchmarks/results]

For each task and its budget of B steps:

1. The grid: 8 fixed rates (log-spaced over the task's range), 2 seeds each (0, 1),
   trained for B steps as one vmapped sweep; the grid-best fixed rate is the one whose
   mean final metric over the seeds is highest.
2. The suggestion: `clr_jax.find_bounds` with its defaults (3 repeats of a 200-step
   exponential ramp from 1e-5 to 10, seeds 0, 1, 2; rounds added while the reading is
   flagged, at most 3) and the default rule ("edge"). Every other rule (paper,
   valley = fastai's default, steepest = torch-lr-finder's, minimum = fastai's, fall) reads
   the same repeats, pooled.
3. CLR: triangular between each rule's bounds, step size B / 4 (two cycles, ending at
   base_lr), seeds 0 and 1, B steps. Its gap is the mean final metric minus the grid-best
   fixed rate's, in points (accuracy %, or 100 R^2 for regression); a hit is a gap of
   -1 point or better. A default reading still flagged after its rounds is a miss (the
   command line would refuse to train on it).
4. Stability: the default suggestion again with seeds 3, 4, 5 and 6, 7, 8 (the spread of
   max_lr over the three seed sets), and with seeds 0, 1, 2 from initial weights scaled by
   1 + 1e-6, a perturbation as small as another machine's rounding; every rule is read on
   those repeats too.

The rule and its settings (the "edge" rule, a fifth of the rate where the loss turns up;
3 repeats of 200 steps) were fixed before this run, from development runs of the first
four tasks with other seeds (100 and up); resnet8_adam, cifar10_caffe and
diabetes_mlp_sgd were not looked at before. Each task's result is written when it ends
(benchmarks/results/bounds_validation/<task>.json; finished tasks are not run again),
then the report: bounds_validation.json, bounds_validation.md and
docs/images/bounds_validation.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import clr_jax

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
RULES = ("edge", "paper", "valley", "steepest", "minimum", "fall")
DEFAULT = "edge"
GRID_SEEDS = (0, 1)
SUGGEST_SEEDS = ((0, 1, 2), (3, 4, 5), (6, 7, 8))
PERTURBATION = 1e-6


# -- library tasks: any loss function, trained by a vmapped loop here ----------------------

@dataclasses.dataclass
class LibraryTask:
    """A model written as plain functions, trained with `jax.vmap` over members."""

    name: str
    describe: dict
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    init: object  # key -> params
    apply: object  # (params, x) -> outputs
    regression: bool
    optimizer: object  # lr -> GradientTransformation
    batch_size: int
    budget: int
    grid: tuple[float, float]

    def batches(self, seed, steps):
        """``steps`` batches in seed's order of the training set (epoch after epoch)."""
        n = len(self.x_train)
        rng = np.random.default_rng(10_000 + seed)
        order = np.concatenate([rng.permutation(n)
                                for _ in range(-(-steps * self.batch_size // n))])
        index = order[: steps * self.batch_size].reshape(steps, self.batch_size)
        return {"x": jnp.asarray(self.x_train[index]), "y": jnp.asarray(self.y_train[index])}

    def loss(self, params, batch):
        out = self.apply(params, batch["x"])
        if self.regression:
            return jnp.mean((out - batch["y"]) ** 2)
        return optax.softmax_cross_entropy_with_integer_labels(out, batch["y"]).mean()

    def metric(self, params):
        """Accuracy, or R^2 for regression (both: 1 is perfect)."""
        out = self.apply(params, jnp.asarray(self.x_test))
        y = jnp.asarray(self.y_test)
        if self.regression:
            return {"accuracy": 1 - jnp.mean((out - y) ** 2) / jnp.var(y)}
        return {"accuracy": jnp.mean(out.argmax(-1) == y)}

    def find(self, seeds, scale=1.0, method=DEFAULT):
        init = self.init if scale == 1 else \
            (lambda key: jax.tree.map(lambda p: p * scale, self.init(key)))
        return clr_jax.find_bounds(self.loss, None, self.batches, init_fn=init,
                                   optimizer=self.optimizer, seeds=seeds, method=method,
                                   eval_fn=jax.jit(self.metric), eval_every=10,
                                   strict=False)

    def train(self, members):
        """members: (base_lr, max_lr, step_size, seed) -> each one's final metric."""
        base = jnp.asarray([m[0] for m in members], jnp.float32)
        top = jnp.asarray([m[1] for m in members], jnp.float32)
        step_size = members[0][2]
        seeds = [m[3] for m in members]
        data = jax.tree.map(lambda *x: jnp.stack(x),
                            *[self.batches(s, self.budget) for s in seeds])
        keys = jnp.stack([jax.random.key_data(jax.random.key(s)) for s in seeds])

        def one(b, m, key, batches):
            tx = self.optimizer(clr_jax.triangular(b, m, step_size))
            params = self.init(jax.random.wrap_key_data(key))

            def body(carry, batch):
                p, state = carry
                updates, state = tx.update(jax.grad(self.loss)(p, batch), state, p)
                return (optax.apply_updates(p, updates), state), None

            (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), batches)
            return self.metric(params)["accuracy"]

        final = np.asarray(jax.jit(jax.vmap(one))(base, top, keys, data), np.float64)
        return np.where(np.isfinite(final), np.maximum(final, -1.0), -1.0)


def _mlp(sizes):
    def init(key):
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            key, k = jax.random.split(key)
            layers.append({"w": jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a),
                           "b": jnp.zeros(b)})
        return layers

    def apply(layers, x):
        for i, layer in enumerate(layers):
            x = x @ layer["w"] + layer["b"]
            if i < len(layers) - 1:
                x = jax.nn.relu(x)
        return x[..., 0] if sizes[-1] == 1 else x

    return init, apply


def lstsq_momentum():
    """Least squares, 20 features with covariance eigenvalues 0.05 to 4, label noise 0.5;
    heavy-ball SGD is stable for lr < 2 (1 + 0.9) / (2 * 4) = 0.475."""
    d, rng = 20, np.random.default_rng(0)
    eig = np.geomspace(0.05, 4.0, d)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    cov = (q * np.sqrt(eig)) @ q.T
    w = rng.normal(size=d)

    def sample(n):
        x = rng.normal(size=(n, d)) @ cov.T
        return x.astype(np.float32), (x @ w + 0.5 * rng.normal(size=n)).astype(np.float32)

    (xt, yt), (xs, ys) = sample(4096), sample(2048)
    return LibraryTask(
        "lstsq_momentum", {"model": "linear", "data": "synthetic least squares (d=20)",
                           "optimizer": "SGD, momentum 0.9", "metric": "100 R^2",
                           "stability_limit": 2 * 1.9 / (2 * eig.max())},
        xt, yt, xs, ys, lambda key: {"w": 0.1 * jax.random.normal(key, (d,))},
        lambda p, x: x @ p["w"], True, lambda lr: optax.sgd(lr, momentum=0.9), 32, 300,
        (3e-4, 0.3))


def digits_mlp_adam():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    init, apply = _mlp([64, 128, 10])
    return LibraryTask(
        "digits_mlp_adam", {"model": "MLP 64-128-10", "data": "scikit-learn digits "
                            "(1,347 train / 450 test)", "optimizer": "Adam",
                            "metric": "accuracy %"},
        x[:1347], y[:1347], x[1347:], y[1347:], init, apply, False, optax.adam, 32, 300,
        (1e-4, 0.3))


def diabetes_mlp_sgd():
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    x = data.data.astype(np.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = ((data.target - data.target.mean()) / data.target.std()).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    init, apply = _mlp([10, 64, 1])
    return LibraryTask(
        "diabetes_mlp_sgd", {"model": "MLP 10-64-1", "data": "scikit-learn diabetes "
                             "(342 train / 100 test, regression)",
                             "optimizer": "SGD, momentum 0.9", "metric": "100 R^2"},
        x[:342], y[:342], x[342:], y[342:], init, apply, True,
        lambda lr: optax.sgd(lr, momentum=0.9), 32, 300, (1e-4, 0.3))


# -- harness tasks: the command line's models and data ------------------------------------

class HarnessTask:
    """A harness model on an image data set: range tests through
    `clr_jax.harness.jobs.find_model_bounds`'s pieces, training through `sweep`."""

    def __init__(self, name, data, budget, grid, describe, eval_every=10, **config):
        from clr_jax.harness import TrainConfig, load_dataset

        self.name, self.budget, self.grid, self.describe = name, budget, grid, describe
        self.eval_every = eval_every
        self.dataset = load_dataset(data)
        self.config = TrainConfig(**config)

    def find(self, seeds, scale=1.0, method=DEFAULT):
        from clr_jax.harness.jobs import range_test_pieces

        config = dataclasses.replace(self.config, seed=seeds[0], num_steps=200,
                                     eval_every=self.eval_every, log_every=self.eval_every)
        pieces = range_test_pieces(config, self.dataset, 200)
        init = pieces.init_fn if scale == 1 else \
            (lambda key: jax.tree.map(lambda p: p * scale, pieces.init_fn(key)))
        return clr_jax.find_bounds(
            pieces.loss_fn, None, pieces.batches, init_fn=init, optimizer=pieces.optimizer,
            eval_fn=pieces.eval_fn, eval_every=self.eval_every, seeds=seeds, method=method,
            strict=False, compiler_options=pieces.compiler_options,
            model_state=pieces.model_state)

    def train(self, members):
        from clr_jax.harness.members import Member
        from clr_jax.harness.sweep import sweep

        group = [Member(f"m{i}", (("triangular", {"base_lr": float(b), "max_lr": float(m),
                                                  "step_size": int(s)}, 1),), seed=int(seed))
                 for i, (b, m, s, seed) in enumerate(members)]
        config = dataclasses.replace(self.config, num_steps=self.budget,
                                     eval_every=self.budget, log_every=self.budget)
        with tempfile.TemporaryDirectory() as tmp:
            summary = sweep(config, self.dataset, group, Path(tmp) / "sweep", progress=False)
        final = np.array([m["final_test_accuracy"] for m in summary["members"]], np.float64)
        return np.where(np.isfinite(final), final, 0.0)


def harness_tasks(data: str | None):
    tasks = {
        "sample_mlp_momentum": lambda: HarnessTask(
            "sample_mlp_momentum", "sample", 400, (1e-4, 0.05),
            {"model": "MLP 3072-256-10", "data": "bundled CIFAR-10 sample (5,000 / 1,000)",
             "optimizer": "SGD, momentum 0.9", "metric": "accuracy %"},
            model="mlp", optimizer="momentum", batch_size=50, preprocess="standard",
            weight_decay=0.0005, caffe_multipliers=False),
        "sample_caffe": lambda: HarnessTask(
            "sample_caffe", "sample", 400, (1e-4, 0.02),
            {"model": "the paper's Caffe net", "data": "bundled CIFAR-10 sample",
             "optimizer": "Caffe SGD (momentum 0.9, weight decay 0.004, multipliers)",
             "metric": "accuracy %"},
            model="caffe_cifar10", optimizer="caffe_sgd", batch_size=50),
        "sample_resnet8_adam": lambda: HarnessTask(
            "sample_resnet8_adam", "sample", 300, (1e-4, 0.03),
            {"model": "ResNet-8 (BatchNorm)", "data": "bundled CIFAR-10 sample",
             "optimizer": "Adam, weight decay 0.0005", "metric": "accuracy %"},
            model="resnet8", optimizer="adam", batch_size=50, preprocess="standard",
            weight_decay=0.0005, caffe_multipliers=False),
    }
    if data:
        tasks["cifar10_caffe"] = lambda: HarnessTask(
            "cifar10_caffe", data, 600, (1e-4, 0.02),
            {"model": "the paper's Caffe net", "data": "CIFAR-10 (JPEG copy, 50,000 / "
             "10,000)", "optimizer": "Caffe SGD", "metric": "accuracy %"},
            eval_every=20,  # all 10,000 test images: 10 evaluations a test
            model="caffe_cifar10", optimizer="caffe_sgd", batch_size=100)
    return tasks


def all_tasks(data):
    lib = {"lstsq_momentum": lstsq_momentum, "digits_mlp_adam": digits_mlp_adam}
    return {**lib, **harness_tasks(data), "diabetes_mlp_sgd": diabetes_mlp_sgd}


# -- the procedure ------------------------------------------------------------------------

def _bounds_dict(b):
    if b is None:
        return None
    return {"base_lr": b.base_lr, "max_lr": b.max_lr, "trusted": b.trusted,
            "max_interval": b.max_interval, "flags": [f.code for f in b.flags]}


def _read_rules(found):
    """Every rule's bounds from the repeats of ``found`` (None where it cannot read)."""
    out = {}
    for rule in RULES:
        if rule == found.bounds.method:
            out[rule] = found.bounds
            continue
        try:
            out[rule] = clr_jax.suggest_bounds(list(found.results), rule)
        except ValueError:
            out[rule] = None
    return out


def run_task(task) -> dict:
    started = time.perf_counter()
    cpu0 = time.process_time()
    b = task.budget
    rates = np.geomspace(*task.grid, 8)
    grid = task.train([(r, r, b, s) for s in GRID_SEEDS for r in rates])
    grid = grid.reshape(len(GRID_SEEDS), -1)
    best = int(np.argmax(grid.mean(0)))
    best_metric = float(grid.mean(0)[best])
    print(f"{task.name}: grid-best fixed {rates[best]:.3g} -> {100 * best_metric:.1f}",
          flush=True)

    founds = [task.find(seeds) for seeds in SUGGEST_SEEDS]
    perturbed = task.find(SUGGEST_SEEDS[0], scale=1 + PERTURBATION)
    readings = [_read_rules(f) for f in founds]
    perturbed_readings = _read_rules(perturbed)
    main = readings[0]

    # CLR with each rule's bounds (rules that read the same bounds share the runs)
    step_size = max(1, b // 4)
    distinct = sorted({(x.base_lr, x.max_lr) for x in main.values() if x is not None})
    members = [(lo, hi, step_size, s) for s in GRID_SEEDS for lo, hi in distinct]
    finals = task.train(members).reshape(len(GRID_SEEDS), -1) if distinct else None
    rules = {}
    for rule, bounds in main.items():
        entry = {"bounds": _bounds_dict(bounds),
                 "max_lr_other_seeds": [None if r[rule] is None else r[rule].max_lr
                                        for r in readings[1:]],
                 "max_lr_perturbed": None if perturbed_readings[rule] is None
                 else perturbed_readings[rule].max_lr}
        if bounds is not None:
            column = distinct.index((bounds.base_lr, bounds.max_lr))
            metric = finals[:, column]
            gap = 100 * (float(metric.mean()) - best_metric)
            refused = rule == DEFAULT and not bounds.trusted
            entry.update(final=metric.tolist(), mean=float(metric.mean()), gap=gap,
                         hit=bool(gap >= -1.0 and not refused), refused=refused)
        else:
            entry.update(final=None, mean=None, gap=None, hit=False, refused=True)
        values = [entry["bounds"] and entry["bounds"]["max_lr"], *entry["max_lr_other_seeds"]]
        values = [x for x in values if x]
        entry["seed_ratio"] = max(values) / min(values) if len(values) == 3 else None
        entry["perturbation_ratio"] = (
            max(entry["max_lr_perturbed"], bounds.max_lr)
            / min(entry["max_lr_perturbed"], bounds.max_lr)
            if bounds is not None and entry["max_lr_perturbed"] else None)
        rules[rule] = entry
        print(f"  {rule:9s} "
              + (f"{bounds.base_lr:.3g}-{bounds.max_lr:.3g} gap {entry['gap']:+.1f}"
                 if bounds is not None else "no reading")
              + f"  seeds x{entry['seed_ratio'] or float('nan'):.2f}"
              f"  perturbed x{entry['perturbation_ratio'] or float('nan'):.3f}", flush=True)
    return {
        "task": task.name, "describe": task.describe, "budget": b,
        "grid": {"rates": rates.tolist(), "final": grid.tolist(), "best_rate": float(rates[best]),
                 "best_mean": best_metric},
        "clr_step_size": step_size, "rules": rules,
        "default": {"rounds": [f.rounds for f in founds],
                    "perturbed_rounds": perturbed.rounds,
                    "steps_run": [f.steps_run for f in founds],
                    "edge": founds[0].bounds.edge},
        # evidence that the perturbation acts: the first step at which the first repeat's
        # loss differs from the unperturbed one's, and the largest difference
        "perturbation_effect": _difference(founds[0].results[0], perturbed.results[0]),
        "curves": {"learning_rates": founds[0].results[0].learning_rates.tolist(),
                   "losses": [r.losses.tolist() for r in founds[0].results]},
        "wall_seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu0,
    }


def _difference(a, b) -> dict:
    n = min(len(a.losses), len(b.losses))
    differ = np.flatnonzero(a.losses[:n] != b.losses[:n])
    with np.errstate(invalid="ignore"):
        largest = np.nanmax(np.abs(a.losses[:n] - b.losses[:n]) / np.abs(a.losses[:n]))
    return {"first_step_that_differs": int(differ[0]) + 1 if differ.size else None,
            "largest_relative_difference": float(largest)}


def machine() -> dict:
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n")[0]
    except (OSError, IndexError):
        pass
    isa = "avx512f" if " avx512f" in flags else "avx2" if " avx2" in flags else "other"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip() or None
    return {"machine": platform.machine(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "isa": isa, "jax": jax.__version__,
            "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "commit": commit}


def report(results: dict, out: Path, images: Path) -> dict:
    from clr_jax import plotting

    names = list(results)
    summary = {}
    for rule in RULES:
        hits = [results[t]["rules"][rule]["hit"] for t in names]
        seed_ok = [(results[t]["rules"][rule]["seed_ratio"] or np.inf) <= 1.5 for t in names]
        pert_ok = [(results[t]["rules"][rule]["perturbation_ratio"] or np.inf) <= 1.5
                   for t in names]
        gaps = [results[t]["rules"][rule]["gap"] for t in names]
        summary[rule] = {"hits": int(sum(hits)), "tasks": len(names),
                         "stable_over_seeds": int(sum(seed_ok)),
                         "stable_under_perturbation": int(sum(pert_ok)),
                         "median_gap": float(np.median([g for g in gaps if g is not None]))
                         if any(g is not None for g in gaps) else None}
    # the commit whose code ran the tasks (each task's file has its own); the report's
    # own commit is recorded beside it
    commits = sorted({r.get("commit") for r in results.values()}, key=str)
    data = {"benchmark": "bounds_validation", "rules": list(RULES), "default": DEFAULT,
            "summary": summary, "tasks": results, **machine()}
    data["report_commit"] = data["commit"]
    data["commit"] = commits[0] if len(commits) == 1 else commits
    out.mkdir(parents=True, exist_ok=True)
    (out / "bounds_validation.json").write_text(json.dumps(data, indent=1) + "\n")

    lines = ["Gap of CLR (triangular between each rule's bounds, B steps) to the grid-best "
             "fixed rate, in points (mean of seeds 0 and 1); * = a hit (-1 or better); "
             "(f) = flagged reading; default refused = flagged after its rounds.", "",
             "| task | B | grid-best fixed | " + " | ".join(RULES) + " |",
             "|---|---|---|" + "---|" * len(RULES)]
    for t in names:
        r = results[t]
        cells = []
        for rule in RULES:
            e = r["rules"][rule]
            if e["gap"] is None:
                cells.append("no reading")
                continue
            mark = "*" if e["hit"] else ""
            flag = " (f)" if e["bounds"]["flags"] else ""
            cells.append(f"{e['gap']:+.1f}{mark}{flag} (max {e['bounds']['max_lr']:.2g})")
        lines.append(f"| {t} | {r['budget']} | {r['grid']['best_rate']:.2g}: "
                     f"{100 * r['grid']['best_mean']:.1f} | " + " | ".join(cells) + " |")
    lines.append("| hits | | | " + " | ".join(
        f"{summary[x]['hits']} / {summary[x]['tasks']}" for x in RULES) + " |")
    lines += ["", "Stability of max_lr: largest / smallest over seed sets (0,1,2), (3,4,5), "
              "(6,7,8), and perturbed (x(1+1e-6) initial weights) / unperturbed.", "",
              "| task | " + " | ".join(RULES) + " |", "|---|" + "---|" * len(RULES)]
    for t in names:
        cells = []
        for rule in RULES:
            e = results[t]["rules"][rule]
            s = "-" if e["seed_ratio"] is None else f"x{e['seed_ratio']:.2f}"
            p = "-" if e["perturbation_ratio"] is None else f"x{e['perturbation_ratio']:.2f}"
            cells.append(f"{s} / {p}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines.append("| within x1.5 (seeds / perturbed) | " + " | ".join(
        f"{summary[x]['stable_over_seeds']} / {summary[x]['stable_under_perturbation']}"
        for x in RULES) + " |")
    (out / "bounds_validation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    figure = plotting.figure((9.0, 0.5 * len(names) + 3.0))
    axes = figure.add_subplot()
    rows = np.arange(len(names))
    width = 0.8 / len(RULES)
    for i, rule in enumerate(RULES):
        gaps = [results[t]["rules"][rule]["gap"] for t in names]
        gaps = [np.nan if g is None else max(g, -30) for g in gaps]
        axes.barh(rows + (i - len(RULES) / 2 + 0.5) * width, gaps, height=width,
                  label=f"{rule} ({summary[rule]['hits']}/{len(names)} hits)")
    axes.axvline(-1, color="k", ls=":", lw=1)
    axes.axvline(0, color="k", lw=0.8)
    axes.set_yticks(rows, names)
    axes.invert_yaxis()
    axes.set_xlabel("CLR minus grid-best fixed rate (points; bars cut at -30)")
    axes.set_title("Bounds validation: each rule's CLR against the best fixed rate")
    axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
    axes.grid(axis="x", alpha=0.3)
    plotting.save_figure(figure, images / "bounds_validation.png")
    return data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("CLR_JAX_DATA"),
                        help="the CIFAR-10 archive for the cifar10_caffe task (left out "
                        "without it)")
    parser.add_argument("--tasks", help="comma-separated task names (default: all)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--images", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    from clr_jax.harness.compilation import enable_compilation_cache

    enable_compilation_cache()
    tasks = all_tasks(args.data)
    chosen = args.tasks.split(",") if args.tasks else list(tasks)
    unknown = sorted(set(chosen) - set(tasks))
    if unknown:
        parser.error(f"unknown tasks {unknown}; choose from {', '.join(tasks)}")
    folder = args.out / "bounds_validation"
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in chosen:
        path = folder / f"{name}.json"
        if not path.exists():
            result = {**run_task(tasks[name]()), **machine()}
            path.write_text(json.dumps(result, indent=1) + "\n")
        results[name] = json.loads(path.read_text())
    report(results, args.out, args.images)


if __name__ == "__main__":
    main()
