"""Follows a GAN training config through the calls: which files read it, in what order, and how often the walk comes
back to a file it had left (docs/design.md, "Following the config").

A reader follows the config from ``train_gan``: every function of ``histlib/`` that is called with it (as an
argument, or as an argument's ``cfg``) is read once, in the order of its first call, during a short base training
and a fine-tune from it; consecutive functions of one file are one visit. Printed: the files in order of first
visit, how many distinct files, and how many visits re-enter a file already left.

    python benchmarks/config_walk.py --data data/prepared/sample_base

Works on older trees too (``histlib.train_gan`` before the GAN stage was split), to compare like with like.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def _train_gan():
    try:
        from histlib.gan.launch import train_gan
    except ImportError:  # the tree before the launcher / loop split
        from histlib.train_gan import train_gan
    return train_gan


def _histlib_path(filename: str) -> str | None:
    parts = Path(filename).parts
    return "/".join(parts[parts.index("histlib"):]) if "histlib" in parts else None


def _holds_config(frame, config_type) -> bool:
    """Whether a function was called with the config: as an argument, or inside one (``state.cfg``, ``self.cfg``)."""
    code = frame.f_code
    for name in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]:
        value = frame.f_locals.get(name)
        if isinstance(value, config_type) or isinstance(getattr(value, "cfg", None), config_type):
            return True
    return False


def walk(data_dir: str, kimg: float = 0.032) -> list[str]:
    """The files a reader visits following the config: every ``histlib`` function called with the config (as an
    argument or as an argument's ``cfg``), each once, in the order of its first call, during a short base run and
    a fine-tune from it; consecutive functions of one file are one visit."""
    from histlib.gan.config import TrainConfig

    order: list[str] = []
    seen: set = set()

    def profile(frame, event, arg):
        if event != "call" or frame.f_code in seen:
            return
        where = _histlib_path(frame.f_code.co_filename)
        if where and where != "histlib/gan/config.py" and _holds_config(frame, TrainConfig):
            seen.add(frame.f_code)
            order.append(where)

    train_gan = _train_gan()
    small = dict(kimg=kimg, tick_kimg=kimg / 2, snapshot_ticks=1, metrics_every_kimg=None, processes=1)
    with tempfile.TemporaryDirectory() as tmp:
        base = TrainConfig.from_profile("demo", data_dir=data_dir, seed=0, **small)
        sys.setprofile(profile)
        try:
            train_gan(base, Path(tmp) / "base")
            tune = TrainConfig.from_profile("demo", stage="finetune", data_dir=data_dir, seed=0,
                                            resume_from=str(Path(tmp) / "base" / "checkpoints" / "latest.pt"),
                                            freeze_d=1, freeze_g=1, **small)
            train_gan(tune, Path(tmp) / "tune")
        finally:
            sys.setprofile(None)
    return [f for i, f in enumerate(order) if i == 0 or order[i - 1] != f]


def summary(log: list[str]) -> dict:
    seen: list[str] = []
    returns = 0
    for f in log:
        if f in seen:
            returns += 1
        else:
            seen.append(f)
    return {"files": len(seen), "returns": returns, "visits": len(log), "first_visits": seen,
            "returns_per_file": {f: log.count(f) - 1 for f in seen if log.count(f) > 1}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a prepared dataset (e.g. data/prepared/sample_base)")
    p.add_argument("--kimg", type=float, default=0.032, help="length of each of the two runs")
    p.add_argument("--json", help="also write the walk here")
    args = p.parse_args(argv)
    log = walk(args.data, args.kimg)
    s = summary(log)
    if args.json:
        Path(args.json).write_text(json.dumps({**s, "walk": log}, indent=1))
    print("files in order of first visit:", *s["first_visits"], sep="\n  ")
    print("re-entered (times):", json.dumps(s["returns_per_file"]))
    print(f"{s['files']} files, {s['visits']} visits, {s['returns']} returns to a file already left")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
