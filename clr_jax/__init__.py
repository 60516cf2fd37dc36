"""clr_jax: cyclical learning rates and the LR range test for JAX and Optax.

Every public name is re-exported here; each has one import path.
"""

from clr_jax.momentum import with_cyclical_momentum
from clr_jax.schedules import (
    cyclical,
    cyclical_momentum,
    decay,
    exp_range,
    one_cycle,
    step_size_from_epochs,
    steps_for_cycles,
    triangular,
    triangular2,
)

__version__ = "0.1.0"

__all__ = [
    "cyclical",
    "cyclical_momentum",
    "decay",
    "exp_range",
    "one_cycle",
    "step_size_from_epochs",
    "steps_for_cycles",
    "triangular",
    "triangular2",
    "with_cyclical_momentum",
]
