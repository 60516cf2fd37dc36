"""Table 3 of the paper: adaptive optimizers on CIFAR-10 with and without CLR.

    python experiments/table3_optimizers.py --data ../shared/data/cifar10-jpg.tar.gz \
        [--runs adam-fixed,adam-triangular,...] [--scale 1.0] [--seed 0] \
        [--out experiments/results/table3_paper]

Each run is one training of the Table 1 protocol (Caffe's cifar10_full network and
initialisation, mean-image preprocessing, no augmentation, the training set in one fixed
seeded order, batch 100, weight decay 0.004 with Caffe's per-layer multipliers, test
accuracy on all 10,000 test images every 1,000 iterations) with another optimizer:

- <optimizer>-fixed: the paper's lower bound, x0.1 at 60,000 and 65,000 (as Table 1's
  fixed, Caffe's cifar10_full solvers); 70,000 iterations
- <optimizer>-triangular: triangular between the paper's bounds, step size 2,000;
  70,000 iterations where the paper has a "triangular, 70k" column (Adam, RMSprop; its
  accuracy at 25,000 is the "25k" column, the schedule not depending on the run's
  length), else 25,000

Bounds (the paper's): Nesterov 0.001-0.006, Adam 0.0005-0.002, RMSprop 0.0001-0.0003,
AdaGrad 0.003-0.035, AdaDelta 0.01-0.1.

Assumptions (the paper leaves them open): "fixed" keeps Table 1's two drops; the
optimizers are Optax's with their default betas / epsilons (Caffe's differ in details;
Optax's Nesterov applies the rate after the momentum, Caffe's before); Nesterov's
momentum is 0.9; weight decay and Caffe's multipliers act on the gradient before the
optimizer, as Caffe regularises every solver (so for Adam and RMSprop the lr multiplier
of the biases barely matters).

Default order: Adam, then Nesterov, then the other rows shortest first (AdaGrad,
AdaDelta, RMSprop). Each run writes OUT/<run>/ (summary.json, metrics.jsonl,
checkpoints every 5,000 x scale iterations; run the same command again to resume,
finished runs are not run again; --seed N other than 0 writes OUT/<run>-seed<N>/). At
the end (or with --report-only) the script collects every finished run into
experiments/results/table3_optimizers_<scale>.json and .md and
docs/images/table3_optimizers_<scale>.png. --scale multiplies every length and step
size (for smoke tests).
"""

from pathlib import Path

import optax
from _common import (
    chosen_runs, data_name, experiment_parser, last_part_seconds, metadata, read_metrics,
    require_data, run_main, train_or_load, write_json)

import clr_jax
from clr_jax.harness import TrainConfig, load_dataset

BOUNDS = {"adam": (0.0005, 0.002), "nesterov": (0.001, 0.006),
          "adagrad": (0.003, 0.035), "adadelta": (0.01, 0.1), "rmsprop": (0.0001, 0.0003)}
# The paper's Table 3: fixed at 70k, triangular at 25k, triangular at 70k (None: no number)
PAPER = {"nesterov": (82.1, 81.3, None), "adam": (81.4, 79.8, 81.1),
         "rmsprop": (75.2, 72.8, 75.1), "adagrad": (74.6, 76.0, None),
         "adadelta": (67.3, 67.3, None)}
RUNS = tuple(f"{name}-{policy}" for name in BOUNDS for policy in ("fixed", "triangular"))
OUT = Path(__file__).resolve().parent / "results" / "table3_paper"
FIXED_DROPS = (60_000, 65_000)


def run_settings(run: str, scale: float):
    """(optimizer, schedule, iterations) of a run name such as ``adam-triangular``."""
    s = lambda n: max(1, round(n * scale))  # noqa: E731
    name, policy = run.split("-")
    low, high = BOUNDS[name]
    if policy == "fixed":
        return name, optax.piecewise_constant_schedule(
            low, {s(step): 0.1 for step in FIXED_DROPS}), s(70_000)
    steps = s(70_000) if PAPER[name][2] is not None else s(25_000)
    return name, clr_jax.triangular(low, high, s(2000)), steps


def main(argv=None):
    parser = experiment_parser(__doc__)
    parser.add_argument("--runs", default=",".join(RUNS),
                        help="comma-separated <optimizer>-<fixed|triangular>, in order")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--batch-size", type=int, default=100,
                        help="100 is the paper's; smaller only for smoke tests")
    parser.add_argument("--model", default="caffe_cifar10",
                        help="the paper's network; another only for smoke tests")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="only collect finished runs into the result file")
    parser.add_argument("--report-dir", type=Path,
                        help="write the result file and figure here (default: "
                        "experiments/results and docs/images)")
    args = parser.parse_args(argv)
    require_data(parser, args)
    chosen = chosen_runs(parser, args.runs, RUNS)
    if not args.report_only:
        dataset = load_dataset(args.data)
        every = max(1, round(1000 * args.scale))
        for run in chosen:
            optimizer, schedule, steps = run_settings(run, args.scale)
            config = TrainConfig(optimizer=optimizer, num_steps=steps, eval_every=every,
                                 log_every=every,
                                 checkpoint_every=max(every, round(5000 * args.scale)),
                                 shuffle=False, eval_batch_size=500,
                                 batch_size=args.batch_size, model=args.model,
                                 seed=args.seed)
            name = run if args.seed == 0 else f"{run}-seed{args.seed}"
            summary = train_or_load(config, dataset, args.out / name, schedule=schedule,
                                    progress=not args.no_progress,
                                    describe={"run": run, "data": data_name(args.data),
                                              "scale": args.scale})
            print(f"{name:24s} {summary['final_test_accuracy']:.4f} after "
                  f"{summary['steps']} iterations", flush=True)
    report(args)


