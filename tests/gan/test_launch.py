"""histlib.gan.launch: ``train_gan`` starts its own worker processes (``TrainConfig.processes``), matches one
process, reports a worker's failure in the caller and stops the others; a study step trains in two processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gan_toys import three_colour_folder

from histlib import runs
from histlib.gan.config import TrainConfig
from histlib.gan.launch import train_gan

ROOT = Path(__file__).resolve().parents[1]


def _compare_runs(single: Path, ddp: Path) -> None:
    a = torch.load(single / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(ddp / "checkpoints" / "latest.pt", weights_only=True)
    assert len(b["rng"]) == 2
    for net in ("G", "D", "G_ema"):
        for name, t in a[net].items():
            if t.is_floating_point():
                assert torch.allclose(t, b[net][name], rtol=1e-4, atol=1e-5), f"{net}.{name}"
    sa, sb = runs.read_jsonl(single / "stats.jsonl"), runs.read_jsonl(ddp / "stats.jsonl")
    for key in ("loss_g", "loss_d", "loss_g_d2d", "loss_d_d2d"):
        assert [r[key] for r in sb] == pytest.approx([r[key] for r in sa], rel=1e-4, abs=1e-6), key


def _tiny_cfg(data: Path, **kw) -> TrainConfig:
    kw.setdefault("kimg", 0.032)
    return TrainConfig.from_profile(
        "demo", data_dir=str(data), resolution=16, batch_size=8, tick_kimg=0.016, snapshot_ticks=1,
        pl_interval=2, r1_interval=2, ada_interval=1, ada_kimg=1e6, noise_mode="const", progress=False,
        cond_lambda_g=0.25,  # D2D-CE on G too (the demo base profile has it on D only), so its loss is compared
        G_kwargs=dict(z_dim=16, w_dim=16, mapping_layers=1, channel_base=128, channel_max=16),
        D_kwargs=dict(channel_base=128, channel_max=16, embed_dim=16, mbstd_group_size=1), grid_columns=2, **kw)


def test_processes_2_starts_its_own_workers_and_matches_one_process(tmp_path, monkeypatch):
    """``TrainConfig.processes=2``: the call itself starts two gloo workers (what a study step given 2 GPUs does)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = three_colour_folder(tmp_path / "data")
    summary = train_gan(_tiny_cfg(data, processes=2), tmp_path / "ddp")
    assert summary["world_size"] == 2 and summary["cur_nimg"] == 32
    assert json.loads((tmp_path / "ddp" / "env.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["cur_nimg"] == 32
    single = train_gan(_tiny_cfg(data, processes=1), tmp_path / "single")
    assert single["world_size"] == 1
    _compare_runs(tmp_path / "single", tmp_path / "ddp")
    # resuming with another process count is allowed ('processes' is a resume-mutable field)
    more = train_gan(_tiny_cfg(data, processes=1, kimg=0.048), tmp_path / "ddp")
    assert more["cur_nimg"] == 48


def test_a_worker_s_exception_is_raised_in_the_caller(tmp_path):
    from histlib.gan import launch

    cfg = _tiny_cfg(tmp_path / "missing", processes=2)
    with pytest.raises(FileNotFoundError, match="missing") as info:
        train_gan(cfg, tmp_path / "run")
    assert isinstance(info.value.__cause__, launch.WorkerTraceback)
    assert "Traceback" in str(info.value.__cause__)
    assert not (tmp_path / "run").exists()


def test_a_killed_worker_stops_the_others(tmp_path):
    from histlib.gan import launch

    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]),
             subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])]
    try:
        assert launch._wait(procs, 0.05) == 1
    finally:
        launch._stop(procs)
    assert procs[0].returncode is not None and procs[1].returncode == 3


def test_processes_wanted(monkeypatch, tmp_path):
    from histlib.gan import launch

    cfg = _tiny_cfg(tmp_path, device="cpu")
    assert launch.processes_wanted(cfg) == 1  # None on CPU: one process
    assert launch.processes_wanted(_tiny_cfg(tmp_path, processes=2)) == 2
    with pytest.raises(ValueError, match="batch_size=8.*processes.*3"):
        launch.processes_wanted(_tiny_cfg(tmp_path, processes=3))
    with pytest.raises(ValueError, match="TrainConfig.processes=0"):
        _tiny_cfg(tmp_path, processes=0).validate()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert launch.processes_wanted(_tiny_cfg(tmp_path, device="auto")) == 2  # one per GPU the step was given
    assert launch.processes_wanted(_tiny_cfg(tmp_path, device="cuda:1")) == 1
    with pytest.raises(ValueError, match="processes=4: only 2 CUDA"):
        launch.processes_wanted(_tiny_cfg(tmp_path, device="cuda", processes=4))
    with pytest.raises(ValueError, match="names one GPU"):
        launch.processes_wanted(_tiny_cfg(tmp_path, device="cuda:0", processes=2))
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun the launcher made the processes
    assert launch.processes_wanted(_tiny_cfg(tmp_path, device="auto")) == 1


def test_a_study_step_trains_in_two_processes(tmp_path, monkeypatch):
    """Through the study runner and notebook 02: a base-GAN step asking for 2 processes trains data-parallel (on a
    GPU node the same happens with ``resources: {base_gan: {gpus: 2}}`` and ``processes`` left to None)."""
    import yaml

    from histlib import study

    data = three_colour_folder(tmp_path / "data")
    tiny = _tiny_cfg(data)
    overrides = {k: getattr(tiny, k) for k in ("tick_kimg", "snapshot_ticks", "pl_interval", "r1_interval",
                                                "noise_mode", "G_kwargs", "D_kwargs", "grid_columns")}
    doc = {"name": "ddp_step", "profile": "demo", "stages": ["base_gan"],
           "base": {"name": "ddp_toy", "prepared": data.as_posix()},
           "base_gan": {"KIMG": 0.032, "RESOLUTION": 16, "BATCH": 8, "OVERRIDES": {**overrides, "processes": 2}}}
    (tmp_path / "ddp_step.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # ipykernel forwards what child processes write to the notebook, except under pytest (it checks this variable)
    current = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        rows = study.run_study(tmp_path / "ddp_step.yaml", results_root=tmp_path / "results")
    finally:
        if current is not None:
            os.environ["PYTEST_CURRENT_TEST"] = current
    assert [r["status"] for r in rows] == ["finished"], rows
    run = tmp_path / "results" / "ddp_step" / "ddp_toy" / "base_gan" / "default"
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    assert json.loads((run / "metrics.json").read_text())["cur_nimg"] == 32
    assert json.loads((run / "config.json").read_text())["processes"] == 2
    html = (tmp_path / "results" / "ddp_step" / "notebooks" / f"{rows[0]['step']}.html").read_text()
    assert "train_gan: done" in html  # rank 0's progress lines reach the report


class _KeywordOnlyError(Exception):
    def __init__(self, *, code: int):
        super().__init__(f"code {code}")


def test_a_worker_exception_that_does_not_rebuild_is_still_reported(tmp_path):
    import pickle

    from histlib.gan import launch

    exc = _KeywordOnlyError(code=7)
    (tmp_path / "error-1.pkl").write_bytes(pickle.dumps({"exception": pickle.dumps(exc), "summary": "boom: code 7",
                                                         "traceback": "Traceback ...\nboom"}))
    with pytest.raises(launch.TrainingProcessFailed, match="process 1 of 2 raised boom: code 7") as info:
        launch._raise_worker_error(tmp_path, 2)
    assert "Traceback ...\nboom" in str(info.value.__cause__)
    launch._raise_worker_error(tmp_path / "none", 2)  # no report: nothing raised here
