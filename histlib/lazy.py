"""Packages whose public names load their module on first use (``histlib.data``, ``histlib.metrics``,
``histlib.classify``, ``histlib.generate``), so importing a package, or a light submodule of it, never imports
torch."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``.

    Args:
        package: the package's ``__name__``.
        exports: public name -> the module that defines it: a submodule's name (``"config"``) or a full module path
            (``"histlib.audit"``).
    """

    def module_of(name: str) -> str:
        target = exports[name]
        return target if target.startswith("histlib.") else f"{package}.{target}"

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(module_of(name)), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
