"""Image data sets as uint8 arrays: local image folders (a directory or a .tar.gz), the
CIFAR-10 sample bundled with the package, and prepared tensorflow-datasets sets.

An image folder has the layout that ``tfds.folder_dataset.ImageFolder`` reads::

    <root>/train/<class>/*.jpg
    <root>/test/<class>/*.jpg

It is read here with Pillow rather than through tensorflow-datasets, so that the
harness does not need TensorFlow. Decoding tens of thousands of JPEGs takes a while, so
the decoded arrays are cached as an ``.npz`` and reused while no file in the folder (or
the archive) has changed its name, size or modification time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from clr_jax._io import atomic_write

__all__ = ["ImageDataset", "cache_dir", "load_dataset", "load_image_folder", "load_tfds"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A split image data set, as uint8 NHWC images and int32 labels, checked when made.

    Attributes:
      train_images: uint8 array [N, H, W, C].
      train_labels: N integer labels in 0 .. num_classes - 1.
      test_images: uint8 array [M, H, W, C], the same H, W, C.
      test_labels: M integer labels in 0 .. num_classes - 1.
      class_names: one name per class.

    Raises:
      ValueError: naming the array that is wrong (dtype, shape, length, label range).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self):
        names = tuple(str(n) for n in self.class_names)
        if not names:
            raise ValueError("class_names is empty; give one name per class.")
        object.__setattr__(self, "class_names", names)
        for split in ("train", "test"):
            images = np.asarray(getattr(self, f"{split}_images"))
            labels = np.asarray(getattr(self, f"{split}_labels"))
            if images.dtype != np.uint8:
                raise ValueError(
                    f"{split}_images must be uint8 pixels (0-255), got {images.dtype}; "
                    "convert with np.clip(x, 0, 255).astype(np.uint8) (scale [0, 1] floats "
                    "by 255 first).")
            if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
                raise ValueError(f"{split}_images must have shape [N, H, W, C] with C = 1, 3 "
                                 f"or 4, got {images.shape}.")
            if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"{split}_labels must be a 1-D array of integers, got "
                                 f"{labels.dtype} of shape {labels.shape}.")
            if len(labels) != len(images):
                raise ValueError(f"{split}_labels has {len(labels)} labels for "
                                 f"{len(images)} images; give one label per image.")
            if len(labels) == 0:
                raise ValueError(f"the {split} split is empty; give at least one image.")
            if labels.min() < 0 or labels.max() >= len(names):
                bad = labels[(labels < 0) | (labels >= len(names))][0]
                raise ValueError(f"{split}_labels holds {bad}, outside 0..{len(names) - 1} "
                                 f"(there are {len(names)} class names).")
            object.__setattr__(self, f"{split}_images", images)
            object.__setattr__(self, f"{split}_labels", labels.astype(np.int32, copy=False))
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(f"test images are {self.test_images.shape[1:]} but train images "
                             f"{self.train_images.shape[1:]}; both splits need one size.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def cache_dir() -> Path:
    """Where decoded arrays are cached: $CLR_JAX_CACHE or ~/.cache/clr_jax."""
    return Path(os.environ.get("CLR_JAX_CACHE", Path.home() / ".cache" / "clr_jax"))


def _decode(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot decode image {name}: {error}") from None


def _class_folders(source: Path) -> set[tuple[str, str]]:
    """(split, class) of every class folder, empty or not."""
    if source.is_dir():
        return {(p.parent.name, p.name) for p in source.glob("*/*") if p.is_dir()
                and p.parent.name in ("train", "test")}
    with tarfile.open(source, "r:*") as archive:
        folders = set()
        for member in archive.getmembers():
            parts = Path(member.name).parts
            if member.isdir() and len(parts) >= 2 and parts[-2] in ("train", "test"):
                folders.add((parts[-2], parts[-1]))
        return folders


def _members(source: Path):
    """(split, class, name, bytes) for every image file, in sorted order."""
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.suffix.lower() in _IMAGE_SUFFIXES and path.is_file():
                parts = path.relative_to(source).parts
                yield parts[-3] if len(parts) >= 3 else "", parts[-2], str(path), path.read_bytes()
        return
    try:
        with tarfile.open(source, "r:*") as archive:
            members = sorted((m for m in archive.getmembers() if m.isfile()),
                             key=lambda m: m.name)
            for member in members:
                parts = Path(member.name).parts
                if Path(member.name).suffix.lower() not in _IMAGE_SUFFIXES or len(parts) < 3:
                    continue
                yield parts[-3], parts[-2], member.name, archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0].rstrip(":")
        raise ValueError(f"cannot read archive {source}: {reason or type(error).__name__} "
                         "(not a tar archive, or a damaged or incomplete one: download or "
                         "copy it again)") from None


def _source_key(source: Path) -> str:
    """What the cached arrays of ``source`` depend on: its path and, for every file in it
    (a folder) or of it (an archive), the name, size and modification time; an image
    added, removed, replaced or cut short gives another key."""
    key = hashlib.sha256(str(source.resolve()).encode())
    files = sorted(source.rglob("*")) if source.is_dir() else [source]
    for path in files:
        if path.is_file():
            stat = path.stat()
            key.update(f"|{path.relative_to(source) if source.is_dir() else ''}"
                       f"|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return key.hexdigest()[:16]


def load_image_folder(source: str | os.PathLike, *, use_cache: bool = True) -> ImageDataset:
    """Loads ``train/`` and ``test/`` splits of an image folder or a .tar.gz of one.

    Args:
      source: a directory, or a tar archive of one (e.g. ``cifar10-jpg.tar.gz``).
      use_cache: read and write the decoded arrays under `cache_dir`.

    Returns:
      The `ImageDataset`; classes are the sorted folder names of ``train/``.

    Raises:
      ValueError: if the source is missing, unreadable, has no train/test images,
        the two splits' classes differ, a file cannot be decoded (its name is given)
        or images differ in size.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise ValueError(
            f"data not found: {source} does not exist; pass the folder or .tar.gz "
            "holding train/<class>/*.jpg and test/<class>/*.jpg."
        )
    cached = cache_dir() / f"{source.name}.{_source_key(source)}.npz"
    if use_cache and cached.exists():
        with np.load(cached) as data:
            return ImageDataset(data["train_images"], data["train_labels"],
                                data["test_images"], data["test_labels"],
                                tuple(str(c) for c in data["class_names"]))
    images: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    classes: dict[str, list[str]] = {"train": [], "test": []}
    for split, label, name, data in _members(source):
        if split in images:
            images[split].append(_decode(data, name))
            classes[split].append(label)
    for split in ("train", "test"):
        if not images[split]:
            raise ValueError(
                f"no {split} images in {source}: expected {split}/<class>/<image>.jpg inside."
            )
    empty = sorted(f"{split}/{name}" for split, name in _class_folders(source)
                   if name not in set(classes[split]))
    if empty:
        raise ValueError(f"class folder {empty[0]} in {source} has no images "
                         f"({len(empty)} such folder(s)); remove it or add images.")
    names = tuple(sorted(set(classes["train"])))
    unknown = sorted(set(classes["test"]) - set(names))
    if unknown:
        raise ValueError(f"test classes {unknown} in {source} have no train images.")
    index = {n: i for i, n in enumerate(names)}
    arrays = {}
    for split in ("train", "test"):
        shapes = {im.shape for im in images[split]}
        if len(shapes) != 1:
            raise ValueError(f"{split} images in {source} differ in size: {sorted(shapes)[:4]}.")
        arrays[f"{split}_images"] = np.stack(images[split])
        arrays[f"{split}_labels"] = np.array([index[c] for c in classes[split]], np.int32)
    dataset = ImageDataset(class_names=names, **arrays)
    if use_cache:
        # a folder that cannot be written only loses the cache, not the run
        with contextlib.suppress(ValueError), atomic_write(cached, "wb") as f:
            np.savez(f, class_names=np.array(names), **arrays)
    return dataset


