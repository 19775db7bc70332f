"""``python -m histlib prepare``: the data stage from the command line (``histlib.data.prepare``)."""

from __future__ import annotations

import argparse

from histlib.data.prepare import IMAGE_FORMATS, PrepareConfig, format_report, prepare_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="raw <class>/<image> folder, a slide, or a folder of slides")
    parser.add_argument("--out", required=True, help="prepared dataset folder to write")
    parser.add_argument("--patch", type=int, default=None, help="patch side in pixels (default: whole images)")
    parser.add_argument("--stride", type=int, default=None, help="step between patches (default: --patch)")
    parser.add_argument("--stain", choices=["macenko"], default=None, help="stain normalisation")
    parser.add_argument("--stain-target", default=None, help="image to fit the Macenko normaliser to")
    parser.add_argument("--val-fraction", type=float, default=0.0, help="fraction of each class in val (by group)")
    parser.add_argument("--test-fraction", type=float, default=0.0,
                        help="fraction of each class in a held-out test split (by group, as val)")
    parser.add_argument("--folds", type=int, default=0,
                        help="cross-validation: the test split is fold --fold of this many folds (by group)")
    parser.add_argument("--fold", type=int, default=0, help="which fold is the test split (0 .. folds-1)")
    parser.add_argument("--split-from", default=None,
                        help="a split fixed by the dataset's authors: 'folders', 'column:NAME' or 'file:PATH'")
    parser.add_argument("--split-rename", default=None, metavar="OLD=NEW[,OLD=NEW]",
                        help="rename predefined split names, e.g. test=val")
    parser.add_argument("--slides", action="store_true", default=None,
                        help="the source holds slides (searched in subfolders too)")
    parser.add_argument("--group-by", default="source",
                        help="'source' (default), 'region' (slides), 'patch', or a column of SOURCE/MANIFEST.tsv")
    parser.add_argument("--allow-missing-group", action="store_true",
                        help="with a column --group-by: a source the column does not list is its own group")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split")
    parser.add_argument("--min-fraction", type=float, default=0.5,
                        help="slides: fraction of a patch inside a class polygon (default 0.5)")
    parser.add_argument("--annotations", default=None,
                        help="slides: QuPath GeoJSON file or folder of <slide stem>.geojson (default: beside slide)")
    parser.add_argument("--resize", type=int, default=None, help="resize every written image to N x N")
    parser.add_argument("--image-format", default="png", choices=sorted(IMAGE_FORMATS), help="output format")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: none)")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT holds this config's dataset")


def main(args: argparse.Namespace) -> int:
    rename = None
    if args.split_rename:
        try:
            rename = dict(item.split("=", 1) for item in args.split_rename.split(","))
        except ValueError:
            raise ValueError(f"--split-rename {args.split_rename!r}: expected OLD=NEW[,OLD=NEW]") from None
    cfg = PrepareConfig(source=args.source, out=args.out, patch=args.patch, stride=args.stride, stain=args.stain,
                        stain_target=args.stain_target, val_fraction=args.val_fraction,
                        test_fraction=args.test_fraction, folds=args.folds, fold=args.fold,
                        split_from=args.split_from, split_rename=rename, slides=args.slides,
                        group_by=args.group_by, allow_missing_group=args.allow_missing_group,
                        seed=args.seed, min_fraction=args.min_fraction, annotations=args.annotations,
                        resize=args.resize, image_format=args.image_format, workers=args.workers)
    report = prepare_dataset(cfg, force=args.force)
    if report["status"] == "prepared":
        print(format_report(report) + f"\n  took {report['elapsed_s']:.1f} s")
    return 0
