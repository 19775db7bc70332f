"""Classification stage: training sets, augmentation, metrics, weights handling, runs (tiny model, 32 px)."""

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from histlib.classify import cli, sets, weights
from histlib.classify.config import ClassifyConfig
from histlib.classify.data import (
    COLOR_FACTORS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_train_set,
    eval_transform,
    train_transform,
)
from histlib.classify.evaluate import classification_metrics
from histlib.classify.train import cosine_lr_factor, run_classifiers, summarize_runs
from histlib.classify.weights import create_classifier, load_classifier

TINY = "test_resnet"  # a 0.37 M-parameter timm ResNet made for tests


def _write_folder(root, counts, size=16, manifest_splits=None, seed=0):
    """An ImageFolder ``root/<class>/<i>.png``; with ``manifest_splits`` ({class: n_val}) also a manifest.csv."""
    rng = np.random.default_rng(seed)
    rows = []
    for ci, (cls, n) in enumerate(sorted(counts.items())):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((size, size, 3), 60, np.float64)
            img[..., ci % 3] = 190  # a class-coloured image, learnable in a few steps
            img = (img + rng.normal(0, 20, img.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{i:03d}.png")
            split = "val" if manifest_splits is not None and i < manifest_splits.get(cls, 0) else "train"
            rows.append({"path": f"{cls}/{i:03d}.png", "class": cls, "split": split, "group": f"{cls}{i}",
                         "source": "test"})
    if manifest_splits is not None:
        pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("classify_data")
    # real: unequal train counts (12, 9, 15) + 4 val images per class; synthetic: 10 per class
    real = _write_folder(base / "real", {"a": 16, "b": 13, "c": 19}, manifest_splits={"a": 4, "b": 4, "c": 4})
    synth = _write_folder(base / "synth", {"a": 10, "b": 10, "c": 10}, seed=1)
    return real, synth


# ---------------------------------------------------------------------------------------------------------------
# training sets


@pytest.mark.parametrize("kind, real_n, synth_n, expect_real, expect_synth", [
    ("real", None, None, {"a": 12, "b": 9, "c": 15}, {"a": 0, "b": 0, "c": 0}),
    ("real", 7, None, {"a": 7, "b": 7, "c": 7}, {"a": 0, "b": 0, "c": 0}),
    ("synthetic", None, 6, {"a": 0, "b": 0, "c": 0}, {"a": 6, "b": 6, "c": 6}),
    ("synthetic", None, None, {"a": 0, "b": 0, "c": 0}, {"a": 10, "b": 10, "c": 10}),
    ("real+synthetic", 5, 8, {"a": 5, "b": 5, "c": 5}, {"a": 8, "b": 8, "c": 8}),
])
def test_train_set_per_class_counts(folders, kind, real_n, synth_n, expect_real, expect_synth):
    real, synth = folders
    cfg = ClassifyConfig(train_set=kind, real_dir=str(real), synthetic_dir=str(synth), real_per_class=real_n,
                         synthetic_per_class=synth_n, image_size=32)
    ds, report = build_train_set(cfg)
    assert ds.classes == ["a", "b", "c"]
    assert ds.class_counts("real") == expect_real and ds.class_counts("synthetic") == expect_synth
    assert report["train_per_class/real"] == expect_real and report["train_per_class/synthetic"] == expect_synth
    assert len(ds) == report["n_train"] == sum(expect_real.values()) + sum(expect_synth.values())
    # labels agree with the folder each path comes from, real images come from the train split only, no repeats
    assert [p.parent.name for p in ds.paths] == [ds.classes[y] for y in ds.labels]
    real_paths = [p for p, s in zip(ds.paths, ds.sources) if s == "real"]
    assert all(p.parent.parent == real and int(p.stem) >= 4 for p in real_paths)
    assert len(set(ds.paths)) == len(ds.paths)
    x, y = ds[len(ds) - 1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == ds.labels[-1]


@pytest.mark.parametrize("kind, stained", [("real", False), ("real+stain", True), ("real+synthetic+stain", True),
                                           ("synthetic+stain", True)])
def test_stain_sets_add_hed_jitter_to_every_image(folders, kind, stained):
    from histlib.data.stain_augment import HEDJitter

    real, synth = folders
    cfg = ClassifyConfig(train_set=kind, real_dir=str(real), synthetic_dir=str(synth), image_size=32,
                         stain_strength=0.2)
    ds, report = build_train_set(cfg)
    jitters = [t for _, part, _ in ds._parts for t in part.transform.transforms if isinstance(t, HEDJitter)]
    assert len(jitters) == (len(ds._parts) if stained else 0) and all(t.strength == 0.2 for t in jitters)
    assert report["stain_strength"] == (0.2 if stained else None)
    assert (report["n_train_synthetic"] > 0) == ("synthetic" in kind)
    # the real train split, with or without stain augmentation; none for the generated images alone
    assert report["n_train_real"] == (36 if kind.startswith("real") else 0)
    with pytest.raises(ValueError, match="stain jitter strength"):
        ClassifyConfig(train_set=kind, stain_strength=1.5)


def test_real_fraction_draws_nested_groups(folders, tmp_path):
    import shutil

    real, _ = folders
    # two images per group: groups must stay whole
    root = tmp_path / "grouped"
    shutil.copytree(real, root)
    m = pd.read_csv(root / "manifest.csv")
    m["group"] = [f"{c}{int(p.split('/')[1][:3]) // 2}" for c, p in zip(m["class"], m["path"])]
    m.to_csv(root / "manifest.csv", index=False)
    paths = {}
    for f in (0.25, 0.5, 1.0):
        ds, report = build_train_set(ClassifyConfig(real_dir=str(root), image_size=32, real_fraction=f, seed=1))
        paths[f] = set(ds.paths)
        assert report["real_fraction"] == f
        train = m[m["split"] == "train"]
        kept = train[train["path"].isin({p.relative_to(root).as_posix() for p in ds.paths})]
        assert set(train[train["group"].isin(kept["group"])]["path"]) == set(kept["path"])  # whole groups only
        # train groups per class: a 6, b 5, c 8; ceil(fraction * groups) of each are kept
        assert kept.groupby("class")["group"].nunique().to_dict() == {
            c: int(np.ceil(f * n)) for c, n in {"a": 6, "b": 5, "c": 8}.items()}
    assert paths[0.25] < paths[0.5] < paths[1.0]
    with pytest.raises(ValueError, match="real_fraction.*train_set 'real'"):
        ClassifyConfig(train_set="real+stain", real_fraction=0.5)
    with pytest.raises(ValueError, match="real_fraction.*real_per_class"):
        ClassifyConfig(real_fraction=0.5, real_per_class=3)
    with pytest.raises(ValueError, match=r"expected one of \[.*'synthetic\+stain'\]"):
        ClassifyConfig(train_set="real+gan")


def test_train_set_draw_is_seeded(folders):
    real, synth = folders
    cfg = ClassifyConfig(train_set="real+synthetic", real_dir=str(real), synthetic_dir=str(synth),
                         real_per_class=5, synthetic_per_class=5, seed=3)
    a, _ = build_train_set(cfg)
    b, _ = build_train_set(cfg)
    c, _ = build_train_set(ClassifyConfig(**{**cfg.__dict__, "seed": 4}))
    d, _ = build_train_set(ClassifyConfig(**{**cfg.__dict__, "seed": 4, "subset_seed": 3}))
    assert a.paths == b.paths == d.paths
    assert a.paths != c.paths


def test_synthetic_dir_seed_placeholder(folders, tmp_path):
    real, synth = folders
    _write_folder(tmp_path / "gen_seed2", {"a": 3, "b": 3, "c": 3})
    cfg = ClassifyConfig(train_set="synthetic", real_dir=str(real), synthetic_dir=str(tmp_path / "gen_seed{seed}"),
                         seed=2)
    ds, report = build_train_set(cfg)
    assert len(ds) == 9 and report["synthetic_dir"] == str(tmp_path / "gen_seed2")


def test_synthetic_folder_of_generated_sets(folders, tmp_path):
    real, _ = folders
    for k in (0, 1):
        _write_folder(tmp_path / "images" / f"set{k}", {"a": 2 + k, "b": 2 + k, "c": 2 + k})
    cfg = ClassifyConfig(train_set="synthetic", real_dir=str(real), synthetic_dir=str(tmp_path / "images"), seed=1)
    ds, report = build_train_set(cfg)
    assert report["synthetic_dir"] == str(tmp_path / "images" / "set1") and len(ds) == 9
    with pytest.raises(ValueError, match=r"no set for seed 2"):
        build_train_set(ClassifyConfig(**{**cfg.__dict__, "seed": 2}))


def test_class_name_mismatch_errors(folders, tmp_path):
    real, _ = folders
    bad = _write_folder(tmp_path / "bad", {"a": 2, "b": 2, "d": 2})
    cfg = ClassifyConfig(train_set="real+synthetic", real_dir=str(real), synthetic_dir=str(bad))
    with pytest.raises(ValueError, match=r"missing \['c'\], extra \['d'\]"):
        build_train_set(cfg)


def test_too_few_images_and_missing_folder_error(folders):
    real, synth = folders
    with pytest.raises(ValueError, match=r"class 'b' has 9 images, fewer than the 10"):
        build_train_set(ClassifyConfig(real_dir=str(real), real_per_class=10))
    with pytest.raises(ValueError, match="synthetic_dir is not set"):
        build_train_set(ClassifyConfig(train_set="synthetic", real_dir=str(real)))
    with pytest.raises(ValueError, match="train_set"):
        ClassifyConfig(train_set="fake")


# ---------------------------------------------------------------------------------------------------------------
# augmentation


def _denorm(x):
    return x * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]


def _gray(rgb):
    return 0.2989 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def test_colour_factors_stay_in_paper_range():
    """Recovers brightness b, contrast c and saturation s from each output of the full training transform.

    Whatever the order, the three ops map a pixel x (grey value g(x), image mean grey m) to
    b·(m + c·(g(x) − m)) + b·c·s·(x − g(x)); grey pixels give b and c, a coloured pixel gives s.
    """
    g1, g2, col = np.array([102] * 3), np.array([153] * 3), np.array([200, 90, 128])
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, :3], img[:, 3:6], img[:, 6:] = g1, g2, col  # rot90/flips move the pixels, values identify them
    m = _gray(img.astype(np.float64) / 255).mean()
    g1v, g2v, colv = g1[0] / 255, g2[0] / 255, col / 255
    tf = train_transform(8)
    torch.manual_seed(0)
    factors = []
    for _ in range(200):
        out = _denorm(tf(Image.fromarray(img))).permute(1, 2, 0).reshape(-1, 3).double().numpy()  # [64, 3]
        grey = out[np.ptp(out, axis=1) < 1e-5][:, 0]
        o1, o2 = grey.min(), grey.max()
        o_col = out[np.ptp(out, axis=1) > 1e-3][0]
        bc = (o2 - o1) / (g2v - g1v)
        b = (o1 - bc * (g1v - m)) / m
        c = bc / b
        k = np.argmax(np.abs(colv - _gray(colv)))
        base = b * (m + c * (_gray(colv) - m))
        s = (o_col[k] - base) / (bc * (colv[k] - _gray(colv)))
        factors.append((b, c, s))
    f = np.array(factors)  # [200, 3]
    lo, hi = COLOR_FACTORS
    assert (lo, hi) == (0.8, 1.2)
    assert f.min() > lo - 2e-3 and f.max() < hi + 2e-3, (f.min(0), f.max(0))
    # the whole range is used for every factor (not e.g. only [0.9, 1.1])
    assert (f.min(0) < lo + 0.05).all() and (f.max(0) > hi - 0.05).all(), (f.min(0), f.max(0))


def test_geometric_ops_are_exact_dihedral_permutations():
    """On a grey image with distinct values, every output is a positive affine map of one of the 8 rot90/flip
    images (colour ops act on grey pixels as b·(m + c·(x − m))); all 8 occur."""
    x = (np.arange(64).reshape(8, 8) * 2 + 64).astype(np.uint8)  # 64..190: no clipping at factor 1.2
    img = Image.fromarray(np.stack([x] * 3, -1))
    xt = torch.from_numpy(x).double()
    candidates = [torch.rot90(v, k) for v in (xt, xt.flip(1)) for k in range(4)]  # the dihedral group
    tf = train_transform(8)
    torch.manual_seed(1)
    seen = set()
    for _ in range(80):
        out = _denorm(tf(img)).double()  # [3, 8, 8]
        assert torch.allclose(out[0], out[1], atol=1e-5) and torch.allclose(out[0], out[2], atol=1e-5)
        matches = []
        for j, cand in enumerate(candidates):
            a = torch.stack([cand.flatten(), torch.ones(64, dtype=torch.float64)], 1)  # [64, 2]
            coef = torch.linalg.lstsq(a, out[0].flatten()[:, None]).solution[:, 0]
            if coef[0] > 0 and (a @ coef - out[0].flatten()).abs().max() < 1e-4:
                matches.append(j)
        assert len(matches) == 1, matches
        seen.add(matches[0])
    assert seen == set(range(8))


def test_eval_transform_is_resize_and_normalise_only():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    a = eval_transform(16)(Image.fromarray(img))
    b = eval_transform(16)(Image.fromarray(img))
    expect = (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) \
        / torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.equal(a, b) and torch.allclose(a, expect, atol=1e-6)
    assert eval_transform(8)(Image.fromarray(img)).shape == (3, 8, 8)


# ---------------------------------------------------------------------------------------------------------------
# metrics and schedule


def test_classification_metrics_match_definitions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 4, 300))
    m = classification_metrics(y, p, ["w", "x", "y", "z"])
    cm = np.zeros((4, 4), int)
    for t, q in zip(y, p):
        cm[t, q] += 1
    recall = [cm[i, i] / cm[i].sum() for i in range(4)]
    assert m["confusion_matrix"] == cm.tolist()
    assert m["accuracy"] == pytest.approx(np.mean(y == p))
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recall))
    assert [m["recall"][c] for c in "wxyz"] == pytest.approx(recall)
    # a class absent from the truth: no recall, balanced accuracy over the present classes (scikit-learn's rule)
    m2 = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]), ["a", "b", "c"])
    assert m2["recall"] == {"a": 0.5, "b": 1.0, "c": None} and m2["balanced_accuracy"] == pytest.approx(0.75)


def test_cosine_schedule():
    assert cosine_lr_factor(0, 100) == 1.0
    assert cosine_lr_factor(50, 100) == pytest.approx(0.5)
    assert cosine_lr_factor(100, 100) == pytest.approx(0.0)
    assert [cosine_lr_factor(s, 100, 4) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert cosine_lr_factor(52, 100, 4) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------------
# ImageNet weights


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and empty weight caches; the once-per-model warning memory is reset."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights, "_WARNED", set())
    return tmp_path


def test_missing_weights_warn_once_clearly_and_fast(offline):
    import timm  # noqa: F401  (imported first: the time asked of the lookup is not timm's import under load)

    t0 = time.perf_counter()
    with pytest.warns(UserWarning) as rec:
        model, info = create_classifier(TINY, 3, pretrained="auto")
    elapsed = time.perf_counter() - t0
    text = str(rec[0].message)
    # no network wait beyond the reachability probe (2.5 s at most); 10 s leaves room for a loaded machine
    assert len(rec) == 1 and elapsed < 10.0
    assert info == {"pretrained": False, "weights_source": None, "weights_file": None}
    for needle in ("HF_HUB_OFFLINE", "weights_file", "models--timm--test_resnet", str(offline / "hf"),
                   "Training from scratch"):
        assert needle in text, needle
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_classifier(TINY, 3, pretrained="auto")  # second time: silent
    with pytest.raises(RuntimeError, match="weights_file"):
        create_classifier(TINY, 3, pretrained=True)


def test_unreachable_host_is_detected_fast():
    t0 = time.perf_counter()
    assert weights.host_reachable("hub.invalid", timeout=1.0) is False  # .invalid never resolves (RFC 2606)
    assert time.perf_counter() - t0 < 3.0


@pytest.mark.parametrize("progress, quiet", [("plain", True), ("bar", False)])
def test_hub_download_bar_follows_the_progress_mode(offline, monkeypatch, progress, quiet):
    """In a study step (plain progress) the hub's download widget would stay stuck in the exported report."""
    import timm
    from huggingface_hub.utils import are_progress_bars_disabled

    seen = []

    def fake_create_model(name, pretrained=False, num_classes=1000, **kw):
        seen.append(are_progress_bars_disabled())
        return torch.nn.Linear(1, num_classes)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HISTLIB_PROGRESS", progress)
    monkeypatch.setattr(weights, "host_reachable", lambda *a, **k: True)
    monkeypatch.setattr(weights, "_cached_weights", lambda pcfg: None)
    monkeypatch.setattr(timm, "create_model", fake_create_model)
    _, info = create_classifier("resnet34", 3, pretrained="auto")
    assert info["weights_source"] == "download" and seen == [quiet]
    assert not are_progress_bars_disabled()  # restored afterwards


def test_weights_from_file_and_hf_cache(offline):
    import safetensors.torch
    import timm

    torch.manual_seed(0)
    src = timm.create_model(TINY, num_classes=1000).state_dict()  # stands in for ImageNet weights
    f = offline / "w.pth"
    torch.save(src, f)
    model, info = create_classifier(TINY, 3, weights_file=str(f))
    assert info["pretrained"] and info["weights_source"] == "file"
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in src.items() if not k.startswith("fc."))
    assert sd["fc.weight"].shape[0] == 3
    # the layout the warning asks for: <HF_HUB_CACHE>/models--timm--<repo>/{refs/main, snapshots/<rev>/…}
    repo = offline / "hf" / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in src.items()},
                                str(repo / "snapshots" / "abc123" / "model.safetensors"))
    model, info = create_classifier(TINY, 3)
    assert info["pretrained"] and info["weights_source"] == "hf-cache"
    assert torch.equal(model.state_dict()["conv1.0.weight"], src["conv1.0.weight"])
    # a checkpoint of another architecture is refused, not silently half-loaded
    other = offline / "other.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), other)
    with pytest.raises(ValueError, match="tensors of timm model"):
        create_classifier(TINY, 3, weights_file=str(other))
    with pytest.raises(FileNotFoundError, match="weights_file"):
        create_classifier(TINY, 3, weights_file=str(offline / "nope.pth"))