TFDS_NAMES = ("cifar10", "cifar100", "mnist", "fashion_mnist")
SAMPLE = "sample"


def bundled_sample_path() -> Path:
    """The CIFAR-10 sample shipped with the package (5,000 train / 1,000 test images)."""
    return Path(__file__).resolve().parents[1] / "data" / "cifar10_sample.tar.gz"


def load_tfds(name: str, data_dir: str | os.PathLike | None = None) -> ImageDataset:
    """Loads a prepared tensorflow-datasets image set into uint8 arrays.

    Raises:
      ValueError: if tensorflow-datasets is not installed or the set is not prepared in
        ``data_dir`` (nothing is downloaded).
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ValueError(
            f"data set {name!r} needs tensorflow-datasets: pip install tensorflow-datasets "
            "tensorflow; or give the path of an image folder or .tar.gz instead."
        ) from None
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
        train, test = tfds.as_numpy(builder.as_dataset(split=["train", "test"], batch_size=-1))
        names = tuple(builder.info.features["label"].names)
    except Exception:  # tfds raises many types for a missing or broken set
        raise ValueError(
            f"data set {name!r} is not prepared in {data_dir or 'the default tfds folder'} "
            "and nothing is downloaded here; give data_dir, the folder of a prepared copy, "
            "or the path of an image folder or .tar.gz instead."
        ) from None
    return ImageDataset(train["image"].astype(np.uint8), train["label"].astype(np.int32),
                        test["image"].astype(np.uint8), test["label"].astype(np.int32), names)


def load_dataset(dataset: str = SAMPLE, data_dir: str | os.PathLike | None = None
                 ) -> ImageDataset:
    """Loads ``"sample"`` (bundled), a tfds name, or an image folder / .tar.gz path.

    Raises:
      ValueError: naming what was given and what is accepted.
    """
    if dataset == SAMPLE:
        return load_image_folder(bundled_sample_path())
    if dataset in TFDS_NAMES:
        return load_tfds(dataset, data_dir)
    path = Path(dataset).expanduser()
    if path.exists():
        return load_image_folder(path)
    raise ValueError(
        f"unknown data set {dataset!r}: give 'sample' (bundled CIFAR-10 sample), one of "
        f"{', '.join(TFDS_NAMES)} (tensorflow-datasets, prepared in --data-dir), or the path "
        "of an image folder or .tar.gz with train/<class>/ and test/<class>/."
    )
