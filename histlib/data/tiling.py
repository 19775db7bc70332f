"""Overlapping square patches on a regular grid.

Positions start at 0 and step by ``stride`` while the patch still fits, so the right/bottom remainder that is
narrower than a patch is dropped (never padded): a W×H image gives
``(floor((W - patch) / stride) + 1) × (floor((H - patch) / stride) + 1)`` patches, e.g. 2048×1536 at 512/256 → 7 × 5
= 35 (the BACH setting), 224×224 at 64/32 → 36.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath

import numpy as np


def _check(patch: int, stride: int | None) -> tuple[int, int]:
    patch = int(patch)
    stride = patch if stride is None else int(stride)
    if patch <= 0:
        raise ValueError(f"patch={patch}: expected a positive integer")
    if stride <= 0:
        raise ValueError(f"stride={stride}: expected a positive integer")
    return patch, stride


def grid_starts(length: int, patch: int, stride: int) -> list[int]:
    """Start offsets along one axis: ``0, stride, 2·stride, …`` while ``start + patch <= length``."""
    if length < patch:
        return []
    return list(range(0, length - patch + 1, stride))


def tile_positions(width: int, height: int, patch: int, stride: int | None = None) -> list[tuple[int, int]]:
    """Top-left ``(x, y)`` of every patch, row by row (y outer, x inner).

    Args:
        width, height: image size in pixels.
        patch: patch side.
        stride: step between patches; default ``patch`` (no overlap).
    """
    patch, stride = _check(patch, stride)
    xs, ys = grid_starts(width, patch, stride), grid_starts(height, patch, stride)
    return [(x, y) for y in ys for x in xs]


def count_patches(width: int, height: int, patch: int, stride: int | None = None) -> int:
    """Number of patches ``tile_positions`` returns, without listing them."""
    patch, stride = _check(patch, stride)
    nx = (width - patch) // stride + 1 if width >= patch else 0
    ny = (height - patch) // stride + 1 if height >= patch else 0
    return nx * ny


def patch_stem(source: str) -> str:
    """A file-name-safe stem for a source image given by its relative path (``a/b/img.tif`` → ``a--b--img``).

    The class folder is not part of the stem (patches are written under their class folder already); subfolders
    are kept so that two images with the same name in different subfolders cannot collide.
    """
    p = PurePosixPath(source)
    parts = [*p.parent.parts, p.stem] if str(p.parent) != "." else [p.stem]
    return "--".join(parts).replace(" ", "_")


def patch_name(stem: str, x: int, y: int, ext: str = "png") -> str:
    """Deterministic patch file name encoding its source and offset: ``<stem>__x00256_y00512.png``.

    Offsets are zero-padded to 5 digits (wider when needed) so names sort by position on slides up to 100 000 px.
    """
    return f"{stem}__x{x:05d}_y{y:05d}.{ext.lstrip('.')}"


def tile_array(img: np.ndarray, patch: int, stride: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yields ``(x, y, patch_array)`` views for an ``[H, W, C]`` array, in ``tile_positions`` order."""
    h, w = img.shape[:2]
    for x, y in tile_positions(w, h, patch, stride):
        yield x, y, img[y:y + patch, x:x + patch]


