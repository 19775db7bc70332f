"""Study runner: executes the notebooks stage by stage with papermill (DESIGN.md §1, contract).

A study is a YAML file under ``studies/`` naming the base dataset, the target datasets, a profile and the settings
of each stage. ``python -m histlib study run STUDY.yaml`` turns it into a plan of notebook executions
(one per stage, dataset and variant), runs each with papermill from the project root, and exports each executed
notebook to HTML under ``results/<study>/notebooks/``.

A step is skipped when a finished execution with the same *step hash* exists (resumable studies). The hash covers
the notebook's source, the parameters passed to it and the hashes of the steps it depends on, so changing the data
settings re-runs everything downstream of the data, and nothing else.

Study YAML (see ``studies/demo.yaml``)::

    name: demo                      # results/<name>/
    profile: demo                   # demo | reduced | paper
    stages: [data, base_gan, classify]
    base:    {name: sample_base, source: data/sample/nct_crc_he, prepare: {PATCH: 64, STRIDE: 32}}
    targets: [{name: sample_target, source: data/sample/kather2016, prepare: {...}, classify: {...}}]
    base_gan: {KIMG: 2, RESOLUTION: 32}          # extra notebook parameters, UPPER_CASE
                                                 # or {checkpoint: PATH}: reuse a trained base GAN, train none
    finetune: {variants: [scratch, pretrained, freeze_d1]}
    classify: {synthetic_from: all, TRAIN_SETS: [real, synthetic], MODELS: [resnet34], SEEDS: [0], EPOCHS: 2}

Classification: the training sets without generated images (``real``, ``real+stain``) are trained once per target
(step ``05_classify__<target>__real``, which also trains the real-data learning curve when ``classify.REAL_FRACTIONS``
lists fractions of the real train split, e.g. ``[0.25, 0.5, 0.75, 1.0]``), every other training set once per GAN
variant named by ``classify.synthetic_from`` (a variant, a list, or ``all``; step ``05_classify__<target>__<variant>``),
on that variant's generated images.

A target may override the finetune/generate/classify settings for itself (``targets[i].classify`` etc.).
Each stage's mapping is passed to its notebook as papermill parameters on top of the paths the runner computes;
unknown parameter names are rejected before anything runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from histlib import runs
from histlib.classify import sets as classify_sets
from histlib.config import PROFILES, nearest, read_yaml
from histlib.progress import MODE_VARIABLE as PROGRESS_VARIABLE
from histlib.study_checks import check_values

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

    @property
    def out_dir(self) -> Path:
        return self.results_root / self.name


def _require(cond: bool, path: Path, msg: str) -> None:
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
    _require(isinstance(doc, dict), path, "expected a mapping at the top level")
    known = {"name", "profile", "stages", "base", "targets", "description", "resources", *STAGES}
    unknown = sorted(set(doc) - known)
    _require(not unknown, path, f"unknown top-level key(s) {unknown}{nearest(unknown[0], known) if unknown else ''}; "
                                f"expected some of {sorted(known)}")
    name = doc.get("name")
    _require(isinstance(name, str) and name.isidentifier(), path, "'name' must be a simple identifier, e.g. demo")
    profile = doc.get("profile", "demo")
    _require(profile in PROFILES, path, f"'profile' must be one of {PROFILES}, got {profile!r}")
    stages = doc.get("stages", list(STAGES))
    _require(isinstance(stages, list) and stages, path, "'stages' must be a non-empty list")
    bad = [s for s in stages if s not in STAGES]
    _require(not bad, path, f"unknown stage(s) {bad}; expected some of {list(STAGES)}")
    stages = [s for s in STAGES if s in stages]  # execution order is fixed
    base = doc.get("base")
    _require(isinstance(base, dict) and "name" in base, path, "'base' must be a mapping with at least 'name'")
    targets = doc.get("targets", []) or []
    _require(isinstance(targets, list) and all(isinstance(t, dict) and "name" in t for t in targets), path,
             "'targets' must be a list of mappings with at least 'name'")
    names = [base["name"]] + [t["name"] for t in targets]
    _require(len(set(names)) == len(names), path, f"dataset names must be unique, got {names}")
    ds_keys = {"name", "source", "prepared", "prepare", "finetune", "generate", "classify", "description"}
    for ds in [base, *targets]:
        extra = sorted(set(ds) - ds_keys)
        _require(not extra, path, f"dataset {ds['name']!r}: unknown key(s) {extra}"
                                  f"{nearest(extra[0], ds_keys) if extra else ''}; expected some of {sorted(ds_keys)}")
        _require(str(ds["name"]).replace("-", "_").isidentifier(), path,
                 f"dataset name {ds['name']!r} must be a simple name (letters, digits, _ or -)")
    for s_name in STAGES:
        _require(isinstance(doc.get(s_name) or {}, dict), path, f"{s_name!r} must be a mapping of settings")
    settings = {s: dict(doc.get(s) or {}) for s in STAGES}
    check_keys(path, base, targets, settings)
    variants = settings["finetune"].get("variants", [])
    bad = [v for v in variants if v not in VARIANTS]
    _require(not bad, path, f"finetune.variants: unknown variant(s) {bad}; expected some of {list(VARIANTS)}")
    from histlib.executors import ExecutorError, check_resources

    try:
        resources = check_resources(doc.get("resources"), list(STAGES))
    except ExecutorError as e:
        raise StudyError(f"{path}: {e}") from None
    return Study(name=name, profile=profile, stages=stages, base=base, targets=targets, settings=settings,
                 path=path, results_root=Path(results_root), description=str(doc.get("description") or "").strip(),
                 resources=resources)


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


def _stage_parameters(stage: str) -> dict[str, Any] | None:
    """``{NAME: default value}`` of a stage notebook's parameters cell, or None when the notebook is missing."""
    import ast

    nb = _notebook_path(STAGES[stage])
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
                _require(isinstance(ds[section], dict), path, f"{where}.{section} must be a mapping of settings")
                places.append((f"{where}.{section}", stage, ds[section]))
    for where, stage, mapping in places:
        params = _stage_parameters(stage)
        runner = RUNNER_KEYS[stage] - ({"variants", "checkpoint"} if "." in where else set())
        valid = set(runner) | set(params or {})
        for key, value in mapping.items():
            key = str(key)
            if key in runner:
                continue
            if params is None and key.isupper():
                continue  # the notebook is missing: validate() says so when the stage runs
            _require(key in valid, path, f"{where}: unknown key {key!r}{nearest(key, valid)}; notebook parameters are "
                                         f"UPPER_CASE ({STAGES[stage]} takes {sorted(params or [])})"
                                         + (f", runner settings here: {sorted(runner)}" if runner else ""))
            expected = _expected_types(key, params.get(key))
            if expected is not None and not _type_ok(value, expected):
                words = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in expected)
                raise StudyError(f"{path}: {where}.{key}={value!r}: expected {words} (or null for the default)")


