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

import pytest
import torch
from gan_toys import three_colour_folder

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


def test_two_gloo_processes_match_one_process(tmp_path):
    data = three_colour_folder(tmp_path / "data")
    # Every random draw that differs between process layouts is switched off: synthesis noise is constant, and the
    # augmentation probability stays ~0 (ada_kimg is huge) while the ADA statistics are still all-reduced. The
    # minibatch-std groups are single samples, since groups cannot span processes. Latents, labels, style-mixing
    # cut-offs and path-length directions come from the shared global-batch stream.
    cfg = TrainConfig.from_profile(
        "demo", data_dir=str(data), resolution=16, batch_size=8, kimg=0.032, tick_kimg=0.016, snapshot_ticks=1,
        pl_interval=2, r1_interval=2, ada_interval=1, ada_kimg=1e6, noise_mode="const", progress=False,
        cond_lambda_g=0.25,  # D2D-CE on G too (the demo base profile has it on D only), so its loss is compared
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
