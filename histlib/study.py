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
    classify: {TRAIN_SETS: [real], MODELS: [resnet34], SEEDS: [0], EPOCHS: 2}

A target may override the finetune/generate/classify settings for itself (``targets[i].classify`` etc.).
Each stage's mapping is passed to its notebook as papermill parameters on top of the paths the runner computes;
unknown parameter names are rejected before anything runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from histlib import runs

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

PROFILES = ("demo", "reduced", "paper")


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
    import yaml

    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: study file not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise StudyError(f"{path}: not valid YAML ({e})") from None
    _require(isinstance(doc, dict), path, "expected a mapping at the top level")
    known = {"name", "profile", "stages", "base", "targets", "description", *STAGES}
    unknown = sorted(set(doc) - known)
    _require(not unknown, path, f"unknown top-level key(s) {unknown}; expected some of {sorted(known)}")
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
        _require(not extra, path, f"dataset {ds['name']!r}: unknown key(s) {extra}; expected some of {sorted(ds_keys)}")
        _require(str(ds["name"]).replace("-", "_").isidentifier(), path,
                 f"dataset name {ds['name']!r} must be a simple name (letters, digits, _ or -)")
    settings = {s: dict(doc.get(s) or {}) for s in STAGES}
    variants = settings["finetune"].get("variants", [])
    bad = [v for v in variants if v not in VARIANTS]
    _require(not bad, path, f"finetune.variants: unknown variant(s) {bad}; expected some of {list(VARIANTS)}")
    return Study(name=name, profile=profile, stages=stages, base=base, targets=targets, settings=settings,
                 path=path, results_root=Path(results_root))


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
    base_gan_step = None
    if "base_gan" in study.stages:
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
                step = Step("finetune", t, f"03_finetune__{t}__{variant}", STAGES["finetune"], params, deps)
                finetune_steps[(t, variant)] = step.name
                add(step)
        gen_steps: dict[str, str] = {}
        if "generate" in study.stages:
            for variant in study.settings["finetune"].get("variants", ["pretrained"]):
                params = {**profile, "DATASET_DIR": dataset_dir(target),
                          "CHECKPOINT": (root / t / "finetune" / variant / "checkpoints" / "latest.pt").as_posix(),
                          "RUN_DIR": (root / t / "generate" / variant).as_posix(),
                          **_upper(study.settings["generate"]), **_upper(target.get("generate", {}))}
                deps = deps_data + ([finetune_steps[(t, variant)]] if (t, variant) in finetune_steps else [])
                step = Step("generate", t, f"04_generate__{t}__{variant}", STAGES["generate"], params, deps)
                gen_steps[variant] = step.name
                add(step)
        if "classify" in study.stages:
            cls = {**study.settings["classify"], **target.get("classify", {})}
            synth_variant = cls.get("synthetic_from")
            params = {"REAL_DIR": dataset_dir(target), "RUN_ROOT": (root / t / "classify").as_posix(),
                      **_upper(cls)}
            deps = list(deps_data)
            if synth_variant:
                gen = {**study.settings["generate"], **target.get("generate", {})}
                images = root / t / "generate" / synth_variant / "images"
                # several generated sets (NUM_SETS > 1) live in images/set<k>/: classifier seed k reads set k
                params["SYNTH_DIR"] = (images / "set{seed}" if int(gen.get("NUM_SETS", 1)) > 1 else images).as_posix()
                if synth_variant in gen_steps:
                    deps.append(gen_steps[synth_variant])
            add(Step("classify", t, f"05_classify__{t}", STAGES["classify"], params, deps))
    if "analysis" in study.stages:
        params = {"STUDY_DIR": root.as_posix(), **_upper(study.settings["analysis"])}
        add(Step("analysis", "all", "06_analysis", STAGES["analysis"], params,
                 [s.name for s in steps if s.stage in ("classify", "generate")]))
    return steps


