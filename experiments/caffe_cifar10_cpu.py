"""The paper's CIFAR-10 network on the full CIFAR-10 (JPEG copy), a few thousand CPU steps.

    python experiments/caffe_cifar10_cpu.py --data ../shared/data/cifar10-jpg.tar.gz

(or set CLR_JAX_DATA). A scaled-down CPU run, not the paper's protocol length: the
Caffe "cifar10_full" network, Caffe-style SGD (momentum 0.9, weight decay 0.004, the
paper's per-layer multipliers), batch 100, mean-image preprocessing, shuffled order,
triangular2 between the paper's bounds 0.001 and 0.006 with step size 500 (one epoch),
3,000 steps (3 cycles), test accuracy on all 10,000 test images every 250 steps.
Checkpoints every 500 steps: run the same command again with --resume to continue an
interrupted run. Writes experiments/results/caffe_cifar10_cpu/ (summary.json,
metrics.jsonl, learning_curves.png).
"""

from pathlib import Path

from _common import experiment_parser, require_data, run_main

from clr_jax import plotting
from clr_jax.harness import TrainConfig, load_dataset, read_metrics
from clr_jax.harness.train import train

OUT = Path(__file__).resolve().parent / "results" / "caffe_cifar10_cpu"


def main():
    parser = experiment_parser(__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    require_data(parser, args)
    config = TrainConfig(num_steps=args.steps, eval_every=250, log_every=50,
                         checkpoint_every=500, eval_batch_size=500,
                         schedule={"policy": "triangular2", "base_lr": 0.001, "max_lr": 0.006,
                                   "step_size": 500})
    summary = train(config, load_dataset(args.data), args.out, resume=args.resume,
                    describe={"data": "CIFAR-10 (JPEG copy)", "scale": "cpu (scaled down)"})
    plotting.save_figure(plotting.plot_learning_curves(
        {"triangular2 0.001-0.006": read_metrics(args.out / "metrics.jsonl")},
        title="Caffe CIFAR-10 net, CIFAR-10 (JPEG copy), CPU"), args.out / "learning_curves.png")
    print(summary["final_test_accuracy"], summary["images_per_second"])


if __name__ == "__main__":
    run_main(main)
