"""The study's answer, one frame behind every place that shows it: the index page, notebook 06 and the exported
tables under ``results/<study>/analysis/``.

:func:`scored_table` is that frame: one row per dataset, **scored set**, training-set row and classifier, with
the mean over seeds on the scored set and the paired difference to ``real`` with its group bootstrap interval
(:mod:`histlib.analysis.intervals`). The scored sets are the ones nothing was tuned on — the real set's test split
and every ``EXTRA_TEST_SETS`` entry (``extra/<name>``) — and the validation split only when a dataset has neither.
A training-set row is any combination of :data:`ROW_KEYS` found in the classifier runs (``train_set``, the GAN
``variant``, the synthetic set's ``selection`` and ``amount`` label, each read from the run's ``metrics.json``),
so new training sets appear without changes here. ``paper_row`` marks the publication's Table 1/2 rows: every
training set without a GAN variant, and per GAN training set ``scratch``, ``pretrained``, any variant that is not a
``freeze_*`` one, and the ``freeze_*`` variant with the highest mean **validation** accuracy (so the test numbers
are untouched by the choice).

**Cross-validation.** Datasets prepared as the folds of one k-fold (``PrepareConfig.folds``; a study target with
``folds: K``) are also pooled: one more row per setting under the dataset name ``<name> (K folds pooled)``, whose
images are every fold's test split (each image once, scored by the classifiers of the fold that held it out), seed
``s`` of every fold taken together as seed ``s`` (the folds must have run the same seeds; on an external set, which
every fold scored, each image is there once with every fold's runs), and whose interval resamples the groups of all
folds (each fold's fine-tuned generator held fixed). Beside it, the folds' view: the mean of the folds' own
differences with the corrected resampled t interval (:func:`intervals.fold_interval`), which lets the generators
vary, from K values. A frozen variant is the pool's Table 1/2 row only where every fold's validation chose it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histlib import runs
from histlib.analysis import curve as learning_curve
from histlib.analysis import intervals
from histlib.analysis.rows import classify_rows
from histlib.classify import sets as classify_sets

ROW_KEYS = ("train_set", "variant", "selection", "amount")
REAL_ROW = ("real", "", "", "")  # what every other row is compared with
_EXTRA = re.compile(r"^extra/(?P<name>[^/]+)/accuracy$")
_AMOUNT = re.compile(r"^\d+(?:\.\d+)?x$")  # '2x': generated images per class relative to the real train split
WORTH = "worth in real images"


def _text(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _prefix(scored_on: str) -> str:
    """Key prefix of a scored set in ``metrics.json``: ``val_``, ``test_`` or ``extra/<name>/``."""
    return {"val": "val_", "test": "test_"}.get(scored_on, f"{scored_on}/")


def _scalar_keys(scored_on: str) -> dict[str, str]:
    if scored_on == "val":
        return {"accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy", "n_images": "n_val",
                "n_groups": "val_n_groups"}
    p = _prefix(scored_on)
    return {"accuracy": f"{p}accuracy", "balanced_accuracy": f"{p}balanced_accuracy", "n_images": f"{p}n",
            "n_groups": f"{p}n_groups"}


def describe_scored_set(scored_on: str) -> str:
    """Words for a scored set: ``'the test split'``, ``'the external set <name>'``, ``'the validation split'``."""
    if scored_on == "test":
        return "the test split (nothing was tuned on it)"
    if scored_on.startswith("extra/"):
        return f"the external test set {scored_on.split('/', 1)[1]} (nothing was tuned on it)"
    return "the validation split, which also chose each run's epoch (no held-out set for this dataset)"


def split_variant(label: str) -> tuple[str, str, str]:
    """A generated set's label → ``(variant, selection, amount)``: ``'freeze_d1-realism-2x'`` →
    ``('freeze_d1', 'realism', '2x')`` (the study names a set ``<variant>[-<selection>][-<amount>x]``; variant
    names hold no ``-``)."""
    variant, *rest = str(label).split("-")
    amount = next((p for p in rest if _AMOUNT.match(p)), "")
    return variant, "-".join(p for p in rest if p != amount), amount


def classifier_run_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The classifier runs of :func:`histlib.analysis.collect_metrics` with the row keys filled in (``''`` where a
    run has none; ``selection`` and ``amount`` from the generated set's label when ``metrics.json`` lacks them) and
    ``seed`` as an integer."""
    part = classify_rows(df).copy()
    if len(part) == 0:
        return part
    for k in ROW_KEYS:
        part[k] = part[k].map(_text) if k in part else ""
    part.loc[~part["train_set"].map(classify_sets.needs_synthetic), "variant"] = ""
    parsed = [split_variant(v) for v in part["variant"]]
    for i, k in enumerate(("variant", "selection", "amount")):
        part[k] = [p[i] if not own or k == "variant" else own for p, own in zip(parsed, part[k])]
    part["seed"] = pd.to_numeric(part["seed"], errors="coerce")
    return part.reset_index(drop=True)


