"""Run directories, atomic writers and provenance.

Layout (contract): ``results/<study>/<dataset>/<stage>/<run>/`` with ``config.json``, ``env.json``,
``metrics.json`` (flat keys), ``stats.jsonl`` (one line per tick), ``checkpoints/`` and ``images/``.
Everything the project writes goes through these helpers so that an interrupted process never leaves a
half-written file or folder behind: files are written to a temporary name in the same folder and renamed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

RESULTS_ROOT = Path("results")


# ----------------------------------------------------------------------------------------------------------------
# Atomic writes


def _jsonable(obj: Any) -> Any:
    """Turns dataclasses, paths, numpy/torch scalars and tuples into plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return obj.as_posix()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        return _jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    return obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(where: str | os.PathLike) -> OSError:
    """The error for a full disk (or an exhausted quota) while writing ``where``: names it and its free space."""
    probe = Path(where)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{shutil.disk_usage(probe).free / 2**20:,.1f} MiB free there"
    except OSError:
        free = "free space unknown"
    return OSError(errno.ENOSPC, f"no space left on the device while writing ({free})", str(where))


@contextlib.contextmanager
def naming_full_disk(where: str | os.PathLike) -> Iterator[None]:
    """Turns a full-disk error raised inside the block (which names no file when a write fails) into
    :func:`disk_full` naming ``where``; nested, the outermost ``where`` (the folder being made) is the one named."""
    try:
        yield
    except OSError as e:
        if e.errno in DISK_FULL:
            raise disk_full(where) from None
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary file name beside ``path``; the file is renamed to ``path`` only if the block finishes.

    The temporary file gets the usual permissions (``mkstemp`` makes it owner-only) before the rename, and is
    removed when the block raises, so ``path`` is either the complete new file or untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with naming_full_disk(path):
            yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` through a temporary file in the same folder, then renames it."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Writes ``obj`` as indented JSON atomically (dataclasses, paths and numpy scalars are converted)."""
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Reads a JSON file, naming the file in the error when it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temporary file + rename, so a checkpoint is either complete or absent."""
    import torch

    # through a Python file object: a full disk then raises OSError(ENOSPC) (torch.save to a path raises an
    # uninformative RuntimeError such as 'basic_ios::clear' or 'unexpected pos')
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:  # torch's zip writer may mask our OSError with its own error while closing
            context = e.__context__
            while context is not None and not isinstance(context, OSError):
                context = context.__context__
            if context is None:
                raise
            raise context from None
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary sibling folder that is renamed to ``final`` only if the block finishes.

    An existing ``final`` is replaced. On an exception the temporary folder is removed, so an interrupted
    run leaves nothing half-made.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only; the finished folder gets the usual permissions
    try:
        with naming_full_disk(final):  # name the folder being made, not a temporary file inside it
            yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            if old.is_symlink():  # a link in place of the folder: remove the link, never what it points to
                old.unlink()
            else:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (created if missing) across processes and threads: ``flock``, which the
    OS releases if the holder dies, unlike a lock file's existence. Without POSIX ``fcntl`` there is no lock."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Appends one JSON line (one record per training tick) and flushes it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming_full_disk(path), open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(_jsonable(record)) + "\n")
        f.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a ``stats.jsonl`` file into a list of dicts (an unfinished last line is ignored)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


# ----------------------------------------------------------------------------------------------------------------
# Names read from files


def check_name(name: Any, source: str | os.PathLike, what: str = "class name") -> str:
    """A name read from a file (a class in a manifest, folder or checkpoint; a dataset in a study) that becomes one
    path component: folders are made from it, so it is untrusted until checked here.

    Args:
        name: the value read.
        source: the file or folder it was read from (named in the error).
        what: what the name is, for the error (``'class name'``, ``'dataset name'``).

    Returns:
        ``name`` unchanged.

    Raises:
        ValueError: one line naming ``source`` and the name when it is not a string, is empty, ``.`` or ``..``,
            starts with ``.`` (a hidden folder, skipped when read back), holds ``/`` or ``\\``, a NUL or another
            control or non-printable character, or is longer than 255 bytes.
    """
    if not isinstance(name, str):
        raise ValueError(f"{source}: {what} {name!r} is not a string")
    problem = None
    if not name:
        problem = "is empty"
    elif name in (".", ".."):
        problem = "is a relative folder reference"
    elif "/" in name or "\\" in name:
        problem = "holds a path separator"
    elif not name.isprintable():
        problem = "holds a control or non-printable character"
    elif name.startswith("."):
        problem = "starts with '.' (a hidden folder, skipped when read back)"
    elif len(name.encode("utf-8", "surrogateescape")) > 255:
        problem = "is longer than 255 bytes"
    if problem:
        raise ValueError(f"{source}: {what} {name!r} {problem}; expected one folder name (no '/' or backslash, "
                         "not '.' or '..', printable characters only)")
    return name


def check_names(names: Any, source: str | os.PathLike, what: str = "class name") -> list[str]:
    """:func:`check_name` over a list of names; also refuses a value that is not a list or tuple."""
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"{source}: {what}s {names!r}: expected a list of names")
    return [check_name(n, source, what) for n in names]


# ----------------------------------------------------------------------------------------------------------------
# Hashing and provenance


def config_hash(obj: Any) -> str:
    """A short, stable hash of a config (dataclass or mapping) used to skip finished runs."""
    text = json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_sha(cwd: str | os.PathLike | None = None) -> str | None:
    """The current git commit (with ``-dirty`` when the tree has changes), or None outside a repository."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info(device: str | None = None) -> dict[str, Any]:
    """Versions, device and the kernel paths used so far (``histlib.ops.backend_info()``) for ``env.json``."""
    import histlib

    info: dict[str, Any] = {
        "histlib": histlib.__version__,
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:8],
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for mod in ("torch", "torchvision", "timm", "numpy", "PIL", "sklearn"):
        try:
            m = __import__(mod)
            info[f"{mod}_version"] = getattr(m, "__version__", None)
        except ImportError:
            info[f"{mod}_version"] = None
    if "torch" in sys.modules:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        info["device"] = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if torch.cuda.is_available():
            info["gpu_name"] = torch.cuda.get_device_name(0)
            info["cuda_version"] = torch.version.cuda
        info["num_threads"] = torch.get_num_threads()
    if "histlib.ops" in sys.modules:
        info["kernels"] = sys.modules["histlib.ops"].backend_info()
    return info


# ----------------------------------------------------------------------------------------------------------------
# Run directories


def run_dir(study: str, dataset: str, stage: str, run: str, root: str | os.PathLike | None = None) -> Path:
    """``<root>/<study>/<dataset>/<stage>/<run>/`` (created), the contract layout of every run."""
    for name, value in (("study", study), ("dataset", dataset), ("stage", stage), ("run", run)):
        if not value or "/" in value or value in (".", ".."):
            raise ValueError(f"run_dir: {name}={value!r} must be a non-empty name without '/'")
    path = Path(root if root is not None else RESULTS_ROOT) / study / dataset / stage / run
    path.mkdir(parents=True, exist_ok=True)
    return path


class Run:
    """A run directory with the contract's writers.

    Example:
        >>> run = Run("results/demo/sample/base_gan/default")
        >>> run.write_config(cfg); run.write_env(); run.log_stats({"kimg": 1.0}); run.write_metrics({"fid": 3.2})
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    config_path = property(lambda self: self.path / "config.json")
    env_path = property(lambda self: self.path / "env.json")
    metrics_path = property(lambda self: self.path / "metrics.json")
    stats_path = property(lambda self: self.path / "stats.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    images = property(lambda self: self.path / "images")

    def write_config(self, cfg: Any) -> Path:
        return write_json(self.config_path, cfg)

    def write_env(self, device: str | None = None, **extra: Any) -> Path:
        return write_json(self.env_path, {**environment_info(device), **extra})

    def write_metrics(self, metrics: Mapping[str, Any]) -> Path:
        """Writes ``metrics.json``; nested dicts are flattened to ``a/b`` keys (the contract asks for flat keys)."""
        return write_json(self.metrics_path, flatten(metrics))

    def log_stats(self, record: Mapping[str, Any]) -> None:
        append_jsonl(self.stats_path, record)

    def read_stats(self) -> list[dict[str, Any]]:
        return read_jsonl(self.stats_path) if self.stats_path.exists() else []

    def read_metrics(self) -> dict[str, Any]:
        return read_json(self.metrics_path)

    def is_finished(self, cfg: Any) -> bool:
        """True when ``metrics.json`` exists and ``config.json`` has the same config hash as ``cfg``."""
        if not (self.metrics_path.exists() and self.config_path.exists()):
            return False
        return config_hash(read_json(self.config_path)) == config_hash(cfg)


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """Flattens nested mappings to ``{"a/b": v}``; lists stay as values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key, sep))
        else:
            out[key] = _jsonable(v)
    return out


def project_root() -> Path:
    """The project's root folder (the one holding ``pyproject.toml``), searched upward from the current folder.

    Notebooks run with their own folder as the working directory in JupyterLab and with the project root under
    the study runner; resolving paths against this root makes the same parameters work in both.
    Falls back to the current folder when no ``pyproject.toml`` naming histlib is found.
    """
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and 'name = "histlib"' in candidate.read_text(encoding="utf-8", errors="ignore"):
            return folder
    return here


def project_path(path: str | os.PathLike) -> Path:
    """Resolves a path given relative to the project root (absolute paths are returned unchanged)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def display_path(path: str | os.PathLike, start: str | os.PathLike | None = None) -> str:
    """``path`` as a reader should see it: relative to ``start`` (default: the project root) when inside it.

    Reports and metrics files show this form, so they read the same on every machine.
    """
    p = Path(path).expanduser()
    p = p if p.is_absolute() else project_root() / p
    base = Path(start).resolve() if start is not None else project_root()
    try:
        return p.resolve().relative_to(base).as_posix()
    except ValueError:
        return p.as_posix()
