"""histlib.gan.checkpoint: which file a run directory gives, files it refuses, and what a resumed run may not change."""

import pytest
import torch
from gan_toys import tiny_cfg

from histlib import runs
from histlib.gan.checkpoint import CHECKPOINT_FORMAT, find_checkpoint, load_checkpoint
from histlib.gan.launch import train_gan


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


def test_a_run_directory_gives_its_best_checkpoint_else_its_latest(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no checkpoints/best.pt or checkpoints/latest.pt"):
        find_checkpoint(tmp_path / "run")
    (ckpts / "latest.pt").write_bytes(b"")
    assert find_checkpoint(tmp_path / "run") == ckpts / "latest.pt"
    (ckpts / "best.pt").write_bytes(b"")
    assert find_checkpoint(tmp_path / "run") == ckpts / "best.pt"
    with pytest.raises(FileNotFoundError, match="other.pt: checkpoint not found"):
        find_checkpoint(tmp_path / "other.pt")


def test_a_foreign_or_damaged_file_is_named_and_refused(tmp_path):
    torch.save({"G": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match=r"foreign.pt: not a histlib GAN checkpoint \(format 'histlib.train_gan/1'"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "foreign.pt").read_bytes()[:40])
    with pytest.raises(ValueError, match="cut.pt: cannot read checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"format": CHECKPOINT_FORMAT, "classes": ["a", "../b"]}, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="edited.pt"):
        load_checkpoint(tmp_path / "edited.pt")
    torch.save({"format": CHECKPOINT_FORMAT, "classes": ["a", "b"]}, tmp_path / "plain.pt")
    assert load_checkpoint(tmp_path / "plain.pt")["path"] == str(tmp_path / "plain.pt")
