"""Table 3 of the paper: adaptive optimizers on CIFAR-10 with and without CLR.

    python experiments/table3_optimizers.py --data ../shared/data/cifar10-jpg.tar.gz \
        [--scale 1.0] [--optimizers nesterov,adam,rmsprop,adagrad,adadelta]

For each optimizer, one sweep of two members trained together: "fixed" at the paper's
lower bound and "triangular" between its bounds (step size 2,000 x scale), for 70,000 x
scale iterations. The triangular schedule does not depend on the run's length, so its
accuracy at 25,000 x scale is Table 3's "triangular, 25k" column and at the end its
"triangular, 70k" column. The Caffe network, mean-image preprocessing, batch 100, data in
a fixed order, weight decay 0.004 with Caffe's multipliers applied to the gradient
before the optimizer, test accuracy on all 10,000 test images every 1,000 x scale
iterations.

Assumptions the paper leaves open: "fixed" is a constant rate at the lower bound (no
drops); the optimizers are Optax's with their default betas/epsilons (Caffe's differ in
details); the momentum of Nesterov is 0.9.

Writes experiments/results/table3_optimizers_<scale>.json. --scale 1.0 is the paper's
length (a GPU job); smaller scales shorten every length and step size.
"""

import json
import os

from _common import (
    RESULTS, accuracy_at, data_name, experiment_parser, last_part_seconds, metadata,
    require_data, run_main, run_sweep)
from clr_jax.harness.data import load_dataset
from clr_jax.harness.sweep import Member
from clr_jax.harness.train import TrainConfig

BOUNDS = {"nesterov": (0.001, 0.006), "adam": (0.0005, 0.002), "rmsprop": (0.0001, 0.0003),
          "adagrad": (0.003, 0.035), "adadelta": (0.01, 0.1)}
PAPER = {"nesterov": (82.1, 81.3, None), "adam": (81.4, 79.8, 81.1),
         "rmsprop": (75.2, 72.8, 75.1), "adagrad": (74.6, 76.0, None),
         "adadelta": (67.3, 67.3, None)}


def main(argv=None):
    parser = experiment_parser(__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--optimizers", default=",".join(BOUNDS))
    parser.add_argument("--out-dir", type=os.path.abspath, default=str(RESULTS))
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--model", default="caffe_cifar10",
                        help="the paper's network; another only for smoke tests")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    require_data(parser, args)
    chosen = args.optimizers.split(",")
    unknown = sorted(set(chosen) - set(BOUNDS))
    if unknown:
        parser.error(f"unknown optimizers {unknown}; choose from {', '.join(BOUNDS)}")
    s = lambda n: max(1, round(n * args.scale))  # noqa: E731
    dataset = load_dataset(args.data)
    from pathlib import Path

    out = Path(args.out_dir)
    report = {"experiment": "table3_optimizers", "scale": args.scale,
              "data": data_name(args.data), "paper": PAPER, "rows": {}, **metadata()}
    for name in chosen:
        low, high = BOUNDS[name]
        members = [Member("fixed", (("fixed", {"base_lr": low}, 1),)),
                   Member("triangular", (("triangular", {"base_lr": low, "max_lr": high,
                                                         "step_size": s(2000)}, 1),))]
        eval_every = s(1000)
        config = TrainConfig(optimizer=name, num_steps=s(70_000), eval_every=eval_every,
                             log_every=eval_every, checkpoint_every=max(eval_every, s(5000)),
                             shuffle=False, batch_size=args.batch_size, model=args.model)
        summary = run_sweep(config, dataset, members, out / f"table3_{args.scale}" / name,
                            not args.no_progress)
        fixed, tri = summary["members"]
        report["rows"][name] = {
            "bounds": [low, high],
            "fixed_end": fixed["final_test_accuracy"],
            "triangular_at_25k": accuracy_at(tri, s(25_000)),
            "triangular_end": tri["final_test_accuracy"],
            "curves": {m["name"]: m["history"] for m in summary["members"]},
            "wall_seconds_last_part": last_part_seconds(summary),
        }
        print(f"{name:9s} fixed {fixed['final_test_accuracy']:.4f}  triangular at 25k "
              f"{report['rows'][name]['triangular_at_25k']}  at end "
              f"{tri['final_test_accuracy']:.4f}", flush=True)
    report["config"] = {"num_steps": s(70_000), "step_size": s(2000),
                        "batch_size": args.batch_size}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"table3_optimizers_{args.scale}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    run_main(main)
