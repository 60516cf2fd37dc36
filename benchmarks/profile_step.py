"""Where one training step of the paper's network spends its time, in clr_jax and in
PyTorch: each framework's own profiler, each side in its own process.

    python benchmarks/profile_step.py [--steps 100] [--rounds 2]

The job is benchmarks/vs_pytorch.py's (Caffe cifar10_full, bundled CIFAR-10 sample,
batch 100, triangular2, Caffe-style SGD, a 1,000-step run's settings). Each side warms
up, then runs --steps steps under its profiler:

- clr_jax: `jax.profiler.trace` (its Perfetto trace) around `Trainer.run_steps`; every
  executed XLA operation's duration, grouped by what the operation is in the compiled
  program (XLA's optimised HLO, dumped by the same process): convolutions and matrix
  products (conv1's forward pass, which YNNPACK runs fused with its bias and padding;
  the spectral convolutions' DFTs and channel mixing; ip1), reductions (bias gradients,
  batch sums; YNNPACK runs them), and the fused elementwise loops, XLA's or YNNPACK's
  (max and average pooling, LRN, ReLU, padding, layout copies, the SGD update). An
  Eigen convolution (conv1's kernel gradient) runs asynchronously: its trace event
  times only its launch, so its time is in "not inside any operation" (the step's wall
  time less the operations' sum), with the executor's own gaps;
- PyTorch 2.13: `torch.profiler` around the same loop as
  benchmarks/pytorch_caffe_cifar10.py; the self time of each ATen operation, grouped
  the same way (convolutions and their gradients in oneDNN, matrix products, pooling,
  LRN's and ReLU's elementwise operations, the SGD update; "other" is indexing the
  batch, allocation and copies).

Times are milliseconds per step, summed over operations (XLA may run independent
operations side by side, so a sum can exceed the step's wall time), medians over
--rounds alternated process pairs. Writes benchmarks/results/profile_step_<backend>.json
and its RESULTS.md section. Keep every other job paused while it runs.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CATEGORIES = ("convolutions and matrix products", "reductions",
              "pooling, LRN, ReLU, update, other elementwise", "other")


def _hlo_instructions(dump: Path) -> dict[str, tuple[str, str]]:
    """Instruction name -> (its line, the body of the computation it calls) over every
    optimised HLO module in ``dump``. Names can repeat across modules (the training
    group and the epoch order are both ``jit__lambda``): the largest module wins."""
    found = {}
    for path in sorted(glob.glob(str(dump / "*after_optimizations.txt")),
                       key=lambda p: -os.path.getsize(p)):
        text = Path(path).read_text()
        bodies = {m.group(1): m.group(2) for m in
                  re.finditer(r"^%?(\S+) \([^\n]*\{\n(.*?)\n\}", text, re.M | re.S)}
        for m in re.finditer(r"^\s+(?:ROOT )?%(\S+) = [^\n]*", text, re.M):
            line = m.group(0)
            calls = re.search(r"calls=%(\S+?)[,\s]", line)
            found.setdefault(m.group(1), (line, bodies.get(calls.group(1), "") if calls else ""))
    return found


def classify_hlo(line: str, body: str) -> str:
    """What an executed XLA operation is (see the module's docstring)."""
    opcode = line.split(" = ", 1)[1].split("(", 1)[0].split(" ")[-1]
    inner = body + " " + line
    if opcode in ("convolution", "dot") or " convolution(" in inner or " dot(" in inner:
        return CATEGORIES[0]
    # (YNNPACK fusions hold reductions, or with kernels.YNN_REDUCE_ELTWISE also
    # elementwise work: classified by what they compute, not by who runs them)
    if " reduce(" in inner or opcode == "reduce":
        return CATEGORIES[1]
    return CATEGORIES[2]


def clr_jax_side(steps: int) -> dict:
    trace, dump = Path(os.environ["PROFILE_TRACE"]), Path(os.environ["PROFILE_DUMP"])
    import jax

    from clr_jax.harness import TrainConfig, Trainer, load_dataset
    data = load_dataset("sample")
    config = TrainConfig(num_steps=1000, eval_every=1000, log_every=100,
                         schedule={"policy": "triangular2", "base_lr": 0.001, "max_lr": 0.006,
                                   "step_size": 100})
    trainer = Trainer(config, data)
    steps = steps // trainer.chunk * trainer.chunk or trainer.chunk
    state, losses = trainer.run_steps(trainer.initial_state, 0, trainer.chunk)
    jax.block_until_ready(losses)
    with jax.profiler.trace(str(trace), create_perfetto_trace=True):
        started = time.perf_counter()
        for first in range(trainer.chunk, trainer.chunk + steps, trainer.chunk):
            state, losses = trainer.run_steps(state, first, trainer.chunk)
        jax.block_until_ready(losses)
        wall = time.perf_counter() - started  # before the trace is written out
    events = json.load(gzip.open(glob.glob(str(trace / "**/*perfetto_trace.json.gz"),
                                           recursive=True)[0]))["traceEvents"]
    per_op = collections.Counter()
    for event in events:
        args = event.get("args", {})
        if event.get("ph") == "X" and "hlo_op" in args:
            per_op[args["hlo_op"]] += event["dur"] / 1000  # microseconds -> ms
    instructions = _hlo_instructions(dump)
    categories = collections.Counter()
    kinds = collections.Counter()
    for op, ms in per_op.items():
        line, body = instructions.get(op, (f"{op} = ? other()", ""))
        category = classify_hlo(line, body) if op in instructions else "other"
        categories[category] += ms / steps
        source = re.search(r'op_name="([^"]*)"', line)
        source = source.group(1) if source else ""
        if " convolution(" in body:  # a fusion holding a convolution: say so
            source += "/convolution"
        kinds[(re.sub(r"\.\d+$", "", op), source)] += ms / steps
    top = [{"operation": name, "source": source, "ms_per_step": ms}
           for (name, source), ms in kinds.most_common(8)]
    # pure layout changes (XLA's copy and transpose fusions): mostly the transposes
    # between the spectral convolutions' DFT stages, each a matrix product over one axis
    copies = sum(ms for (name, _), ms in kinds.items()
                 if re.fullmatch(r"(copy|copy_bitcast_fusion|transpose_copy_fusion|transpose)",
                                 name))
    return {"ms_per_step": dict(categories), "wall_ms_per_step": 1000 * wall / steps,
            "layout_copies_ms_per_step": copies, "steps": steps, "top_operations": top}


def classify_aten(name: str) -> str:
    if "convolution" in name or "conv2d" in name or name in (
            "aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"):
        return CATEGORIES[0]
    if name in ("aten::sum", "aten::mean") or "nll_loss" in name or "log_softmax" in name:
        return CATEGORIES[1]
    if name.startswith("aten::") and not name.startswith(
            ("aten::empty", "aten::index", "aten::randperm", "aten::copy_", "aten::to",
             "aten::_to", "aten::slice", "aten::view", "aten::as_strided")):
        return CATEGORIES[2]
    return CATEGORIES[3]


def pytorch_side(steps: int, npz: str) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, str(HERE))
    from pytorch_caffe_cifar10 import CaffeCifar10, make_optimizer
    torch.manual_seed(0)
    with np.load(npz) as d:
        x = torch.from_numpy(d["train_images"]).permute(0, 3, 1, 2).float()
        y = torch.from_numpy(d["train_labels"]).long()
    x = x - x.mean(0, keepdim=True)
    net = CaffeCifar10()
    opt, sched = make_optimizer(net)
    order = torch.randperm(len(y))

    def step(i):
        index = order[(i % 50) * 100:(i % 50 + 1) * 100]
        opt.zero_grad()
        F.cross_entropy(net(x[index]), y[index]).backward()
        opt.step()
        sched.step()

    for i in range(20):
        step(i)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for i in range(steps):
            step(i)
        wall = time.perf_counter() - started
    categories = collections.Counter()
    kinds = collections.Counter()
    for entry in prof.key_averages():
        ms = entry.self_cpu_time_total / 1000 / steps
        categories[classify_aten(entry.key)] += ms
        kinds[entry.key] += ms
    top = [{"operation": name, "ms_per_step": ms} for name, ms in kinds.most_common(8)]
    return {"ms_per_step": dict(categories), "wall_ms_per_step": 1000 * wall / steps,
            "steps": steps, "threads": torch.get_num_threads(), "top_operations": top}


