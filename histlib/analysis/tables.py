"""Views of the study's answer (:func:`histlib.analysis.answer.scored_table`): Table 1/2 with its caption and
sentence, the differences to real one line per metric, the classifier runs. The index page, notebook 06 and the
exported tables all show these, so they show the same numbers."""

from __future__ import annotations

import html as html_mod
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from histlib.analysis import curve as learning_curve
from histlib.analysis import intervals
from histlib.analysis.answer import (
    REAL_ROW,
    ROW_KEYS,
    WORTH,
    _scalar_keys,
    _text,
    classifier_run_rows,
    describe_scored_set,
    scored_sets,
)
from histlib.classify import sets as classify_sets


def _count(v: Any) -> str:
    """A count as text; ``'—'`` where unknown (a pooled row whose folds ran other seeds has none)."""
    return "—" if v is None or pd.isna(v) else str(int(v))


def _num(v: Any, digits: int = 1) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def format_difference(row: Mapping[str, Any], metric: str) -> str:
    """``'+4.0 [-1.2, 9.3]'``, ``'-5.0 (too few groups for an interval)'`` or ``'—'`` (the real row)."""
    d = row.get(f"diff_{metric}", math.nan)
    if d is None or (isinstance(d, float) and math.isnan(d)):
        note = _text(row.get("interval_note"))
        return f"— ({note})" if note else "—"
    lo, hi = row.get(f"diff_{metric}_low", math.nan), row.get(f"diff_{metric}_high", math.nan)
    if isinstance(lo, float) and math.isnan(lo):
        return f"{d:+.1f} ({_text(row.get('interval_note')) or 'no interval'})"
    return f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def format_fold_difference(row: Mapping[str, Any], metric: str) -> str:
    """``'+1.4 [-1.7, +4.5] 4/5'``: a pooled row's mean over the folds' own differences with their corrected t
    interval (:func:`histlib.analysis.intervals.fold_interval`) and the folds that share its sign; ``'—'`` for
    any other row."""
    d = row.get(f"folds_diff_{metric}", math.nan)
    if d is None or (isinstance(d, float) and math.isnan(d)):
        return "—"
    lo, hi = row.get(f"folds_diff_{metric}_low", math.nan), row.get(f"folds_diff_{metric}_high", math.nan)
    sign = f" {row['folds_same_sign']}" if metric == "accuracy" and _text(row.get("folds_same_sign")) else ""
    return (f"{d:+.1f}" if isinstance(lo, float) and math.isnan(lo) else f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]") + sign


FOLD_COLUMNS = {"Δ Acc, folds' own [95 % CI]": "accuracy", "Δ Bal. Acc, folds' own [95 % CI]": "balanced_accuracy"}
TABLE_COLUMNS = {"Acc": "accuracy", "Bal. Acc": "balanced_accuracy", "seeds": "n_seeds",
                 "Δ Acc vs real [95 % CI]": "diff_accuracy", "Δ Bal. Acc vs real [95 % CI]": "diff_balanced_accuracy",
                 WORTH: WORTH}
WORTH_NOTE = (f"'{WORTH}': the extra real images the real-data learning curve needs to reach the row's accuracy, "
              f"interpolated between its points; '{learning_curve.BEYOND}' above the full real set's accuracy, "
              f"'{learning_curve.BELOW}' under the smallest fraction's.")


