"""``prepare``: raw dataset folder or annotated slides → prepared dataset (patches + ``manifest.csv``).

Contract (what every later stage reads): ``OUT/manifest.csv`` with the columns ``path,class,split,group,source``
(``path`` relative to OUT), the images under ``OUT/<class>/``, and ``OUT/prepare.json`` (config, config hash, counts,
validation report). Re-running with the same config is a no-op ("already prepared"). Everything is written into a
temporary sibling folder that is renamed to OUT only at the end, so an interrupted run leaves nothing half-made.

Sources:
- a folder ``SOURCE/<class>/<image>`` (jpg, png, tif): validated up front (``folders.validate_folder``), converted to
  8-bit RGB, optionally Macenko-normalised (per source image), tiled into ``patch``/``stride`` patches (or copied
  whole when ``patch`` is None) and optionally resized;
- a slide file (svs, tiff, ...) or a folder of slides with QuPath GeoJSON annotations (``annotations``: a file, or a
  folder holding ``<slide stem>.geojson``; default: the ``.geojson`` beside each slide): tiled inside the labelled
  polygons (``wsi``), Macenko-normalised per patch when asked.

Groups (``group_by``): ``'source'`` (the source image or slide; the default, so overlapping patches of one image
never straddle splits), ``'region'`` (slides only: one group per annotated polygon, for a single annotated slide;
patches of neighbouring polygons may still touch), ``'patch'`` (every patch alone: leaks, only for sets of
independent images), or the name of a column of ``SOURCE/MANIFEST.tsv`` (``relpath`` + column, e.g.
``lc25000_clean_cluster``) whose empty values fall back to the source image.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image

from histlib.data.folders import DatasetValidationError, FolderReport, list_class_folders, validate_folder
from histlib.data.manifest import MANIFEST_COLUMNS, MANIFEST_NAME, read_table_rows, table_mapping, to_rgb8
from histlib.data.splits import (  # noqa: F401  (SPLIT_NAMES, runs_path: re-exported, part of this module's API)
    _SPLIT_FOLDER_NAMES,
    SPLIT_NAMES,
    check_folds,
    check_no_straddle,
    check_split_classes,
    group_split,
    predefined_splits,
    runs_path,
)
from histlib.data.tiling import patch_name, patch_stem, tile_positions
from histlib.data.wsi import WSI_EXTENSIONS
from histlib.runs import atomic_dir, atomic_write_text, config_hash, display_path, project_root, read_json, write_json

PREPARE_JSON = "prepare.json"
IMAGE_FORMATS = {"png": "png", "jpg": "jpg", "jpeg": "jpg"}
STAINS = (None, "macenko")
MAX_LISTED = 20


@dataclass
class PrepareConfig:
    """Settings of the data stage (one prepared dataset).

    Attributes:
        source: raw dataset folder (``<class>/<image>``), a slide file, or a folder of slides.
        out: prepared dataset folder to write.
        patch: patch side in pixels; None copies/converts whole images (folder sources only).
        stride: step between patches; None = ``patch`` (no overlap).
        stain: None or ``'macenko'``.
        stain_target: image whose stain the Macenko normaliser is fitted to; None = the standard H&E reference.
        val_fraction: fraction of each class (in groups) put in the ``val`` split.
        test_fraction: fraction of each class (in groups, the same grouping as val) put in a ``test`` split that
            nothing is tuned on (0: no test split).
        folds, fold: cross-validation: with ``folds >= 2`` the ``test`` split is fold ``fold`` (``0 <= fold <
            folds``) of a class-stratified k-fold over the groups (``histlib.data.splits.group_split``), so the
            ``folds`` datasets prepared with one seed have disjoint test splits that together hold every image once;
            ``test_fraction`` must then be 0. 0: no folds.
        split_from: a split fixed by the dataset's authors instead of a random one: ``'folders'`` (the first
            folder of each image's path named like a split, e.g. ``<split>/<class>/...`` or
            ``WSS1/images/<split>/<slide>``), ``'column:NAME'`` (column NAME of ``SOURCE/MANIFEST.tsv``) or
            ``'file:PATH'`` (a CSV/TSV with columns ``path`` (relative to SOURCE) and ``split``). The fractions must
            then be 0.
        split_rename: renames the authors' split names to ours (``train``, ``val``, ``test``), e.g.
            ``{'test': 'val'}`` when their held-out set is what the study validates on.
        slides: the source is slides (searched in subfolders too, for nested layouts); None = automatic (slides
            at the top level of a folder without class folders, or a slide file).
        group_by: ``'source'``, ``'region'``, ``'patch'`` or a ``SOURCE/MANIFEST.tsv`` column (module docstring).
        allow_missing_group: with a column ``group_by``, let a source the column does not list be a group of its
            own (default: refused, since a patient's images could then straddle splits).
        seed: seed of the split.
        min_fraction: slides only: fraction of a patch that must lie inside a class's polygons.
        annotations: slides only: GeoJSON file, or folder of ``<slide stem>.geojson``; None = beside the slide.
        resize: when set, every written image is resized (Lanczos) to ``resize × resize``.
        image_format: ``'png'`` (lossless) or ``'jpg'`` (quality 95).
        workers: processes used for decoding/tiling/writing (0 = in this process); never changes the output.
    """

    source: str
    out: str
    patch: int | None = None
    stride: int | None = None
    stain: str | None = None
    stain_target: str | None = None
    val_fraction: float = 0.0
    test_fraction: float = 0.0
    folds: int = 0
    fold: int = 0
    split_from: str | None = None
    split_rename: dict[str, str] | None = None
    slides: bool | None = None
    group_by: str = "source"
    seed: int = 0
    min_fraction: float = 0.5
    annotations: str | None = None
    resize: int | None = None
    image_format: str = "png"
    workers: int = 0
    allow_missing_group: bool = False


    def resolve_paths(self) -> PrepareConfig:
        """A copy whose relative paths are resolved against the project root (notebooks run from ``notebooks/``
        in JupyterLab and from the root under the study runner; both then name the same folders)."""
        from histlib.runs import project_path

        def res(p):
            return None if p is None else project_path(p).as_posix()

        return dataclasses.replace(self, **{k: res(getattr(self, k)) for k in _PATH_FIELDS})


# The fields that name files or folders: hashed and recorded relative to the project root (``_path_key``).
_PATH_FIELDS = ("source", "out", "stain_target", "annotations")
# Fields that do not change what is written, hence not part of the hash that decides "already prepared".
_NOT_HASHED = ("out", "workers")
# Fields added later: left out of the hash while they have their default, so earlier prepared datasets stay valid.
_HASHED_WHEN_SET = {"test_fraction": 0.0, "folds": 0, "fold": 0, "split_from": None, "split_rename": None,
                    "slides": None, "allow_missing_group": False}


def _path_key(p: str | None) -> str | None:
    """A path as hashed: relative to the project root when inside it, so the CLI, a notebook and the runner agree
    and a copy of the project elsewhere (even one whose ``data/`` is a link to the original's) keeps its hashes.
    Links are not followed for that test; a path outside the project is hashed as its resolved absolute path."""
    if p is None:
        return None
    root = project_root()
    plain = Path(os.path.abspath(Path(p).expanduser()))  # '..' removed, links kept
    for base in (root, root.resolve()):
        if plain.is_relative_to(base):
            return plain.relative_to(base).as_posix()
    resolved = plain.resolve()
    return resolved.relative_to(root.resolve()).as_posix() if resolved.is_relative_to(root.resolve()) \
        else resolved.as_posix()


def prepare_hash(cfg: PrepareConfig) -> str:
    """The hash of everything in ``cfg`` that changes the prepared dataset."""
    d = {k: v for k, v in dataclasses.asdict(cfg).items()
         if k not in _NOT_HASHED and not (k in _HASHED_WHEN_SET and v == _HASHED_WHEN_SET[k])}
    for k in set(_PATH_FIELDS) & set(d):  # "out" is not hashed
        d[k] = _path_key(d[k])
    return config_hash(d)


def check_config(cfg: PrepareConfig) -> None:
    """Raises ValueError naming the first invalid parameter."""
    from histlib.config import check_types

    check_types(cfg)
    for name in ("patch", "stride", "resize"):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0):
            raise ValueError(f"{name}={v!r}: expected a positive integer or None")
    if cfg.stride is not None and cfg.patch is None:
        raise ValueError("stride is set but patch is None: give a patch size to tile")
    if cfg.stride is not None and cfg.patch is not None and cfg.stride > cfg.patch:
        warnings.warn(f"stride={cfg.stride} > patch={cfg.patch}: {cfg.stride - cfg.patch} px between neighbouring "
                      "patches are never used", stacklevel=2)
    if cfg.stain not in STAINS:
        raise ValueError(f"stain={cfg.stain!r}: expected one of {STAINS}")
    if cfg.stain_target is not None and cfg.stain is None:
        raise ValueError("stain_target is set but stain is None: use stain='macenko'")
    if not 0.0 <= float(cfg.val_fraction) < 1.0:
        raise ValueError(f"val_fraction={cfg.val_fraction}: expected a number in [0, 1)")
    if not 0.0 <= float(cfg.test_fraction) < 1.0 or float(cfg.val_fraction) + float(cfg.test_fraction) >= 1.0:
        raise ValueError(f"test_fraction={cfg.test_fraction}: expected a number in [0, 1) with val_fraction + "
                         f"test_fraction < 1")
    check_folds(cfg.folds, cfg.fold, cfg.test_fraction)
    if cfg.split_from is not None:
        kind = str(cfg.split_from).split(":", 1)[0]
        if kind not in ("folders", "column", "file") or (kind != "folders" and ":" not in str(cfg.split_from)):
            raise ValueError(f"split_from={cfg.split_from!r}: expected 'folders', 'column:NAME' or 'file:PATH'")
        if cfg.val_fraction or cfg.test_fraction or cfg.folds:
            raise ValueError(f"split_from={cfg.split_from!r} fixes the split: val_fraction, test_fraction and folds "
                             f"must be 0 (got {cfg.val_fraction}, {cfg.test_fraction} and {cfg.folds})")
    if cfg.split_rename is not None:
        if not isinstance(cfg.split_rename, dict) or not all(isinstance(k, str) and v in SPLIT_NAMES
                                                             for k, v in cfg.split_rename.items()):
            raise ValueError(f"split_rename={cfg.split_rename!r}: expected a mapping of split names to one of "
                             f"{SPLIT_NAMES}, e.g. {{'test': 'val'}}")
        if cfg.split_from is None:
            raise ValueError("split_rename is set but split_from is None: it renames a predefined split")
    if not 0.0 < float(cfg.min_fraction) <= 1.0:
        raise ValueError(f"min_fraction={cfg.min_fraction}: expected a number in (0, 1]")
    if str(cfg.image_format).lower() not in IMAGE_FORMATS:
        raise ValueError(f"image_format={cfg.image_format!r}: expected one of {sorted(IMAGE_FORMATS)}")
    if not cfg.group_by:
        raise ValueError("group_by: expected 'source', 'region', 'patch' or a MANIFEST.tsv column name")
    if int(cfg.workers) < 0:
        raise ValueError(f"workers={cfg.workers}: expected 0 or a positive integer")


# ----------------------------------------------------------------------------------------------------------------
# Per-image work (top-level functions so that worker processes can run them)


def _make_normalizer(cfg: PrepareConfig):
    if cfg.stain is None:
        return None
    from histlib.data.stain import MacenkoNormalizer  # lazy: only prepare runs that ask for it pay the import

    norm = MacenkoNormalizer()
    if cfg.stain_target is not None:
        with Image.open(cfg.stain_target) as im:
            norm.fit(np.asarray(to_rgb8(im)))
    return norm


def _normalize(norm, a: np.ndarray) -> tuple[np.ndarray, bool]:
    """Stain-normalised copy of ``a`` [H, W, 3], or ``a`` itself and False when no stain can be estimated."""
    from histlib.data.stain import StainNormalizationError

    try:
        return norm.transform(a), True
    except StainNormalizationError:
        return a, False


def _save(a: np.ndarray, path: Path, resize: int | None, fmt: str) -> None:
    img = Image.fromarray(np.ascontiguousarray(a), mode="RGB")
    if resize is not None and img.size != (resize, resize):
        img = img.resize((resize, resize), Image.LANCZOS)
    if fmt == "png":
        img.save(path, format="PNG", compress_level=1)  # H&E patches: level 1 is as small as 3 or 6 and faster
    else:
        img.save(path, format="JPEG", quality=95)


class UnreadableImage(OSError):
    """A source image that cannot be decoded (listed with the others in one error)."""


@dataclass
class _Job:
    src: str  # absolute path of the source image
    rel: str  # path relative to SOURCE (the manifest's ``source``)
    cls: str
    tmp: str  # temporary output folder
    stem_src: str = ""  # the path the output names derive from: ``rel`` without the class folder


def _process_image(job: _Job, cfg: PrepareConfig, norm) -> tuple[list[dict], int, int]:
    """Reads, converts, normalises, tiles and writes one source image; returns (rows, n_normalised, n_failed)."""
    fmt = IMAGE_FORMATS[cfg.image_format.lower()]
    try:
        with Image.open(job.src) as im:
            a = np.asarray(to_rgb8(im))  # [H, W, 3] uint8
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"{job.src}: cannot read image ({type(e).__name__}: {e})") from None
    ok = failed = 0
    if norm is not None:
        a, success = _normalize(norm, a)
        ok, failed = int(success), int(not success)
    out_dir = Path(job.tmp) / job.cls
    out_dir.mkdir(parents=True, exist_ok=True)
    # the class folder is not part of the stem: patches already go under their class folder
    stem = patch_stem(job.stem_src or Path(job.rel).relative_to(job.cls).as_posix())
    rows = []
    if cfg.patch is None:
        name = f"{stem}.{fmt}"
        _save(a, out_dir / name, cfg.resize, fmt)
        rows.append({"path": f"{job.cls}/{name}", "class": job.cls, "source": job.rel})
    else:
        h, w = a.shape[:2]
        for x, y in tile_positions(w, h, cfg.patch, cfg.stride):
            name = patch_name(stem, x, y, fmt)
            _save(a[y:y + cfg.patch, x:x + cfg.patch], out_dir / name, cfg.resize, fmt)
            rows.append({"path": f"{job.cls}/{name}", "class": job.cls, "source": job.rel})
    return rows, ok, failed


def _process_star(args):
    """``_process_image`` that returns a bad file's error instead of raising, so one run reports every bad file."""
    try:
        return _process_image(*args), None
    except UnreadableImage as e:  # a write error (a full disk) is not the image's fault: it stops the run
        return ([], 0, 0), str(e)


# ----------------------------------------------------------------------------------------------------------------
# Sources


def _is_slide_source(source: Path, slides: bool | None = None) -> bool:
    if slides is not None:
        return bool(slides)
    if source.is_file():
        return source.suffix.lower() in WSI_EXTENSIONS
    has_slides = any(f.is_file() and f.suffix.lower() in WSI_EXTENSIONS for f in source.iterdir())
    return has_slides and not list_class_folders(source)


def _find_slides(source: Path) -> list[Path]:
    """The slide file itself, or every slide under the folder (subfolders too; hidden ones skipped), sorted."""
    if source.is_file():
        return [source]
    return sorted(f for f in source.rglob("*") if f.is_file() and f.suffix.lower() in WSI_EXTENSIONS
                  and not any(p.startswith(".") for p in f.relative_to(source).parts))


ANNOTATION_SUFFIXES = (".geojson", ".json")


def _slide_annotations(slide: Path, annotations: str | None, source: Path | None = None) -> Path:
    """The GeoJSON of a slide: ``annotations`` (a file, or a folder holding ``<stem>.geojson``/``.json``, also in the
    slide's relative subfolder), else beside the slide, else in the mirrored ``annotations/`` folder of an
    ``images/`` layout (``.../images/train/s.svs`` -> ``.../annotations/train/s.geojson``)."""
    candidates: list[Path] = []
    rel_parent = slide.parent.relative_to(source) if source is not None and source.is_dir() else Path()
    if annotations is not None:
        ann = Path(annotations)
        if not ann.is_dir():
            candidates.append(ann)
        for suffix in ANNOTATION_SUFFIXES:
            candidates += [ann / rel_parent / f"{slide.stem}{suffix}", ann / f"{slide.stem}{suffix}"]
    else:
        candidates += [slide.with_suffix(suffix) for suffix in ANNOTATION_SUFFIXES]
        parts = list(slide.parent.parts)
        if "images" in parts:
            i = len(parts) - 1 - parts[::-1].index("images")
            mirrored = Path(*parts[:i], "annotations", *parts[i + 1:])
            candidates += [mirrored / f"{slide.stem}{suffix}" for suffix in ANNOTATION_SUFFIXES]
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(map(str, candidates[:4])) + (" ..." if len(candidates) > 4 else "")
    raise FileNotFoundError(f"annotation GeoJSON for slide {slide.name} not found (looked for {looked}); set "
                            "annotations= to a .geojson file or a folder of <slide stem>.geojson")


def _group_table(source: Path, column: str) -> tuple[list[dict[str, str]], str, Path]:
    """The rows of ``SOURCE/MANIFEST.tsv`` (or ``SOURCE/manifest.csv``) that has column ``column``, the name of its
    path column and the file."""
    for name, sep, key in (("MANIFEST.tsv", "\t", "relpath"), (MANIFEST_NAME, ",", "path")):
        f = source / name
        if f.is_file():
            rows = read_table_rows(f, sep)
            if rows and column in rows[0] and key in rows[0]:
                return rows, key, f
    raise ValueError(f"group_by={column!r}: expected 'source', 'region', 'patch' or a column of "
                     f"{source / 'MANIFEST.tsv'}")


def _group_column(source: Path, column: str) -> dict[str, str]:
    """``{relative path: group}`` from ``SOURCE/MANIFEST.tsv`` (or ``SOURCE/manifest.csv``) column ``column``."""
    rows, key, f = _group_table(source, column)
    return table_mapping(rows, key, column, f)


def check_groups(cfg: PrepareConfig) -> None:
    """Before any image is read: with ``group_by`` a manifest column, every image the source's manifest lists must
    have a value there unless ``allow_missing_group`` (``study plan`` calls this, so a study does not stop at its
    data step hours in). Images the manifest does not list at all are found by ``prepare`` itself.

    Raises:
        ValueError: naming the manifest, the column and the first images without a group.
    """
    source = Path(cfg.source).expanduser()
    if cfg.group_by in ("source", "patch", "region") or cfg.allow_missing_group or not source.exists():
        return
    folder = source if source.is_dir() else source.parent
    rows, key, f = _group_table(folder, cfg.group_by)  # the manifest read once, the one the mapping comes from
    listed = pd.Series([r[key] for r in rows if r.get(key)])
    _check_groups_listed(cfg, folder, listed, table_mapping(rows, key, cfg.group_by, f))


def _warn_replacing(out: Path, meta: dict, cfg: PrepareConfig) -> None:
    """Says that a dataset prepared with other settings is about to be replaced, and which settings differ."""
    old = meta.get("config") or {}
    new = dataclasses.asdict(cfg)
    def same(k: str) -> bool:  # paths compared as recorded: relative to the project root
        return _path_key(old.get(k)) == _path_key(new[k]) if k in _PATH_FIELDS else old.get(k) == new[k]

    changed = [f"{k}: {old.get(k)!r} -> {(_path_key(v) if k in _PATH_FIELDS else v)!r}" for k, v in new.items()
               if k not in _NOT_HASHED and not same(k)]
    what = "; ".join(changed) or "the source's location or the settings hash"
    warnings.warn(f"prepare {out}: replacing a dataset prepared with other settings ({what}); runs trained on the "
                  "old one no longer match it", stacklevel=3)


def _check_groups_listed(cfg: PrepareConfig, source: Path, sources: pd.Series, mapping: dict[str, str]) -> None:
    missing = sorted(set(sources) - set(mapping))
    if missing and not cfg.allow_missing_group:
        raise ValueError(f"group_by={cfg.group_by!r}: {len(missing)} of {sources.nunique()} source image(s) have no "
                         f"{cfg.group_by!r} in {source / 'MANIFEST.tsv'} (e.g. {missing[:3]}); list them, or set "
                         "allow_missing_group=True (--allow-missing-group; ALLOW_MISSING_GROUP in notebook 01 or a "
                         "study) to make each its own group")


def _prepare_folder(cfg: PrepareConfig, source: Path, tmp: Path, progress: bool) -> tuple[list[dict], dict]:
    from histlib.progress import progress as progress_bar

    # headers only up front (sizes, modes, unreadable files); truncated pixel data is caught, naming the file,
    # while tiling, and the temporary folder is then removed
    norm = _make_normalizer(cfg)
    jobs: list[_Job] = []
    reports = []
    for root, prefix in _class_roots(cfg, source):
        report = validate_folder(root, cfg.patch, check_pixels=False, progress=progress)
        reports.append(report)
        for r in report.images:
            within = PurePosixPath(r.path).relative_to(r.cls).as_posix()
            jobs.append(_Job(str(root / r.path), f"{prefix}{r.path}", r.cls, str(tmp), f"{prefix}{within}"))
    rows: list[dict] = []
    n_ok = n_failed = 0
    failed_sources: list[str] = []
    bad_files: list[str] = []
    bar = progress_bar(total=len(jobs), desc=f"prepare {source.name}", unit="img", disable=not progress)
    if cfg.workers > 0:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(cfg.workers)
        results = pool.map(_process_star, [(j, cfg, norm) for j in jobs], chunksize=16)
    else:
        pool = None
        results = (_process_star((j, cfg, norm)) for j in jobs)
    try:
        for job, ((r, ok, failed), error) in zip(jobs, results):
            rows += r
            n_ok, n_failed = n_ok + ok, n_failed + failed
            if failed:
                failed_sources.append(job.rel)
            if error:
                bad_files.append(error)
            bar.update(1)
    finally:
        if pool is not None:  # on an error, drop the queued images; the caller then removes the temporary folder
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()  # ends the bar's line, so an error is printed on a line of its own
    if bad_files:
        more = f"\n  ... and {len(bad_files) - MAX_LISTED} more" if len(bad_files) > MAX_LISTED else ""
        raise DatasetValidationError(f"{source}: {len(bad_files)} image(s) cannot be decoded:\n  "
                                     + "\n  ".join(bad_files[:MAX_LISTED]) + more)
    validation = _merge_reports(source, [(r, f"{Path(r.root).name}/") for r in reports]).to_dict()
    info = {"kind": "folder", "validation": validation, "n_sources": len(jobs)}
    if norm is not None:
        info["stain"] = {"unit": "source image", "normalised": n_ok, "not_normalised": n_failed,
                         "not_normalised_examples": failed_sources[:MAX_LISTED]}
    return rows, info


def _class_roots(cfg: PrepareConfig, source: Path) -> list[tuple[Path, str]]:
    """``[(folder of class folders, prefix of its relative paths)]``: the source itself, or with
    ``split_from='folders'`` one ``<split>/`` folder per split."""
    if cfg.split_from != "folders":
        return [(source, "")]
    names = set(_SPLIT_FOLDER_NAMES) | {k.lower() for k in (cfg.split_rename or {})}
    roots = [d for d in list_class_folders(source) if d.name.lower() in names]
    if not roots:
        raise ValueError(f"split_from='folders': {source} has no split folders ({', '.join(sorted(names))}); expected "
                         "<source>/<split>/<class>/<image>")
    return [(d, f"{d.name}/") for d in roots]


def _merge_reports(source: Path, parts: list[tuple[FolderReport, str]]) -> FolderReport:
    """One report for a source with split folders: paths relative to the source, counts summed."""
    if len(parts) == 1 and not parts[0][1]:
        return parts[0][0]
    images, ignored, converted, classes = [], [], {}, []
    for report, prefix in parts:
        images += [dataclasses.replace(r, path=f"{prefix}{r.path}") for r in report.images]
        ignored += [f"{prefix}{f}" for f in report.ignored]
        for k, v in report.converted.items():
            converted[k] = converted.get(k, 0) + v
        classes += [c for c in report.classes if c not in classes]
    return FolderReport(root=source.as_posix(), classes=sorted(classes), images=images, ignored=ignored,
                        converted=converted, patch=parts[0][0].patch)


def _region_index(geom, x: int, y: int, patch: int) -> int:
    """Index of the polygon (part of a class's MultiPolygon) that covers most of the patch at ``(x, y)``."""
    import shapely

    parts = list(getattr(geom, "geoms", [geom]))
    if len(parts) == 1:
        return 0
    areas = shapely.area(shapely.intersection(shapely.box(x, y, x + patch, y + patch), parts))
    return int(np.argmax(areas))


def _prepare_slides(cfg: PrepareConfig, source: Path, tmp: Path, progress: bool) -> tuple[list[dict], dict]:
    from histlib.data.wsi import iter_wsi_patches, read_geojson
    from histlib.progress import iterate

    if cfg.patch is None:
        raise ValueError(f"{source}: slides must be tiled; set patch (e.g. 224)")
    slides = _find_slides(source)
    if not slides:
        raise ValueError(f"source={source}: no slide files ({', '.join(WSI_EXTENSIONS)}) found")
    fmt = IMAGE_FORMATS[cfg.image_format.lower()]
    norm = _make_normalizer(cfg)
    rows: list[dict] = []
    n_ok = n_failed = 0
    per_slide = {}
    for slide in slides:
        rel = slide.name if source.is_file() else slide.relative_to(source).as_posix()
        geoms = read_geojson(_slide_annotations(slide, cfg.annotations, source))
        n = 0
        for p, img in iterate(iter_wsi_patches(slide, geoms, cfg.patch, cfg.stride, cfg.min_fraction),
                           desc=f"prepare {slide.name}", unit="patch", disable=not progress):
            a = np.asarray(img)  # [patch, patch, 3]
            if norm is not None:
                a, success = _normalize(norm, a)
                n_ok, n_failed = n_ok + int(success), n_failed + int(not success)
            (tmp / p.cls).mkdir(parents=True, exist_ok=True)
            name = patch_name(patch_stem(rel), p.x, p.y, fmt)
            _save(a, tmp / p.cls / name, cfg.resize, fmt)
            rows.append({"path": f"{p.cls}/{name}", "class": p.cls, "source": rel,
                         "region": f"{rel}:{p.cls}:{_region_index(geoms[p.cls], p.x, p.y, cfg.patch)}"})
            n += 1
        per_slide[rel] = n
        if n == 0:
            warnings.warn(f"{slide}: no patch lies at least {cfg.min_fraction:.0%} inside a labelled polygon",
                          stacklevel=2)
    info = {"kind": "slides", "n_sources": len(slides), "patches_per_slide": per_slide}
    if norm is not None:
        info["stain"] = {"unit": "patch", "normalised": n_ok, "not_normalised": n_failed}
    return rows, info


@dataclass
class SlideReport:
    """What ``validate_source`` found for slide sources: one row per (slide, class)."""

    rows: list[dict]

    def to_frame(self) -> pd.DataFrame:
        """Slide size, polygon area and the number of patches ``prepare`` will cut, per (slide, class)."""
        return pd.DataFrame(self.rows).set_index(["slide", "class"])

    def __str__(self) -> str:
        slides = sorted({r["slide"] for r in self.rows})
        per_class: dict[str, int] = {}
        for r in self.rows:
            per_class[r["class"]] = per_class.get(r["class"], 0) + r["patches"]
        return (f"{len(slides)} slide(s), {len(per_class)} classes; patches per class: "
                + ", ".join(f"{c} {n}" for c, n in sorted(per_class.items())))


def validate_source(cfg: PrepareConfig, progress: bool = True):
    """Checks the source before preparing it, for display (``print(report)``, ``report.to_frame()``).

    Returns:
        For a ``<class>/<image>`` folder: the ``folders.FolderReport`` (raises, naming every bad file, on bad input).
        For slides: a ``SlideReport`` (polygon areas and the number of patches ``prepare`` will cut).
    """
    check_config(cfg)
    source = Path(cfg.source).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"source={cfg.source}: not found")
    if not _is_slide_source(source, cfg.slides):
        roots = _class_roots(cfg, source)
        if len(roots) == 1:
            return validate_folder(roots[0][0], cfg.patch, check_pixels=True, progress=progress)
        return _merge_reports(source, [(validate_folder(r, cfg.patch, check_pixels=True, progress=progress), prefix)
                                       for r, prefix in roots])
    from histlib.data.wsi import open_slide, read_geojson, wsi_patch_positions

    if cfg.patch is None:
        raise ValueError(f"{source}: slides must be tiled; set patch (e.g. 224)")
    rows = []
    for slide in _find_slides(source):
        geoms = read_geojson(_slide_annotations(slide, cfg.annotations, source))
        s = open_slide(slide)
        width, height = s.dimensions
        s.close()
        positions = wsi_patch_positions(geoms, width, height, cfg.patch, cfg.stride, cfg.min_fraction)
        for cls, geom in geoms.items():
            rows.append({"slide": slide.name if source.is_file() else slide.relative_to(source).as_posix(),
                         "class": cls, "width": width, "height": height,
                         "polygon_area_px": round(geom.area), "patches": sum(p.cls == cls for p in positions)})
    return SlideReport(rows)


def format_report(report: dict) -> str:
    """A short text summary of a ``prepare_dataset`` report."""
    lines = [f"{display_path(report['out'])}: {report['status']}, {report['n_images']} images, "
             f"{len(report['classes'])} classes, "
             f"{report['n_groups']} groups (config hash {report['config_hash']})"]
    for cls, c in report["counts"].items():
        lines.append(f"  {cls}: " + ", ".join(f"{s} {n}" for s, n in c.items()))
    info = report.get("source_info", {})
    conv = info.get("validation", {}).get("converted")
    if conv:
        lines.append(f"  converted to 8-bit RGB: {conv}")
    if "stain" in info:
        st = info["stain"]
        lines.append(f"  Macenko per {st['unit']}: {st['normalised']} normalised, {st['not_normalised']} kept as they "
                     f"were (no stain could be estimated)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Entry point


def _remove_stale_partials(out: Path) -> None:
    """Removes temporary folders left by a killed run (an exception already removes its own)."""
    if out.parent.is_dir():
        for stale in out.parent.glob(f".{out.name}.*.partial"):
            shutil.rmtree(stale, ignore_errors=True)


def prepare_dataset(cfg: PrepareConfig, force: bool = False, progress: bool = True) -> dict:
    """Builds the prepared dataset ``cfg.out`` from ``cfg.source`` (see the module docstring).

    Args:
        cfg: the stage config.
        force: rebuild even when ``cfg.out`` already holds this config's dataset.
        progress: show progress bars.

    Returns:
        The report also stored in ``prepare.json``: ``status`` ('prepared' or 'already prepared'), ``out``,
        ``n_images``, ``counts`` ({class: {split: n}}), ``classes``, ``source_info`` (validation report,
        conversions, stain statistics), ``config``, ``config_hash``, ``elapsed_s``.

    Raises:
        FileNotFoundError, ValueError (including ``DatasetValidationError``): bad config or bad input, naming the
        parameter or file; ``out`` is then left as it was.
    """
    check_config(cfg)
    source, out = Path(cfg.source).expanduser(), Path(cfg.out).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"source={cfg.source}: not found")
    src_r, out_r = source.resolve(), out.resolve()
    if src_r == out_r or out_r in src_r.parents or (source.is_dir() and src_r in out_r.parents):
        raise ValueError(f"out={out}: must not be the source folder, contain it or lie inside it")
    h = prepare_hash(cfg)
    meta_path = out / PREPARE_JSON
    if out.exists():
        if meta_path.is_file():
            meta = read_json(meta_path)
            if not force and meta.get("config_hash") == h and (out / MANIFEST_NAME).is_file():
                report = {**meta["report"], "status": "already prepared", "config": meta["config"],
                          "config_hash": h}
                print(f"{display_path(out)}: already prepared (config hash {h}); nothing to do")
                return report
            _warn_replacing(out, meta, cfg)
        elif out.is_file() or any(out.iterdir()):
            raise FileExistsError(f"out={out}: exists and is not a prepared dataset (no {PREPARE_JSON}); "
                                  f"refusing to replace it")
    slides = _is_slide_source(source, cfg.slides)
    if source.is_file() and not slides:
        raise ValueError(f"source={source}: expected a <class>/<image> folder or a slide ({', '.join(WSI_EXTENSIONS)})")
    if cfg.group_by == "region" and not slides:
        raise ValueError("group_by='region' applies to slide sources only (one group per annotated polygon)")
    mapping = None
    if cfg.group_by not in ("source", "patch", "region"):
        mapping = _group_column(source if source.is_dir() else source.parent, cfg.group_by)
    _remove_stale_partials(out)

    t0 = time.time()
    with atomic_dir(out) as tmp:
        if slides:
            rows, info = _prepare_slides(cfg, source, tmp, progress)
        else:
            rows, info = _prepare_folder(cfg, source, tmp, progress)
        if not rows:
            raise ValueError(f"source={source}: no patches produced (patch={cfg.patch}, stride={cfg.stride})")
        df = pd.DataFrame(rows)
        clashes = df[df["path"].duplicated(keep=False)]
        if len(clashes):
            # e.g. a/img0.png and a/img0.jpg both become a/img0.png: one would overwrite the other
            first = clashes.groupby("path")["source"].apply(lambda s: sorted(set(s))).head(5)
            detail = "; ".join(f"{p} <- {', '.join(srcs)}" for p, srcs in first.items())
            raise ValueError(f"source={source}: {clashes['path'].nunique()} output name(s) would come from more "
                             f"than one source file (same name, other extension or folder): {detail}. "
                             "Rename the sources so their names differ.")
        if cfg.group_by == "source":
            df["group"] = df["source"]
        elif cfg.group_by == "patch":
            df["group"] = df["path"]
        elif cfg.group_by == "region":
            df["group"] = df["region"]
        else:
            _check_groups_listed(cfg, source, df["source"], mapping)
            df["group"] = [f"{cfg.group_by}:{mapping[s]}" if s in mapping else s for s in df["source"]]
        if cfg.split_from is None:
            df["split"] = group_split(df, cfg.val_fraction, seed=cfg.seed, test_fraction=cfg.test_fraction,
                                      folds=cfg.folds, fold=cfg.fold)
            if cfg.test_fraction > 0:
                check_split_classes(df, f"test_fraction={cfg.test_fraction} (group_by={cfg.group_by!r})")
            elif cfg.folds:
                check_split_classes(df, f"folds={cfg.folds}, fold={cfg.fold} (group_by={cfg.group_by!r})")
        else:
            split_of = predefined_splits(cfg, source, sorted(df["source"].unique()))
            df["split"] = df["source"].map(split_of)
            check_split_classes(df, f"the predefined split (split_from={cfg.split_from!r})")
        check_no_straddle(df)
        df = df[list(MANIFEST_COLUMNS)].sort_values("path", kind="stable").reset_index(drop=True)
        atomic_write_text(tmp / MANIFEST_NAME, df.to_csv(index=False))

        counts = {c: {s: int(n) for s, n in part["split"].value_counts().sort_index().items()}
                  for c, part in df.groupby("class", sort=True)}
        no_val = [c for c, n in counts.items() if not n.get("val")]
        if cfg.val_fraction > 0 and no_val:
            # groups (slides, source images) span classes, so a class can end up with no validation images
            warnings.warn(f"prepare {out}: class(es) {no_val} have no validation images after the group-aware "
                          f"split (val_fraction={cfg.val_fraction}); their recall cannot be measured", stacklevel=2)
        report = {
            "status": "prepared",
            "out": out.as_posix(),
            "n_images": len(df),
            "n_groups": int(df["group"].nunique()),
            "classes": sorted(counts),
            "counts": counts,
            "classes_without_val": no_val if cfg.val_fraction > 0 else [],
            "source_info": info,
            "config": dataclasses.asdict(cfg),
            "config_hash": h,
            "elapsed_s": round(time.time() - t0, 3),
        }
        import histlib

        # paths as hashed (relative to the project root when inside it), so the record names no folder of this
        # machine that a copy of the project would not have
        paths = {k: _path_key(getattr(cfg, k)) for k in _PATH_FIELDS}
        stored = {k: v for k, v in report.items() if k not in ("config", "config_hash")}
        stored["out"] = paths["out"]
        validation = (stored.get("source_info") or {}).get("validation")
        if isinstance(validation, dict) and validation.get("root"):
            stored["source_info"] = {**stored["source_info"], "validation": {**validation,
                                                                             "root": _path_key(validation["root"])}}
        write_json(tmp / PREPARE_JSON, {"config": {**dataclasses.asdict(cfg), **paths}, "config_hash": h,
                                        "histlib_version": histlib.__version__, "report": stored})
    return report
