"""How compiled training loops are shaped on each backend; shared by the range tests,
the training harness and sweeps.

XLA's CPU backend runs convolution gradients inside a while loop (what an un-unrolled
``lax.scan`` becomes) about 15x slower than outside one, while for matrix-multiply
models the loop is as fast and unrolling only costs compile time; and it runs vmapped
(grouped) convolutions slower than separate ones (both measured,
benchmarks/RESULTS.md). On GPU and TPU neither holds.
"""

from __future__ import annotations

from collections.abc import Callable

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


def has_convolution(jaxpr) -> bool:
    """Whether a (closed) jaxpr, or one nested in it, contains a convolution."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            return True
        if any(has_convolution(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params)):
            return True
    return False


def uses_convolution(fn: Callable, *args) -> bool:
    """Whether ``jax.grad`` of ``fn`` at these arguments contains a convolution."""
    return has_convolution(jax.make_jaxpr(jax.grad(fn))(*args))


def group_size(chunk: int, convolutional: bool) -> tuple[int, bool]:
    """(steps per compiled call, whether to unroll them) for a chunk of ``chunk`` steps.

    On CPU, models with convolutions run their steps in fully unrolled groups of at
    most `MAX_UNROLLED_STEPS` that divide the chunk, called back to back from Python
    (dispatch is asynchronous, so the host still waits only at the end of a chunk);
    everything else runs a whole chunk in one ``lax.scan``.
    """
    if not on_cpu() or not convolutional:
        return chunk, False
    group = max(d for d in range(1, min(chunk, MAX_UNROLLED_STEPS) + 1) if chunk % d == 0)
    return group, True


def vmap_members(convolutional: bool) -> bool:
    """Whether many models trained together (a sweep, a parallel range test) should be
    vmapped into one program by default: yes, except convolutional models on CPU,
    which run one after another through the same compiled program."""
    return not (on_cpu() and convolutional)
