"""Data-parallel training with torch.distributed (gloo on CPU, 2 processes) matches a single-process run.

The children write their results to files and flush them, then meet at a barrier, destroy the process group and
leave with ``os._exit(0)``: the test never depends on how the gloo backend behaves at interpreter shutdown.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from histlib import runs
from histlib.gan.config import TrainConfig
from histlib.gan.launch import train_gan

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    from histlib.gan.config import TrainConfig
    from histlib.gan.launch import train_gan
    from histlib.config import from_dict
    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    cfg = from_dict(TrainConfig, json.load(open(os.path.join(out, "cfg.json"))))
    dist.init_process_group("gloo")
    summary = train_gan(cfg, os.path.join(out, "ddp_run"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"augment_p": summary["augment_p"], "ada_rt": summary["ada_rt"], "cur_nimg": summary["cur_nimg"],
                   "world_size": summary["world_size"]}, f)
        f.flush()
        os.fsync(f.fileno())
    sys.stdout.flush()
    sys.stderr.flush()
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toy(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls, col in {"blue": (40, 60, 200), "red": (210, 50, 40), "grey": (120, 120, 120)}.items():
        (root / cls).mkdir(parents=True)
        for i in range(6):
            a = np.clip(np.array(col)[None, None] + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / cls / f"{i}.png")
    return root


def test_two_gloo_processes_match_one_process(tmp_path):
    data = _toy(tmp_path / "data")
    # Every random draw that differs between process layouts is switched off: synthesis noise is constant, and the
    # augmentation probability stays ~0 (ada_kimg is huge) while the ADA statistics are still all-reduced. The
    # minibatch-std groups are single samples, since groups cannot span processes. Latents, labels, style-mixing
    # cut-offs and path-length directions come from the shared global-batch stream.
    cfg = TrainConfig.from_profile(
        "demo", data_dir=str(data), resolution=16, batch_size=8, kimg=0.032, tick_kimg=0.016, snapshot_ticks=1,
        pl_interval=2, r1_interval=2, ada_interval=1, ada_kimg=1e6, noise_mode="const", progress=False,
        G_kwargs=dict(z_dim=16, w_dim=16, mapping_layers=1, channel_base=128, channel_max=16),
        D_kwargs=dict(channel_base=128, channel_max=16, embed_dim=16, mbstd_group_size=1), grid_columns=2)
    runs.write_json(tmp_path / "cfg.json", cfg)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env={**env, "RANK": str(r),
                              "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("distributed children did not finish within 240 s")
        outputs.append(out.decode(errors="replace"))
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{outputs[r][-3000:]}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] and ranks[0]["world_size"] == 2 and ranks[0]["cur_nimg"] == 32

    single = train_gan(cfg, tmp_path / "single_run")
    assert single["world_size"] == 1
    a = torch.load(tmp_path / "single_run" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp_run" / "checkpoints" / "latest.pt", weights_only=True)
    assert len(b["rng"]) == 2  # both ranks' random states are saved for an exact resume
    for net in ("G", "D", "G_ema"):
        for name, t in a[net].items():
            if t.is_floating_point():
                assert torch.allclose(t, b[net][name], rtol=1e-4, atol=1e-5), f"{net}.{name}"
    assert a["pl_reg"]["pl_mean"].item() == pytest.approx(b["pl_reg"]["pl_mean"].item(), rel=1e-4)
    assert ranks[0]["ada_rt"] == pytest.approx(single["ada_rt"])
    sa = runs.read_jsonl(tmp_path / "single_run" / "stats.jsonl")
    sb = runs.read_jsonl(tmp_path / "ddp_run" / "stats.jsonl")
    for key in ("loss_g", "loss_d", "loss_g_d2d", "loss_d_d2d", "r1_penalty", "loss_pl"):
        assert [r[key] for r in sb] == pytest.approx([r[key] for r in sa], rel=1e-4, abs=1e-6), key
    # the parameters moved between the two ticks: the comparison is not between untouched initialisations
    first = torch.load(tmp_path / "ddp_run" / "checkpoints" / "snapshot-00000.016kimg.pt", weights_only=True)
    for net in ("G", "D"):
        moved = [n for n, t in b[net].items() if t.is_floating_point() and not torch.equal(t, first[net][n])]
        assert len(moved) > len(b[net]) // 2, net


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
        G_kwargs=dict(z_dim=16, w_dim=16, mapping_layers=1, channel_base=128, channel_max=16),
        D_kwargs=dict(channel_base=128, channel_max=16, embed_dim=16, mbstd_group_size=1), grid_columns=2, **kw)


def test_processes_2_starts_its_own_workers_and_matches_one_process(tmp_path, monkeypatch):
    """``TrainConfig.processes=2``: the call itself starts two gloo workers (what a study step given 2 GPUs does)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = _toy(tmp_path / "data")
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

    data = _toy(tmp_path / "data")
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
