"""Training runs: learning, data order, determinism, resume, errors, sharding."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import clr_jax
from clr_jax.harness.train import TrainConfig, Trainer, TrainingError, train
from tests.helpers import read_tensorboard, tiny_dataset

ROOT = Path(__file__).resolve().parents[1]


MLP_CONFIG = dict(model="mlp", optimizer="caffe_sgd", batch_size=16, weight_decay=0.0,
                  preprocess="standard", eval_batch_size=10)


class TestTraining:
    def test_learns_tiny_problem(self, tmp_path):
        config = TrainConfig(num_steps=60, eval_every=30, log_every=10, **MLP_CONFIG)
        summary = train(config, tiny_dataset(), tmp_path / "run",
                        schedule=clr_jax.triangular(0.001, 0.02, 10), progress=False)
        rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
        assert rows[-1]["loss"] < rows[0]["loss"]
        assert summary["final_test_accuracy"] > 0.6
        assert len(summary["fingerprint"]) == 64
        np.testing.assert_allclose([r["lr"] for r in rows],
                                   [float(clr_jax.triangular(0.001, 0.02, 10)(s - 1))
                                    for s in (10, 20, 30, 40, 50, 60)], rtol=1e-6)

    def test_tensorboard_files_hold_the_logged_rows(self, tmp_path):
        """One value per logged step, also when a resume rewrites steps an interrupted
        session had logged past its last checkpoint."""
        config = TrainConfig(num_steps=30, eval_every=15, log_every=5, checkpoint_every=10,
                             schedule={"policy": "triangular", "base_lr": 0.001,
                                       "max_lr": 0.02, "step_size": 10}, **MLP_CONFIG)

        def stop_at_20(row):
            if row["step"] == 20:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            train(config, tiny_dataset(), tmp_path, progress=False, tensorboard=True,
                  on_log=stop_at_20)
        shutil.rmtree(tmp_path / "checkpoints" / "20")  # as if killed before that save
        train(config, tiny_dataset(), tmp_path, progress=False, tensorboard=True, resume=True)
        rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        scalars = read_tensorboard(tmp_path / "tensorboard")
        for key in ("loss", "lr", "test_accuracy", "test_loss"):
            want = {r["step"]: r[key] for r in rows if key in r}
            assert {s: len(v) for s, v in scalars[key].items()} == dict.fromkeys(want, 1), key
            np.testing.assert_allclose([scalars[key][s][0] for s in sorted(want)],
                                       [want[s] for s in sorted(want)], rtol=1e-6)

    def test_epoch_orders(self):
        def orders(shuffle):
            config = TrainConfig(num_steps=4, eval_every=4, log_every=4, shuffle=shuffle,
                                 **MLP_CONFIG)
            trainer = Trainer(config, tiny_dataset(), optax.constant_schedule(0.1))
            return [np.asarray(trainer.data.permutation(jnp.int32(e), config.seed))
                    for e in (0, 1)]

        fixed, shuffled = orders(False), orders(True)
        np.testing.assert_array_equal(fixed[0], fixed[1])
        assert not np.array_equal(fixed[0], np.arange(64))  # not the class-sorted order
        assert not np.array_equal(shuffled[0], shuffled[1])
        np.testing.assert_array_equal(np.sort(shuffled[1]), np.arange(64))

    def test_deterministic_and_seed_sensitive(self, tmp_path):
        def run(seed, name):
            config = TrainConfig(num_steps=20, eval_every=20, log_every=10, seed=seed,
                                 augment=True, **MLP_CONFIG)
            return train(config, tiny_dataset(), tmp_path / name,
                         schedule=clr_jax.triangular(0.01, 0.05, 5), progress=False)["fingerprint"]

        assert run(0, "a") == run(0, "b") != run(1, "c")

    def test_resume_gives_the_same_fingerprint(self, tmp_path):
        schedule = clr_jax.triangular2(0.005, 0.05, 8)
        config = TrainConfig(num_steps=40, eval_every=20, log_every=10, checkpoint_every=10,
                             augment=True, **MLP_CONFIG)
        whole = train(config, tiny_dataset(), tmp_path / "whole", schedule=schedule,
                      progress=False)
        short = TrainConfig(**{**config.__dict__, "num_steps": 40})
        # Interrupt after step 20 by raising from the logging hook, then resume.
        def stop_at_20(row):
            if row["step"] == 20:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            train(short, tiny_dataset(), tmp_path / "split", schedule=schedule, progress=False,
                  on_log=stop_at_20)
        assert not (tmp_path / "split" / "summary.json").exists()
        resumed = train(short, tiny_dataset(), tmp_path / "split", schedule=schedule, resume=True,
                        progress=False)
        assert resumed["fingerprint"] == whole["fingerprint"]
        rows = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(r)["step"] for r in rows] == [10, 20, 30, 40]

    def test_refuses_to_overwrite_and_checks_resume_settings(self, tmp_path):
        config = TrainConfig(num_steps=10, eval_every=10, log_every=10, checkpoint_every=10,
                             **MLP_CONFIG)
        train(config, tiny_dataset(), tmp_path / "r", schedule=optax.constant_schedule(0.01),
              progress=False)
        with pytest.raises(ValueError, match="already holds results"):
            train(config, tiny_dataset(), tmp_path / "r", schedule=optax.constant_schedule(0.01),
                  progress=False)
        other = TrainConfig(**{**config.__dict__, "batch_size": 8})
        with pytest.raises(ValueError, match="differ from the saved run: config.batch_size"):
            train(other, tiny_dataset(), tmp_path / "r", schedule=optax.constant_schedule(0.01),
                  resume=True, progress=False)
        with pytest.raises(ValueError, match="differ from the saved run: schedule_sha256"):
            train(config, tiny_dataset(), tmp_path / "r", schedule=optax.constant_schedule(0.02),
                  resume=True, progress=False)
        assert (tmp_path / "r" / "summary.json").exists()  # nothing lost

    def test_a_schedule_of_stages_is_recorded_as_stages(self, tmp_path):
        """Stages are in config.json, so no digest of a million schedule values is
        computed at each start; a record from an earlier version that has the digest is
        still checked against the schedule's values."""
        from clr_jax.harness.train import schedule_digest
        from clr_jax.policies import staged

        stages = {"policy": "triangular", "base_lr": 0.01, "max_lr": 0.05, "step_size": 5}
        config = TrainConfig(num_steps=10, eval_every=10, log_every=10, checkpoint_every=5,
                             schedule=stages, **MLP_CONFIG)
        folder = tmp_path / "r"
        with pytest.raises(KeyboardInterrupt):
            train(config, tiny_dataset(), folder, progress=False,
                  on_log=lambda row: (_ for _ in ()).throw(KeyboardInterrupt))
        record = json.loads((folder / "config.json").read_text())
        assert "schedule_sha256" not in record
        right = schedule_digest(staged(config.schedule), config.num_steps)
        for digest, works in (("0" * 64, False), (right, True)):
            (folder / "config.json").write_text(json.dumps({**record,
                                                            "schedule_sha256": digest}))
            if works:
                assert train(config, tiny_dataset(), folder, progress=False,
                             resume=True)["steps"] == 10
            else:
                with pytest.raises(ValueError, match="differ from the saved run: schedule_sha"):
                    train(config, tiny_dataset(), folder, progress=False, resume=True)

    def test_non_finite_loss_stops_with_step_and_rate(self, tmp_path):
        config = TrainConfig(num_steps=40, eval_every=10, log_every=10, checkpoint_every=10,
                             **{**MLP_CONFIG, "preprocess": "caffe"})
        schedule = lambda t: jnp.where(t < 15, 1e-4, jnp.inf)  # noqa: E731 - a broken rate
        with pytest.raises(TrainingError, match=r"loss became nan at step 1[5-9] \(learning "
                           r"rate inf\).* overwrite=True; the checkpoint of step 10 is kept"):
            train(config, tiny_dataset(), tmp_path / "nan", schedule=schedule, progress=False)
        assert (tmp_path / "nan" / "checkpoints" / "10").exists()
        without = TrainConfig(**{**config.__dict__, "checkpoint_every": None})
        with pytest.raises(TrainingError) as error:
            train(without, tiny_dataset(), tmp_path / "nan2", schedule=schedule, progress=False)
        assert "kept" not in str(error.value)

    def test_resume_needs_something_to_resume_and_leaves_a_finished_run_alone(self, tmp_path):
        config = TrainConfig(num_steps=10, eval_every=10, log_every=5, checkpoint_every=5,
                             schedule={"policy": "fixed", "base_lr": 0.01}, **MLP_CONFIG)
        with pytest.raises(ValueError, match="nothing to resume in .*the folder does not exist"):
            train(config, tiny_dataset(), tmp_path / "new", resume=True, progress=False)
        assert not (tmp_path / "new").exists()  # refused before the folder is made
        done = train(config, tiny_dataset(), tmp_path / "run", progress=False)
        again = train(config, tiny_dataset(), tmp_path / "run", resume=True, progress=False)
        assert again["finished_before"] and again["fingerprint"] == done["fingerprint"]

    def test_sharded_equals_single_device(self, tmp_path):
        """4 fake CPU devices (conftest) split each batch; results match one device."""
        assert jax.device_count() == 4
        code = (
            "import jax, clr_jax, json, sys; sys.path.insert(0, " + repr(str(ROOT)) + ");"
            "from tests.helpers import read_tensorboard, tiny_dataset; from tests.test_train import MLP_CONFIG;"
            "from clr_jax.harness.train import TrainConfig, train;"
            "c = TrainConfig(num_steps=20, eval_every=20, log_every=10, **MLP_CONFIG);"
            "s = train(c, tiny_dataset(), sys.argv[1], schedule=clr_jax.triangular(0.01, 0.05, 5),"
            " progress=False); print(json.dumps([s['final_test_loss'], jax.device_count()]))"
        )
        outs = {}
        for devices in (1, 4):
            env = {**os.environ,
                   "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
            result = subprocess.run([sys.executable, "-c", code, str(tmp_path / str(devices))],
                                    capture_output=True, text=True, env=env, check=True)
            outs[devices] = json.loads(result.stdout.strip().splitlines()[-1])
        assert outs[1][1] == 1 and outs[4][1] == 4
        assert outs[4][0] == pytest.approx(outs[1][0], rel=1e-4)


def test_schedule_free_is_evaluated_at_its_averaged_point():
    """optax's schedule-free SGD, behind the harness's weight decay: the harness finds its
    state inside the chain and evaluates x, the averaged point, not the iterate y."""
    from clr_jax.harness.optim import eval_params
    from clr_jax.harness.train import make_eval_step

    config = TrainConfig(**{**MLP_CONFIG, "optimizer": "schedule_free_sgd",
                            "weight_decay": 0.001}, num_steps=6, eval_every=6,
                         schedule={"policy": "fixed", "base_lr": 0.05})
    trainer = Trainer(config, tiny_dataset())
    state, _ = trainer.run_steps(trainer.initial_state, 0, 6)
    (sf_state,) = [s for s in jax.tree.leaves(
        state["opt_state"], is_leaf=lambda x: isinstance(x, optax.contrib.ScheduleFreeState))
        if isinstance(s, optax.contrib.ScheduleFreeState)]
    averaged = optax.contrib.schedule_free_eval_params(sf_state, state["params"])
    chosen = eval_params(state["opt_state"], state["params"])
    for a, b in zip(jax.tree.leaves(averaged), jax.tree.leaves(chosen)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(averaged),
                                                        jax.tree.leaves(state["params"])))
    evaluated = trainer.evaluate(state)
    by_hand = jax.jit(make_eval_step(trainer.parts.eval_graphdef, trainer.data))(
        averaged, state["rest"])
    assert evaluated["test_loss"] == pytest.approx(float(by_hand["test_loss"]))
    # a plain optimizer's state: the parameters themselves
    assert eval_params(optax.sgd(0.1).init(state["params"]), state["params"]) \
        is state["params"]


