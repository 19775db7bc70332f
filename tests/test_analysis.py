"""histlib.analysis: reading a study's results tree, paper-layout tables, bootstrap CIs and plots."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from histlib import analysis, runs

# Accuracies written into the synthetic tree: (dataset, train_set, model) -> per-seed (accuracy, balanced accuracy)
RESULTS = {
    ("path_dt_msu", "real", "resnet34"): [(0.90, 0.80), (0.92, 0.83), (0.94, 0.86)],
    ("path_dt_msu", "synthetic", "resnet34"): [(0.70, 0.60), (0.74, 0.66), (0.78, 0.63)],
    ("bach", "real", "resnet34"): [(0.81, 0.81), (0.85, 0.84)],
    ("bach", "real+synthetic", "densenet169"): [(0.88, 0.87)],
}


@pytest.fixture
def study(tmp_path) -> Path:
    """``results/<study>`` with classify runs, one base GAN run (stats only partly), no generate stage."""
    root = tmp_path / "results" / "toy"
    for (dataset, train_set, model), values in RESULTS.items():
        for seed, (acc, bal) in enumerate(values):
            run = runs.Run(root / dataset / "classify" / f"{train_set}__{model}__seed{seed}")
            run.write_metrics({"accuracy": acc, "balanced_accuracy": bal, "recall": {"a": 0.5, "b": 1.0},
                               "confusion_matrix": [[1, 1], [0, 2]], "pretrained": False})
            run.log_stats({"epoch": 1, "train_loss": 1.0, "val_balanced_accuracy": bal - 0.1})
            run.log_stats({"epoch": 2, "train_loss": 0.5, "val_balanced_accuracy": bal})
    base = runs.Run(root / "nct" / "base_gan" / "default")
    for kimg in (1.0, 2.0, 3.0):
        base.log_stats({"kimg": kimg, "loss_g": 1.0 / kimg, "loss_d": 0.5 + kimg})
    base.write_metrics({"kimg": 3.0, "loss_g": 0.33})
    runs.Run(root / "bach" / "classify" / "real__resnet34__seed9")  # started, never finished: no metrics.json
    runs.write_json(root / "study.json", {"study": "toy", "steps": [
        {"step": "02_base_gan__nct", "stage": "base_gan", "dataset": "nct"},
        {"step": "04_generate__bach__pretrained", "stage": "generate", "dataset": "bach"},
        {"step": "05_classify__bach", "stage": "classify", "dataset": "bach"},
        {"step": "05_classify__path_dt_msu", "stage": "classify", "dataset": "path_dt_msu"}]})
    (root / "notebooks").mkdir()  # executed notebooks live here: not a dataset
    return root


def test_collect_metrics_one_row_per_finished_run(study):
    df = analysis.collect_metrics(study)
    assert len(df) == sum(len(v) for v in RESULTS.values()) + 1
    cls = df[df["stage"] == "classify"]
    row = cls[(cls["dataset"] == "bach") & (cls["run"] == "real__resnet34__seed1")].iloc[0]
    assert (row["train_set"], row["model"], row["seed"]) == ("real", "resnet34", 1)
    assert row["accuracy"] == 0.85 and row["recall/b"] == 1.0
    assert "confusion_matrix" not in df.columns  # lists dropped by default
    assert "confusion_matrix" in analysis.collect_metrics(study, include_lists=True).columns
    assert set(df["stage"]) == {"classify", "base_gan"}
    with pytest.raises(FileNotFoundError, match="study results folder"):
        analysis.collect_metrics(study / "nope")


def test_parse_classify_run_names():
    assert analysis.parse_classify_run("real+synthetic__efficientnet_b2__seed12") == {
        "train_set": "real+synthetic", "variant": None, "model": "efficientnet_b2", "seed": 12}
    assert analysis.parse_classify_run("synthetic__freeze_d2_g2__efficientnet_b2__seed1") == {
        "train_set": "synthetic", "variant": "freeze_d2_g2", "model": "efficientnet_b2", "seed": 1}
    assert analysis.parse_classify_run("default") is None


def test_classification_table_means_and_stds(study):
    table = analysis.classification_table(analysis.collect_metrics(study))
    assert list(table.index) == [("real", "resnet34"), ("synthetic", "resnet34"), ("real+synthetic", "densenet169")]
    for (dataset, train_set, model), values in RESULTS.items():
        vals = np.array(values)
        for j, metric in enumerate(("accuracy", "balanced_accuracy")):
            assert table.loc[(train_set, model), (dataset, metric, "mean")] == pytest.approx(vals[:, j].mean())
            assert table.loc[(train_set, model), (dataset, metric, "n")] == len(values)
            std = table.loc[(train_set, model), (dataset, metric, "std")]
            if len(values) > 1:
                assert std == pytest.approx(np.std(vals[:, j], ddof=1))
            else:
                assert math.isnan(std)
    # combinations that were not run stay empty
    assert math.isnan(table.loc[("synthetic", "resnet34"), ("bach", "accuracy", "mean")])
    text = analysis.format_mean_std(table)
    assert text.loc[("real", "resnet34"), ("path_dt_msu", "accuracy")] == "92.0 ± 2.0"
    assert text.loc[("real+synthetic", "densenet169"), ("bach", "accuracy")] == "88.0"  # one seed: no spread
    boot = analysis.classification_table(analysis.collect_metrics(study), bootstrap=True, n_boot=2000)
    lo = boot.loc[("real", "resnet34"), ("path_dt_msu", "accuracy", "ci_low")]
    hi = boot.loc[("real", "resnet34"), ("path_dt_msu", "accuracy", "ci_high")]
    assert 0.90 <= lo <= 0.92 <= hi <= 0.94


def test_missing_stages_are_reported_not_fatal(study):
    df = analysis.collect_metrics(study)
    assert analysis.gan_table(df).empty
    status = analysis.stage_status(study, df)
    by = {(r.stage, r.dataset): r for r in status.itertuples()}
    assert by[("generate", "bach")].status == "missing"
    assert by[("classify", "bach")].status == "partial" and by[("classify", "bach")].unfinished == 1
    assert by[("classify", "path_dt_msu")].status == "ok"
    message = analysis.describe_missing(status)
    assert "generate" in message and "finetune" in message and "base_gan" not in message
    for fig in (analysis.plot_gan_metrics(df), analysis.plot_classification(df),
                analysis.plot_training_curves(analysis.collect_stats(study), stage="finetune")):
        assert fig.axes
    empty = study.parent / "empty"
    empty.mkdir()
    assert analysis.collect_metrics(empty).empty
    assert analysis.classification_table(analysis.collect_metrics(empty)).empty
    assert analysis.stage_status(empty).empty


def test_gan_table_and_extractor_labels(study):
    for variant, fid in (("pretrained", 30.0), ("scratch", 60.0)):
        runs.Run(study / "bach" / "generate" / variant).write_metrics({
            "n_images": 100, "random-test/fid": fid, "random-test/precision": 0.5, "random-test/recall": 0.4,
            "random-test/per_class/a/fid": 1.0, "memorisation/pixels/min_distance": 0.2})
    df = analysis.collect_metrics(study)
    table = analysis.gan_table(df)
    assert list(table.index) == [("bach", "pretrained", "random-test"), ("bach", "scratch", "random-test")]
    assert list(table.columns) == ["fid", "precision", "recall"]
    assert table.loc[("bach", "scratch", "random-test"), "fid"] == 60.0
    fig = analysis.plot_gan_metrics(df)
    assert len(fig.axes) == 3 and "random-test" in fig.texts[0].get_text()


def test_collect_stats_and_curves(study):
    stats = analysis.collect_stats(study, stage="base_gan")
    assert list(stats["kimg"]) == [1.0, 2.0, 3.0] and set(stats["run"]) == {"default"}
    fig = analysis.plot_training_curves(stats, keys=("loss_g", "loss_d", "absent"))
    assert len(fig.axes) == 2
    assert len(analysis.collect_stats(study)) == 3 + 2 * sum(len(v) for v in RESULTS.values())


def test_write_tables(study, tmp_path):
    table = analysis.classification_table(analysis.collect_metrics(study))
    paths = analysis.write_tables({"classification": table, "gan": analysis.gan_table(analysis.collect_metrics(study))},
                                  tmp_path / "analysis")
    assert sorted(p.name for p in paths) == ["classification.csv", "classification.md"]
    md = (tmp_path / "analysis" / "classification.md").read_text()
    header = "| train_set | model | bach / accuracy / mean | bach / accuracy / std | bach / accuracy / n |"
    assert md.splitlines()[0].startswith(header)
    assert len(md.splitlines()) == 2 + len(table)
    # names become plain file names inside the folder: nothing escapes it
    assert [p.name for p in analysis.write_tables({"../x y": table}, tmp_path / "a")] == ["x_y.csv", "x_y.md"]
    with pytest.raises(ValueError, match="letters or digits"):
        analysis.write_tables({"../": table}, tmp_path)


def test_bootstrap_ci_contains_mean_and_narrows():
    rng = np.random.default_rng(1)
    small = rng.normal(10.0, 2.0, size=10)
    large = rng.normal(10.0, 2.0, size=1000)
    a = analysis.bootstrap_ci(small)
    b = analysis.bootstrap_ci(large)
    assert a.low <= a.mean <= a.high and b.low <= b.mean <= b.high
    assert a.mean == pytest.approx(small.mean())
    assert (b.high - b.low) < (a.high - a.low) / 5  # ~1/sqrt(100) as wide with 100x the data
    # the normal-theory interval mean ± 1.96 s / sqrt(n) is an independent check for a large sample
    half = 1.96 * large.std(ddof=1) / math.sqrt(large.size)
    assert (b.high - b.low) / 2 == pytest.approx(half, rel=0.1)
    assert analysis.bootstrap_ci(small, ci=0.5).high - analysis.bootstrap_ci(small, ci=0.5).low < a.high - a.low
    assert analysis.bootstrap_ci(small, seed=3) == analysis.bootstrap_ci(small, seed=3)
    assert analysis.bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert all(math.isnan(v) for v in analysis.bootstrap_ci([]))
    with pytest.raises(ValueError, match="ci="):
        analysis.bootstrap_ci(small, ci=95)


def test_metrics_json_with_non_object_is_named(study):
    bad = study / "bach" / "classify" / "real__resnet34__seed0" / "metrics.json"
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="metrics.json"):
        analysis.collect_metrics(study)


# ----------------------------------------------------------------------------------------------------------------
# The study's answer: paper tables per variant, paired differences, GAN metrics beside classifiers

# (train_set, variant) -> per-seed fraction of the 40 test images predicted right; val accuracies chosen so that the
# best frozen variant on validation (freeze_d1) is not the best on test (freeze_g2)
ANSWER = {
    ("real", ""): ([0.80, 0.82, 0.84], [30, 31, 32]),
    ("synthetic", "scratch"): ([0.50, 0.52, 0.54], [20, 22, 21]),
    ("synthetic", "pretrained"): ([0.60, 0.61, 0.62], [24, 25, 26]),
    ("synthetic", "freeze_d1"): ([0.75, 0.76, 0.77], [28, 29, 30]),
    ("synthetic", "freeze_g2"): ([0.70, 0.71, 0.72], [34, 35, 36]),
}
GAN = {"scratch": (80.0, 0.50), "pretrained": (60.0, 0.70), "freeze_d1": (40.0, 0.90), "freeze_g2": (50.0, 0.80)}


@pytest.fixture
def answer(tmp_path) -> Path:
    root = tmp_path / "results" / "ans"
    y = np.repeat([0, 1], 20)  # 40 test images, two classes, 20 groups (source images) of 2 patches
    groups = (np.arange(40) // 2).tolist()
    for (ts, variant), (vals, n_right) in ANSWER.items():
        for seed, (val, right) in enumerate(zip(vals, n_right)):
            pred = y.copy()
            pred[right:] = 1 - pred[right:]  # the first `right` images right, the rest wrong
            name = f"{ts}__{variant}__resnet34__seed{seed}" if variant else f"{ts}__resnet34__seed{seed}"
            runs.Run(root / "lung" / "classify" / name).write_metrics({
                "accuracy": val, "balanced_accuracy": val, "variant": variant or None,
                "n_train_real": 389 if ts == "real" else 0, "n_train_synthetic": 900 if ts != "real" else 0,
                "test_accuracy": right / 40, "test_balanced_accuracy": float(np.mean([(pred[y == k] == k).mean()
                                                                                      for k in (0, 1)])),
                "test_y_true": y.tolist(), "test_y_pred": pred.tolist(), "test_groups": groups, "test_n": 40})
    for variant, (fid, agreement) in GAN.items():
        runs.Run(root / "lung" / "generate" / variant).write_metrics({
            "inception-v3-fid/fid": fid, "fidelity/agreement": agreement, "fidelity/balanced_agreement": agreement,
            "fidelity/chance": 0.5, "fidelity/agreement/a": agreement,
            "fidelity/warnings": ["class 'a' is mostly drawn as 'b'"] if agreement < 0.6 else []})
    return root


def test_paper_table_chooses_the_best_frozen_variant_on_validation_and_reports_test(answer):
    df = analysis.collect_metrics(answer)
    table = analysis.paper_table(df, "lung")
    assert table.attrs["evaluated_on"] == "test" and table.attrs["best_frozen"] == "freeze_d1"
    assert list(table.index) == ["389 real", "900 generated with non-pretrained", "900 generated with pretrained",
                                 "900 generated with freezing freeze_d1"]
    # test accuracy of freeze_d1, mean of 3 seeds: (28 + 29 + 30) / 3 / 40
    assert table.loc["900 generated with freezing freeze_d1", ("resnet34", "Acc")] == pytest.approx(100 * 29 / 40)
    assert table.loc["389 real", ("resnet34", "Acc")] == pytest.approx(100 * 31 / 40)
    full = analysis.variant_table(df)
    assert len(full) == 5 and full.loc[("lung", "synthetic", "freeze_g2"), ("resnet34", "test_accuracy", "n")] == 3
    text = analysis.format_percent_table(full)
    assert text.loc[("lung", "real", ""), ("resnet34", "val_accuracy")] == "82.0 ± 2.0 (n=3)"


def test_paired_differences_against_real(answer):
    df = analysis.collect_metrics(answer)
    d = analysis.paired_differences(df, n_boot=500)
    row = d[(d["variant"] == "freeze_g2") & (d["metric"] == "accuracy")].iloc[0]
    assert row["evaluated_on"] == "test" and row["n_images"] == 40 and row["n_groups"] == 20
    assert (row["n_seeds"], row["n_seeds_real"], row["interval_note"]) == (3, 3, "")
    assert row["difference"] == pytest.approx(100 * (35 - 31) / 40)
    assert row["ci_low"] <= row["difference"] <= row["ci_high"] and row["seeds_same_sign"] == "3/3"
    worse = d[(d["variant"] == "scratch") & (d["metric"] == "accuracy")].iloc[0]
    assert worse["difference"] < 0 and worse["ci_high"] < 0  # 9-10 images fewer right, every seed
    assert set(d["metric"]) == {"accuracy", "balanced_accuracy"}


def test_gan_metrics_beside_classifiers_and_rank_correlation(answer):
    df = analysis.collect_metrics(answer)
    table = analysis.gan_vs_classifier(df)
    assert table.loc[("lung", "freeze_d1"), "inception-v3-fid/fid"] == 40.0
    assert table.loc[("lung", "freeze_d1"), "synthetic test_accuracy"] == pytest.approx(100 * 29 / 40)
    rho = analysis.rank_correlations(table)
    fid = rho[(rho["gan_metric"] == "inception-v3-fid/fid") & (rho["classifier"] == "synthetic test_accuracy")]
    # FID ranks 80 > 60 > 50 > 40, accuracy 21 < 25 < 35 < 29 right: rho of -0.8
    assert fid["spearman_rho"].iloc[0] == pytest.approx(-0.8) and fid["n_variants"].iloc[0] == 4
    assert analysis.fidelity_warnings(answer) == {("lung", "scratch"): ["class 'a' is mostly drawn as 'b'"]}
    assert analysis.fidelity_table(df).loc[("lung", "pretrained"), "agreement"] == pytest.approx(70.0)


# ----------------------------------------------------------------------------------------------------------------
# Yardsticks: classic stain augmentation and the real-data learning curve

# (label, variant) -> per-seed test images right of 40, n_train_real; real@<f> runs are the learning curve
YARDSTICKS = {
    ("real@0.25", ""): ([20, 21, 22], 97), ("real@0.5", ""): ([26, 27, 28], 194),
    ("real@0.75", ""): ([29, 30, 31], 292), ("real+stain", ""): ([32, 33, 34], 389),
    ("real+synthetic+stain", "freeze_d1"): ([36, 37, 38], 389),
    ("real+synthetic+stain", "pretrained"): ([24, 25, 26], 389),
}


@pytest.fixture
def yardsticks(answer) -> Path:
    y = np.repeat([0, 1], 20)
    for (label, variant), (n_right, n_real) in YARDSTICKS.items():
        for seed, right in enumerate(n_right):
            pred = y.copy()
            pred[right:] = 1 - pred[right:]
            name = f"{label}__{variant}__resnet34__seed{seed}" if variant else f"{label}__resnet34__seed{seed}"
            runs.Run(answer / "lung" / "classify" / name).write_metrics({
                "accuracy": right / 40, "balanced_accuracy": right / 40, "variant": variant or None,
                "n_train_real": n_real, "n_train_synthetic": 900 if variant else 0, "test_accuracy": right / 40,
                "test_balanced_accuracy": right / 40, "test_y_true": y.tolist(), "test_y_pred": pred.tolist()})
    return answer


def test_stain_rows_in_table_1_2_and_against_real(yardsticks):
    df = analysis.collect_metrics(yardsticks)
    tables = analysis.paper_tables(df)
    assert set(tables) == {"lung (synthetic)", "lung (real+synthetic+stain)"}
    stained = tables["lung (real+synthetic+stain)"]
    assert list(stained.index) == ["389 real", "389 real + stain augmentation",
                                   "389 real + 900 generated with pretrained + stain augmentation",
                                   "389 real + 900 generated with freezing freeze_d1 + stain augmentation"]
    assert stained.loc["389 real + stain augmentation", ("resnet34", "Acc")] == pytest.approx(100 * 33 / 40)
    assert "389 real + stain augmentation" in tables["lung (synthetic)"].index
    d = analysis.paired_differences(df, n_boot=200)
    got = d[d["metric"] == "accuracy"].set_index(["train_set", "variant"])["difference"]
    assert got[("real+stain", "")] == pytest.approx(100 * 2 / 40)
    assert got[("real+synthetic+stain", "freeze_d1")] == pytest.approx(100 * 6 / 40)
    assert got[("real@0.25", "")] == pytest.approx(-100 * 10 / 40)  # the curve's points differ from real too
class _Tables(HTMLParser):
    """Every ``<table>`` of a page as lists of cell texts, with the ``<h3>`` heading above it."""

    def __init__(self):
        super().__init__()
        self.tables, self.heading, self.text, self.row = {}, "", None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables[self.heading] = []
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th", "h3"):
            self.text = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.row is not None:
            self.row.append(self.text.strip())
        elif tag == "h3":
            self.heading = self.text.strip()
        elif tag == "tr" and self.tables:
            self.tables[list(self.tables)[-1]].append(self.row)

    def handle_data(self, data):
        if self.text is not None:
            self.text += data


def _add_external_only_dataset(root: Path, tmp_path: Path) -> None:
    """``colon``: no test split, scored on an external set only; 16 external images in 8 groups (too few for an
    interval), recorded by the runs of seed 0 only — seed 1's come from the external set's manifest."""
    external = tmp_path / "external"
    external.mkdir()
    (external / "manifest.csv").write_text("path,class,split,group,source\n" + "".join(
        f"{c}/{i}.png,{c},train,slide{i // 2},s{i}\n" for i, c in ((i, "ab"[i >= 8]) for i in range(16))))
    y = np.repeat([0, 1], 8)
    for ts, variant, right in (("real", "", (12, 13)), ("synthetic", "pretrained", (14, 15))):
        for seed, r in enumerate(right):
            pred = y.copy()
            pred[r:] = 1 - pred[r:]
            run = runs.Run(root / "colon" / "classify" / (f"{ts}__{variant}__resnet34__seed{seed}" if variant
                                                           else f"{ts}__resnet34__seed{seed}"))
            run.write_metrics({"accuracy": 0.5 + 0.1 * seed, "balanced_accuracy": 0.5, "variant": variant or None,
                               "n_train_real": 50 if ts == "real" else 0,
                               "n_train_synthetic": 0 if ts == "real" else 60,
                               "extra/external/accuracy": r / 16, "extra/external/balanced_accuracy": r / 16,
                               "extra/external/n": 16, "extra/external/y_true": y.tolist(),
                               "extra/external/y_pred": pred.tolist(),
                               **({"extra/external/groups": (np.arange(16) // 2).tolist()} if seed == 0 else {})})
            runs.write_json(run.path / "config.json", {"train_set": ts, "extra_test_sets": {"external": str(external)}})


def _read_csv(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    text = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    table[text] = table[text].fillna("")
    return table


def test_index_page_and_exported_tables_give_the_same_answer(answer, tmp_path):
    from histlib import report

    _add_external_only_dataset(answer, tmp_path)
    df = analysis.collect_metrics(answer)
    written = analysis.write_study_tables(answer, df)
    assert {p.name for p in written} >= {"classification.csv", "classification_paper.csv", "runs.csv",
                                        "differences_to_real.csv"}
    page = report.build_index(answer).read_text()
    tables = _Tables()
    tables.feed(page)
    # a table per target on the sets it was scored on: lung's test split, colon's external set (colon has no test
    # split: its validation numbers are not the answer)
    assert set(tables.tables) == {"lung", "colon"}
    assert "colon, scored on the external test set external (nothing was tuned on it): 16 images in 8 groups" in page
    paper = _read_csv(answer / "analysis" / "classification_paper.csv")
    assert list(paper.columns[:3]) == ["dataset", "scored_on", "train_set"]  # one header row
    assert len(paper) == 4 + 2 and set(paper["variant"]) == {"", "scratch", "pretrained", "freeze_d1"}
    for r in paper.itertuples():
        rows = {row[0]: row[1:] for row in tables.tables[r.dataset][2:]}
        acc, bal, seeds, d_acc, _ = rows[r.training_set]
        assert (acc, bal, seeds) == (f"{float(r.accuracy):.1f}", f"{float(r.balanced_accuracy):.1f}", str(r.n_seeds))
        if r.train_set != "real" and r.interval_note == "":
            assert [float(x) for x in re.findall(r"[-+]\d+\.\d", d_acc)] == pytest.approx(
                [float(r.diff_accuracy), float(r.diff_accuracy_low), float(r.diff_accuracy_high)], abs=0.051)
    lung = paper[(paper["dataset"] == "lung") & (paper["variant"] == "freeze_d1")].iloc[0]
    assert lung["accuracy"] == pytest.approx(100 * 29 / 40) and lung["best_frozen"]
    assert lung["n_groups"] == 20
    colon = paper[(paper["dataset"] == "colon") & (paper["train_set"] == "synthetic")].iloc[0]
    assert colon["accuracy"] == pytest.approx(100 * 14.5 / 16)
    assert colon["n_groups"] == 8  # seed 0's recorded groups agree with seed 1's, read from the manifest
    assert colon["interval_note"] == "too few groups for an interval"
    assert "too few groups for an interval" in page
    # one sentence per target: the row chosen on validation against real, with its interval and what it rests on
    assert re.search(r"lung \(test\): the best row on validation, 900 generated with freezing freeze_d1 \(resnet34\), "
                     r"differs from real by -5\.0 \[-\d+\.\d, [-+]\d+\.\d\] points .* 40 images in 20 groups, 3 \+ 3 "
                     r"seeds", page)
    # every variant, on the scored sets, in classification.csv; one line per run in runs.csv
    full = _read_csv(answer / "analysis" / "classification.csv")
    g2 = full[(full["variant"] == "freeze_g2")].iloc[0]
    assert g2["scored_on"] == "test" and g2["accuracy"] == pytest.approx(100 * 35 / 40) and not g2["paper_row"]
    per_run = _read_csv(answer / "analysis" / "runs.csv")
    assert len(per_run) == 15 + 4 and per_run.columns[0] == "dataset"
    one = per_run[(per_run["variant"] == "freeze_g2") & (per_run["seed"] == 2)].iloc[0]
    assert one["test_accuracy"] == pytest.approx(100 * 36 / 40) and one["split"] == "test"
    assert one["config"] == "lung/classify/synthetic__freeze_g2__resnet34__seed2/config.json"
    variants = (answer / "analysis" / "variants.csv").read_text().splitlines()
    assert variants[0].startswith("dataset,train_set,variant,") and not variants[1].startswith(",")


def test_selected_and_amount_sets_are_rows_of_their_own(answer):
    """A generated set named ``<variant>-<selection>-<amount>x`` (study axes generate.selections / amounts) is a row
    keyed by variant, selection and amount; the best frozen variant is chosen on validation per selection and amount."""
    y = np.repeat([0, 1], 20)
    for variant, val, right in (("freeze_d1-realism-2x", 0.70, 30), ("freeze_g2-realism-2x", 0.80, 26)):
        for seed in range(2):
            pred = y.copy()
            pred[right + seed:] = 1 - pred[right + seed:]
            runs.Run(answer / "lung" / "classify" / f"synthetic__{variant}__resnet34__seed{seed}").write_metrics({
                "accuracy": val, "balanced_accuracy": val, "variant": variant, "n_train_real": 0,
                "n_train_synthetic": 1800, "test_accuracy": (right + seed) / 40,
                "test_balanced_accuracy": (right + seed) / 40, "test_y_true": y.tolist(), "test_y_pred": pred.tolist(),
                "test_groups": (np.arange(40) // 2).tolist()})
    table = analysis.scored_table(analysis.collect_metrics(answer), n_boot=200)
    key = ["train_set", "variant", "selection", "amount"]
    chosen = table[table["paper_row"] & table["variant"].str.startswith("freeze_")].set_index(key)
    assert set(chosen.index) == {("synthetic", "freeze_d1", "", ""), ("synthetic", "freeze_g2", "realism", "2x")}
    row = chosen.loc[("synthetic", "freeze_g2", "realism", "2x")]
    assert row["training_set"] == "1800 generated with freezing freeze_g2, selected by realism, 2x"
    assert row["accuracy"] == pytest.approx(100 * 26.5 / 40) and row["best_frozen"]
    assert row["diff_accuracy"] == pytest.approx(100 * (26.5 - 31) / 40) and row["n_groups"] == 20
    assert not table.set_index(key).loc[("synthetic", "freeze_d1", "realism", "2x"), "paper_row"]


def _synthetic_runs(study, right_by_label, seeds=3):
    """Synthetic-only runs of the generated sets ``label`` of ``right_by_label`` on a 40-image test split (20
    groups): seed ``s`` gets the first ``right + s`` images right."""
    y = np.repeat([0, 1], 20)
    for label, right in right_by_label.items():
        for seed in range(seeds):
            pred = y.copy()
            pred[right + seed:] = 1 - pred[right + seed:]
            runs.Run(study / "lung" / "classify" / f"synthetic__{label}__resnet34__seed{seed}").write_metrics({
                "accuracy": 0.7, "balanced_accuracy": 0.7, "variant": label, "n_train_real": 0,
                "n_train_synthetic": 900, "test_accuracy": (right + seed) / 40,
                "test_balanced_accuracy": (right + seed) / 40, "test_y_true": y.tolist(),
                "test_y_pred": pred.tolist(), "test_groups": (np.arange(40) // 2).tolist()})


def test_one_studys_two_selections_compared_row_by_row(answer, tmp_path, capsys):
    """``study compare A A --selections fidelity agree``: each set kept by one selection against the same variant's
    set kept by the other, paired on the test images; rows without a generated set are left out. ``none`` names the
    unselected sets (whose labels name no selection)."""
    import shutil

    from histlib.__main__ import main

    study = tmp_path / "results" / "sel"
    shutil.copytree(answer, study)
    # agree gets 3 more images right than fidelity, every seed; the unselected set ('none': no selection in its
    # label) 4 fewer than agree
    _synthetic_runs(study, {"freeze_g2-fidelity-3x": 30, "freeze_g2-agree-3x": 33, "freeze_g2-3x": 29})
    df = analysis.collect_metrics(study)
    table = analysis.compare_studies(df, df, n_boot=300, selections=("fidelity", "agree"))
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["train_set"], row["variant"], row["selection"], row["amount"]) == ("synthetic", "freeze_g2", "agree",
                                                                                   "3x")
    assert row["accuracy_a"] == pytest.approx(100 * 31 / 40) and row["accuracy_b"] == pytest.approx(100 * 34 / 40)
    assert row["diff_accuracy"] == pytest.approx(100 * 3 / 40) and row["seeds_same_sign"] == "3/3"
    assert 0 <= row["diff_accuracy_low"] <= row["diff_accuracy"] <= row["diff_accuracy_high"]
    assert analysis.compare_studies(df, df, n_boot=0, selections=("realism", "agree")).empty
    unselected = analysis.compare_studies(df, df, n_boot=100, selections=("none", "agree"))
    assert len(unselected) == 1 and unselected.iloc[0]["diff_accuracy"] == pytest.approx(100 * 4 / 40)
    back = analysis.compare_studies(df, df, n_boot=100, selections=("agree", "none")).iloc[0]
    assert back["selection"] == "" and back["diff_accuracy"] == pytest.approx(-100 * 4 / 40)
    assert main(["study", "compare", str(study), str(study), "--boot", "200", "--selections", "fidelity",
                 "agree"]) == 0
    printed = capsys.readouterr().out
    assert "selected by fidelity; B: those selected by agree" in printed and "+7.5 [" in printed
    assert main(["study", "compare", str(study), str(study), "--boot", "0", "--selections", "none", "agree"]) == 0
    assert "A: the generated sets unselected; B: those selected by agree" in capsys.readouterr().out
    assert main(["study", "compare", str(study), str(study), "--selections", "realism", "agree"]) == 1
    assert "by 'realism' and B's by 'agree'" in capsys.readouterr().out


def test_two_studies_compared_row_by_row_on_the_same_images(answer, tmp_path, capsys):
    """``compare_studies`` / ``study compare``: B minus A per shared row, paired on the test images; a row only one
    study has is left out; a row scored on other images has no interval and says why."""
    import shutil

    from histlib.__main__ import main

    b = tmp_path / "results" / "after"
    shutil.copytree(answer, b)
    y = np.repeat([0, 1], 20)
    for seed in range(3):  # freeze_g2's synthetic runs get 3 more images right in B, every seed
        path = b / "lung" / "classify" / f"synthetic__freeze_g2__resnet34__seed{seed}" / "metrics.json"
        m = runs.read_json(path)
        pred = y.copy()
        pred[34 + seed + 3:] = 1 - pred[34 + seed + 3:]
        m.update(test_y_pred=pred.tolist(), test_accuracy=(34 + seed + 3) / 40)
        runs.write_json(path, m)
        shutil.rmtree(b / "lung" / "classify" / f"synthetic__scratch__resnet34__seed{seed}")
        other = b / "lung" / "classify" / f"synthetic__freeze_d1__resnet34__seed{seed}" / "metrics.json"
        m = runs.read_json(other)
        m.update(test_y_true=y[::-1].tolist(), test_y_pred=y[::-1].tolist())
        runs.write_json(other, m)
    table = analysis.compare_studies(analysis.collect_metrics(answer), analysis.collect_metrics(b), n_boot=300)
    rows = table.set_index(["train_set", "variant"])
    assert ("synthetic", "scratch") not in rows.index and ("real", "") in rows.index
    g2 = rows.loc[("synthetic", "freeze_g2")]
    assert g2["accuracy_a"] == pytest.approx(100 * 35 / 40) and g2["accuracy_b"] == pytest.approx(100 * 38 / 40)
    assert g2["diff_accuracy"] == pytest.approx(100 * 3 / 40) and g2["seeds_same_sign"] == "3/3"
    # B gets right every image A gets right: no resample of the groups can make B worse
    assert 0 <= g2["diff_accuracy_low"] < g2["diff_accuracy"] <= g2["diff_accuracy_high"]
    assert rows.loc[("real", ""), "diff_accuracy"] == 0
    d1 = rows.loc[("synthetic", "freeze_d1")]
    assert math.isnan(d1["diff_accuracy"]) and d1["interval_note"] == "not scored on the same images as study A"
    out = tmp_path / "cmp.csv"
    assert main(["study", "compare", str(answer), str(b), "--boot", "200", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "900 generated with freezing freeze_g2" in printed and "+7.5 [" in printed
    assert len(pd.read_csv(out)) == len(table)
    assert main(["study", "compare", str(answer), str(tmp_path / "missing")]) == 2
    assert "study results folder not found" in capsys.readouterr().err


def test_one_studys_two_amounts_compared_row_by_row(answer, tmp_path, capsys):
    """``study compare A A --amounts 3 6``: each set of one amount against the same variant's and selection's set of
    the other, paired on the test images; rows without a generated set are left out."""
    import shutil

    from histlib.__main__ import main

    study = tmp_path / "results" / "amt"
    shutil.copytree(answer, study)
    _synthetic_runs(study, {"freeze_g2-agree-3x": 30, "freeze_g2-agree-6x": 32, "freeze_g2-agree-0.5x": 25})
    df = analysis.collect_metrics(study)
    table = analysis.compare_studies(df, df, n_boot=300, amounts=(3, "6x"))
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["train_set"], row["variant"], row["selection"], row["amount"]) == ("synthetic", "freeze_g2", "agree",
                                                                                   "6x")
    assert row["diff_accuracy"] == pytest.approx(100 * 2 / 40) and row["seeds_same_sign"] == "3/3"
    half = analysis.compare_studies(df, df, n_boot=0, amounts=("0.5", 3), selections=("agree", "agree"))
    assert len(half) == 1 and half.iloc[0]["accuracy_b"] - half.iloc[0]["accuracy_a"] == pytest.approx(100 * 5 / 40)
    assert analysis.compare_studies(df, df, n_boot=0, amounts=(1, 3)).empty
    assert main(["study", "compare", str(study), str(study), "--boot", "200", "--amounts", "3", "6"]) == 0
    printed = capsys.readouterr().out
    assert "A: the generated sets of 3x; B: those of 6x" in printed and "+5.0 [" in printed
    assert main(["study", "compare", str(study), str(study), "--amounts", "3", "lots"]) == 2
    assert "--amounts: amount 'lots'" in capsys.readouterr().err
    for bad in (0, float("inf"), True, "3y"):
        with pytest.raises(ValueError, match="expected a positive number"):
            analysis.compare_studies(df, df, amounts=(bad, 3))
    assert analysis.compare_studies(df, df, n_boot=0, amounts=("3X", 6)).iloc[0]["amount"] == "6x"
