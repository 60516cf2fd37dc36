"""The harness models: the paper's Caffe net layer by layer, the ResNets, the MLP."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from clr_jax.harness import kernels, models
from clr_jax.harness.train import TrainConfig, Trainer
from tests.helpers import tiny_dataset


class TestCaffeNetwork:
    def test_layer_shapes_and_parameter_counts(self):
        model = models.CaffeCifar10(rngs=nnx.Rngs(0))
        counts = {name: sum(x.size for x in jax.tree.leaves(nnx.state(getattr(model, name))))
                  for name in ("conv1", "conv2", "conv3", "ip1")}
        # 5*5*3*32+32, 5*5*32*32+32, 5*5*32*64+64, 1024*10+10
        assert counts == {"conv1": 2432, "conv2": 25632, "conv3": 51264, "ip1": 10250}
        assert sum(counts.values()) == 89_578
        x = jnp.zeros((2, 32, 32, 3))
        h1 = kernels.max_pool_ceil(model.conv1(x))
        h2 = kernels.avg_pool_ceil(model.conv2(h1))
        h3 = kernels.avg_pool_ceil(model.conv3(h2))
        assert (h1.shape, h2.shape, h3.shape) == ((2, 16, 16, 32), (2, 8, 8, 32), (2, 4, 4, 64))
        assert model(x).shape == (2, 10)

    def test_initialisation(self):
        model = models.CaffeCifar10(rngs=nnx.Rngs(0))
        assert np.std(model.conv1.kernel[...]) == pytest.approx(1e-4, rel=0.05)
        assert np.std(model.conv2.kernel[...]) == pytest.approx(1e-2, rel=0.05)
        assert np.all(model.conv1.bias[...] == 0)

    def test_ceil_pooling_by_hand(self):
        x = jnp.arange(25.0).reshape(1, 5, 5, 1)
        # 5 -> ceil((5 - 3) / 2) + 1 = 2 outputs; windows rows/cols {0,1,2} and {2,3,4}
        np.testing.assert_allclose(kernels.max_pool_ceil(x)[0, :, :, 0], [[12, 14], [22, 24]])
        x = jnp.arange(16.0).reshape(1, 4, 4, 1)
        # 4 -> 2 outputs; the second window is cut to rows/cols {2, 3}
        avg = kernels.avg_pool_ceil(x)[0, :, :, 0]
        np.testing.assert_allclose(avg, [[5.0, 6.5], [11.0, 12.5]])

    def test_lrn_by_hand(self):
        x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(100.0)
        y = kernels.lrn_within_channel(x)
        expected = 100.0 * (1 + 5e-5 / 9 * 100.0**2) ** -0.75
        assert float(y[0, 1, 1, 0]) == pytest.approx(expected, rel=1e-6)

    def test_resnet20_and_mlp(self):
        resnet = models.CifarResNet(20, rngs=nnx.Rngs(0))
        n = sum(x.size for x in jax.tree.leaves(nnx.state(resnet, nnx.Param)))
        assert 0.26e6 < n < 0.28e6
        assert resnet(jnp.zeros((2, 32, 32, 3))).shape == (2, 10)
        assert models.MLP(5, in_features=12, rngs=nnx.Rngs(0))(jnp.zeros((3, 2, 2, 3))).shape \
            == (3, 5)

    def test_kernels_are_an_explicit_recorded_choice(self):
        fast = models.CaffeCifar10(kernels="fast", rngs=nnx.Rngs(0))
        lax = models.CaffeCifar10(kernels="lax", rngs=nnx.Rngs(0))
        assert "kernels='fast'" in repr(fast) and lax.kernels == "lax"
        assert fast.conv2.conv_general_dilated is kernels.conv_spectral
        assert fast.conv1.conv_general_dilated is kernels.conv_nhwc
        assert lax.conv1.conv_general_dilated is jax.lax.conv_general_dilated
        assert lax.conv2.conv_general_dilated is jax.lax.conv_general_dilated
        x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3)) * 50
        np.testing.assert_allclose(fast(x), lax(x), rtol=1e-4, atol=1e-9)
        auto = models.CaffeCifar10(rngs=nnx.Rngs(0))
        assert auto.kernels == ("fast" if jax.default_backend() == "cpu" else "lax")

    def test_build_model_errors(self):
        with pytest.raises(ValueError, match="model must be one of"):
            models.build_model("vgg", 10, (32, 32, 3))
        with pytest.raises(ValueError, match="kernels must be one of"):
            models.build_model("mlp", 10, (32, 32, 3), kernels="quick")
        with pytest.raises(ValueError, match="takes 32x32 images"):
            models.build_model("caffe_cifar10", 10, (28, 28, 1))


def test_batchnorm_model_trains_and_updates_its_statistics():
    """Regression: BatchNorm statistics were mutated across trace levels (ResNet could
    not train in the harness)."""
    data = tiny_dataset(n_train=64, n_test=20, size=8)
    config = TrainConfig(model="resnet20", optimizer="momentum", caffe_multipliers=False,
                         batch_size=16, num_steps=2, eval_every=2, log_every=2,
                         preprocess="standard")
    trainer = Trainer(config, data, optax.constant_schedule(0.05))
    state, losses = trainer.run_steps(trainer.initial_state, 0, 2)
    assert np.isfinite(np.asarray(losses)).all()
    before = jax.tree.leaves(trainer.initial_state["rest"])
    after = jax.tree.leaves(state["rest"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    assert 0 <= trainer.evaluate(state)["test_accuracy"] <= 1
