"""clr_jax: cyclical learning rates and the LR range test for JAX and Optax.

Every public name is re-exported here; each has one import path. The names are loaded
on first use (PEP 562), all together, so that ``import clr_jax.cli`` stays light: the
command line starts without importing JAX, so a Ctrl-C during the imports is its own
to handle (one line, `clr_jax.cli`).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the same names, for type checkers and the API docs
    from clr_jax.find import FoundBounds, find_bounds
    from clr_jax.momentum import cyclical_momentum, one_cycle_momentum, with_cyclical_momentum
    from clr_jax.range_test import (
        ParallelRangeTestResult,
        RangeTestResult,
        parallel_range_test,
        range_test,
    )
    from clr_jax.schedules import (
        cyclical,
        decay,
        exp_range,
        exponential,
        one_cycle,
        step_size_from_epochs,
        steps_for_cycles,
        triangular,
        triangular2,
    )
    from clr_jax.suggest import Bounds, BoundsError, Flag, suggest_bounds

__version__ = "0.1.0"

_EXPORTS = {
    "clr_jax.find": ("FoundBounds", "find_bounds"),
    "clr_jax.momentum": ("cyclical_momentum", "one_cycle_momentum", "with_cyclical_momentum"),
    "clr_jax.range_test": ("ParallelRangeTestResult", "RangeTestResult", "parallel_range_test",
                           "range_test"),
    "clr_jax.schedules": ("cyclical", "decay", "exp_range", "exponential", "one_cycle",
                          "step_size_from_epochs", "steps_for_cycles", "triangular",
                          "triangular2"),
    "clr_jax.suggest": ("Bounds", "BoundsError", "Flag", "suggest_bounds"),
}

__all__ = [
    "Bounds",
    "BoundsError",
    "Flag",
    "FoundBounds",
    "ParallelRangeTestResult",
    "RangeTestResult",
    "cyclical",
    "cyclical_momentum",
    "decay",
    "exp_range",
    "exponential",
    "find_bounds",
    "one_cycle",
    "one_cycle_momentum",
    "parallel_range_test",
    "range_test",
    "step_size_from_epochs",
    "steps_for_cycles",
    "suggest_bounds",
    "triangular",
    "triangular2",
    "with_cyclical_momentum",
]


def _load() -> None:
    """Imports every public name into the package (what an eager ``__init__`` does)."""
    package = sys.modules[__name__]
    for module, names in _EXPORTS.items():
        source = importlib.import_module(module)
        for name in names:
            package.__dict__[name] = getattr(source, name)


def __getattr__(name: str):
    if name in __all__:
        _load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """The package's module type: importing the submodule ``clr_jax.range_test`` must not
    hide the function ``clr_jax.range_test`` (Python sets a submodule as an attribute of
    its package once it is imported; an eager ``__init__`` rebinds the function after
    that, a lazy one has to refuse it)."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and name in __all__:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
