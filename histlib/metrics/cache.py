"""Feature extraction from image folders, and a cache of real-set features.

The real side of every metric is the same for all GAN variants of a study, so its features are computed once and
stored under a key made of the dataset fingerprint (every image's path, class, split and the sha256 of its bytes),
the extractor's ``cache_key`` (its name and weights checksum) and the subset parameters. The manifest alone is not
enough: ``prepare --resize 16`` rewrites every image and leaves ``manifest.csv`` byte-identical.
Each entry is ``<key>.npy`` (float32 features) + ``<key>.json`` (labels, classes, provenance), both written
atomically, so an interrupted run never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histlib.runs import atomic_write_text, file_sha256

from .features import FeatureExtractor


def default_cache_dir() -> Path:
    """``~/.cache/histlib/features``."""
    return Path(os.path.expanduser("~")) / ".cache" / "histlib" / "features"


def dataset_fingerprint(root: str | os.PathLike) -> str:
    """sha256 over every image of a dataset (``manifest.csv`` or a plain ImageFolder): its path, class, split and
    the sha256 of its bytes, so a dataset rewritten in place with other settings never reads stale features."""
    from histlib.data.dataset import load_manifest

    root = Path(root)
    df = load_manifest(root)
    h = hashlib.sha256()
    for rel, cls, split in zip(df["path"], df["class"], df["split"]):
        h.update(f"{rel}\t{cls}\t{split}\t{file_sha256(root / rel)}\n".encode())
    return h.hexdigest()


class FeatureCache:
    """Features of real datasets on disk, keyed by dataset fingerprint + extractor + subset.

    Example:
        >>> cache = FeatureCache()
        >>> feats, labels, classes = extract_features(root, extractor, cache=cache)
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    @staticmethod
    def key(dataset_hash: str, extractor_key: str, **params: Any) -> str:
        text = json.dumps({"dataset": dataset_hash, "extractor": extractor_key, **params}, sort_keys=True,
                          default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.npy", self.root / f"{key}.json"

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        """``(features [N, D] float32, labels [N] int64, classes)`` or None when absent or unreadable."""
        npy, meta = self.paths(key)
        if not (npy.is_file() and meta.is_file()):
            return None
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            feats = np.load(npy)
            labels = np.asarray(info["labels"], dtype=np.int64)
        except (OSError, ValueError, KeyError):
            return None
        if feats.ndim != 2 or feats.shape[0] != labels.shape[0]:
            return None
        return feats, labels, list(info["classes"])

    def save(self, key: str, features: np.ndarray, labels: np.ndarray, classes: Sequence[str],
             meta: dict[str, Any] | None = None) -> None:
        npy, meta_path = self.paths(key)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key}.", suffix=".npy.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(features, dtype=np.float32))
            os.replace(tmp, npy)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        info = {"labels": [int(v) for v in labels], "classes": list(classes), "meta": meta or {}}
        atomic_write_text(meta_path, json.dumps(info))


def _collate(batch):
    return [b[0] for b in batch], [b[1] for b in batch]


def subset_indices(labels: np.ndarray, max_per_class: int | None, max_items: int | None, seed: int) -> np.ndarray:
    """A fixed (seeded) subset: at most ``max_per_class`` per class, then at most ``max_items`` overall; sorted."""
    for name, value in (("max_per_class", max_per_class), ("max_items", max_items)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name}={value!r}: expected a positive integer or None (every image)")
    idx = np.arange(labels.shape[0])
    rng = np.random.default_rng(seed)
    if max_per_class is not None:
        keep = []
        for c in np.unique(labels):
            members = idx[labels == c]
            if members.size > max_per_class:
                members = rng.choice(members, size=max_per_class, replace=False)
            keep.append(members)
        idx = np.sort(np.concatenate(keep))
    if max_items is not None and idx.size > max_items:
        idx = np.sort(rng.choice(idx, size=max_items, replace=False))
    return idx


@torch.no_grad()
def extract_features(root: str | os.PathLike, extractor: FeatureExtractor, *, split: str | None = None,
                     classes: Sequence[str] | None = None, max_per_class: int | None = None,
                     max_items: int | None = None, seed: int = 0, batch_size: int = 64, num_workers: int = 0,
                     cache: FeatureCache | None = None, progress: bool = True, resolution: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features of the images of a prepared dataset or an ImageFolder ``root/<class>/<image>``.

    Args:
        root: dataset folder (with ``manifest.csv``) or plain ImageFolder.
        extractor: a ``FeatureExtractor``.
        split: keep only this split of a prepared dataset (None: all images).
        classes: label order (default: sorted class names).
        max_per_class, max_items, seed: a fixed random subset (see ``subset_indices``).
        batch_size, num_workers: image loading.
        cache: a ``FeatureCache`` to read from and write to (None: no cache).
        progress: show a progress bar (``histlib.progress``).
        resolution: resize every image to ``resolution × resolution`` first (None: as stored); real images compared
            with a generator's are resized to its resolution, the size at which the generator learned them.

    Returns:
        ``(features float32 [N, D], labels int64 [N], classes)``.
    """
    from histlib.data.dataset import ImageDataset, to_uint8_tensor
    from histlib.progress import iterate

    ds = ImageDataset(root, split=split, transform=to_uint8_tensor, classes=list(classes) if classes else None,
                      resolution=resolution)
    idx = subset_indices(ds.labels, max_per_class, max_items, seed)
    key = None
    if cache is not None:
        sized = {"resolution": resolution} if resolution is not None else {}  # earlier cache entries keep their key
        key = cache.key(dataset_fingerprint(root), extractor.cache_key, split=split, classes=ds.classes,
                        max_per_class=max_per_class, max_items=max_items, seed=seed, **sized)
        hit = cache.load(key)
        if hit is not None:
            return hit
    subset = torch.utils.data.Subset(ds, idx.tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=_collate)
    feats = np.empty((len(idx), extractor.dim), dtype=np.float32)
    pos = 0
    for images, _ in iterate(loader, desc=f"{extractor.name} features {Path(root).name}", disable=not progress,
                          unit="batch"):
        # Images of different sizes cannot share a tensor: run each run of equal sizes as one batch.
        start = 0
        while start < len(images):
            end = start + 1
            while end < len(images) and images[end].shape == images[start].shape:
                end += 1
            out = extractor(torch.stack(images[start:end]))  # [n, D]
            feats[pos:pos + out.shape[0]] = out.numpy()
            pos += out.shape[0]
            start = end
    labels = ds.labels[idx]
    if cache is not None and key is not None:
        cache.save(key, feats, labels, ds.classes,
                   meta={"root": str(root), "extractor": extractor.cache_key, "split": split, "n": int(len(idx))})
    return feats, labels, list(ds.classes)
