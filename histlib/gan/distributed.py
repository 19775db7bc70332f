"""Data parallelism without DistributedDataParallel: process group, gradient averaging, shared streams.

Latents, fake labels, style-mixing cut-offs and path-length directions are drawn for the *global* batch from one
stream shared by all ranks (:class:`Latents`), and every rank takes its slice; real batches come from a restorable
stream whose order is a pure function of ``(seed, epoch)`` (:class:`BatchStream`); gradients are averaged with one
all-reduce of the flattened gradients per optimiser step (:func:`average_gradients`). So a run on W processes
follows the single-process run up to floating-point summation order. ``DistributedDataParallel`` is not used: its
gradient hooks are not meant for the ``autograd.grad(create_graph=True)`` double backward of R1 and path-length
regularisation, and its unused-parameter bookkeeping clashes with frozen layers and with separate G and D phases.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from histlib.data.balanced_sampling import ClassBalancedSampler
from histlib.device import rank_seed


@dataclass
class Dist:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    owned: bool = False  # this module initialised the process group (and destroys it at the end)

    @property
    def active(self) -> bool:
        return self.world > 1


def setup_distributed(device_type: str) -> Dist:
    """Joins the process group of a ``torchrun`` launch (``WORLD_SIZE`` > 1), or a group set up by the caller."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        return Dist(dist.get_rank(), dist.get_world_size(), True)
    return Dist()


def average_gradients(params: list[torch.nn.Parameter], dist_info: Dist) -> None:
    """All-reduces the gradients of ``params`` (one flattened tensor) and divides by the world size."""
    if not dist_info.active:
        return
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


def all_mean(x: torch.Tensor, dist_info: Dist) -> torch.Tensor:
    """The mean of ``x`` over processes (``x`` itself with one process)."""
    if not dist_info.active:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist_info.world


def gather_objects(obj: Any, dist_info: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not dist_info.active:
        return [obj]
    out: list[Any] = [None] * dist_info.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, dist_info: Dist) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not dist_info.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class BatchStream:
    """Global batches of dataset indices, epoch by epoch; every rank loads its slice of each batch.

    The order of epoch ``e`` is a pure function of ``(seed, e)`` (class-balanced draws, or a permutation), so the
    position ``(epoch, pos)`` is all a checkpoint needs to continue the same sequence, whatever the worker count.
    """

    def __init__(self, dataset, batch_size: int, seed: int, balanced: bool, dist_info: Dist, num_workers: int,
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
        gen = torch.Generator().manual_seed(rank_seed(self.seed * 1_000_003 + self.epoch, 2))
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


def device_randn(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """Standard normal noise of a global shape, the same on every rank (a fresh generator seeded from the stream)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return torch.randn(shape, generator=gen, device=device)


class Latents:
    """The shared stream of latents, fake labels, mixing cut-offs and seeds, drawn for the global batch."""

    def __init__(self, seed: int, z_dim: int, num_classes: int, class_probs: np.ndarray | None, dist_info: Dist,
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
