"""Tables for notebook cells: numbers readable, accuracies in %, nothing cut short, no path of this machine."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pandas as pd

from histlib import report, runs
from histlib.classify.train import summarize_runs
from histlib.progress import readable_warnings


def test_summary_table_shows_every_cell_in_full_and_paths_relative(tmp_path):
    @dataclasses.dataclass
    class Cfg:
        eps: float = 1e-8
        classes: tuple = tuple(f"class_{i:02d}" for i in range(12))
        counts: dict = dataclasses.field(default_factory=lambda: {f"class_{i:02d}": 24 for i in range(12)})
        out: Path = runs.project_root() / "results" / "demo" / "x"
        files: list = dataclasses.field(default_factory=lambda: [f"f{i}" for i in range(100)])

    table = report.summary_table(Cfg())
    html = table.to_html()
    assert table.data.loc["eps", "value"] == "1e-08"  # not 0.0
    assert "class_11: 24" in html and "class_11]" in html  # all 12 classes and counts, not cut at 50 characters
    assert table.data.loc["out", "value"] == "results/demo/x" and str(runs.project_root()) not in html
    assert "… (100 items)" in table.data.loc["files", "value"]


def test_percent_table_gives_accuracies_in_percent_and_explains_a_missing_spread():
    runs_df = pd.DataFrame([{"train_set": "real", "variant": None, "model": "resnet34", "seed": 0,
                             "pretrained": False, "fidelity/agreement": 0.3958, "accuracy": 0.375,
                             "balanced_accuracy": 0.3754, "test_accuracy": None,
                             "train_time_s": 8.540301, "run_dir": str(runs.project_root() / "results" / "r")}])
    view = report.percent_table(runs_df)
    data = view.data
    assert data["accuracy (%)"].iloc[0] == "37.5" and data["balanced_accuracy (%)"].iloc[0] == "37.5"
    assert data["test_accuracy (%)"].iloc[0] == "—" and data["train_time_s"].iloc[0] == "8.54"
    assert data["run folder"].iloc[0] == "results/r" and data["fidelity/agreement (%)"].iloc[0] == "39.6"
    summary = report.percent_table(summarize_runs(runs_df.assign(test_accuracy=0.5)))
    assert summary.data["accuracy_std (%)"].iloc[0] == "—" and "one seed" in summary.caption
    two = summarize_runs(pd.concat([runs_df, runs_df.assign(seed=1, accuracy=0.5)]).assign(test_accuracy=0.5))
    assert report.percent_table(two).data["accuracy_std (%)"].iloc[0] == "8.8" and not report.percent_table(two).caption


def test_readable_warnings_leave_out_the_source_file():
    import pytest

    source = str(runs.project_root() / "histlib" / "classify.py")
    with readable_warnings():
        text = warnings.formatwarning("weights missing", UserWarning, source, 744)
        with pytest.warns(UserWarning, match="weights missing"):  # still a warning for whoever records them
            warnings.warn("weights missing", UserWarning, stacklevel=1)
    assert text == "UserWarning: weights missing\n"
    assert source in warnings.formatwarning("weights missing", UserWarning, source, 744)  # restored after the block


def test_rank_correlations_say_why_there_are_none_and_gan_metrics_keep_three_digits():
    corr = pd.DataFrame([{"dataset": "t", "gan_metric": "x/fid", "classifier": "synthetic test_accuracy",
                          "spearman_rho": float("nan"), "n_variants": 2}])
    view = report.rank_correlation_table(corr)
    assert view.data["spearman_rho"].iloc[0] == "—" and "at least 3 GAN variants" in view.caption
    assert "this study has 2" in view.caption
    three = corr.assign(spearman_rho=0.5, n_variants=3)
    assert report.rank_correlation_table(three).caption is None
    gan = pd.DataFrame({"n_real": [72], "n_fake": [192.0], "fid": [48.151558], "precision": [0.760417]})
    data = report.significant_table(gan).data
    assert list(data.iloc[0]) == [72, 192, "48.2", "0.76"]


def test_warnings_and_written_files_as_tables():
    long = "class 'a_long_class_name' is mostly drawn as 'b_long_class_name' (agreement 0%, chance 12%)"
    table = report.warnings_table({("t", "pretrained"): [long]})
    assert list(table.data.columns) == ["dataset", "variant", "warning"]
    assert table.data.iloc[0]["variant"] == "pretrained"
    assert long in table.to_html()  # in full
    assert "none" in report.warnings_table({}).data.iloc[0]["warning"]
    root = runs.project_root() / "results" / "demo"
    files = report.paths_table([root / "analysis" / "gan.csv"], "results/demo")
    assert list(files.data["file"]) == ["analysis/gan.csv"]
