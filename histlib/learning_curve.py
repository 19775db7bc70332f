"""The real-data learning curve of a study as a figure, and its PNG on the study's index page (notebook 06).

The curve's numbers and what a training set is worth in real images live in :mod:`histlib.analysis.curve` (Table
1/2 reads them there) and are re-exported here, so notebook 06 finds the curve, its figure and its file in one
module. The figure draws Table 1/2's rows beside the curve, so this module sits above :mod:`histlib.analysis`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from histlib import runs
from histlib.analysis.answer import scored_table
from histlib.analysis.curve import (  # noqa: F401 (the curve's numbers, re-exported for notebook 06)
    BELOW,
    BEYOND,
    equivalent_real_images,
    extra_real_images,
    learning_curve,
)
from histlib.analysis.tables import paper_tables

PNG_NAME = "learning_curve.png"


def plot_learning_curve(df: pd.DataFrame, curve: pd.DataFrame | None = None):
    """Accuracy against real training images per dataset (one panel each), mean ± std over seeds per classifier,
    with the Table 1/2 rows of other training sets as horizontal lines (where they cross the curve is what they
    are worth in real images). Returns the figure (a message figure without a curve)."""
    import matplotlib.pyplot as plt

    curve = learning_curve(df) if curve is None else curve
    if len(curve) == 0:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "No learning curve: the study has no real runs on fractions of the train split "
                "(classify.REAL_FRACTIONS).", ha="center", va="center", wrap=True)
        return fig
    datasets = list(dict.fromkeys(curve["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.2), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        part = curve[curve["dataset"] == ds]
        for model, m in part.groupby("model", sort=False):
            ax.errorbar(m["n_real"], m["accuracy"], yerr=m["accuracy_std"].fillna(0), marker="o", capsize=3,
                        label=f"real, {model}")
            for _, r in m.iterrows():
                ax.annotate(f"{100 * r['fraction']:.0f} %", (r["n_real"], r["accuracy"]), fontsize=7,
                            textcoords="offset points", xytext=(4, -10))
        models = list(dict.fromkeys(part["model"]))
        shown: set[str] = set()  # a row of two tables (real + stain) is drawn once
        for table in paper_tables(scored_table(df, n_boot=0)).values():
            if table.attrs.get("dataset") != ds or table.attrs.get("evaluated_on") != part["evaluated_on"].iloc[0]:
                continue  # other datasets, and Table 1/2 on another set than the curve's
            for label in table.index[1:]:
                for model in models:
                    value = table.loc[label, (model, "Acc")] if (model, "Acc") in table.columns else math.nan
                    key = f"{label} ({model})" if len(models) > 1 else label
                    if math.isfinite(value) and key not in shown:
                        ax.axhline(value, lw=0.9, ls="--", color=f"C{1 + len(shown) % 9}", label=key)
                        shown.add(key)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_xlabel("real training images")
        ax.set_ylabel(f"accuracy on {part['evaluated_on'].iloc[0]} (%)")
        ax.set_title(f"{ds}: the real-data learning curve")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_learning_curve(df: pd.DataFrame, out_dir: str | os.PathLike) -> Path | None:
    """Writes :func:`plot_learning_curve` to ``<out_dir>/learning_curve.png`` (the study index shows it); None (and
    nothing written, an older PNG removed) when the study has no learning curve."""
    import matplotlib.pyplot as plt

    out = runs.project_path(out_dir) / PNG_NAME
    curve = learning_curve(df)
    if len(curve) == 0:
        out.unlink(missing_ok=True)
        return None
    fig = plot_learning_curve(df, curve)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, out)
    return out
