"""Image grids written while training and the plots of notebooks 02 and 03 (all read from a run directory)."""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from histlib import runs
from histlib.data.dataset import to_uint8
from histlib.gan.augment import AugmentPipe


def make_grid(images: torch.Tensor, rows: int, pad: int = 2) -> np.ndarray:
    """Tiles ``[rows·cols, 3, H, W]`` uint8 images row-major into one ``[H', W', 3]`` array (white padding)."""
    n, c, h, w = images.shape
    cols = n // rows
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    for i in range(rows * cols):
        r, k = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = arr[i]
    return grid


def write_png(path: Path, grid: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    runs.atomic_write_bytes(path, buf.getvalue())


@torch.no_grad()
def class_grid(G: torch.nn.Module, z: torch.Tensor, num_classes: int, batch: int = 64) -> torch.Tensor:
    """Images of every class for the same latents: ``[num_classes · len(z), 3, R, R]`` uint8, row = class.

    Uses constant synthesis noise, so a grid depends only on the weights and ``z`` (and draws nothing from the
    global random generator).
    """
    device = next(G.parameters()).device
    zs = z.to(device).repeat(num_classes, 1)  # [K·n, z_dim]
    cs = torch.arange(num_classes, device=device).repeat_interleave(len(z))  # [K·n]
    out = [G(zs[i:i + batch], cs[i:i + batch], noise_mode="const") for i in range(0, len(zs), batch)]
    return to_uint8(torch.cat(out))


def real_grid(dataset, num_classes: int, columns: int, seed: int) -> torch.Tensor:
    """``[num_classes · columns, 3, R, R]`` uint8 real images, one row per class (blank where a class has fewer)."""
    rng = np.random.default_rng([seed, 7])
    first, _ = dataset[0]
    out = torch.full((num_classes * columns, *first.shape), 255, dtype=torch.uint8)
    for k in range(num_classes):
        idx = np.flatnonzero(dataset.labels == k)
        for j, i in enumerate(rng.permutation(idx)[:columns]):
            out[k * columns + j] = dataset[int(i)][0]
    return out


def plot_losses(run_dir: str | os.PathLike):
    """Loss curves of a run (from ``stats.jsonl``): adversarial G/D, D2D-CE, R1 and path length vs kimg."""
    stats = runs.Run(runs.project_path(run_dir)).read_stats()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    panels = [("adversarial", ("loss_g", "loss_d")), ("D2D-CE", ("loss_g_d2d", "loss_d_d2d")),
              ("regularisers", ("r1_penalty", "loss_pl", "pl_mean"))]
    kimg = [r["kimg"] for r in stats]
    for ax, (title, keys) in zip(axes, panels):
        for k in keys:
            ys = [r.get(k) for r in stats]
            if any(y is not None for y in ys):
                ax.plot(kimg, [float("nan") if y is None else y for y in ys], marker=".", label=k)
        ax.set_title(title)
        ax.set_xlabel("kimg")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)  # out of pyplot's registry: the notebook displays the returned figure once
    return fig


def plot_augment(run_dir: str | os.PathLike):
    """ADA's augmentation probability p (left axis) and the overfitting heuristic r_t with its target (right axis)
    vs kimg: p is often a few thousandths while r_t lies in [-1, 1], so they get their own scales."""
    path = runs.project_path(run_dir)
    stats = runs.Run(path).read_stats()
    cfg = runs.read_json(path / "config.json") if (path / "config.json").exists() else {}
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    kimg = [r["kimg"] for r in stats]
    ax.plot(kimg, [r.get("augment_p", 0.0) for r in stats], marker=".", color="C0", label="p")
    ax.set_ylabel("augmentation probability p", color="C0")
    ax.set_xlabel("kimg")
    if any("ada_rt" in r for r in stats):
        ax2 = ax.twinx()
        ax2.plot(kimg, [r.get("ada_rt", float("nan")) for r in stats], marker=".", color="C1",
                 label="r_t = E[sign D(real)]")
        if "ada_target" in cfg:
            ax2.axhline(cfg["ada_target"], color="C1", ls="--", lw=1, label="target of r_t")
        ax2.set_ylabel("r_t", color="C1")
        ax2.legend(fontsize=8, loc="lower right")
    ax.set_title("adaptive augmentation")
    fig.tight_layout()
    plt.close(fig)  # out of pyplot's registry: the notebook displays the returned figure once
    return fig


