"""Native CPU kernels for what XLA's CPU backend runs as many passes: max pooling that
keeps each window's first-maximum position for its gradient, average pooling and
Caffe's within-channel LRN, each with its gradient (``csrc/cpu_kernels.cc``).

XLA's CPU backend has no operation that places a window's share at a position chosen
per entry in one pass: the gradient of a max pool becomes several masked, padded and
summed passes over the input, and each window sum's gradient a pad per shifted slice
(benchmarks/RESULTS.md). The kernels here are XLA FFI
handlers, called from inside the compiled program like any operation, written in C++
and compiled with the machine's own C++ compiler (``$CXX``, else ``c++``, ``g++`` or
``clang++``) on first use, for the processor it runs on (``-march=native``; under
``XLA_FLAGS=--xla_cpu_max_isa=AVX2``, for AVX2). The library is kept in
``$CLR_JAX_CACHE/native`` (``~/.cache/clr_jax/native``), one file per source, compiler,
flags and jaxlib version, so later processes load it at once.

`available` says whether they can be used here: not without a C++ compiler, nor with
``CLR_JAX_NATIVE=0``, and not on other platforms than the CPU. Where they cannot, the
harness's kernels keep their XLA forms (`clr_jax.harness.kernels`).
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import warnings
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["NativeBuildError", "available", "avg_pool", "avg_pool_gradient", "build", "lrn",
           "lrn_gradient", "max_pool", "max_pool_gradient"]

SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.cc"
_HANDLERS = {f"clr_jax_{name}_{way}": f"ClrJax{symbol}{way.title()}"
             for name, symbol in (("max_pool", "MaxPool"), ("avg_pool", "AvgPool"),
                                  ("lrn", "Lrn"))
             for way in ("forward", "backward")}


class NativeBuildError(RuntimeError):
    """The C++ compiler failed on the native kernels' source."""


def compiler() -> str | None:
    """The C++ compiler used: ``$CXX``, else the first of c++, g++, clang++ on the PATH."""
    chosen = os.environ.get("CXX")
    if chosen:
        return shutil.which(chosen)
    return next((found for name in ("c++", "g++", "clang++")
                 if (found := shutil.which(name))), None)


def _flags() -> list[str]:
    held = "--xla_cpu_max_isa=avx2" in os.environ.get("XLA_FLAGS", "").lower()
    return ["-O3", "-march=x86-64-v3" if held else "-march=native", "-fno-math-errno",
            "-std=c++17", "-shared", "-fPIC"]


def build(directory: str | os.PathLike | None = None) -> Path:
    """The compiled library, built (or found) in ``directory`` (default
    ``$CLR_JAX_CACHE/native``). Several processes may build at once: one compiles,
    under a lock, into a temporary file renamed into place, and the others wait for it.

    Raises:
      NativeBuildError: no C++ compiler, or it failed (its messages are in the error).
    """
    from clr_jax.harness.data import cache_dir

    cxx = compiler()
    if cxx is None:
        raise NativeBuildError("no C++ compiler found (set $CXX, or install g++ or clang++)")
    flags = _flags()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cxx, version, *flags,
                                    metadata.version("jaxlib")]).encode()).hexdigest()[:16]
    folder = Path(directory) if directory is not None else cache_dir() / "native"
    library = folder / f"clr_jax_native-{key}.so"
    if library.exists():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if library.exists():
            return library
        partial = library.with_name(f"{library.name}.{os.getpid()}.part")
        done = subprocess.run([cxx, *flags, "-isystem", jax.ffi.include_dir(), str(SOURCE),
                               "-o", str(partial)], capture_output=True, text=True)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise NativeBuildError(f"{Path(cxx).name} failed on {SOURCE.name} "
                                   f"(exit {done.returncode}):\n{done.stderr[-2000:]}")
        os.replace(partial, library)
    return library


@functools.cache
def available() -> bool:
    """Whether the native kernels can run here: on the CPU, with a C++ compiler, not
    turned off by ``CLR_JAX_NATIVE=0``; the first call builds (or loads) the library and
    registers its handlers with XLA. A compiler that fails warns once and leaves the
    XLA forms in use."""
    if jax.default_backend() != "cpu" or os.environ.get("CLR_JAX_NATIVE", "1").lower() in (
            "0", "off", "no", "false"):
        return False
    if compiler() is None:
        return False
    try:
        library = ctypes.cdll.LoadLibrary(str(build()))
    except (NativeBuildError, OSError) as error:
        warnings.warn(f"clr_jax's native CPU kernels are not used: {error}", RuntimeWarning,
                      stacklevel=2)
        return False
    for target, symbol in _HANDLERS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                    platform="cpu")
    return True


def _float32_images(x: jax.Array, what: str) -> None:
    if x.ndim < 3 or x.dtype != jnp.float32:
        raise ValueError(f"native {what} takes float32 arrays (..., H, W, C); got "
                         f"{x.dtype} of shape {x.shape}")


def _check(x: jax.Array, window, strides, what: str = "pooling") -> tuple[int, int, int, int]:
    _float32_images(x, what)
    (kh, kw), (sh, sw) = window, strides
    if min(kh, kw, sh, sw) < 1 or kh * kw > 127:
        raise ValueError(f"window {window} and strides {strides}: each at least 1, and at "
                         "most 127 entries in a window")
    return int(kh), int(kw), int(sh), int(sw)


def _attributes(kh, kw, sh, sw) -> dict:
    return {"kh": np.int64(kh), "kw": np.int64(kw), "sh": np.int64(sh), "sw": np.int64(sw)}


