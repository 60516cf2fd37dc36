"""XLA:CPU options not tried before for the paper's Caffe net, one by one: the other
YNNPACK fusion types and oneDNN, each on top of what the harness used before.

    python benchmarks/xla_cpu_leads.py [--rounds 6] [--group 4]

The harness's own training steps (`clr_jax.harness.train.train_steps`: the Caffe net
with its CPU kernels, Caffe SGD, batch 100, the bundled sample, the unrolled group the
harness runs on CPU) compiled once per variant of XLA's compiler options and timed in
alternation, `--rounds` times, one group per timing, in one process. Each variant is
the options the harness used when this benchmark was written ("current": only
reductions in YNNPACK, the older loop emitters) with one change; what it found
("short_ynn_reduce_eltwise") is what `kernels.compiler_options` uses now. For each: the median ratio of its
group time to the current options' (with the range over rounds), whether the compiled
program differs from the current one at all (sha256 of the optimized HLO: an option
that changes nothing there changes nothing), and the largest difference of its losses
from the current program's (rounding, or a wrong result).

Writes benchmarks/results/xla_cpu_leads_<backend>.json and its RESULTS.md section.
"""

import argparse
import hashlib
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import clr_jax
from _caffe_group import CaffeGroup
from _report import machine, update_section, write_result
from clr_jax.harness.kernels import YNN_REDUCTIONS_ONLY

YNN = "xla_cpu_experimental_ynn_fusion_type"
# the harness's options for the Caffe net before this benchmark
CURRENT = {**YNN_REDUCTIONS_ONLY, "xla_cpu_use_fusion_emitters": False}
VARIANTS = {
    "current": {},
    "xla_defaults": None,  # every option at XLA's default
    "ynn_reduce_eltwise": {YNN: "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_ELTWISE"},
    "ynn_reduce_individual_dot": {
        YNN: "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
    "ynn_reduce_dot": {YNN: "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_DOT"},
    "ynn_none": {YNN: ""},
    # the options of runs shorter than kernels.LOOP_EMITTERS_MIN_STEPS: XLA's fusion
    # emitters, with and without elementwise fusions in YNNPACK
    "short_current": {"xla_cpu_use_fusion_emitters": True},
    "short_ynn_reduce_eltwise": {"xla_cpu_use_fusion_emitters": True,
                                 YNN: "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_ELTWISE"},
    "xnnpack_off": {"xla_cpu_use_xnnpack": False},
    "onednn": {"xla_cpu_use_onednn": True},
    "onednn_custom_call": {"xla_cpu_use_onednn": True,
                           "xla_cpu_experimental_onednn_custom_call": True},
    "onednn_convolutions": {
        "xla_cpu_use_onednn": True,
        "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"},
}


def options_of(change):
    return None if change is None else {**CURRENT, **change}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--group", type=int, default=4, help="unrolled steps per call")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--tag", default="", help="suffix of the result's name (a rerun of "
                        "some variants kept beside the full run)")
    args = parser.parse_args()
    names = args.variants.split(",")
    caffe = CaffeGroup(num_steps=70_000, log_every=args.group)
    state, permutation = caffe.state, caffe.permutation

    compiled, texts, losses, compile_seconds = {}, {}, {}, {}
    for name in names:
        compiled[name], compile_seconds[name] = caffe.compile(
            args.group, options_of(VARIANTS[name]))
        texts[name] = hashlib.sha256(compiled[name].as_text().encode()).hexdigest()
        # two groups from the same start: the losses of 2 x group steps
        s, first = compiled[name](state, jnp.int32(0), permutation)
        _, second = compiled[name](s, jnp.int32(args.group), permutation)
        losses[name] = np.concatenate([np.asarray(first), np.asarray(second)])
        print(name, f"compiled in {compile_seconds[name]:.1f} s", flush=True)

    def run(fn):
        _, out = fn(state, jnp.int32(0), permutation)
        jax.block_until_ready(out)

    times = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            started = time.perf_counter()
            run(compiled[name])
            times[name].append((time.perf_counter() - started) / args.group)
    rows = {}
    for name in names:
        ratios = [a / b for a, b in zip(times[name], times["current"])]
        rows[name] = {
            "options": options_of(VARIANTS[name]),
            "step_ms_median": 1000 * statistics.median(times[name]),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "program_differs": texts[name] != texts["current"],
            "max_abs_loss_difference": float(np.max(np.abs(losses[name] - losses["current"]))),
            "compile_seconds": compile_seconds[name]}
        print(name, json.dumps(rows[name]), flush=True)
    result = {"benchmark": "xla_cpu_leads", "rounds": args.rounds, "group": args.group,
              "batch_size": 100, "variants_asked": args.variants, "tag": args.tag,
              "machine": machine(), "clr_jax": clr_jax.__version__, "variants": rows}
    report(result)


def report(result):
    """Writes the result file and its RESULTS.md section."""
    tag, rounds, group = result["tag"], result["rounds"], result["group"]
    result_name = "xla_cpu_leads" + (f"_{tag}" if tag else "")
    path = write_result(result_name, result)
    m = result["machine"]
    backend = jax.default_backend()
    md = [f"## Untried XLA:CPU options for the Caffe net ({backend}"
          + (f", {tag}" if tag else "") + ")", "",
          f"`python benchmarks/xla_cpu_leads.py --rounds {rounds} --group {group}"
          + (f" --variants {result['variants_asked']} --tag {tag}" if tag else "") + "` "
          f"→ `results/{path.name}`", "",
          f"The harness's unrolled group of {group} Caffe-net training steps (CPU "
          f"kernels, Caffe SGD, batch 100); {m['cpu']} ({m['cores']} cores), jax {m['jax']}; "
          "each variant is the harness's options before this benchmark ('current': only "
          "reductions in YNNPACK, the loop emitters) with one change, all alternated "
          f"{rounds} times. Ratio: step time / the current options' step time (median "
          "of rounds, range); 'changes the program': the optimized HLO differs from the "
          "current one's; loss difference: the largest over the first "
          f"{2 * group} steps' losses.", "",
          "| variant | step (ms) | ratio to current | changes the program | largest loss "
          "difference | compile (s) |", "|---|---|---|---|---|---|"]
    for variant, row in result["variants"].items():
        md.append(f"| {variant} | {row['step_ms_median']:.1f} | {row['ratio_median']:.3f} "
                  f"({row['ratio_min']:.2f}-{row['ratio_max']:.2f}) | "
                  f"{'yes' if row['program_differs'] else 'no'} | "
                  f"{row['max_abs_loss_difference']:.2g} | {row['compile_seconds']:.1f} |")
    update_section(f"{result_name}_{backend}", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
