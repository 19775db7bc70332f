"""The generate stage: a run directory of generated images, their class fidelity, GAN metrics and audit summary.

``run_generation`` writes ``config.json``, ``env.json`` and ``images/`` (with a selection, through
:mod:`histlib.selection`); ``class_fidelity`` and the GAN metrics (:func:`histlib.metrics.folders.gan_metrics`,
with the extractor :func:`metrics_extractor` chooses) are measured on them; ``write_generation_metrics`` writes
``metrics.json`` last, so its presence marks a finished run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import pandas as pd

from histlib import runs, selection
from histlib.audit import summarize_audit
from histlib.device import resolve_device
from histlib.fidelity import FidelityClassifier, classifier_for_run, classifier_seconds, metrics_keys, sets_fidelity
from histlib.generate.config import GenerateConfig
from histlib.generate.images import generate_images, load_generator, plan_counts
from histlib.metrics import features
from histlib.metrics.folders import get_feature_extractor, resolve_extractor

CLASSIFIER_CLOCK = "classifier_seconds_at_start"  # a report's reading of fidelity.classifier_seconds() at its start


def run_generation(cfg: GenerateConfig, run_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Writes ``config.json``, ``env.json`` and ``images/`` (see :func:`generate_images`) of a generate run.

    ``cfg.amount`` sets the images per class from the real train split; with ``cfg.selection`` the run draws a pool
    and keeps the best images of each class (:func:`histlib.selection.generate_selected`).
    """
    cfg = dataclasses.replace(cfg).validate()
    _, info = load_generator(cfg.checkpoint)  # a missing or unreadable checkpoint stops here, before the run folder
    if cfg.amount is not None:
        if cfg.dataset_dir is None:
            raise ValueError(f"amount={cfg.amount}: needs dataset_dir (the real train split it is relative to)")
        cfg.images_per_class = selection.amount_per_class(cfg.dataset_dir, cfg.amount)
    run = runs.Run(runs.project_path(run_dir))
    run.write_config(cfg)
    run.metrics_path.unlink(missing_ok=True)  # metrics.json marks a finished stage: written last
    dev = resolve_device(cfg.device)
    run.write_env(device=str(dev))
    start = classifier_seconds()  # write_generation_metrics counts this run's classifier time from here
    if cfg.selection != "none":
        counts = plan_counts(list(info["classes"]), cfg.images_per_class, cfg.classes)
        report = selection.generate_selected(cfg, run.path, counts, dev, progress=progress)
    else:
        report = generate_images(cfg.checkpoint, run.images, cfg.images_per_class, truncation_psi=cfg.truncation_psi,
                                 seed=cfg.seed, batch_size=cfg.batch_size, device=dev, classes=cfg.classes,
                                 image_format=cfg.image_format, num_sets=cfg.num_sets, noise_mode=cfg.noise_mode,
                                 progress=progress)
    return {**report, CLASSIFIER_CLOCK: start}



def metrics_extractor(cfg: GenerateConfig, report: Mapping[str, Any], verbose: bool = True):
    """The feature extractor of this run's GAN metrics, or None (with the reason printed).

    ``cfg.extractor``: ``'auto'`` = Inception-v3 when its FID weights are on this machine, otherwise the features of
    the target's fidelity classifier (:mod:`histlib.fidelity`, trained on the real train split: keys
    ``domain-<model>/…``, so they can never pass for Inception numbers); ``'fidelity'`` = those features always;
    any other name as :func:`resolve_extractor`.
    """
    spec = cfg.extractor
    if cfg.metrics and spec == "auto" and cfg.dataset_dir is not None:
        try:  # looked up on the module at call time: tests replace it to play a machine without the weights
            features.find_weights(features.INCEPTION_FID_WEIGHTS, download=False)
        except features.WeightsNotFoundError:
            if verbose:
                print("No Inception-v3 FID weights on this machine: the GAN metrics use the features of the target's "
                      "fidelity classifier (trained on its real train split); their keys say 'domain-…'.")
            spec = "fidelity"
    if cfg.metrics and spec == "fidelity":
        return get_feature_extractor(f"domain:{classifier_for_run(cfg, report)}", device=cfg.device)
    return resolve_extractor(spec, enabled=cfg.metrics, device=cfg.device, verbose=verbose)


def class_fidelity(cfg: GenerateConfig, report: Mapping[str, Any], progress: bool = False) -> dict[str, Any] | None:
    """Class fidelity of every generated set (pooled), by the cached fidelity classifier of ``cfg.dataset_dir``.

    The classifier is cached in ``cfg.fidelity_cache``, by default ``.fidelity/`` beside the run's stage folder
    (``results/<study>/<dataset>/.fidelity/``), so every variant of a target shares one.

    Returns None when ``cfg.fidelity`` is off or there is no real dataset to learn the classes from.
    """
    if not cfg.fidelity or cfg.dataset_dir is None:
        return None
    clf = FidelityClassifier(classifier_for_run(cfg, report, progress), device=resolve_device(cfg.device))
    return sets_fidelity(report["set_dirs"], clf, num_workers=cfg.num_workers)


