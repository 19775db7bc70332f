"""Smoke test of the whole demo pipeline through the study runner (papermill), at a fraction of its length.

Marked ``notebooks``: run with ``make test-notebooks`` (about 3 minutes on 2 CPU cores). Asserts are approximate,
as in a smoke test: every stage runs and writes the contract files, and the numbers are in their valid ranges.
"""

import json
from pathlib import Path

import pytest
import yaml

from histlib import runs, study

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.notebooks
def test_short_demo_study_runs_every_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    doc = yaml.safe_load((ROOT / "studies" / "demo.yaml").read_text())
    doc["name"] = "demo_smoke"
    doc["base_gan"]["KIMG"] = 0.5
    doc["finetune"].update(KIMG=0.25, variants=["pretrained"])
    doc["generate"]["IMAGES_PER_CLASS"] = 4
    doc["classify"].update(EPOCHS=1)
    cfg = tmp_path / "demo_smoke.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    rows = study.run_study(cfg, results_root=tmp_path / "results")
    assert [r["status"] for r in rows].count("finished") >= len(rows) - 2  # the data steps may be cached
    out = tmp_path / "results" / "demo_smoke"
    for r in rows:
        assert (out / "notebooks" / f"{r['step']}.html").is_file()
    base = out / "sample_base" / "base_gan" / "default"
    assert (base / "checkpoints" / "latest.pt").is_file()
    stats = runs.read_jsonl(base / "stats.jsonl")
    assert stats and all(abs(s["loss_d"]) < 1e3 for s in stats if s.get("loss_d") is not None)
    images = out / "sample_target" / "generate" / "pretrained" / "images"
    classes = sorted(p.name for p in images.iterdir() if p.is_dir())
    assert len(classes) == 8 and all(len(list((images / c).glob("*.png"))) == 4 for c in classes)
    gen = json.loads((out / "sample_target" / "generate" / "pretrained" / "metrics.json").read_text())
    assert 0.0 <= gen["fidelity/agreement"] <= 1.0 and len(gen["fidelity/confusion_matrix"]) == 8
    for name in ("real__resnet34__seed0", "synthetic__pretrained__resnet34__seed0",
                 "real+synthetic__pretrained__resnet34__seed0"):
        m = json.loads((out / "sample_target" / "classify" / name / "metrics.json").read_text())
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["balanced_accuracy"] <= 1.0
        assert 0.0 <= m["test_accuracy"] <= 1.0 and m["test_n"] > 0  # the demo target has a held-out test split
    assert any((out / "analysis").glob("*.csv"))
    # the index page and every report read offline, with working links and real titles
    from test_report import check_offline_links

    check_offline_links(out / "index.html")
    for page in (out / "notebooks").glob("*.html"):
        check_offline_links(page)
        assert "<title>Notebook</title>" not in page.read_text()
        assert "Kernel is running over TCP" not in page.read_text()
