"""The range test and bound suggestion, on problems whose answers are known."""

import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import clr_jax
from clr_jax import _backend, plotting
from tests.helpers import CRITICAL_LR, least_squares, loss_fn, synthetic_result

class TestDivergence:
    def test_stops_soon_after_critical_rate(self, linear_result):
        r = linear_result
        assert r.stop_reason == "diverged" and r.stopped_early
        assert CRITICAL_LR < r.learning_rates[-1] < 1.5 * CRITICAL_LR
        assert len(r.losses) == r.stop_step < 300

    @pytest.mark.parametrize("method, lowest", [
        ("valley", CRITICAL_LR / 50), ("minimum", CRITICAL_LR / 50),
        ("steep", CRITICAL_LR / 50),
        # torch-lr-finder's rule reads the steepest fall per point, which on an
        # exponential ramp can be the early fall of a test that has just begun
        ("steepest", 0.0)])
    @pytest.mark.parametrize("mode", ["linear", "exponential"])
    def test_loss_rules_below_critical_but_not_absurdly(self, batches, method, lowest, mode):
        r = clr_jax.range_test(loss_fn, jnp.zeros(5), batches, min_lr=0.01 if mode == "linear"
                               else 1e-3, max_lr=3.0, num_steps=300, mode=mode)
        b = clr_jax.suggest_bounds(r, method)
        assert lowest < b.max_lr < CRITICAL_LR
        assert b.base_lr == pytest.approx(b.max_lr / 4)

    def test_non_finite_loss_stops_without_exception(self, batches):
        def poisoned(w, batch):  # NaN once w leaves a ball, before divergence is seen
            return loss_fn(w, batch) + jnp.where(jnp.abs(w).max() > 1e3, jnp.nan, 0.0)

        r = clr_jax.range_test(poisoned, jnp.zeros(5), batches, min_lr=0.01, max_lr=3.0,
                               num_steps=300, diverge_threshold=1e30)
        assert r.stop_reason == "non-finite loss"
        assert np.isnan(r.losses[-1]) and np.isfinite(r.losses[:-1]).all()
        b = clr_jax.suggest_bounds(r, "valley")
        assert 0 < b.max_lr < CRITICAL_LR

    def test_runs_all_steps_when_stable(self, batches):
        r = clr_jax.range_test(loss_fn, jnp.zeros(5), batches, min_lr=0.001, max_lr=0.5,
                               num_steps=120)
        assert r.stop_reason is None and r.stop_step is None and len(r.losses) == 120
        np.testing.assert_allclose(r.learning_rates[[0, -1]], [0.001, 0.5], rtol=1e-6)


