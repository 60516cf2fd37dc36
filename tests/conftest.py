"""Fixtures shared by the test modules."""

import os

# The command line keeps compiled programs on disk; the tests that check it set their own
# folder, the others leave the user's cache alone.
os.environ.setdefault("CLR_JAX_COMPILATION_CACHE", "off")

import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

import clr_jax  # noqa: E402
from tests.helpers import least_squares, loss_fn  # noqa: E402


@pytest.fixture(scope="session")
def batches():
    """300 batches of the stochastic least-squares problem (diverges above lr 1.0)."""
    return least_squares()


@pytest.fixture(scope="session")
def linear_result(batches):
    """A linear range test of the least-squares problem, 0.01 to 3.0 over 300 steps."""
    return clr_jax.range_test(loss_fn, jnp.zeros(5), batches, min_lr=0.01, max_lr=3.0,
                              num_steps=300)
