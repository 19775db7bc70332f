"""Periodic GAN metrics during training, and the early-stopping rule.

``train_gan`` calls ``hook(G_ema, cur_nimg)`` at every tick; ``GanMetricsHook`` evaluates only every
``every_kimg`` thousand images (and returns ``{}`` in between), always on the same real subset (features computed
once, at construction) and the same latent codes and labels (drawn once from ``seed``), so successive values
differ only because the generator changed.

The paper stops training when the metrics stop improving; ``EarlyStopping`` expresses that rule: after each
evaluation, ``update(metrics)`` returns True once ``metric`` has failed to improve (by more than ``min_delta``)
for ``patience`` consecutive evaluations.

Example (inside a training loop)::

    hook = GanMetricsHook.from_dataset("data/prepared/base", fid_extractor="inception", prdc_extractor="vgg16",
                                       num_fake=5000, every_kimg=50)
    stopper = EarlyStopping("fid", patience=5, mode="min")
    ...
    metrics = hook(G_ema, cur_nimg)
    if metrics:
        run.log_stats({"kimg": cur_nimg / 1000, **metrics})
        if stopper.update(metrics):
            break
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from histlib.data.dataset import to_uint8

from .features import FeatureExtractor, get_extractor
from .summary import compute_metrics, per_class_metrics


def default_generate(G: torch.nn.Module, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``G(z, c)`` with images in [-1, 1] → ``uint8 [N, 3, H, W]`` (:func:`histlib.data.dataset.to_uint8`)."""
    return to_uint8(G(z, c))


