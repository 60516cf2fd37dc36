"""The fixed cost of the harness's unrolled group of training steps: tracing and lowering
it, then compiling it, with the step written out once per step (as the group was first
built) against the step traced once and called as a nested function.

    python benchmarks/lowering_cpu.py [--rounds 3] [--groups 10,16]

The harness's group of Caffe-net training steps (`train_steps` with `unroll=True`, CPU
kernels, `kernels.compiler_options`, Caffe SGD, batch 100, the bundled sample; 10 steps
is the group of a 1,000-step run that logs every 100, 16 the longest group), each
variant in its own fresh process with no compilation cache, the variants alternated
`--rounds` times:

- written_out: the step function called once per step while tracing, so its trace and
  its lowering are repeated ``group`` times;
- nested: `clr_jax._backend.scan` as the harness runs it: the step is one ``jax.jit``
  called ``group`` times, which XLA inlines.

Reported per variant and group: seconds to trace and lower (``jit(...).lower``), to
compile, and whether the two variants' compiled programs hold the same operations (the
opcode and shape of every instruction of the optimised HLO, counted; names and order
differ) and give identical results after one call (sha256 of the state and losses).
Writes benchmarks/results/lowering_<backend>.json and its RESULTS.md section.
"""

import argparse
import collections
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("written_out", "nested")


def _written_out_scan(body, carry, xs=None, *, length=None, unroll):
    """The unrolled group as first written: the body traced once per step."""
    import jax
    import jax.numpy as jnp

    assert unroll
    if length is None:
        length = len(jax.tree.leaves(xs)[0])
    outputs = []
    for i in range(length):
        carry, out = body(carry, None if xs is None else jax.tree.map(lambda x: x[i], xs))
        outputs.append(out)
    return carry, jax.tree.map(lambda *values: jnp.stack(values), *outputs)


def operations(hlo_text: str) -> str:
    """A digest of the optimised program's instructions by opcode and shape."""
    counts = collections.Counter(
        m.groups() for m in re.finditer(r"^\s+(?:ROOT )?%?\S+ = (\S+) ([\w-]+)\(",
                                         hlo_text, re.M))
    return hashlib.sha256(repr(sorted(counts.items())).encode()).hexdigest()


def child(variant: str, group: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from _caffe_group import CaffeGroup
    from clr_jax import _backend
    from clr_jax.harness import train

    if variant == "written_out":
        _backend.scan = _written_out_scan  # train_steps reads it from the module
    caffe = CaffeGroup(num_steps=1000, log_every=100)
    trainer = caffe.trainer

    def fn(state, first_step, permutation):
        return train.train_steps(trainer.loss, trainer.data, trainer.tx, state, first_step,
                                 group, seed=0, unroll=True, permutation=permutation)

    started = time.perf_counter()
    lowered = jax.jit(fn, compiler_options=trainer.compiler_options).lower(
        caffe.state, jnp.int32(0), caffe.permutation)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    out = jax.block_until_ready(compiled(caffe.state, jnp.int32(0), caffe.permutation))
    leaves = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(out)])
    return {"lower_seconds": lowered_at - started, "compile_seconds": compiled_at - lowered_at,
            "operations_sha256": operations(compiled.as_text()),
            "result_sha256": hashlib.sha256(leaves.tobytes()).hexdigest()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--groups", default="10,16")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    import jax

    import clr_jax
    from _report import machine, update_section, write_result

    groups = [int(g) for g in args.groups.split(",")]
    env = {"CLR_JAX_COMPILATION_CACHE": "off", "JAX_COMPILATION_CACHE_DIR": ""}
    runs = {str(g): {v: [] for v in VARIANTS} for g in groups}
    for round_ in range(args.rounds):
        for group in groups:
            for variant in VARIANTS:
                done = subprocess.run(
                    [sys.executable, __file__, "--child", variant, str(group)],
                    capture_output=True, text=True, cwd=HERE, check=True,
                    env={**os.environ, **env})
                row = json.loads(done.stdout.strip().splitlines()[-1])
                runs[str(group)][variant].append(row)
                print(round_, group, variant, f"lower {row['lower_seconds']:.2f} s, "
                      f"compile {row['compile_seconds']:.2f} s", flush=True)
    summary = {}
    for group, by_variant in runs.items():
        med = {v: {k: statistics.median(r[k] for r in rows)
                   for k in ("lower_seconds", "compile_seconds")}
               for v, rows in by_variant.items()}
        hashes = {k: {r[k] for rows in by_variant.values() for r in rows}
                  for k in ("operations_sha256", "result_sha256")}
        summary[group] = {**{v: med[v] for v in VARIANTS},
                          "same_operations": len(hashes["operations_sha256"]) == 1,
                          "same_results": len(hashes["result_sha256"]) == 1,
                          "lower_ratio_median": statistics.median(
                              n["lower_seconds"] / w["lower_seconds"] for n, w in
                              zip(by_variant["nested"], by_variant["written_out"]))}
    result = {"benchmark": "lowering", "rounds": args.rounds, "machine": machine(),
              "clr_jax": clr_jax.__version__, "runs": runs, "summary": summary}
    path = write_result("lowering", result)
    m = result["machine"]
    md = [f"## Tracing and lowering the unrolled group ({jax.default_backend()})", "",
          f"`python benchmarks/lowering_cpu.py --rounds {args.rounds} --groups "
          f"{args.groups}` → `results/{path.name}`", "",
          f"The harness's group of Caffe-net training steps, each variant in a fresh "
          f"process without compilation cache, alternated {args.rounds} times; {m['cpu']} "
          f"({m['cores']} cores), jax {m['jax']}. Medians in seconds.", "",
          "| steps in the group | trace + lower, written out | trace + lower, nested | "
          "nested / written out | compile, written out | compile, nested | "
          "same operations | same results |", "|---|---|---|---|---|---|---|---|"]
    for group, s in summary.items():
        md.append(f"| {group} | {s['written_out']['lower_seconds']:.2f} | "
                  f"{s['nested']['lower_seconds']:.2f} | {s['lower_ratio_median']:.2f} | "
                  f"{s['written_out']['compile_seconds']:.2f} | "
                  f"{s['nested']['compile_seconds']:.2f} | "
                  f"{'yes' if s['same_operations'] else 'no'} | "
                  f"{'yes' if s['same_results'] else 'no'} |")
    update_section(f"lowering_{jax.default_backend()}", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
