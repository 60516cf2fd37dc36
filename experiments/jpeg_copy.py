"""How the JPEG copy of CIFAR-10 differs from the original release: its encoder settings
and its pixel statistics.

    python experiments/jpeg_copy.py --data ../shared/data/cifar10-jpg.tar.gz \
        [--out experiments/results/jpeg_copy.json]
    python experiments/jpeg_copy.py --data ../shared/data/cifar10-jpg.tar.gz \
        --reencode 50 --write /tmp/cifar10-q50.tar.gz \
        [--out experiments/results/jpeg_reencode_q50.json]

(--data takes the archive, an image folder, or "sample" for the bundled sample.)

The paper trained on Caffe's LMDB of the original (lossless) CIFAR-10 files; every result
here is on a copy in which each image was JPEG-compressed once. This script reads, for
every image in the archive, the JPEG quality (the libjpeg quality setting whose
quantisation tables the file carries, found by encoding with each setting 1..100 and
comparing tables) and the chroma subsampling (4:4:4, 4:2:2, 4:2:0), and compares the
decoded training set's per-channel mean and standard deviation with the published
statistics of the original training set. It also estimates what the copy's one
compression did to the pixels (first_encode_mse_estimate): each decoded image encoded
again with its own settings after a shift of 3 pixels, so that the 8x8 blocks no longer
line up and the encode acts as a first one (the original files are not here to compare
with; the decoded copy is a little smoother than they are, so this is likely an
underestimate). Writes one JSON file.

With --reencode QUALITY it instead writes a second archive (--write, same layout and
names) in which every image is decoded and JPEG-compressed once more at QUALITY with
4:2:0 chroma subsampling, and records how far the re-encoded pixels are from the copy's
(mean squared error and PSNR over all pixels): training on such copies measures how
accuracy responds to added compression, which bounds what the copy's own compression
can cost (experiments/README.md, "The JPEG copy's share").
"""

import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np

from clr_jax.harness.data import bundled_sample_path

from _common import RESULTS, experiment_parser, metadata, require_data, write_json

# Per-channel mean and standard deviation (pixel values / 255) of the original CIFAR-10
# training set, as published with most CIFAR-10 training code (for example
# `transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))`).
ORIGINAL_TRAIN_MEAN = (0.4914, 0.4822, 0.4465)
ORIGINAL_TRAIN_STD = (0.2470, 0.2435, 0.2616)

SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
SHIFT = 3  # pixels; see _shifted_encode_error


def quality_tables() -> dict[tuple, int]:
    """libjpeg's quantisation tables (as Pillow reads them back) -> quality setting."""
    from PIL import Image

    tables = {}
    pattern = Image.fromarray(np.arange(192, dtype=np.uint8).reshape(8, 8, 3))
    for quality in range(100, 0, -1):  # where two settings give one table, keep the lower
        buffer = io.BytesIO()
        pattern.save(buffer, "JPEG", quality=quality)
        with Image.open(buffer) as image:
            tables[_key(image)] = quality
    return tables


def _key(image) -> tuple:
    return tuple(tuple(image.quantization[i]) for i in sorted(image.quantization))


def _jpegs(source: Path):
    """(name, bytes) of every .jpg in a folder or a tar archive of one."""
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.suffix.lower() in (".jpg", ".jpeg") and path.is_file():
                yield str(path.relative_to(source)), path.read_bytes()
        return
    with tarfile.open(source, "r:*") as archive:
        for member in archive:
            if member.isfile() and Path(member.name).suffix.lower() in (".jpg", ".jpeg"):
                yield member.name, archive.extractfile(member).read()


def inspect(source: Path) -> dict:
    """Encoder settings of every JPEG in ``source`` and its training split's statistics."""
    from PIL import Image, JpegImagePlugin

    known = quality_tables()
    settings, splits = Counter(), Counter()
    total = np.zeros(3)
    total_sq = np.zeros(3)
    pixels = 0
    squared, values_seen = 0.0, 0
    for name, data in _jpegs(source):
        parts = Path(name).parts
        with Image.open(io.BytesIO(data)) as image:
            quality = known.get(_key(image), "custom tables")
            sampling = SUBSAMPLING.get(JpegImagePlugin.get_sampling(image), "other")
            settings[f"quality {quality}, {sampling}"] += 1
            if isinstance(quality, int) and sampling in SUBSAMPLING.values():
                rgb = np.asarray(image.convert("RGB"))
                squared += _shifted_encode_error(
                    rgb, quality, {v: k for k, v in SUBSAMPLING.items()}[sampling])
                values_seen += rgb.size
            split = parts[-3] if len(parts) >= 3 else ""
            splits[split] += 1
            if split == "train":
                values = np.asarray(image.convert("RGB"), np.float64).reshape(-1, 3) / 255
                total += values.sum(0)
                total_sq += (values ** 2).sum(0)
                pixels += len(values)
    if not pixels:
        raise SystemExit(f"no train/<class>/*.jpg images in {source}")
    mean = total / pixels
    std = np.sqrt(total_sq / pixels - mean ** 2)
    return {
        "images": dict(splits), "encoder_settings": dict(settings),
        "train_mean": [round(float(m), 5) for m in mean],
        "train_std": [round(float(s), 5) for s in std],
        "original_train_mean": list(ORIGINAL_TRAIN_MEAN),
        "original_train_std": list(ORIGINAL_TRAIN_STD),
        "std_ratio_to_original": [round(float(s / o), 4) for s, o in
                                  zip(std, ORIGINAL_TRAIN_STD)],
        **({"first_encode_mse_estimate": round(squared / values_seen, 4),
            "first_encode_psnr_estimate_db": round(
                float(10 * np.log10(255 ** 2 / (squared / values_seen))), 3)
            if squared else None}
           if values_seen else {}),
    }


