"""histlib.gan.state with the checkpoint: a resumed run continues exactly (networks, optimisers, augmentation, data
position, random streams), also after a crash between snapshots."""

import pytest
from gan_toys import TRAINING_STATE, assert_same, load, tiny_cfg

from histlib import runs
from histlib.gan.launch import train_gan


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
