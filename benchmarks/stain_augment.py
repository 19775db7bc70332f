"""H&E stain augmentation candidates: speed in the CPU data loader, failures, and how their output looks.

Candidates (each skipped with a note when its package is not installed):

- ``histlib_hed``: ``histlib.data.stain_augment.HEDJitter`` (Tellez et al. 2019 in OD units, exact round trip);
- ``skimage_hed``: the same random factors through scikit-image's ``rgb2hed``/``hed2rgb``;
- ``albumentations_preset`` / ``albumentations_macenko``: ``albumentations.HEStain`` with ``method='random_preset'``
  and ``'macenko'`` (its default scale/shift ranges);
- ``torchstain_numpy`` / ``torchstain_torch``: ``torchstain.augmentors.MacenkoAugmentor`` (fit + augment per image,
  default ``sigma1 = sigma2 = 0.2``).

For every candidate and size: ``transform`` = the candidate alone on images already decoded and resized (images/s);
``loader`` = a ``DataLoader`` with ``num_workers=0`` (the classifier's CPU setting) over the folder, decoding +
resize + the candidate + the paper's augmentation (rot90, flips, colour jitter) + collation (images/s); ``failed`` =
images on which the candidate raised or returned non-finite pixels; ``identity_err`` = mean absolute change (0-255)
at zero strength, where the candidate has such a setting. The CPU is often shared: the baseline without stain
augmentation is measured in the same run, so compare within a run.

Usage (from the project root)::

    python benchmarks/stain_augment.py --data ../shared/data/lung3 --sizes 32 64 224 --grid grid.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from histlib.classify.data import train_transform  # noqa: E402
from histlib.data.dataset import ImageDataset  # noqa: E402
from histlib.data.stain_augment import DEFAULT_STAIN_STRENGTH, HEDJitter  # noqa: E402


def _candidates(strength: float) -> dict[str, object]:
    """``{name: callable(uint8 [H, W, 3]) -> uint8 [H, W, 3]}`` of the installed candidates."""
    out: dict[str, object] = {}
    hed = HEDJitter(strength)
    out["histlib_hed"] = lambda a: hed(torch.from_numpy(a).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    try:
        from skimage.color import hed2rgb, rgb2hed

        def skimage_hed(a):
            alpha, beta = hed.draw()
            return np.rint(hed2rgb(rgb2hed(a) * alpha.numpy() + beta.numpy()) * 255).astype(np.uint8)

        out["skimage_hed"] = skimage_hed
    except ImportError as e:
        print(f"scikit-image not installed ({e}); skipped", file=sys.stderr)
    try:
        import albumentations as A

        for method in ("random_preset", "macenko"):
            t = A.HEStain(method=method, p=1.0)
            out[f"albumentations_{method.split('_')[-1]}"] = lambda a, t=t: t(image=a)["image"]
    except ImportError as e:
        print(f"albumentations not installed ({e}); skipped", file=sys.stderr)
    try:
        import torchstain

        aug_np = torchstain.augmentors.MacenkoAugmentor(backend="numpy")
        aug_t = torchstain.augmentors.MacenkoAugmentor(backend="torch")

        def ts_numpy(a):
            aug_np.fit(a)
            return aug_np.augment()

        def ts_torch(a):
            aug_t.fit(torch.from_numpy(a).permute(2, 0, 1).contiguous())
            return aug_t.augment().numpy()

        out["torchstain_numpy"] = ts_numpy
        out["torchstain_torch"] = ts_torch
    except ImportError as e:
        print(f"torchstain not installed ({e}); skipped", file=sys.stderr)
    return out


def _identity_errors(images: list[np.ndarray]) -> dict[str, float]:
    """Mean |out - in| at zero strength, for the candidates that have a zero-strength setting."""
    out = {}
    zero = HEDJitter(0.0)
    out["histlib_hed"] = float(np.mean([np.abs(zero(torch.from_numpy(a).permute(2, 0, 1)).permute(1, 2, 0).numpy()
                                               .astype(int) - a).mean() for a in images]))
    try:
        from skimage.color import hed2rgb, rgb2hed

        out["skimage_hed"] = float(np.mean([np.abs(np.rint(hed2rgb(rgb2hed(a)) * 255).astype(int) - a).mean()
                                            for a in images]))
    except ImportError:
        pass
    try:
        import albumentations as A

        t = A.HEStain(method="random_preset", intensity_scale_range=(1, 1), intensity_shift_range=(0, 0), p=1.0)
        out["albumentations_preset"] = float(np.mean([np.abs(t(image=a)["image"].astype(int) - a).mean()
                                                      for a in images]))
    except ImportError:
        pass
    return out


def _time_transform(fn, images: list[np.ndarray]) -> tuple[float, int]:
    try:
        fn(images[0])  # warm-up: lazy imports and first-call allocations are not the per-image cost
    except Exception:  # counted below
        pass
    failed = 0
    t0 = time.perf_counter()
    for a in images:
        try:
            out = fn(a)
            if out is None or not np.all(np.isfinite(np.asarray(out, dtype=np.float64))):
                failed += 1
        except Exception:  # a candidate's failure on one image is the measurement, not an error of the benchmark
            failed += 1
    return len(images) / (time.perf_counter() - t0), failed


class _Tolerant:
    """Applies a candidate to a uint8 tensor [3, H, W]; an image it fails on passes through unchanged."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x):
        a = x.permute(1, 2, 0).numpy()
        try:
            return torch.from_numpy(np.ascontiguousarray(self.fn(a))).permute(2, 0, 1)
        except Exception:  # counted in the transform measurement
            return x


