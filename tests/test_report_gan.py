"""The index page's GAN section: class-named grids, fidelity beside its judge, GAN metrics table, class match."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from histlib import report, report_gan, runs
from histlib.gan import plots


def _run(tmp_path, classes=("a", "b", "c")):
    root = tmp_path / "results" / "toy"
    run = root / "t" / "finetune" / "pretrained"
    images = torch.zeros([len(classes) * 4, 3, 8, 8], dtype=torch.uint8)  # [K·4, 3, 8, 8]
    for k in range(len(classes)):
        images[k * 4:(k + 1) * 4] = 60 * (k + 1)
    (run / "images").mkdir(parents=True)
    for name in ("reals.png", "grid-latest.png"):
        plots.write_png(run / "images" / name, plots.make_grid(images, len(classes)))
    sim = [[0.9, 0.2, 0.1], [0.5, 0.52, 0.1], [0.1, 0.2, 0.3]]  # b: c0 nearly as close; c: low similarity
    runs.write_json(run / "finetune.json", {"classes": list(classes), "base_classes": ["x", "y", "z"],
                                            "class_init": {"method": "match", "similarity": sim, "match": [0, 1, 2]}})
    (run / "stats.jsonl").write_text("".join(f'{{"kimg": {k}, "loss_g": 1.0, "loss_d": 0.5, "augment_p": 0.1}}\n'
                                             for k in (1, 2)))
    return root, run


def test_grids_have_a_named_row_per_class_with_real_beside_generated(tmp_path):
    root, run = _run(tmp_path)
    text = report_gan.grids_html(root, run)
    assert text.count("<tr><th>") == 4 and "<th>b</th>" in text
    assert text.count("images/reals.png") == 3 and text.count("images/grid-latest.png") == 3
    # row r of the grid is shifted into view: tiles of 8 px with 2 px padding, shown twice their size (b: row 1)
    assert "margin:-24px 0 0 -4px" in text and "height:16px" in text


def test_class_match_flags_close_calls_and_low_similarity(tmp_path):
    _, run = _run(tmp_path)
    table = report_gan.class_match_table(run)
    assert list(table["from base class"]) == ["x", "y", "z"]
    assert table.loc[0, "looks arbitrary"] == "" and table.loc[0, "margin"] == 0.7
    assert "x about as similar" in table.loc[1, "looks arbitrary"]
    assert "low similarity" in table.loc[2, "looks arbitrary"]
    assert "2 of 3 matches look arbitrary" in report_gan.class_match_html(run)


def test_fidelity_beside_its_judge_and_gan_metrics_as_a_table():
    m = pd.Series({"fidelity/agreement": 0.448, "fidelity/chance": 0.125, "fidelity/n": 192,
                   "fidelity/classifier_val_balanced_accuracy": 0.528, "fidelity/classifier": "r18",
                   "domain-r18/fid": 62.13245, "domain-r18/density": 0.791667, "domain-r18/n_real": 72.0,
                   "domain-r18/n_fake": 192.0, "domain-r18/precision": np.nan})
    text = report_gan.fidelity_html(m)
    assert "44.8 % of 192" in text and "own balanced accuracy on real validation images is 52.8 %" in text
    table = report_gan.gan_metrics_html(m)
    assert "<td>62.1</td>" in table and "<td>0.792</td>" in table and "<td>72</td><td>192</td>" in table
    assert "<th>density</th>" in table and "<td>—</td>" in table


def test_the_index_shows_the_variant_with_its_curves(tmp_path):
    root, run = _run(tmp_path)
    runs.write_json(root / "study.json", {"study": "toy", "profile": "demo", "steps": []})
    text = report.build_index(root).read_text()
    assert "<th>c</th>" in text and "Class match" in text
    assert (root / "index_files" / "curves-t-finetune-pretrained.png").is_file()
