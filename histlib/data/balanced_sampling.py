"""Class-balanced sampling: every draw picks a class uniformly, then an item uniformly within that class.

Used by the GAN and classifier loaders for heavily imbalanced targets (PATH-DT-MSU). Draws are with replacement,
so a rare class is repeated and a common one subsampled; the sequence depends only on ``(seed, epoch)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


def _class_members(labels) -> list[np.ndarray]:
    """Index arrays of the non-empty classes, in label order."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels: expected a non-empty 1-D sequence of class ids, got shape {labels.shape}")
    return [np.flatnonzero(labels == c) for c in np.unique(labels)]


def _balanced_draw(members: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices: class uniform over ``members``, then item uniform within the class."""
    cls = rng.integers(0, len(members), size=n)  # [n]
    sizes = np.array([len(m) for m in members])
    within = np.floor(rng.random(n) * sizes[cls]).astype(np.int64)  # [n], uniform in [0, size)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat = np.concatenate(members)
    return flat[offsets[cls] + within]


class ClassBalancedSampler(torch.utils.data.Sampler[int]):
    """Yields dataset indices so that each class is drawn with equal probability.

    Args:
        labels: class id of every item ``[N]`` (e.g. ``ImageDataset.labels``).
        num_samples: draws per epoch; default ``len(labels)``.
        seed: base seed; call ``set_epoch`` each epoch for a fresh (still reproducible) order.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, num_samples: int | None = None, seed: int = 0):
        self.members = _class_members(labels)
        self.num_samples = len(np.asarray(labels)) if num_samples is None else int(num_samples)
        if self.num_samples <= 0:
            raise ValueError(f"num_samples={num_samples}: expected a positive integer")
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the draw sequence of this epoch (deterministic for ``(seed, epoch)``)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        return iter(_balanced_draw(self.members, self.num_samples, rng).tolist())

    def __len__(self) -> int:
        return self.num_samples


def infinite_balanced_indices(labels: Sequence[int] | np.ndarray, seed: int = 0, chunk: int = 4096) -> Iterator[int]:
    """An endless stream of class-balanced indices (for GAN training, which counts images, not epochs).

    Args:
        labels: class id of every item ``[N]``.
        seed: the stream is a function of ``seed`` only.
        chunk: indices drawn per numpy call (does not change the stream's distribution).
    """
    members = _class_members(labels)
    rng = np.random.default_rng([int(seed), 0x5EED])
    while True:
        yield from _balanced_draw(members, chunk, rng).tolist()
