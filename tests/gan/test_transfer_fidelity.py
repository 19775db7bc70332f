"""benchmarks/transfer_fidelity.py: each variant fine-tuned from one base (scratch from nothing), scored, resumable."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from gan_toys import TINY, make_colour_folder, tiny_cfg

from histlib import runs
from histlib.data.prepare import PrepareConfig, prepare_dataset
from histlib.gan.launch import train_gan

ROOT = Path(__file__).resolve().parents[2]
COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (210, 50, 40)}

pytestmark = pytest.mark.usefixtures("seeded")


@pytest.fixture(scope="module")
def tf():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import transfer_fidelity

    return transfer_fidelity


def test_worst_pair_and_table(tf):
    r = {"variant": "pretrained", "seed": 1, "agreement": 0.9, "classes": ["a", "b"],
         "confusion_matrix": [[9, 1], [3, 7]]}
    assert tf.worst_pair(r) == ("b", "a", 3)
    text = tf.table([r], ["scratch", "pretrained"], [0, 1])
    assert "| pretrained | — | 0.900 (3 b→a) | 0.900 |" in text
    assert "| scratch | — | — | — |" in text


def test_grid_trains_each_variant_from_the_base_and_resumes(tmp_path, tf, capsys):
    raw = make_colour_folder(tmp_path / "raw", COLOURS, n=12)
    data = tmp_path / "prepared"
    prepare_dataset(PrepareConfig(source=str(raw), out=str(data), val_fraction=0.25, group_by="patch"), progress=False)
    base = tmp_path / "base"
    train_gan(tiny_cfg(data), base)
    tiny = {k: v for k, v in tiny_cfg(data).__dict__.items()
            if k in ("batch_size", "tick_kimg", "pl_interval", "r1_interval", "ema_kimg", "progress")}
    sets = [f"{k}={json.dumps(v)}" for k, v in {**TINY, **tiny}.items()]
    out = tmp_path / "out"
    argv = ["--base", str(base), "--data", str(data), "--out", str(out), "--variants", "scratch", "freeze_g2",
            "--seeds", "0", "--kimg", "0.032", "--res", "16", "--per-class", "4",
            "--fidelity-cache", str(tmp_path / "cache"), *sum((["--set", s] for s in sets), [])]
    assert tf.main(argv) == 0
    report = runs.read_json(out / "transfer.json")
    assert sorted((r["variant"], r["seed"]) for r in report["runs"]) == [("freeze_g2", 0), ("scratch", 0)]
    assert all(r["n"] == 12 and r["overrides"]["batch_size"] == 8 for r in report["runs"])
    cfg = {v: runs.read_json(out / f"{v}-s0" / "config.json") for v in ("scratch", "freeze_g2")}
    assert cfg["scratch"]["resume_from"] is None and cfg["scratch"]["freeze_g"] == 0
    assert Path(cfg["freeze_g2"]["resume_from"]) == base and cfg["freeze_g2"]["freeze_g"] == 2
    assert "| scratch | " in capsys.readouterr().out
    stamp = (out / "scratch-s0" / "fidelity.json").stat().st_mtime_ns
    assert tf.main(argv) == 0  # finished runs are read, not trained again
    assert (out / "scratch-s0" / "fidelity.json").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit):
        tf.main([*argv, "--variants", "freeze_x9"])
