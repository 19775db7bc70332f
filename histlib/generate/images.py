"""Class-conditional sampling of a GAN checkpoint into ImageFolders (the generate stage's images).

``generate_images(checkpoint, out_dir, images_per_class)`` samples ``G_ema`` of a checkpoint written by ``train_gan``
(:mod:`histlib.gan`) and writes ``<out_dir>/<class>/<seed>_<index>.png`` — the layout ``histlib.classify`` reads.
Class names come from the checkpoint. The folder is built under a temporary name and renamed when complete
(``histlib.runs.atomic_dir``), so an interrupted run leaves nothing behind, and a folder whose ``generate.json``
records the same settings is reused instead of regenerated.

Determinism: the latent of image ``i`` of class ``k`` in a set with seed ``s`` is drawn from its own generator
seeded with ``(s, k, i)``, so it does not depend on the batch size, on the other classes or on how many images are
asked for (asking for more extends a set). With ``noise_mode='random'`` (the default, as in training) the per-pixel
noise of each batch is drawn from a generator seeded with ``(s, k, first index)``: the images are then a function
of the checkpoint, the seed, the batch size and the device; ``noise_mode='const'`` removes the batch size.

Several sets (the paper trains each classifier run on a freshly generated set): ``num_sets=n`` writes
``<out_dir>/set0 … set<n-1>/<class>/…``, set ``j`` with seed ``seed + j``; a classifier seed ``k`` then reads
``<out_dir>/set{seed}`` (``histlib.classify`` substitutes ``{seed}``). One set keeps the plain layout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histlib import runs
from histlib.data.dataset import to_uint8
from histlib.device import resolve_device
from histlib.gan import checkpoint as gan_checkpoint
from histlib.metrics.folders import image_dataset
from histlib.progress import progress as progress_bar

IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
NOISE_MODES = ("random", "const", "none")
REPORT_NAME = "generate.json"


def check_counts(images_per_class: int | Mapping[str, int]) -> None:
    """Raises ``ValueError`` unless ``images_per_class`` is a positive integer or ``{class: count >= 0}``."""
    if isinstance(images_per_class, Mapping):
        bad = {k: v for k, v in images_per_class.items() if not isinstance(v, (int, np.integer)) or v < 0}
        if bad or not images_per_class:
            raise ValueError(f"images_per_class={dict(images_per_class)!r}: expected {{class: count >= 0}} "
                             "with at least one class")
    elif not isinstance(images_per_class, (int, np.integer)) or isinstance(images_per_class, bool) \
            or images_per_class < 1:
        raise ValueError(f"images_per_class={images_per_class!r}: expected a positive integer or {{class: count}}")



def load_generator(checkpoint: str | os.PathLike, device: str | torch.device = "cpu"):
    """``G_ema`` of a training checkpoint and its class names (:func:`histlib.gan.checkpoint.load_generator`).

    Raises:
        FileNotFoundError / ValueError: the checkpoint is missing, unreadable, or lacks class names.
    """
    G, info = gan_checkpoint.load_generator(checkpoint, device=device, which="G_ema")
    classes = info.get("classes")
    if not classes:
        raise ValueError(f"{info.get('path', checkpoint)}: the checkpoint stores no class names ('classes'); "
                         "generated images could not be named by class")
    if len(classes) > G.num_classes:
        raise ValueError(f"{info['path']}: {len(classes)} class names for a generator with {G.num_classes} classes")
    return G, info


def plan_counts(classes: list[str], images_per_class: int | Mapping[str, int],
                 only: Sequence[str] | None) -> dict[str, int]:
    """``{class: count}`` in checkpoint order, checking every named class exists."""
    check_counts(images_per_class)
    selected = list(classes) if only is None else [str(c) for c in only]
    unknown = sorted(set(selected) - set(classes))
    if unknown:
        raise ValueError(f"classes={list(selected)}: {unknown} not among the checkpoint's classes {classes}")
    if isinstance(images_per_class, Mapping):
        unknown = sorted(set(images_per_class) - set(classes))
        if unknown:
            raise ValueError(f"images_per_class names unknown class(es) {unknown}; the checkpoint's classes are "
                             f"{classes}")
        return {c: int(images_per_class[c]) for c in classes if c in images_per_class and c in selected}
    return {c: int(images_per_class) for c in classes if c in selected}


def latents(seed: int, class_index: int, start: int, count: int, z_dim: int) -> torch.Tensor:
    """``z [count, z_dim]`` of images ``start … start + count - 1`` of one class: each from its own seeded stream."""
    out = np.empty((count, z_dim), dtype=np.float32)
    for j in range(count):
        out[j] = np.random.default_rng([int(seed), int(class_index), int(start + j)]).standard_normal(z_dim)
    return torch.from_numpy(out)


def _save_image(array: np.ndarray, path: Path, fmt: str) -> None:
    from PIL import Image

    kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(array).save(path, format=fmt, **kwargs)


@torch.no_grad()
def _generate_set(G, class_index: dict[str, int], counts: dict[str, int], out: Path, seed: int, *,
                  truncation_psi: float, batch_size: int, noise_mode: str, ext: str, fmt: str,
                  pool: ThreadPoolExecutor, bar) -> dict[str, int]:
    device = next(G.parameters()).device
    written = {}
    pending = []
    for cls, n in counts.items():
        folder = out / runs.check_name(cls, "the checkpoint's classes")  # never a path of its own
        folder.mkdir(parents=True, exist_ok=True)
        k = class_index[cls]
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            z = latents(seed, k, start, m, G.z_dim).to(device)  # [m, z_dim]
            c = torch.full((m,), k, dtype=torch.int64, device=device)  # [m]
            # The noise of this batch comes from its own seeded stream; the global RNG is left untouched.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(int(np.random.SeedSequence([seed, k, start, 1]).generate_state(1)[0]))
                img = G(z, c, truncation_psi=truncation_psi, noise_mode=noise_mode)  # [m, 3, R, R]
            arrays = to_uint8(img).permute(0, 2, 3, 1).cpu().numpy()  # [m, R, R, 3]
            for j in range(m):
                pending.append(pool.submit(_save_image, arrays[j], folder / f"{seed}_{start + j:06d}.{ext}", fmt))
            # Bound the number of images held in memory and surface write errors early.
            while len(pending) > 4 * batch_size:
                pending.pop(0).result()
            bar.update(m)
        written[cls] = n
    for p in pending:
        p.result()
    return written


def _settings(info: dict[str, Any], counts: dict[str, int], num_sets: int, seed: int, truncation_psi: float,
              batch_size: int, device: torch.device, noise_mode: str, image_format: str,
              checkpoint_sha: str) -> dict[str, Any]:
    return {"checkpoint": str(info["path"]), "checkpoint_sha256": checkpoint_sha, "cur_nimg": info.get("cur_nimg"),
            "classes": list(counts), "images_per_class": counts, "num_sets": num_sets, "seed": seed,
            "truncation_psi": float(truncation_psi), "noise_mode": noise_mode, "image_format": image_format,
            "batch_size": batch_size if noise_mode == "random" else None,
            "device_type": device.type if noise_mode == "random" else None}


def set_dirs(out_dir: str | os.PathLike, num_sets: int) -> list[Path]:
    """The ImageFolder of each set: ``[out_dir]`` for one set, ``[out_dir/set0, …]`` for several."""
    out = Path(out_dir)
    return [out] if num_sets == 1 else [out / f"set{j}" for j in range(num_sets)]


def _check_arguments(image_format: str, noise_mode: str, num_sets: int, batch_size: int) -> None:
    """One clear error for a bad argument of :func:`generate_images`, before the checkpoint is loaded."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format={image_format!r}: expected one of {sorted(IMAGE_FORMATS)}")
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode={noise_mode!r}: expected one of {NOISE_MODES}")
    if not isinstance(num_sets, int) or num_sets < 1:
        raise ValueError(f"num_sets={num_sets!r}: expected an integer >= 1")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")


