"""histlib.generate: class-conditional sampling to an ImageFolder; memorisation audit (histlib.audit), GAN metrics
of a set (histlib.metrics.folders)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
generate = pytest.importorskip("histlib.generate")

from histlib import audit  # noqa: E402
from histlib.generate import images as generate_images_module  # noqa: E402
from histlib.metrics import folders  # noqa: E402

CLASSES = ["adipose", "lympho", "tumor"]
G_KWARGS = dict(z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=8, img_resolution=8,
                img_channels=3, num_classes=3)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These networks are tiny: one thread avoids OpenMP spin-waiting on a busy machine (30x faster there)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained Generator saved in the trainer's checkpoint format (noise strengths set non-zero)."""
    from histlib import runs
    from histlib.gan import checkpoint as gan_checkpoint
    from histlib.gan import networks

    torch.manual_seed(0)
    G = networks.Generator(**G_KWARGS)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)  # initialised to 0: make the noise matter so noise determinism is tested too
    path = tmp_path_factory.mktemp("ckpt") / "latest.pt"
    runs.atomic_torch_save({"format": gan_checkpoint.CHECKPOINT_FORMAT, "G": G.state_dict(), "G_ema": G.state_dict(),
                            "classes": CLASSES, "network_kwargs": {"G": G_KWARGS}, "cur_nimg": 2000,
                            "config": {}}, path)
    return path


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_counts_names_and_layout(checkpoint, tmp_path):
    out = tmp_path / "images"
    report = generate.generate_images(checkpoint, out, 5, batch_size=2, seed=7, progress=False)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == CLASSES  # class names from the checkpoint
    for cls in CLASSES:
        names = sorted(p.name for p in (out / cls).iterdir())
        assert names == [f"7_{i:06d}.png" for i in range(5)]
        assert _pixels(out / cls / names[0]).shape == (8, 8, 3)
    assert report["n_images"] == 15 and report["counts"] == [{c: 5 for c in CLASSES}]
    assert json.loads((out / "generate.json").read_text())["settings"]["classes"] == CLASSES
    # the classifier stage reads this folder as a dataset with the same classes
    from histlib.data.dataset import ImageDataset

    ds = ImageDataset(out)
    assert ds.classes == CLASSES and ds.class_counts() == {c: 5 for c in CLASSES}


def test_per_class_dict_and_class_subset(checkpoint, tmp_path):
    report = generate.generate_images(checkpoint, tmp_path / "a", {"tumor": 3, "adipose": 1}, progress=False)
    assert report["counts"] == [{"adipose": 1, "tumor": 3}]
    assert not (tmp_path / "a" / "lympho").exists()
    report = generate.generate_images(checkpoint, tmp_path / "b", 2, classes=["lympho"], progress=False)
    assert report["counts"] == [{"lympho": 2}]
    with pytest.raises(ValueError, match="unknown class"):
        generate.generate_images(checkpoint, tmp_path / "c", {"stroma": 2}, progress=False)
    with pytest.raises(ValueError, match="images_per_class"):
        generate.generate_images(checkpoint, tmp_path / "d", 0, progress=False)


