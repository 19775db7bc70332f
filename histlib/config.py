"""Helpers shared by the stages' config dataclasses (one ``@dataclass`` per stage, plain types, ``config.json``).

The dataclasses live beside the code that uses them (``histlib.data.prepare.PrepareConfig``,
``histlib.gan.config.TrainConfig``, ``histlib.classify.ClassifyConfig``, ``histlib.generate.GenerateConfig``,
``histlib.fidelity.FidelityConfig``). This module builds them from dicts (``from_dict``: unknown keys are one clear
error naming the nearest field) and checks every field's type against its annotation (``check_types``), so a value
of the wrong type (``kimg="three"``, ``epochs="two"``, ``image_size="32"``) is refused where it enters, naming the
field, the value and what was expected, instead of failing deep inside training.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# The profile names, listed once: study files are checked against them and the GAN stage's profile table
# (``histlib.gan.config.PROFILES``) holds one entry per name.
PROFILES = ("demo", "reduced", "paper")
# What a study's results mean under each profile: the first line of its index page (the caveats that follow are
# read from the study's own run folders).
PROFILE_ABOUT = {
    "demo": "A plumbing run: tiny networks on the CPU at 32 px, trained for minutes, to check that every stage runs "
            "and writes what the next one reads. Its numbers mean nothing about generative augmentation.",
    "reduced": "A reduced run: one GPU at 64 px with a fraction of the publication's training budget; its numbers "
               "show tendencies, not the publication's values.",
    "paper": "The publication's settings (256 px StyleGAN2, paper-sized sets, three classifiers × three seeds).",
}


def nearest(name: str, candidates: typing.Iterable[str]) -> str:
    """``" (did you mean 'X'?)"`` for the closest candidate (case-insensitive), or ``""``."""
    cands = list(candidates)
    by_lower = {c.lower(): c for c in cands}
    if name.lower() in by_lower:
        return f" (did you mean {by_lower[name.lower()]!r}?)"
    match = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[match[0]]!r}?)" if match else ""


def from_dict(cls: type[T], values: dict[str, Any] | None = None, **overrides: Any) -> T:
    """Builds dataclass ``cls`` from a dict, rejecting unknown keys with one clear error.

    Args:
        cls: the stage's config dataclass.
        values: field values (e.g. read from ``config.json`` or a study YAML).
        **overrides: more field values; they win over ``values``.
    """
    if values is not None and not isinstance(values, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping of field names to values, got {type(values).__name__}")
    merged = {**(values or {}), **overrides}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(merged) - names)
    if unknown:
        hint = nearest(unknown[0], names)
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}{hint}; expected some of {sorted(names)}")
    return cls(**merged)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return {list: "a list", dict: "a mapping", tuple: "a list"}.get(origin, str(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
            dict: "a mapping", Any: "anything"}.get(tp, getattr(tp, "__name__", str(tp)))


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple) or tp in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict or tp is dict:
        args = typing.get_args(tp)
        return isinstance(value, dict) and (not args or all(_matches(k, args[0]) and _matches(v, args[1])
                                                            for k, v in value.items()))
    return isinstance(value, tp) if isinstance(tp, type) else True


def check_types(obj: Any) -> None:
    """Raises ``ValueError`` naming the first field of dataclass instance ``obj`` whose value does not match its
    annotation (``int`` refuses ``"32"`` and ``True``; ``float`` accepts integers but not NaN or infinity)."""
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        tp = hints.get(f.name, Any)
        if not _matches(value, tp):
            raise ValueError(f"{cls.__name__}.{f.name}={value!r}: expected {_describe(tp)}")


def apply_profile(cls: type[T], profile: str, profile_values: dict[str, Any], overrides: dict[str, Any]) -> T:
    """``cls`` built from a profile's values with ``overrides`` on top (unknown names: one clear error).

    An override of ``None`` means "not set here": the profile's value, else the field's own default (fields whose
    default is None keep None), so a notebook can pass all of its parameters and leave the unset ones to the
    profile.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}{nearest(unknown[0], fields)}; expected some "
                         f"of {sorted(fields)}")
    kept = {k: v for k, v in overrides.items()
            if v is not None or (k not in profile_values and fields[k].default is None)}
    return cls(**{**profile_values, "profile": profile, **kept})


# ----------------------------------------------------------------------------------------------------------------
# YAML files (studies)

MAX_YAML_NODES = 100_000  # a study has a few hundred; nine levels of nine-fold aliases have 387 million


def read_yaml(path: str | os.PathLike) -> Any:
    """Reads a YAML file with ``yaml.safe_load``'s types, refusing what would make it a different or huge document.

    Refused, each with one error naming the file: bytes that are not UTF-8, a key given twice in one mapping (YAML
    would keep the last silently; ``<<`` merge keys may still be overridden), aliases that expand to more than
    :data:`MAX_YAML_NODES` nodes or contain themselves (an "alias bomb" takes hours and gigabytes to expand), and
    nesting too deep to read.

    Raises:
        FileNotFoundError: no such file.
        ValueError: any of the above, or not valid YAML.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    loader = _strict_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_YAML_NODES:
            raise ValueError(f"{path}: its aliases expand to more than {MAX_YAML_NODES:,} values; write the values "
                             "out instead of nesting anchors")
        return loader.construct_document(node)
    except DuplicateKeyError as e:
        raise ValueError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        where = " ".join(str(e).replace('"<unicode string>", ', "").split())
        raise ValueError(f"{path}: not valid YAML ({where})") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to read (or an alias inside itself)") from None
    finally:
        loader.dispose()


def _expanded_size(node: Any, memo: dict[int, int], active: set[int]) -> int:
    """Values in the document under ``node`` once every alias is expanded, counted without expanding: an aliased
    node is one object in the composed graph, counted from ``memo`` at each use."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise RecursionError  # an alias inside the node it names: expanding it never ends
    active.add(key)
    total = 1
    for item in node.value if isinstance(node.value, list) else []:
        for child in item if isinstance(item, tuple) else (item,):  # mapping items are (key, value) pairs
            total += _expanded_size(child, memo, active)
        if total > MAX_YAML_NODES:  # the answer is already "too large"
            break
    active.discard(key)
    memo[key] = total
    return total


class DuplicateKeyError(ValueError):
    """A YAML mapping names one key twice."""


@functools.cache
def _strict_loader() -> type:
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """``safe_load``'s types; a key given twice in one mapping is an error (YAML keeps the last silently)."""

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *defaults' may be overridden on purpose
                        continue
                    key = self.construct_object(key_node, deep=True)
                    if isinstance(key, typing.Hashable):
                        if key in seen:
                            raise DuplicateKeyError(f"key {key!r} given twice in one mapping (line "
                                                    f"{key_node.start_mark.line + 1}); YAML would keep the last")
                        seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader
