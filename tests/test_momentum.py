"""Scheduling the momentum of any Optax optimizer."""

import jax.numpy as jnp
import optax
import pytest

import clr_jax
from tests import reference as ref


class TestWithCyclicalMomentum:
    def test_sgd_momentum_follows_schedule(self):
        # Two updates of heavy-ball SGD with gradient 1: trace = g, then mu_1 * trace + g.
        lr = optax.constant_schedule(1.0)
        mom = lambda t: jnp.where(t == 0, 0.9, 0.5)  # noqa: E731
        tx = clr_jax.with_cyclical_momentum(optax.sgd, learning_rate=lr, momentum=mom)
        state = tx.init(jnp.zeros(()))
        u1, state = tx.update(jnp.ones(()), state)
        u2, state = tx.update(jnp.ones(()), state)
        assert float(u1) == pytest.approx(-1.0)
        assert float(u2) == pytest.approx(-(0.5 * 1.0 + 1.0))

    def test_adam_gets_b1(self):
        mom = clr_jax.cyclical_momentum(0.85, 0.95, 5)
        tx = clr_jax.with_cyclical_momentum(optax.adam, learning_rate=0.1, momentum=mom)
        state = tx.init({"w": jnp.zeros(2)})
        for step in range(6):
            _, state = tx.update({"w": jnp.ones(2)}, state)
            assert float(state.hyperparams["b1"]) == pytest.approx(
                0.95 - 0.1 * ref.triangular(step, 0.0, 1.0, 5), rel=1e-6)

    def test_explicit_hyperparam(self):
        tx = clr_jax.with_cyclical_momentum(
            optax.rmsprop, learning_rate=0.1, momentum=0.5, hyperparam="decay")
        state = tx.init(jnp.zeros(1))
        assert float(state.hyperparams["decay"]) == 0.5

    def test_errors(self):
        with pytest.raises(ValueError, match="no 'momentum' or 'b1'"):
            clr_jax.with_cyclical_momentum(optax.adagrad, learning_rate=0.1, momentum=0.9)
        with pytest.raises(ValueError, match="hyperparam='beta' is not an argument"):
            clr_jax.with_cyclical_momentum(optax.sgd, learning_rate=0.1, momentum=0.9,
                                           hyperparam="beta")
