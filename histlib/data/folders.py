"""Scanning and validating raw ``<root>/<class>/<image>`` folders.

Everything is checked up front, before any patch is written, and all problems are reported together in one
error that names each offending file: unreadable or corrupt images, empty class folders and images smaller than
the patch size. Files that are not images are ignored with a warning naming them. Grayscale, RGBA, palette and
16-bit images are accepted; they are converted to 8-bit RGB when read and counted in the report.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from histlib.data.manifest import IMAGE_EXTENSIONS
from histlib.runs import check_name, display_path

# Files that commonly sit beside the images and are expected, so they are skipped without a warning.
KNOWN_SIDE_FILES = ("MANIFEST.tsv", "SOURCES.md", "ATTRIBUTION.md", "README.md", "manifest.csv", "prepare.json",
                    "merge.json")
MAX_LISTED = 20


class DatasetValidationError(ValueError):
    """A raw dataset folder failed validation; the message lists every offending file."""


@dataclass
class ImageRecord:
    """One source image: path relative to the root, class, size, PIL mode and the conversion it needs."""

    path: str
    cls: str
    width: int
    height: int
    mode: str
    conversion: str | None  # None (already 8-bit RGB), 'grayscale', 'rgba', 'palette', '16bit', 'other'


@dataclass
class FolderReport:
    """What ``validate_folder`` found. ``images`` lists the usable images in a stable (sorted) order."""

    root: str
    classes: list[str]
    images: list[ImageRecord]
    ignored: list[str] = field(default_factory=list)
    converted: dict[str, int] = field(default_factory=dict)
    patch: int | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Images per class."""
        out = {c: 0 for c in self.classes}
        for r in self.images:
            out[r.cls] += 1
        return out

    def to_dict(self) -> dict:
        """A JSON-friendly summary (without the per-image list)."""
        sizes = sorted({(r.width, r.height) for r in self.images})
        return {
            "root": self.root,
            "n_images": len(self.images),
            "n_classes": len(self.classes),
            "counts": self.counts,
            "converted": dict(self.converted),
            "n_converted": sum(self.converted.values()),
            "ignored": list(self.ignored),
            "sizes": [f"{w}x{h}" for w, h in sizes[:10]] + (["..."] if len(sizes) > 10 else []),
            "patch": self.patch,
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per class: images, converted images, smallest width/height."""
        rows = []
        for c in self.classes:
            recs = [r for r in self.images if r.cls == c]
            rows.append({"class": c, "images": len(recs),
                         "converted_to_rgb8": sum(r.conversion is not None for r in recs),
                         "min_width": min(r.width for r in recs), "min_height": min(r.height for r in recs)})
        return pd.DataFrame(rows).set_index("class")

    def __str__(self) -> str:
        d = self.to_dict()
        lines = [f"{display_path(d['root'])}: {d['n_images']} images in {d['n_classes']} classes"]
        lines += [f"  {c}: {n}" for c, n in d["counts"].items()]
        if d["n_converted"]:
            lines.append(f"  converted to 8-bit RGB: {d['converted']}")
        if d["ignored"]:
            lines.append(f"  ignored (not images): {len(d['ignored'])} file(s): {', '.join(d['ignored'][:5])}"
                         + (" ..." if len(d["ignored"]) > 5 else ""))
        return "\n".join(lines)


def conversion_kind(im: Image.Image) -> str | None:
    """Which conversion an opened (not necessarily loaded) image needs to become 8-bit RGB; None if none."""
    rawmode = ""
    if getattr(im, "tile", None):
        args = im.tile[0][3] if len(im.tile[0]) > 3 else None
        rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args and
                                                     isinstance(args[0], str) else "")
    if im.mode.startswith("I;16") or im.mode in ("I", "F") or ";16" in rawmode:
        return "16bit"
    if im.mode == "RGB":
        return None
    if im.mode in ("L", "1", "LA"):
        return "grayscale"
    if im.mode in ("RGBA", "RGBa", "PA"):
        return "rgba"
    if im.mode == "P":
        return "palette"
    return "other"


def list_class_folders(root: Path) -> list[Path]:
    """The class folders of ``root`` (non-hidden subfolders), sorted; a name that cannot be a class is refused."""
    out = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for p in out:
        check_name(p.name, root)
    return out


def validate_folder(root: str | os.PathLike, patch: int | None = None, check_pixels: bool = True,
                    progress: bool = True) -> FolderReport:
    """Scans ``root/<class>/<image>`` (class folders may hold subfolders) and validates every image.

    Args:
        root: dataset folder; each non-hidden subfolder is a class.
        patch: when set, every image must be at least ``patch × patch`` pixels.
        check_pixels: decode every image (catches truncated files) rather than reading headers only.
        progress: show a progress bar.

    Returns:
        A ``FolderReport``; non-image files are listed in ``ignored`` and a warning names them.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        DatasetValidationError: no class folders, empty class folders, unreadable/corrupt images or images smaller
            than ``patch``; the message names every offending file.
    """
    from histlib.progress import iterate

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    if patch is not None and int(patch) <= 0:
        raise ValueError(f"patch={patch}: expected a positive integer or None")
    class_dirs = list_class_folders(root)
    if not class_dirs:
        raise DatasetValidationError(f"{root}: no class folders; expected <root>/<class>/<image> "
                                     f"with extensions {', '.join(IMAGE_EXTENSIONS)}")
    ignored: list[str] = []
    for f in sorted(root.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.name not in KNOWN_SIDE_FILES:
            ignored.append(f.relative_to(root).as_posix())  # files outside class folders carry no label

    candidates: list[tuple[Path, str]] = []
    problems: list[str] = []
    for cdir in class_dirs:
        n_images = 0
        for f in sorted(cdir.rglob("*")):
            if not f.is_file() or any(part.startswith(".") for part in f.relative_to(root).parts):
                continue
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                try:
                    str(f.relative_to(root)).encode("utf-8")  # the manifest is UTF-8 text
                except UnicodeEncodeError:
                    problems.append(f"{os.fsencode(f)!r}: the file name is not UTF-8; rename it")
                    continue
                candidates.append((f, cdir.name))
                n_images += 1
            else:
                ignored.append(f.relative_to(root).as_posix())
        if n_images == 0:
            problems.append(f"{cdir}: empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} images)")

    images: list[ImageRecord] = []
    converted: dict[str, int] = {}
    for f, cls in iterate(candidates, desc=f"validate {root.name}", disable=not progress or len(candidates) < 200,
                       unit="img"):
        rel = f.relative_to(root).as_posix()
        try:
            with Image.open(f) as im:
                width, height, mode = im.width, im.height, im.mode
                kind = conversion_kind(im)
                if check_pixels:
                    im.load()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            problems.append(f"{f}: unreadable or corrupt image ({type(e).__name__}: {e})")
            continue
        if patch is not None and (width < patch or height < patch):
            problems.append(f"{f}: image is {width}x{height}, smaller than the patch size {patch}x{patch}")
            continue
        if kind is not None:
            converted[kind] = converted.get(kind, 0) + 1
        images.append(ImageRecord(rel, cls, width, height, mode, kind))

    if problems:
        listed = problems[:MAX_LISTED]
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DatasetValidationError(f"{root}: {len(problems)} problem(s) found:\n  " + "\n  ".join(listed) + more)
    if ignored:
        shown = ", ".join(ignored[:10]) + (f" and {len(ignored) - 10} more" if len(ignored) > 10 else "")
        warnings.warn(f"{root}: ignoring {len(ignored)} file(s) that are not images inside a class folder: {shown}",
                      stacklevel=2)
    return FolderReport(root=root.as_posix(), classes=[d.name for d in class_dirs], images=images,
                        ignored=ignored, converted=converted, patch=patch)