def _curve(folder: Path) -> tuple[list[int], list[float]]:
    rows = [r for r in read_metrics(folder) if "test_accuracy" in r]
    return [r["step"] for r in rows], [r["test_accuracy"] for r in rows]


def _at(curve, step):
    steps, accuracy = curve
    return accuracy[steps.index(step)] if step in steps else None


def _cycle_ends(curve, steps: int, s) -> dict:
    """A triangular run's accuracy at the last ends of a cycle (the rate at its lower
    bound, where the paper says to stop) up to 25,000 iterations and up to its end:
    25,000 and 70,000 are not multiples of the cycle (4,000), so those columns read
    the accuracy part-way up a cycle."""
    cycle = 2 * s(2000)
    ends = {}
    for key, limit in (("cycle_end_25k", s(25_000)), ("cycle_end_last", steps)):
        step = limit // cycle * cycle
        ends[key] = {"step": step, "test_accuracy": _at(curve, step)}
    return ends


def report(args) -> dict:
    """Collects every finished run under --out into the result file, table and figure."""
    import json

    from clr_jax import plotting

    s = lambda n: max(1, round(n * args.scale))  # noqa: E731
    rows, curves = {}, {}
    for name in BOUNDS:
        row = {"bounds": list(BOUNDS[name]),
               "paper": dict(zip(("fixed_70k", "triangular_25k", "triangular_70k"),
                                 PAPER[name]))}
        for policy in ("fixed", "triangular"):
            for folder in sorted(args.out.glob(f"{name}-{policy}*")):
                if not (folder / "summary.json").exists():
                    continue
                summary = json.loads((folder / "summary.json").read_text())
                curve = _curve(folder)
                curves[folder.name] = curve
                run = {"seed": summary["config"]["seed"], "steps": summary["steps"],
                       "final_test_accuracy": summary["final_test_accuracy"],
                       "best_test_accuracy": summary["best_test_accuracy"],
                       "at_25k": _at(curve, s(25_000)), "eval_steps": curve[0],
                       **(_cycle_ends(curve, summary["steps"], s)
                          if policy == "triangular" else {}),
                       "test_accuracy": curve[1],
                       "images_per_second": summary.get("images_per_second"),
                       "wall_seconds_last_part": last_part_seconds(summary),
                       "commit": summary.get("commit"),
                       "fingerprint": summary.get("fingerprint")}
                row.setdefault(policy, []).append(run)
        if "fixed" in row or "triangular" in row:
            rows[name] = row
    if not rows:
        raise SystemExit(f"no finished run under {args.out}")
    scale_text = "paper scale" if args.scale == 1 else f"scaled down x{args.scale:g}"
    result = {"experiment": "table3_optimizers", "scale": args.scale,
              "scale_text": scale_text, "data": data_name(args.data), "rows": rows,
              "assumptions": __doc__.split("Assumptions")[1].split("\n\n")[0].strip(" ()"),
              **metadata()}
    results_dir = args.report_dir or Path(__file__).resolve().parent / "results"
    images_dir = args.report_dir or Path(__file__).resolve().parents[1] / "docs" / "images"
    label = f"{args.scale:g}"
    write_json(results_dir / f"table3_optimizers_{label}.json", result)

    def cell(runs, key, paper):
        ours = "-" if not runs or runs[0][key] is None else f"{100 * runs[0][key]:.1f}"
        if runs and len(runs) > 1:
            ours += " (seeds: " + ", ".join(f"{100 * r[key]:.1f}" for r in runs) + ")"
        return f"{ours} ({'-' if paper is None else paper})"

    def ends(runs):
        if not runs:
            return "-"
        seen = {}
        for key in ("cycle_end_25k", "cycle_end_last"):
            end = runs[0][key]
            if end["test_accuracy"] is not None:
                seen[end["step"]] = f"{100 * end['test_accuracy']:.1f} ({end['step']:,})"
        return ", ".join(seen.values()) or "-"

    lines = [f"Table 3, {data_name(args.data)}, {scale_text}: test accuracy % (the paper's "
             "in brackets)", "",
             "| method (bounds) | fixed, 70k | triangular, 25k | triangular, 70k | "
             "triangular at the last cycle ends (iterations) |",
             "|---|---|---|---|---|"]
    for name, row in rows.items():
        fixed, tri = row.get("fixed", []), row.get("triangular", [])
        long_tri = [r for r in tri if r["steps"] >= s(70_000)]
        lines.append(
            f"| {name} ({row['bounds'][0]:g}-{row['bounds'][1]:g}) | "
            f"{cell(fixed, 'final_test_accuracy', row['paper']['fixed_70k'])} | "
            f"{cell(tri, 'at_25k', row['paper']['triangular_25k'])} | "
            f"{cell(long_tri, 'final_test_accuracy', row['paper']['triangular_70k'])} | "
            f"{ends(tri)} |")
    lines += ["", "The last column reads the triangular runs where a cycle ends (the rate at its "
              "lower bound), where the paper says to stop; 25,000 and 70,000 iterations fall "
              f"part-way up a cycle of {2 * s(2000):,}."]
    table = "\n".join(lines) + "\n"
    (results_dir / f"table3_optimizers_{label}.md").write_text(table)
    print(table)
    figure = plotting.plot_accuracy(curves, figsize=(8.0, 4.0),
                                    title=f"Table 3 runs on {data_name(args.data)} ({scale_text})")
    plotting.save_figure(figure, images_dir / f"table3_optimizers_{label}.png")
    return result


if __name__ == "__main__":
    run_main(main)
