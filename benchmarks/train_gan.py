"""GAN training throughput: images/s of full training iterations of ``train_gan`` (histlib.gan.launch).

One measured iteration is everything ``train_gan`` does per minibatch: G step (adversarial + D2D-CE), lazy
path-length step every 4 iterations, D step (adversarial + D2D-CE, ADA on with p = 0.2, so the augmentations run),
lazy R1 step every 16 iterations, the EMA update and ADA's controller. The loop runs through ``train_gan`` itself
on a synthetic two-class ImageFolder, in ticks of 16 iterations (so the lazy regularisers are included in
proportion): the first tick warms up (cuDNN autotuning, kernel builds, compilation) and the following ticks are
timed (training time only, no snapshots: ``stats.jsonl``'s ``img_per_s``).

Configurations (each in its own subprocess with a time limit, so a slow compilation cannot stall the table):

- CPU: 32 px with the ``demo`` networks; kernel path ``ref`` (the CUDA and compiled paths need a GPU).
- GPU (when present): 64 px (``reduced`` networks) and 256 px (``paper`` networks, batch 64, fp16 in the top
  resolutions), each with kernel paths ``ref``, ``cuda`` and ``compiled``.

An unavailable path is reported with the reason instead of a number. ``--profile`` adds, per configuration, the
top operators of one timed tick from ``torch.profiler`` (what limits the speed).

Usage (from the project root)::

    python benchmarks/train_gan.py                     # CPU 32 px, plus the GPU set when CUDA is available
    python benchmarks/train_gan.py --json out.json --ticks 2 --profile
    python benchmarks/train_gan.py --only cuda:256:cuda --batch 64
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
sys.path.insert(0, str(ROOT))

PROFILE_FOR_RES = {32: "demo", 64: "reduced", 256: "paper"}
DEFAULT_BATCH = {32: 16, 64: 32, 256: 64}
ITERS_PER_TICK = 16  # the R1 interval: every timed tick holds one R1 step and four path-length steps


def _synthetic_folder(root: Path, res: int, n: int = 64) -> Path:
    """Two classes of smooth random RGB images at ``res`` px (PNG)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            low = rng.integers(0, 256, (max(res // 8, 2), max(res // 8, 2), 3), dtype=np.uint8)
            Image.fromarray(low).resize((res, res), Image.BICUBIC).save(d / f"{i}.png")
    return root


def run_one(device: str, res: int, impl: str, batch: int, ticks: int, profile: bool, workers: int) -> dict:
    """Trains ``1 + ticks`` ticks of 16 iterations in this process and returns the timed ticks' throughput."""
    import torch

    from histlib import ops
    from histlib.gan.config import TrainConfig
    from histlib.gan.launch import train_gan

    with tempfile.TemporaryDirectory() as tmp:
        data = _synthetic_folder(Path(tmp) / "data", res)
        tick_kimg = ITERS_PER_TICK * batch / 1000
        cfg = TrainConfig.from_profile(
            PROFILE_FOR_RES[res], data_dir=str(data), resolution=res, batch_size=batch, device=device,
            kimg=tick_kimg * (1 + ticks), tick_kimg=tick_kimg, snapshot_ticks=10**6, keep_snapshots=False,
            kernel_impl=impl, augment="ada", augment_p=0.2, ada_kimg=1e6, progress=False, num_workers=workers,
            grid_columns=1)
        prof = None
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
            prof = torch_profile(activities=acts)
        t0 = time.time()
        if prof is not None:
            with prof:
                train_gan(cfg, Path(tmp) / "run", resume=False)
        else:
            train_gan(cfg, Path(tmp) / "run", resume=False)
        wall = time.time() - t0
        stats = [json.loads(line) for line in (Path(tmp) / "run" / "stats.jsonl").read_text().splitlines()]
    timed = stats[1:]
    nimg = sum(ITERS_PER_TICK * batch for _ in timed)
    seconds = sum(r["tick_s"] for r in timed)
    out = {
        "device": device, "resolution": res, "impl": impl, "batch": batch,
        "timed_iterations": ITERS_PER_TICK * len(timed),
        "img_per_s": round(nimg / seconds, 2), "sec_per_kimg": round(seconds / nimg * 1000, 3),
        "warmup_tick_s": stats[0]["tick_s"], "wall_s": round(wall, 1), "kernels": ops.backend_info(),
        "gpu_mem_gb": stats[-1].get("gpu_mem_gb"), "threads": torch.get_num_threads(),
    }
    if prof is not None:
        key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
        out["top_ops"] = prof.key_averages().table(sort_by=key, row_limit=15)
    return out


def _device_name(device: str) -> str:
    import platform

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs, torch threads " \
           f"{torch.get_num_threads()})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--ticks", type=int, default=2, help="timed ticks of 16 iterations (after one warm-up tick)")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size (default: 16 / 32 / 64 at 32 / 64 / 256 px)")
    parser.add_argument("--only", action="append", default=None,
                        help="DEVICE:RES:IMPL to run (repeatable), e.g. cpu:32:ref or cuda:256:compiled")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    parser.add_argument("--workers", type=int, default=None, help="data-loader workers (default: 0 CPU, 4 GPU)")
    parser.add_argument("--profile", action="store_true", help="print the top operators of each configuration")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child:  # one configuration, in this subprocess; the result goes to stdout as the last line
        device, res, impl, batch = args._child.split(":")
        workers = args.workers if args.workers is not None else (4 if device == "cuda" else 0)
        try:
            result = run_one(device, int(res), impl, int(batch), args.ticks, args.profile, workers)
        except Exception as e:  # an unavailable kernel path, out of memory, ...: reported in the table
            result = {"device": device, "resolution": int(res), "impl": impl, "batch": int(batch),
                      "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    import torch

    configs = [("cpu", 32, "ref")]
    if torch.cuda.is_available():
        configs += [("cuda", r, impl) for r in (64, 256) for impl in ("ref", "cuda", "compiled")]
    if args.only:
        configs = [(d, int(r), i) for d, r, i in (s.split(":") for s in args.only)]
    notes = []
    if not torch.cuda.is_available():
        notes.append("no CUDA device: GPU rows (64/256 px; ref, cuda, compiled) skipped; the CUDA and compiled "
                     "kernel paths need a GPU")
    print(f"CPU: {_device_name('cpu')}")
    if torch.cuda.is_available():
        print(f"GPU: {_device_name('cuda')}")
    try:
        print(f"load average before: {os.getloadavg()}")
    except OSError:
        pass
    results = []
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads collapse on a shared CPU
    for device, res, impl in configs:
        batch = args.batch or DEFAULT_BATCH[res]
        cmd = [sys.executable, __file__, "--_child", f"{device}:{res}:{impl}:{batch}", "--ticks", str(args.ticks)]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        if args.profile:
            cmd.append("--profile")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=ROOT)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            result = json.loads(lines[-1][7:]) if lines else {
                "device": device, "resolution": res, "impl": impl, "batch": batch,
                "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}"}
        except subprocess.TimeoutExpired:
            result = {"device": device, "resolution": res, "impl": impl, "batch": batch,
                      "error": f"timed out after {args.timeout:.0f} s"}
        results.append(result)
        if result.get("top_ops"):
            print(f"\n--- top operators: {device} {res} px {impl}\n{result['top_ops']}")
    try:
        print(f"load average after: {os.getloadavg()}")
    except OSError:
        pass

    header = f"{'device':<6} {'res':>4} {'impl':<9} {'batch':>5} {'img/s':>9} {'s/kimg':>8} {'warm-up s':>9}  note"
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        if "error" in r:
            print(f"{r['device']:<6} {r['resolution']:>4} {r['impl']:<9} {r['batch']:>5} {'-':>9} {'-':>8} {'-':>9}  "
                  f"{r['error']}")
        else:
            print(f"{r['device']:<6} {r['resolution']:>4} {r['impl']:<9} {r['batch']:>5} {r['img_per_s']:>9.1f} "
                  f"{r['sec_per_kimg']:>8.2f} {r['warmup_tick_s']:>9.1f}  kernels {r['kernels']}")
    for n in notes:
        print(f"note: {n}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": [{k: v for k, v in r.items() if k != "top_ops"}
                                                           for r in results], "notes": notes}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
