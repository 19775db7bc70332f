"""Notebook 01 runs top to bottom with papermill, from the project root and from notebooks/ (marker: notebooks)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.notebooks
@pytest.mark.parametrize("cwd", ["root", "notebooks"])
def test_data_prep_notebook(tmp_path, cwd):
    papermill = pytest.importorskip("papermill")
    out_dir = tmp_path / "prepared"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "01_data_prep.ipynb"), str(tmp_path / "out.ipynb"),
        parameters={"DATASET": "sample_target", "SOURCE_DIR": "data/sample/kather2016", "OUT_DIR": str(out_dir)},
        cwd=str(ROOT if cwd == "root" else ROOT / "notebooks"), progress_bar=False, kernel_name="python3")
    df = pd.read_csv(out_dir / "manifest.csv")
    assert len(df) == 24 * 9 and set(df["split"]) == {"train", "val"}
    assert (df.groupby("group")["split"].nunique() == 1).all()
