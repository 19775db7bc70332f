"""The training hook (fixed real subset, fixed latents, schedule) and the early-stopping rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from histlib.metrics import EarlyStopping, GanMetricsHook, get_extractor


class ToyG(torch.nn.Module):
    """A stand-in generator with the StyleGAN interface: ``G(z, c)`` → images in [-1, 1]."""

    z_dim, c_dim, res = 8, 2, 16

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.fc = torch.nn.Linear(self.z_dim + self.c_dim, 3 * self.res * self.res)
        torch.nn.init.normal_(self.fc.weight, std=scale)

    def forward(self, z, c):
        return torch.tanh(self.fc(torch.cat([z, c], 1))).view(-1, 3, self.res, self.res)


@pytest.fixture
def hook_parts():
    torch.manual_seed(0)
    ex = get_extractor("random-test", device="cpu")
    real_images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    real = ex(real_images).numpy()
    labels = np.arange(40) % 2
    return ex, real, labels


def test_hook_schedule_fixed_latents_and_values(hook_parts):
    ex, real, labels = hook_parts
    hook = GanMetricsHook(ex, real, labels, ["a", "b"], num_fake=30, every_kimg=1, k=3, k_dc=5, batch_size=7)
    G = ToyG()
    first = hook(G, 0)
    assert set(first) == {"fid", "precision", "recall", "density", "coverage"}
    assert all(math.isfinite(v) for v in first.values())
    assert hook(G, 500) == {}  # not due
    second = hook(G, 1000)
    assert second == first  # same generator, same fixed latents and labels → same numbers
    assert hook(G, 1999) == {}
    assert hook(G, 1999, force=True) == first
    assert G.training  # the hook restores the generator's mode
    other = hook(ToyG(scale=3.0), 2000)
    assert other["fid"] != first["fid"]


class NoisyG(ToyG):
    """Adds random synthesis noise from torch's global generator, as StyleGAN2's layers do."""

    def forward(self, z, c):
        return (super().forward(z, c) + 0.5 * torch.randn(z.shape[0], 3, self.res, self.res)).clamp(-1, 1)


def test_hook_leaves_training_random_stream_alone_and_repeats_its_noise(hook_parts):
    """An evaluation must not move the global generator training draws its noise from (training would go another
    way when metrics are on), and the same G gives the same numbers at every evaluation."""
    ex, real, labels = hook_parts
    hook = GanMetricsHook(ex, real, labels, ["a", "b"], num_fake=30, every_kimg=1, k=3, k_dc=5, batch_size=7)
    G = NoisyG()
    torch.manual_seed(123)
    expected = torch.randn(5)
    torch.manual_seed(123)
    first = hook(G, 0)
    assert torch.equal(torch.randn(5), expected)
    assert hook(G, 1000) == first


def test_hook_per_class_keys(hook_parts):
    ex, real, labels = hook_parts
    hook = GanMetricsHook(ex, real, labels, ["a", "b"], num_fake=24, every_kimg=1, k=2, k_dc=3, per_class=True)
    out = hook(ToyG(), 0)
    assert {"fid", "fid/a", "fid/b", "precision/a", "coverage/b"} <= set(out)


def test_early_stopping():
    stop = EarlyStopping("fid", patience=2, mode="min")
    seq = [{"fid": 10.0}, {}, {"fid": 8.0}, {"fid": 8.5}, {"fid": 7.9}, {"fid": 9.0}, {"fid": 8.0}]
    decisions = [stop.update(m) for m in seq]
    assert decisions == [False, False, False, False, False, False, True]
    assert stop.best == 7.9 and stop.best_step == 3
    up = EarlyStopping("coverage", patience=1, mode="max", min_delta=0.01)
    assert up.update({"coverage": 0.5}) is False
    assert up.update({"coverage": 0.505}) is True  # below min_delta: not an improvement
    nan = EarlyStopping("fid", patience=1)
    assert nan.update({"fid": float("nan")}) is True
    restored = EarlyStopping("fid", patience=2)
    restored.load_state_dict(stop.state_dict())
    assert restored.best == 7.9 and restored.stopped
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping("fid", mode="lowest")