def _upper(d: dict[str, Any]) -> dict[str, Any]:
    """Only the UPPER_CASE keys: notebook parameters (lower-case keys configure the runner)."""
    return {k: v for k, v in d.items() if k.isupper()}


def plan(study: Study) -> list[Step]:
    """Expands a study into its ordered notebook executions, each with its parameters and dependencies."""
    root = study.out_dir
    prepared = Path("data") / "prepared"
    steps: list[Step] = []
    datasets = [study.base, *study.targets]
    profile = {"PROFILE": study.profile}

    def add(step: Step) -> None:
        steps.append(step)

    data_step = {}
    if "data" in study.stages:
        for ds in datasets:
            params = {"DATASET": ds["name"], "OUT_DIR": (prepared / ds["name"]).as_posix()}
            if "source" in ds:
                params["SOURCE_DIR"] = str(ds["source"])
            params.update(_upper(ds.get("prepare", {})))
            step = Step("data", ds["name"], f"01_data_prep__{ds['name']}", STAGES["data"], params)
            data_step[ds["name"]] = step.name
            add(step)

    def dataset_dir(ds: dict[str, Any]) -> str:
        return str(ds.get("prepared", (prepared / ds["name"]).as_posix()))

    base_name = study.base["name"]
    base_ckpt = (root / base_name / "base_gan" / "default" / "checkpoints" / "latest.pt").as_posix()
    reuse = study.settings["base_gan"].get("checkpoint")
    if reuse:  # an existing base checkpoint (e.g. of another study): fine-tune from it, train no base GAN
        base_ckpt = str(reuse)
        _require(runs.project_path(base_ckpt).is_file(), study.path,
                 f"base_gan.checkpoint: {base_ckpt} not found (a checkpoint file written by train-gan)")
    base_gan_step = None
    if "base_gan" in study.stages and not reuse:
        params = {**profile, "DATASET_DIR": dataset_dir(study.base),
                  "RUN_DIR": (root / base_name / "base_gan" / "default").as_posix(),
                  **_upper(study.settings["base_gan"])}
        step = Step("base_gan", base_name, f"02_base_gan__{base_name}", STAGES["base_gan"], params,
                    [data_step[base_name]] if base_name in data_step else [])
        base_gan_step = step.name
        add(step)

    finetune_steps: dict[tuple[str, str], str] = {}
    for target in study.targets:
        t = target["name"]
        deps_data = [data_step[t]] if t in data_step else []
        if "finetune" in study.stages:
            for variant in study.settings["finetune"].get("variants", ["pretrained"]):
                freeze_d, freeze_g, pretrained = VARIANTS[variant]
                params = {**profile, "DATASET_DIR": dataset_dir(target),
                          "RUN_DIR": (root / t / "finetune" / variant).as_posix(),
                          "RESUME_FROM": base_ckpt if pretrained else None,
                          "FREEZE_D": freeze_d, "FREEZE_G": freeze_g,
                          **_upper(study.settings["finetune"]), **_upper(target.get("finetune", {}))}
                deps = deps_data + ([base_gan_step] if pretrained and base_gan_step else [])
                step = Step("finetune", t, f"03_finetune__{t}__{variant}", STAGES["finetune"], params, deps,
                            inputs=[base_ckpt] if pretrained and reuse else [])
                finetune_steps[(t, variant)] = step.name
                add(step)
        gen_steps: dict[str, str] = {}
        gen = {**study.settings["generate"], **target.get("generate", {})}
        sets = generated_sets(study, target)
        if "generate" in study.stages:
            for variant in study.settings["finetune"].get("variants", ["pretrained"]):
                for label, extra in sets:
                    name = set_label(variant, label)
                    params = {**profile, "DATASET_DIR": dataset_dir(target),
                              "CHECKPOINT": (root / t / "finetune" / variant / "checkpoints" / "latest.pt").as_posix(),
                              "RUN_DIR": (root / t / "generate" / name).as_posix(), **_upper(gen), **extra}
                    deps = deps_data + ([finetune_steps[(t, variant)]] if (t, variant) in finetune_steps else [])
                    step = Step("generate", t, f"04_generate__{t}__{name}", STAGES["generate"], params, deps)
                    gen_steps[name] = step.name
                    add(step)
        if "classify" in study.stages:
            labels = [set_label(v, label) for v in synthetic_variants(study, target) for label, _ in sets]
            for step in _classify_steps(study, target, dataset_dir(target), deps_data, gen_steps, gen, labels):
                add(step)
    if "analysis" in study.stages:
        params = {"STUDY_DIR": root.as_posix(), **_upper(study.settings["analysis"])}
        add(Step("analysis", "all", "06_analysis", STAGES["analysis"], params,
                 [s.name for s in steps if s.stage in ("classify", "generate")]))
    return steps


