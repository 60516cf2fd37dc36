"""The whole job in clr_jax against plain PyTorch, each as its own process, as users run it.

    python benchmarks/vs_pytorch.py [--rounds 3] [--steps 1000,10000]

The job: the paper's Caffe CIFAR-10 network on the CIFAR-10 sample bundled with
clr_jax (5,000 training and 1,000 test images), batch 100, triangular2 between 0.001
and 0.006 with a step size of 100, Caffe's per-layer multipliers, momentum 0.9, weight
decay 0.004, test accuracy at the end.

- clr_jax: `clr-jax train --dataset sample --policy triangular2 ... --eval-every N` (the
  command line, Caffe-style SGD), run twice per round: with an empty compilation cache
  (a first run) and with the cache its first run left (a second run of the same job);
- PyTorch 2.13 (CPU): benchmarks/pytorch_caffe_cifar10.py, PyTorch's own SGD and
  CyclicLR, reading the same decoded arrays from an .npz.

The sides alternate, --rounds times per length (one round fewer, at least two, above
1,000 iterations). Reported: whole-process wall time
(medians and ranges), steady-state images/s (clr_jax: from the wall times that
metrics.jsonl records for its last 80% of steps; PyTorch: its own clock over the same
part), and the fixed cost split: import, data, build, compilation and first steps. The
clr_jax split comes from an instrumented process doing what the command line does
(`Trainer` through its public API), as a first run.

``--isa avx2`` runs both sides held to AVX2 (clr_jax: ``XLA_FLAGS=--xla_cpu_max_isa=AVX2``;
PyTorch: ``ATEN_CPU_CAPABILITY=avx2``), the comparison to make on an AVX-512 machine
beside the default one.

Writes benchmarks/results/vs_pytorch_<backend>.json (vs_pytorch_avx512_<backend>.json on
an AVX-512 machine; vs_pytorch_held_avx2_avx512_<backend>.json with ``--isa avx2``) and its
RESULTS.md section. Keep every other job paused while it runs.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEP_SIZE = 100


def clr_jax_command(steps, out):
    return [sys.executable, "-m", "clr_jax", "train", "--dataset", "sample", "--model",
            "caffe_cifar10", "--policy", "triangular2", "--base-lr", "0.001", "--max-lr",
            "0.006", "--step-size", str(STEP_SIZE), "--steps", str(steps), "--eval-every",
            str(steps), "--log-every", str(min(100, steps)), "--no-progress", "--out",
            str(out)]


def timed(command, env):
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if out.returncode:
        raise RuntimeError(f"{command[:4]} failed: {out.stderr[-2000:]}")
    return seconds, out.stdout


def steady_from_metrics(folder, steps):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in rows if r["step"] >= steps // 5)
    last = rows[-1]
    return (last["step"] - start["step"]) * 100 / (last["seconds"] - start["seconds"])


def split_child(steps):
    """What `clr-jax train` does, phase by phase, timed (run as its own process)."""
    started = time.perf_counter()
    import jax
    import jax.numpy as jnp  # noqa: F401

    from clr_jax.harness import TrainConfig, Trainer, load_dataset
    from clr_jax.harness.compilation import enable_compilation_cache
    imported = time.perf_counter()
    enable_compilation_cache()
    data = load_dataset("sample")
    loaded = time.perf_counter()
    log = min(100, steps)
    config = TrainConfig(num_steps=steps, eval_every=steps, log_every=log,
                         schedule={"policy": "triangular2", "base_lr": 0.001,
                                   "max_lr": 0.006, "step_size": STEP_SIZE})
    trainer = Trainer(config, data)
    built = time.perf_counter()
    state, losses = trainer.run_steps(trainer.initial_state, 0, trainer.chunk)
    jax.block_until_ready(losses)
    first = time.perf_counter()
    state, losses = trainer.run_steps(state, trainer.chunk, trainer.chunk)
    jax.block_until_ready(losses)
    second = time.perf_counter()
    chunk_seconds = second - first
    trainer.evaluate(state)
    evaluated = time.perf_counter()
    # the evaluation's first call compiles it; a second call is its running time
    trainer.evaluate(state)
    print(json.dumps({
        "import_seconds": imported - started, "data_seconds": loaded - imported,
        "build_seconds": built - loaded,
        "first_chunk_seconds": first - built, "steady_chunk_seconds": chunk_seconds,
        "chunk_steps": trainer.chunk,
        "compile_seconds": (first - built) - chunk_seconds,
        "eval_first_seconds": evaluated - second,
        "eval_seconds": time.perf_counter() - evaluated}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", default="1000,10000")
    parser.add_argument("--second-runs", default="1000",
                        help="lengths at which clr_jax also runs a second time with the "
                        "compilation cache its first run left")
    parser.add_argument("--isa", choices=("default", "avx2"), default="default",
                        help="avx2: hold XLA and PyTorch to AVX2 (on an AVX-512 machine)")
    parser.add_argument("--split-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.split_child:
        return split_child(args.split_child)
    if args.isa == "avx2":  # inherited by every process below
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_max_isa=AVX2").strip()
        os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
    held = args.isa != "default"
    if held and "avx512f" not in Path("/proc/cpuinfo").read_text():
        parser.error(f"--isa {args.isa}: this machine has no AVX-512 to hold back from")

    import jax
    import numpy as np

    from _report import machine, update_section, write_result
    from clr_jax.harness.data import load_dataset

    work = Path(tempfile.mkdtemp(prefix="vs-pytorch-"))
    data = load_dataset("sample")
    npz = work / "sample.npz"
    np.savez(npz, train_images=data.train_images, train_labels=data.train_labels,
             test_images=data.test_images, test_labels=data.test_labels)
    results = {}
    for steps in (int(s) for s in args.steps.split(",")):
        sides = ["clr_jax_first_run", "pytorch"]
        if str(steps) in args.second_runs.split(","):
            sides.append("clr_jax_second_run")
        runs = {side: [] for side in sides}
        for round_ in range(args.rounds if steps <= 1000 else max(2, args.rounds - 1)):
            cache = work / f"cache-{steps}-{round_}"
            env = {**os.environ, "CLR_JAX_COMPILATION_CACHE": str(cache)}
            for side in sides:
                if side == "pytorch":
                    seconds, out = timed([sys.executable, str(HERE / "pytorch_caffe_cifar10.py"),
                                          str(npz), "--steps", str(steps)], dict(os.environ))
                    report = json.loads(out.strip().splitlines()[-1])
                    steady = report["steady_images_per_second"]
                else:
                    folder = work / f"run-{steps}-{round_}-{side}"
                    seconds, _ = timed(clr_jax_command(steps, folder), env)
                    summary = json.loads((folder / "summary.json").read_text())
                    report = {"test_accuracy": summary["final_test_accuracy"]}
                    steady = steady_from_metrics(folder, steps)
                runs[side].append({"wall_seconds": seconds,
                                   "steady_images_per_second": steady, **report})
            shutil.rmtree(cache, ignore_errors=True)
        med = lambda side, key: statistics.median(r[key] for r in runs[side])  # noqa: E731
        lengths = {}
        for side in runs:
            walls = [r["wall_seconds"] for r in runs[side]]
            lengths[side] = {"wall_seconds_median": med(side, "wall_seconds"),
                             "wall_seconds_range": [min(walls), max(walls)],
                             "steady_images_per_second_median":
                                 med(side, "steady_images_per_second")}
        for side in (s for s in sides if s != "pytorch"):
            lengths[side]["speed_vs_pytorch_whole_job"] = (
                lengths["pytorch"]["wall_seconds_median"] / lengths[side]["wall_seconds_median"])
            lengths[side]["speed_vs_pytorch_steady"] = (
                lengths[side]["steady_images_per_second_median"]
                / lengths["pytorch"]["steady_images_per_second_median"])
        results[steps] = {"runs": runs, "summary": lengths}

    split = []
    for _ in range(args.rounds):
        env = {**os.environ, "CLR_JAX_COMPILATION_CACHE": "off"}
        _, out = timed([sys.executable, __file__, "--split-child", "1000"], env)
        split.append(json.loads(out.strip().splitlines()[-1]))
    split_median = {k: statistics.median(r[k] for r in split) for k in split[0]}
    # The native CPU kernels are built once per machine and compiler and kept (like an
    # installed package's binaries), so no run above builds them: their build is timed
    # here, into an empty folder, to show what a machine's very first run adds.
    from clr_jax.harness import kernels, native

    in_use = [name for name in kernels.NATIVE if kernels.native_kernel(name)]
    native_build = None
    if in_use:
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            native.build(folder)
            native_build = time.perf_counter() - started
    torch_split = {k: statistics.median(r[k] for r in results[min(results)]["runs"]["pytorch"])
                   for k in ("import_seconds", "data_seconds", "first_step_seconds")}
    result = {"benchmark": "vs_pytorch", "rounds": args.rounds, "isa": args.isa,
              "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY", ""),
              "machine": machine(),
              "job": "Caffe cifar10_full, bundled CIFAR-10 sample, batch 100, triangular2 "
                     "0.001-0.006 step 100, test accuracy at the end",
              "pytorch_side": "torch.optim.SGD (rate after momentum) + CyclicLR, eager",
              "lengths": results, "clr_jax_fixed_cost_split": split_median,
              "clr_jax_fixed_cost_split_runs": split, "pytorch_fixed_cost_split": torch_split,
              "native_kernels": in_use, "native_build_seconds": native_build}
    path = write_result("vs_pytorch" + (f"_held_{args.isa}" if held else ""), result)
    shutil.rmtree(work, ignore_errors=True)
    m = result["machine"]
    isa_words = "AVX-512" if "avx512f" in m["vector_flags"] else "AVX2, no AVX-512"
    md = [f"## The whole job against PyTorch, process against process ({jax.default_backend()}"
          + (f", held to {args.isa.upper()}" if held else "") + ")",
          "", f"`python benchmarks/vs_pytorch.py --rounds {args.rounds} --steps {args.steps}"
          + (f" --isa {args.isa}" if held else "") + f"` → `results/{path.name}`", "",
          f"{result['job']}; {m['cpu']} ({m['cores']} cores, {isa_words}), jax {m['jax']}. "
          "Each side is "
          f"its own process, alternated {args.rounds} times ({max(2, args.rounds - 1)} above "
          "1,000 iterations); the PyTorch side is "
          "benchmarks/pytorch_caffe_cifar10.py (PyTorch's own SGD and CyclicLR). Speed is "
          "PyTorch's wall time (or images/s) over clr_jax's: above 1 is faster.", "",
          "| iterations | side | whole process, s (median, range) | speed vs PyTorch | "
          "steady images/s | steady speed vs PyTorch |", "|---|---|---|---|---|---|"]
    for steps, entry in results.items():
        for side, row in entry["summary"].items():
            lo, hi = row["wall_seconds_range"]
            speed = row.get("speed_vs_pytorch_whole_job")
            steady = row.get("speed_vs_pytorch_steady")
            md.append(f"| {steps} | {side.replace('_', ' ')} | {row['wall_seconds_median']:.1f} "
                      f"({lo:.1f}-{hi:.1f}) | {'' if speed is None else f'{speed:.2f}x'} | "
                      f"{row['steady_images_per_second_median']:.0f} | "
                      f"{'' if steady is None else f'{steady:.2f}x'} |")
    md += ["", "Fixed cost of a first run (clr_jax: an instrumented process doing what "
           "`clr-jax train` does, no compilation cache; PyTorch: its own clock), seconds:", "",
           "| phase | clr_jax | PyTorch |", "|---|---|---|",
           f"| import | {split_median['import_seconds']:.2f} | "
           f"{torch_split['import_seconds']:.2f} |",
           f"| data | {split_median['data_seconds']:.2f} | {torch_split['data_seconds']:.2f} |",
           f"| model, optimizer, data on the device (the steps compile in a thread "
           f"meanwhile) | {split_median['build_seconds']:.2f} | |",
           f"| the rest of the steps' compilation (and the evaluation's, beside it) | "
           f"{split_median['compile_seconds']:.2f} | |",
           f"| first evaluation | {split_median['eval_first_seconds']:.2f} | |",
           f"| first step | | {torch_split['first_step_seconds']:.2f} |"]
    if native_build is not None:
        md += ["", f"The native CPU kernels ({', '.join(in_use)}) are built once per machine "
               f"and compiler and kept, so none of the runs above builds them; a machine's "
               f"very first run adds their build, {native_build:.1f} s here."]
    update_section(f"vs_pytorch_{jax.default_backend()}" + (f"_held_{args.isa}" if held else ""),
                   "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
