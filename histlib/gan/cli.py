"""``python -m histlib train-gan --config CFG.json --run-dir DIR [--resume | --restart] [--profile P]``."""

from __future__ import annotations

import argparse

from histlib import runs
from histlib.config import from_dict
from histlib.gan.config import TrainConfig
from histlib.gan.launch import train_gan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m histlib train-gan --config CFG.json --run-dir DIR [--resume | --restart]``."""
    parser.add_argument("--config", required=True,
                        help="TrainConfig as JSON (fields of histlib.gan.config.TrainConfig)")
    parser.add_argument("--run-dir", required=True, help="run directory (created)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/latest.pt (required)")
    group.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    parser.add_argument("--profile", default=None, help="start from this profile's settings; the JSON overrides them")


def main(args: argparse.Namespace) -> int:
    """Runs :func:`train_gan` from the command line; prints the summary's main numbers."""
    values = runs.read_json(args.config)
    if not isinstance(values, dict):
        raise ValueError(f"{args.config}: expected a JSON object of TrainConfig fields")
    profile = args.profile
    if "profile" in values:  # the JSON names its profile: start from that profile's settings too
        if profile and values["profile"] != profile:
            raise ValueError(f"{args.config}: profile {values['profile']!r} differs from --profile {profile!r}")
        profile = values.pop("profile")
    cfg = TrainConfig.from_profile(profile, **values) if profile else from_dict(TrainConfig, values)
    resume: bool | str = True if args.resume else (False if args.restart else "auto")
    summary = train_gan(cfg, args.run_dir, resume=resume)
    keys = ("kimg", "img_per_s", "loss_g", "loss_d", "augment_p", "wall_time_s")
    print(" ".join(f"{k}={summary.get(k)}" for k in keys))
    return 0
