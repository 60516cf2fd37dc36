"""How Table 1 accuracy responds to extra JPEG compression: a bound on what the JPEG
copy's own compression can cost.

    python experiments/jpeg_dose.py --data ../shared/data/cifar10-jpg.tar.gz \
        [--qualities 50,25] [--policy triangular2] [--scale 1.0] \
        [--baseline experiments/results/table1_paper] [--work DIR] [--report-only]

For each quality Q this writes the copy re-encoded once more at Q with 4:2:0 chroma
subsampling (jpeg_copy.py --reencode; archive DIR/cifar10-q<Q>.tar.gz, DIR defaulting to
$CLR_JAX_CACHE/jpeg_dose, distance from the copy in results/jpeg_reencode_q<Q>.json),
trains Table 1's --policy on it with table1_cifar10.py (seed 0, same protocol; run
folder results/jpeg_dose/q<Q>/<policy>, resumable), and compares it with the same
policy trained on the copy itself: the runs under --baseline (<policy> and any
<policy>-seed<N>, whose spread is the seed spread), or, without --baseline, a seed-0 run
that this script trains into results/jpeg_dose/copy/. Writes
results/jpeg_dose_<policy>_<scale>.json, a markdown table next to it and
docs/images/jpeg_dose_<policy>_<scale>.png.

Why this bounds the copy's own compression: the copy was saved once at quality 75
(results/jpeg_copy.json). libjpeg's quality 50 tables have quantisation steps twice as
large as quality 75's, quality 25's four times, so a re-encode adds a quantisation error
of the same kind as the copy's own and larger. If accuracy hardly moves under it, the
copy's quantisation cannot explain a shortfall of points. It does not bound the chroma
subsampling: a re-encode subsamples colour that is already at half resolution.
"""

import json
import os
from pathlib import Path

import numpy as np
from _common import RESULTS, ROOT, experiment_parser, metadata, require_data, run_main, write_json

import table1_cifar10
from jpeg_copy import reencode

OUT = RESULTS / "jpeg_dose"
COPY_QUALITY = 75  # results/jpeg_copy.json: every image of the copy


def _work_default() -> Path:
    from clr_jax.harness.data import cache_dir

    return cache_dir() / "jpeg_dose"


def _results(args) -> Path:
    return args.report_dir or RESULTS


