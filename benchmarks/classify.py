"""Classifier training throughput: images/s per model and input size, and whether the loader or the model limits.

For every (model, size) three numbers are measured with the training settings of ``histlib.classify``:

- ``loader``: the training DataLoader alone (decode + the paper's augmentation + collation), images/s;
- ``model``: forward + backward + AdamW step on one cached batch (no data loading), images/s;
- ``end_to_end``: the two together, as in ``train_classifier``.

The smaller of ``loader`` and ``model`` names the limit. On CUDA the model step is measured in fp32 and with AMP +
channels_last. The CPU is often shared, so the load average before and after is printed with the results.

Usage (from the project root)::

    python benchmarks/classify.py                                  # random JPEGs, paper models, 64 and 224 px
    python benchmarks/classify.py --data ../shared/data/lung3 --models resnet34 --sizes 64 --steps 5
    python benchmarks/classify.py --device cuda --batch 128 --steps 20 --workers 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from histlib.classify.config import ClassifyConfig  # noqa: E402
from histlib.classify.data import train_transform  # noqa: E402
from histlib.classify.evaluate import amp_dtype  # noqa: E402
from histlib.classify.train import make_optimizer  # noqa: E402
from histlib.classify.weights import create_classifier  # noqa: E402
from histlib.data.dataset import ImageDataset  # noqa: E402


def _random_jpegs(root: Path, n_per_class: int = 64, size: int = 224, classes: int = 3) -> Path:
    """Smooth random RGB JPEGs (quality 90) standing in for 224 px H&E tiles when no data folder is given."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            low = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
            img.save(d / f"{i}.jpg", quality=90)
    return root


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_loader(ds, batch: int, workers: int, steps: int, device: torch.device) -> float:
    """Images/s of the training DataLoader alone (batches moved to the device, as in training)."""
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", drop_last=True,
                                         persistent_workers=False)
    it = iter(loader)
    next(it)  # worker start-up and first decode are not throughput
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            x, _ = next(it)
        x = x.to(device, non_blocking=True)
        n += len(x)
    _sync(device)
    return n / (time.perf_counter() - t0)


def _step_fn(model, opt, device, amp: bool, channels_last: bool):
    loss_fn = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype(device) == torch.float16)

    def step(x, y):
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=amp_dtype(device), enabled=amp):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def bench_model(name: str, size: int, batch: int, steps: int, device: torch.device, amp: bool,
                channels_last: bool, num_classes: int = 3) -> float:
    """Images/s of forward + backward + optimiser step on one cached batch."""
    model, _ = create_classifier(name, num_classes, pretrained=False)
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, ClassifyConfig())
    step = _step_fn(model, opt, device, amp, channels_last)
    x = torch.randn(batch, 3, size, size, device=device)  # [B, 3, S, S]
    y = torch.randint(0, num_classes, (batch,), device=device)  # [B]
    for _ in range(2 if device.type == "cuda" else 1):  # warm-up: cudnn autotuning, allocator, oneDNN primitives
        step(x, y)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def bench_end_to_end(name: str, ds, size: int, batch: int, workers: int, steps: int, device: torch.device,
                     amp: bool, channels_last: bool) -> float:
    """Images/s of loader + training step together."""
    model, _ = create_classifier(name, len(ds.classes), pretrained=False)
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, ClassifyConfig())
    step = _step_fn(model, opt, device, amp, channels_last)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", drop_last=True)
    it = iter(loader)
    x, y = next(it)
    step(x.to(device), y.to(device))  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        n += len(x)
    _sync(device)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="ImageFolder or prepared dataset (default: random 224 px JPEGs in a temp folder)")
    p.add_argument("--models", nargs="+", default=["resnet34", "densenet169", "efficientnet_b2"])
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 224])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement (after a warm-up step)")
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: 0 on CPU, 8 on CUDA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    workers = args.workers if args.workers is not None else (0 if device.type == "cpu" else min(8, os.cpu_count()))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    tmp = None
    if args.data:
        data = Path(args.data)
    else:
        tmp = tempfile.TemporaryDirectory()
        data = _random_jpegs(Path(tmp.name))
    load_before = os.getloadavg()
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device {dev_name}, torch threads {torch.get_num_threads()}, loader workers {workers}, batch "
          f"{args.batch}, data {data}; load average before {load_before[0]:.2f} {load_before[1]:.2f}", flush=True)
    modes = [("fp32", False, False)] + ([("amp+cl", True, True)] if device.type == "cuda" else [])
    rows = []
    for size in args.sizes:
        ds = ImageDataset(data, split=None, transform=train_transform(size))
        loader_ips = bench_loader(ds, args.batch, workers, args.steps, device)
        for name in args.models:
            for mode, amp, cl in modes:
                model_ips = bench_model(name, size, args.batch, args.steps, device, amp, cl)
                e2e_ips = bench_end_to_end(name, ds, size, args.batch, workers, args.steps, device, amp, cl)
                row = {"model": name, "size": size, "mode": mode, "loader_img_s": round(loader_ips, 1),
                       "model_img_s": round(model_ips, 1), "end_to_end_img_s": round(e2e_ips, 1),
                       "limit": "loader" if loader_ips < model_ips else "model", "load1": round(os.getloadavg()[0], 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    load_after = os.getloadavg()
    print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f}")
    try:
        import pandas as pd

        print(pd.DataFrame(rows).to_string(index=False))
    except ImportError:
        pass
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev_name, "workers": workers, "batch": args.batch,
                                               "load_before": load_before, "load_after": load_after,
                                               "rows": rows}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
