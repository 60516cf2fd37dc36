"""The range test on models as Flax users write them: an NNX module with BatchNorm,
dropout, both, or a layer with nothing to train, against NNX's own training loop written
by hand, and the caller's module left as it was."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import clr_jax


class Net(nnx.Module):
    """A small network; BatchNorm and dropout optional; a frozen layer (no nnx.Param).
    (Dense layers: the docs' CNN page covers convolutions; these tests stay quick.)"""

    def __init__(self, *, batch_norm: bool, dropout: bool, rngs: nnx.Rngs):
        self.conv = nnx.Linear(12, 6, rngs=rngs)
        self.bn = nnx.BatchNorm(6, momentum=0.8, rngs=rngs) if batch_norm else None
        self.drop = nnx.Dropout(0.3, rngs=rngs) if dropout else None
        # a fixed random projection: a layer with no parameters to update
        self.projection = nnx.Variable(jax.random.normal(rngs.params(), (6, 6)) / 3)
        self.out = nnx.Linear(6, 4, rngs=rngs)

    def __call__(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        x = jax.nn.relu(x) @ self.projection[...]
        if self.drop is not None:
            x = self.drop(x)
        return self.out(x)


def snapshot(model):
    """Every array of the module's state as NumPy (keys as their data)."""
    def plain(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return np.asarray(jax.random.key_data(x))
        return np.asarray(x)

    return jax.tree.map(plain, nnx.state(model))


def loss_fn(model, batch):
    logits = model(batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def eval_fn(model):
    logits = model(TEST["x"])
    return {"accuracy": jnp.mean(logits.argmax(-1) == TEST["y"]),
            "logit_sum": jnp.sum(logits)}


def _data(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.normal(size=(n, 12)) + y[:, None] * 0.5
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


x, y = _data(12 * 16, 0)
BATCHES = {"x": x.reshape(12, 16, 12), "y": y.reshape(12, 16)}
TEST = dict(zip(("x", "y"), _data(64, 1)))
KINDS = {"batch norm": dict(batch_norm=True, dropout=False),
         "dropout": dict(batch_norm=False, dropout=True),
         "both": dict(batch_norm=True, dropout=True),
         "neither": dict(batch_norm=False, dropout=False)}


def by_hand(model, rates, eval_at):
    """NNX's own loop: nnx.Optimizer over the module's nnx.Param, one update per rate;
    the evaluation in eval mode after the given steps. Losses, evaluations."""
    model = nnx.clone(model)
    table = jnp.asarray(rates, jnp.float32)  # the rate of each update, by its count
    optimizer = nnx.Optimizer(model, optax.sgd(lambda count: table[count], momentum=0.9),
                              wrt=nnx.Param)
    @nnx.jit
    def step_fn(model, optimizer, batch):
        loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
        optimizer.update(model, grads)
        return loss

    losses, evaluations = [], []
    for step in range(len(rates)):
        losses.append(float(step_fn(model, optimizer,
                                    jax.tree.map(lambda b: b[step], BATCHES))))
        if step + 1 in eval_at:
            model.eval()
            evaluations.append({k: float(v) for k, v in eval_fn(model).items()})
            model.train()
    return np.array(losses), evaluations


@pytest.mark.parametrize("kind", KINDS)
def test_module_range_test_equals_nnxs_own_loop(kind):
    model = Net(**KINDS[kind], rngs=nnx.Rngs(0))
    before = snapshot(model)
    result = clr_jax.range_test(loss_fn, model, BATCHES, min_lr=0.01, max_lr=0.5,
                                num_steps=12, optimizer=lambda lr: optax.sgd(lr, momentum=0.9),
                                eval_fn=eval_fn, eval_every=6, diverge_threshold=1e6)
    losses, evaluations = by_hand(model, result.learning_rates, eval_at=(6, 12))
    np.testing.assert_allclose(result.losses, losses, rtol=2e-5)
    assert result.eval_mode == "eval"
    for name in ("accuracy", "logit_sum"):
        np.testing.assert_allclose(result.eval_metrics[name],
                                   [e[name] for e in evaluations], rtol=2e-4, atol=1e-5)
    # the caller's module, its statistics and random streams, are as they were
    jax.tree.map(np.testing.assert_array_equal, before, snapshot(model))


def test_batch_statistics_are_gathered_and_used_in_eval_mode():
    """Evaluating with the running statistics the test gathered differs from evaluating
    with each batch's own ("batch_stats"), and both differ from the untrained start."""
    model = Net(batch_norm=True, dropout=False, rngs=nnx.Rngs(0))
    kwargs = dict(min_lr=0.01, max_lr=0.1, num_steps=12, eval_fn=eval_fn, eval_every=12)
    running = clr_jax.range_test(loss_fn, model, BATCHES, **kwargs)
    batch = clr_jax.range_test(loss_fn, model, BATCHES, eval_mode="batch_stats", **kwargs)
    assert running.eval_mode == "eval" and batch.eval_mode == "batch_stats"
    np.testing.assert_array_equal(running.losses, batch.losses)
    assert running.eval_metrics["logit_sum"][0] != batch.eval_metrics["logit_sum"][0]
    # batch statistics by hand: a copy of the module whose BatchNorm uses them
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    assert float(rest["bn"]["mean"][...].sum()) == 0.0  # untouched


def test_dropout_varies_with_the_seed():
    model = Net(batch_norm=False, dropout=True, rngs=nnx.Rngs(0))
    kwargs = dict(min_lr=0.01, max_lr=0.1, num_steps=6)
    a = clr_jax.range_test(loss_fn, model, BATCHES, seed=0, **kwargs)
    again = clr_jax.range_test(loss_fn, model, BATCHES, seed=0, **kwargs)
    b = clr_jax.range_test(loss_fn, model, BATCHES, seed=1, **kwargs)
    np.testing.assert_array_equal(a.losses, again.losses)
    assert not np.array_equal(a.losses, b.losses)


def test_functional_model_state_as_flax_returns_it():
    """The same model as arrays: loss_fn(params, model_state, batch) -> (loss, state)."""
    model = Net(batch_norm=True, dropout=False, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def functional(p, state, batch):
        m = nnx.merge(graphdef, p, state, copy=True)
        return loss_fn(m, batch), nnx.state(m, nnx.Not(nnx.Param))

    kwargs = dict(min_lr=0.01, max_lr=0.5, num_steps=12)
    arrays = clr_jax.range_test(functional, params, BATCHES, model_state=rest, **kwargs)
    module = clr_jax.range_test(loss_fn, model, BATCHES, **kwargs)
    np.testing.assert_array_equal(arrays.losses, module.losses)
    with pytest.raises(ValueError, match=r"must return \(loss, new_model_state\)"):
        clr_jax.range_test(lambda p, s, b: functional(p, s, b)[0], params, BATCHES,
                           model_state=rest, **kwargs)


def test_parallel_range_test_of_a_module():
    model = Net(batch_norm=True, dropout=True, rngs=nnx.Rngs(0))
    before = snapshot(model)
    result = clr_jax.parallel_range_test(
        loss_fn, model, BATCHES, learning_rates=[0.01, 0.1], num_steps=6, seeds=(0, 1),
        optimizer=lambda lr: optax.sgd(lr, momentum=0.9), eval_fn=eval_fn,
        vectorize=True)
    assert result.losses.shape == (2, 2, 6) and result.eval_mode == "eval"
    # seed 0, rate 0.01 is NNX's own loop at a fixed rate
    losses, _ = by_hand(model, [0.01] * 6, eval_at=())
    np.testing.assert_allclose(result.losses[0, 0], losses, rtol=2e-5)
    assert not np.array_equal(result.losses[0], result.losses[1])  # dropout per seed
    jax.tree.map(np.testing.assert_array_equal, before, snapshot(model))


def test_find_bounds_takes_a_module():
    model = Net(batch_norm=True, dropout=True, rngs=nnx.Rngs(0))
    big = {k: jnp.concatenate([v] * 10) for k, v in BATCHES.items()}
    found = clr_jax.find_bounds(loss_fn, model, big, min_lr=1e-4, max_lr=100.0,
                                num_steps=100, seeds=(0, 1, 2), strict=False)
    assert len(found.results) >= 3 and found.max_lr > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"model_state": {}}, "carries its own state"),
    ({"eval_mode": "sometimes", "eval_fn": eval_fn, "eval_every": 2}, "eval_mode must be"),
])
def test_bad_module_arguments(kwargs, match):
    model = Net(batch_norm=True, dropout=False, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=match):
        clr_jax.range_test(loss_fn, model, BATCHES, min_lr=0.01, max_lr=0.1, num_steps=4,
                           **kwargs)


def test_eval_mode_needs_a_module():
    with pytest.raises(ValueError, match="eval_mode='eval' is for an NNX module"):
        clr_jax.range_test(lambda p, b: jnp.sum(p * b["x"][0, 0, 0, 0]), jnp.ones(3),
                           BATCHES, min_lr=0.01, max_lr=0.1, num_steps=4, eval_mode="eval")
