"""What the second CPU core buys each kind of XLA operation of the Caffe network's step.

    python benchmarks/cpu_threads.py [--repeats 3]

Each operation is compiled alone with `jax.jit` and timed (best of 20 calls) in a fresh
process pinned to one core and in one pinned to all cores (``os.sched_setaffinity``
before JAX starts), alternated `--repeats` times; the figure is the median of
one-core time / all-core time (2.0 = perfect use of 2 cores, 1.0 = one thread).
Operations: conv1's forward convolution (100x32x32x3 by 5x5x3x32), compiled by
default (YNNPACK) and with only reductions left to YNNPACK (XLA's Eigen kernel); the
spectral convolution's per-frequency channel mixing (a batched 220 x (100x64 @ 64x64)
product, conv2's at the first version's DFT size; now 180 frequencies); a 2048x2048 matrix product; an elementwise loop over conv1's output.

Writes benchmarks/results/cpu_threads_<backend>.json and its RESULTS.md section.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys


def child(cpus):
    os.sched_setaffinity(0, set(range(cpus)))
    import time

    import jax
    import jax.numpy as jnp

    def best(f, *args, options=None):
        f = jax.jit(f, compiler_options=options)
        f(*args).block_until_ready()
        times = []
        for _ in range(20):
            started = time.perf_counter()
            f(*args).block_until_ready()
            times.append(time.perf_counter() - started)
        return min(times)

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), ((2, 2), (2, 2)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    image, kernel = jnp.ones((100, 32, 32, 3)), jnp.ones((5, 5, 3, 32))
    ops = {
        "conv1 forward (XLA convolution)": (conv, image, kernel),
        "batched matmul 220 x (100x64 @ 64x64)": (
            lambda a, b: jnp.einsum("fnc,fco->fno", a, b), jnp.ones((220, 100, 64)),
            jnp.ones((220, 64, 64))),
        "matmul 2048 x 2048": (lambda m: m @ m, jnp.ones((2048, 2048))),
        "elementwise exp(x) * 2 + 1 on 100x32x32x32": (lambda e: jnp.exp(e) * 2 + 1,
                                                        jnp.ones((100, 32, 32, 32))),
    }
    times = {name: best(f, *args) for name, (f, *args) in ops.items()}
    # The same convolution with only reductions left to YNNPACK: XLA's Eigen kernel.
    from clr_jax.harness.kernels import YNN_REDUCTIONS_ONLY
    times["conv1 forward, only reductions in YNNPACK (Eigen)"] = best(
        conv, image, kernel, options=YNN_REDUCTIONS_ONLY)
    print(json.dumps(times))


def run_child(cpus):
    out = subprocess.run([sys.executable, __file__, "--child", str(cpus)], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "XLA_FLAGS": ""}).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    import jax

    from _report import machine, update_section, write_result

    cores = len(os.sched_getaffinity(0))
    one, all_ = [], []
    for _ in range(args.repeats):
        one.append(run_child(1))
        all_.append(run_child(cores))
    rows = {name: {"one_core_seconds": statistics.median(r[name] for r in one),
                   "all_cores_seconds": statistics.median(r[name] for r in all_),
                   "speedup_median": statistics.median(
                       a[name] / b[name] for a, b in zip(one, all_))}
            for name in one[0]}
    result = {"benchmark": "cpu_threads", "repeats": args.repeats, "cores": cores,
              "machine": machine(), "operations": rows}
    backend = jax.default_backend()
    path = write_result("cpu_threads", result)
    m = result["machine"]
    md = [f"## What the second core buys each kind of operation ({backend})", "",
          f"`python benchmarks/cpu_threads.py --repeats {args.repeats}` → "
          f"`results/{path.name}`", "",
          f"{m['cpu']}, jax {m['jax']}; each operation compiled alone, best of 20 calls, in "
          f"processes pinned to 1 and to {cores} cores, alternated {args.repeats} times.", "",
          f"| operation | 1 core (ms) | {cores} cores (ms) | speed-up (median) |",
          "|---|---|---|---|"]
    for name, row in rows.items():
        md.append(f"| {name} | {1000 * row['one_core_seconds']:.2f} | "
                  f"{1000 * row['all_cores_seconds']:.2f} | {row['speedup_median']:.2f}x |")
    update_section(f"cpu_threads_{backend}", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
