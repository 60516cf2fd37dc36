"""Table 4 style: a CIFAR ResNet with a fixed rate and with CLR (0.1-0.3), trained together.

    python experiments/table4_resnet.py --data ../shared/data/cifar10-jpg.tar.gz \
        [--epochs 164] [--model resnet20]

The paper's Table 4 ran Torch ResNets for their original schedules, with a cycle of 1/10
of the run's epochs (step size 1/20). Here: one sweep of two members, "fixed 0.1" and
"triangular 0.1-0.3" with step size epochs/20, SGD with momentum 0.9 and weight decay
1e-4 (He et al.), batch 128, per-channel standardisation, random crops and flips, a
fresh shuffle every epoch, test accuracy on the full test set 20 times per run.

Assumptions: the paper's "fixed" ResNet baseline is read as a constant 0.1 (the original
ResNet schedule drops it; the paper does not say whether its baseline did); the length
defaults to 164 epochs (64k iterations at batch 128, the original run).

Writes experiments/results/table4_resnet_<model>_<epochs>ep.json.
"""

import json
import os
from pathlib import Path

import clr_jax
from _common import (
    RESULTS, data_name, experiment_parser, last_part_seconds, metadata, require_data, run_main,
    run_sweep)
from clr_jax.harness.data import load_dataset
from clr_jax.harness.members import Member
from clr_jax.harness.train import TrainConfig

PAPER = {"fixed 0.1": 92.8, "CLR 0.1-0.3": 93.6}  # CIFAR-10, mean of 5 runs


def main(argv=None):
    parser = experiment_parser(__doc__)
    parser.add_argument("--epochs", type=float, default=164)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out-dir", type=os.path.abspath, default=str(RESULTS))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    require_data(parser, args)
    dataset = load_dataset(args.data)
    n = len(dataset.train_labels)
    steps = clr_jax.step_size_from_epochs(args.epochs, n, args.batch_size)
    step_size = clr_jax.step_size_from_epochs(args.epochs / 20, n, args.batch_size)
    members = [Member("fixed 0.1", (("fixed", {"base_lr": 0.1}, 1),)),
               Member("CLR 0.1-0.3", (("triangular", {"base_lr": 0.1, "max_lr": 0.3,
                                                       "step_size": step_size}, 1),))]
    eval_every = max(1, steps // 20)
    config = TrainConfig(model=args.model, optimizer="momentum", momentum=0.9,
                         weight_decay=1e-4, caffe_multipliers=False,
                         batch_size=args.batch_size, num_steps=steps, eval_every=eval_every,
                         log_every=eval_every, checkpoint_every=eval_every,
                         preprocess="standard", augment=True, shuffle=True)
    tag = f"table4_resnet_{args.model}_{args.epochs:g}ep"
    out = Path(args.out_dir)
    summary = run_sweep(config, dataset, members, out / tag, not args.no_progress)
    report = {"experiment": "table4_resnet", "model": args.model, "epochs": args.epochs,
              "steps": steps, "step_size": step_size, "data": data_name(args.data),
              "paper_cifar10": PAPER,
              "members": {m["name"]: {"final_test_accuracy": m["final_test_accuracy"],
                                      "best_test_accuracy": m["best_test_accuracy"],
                                      "history": m["history"]} for m in summary["members"]},
              "wall_seconds_last_part": last_part_seconds(summary), **metadata()}
    (out / f"{tag}.json").write_text(json.dumps(report, indent=1))
    for name, m in report["members"].items():
        print(f"{name:12s} final {m['final_test_accuracy']:.4f} best {m['best_test_accuracy']:.4f}")


if __name__ == "__main__":
    run_main(main)
