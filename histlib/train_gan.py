"""Training and fine-tuning of the class-conditional StyleGAN2 with ADA and D2D-CE (notebooks 02 and 03).

``train_gan(cfg, run_dir)`` runs on CPU or GPU (``cfg.device``), with one process or several under ``torchrun``,
and writes the run directory of DESIGN.md §4: ``config.json``, ``env.json``, ``stats.jsonl`` (one line per tick),
``metrics.json``, ``images/`` (per-class grids of ``G_ema`` at each snapshot, fixed latents) and ``checkpoints/``
(plain ``state_dict``s written atomically: ``latest.pt`` holds everything needed to resume, ``snapshot-*.pt`` and
``best.pt`` the networks).

One training iteration (StyleGAN2, Karras et al. 2020, with lazy regularisation) runs four phases on a global
batch of ``cfg.batch_size`` real images:

1. ``Gmain``: non-saturating logistic loss on augmented fakes + ``cond_lambda`` × D2D-CE on the fakes' embeddings.
2. ``Greg`` (every ``pl_interval`` iterations): path-length penalty on a shrunk batch, × ``pl_interval``.
3. ``Dmain``: logistic loss on augmented fakes and reals + ``cond_lambda`` × D2D-CE on the reals' embeddings; the
   signs of the real logits feed the ADA controller.
4. ``Dreg`` (every ``r1_interval`` iterations): ``γ/2`` × R1, × ``r1_interval``; R1 is the squared gradient of
   ``D(augment(x))`` with respect to the un-augmented real ``x`` (StyleGAN2-ADA's definition).

Then ``G_ema`` follows ``G`` (half-life ``ema_kimg`` thousand images, ramped up over the first images) and ADA
adjusts ``p``. As in the lazy-regularisation scheme, Adam's learning rate and betas of a regularised network are
scaled by ``k / (k + 1)`` so that the regulariser's extra steps do not change the effective step size.

Exact resume (contract): the checkpoint holds G, D, G_ema, both optimisers, the augmentation pipe and ADA
controller, the path-length mean, the image count, the data position ``(epoch, batch)`` (the data order is a pure
function of ``(seed, epoch)``), the latent stream and the torch/CUDA/numpy/python RNG states of every rank.
Continuing from ``latest.pt`` is bit-identical on CPU to a run that was never interrupted.

Reproducibility across process counts: latents, fake labels, style-mixing cut-offs and path-length directions are
drawn for the *global* batch from one stream shared by all ranks, and every rank takes its slice; gradients are
averaged over ranks and D2D-CE gathers the embeddings of all ranks, so a run on W processes follows the
single-process run up to floating-point summation order (apart from synthesis noise and augmentation draws, which
use each rank's own generator).

Data parallelism uses ``torch.distributed`` directly (one all-reduce of the flattened gradients per optimiser step)
rather than ``DistributedDataParallel``: its gradient hooks are not meant for the ``autograd.grad(create_graph=True)``
double backward of R1 and path-length regularisation, and its unused-parameter bookkeeping clashes with frozen layers
and with training G and D in separate phases.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histlib import losses, runs

CHECKPOINT_FORMAT = "histlib.train_gan/1"
PROFILES = ("demo", "reduced", "paper")
AUGMENT_MODES = ("ada", "none", "fixed")
KERNEL_IMPLS = ("auto", "ref", "cuda", "compiled")
CLASS_INITS = ("match", "neutral", "random")

# Fields that may differ between a run and the checkpoint it resumes from: they change how long or how verbosely a
# run goes on, not what a training step computes.
RESUME_MUTABLE_FIELDS = ("kimg", "num_workers", "snapshot_ticks", "metrics_every_kimg", "early_stop_patience",
                         "early_stop_metric", "keep_snapshots", "grid_columns", "progress")


# ----------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """Settings of one GAN training or fine-tuning run (written to ``config.json``).

    Build it with :meth:`from_profile` (``'demo'``, ``'reduced'``, ``'paper'``) and override fields; every field is a
    plain type. Fine-tuning is a config change: ``resume_from`` (a checkpoint or a base run directory), optionally
    ``freeze_d`` / ``freeze_g``.
    """

    # data
    data_dir: str = "data/prepared/sample_base"
    split: str | None = "train"
    resolution: int = 32
    num_classes: int | None = None  # None: the number of classes in the data
    balanced_sampling: bool = True
    num_workers: int = 0
    # schedule
    profile: str = "demo"
    batch_size: int = 16
    kimg: float = 20.0
    tick_kimg: float = 1.0
    snapshot_ticks: int = 5
    keep_snapshots: bool = True
    seed: int = 0
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda' | 'cuda:N'
    # optimisation
    lr_g: float = 0.0025
    lr_d: float = 0.0025
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])
    adam_eps: float = 1e-8
    # regularisation
    r1_gamma: float = 0.0128
    r1_interval: int = 16
    pl_weight: float = 2.0
    pl_interval: int = 4
    pl_decay: float = 0.01
    pl_batch_shrink: int = 2
    style_mixing_prob: float = 0.9
    ema_kimg: float = 5.0
    ema_rampup: float | None = 0.05
    # conditioning (D2D-CE, ReACGAN)
    cond_lambda: float = 0.25
    d2d_tau: float = 0.25
    d2d_margin_pos: float = 0.98
    d2d_margin_neg: float | None = None  # None: 1 - d2d_margin_pos, as the authors' released loss
    # augmentation
    augment: str = "ada"  # 'ada' | 'none' | 'fixed'
    augment_preset: str = "bgc"
    augment_p: float = 0.0  # initial p for 'ada', the constant p for 'fixed'
    ada_target: float = 0.6
    ada_interval: int = 4
    ada_kimg: float = 100.0
    # fine-tuning
    resume_from: str | None = None
    freeze_d: int = 0
    freeze_g: int = 0
    class_init: str = "match"  # new classes when fine-tuning: 'match' (from the most similar base class) | 'random'
    realign_classes: bool = True  # fine-tuning with new classes: relabel G's embeddings when D sees classes swapped
    realign_min_gain: float = 0.2
    realign_min_real_recall: float = 0.75  # D must tell the classes it would move apart on real images this well
    class_check_per_class: int = 32  # images per class of D's per-tick view of G's classes
    # periodic metrics (hooks) and early stopping
    metrics_every_kimg: float | None = None
    early_stop_patience: int | None = None
    early_stop_metric: str = "fid"
    # networks and kernels
    G_kwargs: dict[str, Any] = field(default_factory=dict)
    D_kwargs: dict[str, Any] = field(default_factory=dict)
    kernel_impl: str = "auto"  # 'auto' | 'ref' | 'cuda' | 'compiled'
    mixed_precision: bool = True  # fp16 in the top resolutions on CUDA (the networks' num_fp16_res); fp32 on CPU
    allow_tf32: bool = False
    noise_mode: str = "random"  # synthesis noise while training: 'random' (StyleGAN2) or 'const'
    # outputs
    grid_columns: int = 8
    progress: bool = True

    @classmethod
    def from_profile(cls, profile: str = "demo", **overrides: Any) -> TrainConfig:
        """The settings of a profile, with ``overrides`` applied (unknown names raise one clear error).

        * ``demo``: CPU, 32 px, tiny networks, a few minutes on two cores.
        * ``reduced``: 64 px, one GPU, minutes.
        * ``paper``: 256 px, StyleGAN2's 256 px configuration (batch 64, γ = 1, EMA 20 kimg, 8 mapping layers).

        An override of ``None`` means "not set here": the profile's value, else the field's own default (fields
        whose default is None keep None), so a notebook can pass all of its parameters and leave the unset ones
        (``KIMG = None``) to the profile.
        """
        if profile not in PROFILES:
            raise ValueError(f"TrainConfig.from_profile: profile={profile!r}; expected one of {PROFILES}")
        base = dict(_PROFILE_SETTINGS[profile], profile=profile)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}; expected some of {sorted(names)}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        overrides = {k: v for k, v in overrides.items()
                     if v is not None or (k not in base and fields[k].default is None)}
        return cls(**{**base, **overrides})

    def validate(self) -> TrainConfig:
        """Checks the values; raises ``ValueError`` naming the field and what was expected."""
        from histlib.config import check_types

        check_types(self)

        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: expected {expected}")

        need(self.profile in PROFILES, "profile", f"one of {PROFILES}")
        need(self.augment in AUGMENT_MODES, "augment", f"one of {AUGMENT_MODES}")
        need(self.kernel_impl in KERNEL_IMPLS, "kernel_impl", f"one of {KERNEL_IMPLS}")
        need(self.noise_mode in ("random", "const"), "noise_mode", "'random' or 'const'")
        need(self.class_init in CLASS_INITS, "class_init", f"one of {CLASS_INITS}")
        need(0 < self.realign_min_gain <= 1, "realign_min_gain", "a fraction in (0, 1]")
        need(0 <= self.realign_min_real_recall <= 1, "realign_min_real_recall", "a fraction in [0, 1]")
        need(self.class_check_per_class >= 0, "class_check_per_class", "an integer >= 0 (0: no check)")
        need(self.device == "auto" or self.device == "cpu" or str(self.device).startswith("cuda"), "device",
             "'auto', 'cpu', 'cuda' or 'cuda:N'")
        need(isinstance(self.resolution, int) and self.resolution >= 4 and self.resolution & (self.resolution - 1) == 0,
             "resolution", "a power of two >= 4")
        need(self.batch_size >= 1, "batch_size", "a positive integer")
        need(self.kimg > 0, "kimg", "a positive number")
        need(self.tick_kimg > 0, "tick_kimg", "a positive number")
        need(self.snapshot_ticks >= 1, "snapshot_ticks", "a positive integer")
        need(self.r1_interval >= 1, "r1_interval", "a positive integer")
        need(self.pl_interval >= 1, "pl_interval", "a positive integer")
        need(self.pl_batch_shrink >= 1, "pl_batch_shrink", "a positive integer")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)")
        need(self.r1_gamma >= 0, "r1_gamma", "a number >= 0")
        need(self.pl_weight >= 0, "pl_weight", "a number >= 0")
        need(0 <= self.style_mixing_prob <= 1, "style_mixing_prob", "a probability")
        need(self.cond_lambda >= 0, "cond_lambda", "a number >= 0")
        need(self.d2d_tau > 0, "d2d_tau", "a positive number")
        need(0 <= self.augment_p <= 1, "augment_p", "a probability")
        need(self.ada_kimg > 0, "ada_kimg", "a positive number")
        need(self.ema_kimg >= 0, "ema_kimg", "a number >= 0")
        need(self.freeze_d >= 0, "freeze_d", "an integer >= 0")
        need(self.freeze_g >= 0, "freeze_g", "an integer >= 0")
        need(self.metrics_every_kimg is None or self.metrics_every_kimg > 0, "metrics_every_kimg",
             "None or a positive number")
        need(self.num_workers >= 0, "num_workers", "an integer >= 0")
        need(self.grid_columns >= 1, "grid_columns", "a positive integer")
        need(isinstance(self.G_kwargs, dict), "G_kwargs", "a dict of Generator arguments")
        need(isinstance(self.D_kwargs, dict), "D_kwargs", "a dict of Discriminator arguments")
        return self


# Per-profile settings. r1_gamma follows StyleGAN2-ADA's heuristic 0.0002 · res² / batch for the small profiles and
# StyleGAN2's 256 px configuration (γ = 1) for the paper. D2D-CE weights follow the authors' released StyleGAN2 + D2D-CE
# configurations (PyTorch-StudioGAN) nearest in resolution: 32 px CIFAR (λ = 0.25, τ = 0.25, m_p = 0.98) for the
# demo and reduced profiles, 512 px AFHQ with ADA (λ = 0.5, τ = 0.5, m_p = 0.95; the only release at >= 256 px) for
# the paper profile; m_n = 1 - m_p in both, as in their loss.
_PROFILE_SETTINGS: dict[str, dict[str, Any]] = {
    "demo": dict(resolution=32, batch_size=16, kimg=10.0, tick_kimg=1.0, snapshot_ticks=4, device="cpu",
                 r1_gamma=0.0128, ema_kimg=2.0, ema_rampup=0.05, ada_kimg=20.0, mixed_precision=False,
                 style_mixing_prob=0.9, pl_weight=2.0, num_workers=0),
    "reduced": dict(resolution=64, batch_size=32, kimg=300.0, tick_kimg=10.0, snapshot_ticks=5, device="auto",
                    r1_gamma=0.0256, ema_kimg=10.0, ema_rampup=0.05, ada_kimg=100.0, mixed_precision=True,
                    num_workers=4),
    "paper": dict(resolution=256, batch_size=64, kimg=10000.0, tick_kimg=4.0, snapshot_ticks=50, device="auto",
                  r1_gamma=1.0, ema_kimg=20.0, ema_rampup=None, ada_kimg=500.0, mixed_precision=True,
                  metrics_every_kimg=200.0, early_stop_patience=5, num_workers=6, cond_lambda=0.5, d2d_tau=0.5,
                  d2d_margin_pos=0.95),
}


# ----------------------------------------------------------------------------------------------------------------
# Processes, devices, random states


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    owned: bool = False  # this module initialised the process group (and destroys it at the end)

    @property
    def active(self) -> bool:
        return self.world > 1


def _setup_distributed(device_type: str) -> _Dist:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        return _Dist(dist.get_rank(), dist.get_world_size(), True)
    return _Dist()


def resolve_device(device: str) -> torch.device:
    """``'auto'`` → CUDA when available, else CPU; ``'cuda'`` under torchrun → this process's ``LOCAL_RANK`` GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"TrainConfig.device={device!r}: no CUDA device is available on this machine")
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return torch.device(device)


