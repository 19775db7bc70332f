"""Dataset registry and downloader, tested against a local HTTP server on 127.0.0.1 (no internet needed)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import threading
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from histlib.data import registry
from histlib.data.registry import (
    REGISTRY,
    ChecksumError,
    DatasetEntry,
    DatasetFile,
    ManualDownloadError,
    UnknownDatasetError,
    download,
    extract_archive,
    get_entry,
)

ROOT = Path(__file__).resolve().parents[2]


class _Server:
    """Serves in-memory files; records every request; optionally ignores Range or drops connections."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.honour_range = True
        self.truncate_first_response_at: int | None = None  # simulate a dropped connection once
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _serve(self, body: bool):
                name = self.path.split("?")[0].lstrip("/")
                rng = self.headers.get("Range")
                server.requests.append({"method": self.command, "path": name, "range": rng})
                data = server.files.get(name)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, status = 0, 200
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and server.honour_range:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                payload = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                cut = server.truncate_first_response_at
                if cut is not None:
                    server.truncate_first_response_at = None
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

            def do_GET(self):
                self._serve(body=True)

            def do_HEAD(self):
                self._serve(body=False)

        return Handler

    def gets(self, name: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == name and r["method"] == "GET"]


@pytest.fixture
def http_server():
    server = _Server()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def _make_zip(top: str = "toy-set") -> bytes:
    """A small ImageFolder-style zip: ``top/<class>/<file>`` with a few hundred kB of incompressible bytes."""
    buf = io.BytesIO()
    payload = hashlib.sha256(b"seed").digest() * 4000  # 128 kB, stored without compression below
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for cls in ("ADI", "TUM"):
            for i in range(2):
                zf.writestr(f"{top}/{cls}/{cls}-{i}.bin", payload[i:] + cls.encode())
        zf.writestr(f"{top}/README.txt", "toy dataset\n")
    return buf.getvalue()


def _entry(server: _Server, data: bytes, *, filename: str = "toy-set.zip", md5: bool = False,
           digest: str | None = None, size: int | None = None) -> DatasetEntry:
    server.files[filename] = data
    good = (hashlib.md5 if md5 else hashlib.sha256)(data).hexdigest()
    file = DatasetFile(url=f"{server.url}/{filename}?download=1", filename=filename,
                       md5=(digest or good) if md5 else None, sha256=None if md5 else (digest or good), size=size)
    return DatasetEntry(name="TOY", title="toy", urls=(file,), checksum_note="computed by us in this test",
                        layout="toy-set/<class>/*.bin", classes=("ADI", "TUM"), licence="CC0",
                        citation="none", homepage=server.url)


# ----------------------------------------------------------------------------------------------------------------
# Downloader


def test_full_download_verifies_and_extracts(http_server, tmp_path):
    data = _make_zip()
    entry = _entry(http_server, data, md5=True, size=len(data))
    out = download(entry, tmp_path, progress=False, chunk=4096)
    assert out == tmp_path / "toy-set"
    # the archive's lone top folder is flattened: <to>/<archive stem>/<class>/<file>
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["ADI", "README.txt", "TUM"]
    assert (out / "ADI" / "ADI-1.bin").read_bytes() == zipfile.ZipFile(io.BytesIO(data)).read("toy-set/ADI/ADI-1.bin")
    assert (tmp_path / "toy-set.zip").read_bytes() == data
    assert not (tmp_path / "toy-set.zip.part").exists()
    # no temporary extraction folder is left beside the result
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
    assert http_server.gets("toy-set.zip")[0]["range"] is None


def test_second_call_is_a_no_op(http_server, tmp_path):
    entry = _entry(http_server, _make_zip())
    first = download(entry, tmp_path, progress=False)
    n = len(http_server.requests)
    mtime = (first / "ADI" / "ADI-0.bin").stat().st_mtime_ns
    assert download(entry, tmp_path, progress=False) == first
    assert len(http_server.requests) == n, "an already verified dataset must not be requested again"
    assert (first / "ADI" / "ADI-0.bin").stat().st_mtime_ns == mtime
    # the archive may be deleted after extraction: still nothing to do
    (tmp_path / "toy-set.zip").unlink()
    assert download(entry, tmp_path, progress=False) == first
    assert len(http_server.requests) == n


