"""Figure 3 of the paper: the LR range test of the Caffe network on CIFAR-10.

    python experiments/figure3_range_test.py --data ../shared/data/cifar10-jpg.tar.gz \
        --scale cpu            # 2 epochs (1,000 iterations): this 2-core CPU, ~15 min
    python experiments/figure3_range_test.py --data ... --scale paper   # 8 epochs (GPU)

Protocol: Caffe's cifar10_full network, initialisation and multipliers, mean-image
preprocessing, Caffe-style SGD (momentum 0.9, weight decay 0.004), batch 100, the
training set in one fixed seeded order; the learning rate rises linearly from 0 (here
1e-5: the test needs a positive start) to 0.02 over the test (the paper: 8 epochs =
4,000 iterations; the figure's axis ends at 0.02, an assumption since the paper does not
state the end); test accuracy on all 10,000 test images every 1/20 of the test. At
--scale cpu the ramp is 4x steeper (2 epochs), a scaled-down run.

Writes experiments/results/figure3_range_test_<scale>.json (the curve, the bounds every
rule reads from it next to the paper's 0.001 / 0.006, config, device, wall time,
versions) and docs/images/figure3_range_test_<scale>.png. --out-dir redirects both (for
tests).
"""

import json
import time
from pathlib import Path

from _common import experiment_parser, metadata, require_data, run_main

import clr_jax
from clr_jax.suggest import suggest_all
from clr_jax import plotting
from clr_jax.harness.data import load_dataset
from clr_jax.harness.jobs import run_range_test
from clr_jax.harness.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SCALES = {"paper": 4000, "cpu": 1000}
PAPER_BOUNDS = {"base_lr": 0.001, "max_lr": 0.006}
METHODS = ("paper", "paper_peak", "valley", "minimum", "steep", "slide", "steepest")


def _paths(args):
    results = (args.out_dir or ROOT / "experiments" / "results")
    images = (args.out_dir or ROOT / "docs" / "images")
    return results / f"figure3_range_test_{args.scale}.json", \
        images / f"figure3_range_test_{args.scale}.png"


def _report(path_json, path_png, report, result, bounds):
    report["bounds"] = {b.method: b.to_dict() for b in bounds}
    path_json.parent.mkdir(parents=True, exist_ok=True)
    path_json.write_text(json.dumps(report, indent=1) + "\n")
    figure = plotting.plot_range_test(
        result, bounds, title=f"LR range test, Caffe net on CIFAR-10 ({report['scale']})")
    plotting.save_figure(figure, path_png)
    for b in bounds:
        print(f"{b.method:11s} base_lr {b.base_lr:.4g}  max_lr {b.max_lr:.4g}   "
              f"(paper: {PAPER_BOUNDS['base_lr']} / {PAPER_BOUNDS['max_lr']})")


def reread(args):
    """The bounds of the recorded test, read again with the current rules."""
    path_json, path_png = _paths(args)
    report = json.loads(path_json.read_text())
    result = clr_jax.RangeTestResult.from_dict(report["curve"])
    bounds = suggest_all(result, METHODS)
    _report(path_json, path_png, report, result, bounds)


def main(argv=None):
    parser = experiment_parser(__doc__)
    parser.add_argument("--scale", choices=(*SCALES, "tiny"), default="cpu")
    parser.add_argument("--out-dir", type=Path, help="write results and figure here")
    parser.add_argument("--model", default="caffe_cifar10",
                        help="the paper's network; another only for smoke tests")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--reread", action="store_true",
                        help="read the bounds again from the recorded curve (after the rules "
                        "change), without training")
    args = parser.parse_args(argv)
    if args.reread:
        return reread(args)
    require_data(parser, args)
    steps = SCALES.get(args.scale, 8)
    dataset = load_dataset(args.data)
    results = (args.out_dir or ROOT / "experiments" / "results")
    run_dir = results / f"figure3_range_test_{args.scale}"
    eval_every = max(1, steps // 20)
    config = TrainConfig(num_steps=steps, eval_every=eval_every, log_every=eval_every,
                         shuffle=False, eval_batch_size=500 if args.scale != "tiny" else 100,
                         batch_size=100 if args.scale != "tiny" else 20, model=args.model)
    started = time.perf_counter()
    # the paper's protocol: one test of one ramp, read as it is (no repeats, no rounds)
    try:
        found, bounds = run_range_test(config, dataset, run_dir, min_lr=1e-5, max_lr=0.02,
                                       num_steps=steps, mode="linear", eval_every=eval_every,
                                       repeats=1, max_rounds=1, overwrite=True,
                                       progress=not args.no_progress, methods=METHODS)
        result = found.results[0]
    except clr_jax.BoundsError as error:  # the first rule cannot read it; the others may
        if not error.results:
            raise
        result = error.results[0]
        bounds = suggest_all(result, METHODS)
    seconds = time.perf_counter() - started
    report = {
        "experiment": "figure3_range_test",
        "scale": {"paper": "paper (8 epochs)", "cpu": "cpu (2 epochs, scaled down)",
                  "tiny": "tiny (smoke test)"}[args.scale],
        "data": "CIFAR-10 (JPEG copy)" if "cifar10" in str(args.data) else str(args.data),
        "protocol": "Caffe cifar10_full, caffe_sgd momentum 0.9 wd 0.004, batch 100, "
                    "fixed data order, linear ramp 1e-5 -> 0.02",
        "paper_bounds": PAPER_BOUNDS,
        "curve": result.to_dict(),
        "config": json.loads(json.dumps(config.__dict__)),
        "wall_seconds": seconds,
        **metadata(),
    }
    _report(*_paths(args), report, result, bounds)
    print(f"{steps} iterations in {seconds:.0f} s")


if __name__ == "__main__":
    run_main(main)