class TestMechanics:
    def test_ramps(self, batches):
        lin = clr_jax.range_test(loss_fn, jnp.zeros(5), batches, min_lr=0.1, max_lr=0.5,
                                 num_steps=5)
        np.testing.assert_allclose(lin.learning_rates, [0.1, 0.2, 0.3, 0.4, 0.5], rtol=1e-6)
        exp = clr_jax.range_test(loss_fn, jnp.zeros(5), batches, min_lr=1e-4, max_lr=1e-0,
                                 num_steps=5, mode="exponential")
        np.testing.assert_allclose(exp.learning_rates, [1e-4, 1e-3, 1e-2, 1e-1, 1.0], rtol=1e-5)

    def test_losses_match_a_hand_written_loop(self, batches):
        """Raw losses and the bias-corrected smoothing, recomputed step by step."""
        r = clr_jax.range_test(loss_fn, jnp.zeros(5), batches, min_lr=0.01, max_lr=0.1,
                               num_steps=30, smoothing=0.9)
        w, avg, expected, smooth = np.zeros(5), 0.0, [], []
        for t in range(30):
            lr = 0.01 + 0.09 * t / 29
            x, y = np.asarray(batches["x"][t], np.float64), np.asarray(batches["y"][t], np.float64)
            residual = x @ w - y
            loss = np.mean(residual**2)
            w = w - lr * 2 * x.T @ residual / len(y)
            avg = 0.9 * avg + 0.1 * loss
            expected.append(loss)
            smooth.append(avg / (1 - 0.9 ** (t + 1)))
        np.testing.assert_allclose(r.losses, expected, rtol=1e-4)
        np.testing.assert_allclose(r.smoothed_losses, smooth, rtol=1e-4)

    def test_params_untouched_and_reproducible(self, batches):
        params = {"w": jnp.ones(5), "b": np.zeros(())}
        before = jax.tree.map(np.array, params)

        def loss(p, batch):
            return jnp.mean((batch["x"] @ p["w"] + p["b"] - batch["y"]) ** 2)

        a = clr_jax.range_test(loss, params, batches, min_lr=0.01, max_lr=2, num_steps=100)
        b = clr_jax.range_test(loss, params, batches, min_lr=0.01, max_lr=2, num_steps=100)
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, params), before)
        np.testing.assert_array_equal(a.losses, b.losses)

    def test_compiler_options_reach_the_compiler(self, batches):
        kwargs = dict(min_lr=0.01, max_lr=0.5, num_steps=50)
        plain = clr_jax.range_test(loss_fn, jnp.zeros(5), batches, **kwargs)
        legacy = clr_jax.range_test(loss_fn, jnp.zeros(5), batches, **kwargs,
                                    compiler_options={"xla_cpu_use_fusion_emitters": False})
        np.testing.assert_allclose(legacy.losses, plain.losses, rtol=1e-5)
        with pytest.raises(Exception, match="no_such_xla_option"):
            clr_jax.range_test(loss_fn, jnp.zeros(5), batches, **kwargs,
                               compiler_options={"no_such_xla_option": True})

    def test_iterable_batches_equal_stacked(self, batches):
        stacked = clr_jax.range_test(loss_fn, jnp.zeros(5), batches, min_lr=0.01, max_lr=0.5,
                                     num_steps=47)
        items = ({k: x[i] for k, x in batches.items()} for i in range(300))
        streamed = clr_jax.range_test(loss_fn, jnp.zeros(5), items, min_lr=0.01, max_lr=0.5,
                                      num_steps=47)
        np.testing.assert_allclose(streamed.losses, stacked.losses, rtol=1e-6)

    def test_short_stack_is_cycled(self, batches):
        few = {k: x[:3] for k, x in batches.items()}
        r = clr_jax.range_test(loss_fn, jnp.zeros(5), few, min_lr=1e-6, max_lr=2e-6,
                               num_steps=7)
        # With a negligible rate, the loss repeats with the batches' period of 3.
        np.testing.assert_allclose(r.losses[:4], r.losses[3:], rtol=1e-4)

    def test_eval_fn_every_n_steps(self, batches):
        calls = []

        def eval_fn(w):
            calls.append(None)
            return {"accuracy": -jnp.sum(w**2), "norm": jnp.linalg.norm(w)}

        r = clr_jax.range_test(loss_fn, jnp.zeros(5), batches, min_lr=0.01, max_lr=0.5,
                               num_steps=100, eval_fn=eval_fn, eval_every=25)
        np.testing.assert_array_equal(r.eval_steps, [25, 50, 75, 100])
        np.testing.assert_allclose(r.eval_learning_rates, r.learning_rates[[24, 49, 74, 99]])
        assert set(r.eval_metrics) == {"accuracy", "norm"} and len(calls) == 4

    def test_key_argument_reproducible_by_seed(self, batches):
        def noisy(w, batch, key):
            return loss_fn(w, batch) * (1 + 0.1 * jax.random.normal(key))

        run = lambda seed: clr_jax.range_test(  # noqa: E731
            noisy, jnp.zeros(5), batches, min_lr=0.01, max_lr=0.2, num_steps=20, seed=seed)
        np.testing.assert_array_equal(run(1).losses, run(1).losses)
        assert not np.array_equal(run(1).losses, run(2).losses)

    @pytest.mark.parametrize("optimizer", [
        optax.sgd, lambda lr: optax.sgd(lr, momentum=0.9), optax.adam,
        lambda lr: optax.chain(optax.clip_by_global_norm(10.0), optax.adamw(lr)),
    ], ids=["sgd", "momentum", "adam", "chain"])
    def test_optimizers_and_pytree_params(self, batches, optimizer):
        params = {"layer": {"w": jnp.zeros(5)}, "bias": jnp.zeros(())}

        def loss(p, batch):
            return jnp.mean((batch["x"] @ p["layer"]["w"] + p["bias"] - batch["y"]) ** 2)

        r = clr_jax.range_test(loss, params, batches, min_lr=1e-4, max_lr=10.0, num_steps=200,
                               optimizer=optimizer, mode="exponential")
        assert np.isfinite(r.losses[: max(1, len(r.losses) - 1)]).all()
        assert r.smoothed_losses.min() < 0.5 * r.losses[0]  # it trained
        b = clr_jax.suggest_bounds(r, "valley")
        assert 1e-4 <= b.base_lr < b.max_lr <= 10.0

    def test_json_round_trip(self, tmp_path, batches):
        r = clr_jax.range_test(loss_fn, jnp.zeros(5), batches, min_lr=0.01, max_lr=3.0,
                               num_steps=300, eval_fn=lambda w: {"accuracy": -w.sum()},
                               eval_every=40)
        path = tmp_path / "rt.json"
        r.save_json(path)
        back = clr_jax.RangeTestResult.from_dict(json.loads(path.read_text()))
        np.testing.assert_array_equal(back.losses, r.losses)
        np.testing.assert_array_equal(back.eval_metrics["accuracy"], r.eval_metrics["accuracy"])
        assert back.stop_reason == r.stop_reason and back.stop_step == r.stop_step


