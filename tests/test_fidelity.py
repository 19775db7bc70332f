"""histlib.fidelity: agreement and verdicts, the cached fidelity classifier, in-memory and folder scoring."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from histlib import fidelity, runs
from histlib.data.prepare import PrepareConfig, prepare_dataset

CLASSES = ["blue", "green", "red"]
COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (210, 50, 40)}


# ----------------------------------------------------------------------------------------------------------------
# Agreement and verdicts (pure)


def test_agreement_confusion_and_per_class():
    asked = [0] * 10 + [1] * 10 + [2] * 10
    seen = [0] * 9 + [2] + [1] * 10 + [2] * 7 + [0] * 3
    r = fidelity.agreement(asked, seen, CLASSES)
    assert r["confusion_matrix"] == [[9, 0, 1], [0, 10, 0], [3, 0, 7]]
    assert r["agreement"] == pytest.approx(26 / 30)
    assert r["balanced_agreement"] == pytest.approx((0.9 + 1.0 + 0.7) / 3)
    assert r["agreement/red"] == pytest.approx(0.7) and r["drawn_as/red"] == "red"
    assert r["chance"] == pytest.approx(1 / 3) and r["n"] == 30
    assert r["warnings"] == []


def test_swapped_classes_are_named_in_the_warnings():
    # the freeze_d1 pattern: n and scc swapped
    asked = [0] * 300 + [1] * 300 + [2] * 300
    seen = [0] * 300 + [1] * 0 + [0] * 114 + [2] * 186 + [1] * 300
    r = fidelity.agreement(asked, seen, ["lung_aca", "lung_n", "lung_scc"])
    assert r["agreement"] == pytest.approx(1 / 3)
    text = " ".join(r["warnings"])
    assert "'lung_n' is mostly drawn as 'lung_scc'" in text
    assert "'lung_scc' is mostly drawn as 'lung_n'" in text
    assert "chance" in r["warnings"][0]  # the set-level warning comes first


def test_set_level_warning_uses_the_classifier_ceiling():
    base = {"classes": CLASSES, "chance": 1 / 3, "agreement/blue": 0.6, "agreement/green": 0.6, "agreement/red": 0.6,
            "drawn_as/blue": "blue", "drawn_as/green": "green", "drawn_as/red": "red", "balanced_agreement": 0.6}
    # half-way between chance (0.333) and a 0.95 classifier is 0.64: 0.6 is below it
    assert fidelity.verdict({**base, "classifier_val_balanced_accuracy": 0.95})
    # against a 0.8 classifier the half-way mark is 0.57: 0.6 passes
    assert fidelity.verdict({**base, "classifier_val_balanced_accuracy": 0.8}) == []


def test_report_html_and_text_show_warnings():
    r = fidelity.agreement([0, 1, 2], [1, 0, 2], CLASSES)
    html = fidelity.report_html(r)
    assert "Warning" in html and "mostly drawn as" in html and "<table" in html
    assert "WARNING" in repr(fidelity.FidelityView(r))
    assert "not measured" in fidelity.report_html(None)
    assert fidelity.from_metrics(fidelity.metrics_keys(r)) == r


# ----------------------------------------------------------------------------------------------------------------
# The cached classifier, in-memory generators, generated folders


@pytest.fixture(scope="module")
def colour_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    rng = np.random.default_rng(0)
    for cls, col in COLOURS.items():
        (root / "raw" / cls).mkdir(parents=True)
        for i in range(24):
            a = np.clip(np.array(col)[None, None] + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / "raw" / cls / f"{i:03d}.png")
    out = root / "prepared"
    prepare_dataset(PrepareConfig(source=str(root / "raw"), out=str(out), val_fraction=0.25, group_by="patch"),
                    progress=False)
    return out


@pytest.fixture(scope="module")
def classifier(colour_dataset, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    cfg = fidelity.FidelityConfig(epochs=6, max_steps=30, batch_size=16)
    ckpt = fidelity.fidelity_classifier(colour_dataset, 16, cfg=cfg, cache_root=cache, device="cpu")
    return ckpt, cfg, cache


def test_classifier_is_trained_once_and_cached(classifier, colour_dataset, monkeypatch):
    ckpt, cfg, cache = classifier
    assert ckpt.is_file() and (ckpt.parent.parent / "fidelity.json").is_file()
    metrics = runs.read_json(ckpt.parent.parent / "metrics.json")
    assert metrics["balanced_accuracy"] > 0.9  # colours are trivially separable

    import histlib.classify.train as classify_train

    def boom(*a, **k):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(classify_train, "train_classifier", boom)
    before = fidelity.classifier_seconds()
    assert fidelity.fidelity_classifier(colour_dataset, 16, cfg=cfg, cache_root=cache) == ckpt
    assert fidelity.classifier_seconds() == before  # a cache hit costs no classifier time
    # other settings: another cache entry
    assert fidelity.classifier_dir(colour_dataset, fidelity.FidelityConfig(epochs=7), cache) != ckpt.parent.parent


def test_real_classifiers_benchmark_scores_the_cached_classifiers_on_the_test_split(classifier, colour_dataset,
                                                                                    tmp_path, capsys):
    """benchmarks/real_classifiers.py: each cached classifier of a study's datasets on the test split, then pooled."""
    import shutil
    import sys

    sys.path.insert(0, str(runs.project_path("benchmarks")))
    import real_classifiers

    ckpt, _, _ = classifier
    real = tmp_path / "real"
    shutil.copytree(colour_dataset, real)
    manifest = pd.read_csv(real / "manifest.csv")
    cached = tmp_path / "study" / "ds" / ".fidelity" / ckpt.parent.parent.name
    shutil.copytree(ckpt.parent.parent, cached)
    settings = runs.read_json(cached / "fidelity.json")
    runs.write_json(cached / "fidelity.json", {**settings, "real_dir": str(real)})
    with pytest.raises(ValueError, match="no test split to score on"):
        real_classifiers.main([str(tmp_path / "study")])
    manifest.assign(split=manifest["split"].replace({"val": "test"})).to_csv(real / "manifest.csv", index=False)
    assert real_classifiers.main([str(tmp_path / "study"), "--json", str(tmp_path / "out.json")]) == 0
    rows = json.loads((tmp_path / "out.json").read_text())
    n_test = int((manifest["split"] == "val").sum())
    assert [r["dataset"] for r in rows] == ["ds", "pooled"] and all(r["n_test"] == n_test for r in rows)
    assert rows[0]["accuracy"] > 90 and rows[1]["accuracy"] == rows[0]["accuracy"]  # colours: trivially separable
    assert "seed 1 = selection classifier" in capsys.readouterr().out
    assert real_classifiers.main([str(tmp_path / "study"), "--datasets", "other*"]) == 1


