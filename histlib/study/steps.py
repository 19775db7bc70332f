"""A study's steps: the plan (one notebook execution per stage, dataset and variant), their hashes and states.

A step is skipped when a finished execution with the same *step hash* exists (resumable studies). The hash covers
the notebook's code (:func:`notebook_code_hash`: its code cells and their tags; markdown, comments, blank lines and
outputs aside, so rewording a notebook's text does not re-run a finished study), the parameters passed to it and
the hashes of the steps it depends on, so changing the data settings re-runs everything downstream of the data, and
nothing else. The GAN stages' hashes also cover their profile's entry of the GAN profile table
(``histlib.gan.config.PROFILES``): a changed default of the networks, training or generation re-runs the GAN steps
(and the classification of their images), not the data or the real-only classifiers.

Classification: the training sets without generated images (``real``, ``real+stain``) are trained once per target
(step ``05_classify__<target>__real``, which also trains the real-data learning curve when ``classify.REAL_FRACTIONS``
lists fractions of the real train split, e.g. ``[0.25, 0.5, 0.75, 1.0]``), every other training set once per GAN
variant named by ``classify.synthetic_from`` (a variant, a list, or ``all``; step ``05_classify__<target>__<variant>``),
on that variant's generated images.

Each stage's mapping is passed to its notebook as papermill parameters on top of the paths computed here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from histlib import runs
from histlib.classify import sets as classify_sets
from histlib.study.spec import STAGES, VARIANTS, Step, Study, notebook_path, require, stage_parameters


def _upper(d: dict[str, Any]) -> dict[str, Any]:
    """Only the UPPER_CASE keys: notebook parameters (lower-case keys configure the runner)."""
    return {k: v for k, v in d.items() if k.isupper()}


PREPARED = Path("data") / "prepared"  # where the data steps write each dataset, under the project root


def _data_steps(study: Study) -> list[Step]:
    """One data step per dataset, the base first, when the study prepares its data."""
    out = []
    for ds in [study.base, *study.targets] if "data" in study.stages else []:
        params = {"DATASET": ds["name"], "OUT_DIR": (PREPARED / ds["name"]).as_posix()}
        if "source" in ds:
            params["SOURCE_DIR"] = str(ds["source"])
        params.update(_upper(ds.get("prepare", {})))
        out.append(Step("data", ds["name"], f"01_data_prep__{ds['name']}", STAGES["data"], params))
    return out


def plan(study: Study) -> list[Step]:
    """Expands a study into its ordered notebook executions, each with its parameters and dependencies."""
    root = study.out_dir
    profile = {"PROFILE": study.profile}
    steps = _data_steps(study)
    add = steps.append
    data_step = {step.dataset: step.name for step in steps}

    def dataset_dir(ds: dict[str, Any]) -> str:
        return str(ds.get("prepared", (PREPARED / ds["name"]).as_posix()))

    base_name = study.base["name"]
    base_ckpt = (root / base_name / "base_gan" / "default" / "checkpoints" / "latest.pt").as_posix()
    reuse = study.settings["base_gan"].get("checkpoint")
    if reuse:  # an existing base checkpoint (e.g. of another study): fine-tune from it, train no base GAN
        base_ckpt = str(reuse)
        require(runs.project_path(base_ckpt).is_file(), study.path,
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
    where = f"{study.place(target)}.classify" if "synthetic_from" in target.get("classify", {}) \
        else "classify"
    bad = [v for v in wanted if v not in trained]
    require(not bad, study.path, f"{where}.synthetic_from: variant(s) {bad} are not trained by this study "
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
    where = f"{study.place(target)}.generate" if {"selections", "amounts"} & set(
        target.get("generate", {})) else "generate"
    from histlib.selection import SELECTIONS  # imports no torch

    selections = gen.get("selections")
    amounts = gen.get("amounts")
    for axis, param, values in (("selections", "SELECTION", selections), ("amounts", "AMOUNT", amounts)):
        if values is None:
            continue
        require(param not in gen, study.path, f"{where}: give either {axis} (one set each) or {param} (every set), "
                                              "not both")
        require(isinstance(values, list) and values and len(set(map(str, values))) == len(values), study.path,
                f"{where}.{axis}={values!r}: expected a non-empty list without repeats")
    for v in selections or []:
        require(v in SELECTIONS, study.path, f"{where}.selections: {v!r} is not one of {list(SELECTIONS)}")
    for v in amounts or []:
        require(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, study.path,
                f"{where}.amounts: {v!r} is not a positive number (generated images per class relative to the "
                "real train split)")
    out = []
    for sel in selections or [None]:
        for amount in amounts or [None]:
            parts = [p for p in ((sel if sel not in (None, "none") else ""),
                                 (classify_sets.amount_label(amount) if amount is not None else "")) if p]
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
        require(ts in classify_sets.TRAIN_SETS, study.path, f"target {t!r}: classify.TRAIN_SETS: unknown training "
                f"set {ts!r}; expected some of {list(classify_sets.TRAIN_SETS)}")
    fracs = cls.get("REAL_FRACTIONS", [])
    require(isinstance(fracs, list) and all(not isinstance(f, bool) and isinstance(f, (int, float)) and 0 < f <= 1
                                            for f in fracs), study.path,
            f"target {t!r}: classify.REAL_FRACTIONS={fracs!r}: expected a list of fractions of the real train split "
            f"in (0, 1], e.g. {list(classify_sets.DEFAULT_REAL_FRACTIONS)}")
    real_sets = [ts for ts in train_sets if not classify_sets.needs_synthetic(ts)]
    synth_sets = [ts for ts in train_sets if classify_sets.needs_synthetic(ts)]
    variants = labels
    require(not synth_sets or variants, study.path,
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


GAN_STAGES = ("base_gan", "finetune", "generate")


def _gan_profile(name: str | None) -> Any:
    """The GAN profile table's entry the step runs with (its defaults are part of what a GAN step computes)."""
    from histlib.gan.config import PROFILES  # imports no torch

    return PROFILES.get(name) if name is not None else None