# ---------------------------------------------------------------------------------------------------------------
# a whole (tiny) run


@pytest.fixture(scope="module")
def finished(folders, tmp_path_factory):
    real, _ = folders
    out = tmp_path_factory.mktemp("classify_runs")
    cfg = ClassifyConfig(model=TINY, real_dir=str(real), image_size=32, epochs=2, batch_size=8, max_steps=6,
                         balanced_sampling=True, lr=3e-3, device="cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HUB_CACHE", str(out / "empty_hf_cache"))  # a user's real cache must not change the test
        mp.setenv("TORCH_HOME", str(out / "empty_torch_home"))
        mp.setattr(weights, "_WARNED", set())
        with pytest.warns(UserWarning, match="not available"):
            df = run_classifiers(["real"], [TINY], [0], cfg, out, progress=False)
    return cfg, out, df


def test_run_writes_contract_files(finished):
    cfg, out, df = finished
    run = out / f"real__{TINY}__seed0"
    assert df.loc[0, "run_dir"] == str(run) and not df.loc[0, "skipped"]
    for name in ("config.json", "env.json", "metrics.json", "stats.jsonl", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    env = json.loads((run / "env.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert env["pretrained"] is False and metrics["pretrained"] is False
    assert json.loads((run / "config.json").read_text()) == cfg.__dict__ | {"model": TINY, "seed": 0}
    assert all(not isinstance(v, dict) for v in metrics.values())  # flat keys
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    # 36 images, batch 8: 4 steps per epoch, so max_steps=6 stops in the middle of epoch 2
    assert [s["epoch"] for s in stats] == [1, 2] and stats[-1]["step"] == 6
    assert metrics["steps"] == 6 and metrics["epochs_run"] == 2 and metrics["n_train"] == 36 and metrics["n_val"] == 12


def test_run_metrics_match_sklearn_on_the_checkpoint(finished):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix

    from histlib.data.dataset import ImageDataset

    cfg, out, _ = finished
    run = out / f"real__{TINY}__seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    model, ckpt = load_classifier(run / "checkpoints" / "best.pt")
    assert ckpt["classes"] == ["a", "b", "c"] and ckpt["image_size"] == 32 and ckpt["model_name"] == TINY
    ds = ImageDataset(cfg.real_dir, split="val", transform=eval_transform(32), classes=ckpt["classes"])
    with torch.no_grad():
        pred = np.array([int(model(ds[i][0][None]).argmax()) for i in range(len(ds))])
    assert metrics["accuracy"] == pytest.approx(accuracy_score(ds.labels, pred))
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(ds.labels, pred))
    assert metrics["confusion_matrix"] == confusion_matrix(ds.labels, pred).tolist()
    best = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines() if '"best": true' in line]
    assert best[-1]["val_balanced_accuracy"] == pytest.approx(metrics["balanced_accuracy"])


def test_finished_runs_are_skipped_and_cli(finished, capsys):
    from histlib.__main__ import main

    cfg, out, _ = finished
    df = run_classifiers(["real"], [TINY], [0], cfg, out, progress=False)
    assert bool(df.loc[0, "skipped"])
    run = out / f"real__{TINY}__seed0"
    assert main(["classify", "--config", str(run / "config.json"), "--run-dir", str(run)]) == 0
    assert "skipped" in capsys.readouterr().out


def test_plots(finished):
    import matplotlib

    matplotlib.use("Agg")
    from histlib.classify.plots import plot_confusion_matrices, plot_learning_curves

    _, _, df = finished
    assert len(plot_learning_curves(df).axes) == 3
    fig = plot_confusion_matrices(df)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c"]


def test_cli_overrides_are_parsed_as_json():
    assert cli._parse_overrides(["epochs=3", "pretrained=false", "model=resnet34", "real_per_class=null"]) == \
        {"epochs": 3, "pretrained": False, "model": "resnet34", "real_per_class": None}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        cli._parse_overrides(["epochs"])


# ---------------------------------------------------------------------------------------------------------------
# held-out test split, extra test sets, variant names


def test_test_split_and_extra_sets_are_evaluated_once_on_the_chosen_checkpoint(folders, tmp_path, monkeypatch):
    from sklearn.metrics import accuracy_score

    real, synth = folders
    held = tmp_path / "real_with_test"
    import shutil

    shutil.copytree(real, held)
    m = pd.read_csv(held / "manifest.csv")
    m.loc[m.groupby("class").tail(3).index, "split"] = "test"  # 3 test images per class, never seen in training
    m.loc[m["split"] == "test", "group"] = "slide_" + m["class"]  # the test images of a class share a group
    m.to_csv(held / "manifest.csv", index=False)
    extra = _write_folder(tmp_path / "external", {"a": 3, "c": 4}, manifest_splits={}, seed=5)  # a subset of classes
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights, "_WARNED", {TINY})
    cfg = ClassifyConfig(model=TINY, train_set="synthetic", real_dir=str(held), synthetic_dir=str(synth),
                         variant="freeze_d1", image_size=32, epochs=2, batch_size=8, max_steps=4, device="cpu",
                         pretrained=False, extra_test_sets={"external": str(extra)})
    df = run_classifiers(["synthetic"], [TINY], [0], cfg, tmp_path / "runs", progress=False)
    run = tmp_path / "runs" / f"synthetic__freeze_d1__{TINY}__seed0"
    assert df.loc[0, "run_dir"] == str(run) and df.loc[0, "variant"] == "freeze_d1"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["variant"] == "freeze_d1" and metrics["test_split"] == "test"
    assert metrics["test_n"] == 9 and metrics["n_val"] == m["split"].eq("val").sum()
    assert metrics["test_accuracy"] == pytest.approx(accuracy_score(metrics["test_y_true"], metrics["test_y_pred"]))
    assert sum(map(sum, metrics["test_confusion_matrix"])) == 9
    assert metrics["extra/external/n"] == 7 and set(metrics["extra/external/y_true"]) == {0, 2}
    assert "accuracy" in metrics and "val_y_pred" in metrics  # val kept apart from test
    # each evaluated image's group (the manifest's), in prediction order, for the analysis's group bootstrap
    test_rows = m[m["split"] == "test"]
    assert pd.Series(metrics["test_groups"]).factorize()[0].tolist() == test_rows["group"].factorize()[0].tolist()
    assert metrics["test_n_groups"] == 3 and len(metrics["val_groups"]) == metrics["n_val"]
    assert len(metrics["extra/external/groups"]) == 7
    summary = summarize_runs(df)
    assert {"test_accuracy_mean", "accuracy_mean"} <= set(summary.columns)
    assert sets.run_name("real", TINY, 1, "freeze_d1") == f"real__{TINY}__seed1"  # real runs carry no variant


def test_learning_curve_runs_are_named_by_fraction(folders, tmp_path, monkeypatch):
    real, _ = folders
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    cfg = ClassifyConfig(model=TINY, real_dir=str(real), image_size=32, epochs=1, batch_size=8, max_steps=1,
                         device="cpu", pretrained=False, test_split=None)
    df = run_classifiers(["real"], [TINY], [0], cfg, tmp_path, progress=False, real_fractions=[0.5, 1.0])
    assert list(df["train_set"]) == ["real@0.5", "real"]
    m = json.loads((tmp_path / f"real@0.5__{TINY}__seed0" / "metrics.json").read_text())
    assert m["train_set"] == "real@0.5" and m["real_fraction"] == 0.5
    assert m["n_train_real"] == sum(int(np.ceil(n / 2)) for n in (12, 9, 15))  # one image per group here
    assert json.loads((tmp_path / f"real__{TINY}__seed0" / "metrics.json").read_text())["n_train_real"] == 36