def _rank_seed(seed: int, rank: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _rng_state(device: torch.device) -> dict[str, Any]:
    """The global random states of this process as plain objects (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
        "cuda": None,
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    npk = state["numpy"]
    np.random.set_state(("MT19937", npk["key"].numpy().astype(np.uint32), npk["pos"], npk["has_gauss"],
                         npk["cached_gaussian"]))
    random.setstate(_to_tuple(state["python"]))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------------------------------------------
# Data: a restorable stream of global batches


class _BatchStream:
    """Global batches of dataset indices, epoch by epoch; every rank loads its slice of each batch.

    The order of epoch ``e`` is a pure function of ``(seed, e)`` (class-balanced draws, or a permutation), so the
    position ``(epoch, pos)`` is all a checkpoint needs to continue the same sequence, whatever the worker count.
    """

    def __init__(self, dataset, batch_size: int, seed: int, balanced: bool, dist_info: _Dist, num_workers: int,
                 epoch: int = 0, pos: int = 0, pin_memory: bool = False):
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.balanced = balanced
        self.dist = dist_info
        self.num_workers = num_workers
        self.epoch, self.pos = epoch, pos
        self.pin_memory = pin_memory
        self._iter: Iterator | None = None

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        n = len(self.dataset)
        size = max(n, self.batch_size)
        if self.balanced:
            from histlib.data.sampling import ClassBalancedSampler

            sampler = ClassBalancedSampler(self.dataset.labels, num_samples=size, seed=self.seed)
            sampler.set_epoch(epoch)
            order = list(sampler)
        else:
            rng = np.random.default_rng([self.seed, epoch, 1])
            order = np.concatenate([rng.permutation(n) for _ in range(-(-size // n))])[:size].tolist()
        b = self.batch_size
        return [order[i:i + b] for i in range(0, len(order) - b + 1, b)]

    def _start_epoch(self) -> None:
        batches = self._epoch_batches(self.epoch)[self.pos:]
        local = self.batch_size // self.dist.world
        r = self.dist.rank
        batches = [bt[r * local:(r + 1) * local] for bt in batches]
        if not batches:
            self._iter = iter(())
            return
        # The loader draws its workers' base seed from `generator`; without one it would draw from the global RNG,
        # once per epoch start and once more on resume, and a resumed run would diverge from an uninterrupted one.
        gen = torch.Generator().manual_seed(_rank_seed(self.seed * 1_000_003 + self.epoch, 2))
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                                             pin_memory=self.pin_memory, persistent_workers=False, generator=gen)
        self._iter = iter(loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next local batch ``(images uint8 [n, 3, R, R], labels int64 [n])``."""
        while True:
            if self._iter is None:
                self._start_epoch()
            try:
                imgs, labels = next(self._iter)
            except StopIteration:
                self.epoch, self.pos, self._iter = self.epoch + 1, 0, None
                continue
            self.pos += 1
            return imgs, labels

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}


# ----------------------------------------------------------------------------------------------------------------
# Small training helpers


