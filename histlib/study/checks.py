"""Every value of a study checked at plan time: each step's config is built as its notebook builds it, and checked.

``study plan`` and ``study run`` call :func:`check_values` before any step runs, so a value that its stage would
refuse (``finetune.KIMG: -3``, ``classify.EPOCHS: 0``, ``prepare.VAL_FRACTION: 1.5``, ``RESOLUTION: 33``,
``MODELS: [resnet9999]``), a fine-tune resolution unlike its base's, a dataset without a source to prepare, a
source that does not exist or a ``base_gan.checkpoint`` that is not a GAN checkpoint stops the study with one line
naming the study file and the step, instead of failing when that step runs, after earlier steps have spent their
time. The builders mirror the config cells of ``notebooks/0*.ipynb`` (which stay as they are, so step hashes do not
change); a notebook parameter the study does not set takes the default of the notebook's parameters cell.


Beside the values: :func:`validate` (every notebook exists and declares the parameters it will be given) and
:func:`prepared_conflicts` (a data step that would replace a dataset prepared with other settings).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from histlib import runs
from histlib.study.spec import Step, Study, StudyError, notebook_parameters, notebook_path, stage_parameters
from histlib.study.steps import is_done


def _params(step) -> dict[str, Any]:
    """The step's parameters over its notebook's defaults: what the notebook's config cell will see."""
    return {**(stage_parameters(step.stage) or {}), **step.params}


def _prepare_config(p: dict[str, Any], check: bool = True):
    """The data step's ``PrepareConfig`` from its notebook parameters (``check``: also validate it and its groups)."""
    from histlib.data.prepare import PrepareConfig, check_config, check_groups

    cfg = PrepareConfig(source=p["SOURCE_DIR"], out=p["OUT_DIR"], patch=p["PATCH"], stride=p["STRIDE"],
                        stain=p["STAIN"], val_fraction=p["VAL_FRACTION"], test_fraction=p["TEST_FRACTION"],
                        folds=p["FOLDS"], fold=p["FOLD"], split_from=p["SPLIT_FROM"],
                        split_rename=p["SPLIT_RENAME"], slides=p["SLIDES"],
                        group_by=p["GROUP_BY"], seed=p["SEED"], annotations=p["ANNOTATIONS"],
                        min_fraction=p["MIN_FRACTION"], resize=p["RESIZE"], image_format=p["IMAGE_FORMAT"],
                        workers=p["WORKERS"], allow_missing_group=p["ALLOW_MISSING_GROUP"]).resolve_paths()
    if check:
        check_config(cfg)
        check_groups(cfg)
    return cfg


def _train_config(p: dict[str, Any], stage: str):
    from histlib.gan.config import TrainConfig

    common = dict(data_dir=p["DATASET_DIR"], kimg=p["KIMG"], resolution=p["RESOLUTION"], seed=p["SEED"],
                  resume_from=p["RESUME_FROM"], freeze_d=p["FREEZE_D"], freeze_g=p["FREEZE_G"], **p["OVERRIDES"])
    if stage == "base_gan":
        cfg = TrainConfig.from_profile(p["PROFILE"], batch_size=p["BATCH"], metrics_every_kimg=p["METRICS_EVERY_KIMG"],
                                       **common)
    else:
        cfg = TrainConfig.from_profile(p["PROFILE"], stage="finetune", class_map=p["CLASS_MAP"], **common)
    return cfg.validate()


def _generate_config(p: dict[str, Any]):
    from histlib.generate.config import GenerateConfig

    return GenerateConfig.from_profile(p["PROFILE"], checkpoint=p["CHECKPOINT"], dataset_dir=p["DATASET_DIR"],
                                       images_per_class=p["IMAGES_PER_CLASS"], num_sets=p["NUM_SETS"],
                                       truncation_psi=p["TRUNCATION_PSI"], seed=p["SEED"], extractor=p["EXTRACTOR"],
                                       metrics=p["METRICS"], fidelity=p["FIDELITY"], selection=p["SELECTION"],
                                       oversample=p["OVERSAMPLE"], amount=p["AMOUNT"])


