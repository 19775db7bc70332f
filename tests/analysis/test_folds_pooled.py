"""histlib.analysis.answer: the folds of one cross-validation pooled into one row per setting."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from histlib import analysis, runs

Y = np.repeat([0, 1], 10)  # per fold: 20 test images, two classes, 10 groups of 2
GROUPS = (np.arange(20) // 2).tolist()
# per fold and seed, how many of the 20 test images each training set gets right (the first n)
RIGHT = {"real": [[14, 15, 13], [12, 13, 14], [15, 14, 16]],
         "real+synthetic": [[16, 17, 15], [14, 14, 16], [17, 16, 17]]}


def _prepared(root, k, folds=3, seed=0):
    out = root / "data" / "prepared" / f"lung_fold{k}"
    out.mkdir(parents=True)
    config = {"source": "raw/lung", "out": str(out), "val_fraction": 0.2, "folds": folds, "fold": k, "seed": seed}
    (out / "prepare.json").write_text(json.dumps({"config": config, "report": {"classes": ["a", "b"]}}))
    return out


@pytest.fixture
def cv(tmp_path):
    """A study whose target ``lung`` ran as three folds ``lung_fold0..2``, each with real and real + synthetic."""
    study = tmp_path / "results" / "cv"
    for k in range(3):
        real_dir = _prepared(tmp_path, k)
        for ts, per_fold in RIGHT.items():
            for seed, right in enumerate(per_fold[k]):
                pred = Y.copy()
                pred[right:] = 1 - pred[right:]
                variant = "freeze_g2-fidelity-3x" if ts != "real" else None
                name = f"{ts}__{variant}__resnet34__seed{seed}" if variant else f"{ts}__resnet34__seed{seed}"
                run = runs.Run(study / f"lung_fold{k}" / "classify" / name)
                run.write_config({"real_dir": str(real_dir), "train_set": ts})
                run.write_metrics({
                    "accuracy": 0.7 + 0.01 * seed, "balanced_accuracy": 0.7, "variant": variant,
                    "n_train_real": 100 + k, "n_train_synthetic": 300 if variant else 0,
                    "test_accuracy": right / 20, "test_balanced_accuracy": float(np.mean(
                        [(pred[Y == c] == c).mean() for c in (0, 1)])),
                    "test_y_true": Y.tolist(), "test_y_pred": pred.tolist(), "test_groups": GROUPS})
    return study


def _pooled_correct(ts):
    """[3 seeds, 60 images] of the fixture's predictions, fold after fold."""
    out = np.zeros((3, 60), bool)
    for k in range(3):
        for seed in range(3):
            out[seed, 20 * k:20 * k + RIGHT[ts][k][seed]] = True
    return out


def test_folds_are_pooled_into_one_row_per_setting(cv):
    table = analysis.scored_table(analysis.collect_metrics(cv), n_boot=500)
    pooled = table[table["dataset"] == "lung (3 folds pooled)"].set_index("train_set")
    assert list(pooled.index) == ["real", "real+synthetic"]
    assert (pooled["folds"] == 3).all() and (pooled["n_images"] == 60).all() and (pooled["n_groups"] == 30).all()
    real, other = _pooled_correct("real"), _pooled_correct("real+synthetic")
    assert pooled.at["real", "accuracy"] == pytest.approx(100 * real.mean())
    assert pooled.at["real+synthetic", "accuracy"] == pytest.approx(100 * other.mean())
    assert pooled.at["real", "accuracy_std"] == pytest.approx(100 * real.mean(1).std(ddof=1))
    # balanced accuracy from the pooled predictions: the first images of each fold are class 0
    y = np.tile(Y, 3)
    bal = np.mean([other[:, y == c].mean(1) for c in (0, 1)], axis=0).mean()
    assert pooled.at["real+synthetic", "balanced_accuracy"] == pytest.approx(100 * bal)
    row = pooled.loc["real+synthetic"]
    assert row["diff_accuracy"] == pytest.approx(100 * (other.mean() - real.mean()))
    assert row["diff_accuracy_low"] < row["diff_accuracy"] < row["diff_accuracy_high"]
    # the pooled point is the image-weighted mean of the folds' own differences (equal folds: their mean)
    folds = table[table["dataset"].str.fullmatch(r"lung_fold\d") & (table["train_set"] == "real+synthetic")]
    assert len(folds) == 3 and row["diff_accuracy"] == pytest.approx(folds["diff_accuracy"].mean())
    # three times the groups: a narrower interval than any one fold's
    width = row["diff_accuracy_high"] - row["diff_accuracy_low"]
    assert (width < folds["diff_accuracy_high"] - folds["diff_accuracy_low"]).all()
    assert row["n_train_real"] == pytest.approx(101) and row["training_set"].startswith("101 real + 300 generated")
    assert table[table["dataset"] != "lung (3 folds pooled)"]["folds"].isna().all()
    tables = analysis.paper_tables(analysis.collect_metrics(cv))
    assert "lung (3 folds pooled)" in tables
    assert "Pooled over 3 cross-validation folds" in tables["lung (3 folds pooled)"].attrs["caption"]


