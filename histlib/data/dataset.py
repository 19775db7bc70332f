"""A torch ``Dataset`` over prepared datasets (or plain ImageFolders), and the conversions to uint8 pixels: of an
image read from disk (:func:`to_uint8_tensor`) and of images in [-1, 1] such as a generator draws (:func:`to_uint8`).

The manifest contract and the torch-free helpers live in ``histlib.data.manifest`` and are re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from histlib.data.manifest import (  # noqa: F401  (re-exported: the public API of this module)
    IMAGE_EXTENSIONS,
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    class_count_table,
    load_manifest,
    split_summary,
    to_rgb8,
)


class ImageDataset(torch.utils.data.Dataset):
    """Images and integer labels of a prepared dataset (or a plain ImageFolder).

    Args:
        root: dataset folder (see ``load_manifest``).
        split: keep only the rows of this split (``'train'``, ``'val'``, ...); None keeps all rows.
        transform: applied to the RGB ``PIL.Image``; None returns the image itself.
        classes: explicit class order (label i = ``classes[i]``), e.g. the base dataset's classes; it must name
            exactly the classes present. Default: sorted class names of the whole manifest (not only the split,
            so train and val agree on the labels).
        resolution: when set, every image is resized to ``resolution × resolution`` (Lanczos).
        subset_of_classes: allow the dataset to hold only some of ``classes`` (an external test set).

    Attributes:
        classes: class names in label order.
        labels: ``np.int64`` array ``[N]``.
        paths: absolute-or-root-joined image paths ``[N]``.
        manifest: the rows in use.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None, transform=None,
                 classes: list[str] | None = None, resolution: int | None = None, subset_of_classes: bool = False):
        self.root = Path(root)
        df = load_manifest(self.root)
        present = sorted(df["class"].unique().tolist())
        if classes is None:
            self.classes = present
        else:
            self.classes = [str(c) for c in classes]
            if len(set(self.classes)) != len(self.classes):
                raise ValueError(f"classes={self.classes}: duplicate names")
            missing = sorted(set(present) - set(self.classes))
            extra = sorted(set(self.classes) - set(present))
            if missing or (extra and not subset_of_classes):
                raise ValueError(f"{self.root}: classes do not match the dataset: in the dataset but not in "
                                 f"classes={missing}, in classes but not in the dataset={extra}")
        if split is not None:
            df = df[df["split"] == split].reset_index(drop=True)
            if len(df) == 0:
                raise ValueError(f"{self.root}: no rows with split={split!r}")
        if resolution is not None and int(resolution) <= 0:
            raise ValueError(f"resolution={resolution}: expected a positive integer or None")
        self.split = split
        self.manifest = df
        self.transform = transform
        self.resolution = int(resolution) if resolution is not None else None
        index = {c: i for i, c in enumerate(self.classes)}
        self.labels = np.asarray([index[c] for c in df["class"]], dtype=np.int64)  # [N]
        self.paths = [self.root / p for p in df["path"]]

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, i: int) -> Image.Image:
        """The i-th image as 8-bit RGB, resized to ``resolution`` when set."""
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                img = to_rgb8(im)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise OSError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
        if self.resolution is not None and img.size != (self.resolution, self.resolution):
            img = img.resize((self.resolution, self.resolution), Image.LANCZOS)
        return img

    def __getitem__(self, i: int):
        img = self.load_image(i)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i])

    def class_counts(self) -> dict[str, int]:
        """Number of images per class, in label order."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


def to_uint8_tensor(img) -> torch.Tensor:
    """A transform: ``PIL.Image`` (or HWC uint8 array) → ``torch.uint8`` tensor ``[3, H, W]``."""
    if isinstance(img, Image.Image):
        img = to_rgb8(img) if img.mode != "RGB" else img
        a = np.asarray(img, dtype=np.uint8)  # [H, W, 3]
    else:
        a = np.asarray(img)
        if a.dtype != np.uint8:
            raise TypeError(f"to_uint8_tensor: expected uint8 pixels, got {a.dtype}")
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))  # [3, H, W]


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """Images ``[N, C, H, W]`` in [-1, 1] (a generator's output) → ``torch.uint8`` in [0, 255] (rounded, clamped).

    The inverse of the scaling the GAN loop applies to :func:`to_uint8_tensor`'s pixels (``x / 127.5 - 1``).
    """
    return ((img.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
