"""Small data and networks shared by the GAN stage's tests: colour folders, a tiny training config, tiny G and D,
checkpoint comparison."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from histlib.gan.config import TrainConfig
from histlib.gan.networks import Discriminator, Generator

# Tiny networks: 16 px, 16 channels; an iteration takes a few tens of milliseconds on one core.
TINY = dict(G_kwargs=dict(z_dim=16, w_dim=16, mapping_layers=1, channel_base=128, channel_max=16),
            D_kwargs=dict(channel_base=128, channel_max=16, embed_dim=16))


def make_colour_folder(root, colours, n=10, size=16, seed=0):
    """``root/<class>/<i>.png``: noisy images around one RGB colour per class."""
    rng = np.random.default_rng(seed)
    for cls, col in colours.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = np.clip(np.array(col)[None, None] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / cls / f"{i:03d}.png")
    return root


def tiny_cfg(data_dir, **overrides):
    """Two iterations of batch 8 per tick; every lazy regulariser and ADA update runs within a few iterations.
    ``G_kwargs`` / ``D_kwargs`` given here add to the tiny networks' (``TINY``), they do not replace them."""
    base = dict(TINY, data_dir=str(data_dir), resolution=16, batch_size=8, kimg=0.032, tick_kimg=0.016,
                snapshot_ticks=1, pl_interval=2, r1_interval=2, ada_interval=1, ada_kimg=0.2, grid_columns=3,
                progress=False, ema_kimg=0.05)
    for net in ("G_kwargs", "D_kwargs"):
        if overrides.get(net) is not None:
            overrides = {**overrides, net: {**TINY[net], **overrides[net]}}
    return TrainConfig.from_profile("demo", **{**base, **overrides})


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a, b, path="ckpt"):
    """Recursively equal (tensors bit-identical)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


TRAINING_STATE = ("G", "D", "G_ema", "opt_G", "opt_D", "pl_reg", "augment_pipe", "ada", "cur_nimg", "tick", "step",
                  "data", "latent_rng", "rng", "next_metrics_nimg")


TINY_G = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16)


TINY_D = dict(channel_base=128, channel_max=16, embed_dim=8)


def tiny_g(num_classes=3, res=16, **kw):
    return Generator(num_classes=num_classes, img_resolution=res, **{**TINY_G, **kw})


def tiny_d(num_classes=3, res=16, **kw):
    return Discriminator(num_classes=num_classes, img_resolution=res, **{**TINY_D, **kw})


def three_colour_folder(root: Path) -> Path:
    """``root/<class>/<i>.png``: six noisy 16 px images around each of three colours."""
    rng = np.random.default_rng(0)
    for cls, col in {"blue": (40, 60, 200), "red": (210, 50, 40), "grey": (120, 120, 120)}.items():
        (root / cls).mkdir(parents=True)
        for i in range(6):
            a = np.clip(np.array(col)[None, None] + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / cls / f"{i}.png")
    return root
