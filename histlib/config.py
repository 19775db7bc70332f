"""One ``@dataclass`` per stage, plain types only, written to ``config.json`` (DESIGN.md §2, house style).

The dataclasses live beside the code that uses them (``histlib.data.prepare.PrepareConfig``,
``histlib.train_gan.TrainConfig``, ``histlib.classify.ClassifyConfig``, …); this module gathers them under one
name and holds the helpers every stage uses to build a config from a dict (``from_dict``) and to apply a
profile.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, TypeVar

T = TypeVar("T")

# name -> "module:Class", resolved lazily so importing histlib.config stays cheap.
_STAGE_CONFIGS = {
    "PrepareConfig": "histlib.data.prepare:PrepareConfig",
    "TrainConfig": "histlib.train_gan:TrainConfig",
    "ClassifyConfig": "histlib.classify:ClassifyConfig",
}

PROFILES = ("demo", "reduced", "paper")


def __getattr__(name: str) -> Any:
    if name in _STAGE_CONFIGS:
        module, cls = _STAGE_CONFIGS[name].split(":")
        return getattr(importlib.import_module(module), cls)
    raise AttributeError(f"module 'histlib.config' has no attribute {name!r}")


def from_dict(cls: type[T], values: dict[str, Any] | None = None, **overrides: Any) -> T:
    """Builds dataclass ``cls`` from a dict, rejecting unknown keys with one clear error.

    Args:
        cls: the stage's config dataclass.
        values: field values (e.g. read from ``config.json`` or a study YAML).
        **overrides: more field values; they win over ``values``.
    """
    merged = {**(values or {}), **overrides}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(merged) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; expected some of {sorted(names)}")
    return cls(**merged)
