"""Fixtures shared by the test modules."""

import jax.numpy as jnp
import pytest

import clr_jax
from tests.helpers import least_squares, loss_fn


@pytest.fixture(scope="session")
def batches():
    """300 batches of the stochastic least-squares problem (diverges above lr 1.0)."""
    return least_squares()


@pytest.fixture(scope="session")
def linear_result(batches):
    """A linear range test of the least-squares problem, 0.01 to 3.0 over 300 steps."""
    return clr_jax.range_test(loss_fn, jnp.zeros(5), batches, min_lr=0.01, max_lr=3.0,
                              num_steps=300)
