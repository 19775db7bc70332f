"""histlib.report: the study index page reads offline and every link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from histlib import report, runs


def check_offline_links(page: Path) -> list[str]:
    """The page's link targets; asserts none leaves the machine and every relative one exists."""
    text = page.read_text()
    targets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", text)
    assert not [t for t in targets if re.match(r"(https?:)?//", t)], f"{page}: network resource"
    assert not re.search(r"""(@import|url\()\s*["']?(https?:)?//""", text), f"{page}: stylesheet from the network"
    for t in targets:
        if t and not t.startswith(("#", "data:", "mailto:")):
            assert (page.parent / t.split("#")[0]).exists(), f"{page}: broken link {t}"
    return targets


def test_index_page_from_a_results_tree(tmp_path):
    root = tmp_path / "results" / "toy"
    ft = runs.Run(root / "lung" / "finetune" / "pretrained")
    for name in ("reals.png", "grid-latest.png"):
        (ft.images).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(ft.images / name)
    runs.write_json(ft.path / "finetune.json", {"class_init": {"method": "match"}})
    runs.Run(root / "lung" / "generate" / "pretrained").write_metrics({
        "fidelity/agreement": 0.33, "fidelity/chance": 1 / 3, "fidelity/warnings": ["class 'a' is mostly drawn as 'b'"],
        "metrics_skipped": "no weights"})
    for seed in range(2):
        runs.Run(root / "lung" / "classify" / f"real__resnet34__seed{seed}").write_metrics(
            {"accuracy": 0.8, "balanced_accuracy": 0.8, "n_train_real": 10})
    nb = root / "notebooks"
    nb.mkdir(parents=True)
    (nb / "05_classify__lung__real.html").write_text("<html></html>")
    runs.write_json(nb / ".state" / "05_classify__lung__real.json", {"status": "finished", "seconds": 12.0})
    runs.write_json(nb / ".state" / "04_generate__lung__pretrained.json", {"status": "failed", "error": "boom"})
    (nb / "04_generate__lung__pretrained.failed.html").write_text("<html></html>")
    runs.write_json(root / "study.json", {"study": "toy", "profile": "demo", "description": "A toy.", "steps": [
        {"step": "04_generate__lung__pretrained", "stage": "generate", "dataset": "lung", "status": "failed"},
        {"step": "05_classify__lung__real", "stage": "classify", "dataset": "lung", "status": "finished"}]})
    (root / "analysis").mkdir()
    (root / "analysis" / "variants.csv").write_text("x\n")
    page = report.build_index(root)
    text = page.read_text()
    assert "<title>toy · histlib study</title>" in text and "A toy." in text
    assert "mostly drawn as" in text and "step 04_generate__lung__pretrained failed: boom" in text
    assert "10 real" in text  # the paper table
    assert "GAN metrics skipped: no weights" in text and "33.0 %" in text
    targets = check_offline_links(page)
    assert "lung/finetune/pretrained/images/grid-latest.png" in targets
    assert "notebooks/04_generate__lung__pretrained.failed.html" in targets and "analysis/variants.csv" in targets
    assert "Partial:" not in text  # every classify step finished
    # a classify step still running: its finished seeds show, and the page says the table is partial
    runs.Run(root / "lung" / "classify" / "synthetic__pretrained__resnet34__seed0").write_metrics(
        {"accuracy": 0.5, "balanced_accuracy": 0.5, "n_train_real": 0, "train_set": "synthetic"})
    runs.write_json(nb / ".state" / "05_classify__lung__pretrained.json", {"status": "running"})
    info = runs.read_json(root / "study.json")
    info["steps"].append({"step": "05_classify__lung__pretrained", "stage": "classify", "dataset": "lung",
                          "status": "running"})
    runs.write_json(root / "study.json", info)
    text = report.build_index(root).read_text()
    assert "Partial: 1 classify step(s) not finished (05_classify__lung__pretrained)" in text
