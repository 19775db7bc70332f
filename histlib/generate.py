"""Class-conditional sampling to an ImageFolder, a memorisation audit and GAN metrics of a generated set (notebook 04).

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

The memorisation audit (:mod:`histlib.audit`, re-exported here) finds, for every generated image, its nearest real
training image in a feature space and compares that distance with the real image's own nearest-real distance: a
ratio near 0 flags a (near) copy. GAN metrics (FID, precision/recall, density/coverage, overall and per class)
come from ``histlib.metrics``; every key carries the feature extractor's name, so numbers from the ``random-test``
network (an untrained CNN for plumbing checks) can never pass for image-quality numbers.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from histlib import runs
from histlib.audit import (  # the audit and feature reading live in histlib.audit; notebook 04 imports them here
    PIXELS,
    PixelFeatures,  # noqa: F401
    _image_dataset,
    extractor_label,
    folder_features,
    get_feature_extractor,
    image_resolution,
    memorisation_audit,  # noqa: F401
    nearest_neighbours,  # noqa: F401
    plot_nearest_pairs,  # noqa: F401
    resolve_extractor,
    summarize_audit,
)
from histlib.config import apply_profile, check_types
from histlib.data.dataset import to_uint8
from histlib.gan import checkpoint as gan_checkpoint
from histlib.gan.config import PROFILES
from histlib.progress import progress as progress_bar
from histlib.runtime import resolve_device

IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
NOISE_MODES = ("random", "const", "none")
REPORT_NAME = "generate.json"

# ----------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class GenerateConfig:
    """Settings of one generation stage (notebook 04), written to ``config.json``.

    Attributes:
        checkpoint: a GAN checkpoint (``histlib.gan.checkpoint``) or its run directory.
        dataset_dir: the prepared real dataset the GAN learned (reference for the audit and the metrics).
        images_per_class: images per class and set (int), or ``{class: count}`` for some classes.
        num_sets: independently generated sets (seeds ``seed``, ``seed + 1``, …).
        truncation_psi: 1 = no truncation; < 1 pulls each sample toward its class's mean w.
        seed: seed of the first set.
        batch_size: images per generator call.
        device: ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
        classes: generate only these classes (None: every class of the checkpoint).
        image_format: ``'png'`` (lossless, default), ``'jpg'`` or ``'webp'``.
        noise_mode: synthesis noise: ``'random'`` (as in training), ``'const'`` or ``'none'``.
        extractor: features for the GAN metrics: ``'auto'`` (Inception when its weights are on this machine, else
            the fidelity classifier's, see :func:`metrics_extractor`), ``'fidelity'``, ``'inception'``, ``'vgg16'``,
            ``'domain:CKPT'``, ``'random-test'`` (plumbing only) or None.
        metrics: compute GAN metrics (needs an extractor).
        audit_extractor: features of the memorisation audit: ``'pixels'`` (default; exact and always available) or
            any extractor name, or ``'same'`` for the metrics extractor.
        real_split: split of ``dataset_dir`` the generated set is compared with (None: all images).
        k_pr, k_dc: neighbourhood sizes of precision/recall and density/coverage.
        num_workers: image-decoding processes for the audit and the metrics.
        fidelity: measure class fidelity (:mod:`histlib.fidelity`): a classifier trained on ``dataset_dir``'s train
            split labels the generated images.
        fidelity_cache: parent folder of the cached fidelity classifiers (None: ``.fidelity/`` two levels above
            the run directory, i.e. ``results/<study>/<dataset>/.fidelity/``).
        selection: keep the best samples of each class (:mod:`histlib.selection`): ``'none'`` (every draw),
            ``'realism'`` (realism score of Kynkäänniemi et al. 2019) or ``'fidelity'`` (probability of the class
            asked for).
        oversample: with a selection, images drawn per image kept (``ceil(oversample × n)`` per class).
        amount: images per class as a multiple of the real train split, ``round(amount × N_train / classes)``
            (:func:`histlib.selection.amount_per_class`); replaces ``images_per_class`` when set.
        profile: ``'demo'``, ``'reduced'`` or ``'paper'`` (only the defaults differ).
    """

    checkpoint: str = "results/demo/sample_target/finetune/pretrained/checkpoints/latest.pt"
    dataset_dir: str | None = "data/prepared/sample_target"
    images_per_class: int | dict[str, int] = 32
    num_sets: int = 1
    truncation_psi: float = 1.0
    seed: int = 0
    batch_size: int = 64
    device: str = "auto"
    classes: list[str] | None = None
    image_format: str = "png"
    noise_mode: str = "random"
    extractor: str | None = "auto"
    metrics: bool = True
    audit_extractor: str = PIXELS
    real_split: str | None = "train"
    k_pr: int = 3
    k_dc: int = 5
    num_workers: int = 0
    fidelity: bool = True
    fidelity_cache: str | None = None
    selection: str = "none"
    oversample: float = 2.0
    amount: float | None = None
    profile: str = "demo"

    @classmethod
    def from_profile(cls, profile: str = "demo", **overrides: Any) -> GenerateConfig:
        """The defaults of a profile (``histlib.gan.config.PROFILES[profile]['generate']``) with ``overrides``
        applied (unknown names raise one clear error; ``None`` = the profile's value)."""
        if profile not in PROFILES:
            raise ValueError(f"GenerateConfig.from_profile: profile={profile!r}; expected one of {sorted(PROFILES)}")
        return apply_profile(cls, profile, PROFILES[profile]["generate"], overrides).validate()

    def validate(self) -> GenerateConfig:
        """Checks the values; raises ``ValueError`` naming the field and what was expected."""
        check_types(self)
        _check_counts(self.images_per_class)
        checks = [
            (isinstance(self.num_sets, int) and self.num_sets >= 1, "num_sets", "an integer >= 1"),
            (isinstance(self.truncation_psi, (int, float)) and math.isfinite(self.truncation_psi), "truncation_psi",
             "a finite number (1 = no truncation)"),
            (isinstance(self.num_workers, int) and self.num_workers >= 0, "num_workers", "an integer >= 0"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size", "a positive integer"),
            (self.image_format in IMAGE_FORMATS, "image_format", f"one of {sorted(IMAGE_FORMATS)}"),
            (self.noise_mode in NOISE_MODES, "noise_mode", f"one of {NOISE_MODES}"),
            (self.k_pr >= 1 and self.k_dc >= 1, "k_pr", "k_pr and k_dc >= 1"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f"GenerateConfig.{name}={getattr(self, name)!r}: expected {expected}")
        from histlib.selection import SELECTIONS

        checks = [
            (self.selection in SELECTIONS, "selection", f"one of {SELECTIONS}"),
            (isinstance(self.oversample, (int, float)) and math.isfinite(self.oversample) and self.oversample >= 1,
             "oversample", "a number >= 1 (images drawn per image kept)"),
            (self.amount is None or (isinstance(self.amount, (int, float)) and math.isfinite(self.amount)
                                     and self.amount > 0), "amount",
             "None or a positive number (generated images per class relative to the real train split)"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f"GenerateConfig.{name}={getattr(self, name)!r}: expected {expected}")
        return self


def _check_counts(images_per_class: int | Mapping[str, int]) -> None:
    if isinstance(images_per_class, Mapping):
        bad = {k: v for k, v in images_per_class.items() if not isinstance(v, (int, np.integer)) or v < 0}
        if bad or not images_per_class:
            raise ValueError(f"images_per_class={dict(images_per_class)!r}: expected {{class: count >= 0}} "
                             "with at least one class")
    elif not isinstance(images_per_class, (int, np.integer)) or isinstance(images_per_class, bool) \
            or images_per_class < 1:
        raise ValueError(f"images_per_class={images_per_class!r}: expected a positive integer or {{class: count}}")


# ----------------------------------------------------------------------------------------------------------------
# Sampling


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


def _plan_counts(classes: list[str], images_per_class: int | Mapping[str, int],
                 only: Sequence[str] | None) -> dict[str, int]:
    """``{class: count}`` in checkpoint order, checking every named class exists."""
    _check_counts(images_per_class)
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
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format={image_format!r}: expected one of {sorted(IMAGE_FORMATS)}")
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode={noise_mode!r}: expected one of {NOISE_MODES}")
    if not isinstance(num_sets, int) or num_sets < 1:
        raise ValueError(f"num_sets={num_sets!r}: expected an integer >= 1")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
    dev = resolve_device(device)
    out = runs.project_path(out_dir)
    G, info = load_generator(checkpoint, device=dev)
    counts = _plan_counts(list(info["classes"]), images_per_class, classes)
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

    ds = _image_dataset(images_dir, None, None)
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


# ----------------------------------------------------------------------------------------------------------------
# GAN metrics


def _set_metrics(real: torch.Tensor, fake: torch.Tensor, k_pr: int, k_dc: int, device) -> dict[str, float | None]:
    """``histlib.metrics.compute_metrics`` with counts as ints and metrics the set sizes do not allow as None."""
    from histlib.metrics.summary import compute_metrics

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


def per_class_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """The per-class part of :func:`gan_metrics` as a table: index ``(extractor, class)``, one column per metric."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for key, v in metrics.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[1] == "per_class":
            rows.setdefault((parts[0], parts[2]), {})[parts[3]] = v
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["extractor", "class"])
    return _significant(table)


# ----------------------------------------------------------------------------------------------------------------
# The stage


def run_generation(cfg: GenerateConfig, run_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Writes ``config.json``, ``env.json`` and ``images/`` (see :func:`generate_images`) of a generate run.

    ``cfg.amount`` sets the images per class from the real train split; with ``cfg.selection`` the run draws a pool
    and keeps the best images of each class (:func:`histlib.selection.generate_selected`).
    """
    from histlib import selection

    cfg = dataclasses.replace(cfg).validate()
    _, info = load_generator(cfg.checkpoint)  # a missing or unreadable checkpoint stops here, before the run folder
    if cfg.amount is not None:
        if cfg.dataset_dir is None:
            raise ValueError(f"amount={cfg.amount}: needs dataset_dir (the real train split it is relative to)")
        cfg.images_per_class = selection.amount_per_class(cfg.dataset_dir, cfg.amount)
    run = runs.Run(runs.project_path(run_dir))
    run.write_config(cfg)
    run.metrics_path.unlink(missing_ok=True)  # metrics.json marks a finished stage: written last
    dev = resolve_device(cfg.device)
    run.write_env(device=str(dev))
    if cfg.selection != "none":
        counts = _plan_counts(list(info["classes"]), cfg.images_per_class, cfg.classes)
        return selection.generate_selected(cfg, run.path, counts, dev, progress=progress)
    return generate_images(cfg.checkpoint, run.images, cfg.images_per_class, truncation_psi=cfg.truncation_psi,
                           seed=cfg.seed, batch_size=cfg.batch_size, device=dev, classes=cfg.classes,
                           image_format=cfg.image_format, num_sets=cfg.num_sets, noise_mode=cfg.noise_mode,
                           progress=progress)


def _fidelity_checkpoint(cfg: GenerateConfig, report: Mapping[str, Any], progress: bool = False):
    from histlib import fidelity

    run_dir = Path(report["out_dir"]).parent  # <run>/images -> <run>
    cache = cfg.fidelity_cache or (run_dir.parent.parent / ".fidelity")
    return fidelity.fidelity_classifier(cfg.dataset_dir, int(report["resolution"]), cache_root=cache,
                                        device=str(resolve_device(cfg.device)), progress=progress)


def metrics_extractor(cfg: GenerateConfig, report: Mapping[str, Any], verbose: bool = True):
    """The feature extractor of this run's GAN metrics, or None (with the reason printed).

    ``cfg.extractor``: ``'auto'`` = Inception-v3 when its FID weights are on this machine, otherwise the features of
    the target's fidelity classifier (:mod:`histlib.fidelity`, trained on the real train split: keys
    ``domain-<model>/…``, so they can never pass for Inception numbers); ``'fidelity'`` = those features always;
    any other name as :func:`resolve_extractor`.
    """
    spec = cfg.extractor
    if cfg.metrics and spec == "auto" and cfg.dataset_dir is not None:
        from histlib.metrics import INCEPTION_FID_WEIGHTS, WeightsNotFoundError, find_weights

        try:
            find_weights(INCEPTION_FID_WEIGHTS, download=False)
        except WeightsNotFoundError:
            if verbose:
                print("No Inception-v3 FID weights on this machine: the GAN metrics use the features of the target's "
                      "fidelity classifier (trained on its real train split); their keys say 'domain-…'.")
            spec = "fidelity"
    if cfg.metrics and spec == "fidelity":
        return get_feature_extractor(f"domain:{_fidelity_checkpoint(cfg, report)}", device=cfg.device)
    return resolve_extractor(spec, enabled=cfg.metrics, device=cfg.device, verbose=verbose)


def class_fidelity(cfg: GenerateConfig, report: Mapping[str, Any], progress: bool = False) -> dict[str, Any] | None:
    """Class fidelity of every generated set (pooled), by the cached fidelity classifier of ``cfg.dataset_dir``.

    The classifier is cached in ``cfg.fidelity_cache``, by default ``.fidelity/`` beside the run's stage folder
    (``results/<study>/<dataset>/.fidelity/``), so every variant of a target shares one.

    Returns None when ``cfg.fidelity`` is off or there is no real dataset to learn the classes from.
    """
    from histlib import fidelity

    if not cfg.fidelity or cfg.dataset_dir is None:
        return None
    clf = fidelity.FidelityClassifier(_fidelity_checkpoint(cfg, report, progress), device=resolve_device(cfg.device))
    return fidelity.sets_fidelity(report["set_dirs"], clf, num_workers=cfg.num_workers)


def skip_reason(cfg: GenerateConfig) -> str:
    """Why a generate run with these settings has no GAN metrics (for ``metrics.json``)."""
    if not cfg.metrics:
        return "metrics disabled (metrics=False)"
    if cfg.extractor is None:
        return "no feature extractor given (extractor=None)"
    if cfg.extractor == "auto":
        return ("extractor='auto' found no Inception-v3 FID weights on this machine; it neither downloads them nor "
                "uses an untrained network")
    return f"extractor={cfg.extractor!r} gave no metrics"


def write_generation_metrics(run_dir: str | os.PathLike, report: Mapping[str, Any],
                             metrics: Mapping[str, Any] | None = None, audit: pd.DataFrame | None = None,
                             cfg: GenerateConfig | None = None, skipped_reason: str | None = None,
                             fidelity: Mapping[str, Any] | None = None,
                             unselected: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Writes ``metrics.json`` (flat keys) of a generate run and ``memorisation.csv`` when an audit is given.

    Keys: ``n_images``, ``num_sets``, ``images_per_class/<class>``, ``seconds``, ``images_per_s``,
    ``truncation_psi``, ``seed``, ``checkpoint``, ``memorisation/<extractor>/…`` and the GAN metrics
    ``<extractor>/…``; without GAN metrics, ``metrics_skipped`` says why (``skipped_reason``, else derived from
    ``cfg``); the class fidelity ``fidelity/…`` (:func:`histlib.fidelity.metrics_keys`) when measured;
    ``selection/…`` (method, oversampling, pool size, scores) and the unselected set's ``unselected/…``
    (:func:`histlib.selection.unselected_metrics`) for a selected set.
    """
    run = runs.Run(runs.project_path(run_dir))
    s = report["settings"]
    out: dict[str, Any] = {
        "n_images": report["n_images"], "num_sets": s["num_sets"], "images_per_class": s["images_per_class"],
        "seed": s["seed"], "truncation_psi": s["truncation_psi"], "noise_mode": s["noise_mode"],
        "checkpoint": runs.display_path(s["checkpoint"]), "checkpoint_kimg": (s.get("cur_nimg") or 0) / 1000,
        "resolution": report.get("resolution"), "seconds": report["seconds"], "images_per_s": report["images_per_s"],
        "images_reused": bool(report.get("reused", False)),
        "selection": report.get("selection") or {"method": "none"},
    }
    if cfg is not None and cfg.amount is not None:
        out["amount"] = cfg.amount
    if audit is not None:
        summary = summarize_audit(audit)
        label = summary.pop("extractor") or "features"
        out.update({f"memorisation/{label}/{k}": v for k, v in summary.items()})
        runs.atomic_write_text(run.path / "memorisation.csv",
                               audit.drop(columns=["generated_path", "real_path"]).to_csv(index=False))
    if fidelity:
        from histlib.fidelity import metrics_keys

        out.update(metrics_keys(fidelity))
    out.update(unselected or {})
    if metrics:
        out.update(metrics)
    else:
        out["metrics_skipped"] = skipped_reason or (skip_reason(cfg) if cfg is not None else "no GAN metrics given")
    run.write_metrics(out)
    return run.read_metrics()


def metrics_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """The overall GAN metrics of :func:`gan_metrics` as a table: one row per extractor."""
    rows: dict[str, dict[str, Any]] = {}
    for key, v in metrics.items():
        parts = key.split("/")
        if len(parts) == 2 and parts[0] not in ("images_per_class",):
            rows.setdefault(parts[0], {})[parts[1]] = v
    return _significant(pd.DataFrame.from_dict(rows, orient="index"))


def _significant(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """GAN metrics at ``digits`` significant digits (more would be noise at these sample sizes), image counts
    (``n_*``) as integers and first."""
    if table.empty:
        return table
    counts = [c for c in table.columns if str(c).startswith("n_")]
    out = table[counts + [c for c in table.columns if c not in counts]].copy()
    for c in out.columns:
        if c in counts:
            out[c] = out[c].astype("Int64")
        elif pd.api.types.is_float_dtype(out[c]):  # object dtype: shown as written, not padded to 6 decimals
            out[c] = out[c].map(lambda v: v if pd.isna(v) or v == 0 else float(f"{v:.{digits}g}")).astype(object)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Command line: python -m histlib generate --checkpoint CKPT --run-dir DIR [--dataset-dir REAL] ...


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a train-gan checkpoint file or run directory")
    parser.add_argument("--run-dir", required=True, help="run directory to write (images/, metrics.json)")
    parser.add_argument("--dataset-dir", default=None,
                        help="the prepared real dataset the GAN learned: enables class fidelity and GAN metrics")
    parser.add_argument("--profile", default="demo", choices=("demo", "reduced", "paper"))
    parser.add_argument("--images-per-class", type=int, default=None, help="default: the profile's")
    parser.add_argument("--num-sets", type=int, default=None, help="independent sets (default: the profile's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--truncation-psi", type=float, default=1.0)
    parser.add_argument("--selection", default="none", choices=("none", "realism", "fidelity"),
                        help="keep the best images of each class by this score (needs --dataset-dir)")
    parser.add_argument("--oversample", type=float, default=2.0, help="with --selection: images drawn per image kept")
    parser.add_argument("--amount", type=float, default=None,
                        help="images per class as a multiple of the real train split (replaces --images-per-class)")
    parser.add_argument("--extractor", default="auto", help="GAN-metric features (see GenerateConfig.extractor)")
    parser.add_argument("--no-metrics", action="store_true", help="no GAN metrics")
    parser.add_argument("--no-fidelity", action="store_true", help="no class fidelity")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true")


def main(args) -> int:
    """Generates a set, then (with ``--dataset-dir``) its class fidelity and GAN metrics; writes metrics.json."""
    from histlib import fidelity as fid_mod

    cfg = GenerateConfig.from_profile(
        args.profile, checkpoint=args.checkpoint, dataset_dir=args.dataset_dir, images_per_class=args.images_per_class,
        num_sets=args.num_sets, seed=args.seed, truncation_psi=args.truncation_psi, extractor=args.extractor,
        metrics=not args.no_metrics and args.dataset_dir is not None,
        fidelity=not args.no_fidelity and args.dataset_dir is not None, device=args.device,
        selection=args.selection, oversample=args.oversample, amount=args.amount)
    progress = not args.no_progress
    report = run_generation(cfg, args.run_dir, progress=progress)
    fid = class_fidelity(cfg, report, progress=progress)
    metrics = {}
    extractor = metrics_extractor(cfg, report) if cfg.metrics else None
    if extractor is not None:
        metrics = gan_metrics(report["set_dirs"][0], cfg.dataset_dir, extractor, real_split=cfg.real_split,
                              k_pr=cfg.k_pr, k_dc=cfg.k_dc, device=cfg.device)
    from histlib.selection import unselected_metrics

    unselected = unselected_metrics(cfg, report, extractor)
    out = write_generation_metrics(args.run_dir, report, metrics, cfg=cfg, fidelity=fid, unselected=unselected)
    print(f"{report['n_images']} images in {runs.display_path(report['out_dir'])} "
          f"({report['images_per_s']} img/s{', reused' if report.get('reused') else ''})")
    if fid:
        print(repr(fid_mod.FidelityView(fid)))
    print(f"metrics: {runs.display_path(Path(args.run_dir) / 'metrics.json')} ({len(out)} keys)")
    return 0
