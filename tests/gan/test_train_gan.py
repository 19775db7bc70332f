"""GAN training end to end (histlib.gan.launch.train_gan): run directory, NaN stop, early stopping, metric hooks, CLI,
plots, learned conditioning (exact resume: test_state.py; fine-tuning: test_transfer.py)."""

import argparse
import json
import shutil
import warnings

import matplotlib
import numpy as np
import pytest
import torch
from gan_toys import TRAINING_STATE, load, make_colour_folder, tiny_cfg
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
    for key in ("loss_g", "loss_d", "loss_d_d2d", "r1_penalty", "loss_pl", "augment_p", "img_per_s"):
        assert key in stats[-1] and np.isfinite(stats[-1][key]), key
    assert "loss_g_d2d" not in stats[-1]  # the demo base profile: D2D-CE trains D only (test_g_side_conditional_weight)
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
    from histlib.metrics.training_hook import GanMetricsHook

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


def test_g_side_conditional_weight(toy, tmp_path):
    """``cond_lambda_g=0`` (the demo base profile's): D still learns its D2D-CE head on reals, G's loss has no D2D-CE
    pull; fine-tuning puts it back on G (``None``: G's weight is ``cond_lambda``, 0.5)."""
    assert TrainConfig.from_profile("demo").cond_lambda_g == 0.0
    ft = TrainConfig.from_profile("demo", stage="finetune")
    assert ft.cond_lambda_g is None and ft.cond_lambda == 0.5
    train_gan(tiny_cfg(toy, kimg=0.016, cond_lambda_g=0.0), tmp_path / "off")
    train_gan(tiny_cfg(toy, kimg=0.016, cond_lambda_g=0.25), tmp_path / "on")
    ticks = {k: [json.loads(line) for line in (tmp_path / k / "stats.jsonl").read_text().splitlines()]
             for k in ("off", "on")}
    assert any("loss_d_d2d" in t for t in ticks["off"]) and not any("loss_g_d2d" in t for t in ticks["off"])
    assert any("loss_g_d2d" in t for t in ticks["on"])
    with pytest.raises(ValueError, match="cond_lambda_g"):
        tiny_cfg(toy, cond_lambda_g=-1.0).validate()


@pytest.mark.parametrize("mode", ["bar", "plain"])
def test_progress_ends_at_the_total_when_the_last_batch_overshoots(toy, tmp_path, monkeypatch, capsys, mode):
    """0.03 kimg at batch 8 trains 32 images: the display stops at 30 (0.03 kimg), in images, without tqdm's
    'clamping frac' warning (which summed float steps of 0.008 kimg used to raise past the total)."""
    from tqdm import TqdmWarning

    monkeypatch.setenv("HISTLIB_PROGRESS", mode)
    cfg = tiny_cfg(toy, kimg=0.03, progress=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TqdmWarning)
        train_gan(cfg, tmp_path / "run")
    out = capsys.readouterr()
    text = out.out + out.err
    if mode == "plain":
        assert "train_gan: done (0.03/0.03 kimg" in text
    else:
        assert "0.03/0.03" in text and "100%" in text