def _device_randn(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """Standard normal noise of a global shape, the same on every rank (a fresh generator seeded from the stream)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return torch.randn(shape, generator=gen, device=device)


class _Latents:
    """The shared stream of latents, fake labels, mixing cut-offs and seeds, drawn for the global batch."""

    def __init__(self, seed: int, z_dim: int, num_classes: int, class_probs: np.ndarray | None, dist_info: _Dist,
                 device: torch.device):
        self.gen = torch.Generator().manual_seed(int(seed))
        self.z_dim, self.num_classes = z_dim, num_classes
        self.class_probs = None if class_probs is None else torch.as_tensor(class_probs, dtype=torch.float64)
        self.dist, self.device = dist_info, device

    def _slice(self, x: torch.Tensor, n_global: int) -> torch.Tensor:
        local = n_global // self.dist.world
        return x[self.dist.rank * local:(self.dist.rank + 1) * local]

    def draw(self, n_global: int, keep_global: bool = False):
        """``(z [n, z_dim], c [n])`` for this rank's part of a global batch of ``n_global``.

        With ``keep_global`` the whole global batch ``(z [n_global, z_dim], c [n_global])`` is returned as well.
        """
        z = torch.randn([n_global, self.z_dim], generator=self.gen)
        if self.class_probs is None:
            c = torch.randint(self.num_classes, [n_global], generator=self.gen)
        else:
            c = torch.multinomial(self.class_probs, n_global, replacement=True, generator=self.gen)
        local = self._slice(z, n_global).to(self.device), self._slice(c, n_global).to(self.device)
        return (*local, z.to(self.device), c.to(self.device)) if keep_global else local

    def mixing_cutoff(self, prob: float, num_ws: int) -> int | None:
        """Index of the first w taken from the second latent, or None (no mixing for this batch)."""
        u = torch.rand([], generator=self.gen).item()
        cut = int(torch.randint(1, max(num_ws, 2), [], generator=self.gen).item())
        return cut if (u < prob and num_ws > 1) else None

    def seed(self) -> int:
        return int(torch.randint(0, 2**62, [], generator=self.gen).item())


def _trainable(module: torch.nn.Module, frozen: set[str]) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters() if n not in frozen]


@contextlib.contextmanager
def _grad_enabled(params: list[torch.nn.Parameter], enabled: bool = True):
    """Switches ``requires_grad`` of the trainable parameters only (frozen ones stay off)."""
    for p in params:
        p.requires_grad_(enabled)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(False)


def _average_gradients(params: list[torch.nn.Parameter], dist_info: _Dist) -> None:
    """All-reduces the gradients of ``params`` (one flattened tensor) and divides by the world size."""
    if not dist_info.active:
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist_info.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _all_mean(x: torch.Tensor, dist_info: _Dist) -> torch.Tensor:
    if not dist_info.active:
        return x
    import torch.distributed as dist

    x = x.clone()
    dist.all_reduce(x)
    return x / dist_info.world


def _adam(params: list[torch.nn.Parameter], lr: float, betas: list[float], eps: float, reg_interval: int | None,
          device: torch.device):
    """Adam with lazy-regularisation scaling: lr·k/(k+1) and beta**(k/(k+1)) when a regulariser runs every k steps.

    On CUDA the fused implementation (one kernel for all parameters) is used.
    """
    ratio = reg_interval / (reg_interval + 1) if reg_interval else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=(betas[0] ** ratio, betas[1] ** ratio), eps=eps,
                            fused=True if device.type == "cuda" else None)


class TrainingDiverged(FloatingPointError):
    """A loss became NaN or infinite; the message names the loss and the image count."""


# ----------------------------------------------------------------------------------------------------------------
# Grids


def _to_uint8(img: torch.Tensor) -> torch.Tensor:
    return ((img.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def make_grid(images: torch.Tensor, rows: int, pad: int = 2) -> np.ndarray:
    """Tiles ``[rows·cols, 3, H, W]`` uint8 images row-major into one ``[H', W', 3]`` array (white padding)."""
    n, c, h, w = images.shape
    cols = n // rows
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    for i in range(rows * cols):
        r, k = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = arr[i]
    return grid


def _write_png(path: Path, grid: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    runs.atomic_write_bytes(path, buf.getvalue())


@torch.no_grad()
def class_grid(G: torch.nn.Module, z: torch.Tensor, num_classes: int, batch: int = 64) -> torch.Tensor:
    """Images of every class for the same latents: ``[num_classes · len(z), 3, R, R]`` uint8, row = class.

    Uses constant synthesis noise, so a grid depends only on the weights and ``z`` (and draws nothing from the
    global random generator).
    """
    device = next(G.parameters()).device
    zs = z.to(device).repeat(num_classes, 1)  # [K·n, z_dim]
    cs = torch.arange(num_classes, device=device).repeat_interleave(len(z))  # [K·n]
    out = [G(zs[i:i + batch], cs[i:i + batch], noise_mode="const") for i in range(0, len(zs), batch)]
    return _to_uint8(torch.cat(out))


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def _find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory (→ ``checkpoints/best.pt`` when present, else ``latest.pt``)."""
    p = runs.project_path(path)
    if p.is_dir():
        for name in ("best.pt", "latest.pt"):
            for cand in (p / "checkpoints" / name, p / name):
                if cand.is_file():
                    return cand
        raise FileNotFoundError(f"{p}: no checkpoints/best.pt or checkpoints/latest.pt in this run directory")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: checkpoint not found")
    return p


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a checkpoint written by :func:`train_gan` (plain tensors and Python objects only)."""
    p = _find_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which and why
        raise ValueError(f"{p}: cannot read checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{p}: not a histlib GAN checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    ckpt["path"] = str(p)
    return ckpt


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu", which: str = "G_ema"):
    """Rebuilds a generator from a checkpoint.

    Args:
        path: checkpoint file or run directory (see :func:`load_checkpoint`).
        device: where to put the network.
        which: ``'G_ema'`` (default, the one to sample from) or ``'G'``.

    Returns:
        ``(G, info)`` with ``G`` in eval mode and ``info`` = ``{'classes', 'resolution', 'cur_nimg', 'config',
        'network_kwargs', 'path'}``.
    """
    from histlib import networks

    ckpt = load_checkpoint(path)
    kwargs = ckpt["network_kwargs"]["G"]
    G = networks.Generator(**kwargs)
    G.load_state_dict(ckpt[which])
    G = G.to(device).eval().requires_grad_(False)
    info = {k: ckpt.get(k) for k in ("classes", "cur_nimg", "config", "network_kwargs", "path")}
    info["resolution"] = kwargs.get("img_resolution")
    return G, info


# ----------------------------------------------------------------------------------------------------------------
# The training loop


def train_gan(cfg: TrainConfig, run_dir: str | os.PathLike, hooks: list[Callable] | None = None,
              early_stopping: Any = None, resume: bool | str = "auto") -> dict[str, Any]:
    """Trains (or fine-tunes) the conditional StyleGAN2 and returns a summary dict (also written to metrics.json).

    Args:
        cfg: the run's settings.
        run_dir: the run directory (created). Paths in ``cfg`` are resolved against the project root.
        hooks: callables ``hook(G_ema, cur_nimg) -> dict[str, float]`` run on rank 0 every
            ``cfg.metrics_every_kimg`` (every tick when it is None, for hooks with their own schedule) and at the
            end; their results go into ``stats.jsonl`` and ``metrics.json``. A hook's ``state_dict()`` (if any)
            is checkpointed.
        early_stopping: an object with ``update(metrics: dict) -> bool`` (True = stop), fed the hooks' results;
            when None and ``cfg.early_stop_patience`` is set, ``histlib.metrics.EarlyStopping(cfg.early_stop_metric,
            patience, mode)`` is used (mode 'min' for FID, else 'max'). The generator with the best value is kept
            as ``checkpoints/best.pt``.
        resume: ``'auto'`` continues from ``checkpoints/latest.pt`` when it exists (its config must match apart
            from :data:`RESUME_MUTABLE_FIELDS`), ``True`` requires it, ``False`` starts over.

    Returns:
        The final metrics: losses, kimg, img/s, augmentation p, wall time, hook results, paths.

    Raises:
        TrainingDiverged: a loss became NaN/Inf (the last good checkpoint is kept).
        ValueError / FileNotFoundError: bad settings or inputs, naming the field or file.
    """
    cfg = copy.deepcopy(cfg).validate()
    t_start = time.time()
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives and object gathers use the current device
    dist_info = _setup_distributed(device.type)
    import histlib.ops as ops

    try:
        with ops.use_impl(cfg.kernel_impl):
            return _train(cfg, Path(run_dir), hooks or [], early_stopping, resume, device, dist_info, t_start)
    finally:
        if dist_info.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def _build(cfg: TrainConfig, num_classes: int, device: torch.device):
    from histlib import networks

    kw = networks.network_kwargs(cfg.profile, resolution=cfg.resolution)
    G_kwargs = {**kw.get("G", {}), **cfg.G_kwargs, "num_classes": num_classes, "img_resolution": cfg.resolution}
    D_kwargs = {**kw.get("D", {}), **cfg.D_kwargs, "num_classes": num_classes, "img_resolution": cfg.resolution}
    if device.type != "cuda" or not cfg.mixed_precision:  # fp16 only where it pays off and is supported
        for k in (G_kwargs, D_kwargs):
            if "num_fp16_res" in k:
                k["num_fp16_res"] = 0
    G = networks.Generator(**G_kwargs).to(device)
    D = networks.Discriminator(**D_kwargs).to(device)
    return G, D, {"G": G_kwargs, "D": D_kwargs}


def _check_base_matches(base: dict[str, Any], net_kwargs: dict[str, Any], cfg: TrainConfig) -> None:
    """A base checkpoint of another resolution or architecture cannot be fine-tuned from: say which and how."""
    theirs = (base.get("network_kwargs") or {}).get("G") or {}
    ours = net_kwargs["G"]
    if theirs.get("img_resolution") not in (None, ours["img_resolution"]):
        theirs_px, ours_px = theirs["img_resolution"], ours["img_resolution"]
        raise ValueError(f"TrainConfig.resume_from={base['path']}: the base checkpoint is {theirs_px} px, this run "
                         f"is {ours_px} px; set resolution={theirs_px} (the images are resized to it) or train a base "
                         "at this resolution")
    keys = ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max")
    diff = {k: (theirs.get(k), ours.get(k)) for k in keys if k in theirs and theirs.get(k) != ours.get(k)}
    if diff:
        detail = ", ".join(f"{k} {a} in the base vs {b} here" for k, (a, b) in diff.items())
        raise ValueError(f"TrainConfig.resume_from={base['path']}: the base networks differ ({detail}); use the "
                         f"base's profile ({(base.get('config') or {}).get('profile')}) and G_kwargs")


def _real_sample(dataset, num_classes: int, per_class: int, seed: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed draw of up to ``per_class`` real training images per class: ``([n, 3, R, R] in [-1, 1], [n])``."""
    labels = np.asarray(dataset.labels)
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in range(num_classes)])
    real = torch.stack([dataset[int(i)][0] for i in idx]).to(device).float() / 127.5 - 1  # [n, 3, R, R]
    return real, torch.as_tensor(labels[idx], device=device)


