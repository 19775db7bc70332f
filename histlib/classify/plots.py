"""Plots of classifier runs: learning curves from ``stats.jsonl`` and confusion matrices from ``metrics.json``.

Every function returns a matplotlib ``Figure`` (closed for pyplot, so a notebook shows it once, as the cell's value).
Runs are given as run directories, or as the table returned by ``histlib.classify.run_classifiers`` (its
``run_dir`` column).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from histlib.runs import read_json, read_jsonl

RunsLike = Any  # a DataFrame with a ``run_dir`` column, one run directory, or an iterable of them


def _run_dirs(runs: RunsLike) -> list[Path]:
    if hasattr(runs, "columns"):
        if "run_dir" not in runs.columns:
            raise ValueError(f"runs: a table needs a 'run_dir' column, got columns {list(runs.columns)}")
        return [Path(p) for p in runs["run_dir"]]
    if isinstance(runs, (str, os.PathLike)):
        return [Path(runs)]
    if isinstance(runs, Iterable):
        return [Path(p) for p in runs]
    raise TypeError(f"runs: expected a DataFrame with 'run_dir', a run directory or a list of them, got {type(runs)}")


def plot_learning_curves(runs: RunsLike, figsize: tuple[float, float] | None = None):
    """Training/validation loss, validation accuracy and validation balanced accuracy per epoch.

    Args:
        runs: run directories (each with ``stats.jsonl``) or the ``run_classifiers`` table.
        figsize: figure size in inches (default scales with the panels).

    Returns:
        A ``Figure`` with three panels; one colour per run (solid: train loss, dashed: validation loss).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    dirs = _run_dirs(runs)
    fig, axes = plt.subplots(1, 3, figsize=figsize or (15, 4), constrained_layout=True)
    colors = plt.get_cmap("tab10")
    for i, d in enumerate(dirs):
        stats_path = d / "stats.jsonl"
        if not stats_path.is_file():
            raise FileNotFoundError(f"{stats_path}: no stats.jsonl (has the run started?)")
        stats = read_jsonl(stats_path)
        if not stats:
            continue
        ep = [s["epoch"] for s in stats]
        c = colors(i % 10)
        axes[0].plot(ep, [s["train_loss"] for s in stats], color=c, label=f"{d.name} train")
        axes[0].plot(ep, [s["val_loss"] for s in stats], color=c, ls="--", label=f"{d.name} val")
        axes[1].plot(ep, [100 * s["val_accuracy"] for s in stats], color=c, marker="o", ms=3, label=d.name)
        axes[2].plot(ep, [100 * s["val_balanced_accuracy"] for s in stats], color=c, marker="o", ms=3, label=d.name)
        best = [s for s in stats if s.get("best")]
        if best:
            axes[2].plot(best[-1]["epoch"], 100 * best[-1]["val_balanced_accuracy"], marker="*", ms=12, color=c)
    for ax, title in zip(axes, ("cross-entropy loss", "validation accuracy (%)",
                                "validation balanced accuracy (%, ★ best)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[1].set_ylim(0, 102)
    axes[2].set_ylim(0, 102)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7, loc="lower right")
    plt.close(fig)
    return fig


def confusion_from_metrics(metrics: dict[str, Any], prefix: str = "") -> tuple[np.ndarray, list[str]]:
    """``(matrix [K, K], classes)`` from a flat ``metrics.json`` dict (rows: true class, columns: predicted);
    ``prefix='test_'`` for the held-out test split's."""
    key = f"{prefix}confusion_matrix"
    if key not in metrics or "classes" not in metrics:
        raise ValueError(f"metrics: needs {key!r} and 'classes' (a classifier metrics.json)")
    return np.asarray(metrics[key], dtype=np.int64), list(metrics["classes"])


def _split_prefix(metrics: dict[str, Any], split: str) -> str:
    if split not in ("auto", "test", "val"):
        raise ValueError(f"split={split!r}: expected 'auto' (test when measured, else validation), 'test' or 'val'")
    if split == "test" and "test_confusion_matrix" not in metrics:
        raise ValueError("split='test': this run has no test split (prepare --test-fraction)")
    return "test_" if split != "val" and "test_confusion_matrix" in metrics else ""


def plot_confusion_matrix(run_or_metrics: str | os.PathLike | dict[str, Any], normalize: bool = True, ax=None,
                          title: str | None = None, split: str = "auto"):
    """A seaborn heatmap of one run's confusion matrix, on the held-out test split when it was measured.

    Args:
        run_or_metrics: a run directory (reads its ``metrics.json``) or a metrics dict.
        normalize: show each row as fractions of the true class (its recall on the diagonal); counts otherwise.
        ax: draw into this axes instead of a new figure.
        title: axes title (default: the run directory name, the split and its balanced accuracy there).
        split: ``'auto'`` (test when measured, else validation, which chose the checkpoint), ``'test'`` or ``'val'``.

    Returns:
        The ``Figure`` holding the heatmap.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if isinstance(run_or_metrics, dict):
        metrics, name = run_or_metrics, ""
    else:
        metrics, name = read_json(Path(run_or_metrics) / "metrics.json"), Path(run_or_metrics).name
    prefix = _split_prefix(metrics, split)
    cm, classes = confusion_from_metrics(metrics, prefix)
    if ax is None:
        k = len(classes)
        fig, ax = plt.subplots(figsize=(1.0 + 0.7 * k, 0.6 + 0.6 * k), constrained_layout=True)
        plt.close(fig)
    else:
        fig = ax.figure
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        data = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
        sns.heatmap(data, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="Blues", cbar=False, ax=ax,
                    xticklabels=classes, yticklabels=classes, square=True)
    else:
        sns.heatmap(cm, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax, xticklabels=classes,
                    yticklabels=classes, square=True)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title is None:
        bal = metrics.get(f"{prefix}balanced_accuracy")
        where = "test" if prefix else "validation"
        title = f"{name}\n{where}: bal. acc {100 * bal:.1f} %" if bal is not None else f"{name} ({where})"
    ax.set_title(title, fontsize=9)
    return fig


def plot_confusion_matrices(runs: RunsLike, normalize: bool = True, ncols: int = 3, split: str = "auto"):
    """One confusion-matrix heatmap per run, in a grid (test split when measured; each title says which split).

    Args:
        runs: run directories or the ``run_classifiers`` table.
        normalize: row-normalised fractions (True) or counts.
        ncols: panels per row.
        split: ``'auto'``, ``'test'`` or ``'val'`` (see :func:`plot_confusion_matrix`).
    """
    import matplotlib.pyplot as plt

    dirs = _run_dirs(runs)
    if not dirs:
        raise ValueError("runs: no run directories given")
    k = len(read_json(dirs[0] / "metrics.json").get("classes", [])) or 3
    ncols = max(1, min(ncols, len(dirs)))
    nrows = math.ceil(len(dirs) / ncols)
    side = 1.5 + 0.6 * k
    fig, axes = plt.subplots(nrows, ncols, figsize=(side * ncols, side * nrows), constrained_layout=True,
                             squeeze=False)
    for ax, d in zip(axes.flat, dirs):
        plot_confusion_matrix(d, normalize=normalize, ax=ax, split=split)
    for ax in list(axes.flat)[len(dirs):]:
        ax.set_visible(False)
    plt.close(fig)
    return fig
