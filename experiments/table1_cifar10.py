"""Table 1 of the paper, CIFAR-10: each policy trained with the paper's protocol.

    python experiments/table1_cifar10.py --data ../shared/data/cifar10-jpg.tar.gz \
        [--policies fixed,triangular2,...] [--scale 1.0] [--seed 0] \
        [--out experiments/results/table1]

Protocol (../shared/PAPER.md): Caffe's cifar10_full network and initialisation,
mean-image preprocessing on the 0-255 scale, no augmentation, the training set read
in one fixed (seeded) order every epoch (as Caffe read its pre-shuffled LMDB),
Caffe-style SGD (momentum 0.9, weight decay 0.004, the per-layer multipliers),
batch 100, test accuracy on all 10,000 test images every 1,000 iterations.
Data: CIFAR-10 (JPEG copy).

Policies and lengths (iterations) at --scale 1.0 (the paper's; meant for a GPU):

- fixed: 0.001, x0.1 at 60,000 and 65,000; 70,000
- triangular2: the three stages of Table 2 (0.001-0.005 step 2,000 to 16,000;
  0.0001-0.0005 step 1,000 to 22,000; 0.00001-0.00005 step 500 to 25,000); 25,000
- triangular: 0.001-0.006, step size 2,000 (section 3.1's text); 25,000
- decay: 0.007 -> 0.001 over 4,000 iterations; 25,000
- exp: 0.001 * 0.99994^t (the paper gives no base_lr: 0.001 is an assumption); 70,000
- exp_range_amplitude / exp_range_both: 0.001-0.006, step 2,000, gamma 0.99994 (bounds
  and step size are assumptions), the two readings of the formula; 42,000

--scale multiplies every length and step size (0.02 is the CPU scale committed here:
the shape of every schedule kept, 50x fewer iterations). Each policy writes
OUT/<policy>/ (summary.json, metrics.jsonl, checkpoints every 5,000 x scale iterations:
re-run the same command to resume, finished policies are not run again); --seed N other
than 0 (a second initialisation and data order, for the seed spread) writes
OUT/<policy>-seed<N>/. At the end
(or with --report-only) the script writes experiments/results/table1_cifar10_<scale>.json
(every curve, config, device, wall time of each run's last part, versions; iterations
each policy needed to reach the fixed policy's final accuracy; accuracies at an equal budget, the shortest
policy's length) with a markdown table next to it, and
docs/images/table1_cifar10_<scale>.png.
"""

import json
from pathlib import Path

import numpy as np
import optax
from _common import (
    experiment_parser, last_part_seconds, metadata, require_data, run_main, train_or_load,
    write_json)

import clr_jax
from clr_jax.harness import TrainConfig, load_dataset
from clr_jax.policies import make_schedule, staged

OUT = Path(__file__).resolve().parent / "results" / "table1"


def _policies_text() -> str:
    """The docstring's list of policies, lengths and assumptions (stored in the result file)."""
    text = __doc__.split("Policies and lengths (iterations) at --scale 1.0")[1]
    return text.split("\n--scale multiplies")[0].split(":", 1)[1].strip()


def policies(scale: float):
    s = lambda n: max(1, round(n * scale))  # noqa: E731
    return {
        "fixed": (optax.piecewise_constant_schedule(0.001, {s(60_000): 0.1, s(65_000): 0.1}),
                  s(70_000)),
        "triangular2": (staged([
            ("triangular2", dict(base_lr=0.001, max_lr=0.005, step_size=s(2000)), s(16_000)),
            ("triangular2", dict(base_lr=0.0001, max_lr=0.0005, step_size=s(1000)), s(6000)),
            ("triangular2", dict(base_lr=0.00001, max_lr=0.00005, step_size=s(500)), s(3000)),
        ]), s(25_000)),
        "triangular": (clr_jax.triangular(0.001, 0.006, s(2000)), s(25_000)),
        "decay": (clr_jax.decay(0.007, 0.001, s(4000)), s(25_000)),
        "exp": (make_schedule("exp", base_lr=0.001, gamma=0.99994 ** (1 / scale)), s(70_000)),
        "exp_range_amplitude": (clr_jax.exp_range(0.001, 0.006, s(2000), 0.99994 ** (1 / scale)),
                                s(42_000)),
        "exp_range_both": (clr_jax.exp_range(0.001, 0.006, s(2000), 0.99994 ** (1 / scale),
                                             decay="both"), s(42_000)),
    }


