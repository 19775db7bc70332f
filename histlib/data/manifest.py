"""The prepared-dataset manifest (contract) and images as 8-bit RGB; no torch here, so ``prepare`` stays light.

A prepared dataset (what ``python -m histlib prepare`` writes) is a folder holding ``manifest.csv`` with the columns
``path,class,split,group,source`` (``path`` relative to the folder) and the images under ``<class>/``. A plain
ImageFolder ``<root>/<class>/<image>`` without a manifest is accepted too: every image is then in the ``train``
split and is its own group.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from histlib.runs import check_name

MANIFEST_COLUMNS = ("path", "class", "split", "group", "source")
MANIFEST_NAME = "manifest.csv"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _scan_image_folder(root: Path) -> pd.DataFrame:
    """Manifest rows for a plain ``<root>/<class>/<image>`` folder (sorted, so the order is stable)."""
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        check_name(class_dir.name, root)  # folder names become paths of generated and merged sets
        for f in sorted(class_dir.rglob("*")):
            rel = f.relative_to(root).as_posix()
            hidden = any(part.startswith(".") for part in rel.split("/"))
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not hidden:
                rows.append({"path": rel, "class": class_dir.name, "split": "train", "group": rel, "source": rel})
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def check_manifest_paths(df: pd.DataFrame, root: Path, manifest: Path, numbered: bool = True) -> None:
    """A manifest names images inside its own folder only: relative paths without ``..``, image extensions, no
    link leading out. Raises ``ValueError`` naming every offending row (line numbers as in the file; with
    ``numbered=False``, for the rows of a scanned folder, the paths alone)."""
    bad = []
    base = root.resolve()
    inside: dict[Path, bool] = {}  # parent folder -> resolves inside the dataset (a few folders, resolved once)
    for i, p in enumerate(df["path"]):
        line = f"line {i + 2}" if numbered else "file"  # the header is line 1
        pure = Path(p)
        if not p or pure.is_absolute() or ".." in pure.parts or p.startswith(("/", "\\")) or ":" in pure.parts[0]:
            bad.append(f"{line}: {p!r} is not a path inside the dataset folder")
            continue
        if pure.suffix.lower() not in IMAGE_EXTENSIONS:
            bad.append(f"{line}: {p!r} is not an image ({', '.join(IMAGE_EXTENSIONS)})")
            continue
        parent = pure.parent
        if parent not in inside:
            inside[parent] = (root / parent).resolve().is_relative_to(base)
        full = root / pure
        if not inside[parent] or (os.path.islink(full) and not full.resolve().is_relative_to(base)):
            bad.append(f"{line}: {p!r} leads outside the dataset folder (through a link)")
    if bad:
        more = f" ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        what = "row(s) name files" if numbered else "file(s) are files"
        raise ValueError(f"{manifest}: {len(bad)} {what} a dataset may not use: " + "; ".join(bad[:10]) + more)


def read_table_rows(path: Path, delimiter: str) -> list[dict[str, str]]:
    """The rows of a UTF-8 CSV/TSV side table (``MANIFEST.tsv``, a split file); errors name the file."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh, delimiter=delimiter))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable table ({e})") from None


def table_mapping(rows: list[dict[str, str]], key: str, column: str, path: Path) -> dict[str, str]:
    """``{row[key]: row[column]}`` for rows with a value; a key given twice with different values is refused."""
    out: dict[str, str] = {}
    for r in rows:
        k, v = r.get(key), r.get(column)
        if not v:
            continue
        if k in out and out[k] != v:
            raise ValueError(f"{path}: {k!r} is listed twice with different {column!r} ({out[k]!r} and {v!r})")
        out[k] = v
    return out


