"""Which schedule at 25,000 iterations: CLR beside the schedules users pick today, on the
paper's protocol.

    python experiments/schedules_25k.py --data ../shared/data/cifar10-jpg.tar.gz \
        [--runs one_cycle,sgdr,warmup_cosine,schedule_free,schedule_free_matched] \
        [--seed 0] [--scale 1.0] \
        [--out experiments/results/schedules_25k]

The Table 1 protocol (Caffe's cifar10_full network and initialisation, mean-image
preprocessing, no augmentation, the training set in one fixed seeded order, batch 100,
weight decay 0.004 with Caffe's multipliers, all 10,000 test images every 1,000
iterations), 25,000 iterations each:

- triangular2: Table 1's staged run between the paper's bounds (not run again: read
  from experiments/results/table1_paper, seeds 0 and 1);
- one_cycle: optax.cosine_onecycle_schedule, peak = the range test's max_lr, 30% up,
  div_factor 25, final_div_factor 1e4;
- sgdr: optax.sgdr_schedule, cosine from the peak to 1/1000 of it, warm restarts after
  periods of 1/7, 2/7 and 4/7 of the run (doubling, ending at the run's end);
- warmup_cosine: optax.warmup_cosine_decay_schedule, 0 to the peak over 5% of the run,
  then cosine to 0;
- schedule_free: optax.contrib.schedule_free_sgd (b1 = 0.9, the momentum of the others),
  its rate warmed up to the peak over 5% of the run then constant, evaluated at its
  averaged point (optax.contrib.schedule_free_eval_params);
- schedule_free_matched: the same with its rate max_lr / (1 - b1) = 10 max_lr. Schedule-free
  SGD takes plain gradient steps (z <- z - rate * gradient) where momentum SGD's steps
  grow to rate / (1 - momentum) per unit gradient; the range test reads its rate for
  momentum SGD, so this is the rate whose steps match it.

How each takes its rate, as a user would: `clr_jax.find_bounds` on this network and
data with its defaults (three range tests of 200 steps, an exponential ramp from 1e-5
to 10, the "edge" rule, Caffe SGD), run once and saved (range_test.json); its max_lr is
the peak of one_cycle, sgdr and warmup_cosine and the rate of schedule_free (the
1cycle paper's advice: the largest rate that still trains, from the range test).
Caffe's SGD (the rate inside the momentum) for all but schedule_free.

Each run writes OUT/<run>/ (checkpoints every 5,000 x scale, resumable; finished runs
are not run again; --seed N other than 0 writes OUT/<run>-seed<N>/). At the end the
script collects every finished run with Table 1's triangular2 into
experiments/results/schedules_25k_<scale>.json and .md and
docs/images/schedules_25k_<scale>.png: accuracy at 10,000 and 25,000 iterations.
"""

import json
from pathlib import Path

import optax
from _common import (
    chosen_runs, data_name, experiment_parser, metadata, read_metrics, require_data, run_main,
    train_or_load, write_json)

from clr_jax.harness import TrainConfig, load_dataset

OUT = Path(__file__).resolve().parent / "results" / "schedules_25k"
TABLE1 = Path(__file__).resolve().parent / "results" / "table1_paper"
RUNS = ("one_cycle", "sgdr", "warmup_cosine", "schedule_free", "schedule_free_matched")
MOMENTUM = 0.9  # every run's (Caffe SGD's momentum, schedule-free SGD's b1)