def test_a_pooled_row_shows_the_folds_own_differences_with_their_corrected_t_interval(cv):
    table = analysis.scored_table(analysis.collect_metrics(cv), n_boot=200)
    row = table[(table["dataset"] == "lung (3 folds pooled)") & (table["train_set"] == "real+synthetic")].iloc[0]
    per_fold = [100 * (np.mean(rs) - np.mean(r)) / 20 for rs, r in zip(RIGHT["real+synthetic"], RIGHT["real"])]
    mean, var = np.mean(per_fold), np.var(per_fold, ddof=1)
    half = 4.302652729911275 * math.sqrt(var * (1 / 3 + 20 / 101))  # t(0.975, 2); 20 test over 101 train images
    assert row["folds_diff_accuracy"] == pytest.approx(mean)
    low, high = row["folds_diff_accuracy_low"], row["folds_diff_accuracy_high"]
    assert (low, high) == pytest.approx((mean - half, mean + half))
    assert row["folds_same_sign"] == "3/3" and not math.isnan(row["folds_diff_balanced_accuracy_high"])
    # only pooled rows have the folds' view, and only their tables show it
    assert table.loc[table["folds"].isna(), "folds_diff_accuracy"].isna().all()
    shown = {name: analysis.tables.display_table(part) for name, part in analysis.tables.table_groups(table)}
    pooled = shown["lung (3 folds pooled)"]
    cell = pooled.loc[row["training_set"], ("resnet34", "Δ Acc, folds' own [95 % CI]")]
    assert cell == f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}] 3/3"
    assert pooled.loc[pooled.index[0], ("resnet34", "Δ Acc, folds' own [95 % CI]")] == "—"  # the real row
    assert all("folds' own" not in str(c) for c in shown["lung_fold0"].columns.get_level_values(1))
    long = analysis.tables.paired_differences_long(table)
    assert long.loc[long["dataset"] == "lung (3 folds pooled)", "folds_ci_high"].notna().all()


def test_an_external_set_every_fold_scored_is_pooled_once_with_every_folds_runs(cv):
    """Every fold's classifiers score the same external images: the pooled row holds each of them once, with the
    folds' runs as K × S runs, and no folds' own view (the folds' differences share their test images)."""
    ext_right = {}
    for path in sorted(cv.glob("lung_fold*/classify/*/metrics.json")):
        m = json.loads(path.read_text())
        right = 10 + int(path.parts[-4][-1]) + (2 if m["variant"] else 0) + int(path.parent.name[-1])
        pred = Y.copy()
        pred[right:] = 1 - pred[right:]
        ext_right.setdefault(bool(m["variant"]), []).append(right)
        path.write_text(json.dumps({**m, "extra/ext/accuracy": right / 20, "extra/ext/balanced_accuracy": 0.5,
                                    "extra/ext/n": 20, "extra/ext/y_true": Y.tolist(),
                                    "extra/ext/y_pred": pred.tolist(), "extra/ext/groups": GROUPS}))
    table = analysis.scored_table(analysis.collect_metrics(cv), n_boot=200)
    pooled = table[(table["dataset"] == "lung (3 folds pooled)") & (table["scored_on"] == "extra/ext")]
    pooled = pooled.set_index("train_set")
    assert (pooled["n_images"] == 20).all() and (pooled["n_seeds"] == 9).all() and (pooled["n_groups"] == 10).all()
    assert pooled.at["real", "accuracy"] == pytest.approx(100 * np.mean(ext_right[False]) / 20)
    assert pooled.at["real+synthetic", "diff_accuracy"] == pytest.approx(10.0)  # two more right in every run
    assert math.isnan(pooled.at["real+synthetic", "folds_diff_accuracy"])
    test = table[(table["dataset"] == "lung (3 folds pooled)") & (table["scored_on"] == "test")]
    assert test["folds_diff_accuracy"].notna().sum() == 1  # the test split keeps its folds' view