def synthetic_variants(study: Study, target: dict[str, Any]) -> list[str]:
    """The GAN variants whose generated sets a target's classifiers train on (``classify.synthetic_from``: a variant,
    a list of variants, or ``all`` = every fine-tuned variant of the study)."""
    cls = {**study.settings["classify"], **target.get("classify", {})}
    trained = list(study.settings["finetune"].get("variants", ["pretrained"]))
    value = cls.get("synthetic_from")
    if value is None:
        return []
    if value == "all":
        return trained
    wanted = [value] if isinstance(value, str) else list(value)
    where = f"targets[{study.targets.index(target)}].classify" if "synthetic_from" in target.get("classify", {}) \
        else "classify"
    bad = [v for v in wanted if v not in trained]
    _require(not bad, study.path, f"{where}.synthetic_from: variant(s) {bad} are not trained by this study "
                                  f"(finetune.variants: {trained}); name some of them or 'all'")
    return list(dict.fromkeys(wanted))


def set_label(variant: str, label: str) -> str:
    """The name of a generated set in run folders and tables: the variant, then its selection and amount."""
    return f"{variant}-{label}" if label else variant


def generated_sets(study: Study, target: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``[(label, notebook parameters)]`` of the generated sets of each variant: one per (selection, amount) of
    ``generate.selections`` × ``generate.amounts`` (each optional). The label reads ``realism``, ``2x`` or
    ``realism-2x``; the set without selection and amount has the empty label (the variant's plain name), and
    neither parameter is passed for it, so a study without these axes plans the same steps as before.

    Raises:
        StudyError: an unknown selection, an amount that is not a positive number, a repeated value, or the axis
            given beside the notebook parameter it sets (``selections`` with ``SELECTION``).
    """
    gen = {**study.settings["generate"], **target.get("generate", {})}
    where = f"targets[{study.targets.index(target)}].generate" if {"selections", "amounts"} & set(
        target.get("generate", {})) else "generate"
    from histlib.selection import SELECTIONS  # imports no torch

    selections = gen.get("selections")
    amounts = gen.get("amounts")
    for axis, param, values in (("selections", "SELECTION", selections), ("amounts", "AMOUNT", amounts)):
        if values is None:
            continue
        _require(param not in gen, study.path, f"{where}: give either {axis} (one set each) or {param} (every set), "
                                               "not both")
        _require(isinstance(values, list) and values and len(set(map(str, values))) == len(values), study.path,
                 f"{where}.{axis}={values!r}: expected a non-empty list without repeats")
    for v in selections or []:
        _require(v in SELECTIONS, study.path, f"{where}.selections: {v!r} is not one of {list(SELECTIONS)}")
    for v in amounts or []:
        _require(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, study.path,
                 f"{where}.amounts: {v!r} is not a positive number (generated images per class relative to the "
                 "real train split)")
    out = []
    for sel in selections or [None]:
        for amount in amounts or [None]:
            parts = [p for p in ((sel if sel not in (None, "none") else ""),
                                 (f"{amount:g}x" if amount is not None else "")) if p]
            extra = {**({"SELECTION": sel} if sel not in (None, "none") else {}),
                     **({"AMOUNT": amount} if amount is not None else {})}
            out.append(("-".join(parts), extra))
    return out


def _classify_steps(study: Study, target: dict[str, Any], real_dir: str, deps_data: list[str],
                    gen_steps: dict[str, str], gen: dict[str, Any], labels: list[str]) -> list[Step]:
    """One classify step for the real training set (trained once) and one per generated set (variant, selection
    and amount: ``labels``)."""
    t = target["name"]
    root = study.out_dir
    cls = {**study.settings["classify"], **target.get("classify", {})}
    train_sets = list(cls.get("TRAIN_SETS", ["real"]))
    for ts in train_sets:
        _require(ts in classify_sets.TRAIN_SETS, study.path, f"target {t!r}: classify.TRAIN_SETS: unknown training "
                 f"set {ts!r}; expected some of {list(classify_sets.TRAIN_SETS)}")
    fracs = cls.get("REAL_FRACTIONS", [])
    _require(isinstance(fracs, list) and all(not isinstance(f, bool) and isinstance(f, (int, float)) and 0 < f <= 1
                                             for f in fracs), study.path,
             f"target {t!r}: classify.REAL_FRACTIONS={fracs!r}: expected a list of fractions of the real train split "
             f"in (0, 1], e.g. {list(classify_sets.DEFAULT_REAL_FRACTIONS)}")
    real_sets = [ts for ts in train_sets if not classify_sets.needs_synthetic(ts)]
    synth_sets = [ts for ts in train_sets if classify_sets.needs_synthetic(ts)]
    variants = labels
    _require(not synth_sets or variants, study.path,
             f"target {t!r}: classify.TRAIN_SETS {synth_sets} need generated images: set classify.synthetic_from "
             "to a variant, a list of variants or 'all'")
    # the learning curve's fractions concern the real step only (REAL_FRACTIONS: the real-data learning curve)
    common = {"REAL_DIR": real_dir, "RUN_ROOT": (root / t / "classify").as_posix(),
              **{k: v for k, v in _upper(cls).items() if k not in ("TRAIN_SETS", "REAL_FRACTIONS")}}
    steps = []
    if real_sets:
        fractions = {"REAL_FRACTIONS": cls["REAL_FRACTIONS"]} if "REAL_FRACTIONS" in cls and "real" in real_sets \
            else {}
        steps.append(Step("classify", t, f"05_classify__{t}__real", STAGES["classify"],
                          {**common, "TRAIN_SETS": real_sets, **fractions}, list(deps_data)))
    for variant in variants if synth_sets else []:
        images = root / t / "generate" / variant / "images"
        # several generated sets (NUM_SETS > 1) live in images/set<k>/: classifier seed k reads set k
        synth_dir = images / "set{seed}" if int(gen.get("NUM_SETS") or 1) > 1 else images
        params = {**common, "TRAIN_SETS": synth_sets, "VARIANT": variant, "SYNTH_DIR": synth_dir.as_posix()}
        deps = list(deps_data) + ([gen_steps[variant]] if variant in gen_steps else [])
        steps.append(Step("classify", t, f"05_classify__{t}__{variant}", STAGES["classify"], params, deps))
    return steps


def _notebook_path(notebook: str) -> Path:
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


def hash_steps(steps: list[Step]) -> None:
    """Fills ``step.hash`` from the notebook source, the parameters and the hashes of its dependencies."""
    by_name = {s.name: s for s in steps}
    for step in steps:
        nb = _notebook_path(step.notebook)
        nb_hash = runs.file_sha256(nb) if nb.is_file() else "missing"
        dep_hashes = [by_name[d].hash for d in step.depends if d in by_name]
        inputs = {f: (runs.file_sha256(runs.project_path(f)) if runs.project_path(f).is_file() else "missing")
                  for f in step.inputs}
        key = {"notebook": nb_hash, "params": step.params, "depends": dep_hashes}
        if inputs:
            key["inputs"] = inputs
        step.hash = runs.config_hash(key)


def validate(steps: list[Step], study: Study) -> None:
    """Checks that every notebook exists and accepts the parameters it will be given (before anything runs)."""
    for step in steps:
        nb = _notebook_path(step.notebook)
        if not nb.is_file():
            raise StudyError(f"{study.path}: stage {step.stage!r} needs notebook {nb.relative_to(runs.project_root())}"
                             f", which does not exist yet; remove {step.stage!r} from 'stages'")
        accepted = notebook_parameters(nb)
        unknown = sorted(set(step.params) - set(accepted))
        if unknown:
            raise StudyError(f"{study.path}: stage {step.stage!r} passes parameter(s) {unknown} that "
                             f"{step.notebook} does not declare; it accepts {sorted(accepted)}")


def _state_path(study: Study, step: Step) -> Path:
    return runs.project_path(study.out_dir / "notebooks" / ".state" / f"{step.name}.json")


def is_done(study: Study, step: Step) -> bool:
    """True when this step finished before with the same hash and its HTML report still exists."""
    state = _state_path(study, step)
    if not state.is_file():
        return False
    info = runs.read_json(state)
    html = runs.project_path(study.out_dir / "notebooks" / f"{step.name}.html")
    return info.get("status") == "finished" and info.get("hash") == step.hash and html.is_file()


# Exported reports: tables in the output areas wrap and shrink instead of hiding behind a scroll bar, and the page
# starts with a link back to the study's index
REPORT_STYLE = """<style>
.jp-OutputArea-output table{font-size:12px;max-width:100%} .jp-OutputArea-output td,.jp-OutputArea-output th{
padding:2px 6px;white-space:normal;overflow-wrap:break-word}
.jp-OutputArea-output thead th{overflow-wrap:anywhere} .jp-OutputArea-output{overflow-x:auto}
.histlib-nav{font-family:system-ui,sans-serif;margin:.6em 1em;font-size:14px}
</style>"""


def export_html(ipynb: Path, html: Path, title: str | None = None, index: Path | None = None) -> Path:
    """Exports an executed notebook to a standalone HTML report that reads offline (written atomically).

    nbconvert's template loads MathJax and require.js from a CDN: both are left out (the reports hold no LaTeX and
    no widgets), so a page never asks the network for anything. The page title is ``title`` (default: the file
    name), not "Notebook"; with ``index``, the page starts with a relative link back to it.
    """
    import re

    import nbconvert
    import nbformat

    nb = nbformat.read(str(ipynb), as_version=4)
    for i, cell in enumerate(nb.cells):  # say which parameters won: papermill's cell overrides the defaults above it
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            nb.cells.insert(i, nbformat.v4.new_markdown_cell(
                "**Parameters of this run** (given by the study; they replace the defaults in the cell above)."))
            break
    exporter = nbconvert.HTMLExporter(mathjax_url="", require_js_url="", jquery_url="", widget_renderer_url="",
                                      jupyter_widgets_base_url="", mermaid_js_url="")
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title or html.stem}})
    body = re.sub(r'<script[^>]*\ssrc=""[^>]*>\s*</script>', "", body)
    nav = ""
    if index is not None:
        link = Path(os.path.relpath(index, html.parent)).as_posix()
        nav = f"<nav class='histlib-nav'><a href='{link}'>← study index</a></nav>"
    body = body.replace("</head>", REPORT_STYLE + "</head>", 1)
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav, body, count=1)
    return runs.atomic_write_text(html, body)


def step_title(study: Study, step: Step) -> str:
    """``"demo · 03 finetune · sample_target · pretrained"``: the title of a step's report."""
    parts = step.name.split("__")
    head = parts[0].replace("_", " ", 1)
    return " · ".join([study.name, head, *parts[1:]])


def _step_outputs(step: Step) -> list[tuple[str, Path]]:
    """``(name, path)`` of what this step writes and nothing else: its ``RUN_DIR``; under a ``RUN_ROOT`` (shared by
    every classify step of a dataset) only the run folders of its own training sets and variant."""
    out = []
    if step.params.get("RUN_DIR"):
        out.append(("run_dir", runs.project_path(step.params["RUN_DIR"])))
    if step.params.get("RUN_ROOT"):
        root = runs.project_path(step.params["RUN_ROOT"])
        variant = step.params.get("VARIANT")
        labels = [classify_sets.train_set_label(ts, f) for ts in step.params.get("TRAIN_SETS") or ["real"]
                  for f in ([1.0, *step.params.get("REAL_FRACTIONS", [])] if ts == "real" else [1.0])]
        prefixes = tuple(f"{label}__{variant}__" if variant and classify_sets.needs_synthetic(label) else f"{label}__"
                         for label in labels)
        if root.is_dir():
            out += [(f"run_root/{p.name}", p) for p in sorted(root.iterdir()) if p.name.startswith(prefixes)]
    return out


def _supersede_outputs(study: Study, step: Step) -> None:
    """Moves aside the outputs of an earlier execution of this step that ran with another hash.

    Training and classification resume from (or skip to) what their run folders hold when the config matches;
    but a config holds paths, not contents, so after an upstream change (re-prepared data, a retrained base GAN,
    other settings) the old outputs would be reused. They are moved, not deleted, to
    ``<results>/.superseded/<study>/<step>-<old hash>/``; only the step's own runs move (other classify steps' runs
    in the same ``RUN_ROOT`` stay). A step interrupted with the *same* hash keeps its outputs, so a re-run resumes it.
    """
    state = _state_path(study, step)
    if not state.is_file():
        return
    old = runs.read_json(state).get("hash")
    if old == step.hash:
        return
    dest_root = runs.project_path(study.results_root / ".superseded" / study.name / f"{step.name}-{old}")
    moved = []
    for name, src in _step_outputs(step):
        if src.exists():
            dest = dest_root / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dest))
            moved.append(name)
    if moved:
        print(f"{step.name}: settings changed since the last run; its previous outputs ({len(moved)}) moved to "
              f"{runs.display_path(dest_root)}")


