"""Registry of the public datasets of the study, and a resumable, checksum-verified downloader.

``python -m histlib download NAME --to DIR [--no-extract]`` fetches a registered dataset with a progress bar,
resumes an interrupted download (HTTP ``Range`` on a ``.part`` file), verifies the published checksum (a mismatch
deletes the file and raises :class:`ChecksumError`), and extracts zip/tar archives atomically (into a temporary
folder renamed at the end). A dataset already downloaded and verified is not fetched again.

Layout on disk, for an entry whose single file is ``X.zip``::

    DIR/X.zip                  the verified archive (delete it after extraction to save space)
    DIR/X.zip.verified.json    digest + size + mtime, so a re-run does not hash 12 GB again
    DIR/X/                     the archive's contents; a single top-level folder inside the archive is
                               flattened, so DIR/X/<class>/... whatever the archive's own top folder is called
    DIR/X/.histlib-extracted.json   marker naming the archive and its digest

Only the standard library (``urllib``) and ``histlib.progress`` (tqdm, imported when a bar is shown) are used;
importing this module is cheap.

Checksums: Zenodo lists an md5 per file on each record page; those are recorded below with
``checksum_note="published by the host ..."``. Where no checksum is published the downloader computes the sha256,
logs it and stores it in the ``.verified.json`` file, so it can be recorded here with a dated note.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from histlib.runs import atomic_dir, read_json, write_json

log = logging.getLogger(__name__)

__all__ = [
    "REGISTRY",
    "ChecksumError",
    "DatasetEntry",
    "DatasetFile",
    "DownloadError",
    "ManualDownloadError",
    "UnknownDatasetError",
    "add_arguments",
    "download",
    "extract_archive",
    "fetch_file",
    "get_entry",
    "list_entries",
    "main",
]

MARKER = ".histlib-extracted.json"
RETRY_BACKOFF_S = 1.0  # first wait before resuming a dropped connection; doubles each attempt, at most 30 s


# ----------------------------------------------------------------------------------------------------------------
# Entries


@dataclasses.dataclass(frozen=True)
class DatasetFile:
    """One downloadable file of a dataset.

    Attributes:
        url: direct download URL.
        filename: name of the file on disk.
        sha256: published sha256 (hex), if any.
        md5: published md5 (hex), if any (Zenodo publishes md5).
        size: exact size in bytes, if known.
        extract_dir: folder (under the download folder) the archive is extracted to; defaults to the file name
            without its archive suffix. Empty string for a file that is not an archive.
    """

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    extract_dir: str | None = None

    @property
    def checksum(self) -> tuple[str, str] | None:
        """``(algorithm, hex digest)`` to verify against; sha256 preferred over md5; None when unknown."""
        if self.sha256:
            return "sha256", self.sha256.lower()
        if self.md5:
            return "md5", self.md5.lower()
        return None

    @property
    def is_archive(self) -> bool:
        return self.extract_dir != "" and _archive_stem(self.filename) is not None

    @property
    def target_dir(self) -> str:
        """The extraction folder name."""
        return self.extract_dir or _archive_stem(self.filename) or self.filename


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """A registered public dataset.

    Attributes:
        name: registry key (``python -m histlib download NAME``).
        title: one-line description.
        urls: the files to download (empty for a manual download).
        checksum_note: where the checksums come from: "published by the host ...", "computed by us on <date> — not
            published", or "not verified: unknown ...".
        layout: expected folder layout after extraction, relative to the download folder.
        classes: class folder names / labels.
        licence: the dataset's licence.
        citation: what to cite.
        homepage: the dataset's page.
        approx_size: human-readable size for listings when the exact size is not known.
        manual: non-empty when the files cannot be fetched automatically: how to obtain them by hand.
        prepare: ``histlib prepare`` settings this dataset needs (``PrepareConfig`` fields), e.g. a split fixed by
            its authors (``split_from``) or nested slides (``slides``).
    """

    name: str
    title: str
    urls: tuple[DatasetFile, ...]
    checksum_note: str
    layout: str
    classes: tuple[str, ...]
    licence: str
    citation: str
    homepage: str
    approx_size: str = ""
    manual: str = ""
    prepare: dict = dataclasses.field(default_factory=dict)

    @property
    def size(self) -> int | None:
        """Total size in bytes when every file's size is known, else None."""
        sizes = [f.size for f in self.urls]
        return sum(sizes) if sizes and all(s is not None for s in sizes) else None

    @property
    def size_text(self) -> str:
        return _human_bytes(self.size) if self.size is not None else (self.approx_size or "unknown")

    @property
    def checksum_status(self) -> str:
        """Short status for listings: which checksum every file is verified against, or why none."""
        if self.manual and not self.urls:
            return "manual download"
        kinds = {f.checksum[0] if f.checksum else None for f in self.urls}
        if None in kinds:
            return "not verified"
        return "/".join(sorted(k for k in kinds if k)) + (
            " (published)" if self.checksum_note.startswith("published") else " (computed by us)")


