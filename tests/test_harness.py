"""The training harness: models, Caffe SGD, data, training, resume, sharding, the CLI."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import clr_jax
from clr_jax import cli
from clr_jax.harness import models
from clr_jax.harness.data import ImageDataset, load_dataset, load_image_folder
from clr_jax.harness.optim import caffe_sgd, make_optimizer, multipliers_for
from clr_jax.harness.train import TrainConfig, Trainer, train

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = Path(os.environ.get("CLR_JAX_CIFAR10",
                                   ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"))


def tiny_dataset(n_train=64, n_test=20, size=8, seed=0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n_train + n_test).astype(np.int32)
    # Learnable: the class sets the mean brightness of one channel.
    images = rng.integers(0, 120, (n_train + n_test, size, size, 3))
    images[np.arange(len(labels)), :, :, labels] += 100
    images = images.astype(np.uint8)
    return ImageDataset(images[:n_train], labels[:n_train], images[n_train:],
                        labels[n_train:], ("a", "b", "c"))


class TestCaffeNetwork:
    def test_layer_shapes_and_parameter_counts(self):
        model = models.CaffeCifar10(rngs=nnx.Rngs(0))
        counts = {name: sum(x.size for x in jax.tree.leaves(nnx.state(getattr(model, name))))
                  for name in ("conv1", "conv2", "conv3", "ip1")}
        # 5*5*3*32+32, 5*5*32*32+32, 5*5*32*64+64, 1024*10+10
        assert counts == {"conv1": 2432, "conv2": 25632, "conv3": 51264, "ip1": 10250}
        assert sum(counts.values()) == 89_578
        x = jnp.zeros((2, 32, 32, 3))
        h1 = models._pool_ceil(model.conv1(x), "max")
        h2 = models._pool_ceil(model.conv2(h1), "avg")
        h3 = models._pool_ceil(model.conv3(h2), "avg")
        assert (h1.shape, h2.shape, h3.shape) == ((2, 16, 16, 32), (2, 8, 8, 32), (2, 4, 4, 64))
        assert model(x).shape == (2, 10)

    def test_initialisation(self):
        model = models.CaffeCifar10(rngs=nnx.Rngs(0))
        assert np.std(model.conv1.kernel[...]) == pytest.approx(1e-4, rel=0.05)
        assert np.std(model.conv2.kernel[...]) == pytest.approx(1e-2, rel=0.05)
        assert np.all(model.conv1.bias[...] == 0)

    def test_ceil_pooling_by_hand(self):
        x = jnp.arange(25.0).reshape(1, 5, 5, 1)
        # 5 -> ceil((5 - 3) / 2) + 1 = 2 outputs; windows rows/cols {0,1,2} and {2,3,4}
        np.testing.assert_allclose(models._pool_ceil(x, "max")[0, :, :, 0], [[12, 14], [22, 24]])
        x = jnp.arange(16.0).reshape(1, 4, 4, 1)
        # 4 -> 2 outputs; the second window is cut to rows/cols {2, 3}
        avg = models._pool_ceil(x, "avg")[0, :, :, 0]
        np.testing.assert_allclose(avg, [[5.0, 6.5], [11.0, 12.5]])

    def test_lrn_by_hand(self):
        x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(100.0)
        y = models._lrn_within_channel(x)
        expected = 100.0 * (1 + 5e-5 / 9 * 100.0**2) ** -0.75
        assert float(y[0, 1, 1, 0]) == pytest.approx(expected, rel=1e-6)

    def test_resnet20_and_mlp(self):
        resnet = models.CifarResNet(20, rngs=nnx.Rngs(0))
        n = sum(x.size for x in jax.tree.leaves(nnx.state(resnet, nnx.Param)))
        assert 0.26e6 < n < 0.28e6
        assert resnet(jnp.zeros((2, 32, 32, 3))).shape == (2, 10)
        assert models.MLP(5, in_features=12, rngs=nnx.Rngs(0))(jnp.zeros((3, 2, 2, 3))).shape \
            == (3, 5)

    def test_build_model_errors(self):
        with pytest.raises(ValueError, match="model must be one of"):
            models.build_model("vgg", 10, (32, 32, 3))
        with pytest.raises(ValueError, match="takes 32x32 images"):
            models.build_model("caffe_cifar10", 10, (28, 28, 1))


class TestCaffeSGD:
    def test_two_steps_by_hand(self):
        # v1 = lr0 * lm * (g + wd * dm * w0); w1 = w0 - v1
        # v2 = m v1 + lr1 * lm * (g + wd * dm * w1); w2 = w1 - v2
        lr = lambda t: jnp.where(t == 0, 0.1, 0.3)  # noqa: E731
        params = {"a": jnp.array(2.0), "b": jnp.array(-1.0)}
        mults = {"a": (2.0, 1.0), "b": (1.0, 0.0)}
        tx = caffe_sgd(lr, momentum=0.9, weight_decay=0.5, multipliers=mults)
        state = tx.init(params)
        g = {"a": jnp.array(1.0), "b": jnp.array(4.0)}
        w = dict(a=2.0, b=-1.0)
        v = dict(a=0.0, b=0.0)
        for t, rate in enumerate((0.1, 0.3)):
            for k, (lm, dm) in mults.items():
                v[k] = 0.9 * v[k] + rate * lm * (float(g[k]) + 0.5 * dm * w[k])
                w[k] -= v[k]
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
            np.testing.assert_allclose([params["a"], params["b"]], [w["a"], w["b"]], rtol=1e-6)

    def test_differs_from_optax_sgd_when_rate_changes(self):
        lr = lambda t: 0.1 * (t + 1)  # noqa: E731
        caffe, plain = caffe_sgd(lr, momentum=0.9), optax.sgd(lr, momentum=0.9)
        sc, sp = caffe.init(jnp.zeros(())), plain.init(jnp.zeros(()))
        outs = []
        for _ in range(2):
            uc, sc = caffe.update(jnp.ones(()), sc)
            up, sp = plain.update(jnp.ones(()), sp)
            outs.append((float(uc), float(up)))
        assert outs[0][0] == pytest.approx(outs[0][1])  # first step equal
        assert outs[1][0] == pytest.approx(-(0.9 * 0.1 + 0.2))  # caffe: lr inside
        assert outs[1][1] == pytest.approx(-0.2 * (0.9 + 1))  # optax: lr after

    def test_caffe_multipliers_land_on_the_right_layers(self):
        model = models.CaffeCifar10(rngs=nnx.Rngs(0))
        params = nnx.state(model, nnx.Param)
        m = multipliers_for(params, models.CAFFE_MULTIPLIERS)
        assert m["ip1"]["kernel"] == (1.0, 250.0) and m["ip1"]["bias"] == (2.0, 0.0)
        assert m["conv1"]["bias"] == (2.0, 1.0) and m["conv3"]["bias"] == (1.0, 1.0)

    def test_named_optimizers(self):
        for name in ("sgd", "momentum", "nesterov", "adam", "rmsprop", "adagrad", "adadelta"):
            tx = make_optimizer(name, 0.01)
            state = tx.init(jnp.ones(2))
            updates, _ = tx.update(jnp.ones(2), state, jnp.ones(2))
            assert np.all(np.asarray(updates) < 0), name
        with pytest.raises(ValueError, match="optimizer must be one of"):
            make_optimizer("lbfgs", 0.1)


class TestData:
    def test_image_folder_directory_and_errors(self, tmp_path):
        from PIL import Image

        for split, n in (("train", 3), ("test", 1)):
            for cls in ("cat", "dog"):
                folder = tmp_path / "d" / split / cls
                folder.mkdir(parents=True)
                for i in range(n):
                    Image.new("RGB", (4, 4), (i * 40, 10, 200)).save(folder / f"{i}.png")
        d = load_image_folder(tmp_path / "d", use_cache=False)
        assert d.train_images.shape == (6, 4, 4, 3) and d.class_names == ("cat", "dog")
        np.testing.assert_array_equal(np.bincount(d.test_labels), [1, 1])
        (tmp_path / "d" / "train" / "cow").mkdir()
        with pytest.raises(ValueError, match="class folder train/cow .* has no images"):
            load_image_folder(tmp_path / "d", use_cache=False)
        (tmp_path / "d" / "train" / "cow").rmdir()
        (tmp_path / "d" / "train" / "cat" / "bad.jpg").write_bytes(b"not a jpeg")
        with pytest.raises(ValueError, match="bad.jpg"):
            load_image_folder(tmp_path / "d", use_cache=False)
        with pytest.raises(ValueError, match="does not exist"):
            load_image_folder(tmp_path / "missing")
        (tmp_path / "empty").mkdir()
        with pytest.raises(ValueError, match="no train images"):
            load_image_folder(tmp_path / "empty", use_cache=False)

    def test_bundled_sample(self):
        d = load_dataset("sample")
        assert d.train_images.shape == (5000, 32, 32, 3) and d.test_images.shape[0] == 1000
        np.testing.assert_array_equal(np.bincount(d.train_labels), [500] * 10)

    def test_unknown_dataset_and_tfds_without_network(self, tmp_path):
        with pytest.raises(ValueError, match="unknown data set 'imagenet7'"):
            load_dataset("imagenet7")
        with pytest.raises(ValueError, match="cifar10"):
            load_dataset("cifar10", tmp_path)

    @pytest.mark.skipif(not SHARED_CIFAR.exists(),
                        reason=f"CIFAR-10 archive not found at {SHARED_CIFAR}")
    def test_reads_the_cifar10_archive(self):
        d = load_image_folder(SHARED_CIFAR)
        assert d.train_images.shape == (50_000, 32, 32, 3)
        assert d.test_images.shape == (10_000, 32, 32, 3)
        assert d.class_names[0] == "airplane" and d.class_names[-1] == "truck"
        np.testing.assert_array_equal(np.bincount(d.test_labels), [1000] * 10)


MLP_CONFIG = dict(model="mlp", optimizer="caffe_sgd", batch_size=16, weight_decay=0.0,
                  preprocess="standard", eval_batch_size=10)


class TestTraining:
    def test_learns_tiny_problem(self, tmp_path):
        config = TrainConfig(num_steps=60, eval_every=30, log_every=10, **MLP_CONFIG)
        summary = train(config, tiny_dataset(), clr_jax.triangular(0.001, 0.02, 10),
                        tmp_path / "run", progress=False)
        rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
        assert rows[-1]["loss"] < rows[0]["loss"]
        assert summary["final_test_accuracy"] > 0.6
        assert len(summary["fingerprint"]) == 64
        np.testing.assert_allclose([r["lr"] for r in rows],
                                   [float(clr_jax.triangular(0.001, 0.02, 10)(s - 1))
                                    for s in (10, 20, 30, 40, 50, 60)], rtol=1e-6)

    def test_epoch_orders(self):
        def orders(shuffle):
            config = TrainConfig(num_steps=4, eval_every=4, log_every=4, shuffle=shuffle,
                                 **MLP_CONFIG)
            trainer = Trainer(config, tiny_dataset(), optax.constant_schedule(0.1))
            return [np.asarray(trainer._permutation(jnp.int32(e))) for e in (0, 1)]

        fixed, shuffled = orders(False), orders(True)
        np.testing.assert_array_equal(fixed[0], fixed[1])
        assert not np.array_equal(fixed[0], np.arange(64))  # not the class-sorted order
        assert not np.array_equal(shuffled[0], shuffled[1])
        np.testing.assert_array_equal(np.sort(shuffled[1]), np.arange(64))

    def test_deterministic_and_seed_sensitive(self, tmp_path):
        def run(seed, name):
            config = TrainConfig(num_steps=20, eval_every=20, log_every=10, seed=seed,
                                 augment=True, **MLP_CONFIG)
            return train(config, tiny_dataset(), clr_jax.triangular(0.01, 0.05, 5),
                         tmp_path / name, progress=False)["fingerprint"]

        assert run(0, "a") == run(0, "b") != run(1, "c")

    def test_resume_gives_the_same_fingerprint(self, tmp_path):
        schedule = clr_jax.triangular2(0.005, 0.05, 8)
        config = TrainConfig(num_steps=40, eval_every=20, log_every=10, checkpoint_every=10,
                             augment=True, **MLP_CONFIG)
        whole = train(config, tiny_dataset(), schedule, tmp_path / "whole", progress=False)
        short = TrainConfig(**{**config.__dict__, "num_steps": 40})
        # Interrupt after step 20 by raising from the logging hook, then resume.
        def stop_at_20(row):
            if row["step"] == 20:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            train(short, tiny_dataset(), schedule, tmp_path / "split", progress=False,
                  on_log=stop_at_20)
        assert not (tmp_path / "split" / "summary.json").exists()
        resumed = train(short, tiny_dataset(), schedule, tmp_path / "split", resume=True,
                        progress=False)
        assert resumed["fingerprint"] == whole["fingerprint"]
        rows = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(r)["step"] for r in rows] == [10, 20, 30, 40]

    def test_refuses_to_overwrite_and_checks_resume_settings(self, tmp_path):
        config = TrainConfig(num_steps=10, eval_every=10, log_every=10, checkpoint_every=10,
                             **MLP_CONFIG)
        train(config, tiny_dataset(), optax.constant_schedule(0.01), tmp_path / "r",
              progress=False)
        with pytest.raises(ValueError, match="already holds results"):
            train(config, tiny_dataset(), optax.constant_schedule(0.01), tmp_path / "r",
                  progress=False)
        other = TrainConfig(**{**config.__dict__, "batch_size": 8})
        with pytest.raises(ValueError, match="differ from the saved run .*config.batch_size"):
            train(other, tiny_dataset(), optax.constant_schedule(0.01), tmp_path / "r",
                  resume=True, progress=False)
        assert (tmp_path / "r" / "summary.json").exists()  # nothing lost

    def test_non_finite_loss_stops_with_step_and_rate(self, tmp_path):
        from clr_jax.harness.train import TrainingError

        config = TrainConfig(num_steps=40, eval_every=10, log_every=10, checkpoint_every=10,
                             **{**MLP_CONFIG, "preprocess": "caffe"})
        schedule = lambda t: jnp.where(t < 15, 1e-4, jnp.inf)  # noqa: E731 - a broken rate
        with pytest.raises(TrainingError, match=r"loss became nan at step 1[5-9] \(learning rate inf\)"):
            train(config, tiny_dataset(), schedule, tmp_path / "nan", progress=False)
        assert (tmp_path / "nan" / "checkpoints" / "10").exists()

    def test_sharded_equals_single_device(self, tmp_path):
        """4 fake CPU devices (conftest) split each batch; results match one device."""
        assert jax.device_count() == 4
        code = (
            "import jax, clr_jax, json, sys; sys.path.insert(0, %r);"
            "from tests.test_harness import tiny_dataset, MLP_CONFIG;"
            "from clr_jax.harness.train import TrainConfig, train;"
            "c = TrainConfig(num_steps=20, eval_every=20, log_every=10, **MLP_CONFIG);"
            "s = train(c, tiny_dataset(), clr_jax.triangular(0.01, 0.05, 5), sys.argv[1],"
            " progress=False); print(json.dumps([s['final_test_loss'], jax.device_count()]))"
        ) % str(ROOT)
        outs = {}
        for devices in (1, 4):
            env = {**os.environ,
                   "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
            result = subprocess.run([sys.executable, "-c", code, str(tmp_path / str(devices))],
                                    capture_output=True, text=True, env=env, check=True)
            outs[devices] = json.loads(result.stdout.strip().splitlines()[-1])
        assert outs[1][1] == 1 and outs[4][1] == 4
        assert outs[4][0] == pytest.approx(outs[1][0], rel=1e-4)


class TestCommandLine:
    def test_train_and_range_test_on_a_folder(self, tmp_path, capsys):
        from PIL import Image

        rng = np.random.default_rng(0)
        for split, n in (("train", 40), ("test", 10)):
            for c, cls in enumerate(("x", "y")):
                folder = tmp_path / "data" / split / cls
                folder.mkdir(parents=True)
                for i in range(n):
                    pixels = rng.integers(0, 100, (8, 8, 3)) + 100 * c
                    Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
        with tarfile.open(tmp_path / "data.tar.gz", "w:gz") as tar:
            tar.add(tmp_path / "data", arcname="data")
        common = ["--dataset", str(tmp_path / "data.tar.gz"), "--model", "mlp",
                  "--batch-size", "8", "--no-progress", "--preprocess", "standard"]
        code = cli.main(["train", *common, "--steps", "16", "--eval-every", "8",
                         "--policy", "triangular", "--base-lr", "0.001", "--max-lr", "0.01",
                         "--step-size-epochs", "1", "--out", str(tmp_path / "run")])
        assert code == 0
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["steps"] == 16 and summary["schedule"]["step_size"] == 10
        assert (tmp_path / "run" / "learning_curves.png").exists()
        capsys.readouterr()
        code = cli.main(["train", *common, "--steps", "16", "--eval-every", "8",
                         "--policy", "triangular", "--base-lr", "0.001", "--max-lr", "0.02",
                         "--step-size-epochs", "1", "--out", str(tmp_path / "run"), "--resume"])
        assert code == 2 and "differ from the saved run" in capsys.readouterr().err
        code = cli.main(["range-test", *common, "--steps", "20", "--eval-every", "4",
                         "--min-lr", "0.001", "--max-lr", "0.5", "--out", str(tmp_path / "rt")])
        assert code == 0
        assert (tmp_path / "rt" / "range_test.png").exists()
        assert "range test: " in capsys.readouterr().out

    @pytest.mark.parametrize("argv, match", [
        (["train", "--dataset", "nowhere", "--out", "{tmp}/a", "--steps", "5", "--policy",
          "fixed", "--base-lr", "0.1"], "unknown data set 'nowhere'"),
        (["train", "--model", "vgg", "--out", "{tmp}/a"], "invalid choice: 'vgg'"),
        (["train", "--optimizer", "lbfgs", "--out", "{tmp}/a"], "invalid choice: 'lbfgs'"),
        (["train", "--out", "{tmp}/a", "--steps", "5"], "--policy (or --stage) is required"),
        (["train", "--out", "{tmp}/a", "--steps", "5", "--epochs", "1", "--policy", "fixed",
          "--base-lr", "0.1"], "--steps or --epochs, not both"),
        (["train", "--out", "{tmp}/a", "--steps", "-5", "--policy", "fixed", "--base-lr",
          "0.1"], "--steps must be >= 1"),
        (["train", "--out", "{tmp}/a", "--steps", "5", "--batch-size", "9999", "--policy",
          "fixed", "--base-lr", "0.1"], "batch_size=9999 is larger than the training set"),
        (["train", "--out", "{tmp}/file/a", "--steps", "5", "--policy", "fixed",
          "--base-lr", "0.1"], "cannot write to --out"),
        (["range-test", "--out", "{tmp}/b", "--steps", "1"], "num_steps must be an integer >= 2"),
        (["range-test", "--out", "{tmp}/b", "--steps", "5", "--min-lr", "0.5", "--max-lr",
          "0.1"], "max_lr must be > min_lr"),
        (["train", "--dataset", "{tmp}/broken.tar.gz", "--out", "{tmp}/a", "--steps", "5",
          "--policy", "fixed", "--base-lr", "0.1"], "cannot read archive"),
    ])
    def test_user_errors_are_one_line(self, tmp_path, argv, match, capsys):
        (tmp_path / "file").write_text("")
        (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b garbage")
        code = cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
        err = capsys.readouterr().err
        assert code != 0 and match in err, err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_demo_writes_a_report(tmp_path):
    from clr_jax.harness.jobs import run_demo

    report = run_demo(tmp_path / "demo", progress=False, scale=0.04,
                      dataset=tiny_dataset(n_train=400, n_test=100, size=32))
    for name in ("summary.md", "schedule.png", "learning_curves.png",
                 "range_test/range_test.png", "clr/summary.json", "fixed/summary.json"):
        assert (tmp_path / "demo" / name).exists(), name
    assert len(report["runs"]) == 2
    with pytest.raises(ValueError, match="already holds a demo report"):
        run_demo(tmp_path / "demo", progress=False, scale=0.04,
                 dataset=tiny_dataset(n_train=400, n_test=100, size=32))


class TestFastKernels:
    """The CPU kernels of the Caffe net change speed, not numerics."""

    @pytest.mark.parametrize("h, w", [(32, 32), (16, 16), (7, 9), (8, 5)])
    def test_max_pool_gradient_is_caffes_first_max(self, h, w):
        rng = np.random.default_rng(h * w)
        x = rng.integers(0, 4, (2, h, w, 3)).astype(np.float32)  # many ties
        y = np.asarray(models._reduce_max(jnp.asarray(x)))
        g = rng.normal(size=y.shape).astype(np.float32)
        dx = np.asarray(jax.vjp(models._max_pool_ceil, jnp.asarray(x))[1](jnp.asarray(g))[0])
        want = np.zeros_like(x)
        for n, a, b, c in np.ndindex(*y.shape):
            cells = [(2 * a + i, 2 * b + j) for i in range(3) for j in range(3)
                     if 2 * a + i < h and 2 * b + j < w]
            values = [x[n, r, s, c] for r, s in cells]
            r, s = cells[int(np.argmax(values))]  # argmax: the first maximum
            want[n, r, s, c] += g[n, a, b, c]
            assert y[n, a, b, c] == max(values)
        np.testing.assert_allclose(dx, want, atol=1e-6)

    def test_lrn_square_roots_equal_the_power(self, monkeypatch):
        x = jax.random.normal(jax.random.key(3), (2, 9, 7, 5)) * 30
        g = jax.random.normal(jax.random.key(4), x.shape)
        fast = jax.vjp(models._lrn_within_channel, x)
        monkeypatch.setitem(models.FAST_KERNELS, "lrn_sqrt", False)
        plain = jax.vjp(models._lrn_within_channel, x)
        np.testing.assert_allclose(fast[0], plain[0], rtol=2e-6)
        np.testing.assert_allclose(fast[1](g)[0], plain[1](g)[0], rtol=1e-5, atol=1e-6)
        # an independent float64 reference of the forward pass
        x64 = np.asarray(x, np.float64)
        padded = np.pad(x64 ** 2, ((0, 0), (1, 1), (1, 1), (0, 0)))
        sums = sum(padded[:, i:i + 9, j:j + 7] for i in range(3) for j in range(3))
        np.testing.assert_allclose(fast[0], x64 * (1 + 5e-5 / 9 * sums) ** -0.75, rtol=2e-6)

    @pytest.mark.parametrize("shape, kernel_shape", [
        ((3, 16, 16, 32), (5, 5, 32, 32)), ((2, 8, 8, 32), (5, 5, 32, 64)),
        ((2, 7, 10, 6), (3, 5, 6, 4)), ((1, 5, 4, 8), (5, 5, 8, 3)),
    ])
    def test_spectral_convolution_equals_lax_conv(self, shape, kernel_shape):
        kx, kk, kg = jax.random.split(jax.random.key(1), 3)
        x = jax.random.normal(kx, shape)
        kernel = jax.random.normal(kk, kernel_shape)
        g = jax.random.normal(kg, shape[:3] + kernel_shape[3:])
        fast = jax.vjp(models._conv_spectral, x, kernel)
        plain = jax.vjp(models._conv_same, x, kernel)
        scale = float(jnp.abs(plain[0]).max())
        np.testing.assert_allclose(fast[0], plain[0], atol=2e-6 * scale)
        for a, b in zip(fast[1](g), plain[1](g)):
            np.testing.assert_allclose(a, b, atol=2e-6 * float(jnp.abs(b).max()))

    def test_spectral_convolution_is_exact_on_an_impulse(self):
        """A unit impulse returns the kernel, flipped as a correlation places it."""
        x = jnp.zeros((1, 9, 9, 1)).at[0, 4, 4, 0].set(1.0)
        kernel = jnp.arange(25.0).reshape(5, 5, 1, 1)
        y = models._conv_spectral(x, kernel)[0, 2:7, 2:7, 0]
        np.testing.assert_allclose(y, kernel[::-1, ::-1, 0, 0], atol=1e-5)

    def test_compiler_options_per_model_on_cpu(self, monkeypatch):
        data = load_dataset("sample")
        long = models.LOOP_EMITTERS_MIN_STEPS
        caffe = Trainer(TrainConfig(num_steps=long, batch_size=48), data,
                        optax.constant_schedule(0.001))
        assert caffe.compiler_options == {**models.YNN_REDUCTIONS_ONLY,
                                          "xla_cpu_use_fusion_emitters": False}
        assert caffe.compiler_options_for(long - 1) == models.YNN_REDUCTIONS_ONLY
        resnet = models.CifarResNet(20, 10, rngs=nnx.Rngs(0))
        assert models.compiler_options(resnet) == models.YNN_REDUCTIONS_ONLY
        mlp = Trainer(TrainConfig(model="mlp", caffe_multipliers=False, num_steps=long,
                                  batch_size=48), data, optax.constant_schedule(0.001))
        assert mlp.compiler_options is None
        monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
        assert models.compiler_options(models.CaffeCifar10(rngs=nnx.Rngs(0))) is None

    def test_convolutions_leave_ynnpack_and_reductions_stay(self):
        """The option reaches XLA: the compiled convolution is XLA's own, the reduction
        still a YNNPACK fusion (this jaxlib's names)."""
        x, kernel = jnp.ones((16, 32, 32, 3)), jnp.ones((5, 5, 3, 32))

        def conv_and_sum(x, kernel):
            y = models._conv_same(x, kernel)
            return y, y.sum((0, 1, 2))

        def entry(options):  # the compiled program's top-level instructions
            f = jax.jit(conv_and_sum, compiler_options=options)
            text = f.lower(x, kernel).compile().as_text()
            return text[text.index("ENTRY"):].split("\n}")[0]

        default, reductions_only = entry(None), entry(models.YNN_REDUCTIONS_ONLY)
        assert "convolution(" not in default and "__ynn_fusion" in default
        assert "convolution(" in reductions_only and "__ynn_fusion" in reductions_only

    def test_training_curve_matches_the_plain_kernels(self, monkeypatch):
        data = load_dataset("sample")
        config = TrainConfig(num_steps=8, eval_every=8, log_every=8, batch_size=48,
                             shuffle=False)
        schedule = clr_jax.triangular(0.001, 0.006, 4)

        def losses():
            trainer = Trainer(config, data, schedule)
            return np.asarray(trainer.run_steps(trainer.initial_state, 0, 8)[1])

        monkeypatch.setattr(models, "LOOP_EMITTERS_MIN_STEPS", 0)
        fast = losses()
        monkeypatch.setattr(models, "FAST_KERNELS", dict.fromkeys(models.FAST_KERNELS, False))
        plain = losses()
        np.testing.assert_allclose(fast, plain, rtol=1e-5)


def test_batchnorm_model_trains_and_updates_its_statistics():
    """Regression: BatchNorm statistics were mutated across trace levels (ResNet could
    not train in the harness)."""
    data = tiny_dataset(n_train=64, n_test=20, size=8)
    config = TrainConfig(model="resnet20", optimizer="momentum", caffe_multipliers=False,
                         batch_size=16, num_steps=2, eval_every=2, log_every=2,
                         preprocess="standard")
    trainer = Trainer(config, data, optax.constant_schedule(0.05))
    state, losses = trainer.run_steps(trainer.initial_state, 0, 2)
    assert np.isfinite(np.asarray(losses)).all()
    before = jax.tree.leaves(trainer.initial_state["rest"])
    after = jax.tree.leaves(state["rest"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    assert 0 <= trainer.evaluate(state)["test_accuracy"] <= 1
