"""Metric hooks run during training (FID and friends every ``metrics_every_kimg``) and the early-stopping rule fed
by them."""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from histlib import runs
from histlib.gan.config import TrainConfig
from histlib.metrics import EarlyStopping, GanMetricsHook
from histlib.metrics.training_hook import default_generate


def _generate_for_metrics(G: torch.nn.Module, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The metrics hook's generator call: its labels come one-hot ``[N, K]``, the generator takes indices ``[N]``."""
    return default_generate(G, z, c.argmax(dim=1) if c.ndim == 2 else c)


def metrics_hooks(cfg: TrainConfig, fid_extractor: str = "inception", prdc_extractor: str | None = "vgg16",
                  num_fake: int = 5000, max_real: int = 10000, split: str | None = None) -> list[Callable]:
    """The periodic GAN metrics of a run: ``[GanMetricsHook]`` every ``cfg.metrics_every_kimg``, or ``[]``.

    FID / precision / recall / density / coverage of ``G_ema`` against a fixed real subset of ``cfg.data_dir``
    (``split``, default: the training split ``cfg.split``) resized to ``cfg.resolution``, with fixed latents and
    balanced labels. Pass the
    result as ``train_gan(..., hooks=...)``; with ``cfg.early_stop_patience`` training stops when FID stops
    improving and ``checkpoints/best.pt`` keeps the best generator.
    """
    if not cfg.metrics_every_kimg:
        return []
    hook = GanMetricsHook.from_dataset(
        runs.project_path(cfg.data_dir), fid_extractor=fid_extractor, prdc_extractor=prdc_extractor,
        split=cfg.split if split is None else split, max_real=max_real, num_fake=num_fake,
        every_kimg=cfg.metrics_every_kimg, seed=cfg.seed, generate=_generate_for_metrics,
        resolution=cfg.resolution)  # reals at the generator's size, as the generate stage compares them
    return [hook]


def call_hook(hook: Callable, G_ema: torch.nn.Module, cur_nimg: int, final: bool) -> dict[str, float]:
    """``hook(G_ema, cur_nimg)``; at the end of training with ``force=True`` when the hook takes it (a hook with its
    own schedule then still reports the final generator)."""
    kwargs = {}
    if final:
        with contextlib.suppress(TypeError, ValueError):
            if "force" in inspect.signature(hook).parameters:
                kwargs["force"] = True
    return {str(k): float(v) for k, v in (hook(G_ema, cur_nimg, **kwargs) or {}).items()}


def update_early_stopping(early_stopping: Any, metrics: dict[str, float], best: dict[str, Any],
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


def early_stopping_rule(cfg: TrainConfig, given: Any = None) -> Any:
    """The rule fed the hooks' results: ``given``, else ``EarlyStopping(cfg.early_stop_metric, patience, mode)`` when
    ``cfg.early_stop_patience`` is set (mode 'min' for FID, else 'max'), else None."""
    if given is not None or not cfg.early_stop_patience:
        return given
    mode = "min" if cfg.early_stop_metric.split("/")[0] == "fid" else "max"
    return EarlyStopping(cfg.early_stop_metric, cfg.early_stop_patience, mode)
