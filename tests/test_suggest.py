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

    def test_auto_reads_the_loss(self):
        """The default rule is "edge", which reads the loss: on a flat loss it flags
        that the test shows no learning, whatever the accuracy does."""
        rates = np.linspace(0.001, 0.01, 10)
        acc = np.linspace(0.1, 0.8, 10)
        bounds = clr_jax.suggest_bounds(synthetic_result(rates, acc))
        assert bounds.method == "edge" and not bounds.trusted
        assert "below_noise" in {f.code for f in bounds.flags}

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


def curve(losses, lrs=None, num_steps=None):
    """A sequential result whose smoothed loss is ``losses`` (rates 0.01, 0.02, ...)."""
    losses = np.asarray(losses, np.float64)
    lrs = np.arange(1, losses.size + 1) * 0.01 if lrs is None else np.asarray(lrs, np.float64)
    return clr_jax.RangeTestResult(
        learning_rates=lrs, losses=losses, smoothed_losses=losses,
        eval_steps=np.arange(0), eval_learning_rates=np.zeros(0), eval_metrics={},
        stop_reason=None, stop_step=None, mode="linear", min_lr=float(lrs[0]),
        max_lr=float(lrs[-1]), num_steps=num_steps or losses.size)


def suggested(losses, method, **kwargs):
    """The rate a rule reads from the whole curve (no points dropped)."""
    result = curve(losses)
    return clr_jax.suggest_bounds(result, method, skip_start=0, skip_end=0, **kwargs).max_lr


class TestPeersAlgorithmsByHand:
    """Each loss rule on curves whose answers were worked out by hand from the peer's
    published algorithm (fastai 2.8 callback/schedule.py, torch-lr-finder 0.2.2)."""

    def test_valley(self):
        # longest falling run: 3 > 1 > 0.5 > 0.4 (points 0, 1, 3, 4), found when point 4
        # reaches length 4: start = 4 - 4 = 0, end = 4; s = 4/3; 0 + int(1.33) + int(0.67)
        assert suggested([3, 1, 2, 0.5, 0.4, 4], "valley") == pytest.approx(0.02)
        # a curve falling all the way: fastai's start is one before the first point
        # (end 4 - length 5 = -1); s = 5/3; -1 + 1 + int(0.83) = point 0
        assert suggested([5, 4, 3, 2, 1], "valley") == pytest.approx(0.01)
        # one falling step from the first point: start -1, end 1, s = 2/3, point -1,
        # which fastai reads as the last rate; clr_jax reads the first (documented)
        assert suggested([2.0, 1.0, 3.0, 4.0, 5.0], "valley") == pytest.approx(0.01)

    def test_minimum(self):
        assert suggested([3, 2, 0.7, 1.5, 2, 9], "minimum") == pytest.approx(0.03 / 10)

    def test_steep(self):
        # slopes against log(rate) between neighbours, with rates 1, 2, 4, 8, 16 (log
        # steps equal): the biggest fall, 2.5 -> 1.0, starts at the third point (rate 4)
        result = curve([3.0, 2.8, 2.5, 1.0, 0.9], lrs=[1, 2, 4, 8, 16])
        b = clr_jax.suggest_bounds(result, "steep", skip_start=0, skip_end=0)
        assert b.max_lr == 4

    def test_slide(self):
        # flat at 1.0 to point 20, then rising by 0.1 a point (30 points): np.gradient is
        # 0 up to point 19, 0.05 at 20, 0.1 after. The interval (29, 14) moves left while
        # its right end is at a gradient of 0.05 or more: 10 moves, the last from (20, 5)
        losses = [1.0] * 20 + [1.0 + 0.1 * k for k in range(10)]
        assert suggested(losses, "slide") == pytest.approx(0.06)

    def test_steepest(self):
        # np.gradient: -0.1, -0.25, -0.95, -0.8, -0.1, -0.1: steepest at point 2
        assert suggested([5.0, 4.9, 4.5, 3.0, 2.9, 2.8], "steepest") == pytest.approx(0.03)

    def test_windows_drop_the_lucky_start_and_the_last_five_points(self):
        """fastai reads points num_steps // 10 to -5; torch-lr-finder 10 to -5."""
        losses = np.full(40, 2.0)
        losses[1] = 0.1  # a lucky first batch
        losses[37] = 0.2  # the minimum in the last five points
        losses[20] = 1.0  # the minimum of the window
        result = curve(losses)
        assert clr_jax.suggest_bounds(result, "minimum").max_lr == pytest.approx(0.21 / 10)
        assert clr_jax.suggest_bounds(result, "minimum").evidence["points_read"] == 40 - 4 - 5
        assert clr_jax.suggest_bounds(result, "steepest").evidence["points_read"] == 40 - 15
        # a test stopped early still drops a tenth of the planned steps
        early = curve(losses[:30], num_steps=100)
        assert clr_jax.suggest_bounds(early, "minimum").evidence["points_read"] == 30 - 10 - 5

    def test_errors(self):
        with pytest.raises(ValueError, match="'slide' needs more than 15 loss points"):
            suggested(np.linspace(3, 1, 12), "slide")
        with pytest.raises(ValueError, match="skip_end must be a whole number"):
            clr_jax.suggest_bounds(curve(np.linspace(3, 1, 30)), "valley", skip_end=-1)


def _recorded_curves():
    """Range tests recorded by the project's experiments on CIFAR-10 and the bundled
    sample (smoothed and raw losses), plus smooth synthetic curves."""
    import json

    root = ROOT / "experiments" / "results"
    found = []
    for path, keys in (("range_test_cifar10_small.json", ("tests", "linear", "result")),
                       ("range_test_cifar10_small.json", ("tests", "exponential", "result")),
                       ("figure3_range_test_cpu.json", ("curve",)),
                       ("demo/range_test/range_test.json", ("found", "results", 0))):
        data = json.loads((root / path).read_text())
        for key in keys:
            data = data[key]
        for kind in ("smoothed_losses", "losses"):
            losses = np.array([np.nan if x is None else x for x in data[kind]])
            found.append(pytest.param(np.asarray(data["learning_rates"]), losses,
                                      id=f"{path.split('.')[0]}-{'-'.join(map(str, keys))}-{kind}"))
    rates = np.geomspace(1e-5, 1, 120)
    for shift in (0.3, 1.0, 3.0):
        loss = 2 - np.tanh(np.log(rates / 1e-3) / shift) + 30 * np.clip(rates - 0.2, 0, None)
        found.append(pytest.param(rates, loss, id=f"synthetic-{shift}"))
    return found


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("lrs, losses", _recorded_curves())
def test_steepest_equals_torch_lr_finders_suggestion(lrs, losses):
    """torch-lr-finder's own package as the oracle, on the same (rates, losses)."""
    from matplotlib.figure import Figure
    from torch_lr_finder import LRFinder

    finite = np.flatnonzero(~np.isfinite(losses))
    end = finite[0] if finite.size else losses.size
    finder = LRFinder.__new__(LRFinder)  # only its history is read
    finder.history = {"lr": list(lrs[:end]), "loss": list(losses[:end])}
    _, theirs = finder.plot(ax=Figure().add_subplot(), suggest_lr=True)
    result = clr_jax.RangeTestResult(
        learning_rates=lrs, losses=losses, smoothed_losses=losses,
        eval_steps=np.arange(0), eval_learning_rates=np.zeros(0), eval_metrics={},
        stop_reason=None, stop_step=None, mode="linear", min_lr=float(lrs[0]),
        max_lr=float(lrs[-1]), num_steps=lrs.size)
    assert clr_jax.suggest_bounds(result, "steepest").max_lr == theirs
