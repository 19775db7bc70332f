"""Confusion matrices of classifier runs: the held-out test split when it was measured, titled with its score."""

import matplotlib
import pytest

from histlib.classify.plots import plot_confusion_matrix

matplotlib.use("Agg")


def _metrics(test: bool):
    m = {"classes": ["a", "b"], "confusion_matrix": [[3, 1], [0, 4]], "balanced_accuracy": 0.875}
    if test:
        m.update(test_confusion_matrix=[[1, 3], [2, 2]], test_balanced_accuracy=0.375)
    return m


def test_the_test_split_when_measured_and_the_title_says_so():
    ax = plot_confusion_matrix(_metrics(test=True)).axes[0]
    assert "test: bal. acc 37.5 %" in ax.get_title()
    assert [t.get_text() for t in ax.texts][:2] == ["0.25", "0.75"]  # the test matrix, row-normalised
    ax = plot_confusion_matrix(_metrics(test=True), split="val").axes[0]
    assert "validation: bal. acc 87.5 %" in ax.get_title()
    assert "validation" in plot_confusion_matrix(_metrics(test=False)).axes[0].get_title()
    with pytest.raises(ValueError, match="no test split"):
        plot_confusion_matrix(_metrics(test=False), split="test")
    with pytest.raises(ValueError, match="split='x'"):
        plot_confusion_matrix(_metrics(test=True), split="x")