def schedule(run: str, peak: float, steps: int):
    """(optimizer, schedule) of a run with the given peak rate over ``steps``."""
    warmup = max(1, round(0.05 * steps))
    if run == "one_cycle":
        return "caffe_sgd", optax.cosine_onecycle_schedule(steps, peak, pct_start=0.3,
                                                          div_factor=25.0,
                                                          final_div_factor=1e4)
    if run == "sgdr":
        periods = [round(steps * k / 7) for k in (1, 2)]
        periods.append(steps - sum(periods))
        return "caffe_sgd", optax.sgdr_schedule([
            {"init_value": peak, "peak_value": peak, "warmup_steps": 0,
             "decay_steps": period, "end_value": peak * 1e-3} for period in periods])
    if run == "warmup_cosine":
        return "caffe_sgd", optax.warmup_cosine_decay_schedule(0.0, peak, warmup, steps, 0.0)
    if run in ("schedule_free", "schedule_free_matched"):
        rate = peak if run == "schedule_free" else peak / (1 - MOMENTUM)
        return "schedule_free_sgd", optax.warmup_constant_schedule(0.0, rate, warmup)
    raise ValueError(f"unknown run {run!r}; choose from {', '.join(RUNS)}")


def main(argv=None):
    parser = experiment_parser(__doc__)
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies the run's length (for smoke tests)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--model", default="caffe_cifar10")
    parser.add_argument("--range-test-steps", type=int, default=200)
    parser.add_argument("--peak", type=float,
                        help="a given peak rate instead of the range test's (smoke tests)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-dir", type=Path,
                        help="write the result file and figure here (default: "
                        "experiments/results and docs/images)")
    args = parser.parse_args(argv)
    require_data(parser, args)
    chosen = chosen_runs(parser, args.runs, RUNS)
    dataset = load_dataset(args.data)
    steps = max(1, round(25_000 * args.scale))
    every = max(1, round(1000 * args.scale))
    base = dict(model=args.model, batch_size=args.batch_size, shuffle=False,
                eval_batch_size=500, seed=args.seed)
    peak = range_test_peak(args, dataset, base)
    for run in chosen:
        optimizer, rates = schedule(run, peak, steps)
        config = TrainConfig(optimizer=optimizer, momentum=MOMENTUM, num_steps=steps,
                             eval_every=every, log_every=every,
                             checkpoint_every=max(every, round(5000 * args.scale)), **base)
        name = run if args.seed == 0 else f"{run}-seed{args.seed}"
        summary = train_or_load(config, dataset, args.out / name, schedule=rates,
                                progress=not args.no_progress,
                                describe={"run": run, "peak": peak,
                                          "data": data_name(args.data)})
        print(f"{name:22s} {summary['final_test_accuracy']:.4f}", flush=True)
    report(args, steps, every)


