"""Benchmark of histlib.ops: reference vs CUDA kernel vs torch.compile'd reference, same process, same inputs.

    python benchmarks/ops.py                      # GPU if present: StyleGAN2-256 shapes; CPU: small shapes
    python benchmarks/ops.py --json out.json --impls ref,cuda,compiled --iters 50

Each case is timed as the median of many runs after warm-up (CUDA events on a GPU, perf_counter on a CPU), forward
alone and forward + backward. Before timing, every path's forward output is compared with the reference; a path that
disagrees is reported and left out of the suggested ``AUTO_PREFERENCE``. bias_act's achieved bandwidth (bytes read +
written per second) is reported as a fraction of a device-to-device copy of the same tensor, timed in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from histlib import ops  # noqa: E402
from histlib.ops import _dispatch  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}  # max abs error vs the reference, relative to max |ref|


def shapes(full: bool) -> dict[str, list[int]]:
    if full:  # a 256 px StyleGAN2 at batch 32
        return {"bias_act": [32, 512, 64, 64], "resample": [32, 256, 128, 128]}
    return {"bias_act": [8, 128, 32, 32], "resample": [8, 64, 32, 32]}


def timer(device: torch.device, fn: Callable[[], object], iters: int, warmup: int, max_seconds: float) -> dict:
    """Median / min / mean of per-call times in ms after ``warmup`` calls; stops early after ``max_seconds``."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start_all = time.perf_counter()
        events = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
            if time.perf_counter() - start_all > max_seconds:
                break
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) for s, e in events]
    else:
        start_all = time.perf_counter()
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
            if time.perf_counter() - start_all > max_seconds:
                break
    return {"median_ms": statistics.median(times), "min_ms": min(times), "mean_ms": statistics.fmean(times),
            "runs": len(times)}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    full = args.full if args.full is not None else device.type == "cuda"
    shp = shapes(full)
    impls = [i for i in args.impls.split(",") if i]
    dtypes = [d for d in args.dtypes.split(",") if d]
    gen = torch.Generator(device=device).manual_seed(0)
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} "
                                                                                  "threads)",
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date_utc": time.strftime("%Y-%m-%d", time.gmtime()),
        "shapes": shp,
        "iters": args.iters,
        "warmup": args.warmup,
        "results": [],
        "copy": {},
    }
    f = ops.setup_filter([1, 3, 3, 1], device=device)
    sqrt2 = math.sqrt(2)

    for dname in dtypes:
        dtype = DTYPES[dname]
        x_ba = torch.randn(shp["bias_act"], device=device, dtype=dtype, generator=gen)
        b_ba = torch.randn(shp["bias_act"][1], device=device, dtype=dtype, generator=gen)
        x_rs = torch.randn(shp["resample"], device=device, dtype=dtype, generator=gen)
        # device-to-device copy of the bias_act tensor: the bandwidth bias_act is measured against
        dst = torch.empty_like(x_ba)
        t = timer(device, lambda x=x_ba, d=dst: d.copy_(x), args.iters, args.warmup, args.max_seconds)
        nbytes = 2 * x_ba.numel() * x_ba.element_size()
        report["copy"][dname] = {**t, "bytes": nbytes, "GBps": nbytes / t["median_ms"] / 1e6}
        del dst

        cases = [
            ("bias_act", "bias_act lrelu", x_ba, lambda x, impl, b=b_ba: ops.bias_act(x, b, act="lrelu", gain=sqrt2,
                                                                                       impl=impl)),
            ("upfirdn2d", "upsample2d [1,3,3,1]", x_rs, lambda x, impl: ops.upsample2d(x, f, impl=impl)),
            ("upfirdn2d", "downsample2d [1,3,3,1]", x_rs, lambda x, impl: ops.downsample2d(x, f, impl=impl)),
        ]
        for op, name, x, call in cases:
            with torch.no_grad():  # float64 reference: no TF32 in cuDNN, no fp16 rounding inside the reference
                ref_out = call(x.double(), "ref").float()
            scale = ref_out.abs().max().item() or 1.0
            for impl in impls:
                row = {"op": op, "case": name, "dtype": dname, "shape": list(x.shape), "impl": impl}
                try:
                    with torch.no_grad():
                        out = call(x, impl)
                    err = (out.float() - ref_out).abs().max().item() / scale
                    del out
                    row["max_rel_err"] = err
                    row["valid"] = bool(err <= TOLERANCE[dname])
                    with torch.no_grad():
                        row["fwd"] = timer(device, lambda c=call, x=x, i=impl: c(x, i), args.iters, args.warmup,
                                           args.max_seconds)
                    xg = x.detach().clone().requires_grad_(True)
                    gy = torch.randn_like(ref_out).to(dtype)

                    def fwd_bwd(c=call, xg=xg, i=impl, gy=gy):
                        y = c(xg, i)
                        (g,) = torch.autograd.grad(y, [xg], gy)
                        return g

                    row["fwd_bwd"] = timer(device, fwd_bwd, args.iters, args.warmup, args.max_seconds)
                    del xg, gy
                except Exception as exc:  # a path that cannot run is a result, not a crash
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
                    row["valid"] = False
                if op == "bias_act" and "fwd" in row:
                    moved = 2 * x.numel() * x.element_size() + b_ba.numel() * b_ba.element_size()
                    row["fwd_GBps"] = moved / row["fwd"]["median_ms"] / 1e6
                    row["fwd_fraction_of_copy"] = row["fwd_GBps"] / report["copy"][dname]["GBps"]
                report["results"].append(row)
                print(_row_text(row), flush=True)
                if args.json:  # after every row, so a run cut short by a time limit still leaves its numbers
                    _write_json(args.json, report)
            del ref_out
        del x_ba, x_rs
        if device.type == "cuda":
            torch.cuda.empty_cache()

    report["speedup_vs_ref"] = speedups(report["results"])
    report["suggested_auto_preference"] = suggest(report["results"])
    report["backend_info"] = ops.backend_info()
    return report


