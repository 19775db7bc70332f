"""benchmarks/learn_vs_reference.py: scoring and the side-by-side grid, on saved samples (no training)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from histlib import fidelity
from histlib.data.prepare import PrepareConfig, prepare_dataset

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (210, 50, 40)}


def _images(colours, n, seed):
    rng = np.random.default_rng(seed)
    out = [np.clip(np.array(c)[None, None] + rng.normal(0, 25, (16, 16, 3)), 0, 255) for c in colours for _ in range(n)]
    return torch.from_numpy(np.stack(out).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def learn():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import learn_vs_reference

    return learn_vs_reference


@pytest.mark.filterwarnings("ignore:FID from")
def test_score_tells_the_side_with_swapped_classes(tmp_path, learn):
    raw = tmp_path / "raw"
    for i, (cls, col) in enumerate(COLOURS.items()):
        (raw / cls).mkdir(parents=True)
        for j, img in enumerate(_images([col], 24, i).permute(0, 2, 3, 1).numpy()):
            Image.fromarray(img).save(raw / cls / f"{j:03d}.png")
    data = tmp_path / "prepared"
    prepare_dataset(PrepareConfig(source=str(raw), out=str(data), val_fraction=0.25, group_by="patch"), progress=False)
    out = tmp_path / "out"
    classes = list(COLOURS)
    cols = list(COLOURS.values())
    per = 20
    labels = torch.arange(3).repeat_interleave(per)
    sides = {"ours": cols, "reference": [cols[1], cols[2], cols[0]]}  # the reference draws every class as another
    for side, drawn in sides.items():
        (out / side).mkdir(parents=True)
        for point in (1, 2):
            torch.save({"images": _images(drawn, per, 10 + point), "labels": labels, "classes": classes},
                       out / side / f"samples-{point:g}kimg.pt")
        (out / side / "run.json").write_text(json.dumps({"img_per_s": 1.0, "params": {"G": 1, "D": 1}}))
    args = argparse.Namespace(data=str(data), res=16, out=str(out))
    cfg = fidelity.FidelityConfig(epochs=6, max_steps=30, batch_size=16)
    res = learn.score(args, cfg=cfg, cache_root=tmp_path / "cache")
    assert res["extractor"].startswith("domain-")
    ours, ref = res["sides"]["ours"]["points"], res["sides"]["reference"]["points"]
    assert [p["kimg"] for p in ours] == [1.0, 2.0]
    assert all(p["agreement"] > 0.9 for p in ours)
    assert all(p["agreement"] < 0.1 for p in ref)
    fid = {s: next(t for t in res["sides"][s]["points"][-1]["table"] if t["class"] == "red")["fid"] for s in sides}
    assert fid["ours"] < fid["reference"]  # per-class FID sees that the reference's "red" images are not red
    learn.grid(args, out / "grid.png")
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (3 * 16, 16 * 16, 3)
    assert grid[:16, :16 * 8, 0].mean() < grid[:16, :16 * 8, 2].mean()  # ours, class blue: blue
    assert grid[:16, 16 * 8:, 1].mean() > grid[:16, 16 * 8:, 2].mean()  # reference, class blue: green
    # several runs pooled per label: the summary's means and spreads come from the runs' own values
    specs = [f"good={out / 'ours'}", f"good={out / 'ours'}", f"swapped={out / 'reference'}"]
    pooled = learn.score_runs(specs, str(data), 16, cfg=cfg, cache_root=tmp_path / "cache")
    good, swapped = pooled["labels"]["good"]["summary"], pooled["labels"]["swapped"]["summary"]
    assert [r["kimg"] for r in good] == [1.0, 2.0] and good[0]["n"] == 2 and swapped[0]["n"] == 1
    assert good[-1]["agreement_mean"] > 0.9 > 0.1 > swapped[-1]["agreement_mean"]
    assert good[-1]["fid_runs"][0] == good[-1]["fid_runs"][1] and good[-1]["fid_std"] == 0.0
    assert swapped[-1]["fid_std"] is None  # one run: no spread
    (out / "ours" / "run.json").unlink()  # still training: its saved points are scored
    partial = learn.score_runs([f"p={out / 'ours'}"], str(data), 16, cfg=cfg, cache_root=tmp_path / "cache")
    assert partial["labels"]["p"]["runs"][0]["finished"] is False and len(partial["labels"]["p"]["summary"]) == 2
    with pytest.raises(SystemExit, match="LABEL=DIR"):
        learn.score_runs([f"x={tmp_path}"], str(data), 16, cfg=cfg, cache_root=tmp_path / "cache")


def test_our_side_follows_the_seed(learn):
    """``--seed`` reaches our side's config: build_state draws the weights from it (it stayed at 0 before)."""
    import vs_reference

    a = vs_reference._arch(32, "cpu")

    def data():
        return torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)

    z, c = torch.randn(2, a["z_dim"], generator=torch.Generator().manual_seed(5)), torch.tensor([0, 1])
    images = {}
    for name, seed in (("a", 0), ("b", 1), ("a_again", 0)):
        _, _, sample = vs_reference._ours(a, 4, 2, "cpu", "ref", data=data, p=0.0, seed=seed)
        images[name] = sample(z, c)
    assert torch.equal(images["a"], images["a_again"])
    assert not torch.allclose(images["a"], images["b"])


