"""Formatting and writing a study's tables: the percent and HTML views notebook 06 shows, the run overview, and
every exported table as CSV and Markdown under ``<study>/analysis/``."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from histlib import runs
from histlib.analysis import answer, curve, per_class, tables
from histlib.analysis.classification import variant_table
from histlib.analysis.collect import ID_COLUMNS, collect_metrics, stage_status
from histlib.analysis.gan import gan_table
from histlib.analysis.generators import fidelity_table, gan_vs_classifier, rank_correlations


def format_percent_table(table: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """Text version of a ``(…, stat)`` table from :func:`variant_table`: ``"92.3 ± 0.4 (n=3)"``, ``"92.3 (n=1)"``
    with one seed, ``"—"`` where nothing was measured."""
    if table.empty:
        return pd.DataFrame()
    out = {}
    for key in dict.fromkeys(c[:-1] for c in table.columns):
        cells = []
        for i in table.index:
            m, s, n = (table.loc[i, (*key, st)] for st in ("mean", "std", "n"))
            if pd.isna(m):
                cells.append("—")
                continue
            cells.append(f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if pd.notna(s) else "") + f" (n={int(n)})")
        out[key] = cells
    res = pd.DataFrame(out, index=table.index)
    res.columns = pd.MultiIndex.from_tuples(res.columns, names=list(table.columns.names[:-1]))
    return res


class HTML:
    """Rich display of an HTML fragment in notebooks (and its text in a terminal)."""

    def __init__(self, html: str, text: str = ""):
        self.html, self.text = html, text or html

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


def paper_tables(df: pd.DataFrame, table: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Every Table 1/2 as numbers, ``{'<dataset>[ (<training set>)][ · <scored set>]': table}``
    (:func:`histlib.analysis.tables.paper_tables`); ``table``: a :func:`scored_table` already computed."""
    return tables.paper_tables(answer.scored_table(df) if table is None else table)


def _caption(table: pd.DataFrame) -> str:
    """The caption of a :func:`paper_table`: the scored set, its images and groups, the statistics, the chosen
    variant and the worth column's meaning."""
    return table.attrs.get("caption", "")


def paper_tables_view(df: pd.DataFrame, table: pd.DataFrame | None = None) -> HTML:
    """Every Table 1/2 with its one-sentence answer and a caption saying the scored set, its images and groups, the
    seeds and the chosen variant (the index page shows the same). ``table``: a :func:`scored_table` already
    computed from ``df``."""
    return HTML(*tables.paper_tables_html(answer.scored_table(df) if table is None else table))


def run_overview(df: pd.DataFrame) -> pd.DataFrame:
    """One line per finished run with the few numbers that identify it (not every metric key): the stage, dataset,
    run and, where present, kimg, accuracy and test accuracy, class fidelity, FID."""
    if df is None or len(df) == 0:
        return pd.DataFrame(columns=list(ID_COLUMNS))
    keep = [c for c in ("kimg", "img_per_s", "accuracy", "balanced_accuracy", "test_accuracy", "fidelity/agreement",
                        "n_images") if c in df.columns]
    keep += [c for c in df.columns if str(c).endswith("/fid") and "/per_class/" not in str(c)]
    out = df[[*ID_COLUMNS, *keep]].copy()
    return out.set_index(list(ID_COLUMNS)).round(4)



# ----------------------------------------------------------------------------------------------------------------
# Writing


def one_header(table: pd.DataFrame) -> pd.DataFrame:
    """The table with its index as columns and one header row (multi-level headers joined with ``' / '``), as every
    exported CSV and Markdown table is written."""
    flat = table.reset_index() if any(n is not None for n in table.index.names) else table.copy()

    def name(c: Any) -> str:
        return " / ".join(str(x) for x in c if str(x)) if isinstance(c, tuple) else str(c)

    flat.columns = [name(c) for c in flat.columns]
    return flat


def to_markdown(table: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-flavoured Markdown table (index included; multi-level headers joined with ``' / '``)."""
    if table.empty:
        return "(no rows)\n"
    flat = one_header(table)

    def cell(v: Any) -> str:
        if v is pd.NA or v is None:
            return ""
        if isinstance(v, float):
            return "" if math.isnan(v) else format(v, floatfmt)
        return str(v).replace("|", "\\|")

    header = list(flat.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in flat.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def analysis_dir(study_dir: str | os.PathLike) -> Path:
    """``<study_dir>/analysis``, where notebook 06 writes its tables."""
    return runs.project_path(study_dir) / "analysis"


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: str | os.PathLike,
                 csv_only: Iterable[str] = ()) -> list[Path]:
    """Writes each table as ``<name>.csv`` and ``<name>.md`` under ``out_dir`` (atomically, via ``histlib.runs``),
    each with one header row (:func:`one_header`); the tables named in ``csv_only`` as CSV only.

    Empty tables are skipped. Returns the written paths.
    """
    out = runs.project_path(out_dir)
    written = []
    for name, table in tables.items():
        if table is None or table.empty:
            continue
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_.")
        if not name:
            raise ValueError("write_tables: a table name must contain letters or digits")
        written.append(runs.atomic_write_text(out / f"{name}.csv", one_header(table).to_csv(index=False)))
        if name not in set(csv_only):
            written.append(runs.atomic_write_text(out / f"{name}.md", to_markdown(table)))
    return written


def study_tables(df: pd.DataFrame, table: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Every table notebook 06 exports, by file name. ``classification`` (every training set and variant) and
    ``classification_paper`` (Table 1/2's rows) are :func:`histlib.analysis.answer.scored_table`, the frame the
    index page shows: the held-out sets' numbers per variant, the best frozen variant chosen on validation, with
    the paired group intervals against real; ``class_recalls`` each class's recall per row of it; ``runs`` has one
    line per classifier run."""
    table = answer.scored_table(df) if table is None else table
    full = variant_table(df)
    gan_vs_cls = gan_vs_classifier(df)
    return {"classification": table, "classification_paper": table[table["paper_row"]] if len(table) else table,
            "learning_curve": curve.learning_curve(df),
            "differences_to_real": tables.paired_differences_long(table), "runs": tables.runs_table(df),
            "class_recalls": per_class.class_recalls(df, table),
            "variants": full, "gan": gan_table(df), "gan_vs_classifier": gan_vs_cls,
            "rank_correlations": rank_correlations(gan_vs_cls), "fidelity": fidelity_table(df)}


def write_study_tables(study_dir: str | os.PathLike, df: pd.DataFrame | None = None,
                       table: pd.DataFrame | None = None) -> list[Path]:
    """Writes :func:`study_tables` and the stage status to ``<study_dir>/analysis/`` (``runs`` as CSV only).
    ``df``, ``table``: :func:`collect_metrics` and :func:`scored_table` of the study when already computed."""
    df = collect_metrics(study_dir) if df is None else df
    tables = {**study_tables(df, table), "status": stage_status(study_dir, df)}
    return write_tables(tables, analysis_dir(study_dir), csv_only=("runs",))
