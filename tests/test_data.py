"""Loading image folders, archives, the bundled sample and tfds sets."""

import os
from pathlib import Path

import numpy as np
import pytest

from clr_jax.harness.data import load_dataset, load_image_folder


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
