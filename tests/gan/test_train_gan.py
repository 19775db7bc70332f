"""GAN training (histlib.gan.launch.train_gan): run directory, exact resume, NaN stop, fine-tuning with freezing, hooks,
CLI, plots."""

import argparse
import dataclasses
import json
import shutil

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from histlib import runs
from histlib.gan import cli, losses
from histlib.gan.checkpoint import load_generator
from histlib.gan.config import TrainConfig
from histlib.gan.hooks import metrics_hooks
from histlib.gan.launch import train_gan
from histlib.gan.loop import TrainingDiverged
from histlib.gan.plots import plot_augment, plot_class_grid, plot_losses

matplotlib.use("Agg")

# Tiny networks: 16 px, 16 channels; an iteration takes a few tens of milliseconds on one core.
TINY = dict(G_kwargs=dict(z_dim=16, w_dim=16, mapping_layers=1, channel_base=128, channel_max=16),
            D_kwargs=dict(channel_base=128, channel_max=16, embed_dim=16))


def make_colour_folder(root, colours, n=10, size=16, seed=0):
    """``root/<class>/<i>.png``: noisy images around one RGB colour per class."""
    rng = np.random.default_rng(seed)
    for cls, col in colours.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = np.clip(np.array(col)[None, None] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / cls / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_colour_folder(tmp_path_factory.mktemp("toy"), {"blue": (40, 60, 200), "red": (210, 50, 40)})


def tiny_cfg(data_dir, **overrides):
    """Two iterations of batch 8 per tick; every lazy regulariser and ADA update runs within a few iterations."""
    base = dict(TINY, data_dir=str(data_dir), resolution=16, batch_size=8, kimg=0.032, tick_kimg=0.016,
                snapshot_ticks=1, pl_interval=2, r1_interval=2, ada_interval=1, ada_kimg=0.2, grid_columns=3,
                progress=False, ema_kimg=0.05)
    return TrainConfig.from_profile("demo", **{**base, **overrides})


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a, b, path="ckpt"):
    """Recursively equal (tensors bit-identical)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


TRAINING_STATE = ("G", "D", "G_ema", "opt_G", "opt_D", "pl_reg", "augment_pipe", "ada", "cur_nimg", "tick", "step",
                  "data", "latent_rng", "rng", "next_metrics_nimg")


# ----------------------------------------------------------------------------------------------------------------
# Config


def test_profiles_and_validation():
    for profile, res in (("demo", 32), ("reduced", 64), ("paper", 256)):
        cfg = TrainConfig.from_profile(profile)
        assert cfg.profile == profile and cfg.resolution == res
        cfg.validate()
    paper = TrainConfig.from_profile("paper")
    assert paper.batch_size == 64 and paper.r1_gamma == 1.0 and paper.ema_kimg == 20 and paper.augment == "ada"
    assert TrainConfig.from_profile("demo", kimg=3).kimg == 3
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_profile("demo", kimgs=3)
    with pytest.raises(ValueError, match="profile"):
        TrainConfig.from_profile("huge")
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment="strong").validate()
    with pytest.raises(ValueError, match="resolution"):
        TrainConfig(resolution=48).validate()
    # plain types only: survives a JSON round trip
    cfg = TrainConfig.from_profile("demo")
    from histlib.config import from_dict

    assert from_dict(TrainConfig, json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg


# ----------------------------------------------------------------------------------------------------------------
# A full short run


def test_run_directory_hooks_and_generator(toy, tmp_path):
    calls = []

    def hook(G_ema, cur_nimg):
        calls.append(cur_nimg)
        assert not G_ema.training
        return {"toy_metric": cur_nimg / 1000}

    cfg = tiny_cfg(toy, metrics_every_kimg=0.016)
    summary = train_gan(cfg, tmp_path / "run", hooks=[hook])
    run = tmp_path / "run"
    assert calls == [16, 32]
    stats = runs.read_jsonl(run / "stats.jsonl")
    assert [r["tick"] for r in stats] == [1, 2] and [r["cur_nimg"] for r in stats] == [16, 32]
    for key in ("loss_g", "loss_d", "loss_g_d2d", "loss_d_d2d", "r1_penalty", "loss_pl", "augment_p", "img_per_s"):
        assert key in stats[-1] and np.isfinite(stats[-1][key]), key
    assert stats[-1]["metrics/toy_metric"] == pytest.approx(0.032)
    metrics = runs.read_json(run / "metrics.json")
    assert metrics["kimg"] == pytest.approx(0.032) and metrics["metrics/toy_metric"] == pytest.approx(0.032)
    assert metrics["img_per_s"] > 0 and np.isfinite(metrics["loss_g"]) and 0 <= metrics["augment_p"] <= 1
    assert summary["cur_nimg"] == 32 and summary["classes"] == ["blue", "red"]
    assert runs.read_json(run / "config.json")["batch_size"] == 8
    env = runs.read_json(run / "env.json")
    assert env["device"] == "cpu" and "kernels" in env
    # ADA moved p (r_t is +1 or -1 early on, p starts at 0 and moves 8/200 per iteration when r_t > target)
    assert "ada_rt" in stats[-1]
    # per-class grid: one row per class, grid_columns columns of 16 px with 2 px padding
    grid = np.asarray(Image.open(run / "images" / "grid-latest.png"))
    assert grid.shape == (2 * 18 + 2, 3 * 18 + 2, 3)
    assert (run / "images" / "reals.png").is_file()
    for kimg in ("00000.016", "00000.032"):
        assert (run / "images" / f"grid-{kimg}kimg.png").is_file()
    # checkpoint: plain objects, loadable with weights_only=True, everything needed to resume
    ckpt = load(run / "checkpoints" / "latest.pt")
    assert set(TRAINING_STATE) <= set(ckpt) and ckpt["cur_nimg"] == 32 and ckpt["classes"] == ["blue", "red"]
    # the generator can be rebuilt from the checkpoint; labels change the output
    G, info = load_generator(run)
    assert info["classes"] == ["blue", "red"] and info["resolution"] == 16
    z = torch.randn(4, G.z_dim)
    a = G(z, torch.zeros(4, dtype=torch.long), noise_mode="const")
    b = G(z, torch.ones(4, dtype=torch.long), noise_mode="const")
    assert a.shape == (4, 3, 16, 16) and not torch.allclose(a, b)
    assert torch.equal(G.state_dict()["synthesis.blocks.0.const"], ckpt["G_ema"]["synthesis.blocks.0.const"])


# ----------------------------------------------------------------------------------------------------------------
# Exact resume


def test_exact_resume_bit_identical(toy, tmp_path):
    # Ticks of 3 iterations over epochs of 2 batches (20 images, batch 8): the checkpoint falls mid-epoch. ADA starts
    # at p = 0.3 so that the augmentations (and their random draws) are active from the first step.
    kw = dict(tick_kimg=0.024, augment_p=0.3)
    straight = tmp_path / "straight"
    train_gan(tiny_cfg(toy, kimg=0.072, **kw), straight)
    # stop after the first of three ticks, then resume in the same directory with the full length
    resumed = tmp_path / "resumed"
    train_gan(tiny_cfg(toy, kimg=0.024, **kw), resumed)
    first = load(resumed / "checkpoints" / "latest.pt")
    assert first["cur_nimg"] == 24 and first["data"] == {"epoch": 1, "pos": 1}
    train_gan(tiny_cfg(toy, kimg=0.072, **kw), resumed, resume=True)
    a, b = load(straight / "checkpoints" / "latest.pt"), load(resumed / "checkpoints" / "latest.pt")
    assert a["cur_nimg"] == b["cur_nimg"] == 72
    for key in TRAINING_STATE:
        assert_same(a[key], b[key], key)
    assert a["ada"]["p"] != 0.3 and a["ada"]["steps"] == 9  # ADA adjusted p at every step (interval 1)
    sa, sb = runs.read_jsonl(straight / "stats.jsonl"), runs.read_jsonl(resumed / "stats.jsonl")
    assert [r["loss_g"] for r in sa] == [r["loss_g"] for r in sb]


def test_resume_after_a_crash_redoes_the_lost_ticks(toy, tmp_path):
    """A process killed between snapshots resumes from the last checkpoint and ends bit-identical."""
    straight = tmp_path / "straight"
    train_gan(tiny_cfg(toy, kimg=0.048, snapshot_ticks=2), straight)

    class Crash(Exception):
        pass

    def crash_at_tick_3(G_ema, cur_nimg):
        if cur_nimg == 48:
            raise Crash
        return {}

    crashed = tmp_path / "crashed"
    with pytest.raises(Crash):
        train_gan(tiny_cfg(toy, kimg=0.048, snapshot_ticks=2, metrics_every_kimg=0.016), crashed,
                     hooks=[crash_at_tick_3])
    assert load(crashed / "checkpoints" / "latest.pt")["cur_nimg"] == 32
    train_gan(tiny_cfg(toy, kimg=0.048, snapshot_ticks=2, metrics_every_kimg=0.016), crashed, resume="auto")
    a, b = load(straight / "checkpoints" / "latest.pt"), load(crashed / "checkpoints" / "latest.pt")
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "ada", "pl_reg", "cur_nimg", "data", "latent_rng", "rng"):
        assert_same(a[key], b[key], key)
    assert [r["tick"] for r in runs.read_jsonl(crashed / "stats.jsonl")] == [1, 2, 3]


def test_resume_rejects_a_different_config(toy, tmp_path):
    train_gan(tiny_cfg(toy, kimg=0.016), tmp_path / "run")
    with pytest.raises(ValueError, match="lr_g"):
        train_gan(tiny_cfg(toy, kimg=0.032, lr_g=0.01), tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="resume=True"):
        train_gan(tiny_cfg(toy), tmp_path / "other", resume=True)
    # resume=False starts over in the same directory and clears the earlier run's outputs
    (tmp_path / "run" / "checkpoints" / "best.pt").write_bytes(b"stale")
    train_gan(tiny_cfg(toy, kimg=0.016, lr_g=0.01), tmp_path / "run", resume=False)
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    assert [r["tick"] for r in runs.read_jsonl(tmp_path / "run" / "stats.jsonl")] == [1]
    assert runs.read_json(tmp_path / "run" / "config.json")["lr_g"] == 0.01


# ----------------------------------------------------------------------------------------------------------------
# Divergence


def test_nan_loss_stops_and_keeps_last_good_checkpoint(toy, tmp_path, monkeypatch):
    run = tmp_path / "run"
    calls = {"n": 0}
    original = losses.g_nonsaturating_loss

    def poisoned(logits):
        calls["n"] += 1
        out = original(logits)
        return out * float("nan") if calls["n"] > 5 else out  # iterations 1-5 fine, the 6th diverges

    monkeypatch.setattr(losses, "g_nonsaturating_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"G adversarial loss at 0\.048 kimg") as err:
        train_gan(tiny_cfg(toy, kimg=0.08), run)
    assert "latest.pt" in str(err.value)
    ckpt = load(run / "checkpoints" / "latest.pt")
    assert ckpt["cur_nimg"] == 32  # the tick-2 checkpoint; tick 3 never completed
    assert all(torch.isfinite(t).all() for t in ckpt["G"].values() if t.is_floating_point())
    assert not (run / "metrics.json").exists()


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning with freezing


def test_finetune_freezing_keeps_frozen_tensors(toy, tmp_path):
    base = tmp_path / "base"
    train_gan(tiny_cfg(toy, kimg=0.016), base)
    target = make_colour_folder(tmp_path / "target", {"a": (20, 200, 20), "b": (200, 200, 20), "c": (90, 90, 90)},
                                n=4)
    run = tmp_path / "ft"
    summary = train_gan(tiny_cfg(target, kimg=0.032, resume_from=str(base), freeze_d=1, freeze_g=2), run)
    b, f = load(base / "checkpoints" / "latest.pt"), load(run / "checkpoints" / "latest.pt")
    report = runs.read_json(run / "finetune.json")
    frozen_g, frozen_d = report["frozen"]["G"], report["frozen"]["D"]
    assert frozen_d and all(n.startswith("blocks.0.") for n in frozen_d)
    assert frozen_g and all(n.startswith(("synthesis.blocks.0.", "synthesis.blocks.1.")) for n in frozen_g)
    assert summary["frozen_g_tensors"] == len(frozen_g) and summary["frozen_d_tensors"] == len(frozen_d)
    assert summary["freeze_g_blocks"] == 2 and summary["freeze_d_blocks"] == 1
    for name in frozen_d:
        assert torch.equal(b["D"][name], f["D"][name]), name
    for name in frozen_g:
        assert torch.equal(b["G"][name], f["G"][name]), name
        # G_ema's frozen blocks are G's (the ones its trainable blocks were trained against), unchanged
        assert torch.equal(b["G"][name], f["G_ema"][name]), name
    # trainable tensors moved, the class embeddings were re-initialised for 3 classes
    assert not torch.equal(b["D"]["blocks.1.conv0.weight"], f["D"]["blocks.1.conv0.weight"])
    assert not torch.equal(b["G"]["synthesis.blocks.2.conv1.weight"], f["G"]["synthesis.blocks.2.conv1.weight"])
    assert f["D"]["proxies.weight"].shape[0] == 3 and f["G"]["mapping.embed.weight"].shape[1] == 3
    assert "proxies.weight" in report["D"]["reinitialised"] and report["num_D"]["loaded"] > 0
    assert report["resume_from"].endswith("latest.pt") and report["base_classes"] == ["blue", "red"]


# ----------------------------------------------------------------------------------------------------------------
# Early stopping, CLI, plots


def test_early_stopping_and_best_checkpoint(toy, tmp_path):
    """The paper's rule through the config: stop once FID has not improved for `early_stop_patience` evaluations."""
    values = iter([3.0, 2.0, 2.5, 2.6, 1.0, 1.0])
    cfg = tiny_cfg(toy, kimg=0.096, metrics_every_kimg=0.016, early_stop_patience=2, early_stop_metric="fid")
    summary = train_gan(cfg, tmp_path / "run", hooks=[lambda G_ema, n: {"fid": next(values)}])
    assert summary["stopped_early"] and summary["cur_nimg"] == 64  # 2.0 at tick 2, then 2 checks without a new best
    assert summary["best/fid"] == 2.0 and summary["best/cur_nimg"] == 32
    assert load(tmp_path / "run" / "checkpoints" / "best.pt")["cur_nimg"] == 32
    assert load(tmp_path / "run" / "checkpoints" / "latest.pt")["early_stopping"]["bad"] == 2
    # re-running the finished, early-stopped run (as a resumed study step does) does not train on
    again = train_gan(cfg, tmp_path / "run", hooks=[lambda G_ema, n: {"fid": 0.5}])
    assert again["cur_nimg"] == 64 and again["stopped_early"]


