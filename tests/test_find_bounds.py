"""Readings that carry their uncertainty: the "fall" rule, intervals, flags, and
`find_bounds`, on curves and problems whose answers are known."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import clr_jax
from tests.helpers import CRITICAL_LR, VARIANCES, least_squares, loss_fn


def curve(losses, lrs=None, *, accuracy=None, stopped=False, num_steps=None):
    """A sequential result with these raw losses (the smoothed ones equal), rates from
    an exponential ramp 1e-4 .. 1 unless given, and an optional accuracy curve read at
    every tenth point."""
    losses = np.asarray(losses, np.float64)
    n = losses.size
    lrs = np.geomspace(1e-4, 1.0, num_steps or n)[:n] if lrs is None else np.asarray(lrs)
    metrics, eval_lrs, eval_steps = {}, np.zeros(0), np.zeros(0, np.int64)
    if accuracy is not None:
        accuracy = np.asarray(accuracy, np.float64)
        eval_steps = np.linspace(n / accuracy.size, n, accuracy.size).astype(np.int64)
        eval_lrs, metrics = lrs[eval_steps - 1], {"accuracy": accuracy}
    return clr_jax.RangeTestResult(
        learning_rates=lrs, losses=losses, smoothed_losses=losses, eval_steps=eval_steps,
        eval_learning_rates=eval_lrs, eval_metrics=metrics,
        stop_reason="diverged" if stopped else None, stop_step=n if stopped else None,
        mode="exponential", min_lr=1e-4, max_lr=1.0, num_steps=num_steps or n)


def basin(n=200, low=1e-3, high=0.05, noise=0.0, seed=0):
    """A loss falling from 3 to 1 in log(rate) around ``low`` (a logistic step) and
    climbing back past 3 above ``high``, on the default ramp, with Gaussian noise."""
    lrs = np.geomspace(1e-4, 1.0, n)
    x = np.log(lrs)
    loss = 1 + 2 / (1 + np.exp((x - np.log(low)) * 4)) + 4 * np.clip(x - np.log(high), 0, None)
    return loss + noise * np.random.default_rng(seed).normal(size=n)


def codes(bounds):
    return {f.code for f in bounds.flags}


class TestEdgeRule:
    def test_reads_a_fifth_of_where_the_loss_turns_up(self):
        """Past its floor the basin's loss is 1 + 4 log(lr / 0.05): it has climbed back
        by a tenth of its fall (to 1.2) at lr = 0.05 e^0.05, and max_lr is a fifth of
        that (the default safety factor)."""
        b = clr_jax.suggest_bounds(curve(basin()))
        assert b.method == "edge"
        turn = 0.05 * np.exp(0.05)
        step = np.geomspace(1e-4, 1, 200)[1] / 1e-4
        # within the centred mean's half width (5 points) of the exact turn
        assert turn / step ** 5 <= b.evidence["lr_loss_turns_up"] <= turn * step ** 5
        assert b.max_lr == pytest.approx(b.evidence["lr_loss_turns_up"] / 5)
        assert b.base_lr == pytest.approx(b.max_lr / 4)
        assert clr_jax.suggest_bounds(curve(basin()), safety=2).max_lr == pytest.approx(
            b.evidence["lr_loss_turns_up"] / 2)
        with pytest.raises(ValueError, match="safety"):
            clr_jax.suggest_bounds(curve(basin()), safety=0.5)

    def test_stable_under_noise(self):
        clean = clr_jax.suggest_bounds(curve(basin())).max_lr
        for seed in range(5):
            noisy = clr_jax.suggest_bounds(curve(basin(noise=0.2, seed=seed)))
            assert clean / 1.5 < noisy.max_lr < clean * 1.5


class TestFallRule:
    def test_reads_the_ninety_percent_point_of_a_known_fall(self):
        """The logistic 1 + 2 / (1 + (lr / low)^4) has made 90% of its fall (from 3 to
        the floor 1) where 2 / (1 + (lr/low)^4) = 0.2, i.e. lr = low * 9^(1/4)."""
        loss = basin()
        b = clr_jax.suggest_bounds(curve(loss), "fall")
        expected = 1e-3 * 9 ** 0.25
        step = np.geomspace(1e-4, 1, 200)[1] / 1e-4  # the ramp's ratio per point
        assert expected / step ** 2 <= b.max_lr <= expected * step ** 2
        assert b.base_lr == pytest.approx(b.max_lr / 4)
        assert b.trusted, b.flags
        # where the loss turned up and came back to its start: the edge
        assert b.edge[0] < b.edge[1]
        assert 0.05 < b.edge[1] < 0.05 * np.exp(2 / 4) * step ** 2

    def test_noise_moves_the_reading_little(self):
        """Noise of a tenth of the fall: the reading stays within 1.5x of the clean one."""
        clean = clr_jax.suggest_bounds(curve(basin()), "fall").max_lr
        for seed in range(5):
            noisy = clr_jax.suggest_bounds(curve(basin(noise=0.2, seed=seed)), "fall")
            assert clean / 1.5 < noisy.max_lr < clean * 1.5
            assert noisy.max_interval[0] <= noisy.max_lr <= noisy.max_interval[1]

    def test_no_lag(self):
        """The exponential moving average of a steep fall lags it by tens of points; the
        centred mean the rule reads does not: a curve stepping down at point 100 reads
        close to point 100 whatever the smoothing factor of the test."""
        loss = np.r_[np.full(100, 3.0), np.full(60, 1.0), np.linspace(1, 9, 40)]
        b = clr_jax.suggest_bounds(curve(loss), "fall")
        lrs = np.geomspace(1e-4, 1.0, 200)
        assert lrs[95] <= b.max_lr <= lrs[105]


class TestFlags:
    def test_a_loss_still_falling_at_the_ramps_end(self):
        for method in ("edge", "fall"):
            b = clr_jax.suggest_bounds(curve(np.linspace(3, 1, 200)), method)
            assert "ramp_end" in codes(b)
            assert "raise max_lr" in b.flags[0].message

    def test_accuracy_peaking_at_the_ramps_end(self):
        for accuracy in (np.linspace(0.1, 0.6, 20),  # a monotone rise
                         np.r_[np.full(17, 0.1), 0.2, 0.3, 0.5]):  # a late peak
            for method in ("paper", "paper_peak"):
                b = clr_jax.suggest_bounds(curve(basin(), accuracy=accuracy), method)
                assert "ramp_end" in codes(b), method

    def test_pure_noise(self):
        loss = 2.3 + 0.05 * np.random.default_rng(0).normal(size=200)
        b = clr_jax.suggest_bounds(curve(loss), "fall")
        assert "below_noise" in codes(b)
        for method in ("valley", "steepest", "minimum"):
            assert "below_noise" in codes(clr_jax.suggest_bounds(curve(loss), method))

    def test_divergence_before_any_fall(self):
        loss = np.r_[np.full(30, 2.3), np.geomspace(2.3, 50, 20)]
        b = clr_jax.suggest_bounds(curve(loss, stopped=True, num_steps=200), "fall")
        assert "early_divergence" in codes(b)
        assert "lower it" in next(f.message for f in b.flags if f.code == "early_divergence")
        with pytest.raises(clr_jax.BoundsError, match="min_lr is too high") as error:
            clr_jax.suggest_bounds(curve([2.3, 4, 9], stopped=True, num_steps=200), "fall")
        assert error.value.flags[0].code == "early_divergence"

    def test_too_few_points(self):
        b = clr_jax.suggest_bounds(curve(basin(n=12)), "fall")
        assert "few_points" in codes(b)
        accuracy = np.array([0.1, 0.1, 0.3, 0.5, 0.5, 0.4])
        assert "few_points" in codes(clr_jax.suggest_bounds(curve(basin(), accuracy=accuracy),
                                                            "paper"))

    def test_repeats_that_disagree(self):
        results = [curve(basin(low=low)) for low in (1e-4 * 3, 1e-3, 1e-2 * 3)]
        b = clr_jax.suggest_bounds(results, "fall")
        assert "unstable" in codes(b)
        assert b.max_interval[1] / b.max_interval[0] > 2

    def test_a_clean_reading_has_none(self):
        assert clr_jax.suggest_bounds(curve(basin(noise=0.05)), "fall").trusted


class TestRepeats:
    def test_identical_repeats_give_a_point_interval(self):
        b = clr_jax.suggest_bounds([curve(basin())] * 3, "fall")
        assert b.max_interval == (b.max_lr, b.max_lr)
        assert b.evidence["repeat_max_lr"] == [b.max_lr] * 3

    def test_pooled_reading_is_the_median_curve(self):
        """Three repeats whose falls sit at 1e-3 / 2e-3 / 4e-3: the pooled median curve is
        the middle one wherever the curves are ordered, so it reads the middle repeat."""
        results = [curve(basin(low=low)) for low in (1e-3, 2e-3, 4e-3)]
        pooled = clr_jax.suggest_bounds(results, "fall")
        middle = clr_jax.suggest_bounds(results[1], "fall")
        assert pooled.max_lr == middle.max_lr
        assert pooled.evidence["repeat_max_lr"][0] < pooled.max_lr \
            < pooled.evidence["repeat_max_lr"][2]

    def test_interval_narrows_with_repeats(self):
        def width(k):
            results = [curve(basin(noise=0.3, seed=s)) for s in range(k)]
            lo, hi = clr_jax.suggest_bounds(results, "fall").max_interval
            return hi / lo
        assert width(12) < width(3)

    def test_repeats_must_share_a_ramp(self):
        other = curve(basin(), lrs=np.geomspace(1e-5, 1.0, 200))
        other = clr_jax.RangeTestResult(**{**other.__dict__, "min_lr": 1e-5})
        with pytest.raises(ValueError, match="must share one ramp"):
            clr_jax.suggest_bounds([curve(basin()), other], "fall")

    def test_round_trip(self):
        b = clr_jax.suggest_bounds([curve(basin(noise=0.1, seed=s)) for s in range(3)])
        assert clr_jax.Bounds.from_dict(b.to_dict()) == b
        assert "max_lr" in b.describe()


def test_the_edge_covers_the_stability_limit_of_least_squares():
    """Stochastic least squares whose Hessian is 2 diag(VARIANCES): plain SGD diverges
    above CRITICAL_LR = 1 / max variance. The edge read from repeated tests (each its
    own order of the same batches) brackets it, and max_lr sits well below it."""
    found = clr_jax.find_bounds(loss_fn, jnp.zeros(VARIANCES.size), least_squares(),
                                min_lr=1e-3, max_lr=10.0, num_steps=200, optimizer=optax.sgd,
                                seeds=(0, 1, 2))
    low, high = found.bounds.edge
    assert low < CRITICAL_LR < high
    assert found.max_lr < CRITICAL_LR / 3
    assert found.trusted


class TestFindBounds:
    def test_params_untouched_and_first_repeat_is_a_plain_test(self):
        params = jnp.zeros(VARIANCES.size)
        batches = least_squares()
        found = clr_jax.find_bounds(loss_fn, params, batches, min_lr=1e-3, max_lr=10.0,
                                    num_steps=100, seeds=(5, 6))
        assert not np.any(np.asarray(params))
        plain = clr_jax.range_test(loss_fn, params, batches, min_lr=1e-3, max_lr=10.0,
                                   num_steps=100, mode="exponential", seed=5)
        np.testing.assert_array_equal(found.results[0].losses, plain.losses)
        # the second repeat reads the batches in another order: other losses
        assert not np.array_equal(found.results[1].losses[1:10], plain.losses[1:10])

    def test_init_fn_and_batches_per_seed(self):
        seen = []

        def batches(seed, num_steps):
            seen.append((seed, num_steps))
            return least_squares(num_batches=num_steps, seed=0)

        found = clr_jax.find_bounds(
            loss_fn, None, batches, init_fn=lambda key: 0.1 * jax.random.normal(key, (5,)),
            min_lr=1e-3, max_lr=10.0, num_steps=120, seeds=(0, 1, 2))
        assert seen == [(0, 120), (1, 120), (2, 120)]
        assert len({float(r.losses[0]) for r in found.results}) == 3  # three starts

    def test_a_short_ramp_is_extended(self):
        """The ramp stops at 0.05, where the loss still falls: the first reading is at
        the ramp's end; the next round's ramp reaches 0.5 and finds the turn."""
        rounds = []
        found = clr_jax.find_bounds(loss_fn, jnp.zeros(5), least_squares(), min_lr=1e-4,
                                    max_lr=0.05, num_steps=150, optimizer=optax.sgd,
                                    on_round=rounds.append)
        assert [r["max_lr"] for r in found.rounds][:2] == [0.05, 0.5]
        assert "ramp_end" in {f["code"] for f in found.rounds[0]["flags"]}
        assert found.trusted and rounds == list(found.rounds)
        assert found.steps_run == sum(len(r.losses) for r in found.results) + sum(
            r["steps_run"] for r in found.rounds[:-1])

    def test_no_learning_stops_with_a_clear_error(self):
        """A loss that does not depend on the parameters: nothing to read, however long
        the test; after max_rounds rounds (twice the steps each) the error says why."""
        def noise_loss(w, batch):
            return 2.3 + 0.0 * jnp.sum(w) + 0.05 * jnp.mean(batch["x"])

        with pytest.raises(clr_jax.BoundsError, match="no trusted bounds after 2") as error:
            clr_jax.find_bounds(noise_loss, jnp.zeros(5), least_squares(), num_steps=60,
                                max_rounds=2)
        assert {f.code for f in error.value.flags} & {"below_noise", "unstable", "ramp_end"}
        assert [r["num_steps"] for r in error.value.rounds] == [60, 120]
        found = clr_jax.find_bounds(noise_loss, jnp.zeros(5), least_squares(), num_steps=60,
                                    max_rounds=1, strict=False)
        assert not found.trusted

    def test_save_and_load(self, tmp_path):
        found = clr_jax.find_bounds(loss_fn, jnp.zeros(5), least_squares(), min_lr=1e-3,
                                    max_lr=10.0, num_steps=80, seeds=(0, 1))
        found.save_json(tmp_path / "found.json")
        import json

        back = clr_jax.FoundBounds.from_dict(json.loads((tmp_path / "found.json").read_text()))
        assert back.bounds == found.bounds and back.rounds == found.rounds
        np.testing.assert_array_equal(back.results[1].losses, found.results[1].losses)

    @pytest.mark.parametrize("kwargs, match", [
        ({"seeds": ()}, "seeds is empty"),
        ({"seeds": (1, 1)}, "must differ"),
        ({"max_rounds": 0}, "max_rounds"),
        ({"mode": "cubic"}, "mode must be one of"),
        ({"init_fn": 3}, "init_fn must be a function"),
        ({"min_lr": 1.0, "max_lr": 0.1}, "max_lr must be > min_lr"),
    ])
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            clr_jax.find_bounds(loss_fn, jnp.zeros(5), least_squares(), num_steps=20, **kwargs)