def run_side(side: str, steps: int, npz: Path, work: Path, round_: int) -> dict:
    env = dict(os.environ)
    if side == "clr_jax":
        dump = work / f"dump-{round_}"
        env.update(PROFILE_TRACE=str(work / f"trace-{round_}"), PROFILE_DUMP=str(dump),
                   CLR_JAX_COMPILATION_CACHE="off",
                   XLA_FLAGS=(env.get("XLA_FLAGS", "") + f" --xla_dump_to={dump} "
                              "--xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*(lambda|train_group).*"))
    out = subprocess.run([sys.executable, __file__, "--side", side, "--steps", str(steps),
                          "--npz", str(npz)], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{side} failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--side", choices=("clr_jax", "pytorch"), help=argparse.SUPPRESS)
    parser.add_argument("--npz", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "clr_jax":
        return print(json.dumps(clr_jax_side(args.steps)))
    if args.side == "pytorch":
        return print(json.dumps(pytorch_side(args.steps, args.npz)))

    import jax
    import numpy as np

    from _report import machine, update_section, write_result
    from clr_jax.harness.data import load_dataset

    work = Path(tempfile.mkdtemp(prefix="profile-step-"))
    data = load_dataset("sample")
    npz = work / "sample.npz"
    np.savez(npz, train_images=data.train_images, train_labels=data.train_labels)
    runs = {"clr_jax": [], "pytorch": []}
    for round_ in range(args.rounds):
        for side in runs:
            runs[side].append(run_side(side, args.steps, npz, work, round_))
    summary = {}
    for side, rs in runs.items():
        summary[side] = {
            "ms_per_step": {c: statistics.median(r["ms_per_step"].get(c, 0.0) for r in rs)
                            for c in CATEGORIES},
            "wall_ms_per_step": statistics.median(r["wall_ms_per_step"] for r in rs),
            "layout_copies_ms_per_step": statistics.median(
                r.get("layout_copies_ms_per_step", 0.0) for r in rs),
            "not_inside_any_operation_ms_per_step": statistics.median(
                r["wall_ms_per_step"] - sum(r["ms_per_step"].values()) for r in rs),
            "top_operations": rs[-1]["top_operations"]}
    result = {"benchmark": "profile_step", "rounds": args.rounds, "steps": args.steps,
              "machine": machine(), "runs": runs, "summary": summary}
    path = write_result("profile_step", result)
    m = result["machine"]
    md = [f"## Where a step's time goes, clr_jax against PyTorch ({jax.default_backend()})", "",
          f"`python benchmarks/profile_step.py --steps {args.steps} --rounds {args.rounds}` "
          f"→ `results/{path.name}`", "",
          f"One training step of the whole-job benchmark's job (Caffe cifar10_full, batch 100, "
          f"triangular2, Caffe-style SGD); {m['cpu']} ({m['cores']} cores), jax {m['jax']}. "
          f"Each framework's own profiler, each side its own process, medians of "
          f"{args.rounds} alternated pairs of {args.steps} profiled steps. Milliseconds per "
          "step summed over operations (independent operations may overlap); the step's "
          "wall time under the profiler below.", "",
          "| kind of operation | clr_jax (ms/step) | PyTorch (ms/step) |", "|---|---|---|"]
    for c in CATEGORIES:
        md.append(f"| {c} | {summary['clr_jax']['ms_per_step'][c]:.1f} | "
                  f"{summary['pytorch']['ms_per_step'][c]:.1f} |")
    md.append("| of the elementwise work: layout copies (XLA's copy and transpose fusions, "
              "mostly between the spectral convolutions' DFT stages) | "
              f"{summary['clr_jax']['layout_copies_ms_per_step']:.1f} | |")
    md.append("| not inside any operation (wall time less the four kinds' sum; clr_jax: "
              "conv1's kernel gradient, an asynchronous Eigen convolution, and the "
              "executor's gaps) | "
              f"{summary['clr_jax']['not_inside_any_operation_ms_per_step']:.1f} | "
              f"{summary['pytorch']['not_inside_any_operation_ms_per_step']:.1f} |")
    md.append(f"| **wall time of a step under the profiler** | "
              f"{summary['clr_jax']['wall_ms_per_step']:.1f} | "
              f"{summary['pytorch']['wall_ms_per_step']:.1f} |")
    md += ["", "Largest single operations (last round), clr_jax (XLA's name, the operation "
           "its fusion ends in, or `convolution` where it holds one) and PyTorch (ATen, self "
           "time):", "",
           "| clr_jax | ms/step | PyTorch | ms/step |", "|---|---|---|---|"]
    for a, b in zip(summary["clr_jax"]["top_operations"], summary["pytorch"]["top_operations"]):
        md.append(f"| {a['operation']} (`{a['source'].split('/')[-1]}`) | "
                  f"{a['ms_per_step']:.1f} | {b['operation']} | {b['ms_per_step']:.1f} |")
    update_section(f"profile_step_{jax.default_backend()}", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