def _init_new_classes(base: dict[str, Any], G, D, dataset, num_classes: int, cfg: TrainConfig,
                      device: torch.device) -> dict[str, Any]:
    """New target classes: ``networks.init_class_embeddings_neutral`` (``class_init='neutral'``) or
    ``networks.init_class_embeddings_from_base`` with the base checkpoint's G_ema and D and up to 64 real training
    images per target class (``'match'``; the same on every rank: a fixed draw)."""
    from histlib import networks

    kw = base["network_kwargs"]
    base_G = networks.Generator(**kw["G"]).to(device).eval()
    base_G.load_state_dict(base["G_ema"])
    if cfg.class_init == "neutral":
        return networks.init_class_embeddings_neutral(G, base_G, seed=cfg.seed)
    base_D = networks.Discriminator(**kw["D"]).to(device).eval()
    base_D.load_state_dict(base["D"])
    real, real_c = _real_sample(dataset, num_classes, 64, cfg.seed, device)
    with _forked_rng(device):
        info = networks.init_class_embeddings_from_base(G, D, base_G, base_D, real, real_c, seed=cfg.seed)
    base_classes = base.get("classes") or [str(i) for i in range(base_G.num_classes)]
    info["matched_base_class"] = {c: base_classes[b] for c, b in zip(dataset.classes, info["match"])}
    return info