def test_the_folds_view_gets_its_own_columns_per_classifier():
    rows = [{"training_set": ts, "model": model, "accuracy": 80.0, "balanced_accuracy": 80.0, "n_seeds": 3,
             "diff_accuracy": d, "diff_accuracy_low": d - 2, "diff_accuracy_high": d + 2,
             "diff_balanced_accuracy": d, "diff_balanced_accuracy_low": d - 2, "diff_balanced_accuracy_high": d + 2,
             "interval_note": "", "folds_diff_accuracy": d, "folds_diff_accuracy_low": d - 3,
             "folds_diff_accuracy_high": d + 3, "folds_diff_balanced_accuracy": d,
             "folds_diff_balanced_accuracy_low": d - 3, "folds_diff_balanced_accuracy_high": d + 3,
             "folds_same_sign": "4/5" if d else ""}
            for model in ("resnet34", "densenet169") for ts, d in (("real", math.nan), ("real + synthetic", 1.5))]
    shown = analysis.tables.display_table(pd.DataFrame(rows))
    models = list(shown.columns.get_level_values(0))
    assert models == ["resnet34"] * 7 + ["densenet169"] * 7  # each classifier's columns together
    assert shown.loc["real + synthetic", ("densenet169", "Δ Acc, folds' own [95 % CI]")] == "+1.5 [-1.5, +4.5] 4/5"
    assert shown.loc["real", ("resnet34", "Δ Acc, folds' own [95 % CI]")] == "—"


def test_each_class_recall_per_row_and_pool_against_real(cv):
    for path in cv.glob("lung_fold*/classify/*/metrics.json"):  # the keys a run writes beside its predictions
        m = json.loads(path.read_text())
        right = int(round(m["test_accuracy"] * 20))  # the first `right` images, class a's ten first
        recall = {"test_recall/a": min(right, 10) / 10, "test_recall/b": max(right - 10, 0) / 10}
        path.write_text(json.dumps({**m, **recall}))
    df = analysis.collect_metrics(cv)
    recalls = analysis.class_recalls(df)
    assert list(recalls.columns[-4:]) == ["recall/a", "recall/b", "diff_recall/a", "diff_recall/b"]
    pooled = recalls[recalls["dataset"] == "lung (3 folds pooled)"].set_index("train_set")

    def expected(ts, c):  # per seed: right answers of class c over the three folds' 30 images of it
        per_seed = [sum(min(RIGHT[ts][k][s], 10) if c == "a" else max(RIGHT[ts][k][s] - 10, 0) for k in range(3)) / 30
                    for s in range(3)]
        return 100 * np.mean(per_seed)

    for ts in RIGHT:
        for c in "ab":
            assert pooled.at[ts, f"recall/{c}"] == pytest.approx(expected(ts, c))
    for c in "ab":
        assert pooled.at["real+synthetic", f"diff_recall/{c}"] == pytest.approx(
            expected("real+synthetic", c) - expected("real", c))
    assert pooled[["diff_recall/a", "diff_recall/b"]].loc["real"].isna().all()
    one = recalls[recalls["dataset"] == "lung_fold1"].set_index("train_set")
    assert one.at["real", "recall/b"] == pytest.approx(100 * np.mean([max(r - 10, 0) / 10 for r in RIGHT["real"][1]]))
    # the balanced accuracy of a row is the mean of its classes' recalls
    table = analysis.scored_table(df, n_boot=0).set_index(["dataset", "train_set"])
    assert table.loc[("lung (3 folds pooled)", "real+synthetic"), "balanced_accuracy"] == pytest.approx(
        pooled.loc["real+synthetic", ["recall/a", "recall/b"]].mean())
    assert "class_recalls" in analysis.study_tables(df)


