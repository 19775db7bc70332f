"""Evaluation of a classifier: its predictions, the metrics of a split, and the held-out sets nothing was tuned on.

``metrics.json`` keys (flat): ``accuracy``, ``balanced_accuracy``, ``recall/<class>``, ``confusion_matrix`` on the
validation split; ``test_*`` on the real set's test split; ``extra/<name>/*`` on each extra test set; beside each,
the predictions and the groups of the evaluated images (the analysis resamples groups for its intervals).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from histlib.classify.config import ClassifyConfig
from histlib.classify.data import eval_transform


def classification_metrics(y_true, y_pred, classes: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall and confusion matrix (scikit-learn).

    Args:
        y_true, y_pred: integer labels ``[N]``.
        classes: class names in label order (every label in ``range(len(classes))``).

    Returns:
        ``{"accuracy", "balanced_accuracy", "recall": {class: r}, "confusion_matrix": [[...]] (rows = true,
        columns = predicted), "classes"}``. Balanced accuracy averages recall over the classes present in
        ``y_true``; the recall of a class absent from ``y_true`` is reported as None.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, recall_score

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    labels = list(range(len(classes)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*y_pred contains classes not in y_true.*")
        bal = float(balanced_accuracy_score(y_true, y_pred))
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    present = np.bincount(y_true, minlength=len(classes)) > 0
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": bal,
        "recall": {c: (float(r) if p else None) for c, r, p in zip(classes, recall, present)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": list(classes),
    }


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, amp: bool = False,
            channels_last: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels, predictions and mean cross-entropy of ``model`` over ``loader``.

    Returns:
        ``(y_true [N], y_pred [N], mean loss)``.
    """
    model.eval()
    ys, ps, loss_sum, n = [], [], 0.0, 0
    for x, y in loader:
        x, y = to_device(x, y, device, channels_last)
        with torch.autocast(device_type=device.type, dtype=amp_dtype(device), enabled=amp):
            logits = model(x)  # [B, K]
        loss_sum += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
        n += len(y)
        ys.append(y.cpu())
        ps.append(logits.argmax(1).cpu())
    return torch.cat(ys).numpy(), torch.cat(ps).numpy(), loss_sum / max(n, 1)


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on the device: images ``[B, 3, S, S]`` (channels-last when asked), labels ``[B]``."""
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def amp_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _held_out_loader(root: Path, split: str | None, classes: list[str], cfg: ClassifyConfig, device: torch.device):
    from histlib.data.dataset import ImageDataset

    ds = ImageDataset(root, split=split, transform=eval_transform(cfg.image_size), classes=classes,
                      subset_of_classes=True)
    return torch.utils.data.DataLoader(ds, batch_size=2 * cfg.batch_size, shuffle=False,
                                       pin_memory=device.type == "cuda")


def group_ids(prefix: str, dataset) -> dict[str, Any]:
    """``{prefix}groups``: each evaluated image's group (the manifest's ``group`` column: source image, slide,
    cluster …) as an integer code in order of first appearance, beside the predictions in the same order, and
    ``{prefix}n_groups``; the analysis resamples these groups, not single patches, for its intervals."""
    codes, uniques = pd.factorize(dataset.manifest["group"].astype(str), sort=False)
    return {f"{prefix}groups": codes.tolist(), f"{prefix}n_groups": int(len(uniques))}


def _prefixed(prefix: str, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], dataset) -> dict[str, Any]:
    m = classification_metrics(y_true, y_pred, classes)
    return {f"{prefix}accuracy": m["accuracy"], f"{prefix}balanced_accuracy": m["balanced_accuracy"],
            f"{prefix}recall": m["recall"], f"{prefix}confusion_matrix": m["confusion_matrix"],
            f"{prefix}n": int(len(y_true)), f"{prefix}y_true": y_true.tolist(), f"{prefix}y_pred": y_pred.tolist(),
            **group_ids(prefix, dataset)}


def evaluate_held_out(cfg: ClassifyConfig, model: nn.Module, classes: list[str], device: torch.device,
                      amp: bool = False, channels_last: bool = False) -> dict[str, Any]:
    """The chosen checkpoint on data nothing was tuned on: the real set's ``test_split`` (keys ``test_*``) when its
    manifest has one, and every ``extra_test_sets`` entry (keys ``extra/<name>/*``; balanced accuracy over the
    classes the set holds)."""
    from histlib.data.dataset import load_manifest

    out: dict[str, Any] = {}
    if cfg.test_split and cfg.test_split in set(load_manifest(Path(cfg.real_dir))["split"]):
        loader = _held_out_loader(Path(cfg.real_dir), cfg.test_split, classes, cfg, device)
        y_true, y_pred, _ = predict(model, loader, device, amp, channels_last)
        out.update(_prefixed("test_", y_true, y_pred, classes, loader.dataset))
        out["test_split"] = cfg.test_split
    for name, folder in cfg.extra_test_sets.items():
        from histlib.runs import project_path

        root = project_path(folder)
        try:
            loader = _held_out_loader(root, None, classes, cfg, device)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"ClassifyConfig.extra_test_sets[{name!r}]: {e}") from None
        y_true, y_pred, _ = predict(model, loader, device, amp, channels_last)
        out.update(_prefixed(f"extra/{name}/", y_true, y_pred, classes, loader.dataset))
    return out