def _pooled_shape(x, output_size, sh, sw) -> tuple[int, ...]:
    oh, ow = output_size
    h, w = x.shape[-3], x.shape[-2]
    if not (0 < oh and 0 < ow and (oh - 1) * sh < h and (ow - 1) * sw < w):
        raise ValueError(f"output size {output_size}: every window must start inside the "
                         f"{h}x{w} input")
    return (*x.shape[:-3], oh, ow, x.shape[-1])


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
             output_size: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """Max pooling of ``x`` (..., H, W, C) to ``output_size`` (OH, OW): each output entry
    the maximum of the window starting at (stride * row, stride * column), its entries
    past the input's edge left out. Returns the maxima and, as int8, the position
    (i * window width + j) of each window's first maximum in row-major order, which
    `max_pool_gradient` routes the gradient to. Needs `available`."""
    kh, kw, sh, sw = _check(x, window, strides)
    shape = _pooled_shape(x, output_size, sh, sw)
    call = jax.ffi.ffi_call("clr_jax_max_pool_forward",
                            (jax.ShapeDtypeStruct(shape, jnp.float32),
                             jax.ShapeDtypeStruct(shape, jnp.int8)),
                            vmap_method="broadcast_all")
    y, index = call(x, **_attributes(kh, kw, sh, sw))
    return y, index


def max_pool_gradient(index: jax.Array, g: jax.Array, window: tuple[int, int],
                      strides: tuple[int, int], input_size: tuple[int, int]) -> jax.Array:
    """The adjoint of `max_pool`: each entry of ``g`` added to the input entry its
    ``index`` names; an entry shared by several windows sums their shares in the
    windows' row-major order."""
    kh, kw, sh, sw = _check(g, window, strides)
    if index.shape != g.shape or index.dtype != jnp.int8:
        raise ValueError(f"index must be int8 of g's shape {g.shape}; got {index.dtype} "
                         f"{index.shape}")
    shape = (*g.shape[:-3], *input_size, g.shape[-1])
    call = jax.ffi.ffi_call("clr_jax_max_pool_backward",
                            jax.ShapeDtypeStruct(shape, jnp.float32),
                            vmap_method="broadcast_all")
    return call(index, g, **_attributes(kh, kw, sh, sw))


def avg_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
             output_size: tuple[int, int]) -> jax.Array:
    """Average pooling of ``x`` (..., H, W, C) to ``output_size``: each window's sum over
    its entries inside the input, divided by their number (Caffe's rounded-up output
    size, as `clr_jax.harness.kernels.avg_pool_ceil`). Needs `available`."""
    kh, kw, sh, sw = _check(x, window, strides)
    call = jax.ffi.ffi_call("clr_jax_avg_pool_forward",
                            jax.ShapeDtypeStruct(_pooled_shape(x, output_size, sh, sw),
                                                 jnp.float32), vmap_method="broadcast_all")
    return call(x, **_attributes(kh, kw, sh, sw))


def avg_pool_gradient(g: jax.Array, window: tuple[int, int], strides: tuple[int, int],
                      input_size: tuple[int, int]) -> jax.Array:
    """The adjoint of `avg_pool`: each input entry gets its windows' cotangents, each
    divided by its window's number of entries, summed in the windows' row-major order."""
    kh, kw, sh, sw = _check(g, window, strides)
    shape = (*g.shape[:-3], *input_size, g.shape[-1])
    _pooled_shape(jax.ShapeDtypeStruct(shape, g.dtype), g.shape[-3:-1], sh, sw)
    call = jax.ffi.ffi_call("clr_jax_avg_pool_backward", jax.ShapeDtypeStruct(shape, jnp.float32),
                            vmap_method="broadcast_all")
    return call(g, **_attributes(kh, kw, sh, sw))


def _lrn_attributes(alpha: float, beta: float, size: int) -> dict:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"LRN size {size}: an odd number of rows and columns")
    return {"size": np.int64(size), "a": np.float32(alpha / size ** 2),
            "beta": np.float32(beta)}


def lrn(x: jax.Array, alpha: float, beta: float, size: int = 3) -> jax.Array:
    """Caffe's within-channel LRN of ``x`` (..., H, W, C): x (1 + alpha / size^2 * the
    sum of x^2 over the size x size window around each entry, zero padded)^-beta.
    Needs `available`."""
    _float32_images(x, "LRN")
    call = jax.ffi.ffi_call("clr_jax_lrn_forward", jax.ShapeDtypeStruct(x.shape, jnp.float32),
                            vmap_method="broadcast_all")
    return call(x, **_lrn_attributes(alpha, beta, size))


def lrn_gradient(x: jax.Array, g: jax.Array, alpha: float, beta: float,
                 size: int = 3) -> jax.Array:
    """The gradient of `lrn` at ``x`` applied to ``g``: with s the scale and W the window
    sum, g s^-beta - (2 alpha beta / size^2) x W(g x s^-beta / s), s recomputed from x."""
    _float32_images(x, "LRN")
    if g.shape != x.shape or g.dtype != x.dtype:
        raise ValueError(f"g must have x's shape and dtype {x.shape} {x.dtype}; got "
                         f"{g.shape} {g.dtype}")
    call = jax.ffi.ffi_call("clr_jax_lrn_backward", jax.ShapeDtypeStruct(x.shape, jnp.float32),
                            vmap_method="broadcast_all")
    return call(x, g, coefficient=np.float32(2 * alpha * beta / size ** 2),
                **_lrn_attributes(alpha, beta, size))