def test_concurrent_callers_train_the_classifier_once(colour_dataset, tmp_path, monkeypatch):
    """The generate steps of one target run side by side and share the cache: one trains, the others wait for it
    (unlocked, each trained its own and the last rename replaced the classifier the others had measured with)."""
    import threading
    import time

    import histlib.classify.train as classify_train

    trained = []

    def slow_train(ccfg, out, progress=False):
        trained.append(threading.get_ident())
        time.sleep(0.5)  # long enough for every caller to arrive while the first trains
        (out / "checkpoints").mkdir(parents=True)
        (out / "checkpoints" / "best.pt").write_bytes(str(len(trained)).encode())
        runs.write_json(out / "metrics.json", {"balanced_accuracy": 1.0})

    monkeypatch.setattr(classify_train, "train_classifier", slow_train)
    cfg = fidelity.FidelityConfig(epochs=1, max_steps=1)
    got, errors = [], []

    def call():
        try:
            got.append(fidelity.fidelity_classifier(colour_dataset, 16, cfg=cfg, cache_root=tmp_path, device="cpu"))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    before = fidelity.classifier_seconds()
    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(trained) == 1 and len(set(got)) == 1
    assert got[0].read_bytes() == b"1"
    # one caller trained for 0.5 s, the other two waited for it: each counts its time (study plan leaves it out of
    # a generate step's rate)
    assert fidelity.classifier_seconds() - before >= 3 * 0.5 - 0.2


class ColourGenerator(torch.nn.Module):
    """Stands in for G: class k gives noisy images of colour ``palette[k]``."""

    def __init__(self, palette):
        super().__init__()
        self.z_dim = 4
        self.register_buffer("palette", torch.tensor(palette, dtype=torch.float32) / 127.5 - 1)
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, z, c, truncation_psi=1.0, noise_mode="const"):
        base = self.palette[c][:, :, None, None].expand(-1, -1, 16, 16)
        return base + 0.1 * z[:, :1, None, None]


def test_generator_fidelity_detects_a_swap(classifier):
    clf = fidelity.FidelityClassifier(classifier[0])
    right = ColourGenerator([COLOURS[c] for c in CLASSES])
    r = fidelity.generator_fidelity(right, CLASSES, clf, per_class=20)
    assert r["agreement"] == 1.0 and r["warnings"] == []
    swapped = ColourGenerator([COLOURS["blue"], COLOURS["red"], COLOURS["green"]])
    r = fidelity.generator_fidelity(swapped, CLASSES, clf, per_class=20)
    assert r["confusion_matrix"] == [[20, 0, 0], [0, 0, 20], [0, 20, 0]]
    assert any("'green' is mostly drawn as 'red'" in w for w in r["warnings"])
    hook = fidelity.FidelityHook(clf, CLASSES, per_class=10)
    out = hook(swapped, 0)
    assert out["fidelity/agreement"] == pytest.approx(1 / 3) and out["fidelity/agreement/green"] == 0.0


def test_sets_fidelity_pools_generated_folders(classifier, tmp_path):
    clf = fidelity.FidelityClassifier(classifier[0])
    rng = np.random.default_rng(1)
    dirs = []
    for s in range(2):
        for cls in CLASSES:
            (tmp_path / f"set{s}" / cls).mkdir(parents=True)
            for i in range(5):
                a = np.clip(np.array(COLOURS[cls])[None, None] + rng.normal(0, 10, (16, 16, 3)), 0, 255)
                Image.fromarray(a.astype(np.uint8)).save(tmp_path / f"set{s}" / cls / f"{i}.png")
        dirs.append(tmp_path / f"set{s}")
    r = fidelity.sets_fidelity(dirs, clf)
    assert r["n"] == 30 and r["n_sets"] == 2 and r["agreement"] == 1.0
    (tmp_path / "set0" / "purple").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "set0" / "purple" / "0.png")
    with pytest.raises(ValueError, match="purple"):
        fidelity.sets_fidelity([tmp_path / "set0"], clf)


def test_classifier_class_names_are_checked(classifier, tmp_path):
    ck = torch.load(classifier[0], weights_only=True)
    ck["classes"] = ["red", "../../x", "blue"]
    torch.save(ck, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match=r"edited.pt: class name '../../x' holds a path separator"):
        fidelity.FidelityClassifier(tmp_path / "edited.pt")
