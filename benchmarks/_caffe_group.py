"""Shared by the benchmarks that time the harness's own unrolled group of Caffe-net
training steps (`train_steps` with `unroll=True`, CPU kernels, Caffe SGD, batch 100, the
bundled sample) under different compiler options or group lengths."""

import time

import jax
import jax.numpy as jnp
import optax

from clr_jax.harness.data import load_dataset
from clr_jax.harness.train import TrainConfig, Trainer, train_steps


class CaffeGroup:
    """A Caffe-net `Trainer` for a run of ``num_steps`` steps logging every ``log_every``,
    its starting state and its first epoch's order, and `compile`."""

    def __init__(self, num_steps: int, log_every: int):
        self.trainer = Trainer(TrainConfig(num_steps=num_steps, eval_every=log_every,
                                           log_every=log_every),
                               load_dataset("sample"), optax.constant_schedule(0.001))
        self.state = self.trainer.initial_state
        self.permutation = self.trainer.epoch_order(0)

    def compile(self, group: int, compiler_options):
        """``(compiled, seconds)``: ``group`` unrolled steps ``(state, first_step,
        permutation) -> (state, losses)`` compiled with ``compiler_options``, and the
        seconds the compilation took."""
        trainer = self.trainer

        def fn(state, first_step, permutation):
            return train_steps(trainer.loss, trainer.data, trainer.tx, state, first_step,
                               group, seed=0, unroll=True, permutation=permutation)

        lowered = jax.jit(fn, compiler_options=compiler_options).lower(
            self.state, jnp.int32(0), self.permutation)
        started = time.perf_counter()
        compiled = lowered.compile()
        return compiled, time.perf_counter() - started