@pytest.fixture(scope="module")
def parallel_result(batches):
    return clr_jax.parallel_range_test(
        loss_fn, None, batches, learning_rates=np.geomspace(0.01, 3.0, 10), num_steps=100,
        seeds=(0, 1, 2), init_fn=lambda key: jax.random.normal(key, (5,)),
        eval_fn=lambda w: {"accuracy": -loss_fn(w, jax.tree.map(lambda x: x[0], batches))})


class TestParallel:
    @pytest.fixture
    def result(self, parallel_result):
        return parallel_result

    def test_shapes_and_divergence(self, result):
        assert result.losses.shape == (3, 10, 100) and result.final_losses.shape == (3, 10)
        above = result.learning_rates > CRITICAL_LR * 1.05
        assert result.diverged[:, above].all() and not result.diverged[:, ~above].any()
        assert result.eval_metrics["accuracy"].shape == (3, 10)

    def test_vectorized_equals_sequential(self, batches):
        kwargs = dict(learning_rates=[0.05, 0.5, 2.0], num_steps=23, seeds=(3, 4),
                      init_fn=lambda key: jax.random.normal(key, (5,)),
                      eval_fn=lambda w: {"norm": jnp.linalg.norm(w)})
        a = clr_jax.parallel_range_test(loss_fn, None, batches, vectorize=True, **kwargs)
        b = clr_jax.parallel_range_test(loss_fn, None, batches, vectorize=False, **kwargs)
        np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5)
        np.testing.assert_allclose(a.eval_metrics["norm"], b.eval_metrics["norm"], rtol=1e-5)
        assert a.diverged[:, 2].all() and not a.diverged[:, 0].any()

    def test_seeds_differ(self, result):
        assert not np.allclose(result.losses[0, 0], result.losses[1, 0])

    def test_member_equals_plain_training(self, batches):
        rates = np.array([0.05, 0.3])
        r = clr_jax.parallel_range_test(loss_fn, jnp.zeros(5), batches, learning_rates=rates,
                                        num_steps=20, optimizer=lambda lr: optax.sgd(lr, 0.9))
        for k, lr in enumerate(rates):
            tx = optax.sgd(float(lr), 0.9)
            w, state, losses = jnp.zeros(5), None, []
            state = tx.init(w)
            for t in range(20):
                batch = jax.tree.map(lambda x: x[t], batches)
                loss, g = jax.value_and_grad(loss_fn)(w, batch)
                updates, state = tx.update(g, state, w)
                w = optax.apply_updates(w, updates)
                losses.append(float(loss))
            np.testing.assert_allclose(r.losses[0, k], losses, rtol=1e-5)

    @pytest.mark.parametrize("vectorize", [False, True])
    def test_compiler_options_reach_the_compiler(self, batches, vectorize):
        kwargs = dict(learning_rates=[0.05, 0.3], num_steps=10, vectorize=vectorize)
        plain = clr_jax.parallel_range_test(loss_fn, jnp.zeros(5), batches, **kwargs)
        legacy = clr_jax.parallel_range_test(
            loss_fn, jnp.zeros(5), batches, **kwargs,
            compiler_options={"xla_cpu_use_fusion_emitters": False})
        np.testing.assert_allclose(legacy.losses, plain.losses, rtol=1e-5)
        with pytest.raises(Exception, match="no_such_xla_option"):
            clr_jax.parallel_range_test(loss_fn, jnp.zeros(5), batches, **kwargs,
                                        compiler_options={"no_such_xla_option": True})

    @pytest.mark.parametrize("method", ["steepest", "valley", "minimum", "paper_peak"])
    def test_suggestions(self, result, method):
        b = clr_jax.suggest_bounds(result, method)
        assert 0.01 / 4 <= b.base_lr < b.max_lr < CRITICAL_LR

    def test_errors(self, batches):
        with pytest.raises(ValueError, match="learning_rates is empty"):
            clr_jax.parallel_range_test(loss_fn, jnp.zeros(5), batches, learning_rates=[],
                                        num_steps=5)
        with pytest.raises(ValueError, match="learning_rates must be a finite number > 0"):
            clr_jax.parallel_range_test(loss_fn, jnp.zeros(5), batches,
                                        learning_rates=[0.1, -1.0], num_steps=5)
        with pytest.raises(ValueError, match="seeds is empty"):
            clr_jax.parallel_range_test(loss_fn, jnp.zeros(5), batches, learning_rates=[0.1],
                                        num_steps=5, seeds=())


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_lr=0.1, max_lr=0.1, num_steps=10), "max_lr must be > min_lr"),
    (dict(min_lr=0.5, max_lr=0.1, num_steps=10), "max_lr must be > min_lr"),
    (dict(min_lr=0.0, max_lr=0.1, num_steps=10), "min_lr must be a finite number > 0"),
    (dict(min_lr=0.01, max_lr=float("inf"), num_steps=10), "max_lr"),
    (dict(min_lr=0.01, max_lr=0.1, num_steps=1), "num_steps must be an integer >= 2"),
    (dict(min_lr=0.01, max_lr=0.1, num_steps=10.5), "num_steps"),
    (dict(min_lr=0.01, max_lr=0.1, num_steps=10, mode="log"), "mode must be one of"),
    (dict(min_lr=0.01, max_lr=0.1, num_steps=10, eval_every=5), "eval_fn is not"),
    (dict(min_lr=0.01, max_lr=0.1, num_steps=10, eval_fn=lambda p: {}), "eval_every is not"),
    (dict(min_lr=0.01, max_lr=0.1, num_steps=10, eval_fn=lambda p: {}, eval_every=0),
     "eval_every must be a positive integer"),
    (dict(min_lr=0.01, max_lr=0.1, num_steps=10, smoothing=1.0), r"smoothing must be in \[0, 1\)"),
    (dict(min_lr=0.01, max_lr=0.1, num_steps=10, diverge_threshold=1.0), "diverge_threshold"),
    (dict(min_lr=0.01, max_lr=0.1, num_steps=10, optimizer=lambda lr: lr), "optimizer must map"),
    (dict(min_lr=0.01, max_lr=0.1, num_steps=10, optimizer=optax.sgd(0.1)),
     "not a built transformation"),
    (dict(min_lr=0.01, max_lr=0.1, num_steps=10, optimizer="sgd"), "function of the learning"),
    (dict(min_lr=0.01, max_lr=0.1, num_steps=10, eval_every=5, eval_fn=lambda p: 0.5),
     "eval_fn must return a dict of scalar metrics"),
    (dict(min_lr=0.01, max_lr=0.1, num_steps=10, eval_every=5,
          eval_fn=lambda p: {"accuracy": p}), "metric 'accuracy' must be a scalar, got shape"),
])
def test_range_test_bad_arguments(batches, kwargs, match):
    with pytest.raises(ValueError, match=match):
        clr_jax.range_test(loss_fn, jnp.zeros(5), batches, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(optimizer=optax.adam(0.1)), "not a built transformation"),
    (dict(eval_fn=lambda p: jnp.sum(p)), "got a single value"),
    (dict(eval_fn=lambda p: {"w": p}), "metric 'w' must be a scalar"),
    (dict(eval_fn=lambda p: {"n": float(np.sum(p))}), "must be a JAX function"),
])
def test_parallel_range_test_bad_arguments(batches, kwargs, match):
    with pytest.raises(ValueError, match=match):
        clr_jax.parallel_range_test(loss_fn, jnp.zeros(5), batches, learning_rates=[0.1],
                                    num_steps=4, **kwargs)


