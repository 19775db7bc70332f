"""Devices, seeds and random states: the few rules every stage shares.

``resolve_device`` turns ``'auto'`` / ``'cpu'`` / ``'cuda'`` / ``'cuda:N'`` into a device and refuses CUDA where
there is none, naming the setting; the random-state helpers capture and restore the global generators of a process
as plain objects (loadable with ``torch.load(weights_only=True)``) for exact resume.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def resolve_device(device: str | torch.device | None, what: str = "device") -> torch.device:
    """``'auto'`` (or None) → CUDA when available, else CPU; ``'cuda'`` under torchrun → this process's
    ``LOCAL_RANK`` GPU.

    Raises:
        ValueError: CUDA asked for on a machine without it; ``what`` names the setting.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{what}={device!r}: CUDA is not available on this machine")
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return torch.device(device)


def seed_all(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """A seed for process ``rank`` derived from ``seed`` (independent streams per rank)."""
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global random states of this process as plain objects."""
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


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restores what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    npk = state["numpy"]
    np.random.set_state(("MT19937", npk["key"].numpy().astype(np.uint32), npk["pos"], npk["has_gauss"],
                         npk["cached_gaussian"]))
    random.setstate(_to_tuple(state["python"]))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def forked_rng(device: torch.device) -> Iterator[None]:
    """Runs a block (grids, metric hooks, checks) without consuming the global random streams."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
