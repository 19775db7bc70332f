"""The embedded sample under ``data/sample/``: a few CC BY 4.0 images so the whole study runs out of the box.

``data/sample/nct_crc_he/<class>/`` holds 28 NCT-CRC-HE-100K / CRC-VAL-HE-7K images (9 classes, 224 px) and is the
demo's *base* set; ``data/sample/kather2016/<class>/`` holds 24 Kather-2016 texture tiles (8 classes, 150 px) and is
the demo's *target* set. ``python -m histlib build-sample --from DIR`` rebuilds it from a folder holding
``nct_crc_he/`` and ``kather2016/`` (each ``<class>/<image>`` plus a ``MANIFEST.tsv`` with sha256 per file).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from histlib.data.manifest import read_table_rows
from histlib.runs import atomic_dir, atomic_write_text, check_name, file_sha256, project_path

SAMPLE_DIR = "data/sample"
SAMPLE_SETS = ("nct_crc_he", "kather2016")

ATTRIBUTION = """\
# Attribution of the embedded sample images

All images under this folder are unmodified copies of files from two public datasets by Kather et al., released
under the Creative Commons Attribution 4.0 International licence (CC BY 4.0,
https://creativecommons.org/licenses/by/4.0/). Per-file provenance (source repository, path, commit, sha256) is in
each subfolder's `MANIFEST.tsv`.

## `nct_crc_he/` — NCT-CRC-HE-100K and CRC-VAL-HE-7K ({n_nct} images, 9 classes, 224×224 px, 0.5 µm/px)

Kather JN, Halama N, Marx A. *100,000 histological images of human colorectal cancer and healthy tissue.*
Zenodo, 2018. https://doi.org/10.5281/zenodo.1214456 — CC BY 4.0.
Related publication: Kather JN et al. *Predicting survival from colorectal cancer histology slides using deep
learning: a retrospective multicenter study.* PLOS Medicine 16(1): e1002730, 2019.

The files were obtained through these public repositories (bytes unchanged; column `subset` of the manifest says
which of the two datasets each file comes from):
{nct_repos}

## `kather2016/` — Collection of textures in colorectal cancer histology ({n_k16} images, 8 classes, 150×150 px)

Kather JN, Weis CA, Bianconi F, Melchers SM, Schad LR, Gaiser T, Marx A, Zöllner FG. *Collection of textures in
colorectal cancer histology.* Zenodo, 2016. https://doi.org/10.5281/zenodo.53169 — CC BY 4.0.
Related publication: Kather JN et al. *Multi-class texture analysis in colorectal cancer histology.* Scientific
Reports 6: 27988, 2016.

The files were obtained through this public repository (bytes unchanged):
{k16_repos}

## Use

Demo and tests only (far too few images to train anything meaningful). The project's demo tiles `nct_crc_he` into
overlapping 64 px patches (the "base" set) and `kather2016` likewise (the "target" set).
"""


def _read_manifest_tsv(path: Path) -> list[dict[str, str]]:
    """The rows of a sample set's ``MANIFEST.tsv``; each ``relpath`` must be ``<class>/<file>`` with safe names,
    since files are copied to it."""
    rows = read_table_rows(path, "\t")
    for r in rows:
        parts = str(r.get("relpath") or "").split("/")
        if len(parts) != 2 or (r.get("class") is not None and r["class"] != parts[0]):
            raise ValueError(f"{path}: relpath {r.get('relpath')!r}: expected <class>/<file> with the row's class")
        check_name(parts[0], path)
        check_name(parts[1], path, "file name")
    return rows


def _repos(rows: list[dict[str, str]]) -> str:
    repos = sorted({(r.get("source_repo", ""), r.get("source_commit", "")) for r in rows if r.get("source_repo")})
    return "\n".join(f"- https://github.com/{repo} (commit {commit})" for repo, commit in repos)


def build_sample(source: str | os.PathLike, out: str | os.PathLike | None = None) -> dict:
    """Copies the CC BY sample sets into ``out`` (default ``data/sample``), checking each file's sha256.

    Args:
        source: folder holding ``nct_crc_he/`` and ``kather2016/`` with their ``MANIFEST.tsv``.
        out: destination; replaced atomically.

    Returns:
        ``{set name: number of images}``.
    """
    source = Path(source)
    out = project_path(out or SAMPLE_DIR)
    counts: dict[str, int] = {}
    rows_by_set: dict[str, list[dict[str, str]]] = {}
    for name in SAMPLE_SETS:
        manifest = source / name / "MANIFEST.tsv"
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: not found; --from must hold {', '.join(SAMPLE_SETS)}, "
                                    f"each with a MANIFEST.tsv")
        rows_by_set[name] = _read_manifest_tsv(manifest)
    with atomic_dir(out) as tmp:
        for name, rows in rows_by_set.items():
            for r in rows:
                src = source / name / r["relpath"]
                if file_sha256(src) != r["sha256"]:
                    raise ValueError(f"{src}: sha256 differs from {source / name / 'MANIFEST.tsv'}")
                dst = tmp / name / r["relpath"]
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            shutil.copyfile(source / name / "MANIFEST.tsv", tmp / name / "MANIFEST.tsv")
            counts[name] = len(rows)
        atomic_write_text(tmp / "ATTRIBUTION.md", ATTRIBUTION.format(
            n_nct=counts["nct_crc_he"], n_k16=counts["kather2016"],
            nct_repos=_repos(rows_by_set["nct_crc_he"]), k16_repos=_repos(rows_by_set["kather2016"])))
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True,
                        help="folder holding nct_crc_he/ and kather2016/ (each <class>/<image> + MANIFEST.tsv)")
    parser.add_argument("--out", default=SAMPLE_DIR, help=f"destination (default {SAMPLE_DIR})")


def main(args: argparse.Namespace) -> int:
    counts = build_sample(args.source, args.out)
    print(f"wrote {project_path(args.out)}: " + ", ".join(f"{k} {v} images" for k, v in counts.items()))
    return 0
