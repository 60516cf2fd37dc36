"""Is the main job's answer a result? `clr-jax demo` run several times: fresh, with other
seeds of its range tests, and with the range tests' initial weights perturbed.

    python experiments/demo_stability.py [--out experiments/results]

Runs, each a new process with empty data and compilation caches (`CLR_JAX_CACHE` in a
temporary folder), as a user's first run:

- fresh 1, 2, 3: `clr-jax demo` as the README gives it;
- seeds 3-5 and seeds 6-8: `--range-test-seed 3` / `6` (the three range tests start from
  other initialisations and read the data in other orders);
- perturbed: `--perturb-init 1e-6` (the range tests' initial weights scaled by 1 + 1e-6,
  a change as small as another machine's rounding).

Writes experiments/results/demo_stability.json and .md on an AVX2 machine,
demo_stability_avx512.json and .md on an AVX-512 one: each run's bounds with their
interval, its verdict, both schedules' accuracies and its wall time (by the demo's own
clock and as a process); and whether the verdicts agree, whether every max_lr lies in
the first run's interval, and whether every fresh run finished within 150 s. Where the
other instruction set's result is already there, the same checks across both machines'
runs too (XLA's code, and so the last bits of every number, differ between them). Time
the runs with nothing else running on the machine.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"fresh 1": [], "fresh 2": [], "fresh 3": [],
        "range-test seeds 3-5": ["--range-test-seed", "3"],
        "range-test seeds 6-8": ["--range-test-seed", "6"],
        "perturbed 1e-6": ["--perturb-init", "1e-6"]}
LIMIT_SECONDS = 150


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n")[0]
    except (OSError, IndexError):
        return "unknown"
    return "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "other"


def result_name(isa: str) -> str:
    return "demo_stability_avx512" if isa == "AVX-512" else "demo_stability"


def agreement(runs: list[dict]) -> dict:
    """Whether the runs give one answer: the checks made within and across machines."""
    low, high = runs[0]["max_interval"]
    return {"same_verdict": len({r["verdict"] for r in runs}) == 1,
            "max_lr_in_first_interval": all(low <= r["max_lr"] <= high for r in runs),
            "max_lr_ratio": max(r["max_lr"] for r in runs) / min(r["max_lr"] for r in runs)}


def run(name: str, extra: list[str], folder: Path) -> dict:
    env = {**os.environ, "CLR_JAX_CACHE": str(folder / "cache")}
    env.pop("CLR_JAX_COMPILATION_CACHE", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "clr_jax", "demo", "--out",
                           str(folder / "demo"), "--no-progress", *extra],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{name}: clr-jax demo failed:\n{done.stderr[-2000:]}")
    summary = json.loads((folder / "demo" / "summary.json").read_text())
    chosen = next(b for b in summary["bounds"] if b["method"] == summary["chosen"])
    return {"name": name, "arguments": extra, "printed": done.stdout.strip().splitlines(),
            "base_lr": chosen["base_lr"], "max_lr": chosen["max_lr"],
            "max_interval": chosen["max_interval"], "flags": chosen["flags"],
            "verdict": summary["comparison"]["verdict"],
            "difference": summary["comparison"]["difference"],
            "standard_error": summary["comparison"]["standard_error"],
            "stats": summary["stats"], "final_test_accuracy": summary["final_test_accuracy"],
            "seconds_own_clock": summary["seconds"], "seconds_process": seconds,
            "range_test_steps": summary["range_test_steps"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = parser.parse_args(argv)
    runs = []
    for name, extra in RUNS.items():
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(run(name, extra, Path(tmp)))
        r = runs[-1]
        print(f"{name:22s} max_lr {r['max_lr']:.3g} {r['max_interval']}  {r['verdict']}  "
              f"{r['seconds_own_clock']:.0f} s", flush=True)
    checks = {
        **agreement(runs),
        "fresh_within_limit": all(r["seconds_own_clock"] <= LIMIT_SECONDS
                                  for r in runs if r["name"].startswith("fresh")),
        "fresh_identical": len({json.dumps(r["final_test_accuracy"]) for r in runs
                                if r["name"].startswith("fresh")}) == 1,
    }
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip() or None
    isa = cpu_flags()
    other_path = args.out / f"{result_name('AVX2' if isa == 'AVX-512' else 'AVX-512')}.json"
    across = None
    if other_path.exists():  # the other instruction set's runs, first run first
        other = json.loads(other_path.read_text())
        reference = runs + other["runs"] if isa == "AVX2" else other["runs"] + runs
        across = {"other_result": other_path.name, "other_isa": other["isa"],
                  "other_commit": other["commit"], **agreement(reference)}
    result = {"experiment": "demo_stability", "commit": commit, "runs": runs, "checks": checks,
              "across_instruction_sets": across,
              "limit_seconds": LIMIT_SECONDS, "machine": platform.machine(),
              "isa": isa, "cpus": os.cpu_count()}
    args.out.mkdir(parents=True, exist_ok=True)
    name = result_name(isa)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"`clr-jax demo`, each run a new process with empty caches ({os.cpu_count()} "
             f"cores, {cpu_flags()}).", "",
             "| run | base_lr | max_lr (interval) | CLR % | fixed % | verdict | s (own clock) |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        s = r["stats"]
        lines.append(
            f"| {r['name']} | {r['base_lr']:.3g} | {r['max_lr']:.3g} ({r['max_interval'][0]:.3g}"
            f"-{r['max_interval'][1]:.3g}) | {100 * s['clr']['mean']:.1f} ± "
            f"{100 * s['clr']['std']:.1f} | {100 * s['fixed']['mean']:.1f} ± "
            f"{100 * s['fixed']['std']:.1f} | {r['verdict']} | {r['seconds_own_clock']:.0f} |")
    lines += ["", f"Same verdict in every run: {checks['same_verdict']}; every max_lr within "
              f"the first run's interval: {checks['max_lr_in_first_interval']} (largest / "
              f"smallest max_lr x{checks['max_lr_ratio']:.2f}); fresh runs within "
              f"{LIMIT_SECONDS} s: {checks['fresh_within_limit']}; fresh runs identical: "
              f"{checks['fresh_identical']}."]
    if across:
        lines += ["", f"With the {across['other_isa']} machine's runs "
                  f"(`{across['other_result']}`, commit {(across['other_commit'] or '?')[:7]}): "
                  f"same verdict in all: {across['same_verdict']}; every max_lr within the "
                  f"AVX2 machine's first interval: {across['max_lr_in_first_interval']} "
                  f"(largest / smallest x{across['max_lr_ratio']:.2f})."]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
