"""Construction-time checks of hyperparameters that may be traced arrays.

A hyperparameter is checked only when its value is concrete (a Python number, a
NumPy array or a non-traced JAX array); a traced value passes through unchecked, so
that one compiled function serves every value and `jax.vmap` over a hyperparameter
works. Every failure is a `ValueError` naming the argument and its value.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import numpy as np


def concrete(value) -> np.ndarray | None:
    """The value as a NumPy array, or None when it is traced."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _show(value: np.ndarray):
    return value.item() if value.ndim == 0 else value.tolist()


def check(
    name: str,
    value,
    condition: Callable[[np.ndarray], np.ndarray],
    requirement: str,
) -> None:
    """Raises ValueError unless `condition` holds for every element of `value`."""
    array = concrete(value)
    if array is None:
        return
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise ValueError(f"{name} must be a number, got {value!r}.")
    with np.errstate(invalid="ignore"):
        ok = np.all(condition(array.astype(np.float64)))
    if not ok:
        raise ValueError(f"{name} must be {requirement}, got {_show(array)!r}.")


def finite_nonnegative(name: str, value) -> None:
    check(name, value, lambda v: np.isfinite(v) & (v >= 0), "a finite number >= 0")


def finite_positive(name: str, value) -> None:
    check(name, value, lambda v: np.isfinite(v) & (v > 0), "a finite number > 0")


def not_less(name: str, value, other_name: str, other) -> None:
    """Checks value >= other when both are concrete."""
    a, b = concrete(value), concrete(other)
    if a is None or b is None:
        return
    if not np.all(a.astype(np.float64) >= b.astype(np.float64)):
        raise ValueError(
            f"{name} must be >= {other_name}, got {name}={_show(a)!r} and "
            f"{other_name}={_show(b)!r}."
        )


def choice(name: str, value, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}."
        )


def positive_int(name: str, value) -> int:
    """A Python int > 0 from an int-like value (for host-side helpers)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and math.isfinite(value) and value == int(value):
            value = int(value)
        else:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def broadcastable(**values) -> None:
    """Checks that the concrete array values broadcast together; names them if not."""
    shapes = {name: np.shape(array) for name, value in values.items()
              if value is not None and (array := concrete(value)) is not None}
    try:
        np.broadcast_shapes(*shapes.values())
    except ValueError:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(
            f"the settings' shapes do not broadcast together: {listed}; give single values "
            "or arrays of one shape (one entry per schedule)."
        ) from None


def fits(name: str, value, dtype) -> None:
    """Checks that a concrete value is a normal number of ``dtype`` (float32 unless x64):
    finite there, and zero or at least its smallest normal magnitude, so arithmetic on it
    neither overflows to inf nor loses precision in subnormals."""
    info = np.finfo(dtype)
    check(name, value, lambda x: (np.abs(x) <= info.max) & ((x == 0) | (np.abs(x) >= info.tiny)),
          f"representable in {np.dtype(dtype).name} (0, or a magnitude between "
          f"{info.tiny:.3g} and {info.max:.3g})")