def test_metrics_hooks_from_config(toy, tmp_path):
    assert metrics_hooks(tiny_cfg(toy)) == []  # no metrics_every_kimg: no hook
    cfg = tiny_cfg(toy, kimg=0.016, metrics_every_kimg=0.016)
    hooks = metrics_hooks(cfg, fid_extractor="random-test", prdc_extractor=None, num_fake=12, max_real=16)
    summary = train_gan(cfg, tmp_path / "run", hooks=hooks)
    for name in ("fid", "precision", "recall", "density", "coverage"):
        assert np.isfinite(summary[f"metrics/{name}"]), name


def test_metrics_hook_reads_reals_at_the_generator_resolution(toy, monkeypatch):
    """The periodic metrics compare reals resized to the generator's size, as the generate stage does."""
    from histlib.metrics.hooks import GanMetricsHook

    seen = {}
    monkeypatch.setattr(GanMetricsHook, "from_dataset", classmethod(lambda cls, root, **kw: seen.update(kw) or "hook"))
    assert metrics_hooks(tiny_cfg(toy, resolution=8, metrics_every_kimg=1.0)) == ["hook"]
    assert seen["resolution"] == 8


def test_cli_and_plots(toy, tmp_path):
    cfg_path = tmp_path / "cfg.json"
    runs.write_json(cfg_path, tiny_cfg(toy, kimg=0.016))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    run = tmp_path / "run"
    assert cli.main(parser.parse_args(["--config", str(cfg_path), "--run-dir", str(run)])) == 0
    assert (run / "metrics.json").is_file()
    import matplotlib.figure

    for fig in (plot_losses(run), plot_augment(run), plot_class_grid(run), plot_class_grid(run, "reals")):
        assert isinstance(fig, matplotlib.figure.Figure)
    with pytest.raises(FileNotFoundError):
        plot_class_grid(run, "99")
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_generator(run)


