"""How compiled training loops are shaped on each backend; shared by the range tests,
the training harness and sweeps.

XLA's CPU backend runs the convolutions that autodiff writes for a convolution's
gradient (its kernel gradient, in a transposed layout) about 15x slower inside a while
loop (what an un-unrolled ``lax.scan`` becomes) than outside one; convolutions in the
NHWC x HWIO -> NHWC layout with unit strides run as fast in a loop as out of it. A
gradient holding only those (`clr_jax.harness.kernels.conv_nhwc` writes its gradients
so) runs in a loop, and so do models without convolutions; the rest are unrolled, which
costs compile time (benchmarks/RESULTS.md, "Rolled loops"). XLA's CPU backend also runs
vmapped (grouped) convolutions slower than separate ones (measured,
benchmarks/RESULTS.md). On GPU and TPU neither holds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import jax
import jax.extend.core
import jax.numpy as jnp

# The most steps unrolled into one compiled call on CPU.
MAX_UNROLLED_STEPS = 16


def scan(body: Callable, carry, xs=None, *, length: int | None = None, unroll: bool):
    """``jax.lax.scan``, or with ``unroll`` its steps written out one after another.

    ``lax.scan(..., unroll=True)`` of length 1 still emits a while loop (with one trip),
    which is exactly what unrolling is meant to avoid on CPU: a one-step group of the
    small CNN of experiments/range_test_cifar10_small.py ran 27x slower per step than a
    two-step group. Written out here, no group of any length holds a loop.

    The body is traced once, as a nested ``jax.jit`` called ``length`` times: XLA
    inlines the calls, so the compiled program computes exactly what writing the body
    out ``length`` times does (bit-identical results, tests/test_backend.py), but a
    training step is traced and lowered once instead of once per step
    (benchmarks/lowering_cpu.py: the harness's 10-step Caffe-net group lowers in under
    half the time).
    """
    if not unroll:
        return jax.lax.scan(body, carry, xs, length=length)
    if length is None:
        length = len(jax.tree.leaves(xs)[0])
    body = jax.jit(body)
    outputs = []
    for i in range(length):
        carry, out = body(carry, None if xs is None else jax.tree.map(lambda x: x[i], xs))
        outputs.append(out)
    return carry, jax.tree.map(lambda *values: jnp.stack(values), *outputs)


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"


@functools.cache
def cpu_has_avx512() -> bool:
    """Whether the host processor has AVX-512 (Linux's /proc/cpuinfo; False where that
    cannot be read). The libraries XLA's CPU backend calls (YNNPACK, Eigen) choose their
    code by the processor, not by XLA's flags, so a kernel choice measured on one kind
    of machine is made by this, not by ``--xla_cpu_max_isa``."""
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def has_convolution(jaxpr) -> bool:
    """Whether a (closed) jaxpr, or one nested in it, contains a convolution."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            return True
        if any(has_convolution(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params)):
            return True
    return False


# NHWC x HWIO -> NHWC, as ConvDimensionNumbers (lhs, rhs, out) specs
_NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _loop_friendly(params) -> bool:
    return (tuple(params["dimension_numbers"]) == _NHWC
            and all(s == 1 for s in params["window_strides"])
            and all(d == 1 for d in params["lhs_dilation"] + params["rhs_dilation"])
            and params["feature_group_count"] == 1 and params["batch_group_count"] == 1)


def slow_in_loops(jaxpr) -> bool:
    """Whether a (closed) jaxpr, or one nested in it, holds a convolution that XLA's CPU
    backend runs slowly inside a while loop: any but an NHWC x HWIO -> NHWC one with unit
    strides, no dilation and one group. Pass it a gradient's jaxpr: autodiff's gradient
    convolutions are in other layouts."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated" and not _loop_friendly(eqn.params):
            return True
        if any(slow_in_loops(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params)):
            return True
    return False


def group_size(chunk: int, unroll_on_cpu: bool) -> tuple[int, bool]:
    """(steps per compiled call, whether to unroll them) for a chunk of ``chunk`` steps.

    On CPU, steps whose gradient holds convolutions that run slowly in a loop
    (`slow_in_loops`; ``unroll_on_cpu``) run in fully unrolled groups of at most
    `MAX_UNROLLED_STEPS` that divide the chunk, called back to back from Python
    (dispatch is asynchronous, so the host still waits only at the end of a chunk);
    everything else runs a whole chunk in one ``lax.scan``.
    """
    if not on_cpu() or not unroll_on_cpu:
        return chunk, False
    group = max(d for d in range(1, min(chunk, MAX_UNROLLED_STEPS) + 1) if chunk % d == 0)
    return group, True


def vmap_members(convolutional: bool) -> bool:
    """Whether many models trained together (a sweep, a parallel range test) should be
    vmapped into one program by default: yes, except convolutional models on CPU,
    which run one after another through the same compiled program."""
    return not (on_cpu() and convolutional)