def test_only_folds_of_one_k_fold_are_pooled(cv, tmp_path):
    """Folds prepared with other settings (here another split seed) are not one cross-validation; a missing fold
    pools the rest under 'n of K folds'; without the prepared datasets' records nothing is pooled."""
    record = tmp_path / "data" / "prepared" / "lung_fold2" / "prepare.json"
    doc = json.loads(record.read_text())
    doc["config"]["seed"] = 1
    record.write_text(json.dumps(doc))
    table = analysis.scored_table(analysis.collect_metrics(cv), n_boot=0)
    pooled = table[table["dataset"] == "lung (2 of 3 folds pooled)"]
    assert len(pooled) == 2 and (pooled["n_images"] == 40).all()
    for k in range(3):
        (tmp_path / "data" / "prepared" / f"lung_fold{k}" / "prepare.json").unlink()
    table = analysis.scored_table(analysis.collect_metrics(cv), n_boot=0)
    assert set(table["dataset"]) == {"lung_fold0", "lung_fold1", "lung_fold2"}


def test_the_forest_plot_draws_every_row_against_real_with_the_pooled_rows_last(cv):
    table = analysis.scored_table(analysis.collect_metrics(cv), n_boot=200)
    fig = analysis.plot_differences(table)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    # one line per row with a difference (3 folds + the pool, real+synthetic only), top to bottom: folds, then pool
    assert len(labels) == 4 and labels[-1].startswith("lung (3 folds pooled) · 101 real + 300 generated")
    assert len(fig.axes) == 2 and "balanced accuracy" in fig.axes[1].get_xlabel()
    # the pooled row's folds' own view under it: one grey diamond and its interval per panel
    for ax in fig.axes:
        diamonds = [ln for ln in ax.get_lines() if ln.get_marker() == "D"]
        assert len(diamonds) == 1 and diamonds[0].get_ydata()[0] == pytest.approx(-0.3)
    empty = analysis.plot_differences(table.iloc[0:0])
    assert "no row to compare with real" in empty.axes[0].texts[0].get_text()