@pytest.mark.parametrize("bad_loss, params, match", [
    (lambda w, b: b["x"] @ w, jnp.zeros(5),
     r"scalar loss; it returned an array of shape \(256,\)"),
    (lambda w, b: (jnp.sum(w), {}), jnp.zeros(5), "the loss alone .* returned a tuple"),
    (lambda w, b: jnp.sum(w > 0), jnp.zeros(5), "floating-point loss; it returned int32"),
    (loss_fn, {"w": jnp.zeros(5), "count": jnp.zeros((), jnp.int32)},
     r"params\['count'\] is of dtype int32"),
])
def test_a_loss_or_params_the_test_cannot_train_is_named(batches, bad_loss, params, match):
    """What loss_fn returned, or which leaf of params, in words, before any training:
    not JAX's message from deep inside the gradient."""
    if isinstance(params, dict) and bad_loss is loss_fn:
        bad_loss = lambda p, b: loss_fn(p["w"], b)  # noqa: E731
    for test in (lambda: clr_jax.range_test(bad_loss, params, batches, min_lr=0.01,
                                            max_lr=0.1, num_steps=10),
                 lambda: clr_jax.parallel_range_test(bad_loss, params, batches,
                                                     learning_rates=[0.1], num_steps=4)):
        with pytest.raises(ValueError, match=match):
            test()


