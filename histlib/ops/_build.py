"""Lazy build of the CUDA extensions with ``torch.utils.cpp_extension`` (ninja), cached on disk.

Nothing here runs at import. :func:`load_extension` builds an op's ``.cpp`` + ``.cu`` sources on first use into
``$HISTLIB_CACHE/ops/<name>-<key>/`` (default ``~/.cache/histlib/ops/...``), where ``key`` is a SHA-256 of the
sources, the target GPU architectures, the compiler flags and the torch / CUDA / Python versions, so any change
rebuilds into a fresh folder and an unchanged build is reused across processes.

Thread- and process-safe: one lock per extension inside the process, and an ``flock`` on the build folder across
processes (released by the OS if a builder dies, unlike a lock file). A failed build is remembered for the process,
so a broken extension costs one compile, not one per call.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from histlib import runs

SRC_DIR = Path(__file__).resolve().parent
# Compiler flags, part of the cache key; torch adds the C++ standard its headers need. No --use_fast_math: the
# kernels must match the reference within the tolerances of the tests, and memory traffic bounds them, not arithmetic.
CXX_FLAGS = ("-O3",)
NVCC_FLAGS = ("-O3", "--expt-relaxed-constexpr", "-lineinfo")

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_modules: dict[str, ModuleType] = {}
_failures: dict[str, BaseException] = {}
_env_lock = threading.Lock()


class BuildError(RuntimeError):
    """The extension could not be built or loaded; the message holds the compiler's or loader's output."""


def cache_dir() -> Path:
    """Root folder of the built extensions: ``$HISTLIB_CACHE/ops`` or ``~/.cache/histlib/ops``."""
    root = os.environ.get("HISTLIB_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "histlib"
    return base / "ops"


def cuda_arch_list() -> list[str]:
    """Target architectures such as ``['8.0', '9.0']``.

    The visible GPUs' compute capabilities when there are any (exact code for the card in use), else the
    ``TORCH_CUDA_ARCH_LIST`` environment variable (e.g. ``"8.0;9.0"``, entries may end in ``+PTX``), which is how
    the extension is compiled on a machine without a GPU.
    """
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        return [f"{major}.{minor}" for major, minor in sorted(caps)]
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(",", ";").replace(" ", ";")
    archs = [a for a in env.split(";") if a]
    if not archs:
        raise BuildError("no CUDA device is visible and TORCH_CUDA_ARCH_LIST is not set, so the target GPU "
                         "architecture is unknown (set e.g. TORCH_CUDA_ARCH_LIST='8.0;9.0' to build without a GPU)")
    return archs


def arch_flags(archs: Sequence[str]) -> list[str]:
    """nvcc ``-gencode`` flags for ``archs`` (``'9.0'`` → sm_90 code; ``'9.0+PTX'`` also embeds PTX)."""
    flags = []
    for arch in archs:
        ptx = arch.endswith("+PTX")
        num = arch.removesuffix("+PTX").replace(".", "")
        if not num[:2].isdigit():
            raise BuildError(f"cannot read the CUDA architecture {arch!r} (expected e.g. '8.0', '9.0a' or '9.0+PTX')")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def build_key(name: str, sources: Sequence[Path], archs: Sequence[str]) -> str:
    """SHA-256 over everything that changes the binary."""
    import torch

    h = hashlib.sha256()
    for part in (name, sys.version.split()[0], torch.__version__, str(torch.version.cuda), *archs, *CXX_FLAGS,
                 *NVCC_FLAGS):
        h.update(part.encode() + b"\0")
    for src in sorted(sources, key=lambda p: p.name):
        h.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    return h.hexdigest()


def _lock_for(name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(name, threading.Lock())


def _ninja_on_path() -> None:
    """torch looks for ``ninja`` on PATH; the pip package puts it beside the interpreter, which may not be on PATH."""
    if shutil.which("ninja"):
        return
    candidates = [Path(sys.executable).parent]
    try:
        import ninja  # the pip package

        candidates.insert(0, Path(ninja.BIN_DIR))
    except (ImportError, AttributeError):
        pass
    for folder in candidates:
        if (folder / "ninja").exists():
            os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
            return


def load_extension(name: str, sources: Sequence[str], verbose: bool = False) -> ModuleType:
    """Build (first time) and import the extension ``name`` from ``sources`` (file names in this folder).

    Args:
        name: short op name, e.g. ``'bias_act'``.
        sources: file names relative to ``histlib/ops/`` (``.cpp`` binding + ``.cu`` kernels).
        verbose: stream the compiler's output.

    Returns:
        The imported extension module.

    Raises:
        BuildError: no CUDA toolkit, unknown architecture, or the compiler / loader failed; the message holds
            their output. The failure is remembered: later calls in this process raise it again at once.
    """
    if name in _modules:
        return _modules[name]
    with _lock_for(name):
        if name in _modules:
            return _modules[name]
        if name in _failures:
            raise _failures[name]
        try:
            module = _build_and_load(name, [SRC_DIR / s for s in sources], verbose)
        except BuildError as exc:
            _failures[name] = exc
            raise
        except Exception as exc:  # torch raises RuntimeError / OSError / ImportError with the compiler's output
            err = BuildError(f"building or loading the {name!r} CUDA extension failed: {exc}")
            _failures[name] = err
            raise err from exc
        _modules[name] = module
        return module


def _build_and_load(name: str, sources: list[Path], verbose: bool) -> ModuleType:
    from torch.utils import cpp_extension

    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise BuildError(f"extension {name!r}: source files not found: {missing}")
    if cpp_extension.CUDA_HOME is None:
        raise BuildError("the CUDA toolkit (nvcc) was not found: set CUDA_HOME to its folder, e.g. /usr/local/cuda")
    archs = cuda_arch_list()
    key = build_key(name, sources, archs)
    build_dir = cache_dir() / f"{name}-{key[:16]}"
    build_dir.mkdir(parents=True, exist_ok=True)
    with _env_lock:
        _ninja_on_path()
    with runs.file_lock(build_dir / ".histlib-lock"):  # not POSIX: no lock, torch's own lock file
        # torch's own lock file survives a killed build and then blocks every later one; while we hold the flock no
        # other histlib process is building here, so a leftover one is stale.
        stale = build_dir / "lock"
        if stale.exists():
            stale.unlink()
        return cpp_extension.load(
            name=f"histlib_{name}_{key[:8]}",
            sources=[str(s) for s in sources],
            build_directory=str(build_dir),
            extra_cflags=list(CXX_FLAGS),
            # an explicit -gencode list also stops torch from adding its own TORCH_CUDA_ARCH_LIST guess
            extra_cuda_cflags=[*NVCC_FLAGS, *arch_flags(archs)],
            verbose=verbose,
        )


