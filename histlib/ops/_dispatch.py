"""Which implementation of an op runs: the ``impl`` switch, the scoped default and the record of paths used.

Every public op takes ``impl='auto' | 'ref' | 'cuda' | 'compiled'``:

* ``'ref'``: the pure-PyTorch twin, the specification; runs on any device.
* ``'cuda'``: the fused kernel from the op's ``.cu`` file, built on first use. An explicit request never downgrades:
  if the extension cannot be built or loaded, or the input is not on a CUDA device, it raises
  :class:`OpUnavailableError` carrying the compiler's or loader's message.
* ``'compiled'``: the reference forward compiled by ``torch.compile``, wrapped in the same autograd functions as
  the CUDA path so that second derivatives work (``torch.compile`` alone does not support double backward).
* ``'auto'``: the process default (see :func:`use_impl`) when one is set; otherwise, for CUDA tensors, the first
  candidate of :data:`AUTO_PREFERENCE` that builds, loads and passes a one-off numerical check against the
  reference on the device (a warning, once per op and reason, says why a candidate was passed over); for any
  other device the reference, silently.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

IMPLS = ("auto", "ref", "cuda", "compiled")

# Per op, the order in which 'auto' tries the candidates on a CUDA device. The reference is always the last
# resort. How the order is chosen: `benchmarks/ops.py` times ref / cuda / compiled for each op on the StyleGAN2
# shapes and prints (and writes to its JSON) the fastest validated path per op as `suggested_auto_preference`;
# this table is updated from that output when a GPU run is recorded in docs/benchmarks.md. Until then the fused
# kernels lead because they save whole-tensor round trips to memory (one read + one write instead of 3-4 passes).
AUTO_PREFERENCE: dict[str, tuple[str, ...]] = {
    "bias_act": ("cuda", "ref"),
    "upfirdn2d": ("cuda", "ref"),
}


class OpUnavailableError(RuntimeError):
    """An implementation that was asked for explicitly cannot run (build, load or device problem)."""


_lock = threading.RLock()
_default_impl = "auto"
_used: dict[str, list[str]] = {}  # op -> paths used, in order of first use
_auto_choice: dict[tuple[str, str], str] = {}  # (op, device key) -> path picked by 'auto'
_warned: set[tuple[str, str]] = set()


def check_impl(impl: str) -> str:
    """Validate an ``impl`` argument and return it."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def set_default_impl(impl: str) -> None:
    """Set the implementation used by ops called with ``impl='auto'`` (``'auto'`` restores the automatic choice)."""
    global _default_impl
    with _lock:
        _default_impl = check_impl(impl)


def get_default_impl() -> str:
    """The implementation that ``impl='auto'`` currently resolves through (``'auto'`` = automatic choice)."""
    return _default_impl


@contextlib.contextmanager
def use_impl(impl: str) -> Iterator[None]:
    """Scoped switch: within the ``with`` block, ops called with ``impl='auto'`` use ``impl``.

    Example:
        >>> with histlib.ops.use_impl('ref'):
        ...     y = bias_act(x, b, act='lrelu')  # reference path even on a GPU
    """
    global _default_impl
    check_impl(impl)
    with _lock:
        previous = _default_impl
        _default_impl = impl
    try:
        yield
    finally:
        with _lock:
            _default_impl = previous


def warn_once(key: tuple[str, str], message: str) -> None:
    """Emit ``message`` as a RuntimeWarning the first time ``key`` is seen in this process."""
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def record(op: str, path: str) -> None:
    """Note that ``op`` ran through ``path`` (for :func:`backend_info` / ``env.json``)."""
    paths = _used.get(op)
    if paths is not None and path in paths:
        return
    with _lock:
        _used.setdefault(op, [])
        if path not in _used[op]:
            _used[op].append(path)


def backend_info() -> dict[str, str]:
    """Which path each op used so far in this process: ``{op: 'ref' | 'cuda' | 'compiled'}``.

    An op that ran through several paths (say the reference on CPU tensors and the kernel on GPU tensors) is
    reported as the paths joined by ``'+'`` in order of first use. Ops not called yet are absent.
    """
    with _lock:
        return {op: "+".join(paths) for op, paths in sorted(_used.items())}


