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
        """Every step's rate and momentum from PyTorch's CyclicLR."""
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
        mom = clr_jax.cyclical_momentum(0.8, 0.9, 2000, step_size_down=down, mode=mode,
                                        gamma=0.99994 if mode == "exp_range" else None)
        np.testing.assert_allclose(values(mom, np.arange(n)), torch_mom, rtol=1e-6)

    # PyTorch's own CyclicLR test configurations (test/optim/test_lrscheduler.py:
    # step_size_up 4, the triangular2 and exp_range (gamma 0.9) momentum targets),
    # with the momenta scaled into [0, 1] (PyTorch's tests use 1 to 5, which are not
    # momenta; clr_jax refuses them).
    @pytest.mark.parametrize("mode, gamma", [("triangular", None), ("triangular2", None),
                                             ("exp_range", 0.9)])
    @pytest.mark.parametrize("down", [None, 2, 7])
    def test_cyclic_momentum_in_pytorchs_own_configurations(self, mode, gamma, down):
        n = 40
        torch_lr, torch_mom = self._cyclic(
            n, base_lr=0.1, max_lr=0.5, step_size_up=4, step_size_down=down, mode=mode,
            gamma=gamma or 1.0, cycle_momentum=True, base_momentum=0.1, max_momentum=0.5)
        ours = clr_jax.cyclical_momentum(0.1, 0.5, 4, step_size_down=down, mode=mode,
                                         gamma=gamma)
        np.testing.assert_allclose(values(ours, np.arange(n)), torch_mom, rtol=1e-6)

    @pytest.mark.parametrize("scale_mode", ["cycle", "iterations"])
    def test_cyclic_momentum_with_a_custom_scale_fn(self, scale_mode):
        def torch_scale(x):
            return 1 / (1.0 + x) ** 0.5

        torch_lr, torch_mom = self._cyclic(
            30, base_lr=0.1, max_lr=0.5, step_size_up=3, scale_fn=torch_scale,
            scale_mode=scale_mode, base_momentum=0.6, max_momentum=0.95)
        lr = clr_jax.cyclical(0.1, 0.5, 3, scale_fn=lambda x: 1 / jnp.sqrt(1.0 + x),
                              scale_mode=scale_mode)
        mom = clr_jax.cyclical_momentum(0.6, 0.95, 3, scale_fn=lambda x: 1 / jnp.sqrt(1.0 + x),
                                        scale_mode=scale_mode)
        np.testing.assert_allclose(values(lr, np.arange(30)), torch_lr, rtol=1e-6)
        np.testing.assert_allclose(values(mom, np.arange(30)), torch_mom, rtol=1e-6)

    @pytest.mark.parametrize("anneal", ["cos", "linear"])
    @pytest.mark.parametrize("three_phase", [False, True])
    @pytest.mark.parametrize("momenta", [(0.85, 0.95), (0.8, 0.9)])
    def test_one_cycle_momentum(self, anneal, three_phase, momenta):
        base, top = momenta
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
        total = 250
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=0.4, total_steps=total, pct_start=0.3, anneal_strategy=anneal,
            three_phase=three_phase, base_momentum=base, max_momentum=top)
        expected = []
        for _ in range(total):
            expected.append(opt.param_groups[0]["momentum"])
            opt.step()
            sched.step()
        ours = clr_jax.one_cycle_momentum(total, base_momentum=base, max_momentum=top,
                                          pct_start=0.3, anneal=anneal,
                                          three_phase=three_phase)
        np.testing.assert_allclose(values(ours, np.arange(total)), expected, rtol=1e-6)

    def test_one_cycle_momentum_defaults_are_onecyclelrs(self):
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=100)
        expected = []
        for _ in range(100):
            expected.append(opt.param_groups[0]["momentum"])
            opt.step()
            sched.step()
        np.testing.assert_allclose(values(clr_jax.one_cycle_momentum(100), np.arange(100)),
                                   expected, rtol=1e-6)

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

    @pytest.mark.parametrize("three_phase", [False, True])
    def test_one_cycle_with_an_empty_warm_up(self, three_phase):
        """pct_start * total_steps < 1: the warm-up ends before step 0, so OneCycleLR starts
        on the way down, not at max_lr / div_factor (a case Hypothesis found)."""
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=0.1)
        total, pct = 10, 0.0625
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=1.0, total_steps=total, pct_start=pct, div_factor=1.0,
            final_div_factor=2.0, three_phase=three_phase, cycle_momentum=False)
        expected = []
        for _ in range(total):
            expected.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        ours = clr_jax.one_cycle(1.0, total, pct_start=pct, div_factor=1.0,
                                 final_div_factor=2.0, three_phase=three_phase)
        assert expected[0] < 1.0
        np.testing.assert_allclose(values(ours, np.arange(total)), expected, rtol=2e-6)
