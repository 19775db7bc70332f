"""The fine-tuning report of notebook 03: what a fine-tuning run loaded, skipped, re-initialised and froze, and how
it started its new classes (``finetune.json``, written by ``histlib.gan.launch.train_gan``). Re-exported by
:mod:`histlib.analysis`."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from histlib import runs

TRANSFER_STATUSES = ("loaded", "skipped", "reinitialised", "frozen")


def _finetune_json(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = runs.project_path(run_dir) / "finetune.json"
    return runs.read_json(path) if path.is_file() else None


def transfer_summary(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Per network (G, D, G_ema): how many tensors were loaded, skipped, re-initialised and frozen.

    Reads ``<run_dir>/finetune.json``. A run trained from scratch without freezing has none: the frame is empty.
    """
    info = _finetune_json(run_dir)
    if info is None:
        return pd.DataFrame(columns=list(TRANSFER_STATUSES))
    rows = {}
    for net in ("G", "D", "G_ema"):
        report = info.get(net) or {}
        frozen = (info.get("frozen") or {}).get("G" if net == "G_ema" else net, [])
        rows[net] = {s: len(report.get(s, [])) for s in TRANSFER_STATUSES[:3]} | {"frozen": len(frozen)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "network"
    table.attrs.update(resume_from=info.get("resume_from"), base_classes=info.get("base_classes"),
                       classes=info.get("classes"))
    return table


def class_init_table(run_dir: str | os.PathLike) -> pd.DataFrame:
    """How a fine-tuning run started its new classes (``finetune.json``): per target class the method, the base
    class it started from and the similarity of the two in the base discriminator's embedding; the relabellings
    during training (``metrics.json``) are in ``attrs['realignments']``. Empty when the classes were loaded."""
    info = _finetune_json(run_dir) or {}
    init = info.get("class_init") or {}
    classes = info.get("classes") or []
    if not init or init.get("method") == "loaded":
        return pd.DataFrame(columns=["method", "started from base class", "similarity"])
    rows = {}
    matched = init.get("matched_base_class") or {}
    sims = init.get("similarity")
    for i, c in enumerate(classes):
        j = (init.get("match") or [None] * len(classes))[i]
        rows[c] = {"method": init["method"], "started from base class": matched.get(c, "—"),
                   "similarity": round(float(sims[i][j]), 3) if sims is not None and j is not None else math.nan}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "target class"
    metrics = runs.project_path(run_dir) / "metrics.json"
    table.attrs["realignments"] = (runs.read_json(metrics).get("class_realignments") if metrics.is_file() else None)
    return table


def transfer_tensors(run_dir: str | os.PathLike, statuses: Sequence[str] = ("skipped", "reinitialised", "frozen"),
                     ) -> pd.DataFrame:
    """One row per (network, tensor, status) of a fine-tuning run, for the statuses asked for.

    ``frozen`` is listed for G and D (G_ema's copies of G's frozen tensors are frozen with them).
    """
    info = _finetune_json(run_dir) or {}
    rows = []
    for net in ("G", "D", "G_ema"):
        report = info.get(net) or {}
        for status in statuses:
            names = (info.get("frozen") or {}).get(net, []) if status == "frozen" else report.get(status, [])
            rows.extend({"network": net, "tensor": n, "status": status} for n in names)
    return pd.DataFrame(rows, columns=["network", "tensor", "status"])


