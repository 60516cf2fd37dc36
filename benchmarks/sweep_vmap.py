"""Sweeps: K members vmapped in one program against K separate harness runs.

    python benchmarks/sweep_vmap.py [--ks 1,2,4,8] [--steps 16] [--model caffe_cifar10]

The paper's Caffe network (default), batch 100, float32, the bundled CIFAR-10 sample,
each member a triangular schedule with its own max_lr. For each K, three ways to train
the K members for --steps steps, run side by side in this process:

- separate: K `Trainer`s, as K runs of `clr-jax train` would be (each compiles its own
  program, since each schedule is a different function);
- vmapped: one `SweepTrainer` with all K members in one chunk (vmapped);
- chunked: one `SweepTrainer`, one member per chunk (one compilation, run K times).

Reported: the wall time including compilation (what a user waits for) and the steady
state (the same steps run again, compiled), as ratios to "separate". Writes
benchmarks/results/sweep_vmap_<backend>.json and its section of RESULTS.md.
"""

import argparse
import json
import time

import jax

import clr_jax
from _report import machine, update_section, write_result
from clr_jax.harness.data import load_dataset
from clr_jax.harness.members import Member
from clr_jax.harness.sweep import SweepTrainer
from clr_jax.harness.train import TrainConfig, Trainer


def timed(fn):
    started = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - started, out


def members(k):
    return [Member(f"m{i}", (("triangular", dict(base_lr=0.001, max_lr=0.002 + 0.001 * i,
                                                   step_size=8), 1),)) for i in range(k)]


def run_separate(config, data, k, steps):
    first = again = 0.0
    for member in members(k):
        policy, settings, _ = member.stages[0]
        trainer = Trainer(config, data, clr_jax.triangular(**settings))
        t1, (state, _) = timed(lambda: trainer.run_steps(trainer.initial_state, 0, steps))
        t2, _ = timed(lambda: trainer.run_steps(state, steps, steps))
        first, again = first + t1, again + t2
    return first, again


def run_sweep(config, data, k, steps, chunk):
    trainer = SweepTrainer(config, data, members(k), members_per_chunk=chunk)
    t1, (state, _) = timed(lambda: trainer.run_steps(trainer.initial_state, 0, steps))
    t2, _ = timed(lambda: trainer.run_steps(state, steps, steps))
    return t1, t2


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ks", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--model", default="caffe_cifar10")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    data = load_dataset("sample")
    config = TrainConfig(model=args.model, num_steps=2 * args.steps, eval_every=args.steps,
                         log_every=args.steps, shuffle=False)
    rows = []
    for k in ks:
        sep = run_separate(config, data, k, args.steps)
        vm = run_sweep(config, data, k, args.steps, chunk=k)
        ch = run_sweep(config, data, k, args.steps, chunk=1)
        row = {"k": k, "separate": sep, "vmapped": vm, "chunked": ch,
               "vmapped_ratio": [vm[i] / sep[i] for i in (0, 1)],
               "chunked_ratio": [ch[i] / sep[i] for i in (0, 1)]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    backend = jax.default_backend()
    result = {"benchmark": "sweep_vmap", "model": args.model, "batch_size": 100,
              "steps": args.steps, "machine": machine(), "clr_jax": clr_jax.__version__,
              "rows": rows, "note": "[wall incl. compilation, steady state] in seconds"}
    path = write_result("sweep_vmap", result)

    m = result["machine"]
    lines = [
        f"## Sweeps: vmapped members against separate runs ({backend})", "",
        f"`python benchmarks/sweep_vmap.py --ks {args.ks} --steps {args.steps}` "
        f"→ `results/{path.name}`", "",
        f"{args.model}, batch 100, float32, bundled CIFAR-10 sample, {args.steps} steps per "
        f"member; {m['cpu']} ({m['cores']} cores), {m['devices']} x {m['device_kind']}, "
        f"jax {m['jax']}. Ratios to K separate harness runs (lower is better).", "",
        "| K | separate: wall / steady (s) | vmapped: wall ratio | vmapped: steady ratio "
        "| one per chunk: wall ratio | one per chunk: steady ratio |",
        "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['k']} | {r['separate'][0]:.1f} / {r['separate'][1]:.1f} | "
                     f"{r['vmapped_ratio'][0]:.2f} | {r['vmapped_ratio'][1]:.2f} | "
                     f"{r['chunked_ratio'][0]:.2f} | {r['chunked_ratio'][1]:.2f} |")
    update_section(f"sweep_vmap_{backend}", "\n".join(lines))


if __name__ == "__main__":
    main()
