"""What XLA emits for the training step under the machine's default and under
``--xla_cpu_max_isa=AVX2``: the check behind ``vs_pytorch.py --isa avx2``.

    python benchmarks/isa_emitted_code.py [--steps 100]

Runs the job of benchmarks/vs_pytorch.py (`clr-jax train`, the Caffe net on the bundled
sample) for one compiled chunk, once per setting, each in its own process with no
compilation cache and ``--xla_dump_to``, and disassembles (``objdump -d``) every object
file XLA compiled for the training chunk. Reported per setting: instructions, and how
many name a 512-bit (zmm), 256-bit (ymm) or 128-bit (xmm) register, and how many are
AVX-512's alone (naming a zmm register, a mask register or a vector register 16-31).

What this does not see: the kernels XLA calls rather than emits (Eigen's convolutions
and matrix products, YNNPACK's fusions) are compiled ahead of time into jaxlib and pick
their code by the processor they find, whatever the flag says.

Writes benchmarks/results/isa_emitted_code_<backend>.json and its RESULTS.md section.
"""

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from vs_pytorch import clr_jax_command

SETTINGS = {"default": "", "max_isa_avx2": "--xla_cpu_max_isa=AVX2"}
REGISTERS = ("zmm", "ymm", "xmm")
# what only AVX-512 has: zmm registers, the mask registers, the vector registers 16-31
AVX512_ONLY = re.compile(r"%zmm|%k[0-7]\b|%[xy]mm(1[6-9]|2[0-9]|3[01])\b")


def disassembly_counts(objects):
    counts = collections.Counter()
    for obj in objects:
        text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(obj)],
                              capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            if not re.match(r"^\s+[0-9a-f]+:\s", line):
                continue
            counts["instructions"] += 1
            for register in REGISTERS:
                if f"%{register}" in line:
                    counts[register] += 1
            if AVX512_ONLY.search(line):
                counts["avx512_only"] += 1
    return dict(counts)


def dump(setting, flags, steps, work):
    folder = work / setting
    env = {**os.environ, "CLR_JAX_COMPILATION_CACHE": "off",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={folder / 'dump'} "
                        f"--xla_dump_hlo_module_re=.*train_group.* {flags}".strip()}
    out = subprocess.run(clr_jax_command(steps, folder / "run"), capture_output=True,
                         text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"clr-jax train ({setting}) failed: {out.stderr[-2000:]}")
    objects = sorted((folder / "dump").glob("*train_group*.o"))
    if not objects:
        raise RuntimeError(f"no object files for the training chunk in {folder / 'dump'}")
    return {"xla_flags": flags, "object_files": len(objects), **disassembly_counts(objects)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("objdump") is None:
        raise SystemExit("objdump not found: install binutils")
    from _report import machine, update_section, write_result

    work = Path(tempfile.mkdtemp(prefix="isa-emitted-"))
    try:
        settings = {name: dump(name, flags, args.steps, work) for name, flags in SETTINGS.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    m = machine()
    result = {"benchmark": "isa_emitted_code", "steps": args.steps, "machine": m,
              "job": "clr-jax train, Caffe cifar10_full, bundled sample, batch 100 "
                     "(benchmarks/vs_pytorch.py's command), one compiled chunk",
              "settings": settings}
    path = write_result("isa_emitted_code", result)
    md = ["## What XLA emits under `--xla_cpu_max_isa=AVX2` (cpu)", "",
          f"`python benchmarks/isa_emitted_code.py --steps {args.steps}` → "
          f"`results/{path.name}`", "",
          f"{m['cpu']} ({m['cores']} cores; vector flags {', '.join(m['vector_flags'])}), "
          f"jax {m['jax']}. The object code XLA compiled for the training chunk, "
          "disassembled: instructions and those naming each register width. Kernels XLA "
          "calls (Eigen, YNNPACK) are not in it: they choose their code by the processor "
          "at run time.", "",
          "| setting | object files | instructions | zmm (512-bit) | ymm (256-bit) | "
          "xmm (128-bit) | AVX-512 only (zmm, masks, registers 16-31) |",
          "|---|---|---|---|---|---|---|"]
    for name, row in settings.items():
        md.append(f"| {name} | {row['object_files']} | {row.get('instructions', 0)} | "
                  f"{row.get('zmm', 0)} | {row.get('ymm', 0)} | {row.get('xmm', 0)} | "
                  f"{row.get('avx512_only', 0)} |")
    update_section("isa_emitted_code_cpu", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