def notebook_code_hash(path: str | Path) -> str:
    """sha256 of a notebook's code: its code cells in order, each with its tags (papermill injects the study's
    values after the cell tagged ``parameters``) and its source without comments, trailing spaces and blank lines.
    Markdown cells, outputs and other metadata do not count, so rewording a notebook's text re-runs nothing.
    A cell with a shell escape or magic line (``!``, ``%``, ``?``) or that the tokenizer cannot read counts by its
    exact source. Comments are found by Python's tokenizer; the rest is text, so the hash is the same on every
    Python version."""
    import hashlib
    import io
    import json
    import tokenize

    h = hashlib.sha256()
    cells = json.loads(Path(path).read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        tags = sorted((cell.get("metadata") or {}).get("tags") or [])
        lines = source.split("\n")  # the rows the tokenizer counts (str.splitlines also splits at \f, \x1c, ...)
        if any(line.lstrip().startswith(("!", "%", "?")) for line in lines):
            h.update(json.dumps(["source", tags, source]).encode())
            continue
        try:
            comments = [t.start for t in tokenize.generate_tokens(io.StringIO(source).readline)
                        if t.type == tokenize.COMMENT]
        except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
            h.update(json.dumps(["source", tags, source]).encode())
            continue
        for row, col in reversed(comments):  # (1-based row, column) of each comment: cut the line there
            lines[row - 1] = lines[row - 1][:col]
        code = [line.rstrip() for line in lines if line.strip()]
        h.update(json.dumps(["code", tags, code]).encode())
    return h.hexdigest()


def hash_steps(steps: list[Step]) -> None:
    """Fills ``step.hash`` from the notebook's code (:func:`notebook_code_hash`), the parameters and the hashes of
    its dependencies, and ``step.upstream`` from all of that but the parameters (a step whose own settings changed
    and nothing upstream of it keeps the classifier runs its new settings still plan:
    :func:`histlib.study.execution._supersede_outputs`).

    ``step.legacy_hash`` and ``step.legacy_upstream`` are the same from the notebook file's bytes, as earlier
    runners computed them: a step that finished under the legacy hash is current, not re-run."""
    by_name = {s.name: s for s in steps}
    for step in steps:
        nb = notebook_path(step.notebook)
        nb_code = notebook_code_hash(nb) if nb.is_file() else "missing"
        nb_file = runs.file_sha256(nb) if nb.is_file() else "missing"
        inputs = {f: (runs.file_sha256(runs.project_path(f)) if runs.project_path(f).is_file() else "missing")
                  for f in step.inputs}
        for legacy in (False, True):
            deps = [(by_name[d].legacy_hash if legacy else by_name[d].hash) for d in step.depends if d in by_name]
            key = {"notebook": nb_file, "params": step.params, "depends": deps} if legacy else \
                {"notebook_code": nb_code, "params": step.params, "depends": deps}
            if inputs:
                key["inputs"] = inputs
            if step.stage in GAN_STAGES:
                key["gan_profile"] = _gan_profile(step.params.get("PROFILE"))
            full = runs.config_hash(key)
            upstream = runs.config_hash({k: v for k, v in key.items() if k != "params"})
            if legacy:
                step.legacy_hash, step.legacy_upstream = full, upstream
            else:
                step.hash, step.upstream = full, upstream


def is_current(step: Step, info: dict[str, Any]) -> bool:
    """True when a step's state (its parsed state file) is a finished execution with this step's hash (or the
    legacy hash of an earlier runner: :func:`hash_steps`)."""
    return info.get("status") == "finished" and info.get("hash") in {step.hash, step.legacy_hash or step.hash}


def state_path(study: Study, step: Step) -> Path:
    """``<results>/<study>/notebooks/.state/<step>.json``: the step's status, hash, parameters and seconds."""
    return runs.project_path(study.out_dir / "notebooks" / ".state" / f"{step.name}.json")


def is_done(study: Study, step: Step) -> bool:
    """True when this step finished before with the same hash and its HTML report still exists."""
    state = state_path(study, step)
    if not state.is_file():
        return False
    info = runs.read_json(state)
    html = runs.project_path(study.out_dir / "notebooks" / f"{step.name}.html")
    return is_current(step, info) and html.is_file()


def same_upstream(step: Step, info: dict) -> bool:
    """True when a step's earlier state (``info``) ran with this step's upstream (or its legacy form)."""
    return bool(info.get("upstream")) and info.get("upstream") in {step.upstream, step.legacy_upstream}


# a classify step's own parameters that choose which runs it trains, not how each run trains
RUN_CHOICE_PARAMS = frozenset({"TRAIN_SETS", "MODELS", "SEEDS", "REAL_FRACTIONS"})


def runs_to_keep(study: Study, step: Step) -> set[str]:
    """The planned run folders of a classify step that already hold a finished run (``metrics.json``) and that its
    next execution will skip, for the time estimates: as :func:`histlib.study.execution._supersede_outputs` keeps
    them (no state file yet, the same hash, or the same upstream), and only when the settings that changed since
    its last execution choose runs (``RUN_CHOICE_PARAMS``); another epoch count or image size retrains them all."""
    planned = planned_runs(step)
    if not planned:
        return set()
    state = state_path(study, step)
    if state.is_file():
        info = runs.read_json(state)
        if info.get("hash") not in {step.hash, step.legacy_hash or step.hash}:
            before = info.get("params") or {}
            changed = {k for k in {*before, *step.params} if before.get(k) != step.params.get(k)}
            if not same_upstream(step, info) or not changed <= RUN_CHOICE_PARAMS:
                return set()
    root = runs.project_path(step.params["RUN_ROOT"])
    return {name for name in planned if (root / name / "metrics.json").is_file()}


def classify_params(step: Step) -> dict[str, Any]:
    """A classify step's parameters with notebook 05's defaults for those the step does not give."""
    return {**(stage_parameters("classify") or {}), **step.params}


def planned_runs(step: Step) -> set[str]:
    """The run folder names a classify step's parameters train (:func:`histlib.classify.sets.run_name`), with the
    notebook's defaults for parameters the step does not give; empty for any other step."""
    if step.stage != "classify" or not step.params.get("RUN_ROOT"):
        return set()
    p = classify_params(step)
    planned = classify_sets.planned_runs(p.get("TRAIN_SETS") or [], p.get("MODELS") or [], p.get("SEEDS") or [],
                                         p.get("REAL_FRACTIONS") or [])
    return {classify_sets.run_name(ts, model, seed, p.get("VARIANT"), f) for ts, f, model, seed in planned}


def images_trained(run_root: str | Path, names) -> int | None:
    """Images the classifier runs ``names`` under ``run_root`` trained on, summed (the last ``nimg`` of each run's
    ``stats.jsonl``: epochs × training images, fewer when a run stopped early); None when a run has no stats."""
    import json

    total = 0
    for name in names:
        stats = Path(run_root) / name / "stats.jsonl"
        lines = stats.read_text(encoding="utf-8").splitlines() if stats.is_file() else []
        try:
            total += int(json.loads(lines[-1])["nimg"])
        except (IndexError, KeyError, TypeError, ValueError):
            return None
    return total
