"""A study file: reading it, checking every key and type, and the names it may use (stages, variants, profiles).

A study is a YAML file under ``studies/`` naming the base dataset, the target datasets, a profile and the settings
of each stage (see ``studies/demo.yaml``)::

    name: demo                      # results/<name>/
    profile: demo                   # demo | reduced | paper
    stages: [data, base_gan, classify]
    base:    {name: sample_base, source: data/sample/nct_crc_he, prepare: {PATCH: 64, STRIDE: 32}}
    targets: [{name: sample_target, source: data/sample/kather2016, prepare: {...}, classify: {...}}]
    base_gan: {KIMG: 2, RESOLUTION: 32}          # extra notebook parameters, UPPER_CASE
                                                 # or {checkpoint: PATH}: reuse a trained base GAN, train none
    finetune: {variants: [scratch, pretrained, freeze_d1]}
    classify: {synthetic_from: all, TRAIN_SETS: [real, synthetic], MODELS: [resnet34], SEEDS: [0], EPOCHS: 2}

A target may override the finetune/generate/classify settings for itself (``targets[i].classify`` etc.).
A target with ``folds: K`` is cross-validated: it stands for K targets ``<name>_fold0 … <name>_fold<K-1>``, each
prepared with ``FOLDS: K, FOLD: k`` (its test split is fold k of a group k-fold) and run through every stage on its
own; the analysis pools their held-out predictions into one row per setting (``histlib.analysis.answer``).
Lower-case keys configure the runner; every other key of a stage mapping is an UPPER_CASE notebook parameter,
checked here against the notebook's ``parameters`` cell (name and type) before anything runs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

from histlib import runs
from histlib.config import PROFILES, nearest, read_yaml
from histlib.study.executors import ExecutorError, check_resources

# stage -> notebook file, in execution order
STAGES: dict[str, str] = {
    "data": "01_data_prep.ipynb",
    "base_gan": "02_base_gan.ipynb",
    "finetune": "03_finetune.ipynb",
    "generate": "04_generate.ipynb",
    "classify": "05_classify.ipynb",
    "analysis": "06_analysis.ipynb",
}

# GAN fine-tuning variants of the paper (contract: these names) -> (freeze_d, freeze_g, pretrained)
VARIANTS: dict[str, tuple[int, int, bool]] = {
    "scratch": (0, 0, False),
    "pretrained": (0, 0, True),
    "freeze_d1": (1, 0, True),
    "freeze_d2": (2, 0, True),
    "freeze_d3": (3, 0, True),
    "freeze_g1": (0, 1, True),
    "freeze_g2": (0, 2, True),
    "freeze_g3": (0, 3, True),
    "freeze_d1_g2": (1, 2, True),
    "freeze_d2_g2": (2, 2, True),
}


class StudyError(ValueError):
    """A study file that cannot be run as written."""


@dataclasses.dataclass
class Step:
    """One notebook execution of a study."""

    stage: str
    dataset: str
    name: str  # unique within the study, used for the executed notebook's file names
    notebook: str
    params: dict[str, Any]
    depends: list[str] = dataclasses.field(default_factory=list)
    hash: str = ""
    inputs: list[str] = dataclasses.field(default_factory=list)  # files outside the study whose content is hashed
    upstream: str = ""  # the part of ``hash`` that is not this step's own parameters (notebook, dependencies, inputs)
    # the same two from the notebook file's bytes, as runners before the code-only notebook hash computed them: a
    # step that finished under one of them is current (its state file is brought to ``hash`` when the study runs)
    legacy_hash: str = ""
    legacy_upstream: str = ""


@dataclasses.dataclass
class Study:
    """A parsed study file."""

    name: str
    profile: str
    stages: list[str]
    base: dict[str, Any]
    targets: list[dict[str, Any]]
    settings: dict[str, dict[str, Any]]
    path: Path
    results_root: Path = Path("results")
    description: str = ""
    resources: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # where each target is written in the file (``targets[1]``): a target with ``folds`` runs as several
    places: dict[str, str] = dataclasses.field(default_factory=dict)

    def place(self, target: dict[str, Any]) -> str:
        """``targets[i]``: where ``target`` (one of :attr:`targets`) is written in the study file."""
        return self.places.get(str(target["name"])) or f"targets[{self.targets.index(target)}]"

    @property
    def out_dir(self) -> Path:
        return self.results_root / self.name


def require(cond: bool, path: Path, msg: str) -> None:
    """Raises :class:`StudyError` ``"<study file>: <msg>"`` unless ``cond``."""
    if not cond:
        raise StudyError(f"{path}: {msg}")


def load_study(path: str | os.PathLike, results_root: str | os.PathLike = "results") -> Study:
    """Reads and validates a study YAML file.

    Args:
        path: the study file.
        results_root: folder under which ``<study name>/`` is written (relative to the project root).

    Raises:
        StudyError: naming the file and the field when the study is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: study file not found")
    try:
        doc = read_yaml(path)  # not UTF-8, duplicate keys, alias bombs: one error naming the file
    except ValueError as e:
        raise StudyError(str(e)) from None
    require(isinstance(doc, dict), path, "expected a mapping at the top level")
    known = {"name", "profile", "stages", "base", "targets", "description", "resources", *STAGES}
    unknown = sorted(set(doc) - known)
    require(not unknown, path, f"unknown top-level key(s) {unknown}{nearest(unknown[0], known) if unknown else ''}; "
                               f"expected some of {sorted(known)}")
    name = doc.get("name")
    require(isinstance(name, str) and name.isidentifier(), path, "'name' must be a simple identifier, e.g. demo")
    profile = doc.get("profile", "demo")
    require(profile in PROFILES, path, f"'profile' must be one of {PROFILES}, got {profile!r}")
    stages = doc.get("stages", list(STAGES))
    require(isinstance(stages, list) and stages, path, "'stages' must be a non-empty list")
    bad = [s for s in stages if s not in STAGES]
    require(not bad, path, f"unknown stage(s) {bad}; expected some of {list(STAGES)}")
    stages = [s for s in STAGES if s in stages]  # execution order is fixed
    base = doc.get("base")
    require(isinstance(base, dict) and "name" in base, path, "'base' must be a mapping with at least 'name'")
    targets = doc.get("targets", []) or []
    require(isinstance(targets, list) and all(isinstance(t, dict) and "name" in t for t in targets), path,
            "'targets' must be a list of mappings with at least 'name'")
    ds_keys = {"name", "source", "prepared", "prepare", "finetune", "generate", "classify", "description"}
    require("folds" not in base, path, "base: 'folds' is for targets (the base GAN's data is not tested)")
    for ds in [base, *targets]:
        extra = sorted(set(ds) - ds_keys - ({"folds"} if ds is not base else set()))
        require(not extra, path, f"dataset {ds['name']!r}: unknown key(s) {extra}"
                                 f"{nearest(extra[0], ds_keys) if extra else ''}; expected some of {sorted(ds_keys)}")
        require(str(ds["name"]).replace("-", "_").isidentifier(), path,
                f"dataset name {ds['name']!r} must be a simple name (letters, digits, _ or -)")
    for s_name in STAGES:
        require(isinstance(doc.get(s_name) or {}, dict), path, f"{s_name!r} must be a mapping of settings")
    settings = {s: dict(doc.get(s) or {}) for s in STAGES}
    check_keys(path, base, targets, settings)  # on the targets as written: errors name their place in the file
    places = {}
    expanded = []
    folded = any("folds" in t for t in targets)
    for i, target in enumerate(targets):
        for t in _fold_targets(path, i, target):
            places[str(t["name"])] = f"targets[{i}]"
            expanded.append(t)
    targets = expanded
    names = [base["name"]] + [t["name"] for t in targets]
    require(len(set(names)) == len(names), path, f"dataset names must be unique, got {names}"
            + (" (a target with 'folds: K' runs as <name>_fold0 … <name>_fold<K-1>)" if folded else ""))
    variants = settings["finetune"].get("variants", [])
    bad = [v for v in variants if v not in VARIANTS]
    require(not bad, path, f"finetune.variants: unknown variant(s) {bad}; expected some of {list(VARIANTS)}")
    try:
        resources = check_resources(doc.get("resources"), list(STAGES))
    except ExecutorError as e:
        raise StudyError(f"{path}: {e}") from None
    return Study(name=name, profile=profile, stages=stages, base=base, targets=targets, settings=settings,
                 path=path, results_root=Path(results_root), description=str(doc.get("description") or "").strip(),
                 resources=resources, places=places)