def _shifted_encode_error(rgb: np.ndarray, quality: int, subsampling: int,
                          shift: int = SHIFT) -> float:
    """Summed squared error of JPEG-encoding ``rgb`` once more with its own settings but
    with the image moved ``shift`` pixels down and right (edges repeated): an estimate of
    what one first encode at those settings does to CIFAR-like pixels. Re-encoding in
    place would be nearly lossless (the coefficients already lie on the quantisation
    grid); an odd shift lines up neither the 8x8 blocks nor the 2x2 colour pairs."""
    from PIL import Image

    pad = ((shift, 8 - shift), (shift, 8 - shift), (0, 0))
    buffer = io.BytesIO()
    Image.fromarray(np.pad(rgb, pad, mode="edge")).save(
        buffer, "JPEG", quality=quality, subsampling=subsampling)
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        decoded = np.asarray(image.convert("RGB"), np.float64)
    h, w = rgb.shape[:2]
    return float(((decoded[shift:shift + h, shift:shift + w] - rgb) ** 2).sum())


def reencode(source: Path, dest: Path, quality: int) -> dict:
    """Write every image of ``source``, decoded and JPEG-encoded again at ``quality``
    (4:2:0), to the tar.gz archive ``dest`` under the same name; return the images'
    count and the re-encoded pixels' distance from the decoded originals."""
    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    squared, pixels, images = 0.0, 0, 0
    with tarfile.open(tmp, "w:gz") as archive:
        for name, data in _jpegs(source):
            with Image.open(io.BytesIO(data)) as image:
                before = image.convert("RGB")
            buffer = io.BytesIO()
            before.save(buffer, "JPEG", quality=quality, subsampling=2)
            encoded = buffer.getvalue()
            with Image.open(io.BytesIO(encoded)) as image:
                after = np.asarray(image.convert("RGB"), np.float64)
            squared += float(((after - np.asarray(before, np.float64)) ** 2).sum())
            pixels += after.size
            images += 1
            member = tarfile.TarInfo(name)
            member.size = len(encoded)
            archive.addfile(member, io.BytesIO(encoded))
    if not images:
        tmp.unlink()
        raise SystemExit(f"no .jpg images in {source}")
    tmp.replace(dest)
    mse = squared / pixels
    return {"reencode_quality": quality, "images_reencoded": images,
            "mse_to_copy": round(mse, 4),
            "psnr_to_copy_db": round(float(10 * np.log10(255 ** 2 / mse)), 3)}


def main(argv=None):
    parser = experiment_parser(__doc__)
    parser.add_argument("--out", type=Path,
                        help="result JSON (default: results/jpeg_copy.json, or "
                             "results/jpeg_reencode_q<QUALITY>.json with --reencode)")
    parser.add_argument("--reencode", type=int, metavar="QUALITY",
                        help="write a copy re-encoded at this JPEG quality (1-95) to --write")
    parser.add_argument("--write", type=Path, metavar="ARCHIVE",
                        help="where --reencode writes its .tar.gz archive")
    args = parser.parse_args(argv)
    require_data(parser, args)
    if args.reencode is not None:
        if not 1 <= args.reencode <= 95:
            parser.error(f"--reencode {args.reencode}: a JPEG quality is 1 to 95")
        if args.write is None:
            parser.error("--reencode needs --write ARCHIVE (where the re-encoded copy goes)")
    elif args.write is not None:
        parser.error("--write is only used with --reencode QUALITY")
    source = bundled_sample_path() if args.data == "sample" else Path(args.data)
    if not source.exists():
        parser.error(f"--data {args.data}: no such file or folder")
    if args.write is not None and args.write.resolve() == source.resolve():
        parser.error("--write must not be the --data archive itself")
    try:
        if args.reencode is None:
            found, name = inspect(source), "jpeg_copy"
        else:
            found, name = reencode(source, args.write, args.reencode), "jpeg_reencode"
    except (tarfile.TarError, OSError, EOFError) as error:
        parser.error(f"cannot read {source}: {error}")
    out = args.out or RESULTS / (f"{name}.json" if args.reencode is None
                                 else f"{name}_q{args.reencode}.json")
    result = {"experiment": name, "data": source.name, **found, **metadata()}
    write_json(out, result)
    for key, value in found.items():
        print(f"{key:22s} {value}")


if __name__ == "__main__":
    main()