def _train(cfg, run_dir, hooks, early_stopping, resume, device, dist_info, t_start):  # noqa: C901 - one loop
    from histlib.data.dataset import ImageDataset, to_uint8_tensor

    rank0 = dist_info.rank == 0
    if cfg.batch_size % dist_info.world:
        raise ValueError(f"TrainConfig.batch_size={cfg.batch_size}: must be divisible by the number of processes "
                         f"({dist_info.world})")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
        torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    ckpt_dir = Path(run_dir) / "checkpoints"
    latest = ckpt_dir / "latest.pt"

    # ---- data
    data_dir = runs.project_path(cfg.data_dir)
    dataset = ImageDataset(data_dir, split=cfg.split, transform=to_uint8_tensor, resolution=cfg.resolution)
    classes = list(dataset.classes)
    num_classes = cfg.num_classes or len(classes)
    if num_classes < len(classes):
        raise ValueError(f"TrainConfig.num_classes={cfg.num_classes}: the data in {data_dir} has {len(classes)} "
                         f"classes ({classes})")
    class_probs = None
    if not cfg.balanced_sampling:
        class_probs = np.bincount(dataset.labels, minlength=num_classes) / len(dataset.labels)

    # ---- networks (the same initial weights on every rank: built under the run's seed)
    _seed_all(cfg.seed)
    G, D, net_kwargs = _build(cfg, num_classes, device)
    G_ema = copy.deepcopy(G).eval()
    from histlib import networks

    # ---- resume / fine-tune
    state = None
    if resume and latest.is_file():
        state = load_checkpoint(latest, map_location=device)
        _check_resume_config(state["config"], cfg, latest)
    elif resume is True:
        raise FileNotFoundError(f"{latest}: no checkpoint to resume from (resume=True)")
    finetune: dict[str, Any] | None = None
    if state is not None:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        G_ema.load_state_dict(state["G_ema"])
    elif cfg.resume_from:
        base = load_checkpoint(cfg.resume_from, map_location=device)
        _check_base_matches(base, net_kwargs, cfg)
        finetune = {"resume_from": base["path"], "resume_from_sha256": runs.file_sha256(base["path"]),
                    "base_classes": base.get("classes"), "classes": classes,
                    "base_cur_nimg": base.get("cur_nimg")}
        # re-initialise class embeddings when the classes differ (by name where the base recorded them)
        reinit = None if base.get("classes") is None else list(base["classes"]) != list(classes)
        for name, module in (("G", G), ("D", D), ("G_ema", G_ema)):
            finetune[name] = networks.load_pretrained(module, base[name], reinit_class_embeddings=reinit)
        if finetune["G"]["reinitialised"] and cfg.class_init != "random":
            finetune["class_init"] = _init_new_classes(base, G, D, dataset, num_classes, cfg, device)
        else:
            finetune["class_init"] = {"method": "random" if finetune["G"]["reinitialised"] else "loaded"}
        del base
        with torch.no_grad():  # G_ema starts from G's new class embeddings, not an independent draw
            g_state, ema_state = G.state_dict(), G_ema.state_dict()
            for n in finetune["G_ema"].get("reinitialised", []):
                ema_state[n].copy_(g_state[n])
    frozen_d = set(networks.freeze_discriminator(D, cfg.freeze_d) if cfg.freeze_d else [])
    frozen_g = set(networks.freeze_generator(G, cfg.freeze_g) if cfg.freeze_g else [])
    if frozen_g:
        # G_ema's frozen blocks must be the very tensors its trainable blocks are trained against: G's. They get
        # no EMA update afterwards, so G and G_ema stay bit-identical there.
        networks.freeze_generator(G_ema, cfg.freeze_g)
        with torch.no_grad():
            g_params = dict(G.named_parameters())
            for n, p in G_ema.named_parameters():
                if n in frozen_g:
                    p.copy_(g_params[n])
    G_params = [p for _, p in _trainable(G, frozen_g)]
    D_params = [p for _, p in _trainable(D, frozen_d)]
    G.requires_grad_(False)
    D.requires_grad_(False)
    G_ema.requires_grad_(False)
    if dist_info.active and state is None:
        import torch.distributed as dist

        for t in [*G.state_dict().values(), *D.state_dict().values(), *G_ema.state_dict().values()]:
            dist.broadcast(t, src=0)
    ema_pairs = [(p_ema, p) for (n, p_ema), (_, p) in zip(G_ema.named_parameters(), G.named_parameters())
                 if n not in frozen_g]
    ema_buffers = list(zip(G_ema.buffers(), G.buffers()))

    opt_G = _adam(G_params, cfg.lr_g, cfg.betas, cfg.adam_eps, cfg.pl_interval if cfg.pl_weight > 0 else None, device)
    opt_D = _adam(D_params, cfg.lr_d, cfg.betas, cfg.adam_eps, cfg.r1_interval if cfg.r1_gamma > 0 else None, device)
    pl_reg = losses.PathLengthRegularizer(cfg.pl_decay).to(device)

    augment_pipe = ada = None
    if cfg.augment != "none":
        from histlib.augment import AdaController, AugmentPipe

        augment_pipe = AugmentPipe.preset(cfg.augment_preset).to(device)
        augment_pipe.set_p(cfg.augment_p)
        if cfg.augment == "ada":
            ada = AdaController(augment_pipe, target=cfg.ada_target, interval=cfg.ada_interval, kimg=cfg.ada_kimg,
                                batch_size=cfg.batch_size)

    latents = _Latents(cfg.seed, G.z_dim, num_classes, class_probs, dist_info, device)
    cur_nimg, tick, step = 0, 0, 0
    data_state = {"epoch": 0, "pos": 0}
    best: dict[str, Any] = {}
    next_metrics_nimg = int(cfg.metrics_every_kimg * 1000) if cfg.metrics_every_kimg else None
    if early_stopping is None and cfg.early_stop_patience:
        from histlib.metrics import EarlyStopping

        mode = "min" if cfg.early_stop_metric.split("/")[0] == "fid" else "max"  # FID: lower is better
        early_stopping = EarlyStopping(cfg.early_stop_metric, cfg.early_stop_patience, mode)

    if state is not None:
        opt_G.load_state_dict(state["opt_G"])
        opt_D.load_state_dict(state["opt_D"])
        pl_reg.load_state_dict(state["pl_reg"])
        if augment_pipe is not None and state.get("augment_pipe") is not None:
            augment_pipe.load_state_dict(state["augment_pipe"])
        if ada is not None and state.get("ada") is not None:
            ada.load_state_dict(state["ada"])
        cur_nimg, tick, step = int(state["cur_nimg"]), int(state["tick"]), int(state["step"])
        data_state = state["data"]
        best = state.get("best") or {}
        next_metrics_nimg = state.get("next_metrics_nimg", next_metrics_nimg)
        latents.gen.set_state(state["latent_rng"])
        if early_stopping is not None and state.get("early_stopping") is not None \
                and hasattr(early_stopping, "load_state_dict"):
            early_stopping.load_state_dict(state["early_stopping"])
        for hook, hook_state in zip(hooks, state.get("hooks") or []):
            if hook_state is not None and hasattr(hook, "load_state_dict"):
                hook.load_state_dict(hook_state)
        rng = state["rng"]
        if len(rng) == dist_info.world:
            _set_rng_state(rng[dist_info.rank], device)
        else:  # another process count: exact continuation is impossible, keep going reproducibly
            _seed_all(_rank_seed(cfg.seed + cur_nimg, dist_info.rank))
        finetune = state.get("finetune")
    else:
        _seed_all(_rank_seed(cfg.seed, dist_info.rank))

    stream = _BatchStream(dataset, cfg.batch_size, cfg.seed, cfg.balanced_sampling, dist_info, cfg.num_workers,
                          **data_state, pin_memory=device.type == "cuda")
    total_nimg = int(round(cfg.kimg * 1000))
    grid_z = torch.randn([cfg.grid_columns, G.z_dim], generator=torch.Generator().manual_seed(cfg.seed + 1))
    frozen_info = {"G": sorted(frozen_g), "D": sorted(frozen_d)}

    # ---- run directory (created only now: bad settings or a bad base checkpoint leave no empty folder behind)
    run = runs.Run(run_dir) if rank0 else None
    if rank0:
        run.write_config(cfg)
        run.write_env(device=str(device), world_size=dist_info.world, kernel_impl=cfg.kernel_impl)
        if state is not None:  # drop the stats of ticks after the checkpoint (they will be redone identically)
            kept = [r for r in run.read_stats() if r.get("tick", 0) <= tick]
            runs.atomic_write_text(run.stats_path, "".join(json.dumps(r) + "\n" for r in kept))
        else:  # a fresh start: outputs of an earlier run in this directory would be mistaken for this one's
            stale = [run.stats_path, run.metrics_path, Path(run_dir) / "finetune.json", *run.images.glob("grid-*.png"),
                     *ckpt_dir.glob("snapshot-*.pt"), ckpt_dir / "best.pt", latest]
            for f in stale:
                f.unlink(missing_ok=True)
        if finetune is not None or frozen_g or frozen_d:
            runs.write_json(Path(run_dir) / "finetune.json", _finetune_report(finetune, frozen_info))
        if state is None:
            reals = _real_grid(dataset, num_classes, cfg.grid_columns, cfg.seed)
            _write_png(run.images / "reals.png", make_grid(reals, num_classes))
            runs.write_json(run.images / "grid.json", {"classes": classes, "columns": cfg.grid_columns,
                                                       "resolution": cfg.resolution, "pad": 2})

    def save_checkpoint(path: Path, full: bool) -> None:
        # a full checkpoint is written by rank 0 but holds every rank's random states (a collective: all ranks call)
        rng_all = _gather_objects(_rng_state(device), dist_info) if full else None
        if not rank0:
            return
        obj = {"format": CHECKPOINT_FORMAT, "G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
               "cur_nimg": cur_nimg, "tick": tick, "step": step, "classes": classes, "network_kwargs": net_kwargs,
               "config": dataclasses.asdict(cfg), "frozen": frozen_info, "finetune": finetune}
        if full:
            obj.update({
                "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(), "pl_reg": pl_reg.state_dict(),
                "augment_pipe": None if augment_pipe is None else augment_pipe.state_dict(),
                "ada": None if ada is None else ada.state_dict(), "data": stream.state_dict(),
                "latent_rng": latents.gen.get_state(), "rng": rng_all, "best": best,
                "next_metrics_nimg": next_metrics_nimg, "train_time": total_train_time,
                "early_stopping": early_stopping.state_dict() if hasattr(early_stopping, "state_dict") else None,
                "stopped_early": stopped_early, "realignments": realignments,
                "hooks": [h.state_dict() if hasattr(h, "state_dict") else None for h in hooks],
            })
        runs.atomic_torch_save(obj, path)

    def optimizer_step(loss: torch.Tensor, params: list[torch.Tensor], opt: torch.optim.Optimizer) -> None:
        """Backward, average the gradients over processes, step, clear."""
        loss.backward()
        _average_gradients(params, dist_info)
        opt.step()
        opt.zero_grad(set_to_none=True)

    # ---- loop
    W = dist_info.world
    pl_global = max(W, cfg.batch_size // cfg.pl_batch_shrink // W * W)
    lam = cfg.cond_lambda
    d2d_kw = dict(tau=cfg.d2d_tau, margin_pos=cfg.d2d_margin_pos, margin_neg=cfg.d2d_margin_neg)
    acc: dict[str, list] = {}

    def note(name: str, value: torch.Tensor) -> None:
        s = acc.setdefault(name, [torch.zeros([], device=device, dtype=torch.float64), 0])
        s[0] += value.detach().double()
        s[1] += 1

    def run_G(z, c, update_emas=False):
        ws = G.mapping(z, c, update_emas=update_emas)  # [n, num_ws, w_dim]
        cut = latents.mixing_cutoff(cfg.style_mixing_prob, ws.shape[1])
        if cut is not None:
            z2, _ = latents.draw(len(z) * W)
            ws2 = G.mapping(z2, c, update_emas=False)
            ws = torch.cat([ws[:, :cut], ws2[:, cut:]], dim=1)
        return G.synthesis(ws, noise_mode=cfg.noise_mode), ws

    def run_D(img, c):
        if augment_pipe is not None and aug_p[0] > 0:  # p = 0 is the identity: skip the pipe's work
            img = augment_pipe(img)
        return D(img, c)

    def d2d(embed, proxy, c):
        # global-batch loss; ×W because gradients are averaged (not summed) over ranks afterwards
        loss = losses.d2d_ce_loss_global(embed, proxy, c, **d2d_kw)
        return loss, loss * W

    aug_p = [float(augment_pipe.p) if augment_pipe is not None else 0.0]  # host copy: no device sync per step
    new_classes = bool(finetune and (finetune.get("class_init") or {}).get("method") not in (None, "loaded"))
    check_reals = _real_sample(dataset, num_classes, cfg.class_check_per_class, cfg.seed, device) \
        if cfg.class_check_per_class and num_classes > 1 and rank0 else None
    realignments: list[dict[str, Any]] = list(state.get("realignments") or []) if state is not None else []
    hook_results: dict[str, float] = {}
    stopped_early = bool(state is not None and state.get("stopped_early"))
    total_train_time = float(state.get("train_time", 0.0)) if state is not None else 0.0
    session_nimg, session_time = 0, 0.0
    tick_start_nimg, tick_train_time = cur_nimg, 0.0
    bar = None
    if rank0 and cfg.progress:
        from histlib.progress import progress

        bar = progress(total=round(total_nimg / 1000, 3), initial=round(cur_nimg / 1000, 3), unit="kimg",
                   desc="train_gan", dynamic_ncols=True)
    # a run that stopped early stays stopped when resumed (its early-stopping state says so)
    done = cur_nimg >= total_nimg or stopped_early
    while not done:
        t_iter = time.time()
        real_u8, real_c = stream.next()
        real = real_u8.to(device, non_blocking=True).to(torch.float32) / 127.5 - 1  # [n, 3, R, R]
        real_c = real_c.to(device, non_blocking=True)
        phase_losses: list[tuple[str, torch.Tensor]] = []

        # Gmain
        with _grad_enabled(G_params):
            z, c = latents.draw(cfg.batch_size)
            img, _ = run_G(z, c)
            logits, embed, proxy = run_D(img, c)
            loss_adv = losses.g_nonsaturating_loss(logits).mean()
            loss = loss_adv
            note("loss_g", loss_adv)
            phase_losses.append(("G adversarial", loss_adv))
            if lam > 0:
                value, scaled = d2d(embed, proxy, c)
                loss = loss + lam * scaled
                note("loss_g_d2d", value)
                phase_losses.append(("G D2D-CE", value))
            optimizer_step(loss, G_params, opt_G)

        # Greg: path length on a shrunk batch
        if cfg.pl_weight > 0 and step % cfg.pl_interval == 0:
            with _grad_enabled(G_params):
                z, c = latents.draw(pl_global)
                img, ws = run_G(z, c)
                noise = _device_randn((pl_global, *img.shape[1:]), latents.seed(), device)
                noise = noise[dist_info.rank * len(z):(dist_info.rank + 1) * len(z)]
                pen = pl_reg(img, ws, noise, batch_mean=lambda m: _all_mean(m, dist_info))
                loss = pen.mean() * cfg.pl_weight * cfg.pl_interval
                note("loss_pl", pen.mean())
                note("pl_mean", pl_reg.pl_mean)
                phase_losses.append(("path length", loss))
                optimizer_step(loss, G_params, opt_G)

        # Dmain (the fakes' w also update G's tracked means of w: over the global batch, identically on every rank)
        with _grad_enabled(D_params):
            z, c, z_all, c_all = latents.draw(cfg.batch_size, keep_global=True)
            with torch.no_grad():
                img, _ = run_G(z, c, update_emas=not dist_info.active)
                if dist_info.active:
                    G.mapping(z_all, c_all, update_emas=True)
            fake_logits, _, _ = run_D(img, c)
            real_logits, embed, proxy = run_D(real, real_c)
            if ada is not None:
                ada.accumulate(real_logits)
            loss_real, loss_fake = losses.d_logistic_loss(real_logits, fake_logits)
            loss = loss_real.mean() + loss_fake.mean()
            note("loss_d", loss)
            note("real_logit", real_logits.mean())
            note("fake_logit", fake_logits.mean())
            phase_losses.append(("D adversarial", loss))
            if lam > 0:
                value, scaled = d2d(embed, proxy, real_c)
                loss = loss + lam * scaled
                note("loss_d_d2d", value)
                phase_losses.append(("D D2D-CE", value))
            optimizer_step(loss, D_params, opt_D)

        # Dreg: R1 = |grad of D(augment(x)) w.r.t. the un-augmented real x|^2, as StyleGAN2-ADA
        if cfg.r1_gamma > 0 and step % cfg.r1_interval == 0:
            with _grad_enabled(D_params):
                x = real.detach().requires_grad_(True)
                logits, _, _ = run_D(x, real_c)
                pen = losses.r1_penalty(x, logits)
                loss = pen.mean() * (cfg.r1_gamma / 2) * cfg.r1_interval
                note("r1_penalty", pen.mean())
                phase_losses.append(("R1", loss))
                optimizer_step(loss, D_params, opt_D)

        # G_ema, ADA
        with torch.no_grad():
            ema_nimg = cfg.ema_kimg * 1000
            if cfg.ema_rampup is not None:
                ema_nimg = min(ema_nimg, (cur_nimg + cfg.batch_size) * cfg.ema_rampup)
            beta = 0.5 ** (cfg.batch_size / max(ema_nimg, 1e-8))
            if ema_pairs:
                torch._foreach_lerp_([a for a, _ in ema_pairs], [b for _, b in ema_pairs], 1.0 - beta)
            for b_ema, b in ema_buffers:
                b_ema.copy_(b)
        cur_nimg += cfg.batch_size
        step += 1
        if ada is not None:
            new_p = ada.update(cur_nimg)
            if new_p is not None:
                aug_p[0] = float(new_p)

        # one host sync per iteration: stop at the first non-finite loss, before any checkpoint is written
        values = torch.stack([v.detach().float().reshape(()) for _, v in phase_losses])
        bad = (~torch.isfinite(values)).float()
        if dist_info.active:
            import torch.distributed as dist

            dist.all_reduce(bad)
        if bool(bad.any()):
            names = [n for (n, _), b in zip(phase_losses, bad.tolist()) if b]
            if bar is not None:
                bar.close()
            raise TrainingDiverged(
                f"train_gan: non-finite {names[0]} loss at {cur_nimg / 1000:.3f} kimg (iteration {step}"
                + (f"; then also {', '.join(names[1:])}" if len(names) > 1 else "") + "); training stopped. "
                f"Last good checkpoint: {latest if latest.is_file() else 'none written yet'}. "
                "Lower lr_g/lr_d or raise r1_gamma.")
        dt = time.time() - t_iter
        tick_train_time += dt
        session_time += dt
        session_nimg += cfg.batch_size
        if bar is not None:
            bar.update(round(cfg.batch_size / 1000, 3))

        # ---- end of a tick: stats, metrics hooks, early stopping, snapshot
        done = cur_nimg >= total_nimg
        if not done and cur_nimg < tick_start_nimg + cfg.tick_kimg * 1000:
            continue
        tick += 1
        total_train_time += tick_train_time
        record = _tick_record(acc, dist_info, cur_nimg, tick, tick_train_time, cur_nimg - tick_start_nimg,
                              augment_pipe, ada)
        acc.clear()
        record["wall_s"] = round(time.time() - t_start, 3)
        if cfg.class_check_per_class and num_classes > 1:
            record.update(_class_check(G, G_ema, D, opt_G, cfg, cur_nimg, dist_info, device,
                                       realign=new_classes and cfg.realign_classes, check_reals=check_reals))
            if record.get("class_realign") is not None:
                realignments.append({"kimg": round(cur_nimg / 1000, 3), "perm": record["class_realign"]})
        stop = improved = False
        if hooks and (next_metrics_nimg is None or cur_nimg >= next_metrics_nimg or done):
            metrics: dict[str, float] = {}
            if rank0:
                with _forked_rng(device):
                    for hook in hooks:
                        metrics.update(_call_hook(hook, G_ema, cur_nimg, final=done))
                if early_stopping is not None and metrics:
                    improved, stop = _update_early_stopping(early_stopping, metrics, best, cfg)
                    if improved:
                        best = {"cur_nimg": cur_nimg, **metrics}
            metrics, stop, improved, best = _broadcast_object((metrics, stop, improved, best), dist_info)
            hook_results.update(metrics)
            record.update({f"metrics/{k}": v for k, v in metrics.items()})
            if next_metrics_nimg is not None:
                while next_metrics_nimg <= cur_nimg:
                    next_metrics_nimg += int(cfg.metrics_every_kimg * 1000)
        if rank0:
            run.log_stats(record)
        if bar is not None:
            bar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss_g", "loss_d", "augment_p", "img_per_s")
                             if record.get(k) is not None}, refresh=False)
        stopped_early = stop
        done = done or stop
        if improved:
            save_checkpoint(ckpt_dir / "best.pt", full=False)
        if tick % cfg.snapshot_ticks == 0 or done:
            if rank0:
                with _forked_rng(device):
                    image = make_grid(class_grid(G_ema, grid_z, num_classes), num_classes)
                _write_png(run.images / f"grid-{cur_nimg / 1000:09.3f}kimg.png", image)
                _write_png(run.images / "grid-latest.png", image)
                if cfg.keep_snapshots:
                    save_checkpoint(ckpt_dir / f"snapshot-{cur_nimg / 1000:09.3f}kimg.pt", full=False)
            save_checkpoint(latest, full=True)
        tick_start_nimg, tick_train_time = cur_nimg, 0.0

    if bar is not None:
        bar.close()
    stats = run.read_stats() if rank0 else []
    last = stats[-1] if stats else {}
    summary = {
        "kimg": round(cur_nimg / 1000, 3), "cur_nimg": cur_nimg, "ticks": tick, "iterations": step,
        "wall_time_s": round(time.time() - t_start, 3), "train_time_s": round(total_train_time, 3),
        "img_per_s": round(session_nimg / session_time, 3) if session_time > 0 else None,
        "augment_p": float(augment_pipe.p) if augment_pipe is not None else 0.0,
        "ada_rt": ada.rt if ada is not None else None,
        "stopped_early": stopped_early, "num_classes": num_classes, "classes": classes,
        "resolution": cfg.resolution, "device": str(device), "world_size": dist_info.world,
        **{k: v for k, v in last.items() if k.startswith("loss") or k in ("r1_penalty", "pl_mean")},
        **{f"metrics/{k}": v for k, v in hook_results.items()},
        **({f"best/{k}": v for k, v in best.items()} if best else {}),
        "freeze_g_blocks": cfg.freeze_g, "freeze_d_blocks": cfg.freeze_d, "frozen_g_tensors": len(frozen_g),
        "frozen_d_tensors": len(frozen_d), "class_realignments": realignments,
        "checkpoint": latest.as_posix(), "run_dir": Path(run_dir).as_posix(),
    }
    if rank0:
        run.write_metrics(summary)
        run.write_env(device=str(device), world_size=dist_info.world, kernel_impl=cfg.kernel_impl)
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Loop helpers