# ----------------------------------------------------------------------------------------------------------------
# Conditioning is learned (slow)


@pytest.mark.slow
def test_conditioning_is_learned_on_two_colours(tmp_path):
    data = make_colour_folder(tmp_path / "data", {"blue": (40, 70, 200), "orange": (220, 140, 30)}, n=16)
    # cond_lambda 0.25 (the demo profile's before it became 0.5): the 'random' case below needs the swap it was built
    # to undo; at 0.5 this toy's randomly started classes collapse onto one colour instead (no swap for the
    # relabelling to undo; docs/results.md), while the default 'match' start is right at both weights
    cfg = tiny_cfg(data, kimg=4.0, tick_kimg=0.5, snapshot_ticks=100, batch_size=16, augment="none", lr_g=0.005,
                   lr_d=0.005, r1_gamma=0.01, pl_weight=0.0, style_mixing_prob=0.0, ema_kimg=0.2, cond_lambda=0.25)
    train_gan(cfg, tmp_path / "run")
    G, _ = load_generator(tmp_path / "run")
    torch.manual_seed(0)
    z = torch.randn(64, G.z_dim)
    real = {0: np.array([40, 70, 200]) / 127.5 - 1, 1: np.array([220, 140, 30]) / 127.5 - 1}
    for k in (0, 1):
        with torch.no_grad():
            mean = G(z, torch.full((64,), k), noise_mode="const").mean(dim=[0, 2, 3]).numpy()
        d_own, d_other = np.linalg.norm(mean - real[k]), np.linalg.norm(mean - real[1 - k])
        print(f"class {k}: mean colour {mean}, distance to own {d_own:.3f}, to other {d_other:.3f}")
        assert d_own < d_other


