"""Shared by the benchmark scripts: machine description and RESULTS.md sections."""

import json
import os
import platform
import re
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parent
RESULTS_MD = ROOT / "RESULTS.md"


def machine() -> dict:
    """What the numbers were measured on."""
    fields = {}  # the first processor's
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = fields.get("model name") or platform.processor() or platform.machine()
    # the vector instruction sets (an AVX2-only machine and an AVX-512 one differ here)
    vector = sorted(f for f in fields.get("flags", "").split()
                    if f.startswith(("avx", "fma", "amx")))
    return {"cpu": cpu, "cores": os.cpu_count(), "vector_flags": vector,
            "platform": platform.platform(),
            "backend": jax.default_backend(), "devices": jax.device_count(),
            "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
            "python": platform.python_version()}


def isa_suffix() -> str:
    """``"_avx512"`` on a CPU with AVX-512, else ``""``: the same benchmark's results from
    an AVX2 machine and an AVX-512 one are kept side by side, as XLA's code, PyTorch's
    and the timings differ between them."""
    if jax.default_backend() != "cpu":
        return ""
    return "_avx512" if "avx512f" in machine()["vector_flags"] else ""


def write_result(name: str, result: dict):
    """Writes ``result`` to results/<name><isa_suffix>_<backend>.json; returns the path."""
    path = ROOT / "results" / f"{name}{isa_suffix()}_{jax.default_backend()}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def update_section(name: str, markdown: str) -> None:
    """Replaces the section between <!-- name:start --> and <!-- name:end --> in
    RESULTS.md (appending it if absent), so each script regenerates its own part. On an
    AVX-512 machine the section is its own (``name`` + `isa_suffix`) and its heading
    says so."""
    suffix = isa_suffix()
    if suffix:
        name += suffix
        heading, _, rest = markdown.strip().partition("\n")
        heading = (heading[:-1] + ", AVX-512 machine)" if heading.endswith(")")
                   else heading + " (AVX-512 machine)")
        markdown = heading + "\n" + rest
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) \
        else text.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS_MD.write_text(text)