def test_batches_run_out(batches):
    items = ({k: x[i] for k, x in batches.items()} for i in range(5))
    with pytest.raises(ValueError, match="batches ran out after 5 of num_steps=10"):
        clr_jax.range_test(loss_fn, jnp.zeros(5), items, min_lr=0.01, max_lr=0.1, num_steps=10)


def test_mismatched_batch_axes():
    bad = {"x": jnp.zeros((4, 2, 5)), "y": jnp.zeros((3, 2))}
    with pytest.raises(ValueError, match="one leading step axis"):
        clr_jax.range_test(loss_fn, jnp.zeros(5), bad, min_lr=0.01, max_lr=0.1, num_steps=10)


def test_plots(tmp_path, linear_result):
    bounds = [clr_jax.suggest_bounds(linear_result, m) for m in ("steepest", "valley")]
    plotting.save_figure(plotting.plot_range_test(linear_result, bounds), tmp_path / "a.png")
    rates = np.linspace(0.001, 0.01, 10)
    synthetic = synthetic_result(rates, np.linspace(0.1, 0.8, 10))
    plotting.save_figure(plotting.plot_range_test(synthetic, clr_jax.suggest_bounds(synthetic)),
                         tmp_path / "b.png")
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").exists()


def test_the_plot_names_every_rule_below_the_curves(linear_result):
    """Every rule read (more than the colours of one cycle) has its legend entry, with
    its interval and verdict, and the legend sits below the axes, off the curves."""
    methods = [m for m in clr_jax.suggest.METHODS if m not in ("auto", "paper", "paper_peak")]
    bounds = [clr_jax.suggest_bounds(linear_result, m) for m in methods]
    figure = plotting.plot_range_test(linear_result, bounds)
    axes = figure.axes[0]
    labels = [t.get_text() for t in axes.get_legend().get_texts()]
    for b in bounds:
        entry = next(label for label in labels if label.startswith(f"{b.method}: "))
        assert f"{b.max_lr:.3g}" in entry and ("flagged" in entry) == (not b.trusted)
    figure.canvas.draw()
    legend = axes.get_legend().get_window_extent()
    assert legend.y1 <= axes.get_window_extent().y0  # below the axes


