"""Fréchet distance between Gaussian fits of two feature sets (FID when the features are Inception pool features).

``FD = |μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^{1/2}`` (Heusel et al. 2017), with the unbiased covariance
(``np.cov``), as in the TTUR reference code, ``pytorch-fid`` and ``torch-fidelity``.

The trace of the matrix square root is computed from symmetric eigendecompositions: with ``S = Σ₁^{1/2}`` (from
``eigh``, negative round-off eigenvalues clipped to 0), ``Σ₁Σ₂`` is similar to the symmetric PSD matrix
``S Σ₂ S``, so ``tr (Σ₁Σ₂)^{1/2} = Σ √λᵢ(S Σ₂ S)``. Unlike ``scipy.linalg.sqrtm`` on the non-symmetric product,
this needs no ε offset and stays real and accurate when the covariances are singular (fewer samples than
dimensions) or nearly so.
"""

from __future__ import annotations

import numpy as np
import torch

from .distances import as_features


def feature_statistics(features, device: str | torch.device | None = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of ``features [N, D]``, accumulated in float64 in chunks.

    Args:
        features: numpy array or torch tensor ``[N, D]`` with N >= 2.
        device: where the float64 products run (``'cpu'``, ``'cuda'``, None/``'auto'``).

    Returns:
        ``(mu [D], sigma [D, D])`` as float64 numpy arrays.
    """
    from .distances import resolve_device

    x = as_features(features, "features")
    n, d = x.shape
    if n < 2:
        raise ValueError(f"features: the covariance needs at least 2 samples, got {n}")
    dev = resolve_device(device)
    step = max(1, (128 << 20) // (8 * d))
    total = torch.zeros(d, dtype=torch.float64, device=dev)
    for r0 in range(0, n, step):
        total += x[r0:r0 + step].to(dev, torch.float64).sum(0)
    mu = total / n
    # Two passes (centre first) so that large means do not cancel digits of the covariance.
    cov = torch.zeros(d, d, dtype=torch.float64, device=dev)
    for r0 in range(0, n, step):
        c = x[r0:r0 + step].to(dev, torch.float64) - mu
        cov.addmm_(c.T, c)
    cov /= n - 1
    return mu.cpu().numpy(), cov.cpu().numpy()


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr (Σ₁ Σ₂)^{1/2}`` for symmetric PSD ``Σ₁, Σ₂`` via ``Σ √λ(Σ₁^{1/2} Σ₂ Σ₁^{1/2})``."""
    s1 = np.asarray(sigma1, dtype=np.float64)
    s2 = np.asarray(sigma2, dtype=np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # Σ₁^{1/2}
    m = root @ s2 @ root
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(lam, 0, None)).sum())


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    Raises:
        ValueError: shapes that do not match ``mu [D]``, ``sigma [D, D]``.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance_from_stats: expected mu [D] and sigma [D, D] for both sets; got "
                         f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    # Round-off can leave a tiny negative value for identical sets; the distance itself is >= 0.
    return float(max(value, 0.0))


def frechet_distance(real, fake, device: str | torch.device | None = "cpu") -> float:
    """Fréchet distance between feature sets ``real [N, D]`` and ``fake [M, D]`` (numpy or torch).

    Example:
        >>> fid = frechet_distance(inception(real_images), inception(fake_images))
    """
    mu1, s1 = feature_statistics(real, device)
    mu2, s2 = feature_statistics(fake, device)
    if mu1.shape != mu2.shape:
        raise ValueError(f"real and fake feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    return frechet_distance_from_stats(mu1, s1, mu2, s2)