def main(argv=None):
    parser = experiment_parser(__doc__)
    parser.add_argument("--policies", default=",".join(policies(1.0)))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--eval-every", type=int,
                        help="iterations between test evaluations (default: 1000 x scale)")
    parser.add_argument("--batch-size", type=int, default=100,
                        help="100 is the paper's; smaller only for smoke tests")
    parser.add_argument("--model", default="caffe_cifar10",
                        help="the paper's network; another only for smoke tests")
    parser.add_argument("--seed", type=int, default=0,
                        help="initialisation and data order; 0 is the main run, others "
                        "write <policy>-seed<N> for the seed spread")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="only collect finished policies into the result file")
    parser.add_argument("--report-dir", type=Path,
                        help="write the result file and figure here (default: "
                        "experiments/results and docs/images)")
    args = parser.parse_args(argv)
    require_data(parser, args)
    table = policies(args.scale)
    chosen = args.policies.split(",")
    unknown = sorted(set(chosen) - set(table))
    if unknown:
        parser.error(f"unknown policies {unknown}; choose from {', '.join(table)}")
    if args.report_only:
        return report(args)
    dataset = load_dataset(args.data)
    eval_every = args.eval_every or max(1, round(1000 * args.scale))
    results_path = args.out / "table1.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in chosen:
        schedule, steps = table[name]
        config = TrainConfig(num_steps=steps, eval_every=eval_every, log_every=eval_every,
                             checkpoint_every=max(eval_every, round(5000 * args.scale)),
                             shuffle=False, eval_batch_size=500,
                             batch_size=args.batch_size, model=args.model, seed=args.seed)
        run_name = name if args.seed == 0 else f"{name}-seed{args.seed}"
        summary = train_or_load(config, dataset, args.out / run_name, schedule=schedule,
                                progress=not args.no_progress,
                                describe={"policy": name, "data": "CIFAR-10 (JPEG copy)",
                                          "scale": args.scale})
        results[run_name] = {k: summary.get(k) for k in (
            "final_test_accuracy", "best_test_accuracy", "best_step", "steps",
            "images_per_second", "device", "wall_seconds_this_session", "fingerprint",
            "commit")}
        results[run_name].update({k: val for k, val in metadata().items()
                                  if k in ("machine", "jax")})
        args.out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{run_name:22s} {summary['final_test_accuracy']:.4f} after {summary['steps']} "
              f"iterations ({summary['images_per_second']:.0f} images/s)", flush=True)
    report(args)


PAPER = {"fixed": (70_000, 81.4), "triangular2": (25_000, 81.4), "decay": (25_000, 78.5),
         "exp": (70_000, 79.1), "exp_range_amplitude": (42_000, 82.2),
         "exp_range_both": (42_000, 82.2), "triangular": (25_000, None)}