def plot_class_agreement(run_dir: str | os.PathLike):
    """How D's conditional head sees G's classes (``d_class_agreement``) and real images (``d_real_agreement``)
    per tick, with the relabellings of G's class embeddings marked; chance = 1 / number of classes."""
    path = runs.project_path(run_dir)
    stats = runs.Run(path).read_stats()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    kimg = [r["kimg"] for r in stats]
    for key, label in (("d_class_agreement", "G's images: asked-for class = D's nearest proxy"),
                       ("d_real_agreement", "real images: true class = D's nearest proxy")):
        ys = [r.get(key) for r in stats]
        if any(y is not None for y in ys):
            ax.plot(kimg, [float("nan") if y is None else 100 * y for y in ys], marker=".", label=label)
    metrics = runs.read_json(path / "metrics.json") if (path / "metrics.json").is_file() else {}
    classes = metrics.get("classes") or []
    if classes:
        ax.axhline(100 / len(classes), color="grey", ls=":", lw=1, label=f"chance ({100 / len(classes):.0f} %)")
    for r in stats:
        if r.get("class_realign"):
            ax.axvline(r["kimg"], color="C3", lw=1, alpha=0.6)
    if any(r.get("class_realign") for r in stats):
        ax.plot([], [], color="C3", label="class embeddings relabelled")
    ax.set_ylim(0, 102)
    ax.set_xlabel("kimg")
    ax.set_ylabel("agreement (%)")
    ax.set_title("class agreement seen by D")
    ax.legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_class_grid(run_dir: str | os.PathLike, which: str = "latest"):
    """The per-class grid of ``G_ema`` (``which='latest'``, a kimg value such as ``'12.0'``, or ``'reals'``)."""
    images = runs.project_path(run_dir) / "images"
    meta = runs.read_json(images / "grid.json")
    if which in ("latest", "reals"):
        path = images / ("grid-latest.png" if which == "latest" else "reals.png")
    else:
        path = images / f"grid-{float(which):09.3f}kimg.png"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such grid (run a snapshot first)")
    img = np.asarray(Image.open(path))
    res, pad, classes = meta["resolution"], meta["pad"], meta["classes"]
    fig, ax = plt.subplots(figsize=(min(16, 1.2 + img.shape[1] / 40), min(16, 0.6 + img.shape[0] / 40)))
    ax.imshow(img)
    ax.set_yticks([pad + i * (res + pad) + res / 2 for i in range(len(classes))])
    ax.set_yticklabels(classes)
    ax.set_xticks([])
    label = "real images" if which == "reals" else f"G_ema, {path.stem.removeprefix('grid-')}"
    ax.set_title(f"{label} (row = class)")
    fig.tight_layout()
    plt.close(fig)  # out of pyplot's registry: the notebook displays the returned figure once
    return fig


def plot_augment_grid(
    images: torch.Tensor,
    p_values: Sequence[float],
    pipe: AugmentPipe | None = None,
    seed: int = 0,
    title: str | None = None,
) -> Any:
    """Shows the pipeline's effect: one row per ``p``, one column per image (first row: the originals).

    Every row uses the same random draws (``seed``), so going down a column shows the same sample augmented with
    a growing probability. The global RNG state is left untouched.

    Args:
        images: ``[N, C, H, W]`` images in ``[-1, 1]`` (C = 1 or 3).
        p_values: augmentation probabilities, one row each.
        pipe: the pipeline to show (default: ``AugmentPipe.preset('bgc')``); it is copied, not modified.
        seed: seed of the random draws.
        title: optional figure title.

    Returns:
        A matplotlib ``Figure``.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError("plot_augment_grid: images must be a tensor [N, C, H, W] with C = 1 or 3")
    p_values = [float(v) for v in p_values]
    if not p_values or any(not 0 <= v <= 1 for v in p_values):
        raise ValueError(f"plot_augment_grid: p_values={p_values!r} must be a non-empty list of values in [0, 1]")
    pipe = copy.deepcopy(pipe if pipe is not None else AugmentPipe.preset("bgc")).cpu().eval()
    images = images.detach().float().cpu()
    rows = [images]
    for value in p_values:
        pipe.set_p(value)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            rows.append(pipe(images))
    n = images.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 0.8, 1.3 * len(rows)), squeeze=False)
    labels = ["original"] + [f"p = {v:g}" for v in p_values]
    for r, (batch, label) in enumerate(zip(rows, labels)):
        for i in range(n):
            ax = axes[r][i]
            img = ((batch[i] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)  # out of pyplot's registry: the notebook displays the returned figure once
    return fig
