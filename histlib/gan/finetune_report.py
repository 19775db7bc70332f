"""``finetune.json``, the record of how a fine-tuning run started: what writes it and everything that reads it.

A run that loads a base checkpoint (``TrainConfig.resume_from``) or freezes blocks writes ``<run_dir>/finetune.json``
when it starts (:func:`write_finetune_report`, through :class:`histlib.gan.transfer.TransferHook`): the base
checkpoint and its sha256, the base's classes and the run's, per network the tensors loaded, skipped and
re-initialised, the frozen tensors, and how new classes started (``class_init``). It is read back by notebook 03's
views (:func:`transfer_summary`, :func:`transfer_tensors`, :func:`class_init_table`, :func:`frozen_tensor_check`) and
by the study's index page (:mod:`histlib.report_gan`), all through :func:`read_finetune_report`.

Importing this module imports neither torch nor the networks, so the study runner builds its index page without
them; only :func:`frozen_tensor_check`, which compares checkpoints, loads them.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from histlib import runs

FINETUNE_JSON = "finetune.json"
TRANSFER_STATUSES = ("loaded", "skipped", "reinitialised", "frozen")
_CHECK_COLUMNS = ["network", "group", "tensors", "unchanged", "max_abs_change"]


# ----------------------------------------------------------------------------------------------------------------
# Writing


def finetune_report(finetune: dict[str, Any] | None, frozen: dict[str, list[str]]) -> dict[str, Any]:
    """``finetune.json``: what was loaded, skipped, re-initialised and frozen (names and counts).

    Args:
        finetune: the fine-tuning record of :func:`histlib.gan.transfer.apply_base` (None: no base was loaded).
        frozen: ``{'G': [...], 'D': [...]}``, the frozen parameters' names.
    """
    out: dict[str, Any] = {"frozen": frozen, "num_frozen": {k: len(v) for k, v in frozen.items()}}
    if finetune:
        out.update({k: v for k, v in finetune.items() if k not in ("G", "D", "G_ema")})
        for net in ("G", "D", "G_ema"):
            report = finetune.get(net) or {}
            out[net] = {k: list(v) for k, v in report.items()}
            out[f"num_{net}"] = {k: len(v) for k, v in report.items()}
    return out


def write_finetune_report(run_dir: str | os.PathLike, finetune: dict[str, Any] | None,
                          frozen: dict[str, list[str]]) -> None:
    """Writes ``<run_dir>/finetune.json`` for a run that loads a base or freezes blocks; removes an earlier run's
    otherwise (it would be mistaken for this run's)."""
    path = Path(run_dir) / FINETUNE_JSON
    if finetune is not None or frozen["G"] or frozen["D"]:
        runs.write_json(path, finetune_report(finetune, frozen))
    else:
        path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------------
# Reading


def read_finetune_report(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``<run_dir>/finetune.json`` as written, or None when the run has none (trained from scratch, nothing frozen).

    ``run_dir`` is resolved against the project root when relative.
    """
    path = runs.project_path(run_dir) / FINETUNE_JSON
    return runs.read_json(path) if path.is_file() else None


def transfer_summary(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Per network (G, D, G_ema): how many tensors were loaded, skipped, re-initialised and frozen.

    Reads ``<run_dir>/finetune.json``. A run trained from scratch without freezing has none: the frame is empty.
    """
    info = read_finetune_report(run_dir)
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
    class it started from, whether that start was ``set`` by hand (``TrainConfig.class_map``) or ``matched`` by
    similarity, and the similarity of the two in the base discriminator's embedding; the relabellings
    during training (``metrics.json``) are in ``attrs['realignments']``. Empty when the classes were loaded."""
    info = read_finetune_report(run_dir) or {}
    init = info.get("class_init") or {}
    classes = info.get("classes") or []
    if not init or init.get("method") == "loaded":
        return pd.DataFrame(columns=["method", "started from base class", "how", "similarity"])
    rows = {}
    set_by_hand = set(init.get("set_by_hand") or [])
    matched = init.get("matched_base_class") or {}
    sims = init.get("similarity")
    for i, c in enumerate(classes):
        j = (init.get("match") or [None] * len(classes))[i]
        rows[c] = {"method": init["method"], "started from base class": matched.get(c, "—"),
                   "how": ("set" if c in set_by_hand else "matched") if init["method"] == "match" else "—",
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
    info = read_finetune_report(run_dir) or {}
    rows = []
    for net in ("G", "D", "G_ema"):
        report = info.get(net) or {}
        for status in statuses:
            names = (info.get("frozen") or {}).get(net, []) if status == "frozen" else report.get(status, [])
            rows.extend({"network": net, "tensor": n, "status": status} for n in names)
    return pd.DataFrame(rows, columns=["network", "tensor", "status"])


def frozen_tensor_check(run_dir: str | os.PathLike, checkpoint: str = "latest.pt") -> pd.DataFrame:
    """Compares a fine-tuned checkpoint with the base it started from: frozen tensors must be bit-identical.

    Args:
        run_dir: the fine-tuning run (its ``finetune.json`` names the base checkpoint and the frozen tensors).
        checkpoint: file under ``<run_dir>/checkpoints/``.

    Returns:
        Per network and group (``frozen`` / ``trainable``, i.e. loaded and not frozen): ``tensors``,
        ``unchanged`` (bit-identical to the base) and ``max_abs_change``. Empty when the run has no base.
    """
    info = read_finetune_report(run_dir)
    if not info or not info.get("resume_from"):
        return pd.DataFrame(columns=_CHECK_COLUMNS)
    recorded = info.get("resume_from_sha256")
    if recorded and runs.file_sha256(info["resume_from"]) != recorded:
        # the base run went on (or was retrained) after this fine-tune started: comparing would be meaningless
        warnings.warn(f"{info['resume_from']}: changed since {run_dir} was fine-tuned from it (sha256 differs); "
                      "frozen tensors cannot be checked against it", stacklevel=2)
        return pd.DataFrame(columns=_CHECK_COLUMNS)
    import torch  # only here: the readers above stay importable without torch (the index page)

    from histlib.gan.checkpoint import load_checkpoint

    base = load_checkpoint(info["resume_from"])
    tuned = load_checkpoint(runs.project_path(run_dir) / "checkpoints" / checkpoint)
    rows = []
    for net in ("G", "D", "G_ema"):
        frozen = set((info.get("frozen") or {}).get("G" if net == "G_ema" else net, []))
        loaded = set((info.get(net) or {}).get("loaded", []))
        for group, names in (("frozen", frozen), ("trainable", (loaded - frozen))):
            # G_ema's frozen blocks are taken from G when fine-tuning starts (transfer.apply_freezing)
            ref = base["G"] if (net == "G_ema" and group == "frozen") else base[net]
            names = sorted(n for n in names if n in ref and n in tuned[net])
            if not names:
                continue
            diffs = [float((tuned[net][n].double() - ref[n].double()).abs().max()) if tuned[net][n].numel()
                     else 0.0 for n in names]
            same = sum(bool(torch.equal(tuned[net][n], ref[n])) for n in names)
            rows.append({"network": net, "group": group, "tensors": len(names), "unchanged": same,
                         "max_abs_change": max(diffs)})
    return pd.DataFrame(rows, columns=_CHECK_COLUMNS)
