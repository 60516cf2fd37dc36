"""clr_jax: cyclical learning rates and the LR range test for JAX and Optax.

Every public name is re-exported here; each has one import path.
"""

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