def test_our_side_takes_overrides_of_the_shared_settings(learn, monkeypatch):
    """``--set r1_gamma=...`` (a setting the harness also sets for both sides) reaches our side's config instead of
    failing with a duplicate keyword; the settings not overridden stay the shared ones."""
    import vs_reference

    import histlib.gan.state

    a = vs_reference._arch(32, "cpu")
    seen = {}
    real_build = histlib.gan.state.build_state

    def build_state(cfg, *args, **kwargs):
        seen["cfg"] = cfg
        return real_build(cfg, *args, **kwargs)

    monkeypatch.setattr(histlib.gan.state, "build_state", build_state)

    def data():
        return torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)

    vs_reference._ours(a, 4, 2, "cpu", "ref", data=data, p=0.0,
                       overrides={"r1_gamma": 0.5, "style_mixing_prob": 0.0, "G_kwargs": {"mapping_layers": 3}})
    cfg = seen["cfg"]
    assert (cfg.r1_gamma, cfg.style_mixing_prob, cfg.augment, cfg.augment_p) == (0.5, 0.0, "fixed", 0.0)
    assert cfg.G_kwargs == {"mapping_layers": 3}
    vs_reference._ours(a, 4, 2, "cpu", "ref", data=data, p=0.0)
    assert seen["cfg"].r1_gamma == a["r1_gamma"]


def test_reference_side_loss_settings(learn):
    """``--ref-set`` reaches the reference's loss and learning rate: its own defaults unless told (mixing 0.9, path
    length 2, the shared R1 γ, lr 0.0025), its ``cifar`` pair when asked, and any other key or a non-number is refused
    by name."""
    import vs_reference

    a = vs_reference._arch(32, "cpu")
    assert vs_reference.reference_loss_kwargs(a) == {"style_mixing_prob": 0.9, "pl_weight": 2.0,
                                                     "r1_gamma": a["r1_gamma"]}
    cifar = vs_reference.reference_loss_kwargs(a, learn._overrides(["style_mixing_prob=0", "pl_weight=0"],
                                                                   "--ref-set"))
    assert cifar == {"style_mixing_prob": 0.0, "pl_weight": 0.0, "r1_gamma": a["r1_gamma"]}
    with pytest.raises(SystemExit, match="--ref-set d2d_tau"):
        vs_reference.reference_loss_kwargs(a, {"d2d_tau": 0.5})
    with pytest.raises(SystemExit, match="pl_weight='two'"):
        vs_reference.reference_loss_kwargs(a, {"pl_weight": "two"})
    with pytest.raises(SystemExit, match="--ref-set 'pl_weight'"):
        learn._overrides(["pl_weight"], "--ref-set")
    # its learning rate: 0.0025 unless told, not a loss argument, and 0 refused
    assert vs_reference.reference_lr() == 0.0025
    doubled = learn._overrides(["lr=0.005"], "--ref-set")
    assert vs_reference.reference_lr(doubled) == 0.005
    assert vs_reference.reference_loss_kwargs(a, doubled) == vs_reference.reference_loss_kwargs(a)
    with pytest.raises(SystemExit, match="--ref-set lr=0: expected a number > 0"):
        vs_reference.reference_loss_kwargs(a, {"lr": 0})