def _fold_targets(path: Path, i: int, target: dict[str, Any]) -> list[dict[str, Any]]:
    """A target as it runs: itself, or with ``folds: K`` its K folds (module docstring)."""
    if "folds" not in target:
        return [target]
    k = target["folds"]
    where = f"targets[{i}]"
    require(isinstance(k, int) and not isinstance(k, bool) and k >= 2, path,
            f"{where}.folds={k!r}: expected an integer >= 2 (the number of cross-validation folds)")
    prepare = target.get("prepare", {})
    require(isinstance(prepare, dict), path, f"{where}.prepare must be a mapping of settings")
    require("prepared" not in target, path, f"{where}: 'folds' prepares each fold from 'source'; drop 'prepared'")
    clash = sorted({"FOLDS", "FOLD"} & set(prepare)) + (["TEST_FRACTION"] if prepare.get("TEST_FRACTION") else [])
    require(not clash, path, f"{where}.prepare: {clash} set with 'folds' (each fold's test split is one fold)")
    rest = {key: v for key, v in target.items() if key != "folds"}
    return [{**copy.deepcopy(rest), "name": f"{target['name']}_fold{f}",
             "prepare": {**copy.deepcopy(prepare), "FOLDS": k, "FOLD": f}} for f in range(k)]


# Lower-case keys configure the runner; every other key of a stage mapping is an UPPER_CASE notebook parameter.
RUNNER_KEYS = {"data": set(), "base_gan": {"checkpoint"}, "finetune": {"variants"},
               "generate": {"selections", "amounts"}, "classify": {"synthetic_from"}, "analysis": set()}