def range_test_peak(args, dataset, base) -> float:
    """The range test's max_lr, found once and kept in OUT/range_test.json."""
    from clr_jax.harness.jobs import find_model_bounds

    import clr_jax

    path = args.out / "range_test.json"
    if args.peak is not None:
        write_json(path, {"bounds": {"max_lr": args.peak, "method": "given (--peak)"}})
    if path.exists():
        return json.loads(path.read_text())["bounds"]["max_lr"]
    steps = args.range_test_steps
    config = TrainConfig(num_steps=steps, eval_every=max(1, steps // 10),
                         log_every=max(1, steps // 10), **base)
    try:
        found = find_model_bounds(config, dataset, num_steps=steps,
                                  eval_every=max(1, steps // 10),
                                  progress=not args.no_progress)
    except clr_jax.BoundsError as error:
        raise SystemExit(f"schedules_25k.py: {error}") from None
    write_json(path, found.to_dict())
    print(f"range test: {found.bounds.describe()}", flush=True)
    return found.max_lr


def _accuracy(folder: Path) -> tuple[list[int], list[float]]:
    rows = [r for r in read_metrics(folder) if "test_accuracy" in r]
    return [r["step"] for r in rows], [r["test_accuracy"] for r in rows]


def report(args, steps: int, every: int) -> dict:
    from clr_jax import plotting

    runs, curves = {}, {}
    sources = [(f"triangular2-seed{s}" if s else "triangular2", TABLE1 / name)
               for s, name in ((0, "triangular2"), (1, "triangular2-seed1"))]
    for run in RUNS:
        sources += [(folder.name, folder) for folder in sorted(args.out.glob(f"{run}*"))
                    if folder.is_dir()]
    for name, folder in sources:
        if not (folder / "summary.json").exists():
            continue
        summary = json.loads((folder / "summary.json").read_text())
        if summary["steps"] != steps:
            continue  # Table 1's triangular2 belongs to the paper-scale report only
        eval_steps, accuracy = _accuracy(folder)
        at = {s: a for s, a in zip(eval_steps, accuracy)}
        runs[name] = {"seed": summary["config"]["seed"],
                      "at_10k": at.get(round(10_000 * args.scale)),
                      "at_25k": summary["final_test_accuracy"],
                      "best": summary["best_test_accuracy"], "eval_steps": eval_steps,
                      "test_accuracy": accuracy, "commit": summary.get("commit")}
        curves[name] = (eval_steps, accuracy)
    if not runs:
        raise SystemExit(f"no finished run under {args.out}")
    range_test = json.loads((args.out / "range_test.json").read_text())
    label = f"{args.scale:g}"
    result = {"experiment": "schedules_25k", "scale": args.scale, "steps": steps,
              "data": data_name(args.data), "range_test_bounds": range_test["bounds"],
              "runs": runs, **metadata()}
    results_dir = args.report_dir or Path(__file__).resolve().parent / "results"
    images_dir = args.report_dir or Path(__file__).resolve().parents[1] / "docs" / "images"
    write_json(results_dir / f"schedules_25k_{label}.json", result)
    lines = [f"{steps:,} iterations, {data_name(args.data)}; peak rate from the range test "
             f"{range_test['bounds']['max_lr']:.3g} (triangular2: the paper's bounds)", "",
             "| run | seed | accuracy at 10k % | at 25k % | best % |", "|---|---|---|---|---|"]
    for name, run in sorted(runs.items(), key=lambda kv: -kv[1]["at_25k"]):
        at10 = "-" if run["at_10k"] is None else f"{100 * run['at_10k']:.1f}"
        lines.append(f"| {name} | {run['seed']} | {at10} | {100 * run['at_25k']:.1f} | "
                     f"{100 * run['best']:.1f} |")
    (results_dir / f"schedules_25k_{label}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    figure = _figure(curves, steps, f"Schedules at {steps:,} iterations ({data_name(args.data)})")
    plotting.save_figure(figure, images_dir / f"schedules_25k_{label}.png")
    return result


def _figure(curves: dict, steps: int, title: str):
    """Accuracy curves, one colour per schedule (a second seed dashed): the whole run,
    and its last 40% with the accuracy axis zoomed to where the runs end."""
    import matplotlib.pyplot as plt

    figure, (whole, end) = plt.subplots(1, 2, figsize=(11.0, 4.2),
                                        gridspec_kw={"width_ratios": [3, 2]})
    schedules = list(dict.fromkeys(name.split("-seed")[0] for name in curves))
    colours = {name: f"C{i}" for i, name in enumerate(schedules)}
    start = 0.6 * steps
    late = []
    for name, (x, y) in curves.items():
        schedule = name.split("-seed")[0]
        style = dict(color=colours[schedule], linestyle="--" if "-seed" in name else "-",
                     marker=".", label=name)
        whole.plot(x, y, **style)
        tail = [(a, b) for a, b in zip(x, y) if a >= start]
        if tail:
            end.plot(*zip(*tail), **style)
            late += [b for _, b in tail]
    whole.set(xlabel="iteration", ylabel="test accuracy", title=title)
    end.set(xlabel="iteration", title=f"from {start:,.0f} on (zoomed)")
    if late:  # the band where most runs end, a run far below them left out of the zoom
        top = max(late)
        near = [b for b in late if b >= top - 0.05] or late
        end.set_ylim(min(near) - 0.005, top + 0.005)
    for axes in (whole, end):
        axes.grid(alpha=0.3)
    whole.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    return figure


if __name__ == "__main__":
    run_main(main)
