"""Figures of the data stage: class counts and a per-class sample grid (like the paper's Fig. 2).

Each function returns a matplotlib ``Figure`` (closed in pyplot, so a notebook displays it once, as the cell's value).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from histlib.data.manifest import class_count_table, load_manifest, to_rgb8


def _new_figure(figsize):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=figsize)
    plt.close(fig)  # keep it out of pyplot's registry: the caller displays or saves it
    return fig


def class_count_figure(manifest_or_root, title: str | None = None):
    """Horizontal stacked bars: images per class, one colour per split.

    Args:
        manifest_or_root: a manifest DataFrame or a dataset folder.
        title: figure title (default: total number of images).
    """
    table = class_count_table(manifest_or_root).drop(index="total").drop(columns="total")
    fig = _new_figure((7, 0.35 * len(table) + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    left = np.zeros(len(table))
    for split in table.columns:
        ax.barh(table.index, table[split].to_numpy(), left=left, label=split)
        left += table[split].to_numpy()
    for i, total in enumerate(left):
        ax.text(total, i, f" {int(total)}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.set_xlim(0, left.max() * 1.15 if left.max() > 0 else 1)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or f"{int(left.sum())} images, {len(table)} classes")
    fig.tight_layout()
    return fig


def sample_grid_figure(root: str | os.PathLike, n_per_class: int = 8, split: str | None = None, seed: int = 0,
                       classes: list[str] | None = None, tile_inches: float = 0.9):
    """One row per class with ``n_per_class`` randomly chosen images (fewer when a class has fewer).

    Args:
        root: dataset folder (prepared or ImageFolder).
        n_per_class: images per row.
        split: restrict to one split (None: all).
        seed: which images are shown.
        classes: row order (default: sorted class names).
        tile_inches: size of one image in the figure.
    """
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    df = load_manifest(root)
    if split is not None:
        df = df[df["split"] == split]
        if df.empty:
            raise ValueError(f"{root}: no images in split {split!r}")
    classes = classes or sorted(df["class"].unique())
    rng = np.random.default_rng(seed)
    fig = _new_figure((tile_inches * n_per_class + 1.6, tile_inches * len(classes) + 0.3))
    axes = fig.subplots(len(classes), n_per_class, squeeze=False)
    for r, cls in enumerate(classes):
        paths = df.loc[df["class"] == cls, "path"].to_numpy()
        chosen = sorted(rng.choice(len(paths), size=min(n_per_class, len(paths)), replace=False)) if len(paths) else []
        for c in range(n_per_class):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(chosen):
                with Image.open(root / paths[chosen[c]]) as im:
                    ax.imshow(np.asarray(to_rgb8(im)))
            if c == 0:
                ax.set_ylabel(cls, rotation=0, ha="right", va="center", fontsize=9)
    fig.subplots_adjust(left=1.5 / (tile_inches * n_per_class + 1.6), right=0.99, top=0.99, bottom=0.01,
                        wspace=0.04, hspace=0.04)
    return fig


def group_size_figure(manifest_or_root):
    """Histogram of images per group (how many patches each source image or slide contributed)."""
    df = manifest_or_root if isinstance(manifest_or_root, pd.DataFrame) else load_manifest(manifest_or_root)
    sizes = df.groupby("group").size()
    fig = _new_figure((5, 3))
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(sizes.to_numpy(), bins=min(30, max(1, sizes.nunique())))
    ax.set_xlabel("images per group")
    ax.set_ylabel("groups")
    fig.tight_layout()
    return fig
