"""Training data of the classification stage: the paper's augmentation, stain augmentation, and the training sets.

The training sets by name (``real``, ``synthetic``, ``real+synthetic``, ``real+stain``, ``real+synthetic+stain``,
``synthetic+stain`` and nested fractions of ``real``) are described in ``histlib.classify.sets``; this module builds
them as torch datasets from the real set's train split and a generated ImageFolder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from histlib.classify.config import ClassifyConfig
from histlib.classify.sets import needs_synthetic, nested_fraction, seed_folder, uses_real, uses_stain
from histlib.data.stain_augment import HEDJitter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COLOR_FACTORS = (0.8, 1.2)  # brightness, contrast and saturation factor range of the paper's augmentation


# ----------------------------------------------------------------------------------------------------------------
# Augmentation


class RandomRot90:
    """Rotates a ``[..., H, W]`` image by k·90° with k uniform in {0, 1, 2, 3} (an exact pixel permutation)."""

    def __call__(self, img):
        from torchvision import tv_tensors

        k = int(torch.randint(0, 4, ()).item())
        if k == 0:
            return img
        out = torch.rot90(img, k, dims=(-2, -1))
        return tv_tensors.wrap(out, like=img) if isinstance(img, tv_tensors.TVTensor) else out

    def __repr__(self) -> str:
        return "RandomRot90()"


def train_transform(image_size: int, stain_strength: float | None = None):
    """The paper's classifier augmentation: PIL RGB → normalised float tensor ``[3, S, S]``.

    Resize (antialiased) to ``image_size``, random rot90, horizontal and vertical flips, brightness, contrast and
    saturation factors drawn uniformly from [0.8, 1.2] (random order, no hue), ImageNet normalisation. With
    ``stain_strength`` (the ``+stain`` training sets), HED jitter of that strength comes right after the resize, on
    the 8-bit image, before the paper's augmentation.
    """
    from torchvision.transforms import v2

    stain = [] if stain_strength is None else [HEDJitter(stain_strength)]
    return v2.Compose([
        v2.ToImage(),  # uint8 [3, H, W]
        v2.Resize((image_size, image_size), antialias=True),
        *stain,
        RandomRot90(),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomVerticalFlip(p=0.5),
        v2.ToDtype(torch.float32, scale=True),  # colour factors in float, so no rounding of the factors
        v2.ColorJitter(brightness=COLOR_FACTORS, contrast=COLOR_FACTORS, saturation=COLOR_FACTORS),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transform(image_size: int):
    """Evaluation preprocessing: resize to ``image_size`` and ImageNet normalisation only."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.ToImage(),
        v2.Resize((image_size, image_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


# ----------------------------------------------------------------------------------------------------------------
# Training sets


class TrainSet(torch.utils.data.Dataset):
    """Selected items of one or more ``ImageDataset``s sharing one class list.

    Attributes:
        classes: class names in label order.
        labels: ``np.int64 [N]``; ``sources``: ``'real'``/``'synthetic'`` per item ``[N]``; ``paths``: ``[N]``.
    """

    def __init__(self, parts: list[tuple[str, Any, np.ndarray]], classes: list[str]):
        self.classes = list(classes)
        self._parts = [(name, ds, np.asarray(idx, dtype=np.int64)) for name, ds, idx in parts]
        self._offsets = np.cumsum([0] + [len(idx) for _, _, idx in self._parts])
        self.labels = np.concatenate([ds.labels[idx] for _, ds, idx in self._parts]).astype(np.int64)  # [N]
        self.sources = np.concatenate([np.full(len(idx), name, dtype=object) for name, _, idx in self._parts])
        self.paths = [ds.paths[i] for _, ds, idx in self._parts for i in idx]

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, i: int):
        if i < 0:
            i += len(self)
        part = int(np.searchsorted(self._offsets, i, side="right") - 1)
        _, ds, idx = self._parts[part]
        return ds[int(idx[i - self._offsets[part]])]

    def class_counts(self, source: str | None = None) -> dict[str, int]:
        """Items per class (of one source when given), in label order."""
        labels = self.labels if source is None else self.labels[self.sources == source]
        counts = np.bincount(labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


def _draw_per_class(labels: np.ndarray, classes: list[str], per_class: int | None, rng: np.random.Generator,
                    what: str) -> np.ndarray:
    """Sorted indices with ``per_class`` items of every class drawn without replacement (None: all items)."""
    if per_class is None:
        return np.arange(len(labels))
    chosen = []
    for c, name in enumerate(classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"{what}: class {name!r} has {len(members)} images, fewer than the {per_class} per "
                             f"class requested; lower the count or provide more images")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def _class_names(root: Path) -> list[str]:
    from histlib.data.dataset import load_manifest

    return sorted(load_manifest(root)["class"].unique().tolist())


def synthetic_dir_for(cfg: ClassifyConfig) -> Path | None:
    """The generated ImageFolder of this run's seed (:func:`histlib.classify.sets.seed_folder`).

    ``{seed}`` in ``cfg.synthetic_dir`` is replaced by the seed. Without it, a folder that holds only generated sets
    ``set0``, ``set1``, … (``histlib.generate`` with several sets) resolves to ``set<seed>``, so each seed trains on
    its own freshly generated set as in the paper.
    """
    if cfg.synthetic_dir is None:
        return None
    path = seed_folder(cfg.synthetic_dir, cfg.seed)
    if "{seed}" in str(cfg.synthetic_dir) or path == Path(str(cfg.synthetic_dir)) or path.is_dir():
        return path
    # a folder of generated sets without this seed's
    subs = sorted(p.name for p in path.parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    raise ValueError(f"synthetic_dir={cfg.synthetic_dir}: holds the generated sets {subs} but no set for "
                     f"seed {cfg.seed} (set{cfg.seed}); generate more sets or use seeds 0..{len(subs) - 1}")


def build_train_set(cfg: ClassifyConfig, transform=None) -> tuple[TrainSet, dict[str, Any]]:
    """The training set named by ``cfg.train_set`` with its per-class counts.

    Args:
        cfg: the run's config (``train_set``, ``real_dir``, ``synthetic_dir``, ``*_per_class``, ``subset_seed``).
        transform: applied to every PIL image; default ``train_transform(cfg.image_size)``.

    Returns:
        ``(dataset, report)``; ``report`` holds ``classes``, ``n_train``, ``n_train_real``, ``n_train_synthetic``,
        per-class counts ``train_per_class/<source>/<class>`` and the folders used.

    Raises:
        ValueError: a folder is not configured, a class has too few images, or the synthetic classes differ from
            the real ones (the message names the missing and extra classes).
    """
    from histlib.data.dataset import ImageDataset

    if transform is None:
        transform = train_transform(cfg.image_size, cfg.stain_strength if uses_stain(cfg.train_set) else None)
    if cfg.real_dir is None:
        raise ValueError("ClassifyConfig.real_dir is not set: the real dataset is needed for its classes and "
                         "validation split (and its train split for the training sets with real images)")
    real_dir = Path(cfg.real_dir)
    classes = _class_names(real_dir)
    seed = cfg.seed if cfg.subset_seed is None else cfg.subset_seed
    parts = []
    folders: dict[str, str] = {"real_dir": str(real_dir)}
    if uses_real(cfg.train_set):
        real = ImageDataset(real_dir, split=cfg.train_split, transform=transform, classes=classes)
        if cfg.real_fraction < 1:
            idx = nested_fraction(real.labels, real.manifest["group"].to_numpy(), cfg.real_fraction, seed)
        else:
            idx = _draw_per_class(real.labels, classes, cfg.real_per_class, np.random.default_rng([seed, 0]),
                                  f"{real_dir} (split {cfg.train_split!r}, real_per_class)")
        parts.append(("real", real, idx))
    if needs_synthetic(cfg.train_set):
        synth_dir = synthetic_dir_for(cfg)
        if synth_dir is None:
            raise ValueError(f"ClassifyConfig.synthetic_dir is not set but train_set={cfg.train_set!r} needs a "
                             "generated ImageFolder <synthetic_dir>/<class>/*.png")
        synth_classes = _class_names(synth_dir)
        missing = sorted(set(classes) - set(synth_classes))
        extra = sorted(set(synth_classes) - set(classes))
        if missing or extra:
            raise ValueError(f"synthetic set {synth_dir} does not have the classes of the real set {real_dir}: "
                             f"missing {missing}, extra {extra} (real classes: {classes})")
        synth = ImageDataset(synth_dir, split=None, transform=transform, classes=classes)
        idx = _draw_per_class(synth.labels, classes, cfg.synthetic_per_class, np.random.default_rng([seed, 1]),
                              f"{synth_dir} (synthetic_per_class)")
        parts.append(("synthetic", synth, idx))
        folders["synthetic_dir"] = str(synth_dir)
    ds = TrainSet(parts, classes)
    report: dict[str, Any] = {"classes": classes, "n_train": len(ds), **folders,
                              "real_fraction": cfg.real_fraction,
                              "stain_strength": cfg.stain_strength if uses_stain(cfg.train_set) else None}
    for source in ("real", "synthetic"):
        counts = ds.class_counts(source)
        report[f"n_train_{source}"] = int(sum(counts.values()))
        report[f"train_per_class/{source}"] = counts
    return ds, report


def build_val_set(cfg: ClassifyConfig, classes: list[str], transform=None):
    """The real set's ``val_split`` with the training labels (resize + normalise only)."""
    from histlib.data.dataset import ImageDataset

    transform = eval_transform(cfg.image_size) if transform is None else transform
    try:
        return ImageDataset(Path(cfg.real_dir), split=cfg.val_split, transform=transform, classes=classes)
    except ValueError as e:
        raise ValueError(f"validation set: {e} (ClassifyConfig.val_split={cfg.val_split!r}; prepare the real set "
                         "with a validation split)") from None