@contextlib.contextmanager
def _forked_rng(device: torch.device):
    """Runs a block (grids, metric hooks) without consuming the training's random streams."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _gather_objects(obj: Any, dist_info: _Dist) -> list[Any]:
    if not dist_info.active:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist_info.world
    dist.all_gather_object(out, obj)
    return out


def _broadcast_object(obj: Any, dist_info: _Dist) -> Any:
    if not dist_info.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _class_check(G, G_ema, D, opt_G, cfg: TrainConfig, cur_nimg: int, dist_info: _Dist, device: torch.device,
                 realign: bool, check_reals: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """D's view of G's classes at the end of a tick (``d_class_agreement``: the fraction of G's images whose nearest
    D proxy is the class asked for; ``d_real_agreement``: the same for a fixed sample of real training images) and,
    when fine-tuning with new classes, the relabelling of G's class embeddings that turns a swap D sees into
    agreement (``class_realign``: class s takes embedding ``perm[s]``; only for classes D tells apart on reals)."""
    from histlib import networks

    out: dict[str, Any] = {}
    if dist_info.rank == 0:
        view = networks.discriminator_view(G, D, cfg.class_check_per_class, seed=cfg.seed + 7)
        out["d_class_agreement"] = round(float(view.trace()) / max(int(view.sum()), 1), 4)
        real_x, real_c = check_reals
        real_view = networks.discriminator_real_view(D, real_x, real_c, G.num_classes)
        out["d_real_agreement"] = round(float(real_view.trace()) / max(int(real_view.sum()), 1), 4)
        perm = networks.realignment(view, cfg.realign_min_gain, real_view, cfg.realign_min_real_recall) \
            if realign else None
        if perm is not None:
            out["class_realign"] = perm
            out["d_class_agreement_before"] = out["d_class_agreement"]
            out["d_class_agreement"] = round(float(view[perm, torch.arange(len(perm))].sum()) / int(view.sum()), 4)
    out = _broadcast_object(out, dist_info)
    if out.get("class_realign") is not None:
        networks.permute_classes(G, out["class_realign"], opt_G)
        networks.permute_classes(G_ema, out["class_realign"])
    return out


def _tick_record(acc, dist_info, cur_nimg, tick, tick_time, tick_nimg, augment_pipe, ada) -> dict[str, Any]:
    """One ``stats.jsonl`` line: mean of every noted value over the tick (and over ranks), p, speed."""
    names = sorted(acc)
    record: dict[str, Any] = {"tick": tick, "kimg": round(cur_nimg / 1000, 3), "cur_nimg": cur_nimg}
    if names:
        sums = torch.stack([acc[n][0] for n in names])
        counts = torch.tensor([float(acc[n][1]) for n in names], dtype=torch.float64, device=sums.device)
        means = _all_mean(sums / counts, dist_info)
        record.update({n: float(v) for n, v in zip(names, means.tolist())})
    if augment_pipe is not None:
        record["augment_p"] = float(augment_pipe.p)
    if ada is not None and ada.rt is not None:
        record["ada_rt"] = float(ada.rt)
    record["tick_s"] = round(tick_time, 3)
    record["img_per_s"] = round(tick_nimg / tick_time, 2) if tick_time > 0 else None
    record["sec_per_kimg"] = round(tick_time / tick_nimg * 1000, 3) if tick_nimg else None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        record["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return record


def _generate_for_metrics(G: torch.nn.Module, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The metrics hook's generator call: its labels come one-hot ``[N, K]``, the generator takes indices ``[N]``."""
    from histlib.metrics.hooks import default_generate

    return default_generate(G, z, c.argmax(dim=1) if c.ndim == 2 else c)