def execute_step(study: Study, step: Step, *, log_output: bool = False, kernel_name: str = "python3") -> Path:
    """Runs one step with papermill from the project root and exports it to HTML.

    The executed notebook is written under a temporary name and renamed when papermill finishes; a failed run
    keeps ``<name>.failed.ipynb`` (and its HTML) for inspection, and raises. ``kernel_name='python3'`` is the
    Python running the study (its own environment), whatever kernel the notebook was last saved with.
    """
    import papermill

    root = runs.project_root()
    out_dir = runs.project_path(study.out_dir / "notebooks")
    out_dir.mkdir(parents=True, exist_ok=True)
    _supersede_outputs(study, step)
    runs.write_json(_state_path(study, step), {"status": "running", "hash": step.hash, "params": step.params,
                                               "notebook": step.notebook})
    final = out_dir / f"{step.name}.ipynb"
    tmp = out_dir / f".{step.name}.running.ipynb"
    t0 = time.time()
    # plain-text progress lines in the kernels (a widget would render empty in the exported HTML); the kernel's own
    # log (its warning about TCP transport on a local machine) is not the user's business
    previous = os.environ.get(PROGRESS_VARIABLE)
    os.environ[PROGRESS_VARIABLE] = "plain"
    try:
        papermill.execute_notebook(str(_notebook_path(step.notebook)), str(tmp), parameters=step.params,
                                   cwd=str(root), log_output=log_output, progress_bar=False,
                                   kernel_name=kernel_name, extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except BaseException as e:
        runs.write_json(_state_path(study, step), {"status": "failed", "hash": step.hash, "params": step.params,
                                                   "notebook": step.notebook, "seconds": round(time.time() - t0, 1),
                                                   "error": _error_line(e)})
        if tmp.exists():
            failed = out_dir / f"{step.name}.failed.ipynb"
            os.replace(tmp, failed)
            try:
                export_html(failed, failed.with_suffix(".html"), f"{step_title(study, step)} (failed)",
                            index=out_dir.parent / "index.html")
            except Exception:  # the failure itself is what the user needs to see; the HTML is a convenience
                pass
        raise
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_VARIABLE, None)
        else:
            os.environ[PROGRESS_VARIABLE] = previous
    os.replace(tmp, final)
    html = export_html(final, final.with_suffix(".html"), step_title(study, step), index=out_dir.parent / "index.html")
    for stale in (out_dir / f"{step.name}.failed.ipynb", out_dir / f"{step.name}.failed.html"):
        stale.unlink(missing_ok=True)
    runs.write_json(_state_path(study, step), {"status": "finished", "hash": step.hash, "params": step.params,
                                               "seconds": round(time.time() - t0, 1), "notebook": step.notebook})
    return html


