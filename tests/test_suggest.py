"""Bound suggestions: the paper's accuracy rule and the loss rules, on curves whose answers
are known."""

import jax.numpy as jnp
import numpy as np
import pytest

import clr_jax
from tests.helpers import least_squares, loss_fn, synthetic_result


class TestPaperRule:
    def test_known_rise_and_plateau(self):
        """Accuracy rises linearly from 10% at 0.001 to 70% at 0.006, holds, then falls."""
        rng = np.random.default_rng(0)
        rates = np.linspace(0.0001, 0.01, 100)
        clean = 0.1 + 0.6 * np.clip((rates - 0.001) / 0.005, 0, 1)
        clean = np.where(rates > 0.008, clean - 40 * (rates - 0.008), clean)
        noisy = clean + rng.uniform(-0.01, 0.01, rates.size)
        b = clr_jax.suggest_bounds(synthetic_result(rates, noisy), "paper")
        # 10% of the rise is made at 0.0015, 90% at 0.0055.
        assert 0.0012 <= b.base_lr <= 0.002
        assert 0.005 <= b.max_lr <= 0.0062
        peak = clr_jax.suggest_bounds(synthetic_result(rates, noisy), "paper_peak")
        assert 0.006 <= peak.max_lr <= 0.008 and peak.base_lr == pytest.approx(peak.max_lr / 4)

    def test_single_outlier_is_ignored(self):
        rates = np.linspace(0.001, 0.01, 10)
        acc = np.array([0.1, 0.1, 0.9, 0.1, 0.2, 0.4, 0.6, 0.7, 0.7, 0.7])
        b = clr_jax.suggest_bounds(synthetic_result(rates, acc), "paper")
        # Running median: [.1 .1 .1 .2 .2 .4 .6 .7 .7 .7]; the 0.9 spike is gone. The rise
        # is 0.6: 10% (0.16) is first reached at index 3, 90% (0.64) at index 7.
        assert b.base_lr == pytest.approx(rates[3]) and b.max_lr == pytest.approx(rates[7])

    def test_auto_picks_paper_with_accuracy(self):
        rates = np.linspace(0.001, 0.01, 10)
        acc = np.linspace(0.1, 0.8, 10)
        assert clr_jax.suggest_bounds(synthetic_result(rates, acc)).method == "paper"

    @pytest.mark.parametrize("accuracy, match", [
        (np.full(10, 0.5), "rises by only"),
        (np.r_[np.full(8, np.nan), 0.1, 0.2], "needs at least 3 finite 'accuracy' points"),
    ])
    def test_errors(self, accuracy, match):
        with pytest.raises(ValueError, match=match):
            clr_jax.suggest_bounds(synthetic_result(np.linspace(0.1, 1, 10), accuracy), "paper")


def test_suggest_errors(linear_result):
    with pytest.raises(ValueError, match="method must be one of"):
        clr_jax.suggest_bounds(linear_result, "fastest")
    with pytest.raises(ValueError, match="reads the 'accuracy' metric"):
        clr_jax.suggest_bounds(linear_result, "paper")
    short = clr_jax.range_test(loss_fn, jnp.zeros(5), least_squares(), min_lr=5.0,
                               max_lr=50.0, num_steps=50)
    with pytest.raises(ValueError, match="needs at least 5 finite loss points"):
        clr_jax.suggest_bounds(short, "minimum")
    with pytest.raises(ValueError, match="result must be"):
        clr_jax.suggest_bounds({"losses": []}, "minimum")


class TestLossRulesSkipStart:
    def test_steepest_with_skipped_start_and_a_late_minimum(self):
        """Regression: with skip_start > 0 the steepest point was indexed off the window
        (an IndexError on a 1,000-step CIFAR-10 test). loss = -tanh(log r - log 0.012)
        falls fastest at r = 0.012, then rises after its minimum near 0.015."""
        rates = np.linspace(1e-5, 0.02, 1000)
        loss = -np.tanh(np.log(rates) - np.log(0.012)) + 50 * np.clip(rates - 0.015, 0, None)
        n = rates.size
        result = clr_jax.RangeTestResult(
            learning_rates=rates, losses=loss, smoothed_losses=loss,
            eval_steps=np.arange(0), eval_learning_rates=np.zeros(0), eval_metrics={},
            stop_reason=None, stop_step=None, mode="linear", min_lr=1e-5, max_lr=0.02,
            num_steps=n)
        b = clr_jax.suggest_bounds(result, "steepest", skip_start=0.3)
        assert b.max_lr == pytest.approx(0.012, rel=0.01)
        assert b.evidence["steepest_slope_per_log_lr"] == pytest.approx(-1, abs=0.01)