def _loader_speed(root: Path, size: int, fn, batches: int, batch: int) -> float:
    from torchvision.transforms import v2

    base = train_transform(size)
    steps = list(base.transforms)
    if fn is not None:
        steps.insert(2, _Tolerant(fn))  # after ToImage + Resize: stain first, then the paper's augmentation
    ds = ImageDataset(root, transform=v2.Compose(steps))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0,
                                         generator=torch.Generator().manual_seed(0))
    n, t0 = 0, time.perf_counter()
    for i, (x, _) in enumerate(loader):
        n += len(x)
        if i + 1 >= batches:
            break
    return n / (time.perf_counter() - t0)


def _grid(root: Path, cands: dict[str, object], out: Path, n: int = 8, size: int = 224) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = ImageDataset(root)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(ds), size=n, replace=False)
    images = [np.asarray(ds.load_image(int(i)).resize((size, size))) for i in idx]
    rows = [("original", lambda a: a), *[(f"histlib_hed {s:g}", HEDJitter(s)) for s in (0.05, 0.1, 0.2)],
            *[(k, v) for k, v in cands.items() if k != "histlib_hed"]]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.6 * len(rows)))
    torch.manual_seed(0)
    for r, (name, fn) in enumerate(rows):
        for c, a in enumerate(images):
            ax = axes[r, c]
            try:
                if isinstance(fn, HEDJitter):
                    img = fn(torch.from_numpy(a).permute(2, 0, 1)).permute(1, 2, 0).numpy()
                else:
                    img = fn(a)
                ax.imshow(np.clip(np.asarray(img), 0, 255).astype(np.uint8))
            except Exception as e:  # shown in the grid
                ax.text(0.5, 0.5, f"failed:\n{type(e).__name__}", ha="center", va="center", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="ImageFolder or prepared dataset of H&E patches")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 224])
    p.add_argument("--images", type=int, default=64, help="images per transform measurement")
    p.add_argument("--batches", type=int, default=4, help="loader batches per measurement")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--strength", type=float, default=DEFAULT_STAIN_STRENGTH)
    p.add_argument("--grid", default=None, help="write a PNG grid of the candidates' output here")
    args = p.parse_args()
    torch.set_num_threads(1)
    root = Path(args.data)
    cands = _candidates(args.strength)
    ds = ImageDataset(root)
    pick = np.random.default_rng(0).choice(len(ds), size=min(args.images, len(ds)), replace=False)
    full = [ds.load_image(int(i)) for i in pick]
    # a white (glass-only) patch: the case of background tiles in a whole-slide grid
    rows = []
    for size in args.sizes:
        images = [np.asarray(im.resize((size, size))) for im in full]
        blank = [np.full((size, size, 3), 245, np.uint8)]
        base = _loader_speed(root, size, None, args.batches, args.batch)
        rows.append({"candidate": "none (paper augmentation only)", "size": size, "loader_img_s": round(base, 1)})
        for name, fn in cands.items():
            speed, failed = _time_transform(fn, images)
            _, failed_blank = _time_transform(fn, blank)
            rows.append({"candidate": name, "size": size, "transform_img_s": round(speed, 1),
                         "loader_img_s": round(_loader_speed(root, size, fn, args.batches, args.batch), 1),
                         "failed": f"{failed}/{len(images)}", "fails_on_blank": bool(failed_blank)})
        print(json.dumps(rows[-len(cands) - 1:]), flush=True)
    errors = _identity_errors([np.asarray(im.resize((64, 64))) for im in full])
    print(json.dumps({"identity_err_64px": errors}))
    if args.grid:
        _grid(root, cands, Path(args.grid))
        print(f"grid: {args.grid}")
    cols = ["candidate", "size", "transform_img_s", "loader_img_s", "failed", "fails_on_blank"]
    print("| " + " | ".join(cols) + " |")
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    print(f"load average: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
