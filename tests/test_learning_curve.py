"""histlib.learning_curve: the real-data learning curve, a row's worth in real images, its figure on the index."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_analysis import answer, yardsticks  # noqa: F401  (its fixtures)

from histlib import analysis, learning_curve, report


def test_equivalent_real_images_interpolates_and_says_beyond_or_below():
    n, acc = np.array([100, 200, 300, 400]), np.array([50.0, 60.0, 70.0, 75.0])
    assert learning_curve.equivalent_real_images(n, acc, 65.0) == pytest.approx(250.0)
    assert learning_curve.equivalent_real_images(n[::-1], acc[::-1], 65.0) == pytest.approx(250.0)  # any order
    assert learning_curve.equivalent_real_images(n, acc, 50.0) == 100.0
    assert learning_curve.equivalent_real_images(n, acc, 75.0) == 400.0
    assert learning_curve.equivalent_real_images(n, acc, 75.1) == learning_curve.BEYOND
    assert learning_curve.equivalent_real_images(n, acc, 49.0) == learning_curve.BELOW
    # not monotonic: the first crossing counts
    assert learning_curve.equivalent_real_images(n, np.array([50.0, 70.0, 65.0, 72.0]), 66.0) == pytest.approx(180.0)
    assert math.isnan(learning_curve.equivalent_real_images(n, acc, math.nan))


def test_curve_and_worth_column_of_table_1_2(yardsticks):  # noqa: F811
    df = analysis.collect_metrics(yardsticks)
    curve = learning_curve.learning_curve(df)
    assert list(curve["fraction"]) == [0.25, 0.5, 0.75, 1.0] and list(curve["n_real"]) == [97, 194, 292, 389]
    assert list(curve["accuracy"]) == pytest.approx([100 * 21 / 40, 100 * 27 / 40, 100 * 30 / 40, 100 * 31 / 40])
    assert set(curve["evaluated_on"]) == {"test"} and set(curve["n_seeds"]) == {3}
    tables = analysis.paper_tables(df)
    worth = tables["lung (synthetic)"][("resnet34", analysis.WORTH)]
    assert worth.index[0] == "389 real" and not isinstance(worth.iloc[0], str) and math.isnan(worth.iloc[0])
    assert worth["389 real + stain augmentation"] == learning_curve.BEYOND  # 82.5 % > 77.5 % of all real images
    # synthetic only: 21/40 right = the 25 % point (97 images); 25/40 between 97 and 194; 29/40 between 194 and 292
    assert worth["900 generated with non-pretrained"] == "+97"
    assert worth["900 generated with pretrained"] == f"{97 + (62.5 - 52.5) / (67.5 - 52.5) * 97:+.0f}"
    assert worth["900 generated with freezing freeze_d1"] == f"{194 + (72.5 - 67.5) / (75 - 67.5) * 98:+.0f}"
    stained = tables["lung (real+synthetic+stain)"][("resnet34", analysis.WORTH)]
    # a row holding all 389 real images that scores below them is worth fewer real images than it holds
    assert stained["389 real + 900 generated with pretrained + stain augmentation"] == \
        f"{97 + (62.5 - 52.5) / (67.5 - 52.5) * 97 - 389:+.0f}"
    assert "learning curve" in analysis._caption(tables["lung (synthetic)"])
    assert "beyond the curve" in analysis.paper_tables_view(df).html


def test_no_curve_no_worth_column_and_no_figure(answer, tmp_path):  # noqa: F811
    df = analysis.collect_metrics(answer)
    assert learning_curve.learning_curve(df).empty
    assert analysis.WORTH not in analysis.paper_table(df, "lung").columns.get_level_values("metric")
    assert learning_curve.save_learning_curve(df, tmp_path) is None and not (tmp_path / "learning_curve.png").exists()


def test_figure_is_written_and_shown_on_the_index(yardsticks):  # noqa: F811
    df = analysis.collect_metrics(yardsticks)
    png = learning_curve.save_learning_curve(df, analysis.analysis_dir(yardsticks))
    assert png == yardsticks / "analysis" / "learning_curve.png" and png.stat().st_size > 1000
    assert not list(png.parent.glob(".*tmp*"))
    page = report.build_index(yardsticks).read_text()
    assert "<img src='analysis/learning_curve.png'" in page and "real-data learning curve" in page