def _notebook_path(notebook: str) -> Path:
    return runs.project_path(Path("notebooks") / notebook)


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, Any]:
    """The names and defaults of a notebook's ``parameters`` cell (papermill's inspection)."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def hash_steps(steps: list[Step]) -> None:
    """Fills ``step.hash`` from the notebook source, the parameters and the hashes of its dependencies."""
    by_name = {s.name: s for s in steps}
    for step in steps:
        nb = _notebook_path(step.notebook)
        nb_hash = runs.file_sha256(nb) if nb.is_file() else "missing"
        dep_hashes = [by_name[d].hash for d in step.depends if d in by_name]
        step.hash = runs.config_hash({"notebook": nb_hash, "params": step.params, "depends": dep_hashes})


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


def export_html(ipynb: Path, html: Path) -> Path:
    """Exports an executed notebook to a standalone HTML report (written atomically)."""
    import nbconvert
    import nbformat

    nb = nbformat.read(str(ipynb), as_version=4)
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    return runs.atomic_write_text(html, body)


# parameters naming a step's own output folder (the data stage's OUT_DIR is keyed by its config in prepare.json)
OUTPUT_PARAMS = ("RUN_DIR", "RUN_ROOT")


def _supersede_outputs(study: Study, step: Step) -> None:
    """Moves aside the outputs of an earlier execution of this step that ran with another hash.

    Training and classification resume from (or skip to) what their run folders hold when the config matches;
    but a config holds paths, not contents, so after an upstream change (re-prepared data, a retrained base GAN,
    other settings) the old outputs would be reused. They are moved, not deleted, to
    ``<results>/.superseded/<study>/<step>-<old hash>/``. A step interrupted with the *same* hash keeps its
    outputs, so a re-run resumes it.
    """
    state = _state_path(study, step)
    if not state.is_file():
        return
    old = runs.read_json(state).get("hash")
    if old == step.hash:
        return
    dest_root = runs.project_path(study.results_root / ".superseded" / study.name / f"{step.name}-{old}")
    for key in OUTPUT_PARAMS:
        if step.params.get(key):
            src = runs.project_path(step.params[key])
            if src.exists():
                dest = dest_root / key.lower()
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(src), str(dest))
                print(f"{step.name}: settings changed since the last run; previous outputs moved to {dest}")


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
    try:
        papermill.execute_notebook(str(_notebook_path(step.notebook)), str(tmp), parameters=step.params,
                                   cwd=str(root), log_output=log_output, progress_bar=False,
                                   kernel_name=kernel_name)
    except BaseException:
        if tmp.exists():
            failed = out_dir / f"{step.name}.failed.ipynb"
            os.replace(tmp, failed)
            try:
                export_html(failed, failed.with_suffix(".html"))
            except Exception:  # the failure itself is what the user needs to see; the HTML is a convenience
                pass
        raise
    os.replace(tmp, final)
    html = export_html(final, final.with_suffix(".html"))
    for stale in (out_dir / f"{step.name}.failed.ipynb", out_dir / f"{step.name}.failed.html"):
        stale.unlink(missing_ok=True)
    runs.write_json(_state_path(study, step), {"status": "finished", "hash": step.hash, "params": step.params,
                                               "seconds": round(time.time() - t0, 1), "notebook": step.notebook})
    return html


def run_study(path: str | os.PathLike, *, force: bool = False, only: Iterable[str] | None = None,
              dry_run: bool = False, results_root: str | os.PathLike = "results",
              log_output: bool = False) -> list[dict[str, Any]]:
    """Runs a study; returns one summary row per step (also written to ``results/<study>/study.json``).

    Args:
        path: the study YAML.
        force: re-run steps even when a finished run with the same hash exists.
        only: restrict to these stages (their dependencies must have run before).
        dry_run: print the plan and what would be skipped, run nothing.
        results_root: where ``<study>/`` goes, relative to the project root.
        log_output: stream the notebooks' output to the terminal.
    """
    from tqdm.auto import tqdm

    study = load_study(runs.project_path(path), results_root)
    steps = plan(study)
    hash_steps(steps)
    only = set(only or [])
    bad = only - set(STAGES)
    if bad:
        raise StudyError(f"--only: unknown stage(s) {sorted(bad)}; expected some of {list(STAGES)}")
    selected = [s for s in steps if not only or s.stage in only]
    validate(selected, study)
    rows: list[dict[str, Any]] = []
    bar = tqdm(selected, desc=f"study {study.name}", unit="step", disable=dry_run)
    for step in bar:
        bar.set_postfix_str(step.name)
        done = is_done(study, step)
        row = {"step": step.name, "stage": step.stage, "dataset": step.dataset, "hash": step.hash}
        if dry_run:
            row["status"] = "skip (finished)" if done and not force else "run"
            print(f"{row['status']:>16}  {step.name}  {step.params}")
        elif done and not force:
            row["status"] = "skipped (finished, same hash)"
            tqdm.write(f"{step.name}: finished before with the same settings, skipped")
        else:
            t0 = time.time()
            html = execute_step(study, step, log_output=log_output)
            root = runs.project_root()
            shown = html.relative_to(root) if html.is_relative_to(root) else html
            row.update(status="finished", seconds=round(time.time() - t0, 1), html=shown.as_posix())
            tqdm.write(f"{step.name}: finished in {row['seconds']} s -> {row['html']}")
        rows.append(row)
    if not dry_run:
        runs.write_json(runs.project_path(study.out_dir / "study.json"),
                        {"study": study.name, "profile": study.profile, "file": str(path), "steps": rows})
    return rows


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
    p_run.add_argument("--force", action="store_true", help="re-run steps even if finished with the same hash")
    p_run.add_argument("--log-output", action="store_true", help="stream notebook output to the terminal")


def main(args: argparse.Namespace) -> int:
    try:
        rows = run_study(args.study, force=getattr(args, "force", False), only=args.only,
                         dry_run=args.action == "plan", results_root=args.results,
                         log_output=getattr(args, "log_output", False))
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.action == "run":
        ran = sum(r["status"] == "finished" for r in rows)
        print(f"study done: {ran} step(s) run, {len(rows) - ran} skipped; reports under "
              f"{Path(args.results) / load_study(runs.project_path(args.study)).name / 'notebooks'}")
    return 0