def table_groups(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Table 1/2's parts of :func:`scored_table`: per dataset, scored set and training set with generated images,
    the rows without generated images (real and the yardsticks) and that set's GAN rows. Named ``<dataset>``,
    ``<dataset> (<training set>)`` when a dataset has several such sets, ``… · <scored set>`` when it was scored on
    several sets."""
    out = []
    if table.empty:
        return out
    paper = table[table["paper_row"]]
    for ds, d in paper.groupby("dataset", sort=False):
        gan_sets = list(dict.fromkeys(t for t in d["train_set"] if classify_sets.needs_synthetic(t)))
        scored = list(dict.fromkeys(d["scored_on"]))
        for scored_on in scored:
            part = d[d["scored_on"] == scored_on]
            plain = ~part["train_set"].map(classify_sets.needs_synthetic)
            for ts in gan_sets or [None]:
                name = ds + (f" ({ts})" if len(gan_sets) > 1 else "") + (f" · {scored_on}" if len(scored) > 1 else "")
                out.append((name, part[plain | (part["train_set"] == ts)]))
    return out


def display_table(part: pd.DataFrame) -> pd.DataFrame:
    """Text table of one :func:`table_groups` part: one line per training set, per classifier the columns of
    :data:`TABLE_COLUMNS` (means with one decimal, the seeds, the differences to real with their intervals, the
    worth in real images beside a learning curve)."""
    cells: dict[str, dict[tuple[str, str], str]] = {}
    worth = WORTH in part and part[WORTH].map(lambda v: isinstance(v, str) and v != "").any()
    for _, r in part.iterrows():
        line = cells.setdefault(r["training_set"], {})
        for name, col in TABLE_COLUMNS.items():
            if col.startswith("diff_"):
                line[(r["model"], name)] = format_difference(r, col[5:])
            elif col == "n_seeds":
                line[(r["model"], name)] = _count(r[col])
            elif col == WORTH:
                if worth:
                    line[(r["model"], name)] = r[WORTH] if isinstance(r[WORTH], str) and r[WORTH] else "—"
            else:
                line[(r["model"], name)] = _num(r[col])
        if pd.notna(r.get("folds_diff_accuracy")):  # a fold-pooled row: the folds' own view beside it
            for name, metric in FOLD_COLUMNS.items():
                line[(r["model"], name)] = format_fold_difference(r, metric)
    out = pd.DataFrame.from_dict(cells, orient="index").fillna("—")
    names = [*TABLE_COLUMNS, *FOLD_COLUMNS]  # each classifier's columns together, in this order
    out = out[sorted(out.columns, key=lambda c: (list(dict.fromkeys(part["model"])).index(c[0]), names.index(c[1])))]
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["classifier", ""])
    out.index.name = "training set"
    return out


def numbers_table(part: pd.DataFrame) -> pd.DataFrame:
    """Numbers of one :func:`table_groups` part: columns ``(classifier, Acc | Bal. Acc [| worth in real
    images])`` in %, one line per training set; ``attrs``: ``dataset``, ``evaluated_on`` (the scored set),
    ``train_set`` (the generated set), ``best_frozen``, ``n_seeds`` (``'<row> / <model>'`` → seeds),
    ``worth_note`` and ``caption``."""
    worth = WORTH in part and part[WORTH].map(lambda v: isinstance(v, str) and v != "").any()
    models = list(dict.fromkeys(part["model"]))
    metrics = {"Acc": "accuracy", "Bal. Acc": "balanced_accuracy", **({WORTH: WORTH} if worth else {})}
    rows: dict[str, dict[tuple[str, str], Any]] = {}
    for _, r in part.iterrows():
        for name, col in metrics.items():
            rows.setdefault(r["training_set"], {})[(r["model"], name)] = r[col]
    wide = pd.DataFrame.from_dict(rows, orient="index")
    wide = wide[[(m, k) for m in models for k in metrics if (m, k) in wide.columns]]
    wide.columns = pd.MultiIndex.from_tuples(wide.columns, names=["classifier", "metric"])
    wide.index.name = "training set"
    best = sorted(dict.fromkeys(part.loc[part["best_frozen"], "variant"]))
    gan_sets = [t for t in dict.fromkeys(part["train_set"]) if classify_sets.needs_synthetic(t)]
    wide.attrs.update(dataset=part["dataset"].iloc[0], evaluated_on=part["scored_on"].iloc[0],
                      train_set=gan_sets[0] if gan_sets else None,
                      best_frozen=best[0] if len(best) == 1 else (best or None),
                      n_seeds={f"{r.training_set} / {r.model}": int(r.n_seeds) for r in part.itertuples()
                               if pd.notna(r.n_seeds)},
                      worth_note=WORTH_NOTE if worth else "", caption=caption(part))
    return wide


def _sizes(part: pd.DataFrame) -> str:
    n = part["n_images"].dropna()
    g = part["n_groups"].dropna() if "n_groups" in part else pd.Series(dtype=float)
    images = f"{int(n.max())} images" if len(n) else "? images"
    return images + (f" in {int(g.max())} groups" if len(g) else " (groups not recorded)")


def caption(part: pd.DataFrame) -> str:
    """What a Table 1/2 shows: dataset, scored set, its size, the statistics, the chosen frozen variant and, beside
    a learning curve, what the worth column means."""
    first = part.iloc[0]
    best = sorted(dict.fromkeys(part.loc[part["best_frozen"], "variant"]))
    worth = WORTH in part and part[WORTH].map(lambda v: isinstance(v, str) and v != "").any()
    return (f"{first['dataset']}, scored on {describe_scored_set(first['scored_on'])}: {_sizes(part)}. Acc and "
            "Bal. Acc: accuracy and balanced accuracy in %, mean over seeds (one run per seed). Δ: difference to "
            f"real in points with its 95 % interval, resampling the groups (paired) and each row's seeds; no "
            f"interval from fewer than {intervals.MIN_GROUPS} groups or {intervals.MIN_SEEDS} seeds."
            + (f" Pooled over {int(part['folds'].max())} cross-validation folds: every image is scored once, by "
               "the classifiers of the fold whose test split held it; seed s of every fold counts as seed s; its "
               "interval holds each fold's generator fixed."
               if "folds" in part and part["folds"].notna().any() else "")
            + (" Δ, folds' own: the mean of the k folds' own differences to real with the corrected resampled t "
               "interval (Nadeau & Bengio 2003): s²(1/k + n_test/n_train) in place of s²/k, k − 1 degrees of "
               "freedom, for the folds' overlapping training splits (n_train: the real train split), which lets "
               "each fold's generator and split vary; and the folds that share its sign."
               if "folds_diff_accuracy" in part and part["folds_diff_accuracy"].notna().any() else "")
            + (f" Best frozen variant, chosen on validation: {', '.join(best)}." if best else "")
            + (f" {WORTH_NOTE}" if worth else ""))


def answer_sentence(part: pd.DataFrame) -> str:
    """One sentence for a Table 1/2: the row with generated images (else any other row) that did best on
    *validation*, against real, with its differences, intervals and what they rest on."""
    first = part.iloc[0]
    where = f"{first['dataset']} ({first['scored_on'].replace('extra/', 'external set ')})"
    others = part[part[list(ROW_KEYS)].apply(tuple, axis=1) != REAL_ROW]
    generated = others[others["train_set"].map(classify_sets.needs_synthetic)]
    others = generated if len(generated) else others
    if "diff_accuracy" not in part or others["diff_accuracy"].notna().sum() == 0:
        return f"{where}: no training set can be compared with real yet."
    r = others.loc[others.loc[others["diff_accuracy"].notna(), "val_accuracy"].idxmax()]

    def diff(metric: str) -> str:
        lo, hi = r[f"diff_{metric}_low"], r[f"diff_{metric}_high"]
        return f"{r[f'diff_{metric}']:+.1f}" + ("" if pd.isna(lo) else f" [{lo:+.1f}, {hi:+.1f}]")

    groups = f"{int(r['n_groups'])} groups" if pd.notna(r.get("n_groups")) else "groups not recorded"
    rests = f"{_count(r['n_images'])} images in {groups}, {_count(r['n_seeds'])} + {_count(r['n_seeds_real'])} seeds"
    note = _text(r.get("interval_note"))
    return (f"{where}: the best row on validation, {r['training_set']} ({r['model']}), differs from real by "
            f"{diff('accuracy')} points of accuracy and {diff('balanced_accuracy')} of balanced accuracy "
            f"({r['accuracy']:.1f} % vs {r['accuracy'] - r['diff_accuracy']:.1f} %; "
            f"{f'{note}: ' if note else '95 % intervals from '}{rests}).")


def paper_tables(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Every Table 1/2 of :func:`scored_table` as numbers (:func:`numbers_table`), by :func:`table_groups` name."""
    return {name: numbers_table(part) for name, part in table_groups(table)}


def paper_tables_html(table: pd.DataFrame) -> tuple[str, str]:
    """HTML and plain text of every Table 1/2 with its sentence and caption (the index page and notebook 06)."""
    groups = table_groups(table)
    if not groups:
        msg = "No classifier runs in this study yet."
        return f"<p>{msg}</p>", msg
    parts, text = [], []
    for name, part in groups:
        shown = display_table(part)
        sentence, cap = answer_sentence(part), caption(part)
        parts.append(f"<h3>{html_mod.escape(name)}</h3><p class='answer'><b>{html_mod.escape(sentence)}</b></p>"
                     f"<p class='muted'>{html_mod.escape(cap)}</p>" + shown.to_html(border=0))
        text.append(f"{name}\n{sentence}\n{cap}\n{shown.to_string()}")
    return "".join(parts), "\n\n".join(text)


def paired_differences_long(table: pd.DataFrame) -> pd.DataFrame:
    """The differences to real of :func:`scored_table` one line per metric: ``dataset, scored_on, <row keys>,
    model, metric, difference, ci_low, ci_high, n_images, n_groups, n_seeds, n_seeds_real, seeds_same_sign,
    interval_note`` and, where folds were pooled, ``folds_difference, folds_ci_low, folds_ci_high,
    folds_same_sign`` (the folds' own view: :func:`histlib.analysis.intervals.fold_interval`)."""
    if table.empty or "diff_accuracy" not in table:
        return pd.DataFrame()
    part = table[table["diff_accuracy"].notna()]
    rows = []
    for _, r in part.iterrows():
        for metric in intervals.METRICS:
            rows.append({**{k: r[k] for k in ("dataset", "scored_on", *ROW_KEYS, "model", "training_set")},
                         "metric": metric, "difference": r[f"diff_{metric}"], "ci_low": r[f"diff_{metric}_low"],
                         "ci_high": r[f"diff_{metric}_high"], "n_images": r["n_images"],
                         "n_groups": r.get("n_groups", math.nan), "n_seeds": r["n_seeds"],
                         "n_seeds_real": r["n_seeds_real"], "seeds_same_sign": r["seeds_same_sign"],
                         "interval_note": r["interval_note"],
                         **({"folds_difference": r.get(f"folds_diff_{metric}", math.nan),
                             "folds_ci_low": r.get(f"folds_diff_{metric}_low", math.nan),
                             "folds_ci_high": r.get(f"folds_diff_{metric}_high", math.nan),
                             "folds_same_sign": r.get("folds_same_sign", "")}
                            if "folds_diff_accuracy" in part else {})})
    return pd.DataFrame(rows)


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
    """One line per classifier run: ``dataset``, the row keys, ``model``, ``seed``, ``split`` (the scored sets the
    study reports for it), every scored set's accuracy, balanced accuracy (%), images and groups, the training set
    sizes, and ``config``: its ``config.json`` relative to the study's results folder."""
    part = classifier_run_rows(df)
    if len(part) == 0:
        return pd.DataFrame()
    rows, every_set = [], ["val"]
    for ds, d in part.groupby("dataset", sort=False):
        sets = scored_sets(d)
        every = ["val", *(s for s in sets if s != "val")]
        every_set += [s for s in every if s not in every_set]
        for _, r in d.iterrows():
            row = {"dataset": ds, **{k: r[k] for k in ROW_KEYS}, "model": r["model"], "seed": r["seed"],
                   "split": " + ".join(sets)}
            for scored_on in every:
                keys = _scalar_keys(scored_on)
                for name, col in keys.items():
                    v = pd.to_numeric(pd.Series([r.get(col)]), errors="coerce").iloc[0]
                    row[f"{scored_on}_{name}"] = 100 * v if name in intervals.METRICS else v
            for col in ("n_train_real", "n_train_synthetic", "best_epoch"):
                row[col] = r.get(col, math.nan)
            row["config"] = f"{r['path']}/config.json"
            rows.append(row)
    out = pd.DataFrame(rows)
    first = ["dataset", *ROW_KEYS, "model", "seed", "split"]
    scores = [f"{s}_{k}" for s in every_set for k in ("accuracy", "balanced_accuracy", "n_images", "n_groups")]
    out = out[first + scores + [c for c in out.columns if c not in first + scores]]
    for col in ["seed", *(c for c in out.columns if c.endswith(("_n_images", "_n_groups")))]:
        out[col] = pd.to_numeric(out[col], errors="coerce").round().astype("Int64")
    return out
