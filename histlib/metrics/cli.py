"""``python -m histlib metrics --real DIR --fake DIR``: every GAN metric, overall and per class.

Both folders are ImageFolders ``<root>/<class>/<image>`` or prepared datasets (``manifest.csv``). Defaults follow
the usual practice: FID on Inception-v3 pool features, precision/recall/density/coverage on VGG16 fc2 features;
``--extractor`` sets one extractor for all metrics (``domain:CKPT`` = features of a histology classifier;
``random-test`` = a random network, for tests only). Real features are cached (``--cache``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--real", required=True, help="real images: ImageFolder or prepared dataset folder")
    parser.add_argument("--fake", required=True, help="generated images: ImageFolder <root>/<class>/<image>")
    parser.add_argument("--extractor", default=None,
                        help="one extractor for all metrics: inception | vgg16 | domain:CKPT | random-test "
                             "(default: inception for FID, vgg16 for the k-NN metrics)")
    parser.add_argument("--fid-extractor", default=None, help="extractor for FID (default inception)")
    parser.add_argument("--prdc-extractor", default=None, help="extractor for P/R/D/C (default vgg16)")
    parser.add_argument("--k", type=int, default=3, help="k of precision/recall (default 3)")
    parser.add_argument("--k-dc", type=int, default=5, help="k of density/coverage (default 5)")
    parser.add_argument("--real-split", default=None, help="split of a prepared real dataset (default: all)")
    parser.add_argument("--fake-split", default=None, help="split of the fake dataset (default: all)")
    parser.add_argument("--max-per-class", type=int, default=None, help="seeded subset: at most N images per class")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto (default)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="image-loading worker processes")
    parser.add_argument("--cache", default=None, help="real-feature cache folder (default ~/.cache/histlib/features)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the real-feature cache")
    parser.add_argument("--weights-dir", default=None, help="folder holding the extractor weights "
                        "(same as setting HISTLIB_WEIGHTS)")
    parser.add_argument("--memory-budget-mb", type=int, default=None, help="memory for distance blocks (MiB)")
    parser.add_argument("--no-per-class", action="store_true", help="only the overall metrics")


def _cheap_checks(args: argparse.Namespace) -> str | None:
    """What can be checked before any feature is extracted: k, the image counts, the output file."""
    from histlib.data.manifest import load_manifest

    if args.k < 1 or args.k_dc < 1:
        return f"--k {args.k} / --k-dc {args.k_dc}: expected positive integers"
    if args.max_per_class is not None and args.max_per_class < 1:
        return f"--max-per-class {args.max_per_class}: expected a positive integer (leave it out for every image)"
    if args.json and Path(args.json).is_dir():
        return f"--json {args.json}: is a folder; give a file name"
    counts = {}
    for name, split in (("real", args.real_split), ("fake", args.fake_split)):
        df = load_manifest(getattr(args, name))
        if split is not None:
            df = df[df["split"] == split]
        per_class = df.groupby("class").size()
        if args.max_per_class:
            per_class = per_class.clip(upper=args.max_per_class)
        counts[name] = int(per_class.sum())
        if counts[name] == 0:
            return f"--{name} {getattr(args, name)}: no images" + (f" in split {split!r}" if split else "")
    need = max(args.k, args.k_dc) + 1
    if min(counts.values()) < need:
        return (f"{counts['real']} real and {counts['fake']} generated images: precision/recall (k={args.k}) and "
                f"density/coverage (k={args.k_dc}) need at least {need} images in each set")
    return None


def main(args: argparse.Namespace) -> int:
    import os

    import numpy as np
    import pandas as pd

    from histlib.runs import write_json

    from .cache import FeatureCache, extract_features
    from .features import WeightsNotFoundError, get_extractor
    from .summary import compute_metrics, per_class_metrics, table_to_dict

    if args.weights_dir:
        os.environ["HISTLIB_WEIGHTS"] = str(Path(args.weights_dir).expanduser())
    for name in ("real", "fake"):
        if not Path(getattr(args, name)).is_dir():
            print(f"error: --{name} {getattr(args, name)}: folder not found", file=sys.stderr)
            return 2
    problem = _cheap_checks(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    fid_spec = args.fid_extractor or args.extractor or "inception"
    prdc_spec = args.prdc_extractor or args.extractor or "vgg16"
    try:
        fid_x = get_extractor(fid_spec, device=args.device)
        prdc_x = fid_x if prdc_spec == fid_spec else get_extractor(prdc_spec, device=args.device)
    except WeightsNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cache = None if args.no_cache else FeatureCache(args.cache)
    common = {"max_per_class": args.max_per_class, "seed": args.seed, "batch_size": args.batch_size,
              "num_workers": args.workers}

    def feats(root, split, extractor, use_cache):
        return extract_features(root, extractor, split=split, cache=cache if use_cache else None, **common)

    real_fid, real_labels, real_classes = feats(args.real, args.real_split, fid_x, True)
    fake_fid, fake_labels, fake_classes = feats(args.fake, args.fake_split, fid_x, False)
    if prdc_x is fid_x:
        real_prdc, fake_prdc = real_fid, fake_fid
    else:
        real_prdc, _, _ = feats(args.real, args.real_split, prdc_x, True)
        fake_prdc, _, _ = feats(args.fake, args.fake_split, prdc_x, False)

    # Fake labels are matched to the real classes by name; classes missing on either side get no per-class row.
    shared = [c for c in real_classes if c in fake_classes]
    only = sorted(set(real_classes) ^ set(fake_classes))
    if only:
        print(f"warning: classes present in only one set (no per-class metrics for them): {only}", file=sys.stderr)
    to_real = {fake_classes.index(c): real_classes.index(c) for c in shared}
    fake_labels_r = np.array([to_real.get(int(v), -1) for v in fake_labels], dtype=np.int64)

    budget = args.memory_budget_mb * (1 << 20) if args.memory_budget_mb else None
    kw = {"k": args.k, "k_dc": args.k_dc, "device": args.device, "memory_budget": budget}
    if args.no_per_class:
        overall = compute_metrics(real_fid, fake_fid, real_prdc, fake_prdc, **kw)
        table = pd.DataFrame([overall], index=pd.Index(["all"], name="class"))
    else:
        table = per_class_metrics(real_fid, fake_fid, real_labels, fake_labels_r, real_classes, real_prdc,
                                  fake_prdc, **kw)
        table = table.loc[["all", *shared]]
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 120):
        print(f"FID features: {fid_x.name} ({fid_x.dim}-d); P/R/D/C features: {prdc_x.name} ({prdc_x.dim}-d); "
              f"k={args.k}, k_dc={args.k_dc}")
        print(table.to_string())
    if args.json:
        result = {
            "overall": table_to_dict(table)["all"],
            "per_class": {c: v for c, v in table_to_dict(table).items() if c != "all"},
            "config": {"real": str(args.real), "fake": str(args.fake), "fid_extractor": fid_x.cache_key,
                       "prdc_extractor": prdc_x.cache_key, "k": args.k, "k_dc": args.k_dc,
                       "real_split": args.real_split, "fake_split": args.fake_split,
                       "max_per_class": args.max_per_class, "seed": args.seed},
        }
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