def _run(folder: Path) -> dict | None:
    """A finished run's final accuracy and curve (None while it is unfinished)."""
    if not (folder / "summary.json").exists():
        return None
    summary = json.loads((folder / "summary.json").read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    evaluated = [r for r in rows if "test_accuracy" in r]
    return {"final_test_accuracy": summary["final_test_accuracy"],
            "last5_mean_test_accuracy": float(np.mean(
                [r["test_accuracy"] for r in evaluated[-5:]])),
            "steps": summary["steps"], "commit": summary.get("commit"),
            "eval_steps": [r["step"] for r in evaluated],
            "test_accuracy": [r["test_accuracy"] for r in evaluated]}


def _copy_runs(baseline: Path, policy: str) -> dict:
    """The policy's runs on the copy itself: seed 0 first, then the other seeds."""
    runs = {}
    for folder in sorted(baseline.glob(f"{policy}*")):
        name = folder.name
        if name != policy and not name.startswith(f"{policy}-seed"):
            continue
        run = _run(folder)
        if run is not None:
            runs["seed 0" if name == policy else name.split("-", 1)[1].replace("seed", "seed ")
                 ] = run
    return runs


def _extrapolate(rows: dict, args) -> dict:
    """A line through the origin fitted to (added MSE, change in final accuracy) over the
    re-encoded runs, and what it gives for the copy's own first compression (its MSE
    estimated by jpeg_copy.py): a rough share of the copy in any shortfall, assuming
    the cost grows in proportion to the error."""
    dosed = [row for row in rows.values() if row["mse_to_copy"] > 0]
    found = _results(args) / "jpeg_copy.json"
    if not dosed:
        return {}
    mse = np.array([row["mse_to_copy"] for row in dosed])
    change = np.array([row["change_from_copy_seed0"] for row in dosed])
    slope = float((mse * change).sum() / (mse ** 2).sum())
    out = {"change_per_unit_mse": slope,
           "fit_residuals": [float(r) for r in change - slope * mse]}
    if found.exists():
        first = json.loads(found.read_text()).get("first_encode_mse_estimate")
        if first is not None:
            out.update(copy_first_encode_mse_estimate=first,
                       copy_compression_cost_estimate=-slope * first)
    return out


def report(args, qualities: list[int]) -> dict:
    from clr_jax import plotting

    baseline = args.baseline or args.out / "copy"
    copy = _copy_runs(baseline, args.policy)
    if "seed 0" not in copy:
        raise SystemExit(f"no finished {args.policy} run on the copy under {baseline}")
    reference = copy["seed 0"]["final_test_accuracy"]
    rows = {f"copy (quality {COPY_QUALITY}), {seed}": {
        "quality": COPY_QUALITY, "mse_to_copy": 0.0, "psnr_to_copy_db": None, **run,
        "change_from_copy_seed0": run["final_test_accuracy"] - reference}
        for seed, run in copy.items()}
    for quality in qualities:
        run = _run(args.out / f"q{quality}" / args.policy)
        distance = _results(args) / f"jpeg_reencode_q{quality}.json"
        if run is None or not distance.exists():
            print(f"quality {quality}: not finished yet, left out")
            continue
        found = json.loads(distance.read_text())
        rows[f"re-encoded at quality {quality}, seed 0"] = {
            "quality": quality, "mse_to_copy": found["mse_to_copy"],
            "psnr_to_copy_db": found["psnr_to_copy_db"], **run,
            "change_from_copy_seed0": run["final_test_accuracy"] - reference}
    finals = [run["final_test_accuracy"] for run in copy.values()]
    result = {
        "experiment": "jpeg_dose", "policy": args.policy, "scale": args.scale,
        "baseline": os.path.relpath(baseline.resolve(), ROOT),
        "copy_seed_spread": max(finals) - min(finals), **_extrapolate(rows, args),
        "runs": rows, **metadata()}
    stem = f"jpeg_dose_{args.policy}_{args.scale:g}"
    write_json(_results(args) / f"{stem}.json", result)
    lines = [f"# JPEG dose-response: {args.policy} at scale {args.scale:g}", "",
             "| data | PSNR to the copy (dB) | MSE to the copy | final test accuracy % "
             "| mean of last 5 evaluations % | change from the copy's seed 0 (points) |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        psnr = "-" if row["psnr_to_copy_db"] is None else f"{row['psnr_to_copy_db']:.1f}"
        lines.append(f"| {name} | {psnr} | {row['mse_to_copy']:.1f} | "
                     f"{100 * row['final_test_accuracy']:.2f} | "
                     f"{100 * row['last5_mean_test_accuracy']:.2f} | "
                     f"{100 * row['change_from_copy_seed0']:+.2f} |")
    lines += ["", f"Seed spread on the copy: {100 * result['copy_seed_spread']:.2f} points "
              f"({len(finals)} seed{'s' if len(finals) > 1 else ''})."]
    if "change_per_unit_mse" in result:
        lines += ["", f"A line through the origin: {100 * result['change_per_unit_mse']:+.4f} "
                  "points per unit of added MSE (residuals "
                  + ", ".join(f"{100 * r:+.2f}" for r in result["fit_residuals"]) + ")."]
    if "copy_compression_cost_estimate" in result:
        lines += [f"At that rate the copy's own compression (MSE about "
                  f"{result['copy_first_encode_mse_estimate']:.1f}, jpeg_copy.json) costs about "
                  f"{100 * result['copy_compression_cost_estimate']:.1f} points."]
    (_results(args) / f"{stem}.md").write_text("\n".join(lines) + "\n")
    fig = plotting.plot_accuracy(
        {name: (row["eval_steps"], row["test_accuracy"]) for name, row in rows.items()},
        title=f"{args.policy} on CIFAR-10 (JPEG copy) and on copies compressed again")
    fig.axes[0].set_ylim(bottom=max(0.0, min(min(row["test_accuracy"]) for row in
                                             rows.values()) - 0.02))
    plotting.save_figure(fig, (args.report_dir or ROOT / "docs" / "images") / f"{stem}.png")
    print("\n".join(lines))
    return result


def main(argv=None):
    parser = experiment_parser(__doc__)
    parser.add_argument("--qualities", default="50,25",
                        help="comma-separated JPEG qualities to re-encode at (1-74)")
    parser.add_argument("--policy", default="triangular2",
                        help="the Table 1 policy to train (default: the headline's)")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--baseline", type=Path,
                        help="folder with the policy's finished runs on the copy (e.g. "
                        "experiments/results/table1_paper); default: train one here")
    parser.add_argument("--work", type=Path, help="where the re-encoded archives go")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--batch-size", type=int, default=100,
                        help="100 is the paper's; smaller only for smoke tests")
    parser.add_argument("--model", default="caffe_cifar10",
                        help="the paper's network; another only for smoke tests")
    parser.add_argument("--report-dir", type=Path,
                        help="write the result files and figure here (default: "
                        "experiments/results and docs/images)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="only collect finished runs into the result file")
    args = parser.parse_args(argv)
    try:
        qualities = [int(q) for q in args.qualities.split(",")]
    except ValueError:
        parser.error(f"--qualities {args.qualities}: give whole numbers, e.g. 50,25")
    if any(not 1 <= q < COPY_QUALITY for q in qualities):
        parser.error(f"--qualities {args.qualities}: each must be 1 to {COPY_QUALITY - 1}, "
                     f"below the copy's own quality {COPY_QUALITY}")
    if args.policy not in table1_cifar10.policies(args.scale):
        parser.error(f"--policy {args.policy}: choose from "
                     f"{', '.join(table1_cifar10.policies(args.scale))}")
    if args.baseline is not None and not args.baseline.is_dir():
        parser.error(f"--baseline {args.baseline}: no such folder")
    if args.report_only:
        return report(args, qualities)
    require_data(parser, args)
    from clr_jax.harness.data import bundled_sample_path

    source = bundled_sample_path() if args.data == "sample" else Path(args.data)
    if not source.exists():
        parser.error(f"--data {args.data}: no such file or folder")
    work = args.work or _work_default()

    def table1(data: Path, out: Path) -> None:
        table1_cifar10.main([
            "--data", str(data), "--policies", args.policy, "--scale", str(args.scale),
            "--out", str(out), "--batch-size", str(args.batch_size), "--model", args.model,
            "--report-dir", str(out / "report"), *(["--no-progress"] if args.no_progress
                                                   else [])])

    if args.baseline is None:
        table1(source, args.out / "copy")
    for quality in qualities:
        archive = work / f"cifar10-q{quality}.tar.gz"
        distance = _results(args) / f"jpeg_reencode_q{quality}.json"
        if not archive.exists() or not distance.exists():
            found = reencode(source, archive, quality)
            write_json(distance, {"experiment": "jpeg_reencode", "data": source.name,
                                  **found, **metadata()})
        table1(archive, args.out / f"q{quality}")
    return report(args, qualities)


if __name__ == "__main__":
    run_main(main)
