"""Image folders as features, and the GAN metrics of a generated folder against the real images.

Feature reading (:func:`folder_features`, :func:`get_feature_extractor`, :func:`resolve_extractor`) is shared by the
GAN metrics of the generate stage (:func:`gan_metrics`), the selection of samples (:mod:`histlib.selection`) and the
memorisation audit (:mod:`histlib.audit`); real images are resized to the generated resolution before their
features are taken. Every metric key carries the feature extractor's name, so numbers from the ``random-test``
network (an untrained CNN for plumbing checks) can never pass for image-quality numbers.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from histlib import runs
from histlib.metrics import features
from histlib.metrics.summary import compute_metrics
from histlib.progress import iterate

PIXELS = "pixels"


# ----------------------------------------------------------------------------------------------------------------
# Reading image folders and features


def image_dataset(root: str | os.PathLike, split: str | None, resolution: int | None):
    """The images of a folder (or one split of a prepared dataset) as ``uint8 [3, H, W]`` tensors, resized to
    ``resolution`` when given."""
    from histlib.data.dataset import ImageDataset, to_uint8_tensor

    return ImageDataset(runs.project_path(root), split=split, transform=to_uint8_tensor, resolution=resolution)


def image_resolution(root: str | os.PathLike) -> int:
    """Side length of the first image of an ImageFolder (generated sets are square and uniform)."""
    from PIL import Image

    ds = image_dataset(root, None, None)
    with Image.open(ds.paths[0]) as im:
        return int(im.size[0])


class PixelFeatures:
    """Pixels as features: ``uint8 [N, 3, H, W]`` → ``float32 [N, 3·S·S]`` in [0, 1].

    Images larger than ``max_resolution`` are area-downsampled to it first, which keeps a 256 px audit against tens
    of thousands of real images within memory; identical images still map to identical features (distance 0).
    """

    name = PIXELS
    cache_key = PIXELS

    def __init__(self, max_resolution: int | None = 64):
        self.max_resolution = max_resolution
        self.dim = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32) / 255.0
        if self.max_resolution is not None and x.shape[-1] > self.max_resolution:
            x = torch.nn.functional.interpolate(x, size=(self.max_resolution, self.max_resolution), mode="area")
        self.dim = x[0].numel()
        return x.flatten(1)  # [N, 3·S·S]


def get_feature_extractor(spec: Any, device: str | torch.device | None = None):
    """An extractor from a name (``'pixels'``, ``'inception'``, ``'vgg16'``, ``'domain:CKPT'``, ``'random-test'``)
    or an object with ``name`` and ``__call__`` (returned unchanged)."""
    if spec is None:
        raise ValueError("extractor=None: name a feature extractor ('pixels', 'inception', 'vgg16', 'domain:CKPT', "
                         "'random-test')")
    if not isinstance(spec, str):
        if not callable(spec):
            raise ValueError(f"extractor={spec!r}: expected a name or a callable images -> features")
        return spec
    if spec == PIXELS:
        return PixelFeatures()
    return features.get_extractor(spec, device=device)


def extractor_label(extractor: Any) -> str:
    """The name used in metric keys (``inception-v3-fid``, ``vgg16-fc2``, ``domain-resnet34``, ``random-test``…)."""
    name = getattr(extractor, "name", None) or type(extractor).__name__
    return str(name).replace("/", "-")


def resolve_extractor(spec: str | None = "auto", enabled: bool = True, device: str | torch.device | None = None,
                      verbose: bool = True):
    """The feature extractor of the GAN metrics, or None (with a printed reason) when metrics cannot be honest.

    ``'auto'`` uses Inception-v3 (FID weights) when the weights file is already on this machine; it never
    downloads and never falls back to an untrained network. ``'random-test'`` is honoured, with a warning that
    its numbers only check the plumbing.
    """
    if not enabled:
        if verbose:
            print("GAN metrics disabled (METRICS=False).")
        return None
    if spec is None:
        if verbose:
            print("GAN metrics skipped: no feature extractor given (EXTRACTOR=None).")
        return None
    if spec == "auto":
        try:  # looked up on the module at call time: tests replace it to play a machine without the weights
            features.find_weights(features.INCEPTION_FID_WEIGHTS, download=False)
        except features.WeightsNotFoundError as e:
            if verbose:
                print("GAN metrics skipped: EXTRACTOR='auto' found no Inception-v3 FID weights on this machine; it "
                      "neither downloads them nor falls back to an untrained network.\n"
                      f"  {e}\n  Alternatives: EXTRACTOR='domain:<classifier run>/checkpoints/best.pt' (features of a "
                      "histology classifier from notebook 05), or place the weights and re-run.")
            return None
        spec = "inception"
    extractor = get_feature_extractor(spec, device=device)
    if verbose and extractor_label(extractor) == "random-test":
        print("WARNING: 'random-test' features come from an untrained network; the metrics below check the "
              "pipeline and say nothing about image quality (their keys are labelled 'random-test/...').")
    return extractor


@torch.no_grad()
def folder_features(root: str | os.PathLike, extractor: Any, *, split: str | None = None,
                    resolution: int | None = None, batch_size: int = 256, num_workers: int = 0,
                    desc: str | None = None, progress: bool = False):
    """Features of every image of a folder, streamed in batches (the images are never all in memory).

    Args:
        root: a prepared dataset or ImageFolder.
        extractor: a callable ``uint8 [N, 3, H, W] → [N, D]``.
        split: keep only this split (None: all images).
        resolution: resize every image to this size first (None: as stored).

    Returns:
        ``(features float32 [N, D] on the CPU, dataset)``; the dataset gives ``labels``, ``classes`` and ``paths``.
    """
    ds = image_dataset(root, split, resolution)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    feats = [extractor(x).detach().float().cpu() for x, _ in iterate(loader, desc=desc or "features", unit="batch",
                                                                  leave=False, disable=not progress)]
    return torch.cat(feats), ds


# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# GAN metrics of a generated folder


def _set_metrics(real: torch.Tensor, fake: torch.Tensor, k_pr: int, k_dc: int, device) -> dict[str, float | None]:
    """``histlib.metrics.compute_metrics`` with counts as ints and metrics the set sizes do not allow as None."""
    out = compute_metrics(real, fake, k=k_pr, k_dc=k_dc, device=device)
    return {k: int(v) if k.startswith("n_") else (None if math.isnan(v) else v) for k, v in out.items()}


def _pass_on(caught: list[warnings.WarningMessage], verbose: bool) -> None:
    """Warnings caught while computing metrics: printed as notes (no source path of this machine in a report, the
    per-class repeats counted) when ``verbose``, else warned again."""
    if not verbose:
        for w in caught:
            warnings.warn(w.message, w.category, stacklevel=3)
        return
    first = str(caught[0].message) if caught else ""
    if first:
        more = f" (and {len(caught) - 1} more like it, per class)" if len(caught) > 1 else ""
        print(f"note: {first}{more}")


def gan_metrics(
    generated_dir: str | os.PathLike,
    real_dir: str | os.PathLike,
    extractor: Any,
    *,
    real_split: str | None = "train",
    k_pr: int = 3,
    k_dc: int = 5,
    per_class: bool = True,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """FID, precision/recall and density/coverage of a generated ImageFolder against the real images.

    Args:
        generated_dir: one generated set.
        real_dir: the real dataset (its ``real_split`` is the reference; images resized to the generated size).
        extractor: an extractor (object or name); None returns ``{}`` (metrics skipped).
        real_split: split of the real set (None: all).
        k_pr, k_dc: k of precision/recall (3) and density/coverage (5).
        per_class: also compare each class's generated images with the same class's real images (classes with
            too few images for a k-NN metric get None).
        device: where features and distances are computed.

    Returns:
        Flat keys ``<extractor>/<metric>`` (all classes pooled) and ``<extractor>/per_class/<class>/<metric>`` with
        metric in ``fid, precision, recall, density, coverage, n_real, n_fake``, and ``<extractor>/k_pr``,
        ``<extractor>/k_dc``, ``<extractor>/real_split`` (the extractor's name, e.g. ``inception-v3-fid`` or
        ``random-test``, is part of every key). This is the project's one definition of these metrics
        (docs/results.md, "One definition of the GAN metrics").
    """
    if extractor is None:
        return {}
    ext = get_feature_extractor(extractor, device=device)
    label = extractor_label(ext)
    kw = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
    fake, g_ds = folder_features(generated_dir, ext, desc="generated features", **kw)  # [N, D]
    real, r_ds = folder_features(real_dir, ext, split=real_split, resolution=image_resolution(generated_dir),
                                 desc="real features", **kw)  # [M, D]
    with warnings.catch_warnings(record=True) as caught:  # sample-size warnings, once each, as plain notes
        warnings.simplefilter("always")
        out = feature_metrics(real, r_ds, fake, g_ds.labels, g_ds.classes, label, k_pr=k_pr, k_dc=k_dc,
                              per_class=per_class, device=device)
    _pass_on(caught, verbose)
    out[f"{label}/real_split"] = real_split or "all"
    if verbose:
        shown = {m: out.get(f"{label}/{m}") for m in ("fid", "precision", "recall", "density", "coverage")}
        print(f"{label}: " + ", ".join(f"{m}={v:.4g}" if isinstance(v, float) else f"{m}={v}"
                                       for m, v in shown.items()))
    return out


def feature_metrics(real: torch.Tensor, real_ds, fake: torch.Tensor, fake_labels: np.ndarray,
                    fake_classes: Sequence[str], label: str, *, k_pr: int = 3, k_dc: int = 5, per_class: bool = True,
                    device: str | torch.device | None = None) -> dict[str, Any]:
    """The keys of :func:`gan_metrics` from features: ``real [M, D]`` with its dataset (``labels``, ``classes``),
    ``fake [N, D]`` with its labels indexing ``fake_classes``; ``label`` names the extractor."""
    out: dict[str, Any] = {f"{label}/{k}": v for k, v in _set_metrics(real, fake, k_pr, k_dc, device).items()}
    out.update({f"{label}/k_pr": int(k_pr), f"{label}/k_dc": int(k_dc)})
    if per_class:
        for i, cls in enumerate(fake_classes):
            if cls not in real_ds.classes:
                continue
            r_sel = torch.from_numpy(real_ds.labels == real_ds.classes.index(cls))
            f_sel = torch.from_numpy(np.asarray(fake_labels) == i)
            for key, v in _set_metrics(real[r_sel], fake[f_sel], k_pr, k_dc, device).items():
                out[f"{label}/per_class/{cls}/{key}"] = v
    if label == "random-test":
        out[f"{label}/note"] = "untrained network: checks the pipeline, says nothing about image quality"
    return out