def run_study(path: str | os.PathLike, *, force: bool = False, only: Iterable[str] | None = None,
              dry_run: bool = False, results_root: str | os.PathLike = "results",
              log_output: bool = False, executor: str = "sequential", jobs: int = 1,
              cluster: str | None = None, probe: bool = True,
              allow_missing_sources: bool = False) -> list[dict[str, Any]]:
    """Runs a study; returns one summary row per step (also written to ``results/<study>/study.json``).

    A step that fails is recorded as ``failed`` (its partial report kept) and only the steps that depend on it are
    skipped (``blocked``); every independent step still runs. ``results/<study>/index.html`` is rebuilt after every
    step. Running the study again retries what failed and skips what finished.

    Args:
        path: the study YAML.
        force: re-run steps even when a finished run with the same hash exists.
        only: restrict to these stages (their dependencies must have run before).
        dry_run: print the plan and what would be skipped, run nothing.
        results_root: where ``<study>/`` goes, relative to the project root.
        log_output: stream the notebooks' output to the terminal.
        executor: ``'sequential'`` (one step after another in this process), ``'local'`` (up to ``jobs`` steps at
            once on this machine) or ``'slurm'`` (submitit jobs; ``cluster='local'``/``'debug'`` for submitit's
            stand-ins), see :mod:`histlib.executors`.
        jobs: steps at once (local, slurm).
        cluster: submitit cluster for ``executor='slurm'`` (default: SLURM).
        probe: with ``dry_run``, time a few seconds of each stage's work that this machine has not measured before
            (:mod:`histlib.estimate`).
        allow_missing_sources: with ``dry_run``, a data step's source that does not exist yet is a warning, not an
            error (to plan a study before its data is downloaded).
    """
    from histlib.executors import ExecutorError, check_executor
    from histlib.progress import progress

    try:
        check_executor(executor, jobs, cluster)
    except ExecutorError as e:
        raise StudyError(str(e)) from None
    study = load_study(runs.project_path(path), results_root)
    steps = plan(study)
    hash_steps(steps)
    only = set(only or [])
    bad = only - set(STAGES)
    if bad:
        raise StudyError(f"--only: unknown stage(s) {sorted(bad)}; expected some of {list(STAGES)}")
    selected = [s for s in steps if not only or s.stage in only]
    validate(selected, study)
    strict = not (dry_run and allow_missing_sources)
    for warning in check_values(study, selected, steps, sources_must_exist=strict):  # before anything runs
        print(f"warning: {warning}", file=sys.stderr)
    rows = [{"step": s.name, "stage": s.stage, "dataset": s.dataset, "hash": s.hash, "status": "pending"}
            for s in selected]
    for conflict in prepared_conflicts(study, selected):
        print(f"warning: {conflict}", file=sys.stderr)
    if dry_run:
        for step, row in zip(selected, rows):
            row["status"] = "finished (skip)" if is_done(study, step) and not force else "to run"
            print(f"{row['status']:>16}  {step.name}")
        _print_plan_summary(study, selected, rows, probe=probe)
        return rows
    by_name = dict(zip((s.name for s in selected), rows))
    _write_study_json(study, path, rows)
    if executor != "sequential":
        return _run_parallel(study, path, selected, rows, force, executor, jobs, cluster)
    bar = progress(total=len(selected), desc=f"study {study.name}", unit="step")
    for step, row in zip(selected, rows):
        failed_deps = [d for d in step.depends if by_name.get(d, {}).get("status") in ("failed", "blocked")]
        if failed_deps:
            row.update(status="blocked", reason=f"depends on {', '.join(failed_deps)}, which did not finish")
            bar.write(f"{step.name}: not run, {row['reason']}")
        elif is_done(study, step) and not force:
            row["status"] = "skipped (finished, same hash)"
            bar.write(f"{step.name}: finished before with the same settings, skipped")
        else:
            t0 = time.time()
            try:
                html = execute_step(study, step, log_output=log_output)
            except Exception as e:  # noqa: BLE001 - one step's failure must not stop independent steps
                row.update(status="failed", seconds=round(time.time() - t0, 1), error=_error_line(e))
                bar.write(f"{step.name}: FAILED after {row['seconds']} s ({row['error']}); report: "
                          f"{runs.display_path(study.out_dir / 'notebooks' / (step.name + '.failed.html'))}")
            else:
                row.update(status="finished", seconds=round(time.time() - t0, 1),
                           html=runs.display_path(html, runs.project_path(study.out_dir)))
                bar.write(f"{step.name}: finished in {row['seconds']} s -> {runs.display_path(html)}")
        bar.update(1)
        _write_study_json(study, path, rows)
    bar.close()
    return rows


