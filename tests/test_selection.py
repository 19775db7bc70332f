"""histlib.selection and histlib.metrics.realism: keep the best generated samples, amounts of synthetic data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
selection = pytest.importorskip("histlib.selection")
from histlib import fidelity, generate, runs  # noqa: E402
from histlib.metrics import compute_prdc, realism_score  # noqa: E402


def _brute_realism(real, fake, k, keep_quantile):
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=2)
    radius = np.sort(d_rr, axis=1)[:, k]  # column 0 is the sample itself
    keep = radius <= np.quantile(radius, keep_quantile)
    d = np.linalg.norm(fake[:, None] - real[None, keep], axis=2)
    return (radius[keep][None] / d).max(1)


def test_realism_score_matches_its_definition_and_precision():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 5))
    fake = rng.normal(scale=1.3, size=(40, 5))
    for q in (0.5, 1.0):
        np.testing.assert_allclose(realism_score(real, fake, 3, keep_quantile=q), _brute_realism(real, fake, 3, q),
                                   rtol=1e-9)
    # With every ball kept, "score > 1" is "inside some real 3-NN ball": exactly what precision counts.
    inside = realism_score(real, fake, 3, keep_quantile=1.0) > 1
    assert inside.mean() == pytest.approx(compute_prdc(real, fake, 3)["precision"])
    # A copy of a real sample is as realistic as it gets; a far outlier is not.
    far = np.full((1, 5), 50.0)
    s = realism_score(real, np.concatenate([real[:1], far]), 3, keep_quantile=1.0)
    assert np.isinf(s[0]) and s[1] < 0.2
    with pytest.raises(ValueError, match="k=3 needs more than 3"):
        realism_score(real[:3], fake, 3)


def test_keep_mask_keeps_the_best_per_class_ties_to_the_earlier_draw():
    scores = np.array([0.1, 0.9, 0.5, 0.5, 0.3, 0.8, 0.2])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    index = np.array([0, 1, 2, 3, 0, 1, 2])
    keep = selection.keep_mask(scores, labels, index, {0: 2, 1: 1})
    assert keep.tolist() == [False, True, True, False, False, True, False]
    with pytest.raises(ValueError, match="3 pool images for 4"):
        selection.keep_mask(scores, labels, index, {1: 4})


def test_agree_keeps_the_first_draws_labelled_as_their_class_then_the_most_probable():
    scores = pd.DataFrame({"score": [0.9, 0.6, 0.2, 0.99, 0.3, 0.4, 0.1],
                           "agrees": [True, True, False, True, False, False, False],
                           "index": [0, 1, 2, 3, 0, 1, 2]})
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    ranked = selection.rank_scores(scores, "agree")
    keep = selection.keep_mask(ranked, labels, scores["index"].to_numpy(), {0: 2, 1: 2})
    # class 0: draws 0 and 1 agree and come first (draw 3 agrees too, with the highest probability, but later);
    # class 1: none agrees, so the two most probable
    assert keep.tolist() == [True, True, False, False, True, True, False]
    fid = selection.keep_mask(selection.rank_scores(scores, "fidelity"), labels, scores["index"].to_numpy(),
                              {0: 2, 1: 2})
    assert fid.tolist() == [True, False, False, True, True, True, False]  # by probability: the typical ones


def test_amount_per_class_is_relative_to_the_train_split(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    rows = ["path,class,split,group,source"]
    rows += [f"a/{i}.png,a,train,g{i},s" for i in range(10)] + [f"b/{i}.png,b,train,h{i},s" for i in range(5)]
    rows += [f"b/v{i}.png,b,val,v{i},s" for i in range(7)]
    for r in rows[1:]:
        (root / r.split(",")[0]).parent.mkdir(parents=True, exist_ok=True)
        (root / r.split(",")[0]).touch()
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    assert selection.amount_per_class(root, 1.0) == 8  # 15 train images in 2 classes (val not counted)
    assert selection.amount_per_class(root, 0.5) == 4
    assert selection.amount_per_class(root, 3) == 22
    with pytest.raises(ValueError, match="amount=0"):
        selection.amount_per_class(root, 0)
    with pytest.raises(ValueError, match="no image in split 'test'"):
        selection.amount_per_class(root, 1.0, split="test")


def test_config_checks_selection_oversample_and_amount():
    with pytest.raises(ValueError, match="selection='best'"):
        generate.GenerateConfig(selection="best").validate()
    with pytest.raises(ValueError, match="oversample=0.5"):
        generate.GenerateConfig(selection="realism", oversample=0.5).validate()
    with pytest.raises(ValueError, match="amount=-1"):
        generate.GenerateConfig(amount=-1).validate()


# ----------------------------------------------------------------------------------------------------------------
def test_relabel_keeps_the_first_draws_labelled_as_each_class_whichever_class_was_asked():
    scores = pd.DataFrame({"class": ["a", "a", "a", "a", "b", "b", "b", "b"],
                           "label": ["a", "b", "a", "a", "a", "b", "a", "a"],
                           "index": [0, 1, 2, 3, 0, 1, 2, 3],
                           "score": [0.9, 0.4, 0.8, 0.7, 0.3, 0.6, 0.45, 0.2]})
    kept_as = selection.relabel_keep(scores, {"a": 3, "b": 2})
    # a: the draws labelled a by draw index, the one asked for a first at equal index: a's 0, b's 0, a's 2 (b's 2 loses
    # the tie); b: the two draws labelled b, b's 1 and a's 1 (asked for a, kept as b)
    assert kept_as.tolist() == ["a", "b", "a", "", "a", "b", "", ""]
    # b short of draws labelled b: its own most probable other draw fills it (b's 2, p 0.45), never one asked for a
    kept_as = selection.relabel_keep(scores, {"a": 2, "b": 3})
    assert kept_as.tolist() == ["a", "b", "", "", "a", "b", "b", ""]
    assert selection.kept_path({"class": "b", "file": "b/0_000000.png", "kept_as": "a"}) == "a/b__0_000000.png"
    assert selection.kept_path({"class": "b", "file": "b/0_000001.png", "kept_as": "b"}) == "b/0_000001.png"
    assert selection.kept_path({"class": "b", "file": "b/0_000001.png"}) == "b/0_000001.png"  # other selections
    with pytest.raises(ValueError, match="class b: 4 pool images to keep 5 as it after relabelling; raise oversample"):
        selection.relabel_keep(scores, {"a": 3, "b": 5})


# The stage, end to end on a tiny generator


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from histlib.gan import checkpoint as gan_checkpoint
    from histlib.gan import networks

    kwargs = dict(z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=8, img_resolution=8,
                  img_channels=3, num_classes=2)
    torch.manual_seed(0)
    G = networks.Generator(**kwargs)
    path = tmp_path_factory.mktemp("ckpt") / "latest.pt"
    runs.atomic_torch_save({"format": gan_checkpoint.CHECKPOINT_FORMAT, "G": G.state_dict(),
                            "G_ema": G.state_dict(), "classes": ["a", "b"], "network_kwargs": {"G": kwargs},
                            "cur_nimg": 1000, "config": {}}, path)
    return path


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory):
    from PIL import Image

    from histlib.data.prepare import PrepareConfig, prepare_dataset

    root = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    for cls, col in {"a": (200, 60, 60), "b": (60, 60, 200)}.items():
        (root / "raw" / cls).mkdir(parents=True)
        for i in range(12):
            a = np.clip(np.array(col)[None, None] + rng.normal(0, 30, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / "raw" / cls / f"{i:03d}.png")
    out = root / "prepared"
    prepare_dataset(PrepareConfig(source=str(root / "raw"), out=str(out), val_fraction=0.25, group_by="patch"),
                    progress=False)
    return out


@pytest.fixture
def cheap_selector(monkeypatch):
    from histlib.fidelity import FidelityConfig

    monkeypatch.setattr(selection, "selector_config",
                        lambda: FidelityConfig(seed=selection.SELECTOR_SEED, epochs=3, max_steps=6, batch_size=8))


@pytest.mark.parametrize("method", ["realism", "fidelity", "agree", "relabel"])
def test_selected_run_keeps_the_best_of_a_larger_pool(checkpoint, real_dataset, tmp_path, cheap_selector, method):
    cfg = generate.GenerateConfig(checkpoint=str(checkpoint), dataset_dir=str(real_dataset), images_per_class=3,
                                  selection=method, oversample=2.5, num_sets=2, fidelity_cache=str(tmp_path / "fc"),
                                  device="cpu")
    run_dir = tmp_path / "run"
    report = generate.run_generation(cfg, run_dir, progress=False)
    scores = selection.read_scores(run_dir)
    assert len(scores) == 2 * 2 * 8 and report["n_images"] == 2 * 2 * 3  # ceil(2.5 × 3) = 8 drawn per class
    for (s, cls), part in scores.groupby(["set", "class"]):
        kept = sorted(p.name for p in (run_dir / "images" / f"set{s}" / cls).iterdir())
        if method == "relabel":  # every class is filled, each pool image kept at most once, where its path says
            in_set = scores[scores["set"] == s]
            as_cls = in_set[in_set["kept_as"] == cls]
            assert len(as_cls) == 3 and sorted(selection.kept_path(r).split("/")[-1]
                                               for _, r in as_cls.iterrows()) == kept
            assert (as_cls["label"] == cls).all() or (as_cls["class"] == cls).all()
            assert (part["agrees"] == (part["label"] == part["class"])).all()  # two classes, both in the pool
            continue
        if method == "agree":  # the first draws labelled as their class, then the most probable of the others
            best = pd.concat([part[part["agrees"]].sort_values("index"),
                              part[~part["agrees"]].sort_values(["score", "index"], ascending=[False, True])]).head(3)
            assert (part.loc[part["agrees"], "score"] >= 0.5).all()  # two classes: the most probable one
        else:
            best = part.sort_values(["score", "index"], ascending=[False, True]).head(3)
            assert part.loc[part["kept"], "score"].min() >= part.loc[~part["kept"], "score"].max()
        assert kept == sorted(f.split("/")[-1] for f in best["file"]) and part["kept"].sum() == 3
        assert sorted(part.loc[part["unselected"], "index"]) == [0, 1, 2]  # the first draws: what 'none' keeps
    # the kept images are the pool's own files, byte for byte
    f = scores[scores["kept"]].iloc[0]
    assert (run_dir / "images" / f"set{f['set']}" / selection.kept_path(f)).read_bytes() == \
        (run_dir / "pool" / f"set{f['set']}" / f["file"]).read_bytes()
    again = generate.run_generation(cfg, run_dir, progress=False)
    assert again["reused"] and again["set_dirs"] == report["set_dirs"]
    unselected = selection.unselected_metrics(cfg, report, "random-test")
    assert unselected["unselected/random-test/n_fake"] == 6 and unselected["unselected/fidelity/n"] == 12
    metrics = generate.gan_metrics(report["set_dirs"][0], real_dataset, "random-test", k_pr=2, k_dc=2,
                                   verbose=False)
    out = generate.write_generation_metrics(run_dir, report, metrics, cfg=cfg, unselected=unselected)
    # this run's own classifier time: the selector trained (or waited for) since run_generation began, not earlier
    # runs' in this process
    assert 0 < out["classifier_seconds"] <= fidelity.classifier_seconds()
    assert out["selection/method"] == method and out["selection/n_pool"] == 32 and out["selection/oversample"] == 2.5
    assert ("selection/agreeing/a" in out) == (method in ("agree", "relabel"))
    assert ("selection/relabelled_in/a" in out) == (method == "relabel")
    table = selection.comparison_table(metrics, None, unselected)
    assert list(table.index) == ["kept", "unselected"] and table.loc["unselected", "random-test/n_fake"] == 6
    fig = selection.plot_kept_dropped(report, n_per_class=2)
    assert fig is not None
    first = scores[(scores["set"] == 0) & scores["kept"]]
    if method == "relabel" and (first["kept_as"] != first["class"]).any():  # shown first, titled with their label
        assert any(ax.get_title().startswith("as ") for ax in fig.axes)


def test_no_selection_keeps_the_plain_layout_and_amount_sets_the_counts(checkpoint, real_dataset, tmp_path):
    cfg = generate.GenerateConfig(checkpoint=str(checkpoint), dataset_dir=str(real_dataset), amount=0.5,
                                  device="cpu")
    run_dir = tmp_path / "run"
    report = generate.run_generation(cfg, run_dir, progress=False)
    n_train = (runs.read_json(run_dir / "config.json")["images_per_class"])
    assert n_train == selection.amount_per_class(real_dataset, 0.5) and report["settings"]["images_per_class"] == \
        {"a": n_train, "b": n_train}
    assert not (run_dir / "pool").exists() and selection.read_scores(run_dir).empty
    assert selection.unselected_metrics(cfg, report, "random-test") == {}
    assert selection.plot_kept_dropped(report) is None
    out = generate.write_generation_metrics(run_dir, report, {}, cfg=cfg, skipped_reason="test")
    assert out["selection/method"] == "none" and out["amount"] == 0.5
