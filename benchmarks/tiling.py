"""Tiling throughput of the data stage: patches per second with and without Macenko normalisation.

Runs ``prepare_dataset`` end to end (decode, convert, normalise, tile, write PNG, manifest) on a subset of a real
H&E set, in a temporary folder, and also times the in-memory part alone (no decoding or writing). Patches per CPU-second
(this process's CPU time) is printed too: on a shared machine it is steadier than wall-clock throughput.

    python benchmarks/tiling.py                      # ../shared/data/crc5 if present, else colon2, else the sample
    python benchmarks/tiling.py --source DIR --images 300 --patch 64 --stride 32 --workers 0
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from histlib.data.folders import IMAGE_EXTENSIONS
from histlib.data.prepare import PrepareConfig, prepare_dataset
from histlib.data.tiling import tile_array

ROOT = Path(__file__).resolve().parents[1]


def default_source() -> Path:
    for candidate in (ROOT / ".." / "shared" / "data" / "crc5", ROOT / ".." / "shared" / "data" / "colon2"):
        if candidate.is_dir():
            return candidate.resolve()
    return ROOT / "data" / "sample" / "nct_crc_he"


def cpu_info() -> str:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model or 'unknown CPU'}; {os.cpu_count()} logical CPUs, {avail} available to this process"


def subset(source: Path, n_images: int, dest: Path, seed: int = 0) -> int:
    """Symlinks ``n_images`` images (spread evenly over the classes, seeded) into ``dest/<class>/``."""
    classes = sorted(p for p in source.iterdir() if p.is_dir())
    per_class = max(1, n_images // len(classes))
    rng = random.Random(seed)
    n = 0
    for c in classes:
        files = sorted(f for f in c.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        (dest / c.name).mkdir(parents=True)
        for f in rng.sample(files, min(per_class, len(files))):
            (dest / c.name / f.name).symlink_to(f.resolve())
            n += 1
    return n


def in_memory(folder: Path, patch: int, stride: int, stain: bool) -> tuple[int, float]:
    """Patches and seconds for normalise + tile of already decoded images (no I/O)."""
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in sorted(folder.rglob("*")) if f.is_file()]
    norm = None
    if stain:
        from histlib.data.stain import MacenkoNormalizer, StainNormalizationError

        norm = MacenkoNormalizer()
    n, t0 = 0, time.perf_counter()
    for a in arrays:
        if norm is not None:
            try:
                a = norm.transform(a)
            except StainNormalizationError:
                pass
        for _, _, p in tile_array(a, patch, stride):
            np.ascontiguousarray(p)
            n += 1
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=None)
    ap.add_argument("--images", type=int, default=250, help="images in the subset (spread over the classes)")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--stride", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    source = (args.source or default_source()).resolve()
    try:
        import histlib.data.stain  # noqa: F401

        stains = [None, "macenko"]
    except ImportError:
        stains = [None]
        print("histlib.data.stain not available: Macenko not measured")
    print(f"CPU: {cpu_info()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, Pillow {Image.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_img = subset(source, args.images, tmp / "src")
        print(f"source: {source.name} ({n_img} images), patch {args.patch}, stride {args.stride}, "
              f"workers {args.workers}")
        for stain in stains:
            cfg = PrepareConfig(source=str(tmp / "src"), out=str(tmp / f"out_{stain}"), patch=args.patch,
                                stride=args.stride, stain=stain, workers=args.workers)
            t0, c0 = time.perf_counter(), time.process_time()
            rep = prepare_dataset(cfg, progress=False)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            n_mem, dt_mem = in_memory(tmp / "src", args.patch, args.stride, stain is not None)
            label = stain or "none"
            print(f"stain={label:8s} prepare end to end: {rep['n_images']:6d} patches in {dt:6.2f} s = "
                  f"{rep['n_images'] / dt:8.0f} patches/s ({n_img / dt:6.1f} source images/s"
                  + (f", {rep['n_images'] / cpu:6.0f} patches per CPU-second" if args.workers == 0 else "") + "); "
                  f"normalise+tile in memory: {n_mem / dt_mem:9.0f} patches/s")


if __name__ == "__main__":
    main()
