"""The one checkpoint format of the GAN stage: what a run saves and how it is read back.

A checkpoint is a dict of plain tensors and Python objects (``torch.load(weights_only=True)`` reads it; no pickled
code): ``format`` (:data:`CHECKPOINT_FORMAT`), ``G``, ``D``, ``G_ema`` (state dicts), ``network_kwargs`` (to rebuild
them), ``classes``, ``config``, ``cur_nimg``, ``tick``, ``step``, ``frozen``, ``finetune``, ``realignments``; a
*full* checkpoint (``checkpoints/latest.pt``) adds everything exact resume needs: both optimisers, the path-length
mean, the augmentation pipe and ADA controller, the data position, the latent stream and the random states of every
rank, the early-stopping and hook states, the best metrics so far.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from histlib import runs
from histlib.gan.config import RESUME_MUTABLE_FIELDS, TrainConfig
from histlib.gan.networks import Discriminator, Generator

CHECKPOINT_FORMAT = "histlib.train_gan/1"  # named before the stage became histlib.gan; kept so old checkpoints load


def find_checkpoint(path: str | os.PathLike) -> Path:
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
    p = find_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which and why
        raise ValueError(f"{p}: cannot read checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{p}: not a histlib GAN checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    if ckpt.get("classes") is not None:  # data only, but editable: generated images go to folders named by them
        runs.check_names(ckpt["classes"], p)
    ckpt["path"] = str(p)
    return ckpt


def build_networks(net_kwargs: dict[str, Any], device: torch.device | str = "cpu") -> tuple[Generator, Discriminator]:
    """``(G, D)`` from the constructor arguments a checkpoint records (``network_kwargs``)."""
    return Generator(**net_kwargs["G"]).to(device), Discriminator(**net_kwargs["D"]).to(device)


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
    ckpt = load_checkpoint(path)
    kwargs = ckpt["network_kwargs"]["G"]
    G = Generator(**kwargs)
    G.load_state_dict(ckpt[which])
    G = G.to(device).eval().requires_grad_(False)
    info = {k: ckpt.get(k) for k in ("classes", "cur_nimg", "config", "network_kwargs", "path")}
    info["resolution"] = kwargs.get("img_resolution")
    return G, info


def checkpoint_dict(state, full: bool, rng_all: list[dict[str, Any]] | None = None, hooks: list | None = None,
                    early_stopping: Any = None, data: dict[str, int] | None = None) -> dict[str, Any]:
    """The checkpoint of a :class:`~histlib.gan.state.TrainState` (full: with everything exact resume needs)."""
    obj = {"format": CHECKPOINT_FORMAT, "G": state.G.state_dict(), "D": state.D.state_dict(),
           "G_ema": state.G_ema.state_dict(), "cur_nimg": state.cur_nimg, "tick": state.tick, "step": state.step,
           "classes": state.classes, "network_kwargs": state.net_kwargs, "config": dataclasses.asdict(state.cfg),
           "frozen": state.frozen, "finetune": state.finetune, "realignments": state.realignments}
    if full:
        obj.update({
            "opt_G": state.opt_G.state_dict(), "opt_D": state.opt_D.state_dict(), "pl_reg": state.pl_reg.state_dict(),
            "augment_pipe": None if state.augment_pipe is None else state.augment_pipe.state_dict(),
            "ada": None if state.ada is None else state.ada.state_dict(), "data": data,
            "latent_rng": state.latents.gen.get_state(), "rng": rng_all, "best": state.best,
            "next_metrics_nimg": state.next_metrics_nimg, "train_time": state.train_time,
            "early_stopping": early_stopping.state_dict() if hasattr(early_stopping, "state_dict") else None,
            "stopped_early": state.stopped_early,
            "hooks": [h.state_dict() if hasattr(h, "state_dict") else None for h in hooks or []],
        })
    return obj


def check_resume_config(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Raises unless ``cfg`` computes what the checkpoint's config did. A field the checkpoint predates counts as its
    default (fields are added with the default that keeps the old behaviour)."""
    current = dataclasses.asdict(cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    saved = {**defaults, **saved}
    diff = sorted(k for k in set(saved) | set(current)
                  if k not in RESUME_MUTABLE_FIELDS and _plain(saved.get(k)) != _plain(current.get(k)))
    if diff:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}" for k in diff)
        raise ValueError(f"{path}: cannot resume, the config differs ({detail}); use another run directory, "
                         f"resume=False to start over, or resume_from=... to fine-tune from it")


def _plain(v: Any) -> Any:
    return json.loads(json.dumps(v))