_NCT_CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
_ZENODO_NCT = "https://zenodo.org/records/1214456"
_NCT_CITATION = (
    "Kather JN, Halama N, Marx A. 100,000 histological images of human colorectal cancer and healthy tissue. "
    "Zenodo, 2018. doi:10.5281/zenodo.1214456. Described in: Kather JN, Krisam J, Charoentong P, et al. "
    "Predicting survival from colorectal cancer histology slides using deep learning: a retrospective multicenter "
    "study. PLoS Medicine 16(1): e1002730, 2019. doi:10.1371/journal.pmed.1002730"
)
_ZENODO_MD5_NOTE = (
    "published by the host: md5 from the Zenodo record's file list (the same value is quoted by independent "
    "projects that download this file)"
)

def _nct_entry(name: str, title: str, md5: str, layout: str, size: int | None = None, **extra) -> DatasetEntry:
    """An entry of Kather et al.'s Zenodo record (the three NCT-CRC-HE sets share licence, citation and host)."""
    note = _ZENODO_MD5_NOTE + ("" if size is not None else "; exact size not recorded")
    return DatasetEntry(name=name, title=title,
                        urls=(DatasetFile(url=f"{_ZENODO_NCT}/files/{name}.zip?download=1", filename=f"{name}.zip",
                                          md5=md5, size=size),),
                        checksum_note=note, layout=layout, classes=_NCT_CLASSES, licence="CC BY 4.0",
                        citation=_NCT_CITATION, homepage=_ZENODO_NCT, **extra)