def scored_sets(runs_df: pd.DataFrame) -> list[str]:
    """The held-out sets the runs were scored on (``test``, ``extra/<name>`` …), or ``['val']`` when none."""
    found = ["test"] if "test_accuracy" in runs_df and runs_df["test_accuracy"].notna().any() else []
    for col in runs_df.columns:
        m = _EXTRA.match(str(col))
        if m and runs_df[col].notna().any():
            found.append(f"extra/{m['name']}")
    return found or ["val"]


def _best_frozen(part: pd.DataFrame) -> str | None:
    frozen = part[part["variant"].str.startswith("freeze_")]
    if len(frozen) == 0:
        return None
    means = frozen.groupby("variant")["accuracy"].mean()  # validation accuracy: the choice never sees test
    return str(means.idxmax()) if means.notna().any() else None


def _row_order(key: tuple) -> tuple:
    """Real first, then the other sets without generated images (the yardsticks, then the learning curve's
    fractions), then the generated sets in the order of ``classify_sets.TRAIN_SETS``, each with stain augmentation
    right after it without; per set scratch, pretrained, other variants, frozen."""
    train_set, variant, selection, amount = key
    sets = classify_sets.TRAIN_SETS
    plain = train_set.removesuffix("+stain")
    rank = (sets.index(plain) if plain in sets else len(sets), classify_sets.uses_stain(train_set))
    kind = (0 if variant == "" else 1 if variant == "scratch" else 2 if variant == "pretrained"
            else 4 if variant.startswith("freeze_") else 3)
    return (key != REAL_ROW, classify_sets.needs_synthetic(train_set), -classify_sets.label_fraction(train_set),
            rank, train_set, selection, amount, kind, variant)


def row_label(key: tuple, part: pd.DataFrame) -> str:
    """``'389 real'``, ``'389 real + stain augmentation'``, ``'900 generated with freezing freeze_d1'``,
    ``'389 real + 900 generated with pretrained'``; a learning-curve fraction ``'97 real (25 % of the train
    split)'``; the selection and amount labels are appended."""
    train_set, variant, selection, amount = key

    def count(col: str) -> int:
        v = _col(part, col).dropna()
        return int(round(v.mean())) if len(v) else 0

    n_real, n_syn = count("n_train_real"), count("n_train_synthetic")
    stain = " + stain augmentation" if classify_sets.uses_stain(train_set) else ""
    fraction = classify_sets.label_fraction(train_set)
    if not classify_sets.needs_synthetic(train_set):
        label = f"{n_real} real{stain}" + (f" ({100 * fraction:g} % of the train split)" if fraction < 1 else "")
    else:
        what = {"scratch": "non-pretrained", "pretrained": "pretrained"}.get(
            variant, f"freezing {variant}" if variant.startswith("freeze_") else variant)
        generated = f"{n_syn} generated with {what}"
        label = (f"{n_real} real + {generated}" if classify_sets.uses_real(train_set) else generated) + stain
    return label + (f", selected by {selection}" if selection else "") + (f", {amount}" if amount else "")


def _paper_rows(runs_df: pd.DataFrame) -> set[tuple]:
    """The row keys of Table 1/2 (module docstring)."""
    keep = set()
    for (ts, sel, amt), part in runs_df.groupby(["train_set", "selection", "amount"], sort=False):
        if classify_sets.label_fraction(ts) < 1:
            continue  # the learning curve's points: its own figure and the worth column, not rows of Table 1/2
        best = _best_frozen(part)
        for variant in dict.fromkeys(part["variant"]):
            if not variant.startswith("freeze_") or variant == best:
                keep.add((ts, variant, sel, amt))
    return keep


class _Predictions:
    """Per-run prediction lists of a scored set, read back from ``metrics.json`` once per run (``df`` holds
    scalars only); group ids come from the run's own record, else from its prepared dataset's manifest."""

    def __init__(self, root: Path):
        self.root, self.cache = root, {}

    def metrics(self, rel: str) -> dict[str, Any]:
        """The run's whole ``metrics.json`` (``{}`` when the frame was built elsewhere: no predictions)."""
        if rel not in self.cache:
            path = self.root / rel / "metrics.json"
            self.cache[rel] = runs.read_json(path) if path.is_file() else {}
        return self.cache[rel]

    def get(self, rel: str, scored_on: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        m = self.metrics(rel)
        p = _prefix(scored_on)
        y, pred = m.get(f"{p}y_true"), m.get(f"{p}y_pred")
        if y is None or pred is None:
            return None
        groups = m.get(f"{p}groups")
        if groups is None:
            groups = groups_from_manifest(self.root / rel, scored_on, len(y))
        if groups is not None:  # codes in order of first appearance: recorded codes and manifest names compare
            groups = pd.factorize(pd.Series(groups).astype(str))[0]
        return np.asarray(y), np.asarray(pred), groups


def groups_from_manifest(run_dir: Path, scored_on: str, n: int) -> list[str] | None:
    """Group ids of a run that did not record them (older runs): the ``group`` column of the prepared dataset its
    ``config.json`` names, in the order the classifier read the images. None when that dataset is not here or
    no longer has ``n`` images in the split."""
    from histlib.data.manifest import load_manifest

    cfg_file = run_dir / "config.json"
    if not cfg_file.is_file():
        return None
    cfg = runs.read_json(cfg_file)
    if scored_on.startswith("extra/"):
        folder, split = (cfg.get("extra_test_sets") or {}).get(scored_on.split("/", 1)[1]), None
    else:
        folder, split = cfg.get("real_dir"), cfg.get("val_split" if scored_on == "val" else "test_split")
    try:
        manifest = load_manifest(runs.project_path(folder)) if folder else None
    except (OSError, ValueError):
        return None
    if manifest is None:
        return None
    rows = manifest if split is None else manifest[manifest["split"] == split]
    return rows["group"].astype(str).tolist() if len(rows) == n else None


def _correct(preds: list[tuple], runs_part: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, Any] | str:
    """``(correct [S, N], y, groups)`` of one row's runs, or why there is none."""
    if not preds or any(p is None for p in preds):
        return "no per-image predictions recorded"
    y = preds[0][0]
    known = [g for _, _, g in preds if g is not None]  # seeds of one row share the images: one record suffices
    groups = known[0] if known else None
    if any(len(yi) != len(y) or not np.array_equal(yi, y) for yi, _, _ in preds) or any(
            not np.array_equal(g, groups) for g in known):
        return "the seeds were scored on different images"
    return np.stack([p == y for _, p, _ in preds]), y, groups


def _differences(real: tuple, other: tuple, n_boot: int, ci: float, seed: int, against: str = "real"
                 ) -> dict[str, Any]:
    """The columns ``diff_*``, ``n_groups``, ``seeds_same_sign`` and ``interval_note`` of one row (``other``
    minus ``real``; ``against`` names ``real`` in the note)."""
    out: dict[str, Any] = {}
    if isinstance(real, str) or isinstance(other, str):
        out["interval_note"] = real if isinstance(real, str) else other
        return out
    (c_real, y, groups), (c_other, y_other, groups_other) = real, other
    groups = groups if groups is not None else groups_other  # one side's record serves both: the same split
    if len(y) != len(y_other) or not np.array_equal(y, y_other) or (
            groups_other is not None and not np.array_equal(groups, groups_other)):
        out["interval_note"] = f"not scored on the same images as {against}"
        return out
    for metric in intervals.METRICS:
        r = intervals.paired_group_interval(c_other, c_real, y, groups, metric=metric, n_resamples=n_boot, ci=ci,
                                            seed=seed)
        out.update({f"diff_{metric}": 100 * r.difference, f"diff_{metric}_low": 100 * r.low,
                    f"diff_{metric}_high": 100 * r.high, "n_seeds_real": r.n_seeds_b, "interval_note": r.note})
    k = min(len(c_other), len(c_real))
    per_seed = c_other[:k].mean(1) - c_real[:k].mean(1)
    point = out["diff_accuracy"] / 100
    out["seeds_same_sign"] = f"{int((np.sign(per_seed) == np.sign(point)).sum()) if point else 0}/{k}"
    return out


def _col(part: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name`` as numbers (NaN where absent)."""
    return pd.to_numeric(part[name], errors="coerce") if name in part else pd.Series(math.nan, index=part.index)


def _score_cells(part: pd.DataFrame, scored_on: str) -> dict[str, Any]:
    keys = _scalar_keys(scored_on)
    cell: dict[str, Any] = {}
    for metric in intervals.METRICS:
        v = 100 * _col(part, keys[metric]).dropna()
        cell[metric] = float(v.mean()) if len(v) else math.nan
        cell[f"{metric}_std"] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
        cell["n_seeds"] = int(len(v))
    cell["val_accuracy"] = 100 * float(_col(part, "accuracy").mean())
    n = _col(part, keys["n_images"]).dropna()
    cell["n_images"] = int(n.iloc[0]) if len(n) else math.nan
    for col in ("n_train_real", "n_train_synthetic"):
        cell[col] = float(_col(part, col).mean())
    return cell


def _worth(out: pd.DataFrame, df: pd.DataFrame) -> list[Any]:
    """Each row's worth in real images read off the real-data learning curve (``histlib.analysis.curve``), where
    the dataset has one on this scored set; NaN for ``real``, the curve's own points and elsewhere."""
    curve = learning_curve.learning_curve(df)
    values: list[Any] = []
    for r in out.itertuples():
        c = curve[(curve["dataset"] == r.dataset) & (curve["evaluated_on"] == r.scored_on)] if len(curve) else curve
        key = (r.train_set, r.variant, r.selection, r.amount)
        if len(c) == 0 or key == REAL_ROW or classify_sets.label_fraction(r.train_set) < 1:
            values.append(math.nan)
        else:
            values.append(learning_curve.extra_real_images(c, r.dataset, r.model, r.accuracy, r.n_train_real))
    return values


def scored_table(df: pd.DataFrame, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The study's answer as one long frame (module docstring).

    Args:
        df: :func:`histlib.analysis.collect_metrics` output (its ``attrs['study_dir']`` locates the runs'
            prediction lists).
        n_boot, ci, seed: bootstrap settings of the paired intervals; ``n_boot=0``: no differences to real.

    Returns:
        One row per ``dataset, scored_on, train_set, variant, selection, amount, model``; columns ``training_set``
        (the row's label), ``paper_row``, ``best_frozen`` (the row is the variant chosen on validation),
        ``accuracy``, ``balanced_accuracy`` (mean over seeds, %), their ``*_std``, ``n_seeds``, ``val_accuracy``
        (the selection criterion), ``n_images``, ``n_groups``, ``n_train_real``, ``n_train_synthetic`` (means
        over seeds), ``worth in real images`` (beside a learning curve: ``histlib.analysis.curve``) and against
        ``real``: ``diff_accuracy``,
        ``diff_balanced_accuracy`` (percentage points) with ``*_low``/``*_high`` (the interval; NaN when there is
        none), ``n_seeds_real``, ``seeds_same_sign`` and ``interval_note`` (why there is no interval); on
        fold-pooled rows also ``folds`` and, against real, ``folds_diff_<metric>`` (the mean of the folds' own
        differences) with ``_low``/``_high`` (their corrected t interval: :func:`intervals.fold_interval`) and
        ``folds_same_sign``. Empty without classifier runs.
    """
    runs_df = classifier_run_rows(df)
    if len(runs_df) == 0:
        return pd.DataFrame()
    root = Path(df.attrs.get("study_dir", "."))
    preds = _Predictions(root)
    rows, set_order = [], {}
    for ds, d in runs_df.groupby("dataset", sort=False):
        paper = _paper_rows(d)
        best = {(k[0], k[2], k[3]) for k in paper if k[1].startswith("freeze_")}
        for scored_on in scored_sets(d):
            set_order.setdefault(scored_on, len(set_order))
            for model, dm in d.groupby("model", sort=False):
                rows.extend(_model_rows(ds, scored_on, model, dm, paper, best, preds, (n_boot, ci, seed)))
    for pool, (members, _) in fold_pools(runs_df, root).items():
        rows.extend(_pooled_rows(pool, members, runs_df, rows, preds, (n_boot, ci, seed)))
    out = pd.DataFrame(rows)
    if "interval_note" in out:
        out["interval_note"] = out["interval_note"].fillna("")
    for col in ("n_seeds", "n_images", "n_groups", "n_seeds_real", "folds"):
        if col in out:  # counts stay integers in the exported CSV (empty where unknown)
            out[col] = pd.to_numeric(out[col], errors="coerce").round().astype("Int64")
    out[WORTH] = _worth(out, df)
    datasets, models = list(dict.fromkeys(out["dataset"])), list(dict.fromkeys(runs_df["model"]))
    order = pd.DataFrame({"d": out["dataset"].map(datasets.index), "s": out["scored_on"].map(set_order),
                          "r": [_row_order(k) for k in zip(*(out[c] for c in ROW_KEYS))],
                          "m": out["model"].map(models.index)})
    out = out.loc[sorted(out.index, key=lambda i: tuple(order.loc[i]))]
    return out.reset_index(drop=True)


def _model_rows(ds: str, scored_on: str, model: str, dm: pd.DataFrame, paper: set, best: set,
                preds: _Predictions, boot: tuple) -> list[dict[str, Any]]:
    """Rows of :func:`scored_table` for one dataset, scored set and classifier."""
    keys = _scalar_keys(scored_on)
    dm = dm[_col(dm, keys["accuracy"]).notna()].sort_values("seed")
    real_part = dm[dm[list(ROW_KEYS)].apply(tuple, axis=1) == REAL_ROW]
    real = _correct([preds.get(p, scored_on) for p in real_part["path"]], real_part) if len(real_part) else \
        "no real row to compare with"
    out = []
    for key, part in dm.groupby(list(ROW_KEYS), sort=False):
        row = {"dataset": ds, "scored_on": scored_on, **dict(zip(ROW_KEYS, key)), "model": model,
               "training_set": row_label(key, part), "paper_row": key in paper,
               "best_frozen": key[1].startswith("freeze_") and (key[0], key[2], key[3]) in best and key in paper,
               **_score_cells(part, scored_on)}
        this = real if key == REAL_ROW else _correct([preds.get(p, scored_on) for p in part["path"]], part)
        if not isinstance(this, str):
            row["n_images"] = len(this[1])
            groups = this[2] if this[2] is not None or isinstance(real, str) else real[2]
            if groups is not None:
                row["n_groups"] = int(len(np.unique(np.asarray(groups).astype(str))))
        if key != REAL_ROW and boot[0] > 0:
            row.update(_differences(real, this, *boot))
        out.append(row)
    return out


_FOLD_NAME = re.compile(r"^(?P<stem>.+?)_?fold\d+$")


def _prepare_record(root: Path, part: pd.DataFrame) -> dict[str, Any] | None:
    """The ``prepare.json`` config of the real dataset a dataset's classifier runs trained on (its ``config.json``
    names it), or None when it is not here."""
    for rel in part["path"]:
        cfg_file = root / rel / "config.json"
        if not cfg_file.is_file():
            continue
        real_dir = runs.read_json(cfg_file).get("real_dir")
        record = runs.project_path(real_dir) / "prepare.json" if real_dir else None
        if record is not None and record.is_file():
            doc = runs.read_json(record)
            return {**(doc.get("config") or {}), "classes": (doc.get("report") or {}).get("classes")}
        return None
    return None


def fold_pools(runs_df: pd.DataFrame, root: Path) -> dict[str, tuple[list[tuple[str, int]], str]]:
    """The datasets of ``runs_df`` that are folds of one k-fold: ``{pool name: ([(dataset, fold), ...], key)}`` in
    fold order, for every pool of two or more folds found. Folds of one pool share the dataset name but its
    ``_fold<k>`` ending and were prepared with the same settings but ``fold`` (read from each dataset's
    ``prepare.json``; ``key`` holds those settings); the pool is named ``'<name> (K folds pooled)'``, or
    ``'<name> (<n> of K folds pooled)'`` when some folds have no runs. Folds that cannot be pooled (one fold
    number twice) are left out with a warning."""
    import warnings

    from histlib.data.prepare import _NOT_HASHED

    found: dict[str, list[tuple[str, int, int]]] = {}
    stems: dict[str, str] = {}
    for ds, part in runs_df.groupby("dataset", sort=False):
        cfg = _prepare_record(root, part)
        if not cfg or not isinstance(cfg.get("folds"), int) or cfg["folds"] < 2:
            continue
        stem = m.group("stem") if (m := _FOLD_NAME.match(str(ds))) else str(ds)
        key = repr([stem, sorted((k, repr(v)) for k, v in cfg.items() if k != "fold" and k not in _NOT_HASHED)])
        stems[key] = stem
        found.setdefault(key, []).append((str(ds), int(cfg["fold"]), int(cfg["folds"])))
    pools = {}
    for key, members in found.items():
        members = sorted(members, key=lambda m: m[1])
        folds, stem = members[0][2], stems[key]
        if len({m[1] for m in members}) != len(members):
            warnings.warn(f"{[m[0] for m in members]}: the same fold twice among datasets prepared alike; not "
                          "pooled", stacklevel=2)
            continue
        if len(members) < 2:
            continue
        what = f"{folds} folds pooled" if len(members) == folds else f"{len(members)} of {folds} folds pooled"
        pools[f"{stem} ({what})"] = ([(ds, f) for ds, f, _ in members], key)
    return pools


def _pooled_correct(parts: list[tuple], same_images: bool = False) -> tuple[np.ndarray, np.ndarray, Any] | str:
    """One fold-pooled ``(correct [S, N], y, groups)`` from each fold's :func:`_correct`, or why there is none.
    Each fold's own test images are put side by side; where every fold scored the ``same_images`` (an external
    set), each image stays once and the folds' runs are put one under the other (``K × S`` runs)."""
    bad = next((p for p in parts if isinstance(p, str)), None)
    if bad is not None:
        return bad
    if len({c.shape[0] for c, _, _ in parts}) != 1:
        return "the folds have different numbers of seeds"
    if same_images:
        y, groups = parts[0][1], parts[0][2]
        if any(not np.array_equal(yi, y) or (g is None) != (groups is None)
               or (g is not None and not np.array_equal(g, groups)) for _, yi, g in parts):
            return "the folds were scored on different images"
        return np.concatenate([c for c, _, _ in parts], axis=0), y, groups
    groups = None
    if all(g is not None for _, _, g in parts):  # codes per fold, shifted past the earlier folds' codes
        offsets = np.cumsum([0] + [int(np.max(g)) + 1 if len(g) else 0 for _, _, g in parts[:-1]])
        groups = np.concatenate([np.asarray(g) + o for (_, _, g), o in zip(parts, offsets)])
    return (np.concatenate([c for c, _, _ in parts], axis=1), np.concatenate([y for _, y, _ in parts]), groups)


def _pooled_setting(parts: list[pd.DataFrame], key: tuple, preds: _Predictions, scored_on: str
                    ) -> tuple[np.ndarray, np.ndarray, Any] | str:
    """The fold-pooled predictions of one setting (``key``), from each fold's runs (``parts``), or why there are
    none (the folds ran other seeds: seed s of every fold is pooled as seed s)."""
    runs_of = [p[p[list(ROW_KEYS)].apply(tuple, axis=1) == key] for p in parts]
    seeds = [list(r["seed"]) for r in runs_of]
    if any(s != seeds[0] for s in seeds):
        return "the folds ran other seeds"
    return _pooled_correct([_correct([preds.get(r, scored_on) for r in part["path"]], part) for part in runs_of],
                           same_images=scored_on.startswith("extra/"))


def _pooled_cells(pooled: tuple) -> dict[str, Any]:
    """Accuracy and balanced accuracy (mean and std over seeds, %) of fold-pooled predictions."""
    correct, y, _ = pooled
    classes = np.unique(y)
    per_seed = {"accuracy": correct.mean(1),
                "balanced_accuracy": np.mean([correct[:, y == k].mean(1) for k in classes], axis=0)}
    cell: dict[str, Any] = {"n_seeds": int(correct.shape[0])}
    for metric, v in per_seed.items():
        cell[metric] = 100 * float(v.mean())
        cell[f"{metric}_std"] = 100 * float(v.std(ddof=1)) if len(v) > 1 else math.nan
    return cell


def _fold_parts(sides: list[pd.DataFrame], datasets: list[str]):
    """The runs to pool, per scored set every fold of every side has and per classifier of the last side:
    ``(scored_on, model, parts, common)`` with ``parts[i]`` side ``i``'s runs per fold (scored there, in seed order)
    and ``common`` the settings (:data:`ROW_KEYS`) every fold of every side has."""
    by_fold = [[r[r["dataset"] == ds] for ds in datasets] for r in sides]
    scored = [s for s in scored_sets(by_fold[-1][0]) if all(s in scored_sets(d) for side in by_fold for d in side)]
    for scored_on in scored:
        accuracy = _scalar_keys(scored_on)["accuracy"]
        for model in dict.fromkeys(sides[-1].loc[sides[-1]["dataset"].isin(datasets), "model"]):
            parts = [[d[(d["model"] == model) & _col(d, accuracy).notna()].sort_values("seed") for d in side]
                     for side in by_fold]
            common = set.intersection(*(set(map(tuple, p[list(ROW_KEYS)].itertuples(index=False)))
                                        for side in parts for p in side))
            yield scored_on, model, parts, common


def _runs_of(parts: list[pd.DataFrame], key: tuple) -> pd.DataFrame:
    """Every fold's runs of one setting, together (their label is the pooled row's)."""
    return pd.concat([p[p[list(ROW_KEYS)].apply(tuple, axis=1) == key] for p in parts])


def _pooled_rows(pool: str, members: list[tuple[str, int]], runs_df: pd.DataFrame, fold_rows: list[dict],
                 preds: _Predictions, boot: tuple) -> list[dict[str, Any]]:
    """Rows of :func:`scored_table` for one pool of folds (module docstring): a setting is pooled where every fold
    has it, on a scored set every fold has. A pooled row is a Table 1/2 row (``paper_row``, ``best_frozen``) where it
    is one in every fold: when the folds' validation splits chose different frozen variants, the pool shows none."""
    datasets = [ds for ds, _ in members]
    out = []
    for scored_on, model, (parts,), common in _fold_parts([runs_df], datasets):
        if REAL_ROW not in common:
            continue
        real = _pooled_setting(parts, REAL_ROW, preds, scored_on)
        real_rows = [r for r in fold_rows if r["dataset"] in datasets and r["scored_on"] == scored_on
                     and r["model"] == model and tuple(r[k] for k in ROW_KEYS) == REAL_ROW]
        share = _test_share([r.get("n_images") for r in real_rows], [r.get("n_train_real") for r in real_rows])
        for key in sorted(common, key=_row_order):
            this = real if key == REAL_ROW else _pooled_setting(parts, key, preds, scored_on)
            rows = [r for r in fold_rows if r["dataset"] in datasets and r["scored_on"] == scored_on
                    and r["model"] == model and tuple(r[k] for k in ROW_KEYS) == key]
            row = {"dataset": pool, "scored_on": scored_on, **dict(zip(ROW_KEYS, key)), "model": model,
                   "training_set": row_label(key, _runs_of(parts, key)), "folds": len(members),
                   "paper_row": all(r["paper_row"] for r in rows),
                   "best_frozen": all(r["best_frozen"] for r in rows),
                   "val_accuracy": float(np.mean([r["val_accuracy"] for r in rows])),
                   **{c: float(pd.Series([r[c] for r in rows], dtype=float).mean())
                      for c in ("n_train_real", "n_train_synthetic")}}
            if isinstance(this, str):
                row.update({m: math.nan for m in intervals.METRICS}, interval_note=this)
            else:
                row.update(_pooled_cells(this), n_images=len(this[1]))
                if this[2] is not None:
                    row["n_groups"] = int(len(np.unique(this[2])))
            if key != REAL_ROW and boot[0] > 0:
                row.update(_differences(real, this, *boot))
                row.update(_across_folds(row, rows, scored_on, share, len(members), boot[1]))
            out.append(row)
    return out


def _test_share(n_test: list, n_train: list) -> float | None:
    """Mean test images over mean real training images of the folds (:func:`intervals.fold_interval`'s
    ``test_over_train``), or None where either is unknown."""
    test, train = pd.Series(n_test, dtype=float).mean(), pd.Series(n_train, dtype=float).mean()
    return float(test / train) if test > 0 and train > 0 else None


def _across_folds(pooled: dict, rows: list[dict], scored_on: str, share: float | None, folds: int, ci: float
                  ) -> dict[str, Any]:
    """The folds' own differences of one pooled setting (``rows``, one per fold, with their ``diff_<metric>``):
    ``folds_diff_<metric>`` (their mean) with ``_low`` / ``_high`` (:func:`histlib.analysis.intervals.fold_interval`
    for the test share ``share``: a fold's test images over its real training images) and ``folds_same_sign`` (folds
    whose accuracy difference shares the mean's sign). Empty where the pooled row has no difference, a fold has
    none or the share is unknown, and on an external set: every fold scored the same images there, so the folds'
    differences share their test images, which the correction does not model."""
    if (scored_on != "test" or pd.isna(pooled.get("diff_accuracy")) or len(rows) != folds or share is None
            or any(pd.isna(r.get(f"diff_{m}")) for r in rows for m in intervals.METRICS)):
        return {}
    out: dict[str, Any] = {}
    for metric in intervals.METRICS:
        fi = intervals.fold_interval([r[f"diff_{metric}"] for r in rows], share, ci)
        out.update({f"folds_diff_{metric}": fi.difference, f"folds_diff_{metric}_low": fi.low,
                    f"folds_diff_{metric}_high": fi.high})
    mean = round(out["folds_diff_accuracy"], 9)  # a mean of 0 up to rounding shares no sign (as seeds_same_sign)
    same = sum(np.sign(round(r["diff_accuracy"], 9)) == np.sign(mean) for r in rows) if mean else 0
    out["folds_same_sign"] = f"{int(same)}/{folds}"
    return out


def _pooled_comparison(ra: pd.DataFrame, rb: pd.DataFrame, preds_a: _Predictions, preds_b: _Predictions,
                       boot: tuple, fold_rows: list[dict], all_b: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of :func:`compare_studies` for the cross-validations both studies ran (the same pool of folds): per
    setting that every fold of both has, B's pooled predictions against A's, with the folds' own view of
    ``fold_rows`` (the per-fold rows; the real training images from B's runs ``all_b``)."""
    pools_a, pools_b = fold_pools(ra, preds_a.root), fold_pools(rb, preds_b.root)
    out = []
    for pool in [p for p in pools_b if pools_a.get(p) == pools_b[p]]:  # the same folds of the same k-fold
        datasets = [ds for ds, _ in pools_b[pool][0]]
        # a fold's real training images: the most any of B's runs there trained on (every set with real images
        # takes the whole real train split)
        train = [_col(all_b[all_b["dataset"] == ds], "n_train_real").max() for ds in datasets]
        for scored_on, model, parts, common in _fold_parts([ra, rb], datasets):
            for key in sorted(common, key=_row_order):
                this_a, this_b = (_pooled_setting(side, key, preds, scored_on)
                                  for side, preds in zip(parts, (preds_a, preds_b)))
                row = {"dataset": pool, "scored_on": scored_on, **dict(zip(ROW_KEYS, key)), "model": model,
                       "training_set": row_label(key, _runs_of(parts[1], key)), "folds": len(datasets)}
                for side, this in (("a", this_a), ("b", this_b)):
                    cells = _pooled_cells(this) if not isinstance(this, str) else {}
                    for metric in intervals.METRICS:
                        row[f"{metric}_{side}"] = cells.get(metric, math.nan)
                    row[f"n_seeds_{side}"] = cells.get("n_seeds", math.nan)
                if not isinstance(this_b, str):
                    row["n_images"] = len(this_b[1])
                diffs = _differences(this_a, this_b, *boot, against="study A") if boot[0] > 0 else {}
                diffs.pop("n_seeds_real", None)
                rows = [r for r in fold_rows if r["dataset"] in datasets and r["scored_on"] == scored_on
                        and r["model"] == model and tuple(r[k] for k in ROW_KEYS) == key]
                diffs.update(_across_folds(diffs, rows, scored_on, _test_share([r.get("n_images") for r in rows],
                                                                               train), len(datasets), boot[1]))
                out.append({**row, **diffs})
    return out


def _no_selection(value: Any) -> str:
    """A selection as the row keys hold it: ``'none'`` (the unselected sets, whose labels name no selection) is
    ``''``."""
    value = _text(value)
    return "" if value == "none" else value


def compare_studies(df_a: pd.DataFrame, df_b: pd.DataFrame, n_boot: int = 2000, ci: float = 0.95,
                    seed: int = 0, selections: tuple[str, str] | None = None,
                    amounts: tuple[Any, Any] | None = None) -> pd.DataFrame:
    """Two studies' classifiers row by row: study B minus study A on the same held-out images (before and after a
    change of defaults, say), with the group bootstrap interval of :mod:`histlib.analysis.intervals`.

    A row is a dataset, scored set, training-set row (:data:`ROW_KEYS`) and classifier found in both studies. The
    interval pairs the two sides image by image (the seeds of each side are resampled as the seeds of a row and of
    ``real`` are in :func:`scored_table`); a re-run of the very same setting is not bit-identical on another machine
    or thread count, so read a difference against the real rows' own difference between the studies.

    Args:
        df_a, df_b: :func:`histlib.analysis.collect_metrics` of the two studies (their ``attrs['study_dir']``
            locate the per-image predictions).
        n_boot, ci, seed: bootstrap settings.
        selections: ``(selection of A, selection of B)``: pair A's generated sets kept by the first with B's kept by
            the second (same variant, amount, training set and classifier), e.g. ``('fidelity', 'agree')``; the two
            frames may be one study's; ``'none'`` names the unselected sets. Rows without a generated set are left
            out then.
        amounts: ``(amount of A, amount of B)``: pair A's generated sets of one amount with B's of another (same
            variant, selection, training set and classifier), e.g. ``(3, 6)`` or ``('3x', '6x')``; with
            ``selections`` too, both pairings apply. Rows without a generated set are left out then.

    Returns:
        ``dataset, scored_on, <row keys>, model, training_set`` (B's label), ``accuracy_a``, ``accuracy_b``,
        ``balanced_accuracy_a``, ``balanced_accuracy_b`` (seed means, %), ``n_seeds_a``, ``n_seeds_b``,
        ``n_images``, ``diff_accuracy``, ``diff_balanced_accuracy`` (B − A, points) with ``*_low`` / ``*_high``,
        ``seeds_same_sign`` and ``interval_note`` (why there is no interval); on fold-pooled rows also ``folds``
        and the folds' own view as in :func:`scored_table` (``folds_diff_*``, ``folds_same_sign``). Empty when the
        studies share no row.
    """
    amounts = None if amounts is None else tuple(classify_sets.amount_label(v) for v in amounts)  # checked first
    ra, rb = classifier_run_rows(df_a), classifier_run_rows(df_b)
    all_b = rb
    if selections is not None and len(ra) and len(rb):
        sel_a, sel_b = (_no_selection(v) for v in selections)
        ra = ra[ra["selection"].map(_no_selection) == sel_a].assign(selection=sel_b)  # A's rows take B's keys
        rb = rb[rb["selection"].map(_no_selection) == sel_b].assign(selection=sel_b)  # so the two pair up
    if amounts is not None and len(ra) and len(rb):
        am_a, am_b = amounts
        ra = ra[ra["amount"].map(_text) == am_a].assign(amount=am_b)
        rb = rb[rb["amount"].map(_text) == am_b]
    if len(ra) == 0 or len(rb) == 0:
        return pd.DataFrame()
    preds_a = _Predictions(Path(df_a.attrs.get("study_dir", ".")))
    preds_b = _Predictions(Path(df_b.attrs.get("study_dir", ".")))
    rows = []
    for (ds, model), db in rb.groupby(["dataset", "model"], sort=False):
        da = ra[(ra["dataset"] == ds) & (ra["model"] == model)]
        if len(da) == 0:
            continue
        in_a = set(scored_sets(da))
        for scored_on in [s for s in scored_sets(db) if s in in_a]:
            keys = _scalar_keys(scored_on)
            sa = da[_col(da, keys["accuracy"]).notna()].sort_values("seed")
            sb = db[_col(db, keys["accuracy"]).notna()].sort_values("seed")
            for key, part_b in sb.groupby(list(ROW_KEYS), sort=False):
                part_a = sa[sa[list(ROW_KEYS)].apply(tuple, axis=1) == key]
                if len(part_a) == 0:
                    continue
                cells_a, cells_b = _score_cells(part_a, scored_on), _score_cells(part_b, scored_on)
                row = {"dataset": ds, "scored_on": scored_on, **dict(zip(ROW_KEYS, key)), "model": model,
                       "training_set": row_label(key, part_b)}
                for metric in intervals.METRICS:
                    row[f"{metric}_a"], row[f"{metric}_b"] = cells_a[metric], cells_b[metric]
                row["n_seeds_a"], row["n_seeds_b"] = cells_a["n_seeds"], cells_b["n_seeds"]
                this_a = _correct([preds_a.get(p, scored_on) for p in part_a["path"]], part_a)
                this_b = _correct([preds_b.get(p, scored_on) for p in part_b["path"]], part_b)
                if not isinstance(this_b, str):
                    row["n_images"] = len(this_b[1])
                diffs = _differences(this_a, this_b, n_boot, ci, seed, against="study A") if n_boot > 0 else {}
                diffs.pop("n_seeds_real", None)
                rows.append({**row, **diffs})
    rows.extend(_pooled_comparison(ra, rb, preds_a, preds_b, (n_boot, ci, seed), rows, all_b))
    out = pd.DataFrame(rows)
    if len(out) == 0:
        return out
    if "interval_note" in out:
        out["interval_note"] = out["interval_note"].fillna("")
    datasets = list(dict.fromkeys(out["dataset"]))
    out = out.loc[sorted(out.index, key=lambda i: (datasets.index(out.at[i, "dataset"]), out.at[i, "scored_on"],
                                                    _row_order(tuple(out.loc[i, list(ROW_KEYS)])),
                                                    out.at[i, "model"]))].reset_index(drop=True)
    for col in ("n_seeds_a", "n_seeds_b", "n_images", "folds"):
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce").round().astype("Int64")
    return out
