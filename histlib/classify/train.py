"""Training one classifier run and a study's many: train sets x models x seeds, each in its own run directory.

One run trains one (train set, model, seed) and writes the contract run directory (docs/design.md):
``config.json`` (the ``ClassifyConfig``), ``env.json`` (versions, device, whether ImageNet weights were used),
``stats.jsonl`` (one line per epoch), ``metrics.json`` (accuracy, balanced accuracy, per-class recall, confusion
matrix on the validation split; flat keys) and ``checkpoints/best.pt`` (best epoch by validation balanced
accuracy). ``run_classifiers`` repeats that over train sets x models x seeds in independent run directories and
skips runs whose config matches a finished one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from histlib.classify.config import ClassifyConfig
from histlib.classify.data import IMAGENET_MEAN, IMAGENET_STD, build_train_set, build_val_set
from histlib.classify.evaluate import (
    amp_dtype,
    classification_metrics,
    evaluate_held_out,
    group_ids,
    predict,
    to_device,
)
from histlib.classify.sets import needs_synthetic, planned_runs, run_name, train_set_label
from histlib.classify.weights import create_classifier, load_classifier
from histlib.device import resolve_device
from histlib.progress import iterate
from histlib.progress import mode as progress_mode
from histlib.runs import Run, atomic_torch_save, config_hash


def _resolve_flag(value: str | bool, device: torch.device, name: str) -> bool:
    if value == "auto":
        return device.type == "cuda"
    if value and device.type != "cuda":
        raise ValueError(f"ClassifyConfig.{name}=true needs a CUDA device (the CPU path runs in fp32)")
    return bool(value)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow it so augmentation is reproducible
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norm weights and biases (1-D tensors), the usual practice for conv nets."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: ClassifyConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (with momentum) as configured."""
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def cosine_lr_factor(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """LR multiplier at optimiser step ``step``: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _loaders(cfg: ClassifyConfig, train_ds, val_ds, device: torch.device):
    if cfg.num_workers == "auto":
        workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
    else:
        workers = int(cfg.num_workers)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.balanced_sampling:
        from histlib.data.balanced_sampling import ClassBalancedSampler

        sampler = ClassBalancedSampler(train_ds.labels, num_samples=len(train_ds), seed=cfg.seed)
    else:
        sampler = torch.utils.data.RandomSampler(train_ds, generator=gen)
    common = {"num_workers": workers, "pin_memory": device.type == "cuda", "worker_init_fn": _seed_worker,
              "persistent_workers": workers > 0}
    # drop the ragged last batch (BatchNorm fails on a batch of one) unless that would leave no batch at all
    train = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, generator=gen,
                                        drop_last=len(train_ds) > cfg.batch_size, **common)
    val = torch.utils.data.DataLoader(val_ds, batch_size=2 * cfg.batch_size, shuffle=False, **common)
    return train, val, sampler, workers


@dataclass
class _Session:
    """One run's pieces, built before its first epoch (the model, data, optimiser and run directory)."""

    cfg: ClassifyConfig
    device: torch.device
    amp: bool
    channels_last: bool
    model: nn.Module
    weights: dict[str, Any]  # create_classifier's info: pretrained, weights_source, weights_file
    report: dict[str, Any]  # build_train_set's report: classes, counts, folders
    val_ds: Any
    run: Run
    train_loader: Any
    val_loader: Any
    sampler: Any
    workers: int
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    loss_fn: nn.Module
    step: int = 0

    @property
    def classes(self) -> list[str]:
        return self.report["classes"]


def _start(cfg: ClassifyConfig, run_dir: str | os.PathLike) -> _Session:
    """Device, seeds, data, model and optimiser of a run; the run directory is made once all of them are usable
    (bad input leaves no folder), with ``config.json`` and ``env.json`` written and stale results removed."""
    device = resolve_device(cfg.device, "ClassifyConfig.device")
    amp = _resolve_flag(cfg.amp, device, "amp")
    channels_last = _resolve_flag(cfg.channels_last, device, "channels_last")
    _seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    train_ds, report = build_train_set(cfg)
    classes = report["classes"]
    val_ds = build_val_set(cfg, classes)
    model, winfo = create_classifier(cfg.model, len(classes), cfg.pretrained, cfg.weights_file)
    run = Run(run_dir)
    for stale in (run.metrics_path, run.stats_path):
        stale.unlink(missing_ok=True)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run.write_config(cfg)
    run.write_env(device=str(device), pretrained=winfo["pretrained"], weights_source=winfo["weights_source"],
                  weights_file=winfo["weights_file"], amp=amp, amp_dtype=str(amp_dtype(device)) if amp else None,
                  channels_last=channels_last)

    train_loader, val_loader, sampler, workers = _loaders(cfg, train_ds, val_ds, device)
    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr_factor(s, total_steps, warmup_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype(device) == torch.float16)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    return _Session(cfg, device, amp, channels_last, model, winfo, report, val_ds, run, train_loader, val_loader,
                    sampler, workers, total_steps, optimizer, scheduler, scaler, loss_fn)


def _train_epoch(s: _Session, epoch: int, progress: bool) -> dict[str, float]:
    """One epoch of optimiser steps (fewer when ``total_steps`` is reached); its loss, accuracy and speed."""
    cfg = s.cfg
    if hasattr(s.sampler, "set_epoch"):
        s.sampler.set_epoch(epoch)
    s.model.train()
    t0 = time.perf_counter()
    loss_sum, correct, seen = 0.0, 0, 0
    bar = iterate(s.train_loader, desc=f"{cfg.model} epoch {epoch}/{cfg.epochs}", leave=False, disable=not progress)
    for x, y in bar:
        x, y = to_device(x, y, s.device, s.channels_last)
        with torch.autocast(device_type=s.device.type, dtype=amp_dtype(s.device), enabled=s.amp):
            logits = s.model(x)  # [B, K]
            loss = s.loss_fn(logits.float(), y)
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.scheduler.step()
        s.step += 1
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += len(y)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        if s.step >= s.total_steps:
            break
    train_time = time.perf_counter() - t0
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
            "epoch_time_s": train_time, "train_img_per_s": seen / max(train_time, 1e-9)}