def skip_reason(cfg: GenerateConfig) -> str:
    """Why a generate run with these settings has no GAN metrics (for ``metrics.json``)."""
    if not cfg.metrics:
        return "metrics disabled (metrics=False)"
    if cfg.extractor is None:
        return "no feature extractor given (extractor=None)"
    if cfg.extractor == "auto":
        return ("extractor='auto' found no Inception-v3 FID weights on this machine; it neither downloads them nor "
                "uses an untrained network")
    return f"extractor={cfg.extractor!r} gave no metrics"


def write_generation_metrics(run_dir: str | os.PathLike, report: Mapping[str, Any],
                             metrics: Mapping[str, Any] | None = None, audit: pd.DataFrame | None = None,
                             cfg: GenerateConfig | None = None, skipped_reason: str | None = None,
                             fidelity: Mapping[str, Any] | None = None,
                             unselected: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Writes ``metrics.json`` (flat keys) of a generate run and ``memorisation.csv`` when an audit is given.

    Keys: ``n_images``, ``num_sets``, ``images_per_class/<class>``, ``seconds``, ``images_per_s``,
    ``classifier_seconds`` (this run's time training real-image classifiers or waiting for them, from
    :func:`run_generation` on: :func:`histlib.fidelity.classifier_seconds`),
    ``truncation_psi``, ``seed``, ``checkpoint``, ``memorisation/<extractor>/…`` and the GAN metrics
    ``<extractor>/…``; without GAN metrics, ``metrics_skipped`` says why (``skipped_reason``, else derived from
    ``cfg``); the class fidelity ``fidelity/…`` (:func:`histlib.fidelity.metrics_keys`) when measured;
    ``selection/…`` (method, oversampling, pool size, scores) and the unselected set's ``unselected/…``
    (:func:`histlib.selection.unselected_metrics`) for a selected set.
    """
    run = runs.Run(runs.project_path(run_dir))
    s = report["settings"]
    out: dict[str, Any] = {
        "n_images": report["n_images"], "num_sets": s["num_sets"], "images_per_class": s["images_per_class"],
        "seed": s["seed"], "truncation_psi": s["truncation_psi"], "noise_mode": s["noise_mode"],
        "checkpoint": runs.display_path(s["checkpoint"]), "checkpoint_kimg": (s.get("cur_nimg") or 0) / 1000,
        "resolution": report.get("resolution"), "seconds": report["seconds"], "images_per_s": report["images_per_s"],
        "images_reused": bool(report.get("reused", False)),
        "selection": report.get("selection") or {"method": "none"},
        "classifier_seconds": round(classifier_seconds() - float(report.get(CLASSIFIER_CLOCK, 0.0)), 3),
    }
    if cfg is not None and cfg.amount is not None:
        out["amount"] = cfg.amount
    if audit is not None:
        summary = summarize_audit(audit)
        label = summary.pop("extractor") or "features"
        out.update({f"memorisation/{label}/{k}": v for k, v in summary.items()})
        runs.atomic_write_text(run.path / "memorisation.csv",
                               audit.drop(columns=["generated_path", "real_path"]).to_csv(index=False))
    if fidelity:
        out.update(metrics_keys(fidelity))
    out.update(unselected or {})
    if metrics:
        out.update(metrics)
    else:
        out["metrics_skipped"] = skipped_reason or (skip_reason(cfg) if cfg is not None else "no GAN metrics given")
    run.write_metrics(out)
    return run.read_metrics()


def metrics_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """The overall GAN metrics of :func:`gan_metrics` as a table: one row per extractor."""
    rows: dict[str, dict[str, Any]] = {}
    for key, v in metrics.items():
        parts = key.split("/")
        if len(parts) == 2 and parts[0] not in ("images_per_class",):
            rows.setdefault(parts[0], {})[parts[1]] = v
    return _significant(pd.DataFrame.from_dict(rows, orient="index"))


def _significant(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """GAN metrics at ``digits`` significant digits (more would be noise at these sample sizes), image counts
    (``n_*``) as integers and first."""
    if table.empty:
        return table
    counts = [c for c in table.columns if str(c).startswith("n_")]
    out = table[counts + [c for c in table.columns if c not in counts]].copy()
    for c in out.columns:
        if c in counts:
            out[c] = out[c].astype("Int64")
        elif pd.api.types.is_float_dtype(out[c]):  # object dtype: shown as written, not padded to 6 decimals
            out[c] = out[c].map(lambda v: v if pd.isna(v) or v == 0 else float(f"{v:.{digits}g}")).astype(object)
    return out


def per_class_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """The per-class part of :func:`gan_metrics` as a table: index ``(extractor, class)``, one column per metric."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for key, v in metrics.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[1] == "per_class":
            rows.setdefault((parts[0], parts[2]), {})[parts[3]] = v
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["extractor", "class"])
    return _significant(table)