_PREPARE_FIELDS = {"SOURCE_DIR": "source", "OUT_DIR": "out", "PATCH": "patch", "STRIDE": "stride", "STAIN": "stain",
                   "VAL_FRACTION": "val_fraction", "TEST_FRACTION": "test_fraction", "SPLIT_FROM": "split_from",
                   "SPLIT_RENAME": "split_rename", "SLIDES": "slides", "GROUP_BY": "group_by", "SEED": "seed",
                   "ANNOTATIONS": "annotations", "MIN_FRACTION": "min_fraction", "RESIZE": "resize",
                   "IMAGE_FORMAT": "image_format"}


def prepared_conflicts(study: Study, steps: list[Step]) -> list[str]:
    """Data steps whose output folder holds a dataset prepared with other settings (e.g. by another study using
    the same dataset name): running them would replace it under the other study's feet."""
    from histlib.data.prepare import PREPARE_JSON, PrepareConfig, prepare_hash

    defaults = _stage_parameters("data") or {}
    out = []
    for step in steps:
        if step.stage != "data" or is_done(study, step):
            continue
        values = {**defaults, **step.params}
        target = runs.project_path(values["OUT_DIR"])
        if not (target / PREPARE_JSON).is_file():
            continue
        cfg = PrepareConfig(**{f: values.get(k) for k, f in _PREPARE_FIELDS.items()}).resolve_paths()
        if runs.read_json(target / PREPARE_JSON).get("config_hash") != prepare_hash(cfg):
            out.append(f"{runs.display_path(target)} holds dataset {step.dataset!r} prepared with other settings "
                       f"(another study?); {step.name} would replace it. Give this dataset another name, or "
                       "'prepared: FOLDER' to use the existing one as it is")
    return out


