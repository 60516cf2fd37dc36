"""How many training steps to unroll into one compiled call on CPU, with the harness's
current compiler options: compile time against step time.

    python benchmarks/group_size_cpu.py [--rounds 12] [--groups 4,8,16]

The harness's unrolled group of Caffe-net training steps (`train_steps` with
`unroll=True`, CPU kernels, `kernels.compiler_options`, Caffe SGD, batch 100, the
bundled sample), compiled for each group length and timed in alternation, `--rounds`
times, one call per timing, in one process. Reported per length: compile seconds, the
median step time, and the cost of a 1,000-step job's training (compile + 1,000 steps),
the trade-off behind `clr_jax._backend.MAX_UNROLLED_STEPS`.

Writes benchmarks/results/group_size_<backend>.json and its RESULTS.md section.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import clr_jax
from _caffe_group import CaffeGroup
from _report import machine, update_section, write_result
from clr_jax import _backend


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--groups", default="4,8,16")
    args = parser.parse_args()
    groups = [int(g) for g in args.groups.split(",")]
    caffe = CaffeGroup(num_steps=1000, log_every=100)
    trainer, state, permutation = caffe.trainer, caffe.state, caffe.permutation
    compiled, compile_seconds = {}, {}
    for group in groups:
        compiled[group], compile_seconds[group] = caffe.compile(group,
                                                                trainer.compiler_options)
        jax.block_until_ready(compiled[group](state, jnp.int32(0), permutation))
        print(group, f"compiled in {compile_seconds[group]:.1f} s", flush=True)
    times = {group: [] for group in groups}
    for _ in range(args.rounds):
        for group in groups:
            started = time.perf_counter()
            jax.block_until_ready(compiled[group](state, jnp.int32(0), permutation))
            times[group].append((time.perf_counter() - started) / group)
    rows = {str(g): {"compile_seconds": compile_seconds[g],
                     "step_ms_median": 1000 * statistics.median(times[g]),
                     "step_ms_range": [1000 * min(times[g]), 1000 * max(times[g])],
                     "job_1000_steps_seconds": compile_seconds[g]
                     + 1000 * statistics.median(times[g])} for g in groups}
    result = {"benchmark": "group_size", "rounds": args.rounds, "batch_size": 100,
              "compiler_options": trainer.compiler_options,
              "max_unrolled_steps": _backend.MAX_UNROLLED_STEPS, "machine": machine(),
              "clr_jax": clr_jax.__version__, "groups": rows}
    path = write_result("group_size", result)
    m = result["machine"]
    md = [f"## Steps per compiled call on CPU ({jax.default_backend()})", "",
          f"`python benchmarks/group_size_cpu.py --rounds {args.rounds} --groups "
          f"{args.groups}` → `results/{path.name}`", "",
          f"The harness's unrolled group of Caffe-net training steps with its current "
          f"compiler options; {m['cpu']} ({m['cores']} cores), jax {m['jax']}; the lengths "
          f"alternated {args.rounds} times. The harness unrolls up to "
          f"{_backend.MAX_UNROLLED_STEPS} steps (`_backend.MAX_UNROLLED_STEPS`).", "",
          "| steps per call | compile (s) | step (ms, median, range) | compile + 1,000 steps "
          "(s) |", "|---|---|---|---|"]
    for group, row in rows.items():
        md.append(f"| {group} | {row['compile_seconds']:.1f} | {row['step_ms_median']:.1f} "
                  f"({row['step_ms_range'][0]:.1f}-{row['step_ms_range'][1]:.1f}) | "
                  f"{row['job_1000_steps_seconds']:.1f} |")
    update_section(f"group_size_{jax.default_backend()}", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
