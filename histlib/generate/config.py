"""The generate stage's settings: ``GenerateConfig`` (written to ``config.json``) and its checks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from histlib.config import apply_profile, check_types
from histlib.gan.config import PROFILES
from histlib.generate.images import IMAGE_FORMATS, NOISE_MODES, check_counts
from histlib.metrics.folders import PIXELS
from histlib.selection import SELECTIONS


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
            ``'realism'`` (realism score of Kynkäänniemi et al. 2019), ``'fidelity'`` (probability of the class
            asked for), ``'agree'`` (the first draws a classifier labels as the class asked for, in draw order) or
            ``'relabel'`` (the first draws a classifier labels as each class, whichever class they were asked for).
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
        check_counts(self.images_per_class)
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
