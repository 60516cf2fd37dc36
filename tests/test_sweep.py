"""Sweeps: vectorised schedules, members equal to single runs, sharding, errors, reports."""

import csv
import json

import jax
import numpy as np
import pytest

from clr_jax import cli
from clr_jax.harness import sweep as sweep_module
from clr_jax.harness.sweep import Member, load_members, parse_members, sweep
from clr_jax.harness.train import TrainConfig, train
from clr_jax.harness.data import ImageDataset
from clr_jax.policies import staged, vectorize


def tiny_dataset(n_train=64, n_test=24, size=8) -> ImageDataset:
    """Three classes told apart by which channel is brighter."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, n_train + n_test).astype(np.int32)
    images = rng.integers(0, 120, (n_train + n_test, size, size, 3))
    images[np.arange(len(labels)), :, :, labels] += 100
    images = images.astype(np.uint8)
    return ImageDataset(images[:n_train], labels[:n_train], images[n_train:],
                        labels[n_train:], ("a", "b", "c"))

MIXED = [
    [("fixed", dict(base_lr=0.001), 600), ("fixed", dict(base_lr=0.0001), 50),
     ("fixed", dict(base_lr=0.00001), 50)],
    [("triangular2", dict(base_lr=0.001, max_lr=0.005, step_size=20), 160),
     ("triangular2", dict(base_lr=0.0001, max_lr=0.0005, step_size=10), 60),
     ("triangular2", dict(base_lr=1e-5, max_lr=5e-5, step_size=5), 30)],
    [("exp", dict(base_lr=0.001, gamma=0.99994), 1)],
    [("exp_range", dict(base_lr=0.001, max_lr=0.006, step_size=2000, gamma=0.99994), 1)],
    [("exp_range", dict(base_lr=0.001, max_lr=0.006, step_size=2000, gamma=0.99994,
                        decay="both"), 1)],
    [("decay", dict(max_lr=0.007, base_lr=0.001, decay_steps=40), 1)],
    [("one_cycle", dict(max_lr=0.1, total_steps=500, three_phase=True, pct_start=0.25), 1)],
    [("one_cycle", dict(max_lr=0.1, total_steps=300, anneal="linear"), 1)],
    [("hann", dict(base_lr=0.1, max_lr=0.5, step_size=7, step_size_down=11), 1)],
    [("welch", dict(base_lr=0.1, max_lr=0.5, step_size=5), 1)],
    [("triangular", dict(base_lr=0.001, max_lr=0.006, step_size=2000), 1)],
]


class TestVectorize:
    def test_every_member_equals_its_own_schedule(self):
        fn, params = vectorize(MIXED)
        steps = np.arange(0, 70_000, 7)
        got = np.asarray(jax.jit(jax.vmap(jax.vmap(fn, (0, None)), (None, 0)))(params, steps))
        for m, stages in enumerate(MIXED):
            want = np.asarray(jax.vmap(staged(stages))(steps))
            np.testing.assert_allclose(got[:, m], want, rtol=1e-6, atol=1e-12, err_msg=str(m))

    def test_closed_forms(self):
        fn, params = vectorize(MIXED[:3])
        t = np.array([0, 599, 600, 649, 650, 700, 170, 69_999])
        got = np.asarray(jax.vmap(jax.vmap(fn, (0, None)), (None, 0))(params, t))
        np.testing.assert_allclose(got[:, 0], [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-3, 1e-5],
                                   rtol=1e-6)
        # gamma**t from a float64 log: 0.99994**69999 to float32 rounding
        np.testing.assert_allclose(got[:, 2], 0.001 * 0.99994 ** t.astype(np.float64),
                                   rtol=2e-6)
        # triangular2 stage 2 starts at 160 with its own cycle: step 170 is its peak
        assert got[6, 1] == pytest.approx(0.0005, rel=1e-6)

    def test_one_compilation_for_any_mix(self):
        traces = []

        def value(params, step):
            traces.append(1)
            return jax.vmap(fn, (0, None))(params, step)

        fn, params = vectorize(MIXED)
        compiled = jax.jit(value)
        for mix in (params, jax.tree.map(lambda x: x[::-1].copy(), params)):
            compiled(mix, 10)
        assert len(traces) == 1

    @pytest.mark.parametrize("members, match", [
        ([], "no schedules"),
        ([[]], "no stages"),
        ([[("bogus", {}, 1)]], "bogus"),
        ([[("triangular", dict(base_lr=0.1), 1)]], "needs max_lr"),
        ([[("fixed", dict(base_lr=0.1), 0), ("fixed", dict(base_lr=0.1), 1)]], "num_steps"),
    ])
    def test_errors(self, members, match):
        with pytest.raises(ValueError, match=match):
            vectorize(members)


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
    sweep(_config(), tiny_dataset(), MEMBERS, out, progress=False, members_per_chunk=3,
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
        train(config, tiny_dataset(), staged(member.stages), tmp_path, progress=False)
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
        summary = sweep(_config(), tiny_dataset(), MEMBERS, tmp_path, progress=False,
                        members_per_chunk=chunk, member_devices=devices)
        assert summary["member_devices"] == devices
        assert summary["members_per_chunk"] % devices == 0
        for member in MEMBERS:
            np.testing.assert_allclose(_history(tmp_path, member.name)["loss"],
                                       _history(reference, member.name)["loss"], rtol=1e-5)

    def test_diverging_member_does_not_stop_the_others(self, tmp_path):
        members = [Member("ok", (("fixed", dict(base_lr=0.01), 1),)),
                   Member("boom", (("fixed", dict(base_lr=1e6), 1),))]
        summary = sweep(_config(num_steps=8), tiny_dataset(), members, tmp_path,
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
            sweep(config, tiny_dataset(), MEMBERS, tmp_path, progress=False,
                  members_per_chunk=3, member_devices=1)
        monkeypatch.setattr(sweep_module.SweepTrainer, "run_steps", original)
        sweep(config, tiny_dataset(), MEMBERS, tmp_path, progress=False,
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


class TestCommandLine:
    def test_sweep_from_file(self, tmp_path, capsys):
        config = tmp_path / "sweep.toml"
        config.write_text(
            '[train]\nmodel = "mlp"\noptimizer = "momentum"\npreprocess = "standard"\n'
            'num_steps = 6\neval_every = 3\nbatch_size = 16\n\n'
            '[[member]]\nname = "fixed"\npolicy = "fixed"\nbase_lr = 0.01\n\n'
            '[[member]]\nname = "tri"\npolicy = "triangular"\nbase_lr = 0.01\n'
            'max_lr = 0.05\nstep_size = 2\n')
        out = tmp_path / "out"
        data = tmp_path / "data"
        _write_folder(data)
        code = cli.main(["sweep", "--config", str(config), "--dataset", str(data),
                         "--out", str(out), "--no-progress", "--steps", "4"])
        assert code == 0
        printed = capsys.readouterr().out
        assert "| fixed |" in printed and "| tri |" in printed
        summary = json.loads((out / "sweep.json").read_text())
        assert summary["steps"] == 4  # the flag wins over the file
        assert summary["config"]["model"] == "mlp"  # the file wins over the default

    @pytest.mark.parametrize("argv, message", [
        (["sweep", "--out", "X", "--steps", "2"], "--config FILE or with --member"),
        (["sweep", "--member", "a", "--out", "X"], "needs a name and a policy"),
        (["sweep", "--member", "a fixed", "--out", "X", "--steps", "2"], "needs base_lr"),
        (["sweep", "--config", "missing.toml", "--out", "X"], "does not exist"),
    ])
    def test_bad_input_is_one_line(self, argv, message, capsys, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        assert cli.main(argv) == cli.EXIT_USAGE
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def _write_folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(20 if split == "train" else 6):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    folder / f"{i}.png")