def test_resume_uses_range_request(http_server, tmp_path):
    data = _make_zip()
    entry = _entry(http_server, data, size=len(data))
    half = len(data) // 2
    (tmp_path / "toy-set.zip.part").write_bytes(data[:half])
    download(entry, tmp_path, progress=False, extract=False)
    gets = http_server.gets("toy-set.zip")
    assert len(gets) == 1 and gets[0]["range"] == f"bytes={half}-"
    assert hashlib.sha256((tmp_path / "toy-set.zip").read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert not (tmp_path / "toy-set.zip.part").exists()


def test_dropped_connection_is_resumed(http_server, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "RETRY_BACKOFF_S", 0.0)
    data = _make_zip()
    entry = _entry(http_server, data)
    http_server.truncate_first_response_at = 50_000
    download(entry, tmp_path, progress=False, extract=False, retries=2)
    gets = http_server.gets("toy-set.zip")
    assert [g["range"] for g in gets] == [None, "bytes=50000-"]
    assert (tmp_path / "toy-set.zip").read_bytes() == data


def test_server_ignoring_range_restarts_cleanly(http_server, tmp_path):
    data = _make_zip()
    entry = _entry(http_server, data)
    http_server.honour_range = False
    (tmp_path / "toy-set.zip.part").write_bytes(data[:1000])
    download(entry, tmp_path, progress=False, extract=False)
    assert (tmp_path / "toy-set.zip").read_bytes() == data  # not the first 1000 bytes twice


def test_complete_part_file_is_not_fetched_again(http_server, tmp_path):
    data = _make_zip()
    entry = _entry(http_server, data)  # size unknown: the server answers 416 for a complete .part
    (tmp_path / "toy-set.zip.part").write_bytes(data)
    download(entry, tmp_path, progress=False, extract=False)
    assert (tmp_path / "toy-set.zip").read_bytes() == data


def test_checksum_mismatch_deletes_file_and_says_so(http_server, tmp_path):
    data = _make_zip()
    wrong = "0" * 64
    entry = _entry(http_server, data, digest=wrong)
    with pytest.raises(ChecksumError) as e:
        download(entry, tmp_path, progress=False)
    msg = str(e.value)
    assert f"expected {wrong}" in msg and f"got {hashlib.sha256(data).hexdigest()}" in msg
    assert "deleted" in msg and "sha256" in msg
    assert not (tmp_path / "toy-set.zip").exists() and not (tmp_path / "toy-set.zip.part").exists()
    assert not (tmp_path / "toy-set").exists()


def test_md5_mismatch_names_md5(http_server, tmp_path):
    entry = _entry(http_server, _make_zip(), md5=True, digest="f" * 32)
    with pytest.raises(ChecksumError, match=r"md5 mismatch: expected f{32}, got [0-9a-f]{32}; the file was deleted"):
        download(entry, tmp_path, progress=False)


def test_corrupted_existing_file_is_downloaded_again(http_server, tmp_path):
    data = _make_zip()
    entry = _entry(http_server, data)
    (tmp_path / "toy-set.zip").write_bytes(b"garbage")
    download(entry, tmp_path, progress=False, extract=False)
    assert (tmp_path / "toy-set.zip").read_bytes() == data


def test_failed_extraction_leaves_nothing(http_server, tmp_path):
    bad = b"PK\x03\x04" + b"\x00" * 200  # zip magic, but not a zip: checksum passes, extraction fails
    entry = _entry(http_server, bad)
    with pytest.raises(ValueError, match="not a zip or tar archive"):
        download(entry, tmp_path, progress=False)
    assert not (tmp_path / "toy-set").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_unsafe_member_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.txt", "x")
    archive = tmp_path / "evil.zip"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="unsafe member"):
        extract_archive(archive, tmp_path / "evil", progress=False)
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_tar_archive_is_extracted(tmp_path):
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name, text in (("set/A/a.txt", b"a"), ("set/B/b.txt", b"bb")):
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tf.addfile(info, io.BytesIO(text))
    out = extract_archive(archive, tmp_path / "set", progress=False)
    assert (out / "A" / "a.txt").read_bytes() == b"a" and (out / "B" / "b.txt").read_bytes() == b"bb"


def _path_max_escape_tar(path, outside_name):
    """The PATH_MAX realpath bypass of tarfile's 'data' filter (CVE-2025-4517 class): deep directories each shadowed
    by a symlink, a link chain that climbs out, then a regular file written through it."""
    comp = "d" * 247
    steps = "abcdefghijklmnopqrstu"
    with tarfile.open(path, "w") as tf:
        prefix = ""
        for i in range(len(steps) - 1):
            d = tarfile.TarInfo(prefix + comp)
            d.type = tarfile.DIRTYPE
            tf.addfile(d)
            link = tarfile.TarInfo(prefix + steps[i])
            link.type = tarfile.SYMTYPE
            link.linkname = comp
            tf.addfile(link)
            prefix += steps[i] + "/"
        climb = tarfile.TarInfo(prefix + "r")
        climb.type = tarfile.SYMTYPE
        climb.linkname = "../" * (len(steps) - 1)
        tf.addfile(climb)
        esc = tarfile.TarInfo("esc")
        esc.type = tarfile.SYMTYPE
        esc.linkname = prefix + "r/../" + outside_name
        tf.addfile(esc)
        payload = b"pwned"
        f = tarfile.TarInfo("esc/pwn.txt")
        f.size = len(payload)
        tf.addfile(f, io.BytesIO(payload))


