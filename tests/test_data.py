"""Loading image folders, archives, the bundled sample and tfds sets."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clr_jax._io import atomic_write
from clr_jax.harness import data as data_module
from clr_jax.harness.data import ImageDataset, load_dataset, load_image_folder


ROOT = Path(__file__).resolve().parents[1]


SHARED_CIFAR = Path(os.environ.get("CLR_JAX_CIFAR10",
                                   ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"))


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

    def test_unknown_dataset(self, tmp_path):
        with pytest.raises(ValueError, match="unknown data set 'imagenet7'"):
            load_dataset("imagenet7", tmp_path)
        with pytest.raises(ValueError, match="unknown data set 'no such/place!'"):
            load_dataset("no such/place!")

    @pytest.mark.skipif(not SHARED_CIFAR.exists(),
                        reason=f"CIFAR-10 archive not found at {SHARED_CIFAR}")
    def test_reads_the_cifar10_archive(self):
        d = load_image_folder(SHARED_CIFAR)
        assert d.train_images.shape == (50_000, 32, 32, 3)
        assert d.test_images.shape == (10_000, 32, 32, 3)
        assert d.class_names[0] == "airplane" and d.class_names[-1] == "truck"
        np.testing.assert_array_equal(np.bincount(d.test_labels), [1000] * 10)


def _folder(root, n=3, size=4):
    from PIL import Image

    for split, count in (("train", n), ("test", 1)):
        for c, cls in enumerate(("cat", "dog")):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (size, size), (i * 40, 100 * c, 200)).save(folder / f"{i}.png")
    return root


class TestCache:
    """The decoded-image cache notices every change inside a folder or archive."""

    @pytest.fixture(autouse=True)
    def cache(self, tmp_path, monkeypatch):
        monkeypatch.setenv("CLR_JAX_CACHE", str(tmp_path / "cache"))

    def test_changes_inside_a_folder_are_seen(self, tmp_path):
        from PIL import Image

        root = _folder(tmp_path / "d")
        first = load_image_folder(root)
        assert load_image_folder(root).train_images.shape[0] == 6  # from the cache
        assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
        Image.new("RGB", (4, 4), (1, 2, 3)).save(root / "train" / "cat" / "9.png")  # added
        assert load_image_folder(root).train_images.shape[0] == 7
        (root / "train" / "cat" / "9.png").unlink()  # removed
        assert load_image_folder(root).train_images.shape[0] == 6
        replaced = root / "train" / "dog" / "0.png"
        Image.new("RGB", (4, 4), (255, 255, 255)).save(replaced)  # replaced, same size
        again = load_image_folder(root)
        assert not np.array_equal(again.train_images, first.train_images)
        np.testing.assert_array_equal(again.train_images[3], 255)
        replaced.write_bytes(replaced.read_bytes()[:20])  # cut short: an error, not stale data
        with pytest.raises(ValueError, match="cannot decode image .*0.png"):
            load_image_folder(root)

    def test_processes_filling_the_cache_at_once_all_succeed(self, tmp_path):
        """The processes of one distributed run decode the same folder at the same time
        and each writes the cache entry."""
        root = _folder(tmp_path / "d")
        code = ("import sys; from clr_jax.harness.data import load_image_folder; "
                "print(load_image_folder(sys.argv[1]).train_images.sum())")
        runs = [subprocess.Popen([sys.executable, "-c", code, str(root)], text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for _ in range(4)]
        outputs = [p.communicate(timeout=120) for p in runs]
        assert [p.returncode for p in runs] == [0] * 4, outputs
        assert len({out for out, _ in outputs}) == 1
        assert [p.name for p in (tmp_path / "cache").iterdir()] == \
            [next((tmp_path / "cache").glob("*.npz")).name]  # one entry, no temporary left

    def test_a_cache_that_cannot_be_written_only_costs_the_cache(self, tmp_path, monkeypatch):
        (tmp_path / "file").write_text("")
        monkeypatch.setenv("CLR_JAX_CACHE", str(tmp_path / "file" / "cache"))
        root = _folder(tmp_path / "d")
        assert load_image_folder(root).train_images.shape[0] == 6

    def test_a_replaced_archive_is_seen(self, tmp_path):
        import tarfile

        root = _folder(tmp_path / "d")
        with tarfile.open(tmp_path / "d.tar.gz", "w:gz") as tar:
            tar.add(root, arcname="d")
        assert load_image_folder(tmp_path / "d.tar.gz").train_images.shape[0] == 6
        _folder(root, n=4)
        with tarfile.open(tmp_path / "d.tar.gz", "w:gz") as tar:
            tar.add(root, arcname="d")
        assert load_image_folder(tmp_path / "d.tar.gz").train_images.shape[0] == 8


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_a_cut_archive_is_one_clear_error(tmp_path, cut):
    """An interrupted download of the documented .tar.gz."""
    import tarfile

    root = _folder(tmp_path / "d", n=40, size=16)
    with tarfile.open(tmp_path / "full.tar.gz", "w:gz") as tar:
        tar.add(root, arcname="d")
    data = (tmp_path / "full.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(ValueError, match="cannot read archive .*damaged or incomplete"):
        load_image_folder(tmp_path / "cut.tar.gz", use_cache=False)


def _arrays(n_train=8, n_test=4, classes=3, size=4):
    rng = np.random.default_rng(0)
    return dict(train_images=rng.integers(0, 255, (n_train, size, size, 3), np.uint8),
                train_labels=rng.integers(0, classes, n_train).astype(np.int32),
                test_images=rng.integers(0, 255, (n_test, size, size, 3), np.uint8),
                test_labels=rng.integers(0, classes, n_test).astype(np.int32),
                class_names=tuple("abc"[:classes]))


@pytest.mark.parametrize("change, match", [
    (dict(train_labels=np.zeros(7, np.int32)), "train_labels has 7 labels for 8 images"),
    (dict(test_labels=np.zeros(5, np.int32)), "test_labels has 5 labels for 4 images"),
    (dict(train_labels=np.full(8, 3, np.int32)), "train_labels holds 3, outside 0..2"),
    (dict(test_labels=np.full(4, -1, np.int32)), "test_labels holds -1"),
    (dict(train_images=np.zeros((8, 4, 4, 3), np.float32)), "train_images must be uint8"),
    (dict(test_images=np.zeros((4, 4, 4, 3))), "test_images must be uint8"),
    (dict(train_images=np.zeros((8, 4, 4), np.uint8)), r"shape \[N, H, W, C\]"),
    (dict(test_images=np.zeros((4, 5, 5, 3), np.uint8)), "both splits need one size"),
    (dict(train_labels=np.zeros(8, np.float32)), "1-D array of integers"),
    (dict(class_names=()), "class_names is empty"),
    (dict(train_images=np.zeros((0, 4, 4, 3), np.uint8), train_labels=np.zeros(0, np.int32)),
     "the train split is empty"),
])
def test_image_dataset_refuses_what_does_not_fit(change, match):
    with pytest.raises(ValueError, match=match):
        ImageDataset(**{**_arrays(), **change})


def test_without_tensorflow_datasets_the_error_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tfds(name, *args, **kwargs):
        if name == "tensorflow_datasets":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tfds)
    with pytest.raises(ValueError) as error:
        data_module.load_dataset("cifar10", tmp_path)
    assert "--data " not in str(error.value) and "Error)" not in str(error.value)
    assert 'pip install "clr-jax[tfds]"' in str(error.value)


# -- tensorflow-datasets for real: a set built here, read as --dataset reads it ------------

tfds = pytest.importorskip("tensorflow_datasets")
TFDS_SOURCE = {}  # the image folder the builder below reads, set by the test


class ClrJaxTestFolder(tfds.core.GeneratorBasedBuilder):
    """A real tfds image set made from a small image folder (PNG files passed as they
    are, so preparing needs no TensorFlow)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3)),
                "label": tfds.features.ClassLabel(names=["cat", "dog", "emu"])}),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(TFDS_SOURCE["root"] / split)
                for split in ("train", "test")}

    def _generate_examples(self, folder):
        for path in sorted(folder.glob("*/*.png")):
            yield f"{path.parent.name}/{path.name}", {"image": path, "label": path.parent.name}