@pytest.mark.parametrize("conv", ["lax", "conv_nhwc"])
def test_convolutional_models_take_the_unrolled_path_with_same_numbers(monkeypatch, conv):
    """On CPU a conv model runs in unrolled groups, unless its gradient's convolutions
    are all loop friendly (`kernels.conv_nhwc`); losses equal a plain Python loop."""
    from clr_jax.harness.kernels import conv_nhwc
    rt = importlib.import_module("clr_jax.range_test")  # the module, not the function
    shapes = []
    group_size = _backend.group_size
    monkeypatch.setattr(_backend, "group_size",
                        lambda chunk, conv: shapes.append(group_size(chunk, conv)) or shapes[-1])
    rng = np.random.default_rng(0)
    batches = {"x": jnp.asarray(rng.normal(size=(12, 4, 8, 8, 3)), jnp.float32),
               "y": jnp.asarray(rng.integers(0, 2, (12, 4)), jnp.int32)}
    params = {"k": jnp.asarray(rng.normal(size=(3, 3, 3, 2)) * 0.1, jnp.float32)}

    def conv_loss(p, batch):
        fn = conv_nhwc if conv == "conv_nhwc" else jax.lax.conv_general_dilated
        y = fn(batch["x"], p["k"], (1, 1), ((1, 1), (1, 1)),
               dimension_numbers=("NHWC", "HWIO", "NHWC"))
        logits = y.mean(axis=(1, 2))
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    assert _backend.slow_in_loops(jax.make_jaxpr(jax.grad(
        lambda p: conv_loss(p, jax.tree.map(lambda x: x[0], batches))))(params)) == (
        conv == "lax")
    assert not _backend.slow_in_loops(jax.make_jaxpr(jax.grad(
        lambda w: loss_fn(w, jax.tree.map(lambda x: x[0], least_squares(2)))))(jnp.zeros(5)))
    result = clr_jax.range_test(conv_loss, params, batches, min_lr=0.01, max_lr=0.5,
                                num_steps=12, eval_fn=lambda p: {"n": jnp.sum(p["k"] ** 2)},
                                eval_every=6)
    tx, p, expected = optax.sgd(rt.ramp(0.01, 0.5, 12)), params, []
    state = tx.init(p)
    for t in range(12):
        loss, g = jax.value_and_grad(conv_loss)(p, jax.tree.map(lambda x: x[t], batches))
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
        expected.append(float(loss))
    np.testing.assert_allclose(result.losses, expected, rtol=1e-5)
    assert result.eval_metrics["n"][-1] == pytest.approx(float(jnp.sum(p["k"] ** 2)), rel=1e-5)
    # the path taken: 6-step chunks, unrolled whole on CPU, one scan elsewhere; with
    # loop-friendly convolutions one compiled loop (group_size is not asked)
    assert shapes == ([(6, jax.default_backend() == "cpu")] if conv == "lax" else [])


def test_a_second_test_reuses_the_program_while_the_loss_lives(batches):
    """The compiled program of a loss function is kept while the function lives, and
    goes (with everything the function holds: a model, device data) when it does."""
    import gc
    import weakref

    class Held:  # stands for a trainer and its device data, held by the loss
        pass

    def make_loss(held, traces):
        def loss(w, batch):
            traces.append(held)  # runs when the loss is traced, not when it is executed
            return loss_fn(w, batch)
        return loss

    traces = []
    loss = make_loss(Held(), traces)
    for max_lr in (0.5, 2.0):  # another ramp: the same program
        clr_jax.range_test(loss, jnp.zeros(5), batches, min_lr=0.01, max_lr=max_lr,
                           num_steps=50)
    assert len(traces) == 1
    probes = weakref.ref(loss), weakref.ref(traces[0])
    traces.clear()
    del loss
    gc.collect()
    assert probes[0]() is None and probes[1]() is None

    class Task:  # a bound method: the programs live as long as its object
        def loss(self, w, batch):
            self.traced = getattr(self, "traced", 0) + 1
            return loss_fn(w, batch)

    task = Task()
    for _ in range(2):
        clr_jax.range_test(task.loss, jnp.zeros(5), batches, min_lr=0.01, max_lr=1.0,
                           num_steps=50)
    assert task.traced == 1
    probe = weakref.ref(task)
    del task
    gc.collect()
    assert probe() is None
