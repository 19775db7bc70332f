"""``python -m histlib kernels``: build the CUDA extensions and report which implementation each op uses."""

from __future__ import annotations

import argparse
import json
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

EXTENSIONS = {"bias_act": ["bias_act.cpp", "bias_act.cu"], "upfirdn2d": ["upfirdn2d.cpp", "upfirdn2d.cu"]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--build", action="store_true",
                        help="build (or load from the cache) the CUDA extensions now, in parallel")
    parser.add_argument("--impl", choices=["auto", "ref", "cuda", "compiled"], default="auto",
                        help="run each op once on a small input through this implementation and report the path used")
    parser.add_argument("--device", default=None,
                        help="device for the trial run (default: cuda if available, else cpu)")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's output")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")


def _build(name: str, verbose: bool) -> dict:
    from histlib.ops import _build as build

    t0 = time.perf_counter()
    try:
        module = build.load_extension(name, EXTENSIONS[name], verbose=verbose)
    except Exception as exc:
        return {"ok": False, "seconds": round(time.perf_counter() - t0, 1), "error": str(exc)}
    return {"ok": True, "seconds": round(time.perf_counter() - t0, 1), "module": getattr(module, "__file__", "?")}


def main(args: argparse.Namespace) -> int:
    import torch

    from histlib import ops
    from histlib.ops import _build as build

    report: dict = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                    "cache_dir": str(build.cache_dir())}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    status = 0
    if args.build:
        print(f"building CUDA extensions into {build.cache_dir()} ...", flush=True)
        with ThreadPoolExecutor(max_workers=len(EXTENSIONS)) as pool:
            results = dict(zip(EXTENSIONS, pool.map(lambda n: _build(n, args.verbose), EXTENSIONS)))
        report["build"] = results
        for name, res in results.items():
            if res["ok"]:
                print(f"  {name:<10} built/loaded in {res['seconds']:.1f} s: {res['module']}")
            else:
                status = 1
                print(f"  {name:<10} FAILED after {res['seconds']:.1f} s:\n{res['error']}")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    trial: dict = {}
    x = torch.randn([2, 4, 8, 8], device=device)
    b = torch.randn([4], device=device)
    f = ops.setup_filter([1, 3, 3, 1], device=device)
    for name, call in [("bias_act", lambda: ops.bias_act(x, b, act="lrelu", impl=args.impl)),
                       ("upfirdn2d", lambda: ops.upsample2d(x, f, impl=args.impl))]:
        try:
            call()
            trial[name] = "ok"
        except Exception as exc:
            status = 1
            trial[name] = f"{type(exc).__name__}: {exc}"
            if args.verbose:
                traceback.print_exc()
    report["trial_device"] = str(device)
    report["trial_impl"] = args.impl
    report["trial"] = trial
    report["backend_info"] = ops.backend_info()
    print(f"trial run on {device} with impl={args.impl!r}:")
    for name, res in trial.items():
        print(f"  {name:<10} {res}")
    print("backend_info:", json.dumps(report["backend_info"]))
    if args.json:
        from histlib.runs import write_json

        write_json(args.json, report)
    return status