def _rows(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run(folder: Path, name: str) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    evaluated = [r for r in _rows(folder) if "test_accuracy" in r]
    return {
        "final_test_accuracy": summary["final_test_accuracy"],
        "best_test_accuracy": summary["best_test_accuracy"],
        "steps": summary["steps"], "paper_steps": PAPER[name][0],
        "paper_accuracy": PAPER[name][1],
        "eval_steps": [r["step"] for r in evaluated],
        "test_accuracy": [r["test_accuracy"] for r in evaluated],
        "lr": [r["lr"] for r in evaluated],
        "images_per_second": summary.get("images_per_second"),
        "wall_seconds_last_part": last_part_seconds(summary),
        "device": summary.get("device"), "fingerprint": summary.get("fingerprint"),
        "commit": summary.get("commit"), "seed": summary["config"]["seed"],
        "config": summary.get("config"),
    }


def _first_reaching(run: dict, target: float | None) -> int | None:
    return next((s for s, a in zip(run["eval_steps"], run["test_accuracy"])
                 if target is not None and a >= target), None)


def report(args) -> dict:
    """Collects every finished run under --out into one result file, table and figures:
    each policy's main run (seed 0) and its other seeds (<policy>-seed<N>)."""
    from clr_jax import plotting

    runs, seeds = {}, {}
    for name in policies(args.scale):
        if (args.out / name / "summary.json").exists():
            runs[name] = _run(args.out / name, name)
        for folder in sorted(args.out.glob(f"{name}-seed*")):
            if (folder / "summary.json").exists():
                seeds.setdefault(name, []).append(_run(folder, name))
    if not runs:
        raise SystemExit(f"no finished policy under {args.out}")
    target = runs["fixed"]["final_test_accuracy"] if "fixed" in runs else None
    budget = min(run["steps"] for run in runs.values())
    for name, run in runs.items():
        run["steps_to_fixed_final"] = _first_reaching(run, target)
        # the other way round: the iterations fixed needs to reach this policy's final
        run["fixed_steps_to_this_final"] = (
            _first_reaching(runs["fixed"], run["final_test_accuracy"]) if "fixed" in runs
            else None)
        run["fraction_of_fixed_iterations"] = (
            run["steps_to_fixed_final"] / runs["fixed"]["steps"]
            if run["steps_to_fixed_final"] and "fixed" in runs else None)
        at_budget = [a for s, a in zip(run["eval_steps"], run["test_accuracy"]) if s <= budget]
        run["accuracy_at_equal_budget"] = at_budget[-1] if at_budget else None
        if name in seeds:  # every seed: its final accuracy, and the iterations each seed
            # needs to reach each seed's fixed final (the spread of the headline)
            finals = [run["final_test_accuracy"]] + [r["final_test_accuracy"]
                                                     for r in seeds[name]]
            run["seeds"] = {
                "seeds": [run["seed"]] + [r["seed"] for r in seeds[name]],
                "final_test_accuracy": finals,
                "mean": float(np.mean(finals)), "std": float(np.std(finals, ddof=1)),
                "runs": seeds[name]}
    fixed_finals = runs.get("fixed", {}).get("seeds", {}).get("final_test_accuracy")
    for run in runs.values():
        if fixed_finals and "seeds" in run:
            all_runs = [run] + run["seeds"]["runs"]
            run["seeds"]["steps_to_each_fixed_final"] = [
                [_first_reaching(r, t) for t in fixed_finals] for r in all_runs]
    label = f"{args.scale:g}"
    scale_text = "paper scale" if args.scale == 1 else f"scaled down x{args.scale:g} (CPU)"
    result = {"experiment": "table1_cifar10", "scale": args.scale, "scale_text": scale_text,
              "data": "CIFAR-10 (JPEG copy)", "target_fixed_final": target,
              "equal_budget_steps": budget, "policies": runs,
              "assumptions": _policies_text(),
              **metadata()}
    results_dir = args.report_dir or Path(__file__).resolve().parent / "results"
    images_dir = args.report_dir or Path(__file__).resolve().parents[1] / "docs" / "images"
    write_json(results_dir / f"table1_cifar10_{label}.json", result)
    lines = [f"Table 1, CIFAR-10 (JPEG copy), {scale_text}; target = fixed's final accuracy "
             f"({target:.4f})" if target is not None else "Table 1", "",
             "| policy | iterations (paper) | final accuracy % (paper) | best % | "
             f"iterations to fixed's final (paper) | iterations fixed needs to reach this "
             f"final | % at {budget} iterations | seeds: final % |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        paper_acc = "-" if run["paper_accuracy"] is None else f"{run['paper_accuracy']}"
        reached = run["steps_to_fixed_final"]
        paper_reached = {"triangular2": "25000", "fixed": "70000"}.get(name, "-")
        spread = ""
        if "seeds" in run:
            values = ", ".join(f"{100 * a:.1f}" for a in run["seeds"]["final_test_accuracy"])
            spread = f"{values} (mean {100 * run['seeds']['mean']:.1f}, std " \
                     f"{100 * run['seeds']['std']:.1f})"
        lines.append(
            f"| {name} | {run['steps']} ({run['paper_steps']}) | "
            f"{100 * run['final_test_accuracy']:.1f} ({paper_acc}) | "
            f"{100 * run['best_test_accuracy']:.1f} | "
            f"{reached if reached is not None else 'not reached'} ({paper_reached}) | "
            f"{run['fixed_steps_to_this_final'] or 'not reached'} | "
            f"{100 * run['accuracy_at_equal_budget']:.1f} | {spread} |")
    table = "\n".join(lines) + "\n"
    (results_dir / f"table1_cifar10_{label}.md").write_text(table)
    print(table)
    curves = {name: (run["eval_steps"], run["test_accuracy"]) for name, run in runs.items()}
    figure = plotting.plot_accuracy(curves, target=target, figsize=(8.0, 4.0),
                                    title=f"Table 1 policies on CIFAR-10 ({scale_text})")
    plotting.save_figure(figure, images_dir / f"table1_cifar10_{label}.png")
    if "fixed" in runs and "triangular2" in runs:  # the paper's Figure 1
        figure1 = {}
        for name, text in (("fixed", "fixed (0.001, drops at 60k, 65k)"),
                           ("triangular2", "triangular2 (Table 2's three stages)")):
            for run in [runs[name]] + runs[name].get("seeds", {}).get("runs", []):
                figure1[f"{text}, seed {run['seed']}"] = (run["eval_steps"],
                                                          run["test_accuracy"])
        figure = plotting.plot_accuracy(
            figure1, target=target, figsize=(8.0, 4.0),
            title=f"Figure 1: CIFAR-10 (JPEG copy), {scale_text}")
        axes = figure.axes[0]
        for line in axes.get_lines():  # one colour per policy, seed 0 solid, others dashed
            line_label = line.get_label()
            if line_label.startswith(("fixed", "triangular2")):
                line.set_color("C0" if line_label.startswith("fixed") else "C1")
                line.set_linestyle("-" if line_label.endswith("seed 0") else "--")
        axes.legend(fontsize="small")
        plotting.save_figure(figure, images_dir / f"figure1_cifar10_{label}.png")
    if args.scale == 1:  # only at the paper's own lengths is the paper's column comparable
        plotting.save_figure(_against_paper(runs), images_dir / "table1_cifar10_vs_paper.png")
    return result


def _against_paper(runs: dict):
    """Each finished policy's final accuracy beside the paper's, every seed shown."""
    from clr_jax import plotting

    names = list(runs)[::-1]
    figure = plotting.figure(figsize=(7.0, 0.55 * len(names) + 1.2))
    axes = figure.add_subplot()
    rows = np.arange(len(names))
    ours = [100 * runs[n].get("seeds", {}).get("mean", runs[n]["final_test_accuracy"])
            for n in names]
    paper = [runs[n]["paper_accuracy"] or np.nan for n in names]
    axes.barh(rows + 0.2, ours, height=0.4, color="C0", label="clr_jax (seed mean)")
    axes.barh(rows - 0.2, paper, height=0.4, color="0.7", label="the paper")
    for row, name in zip(rows, names):
        finals = runs[name].get("seeds", {}).get("final_test_accuracy",
                                                  [runs[name]["final_test_accuracy"]])
        axes.plot([100 * a for a in finals], [row + 0.2] * len(finals), "k|", markersize=9,
                  label="each seed" if row == rows[-1] else None)
        axes.annotate(f"{ours[row]:.1f}", (max(ours[row], 100 * max(finals)), row + 0.2),
                      xytext=(4, 0),
                      textcoords="offset points", va="center", fontsize="small")
        if not np.isnan(paper[row]):
            axes.annotate(f"{paper[row]:.1f}", (paper[row], row - 0.2), xytext=(3, 0),
                          textcoords="offset points", va="center", fontsize="small")
    for row in rows:
        if np.isnan(paper[row]):
            axes.annotate("no number in the paper", (0, row - 0.2), xytext=(4, 0),
                          xycoords=("axes fraction", "data"), textcoords="offset points",
                          va="center", fontsize="small", color="0.4")
    axes.set_yticks(rows, [f"{n} ({runs[n]['steps']:,} it.)" for n in names])
    low = min(min(ours), np.nanmin(paper)) if not np.all(np.isnan(paper)) else min(ours)
    axes.set_xlim(np.floor(low / 5) * 5 - 5, 85)
    axes.set_xlabel("final test accuracy % (CIFAR-10; ours on the JPEG copy)")
    axes.set_title("Table 1 at the paper's scale: clr_jax against the paper")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize="small")
    axes.grid(axis="x", alpha=0.3)
    return figure


if __name__ == "__main__":
    run_main(main)
