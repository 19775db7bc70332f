"""The classification stage's settings: ``ClassifyConfig`` (one run, written to ``config.json``) and its checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from histlib.classify.sets import check_fraction, check_train_set
from histlib.config import check_types
from histlib.data.stain_augment import DEFAULT_STAIN_STRENGTH, HEDJitter

PAPER_MODELS = ("resnet34", "densenet169", "efficientnet_b2")


@dataclass
class ClassifyConfig:
    """Settings of one classifier run (written to ``config.json``).

    Attributes:
        model: a timm model name (paper: ``resnet34``, ``densenet169``, ``efficientnet_b2``).
        train_set: one of ``histlib.classify.sets.TRAIN_SETS``: ``'real'``, ``'synthetic'``, ``'real+synthetic'``,
            ``'real+stain'``, ``'real+synthetic+stain'``, ``'synthetic+stain'``.
        real_dir: prepared real dataset (``manifest.csv`` with train/val splits); always needed for validation.
        synthetic_dir: generated ImageFolder ``<dir>/<class>/*.png``; ``{seed}`` in the path is replaced by the
            seed, and a folder of generated sets ``set0, set1, …`` resolves to ``set<seed>``, so each seed trains on
            its own freshly generated set (as in the paper).
        real_per_class: real training images per class (None: all of the train split).
        synthetic_per_class: synthetic images per class (None: all of the generated set).
        subset_seed: seed of the per-class draws and of the fraction's group order (None: ``seed``).
        real_fraction: fraction of the real train split's groups kept for ``train_set='real'`` (1: all), drawn per
            class and nested (``histlib.classify.sets.nested_fraction``): the real-data learning curve.
        stain_strength: strength ``sigma`` of the HED jitter of the ``+stain`` training sets (Tellez et al. 2019:
            0.05 light, 0.2 strong; ``histlib.data.stain_augment``); unused by the other sets.
        train_split, val_split: split names in the real set's manifest.
        image_size: network input size in pixels (images are resized to it).
        epochs: training epochs (upper bound with early stopping).
        batch_size: training batch size.
        optimizer: ``'adamw'`` or ``'sgd'``.
        lr, weight_decay, momentum: optimiser settings (momentum for SGD only); no decay on norms and biases.
        warmup_epochs: linear warm-up before the cosine decay (0: none).
        label_smoothing: cross-entropy label smoothing.
        balanced_sampling: draw classes uniformly (with replacement) instead of shuffling; for imbalanced sets.
        pretrained: ``'auto'`` (ImageNet weights when available, else from scratch), True (must have them),
            False (from scratch).
        weights_file: a local ImageNet checkpoint for ``model`` (``.safetensors``/``.pth``/``.bin``).
        amp: mixed precision, ``'auto'`` = on for CUDA (bf16 where supported, else fp16), off on CPU.
        channels_last: ``'auto'`` = on for CUDA.
        num_workers: data-loader processes, ``'auto'`` = 0 on CPU (decoding would compete with the model for the
            same cores), ``min(8, cores)`` on CUDA.
        seed: seed of initialisation, sampling and augmentation.
        device: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
        early_stopping_patience: stop after this many epochs without a better validation balanced accuracy
            (None or 0: never).
        max_steps: stop after this many optimiser steps (for quick tests); None: ``epochs`` full epochs.
        variant: the GAN variant that generated ``synthetic_dir`` (a label: run names and ``metrics.json`` carry it).
        test_split: the real set's split the chosen checkpoint is evaluated on once, when the manifest has it
            (``test_*`` keys; nothing is selected on it). None: no test evaluation.
        extra_test_sets: ``{name: prepared dataset}`` evaluated once with the chosen checkpoint (all their images;
            they may hold a subset of the classes), e.g. CRC-VAL-HE-7K for a model trained on NCT-CRC-HE-100K
            (``extra/<name>/*`` keys).
    """

    model: str = "resnet34"
    train_set: str = "real"
    real_dir: str | None = None
    synthetic_dir: str | None = None
    real_per_class: int | None = None
    synthetic_per_class: int | None = None
    subset_seed: int | None = None
    real_fraction: float = 1.0
    stain_strength: float = DEFAULT_STAIN_STRENGTH
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 224
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    balanced_sampling: bool = False
    pretrained: str | bool = "auto"
    weights_file: str | None = None
    amp: str | bool = "auto"
    channels_last: str | bool = "auto"
    num_workers: str | int = "auto"
    seed: int = 0
    device: str = "auto"
    early_stopping_patience: int | None = None
    max_steps: int | None = None
    variant: str | None = None
    test_split: str | None = "test"
    extra_test_sets: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check_types(self)
        check_train_set(self.train_set)
        check_fraction(self.real_fraction, "ClassifyConfig.real_fraction")
        if self.real_fraction < 1 and (self.train_set != "real" or self.real_per_class is not None):
            raise ValueError(f"ClassifyConfig.real_fraction={self.real_fraction}: a fraction of the real train split "
                             f"is for train_set 'real' without real_per_class (got train_set={self.train_set!r}, "
                             f"real_per_class={self.real_per_class})")
        HEDJitter(self.stain_strength)  # checks the strength
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"ClassifyConfig.optimizer={self.optimizer!r}: expected 'adamw' or 'sgd'")
        for name in ("pretrained", "amp", "channels_last"):
            if getattr(self, name) not in ("auto", True, False):
                raise ValueError(f"ClassifyConfig.{name}={getattr(self, name)!r}: expected 'auto', true or false")
        if not (self.num_workers == "auto" or (isinstance(self.num_workers, int) and self.num_workers >= 0)):
            raise ValueError(f"ClassifyConfig.num_workers={self.num_workers!r}: expected 'auto' or an integer >= 0")
        for name in ("image_size", "epochs", "batch_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ClassifyConfig.{name}={getattr(self, name)!r}: expected a positive integer")
        for name in ("real_per_class", "synthetic_per_class", "max_steps"):
            v = getattr(self, name)
            if v is not None and int(v) <= 0:
                raise ValueError(f"ClassifyConfig.{name}={v!r}: expected a positive integer or null")
        if self.lr <= 0:
            raise ValueError(f"ClassifyConfig.lr={self.lr!r}: expected a positive number")
        if not isinstance(self.extra_test_sets, dict) or not all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in self.extra_test_sets.items()):
            raise ValueError(f"ClassifyConfig.extra_test_sets={self.extra_test_sets!r}: expected a mapping of "
                             "names to prepared dataset folders")