def test_finetune_reinitialises_class_embeddings_by_name(toy, tmp_path):
    """Same class count, other class names: the class embeddings are re-drawn, not mapped onto unrelated classes."""
    base = tmp_path / "base"
    train_gan(tiny_cfg(toy, kimg=0.016), base)
    renamed = make_colour_folder(tmp_path / "renamed", {"x0": (40, 60, 200), "x1": (210, 50, 40)}, n=4)
    run = tmp_path / "ft"
    train_gan(tiny_cfg(renamed, kimg=0.016, resume_from=str(base)), run)
    report = runs.read_json(run / "finetune.json")
    reinit = report["G"]["reinitialised"]
    assert any(n.endswith("embed.weight") for n in reinit)
    assert report["G_ema"]["reinitialised"] == reinit
    b = load(base / "checkpoints" / "latest.pt")
    f = load(run / "checkpoints" / "latest.pt")
    name = next(n for n in reinit if n.endswith("embed.weight"))
    assert not torch.equal(f["G"][name], b["G"][name])


def test_g_side_conditional_weight(toy, tmp_path):
    """``cond_lambda_g=0``: D still learns its D2D-CE head on reals, G's loss has no D2D-CE pull."""
    train_gan(tiny_cfg(toy, kimg=0.016, cond_lambda_g=0.0), tmp_path / "off")
    train_gan(tiny_cfg(toy, kimg=0.016), tmp_path / "on")
    ticks = {k: [json.loads(line) for line in (tmp_path / k / "stats.jsonl").read_text().splitlines()]
             for k in ("off", "on")}
    assert any("loss_d_d2d" in t for t in ticks["off"]) and not any("loss_g_d2d" in t for t in ticks["off"])
    assert any("loss_g_d2d" in t for t in ticks["on"])
    with pytest.raises(ValueError, match="cond_lambda_g"):
        tiny_cfg(toy, cond_lambda_g=-1.0).validate()