def _classify_config(p: dict[str, Any]):
    import timm

    from histlib.classify.config import ClassifyConfig
    from histlib.classify.sets import TRAIN_SETS
    from histlib.config import from_dict

    cfg = from_dict(ClassifyConfig, p["CONFIG_OVERRIDES"], real_dir=str(runs.project_path(p["REAL_DIR"])),
                    synthetic_dir=str(runs.project_path(p["SYNTH_DIR"])) if p["SYNTH_DIR"] else None,
                    real_per_class=p["REAL_PER_CLASS"], synthetic_per_class=p["SYNTH_PER_CLASS"],
                    image_size=p["IMAGE_SIZE"], epochs=p["EPOCHS"], batch_size=p["BATCH"], lr=p["LR"],
                    balanced_sampling=p["BALANCED"], pretrained=p["PRETRAINED"], variant=p["VARIANT"],
                    extra_test_sets=p["EXTRA_TEST_SETS"], stain_strength=p["STAIN_STRENGTH"])
    for fraction in p["REAL_FRACTIONS"]:  # each a run of the learning curve
        dataclasses.replace(cfg, real_fraction=fraction)
    unknown = [m for m in p["MODELS"] if not isinstance(m, str) or not timm.is_model(m.partition(".")[0])]
    if unknown:
        raise ValueError(f"MODELS: {unknown} not timm model name(s) (see timm.list_models(), e.g. 'resnet34')")
    bad_sets = [ts for ts in p["TRAIN_SETS"] if ts not in TRAIN_SETS]
    if bad_sets:
        raise ValueError(f"TRAIN_SETS: {bad_sets} unknown; expected some of {list(TRAIN_SETS)}")
    return cfg