def metrics_hooks(cfg: TrainConfig, fid_extractor: str = "inception", prdc_extractor: str | None = "vgg16",
                  num_fake: int = 5000, max_real: int = 10000, split: str | None = None) -> list[Callable]:
    """The periodic GAN metrics of a run: ``[GanMetricsHook]`` every ``cfg.metrics_every_kimg``, or ``[]``.

    FID / precision / recall / density / coverage of ``G_ema`` against a fixed real subset of ``cfg.data_dir``
    (``split``, default: the training split ``cfg.split``), with fixed latents and balanced labels. Pass the
    result as ``train_gan(..., hooks=...)``; with ``cfg.early_stop_patience`` training stops when FID stops
    improving and ``checkpoints/best.pt`` keeps the best generator.
    """
    if not cfg.metrics_every_kimg:
        return []
    from histlib.metrics import GanMetricsHook

    hook = GanMetricsHook.from_dataset(
        runs.project_path(cfg.data_dir), fid_extractor=fid_extractor, prdc_extractor=prdc_extractor,
        split=cfg.split if split is None else split, max_real=max_real, num_fake=num_fake,
        every_kimg=cfg.metrics_every_kimg, seed=cfg.seed, generate=_generate_for_metrics)
    return [hook]


def _call_hook(hook: Callable, G_ema: torch.nn.Module, cur_nimg: int, final: bool) -> dict[str, float]:
    """``hook(G_ema, cur_nimg)``; at the end of training with ``force=True`` when the hook takes it (a hook with its
    own schedule then still reports the final generator)."""
    import inspect

    kwargs = {}
    if final:
        with contextlib.suppress(TypeError, ValueError):
            if "force" in inspect.signature(hook).parameters:
                kwargs["force"] = True
    return {str(k): float(v) for k, v in (hook(G_ema, cur_nimg, **kwargs) or {}).items()}


def _update_early_stopping(early_stopping: Any, metrics: dict[str, float], best: dict[str, Any],
                           cfg: TrainConfig) -> tuple[bool, bool]:
    """Feeds ``metrics`` to the rule; returns ``(new best, stop)``.

    A new best is read from the rule's own ``best`` attribute when it has one (so its tolerance applies), else
    decided here from ``metric`` and ``mode``.
    """
    name = getattr(early_stopping, "metric", cfg.early_stop_metric)
    mode = getattr(early_stopping, "mode", "min")
    before = getattr(early_stopping, "best", None)
    stop = bool(early_stopping.update(metrics))
    if name not in metrics or not math.isfinite(metrics[name]):
        improved = False
    elif hasattr(early_stopping, "best"):
        improved = early_stopping.best != before
    else:
        improved = name not in best or (metrics[name] < best[name] if mode == "min" else metrics[name] > best[name])
    return bool(improved), stop