def _save_best(s: _Session, epoch: int, m: dict[str, Any]) -> None:
    """``checkpoints/best.pt``: the model of this epoch with what is needed to load and use it."""
    cfg = s.cfg
    state = {k: v.detach().cpu().clone() for k, v in s.model.state_dict().items()}
    atomic_torch_save({
        "model_name": cfg.model, "num_classes": len(s.classes), "classes": s.classes,
        "image_size": cfg.image_size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "state_dict": state,
        "config": dataclasses.asdict(cfg), "pretrained": s.weights["pretrained"], "epoch": epoch, "step": s.step,
        "val_balanced_accuracy": m["balanced_accuracy"], "val_accuracy": m["accuracy"],
    }, s.run.checkpoints / "best.pt")


def _final_metrics(s: _Session, progress_info: dict[str, Any], t_begin: float) -> dict[str, Any]:
    """The ``metrics.json`` of a run, from the saved checkpoint, so it always describes ``best.pt``;
    ``progress_info``: the loop's epochs, steps and time, ``t_begin``: when the run started."""
    cfg = s.cfg
    best_model, _ = load_classifier(s.run.checkpoints / "best.pt", s.device)
    if s.channels_last:
        best_model = best_model.to(memory_format=torch.channels_last)
    y_true, y_pred, val_loss = predict(best_model, s.val_loader, s.device, s.amp, s.channels_last)
    m = classification_metrics(y_true, y_pred, s.classes)
    held_out = evaluate_held_out(cfg, best_model, s.classes, s.device, s.amp, s.channels_last)
    return {
        "model": cfg.model, "train_set": train_set_label(cfg.train_set, cfg.real_fraction), "seed": cfg.seed,
        "variant": cfg.variant, "pretrained": s.weights["pretrained"], "weights_source": s.weights["weights_source"],
        "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "val_loss": val_loss,
        "recall": m["recall"], "confusion_matrix": m["confusion_matrix"], "classes": s.classes,
        "n_val": int(len(y_true)), "val_per_class": s.val_ds.class_counts(),
        "val_y_true": y_true.tolist(), "val_y_pred": y_pred.tolist(), **group_ids("val_", s.val_ds), **held_out,
        **{k: v for k, v in s.report.items() if k != "classes"}, **progress_info,
        "total_time_s": time.perf_counter() - t_begin,
        "device": str(s.device), "amp": s.amp, "channels_last": s.channels_last,
        "num_workers": s.workers, "image_size": cfg.image_size, "config_hash": config_hash(cfg),
    }