def generate_images(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    images_per_class: int | Mapping[str, int],
    *,
    truncation_psi: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    classes: Sequence[str] | None = None,
    image_format: str = "png",
    num_sets: int = 1,
    noise_mode: str = "random",
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Samples ``G_ema`` of a checkpoint into an ImageFolder ``<out_dir>/<class>/<seed>_<index>.<ext>``.

    Args:
        checkpoint: a GAN checkpoint file (``histlib.gan.checkpoint``) or run directory.
        out_dir: the folder to create (replaced atomically when it exists with other settings).
        images_per_class: images per class and set, or ``{class: count}`` (only the named classes).
        truncation_psi: 1 = none; < 1 pulls samples toward their class mean.
        seed: seed of the first set; set ``j`` uses ``seed + j``.
        batch_size: images per generator call.
        device: ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
        classes: restrict to these class names (default: every class of the checkpoint).
        image_format: ``'png'``, ``'jpg'`` or ``'webp'``.
        num_sets: number of independent sets (``out_dir/set<j>/`` when more than one).
        noise_mode: ``'random'``, ``'const'`` or ``'none'`` synthesis noise.
        overwrite: regenerate even when ``out_dir/generate.json`` records the same settings.
        workers: threads encoding images (default: up to 4).
        progress: show a progress bar.

    Returns:
        The report (also ``<out_dir>/generate.json``): settings, ``counts`` per set and class, ``set_dirs``,
        ``n_images``, ``seconds``, ``images_per_s`` and ``reused`` (True when an identical folder was kept).
    """
    _check_arguments(image_format, noise_mode, num_sets, batch_size)
    dev = resolve_device(device)
    out = runs.project_path(out_dir)
    G, info = load_generator(checkpoint, device=dev)
    counts = plan_counts(list(info["classes"]), images_per_class, classes)
    settings = _settings(info, counts, num_sets, int(seed), truncation_psi, batch_size, dev, noise_mode,
                         image_format, runs.file_sha256(info["path"]))
    # The checkpoint is identified by its content (sha256), not its path, so a moved project reuses its images.
    settings_hash = runs.config_hash({k: v for k, v in settings.items() if k != "checkpoint"})
    report_path = out / REPORT_NAME
    if not overwrite and report_path.is_file():
        old = runs.read_json(report_path)
        if old.get("settings_hash") == settings_hash:
            return {**old, "reused": True}

    class_index = {c: i for i, c in enumerate(info["classes"])}
    total = sum(counts.values()) * num_sets
    workers = workers or min(4, os.cpu_count() or 1)
    t0 = time.perf_counter()
    written: list[dict[str, int]] = []
    with runs.atomic_dir(out) as tmp, ThreadPoolExecutor(max_workers=workers) as pool, \
            progress_bar(total=total, desc="generate", unit="img", disable=not progress) as bar:
        for j, folder in enumerate(set_dirs(tmp, num_sets)):
            written.append(_generate_set(G, class_index, counts, folder, int(seed) + j,
                                         truncation_psi=truncation_psi, batch_size=batch_size,
                                         noise_mode=noise_mode, ext=image_format, fmt=IMAGE_FORMATS[image_format],
                                         pool=pool, bar=bar))
        seconds = time.perf_counter() - t0
        report = {
            "settings": settings, "settings_hash": settings_hash,
            "out_dir": out.as_posix(), "set_dirs": [p.as_posix() for p in set_dirs(out, num_sets)],
            "set_seeds": [int(seed) + j for j in range(num_sets)], "counts": written,
            "n_images": total, "resolution": info.get("resolution"), "seconds": round(seconds, 3),
            "images_per_s": round(total / max(seconds, 1e-9), 1), "device": str(dev),
        }
        runs.write_json(tmp / REPORT_NAME, report)
    return {**report, "reused": False}


def plot_samples(images_dir: str | os.PathLike, n_per_class: int = 8):
    """A grid of generated images, one row per class (the first ``n_per_class`` of each)."""
    import matplotlib.pyplot as plt

    ds = image_dataset(images_dir, None, None)
    fig, axes = plt.subplots(len(ds.classes), n_per_class,
                             figsize=(1.1 * n_per_class + 1.5, 1.1 * len(ds.classes)), squeeze=False)
    for i, cls in enumerate(ds.classes):
        idx = np.flatnonzero(ds.labels == i)[:n_per_class]
        for j in range(n_per_class):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(idx):
                ax.imshow(ds[int(idx[j])][0].permute(1, 2, 0).numpy())
            if j == 0:
                ax.set_ylabel(cls, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    plt.close(fig)  # out of pyplot's registry: the notebook displays the returned figure once
    return fig