REGISTRY: dict[str, DatasetEntry] = {
    e.name: e
    for e in (
        _nct_entry("NCT-CRC-HE-100K", "100,000 Macenko-normalised H&E patches (224 px, 0.5 µm/px) of colorectal "
                   "cancer and normal tissue, 9 classes", "6fd702d11df6292bc054397ae038a464",
                   "NCT-CRC-HE-100K/<class>/<CLASS>-<ID>.tif — 100 000 RGB TIFF, 224×224 px, Macenko-normalised",
                   size=11_690_284_003),
        _nct_entry("NCT-CRC-HE-100K-NONORM", "The same 100,000 patches without colour normalisation, 9 classes",
                   "035777cf327776a71a05c95da6d6325f",
                   "NCT-CRC-HE-100K-NONORM/<class>/<CLASS>-<ID>.tif — 100 000 RGB TIFF, 224×224 px, original "
                   "staining", approx_size="~11.7 GB"),
        _nct_entry("CRC-VAL-HE-7K", "7,180 H&E patches from 50 patients with no overlap with NCT-CRC-HE-100K "
                   "(validation set), 9 classes", "2fd1651b4f94ebd818ebf90ad2b6ce06",
                   "CRC-VAL-HE-7K/<class>/<CLASS>-<ID>.tif — 7 180 RGB TIFF, 224×224 px", size=800_276_929),
        DatasetEntry(
            name="BACH",
            title="ICIAR 2018 Grand Challenge on BreAst Cancer Histology: 400 microscopy images (2048×1536 px, "
                  "0.42 µm/px), 4 classes, plus whole-slide images",
            urls=(DatasetFile(url="https://zenodo.org/records/3632035/files/ICIAR2018_BACH_Challenge.zip?download=1",
                              filename="ICIAR2018_BACH_Challenge.zip", md5="8ae1801334aa943c44627c1eef3631b2"),),
            checksum_note="published by the host: md5 from the Zenodo record's file list (record 3632035; the same "
                          "value is quoted by independent projects); exact size not recorded",
            layout="ICIAR2018_BACH_Challenge/Photos/<class>/*.tif — 100 RGB TIFF per class, 2048×1536 px, with "
                   "microscopy_ground_truth.csv; ICIAR2018_BACH_Challenge/WSI/ holds the whole-slide images "
                   "(not used by the study)",
            classes=("Benign", "InSitu", "Invasive", "Normal"),
            licence="CC BY-NC-ND 4.0",
            citation="Aresta G, Araújo T, Kwok S, et al. BACH: Grand challenge on breast cancer histology images. "
                     "Medical Image Analysis 56: 122-139, 2019. doi:10.1016/j.media.2019.05.010. "
                     "Data: doi:10.5281/zenodo.3632035",
            homepage="https://iciar2018-challenge.grand-challenge.org/",
            approx_size="~10.4 GB",
        ),
        DatasetEntry(
            name="PATH-DT-MSU",
            title="PATH-DT-MSU whole-slide H&E images of the gastrointestinal tract with polygon annotations "
                  "(subsets WSS1, WSS2)",
            urls=(),
            checksum_note="not verified: unknown — no direct download URL or published checksum could be confirmed",
            layout="PATH-DT-MSU/WSS1/ and PATH-DT-MSU/WSS2/, each with images/{train,test}/<slide> and "
                   "annotations/{train,test}/<slide>.json (layout as used by the authors' public code; check it "
                   "against what you download). Slides come in the authors' own format in recent releases: "
                   "convert them to a tiled TIFF/SVS readable by tiffslide, and the annotations to GeoJSON "
                   "(QuPath export) for `histlib prepare`. Class codes as in the authors' code: AT adipose tissue, "
                   "BG background, LP lamina propria, MM muscularis mucosae, TUM tumour, DYS dysplasia "
                   "(unconfirmed which subset holds which class)",
            classes=("AT", "BG", "LP", "MM", "TUM", "DYS"),
            licence="not stated in the sources we could check: read the terms on the dataset page before use",
            citation="Khvostikov A, Krylov A, Mikhailov I, Malkov P, Danilova N. Tissue type recognition in whole "
                     "slide histological images. Proceedings of GraphiCon 2021, CEUR Workshop Proceedings 3027, "
                     "paper 50, 2021. https://ceur-ws.org/Vol-3027/paper50.pdf",
            homepage="https://imaging.cs.msu.ru/en/research/histology/path-dt-msu",
            manual="Download the WSS1 and WSS2 subsets by hand from the authors' page "
                   "https://imaging.cs.msu.ru/en/research/histology/path-dt-msu (follow its download links or "
                   "request access from the authors), then unpack them as DIR/PATH-DT-MSU/WSS1/ and "
                   "DIR/PATH-DT-MSU/WSS2/. Record the sha256 of each archive you obtained (sha256sum FILE) so "
                   "the download can be reproduced.",
            # The authors fix the split: images/train and images/test in each subset; the publication validates on
            # their test part, so it becomes our 'val' (select epochs and variants there; no separate test split).
            prepare={"slides": True, "split_from": "folders", "split_rename": {"test": "val"}, "patch": 224,
                     "stride": 112},
        ),
    )
}


class UnknownDatasetError(ValueError):
    """A dataset name that is not in the registry."""


