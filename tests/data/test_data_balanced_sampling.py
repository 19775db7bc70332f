"""histlib.data.balanced_sampling: class-balanced draws."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from histlib.data.balanced_sampling import ClassBalancedSampler, infinite_balanced_indices


def test_balanced_frequencies_on_imbalanced_labels():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 9 + [3] * 1)
    n = 40_000
    idx = np.array(list(ClassBalancedSampler(labels, num_samples=n, seed=3)))
    assert len(idx) == n and idx.min() >= 0 and idx.max() < len(labels)
    freq = np.bincount(labels[idx], minlength=4) / n
    # binomial sd at p=0.25, n=40k is 0.0022; 0.015 is ~7 sd
    assert np.allclose(freq, 0.25, atol=0.015), freq
    # within a class, items are uniform: every one of the 9 items of class 2 is drawn about n/4/9 times
    within = np.bincount(idx[labels[idx] == 2] - 990, minlength=9)
    assert within.min() > 0.7 * n / 4 / 9 and within.max() < 1.3 * n / 4 / 9


def test_deterministic_per_seed_and_epoch():
    labels = [0, 0, 0, 1, 2, 2]
    a = ClassBalancedSampler(labels, num_samples=50, seed=1)
    b = ClassBalancedSampler(labels, num_samples=50, seed=1)
    assert list(a) == list(b) and len(a) == 50
    e0 = list(a)
    a.set_epoch(1)
    assert list(a) != e0
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(ClassBalancedSampler(labels, num_samples=50, seed=2)) != e0
    assert len(ClassBalancedSampler(labels)) == len(labels)


def test_with_dataloader():
    torch = pytest.importorskip("torch")
    labels = np.array([0] * 30 + [1] * 2)
    ds = torch.utils.data.TensorDataset(torch.from_numpy(labels))
    loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=ClassBalancedSampler(labels, 64, seed=0))
    seen = torch.cat([b[0] for b in loader])
    assert len(seen) == 64 and 16 < int(seen.sum()) < 48


def test_infinite_stream():
    labels = np.array([0] * 99 + [1])
    head = list(itertools.islice(infinite_balanced_indices(labels, seed=5), 10_000))
    assert head == list(itertools.islice(infinite_balanced_indices(labels, seed=5), 10_000))
    share = np.mean(labels[head] == 1)
    assert 0.47 < share < 0.53


def test_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        ClassBalancedSampler([])
    with pytest.raises(ValueError, match="num_samples"):
        ClassBalancedSampler([0, 1], num_samples=0)
