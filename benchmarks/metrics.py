"""Benchmark of the k-NN metrics: histlib vs the reference package ``prdc`` (wall time, peak memory, agreement).

    python benchmarks/metrics.py                      # 10 000 × 10 000 × 4096 vs prdc, then 50 000 × 50 000
    python benchmarks/metrics.py --n 2000 --large 0   # a quick run

Both sides get the same float32 features (``make_features``: ReLU of a random map of a 64-d Gaussian, like
VGG16 fc2 features; the fake latents are shrunk and shifted) and the same k. The
peak memory is the largest resident-set growth over the run, sampled every 5 ms from ``/proc/self/statm``.
Agreement is counted per sample: precision and recall flags, per-real-ball counts (density) and coverage flags,
with ``prdc``'s own distance matrix and radii captured during its run (no extra computation).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from histlib.metrics.prdc import prdc_per_sample  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Largest RSS growth (bytes) above the level at entry, sampled in a background thread."""

    def __enter__(self):
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())
        self.growth = self.peak - self.base


def make_features(n: int, dim: int, seed: int, latent: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """VGG-fc2-like features: ReLU of a random linear map of a ``latent``-d Gaussian, plus a little noise (so the
    sets are non-negative, sparse and low-dimensional, like real CNN features). The fake latents are shrunk and
    shifted (``0.9 z + 0.1``), which gives non-trivial precision/recall/density/coverage."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32)
    b = (rng.standard_normal(dim) * 0.5).astype(np.float32)

    def features(z):
        out = np.empty((n, dim), dtype=np.float32)
        for r0 in range(0, n, 4096):
            h = z[r0:r0 + 4096] @ w + b + rng.standard_normal((min(4096, n - r0), dim), dtype=np.float32) * 0.05
            out[r0:r0 + 4096] = np.maximum(h, 0)
        return out

    real = features(rng.standard_normal((n, latent), dtype=np.float32))
    fake = features(rng.standard_normal((n, latent), dtype=np.float32) * np.float32(0.9) + np.float32(0.1))
    return real, fake


def run_histlib(real, fake, k, device, gemm, budget):
    with PeakMemory() as mem:
        t = time.perf_counter()
        res = prdc_per_sample(real, fake, k, k, device=device, gemm=gemm, memory_budget=budget)
        wall = time.perf_counter() - t
    return res, wall, mem.growth


def run_prdc(real, fake, k):
    import prdc.prdc as ref

    captured = {}
    nn_orig, pd_orig = ref.compute_nearest_neighbour_distances, ref.compute_pairwise_distance

    def nn(x, kk):
        out = nn_orig(x, kk)
        captured["real_radii" if "real_radii" not in captured else "fake_radii"] = out
        return out

    def pd(x, y=None):
        out = pd_orig(x, y)
        if y is not None:
            captured["cross"] = out  # prdc keeps this matrix until it returns: no extra memory at the peak
        return out

    ref.compute_nearest_neighbour_distances, ref.compute_pairwise_distance = nn, pd
    try:
        with PeakMemory() as mem, contextlib.redirect_stdout(io.StringIO()):
            t = time.perf_counter()
            values = ref.compute_prdc(real, fake, k)
            wall = time.perf_counter() - t
    finally:
        ref.compute_nearest_neighbour_distances, ref.compute_pairwise_distance = nn_orig, pd_orig
    return {key: float(v) for key, v in values.items()}, captured, wall, mem.growth


def per_sample_disagreements(res, captured) -> dict[str, int]:
    d = captured["cross"]  # [N_real, N_fake] float32 distances, exactly as prdc compared them
    inside_real = d < captured["real_radii"][:, None]
    prec = inside_real.any(0)
    counts = inside_real.sum(1)
    rec = (d < captured["fake_radii"][None, :]).any(1)
    return {
        "precision_flags": int((prec != res.precision_mask).sum()),
        "recall_flags": int((rec != res.recall_mask).sum()),
        "density_ball_counts": int((counts != res.real_ball_counts).sum()),
        "coverage_flags": int(((counts > 0) != (res.real_ball_counts > 0)).sum()),
    }


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000, help="samples per set for the comparison with prdc")
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--large", type=int, default=50000, help="samples per set for the histlib-only run (0: skip)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--gemm", default="auto", help="auto | float32 | int8")
    ap.add_argument("--budget-mb", type=int, default=None, help="memory budget of the distance blocks (MiB)")
    ap.add_argument("--skip-prdc", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="histlib runs at --n (the median is reported)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    budget = args.budget_mb * (1 << 20) if args.budget_mb else None
    info = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_before": load_average()}
    print(f"# {info}")
    results = {"info": info, "runs": []}

    real, fake = make_features(args.n, args.dim, seed=0)
    walls, mems = [], []
    for _ in range(args.repeat):  # the machine is shared: repeat and report every run
        res, wall, mem = run_histlib(real, fake, args.k, args.device, args.gemm, budget)
        walls.append(wall)
        mems.append(mem)
    wall, mem = float(np.median(walls)), max(mems)
    mine = res.metrics()
    run = {"n": args.n, "dim": args.dim, "k": args.k, "histlib_s": wall, "histlib_runs_s": walls,
           "histlib_peak_mb": mem / 2**20, "histlib": mine, "borderline_pairs": res.borderline_pairs,
           "load_after_histlib": load_average()}
    runs = [round(w, 1) for w in walls]
    print(f"histlib {args.n}x{args.n}x{args.dim} k={args.k}: median {wall:.1f} s (runs {runs}), "
          f"peak +{mem / 2**20:.0f} MiB, {mine}, borderline pairs recomputed in float64: {res.borderline_pairs}")
    if not args.skip_prdc:
        ref, captured, wall_ref, mem_ref = run_prdc(real, fake, args.k)
        dis = per_sample_disagreements(res, captured)
        run.update({"prdc_s": wall_ref, "prdc_peak_mb": mem_ref / 2**20, "prdc": ref, "speedup": wall_ref / wall,
                    "max_abs_diff": max(abs(mine[key] - ref[key]) for key in ref), "disagreements": dis,
                    "load_after_prdc": load_average()})
        print(f"prdc    {args.n}x{args.n}x{args.dim} k={args.k}: {wall_ref:.1f} s, peak +{mem_ref / 2**20:.0f} MiB, "
              f"{ref}")
        print(f"speed-up {wall_ref / wall:.1f}x; max |difference| {run['max_abs_diff']:.2e}; per-sample "
              f"disagreements {dis}")
        del captured
    results["runs"].append(run)
    del real, fake, res

    if args.large:
        real, fake = make_features(args.large, args.dim, seed=1)
        res, wall, mem = run_histlib(real, fake, args.k, args.device, args.gemm, budget)
        big = {"n": args.large, "dim": args.dim, "k": args.k, "histlib_s": wall, "histlib_peak_mb": mem / 2**20,
               "histlib": res.metrics(), "borderline_pairs": res.borderline_pairs, "load_after": load_average(),
               "input_mb": (real.nbytes + fake.nbytes) / 2**20}
        print(f"histlib {args.large}x{args.large}x{args.dim} k={args.k}: {wall:.1f} s, peak +{mem / 2**20:.0f} MiB "
              f"(inputs {big['input_mb']:.0f} MiB, allocated before), {big['histlib']}")
        results["runs"].append(big)
    print(f"# load average at the end: {load_average()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
