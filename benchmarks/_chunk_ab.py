"""Shared by the kernel benchmarks: calls timed in alternation, and the harness's own
training chunk built under each of several kernel choices, A/B."""

import statistics
import time
from collections.abc import Callable

import jax
import numpy as np

from clr_jax.harness import TrainConfig, Trainer, load_dataset


def alternate(calls: dict, rounds: int) -> dict:
    """Seconds of each call, alternated ``rounds`` times."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return times


def summary(times: dict, reference: str, per: int) -> dict:
    """Milliseconds per ``per`` (median, range) and the median ratio of the alternated
    pairs to ``reference``."""
    return {name: {"ms_median": 1000 * statistics.median(t) / per,
                   "ms_range": [1000 * min(t) / per, 1000 * max(t) / per],
                   "ratio_median": statistics.median(
                       a / b for a, b in zip(t, times[reference]))}
            for name, t in times.items()}


def training_chunk(choices: dict[str, Callable[[], object]], rounds: int) -> dict:
    """The harness's training chunk (`Trainer.run_steps`: the Caffe net with its CPU
    kernels on the bundled sample, triangular2 0.001-0.006, a 1,000-step run's chunk)
    built once under each choice, then timed in alternation ``rounds`` times.

    ``choices`` maps a name to a function that applies the choice (patches a kernel
    switch) and returns a function that undoes it; the first choice is the reference.
    Returns the steps per call, each choice's ms/step and ratio, and the largest
    difference of each choice's first chunk of losses from the reference's.
    """
    data = load_dataset("sample")
    config = TrainConfig(num_steps=1000, eval_every=1000, log_every=100,
                         schedule={"policy": "triangular2", "base_lr": 0.001,
                                   "max_lr": 0.006, "step_size": 100})
    built, losses = {}, {}
    for name, apply in choices.items():
        undo = apply()
        try:
            trainer = Trainer(config, data)
            state, first = trainer.run_steps(trainer.initial_state, 0, trainer.chunk)
            losses[name] = np.asarray(first)
        finally:
            undo()
        built[name] = (trainer, state)

    def call(trainer, state):
        return lambda: jax.block_until_ready(trainer.run_steps(state, trainer.chunk,
                                                                trainer.chunk)[1])

    reference = next(iter(choices))
    steps = built[reference][0].chunk
    rows = summary(alternate({n: call(*b) for n, b in built.items()}, rounds), reference,
                   steps)
    for name in rows:
        rows[name]["max_abs_loss_difference"] = float(
            np.abs(losses[name] - losses[reference]).max())
    return {"steps_per_call": steps, "variants": rows}


def patch(module, name: str, value) -> Callable[[], Callable[[], None]]:
    """A choice for `training_chunk`: ``module.name`` set to ``value`` while it builds."""
    def apply():
        saved = getattr(module, name)
        setattr(module, name, value)
        return lambda: setattr(module, name, saved)
    return apply


def chunk_table(chunk: dict, rounds: int, each: str) -> list[str]:
    """RESULTS.md lines for `training_chunk`'s result: a sentence ("... each {each}, N
    alternated rounds:") and the table of ms/step (range) and ratio per choice."""
    md = ["", f"The harness's training chunk ({chunk['steps_per_call']} steps of the Caffe "
          f"net in one rolled loop, bundled sample, triangular2), each {each}, "
          f"{rounds} alternated rounds:", "", "| training chunk | ms/step (range) | ratio |",
          "|---|---|---|"]
    for name, row in chunk["variants"].items():
        low, high = row["ms_range"]
        md.append(f"| {name} | {row['ms_median']:.1f} ({low:.1f}-{high:.1f}) | "
                  f"{row['ratio_median']:.3f} |")
    return md