class ClrJaxTestDownload(tfds.core.GeneratorBasedBuilder):
    """A set whose files must be downloaded, from a port where nothing listens: the
    download fails as it does without internet."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(
                num_classes=2)}))

    def _split_generators(self, dl_manager):
        dl_manager.download("http://127.0.0.1:9/clr-jax-test.tar.gz")
        return {}

    def _generate_examples(self):
        yield from ()


def _png_folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2)):
        for c, name in enumerate(("cat", "dog", "emu")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) // (c + 1)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_a_tfds_set_is_read_as_the_command_line_reads_it(tmp_path, capsys):
    """A set prepared here as ArrayRecord (no TensorFlow, no internet) is read by the
    same call `--dataset NAME --data-dir DIR` makes; its images and labels are the
    source files'."""
    from PIL import Image

    from clr_jax import cli

    TFDS_SOURCE["root"] = tmp_path / "images"
    _png_folder(TFDS_SOURCE["root"])
    data_dir = tmp_path / "tfds"
    ClrJaxTestFolder(data_dir=str(data_dir), file_format="array_record").download_and_prepare()

    dataset = data_module.load_dataset("clr_jax_test_folder", data_dir)
    assert dataset.class_names == ("cat", "dog", "emu")
    for split in ("train", "test"):
        expected = {}
        for path in (TFDS_SOURCE["root"] / split).glob("*/*.png"):
            image = np.asarray(Image.open(path).convert("RGB"))
            expected[image.tobytes()] = ("cat", "dog", "emu").index(path.parent.name)
        images = getattr(dataset, f"{split}_images")
        labels = getattr(dataset, f"{split}_labels")
        assert len(images) == len(expected)  # every file, once (tfds shuffles the order)
        for image, label in zip(images, labels):
            assert expected[image.tobytes()] == label
    # the command line takes the same path
    code = cli.main(["train", "--dataset", "clr_jax_test_folder", "--data-dir", str(data_dir),
                     "--model", "mlp", "--batch-size", "4", "--steps", "3",
                     "--policy", "fixed", "--base-lr", "0.01", "--no-progress",
                     "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    # a second load reads the cache; a damaged cache is discarded and rebuilt
    cached = next(data_module.cache_dir().glob("tfds-clr_jax_test_folder.*.npz"))
    cached.write_bytes(cached.read_bytes()[:200])
    again = data_module.load_dataset("clr_jax_test_folder", data_dir)
    np.testing.assert_array_equal(again.train_images, dataset.train_images)
    assert "do not read back whole" in capsys.readouterr().err


def test_a_set_that_cannot_be_downloaded_says_where_to_put_it(tmp_path):
    with pytest.raises(ValueError) as error:
        data_module.load_dataset("clr_jax_test_download", tmp_path / "tfds")
    message = str(error.value)
    assert message.startswith("could not download and prepare data set "
                              "'clr_jax_test_download'")
    assert "--data-dir DIR" in message and "tfds build clr_jax_test_download" in message


def test_an_unknown_name_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'no_such_set_anywhere'"):
        data_module.load_dataset("no_such_set_anywhere", tmp_path)


def test_the_suite_keeps_its_caches_out_of_home():
    """conftest.py points every cache at a temporary folder (the data cache, tfds's and
    matplotlib's, and the compilation cache the command line would find); the session
    itself fails if ~/.cache/clr_jax changes."""
    import os
    from pathlib import Path

    home = Path.home() / ".cache"
    assert not data_module.cache_dir().is_relative_to(home)
    for variable in ("TFDS_DATA_DIR", "MPLCONFIGDIR", "CLR_JAX_COMPILATION_CACHE"):
        assert not Path(os.environ[variable]).is_relative_to(Path.home())


def test_overlapping_writers_of_one_file_each_write_it_whole(tmp_path):
    path = tmp_path / "result.json"
    with atomic_write(path) as first:
        first.write("first")
        with atomic_write(path) as second:
            second.write("second")
        assert path.read_text() == "second"
    assert path.read_text() == "first"  # the last rename wins
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
