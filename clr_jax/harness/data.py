"""Image data sets as uint8 arrays: local image folders (a directory or a .tar.gz), the
CIFAR-10 sample bundled with the package, and tensorflow-datasets sets (downloaded and
prepared by tfds where there is internet; read without TensorFlow where they are
prepared as ArrayRecord).

An image folder has the layout that ``tfds.folder_dataset.ImageFolder`` reads::

    <root>/train/<class>/*.jpg
    <root>/test/<class>/*.jpg

It is read here with Pillow rather than through tensorflow-datasets, so that the
harness does not need TensorFlow. Decoding tens of thousands of JPEGs takes a while, so
the decoded arrays are cached as an ``.npz`` and reused while no file in the folder (or
the archive, or the prepared tfds set) has changed its name, size or modification time.
A cache file that does not read back whole is discarded and rebuilt, with one line
saying so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import re
import sys
import tarfile
import zipfile
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
    if use_cache and (dataset := _read_cache(cached, str(source))) is not None:
        return dataset
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
        _write_cache(cached, dataset)
    return dataset


def _read_cache(path: Path, source: str) -> ImageDataset | None:
    """The data set cached in ``path``, or None when there is none or it does not read
    back whole (cut short, damaged: the zip's checksums catch it), in which case the
    file is removed, with one line saying so, and the data are read from ``source``."""
    if not path.exists():
        return None
    try:
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as data:
            return ImageDataset(data["train_images"], data["train_labels"],
                                data["test_images"], data["test_labels"],
                                tuple(str(c) for c in data["class_names"]))
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError, zlib.error) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        print(f"clr-jax: the cached arrays {path} do not read back whole ({reason}); "
              f"removed, reading {source} again", file=sys.stderr)
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def _write_cache(path: Path, dataset: ImageDataset) -> None:
    # a folder that cannot be written only loses the cache, not the run
    with contextlib.suppress(ValueError, OSError), atomic_write(path, "wb") as f:
        np.savez(f, class_names=np.array(dataset.class_names),
                 train_images=dataset.train_images, train_labels=dataset.train_labels,
                 test_images=dataset.test_images, test_labels=dataset.test_labels)


SAMPLE = "sample"
_TFDS_NAME = re.compile(r"^[a-z][a-z0-9_]*(/[A-Za-z0-9_.-]+)?(:[0-9.*]+)?$")
TFDS_INSTALL = 'pip install "clr-jax[tfds]"'


def bundled_sample_path() -> Path:
    """The CIFAR-10 sample shipped with the package (5,000 train / 1,000 test images)."""
    return Path(__file__).resolve().parents[1] / "data" / "cifar10_sample.tar.gz"


def _has_tensorflow() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


@contextlib.contextmanager
def _fail_fast_offline():
    """tfds retries a failed download 10 times with exponential backoff (about 200 s
    before it gives up on a machine without internet) and sets no timeout; here it
    retries 3 times, and a connection that hangs gives up after 60 s."""
    import socket

    from tensorflow_datasets.core.download import downloader

    retries, timeout = downloader.MAX_RETRIES, socket.getdefaulttimeout()
    downloader.MAX_RETRIES = min(retries, 3)
    socket.setdefaulttimeout(60 if timeout is None else timeout)
    try:
        yield
    finally:
        downloader.MAX_RETRIES = retries
        socket.setdefaulttimeout(timeout)


def load_tfds(name: str, data_dir: str | os.PathLike | None = None, *,
              download: bool = True, use_cache: bool = True) -> ImageDataset:
    """A tensorflow-datasets image set (``"cifar10"``, ``"mnist"``, any registered name,
    with an optional ``:version``) as uint8 arrays.

    Where the set is not prepared in ``data_dir`` and ``download`` is on, tfds downloads
    and prepares it (this needs internet; preparing image sets needs TensorFlow, or
    they are prepared as ArrayRecord without it where the set's own code allows). A set
    prepared as ArrayRecord is read with ``tfds.data_source``, without TensorFlow; one
    prepared as TFRecord (tfds's default) with ``as_dataset``, which needs TensorFlow.
    The decoded arrays are cached as for an image folder.

    Raises:
      ValueError: naming what to install, or where to put the prepared files, when the
        set cannot be read.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ValueError(
            f"unknown data set {name!r}: no such folder or .tar.gz; if it is a "
            f"tensorflow-datasets name, install tensorflow-datasets: {TFDS_INSTALL} (or pip "
            "install tensorflow-datasets array_record)") from None
    folder = None if data_dir is None else os.fspath(Path(data_dir).expanduser())
    try:
        builder = tfds.builder(name, data_dir=folder)
    except Exception as error:  # noqa: BLE001 - tfds raises many types for a bad name
        raise ValueError(f"unknown data set {name!r}: not a tensorflow-datasets name "
                         f"({_first_line(error)}), nor a folder or .tar.gz that exists; see "
                         "tfds.list_builders() for the names.") from None
    where = folder or "tensorflow-datasets' default folder (~/tensorflow_datasets)"
    if not builder.is_prepared():
        if not download:
            raise ValueError(f"data set {name!r} is not prepared in {where}; prepare it "
                             f"there (tfds build {name}) or allow the download.")
        file_format = "tfrecord" if _has_tensorflow() else "array_record"
        try:
            with _fail_fast_offline():
                builder.download_and_prepare(file_format=file_format)
        except Exception as error:  # noqa: BLE001 - network, TensorFlow, disk, ...
            hint = "" if _has_tensorflow() else (
                " Preparing an image set usually needs TensorFlow: pip install tensorflow.")
            raise ValueError(
                f"could not download and prepare data set {name!r} into {where}: "
                f"{_first_line(error)}.{hint} Without internet, prepare it on a machine "
                f"that has it (tfds build {name} --data_dir DIR --file_format array_record) "
                "and copy DIR here, then pass --data-dir DIR (data_dir=DIR); or give the "
                "path of an image folder or .tar.gz instead.") from None
    prepared = Path(builder.data_dir)
    cached = cache_dir() / f"tfds-{name.replace('/', '-')}.{_source_key(prepared)}.npz"
    if use_cache and (dataset := _read_cache(cached, f"{name} in {prepared}")) is not None:
        return dataset
    info = builder.info
    image_key, label_key = info.supervised_keys or ("image", "label")
    missing = [s for s in ("train", "test") if s not in info.splits]
    if missing:
        raise ValueError(f"data set {name!r} has no {missing[0]!r} split (it has "
                         f"{', '.join(info.splits)}); clr-jax trains on 'train' and "
                         "tests on 'test'.")
    arrays = {}
    array_record = str(info.file_format).lower().endswith("array_record")
    try:
        if array_record:
            source = tfds.data_source(name, data_dir=folder, download=False)
            for split in ("train", "test"):
                records = source[split]
                arrays[split] = [np.stack([np.asarray(records[i][image_key])
                                           for i in range(len(records))]),
                                 np.array([int(records[i][label_key])
                                           for i in range(len(records))])]
        elif _has_tensorflow():
            for split in ("train", "test"):
                data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
                arrays[split] = [data[image_key], data[label_key]]
        else:
            raise ValueError(
                f"data set {name!r} in {prepared} is prepared as TFRecord, which needs "
                "TensorFlow to read: pip install tensorflow; or prepare it as ArrayRecord "
                f"(tfds build {name} --file_format array_record), which clr-jax reads "
                "without TensorFlow.")
    except ValueError:
        raise  # ours, with its message
    except Exception as error:  # noqa: BLE001 - a damaged or partial set
        raise ValueError(f"cannot read data set {name!r} from {prepared}: "
                         f"{_first_line(error)}; prepare it again.") from None
    names = tuple(info.features[label_key].names) \
        if hasattr(info.features[label_key], "names") else \
        tuple(str(i) for i in range(int(max(arrays["train"][1].max(),
                                                arrays["test"][1].max())) + 1))
    dataset = ImageDataset(arrays["train"][0].astype(np.uint8),
                           arrays["train"][1].astype(np.int32),
                           arrays["test"][0].astype(np.uint8),
                           arrays["test"][1].astype(np.int32), names)
    if use_cache:
        _write_cache(cached, dataset)
    return dataset


def load_dataset(dataset: str = SAMPLE, data_dir: str | os.PathLike | None = None
                 ) -> ImageDataset:
    """Loads ``"sample"`` (bundled), an image folder / .tar.gz path, or a
    tensorflow-datasets name (`load_tfds`: downloaded and prepared where there is
    internet, in ``data_dir``).

    Raises:
      ValueError: naming what was given and what is accepted.
    """
    if dataset == SAMPLE:
        return load_image_folder(bundled_sample_path())
    path = Path(dataset).expanduser()
    if path.exists():
        return load_image_folder(path)
    if _TFDS_NAME.match(dataset):
        return load_tfds(dataset, data_dir)
    raise ValueError(
        f"unknown data set {dataset!r}: give 'sample' (bundled CIFAR-10 sample), a "
        "tensorflow-datasets name such as cifar10 (downloaded and prepared in --data-dir), "
        "or the path of an image folder or .tar.gz with train/<class>/ and test/<class>/."
    )
