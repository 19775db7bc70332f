"""The generated images beside the classifiers: class fidelity of each variant, its warnings, every GAN metric
beside the accuracy of the classifiers trained on the images, and their rank correlations over variants."""

from __future__ import annotations

import math
import os
from typing import Any

import pandas as pd

from histlib import runs
from histlib.analysis.classification import _mean
from histlib.analysis.collect import _check_study_dir, _run_dirs
from histlib.analysis.gan import GAN_METRICS, gan_table
from histlib.analysis.rows import classifier_runs, evaluated_on

FIDELITY_METRICS = ("agreement", "balanced_agreement")


def fidelity_table(df: pd.DataFrame) -> pd.DataFrame:
    """Class fidelity of each variant's generated images (generate stage): overall and balanced agreement in %,
    per-class agreement, the number of warnings; index ``(dataset, variant)``."""
    if df is None or len(df) == 0 or "stage" not in df:
        return pd.DataFrame()
    part = df[df["stage"] == "generate"]
    if "fidelity/agreement" not in part:
        return pd.DataFrame()
    part = part[part["fidelity/agreement"].notna()]
    rows = {}
    for _, r in part.iterrows():
        row = {"agreement": 100 * r["fidelity/agreement"], "balanced_agreement": 100 * r["fidelity/balanced_agreement"],
               "chance": 100 * r.get("fidelity/chance", math.nan),
               "classifier_val_balanced_accuracy": 100 * r.get("fidelity/classifier_val_balanced_accuracy", math.nan)}
        for c in [c for c in r.index if str(c).startswith("fidelity/agreement/") and pd.notna(r[c])]:
            row[f"agreement {c.split('/', 2)[2]}"] = 100 * r[c]
        rows[(r["dataset"], r["run"])] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["dataset", "variant"])
    return table


def fidelity_warnings(study_dir: str | os.PathLike) -> dict[tuple[str, str], list[str]]:
    """``{(dataset, variant): [warning, ...]}`` of every generate run whose class fidelity raised warnings."""
    root = _check_study_dir(study_dir)
    out = {}
    for dataset, stage, run, path in _run_dirs(root):
        if stage == "generate" and (path / "metrics.json").is_file():
            w = runs.read_json(path / "metrics.json").get("fidelity/warnings")
            if w:
                out[(dataset, run)] = list(w)
    return out


def gan_vs_classifier(df: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and variant: the GAN metrics of its generated images (every extractor's FID, precision, recall,
    density, coverage; class fidelity) beside the mean accuracy of the classifiers trained on them (over models and
    seeds, per synthetic training set, on the split of :func:`evaluated_on`)."""
    runs_df = classifier_runs(df)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    gan = gan_table(df)
    if not gan.empty:
        for (ds, variant, extractor), r in gan.iterrows():
            for m in GAN_METRICS:
                if m in r and pd.notna(r[m]):
                    rows.setdefault((ds, variant), {})[f"{extractor}/{m}"] = float(r[m])
    fid = fidelity_table(df)
    for (ds, variant), r in fid.iterrows():
        for m in FIDELITY_METRICS:
            rows.setdefault((ds, variant), {})[f"fidelity/{m}"] = float(r[m])
    for ds, g in runs_df.groupby("dataset", sort=False):
        split = evaluated_on(g)
        for (ts, variant), part in g[g["train_set"] != "real"].groupby(["train_set", "variant"], sort=False):
            rows.setdefault((ds, variant), {})[f"{ts} {split}_accuracy"] = 100 * _mean(part[f"{split}_accuracy"])
        real = g[g["train_set"] == "real"]
        for (ds2, _variant), row in rows.items():
            if ds2 == ds and len(real):
                row[f"real {split}_accuracy"] = 100 * _mean(real[f"{split}_accuracy"])
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["dataset", "variant"])
    return table


def rank_correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Spearman rank correlation over variants between each GAN metric and each classifier accuracy column of
    :func:`gan_vs_classifier`, per dataset (``n`` variants; no correlation from fewer than 3)."""
    from scipy.stats import spearmanr

    if table.empty:
        return pd.DataFrame()
    gan_cols = [c for c in table.columns if "/" in c]
    acc_cols = [c for c in table.columns if c.endswith("_accuracy") and not c.startswith("real ")]
    rows = []
    for ds, g in table.groupby(level="dataset", sort=False):
        for gc in gan_cols:
            for ac in acc_cols:
                both = g[[gc, ac]].dropna()
                rho = spearmanr(both[gc], both[ac]).statistic if len(both) >= 3 else math.nan
                rows.append({"dataset": ds, "gan_metric": gc, "classifier": ac, "spearman_rho": rho,
                             "n_variants": len(both)})
    return pd.DataFrame(rows)
