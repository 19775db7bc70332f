"""histlib.gan.finetune_report: finetune.json written once, read by notebook 03's views, the frozen-tensor check and
the index page."""

import subprocess
import sys

import pytest

from histlib import runs
from histlib.gan.checkpoint import CHECKPOINT_FORMAT
from histlib.gan.finetune_report import (
    class_init_table,
    frozen_tensor_check,
    read_finetune_report,
    transfer_summary,
    transfer_tensors,
    write_finetune_report,
)


def test_the_report_is_written_for_a_base_or_freezing_and_an_old_one_removed_otherwise(tmp_path):
    frozen = {"G": ["synthesis.blocks.0.conv.weight"], "D": []}
    write_finetune_report(tmp_path, None, frozen)
    info = read_finetune_report(tmp_path)
    assert info == {"frozen": frozen, "num_frozen": {"G": 1, "D": 0}}
    base = {"resume_from": "base.pt", "classes": ["a", "b"], "class_init": {"method": "loaded"},
            "G": {"loaded": ["x", "y"], "skipped": [], "reinitialised": []}}
    write_finetune_report(tmp_path, base, {"G": [], "D": []})
    info = read_finetune_report(tmp_path)
    assert info["resume_from"] == "base.pt" and info["num_G"] == {"loaded": 2, "skipped": 0, "reinitialised": 0}
    assert class_init_table(tmp_path).empty  # classes loaded as they were
    write_finetune_report(tmp_path, None, {"G": [], "D": []})  # a fresh run from scratch
    assert read_finetune_report(tmp_path) is None
    assert transfer_summary(tmp_path).empty


def test_class_init_table_names_the_base_class_each_target_class_started_from(tmp_path):
    runs.write_json(tmp_path / "finetune.json", {
        "classes": ["t0", "t1"], "base_classes": ["b0", "b1", "b2"],
        "class_init": {"method": "match", "similarity": [[0.1, 0.9, 0.2], [0.8, 0.3, 0.1]], "match": [1, 0],
                       "matched_base_class": {"t0": "b1", "t1": "b0"}}})
    runs.write_json(tmp_path / "metrics.json", {"class_realignments": [{"kimg": 1.0, "perm": [1, 0]}]})
    table = class_init_table(tmp_path)
    assert table["started from base class"].to_dict() == {"t0": "b1", "t1": "b0"}
    assert table["similarity"].to_dict() == {"t0": 0.9, "t1": 0.8}
    assert table.attrs["realignments"] == [{"kimg": 1.0, "perm": [1, 0]}]


def test_the_readers_import_without_torch():
    """The study runner builds the index page (which reads finetune.json) without loading torch."""
    code = "import sys, histlib.gan.finetune_report, histlib.report_gan; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fine_tuning_transfer_report(tmp_path):
    torch = pytest.importorskip("torch")
    base = {"format": CHECKPOINT_FORMAT, "G": {"a": torch.ones(2), "b": torch.zeros(3), "emb": torch.ones(4)},
            "D": {"x": torch.ones(1)}}
    base["G_ema"] = {k: v.clone() for k, v in base["G"].items()}
    torch.save(base, tmp_path / "base.pt")
    tuned = {"format": CHECKPOINT_FORMAT, "G": {"a": torch.ones(2), "b": torch.tensor([0.0, 0.5, 0.0]),
                                                "emb": torch.zeros(5)},
             "D": {"x": torch.tensor([1.0 + 2**-20])}}
    tuned["G_ema"] = {k: v.clone() for k, v in tuned["G"].items()}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(tuned, run / "checkpoints" / "latest.pt")
    loaded = {"loaded": ["a", "b"], "skipped": ["emb"], "reinitialised": ["emb"]}
    runs.write_json(run / "finetune.json", {"resume_from": str(tmp_path / "base.pt"), "frozen": {"G": ["a"], "D": []},
                                            "G": loaded, "G_ema": loaded, "D": {"loaded": ["x"]}})
    summary = transfer_summary(run)
    assert summary.loc["G"].to_dict() == {"loaded": 2, "skipped": 1, "reinitialised": 1, "frozen": 1}
    assert summary.loc["D", "loaded"] == 1 and summary.loc["G_ema", "frozen"] == 1
    tensors = transfer_tensors(run)
    assert set(tensors[tensors["network"] == "G"]["status"]) == {"skipped", "reinitialised", "frozen"}
    check = frozen_tensor_check(run).set_index(["network", "group"])
    assert check.loc[("G", "frozen"), "unchanged"] == 1 and check.loc[("G", "frozen"), "max_abs_change"] == 0
    assert check.loc[("G", "trainable"), "max_abs_change"] == 0.5 and check.loc[("G", "trainable"), "unchanged"] == 0
    assert check.loc[("D", "trainable"), "max_abs_change"] == 2**-20
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert transfer_summary(scratch).empty and frozen_tensor_check(scratch).empty


def test_frozen_check_refuses_a_base_that_changed_since_fine_tuning(tmp_path):
    torch = pytest.importorskip("torch")
    base = {"format": CHECKPOINT_FORMAT, "G": {"a": torch.ones(2)}, "G_ema": {"a": torch.ones(2)}, "D": {}}
    torch.save(base, tmp_path / "base.pt")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(base, run / "checkpoints" / "latest.pt")
    runs.write_json(run / "finetune.json", {"resume_from": str(tmp_path / "base.pt"),
                                            "resume_from_sha256": runs.file_sha256(tmp_path / "base.pt"),
                                            "frozen": {"G": ["a"], "D": []}, "G": {"loaded": ["a"]}})
    assert frozen_tensor_check(run).set_index(["network", "group"]).loc[("G", "frozen"), "unchanged"] == 1
    torch.save({"format": CHECKPOINT_FORMAT, "G": {"a": torch.zeros(2)}, "G_ema": {"a": torch.zeros(2)}, "D": {}},
               tmp_path / "base.pt")
    with pytest.warns(UserWarning, match="changed since"):
        assert frozen_tensor_check(run).empty