def reset_backend_info() -> None:
    """Forget the record of used paths and automatic choices (tests use this)."""
    with _lock:
        _used.clear()
        _auto_choice.clear()
        _warned.clear()


def resolve(op: str, impl: str, device_type: str, device_key: str,
            probe: dict[str, Callable[[bool], None]]) -> str:
    """Pick the path an op call runs through.

    Args:
        op: op name (key of :data:`AUTO_PREFERENCE`).
        impl: the caller's ``impl`` argument.
        device_type: ``x.device.type``.
        device_key: identifies the device for caching the automatic choice (e.g. ``'cuda:0'``).
        probe: per non-reference path, a callable ``probe(validate)`` that raises if that path cannot run on
            this device (build or load failure; with ``validate=True`` also a numerical check against the
            reference). 'auto' calls it once per (op, device) with ``validate=True``; an explicit request calls it
            with ``validate=False`` on every call, so it must cache its own result.

    Returns:
        ``'ref'``, ``'cuda'`` or ``'compiled'``.
    """
    check_impl(impl)
    if impl == "auto":
        impl = _default_impl
    if impl == "ref":
        return "ref"
    if impl in ("cuda", "compiled"):
        if impl == "cuda" and device_type != "cuda":
            raise OpUnavailableError(f"{op}: impl='cuda' needs a CUDA tensor, got one on {device_type!r}")
        try:
            probe[impl](False)
        except OpUnavailableError:
            raise
        except Exception as exc:  # the message of the build / load failure is the useful part
            raise OpUnavailableError(f"{op}: impl={impl!r} is unavailable: {exc}") from exc
        return impl
    # automatic choice
    if device_type != "cuda":
        return "ref"
    key = (op, device_key)
    choice = _auto_choice.get(key)
    if choice is not None:
        return choice
    with _lock:
        choice = _auto_choice.get(key)
        if choice is not None:
            return choice
        choice = "ref"
        for candidate in AUTO_PREFERENCE.get(op, ("ref",)):
            if candidate == "ref":
                break
            try:
                probe[candidate](True)
            except Exception as exc:
                warn_once((op, candidate), f"histlib.ops.{op}: impl='auto' cannot use {candidate!r} on "
                          f"{device_key} and falls back to the next candidate: {exc}")
                continue
            choice = candidate
            break
        _auto_choice[key] = choice
        return choice


def make_probes(load_plugin: Callable[[], Any], get_compiled: Callable[[], Any],
                check_against_ref: Callable[[str], None]) -> dict[str, Callable[[bool], None]]:
    """The ``probe`` table of :func:`resolve` for one op.

    ``load_plugin()`` builds/loads the CUDA extension, ``get_compiled()`` the ``torch.compile``d reference, and
    ``check_against_ref(path)`` compares ``path`` with the reference on the current CUDA device (forward, backward,
    double backward), raising on disagreement. The check runs once per (path, device).
    """
    validated: set[tuple[str, str]] = set()

    def validate(path: str) -> None:
        import torch

        key = (path, str(torch.cuda.current_device()))
        if key in validated:
            return
        # the first call may come from inside no_grad / inference_mode / autocast; the check needs plain autograd
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cuda", enabled=False):
            check_against_ref(path)
        validated.add(key)

    def probe(build: Callable[[], Any], path: str) -> Callable[[bool], None]:
        def run(validate_now: bool) -> None:
            build()
            if validate_now:
                validate(path)
        return run

    return {"cuda": probe(load_plugin, "cuda"), "compiled": probe(get_compiled, "compiled")}


def lazy_compile(get_function: Callable[[], Callable]) -> Callable[[], Callable]:
    """``torch.compile`` of a reference function, made on first use and cached (never at import)."""
    cache: list[Callable] = []

    def compiled() -> Callable:
        if not cache:
            import torch

            cache.append(torch.compile(get_function(), dynamic=False))
        return cache[0]

    return compiled
