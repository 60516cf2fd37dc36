"""Where PyTorch defines the same policy, values agree to float32 precision.

torch is a declared test dependency (the "test" extra): a missing torch fails here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import clr_jax


def values(schedule, steps):
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps)), dtype=np.float64)


class TestAgainstPyTorch:
    """Where PyTorch defines the same policy, values agree to float32 precision."""

    def _cyclic(self, num_steps, **kwargs):
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=kwargs["base_lr"], momentum=0.9)
        sched = torch.optim.lr_scheduler.CyclicLR(opt, **kwargs)
        lrs, moms = [], []
        for _ in range(num_steps):
            lrs.append(opt.param_groups[0]["lr"])
            moms.append(opt.param_groups[0]["momentum"])
            opt.step()
            sched.step()
        return np.array(lrs), np.array(moms)

    @pytest.mark.parametrize("down", [None, 700])
    @pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
    def test_cyclic_lr(self, mode, down):
        n = 42_000 if mode == "exp_range" else 12_000
        torch_lr, torch_mom = self._cyclic(
            n, base_lr=0.001, max_lr=0.006, step_size_up=2000, step_size_down=down,
            mode=mode, gamma=0.99994, base_momentum=0.8, max_momentum=0.9,
        )
        factory = {"triangular": clr_jax.triangular, "triangular2": clr_jax.triangular2}
        if mode == "exp_range":
            ours = clr_jax.exp_range(0.001, 0.006, 2000, 0.99994, step_size_down=down)
        else:
            ours = factory[mode](0.001, 0.006, 2000, step_size_down=down)
        np.testing.assert_allclose(values(ours, np.arange(n)), torch_lr, rtol=1e-6)
        if mode == "triangular":
            mom = clr_jax.cyclical_momentum(0.8, 0.9, 2000, step_size_down=down)
            np.testing.assert_allclose(values(mom, np.arange(n)), torch_mom, rtol=1e-6)

    @pytest.mark.parametrize("anneal", ["cos", "linear"])
    @pytest.mark.parametrize("three_phase", [False, True])
    def test_one_cycle_lr(self, anneal, three_phase):
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
        total = 1234
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=0.4, total_steps=total, pct_start=0.35, anneal_strategy=anneal,
            three_phase=three_phase, div_factor=20.0, final_div_factor=500.0,
        )
        expected = []
        for _ in range(total):
            expected.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        ours = clr_jax.one_cycle(0.4, total, pct_start=0.35, anneal=anneal,
                                 three_phase=three_phase, div_factor=20.0,
                                 final_div_factor=500.0)
        np.testing.assert_allclose(values(ours, np.arange(total)), expected, rtol=2e-6)
