"""Fréchet distance against torch-fidelity's and the TTUR/scipy formulas (test-only oracles)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from histlib.metrics import feature_statistics, frechet_distance, frechet_distance_from_stats


def scipy_fid(mu1, s1, mu2, s2, eps=1e-6):
    """The TTUR / pytorch-fid formula: sqrtm of the product, with the eps-offset fallback."""
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = covmean.real
    diff = mu1 - mu2
    return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def features(rng, n, d, shift=0.0, scale=1.0, rank=None):
    mix = rng.standard_normal((rank or d, d)) / np.sqrt(d)
    return (rng.standard_normal((n, rank or d)) @ mix * scale + shift).astype(np.float32)


@pytest.mark.parametrize("n,d", [(200, 8), (500, 64), (1000, 256)])
def test_fid_matches_torch_fidelity_and_scipy(n, d):
    tf = pytest.importorskip("torch_fidelity.metric_fid")
    rng = np.random.default_rng(d)
    real = features(rng, n, d)
    fake = features(rng, n + 37, d, shift=0.1, scale=1.2)
    mine = frechet_distance(real, fake)
    s1 = tf.fid_features_to_statistics(torch.from_numpy(real))
    s2 = tf.fid_features_to_statistics(torch.from_numpy(fake))
    theirs = tf.fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"]
    assert mine == pytest.approx(theirs, rel=1e-6)
    assert mine == pytest.approx(scipy_fid(s1["mu"], s1["sigma"], s2["mu"], s2["sigma"]), rel=1e-6)


def test_statistics_are_float64_mean_and_unbiased_covariance():
    rng = np.random.default_rng(0)
    x = features(rng, 300, 16, shift=1000.0)  # a large mean must not cost digits of the covariance
    mu, sigma = feature_statistics(torch.from_numpy(x))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mu, x64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-12)


def test_near_singular_covariances():
    # Fewer samples than dimensions / low-rank features: covariances are singular; the value must stay real,
    # non-negative and agree with torch-fidelity's eigenvalue formula.
    tf = pytest.importorskip("torch_fidelity.metric_fid")
    rng = np.random.default_rng(1)
    real = features(rng, 60, 128, rank=20)
    fake = features(rng, 70, 128, rank=20, shift=0.05)
    mine = frechet_distance(real, fake)
    s1 = tf.fid_features_to_statistics(torch.from_numpy(real))
    s2 = tf.fid_features_to_statistics(torch.from_numpy(fake))
    theirs = tf.fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"]
    assert np.isfinite(mine) and mine > 0
    assert mine == pytest.approx(theirs, rel=1e-6)


def test_identical_sets_and_symmetry():
    rng = np.random.default_rng(2)
    a = features(rng, 400, 32)
    b = features(rng, 300, 32, shift=0.3)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    # Closed form for diagonal Gaussians: |μ1-μ2|² + Σ (σ1 - σ2)².
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(5.0 + 1.0 + 0.0 + 4.0)


def test_bad_shapes():
    with pytest.raises(ValueError, match="mu"):
        frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
