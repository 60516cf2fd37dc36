"""Draws one figure per learning-rate policy for docs/guide/policies.md.

Run from the project root:

    python docs/scripts/policy_figures.py

writes docs/images/policy_<name>.png. The settings are the paper's CIFAR-10 ones
(batch 100, 500 steps per epoch) where the paper gives them.
"""

from pathlib import Path

import optax

import clr_jax
from clr_jax import plotting
from clr_jax.policies import staged

OUT = Path(__file__).resolve().parents[1] / "images"

FIGURES = {
    "triangular": (
        {"triangular 0.001-0.006, step 2000": clr_jax.triangular(0.001, 0.006, 2000),
         "asymmetric: up 1000, down 3000": clr_jax.triangular(0.001, 0.006, 1000,
                                                                step_size_down=3000)},
        16_000, False),
    "triangular2": (
        {"triangular2 0.001-0.006, step 2000": clr_jax.triangular2(0.001, 0.006, 2000)},
        16_000, False),
    "exp_range": (
        {"amplitude (PyTorch, Keras)": clr_jax.exp_range(0.001, 0.006, 2000, 0.99994),
         "both bounds (paper's wording)": clr_jax.exp_range(0.001, 0.006, 2000, 0.99994,
                                                            decay="both")},
        42_000, False),
    "windows": (
        {w: clr_jax.cyclical(0.001, 0.006, 2000, window=w) for w in clr_jax.schedules.WINDOWS},
        8_000, False),
    "decay": (
        {"decay 0.007 -> 0.001 over 4000": clr_jax.decay(0.007, 0.001, 4000),
         "exp 0.001 * 0.99994^t (optax.exponential_decay)":
             optax.exponential_decay(0.001, 1, 0.99994)},
        25_000, False),
    "one_cycle": (
        {"two phases": clr_jax.one_cycle(0.1, 10_000),
         "three phases, linear": clr_jax.one_cycle(0.1, 10_000, three_phase=True,
                                                    anneal="linear")},
        10_000, True),
    "staged": (
        {"Table 2 triangular2, 3 stages": staged([
            ("triangular2", dict(base_lr=0.001, max_lr=0.005, step_size=2000), 16_000),
            ("triangular2", dict(base_lr=0.0001, max_lr=0.0005, step_size=1000), 6_000),
            ("triangular2", dict(base_lr=0.00001, max_lr=0.00005, step_size=500), 3_000),
        ])},
        25_000, True),
    "momentum": (
        {"cyclical_momentum 0.85-0.95, step 2000":
             clr_jax.cyclical_momentum(0.85, 0.95, 2000)},
        8_000, False),
}


def main() -> None:
    for name, (schedules, num_steps, log_scale) in FIGURES.items():
        ylabel = "momentum" if name == "momentum" else "learning rate"
        figure = plotting.plot_schedule(schedules, num_steps, title=name, ylabel=ylabel,
                                        log_scale=log_scale)
        plotting.save_figure(figure, OUT / f"policy_{name}.png", dpi=90)
        print(f"wrote {OUT / f'policy_{name}.png'}")


if __name__ == "__main__":
    main()
