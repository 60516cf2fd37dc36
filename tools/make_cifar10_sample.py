"""Builds clr_jax/data/cifar10_sample.tar.gz, the small real sample that `clr-jax demo` uses.

    python tools/make_cifar10_sample.py ../shared/data/cifar10-jpg.tar.gz

Takes the first 500 training and first 100 test JPEGs of each class (by file name)
from the CIFAR-10 JPEG archive, unchanged, in the same train/<class>/ and
test/<class>/ layout: 5,000 + 1,000 images.
"""

import io
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

PER_CLASS = {"train": 500, "test": 100}
OUT = Path(__file__).resolve().parents[1] / "clr_jax" / "data" / "cifar10_sample.tar.gz"


def main(source: str) -> None:
    taken = defaultdict(list)
    with tarfile.open(source, "r:*") as archive:
        members = sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: m.name)
        for member in members:
            parts = Path(member.name).parts
            if len(parts) < 3 or parts[-3] not in PER_CLASS:
                continue
            key = (parts[-3], parts[-2])
            if len(taken[key]) < PER_CLASS[parts[-3]]:
                taken[key].append((f"{parts[-3]}/{parts[-2]}/{parts[-1]}",
                                   archive.extractfile(member).read()))
    with tarfile.open(OUT, "w:gz") as out:
        for key in sorted(taken):
            for name, data in taken[key]:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                out.addfile(info, io.BytesIO(data))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, "
          f"{sum(map(len, taken.values()))} images)")


if __name__ == "__main__":
    main(sys.argv[1])