class GanMetricsHook:
    """FID / precision / recall / density / coverage of ``G_ema`` every ``every_kimg`` kimg.

    Args:
        fid_extractor: features for FID (e.g. ``get_extractor('inception')``).
        real_fid: real features of the fixed subset for FID  # [N, D]
        real_labels: their labels  # [N]
        classes: class names (label order); the fixed fake labels cycle through them (balanced).
        prdc_extractor, real_prdc: extractor and real features for the k-NN metrics (default: the FID ones).
        num_fake: number of generated images per evaluation.
        every_kimg: evaluation period in thousands of images.
        seed: seed of the fixed latent codes.
        k, k_dc: neighbourhood sizes of precision/recall and density/coverage.
        per_class: also report ``<metric>/<class>`` (intra-class FID, per-class P/R/D/C).
        batch_size: generator batch size.
        generate: ``(G, z, c_onehot) -> uint8 images``; default ``default_generate``.
        device: device of the distance computations (None: auto).
    """

    def __init__(self, fid_extractor: FeatureExtractor, real_fid, real_labels, classes: list[str], *,
                 prdc_extractor: FeatureExtractor | None = None, real_prdc=None, num_fake: int = 5000,
                 every_kimg: float = 50, seed: int = 0, k: int = 3, k_dc: int = 5, per_class: bool = False,
                 batch_size: int = 32, generate: Callable | None = None, device=None):
        if every_kimg <= 0:
            raise ValueError(f"every_kimg={every_kimg}: expected a positive number")
        if num_fake <= max(k, k_dc):
            raise ValueError(f"num_fake={num_fake}: expected more than max(k, k_dc)={max(k, k_dc)} images")
        self.fid_extractor = fid_extractor
        self.prdc_extractor = prdc_extractor or fid_extractor
        self.real_fid = np.asarray(real_fid, dtype=np.float32)
        self.real_prdc = self.real_fid if real_prdc is None else np.asarray(real_prdc, dtype=np.float32)
        self.real_labels = np.asarray(real_labels, dtype=np.int64)
        self.classes = list(classes)
        self.num_fake = int(num_fake)
        self.every_nimg = int(round(every_kimg * 1000))
        self.seed = int(seed)
        self.k, self.k_dc = int(k), int(k_dc)
        self.per_class = per_class
        self.batch_size = int(batch_size)
        self.generate = generate or default_generate
        self.device = device
        self.next_nimg = 0
        self._z: torch.Tensor | None = None
        # Balanced fixed labels: 0, 1, ..., C-1, 0, 1, ...
        self.fake_labels = np.arange(self.num_fake, dtype=np.int64) % max(1, len(self.classes))

    @classmethod
    def from_dataset(cls, root: str | os.PathLike, *, fid_extractor: str | FeatureExtractor = "inception",
                     prdc_extractor: str | FeatureExtractor | None = "vgg16", split: str | None = None,
                     max_real: int | None = 10000, cache=None, device=None, resolution: int | None = None,
                     **kwargs: Any) -> GanMetricsHook:
        """Builds the hook from a prepared dataset: the real subset (``max_real`` images, seeded) is extracted
        once (through ``cache``, a ``FeatureCache``, when given), resized to ``resolution`` (the generator's: as
        the generate stage compares them; None keeps the stored size)."""
        from .cache import extract_features

        fid_x = get_extractor(fid_extractor, device=device) if isinstance(fid_extractor, str) else fid_extractor
        prdc_x = fid_x if prdc_extractor is None else (
            get_extractor(prdc_extractor, device=device) if isinstance(prdc_extractor, str) else prdc_extractor)
        seed = int(kwargs.get("seed", 0))
        real_fid, labels, classes = extract_features(root, fid_x, split=split, max_items=max_real, seed=seed,
                                                     cache=cache, resolution=resolution)
        real_prdc = None
        if prdc_x is not fid_x:
            real_prdc, labels2, _ = extract_features(root, prdc_x, split=split, max_items=max_real, seed=seed,
                                                     cache=cache, resolution=resolution)
            assert np.array_equal(labels, labels2)
        return cls(fid_x, real_fid, labels, classes, prdc_extractor=prdc_x, real_prdc=real_prdc, device=device,
                   **kwargs)

    def due(self, cur_nimg: int) -> bool:
        """True when an evaluation is due at ``cur_nimg`` (the first call always evaluates)."""
        return cur_nimg >= self.next_nimg

    @torch.no_grad()
    def fake_features(self, G: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
        """Generates the fixed set with ``G`` and returns ``(fid features, prdc features)``."""
        dev = next(G.parameters()).device
        z_dim = int(G.z_dim)
        c_dim = int(getattr(G, "c_dim", len(self.classes)))
        if self._z is None:
            gen = torch.Generator().manual_seed(self.seed)
            self._z = torch.randn(self.num_fake, z_dim, generator=gen)  # fixed for the whole training
        labels = torch.from_numpy(self.fake_labels)
        was_training = G.training
        G.eval()
        fid_out, prdc_out = [], []
        # G's random synthesis noise comes from torch's global generator, which training draws from too: the
        # evaluation forks it (training goes on as if no metric had been computed) and seeds the fork (the same G
        # gives the same numbers at every evaluation, like the fixed latents)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(self.seed)
            try:
                for s in range(0, self.num_fake, self.batch_size):
                    z = self._z[s:s + self.batch_size].to(dev)
                    c = torch.zeros(z.shape[0], c_dim, device=dev)
                    if c_dim:
                        c[torch.arange(z.shape[0]), labels[s:s + self.batch_size].to(dev) % c_dim] = 1
                    img = self.generate(G, z, c)  # uint8 [n, 3, H, W]
                    fid_out.append(self.fid_extractor(img).numpy())
                    if self.prdc_extractor is not self.fid_extractor:
                        prdc_out.append(self.prdc_extractor(img).numpy())
            finally:
                G.train(was_training)
        fid_f = np.concatenate(fid_out)
        return fid_f, (np.concatenate(prdc_out) if prdc_out else fid_f)

    def evaluate(self, G: torch.nn.Module) -> dict[str, float]:
        """All metrics for ``G`` now (regardless of the schedule)."""
        fake_fid, fake_prdc = self.fake_features(G)
        kw = {"k": self.k, "k_dc": self.k_dc, "device": self.device}
        if not self.per_class:
            m = compute_metrics(self.real_fid, fake_fid, self.real_prdc, fake_prdc, **kw)
            return {name: float(m[name]) for name in ("fid", "precision", "recall", "density", "coverage")}
        df = per_class_metrics(self.real_fid, fake_fid, self.real_labels, self.fake_labels, self.classes,
                               self.real_prdc, fake_prdc, **kw)
        out = {}
        for cls_name, row in df.iterrows():
            for name in ("fid", "precision", "recall", "density", "coverage"):
                key = name if cls_name == "all" else f"{name}/{cls_name}"
                out[key] = float(row[name])
        return out

    def __call__(self, G_ema: torch.nn.Module, cur_nimg: int, force: bool = False) -> dict[str, float]:
        """Metrics when due (or ``force``), else ``{}``."""
        if not (force or self.due(cur_nimg)):
            return {}
        self.next_nimg = (cur_nimg // self.every_nimg + 1) * self.every_nimg
        return self.evaluate(G_ema)

    def state_dict(self) -> dict[str, Any]:
        return {"next_nimg": self.next_nimg}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_nimg = int(state["next_nimg"])


class EarlyStopping:
    """Stop when ``metric`` has not improved for ``patience`` consecutive evaluations.

    Args:
        metric: key in the metrics dict (e.g. ``'fid'``, ``'precision'``, ``'coverage'``).
        patience: evaluations without improvement tolerated before stopping.
        mode: ``'min'`` (lower is better, FID) or ``'max'`` (precision, recall, density, coverage).
        min_delta: an improvement must exceed this amount.

    ``update(metrics)`` ignores dicts without ``metric`` (ticks without an evaluation) and NaN values (counted as
    no improvement). ``best`` and ``best_step`` record the best value and the evaluation index it came from.
    """

    def __init__(self, metric: str = "fid", patience: int = 5, mode: str = "min", min_delta: float = 0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r}: expected 'min' or 'max'")
        if patience < 1:
            raise ValueError(f"patience={patience}: expected >= 1")
        self.metric, self.patience, self.mode, self.min_delta = metric, int(patience), mode, float(min_delta)
        self.best = math.inf if mode == "min" else -math.inf
        self.best_step = -1
        self.bad = 0
        self.step = 0
        self.stopped = False

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def update(self, metrics: dict[str, float]) -> bool:
        """Records one evaluation; True means stop."""
        if self.metric not in metrics:
            return self.stopped
        value = float(metrics[self.metric])
        if self.improved(value):
            self.best, self.best_step, self.bad = value, self.step, 0
        else:
            self.bad += 1
        self.step += 1
        self.stopped = self.bad >= self.patience
        return self.stopped

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad, "step": self.step,
                "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
