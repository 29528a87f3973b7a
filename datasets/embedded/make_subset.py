#!/usr/bin/env python3
"""Regenerates the embedded Fashion-MNIST subset from the official files and checks it.

Usage: python3 datasets/embedded/make_subset.py [SOURCE_DIR]   (default /usr/share/datasets/fashion-mnist)

The source files are accepted only if their decompressed contents hash to the official
Fashion-MNIST data (so Debian's recompressed copies and the upstream downloads both work).
The subset keeps, in file order, the first 1000 training and the first 200 test images of each
class; it is written as gzip with a zero timestamp, so the output is byte-identical every time,
and then checked against SHA256SUMS beside this script.
"""
import gzip
import hashlib
import struct
import sys
from pathlib import Path

# sha256 of the *decompressed* official files.
OFFICIAL = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
PER_CLASS = {"train": 1000, "t10k": 200}
HERE = Path(__file__).resolve().parent
OUT = HERE / "fashion-mnist"


def read_official(src: Path, name: str) -> bytes:
    path = src / f"{name}.gz"
    data = gzip.decompress(path.read_bytes()) if path.exists() else (src / name).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != OFFICIAL[name]:
        sys.exit(f"{path}: not the official Fashion-MNIST file (sha256 {digest})")
    return data


def subset(src: Path, prefix: str) -> None:
    images = read_official(src, f"{prefix}-images-idx3-ubyte")
    labels = read_official(src, f"{prefix}-labels-idx1-ubyte")
    count, rows, cols = struct.unpack(">III", images[4:16])
    size = rows * cols
    taken = {c: 0 for c in range(10)}
    keep = []
    for i, label in enumerate(labels[8:8 + count]):
        if taken[label] < PER_CLASS[prefix]:
            taken[label] += 1
            keep.append(i)
    pixels = b"".join(images[16 + i * size:16 + (i + 1) * size] for i in keep)
    out_images = struct.pack(">IIII", 0x803, len(keep), rows, cols) + pixels
    out_labels = struct.pack(">II", 0x801, len(keep)) + bytes(labels[8 + i] for i in keep)
    for name, data in [(f"{prefix}-images-idx3-ubyte.gz", out_images), (f"{prefix}-labels-idx1-ubyte.gz", out_labels)]:
        (OUT / name).write_bytes(gzip.compress(data, compresslevel=9, mtime=0))


def check() -> None:
    for line in (HERE / "SHA256SUMS").read_text().splitlines():
        expected, name = line.split()
        found = hashlib.sha256((OUT / name).read_bytes()).hexdigest()
        if found != expected:
            sys.exit(f"{OUT / name}: sha256 {found}, SHA256SUMS says {expected}")
    print(f"{OUT}: subset regenerated and matches SHA256SUMS")


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/usr/share/datasets/fashion-mnist")
    OUT.mkdir(exist_ok=True)
    subset(source, "train")
    subset(source, "t10k")
    if "--write-sums" in sys.argv:
        sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(OUT.glob("*.gz"))]
        (HERE / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    check()