def test_finetune_of_a_projection_base_keeps_the_head_and_refuses_another_d(toy, tmp_path):
    proj = {"D_kwargs": {"cond_projection": True}}
    base = tmp_path / "base"
    train_gan(tiny_cfg(toy, kimg=0.016, **proj), base)
    renamed = make_colour_folder(tmp_path / "renamed", {"x0": (40, 60, 200), "x1": (210, 50, 40), "x2": (0, 0, 0)}, n=4)
    run = tmp_path / "ft"
    train_gan(tiny_cfg(renamed, kimg=0.016, resume_from=str(base), **proj), run)
    report = runs.read_json(run / "finetune.json")
    assert "projection.cmap.weight" in report["D"]["reinitialised"]
    assert "projection.proj.weight" in report["D"]["loaded"]
    with pytest.raises(ValueError, match="D cond_projection True in the base vs False here"):
        train_gan(tiny_cfg(renamed, kimg=0.016, resume_from=str(base)), tmp_path / "plain")
    assert not (tmp_path / "plain").exists()


# ----------------------------------------------------------------------------------------------------------------
# Class fidelity of transfer (issue: fine-tuned generators drew the wrong class)

BASE_COLOURS = {"b_red": (210, 40, 40), "b_green": (40, 190, 60), "b_blue": (40, 60, 210), "b_yellow": (220, 210, 40)}
# other names, other order: a fine-tuned generator must draw t_blue blue, not whatever base class it started at
TARGET_COLOURS = {"t_blue": (50, 70, 200), "t_red": (200, 50, 50), "t_green": (50, 180, 70)}