def test_deterministic_for_a_seed(checkpoint, tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    c = tmp_path / "c"
    generate.generate_images(checkpoint, a, 4, seed=3, batch_size=2, progress=False)
    generate.generate_images(checkpoint, b, 4, seed=3, batch_size=2, progress=False)
    generate.generate_images(checkpoint, c, 4, seed=4, batch_size=2, progress=False)
    assert _digests(a) == _digests(b)
    da, dc = _digests(a), _digests(c)
    assert len(set(da.values()) & set(dc.values())) == 0  # another seed: other images
    assert len(set(da.values())) == len(da)  # no two images alike within a set
    # with constant noise an image depends only on (seed, class, index): not on the batch size or the count
    d = generate.generate_images(checkpoint, tmp_path / "d", 4, seed=3, batch_size=4, noise_mode="const",
                                 progress=False)
    e = generate.generate_images(checkpoint, tmp_path / "e", 6, seed=3, batch_size=2, noise_mode="const",
                                 progress=False)
    dd, de = _digests(Path(d["out_dir"])), _digests(Path(e["out_dir"]))
    assert all(de[k] == v for k, v in dd.items())


def test_several_sets_have_own_seeds_and_folders(checkpoint, tmp_path):
    out = tmp_path / "images"
    report = generate.generate_images(checkpoint, out, 2, seed=10, num_sets=3, progress=False)
    assert [Path(p).name for p in report["set_dirs"]] == ["set0", "set1", "set2"]
    assert report["set_seeds"] == [10, 11, 12]
    assert sorted(p.name for p in (out / "set2" / "tumor").iterdir()) == ["12_000000.png", "12_000001.png"]
    # set j equals a single set generated with seed + j
    single = generate.generate_images(checkpoint, tmp_path / "single", 2, seed=11, progress=False)
    assert _digests(out / "set1") == _digests(Path(single["out_dir"]))


def test_reuses_an_identical_folder(checkpoint, tmp_path):
    out = tmp_path / "images"
    first = generate.generate_images(checkpoint, out, 2, progress=False)
    marker = out / "adipose" / "0_000000.png"
    mtime = marker.stat().st_mtime_ns
    again = generate.generate_images(checkpoint, out, 2, progress=False)
    assert again["reused"] and not first["reused"] and marker.stat().st_mtime_ns == mtime
    other = generate.generate_images(checkpoint, out, 3, progress=False)  # other settings: regenerated, replaced
    assert not other["reused"] and len(list((out / "adipose").iterdir())) == 3


def test_interrupted_generation_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "images"
    calls = {"n": 0}
    original = generate_images_module._save_image

    def failing(array, path, fmt):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-way
        original(array, path, fmt)

    monkeypatch.setattr(generate_images_module, "_save_image", failing)
    with pytest.raises(KeyboardInterrupt):
        generate.generate_images(checkpoint, out, 3, batch_size=1, workers=1, progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder either
    # an existing complete folder survives an interrupted regeneration untouched
    monkeypatch.setattr(generate_images_module, "_save_image", original)
    generate.generate_images(checkpoint, out, 2, progress=False)
    before = _digests(out)
    calls["n"] = 0
    monkeypatch.setattr(generate_images_module, "_save_image", failing)
    with pytest.raises(KeyboardInterrupt):
        generate.generate_images(checkpoint, out, 3, batch_size=1, workers=1, progress=False)
    assert _digests(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_checkpoint_without_class_names_is_refused(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["classes"] = None
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    with pytest.raises(ValueError, match="class names"):
        generate.generate_images(bad, tmp_path / "out", 1, progress=False)


# ----------------------------------------------------------------------------------------------------------------
# Nearest neighbours and the memorisation audit


def test_nearest_neighbours_match_brute_force():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(37, 5, generator=g)
    r = torch.randn(50, 5, generator=g)
    d, i = audit.nearest_neighbours(q, r, k=3, chunk=8)
    full = torch.cdist(q.double(), r.double())
    ref_d, ref_i = full.topk(3, dim=1, largest=False)
    np.testing.assert_array_equal(i, ref_i.numpy())
    np.testing.assert_allclose(d, ref_d.numpy(), rtol=1e-10)
    d, i = audit.nearest_neighbours(r, r, k=1, exclude_self=True, chunk=16)
    full = torch.cdist(r.double(), r.double()).fill_diagonal_(float("inf"))
    np.testing.assert_array_equal(i[:, 0], full.argmin(1).numpy())
    with pytest.raises(ValueError, match="k=60"):
        audit.nearest_neighbours(q, r, k=60)


@pytest.fixture
def real_and_generated(checkpoint, tmp_path, make_image_folder):
    """A real ImageFolder of 8 px random images and a generated set with one real image planted in it."""
    real = make_image_folder({c: 6 for c in CLASSES}, size=(8, 8), name="real", seed=1)
    gen = tmp_path / "gen"
    generate.generate_images(checkpoint, gen, 4, progress=False)
    planted = real / "lympho" / "lympho_002.png"
    shutil.copy(planted, gen / "tumor" / "9_999999.png")
    return real, gen, planted


def test_audit_finds_a_planted_copy(real_and_generated):
    real, gen, planted = real_and_generated
    audit = generate.memorisation_audit(gen, real, "pixels", k=2, real_split=None)
    assert len(audit) == 13 * 2 and set(audit["rank"]) == {1, 2}
    top = audit[audit["rank"] == 1].sort_values("distance")
    copy = top.iloc[0]
    assert copy["generated"] == "tumor/9_999999.png" and copy["real"] == "lympho/lympho_002.png"
    assert copy["distance"] == 0.0 and copy["ratio"] == 0.0 and not copy["same_class"]
    assert (top["distance"].iloc[1:] > 0.05).all()
    # the real-to-real spacing is an independent brute-force computation in pixel space
    from PIL import Image

    arrays = {p.relative_to(real).as_posix(): np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).ravel() / 255
              for p in sorted(real.rglob("*.png"))}
    own = arrays["lympho/lympho_002.png"]
    nn = min(np.linalg.norm(own - v) for k, v in arrays.items() if k != "lympho/lympho_002.png")
    assert copy["real_nn_distance"] == pytest.approx(nn, rel=1e-6)
    summary = generate.summarize_audit(audit)
    assert summary["n_exact_copies"] == 1 and summary["min_distance"] == 0.0 and summary["n_generated"] == 13
    fig = generate.plot_nearest_pairs(audit, n=4)
    assert len(fig.axes) == 8
    # a network's features find the copy too (nearest, at ~0 distance)
    audit = generate.memorisation_audit(gen, real, "random-test", real_split=None)
    top = audit.sort_values("distance").iloc[0]
    assert top["generated"] == "tumor/9_999999.png" and top["distance"] < 1e-4
    assert audit.attrs["extractor"] == "random-test"


def test_gan_metrics_are_labelled_and_sane(real_and_generated, tmp_path):
    real, gen, _ = real_and_generated
    m = generate.gan_metrics(gen, real, "random-test", real_split=None, k_pr=2, k_dc=2, verbose=False)
    assert {"random-test/fid", "random-test/precision", "random-test/coverage", "random-test/note"} <= set(m)
    assert all(k.startswith("random-test/") for k in m)
    assert m["random-test/n_fake"] == 13 and m["random-test/n_real"] == 18
    assert m["random-test/fid"] > 0 and 0 <= m["random-test/precision"] <= 1
    assert m["random-test/per_class/tumor/n_fake"] == 5
    table = generate.per_class_table(m)
    assert list(table.index.get_level_values("class")) == CLASSES
    # shown at 3 significant digits (the sets are a few images), with the image counts first and whole
    overall = generate.metrics_table(m)
    assert list(overall.columns[:2]) == ["n_real", "n_fake"] and overall.loc["random-test", "n_fake"] == 13
    assert overall.loc["random-test", "fid"] == float(f"{m['random-test/fid']:.3g}")
    assert "0.000000" not in overall.to_html() and len(str(overall.loc["random-test", "fid"])) <= 8
    # a set compared with itself: FD 0, every sample inside the other set's balls
    same = generate.gan_metrics(real, real, "random-test", real_split=None, k_pr=2, k_dc=2, per_class=False,
                                verbose=False)
    assert same["random-test/fid"] == pytest.approx(0.0, abs=1e-6)
    assert same["random-test/precision"] == 1.0 and same["random-test/recall"] == 1.0
    assert same["random-test/coverage"] == 1.0
    assert generate.gan_metrics(gen, real, None) == {}


def test_auto_extractor_never_falls_back_to_an_untrained_network(monkeypatch, capsys):
    from histlib.metrics import features

    def missing(*args, **kwargs):
        raise features.WeightsNotFoundError("pt_inception-2015-12-05-6726825d.pth not found")

    monkeypatch.setattr(features, "find_weights", missing)
    assert folders.resolve_extractor("auto") is None
    assert "skipped" in capsys.readouterr().out
    assert folders.resolve_extractor("random-test", enabled=False) is None
    assert folders.resolve_extractor(None) is None
    ext = folders.resolve_extractor("random-test")
    assert folders.extractor_label(ext) == "random-test" and "WARNING" in capsys.readouterr().out


def test_stage_writes_run_directory(checkpoint, tmp_path, make_image_folder):
    real = make_image_folder({c: 4 for c in CLASSES}, size=(8, 8), name="real")
    cfg = generate.GenerateConfig.from_profile("demo", checkpoint=str(checkpoint), dataset_dir=str(real),
                                               images_per_class=3, real_split=None)
    run_dir = tmp_path / "run"
    report = generate.run_generation(cfg, run_dir, progress=False)
    assert (run_dir / "config.json").is_file() and (run_dir / "env.json").is_file()
    assert report["set_dirs"] == [(run_dir / "images").as_posix()]
    audit = generate.memorisation_audit(run_dir / "images", real, real_split=None)
    metrics = generate.write_generation_metrics(run_dir, report, {}, audit, skipped_reason="no extractor")
    assert metrics["n_images"] == 9 and metrics["images_per_class/tumor"] == 3
    assert metrics["metrics_skipped"] == "no extractor" and "memorisation/pixels/min_distance" in metrics
    assert not any(k.endswith("/fid") for k in metrics)
    assert (run_dir / "memorisation.csv").is_file()
    with pytest.raises(ValueError, match="unknown field"):
        generate.GenerateConfig.from_profile("demo", images=3)