def _run_parallel(study: Study, path: str | os.PathLike, steps: list[Step], rows: list[dict[str, Any]], force: bool,
                  executor: str, jobs: int, cluster: str | None) -> list[dict[str, Any]]:
    from histlib import executors

    study_file = runs.project_path(path).as_posix()
    # as the study holds it: the step processes (started in the project root) must build the same parameters, and so
    # the same step hashes, as this one (an absolute form would change every RUN_DIR and supersede finished steps)
    results_root = study.results_root.as_posix()
    out = runs.project_path(study.out_dir)
    if executor == "local":
        backend = executors.LocalBackend(jobs, study_file, results_root, out / "notebooks" / ".logs")
    else:
        backend = executors.SubmititBackend(jobs, study_file, results_root, out / ".submitit", cluster,
                                            study.resources.get("slurm", {}))
    done = (lambda step: False) if force else (lambda step: is_done(study, step))
    executors.schedule(steps, rows, is_done=done, backend=backend, resources=study.resources,
                       on_change=lambda: _write_study_json(study, path, rows), durations=_past_durations(study, steps))
    _write_study_json(study, path, rows)
    return rows


def _past_durations(study: Study, steps: list[Step]) -> dict[str, list[float]]:
    """Seconds of this study's steps that finished in earlier invocations, per stage (they seed the runner's ETA)."""
    out: dict[str, list[float]] = {}
    for step in steps:
        state = _state_path(study, step)
        if state.is_file():
            try:
                info = runs.read_json(state)
            except (OSError, ValueError):  # an unreadable state only costs the ETA this estimate
                continue
            if info.get("status") == "finished" and isinstance(info.get("seconds"), (int, float)):
                out.setdefault(step.stage, []).append(float(info["seconds"]))
    return out