def train_classifier(cfg: ClassifyConfig, run_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Trains one classifier and evaluates its best epoch on the validation split.

    Writes ``config.json``, ``env.json``, ``stats.jsonl`` (one line per epoch), ``checkpoints/best.pt``
    (``{model_name, num_classes, classes, image_size, mean, std, state_dict, config, pretrained, epoch, ...}``,
    written whenever validation balanced accuracy improves) and ``metrics.json`` (last, so its presence marks a
    finished run).

    Args:
        cfg: the run's settings.
        run_dir: the run directory (created; a previous ``stats.jsonl`` there is replaced).
        progress: show progress bars (``histlib.progress``).

    Returns:
        The metrics as written to ``metrics.json`` (flat keys: ``accuracy``, ``balanced_accuracy``,
        ``recall/<class>``, ``confusion_matrix``, ``pretrained``, counts, timings).
    """
    t_begin = time.perf_counter()
    s = _start(cfg, run_dir)
    label = train_set_label(cfg.train_set, cfg.real_fraction)
    best, best_epoch, stale_epochs, epochs_run, stopped_early = -1.0, 0, 0, 0, False
    t_start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        if s.step >= s.total_steps:
            break
        epochs_run = epoch
        train = _train_epoch(s, epoch, progress)
        y_true, y_pred, val_loss = predict(s.model, s.val_loader, s.device, s.amp, s.channels_last)
        m = classification_metrics(y_true, y_pred, s.classes)
        improved = m["balanced_accuracy"] > best
        if improved:
            best, best_epoch, stale_epochs = m["balanced_accuracy"], epoch, 0
            _save_best(s, epoch, m)
        else:
            stale_epochs += 1
        s.run.log_stats({
            "epoch": epoch, "step": s.step, "nimg": s.step * cfg.batch_size, "lr": s.optimizer.param_groups[0]["lr"],
            "train_loss": train["train_loss"], "train_accuracy": train["train_accuracy"],
            "val_loss": val_loss, "val_accuracy": m["accuracy"], "val_balanced_accuracy": m["balanced_accuracy"],
            "best": improved, "epoch_time_s": train["epoch_time_s"], "train_img_per_s": train["train_img_per_s"],
        })
        if progress and progress_mode() == "plain":  # one line per epoch in exported reports
            print(f"{cfg.model} {label}{f' ({cfg.variant})' if cfg.variant else ''} seed {cfg.seed}: epoch "
                  f"{epoch}/{cfg.epochs}, train loss {train['train_loss']:.3f}, val balanced accuracy "
                  f"{100 * m['balanced_accuracy']:.1f} %{' (best)' if improved else ''}", flush=True)
        if cfg.early_stopping_patience and stale_epochs >= cfg.early_stopping_patience:
            stopped_early = True
            break
    train_time_s = time.perf_counter() - t_start
    metrics = _final_metrics(s, {"best_epoch": best_epoch, "epochs_run": epochs_run, "steps": s.step,
                                 "stopped_early": stopped_early, "train_time_s": train_time_s}, t_begin)
    s.run.write_metrics(metrics)
    return s.run.read_metrics()


def run_classifiers(train_sets: list[str], models: list[str], seeds: list[int] | int, base_cfg: ClassifyConfig,
                    out_root: str | os.PathLike, progress: bool = True,
                    real_fractions: list[float] | tuple[float, ...] = (1.0,)) -> pd.DataFrame:
    """Trains every (train set, model) once per seed, each in ``<out_root>/<run_name(...)>/`` (the variant of
    ``base_cfg.variant`` is part of the name of synthetic runs).

    A run whose ``config.json`` hash matches its config and that has a ``metrics.json`` is skipped (its metrics
    are read back), so an interrupted study resumes where it stopped.

    Args:
        train_sets: e.g. ``['real', 'real+synthetic']``.
        models: timm names.
        seeds: seed list, or a count ``n`` meaning ``range(n)``.
        base_cfg: every other setting.
        out_root: parent folder of the run directories.
        progress: show progress bars.
        real_fractions: for ``train_set='real'``, the fractions of the real train split to train on (the
            real-data learning curve, nested by group; 1.0 is the full ``real`` run, which always runs).

    Returns:
        One row per run: ``train_set`` (``real@<f>`` for a fraction), ``model, seed, pretrained, accuracy,
        balanced_accuracy, n_train, best_epoch, train_time_s, skipped, run_dir``.
    """
    from histlib.progress import readable_warnings

    with readable_warnings():
        return pd.DataFrame(_run_all(planned_runs(train_sets, models, seeds, real_fractions), base_cfg, out_root,
                                     progress))


def _run_all(planned: list[tuple[str, float, str, int]], base_cfg: ClassifyConfig, out_root: str | os.PathLike,
             progress: bool) -> list[dict[str, Any]]:
    rows = []
    for ts, frac, model, seed in planned:
        cfg = dataclasses.replace(base_cfg, train_set=ts, model=model, seed=seed, real_fraction=frac)
        path = Path(out_root) / run_name(ts, model, seed, base_cfg.variant, frac)
        run = Run(path)
        skipped = run.is_finished(cfg)
        metrics = run.read_metrics() if skipped else train_classifier(cfg, path, progress=progress)
        rows.append({
            "train_set": train_set_label(ts, frac),
            "variant": base_cfg.variant if needs_synthetic(ts) else None, "model": model,
            "seed": seed, "pretrained": metrics.get("pretrained"),
            "accuracy": metrics["accuracy"], "balanced_accuracy": metrics["balanced_accuracy"],
            "test_accuracy": metrics.get("test_accuracy"),
            "test_balanced_accuracy": metrics.get("test_balanced_accuracy"),
            "n_train": metrics.get("n_train"), "best_epoch": metrics.get("best_epoch"),
            "train_time_s": metrics.get("train_time_s"), "skipped": skipped, "run_dir": str(path),
        })
    return rows


def summarize_runs(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of (val, and test when measured) accuracy and balanced accuracy per
    (train set, variant, model); the standard deviation is left empty for fewer than two seeds."""
    results = results.copy()
    if "variant" not in results:
        results["variant"] = None
    results["variant"] = results["variant"].fillna("")
    cols = [c for c in ("accuracy", "balanced_accuracy", "test_accuracy", "test_balanced_accuracy")
            if c in results and results[c].notna().any()]
    g = results.groupby(["train_set", "variant", "model"], sort=False)
    out = g[cols].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out["n_seeds"] = g.size()
    out["pretrained"] = g["pretrained"].agg(lambda s: bool(s.all()))
    return out.reset_index()