def base_resolution(checkpoint: str | Path) -> int:
    """The resolution of a GAN checkpoint (refused with one error when the file is not one)."""
    from histlib.gan.checkpoint import load_checkpoint

    ckpt = load_checkpoint(runs.project_path(checkpoint))
    try:
        return int(ckpt["network_kwargs"]["G"]["img_resolution"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{ckpt['path']}: a GAN checkpoint without network_kwargs.G.img_resolution") from None


def check_values(study, steps: list, all_steps: list | None = None, sources_must_exist: bool = True) -> list[str]:
    """Builds the config of every step in ``steps`` and runs its checks; see the module docstring.

    Args:
        study: the loaded study.
        steps: the steps that will run (``--only`` may leave some out).
        all_steps: every step of the plan (the base GAN's step gives the base resolution); default ``steps``.
        sources_must_exist: a data step's source that does not exist (and the step is not finished) is an error;
            False (``study plan --allow-missing-sources``): a warning, to plan a study before its data is there.

    Returns:
        Warnings (sources not found, when they need not exist).

    Raises:
        StudyError: one line naming the study file, the step and the value.
    """
    all_steps = steps if all_steps is None else all_steps
    base = _base_resolution(study, all_steps)
    warnings = []
    for step in steps:
        try:
            p = _params(step)
            if step.stage == "data":
                missing = _check_source(step, p, is_done(study, step))
                if missing and sources_must_exist:
                    raise ValueError(missing)
                warnings += [f"{study.path}: step {step.name}: {missing}; it must be there when the step runs"] \
                    if missing else []
                _prepare_config(p)
            elif step.stage in ("base_gan", "finetune"):
                cfg = _train_config(p, step.stage)
                if step.stage == "finetune" and cfg.resume_from and base and cfg.resolution != base[0]:
                    raise ValueError(f"resolution {cfg.resolution} px, but the base GAN ({base[1]}) is {base[0]} px; "
                                     f"set finetune.RESOLUTION: {base[0]}")
                if step.stage == "finetune" and cfg.resume_from and cfg.class_map:
                    _check_class_map(study, cfg, all_steps)
            elif step.stage == "generate":
                _generate_config(p)
            elif step.stage == "classify":
                _classify_config(p)
        except StudyError:
            raise
        except KeyError:
            continue  # a notebook without the parameters its stage's config cell uses (a stand-in): nothing to build
        except (ValueError, TypeError, OSError) as e:
            raise StudyError(f"{study.path}: step {step.name}: {' '.join(str(e).split())}") from None
    return warnings


def _check_class_map(study, cfg, steps: list) -> None:
    """``finetune.CLASS_MAP``'s names against the target's classes and the base's, where they are known now: a
    prepared dataset's manifest, a reused base checkpoint's classes (else checked when the step starts)."""
    from histlib.gan.config import check_class_map

    classes = _dataset_classes(cfg.data_dir)
    reuse = study.settings["base_gan"].get("checkpoint")
    if reuse:
        from histlib.gan.checkpoint import load_checkpoint

        base_classes = load_checkpoint(runs.project_path(reuse)).get("classes")
    else:
        base_step = next((s for s in steps if s.stage == "base_gan"), None)
        base_classes = _dataset_classes(_params(base_step)["DATASET_DIR"]) if base_step else None
    try:
        check_class_map(cfg.class_map, classes or list(cfg.class_map),
                        base_classes if base_classes or reuse else list(cfg.class_map.values()))
    except ValueError as e:
        raise ValueError(str(e).replace("TrainConfig.class_map", "finetune.CLASS_MAP", 1)) from None


def _dataset_classes(data_dir: str) -> list[str] | None:
    """The class names of a prepared dataset (or class folder), or None when it is not there yet."""
    from histlib.data.manifest import load_manifest

    root = runs.project_path(data_dir)
    if not root.exists():
        return None
    return sorted(load_manifest(root)["class"].unique().tolist())


def _check_source(step, p: dict[str, Any], done: bool) -> str | None:
    """Refuses a dataset without a source; returns what is wrong with a source path that does not exist."""
    if "SOURCE_DIR" not in step.params:
        raise ValueError(f"dataset {step.dataset!r} has no 'source' to prepare (a raw <class>/<image> folder or "
                         "slides); set source:, or prepared: with 'data' left out of stages")
    if not done and not runs.project_path(p["SOURCE_DIR"]).exists():
        return (f"source {p['SOURCE_DIR']}: not found (relative paths are from the project root; "
                "study plan --allow-missing-sources plans before the data is there)")
    return None


def _base_resolution(study, steps: list) -> tuple[int, str] | None:
    """``(resolution, what)`` of the base the fine-tuned variants start from, or None when there is none."""
    reuse = study.settings["base_gan"].get("checkpoint")
    if reuse:
        try:
            return base_resolution(reuse), str(reuse)
        except (ValueError, OSError) as e:
            raise StudyError(f"{study.path}: base_gan.checkpoint: {' '.join(str(e).split())}") from None
    base_step = next((s for s in steps if s.stage == "base_gan"), None)
    if base_step is None:
        return None
    try:
        return int(_train_config(_params(base_step), "base_gan").resolution), base_step.name
    except (KeyError, ValueError, TypeError):
        return None  # reported with the base step itself


def validate(steps: list[Step], study: Study) -> None:
    """Checks that every notebook exists and accepts the parameters it will be given (before anything runs)."""
    for step in steps:
        nb = notebook_path(step.notebook)
        if not nb.is_file():
            raise StudyError(f"{study.path}: stage {step.stage!r} needs notebook {nb.relative_to(runs.project_root())}"
                             f", which does not exist yet; remove {step.stage!r} from 'stages'")
        accepted = notebook_parameters(nb)
        unknown = sorted(set(step.params) - set(accepted))
        if unknown:
            raise StudyError(f"{study.path}: stage {step.stage!r} passes parameter(s) {unknown} that "
                             f"{step.notebook} does not declare; it accepts {sorted(accepted)}")


def prepared_conflicts(study: Study, steps: list[Step]) -> list[str]:
    """Data steps whose output folder holds a dataset prepared with other settings (e.g. by another study using
    the same dataset name): running them would replace it under the other study's feet."""
    from histlib.data.prepare import PREPARE_JSON, prepare_hash

    out = []
    for step in steps:
        if step.stage != "data" or is_done(study, step):
            continue
        values = _params(step)
        target = runs.project_path(values["OUT_DIR"])
        if not (target / PREPARE_JSON).is_file():
            continue
        # built as the data step builds it (every parameter, ALLOW_MISSING_GROUP included), so the hashes agree
        cfg = _prepare_config(values, check=False)
        if runs.read_json(target / PREPARE_JSON).get("config_hash") != prepare_hash(cfg):
            out.append(f"{runs.display_path(target)} holds dataset {step.dataset!r} prepared with other settings "
                       f"(another study?); {step.name} would replace it. Give this dataset another name, or "
                       "'prepared: FOLDER' to use the existing one as it is")
    return out