@pytest.mark.parametrize("kind", ["escape", "hardlink", "fifo"])
def test_links_and_special_members_are_refused(tmp_path, kind):
    archive = tmp_path / "bad.tar"
    if kind == "escape":
        (tmp_path / "outside").mkdir()
        _path_max_escape_tar(archive, "outside")
    else:
        with tarfile.open(archive, "w") as tf:
            ok = tarfile.TarInfo("set/a.txt")
            ok.size = 1
            tf.addfile(ok, io.BytesIO(b"a"))
            m = tarfile.TarInfo("set/b")
            m.type = tarfile.LNKTYPE if kind == "hardlink" else tarfile.FIFOTYPE
            m.linkname = "set/a.txt" if kind == "hardlink" else ""
            tf.addfile(m)
    with pytest.raises(ValueError, match="is a (link|special file)"):
        extract_archive(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.rglob("pwn.txt"))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_damaged_tar_is_one_clear_error(tmp_path):
    archive = tmp_path / "set.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("set/a.txt")
        info.size = 4096
        tf.addfile(info, io.BytesIO(b"x" * 4096))
    archive.write_bytes(archive.read_bytes()[:1500])  # truncated in the middle of the member's data
    with pytest.raises(ValueError, match="set.tar"):
        extract_archive(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def _tar(archive, members):
    with tarfile.open(archive, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return archive


def test_duplicate_members_damaged_marker_and_a_linked_target(tmp_path):
    dup = _tar(tmp_path / "dup.tar", [("set/a.txt", b"one"), ("set/a.txt", b"two")])
    with pytest.raises(ValueError, match=r"dup.tar: member 'set/a.txt' appears more than once") as e:
        extract_archive(dup, tmp_path / "out", progress=False)
    assert ".partial" not in str(e.value) and not (tmp_path / "out").exists()

    good = _tar(tmp_path / "set.tar", [("set/a.txt", b"one")])
    out = extract_archive(good, tmp_path / "out", digest="d1", progress=False)
    (out / ".histlib-extracted.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"out/.histlib-extracted.json: damaged extraction marker .*delete .*out"):
        extract_archive(good, out, digest="d1", progress=False)

    elsewhere = extract_archive(good, tmp_path / "elsewhere", digest="d1", progress=False)
    (tmp_path / "linked").symlink_to(elsewhere, target_is_directory=True)
    extract_archive(good, tmp_path / "linked", digest="d2", progress=False)  # another digest: extracted again
    assert (tmp_path / "linked" / "a.txt").read_bytes() == b"one" and not (tmp_path / "linked").is_symlink()
    assert not [p.name for p in tmp_path.iterdir() if ".old-" in p.name]  # no '.linked.old-PID' link left
    assert (elsewhere / "a.txt").is_file()  # what the link pointed to is not touched


def test_foreign_folder_is_not_overwritten(http_server, tmp_path):
    entry = _entry(http_server, _make_zip())
    (tmp_path / "toy-set").mkdir()
    (tmp_path / "toy-set" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not extracted by histlib"):
        download(entry, tmp_path, progress=False)
    assert (tmp_path / "toy-set" / "mine.txt").read_text() == "keep me"


def test_http_error_is_clear(http_server, tmp_path):
    entry = _entry(http_server, b"x")
    http_server.files.clear()
    with pytest.raises(registry.DownloadError, match="HTTP 404"):
        download(entry, tmp_path, progress=False, retries=0)


def test_no_published_checksum_records_computed_sha256(http_server, tmp_path, caplog):
    data = _make_zip()
    http_server.files["free.zip"] = data
    file = DatasetFile(url=f"{http_server.url}/free.zip", filename="free.zip")
    entry = DatasetEntry(name="FREE", title="t", urls=(file,), checksum_note="not verified: unknown",
                         layout="free/", classes=("a",), licence="CC0", citation="c", homepage="h")
    with pytest.raises(ChecksumError, match="no checksum is registered for free.zip.*--no-verify"):
        download(entry, tmp_path, progress=False, extract=False)
    assert not list(tmp_path.iterdir())  # refused before anything was fetched
    with caplog.at_level("WARNING"):
        download(entry, tmp_path, progress=False, extract=False, verify=False)
    stamp = json.loads((tmp_path / "free.zip.verified.json").read_text())
    assert stamp["digest"] == hashlib.sha256(data).hexdigest() and stamp["published"] is False
    assert hashlib.sha256(data).hexdigest() in caplog.text


# ----------------------------------------------------------------------------------------------------------------
# Names, entries and the command line


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownDatasetError) as e:
        get_entry("NCT-CRC-HE-1M")
    for name in REGISTRY:
        assert name in str(e.value)
    assert get_entry("nct_crc_he_100k").name == "NCT-CRC-HE-100K"


def test_manual_entry_explains_how(tmp_path):
    with pytest.raises(ManualDownloadError, match="imaging.cs.msu.ru"):
        download("PATH-DT-MSU", tmp_path)


def test_registry_has_the_study_datasets():
    assert {"NCT-CRC-HE-100K", "NCT-CRC-HE-100K-NONORM", "CRC-VAL-HE-7K", "BACH", "PATH-DT-MSU"} <= set(REGISTRY)
    assert {f.filename for e in REGISTRY.values() for f in e.urls} >= {
        "NCT-CRC-HE-100K.zip", "NCT-CRC-HE-100K-NONORM.zip", "CRC-VAL-HE-7K.zip", "ICIAR2018_BACH_Challenge.zip"}
    assert "1214456" in get_entry("CRC-VAL-HE-7K").urls[0].url
    assert "3632035" in get_entry("BACH").urls[0].url


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_entry_is_complete(name):
    e = REGISTRY[name]
    assert dataclasses.is_dataclass(e) and e.name == name
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.name = "x"  # type: ignore[misc]
    for field in ("title", "licence", "citation", "layout", "homepage", "checksum_note"):
        assert getattr(e, field).strip(), f"{name}: empty {field}"
    assert e.classes and all(isinstance(c, str) and c for c in e.classes)
    assert e.checksum_note.startswith(("published by the host", "computed by us on", "not verified: unknown"))
    if e.urls:
        for f in e.urls:
            assert f.url.startswith("https://") and f.filename
            if f.checksum is None:  # an explicit note is then required
                assert e.checksum_note.startswith("not verified")
            else:
                algo, digest = f.checksum
                assert re.fullmatch({"md5": r"[0-9a-f]{32}", "sha256": r"[0-9a-f]{64}"}[algo], digest)
    else:
        assert e.manual and e.homepage in e.manual, f"{name}: no URL and no manual download instructions"


def test_datasets_command_lists_entries():
    out = subprocess.run([sys.executable, "-m", "histlib", "datasets"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for name in REGISTRY:
        assert name in out.stdout
    assert "CC BY-NC-ND 4.0" in out.stdout and "md5 (published)" in out.stdout


def test_download_command_end_to_end(http_server, tmp_path, monkeypatch):
    import argparse

    entry = _entry(http_server, _make_zip())
    monkeypatch.setitem(REGISTRY, "TOY", entry)
    parser = argparse.ArgumentParser()
    registry.add_arguments(parser)
    assert registry.main(parser.parse_args(["toy", "--to", str(tmp_path), "--no-progress"])) == 0
    assert (tmp_path / "toy-set" / "TUM" / "TUM-1.bin").exists()
    assert registry.main(parser.parse_args(["toy", "--to", str(tmp_path / "raw"), "--no-extract",
                                            "--no-progress"])) == 0
    assert (tmp_path / "raw" / "toy-set.zip").exists() and not (tmp_path / "raw" / "toy-set").exists()
    assert registry.main(parser.parse_args(["nope", "--to", str(tmp_path)])) == 1


# ----------------------------------------------------------------------------------------------------------------
# Official hosts (needs internet; skipped by default)


@pytest.mark.online
@pytest.mark.parametrize("name", [n for n, e in REGISTRY.items() if e.urls])
def test_official_urls_answer(name):
    # A one-byte Range GET rather than HEAD: urllib turns HEAD into GET when following Zenodo's redirect
    for f in REGISTRY[name].urls:
        req = urllib.request.Request(f.url, headers={"User-Agent": "histlib-test", "Range": "bytes=0-0"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status in (200, 206)
            if resp.status == 206:
                assert resp.headers.get("Content-Range", "").startswith("bytes 0-0/"), "server does not resume"
                total = int(resp.headers["Content-Range"].rsplit("/", 1)[1])
                if f.size is not None:
                    assert total == f.size


@pytest.mark.online
def test_manual_homepages_answer():
    for e in REGISTRY.values():
        if not e.urls:
            req = urllib.request.Request(e.homepage, headers={"User-Agent": "histlib-test"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                assert resp.status < 400
