"""Sweeps: members equal to single runs, sharding, resume, divergence, reports, files."""

import csv
import json

import jax
import numpy as np
import pytest

import clr_jax.harness.sweep as sweep_module
from clr_jax.harness.members import Member, load_members, parse_members
from clr_jax.harness.sweep import sweep
from clr_jax.harness.train import TrainConfig, train
from tests.helpers import tiny_dataset


def sweep_data():
    return tiny_dataset(n_test=24, seed=1)


def _config(**overrides):
    settings = dict(model="mlp", optimizer="momentum", preprocess="standard", batch_size=16,
                    num_steps=12, eval_every=4, log_every=4, shuffle=True)
    settings.update(overrides)
    return TrainConfig(**settings)


MEMBERS = [
    Member("tri", (("triangular", dict(base_lr=0.01, max_lr=0.1, step_size=3), 1),)),
    Member("fixed", (("fixed", dict(base_lr=0.05), 1),), seed=1),
    Member("staged", (("fixed", dict(base_lr=0.02), 5),
                      ("exp", dict(base_lr=0.08, gamma=0.9), 1)), momentum=0.5,
           weight_decay=0.001),
]


def _history(out, name):
    return next(m for m in json.loads((out / "sweep.json").read_text())["members"]
                if m["name"] == name)["history"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sweep run once with all three members in one vmapped chunk."""
    out = tmp_path_factory.mktemp("sweep") / "all"
    sweep(_config(), sweep_data(), MEMBERS, out, progress=False, members_per_chunk=3,
          member_devices=1)
    return out


class TestSweepTraining:
    @pytest.mark.parametrize("index", [0, 1, 2])
    def test_member_equals_the_same_run_alone(self, reference, tmp_path, index):
        member = MEMBERS[index]
        config = _config(seed=member.seed or 0,
                         momentum=0.9 if member.momentum is None else member.momentum,
                         weight_decay=(0.004 if member.weight_decay is None
                                       else member.weight_decay))
        alone = TrainConfig(**{**config.__dict__, "schedule": member.stages})
        train(alone, sweep_data(), tmp_path, progress=False)
        rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        history = _history(reference, member.name)
        np.testing.assert_allclose(history["loss"], [r["loss"] for r in rows], rtol=1e-5)
        np.testing.assert_allclose(history["lr"], [r["lr"] for r in rows], rtol=1e-6)
        np.testing.assert_allclose(history["test_loss"],
                                   [r["test_loss"] for r in rows if "test_loss" in r],
                                   rtol=1e-4, atol=1e-7)

    def test_members_differ(self, reference):
        losses = [_history(reference, m.name)["loss"] for m in MEMBERS]
        assert losses[0] != losses[1] != losses[2]

    @pytest.mark.parametrize("chunk, devices", [(3, 4), (2, 2), (1, 1)])
    def test_sharding_and_chunking_keep_results(self, reference, tmp_path, chunk, devices):
        assert jax.device_count() == 4  # conftest: 4 fake CPU devices
        summary = sweep(_config(), sweep_data(), MEMBERS, tmp_path, progress=False,
                        members_per_chunk=chunk, member_devices=devices)
        assert summary["member_devices"] == devices
        assert summary["members_per_chunk"] % devices == 0
        for member in MEMBERS:
            np.testing.assert_allclose(_history(tmp_path, member.name)["loss"],
                                       _history(reference, member.name)["loss"], rtol=1e-5)

    def test_diverging_member_does_not_stop_the_others(self, tmp_path):
        members = [Member("ok", (("fixed", dict(base_lr=0.01), 1),)),
                   Member("boom", (("fixed", dict(base_lr=1e6), 1),))]
        summary = sweep(_config(num_steps=8), sweep_data(), members, tmp_path,
                        progress=False, members_per_chunk=2)
        ok, boom = summary["members"]
        assert boom["diverged_at"] is not None and boom["diverged_at"] < 8
        assert ok["diverged_at"] is None and ok["final_test_accuracy"] is not None
        assert "boom" in (tmp_path / "table.md").read_text()

    def test_resume_after_interrupt_matches_uninterrupted(self, reference, tmp_path,
                                                          monkeypatch):
        calls = []
        original = sweep_module.SweepTrainer.run_steps

        def flaky(self, *args):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return original(self, *args)

        monkeypatch.setattr(sweep_module.SweepTrainer, "run_steps", flaky)
        config = _config(checkpoint_every=4)
        with pytest.raises(KeyboardInterrupt):
            sweep(config, sweep_data(), MEMBERS, tmp_path, progress=False,
                  members_per_chunk=3, member_devices=1)
        monkeypatch.setattr(sweep_module.SweepTrainer, "run_steps", original)
        sweep(config, sweep_data(), MEMBERS, tmp_path, progress=False,
              members_per_chunk=3, member_devices=1, resume=True)
        for member in MEMBERS:
            assert _history(tmp_path, member.name)["loss"] == \
                _history(reference, member.name)["loss"]

    def test_report(self, reference):
        summary = json.loads((reference / "sweep.json").read_text())
        rows = list(csv.reader((reference / "table.csv").read_text().splitlines()))
        assert [r[0] for r in rows[1:]] == [m.name for m in MEMBERS]
        fixed = summary["members"][1]
        # target defaults to the fixed member's final accuracy, which it reaches
        assert summary["target_accuracy"] == fixed["final_test_accuracy"]
        for m, row in zip(summary["members"], rows[1:]):
            h = m["history"]
            best = max(h["test_accuracy"])
            assert m["best_test_accuracy"] == best
            assert m["best_step"] == h["eval_step"][h["test_accuracy"].index(best)]
            reached = [s for a, s in zip(h["test_accuracy"], h["eval_step"])
                       if a >= summary["target_accuracy"]]
            assert m["steps_to_target"] == (reached[0] if reached else None)
            assert float(row[1]) == pytest.approx(m["final_test_accuracy"], abs=5e-5)
        for name in ("curves.png", "schedules.png", "table.md"):
            assert (reference / name).stat().st_size > 0


class TestDefinitions:
    @pytest.mark.parametrize("spec, match", [
        ([], "no members"),
        ({"name": "a"}, "no members"),
        ([{"name": "a", "policy": "nope"}], "unknown policy 'nope'"),
        ([{"name": "a"}], "either a policy"),
        ([{"name": "a", "policy": "fixed", "base_lr": 0.1, "stages": []}], "either a policy"),
        ([{"name": "a", "stages": [{"policy": "fixed", "base_lr": 0.1},
                                   {"policy": "fixed", "base_lr": 0.1}]}], "needs steps"),
        ([{"name": "a", "stages": [{"policy": "fixed", "base_lr": 0.1}], "base_lr": 1}],
         "unknown keys base_lr"),
        ([{"name": "a", "policy": "fixed", "base_lr": 0.1},
          {"name": "a", "policy": "fixed", "base_lr": 0.2}], "used twice"),
        ([{"name": "a", "policy": "fixed", "base_lr": 0.1, "seed": "x"}], "seed must be"),
        ([{"name": "a", "policy": "fixed", "base_lr": 0.1, "momentum": 1.5}], "momentum"),
        ([{"name": "a", "policy": "triangular", "base_lr": 0.2, "max_lr": 0.1,
           "step_size": 5}], "member 0 \\('a'\\)"),
    ])
    def test_bad_definitions(self, spec, match):
        with pytest.raises(ValueError, match=match):
            parse_members(spec)

    def test_toml_and_json_files(self, tmp_path):
        toml = tmp_path / "s.toml"
        toml.write_text('[train]\nnum_steps = 5\n\n[[member]]\nname = "t"\npolicy = "fixed"\n'
                        'base_lr = 0.1\n\n[[member]]\nname = "s"\nstages = [{policy = '
                        '"fixed", base_lr = 0.1, steps = 3}, {policy = "exp", base_lr = 0.1, '
                        'gamma = 0.9}]\n')
        train_settings, members = load_members(toml)
        assert train_settings == {"num_steps": 5}
        assert members[1].stages[0] == ("fixed", {"base_lr": 0.1}, 3)
        js = tmp_path / "s.json"
        js.write_text(json.dumps({"members": [{"name": "t", "policy": "fixed",
                                               "base_lr": 0.1}]}))
        assert load_members(js)[1][0].name == "t"
        bad = tmp_path / "bad.toml"
        bad.write_text("[train]\nsteps = 5\n")
        with pytest.raises(ValueError, match="unknown train settings"):
            load_members(bad)
        broken = tmp_path / "broken.json"
        broken.write_text("{")
        with pytest.raises(ValueError, match="cannot read"):
            load_members(broken)