@pytest.mark.parametrize("model", ["mlp", "resnet8"])
def test_steps_and_evaluation_compile_once_ahead(caplog, model):
    """The training steps are compiled in a thread from the model's shapes while the
    parameters are initialised, the evaluation in a thread while the first steps run:
    `run_steps` and `evaluate` use those programs, one compilation of each in all (a
    second would mean a thread compiled for arguments the real call does not pass).
    The trained parameters equal those of steps compiled on the spot, bit for bit."""
    import logging

    config = TrainConfig(model=model, num_steps=8, eval_every=4, log_every=4, batch_size=16,
                         eval_batch_size=10, schedule=[{"policy": "fixed", "base_lr": 0.01}])
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING, logger="jax"):
            trainer = Trainer(config, tiny_dataset())
    finally:
        jax.config.update("jax_log_compiles", False)
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING, logger="jax"):
            state, _ = trainer.run_steps(trainer.initial_state, 0, 4)
            first = trainer.evaluate(state)
            state, _ = trainer.run_steps(state, 4, 4)
            trainer.evaluate(state)
    finally:
        jax.config.update("jax_log_compiles", False)
    def compiled(name):
        return [r.getMessage() for r in caplog.records
                if r.getMessage().startswith(f"Compiling jit({name})")]

    assert len(compiled("evaluate")) == 1, compiled("evaluate")
    assert len(compiled("train_group")) == 1, compiled("train_group")
    assert trainer._eval_ahead is not None and not trainer._eval_ahead.is_alive()
    group = jax.jit(trainer._run_group.__wrapped__, static_argnames="group",
                    compiler_options=trainer.compiler_options)
    again = trainer.initial_state
    for start in range(0, 8, trainer.group):
        again, _ = group(again, jnp.int32(start), trainer.epoch_order(start), trainer.group)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), again["params"],
                                     state["params"]))
    # the same numbers as an evaluation compiled on the spot, by a fresh jit
    fresh = jax.jit(trainer._evaluate.__wrapped__)(state["params"], state["rest"])
    assert float(fresh["test_accuracy"]) == trainer.evaluate(state)["test_accuracy"]
    assert 0 <= first["test_accuracy"] <= 1
