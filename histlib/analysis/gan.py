"""The GAN metrics of a study's runs as a table: one row per (dataset, variant, feature extractor)."""

from __future__ import annotations

import pandas as pd

GAN_METRICS = ("fid", "precision", "recall", "density", "coverage")


def gan_metric_columns(df: pd.DataFrame) -> dict[str, list[str]]:
    """``{extractor: [metric columns]}`` of the overall GAN metrics (keys ``<extractor>/<metric>``)."""
    out: dict[str, list[str]] = {}
    for col in df.columns if df is not None else []:
        parts = str(col).split("/")
        if len(parts) == 2 and parts[1] in GAN_METRICS:
            out.setdefault(parts[0], []).append(col)
    for cols in out.values():
        cols.sort(key=lambda c: GAN_METRICS.index(c.split("/")[1]))
    return out


def gan_table(df: pd.DataFrame, stage: str = "generate") -> pd.DataFrame:
    """FID, precision, recall, density and coverage of each GAN variant, per dataset and feature extractor.

    Args:
        df: :func:`histlib.analysis.collect_metrics` output.
        stage: the stage whose runs hold the GAN metrics (``generate``; ``finetune`` when the training hooks
            computed them).

    Returns:
        Index ``(dataset, variant, extractor)``, columns the metrics present (``fid``, ``precision`` …) and the
        sample sizes ``n_real`` / ``n_fake`` when recorded. Empty when no run of ``stage`` has GAN metrics.
        Extractors labelled ``random-test`` are features of an untrained network: fine for plumbing checks,
        meaningless as quality numbers.
    """
    if df is None or len(df) == 0 or "stage" not in df:
        return pd.DataFrame()
    part = df[df["stage"] == stage]
    groups = gan_metric_columns(part.dropna(axis=1, how="all"))
    rows = []
    for _, r in part.iterrows():
        for extractor, cols in groups.items():
            vals = {c.split("/")[1]: r[c] for c in cols if pd.notna(r.get(c))}
            if not vals:
                continue
            counts = {n: int(r[f"{extractor}/{n}"]) for n in ("n_real", "n_fake")
                      if pd.notna(r.get(f"{extractor}/{n}"))}
            rows.append({"dataset": r["dataset"], "variant": r["run"], "extractor": extractor, **vals, **counts})
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).set_index(["dataset", "variant", "extractor"])
    return table[[c for c in ("n_real", "n_fake", *GAN_METRICS) if c in table.columns]]
