"""Caffe-style SGD and the optimizers by name."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from clr_jax.harness import models
from clr_jax.harness.optim import caffe_sgd, make_optimizer, multipliers_for


class TestCaffeSGD:
    def test_two_steps_by_hand(self):
        # v1 = lr0 * lm * (g + wd * dm * w0); w1 = w0 - v1
        # v2 = m v1 + lr1 * lm * (g + wd * dm * w1); w2 = w1 - v2
        lr = lambda t: jnp.where(t == 0, 0.1, 0.3)  # noqa: E731
        params = {"a": jnp.array(2.0), "b": jnp.array(-1.0)}
        mults = {"a": (2.0, 1.0), "b": (1.0, 0.0)}
        tx = caffe_sgd(lr, momentum=0.9, weight_decay=0.5, multipliers=mults)
        state = tx.init(params)
        g = {"a": jnp.array(1.0), "b": jnp.array(4.0)}
        w = dict(a=2.0, b=-1.0)
        v = dict(a=0.0, b=0.0)
        for rate in (0.1, 0.3):
            for k, (lm, dm) in mults.items():
                v[k] = 0.9 * v[k] + rate * lm * (float(g[k]) + 0.5 * dm * w[k])
                w[k] -= v[k]
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
            np.testing.assert_allclose([params["a"], params["b"]], [w["a"], w["b"]], rtol=1e-6)

    def test_differs_from_optax_sgd_when_rate_changes(self):
        lr = lambda t: 0.1 * (t + 1)  # noqa: E731
        caffe, plain = caffe_sgd(lr, momentum=0.9), optax.sgd(lr, momentum=0.9)
        sc, sp = caffe.init(jnp.zeros(())), plain.init(jnp.zeros(()))
        outs = []
        for _ in range(2):
            uc, sc = caffe.update(jnp.ones(()), sc)
            up, sp = plain.update(jnp.ones(()), sp)
            outs.append((float(uc), float(up)))
        assert outs[0][0] == pytest.approx(outs[0][1])  # first step equal
        assert outs[1][0] == pytest.approx(-(0.9 * 0.1 + 0.2))  # caffe: lr inside
        assert outs[1][1] == pytest.approx(-0.2 * (0.9 + 1))  # optax: lr after

    def test_caffe_multipliers_land_on_the_right_layers(self):
        model = models.CaffeCifar10(rngs=nnx.Rngs(0))
        params = nnx.state(model, nnx.Param)
        m = multipliers_for(params, models.CAFFE_MULTIPLIERS)
        assert m["ip1"]["kernel"] == (1.0, 250.0) and m["ip1"]["bias"] == (2.0, 0.0)
        assert m["conv1"]["bias"] == (2.0, 1.0) and m["conv3"]["bias"] == (1.0, 1.0)

    def test_named_optimizers(self):
        for name in ("sgd", "momentum", "nesterov", "adam", "rmsprop", "adagrad", "adadelta"):
            tx = make_optimizer(name, 0.01)
            state = tx.init(jnp.ones(2))
            updates, _ = tx.update(jnp.ones(2), state, jnp.ones(2))
            assert np.all(np.asarray(updates) < 0), name
        with pytest.raises(ValueError, match="optimizer must be one of"):
            make_optimizer("lbfgs", 0.1)