def _write_json(path: str, report: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(p)


def speedups(rows: list[dict]) -> list[dict]:
    """Per case, dtype and impl: reference median time / this path's median time (fwd and fwd+bwd)."""
    ref = {(r["case"], r["dtype"]): r for r in rows if r["impl"] == "ref" and "fwd" in r}
    out = []
    for r in rows:
        base = ref.get((r["case"], r["dtype"]))
        if r["impl"] == "ref" or base is None or "fwd" not in r:
            continue
        out.append({"case": r["case"], "dtype": r["dtype"], "impl": r["impl"],
                    "fwd": base["fwd"]["median_ms"] / r["fwd"]["median_ms"],
                    "fwd_bwd": base["fwd_bwd"]["median_ms"] / r["fwd_bwd"]["median_ms"]})
    return out


def suggest(rows: list[dict]) -> dict[str, list[str]]:
    """Per op, the valid paths ordered by total fwd+bwd median time over its cases ('ref' always last resort)."""
    totals: dict[str, dict[str, float]] = {}
    cases: dict[str, set] = {}
    for r in rows:
        cases.setdefault(r["op"], set()).add((r["case"], r["dtype"]))
    for r in rows:
        if not r.get("valid") or "fwd_bwd" not in r:
            continue
        totals.setdefault(r["op"], {}).setdefault(r["impl"], 0.0)
        totals[r["op"]][r["impl"]] += r["fwd_bwd"]["median_ms"]
    result = {}
    for op, per_impl in totals.items():
        complete = {i: t for i, t in per_impl.items()
                    if sum(1 for r in rows if r["op"] == op and r["impl"] == i and r.get("valid")) == len(cases[op])}
        order = sorted(complete, key=complete.get)
        result[op] = order[: order.index("ref") + 1] if "ref" in order else [*order, "ref"]
    return result


def _row_text(r: dict) -> str:
    if "error" in r:
        return f"{r['case']:<24} {r['dtype']:<5} {r['impl']:<9} ERROR {r['error'].splitlines()[0][:150]}"
    extra = f"  {100 * r['fwd_fraction_of_copy']:5.1f}% of copy" if "fwd_fraction_of_copy" in r else ""
    flag = "" if r["valid"] else f"  INVALID (err {r['max_rel_err']:.2g})"
    return (f"{r['case']:<24} {r['dtype']:<5} {r['impl']:<9} fwd {r['fwd']['median_ms']:9.3f} ms  "
            f"fwd+bwd {r['fwd_bwd']['median_ms']:9.3f} ms{extra}{flag}")


def table(report: dict) -> str:
    """Markdown table of the results (what docs/benchmarks.md records)."""
    lines = [f"device: {report['device']}, torch {report['torch']}, {report['date_utc']}",
             "", "| case | dtype | shape | impl | fwd ms median (min) | fwd+bwd ms median (min) | "
                 "vs ref (fwd / fwd+bwd) | note |",
             "|---|---|---|---|---|---|---|---|"]
    sp = {(s["case"], s["dtype"], s["impl"]): s for s in report["speedup_vs_ref"]}
    for r in report["results"]:
        shape = "×".join(str(v) for v in r["shape"])
        if "error" in r:
            lines.append(f"| {r['case']} | {r['dtype']} | {shape} | {r['impl']} | – | – | – | "
                         f"error: {r['error'].splitlines()[0][:80]} |")
            continue
        s = sp.get((r["case"], r["dtype"], r["impl"]))
        ratio = f"{s['fwd']:.2f}× / {s['fwd_bwd']:.2f}×" if s else "1×"
        note = []
        if "fwd_fraction_of_copy" in r:
            note.append(f"{r['fwd_GBps']:.0f} GB/s = {100 * r['fwd_fraction_of_copy']:.0f}% of copy")
        if not r["valid"]:
            note.append(f"INVALID, err {r['max_rel_err']:.2g}")
        fwd, both = r["fwd"], r["fwd_bwd"]
        lines.append(f"| {r['case']} | {r['dtype']} | {shape} | {r['impl']} | {fwd['median_ms']:.3f} "
                     f"({fwd['min_ms']:.3f}) | {both['median_ms']:.3f} ({both['min_ms']:.3f}) | {ratio} | "
                     f"{'; '.join(note)} |")
    copies = ", ".join(f"{k} {v['GBps']:.0f} GB/s (median of {v['runs']})" for k, v in report["copy"].items())
    lines += ["", f"device-to-device copy (read + write): {copies}",
              f"suggested AUTO_PREFERENCE: {json.dumps(report['suggested_auto_preference'])}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--impls", default=None, help="comma list of paths (default: ref,cuda,compiled on a GPU, "
                                                      "ref on a CPU)")
    parser.add_argument("--dtypes", default=None, help="comma list of fp32, fp16, bf16 (default: fp32,fp16)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", dest="full", action="store_true", default=None,
                      help="StyleGAN2-256 shapes (default on a GPU)")
    size.add_argument("--small", dest="full", action="store_false", help="small shapes (default on a CPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed runs per case (default 50 GPU, 20 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 5 GPU, 3 CPU)")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="stop timing a case after this long")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the full report as JSON")
    args = parser.parse_args(argv)
    on_gpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    args.impls = args.impls or ("ref,cuda,compiled" if on_gpu else "ref")
    args.dtypes = args.dtypes or "fp32,fp16"
    args.iters = args.iters or (50 if on_gpu else 20)
    args.warmup = args.warmup or (5 if on_gpu else 3)
    for d in args.dtypes.split(","):
        if d not in DTYPES:
            parser.error(f"--dtypes: unknown {d!r}; choose from {list(DTYPES)}")
    for i in args.impls.split(","):
        if i not in _dispatch.IMPLS:
            parser.error(f"--impls: unknown {i!r}; choose from {list(_dispatch.IMPLS)}")

    report = run(args)
    if args.json:
        _write_json(args.json, report)
    print()
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