def _check_resume_config(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    current = dataclasses.asdict(cfg)
    diff = sorted(k for k in set(saved) | set(current)
                  if k not in RESUME_MUTABLE_FIELDS and _norm(saved.get(k)) != _norm(current.get(k)))
    if diff:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}" for k in diff)
        raise ValueError(f"{path}: cannot resume, the config differs ({detail}); use another run directory, "
                         f"resume=False to start over, or resume_from=... to fine-tune from it")


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v))


def _finetune_report(finetune: dict[str, Any] | None, frozen: dict[str, list[str]]) -> dict[str, Any]:
    """``finetune.json``: what was loaded, skipped, re-initialised and frozen (names and counts)."""
    out: dict[str, Any] = {"frozen": frozen, "num_frozen": {k: len(v) for k, v in frozen.items()}}
    if finetune:
        out.update({k: v for k, v in finetune.items() if k not in ("G", "D", "G_ema")})
        for net in ("G", "D", "G_ema"):
            report = finetune.get(net) or {}
            out[net] = {k: list(v) for k, v in report.items()}
            out[f"num_{net}"] = {k: len(v) for k, v in report.items()}
    return out


def _real_grid(dataset, num_classes: int, columns: int, seed: int) -> torch.Tensor:
    """``[num_classes · columns, 3, R, R]`` uint8 real images, one row per class (blank where a class has fewer)."""
    rng = np.random.default_rng([seed, 7])
    first, _ = dataset[0]
    out = torch.full((num_classes * columns, *first.shape), 255, dtype=torch.uint8)
    for k in range(num_classes):
        idx = np.flatnonzero(dataset.labels == k)
        for j, i in enumerate(rng.permutation(idx)[:columns]):
            out[k * columns + j] = dataset[int(i)][0]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Plots for the notebooks


def plot_losses(run_dir: str | os.PathLike):
    """Loss curves of a run (from ``stats.jsonl``): adversarial G/D, D2D-CE, R1 and path length vs kimg."""
    import matplotlib.pyplot as plt

    stats = runs.Run(runs.project_path(run_dir)).read_stats()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    panels = [("adversarial", ("loss_g", "loss_d")), ("D2D-CE", ("loss_g_d2d", "loss_d_d2d")),
              ("regularisers", ("r1_penalty", "loss_pl", "pl_mean"))]
    kimg = [r["kimg"] for r in stats]
    for ax, (title, keys) in zip(axes, panels):
        for k in keys:
            ys = [r.get(k) for r in stats]
            if any(y is not None for y in ys):
                ax.plot(kimg, [float("nan") if y is None else y for y in ys], marker=".", label=k)
        ax.set_title(title)
        ax.set_xlabel("kimg")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)  # out of pyplot's registry: the notebook displays the returned figure once
    return fig


def plot_augment(run_dir: str | os.PathLike):
    """ADA's augmentation probability p (left axis) and the overfitting heuristic r_t with its target (right axis)
    vs kimg: p is often a few thousandths while r_t lies in [-1, 1], so they get their own scales."""
    import matplotlib.pyplot as plt

    path = runs.project_path(run_dir)
    stats = runs.Run(path).read_stats()
    cfg = runs.read_json(path / "config.json") if (path / "config.json").exists() else {}
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    kimg = [r["kimg"] for r in stats]
    ax.plot(kimg, [r.get("augment_p", 0.0) for r in stats], marker=".", color="C0", label="p")
    ax.set_ylabel("augmentation probability p", color="C0")
    ax.set_xlabel("kimg")
    if any("ada_rt" in r for r in stats):
        ax2 = ax.twinx()
        ax2.plot(kimg, [r.get("ada_rt", float("nan")) for r in stats], marker=".", color="C1",
                 label="r_t = E[sign D(real)]")
        if "ada_target" in cfg:
            ax2.axhline(cfg["ada_target"], color="C1", ls="--", lw=1, label="target of r_t")
        ax2.set_ylabel("r_t", color="C1")
        ax2.legend(fontsize=8, loc="lower right")
    ax.set_title("adaptive augmentation")
    fig.tight_layout()
    plt.close(fig)  # out of pyplot's registry: the notebook displays the returned figure once
    return fig


def plot_class_agreement(run_dir: str | os.PathLike):
    """How D's conditional head sees G's classes (``d_class_agreement``) and real images (``d_real_agreement``)
    per tick, with the relabellings of G's class embeddings marked; chance = 1 / number of classes."""
    import matplotlib.pyplot as plt

    path = runs.project_path(run_dir)
    stats = runs.Run(path).read_stats()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    kimg = [r["kimg"] for r in stats]
    for key, label in (("d_class_agreement", "G's images: asked-for class = D's nearest proxy"),
                       ("d_real_agreement", "real images: true class = D's nearest proxy")):
        ys = [r.get(key) for r in stats]
        if any(y is not None for y in ys):
            ax.plot(kimg, [float("nan") if y is None else 100 * y for y in ys], marker=".", label=label)
    metrics = runs.read_json(path / "metrics.json") if (path / "metrics.json").is_file() else {}
    classes = metrics.get("classes") or []
    if classes:
        ax.axhline(100 / len(classes), color="grey", ls=":", lw=1, label=f"chance ({100 / len(classes):.0f} %)")
    for r in stats:
        if r.get("class_realign"):
            ax.axvline(r["kimg"], color="C3", lw=1, alpha=0.6)
    if any(r.get("class_realign") for r in stats):
        ax.plot([], [], color="C3", label="class embeddings relabelled")
    ax.set_ylim(0, 102)
    ax.set_xlabel("kimg")
    ax.set_ylabel("agreement (%)")
    ax.set_title("class agreement seen by D")
    ax.legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_class_grid(run_dir: str | os.PathLike, which: str = "latest"):
    """The per-class grid of ``G_ema`` (``which='latest'``, a kimg value such as ``'12.0'``, or ``'reals'``)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    images = runs.project_path(run_dir) / "images"
    meta = runs.read_json(images / "grid.json")
    if which in ("latest", "reals"):
        path = images / ("grid-latest.png" if which == "latest" else "reals.png")
    else:
        path = images / f"grid-{float(which):09.3f}kimg.png"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such grid (run a snapshot first)")
    img = np.asarray(Image.open(path))
    res, pad, classes = meta["resolution"], meta["pad"], meta["classes"]
    fig, ax = plt.subplots(figsize=(min(16, 1.2 + img.shape[1] / 40), min(16, 0.6 + img.shape[0] / 40)))
    ax.imshow(img)
    ax.set_yticks([pad + i * (res + pad) + res / 2 for i in range(len(classes))])
    ax.set_yticklabels(classes)
    ax.set_xticks([])
    label = "real images" if which == "reals" else f"G_ema, {path.stem.removeprefix('grid-')}"
    ax.set_title(f"{label} (row = class)")
    fig.tight_layout()
    plt.close(fig)  # out of pyplot's registry: the notebook displays the returned figure once
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m histlib train-gan --config CFG.json --run-dir DIR [--resume | --restart]``."""
    parser.add_argument("--config", required=True, help="TrainConfig as JSON (fields of histlib.train_gan.TrainConfig)")
    parser.add_argument("--run-dir", required=True, help="run directory (created)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/latest.pt (required)")
    group.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    parser.add_argument("--profile", default=None, help="start from this profile's settings; the JSON overrides them")


def main(args: argparse.Namespace) -> int:
    """Runs :func:`train_gan` from the command line; prints the summary's main numbers."""
    from histlib.config import from_dict

    values = runs.read_json(args.config)
    if not isinstance(values, dict):
        raise ValueError(f"{args.config}: expected a JSON object of TrainConfig fields")
    profile = args.profile
    if "profile" in values:  # the JSON names its profile: start from that profile's settings too
        if profile and values["profile"] != profile:
            raise ValueError(f"{args.config}: profile {values['profile']!r} differs from --profile {profile!r}")
        profile = values.pop("profile")
    cfg = TrainConfig.from_profile(profile, **values) if profile else from_dict(TrainConfig, values)
    resume: bool | str = True if args.resume else (False if args.restart else "auto")
    summary = train_gan(cfg, args.run_dir, resume=resume)
    keys = ("kimg", "img_per_s", "loss_g", "loss_d", "augment_p", "wall_time_s")
    print(" ".join(f"{k}={summary.get(k)}" for k in keys))
    return 0