def _class_colour_agreement(G, classes, colours):
    """Fraction of classes whose generated mean colour is nearest their own class's colour (and the means)."""
    torch.manual_seed(0)
    z = torch.randn(64, G.z_dim)
    refs = np.array([colours[c] for c in classes]) / 127.5 - 1
    hits, means = 0, []
    for k in range(len(classes)):
        with torch.no_grad():
            mean = G(z, torch.full((64,), k), noise_mode="const").mean(dim=[0, 2, 3]).numpy()
        means.append(((mean + 1) * 127.5).round().tolist())
        hits += int(np.linalg.norm(refs - mean, axis=1).argmin() == k)
    return hits / len(colours), means


@pytest.fixture(scope="module")
def colour_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour_base")
    data = make_colour_folder(root / "data", BASE_COLOURS, n=16)
    # cond_lambda 0.25 (the demo profile's before it became 0.5): the 'random' case below needs the swap it was built
    # to undo; at 0.5 this toy's randomly started classes collapse onto one colour instead (no swap for the
    # relabelling to undo; docs/results.md), while the default 'match' start is right at both weights
    cfg = tiny_cfg(data, kimg=4.0, tick_kimg=0.5, snapshot_ticks=100, batch_size=16, augment="none", lr_g=0.005,
                   lr_d=0.005, r1_gamma=0.01, pl_weight=0.0, style_mixing_prob=0.0, ema_kimg=0.2, cond_lambda=0.25)
    train_gan(cfg, root / "run")
    G, info = load_generator(root / "run")
    base_agreement, means = _class_colour_agreement(G, info["classes"], BASE_COLOURS)
    assert base_agreement == 1.0, f"the base GAN itself did not learn its colours: {means}"
    return root / "run", cfg


@pytest.mark.parametrize(("class_init", "cond_lambda"), [("match", 0.5), ("match", 0.25), ("random", 0.25)])
def test_finetune_keeps_each_class_between_different_class_sets(colour_base, tmp_path, class_init, cond_lambda):
    """Base classes red/green/blue/yellow, target classes blue/red/green under other names: each fine-tuned class
    must draw its own colour. Before the fix, freshly drawn class embeddings kept whatever base colour they landed
    on (t_green drawn red and t_red green). 'match' starts each class at the most similar base class; with
    'random' the relabelling by D's view (realign_classes) must undo the swap."""
    base, base_cfg = colour_base
    data = make_colour_folder(tmp_path / "target", TARGET_COLOURS, n=16)
    cfg = dataclasses.replace(base_cfg, data_dir=str(data), kimg=0.5, resume_from=str(base), class_init=class_init,
                              cond_lambda=cond_lambda)
    train_gan(cfg, tmp_path / "ft")
    report = runs.read_json(tmp_path / "ft" / "finetune.json")
    assert report["class_init"]["method"] == class_init
    if class_init == "match":
        assert report["class_init"]["matched_base_class"] == {"t_blue": "b_blue", "t_red": "b_red",
                                                              "t_green": "b_green"}
    G, info = load_generator(tmp_path / "ft")
    agreement, means = _class_colour_agreement(G, info["classes"], TARGET_COLOURS)
    assert agreement == 1.0, f"generated mean colours {means} for {info['classes']}"
    stats = [json.loads(line) for line in open(tmp_path / "ft" / "stats.jsonl")]
    assert all("d_class_agreement" in r for r in stats)
    if class_init == "random":  # the swap was undone by relabelling, not by luck
        assert any(r.get("class_realign") for r in stats)
        assert runs.read_json(tmp_path / "ft" / "metrics.json")["class_realignments"]
