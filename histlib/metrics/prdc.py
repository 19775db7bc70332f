"""Improved precision & recall (Kynkäänniemi et al. 2019) and density & coverage (Naeem et al. 2020).

Definitions (each sample's k-NN ball has the radius of its k-th nearest neighbour in its own set, itself
excluded; "inside" is a strict ``<``, as in the reference package ``prdc``):

- precision: fraction of fake samples inside at least one real ball;
- recall: fraction of real samples inside at least one fake ball;
- density: ``1/(k·N_fake)`` × number of (real ball, fake sample) pairs with the fake inside the ball;
- coverage: fraction of real balls that hold at least one fake sample.

``torch-fidelity``'s precision/recall (``calculate_precision_recall_*``) counts a sample on the boundary as inside
(``<=``); the two agree except for exact ties, which continuous features almost never produce.

All distances are computed blockwise by ``histlib.metrics.distances`` (exact results, bounded memory, CPU or GPU).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from . import distances as _d


@dataclass
class PRDCPerSample:
    """Per-sample results behind the four numbers (for diagnostics and agreement checks).

    Attributes:
        k_pr: k of precision/recall; k_dc: k of density/coverage.
        precision_mask: bool ``[N_fake]`` fake inside some real ``k_pr`` ball.
        recall_mask: bool ``[N_real]`` real inside some fake ``k_pr`` ball.
        real_ball_counts: int ``[N_real]`` fakes inside each real ``k_dc`` ball (density numerator, coverage > 0).
        borderline_pairs: comparisons decided by the exact float64 fallback.
    """

    k_pr: int
    k_dc: int
    precision_mask: np.ndarray
    recall_mask: np.ndarray
    real_ball_counts: np.ndarray
    borderline_pairs: int

    def metrics(self) -> dict[str, float]:
        n_fake = self.precision_mask.shape[0]
        return {
            "precision": float(self.precision_mask.mean()),
            "recall": float(self.recall_mask.mean()),
            "density": float(self.real_ball_counts.sum()) / (self.k_dc * n_fake),
            "coverage": float((self.real_ball_counts > 0).mean()),
        }


def _inputs(real, fake, device, memory_budget) -> tuple[torch.Tensor, torch.Tensor, torch.device, int]:
    """The checked ``[N, D]`` feature tensors of both sets, the device and the memory budget in bytes."""
    r = _d.as_features(real, "real")
    f = _d.as_features(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"real and fake feature dimensions differ: {tuple(r.shape)} vs {tuple(f.shape)}")
    dev = _d.resolve_device(device)
    budget = int(memory_budget) if memory_budget else _d.default_budget(dev)
    return r, f, dev, budget


def prdc_per_sample(real, fake, k: int = 3, k_dc: int | None = None, *, device: str | torch.device | None = None,
                    memory_budget: int | None = None, gemm: str = "auto") -> PRDCPerSample:
    """Computes the per-sample quantities of precision, recall, density and coverage in one pass.

    Args:
        real: real features ``[N_real, D]`` (numpy or torch).
        fake: generated features ``[N_fake, D]``.
        k: neighbourhood size of precision/recall.
        k_dc: neighbourhood size of density/coverage (default: ``k``).
        device: ``'cpu'``, ``'cuda'``, or None/``'auto'`` (CUDA when available).
        memory_budget: bytes the distance blocks may use (default: 1 GiB on CPU, a quarter of free GPU memory).
        gemm: how the distance blocks are multiplied: ``'float32'``, ``'int8'`` (two int8 slices on CPU, exact int32
            accumulation) or ``'auto'`` (int8 on CPUs with AMX, float32 elsewhere). The results are the same
            either way: only the number of borderline pairs recomputed in float64 changes.
    """
    k_dc = k if k_dc is None else k_dc
    for name, v in (("k", k), ("k_dc", k_dc)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name}={v}: expected a positive integer")
    r, f, dev, budget = _inputs(real, fake, device, memory_budget)
    rs, fs = _d.prepare([r, f], dev, gemm)
    real_radii = _d.Radii(rs, {k, k_dc}, budget)
    fake_radii = _d.Radii(fs, {k}, budget)
    _warn_zero_radii(real_radii, "real", min(k, k_dc))
    _warn_zero_radii(fake_radii, "fake", k)
    cs = _d.cross_stats(rs, fs, real_radii, fake_radii, budget, real_ks={k, k_dc}, fake_ks={k}, count_ks={k_dc})
    return PRDCPerSample(
        k_pr=int(k), k_dc=int(k_dc),
        precision_mask=cs.fake_in_real_ball[k].numpy(),
        recall_mask=cs.real_in_fake_ball[k].numpy(),
        real_ball_counts=cs.real_ball_count[k_dc].numpy(),
        borderline_pairs=cs.borderline_pairs,
    )


def _warn_zero_radii(radii, which: str, k: int, share: float = 0.1) -> None:
    """Warns when many k-NN balls have radius 0 (k+1 identical features, e.g. constant images): nothing is strictly
    inside such a ball, so the four numbers read 0 although the sets may be identical."""
    zero = int((radii.upper(k) <= 0).sum())
    if zero >= share * radii.x.n:
        warnings.warn(f"{zero} of {radii.x.n} {which} features have k-NN radius 0 (k={k}: at least {k + 1} identical "
                      "features, e.g. constant or duplicated images); nothing is strictly inside such a ball, so "
                      "precision/recall/density/coverage are near 0 whatever the other set holds; check the images",
                      stacklevel=3)


def compute_prdc(real, fake, k: int = 3, k_dc: int | None = None, *, device=None, memory_budget=None,
                 gemm: str = "auto") -> dict[str, float]:
    """Precision, recall (neighbourhood ``k``), density and coverage (``k_dc``, default ``k``) in one pass.

    Returns:
        ``{"precision", "recall", "density", "coverage"}`` as floats; equal to ``prdc.compute_prdc`` for the same k.
    """
    return prdc_per_sample(real, fake, k, k_dc, device=device, memory_budget=memory_budget, gemm=gemm).metrics()


def precision_recall(real, fake, k: int = 3, *, device=None, memory_budget=None) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls of size ``k``.

    Args:
        real: real features ``[N_real, D]`` (numpy or torch). fake: generated features ``[N_fake, D]``.
        k: neighbourhood size (the paper's default 3). device, memory_budget: see ``prdc_per_sample``.

    Returns:
        ``{"precision": float, "recall": float}``.
    """
    m = compute_prdc(real, fake, k, k, device=device, memory_budget=memory_budget)
    return {"precision": m["precision"], "recall": m["recall"]}


def density_coverage(real, fake, k: int = 5, *, device=None, memory_budget=None) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020) with real k-NN balls of size ``k`` (the paper's default 5).

    Returns:
        ``{"density": float, "coverage": float}``.
    """
    r, f, dev, budget = _inputs(real, fake, device, memory_budget)
    rs, fs = _d.prepare([r, f], dev)
    real_radii = _d.Radii(rs, {k}, budget)
    cs = _d.cross_stats(rs, fs, real_radii, None, budget, real_ks={k})
    counts = cs.real_ball_count[k]
    return {"density": float(counts.sum()) / (k * f.shape[0]), "coverage": float((counts > 0).double().mean())}