def run_single_step(path: str | os.PathLike, step_name: str, results_root: str | os.PathLike = "results") -> Path:
    """Executes one step of a study by name (what a parallel executor runs in each process or job)."""
    study = load_study(runs.project_path(path), results_root)
    steps = plan(study)
    hash_steps(steps)
    step = next((s for s in steps if s.name == step_name), None)
    if step is None:
        raise StudyError(f"{path}: no step named {step_name!r}{nearest(step_name, [s.name for s in steps])}")
    return execute_step(study, step)


def _error_line(e: BaseException) -> str:
    """``ValueError: bad patch`` for an error raised inside a notebook (papermill keeps its name and value)."""
    if hasattr(e, "ename") and hasattr(e, "evalue"):
        return f"{e.ename}: {str(e.evalue)[:300]}"
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def _write_study_json(study: Study, path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """``results/<study>/study.json`` (every step's status) and the index page built from it."""
    from histlib.report import build_index

    runs.write_json(runs.project_path(study.out_dir / "study.json"),
                    {"study": study.name, "profile": study.profile, "file": runs.display_path(path),
                     "description": study.description, "steps": rows})
    build_index(study.out_dir)


def _print_plan_summary(study: Study, steps: list[Step], rows: list[dict[str, Any]], probe: bool = True) -> None:
    from histlib.estimate import estimate, format_seconds

    todo = [s for s, r in zip(steps, rows) if r["status"] == "to run"]
    print(f"\nstudy {study.name!r} (profile {study.profile}): {len(rows)} steps, {len(todo)} to run, "
          f"{len(rows) - len(todo)} finished with the same settings; reports -> {study.out_dir / 'notebooks'}")
    if not todo:
        return
    unit = "CPU" if study.profile == "demo" else "GPU"
    print(f"time of the steps to run, one after another ({unit}; measured on this machine before, else probed now):")
    rows_e = estimate(todo, study.results_root, probe=probe)
    for e in rows_e:
        print(f"  {e['stage']:<9} {e['steps']:>3} step(s)  {format_seconds(e['seconds']):>9}  ({e['basis']})")
    known = [e["seconds"] for e in rows_e if e["seconds"] is not None]
    if known:
        print(f"  {'total':<9} {len(todo):>3} step(s)  {format_seconds(sum(known)):>9}"
              + ("" if len(known) == len(rows_e) else "  (stages without an estimate left out)"))


# ----------------------------------------------------------------------------------------------------------------
# Command line: python -m histlib study {run, plan} STUDY.yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p_run = sub.add_parser("run", help="execute the study's notebooks (skipping finished steps)")
    p_plan = sub.add_parser("plan", help="show the steps, their parameters and which would be skipped")
    for p in (p_run, p_plan):
        p.add_argument("study", help="study YAML, e.g. studies/demo.yaml")
        p.add_argument("--only", nargs="+", choices=list(STAGES), help="run only these stages")
        p.add_argument("--results", default="results", help="results root (default: results)")
    p_plan.add_argument("--no-probe", action="store_true",
                        help="estimate times only from earlier runs on this machine (no few-second probes)")
    p_run.add_argument("--force", action="store_true", help="re-run steps even if finished with the same hash")
    p_plan.add_argument("--allow-missing-sources", action="store_true",
                        help="a dataset source that does not exist yet is a warning (plan before downloading)")
    p_run.add_argument("--log-output", action="store_true", help="stream notebook output to the terminal")
    p_run.add_argument("--executor", default="sequential",
                       help="sequential (default) | local (steps in parallel on this machine) | slurm (submitit jobs)")
    p_run.add_argument("--jobs", type=int, default=1, help="steps at once (local: one GPU each where there are GPUs)")
    p_run.add_argument("--cluster", default=None, help="submitit cluster for --executor slurm: slurm | local | debug")
    p_step = sub.add_parser("step", help="execute one step of a study (what the parallel executors run)")
    p_step.add_argument("study")
    p_step.add_argument("--step", required=True)
    p_step.add_argument("--results", default="results")


def main(args: argparse.Namespace) -> int:
    if args.action == "step":
        try:
            print(runs.display_path(run_single_step(args.study, args.step, args.results)))
        except StudyError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        rows = run_study(args.study, force=getattr(args, "force", False), only=args.only,
                         dry_run=args.action == "plan", results_root=args.results,
                         log_output=getattr(args, "log_output", False),
                         executor=getattr(args, "executor", "sequential"), jobs=getattr(args, "jobs", 1),
                         cluster=getattr(args, "cluster", None), probe=not getattr(args, "no_probe", False),
                         allow_missing_sources=getattr(args, "allow_missing_sources", False))
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.action == "run":
        counts = {k: sum(r["status"].startswith(k) for r in rows) for k in ("finished", "skipped", "failed", "blocked")}
        name = load_study(runs.project_path(args.study)).name
        print(f"study done: {counts['finished']} step(s) run, {counts['skipped']} skipped as finished, "
              f"{counts['failed']} failed, {counts['blocked']} not run because a step they need failed; "
              f"index: {runs.display_path(Path(args.results) / name / 'index.html')}")
        if counts["failed"]:
            for r in rows:
                if r["status"] == "failed":
                    print(f"  failed: {r['step']}: {r.get('error', '')}", file=sys.stderr)
            return 1
    return 0
