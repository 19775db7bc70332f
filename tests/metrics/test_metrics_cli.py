"""``python -m histlib metrics``, the real-feature cache and the per-class table, on tiny image folders."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from histlib.__main__ import main as cli
from histlib.metrics import FeatureCache, extract_features, get_extractor, per_class_metrics
from histlib.metrics.cache import dataset_fingerprint

prdc_ref = pytest.importorskip("prdc")


def ref_fid(a, b):
    """torch-fidelity's formula (eigenvalues of the product), robust to the singular covariances of tiny sets."""
    tf = pytest.importorskip("torch_fidelity.metric_fid")
    s1 = tf.fid_features_to_statistics(torch.from_numpy(a))
    s2 = tf.fid_features_to_statistics(torch.from_numpy(b))
    return tf.fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"]


def ref_prdc(real, fake, k):
    with contextlib.redirect_stdout(io.StringIO()):
        return prdc_ref.compute_prdc(real, fake, k)


@pytest.fixture
def folders(make_image_folder):
    real = make_image_folder({"tumour": 14, "stroma": 12}, size=(40, 40), name="real", seed=0)
    fake = make_image_folder({"tumour": 12, "stroma": 13}, size=(32, 32), name="fake", seed=1)
    return real, fake


def test_cli_prints_and_writes_all_metrics(folders, tmp_path, capsys):
    real, fake = folders
    out = tmp_path / "metrics.json"
    rc = cli(["metrics", "--real", str(real), "--fake", str(fake), "--extractor", "random-test", "--k", "2",
              "--k-dc", "3", "--json", str(out), "--cache", str(tmp_path / "cache"), "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    for word in ("all", "tumour", "stroma", "fid", "precision", "recall", "density", "coverage"):
        assert word in printed
    res = json.loads(out.read_text())
    assert set(res["per_class"]) == {"tumour", "stroma"}
    assert res["overall"]["n_real"] == 26 and res["overall"]["n_fake"] == 25
    # Independent check of the overall numbers: same features, oracle formulas.
    ex = get_extractor("random-test", device="cpu")
    fr, lr, classes = extract_features(real, ex, progress=False)
    ff, lf, _ = extract_features(fake, ex, progress=False)
    assert res["overall"]["fid"] == pytest.approx(ref_fid(fr, ff), rel=1e-6)
    pr, dc = ref_prdc(fr, ff, 2), ref_prdc(fr, ff, 3)
    assert res["overall"]["precision"] == pytest.approx(pr["precision"])
    assert res["overall"]["recall"] == pytest.approx(pr["recall"])
    assert res["overall"]["density"] == pytest.approx(dc["density"])
    assert res["overall"]["coverage"] == pytest.approx(dc["coverage"])
    c = classes.index("stroma")
    per = ref_prdc(fr[lr == c], ff[lf == c], 2)
    assert res["per_class"]["stroma"]["precision"] == pytest.approx(per["precision"])
    assert res["per_class"]["stroma"]["fid"] == pytest.approx(ref_fid(fr[lr == c], ff[lf == c]), rel=1e-6)


def test_cli_errors_clearly(tmp_path, capsys):
    assert cli(["metrics", "--real", str(tmp_path / "nope"), "--fake", str(tmp_path)]) == 2
    assert "--real" in capsys.readouterr().err


def test_prepared_dataset_split_and_small_classes(make_image_folder, tmp_path):
    root = make_image_folder({"a": 6, "b": 3}, name="prepared")
    rows = ["path,class,split,group,source"]
    for cls, n in (("a", 6), ("b", 3)):
        for i in range(n):
            rows.append(f"{cls}/{cls}_{i:03d}.png,{cls},{'train' if i % 3 else 'val'},{cls}{i},x")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    ex = get_extractor("random-test", device="cpu")
    feats, labels, classes = extract_features(root, ex, split="train", progress=False)
    assert feats.shape == (6, 64) and classes == ["a", "b"] and list(np.bincount(labels)) == [4, 2]
    table = per_class_metrics(feats, feats, labels, labels, classes, k=1, k_dc=1)
    assert list(table.index) == ["all", "a", "b"]
    assert table.loc["all", "precision"] == 1.0  # identical sets
    assert table.loc["b", "precision"] == 1.0 and table.loc["b", "n_real"] == 2
    table3 = per_class_metrics(feats, feats, labels, labels, classes, k=3, k_dc=3)
    assert np.isnan(table3.loc["b", "precision"])  # 2 samples cannot have a 3-NN ball: NaN, not an error


def test_feature_cache_hits_and_keys(make_image_folder, tmp_path):
    root = make_image_folder({"a": 5, "b": 4}, name="cached")
    ex = get_extractor("random-test", device="cpu")
    calls = []

    class Counting:
        name, dim, cache_key = ex.name, ex.dim, ex.cache_key

        def __call__(self, images):
            calls.append(images.shape[0])
            return ex(images)

    cache = FeatureCache(tmp_path / "cache")
    f1, l1, c1 = extract_features(root, Counting(), cache=cache, progress=False)
    n_calls = len(calls)
    f2, l2, c2 = extract_features(root, Counting(), cache=cache, progress=False)
    assert len(calls) == n_calls  # served from the cache
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(l1, l2)
    assert c1 == c2
    k1 = cache.key(dataset_fingerprint(root), ex.cache_key)
    assert k1 != cache.key(dataset_fingerprint(root), "another-extractor")
    (root / "a" / "a_000.png").unlink()
    assert dataset_fingerprint(root) != k1 and cache.key(dataset_fingerprint(root), ex.cache_key) != k1
    f3, _, _ = extract_features(root, Counting(), cache=cache, progress=False)
    assert f3.shape[0] == 8 and len(calls) > n_calls


def test_feature_cache_never_serves_a_dataset_rewritten_in_place(make_image_folder, tmp_path):
    """``prepare --resize 16`` over a prepared dataset keeps manifest.csv byte-identical; the cache must miss."""
    from histlib.data.prepare import PrepareConfig, prepare_dataset

    raw = make_image_folder({"a": 4, "b": 4}, size=(32, 32), name="raw")
    out = tmp_path / "prepared"
    prepare_dataset(PrepareConfig(source=str(raw), out=str(out)), progress=False)
    manifest = (out / "manifest.csv").read_bytes()
    ex = get_extractor("random-test", device="cpu")
    cache = FeatureCache(tmp_path / "cache")
    f32, _, _ = extract_features(out, ex, cache=cache, progress=False)
    prepare_dataset(PrepareConfig(source=str(raw), out=str(out), resize=16), progress=False)
    assert (out / "manifest.csv").read_bytes() == manifest  # what made the old key stale
    f16, _, _ = extract_features(out, ex, cache=cache, progress=False)
    fresh, _, _ = extract_features(out, ex, cache=None, progress=False)
    np.testing.assert_array_equal(f16, fresh)
    assert not np.array_equal(f16, f32)


def test_constant_image_sets_warn_that_the_k_nn_numbers_are_degenerate():
    from histlib.metrics.prdc import compute_prdc

    same = np.ones((20, 8), dtype=np.float32)  # identical features: every k-NN ball has radius 0
    with pytest.warns(UserWarning, match=r"20 of 20 real features have k-NN radius 0"):
        m = compute_prdc(same, same, 3, 5)
    assert m["precision"] == 0.0  # the reference definition (strict '<'); hence the warning
    rng = np.random.default_rng(0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_prdc(rng.standard_normal((30, 8)), rng.standard_normal((30, 8)), 3, 5)
