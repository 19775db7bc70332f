"""GAN training beside a competing process: what ``OMP_WAIT_POLICY=PASSIVE`` (set when histlib is imported) buys.

On a shared CPU, PyTorch's OpenMP threads spin while they wait for work; when another multi-threaded job runs,
the spinning threads of each steal the cores the other's working threads need, and both crawl. histlib sets
``OMP_WAIT_POLICY=PASSIVE`` in ``histlib/__init__.py``, before anything imports torch, so that every entry point
(``python -m histlib``, the study runner, the notebooks' kernels) has it without ``make``.

Two ways of starting the same training, each in its own subprocess with ``OMP_WAIT_POLICY`` removed from the
environment:

- ``torch-first``: ``import torch`` before ``import histlib`` (the OpenMP runtime is loaded before histlib can set
  the variable: what every entry point did before the import-time setting);
- ``histlib-first``: ``import histlib`` first, as the CLI, the runner and the notebooks do.

Each is timed alone and beside a competitor: another process doing 2-thread PyTorch work (small matrix products
and element-wise ops, many short parallel regions, OpenMP default policy), started before the training and stopped
after it. Training: ``train_gan`` at 32 px with the ``demo`` networks, batch 16, ADA on at p = 0.2, one warm-up tick
of 16 iterations, then timed ticks. Printed: the training's img/s alone and beside the competitor, the slow-down,
and the competitor's own work rate (so that a gain for one is not a loss hidden in the other).

Usage (from the project root)::

    python benchmarks/contention.py --json contention.json
    python benchmarks/contention.py --ticks 1 --modes histlib-first
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("torch-first", "histlib-first")

COMPETITOR = r"""
import sys, time
import torch
torch.set_num_threads(2)
a = torch.randn(192, 192); b = torch.randn(192, 192); x = torch.randn(64, 4096)
n = 0; t0 = time.time(); stop = float(sys.argv[1])
while time.time() - t0 < stop:
    for _ in range(20):
        c = a @ b
        y = torch.relu(x * 1.01 + 0.5).sum(dim=1)
    n += 20
    print(f"WORK {n} {time.time() - t0:.3f}", flush=True)
"""


def _omp_env() -> str:
    keys = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    return " ".join(f"{k}={os.environ[k]}" for k in keys if k in os.environ) or "unset"


def child(mode: str, ticks: int) -> dict:
    if mode == "torch-first":
        omp = _omp_env()
        import torch  # noqa: F401  (the OpenMP runtime loads here, before histlib can set anything)

        import histlib  # noqa: F401
    else:
        import histlib  # noqa: F401

        omp = _omp_env()
        import torch  # noqa: F401
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_gan import ITERS_PER_TICK, _synthetic_folder

    from histlib.gan.config import TrainConfig
    from histlib.gan.launch import train_gan

    batch = 16
    with tempfile.TemporaryDirectory() as tmp:
        data = _synthetic_folder(Path(tmp) / "data", 32)
        tick_kimg = ITERS_PER_TICK * batch / 1000
        cfg = TrainConfig.from_profile(
            "demo", data_dir=str(data), resolution=32, batch_size=batch, device="cpu", kimg=tick_kimg * (1 + ticks),
            tick_kimg=tick_kimg, snapshot_ticks=10**6, keep_snapshots=False, kernel_impl="ref", augment="ada",
            augment_p=0.2, ada_kimg=1e6, progress=False, num_workers=0, grid_columns=1)
        train_gan(cfg, Path(tmp) / "run", resume=False)
        stats = [json.loads(line) for line in (Path(tmp) / "run" / "stats.jsonl").read_text().splitlines()]
    timed = stats[1:]
    seconds = sum(r["tick_s"] for r in timed)
    return {"omp_at_torch_load": omp, "ticks": len(timed),
            "img_per_s": round(ITERS_PER_TICK * batch * len(timed) / seconds, 2),
            "tick_img_per_s": [r["img_per_s"] for r in timed]}


def run(config: str, ticks: int, beside: bool, timeout: float) -> dict:
    """``config``: ``torch-first`` or ``histlib-first``, optionally ``:KEY=VALUE,...`` added to the environment."""
    mode, _, extra = config.partition(":")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(kv.split("=", 1) for kv in extra.split(",") if kv)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    comp = None
    if beside:
        plain = {k: v for k, v in env.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        comp = subprocess.Popen([sys.executable, "-c", COMPETITOR, str(timeout)], stdout=subprocess.PIPE, text=True,
                                env=plain)
        time.sleep(2.0)
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, __file__, "--_child", mode, "--ticks", str(ticks)], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        result = json.loads(lines[-1][7:]) if lines else {"error": proc.stderr.strip()[-300:]}
    except subprocess.TimeoutExpired:
        result = {"error": f"timed out after {timeout:.0f} s"}
    result.update(config=config, beside=beside, wall_s=round(time.time() - t0, 1))
    if comp is not None:
        comp.terminate()
        out, _ = comp.communicate(timeout=30)
        work = [ln.split() for ln in out.splitlines() if ln.startswith("WORK ")]
        if work:
            result["competitor_iter_per_s"] = round(int(work[-1][1]) / float(work[-1][2]), 1)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ticks", type=int, default=2, help="timed ticks of 16 iterations (after one warm-up tick)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS),
                   help="torch-first | histlib-first, optionally :KEY=VALUE,... "
                        "(e.g. torch-first:GOMP_SPINCOUNT=10000)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", default=None)
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        print("RESULT " + json.dumps(child(args._child, args.ticks)), flush=True)
        return 0

    import torch

    print(f"machine: {os.cpu_count()} logical CPUs; torch {torch.__version__}; load average {os.getloadavg()}")
    # The competitor alone, for its reference work rate.
    comp = subprocess.run([sys.executable, "-c", COMPETITOR, "10"], capture_output=True, text=True, timeout=120)
    work = [ln.split() for ln in comp.stdout.splitlines() if ln.startswith("WORK ")]
    comp_alone = round(int(work[-1][1]) / float(work[-1][2]), 1) if work else None
    results = []
    for config in args.configs:
        for beside in (False, True):
            r = run(config, args.ticks, beside, args.timeout)
            results.append(r)
            print(f"  {config:<40} {'beside competitor' if beside else 'alone':<18} "
                  f"{r.get('img_per_s', r.get('error'))} img/s", flush=True)
    print(f"\ncompetitor alone: {comp_alone} iterations/s; load average after {os.getloadavg()}")
    print(f"{'start':<40} {'OpenMP at torch load':<38} {'alone':>7} {'beside':>7} {'slow-down':>9} "
          f"{'competitor it/s':>15}")
    for config in args.configs:
        alone = next(r for r in results if r["config"] == config and not r["beside"])
        beside = next(r for r in results if r["config"] == config and r["beside"])
        if "error" in alone or "error" in beside:
            print(f"{config:<40} error: {alone.get('error') or beside.get('error')}")
            continue
        print(f"{config:<40} {alone['omp_at_torch_load']:<38} {alone['img_per_s']:>7.1f} {beside['img_per_s']:>7.1f} "
              f"{alone['img_per_s'] / beside['img_per_s']:>8.1f}x {beside.get('competitor_iter_per_s', '-'):>15}")
    print("(img/s of GAN training, demo networks, 32 px, batch 16, CPU)")
    if args.json:
        Path(args.json).write_text(json.dumps({"competitor_alone_iter_per_s": comp_alone, "results": results},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