class ChecksumError(RuntimeError):
    """A downloaded file whose checksum differs from the expected one (the file has been deleted)."""


class DownloadError(RuntimeError):
    """The server could not deliver the file (HTTP error, or the network failed after all retries)."""


class ManualDownloadError(RuntimeError):
    """The dataset has no confirmed direct URL: it must be downloaded by hand (the message says how)."""


def _key(name: str) -> str:
    return name.strip().upper().replace("_", "-")


def list_entries() -> list[DatasetEntry]:
    """The registered datasets, in registry order."""
    return list(REGISTRY.values())


def get_entry(name: str) -> DatasetEntry:
    """The entry named ``name`` (case-insensitive; ``_`` and ``-`` are equivalent).

    Raises:
        UnknownDatasetError: the name is not registered; the message lists the known names.
    """
    wanted = _key(name)
    for entry in REGISTRY.values():
        if _key(entry.name) == wanted:
            return entry
    raise UnknownDatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(REGISTRY)}")


# ----------------------------------------------------------------------------------------------------------------
# Helpers


_ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip")


def _archive_stem(filename: str) -> str | None:
    lower = filename.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return filename[: -len(suffix)]
    return None


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _digest(path: Path, algorithm: str, chunk: int, progress: bool) -> str:
    from histlib.progress import progress as progress_bar

    h = hashlib.new(algorithm)
    size = path.stat().st_size
    with open(path, "rb") as f, progress_bar(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                                     desc=f"verify {path.name}", disable=not progress, leave=False) as bar:
        while block := f.read(chunk):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _write_stamp(path: Path, algorithm: str, digest: str, published: bool) -> None:
    st = path.stat()
    write_json(_stamp_path(path), {"file": path.name, "algorithm": algorithm, "digest": digest,
                                   "published": published, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                   "verified_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def _stamp_matches(path: Path, algorithm: str, digest: str) -> bool:
    """True when ``path`` was verified before and has not changed since (same size and mtime)."""
    try:
        stamp = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
        st = path.stat()
    except (OSError, ValueError):
        return False
    return (stamp.get("algorithm") == algorithm and stamp.get("digest") == digest
            and stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns)


def _total_from_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total)`` from ``bytes a-b/total`` or ``bytes */total``."""
    if not value:
        return None, None
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value)
    if not m:
        return None, None
    first = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return first, total


def _user_agent() -> str:
    import histlib

    return f"histlib/{histlib.__version__} (+urllib)"


# ----------------------------------------------------------------------------------------------------------------
# Download


class _Incomplete(ConnectionError):
    """The connection ended before the announced number of bytes arrived (retried with a Range request)."""


def _fetch_into_part(url: str, part: Path, size: int | None, *, progress: bool, chunk: int, timeout: float) -> None:
    """Downloads ``url`` into ``part``, continuing from its current length with a Range request."""
    from histlib.progress import progress as progress_bar

    start = part.stat().st_size if part.exists() else 0
    if size is not None and start > size:  # longer than the file can be: start over
        part.unlink()
        start = 0
    if size is not None and start == size:
        return
    headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:
            # Range not satisfiable: the .part already holds the whole file, or it is stale; start over if unsure
            _, total = _total_from_content_range(e.headers.get("Content-Range"))
            e.close()
            if total == start:
                return
            part.unlink()
            return _fetch_into_part(url, part, size, progress=progress, chunk=chunk, timeout=timeout)
        raise
    with resp:
        first, total = _total_from_content_range(resp.headers.get("Content-Range"))
        if start and resp.status == 206 and first == start:
            mode = "ab"
        else:  # the server ignored the Range header (200) or answered another range: write from the beginning
            mode, start = "wb", 0
        if total is None:
            length = resp.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else size
        with open(part, mode) as out, progress_bar(total=total, initial=start, unit="B", unit_scale=True,
                                                   unit_divisor=1024, desc=part.name[: -len(".part")],
                                                   disable=not progress) as bar:
            while block := resp.read(chunk):
                out.write(block)
                bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
    got = part.stat().st_size
    if total is not None and got < total:
        raise _Incomplete(f"connection closed after {got} of {total} bytes")


def fetch_file(file: DatasetFile, to: str | os.PathLike, *, progress: bool = True, chunk: int = 1 << 20,
               retries: int = 3, timeout: float = 60.0) -> Path:
    """Downloads one file into folder ``to``, resuming a ``.part`` file, and verifies its checksum.

    A file already present whose checksum matches is not downloaded again (a ``.verified.json`` stamp with its
    size and mtime avoids re-hashing it). A present file that does not match is deleted and downloaded again.

    Args:
        file: what to fetch.
        to: destination folder (created).
        progress: show progress bars (``histlib.progress``).
        chunk: read size in bytes.
        retries: how often a dropped connection is resumed before giving up.
        timeout: socket timeout in seconds.

    Returns:
        The path of the verified file.

    Raises:
        ChecksumError: the downloaded file does not match the expected checksum; it has been deleted.
        DownloadError: HTTP error, or the connection kept failing.
    """
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    final = to / file.filename
    part = to / (file.filename + ".part")
    expected = file.checksum

    if final.exists():
        if expected is None:
            if _stamp_path(final).exists():
                return final
        elif _stamp_matches(final, *expected) or _digest(final, expected[0], chunk, progress) == expected[1]:
            if not _stamp_matches(final, *expected):
                _write_stamp(final, expected[0], expected[1], published=True)
            log.info("%s: already downloaded and verified", final)
            return final
        else:
            log.warning("%s: present but its %s does not match the registry; downloading it again", final,
                        expected[0])
            final.unlink()
            _stamp_path(final).unlink(missing_ok=True)

    for attempt in range(retries + 1):
        try:
            _fetch_into_part(file.url, part, file.size, progress=progress, chunk=chunk, timeout=timeout)
            break
        except urllib.error.HTTPError as e:
            raise DownloadError(f"{file.url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            if attempt == retries:
                raise DownloadError(f"{file.url}: download failed after {retries + 1} attempts ({e}); run the "
                                    f"same command again to resume from {part}") from e
            log.warning("%s: %s; resuming (attempt %d of %d)", file.filename, e, attempt + 2, retries + 1)
            time.sleep(min(RETRY_BACKOFF_S * 2.0 ** attempt, 30.0))

    got_size = part.stat().st_size
    if file.size is not None and got_size != file.size:
        part.unlink()
        raise ChecksumError(f"{file.filename}: expected {file.size} bytes, got {got_size}; the file was deleted")
    if expected is None:
        digest = _digest(part, "sha256", chunk, progress)
        os.replace(part, final)
        _write_stamp(final, "sha256", digest, published=False)
        log.warning("%s: no checksum is published; computed sha256 %s (recorded in %s) — add it to the registry "
                    "with a dated note", final, digest, _stamp_path(final).name)
        return final
    algorithm, want = expected
    digest = _digest(part, algorithm, chunk, progress)
    if digest != want:
        part.unlink()
        raise ChecksumError(f"{file.filename}: {algorithm} mismatch: expected {want}, got {digest}; the file was "
                            f"deleted (download it again; if this repeats, the host's file has changed)")
    os.replace(part, final)
    _write_stamp(final, algorithm, digest, published=True)
    return final


# ----------------------------------------------------------------------------------------------------------------
# Extraction


def _read_marker(dest: Path) -> dict:
    """The marker of an extracted folder; a damaged one is one error naming it (and what to do)."""
    marker = dest / MARKER
    try:
        info = read_json(marker)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{marker}: damaged extraction marker ({e}); delete {dest} to extract again") from None
    if not isinstance(info, dict):
        raise ValueError(f"{marker}: damaged extraction marker (not a JSON object); delete {dest} to extract again")
    return info


def _safe_member(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"{archive}: unsafe member path {name!r} (absolute or with '..'); refusing to extract")
    return path


def _extract_members(members: list[tuple[str, str, Any]], open_member, root: Path, archive: Path,
                     progress: bool) -> None:
    """Writes an archive's members (``(name, kind, member)``) as regular files and folders under ``root``: every
    name and kind is checked before anything is written, and links, devices and FIFOs are refused outright."""
    from histlib.progress import iterate

    seen: set[tuple[str, ...]] = set()
    for name, kind, _ in members:
        parts = _safe_member(name, archive).parts
        if kind not in ("file", "dir"):
            raise ValueError(f"{archive}: member {name!r} is a {kind}; dataset archives need only regular files and "
                             "folders, refusing to extract")
        if kind == "file" and parts in seen:  # which copy is meant is unknown: tar would keep the last silently
            raise ValueError(f"{archive}: member {name!r} appears more than once; refusing to extract")
        seen.add(parts)
    for name, kind, member in iterate(members, desc=f"extract {archive.name}", unit="file", disable=not progress):
        target = _member_target(root, name, archive)
        if kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
        else:
            with open_member(member) as src:
                _write_regular(src, target)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _member_target(root: Path, name: str, archive: Path) -> Path:
    """Where a member goes: inside ``root`` by construction (no '..', not absolute; ``root`` holds no links, since
    only regular files and folders are ever written), checked once more on the resolved path."""
    target = root.joinpath(*_safe_member(name, archive).parts)
    if not target.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{archive}: member {name!r} would be written outside the target folder; refusing")
    return target


def _write_regular(src, target: Path) -> None:
    """Copies a member's bytes into a new regular file (never following a link: the parent folders are ours)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "xb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _flatten_single_folder(folder: Path) -> None:
    """Moves the contents of a lone top-level folder up one level (archives usually wrap everything in one)."""
    entries = [p for p in folder.iterdir() if p.name != MARKER]
    if len(entries) != 1 or not entries[0].is_dir():
        return
    inner = entries[0].rename(folder / f".flatten-{os.getpid()}")  # avoids a clash with a child of the same name
    for child in inner.iterdir():
        os.replace(child, folder / child.name)
    inner.rmdir()


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike, *, digest: str | None = None,
                    progress: bool = True) -> Path:
    """Extracts a zip or tar archive into ``dest`` atomically (temporary sibling folder, renamed at the end).

    ``dest`` then holds the archive's contents (a lone top-level folder is flattened) and a marker file. When
    ``dest`` already holds a marker for the same archive digest the call does nothing; a ``dest`` that was not
    made by this function is never overwritten.

    Raises:
        FileExistsError: ``dest`` exists and was not created by this function.
        ValueError: not a zip/tar archive, or a member path escapes the folder.
    """

    archive, dest = Path(archive), Path(dest)
    marker = dest / MARKER
    if dest.exists():
        if not marker.exists():
            raise FileExistsError(f"{dest}: exists and was not extracted by histlib; move it away or choose "
                                  f"another --to folder")
        info = _read_marker(dest)
        if info.get("archive") == archive.name and (digest is None or info.get("digest") == digest):
            log.info("%s: already extracted", dest)
            return dest
    with atomic_dir(dest) as tmp:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = [(m.filename, "link" if stat.S_ISLNK(m.external_attr >> 16) else
                            ("dir" if m.is_dir() else "file"), m) for m in zf.infolist()
                           if not m.filename.startswith("__MACOSX/")]
                _extract_members(members, zf.open, tmp, archive, progress)
        elif _is_tar(archive):
            try:
                with tarfile.open(archive) as tf:
                    members = [(m.name, "file" if m.isfile() else "dir" if m.isdir() else
                                "link" if (m.issym() or m.islnk()) else "special file", m) for m in tf.getmembers()]
                    _extract_members(members, tf.extractfile, tmp, archive, progress)
            except (tarfile.TarError, EOFError) as e:
                raise ValueError(f"{archive}: damaged tar archive ({e}); delete it and download it again") from None
        else:
            raise ValueError(f"{archive}: not a zip or tar archive")
        _flatten_single_folder(tmp)
        write_json(tmp / MARKER, {"archive": archive.name, "digest": digest,
                                  "extracted_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return dest


# ----------------------------------------------------------------------------------------------------------------
# Public entry point


def download(name_or_entry: str | DatasetEntry, to: str | os.PathLike, *, progress: bool = True,
             chunk: int = 1 << 20, extract: bool = True, retries: int = 3, timeout: float = 60.0,
             verify: bool = True) -> Path:
    """Downloads (resumably), verifies and extracts a registered dataset into folder ``to``.

    Args:
        name_or_entry: a registry name (see ``python -m histlib datasets``) or a :class:`DatasetEntry`.
        to: download folder (created).
        progress: show progress bars.
        chunk: read size in bytes.
        extract: extract archives (atomically) after verification.
        retries: how often a dropped connection is resumed before giving up.
        timeout: socket timeout in seconds.
        verify: refuse a file the registry has no checksum for (True, the default) or accept it unverified and
            record its sha256 (False, ``--no-verify``).

    Returns:
        For a single-file dataset, the extracted folder (``to/<archive stem>``), or the verified file itself when
        ``extract=False`` or the file is not an archive. For several files, ``to``.

    Raises:
        UnknownDatasetError: ``name_or_entry`` is not a registered name (the message lists them).
        ManualDownloadError: the dataset must be downloaded by hand (the message says how).
        ChecksumError: a file does not match its checksum; it has been deleted.
        DownloadError: the server or the network failed.
        FileExistsError: an extraction folder exists that histlib did not create.
    """
    entry = name_or_entry if isinstance(name_or_entry, DatasetEntry) else get_entry(name_or_entry)
    if not entry.urls:
        raise ManualDownloadError(f"{entry.name}: no direct download is registered. {entry.manual}".strip())
    unverified = [f.filename for f in entry.urls if f.checksum is None]
    if unverified and verify:
        raise ChecksumError(f"{entry.name}: no checksum is registered for {', '.join(unverified)}, so a changed or "
                            "tampered file could not be detected; pass --no-verify (verify=False) to accept it "
                            "unverified (its sha256 is then recorded beside it)")
    to = Path(to)
    results: list[Path] = []
    for file in entry.urls:
        expected = file.checksum
        dest = to / file.target_dir
        if extract and file.is_archive and expected is not None and (dest / MARKER).exists():
            # extracted before from a verified archive with this digest: the archive itself may have been deleted
            info = _read_marker(dest)
            if info.get("archive") == file.filename and info.get("digest") == expected[1]:
                log.info("%s: already downloaded, verified and extracted", dest)
                results.append(dest)
                continue
        path = fetch_file(file, to, progress=progress, chunk=chunk, retries=retries, timeout=timeout)
        if extract and file.is_archive:
            stamp = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
            results.append(extract_archive(path, dest, digest=stamp["digest"], progress=progress))
        else:
            results.append(path)
    return results[0] if len(results) == 1 else to


# ----------------------------------------------------------------------------------------------------------------
# Command line: python -m histlib download NAME --to DIR [--no-extract]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help=f"dataset name, one of: {', '.join(REGISTRY)}")
    parser.add_argument("--to", required=True, type=Path, help="download folder (created)")
    parser.add_argument("--no-extract", action="store_true", help="download and verify only; do not extract")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--retries", type=int, default=3, help="resume attempts after a dropped connection")
    parser.add_argument("--no-verify", action="store_true",
                        help="accept files the registry has no checksum for (their sha256 is recorded)")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = download(args.name, args.to, progress=not args.no_progress, extract=not args.no_extract,
                        retries=args.retries, verify=not args.no_verify)
    except (ManualDownloadError, ChecksumError, DownloadError, FileExistsError, ValueError) as e:
        # expected failures get one clear line, not a traceback (UnknownDatasetError is a ValueError)
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{get_entry(args.name).name}: ready at {path}")
    return 0

