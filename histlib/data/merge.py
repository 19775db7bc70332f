"""Union of datasets, e.g. NCT-CRC-HE-100K ∪ NCT-CRC-HE-100K-NONORM → the 200 000-image base set.

Each input is a prepared dataset (with ``manifest.csv``) or a plain ImageFolder. The output is a prepared dataset
(same contract as ``prepare``) whose ``source`` column starts with the input's name (``<name>/<source>``). File
names cannot clash: every file is written as ``<class>/<name>__<file>``, where the input names are unique.

Groups are kept as they are, *without* the input's name: the two NCT-CRC-HE-100K releases hold the same tissue tiles
under the same file names (normalised and not), so a tile and its twin must share a group and land in the same
split. Splits are kept as they are unless ``val_fraction`` asks for a new group-aware split; keeping them fails
when a group ends up on both sides. Files are hard-linked when the file system allows it (no extra disk space),
copied otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from histlib.data.manifest import MANIFEST_COLUMNS, MANIFEST_NAME, load_manifest
from histlib.data.splits import check_no_straddle, group_split
from histlib.runs import atomic_dir, atomic_write_text, check_name, config_hash, display_path, read_json, write_json

MERGE_JSON = "merge.json"


@dataclass
class MergeConfig:
    """Settings of a merge.

    Attributes:
        sources: dataset folders (prepared or ImageFolder), at least two.
        out: merged dataset folder.
        names: one unique short name per source (default: the folder names).
        val_fraction: None keeps the inputs' splits; a number re-splits by group (stratified by class).
        seed: seed of the re-split.
    """

    sources: list[str] = field(default_factory=list)
    out: str = ""
    names: list[str] | None = None
    val_fraction: float | None = None
    seed: int = 0


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # other file system, or links not allowed
        shutil.copyfile(src, dst)


def _names(cfg: MergeConfig) -> list[str]:
    names = list(cfg.names) if cfg.names else [Path(s).name for s in cfg.sources]
    if len(names) != len(cfg.sources):
        raise ValueError(f"names={names}: expected one name per source ({len(cfg.sources)})")
    if len(set(names)) != len(names):
        raise ValueError(f"names={names}: must be unique (give names= when the folders share a name)")
    for n in names:
        check_name(n, "merge names", "dataset name")
        if "__" in n:
            raise ValueError(f"name {n!r}: expected a name without '__'")
    return names


def merge_datasets(cfg: MergeConfig, force: bool = False, progress: bool = True) -> dict:
    """Writes the union of ``cfg.sources`` to ``cfg.out``; re-running the same config is a no-op.

    Returns:
        A report (also in ``merge.json``): ``status``, ``n_images``, ``classes``, ``counts`` ({class: {split: n}}),
        ``per_source`` ({name: {n_images, classes}}), ``classes_not_in_all`` (classes missing from some input).
    """
    from histlib.progress import iterate

    if len(cfg.sources) < 2:
        raise ValueError(f"sources={cfg.sources}: expected at least two datasets to merge")
    if cfg.val_fraction is not None and not 0.0 <= float(cfg.val_fraction) < 1.0:
        raise ValueError(f"val_fraction={cfg.val_fraction}: expected None or a number in [0, 1)")
    names = _names(cfg)
    out = Path(cfg.out)
    h = config_hash({"sources": [Path(s).resolve().as_posix() for s in cfg.sources], "names": names,
                     "val_fraction": cfg.val_fraction, "seed": cfg.seed})
    if out.exists():
        if (out / MERGE_JSON).is_file():
            meta = read_json(out / MERGE_JSON)
            if not force and meta.get("config_hash") == h and (out / MANIFEST_NAME).is_file():
                print(f"{display_path(out)}: already merged (config hash {h}); nothing to do")
                return {**meta["report"], "status": "already merged"}
        elif out.is_file() or any(out.iterdir()):
            raise FileExistsError(f"out={out}: exists and is not a merged dataset (no {MERGE_JSON}); "
                                  f"refusing to replace it")

    frames = []
    for src, name in zip(cfg.sources, names):
        df = load_manifest(src).copy()
        df["_src"] = [Path(src) / p for p in df["path"]]
        df["_name"] = name
        df["source"] = name + "/" + df["source"].astype(str)
        # the path inside the class folder, flattened, keeps every file name unique within its input
        inner = [p.split("/", 1)[1] if p.startswith(f"{c}/") else p for p, c in zip(df["path"], df["class"])]
        df["path"] = [f"{c}/{name}__{i.replace('/', '--')}" for c, i in zip(df["class"], inner)]
        frames.append(df)
    merged = pd.concat(frames, ignore_index=True)
    dup = merged["path"].duplicated()
    if dup.any():  # cannot happen with unique names; kept as a guard against silent overwrites
        raise ValueError(f"merge: duplicate output paths, e.g. {merged.loc[dup, 'path'].iloc[0]}")
    if cfg.val_fraction is not None:
        merged["split"] = group_split(merged, cfg.val_fraction, seed=cfg.seed)
    try:
        check_no_straddle(merged)
    except ValueError as e:
        raise ValueError(f"merge: the inputs' splits disagree on shared groups ({e}); "
                         f"set val_fraction to re-split by group") from None

    t0 = time.time()
    with atomic_dir(out) as tmp:
        for src, dst in iterate(zip(merged["_src"], merged["path"]), total=len(merged), desc="merge", unit="img",
                             disable=not progress):
            if not src.is_file():
                raise FileNotFoundError(f"{src}: listed in the manifest but missing")
            (tmp / dst).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(src, tmp / dst)
        manifest = merged[list(MANIFEST_COLUMNS)].sort_values("path", kind="stable").reset_index(drop=True)
        atomic_write_text(tmp / MANIFEST_NAME, manifest.to_csv(index=False))
        class_sets = {n: set(merged.loc[merged["_name"] == n, "class"]) for n in names}
        all_classes = sorted(set().union(*class_sets.values()))
        report = {
            "status": "merged",
            "out": out.as_posix(),
            "n_images": len(manifest),
            "classes": all_classes,
            "counts": {c: {s: int(n) for s, n in part["split"].value_counts().sort_index().items()}
                       for c, part in manifest.groupby("class", sort=True)},
            "per_source": {n: {"n_images": int((merged["_name"] == n).sum()), "classes": sorted(class_sets[n])}
                           for n in names},
            "classes_not_in_all": [c for c in all_classes if not all(c in s for s in class_sets.values())],
            "elapsed_s": round(time.time() - t0, 3),
        }
        write_json(tmp / MERGE_JSON, {"config": dataclasses.asdict(cfg), "config_hash": h, "report": report})
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", action="append", required=True, help="dataset folder (repeat: two or more)")
    parser.add_argument("--name", action="append", default=None, help="short name per --source (default: folder)")
    parser.add_argument("--out", required=True, help="merged dataset folder")
    parser.add_argument("--val-fraction", type=float, default=None, help="re-split by group (default: keep splits)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")


def main(args: argparse.Namespace) -> int:
    cfg = MergeConfig(sources=args.source, out=args.out, names=args.name, val_fraction=args.val_fraction,
                      seed=args.seed)
    report = merge_datasets(cfg, force=args.force)
    print(f"{report['out']}: {report['n_images']} images, classes {report['classes']}")
    if report.get("classes_not_in_all"):
        print(f"  classes not present in every input: {report['classes_not_in_all']}")
    return 0