def _read_manifest_csv(manifest: Path) -> pd.DataFrame:
    """The table of ``manifest.csv``: UTF-8, the contract's columns, each image listed once (a row given twice would
    count the image twice in training and in every metric)."""
    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{manifest}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except pd.errors.ParserError as e:
        raise ValueError(f"{manifest}: not a readable CSV table ({' '.join(str(e).split())})") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{manifest}: missing column(s) {missing}; expected {list(MANIFEST_COLUMNS)}")
    df = df[list(MANIFEST_COLUMNS)]
    dup = df["path"].duplicated(keep=False)
    if dup.any():
        lines = [f"line {i + 2}: {p!r}" for i, p in zip(df.index[dup], df["path"][dup])][:10]
        raise ValueError(f"{manifest}: {int(df['path'][dup].nunique())} image(s) listed more than once "
                         f"({'; '.join(lines)}); list each image once")
    return df


def load_manifest(root: str | os.PathLike) -> pd.DataFrame:
    """Reads ``root/manifest.csv``, or builds the same table for a plain ImageFolder.

    Args:
        root: a prepared dataset folder (with ``manifest.csv``) or an ImageFolder ``root/<class>/<image>``.

    Returns:
        A DataFrame with the columns ``MANIFEST_COLUMNS`` (all strings); ``path`` is relative to ``root``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: the manifest lacks a column, or the folder holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    manifest = root / MANIFEST_NAME
    if manifest.is_file():
        df = _read_manifest_csv(manifest)
        for c in df["class"].unique():
            check_name(c, manifest)  # class names become folder names of generated and merged sets
        check_manifest_paths(df, root, manifest)
    else:
        df = _scan_image_folder(root)
        check_manifest_paths(df, root, root, numbered=False)  # a link in a plain folder may lead out, too
    if len(df) == 0:
        raise ValueError(f"{root}: no images found (expected {MANIFEST_NAME} or <class>/<image> folders "
                         f"with extensions {', '.join(IMAGE_EXTENSIONS)})")
    return df.reset_index(drop=True)


def to_rgb8(im: Image.Image) -> Image.Image:
    """Converts any PIL image (grayscale, RGBA, palette, 16-bit, float) to 8-bit RGB.

    16-bit and float images are rescaled by their dtype's range (not by their min/max), so the result does not
    depend on the image content. RGBA is composited on white, the usual background of a slide.
    """
    im.load()
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        scale = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(np.round(a / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im).astype(np.float64)
        scale = 1.0 if a.max(initial=0) <= 1.0 else 255.0
        a = np.clip(np.round(a / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if im.mode in ("RGB;16", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P", "L", "1"):
        return im.convert("RGB")
    # Modes PIL cannot convert directly (e.g. 16-bit RGB loaded as an array): go through numpy.
    a = np.asarray(im)
    if a.dtype == np.uint16:
        a = (a.astype(np.float64) / 65535.0 * 255.0).round().astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return Image.fromarray(a[..., :3].astype(np.uint8), mode="RGB")


def _as_manifest(manifest_or_root) -> pd.DataFrame:
    if isinstance(manifest_or_root, pd.DataFrame):
        return manifest_or_root
    return load_manifest(manifest_or_root)


def class_count_table(manifest_or_root) -> pd.DataFrame:
    """Images per class and split: one row per class, one column per split plus ``total`` (and a total row).

    Args:
        manifest_or_root: a manifest DataFrame or a dataset folder.
    """
    df = _as_manifest(manifest_or_root)
    table = pd.crosstab(df["class"], df["split"])
    order = [s for s in ("train", "val", "test") if s in table.columns]
    table = table[order + sorted(c for c in table.columns if c not in order)]
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    table.columns.name = None
    return table


def split_summary(manifest_or_root) -> pd.DataFrame:
    """Per split: images, groups, classes, and how many groups also occur in another split (must be 0)."""
    df = _as_manifest(manifest_or_root)
    splits_per_group = df.groupby("group")["split"].nunique()
    straddling = set(splits_per_group[splits_per_group > 1].index)
    rows = []
    for split, part in df.groupby("split", sort=True):
        groups = set(part["group"])
        rows.append({"split": split, "images": len(part), "groups": len(groups), "classes": part["class"].nunique(),
                     "sources": part["source"].nunique(), "groups_in_other_splits": len(groups & straddling)})
    return pd.DataFrame(rows).set_index("split")
