"""Progress display that also reads well in an exported report.

In a terminal or a live JupyterLab session, long work shows a tqdm bar (``tqdm.auto``: a widget in notebooks). A
widget needs JavaScript from the network to render in an exported HTML page and reads "0%" when the saved notebook
is opened again, so under the study runner (which sets ``HISTLIB_PROGRESS=plain`` for the notebook kernels) the same
calls print a few plain lines instead: one at each quarter of the work and a final summary with the elapsed time
and the last reported values. ``HISTLIB_PROGRESS=off`` prints nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

MODE_VARIABLE = "HISTLIB_PROGRESS"


def mode() -> str:
    """``'bar'`` (tqdm), ``'plain'`` (lines for reports) or ``'off'``."""
    value = os.environ.get(MODE_VARIABLE, "bar").strip().lower()
    return value if value in ("bar", "plain", "off") else "bar"


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class LineProgress:
    """A tqdm-like object printing ``desc: 50% (4/8 kimg, 1m02s) loss_g=1.2 ...`` at each quarter and at the end."""

    def __init__(self, total: float | None, desc: str = "", unit: str = "it", initial: float = 0,
                 steps: int = 4, file=None, scale: float = 1.0):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.scale = scale  # shown amounts are counts × scale (tqdm's float unit_scale)
        self.start_n = initial
        self.steps = steps
        self.file = file or sys.stdout
        self.postfix: dict[str, Any] = {}
        self.t0 = time.time()
        self.closed = False
        self._next = self._next_mark(initial)

    def _next_mark(self, n: float) -> float | None:
        if not self.total:
            return None
        step = self.total / self.steps
        k = int(n // step) + 1
        return k * step if k * step < self.total else None

    def _line(self, final: bool = False) -> str:
        n, total = self.n * self.scale, (self.total or 0) * self.scale
        done = f"{_fmt(n)}/{_fmt(total)} {self.unit}" if self.total else f"{_fmt(n)} {self.unit}"
        pct = f"{100 * self.n / self.total:.0f}% " if self.total else ""
        extra = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        rate = (self.n - self.start_n) * self.scale / max(time.time() - self.t0, 1e-9)
        head = "done" if final else pct.strip()
        return (f"{self.desc}: {head} ({done}, {_duration(time.time() - self.t0)}, {_fmt(rate)} {self.unit}/s)"
                + (f" {extra}" if extra else ""))

    def update(self, n: float = 1) -> None:
        self.n += n
        if self._next is not None and self.n >= self._next - 1e-9:
            print(self._line(), file=self.file, flush=True)
            self._next = self._next_mark(self.n)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = {"": s} if s else {}

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def write(self, s: str) -> None:
        print(s, file=self.file, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            print(self._line(final=True), file=self.file, flush=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Silent(LineProgress):
    def update(self, n: float = 1) -> None:
        self.n += n

    def close(self) -> None:
        self.closed = True

    def write(self, s: str) -> None:
        print(s, file=self.file, flush=True)


def progress(total: float | None = None, desc: str = "", unit: str = "it", initial: float = 0,
             disable: bool = False, scale: float = 1.0, **tqdm_kwargs: Any):
    """A progress bar for ``total`` units of work (``update``/``set_postfix``/``close``/``write``, as tqdm).

    Args:
        total: amount of work (None: unknown).
        desc: what is being done.
        unit: unit of ``total``.
        initial: work already done (a resumed run).
        disable: show nothing.
        scale: amounts are shown × ``scale`` (count whole images, show thousands: ``scale=1e-3``; exact
            integer counts do not drift past ``total`` as summed float steps do).
        **tqdm_kwargs: passed to tqdm in ``'bar'`` mode.
    """
    m = mode()
    if disable or m == "off":
        return _Silent(total, desc, unit, initial, scale=scale)
    if m == "plain":
        return LineProgress(total, desc, unit, initial, scale=scale)
    from tqdm.auto import tqdm

    if scale != 1.0:
        tqdm_kwargs["unit_scale"] = scale
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, **tqdm_kwargs)


def iterate(iterable, desc: str = "", total: int | None = None, disable: bool = False, **tqdm_kwargs: Any):
    """Wraps an iterable with a tqdm bar in ``'bar'`` mode; in ``'plain'`` and ``'off'`` modes it is returned as it
    is (the caller reports per-item summaries itself, e.g. one line per epoch)."""
    if disable or mode() != "bar":
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, **tqdm_kwargs)


@contextlib.contextmanager
def readable_warnings() -> Iterator[None]:
    """Inside the block, warnings are shown as ``UserWarning: message``, without the source file and line of this
    machine's copy of histlib (an exported report travels; the message is what its reader needs). They stay
    warnings: filters and recorders (``pytest.warns``) see them as before."""
    def fmt(message, category, filename, lineno, line=None) -> str:
        return f"{category.__name__}: {message}\n"

    previous = warnings.formatwarning
    warnings.formatwarning = fmt
    try:
        yield
    finally:
        warnings.formatwarning = previous