DATASET_SECTIONS = {"prepare": "data", "finetune": "finetune", "generate": "generate", "classify": "classify"}
# Types of the notebook parameters whose default is None (None itself is always accepted: the profile's value).
NONE_DEFAULT_TYPES: dict[str, tuple[type, ...]] = {
    "STAIN": (str,), "SPLIT_FROM": (str,), "SPLIT_RENAME": (dict,), "SLIDES": (bool,), "ANNOTATIONS": (str,),
    "RESIZE": (int,), "KIMG": (int, float), "RESOLUTION": (int,), "BATCH": (int,), "RESUME_FROM": (str,),
    "CLASS_MAP": (dict,),
    "METRICS_EVERY_KIMG": (int, float), "IMAGES_PER_CLASS": (int, dict), "NUM_SETS": (int,), "SYNTH_DIR": (str,),
    "VARIANT": (str,), "REAL_PER_CLASS": (int,), "SYNTH_PER_CLASS": (int,), "AMOUNT": (int, float),
}
_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
               dict: "a mapping"}


def stage_parameters(stage: str) -> dict[str, Any] | None:
    """``{NAME: default value}`` of a stage notebook's parameters cell, or None when the notebook is missing."""
    import ast

    nb = notebook_path(STAGES[stage])
    if not nb.is_file():
        return None
    out = {}
    for name, info in notebook_parameters(nb).items():
        try:
            out[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            out[name] = None
    return out


def _expected_types(name: str, default: Any) -> tuple[type, ...] | None:
    if default is None:
        return NONE_DEFAULT_TYPES.get(name)
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, int):
        return (int,)
    if isinstance(default, float):
        return (int, float)
    return (type(default),)


def _type_ok(value: Any, expected: tuple[type, ...]) -> bool:
    if value is None:
        return True
    if isinstance(value, bool) and bool not in expected:
        return False
    return isinstance(value, expected)


def check_keys(path: Path, base: dict[str, Any], targets: list[dict[str, Any]],
               settings: dict[str, dict[str, Any]]) -> None:
    """Every key of every stage mapping must be known, and every notebook parameter's value of the right type.

    Raises:
        StudyError: naming the key, its place in the file (``targets[1].classify.synthetic_frm``) and the nearest
            valid name, or the parameter, its value and the expected type.
    """
    places: list[tuple[str, str, dict[str, Any]]] = [(stage, stage, settings[stage]) for stage in STAGES]
    for i, ds in enumerate([base, *targets]):
        where = "base" if i == 0 else f"targets[{i - 1}]"
        for section, stage in DATASET_SECTIONS.items():
            if section in ds:
                require(isinstance(ds[section], dict), path, f"{where}.{section} must be a mapping of settings")
                places.append((f"{where}.{section}", stage, ds[section]))
    for where, stage, mapping in places:
        params = stage_parameters(stage)
        runner = RUNNER_KEYS[stage] - ({"variants", "checkpoint"} if "." in where else set())
        valid = set(runner) | set(params or {})
        for key, value in mapping.items():
            key = str(key)
            if key in runner:
                continue
            if params is None and key.isupper():
                continue  # the notebook is missing: validate() says so when the stage runs
            require(key in valid, path, f"{where}: unknown key {key!r}{nearest(key, valid)}; notebook parameters are "
                                        f"UPPER_CASE ({STAGES[stage]} takes {sorted(params or [])})"
                                        + (f", runner settings here: {sorted(runner)}" if runner else ""))
            expected = _expected_types(key, params.get(key))
            if expected is not None and not _type_ok(value, expected):
                words = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in expected)
                raise StudyError(f"{path}: {where}.{key}={value!r}: expected {words} (or null for the default)")


def notebook_path(notebook: str) -> Path:
    """``notebooks/<notebook>`` under the project root."""
    return runs.project_path(Path("notebooks") / notebook)


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, Any]:
    """The names and defaults of a notebook's ``parameters`` cell (papermill's inspection).

    Inspected once per file version: a study checks each stage's parameters for every place they are set and every
    step, which cost seconds per invocation (and per step process under a parallel executor)."""
    path = Path(notebook).resolve()
    stat = path.stat()
    return dict(_inspect(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=32)
def _inspect(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    import papermill

    return papermill.inspect_notebook(path)