def test_two_cross_validated_studies_are_compared_on_the_pooled_folds_too(cv):
    """``study compare`` of two studies that ran the same folds adds one pooled row per setting: B − A on every
    image of the dataset."""
    import shutil

    other = cv.parent / "cv2"
    shutil.copytree(cv, other)
    for path in other.glob("lung_fold*/classify/real+synthetic__*/metrics.json"):
        m = json.loads(path.read_text())
        k = int(path.parts[-4][-1])
        right = int(round(m["test_accuracy"] * 20)) + 1 + k  # k + 1 more images right in fold k, every seed
        pred = Y.copy()
        pred[right:] = 1 - pred[right:]
        path.write_text(json.dumps({**m, "test_accuracy": right / 20, "test_y_pred": pred.tolist()}))
    table = analysis.compare_studies(analysis.collect_metrics(cv), analysis.collect_metrics(other), n_boot=300)
    pooled = table[table["dataset"] == "lung (3 folds pooled)"].set_index("train_set")
    assert list(pooled.index) == ["real", "real+synthetic"] and (pooled["n_images"] == 60).all()
    assert pooled.at["real", "diff_accuracy"] == pytest.approx(0.0)
    assert pooled.at["real+synthetic", "diff_accuracy"] == pytest.approx(10.0)
    assert pooled.at["real+synthetic", "accuracy_b"] - pooled.at["real+synthetic", "accuracy_a"] == pytest.approx(10)
    assert (pooled["folds"] == 3).all() and len(table) == 2 * 3 + 2  # the folds' own rows stay
    # the folds' own view: +5, +10, +15 points; 20 test over 101 real training images; t(0.975, 2)
    half = 4.302652729911275 * math.sqrt(25 * (1 / 3 + 20 / 101))
    row = pooled.loc["real+synthetic"]
    assert row["folds_diff_accuracy"] == pytest.approx(10.0) and row["folds_same_sign"] == "3/3"
    assert (row["folds_diff_accuracy_low"], row["folds_diff_accuracy_high"]) == pytest.approx((10 - half, 10 + half))
    # runs that did not record their training images: the comparison stands, without the folds' own view
    for path in other.glob("lung_fold*/classify/*/metrics.json"):
        m = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in m.items() if k != "n_train_real"}))
    table = analysis.compare_studies(analysis.collect_metrics(cv), analysis.collect_metrics(other), n_boot=100)
    pooled = table[table["dataset"] == "lung (3 folds pooled)"].set_index("train_set")
    assert pooled.at["real+synthetic", "diff_accuracy"] == pytest.approx(10.0)
    assert "folds_diff_accuracy" not in pooled or pooled["folds_diff_accuracy"].isna().all()


def _set_prepare(tmp_path, k, **changes):
    record = tmp_path / "data" / "prepared" / f"lung_fold{k}" / "prepare.json"
    doc = json.loads(record.read_text())
    doc["config"].update(changes)
    record.write_text(json.dumps(doc))


def test_folds_pool_only_with_the_same_seeds_and_distinct_fold_numbers(cv, tmp_path):
    """Seed s of every fold is pooled as seed s: folds that ran other seeds get a note, no numbers; two datasets
    that claim the same fold are not pooled, with a warning."""
    run = cv / "lung_fold1" / "classify" / "real+synthetic__freeze_g2-fidelity-3x__resnet34__seed2"
    m = json.loads((run / "metrics.json").read_text())
    run.rename(run.with_name(run.name.replace("seed2", "seed5")))
    (run.with_name(run.name.replace("seed2", "seed5")) / "metrics.json").write_text(json.dumps({**m, "seed": 5}))
    table = analysis.scored_table(analysis.collect_metrics(cv), n_boot=100)
    row = table[(table["dataset"] == "lung (3 folds pooled)") & (table["train_set"] == "real+synthetic")].iloc[0]
    assert row["interval_note"] == "the folds ran other seeds" and math.isnan(row["accuracy"])
    # Table 1/2 shows that row (as while a fold's classifiers are still running) with no seeds and no numbers
    html, text = analysis.tables.paper_tables_html(table)
    pooled = analysis.tables.display_table(table[table["dataset"] == "lung (3 folds pooled)"])
    assert pooled.loc[row["training_set"], ("resnet34", "seeds")] == "—" and "the folds ran other seeds" in text
    _set_prepare(tmp_path, 1, fold=0)
    with pytest.warns(UserWarning, match=r"the same fold twice .* not pooled"):
        table = analysis.scored_table(analysis.collect_metrics(cv), n_boot=0)
    assert not table["dataset"].str.contains("pooled").any()


def test_studies_whose_folds_differ_are_not_compared_on_the_pool(cv, tmp_path):
    """Pools of two studies compare only when both ran the same folds of the same k-fold (same settings)."""
    import shutil

    other = cv.parent / "cv2"
    shutil.copytree(cv, other)
    for k in range(3):  # B's folds come from another split seed: other images in each fold
        real_dir = _prepared(tmp_path / "b", k, seed=1)
        for cfg in (other / f"lung_fold{k}" / "classify").glob("*/config.json"):
            cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "real_dir": str(real_dir)}))
    table = analysis.compare_studies(analysis.collect_metrics(cv), analysis.collect_metrics(other), n_boot=0)
    assert len(table) == 6 and not table["dataset"].str.contains("pooled").any()
