"""Realism score of individual generated samples (Kynkäänniemi et al. 2019, §5).

``realism_score(real, fake, k=3)`` rates each fake sample by how deep it lies inside the real manifold estimated
from k-NN balls: ``R(f) = max_r radius_k(r) / |f - r|`` over the real samples ``r``, where ``radius_k(r)`` is the
distance from ``r`` to its k-th nearest real neighbour (itself excluded). ``R ≥ 1`` exactly when ``f`` lies in some
real ball (what precision counts); larger is deeper inside. As in the authors' release (``ManifoldEstimator`` with
``clamp_to_percentile=50``), the real balls whose radius is above the median are left out of the maximum: an outlier
real sample has a huge ball that would rate everything around it as realistic. The release compares squared
distances (``radius² / d²``); that is the square of this score, so both rank samples identically.

The radii are the exact ones of ``histlib.metrics.prdc`` (``distances.Radii``: float32 blocks with rigorous bounds,
float64 where a comparison is close), so a sample with ``R > 1`` here is inside a ball there too. The fake-to-real
distances are computed in float64 chunks from the differences themselves (bounded memory; a copy of a real sample
is at distance 0 and scores ``inf``).
"""

from __future__ import annotations

import numpy as np
import torch

from . import distances as _d


def real_radii(real, k: int = 3, *, device=None, memory_budget: int | None = None) -> np.ndarray:
    """Exact k-NN radii of the real samples (distance to the k-th nearest other real sample)  # [N_real] float64"""
    r = _d.as_features(real, "real")
    if int(k) != k or k < 1:
        raise ValueError(f"k={k}: expected a positive integer")
    if r.shape[0] <= k:
        raise ValueError(f"realism score: k={k} needs more than {k} real samples, got {r.shape[0]}")
    dev = _d.resolve_device(device)
    budget = int(memory_budget) if memory_budget else _d.default_budget(dev)
    (rs,) = _d.prepare([r], dev, "float32")
    radii_sq = _d.Radii(rs, {int(k)}, budget).exact(int(k))  # [N_real] float64 squared
    return radii_sq.clamp_min(0).sqrt().numpy()


def realism_score(real, fake, k: int = 3, *, keep_quantile: float = 0.5, device=None,
                  memory_budget: int | None = None, chunk_bytes: int = 128 << 20) -> np.ndarray:
    """Realism score of every fake sample against the real samples' k-NN balls.

    Args:
        real: real features ``[N_real, D]`` (numpy or torch); fake: generated features ``[N_fake, D]``.
        k: neighbourhood size of the real balls (3, as precision/recall).
        keep_quantile: only real balls with a radius at or below this quantile of the radii count (0.5: the
            authors' median; 1.0: every ball).
        device, memory_budget: see ``histlib.metrics.prdc.prdc_per_sample`` (the radii).
        chunk_bytes: memory of one block of fake-to-real distances.

    Returns:
        float64 ``[N_fake]``; ``inf`` for a fake sample identical to a kept real sample.
    """
    if not 0.0 < keep_quantile <= 1.0:
        raise ValueError(f"keep_quantile={keep_quantile}: expected a number in (0, 1]")
    r = _d.as_features(real, "real")
    f = _d.as_features(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"real and fake feature dimensions differ: {tuple(r.shape)} vs {tuple(f.shape)}")
    radius = torch.from_numpy(real_radii(r, k, device=device, memory_budget=memory_budget))  # [N_real]
    keep = radius <= torch.quantile(radius, keep_quantile)
    ref = r[keep].to(torch.float64)  # [M, D]
    rad = radius[keep]  # [M]
    rows = max(1, chunk_bytes // (8 * max(1, ref.shape[0])))
    out = np.empty(f.shape[0], dtype=np.float64)
    with torch.no_grad():
        for s in range(0, f.shape[0], rows):
            # direct differences, not the |x|² + |y|² − 2x·y form, so that a copy is at distance exactly 0
            d = torch.cdist(f[s:s + rows].to(torch.float64), ref, compute_mode="donot_use_mm_for_euclid_dist")  # [n, M]
            out[s:s + rows] = (rad.unsqueeze(0) / d).amax(1).numpy()  # d = 0 gives inf: a copy of a real sample
    return out
