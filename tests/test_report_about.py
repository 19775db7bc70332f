"""The index page's first box: what the profile's results mean and the caveats read from the run folders."""

from __future__ import annotations

import pandas as pd

from histlib import report, runs


def _prepared(root, classes, sources_per_class, patches_per_source, test_sources_per_class=1):
    rows = []
    for c in classes:
        for s in range(sources_per_class):
            split = "test" if s < test_sources_per_class else "train"
            rows += [{"path": f"{c}/{c}{s}_{p}.png", "class": c, "split": split, "group": f"{c}{s}",
                      "source": f"{c}/{c}{s}.tif"} for p in range(patches_per_source)]
    root.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def _study(tmp_path, profile="demo", variants=("pretrained",), pretrained=False, seeds=(0,)):
    base = _prepared(tmp_path / "data" / "base", ["a", "b", "c"], 2, 4, test_sources_per_class=0)
    target = _prepared(tmp_path / "data" / "target", ["x", "y"], 3, 5)
    root = tmp_path / "results" / "toy"
    runs.write_json(root / "base" / "base_gan" / "default" / "config.json",
                    {"data_dir": str(base), "kimg": 8, "resolution": 32})
    for v in variants:
        runs.write_json(root / "target" / "finetune" / v / "config.json",
                        {"data_dir": str(target), "kimg": 3, "resolution": 32})
    for seed in seeds:
        run = runs.Run(root / "target" / "classify" / f"real__resnet34__seed{seed}")
        runs.write_json(run.path / "config.json", {"real_dir": str(target), "model": "resnet34", "seed": seed,
                                                   "epochs": 2})
        run.write_metrics({"accuracy": 0.5, "balanced_accuracy": 0.5, "pretrained": pretrained})
    runs.write_json(root / "study.json", {"study": "toy", "profile": profile, "steps": []})
    return root


def test_demo_index_says_it_is_a_plumbing_run_with_the_caveats_of_its_own_runs(tmp_path):
    root = _study(tmp_path)
    text = report.build_index(root).read_text()
    box = text[text.index("<div class='about demo'>"):]
    box = box[:box.index("</div>")]
    assert "plumbing run" in box and "mean nothing" in box
    # 3 × 2 base sources + 2 × 3 target sources, counted from the manifests
    assert "12 source images in all" in box and "base: 6 images of 3 classes cut into 24 patches" in box
    assert "target's test split holds 2 source image(s) for 2 classes" in box
    assert "base GAN trained 8 kimg at 32 px" in box and "fine-tuned GANs trained 3 kimg" in box
    assert "No <code>scratch</code> variant" in box
    assert "from scratch (no ImageNet weights on this machine) for 2 epoch(s), 1 seed(s) each: no spread" in box


def test_caveats_follow_the_runs_not_the_profile(tmp_path):
    root = _study(tmp_path, profile="reduced", variants=("scratch", "pretrained"), pretrained=True, seeds=(0, 1, 2))
    text = report.build_index(root).read_text()
    assert "<div class='about'>" in text and "plumbing" not in text
    assert "No <code>scratch</code>" not in text and "2 of the publication's 10 GAN variants" in text
    assert "from ImageNet weights for 2 epoch(s), 3 seed(s) each." in text


def test_classifiers_from_scratch_by_choice_are_not_blamed_on_the_machine(tmp_path):
    root = _study(tmp_path)
    for cfg in root.glob("target/classify/*/config.json"):
        runs.write_json(cfg, {**runs.read_json(cfg), "pretrained": False})
    assert "from scratch (as configured)" in report.build_index(root).read_text()
