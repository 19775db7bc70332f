"""``python -m histlib classify``: one classifier run from a ``ClassifyConfig`` JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from histlib.classify.config import ClassifyConfig
from histlib.classify.train import train_classifier
from histlib.config import from_dict
from histlib.runs import Run, read_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="ClassifyConfig as JSON (a config.json of a run works)")
    parser.add_argument("--run-dir", required=True, help="run directory to write")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field; VALUE is parsed as JSON when it can be (repeatable)")
    parser.add_argument("--force", action="store_true", help="train even when a finished run with this config exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(args: argparse.Namespace) -> int:
    cfg = from_dict(ClassifyConfig, read_json(args.config), **_parse_overrides(args.set))
    done = Path(args.run_dir).is_dir() and Run(args.run_dir).is_finished(cfg)  # Run() makes the folder
    if done and not args.force:
        metrics = Run(args.run_dir).read_metrics()
        print(f"{args.run_dir}: finished run with the same config, skipped (use --force to retrain)")
    else:
        metrics = train_classifier(cfg, args.run_dir, progress=not args.no_progress)
    print(f"accuracy {metrics['accuracy']:.4f}  balanced accuracy {metrics['balanced_accuracy']:.4f}  "
          f"pretrained {str(metrics['pretrained']).lower()}  ({args.run_dir}/metrics.json)")
    return 0
