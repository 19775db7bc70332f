"""The study runner: plans, validation, hashing, resumable execution with papermill."""

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from histlib import study
from histlib.study.checks import check_values
from histlib.study.execution import _runs_trained, _step_outputs, _supersede_outputs, refresh_state
from histlib.study.spec import StudyError
from histlib.study.steps import notebook_code_hash

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", [*(f"studies/{n}.yaml" for n in ("demo", "reduced", "paper", "template")),
                                  *sorted(p.relative_to(ROOT).as_posix()
                                          for p in (ROOT / "benchmarks" / "studies").glob("*.yaml"))])
def test_committed_studies_parse_and_plan(name):
    s = study.load_study(ROOT / name)
    reuse = s.settings["base_gan"].get("checkpoint")
    if reuse and not (ROOT / reuse).is_file():  # another study's base GAN: not in a fresh clone
        with pytest.raises(StudyError, match=r"base_gan\.checkpoint: .* not found"):
            study.plan(s)
        del s.settings["base_gan"]["checkpoint"]  # the rest of the study plans with a base GAN of its own
    steps = study.plan(s)
    study.hash_steps(steps)
    check_values(s, steps, sources_must_exist=False)  # every step's config builds (OVERRIDES' names included)
    names = [st.name for st in steps]
    assert len(names) == len(set(names)) and all(st.hash for st in steps)
    order = {n: i for i, n in enumerate(names)}
    for st in steps:  # dependencies run first
        assert all(order[d] < order[st.name] for d in st.depends)


def test_paper_study_has_the_paper_variants():
    s = study.load_study(ROOT / "studies" / "paper.yaml")
    finetune = [st for st in study.plan(s) if st.stage == "finetune"]
    assert {st.name.split("__")[-1] for st in finetune} == set(study.VARIANTS)
    fd1 = next(st for st in finetune if st.name.endswith("__freeze_d1_g2"))
    assert fd1.params["FREEZE_D"] == 1 and fd1.params["FREEZE_G"] == 2 and fd1.params["RESUME_FROM"]
    scratch = next(st for st in finetune if st.name.endswith("__scratch"))
    assert scratch.params["RESUME_FROM"] is None


@pytest.mark.parametrize("text, match", [
    ("name: x\nbase: {name: a}\nstages: [data, bogus]\n", "unknown stage"),
    ("name: x\nprofile: huge\nbase: {name: a}\n", "profile"),
    ("name: x\nbase: {name: a}\nfinetune: {variants: [freeze_d9]}\n", "freeze_d9"),
    ("name: x\nbase: {name: a}\ntargets: [{name: a}]\n", "unique"),
    ("name: x\nbase: {name: a, sauce: b}\n", "sauce"),
    ("name: [x\n", "not valid YAML"),
    ("nme: x\nbase: {name: a}\n", "nme"),
    ("name: x\nbase: {name: a, prepare: {patch: 64}}\n",
     r"base.prepare: unknown key 'patch' \(did you mean 'PATCH'\?\)"),
    ("name: x\nbase: {name: a}\nfinetune: {variant: [freeze_d1]}\n",
     r"finetune: unknown key 'variant' \(did you mean 'variants'\?\)"),
    ("name: x\nbase: {name: a}\ntargets: [{name: b, classify: {synthetic_frm: pretrained}}]\n",
     r"targets\[0\].classify: unknown key 'synthetic_frm' \(did you mean 'synthetic_from'\?\)"),
    ("name: x\nbase: {name: a, prepare: {PATCH: sixty-four}}\n",
     r"base.prepare.PATCH='sixty-four': expected an integer"),
    ("name: x\nbase: {name: a}\nclassify: {EPOCHS: 2.5}\n", r"classify.EPOCHS=2.5: expected an integer"),
    ("name: x\nbase: {name: a}\nbase_gan: {KIMG: three}\n", r"base_gan.KIMG='three': expected an integer or a number"),
    ("name: x\nbase: {name: a}\ngenerate: {FIDELITY: 1}\n", r"generate.FIDELITY=1: expected true or false"),
    ("name: x\nbase: {name: a}\ntargets: [{name: b, source: s, folds: 1}]\n",
     r"targets\[0\].folds=1: expected an integer >= 2"),
    ("name: x\nbase: {name: a}\ntargets: [{name: b, source: s, folds: 3, prepare: {TEST_FRACTION: 0.2}}]\n",
     r"targets\[0\].prepare: \['TEST_FRACTION'\] set with 'folds'"),
    ("name: x\nbase: {name: a}\ntargets: [{name: b, prepared: p, folds: 3}]\n", r"drop 'prepared'"),
    ("name: x\nbase: {name: a, folds: 3}\n", r"base: 'folds' is for targets"),
    ("name: x\nbase: {name: a}\ntargets: [{name: b, source: s, folds: 2}, {name: b_fold1}]\n",
     r"unique, .* \(a target with 'folds: K' runs as <name>_fold0"),
    ("name: x\nbase: {name: a}\ntargets: [{name: b, source: s, folds: 3}, {name: c, classify: {synthetic_frm: p}}]\n",
     r"targets\[1\].classify: unknown key 'synthetic_frm'"),  # the place in the file, not among the folds
    ("name: x\nbase: {name: a}\ntargets: [{name: b, source: s, folds: 3, prepare: []}]\n",
     r"targets\[0\].prepare must be a mapping"),
])
def test_bad_study_files_get_one_clear_error(tmp_path, text, match):
    p = _write(tmp_path / "s.yaml", text)
    with pytest.raises(study.StudyError, match=match) as e:
        study.load_study(p)
    assert "s.yaml" in str(e.value)


def test_a_target_with_folds_runs_as_one_target_per_fold(tmp_path):
    """``folds: 3`` on a target: three targets ``<name>_fold<k>`` prepared with ``FOLDS: 3, FOLD: k`` and their own
    settings, each with its own steps from data to classify; the analysis step waits for all of them."""
    text = (ROOT / "studies" / "demo.yaml").read_text()
    s = study.load_study(_write(tmp_path / "cv.yaml", text))
    target = dict(s.targets[0])
    target["prepare"] = {k: v for k, v in target["prepare"].items() if k != "TEST_FRACTION"}
    doc = {"name": "cv", "profile": s.profile, "stages": s.stages, "base": s.base,
           "targets": [{**target, "folds": 3}], **{k: v for k, v in s.settings.items() if v}}
    cv = study.load_study(_write(tmp_path / "cv.yaml", yaml.safe_dump(doc)))
    names = [t["name"] for t in cv.targets]
    assert names == [f"{target['name']}_fold{k}" for k in range(3)]
    assert [(t["prepare"]["FOLDS"], t["prepare"]["FOLD"]) for t in cv.targets] == [(3, 0), (3, 1), (3, 2)]
    assert all(t["prepare"][k] == v for t in cv.targets for k, v in target.get("prepare", {}).items())
    steps = study.plan(cv)
    data = [x for x in steps if x.stage == "data"]
    assert [x.params.get("FOLD") for x in data] == [None, 0, 1, 2]
    for name in names:
        assert any(x.stage == "classify" and x.dataset == name for x in steps)
    analysis_step = next(x for x in steps if x.stage == "analysis")
    assert [cv.place(t) for t in cv.targets] == ["targets[0]"] * 3
    cv.targets[2]["classify"] = {"synthetic_from": "freeze_d3"}  # an error found at plan time names the file's place
    with pytest.raises(study.StudyError, match=r"targets\[0\].classify.synthetic_from: variant\(s\) \['freeze_d3'\]"):
        study.plan(cv)
    assert {x.name for x in steps if x.stage == "classify"} <= set(analysis_step.depends)


def test_hash_changes_propagate_downstream_only():
    s = study.load_study(ROOT / "studies" / "demo.yaml")
    a = study.plan(s)
    study.hash_steps(a)
    s.targets[0]["prepare"]["PATCH"] = 48
    b = study.plan(s)
    study.hash_steps(b)
    ha, hb = {x.name: x.hash for x in a}, {x.name: x.hash for x in b}
    assert ha["01_data_prep__sample_base"] == hb["01_data_prep__sample_base"]
    assert ha["02_base_gan__sample_base"] == hb["02_base_gan__sample_base"]
    assert ha["01_data_prep__sample_target"] != hb["01_data_prep__sample_target"]
    assert ha["05_classify__sample_target__real"] != hb["05_classify__sample_target__real"]
    assert ha["05_classify__sample_target__pretrained"] != hb["05_classify__sample_target__pretrained"]


def test_a_changed_gan_default_reruns_the_gan_steps_only(monkeypatch):
    from histlib.gan import config as gan_config

    s = study.load_study(ROOT / "studies" / "demo.yaml")
    a = study.plan(s)
    study.hash_steps(a)
    changed = {**gan_config.PROFILES["demo"], "train": {**gan_config.PROFILES["demo"]["train"], "r1_gamma": 1.0}}
    monkeypatch.setitem(gan_config.PROFILES, "demo", changed)
    b = study.plan(s)
    study.hash_steps(b)
    ha, hb = {x.name: x.hash for x in a}, {x.name: x.hash for x in b}
    same = {n for n in ha if ha[n] == hb[n]}
    assert {n for n in ha if n.startswith(("01_", "02_", "03_", "04_", "05_"))} - same == {
        n for n in ha if n.startswith(("02_", "03_", "04_")) or (n.startswith("05_") and not n.endswith("__real"))}
    assert "05_classify__sample_target__real" in same and "01_data_prep__sample_target" in same


def test_reused_base_checkpoint_is_hashed_by_content(tmp_path):
    ckpt = _write(tmp_path / "base.pt", "weights v1")
    text = (ROOT / "studies" / "demo.yaml").read_text().replace("base_gan: {RESOLUTION: 32, SEED: 0, KIMG: 5}",
                                                                f"base_gan: {{checkpoint: {ckpt}}}")
    s = study.load_study(_write(tmp_path / "s.yaml", text))
    steps = study.plan(s)
    assert not [st for st in steps if st.stage == "base_gan"]
    ft = next(st for st in steps if st.name.endswith("__pretrained") and st.stage == "finetune")
    assert ft.params["RESUME_FROM"] == str(ckpt) and ft.inputs == [str(ckpt)]
    study.hash_steps(steps)
    before = ft.hash
    ckpt.write_text("weights v2")
    steps = study.plan(s)
    study.hash_steps(steps)
    assert next(st for st in steps if st.name == ft.name).hash != before
    ckpt.unlink()
    with pytest.raises(study.StudyError, match="base_gan.checkpoint"):
        study.plan(s)


def test_classifiers_per_variant_real_trained_once(tmp_path):
    text = (ROOT / "studies" / "demo.yaml").read_text()
    assert "synthetic_from: all" in text
    s = study.load_study(_write(tmp_path / "s.yaml", text))
    steps = [st for st in study.plan(s) if st.stage == "classify"]
    variants = s.settings["finetune"]["variants"]
    assert [st.name for st in steps] == ["05_classify__sample_target__real"] + [
        f"05_classify__sample_target__{v}" for v in variants]
    real = steps[0]
    assert real.params["TRAIN_SETS"] == ["real"] and "SYNTH_DIR" not in real.params
    for st, v in zip(steps[1:], variants):
        assert st.params["VARIANT"] == v and st.params["TRAIN_SETS"] == ["synthetic", "real+synthetic"]
        assert f"/generate/{v}/images" in st.params["SYNTH_DIR"] and f"04_generate__sample_target__{v}" in st.depends
    analysis = next(st for st in study.plan(s) if st.stage == "analysis")
    assert {st.name for st in steps} <= set(analysis.depends)


def test_stain_sets_and_learning_curve_go_to_the_right_steps(tmp_path):
    text = (ROOT / "studies" / "demo.yaml").read_text()
    old = "TRAIN_SETS: [real, synthetic, real+synthetic]"
    assert old in text
    text = text.replace(old, "TRAIN_SETS: [real, real+stain, synthetic, real+synthetic+stain]\n"
                             "  REAL_FRACTIONS: [0.5, 1.0]")
    s = study.load_study(_write(tmp_path / "s.yaml", text))
    steps = [st for st in study.plan(s) if st.stage == "classify"]
    real = steps[0]
    assert real.params["TRAIN_SETS"] == ["real", "real+stain"] and real.params["REAL_FRACTIONS"] == [0.5, 1.0]
    for st in steps[1:]:
        assert st.params["TRAIN_SETS"] == ["synthetic", "real+synthetic+stain"] and "REAL_FRACTIONS" not in st.params
    # the real step owns its fraction runs (moved aside with it when its settings change)
    run_root = tmp_path / "classify"
    for name in ("real__m__seed0", "real@0.5__m__seed0", "real+stain__m__seed0", "synthetic__pretrained__m__seed0"):
        (run_root / name).mkdir(parents=True)
    real = dataclasses.replace(real, params={**real.params, "RUN_ROOT": str(run_root)})
    assert sorted(n for n, _ in _step_outputs(real)) == [
        "run_root/real+stain__m__seed0", "run_root/real@0.5__m__seed0", "run_root/real__m__seed0"]
    # without REAL_FRACTIONS the real step's parameters are what they were
    plain = study.load_study(_write(tmp_path / "p.yaml", (ROOT / "studies" / "demo.yaml").read_text()))
    assert "REAL_FRACTIONS" not in next(st for st in study.plan(plain) if st.stage == "classify").params


@pytest.mark.parametrize("line, match", [
    ("TRAIN_SETS: [real, real+gan]", r"unknown training set 'real\+gan'.*'real\+stain'"),
    ("REAL_FRACTIONS: [0.5, 1.5]", r"REAL_FRACTIONS=\[0.5, 1.5\].*\(0, 1\]"),
])
def test_bad_training_sets_and_fractions_are_refused_at_plan_time(tmp_path, line, match):
    text = (ROOT / "studies" / "demo.yaml").read_text().replace("TRAIN_SETS: [real, synthetic, real+synthetic]", line)
    s = study.load_study(_write(tmp_path / "s.yaml", text))
    with pytest.raises(study.StudyError, match=match):
        study.plan(s)


@pytest.mark.parametrize("value, match", [("freeze_g3", "freeze_g3"), ("[pretrained, scratch]", "scratch")])
def test_synthetic_from_must_be_a_trained_variant(tmp_path, value, match):
    text = (ROOT / "studies" / "demo.yaml").read_text().replace("synthetic_from: all", f"synthetic_from: {value}")
    s = study.load_study(_write(tmp_path / "s.yaml", text))
    with pytest.raises(study.StudyError, match=f"classify.synthetic_from.*{match}.*not trained"):
        study.plan(s)


@pytest.mark.parametrize("allow", [False, True])
def test_a_group_column_with_empty_values_is_caught_at_plan_time(tmp_path, allow):
    """Unless ALLOW_MISSING_GROUP, a manifest column that leaves images without a group stops ``study plan``, not the
    data step hours into a run."""
    src = tmp_path / "src"
    _write(src / "MANIFEST.tsv", "relpath\tpatient\na/1.png\tp1\na/2.png\t\nb/3.png\tp2\nb/4.png\t\n")
    demo = (ROOT / "studies" / "demo.yaml").read_text()
    old = "source: data/sample/nct_crc_he\n  prepare: {PATCH: 64, STRIDE: 32, VAL_FRACTION: 0.25, GROUP_BY: source,"
    assert old in demo
    new = (f"source: {src}\n  prepare: {{PATCH: 64, STRIDE: 32, VAL_FRACTION: 0.25, GROUP_BY: patient, "
           f"ALLOW_MISSING_GROUP: {str(allow).lower()},")
    s = study.load_study(_write(tmp_path / "s.yaml", demo.replace(old, new)))
    steps = study.plan(s)
    data = [st for st in steps if st.name == "01_data_prep__sample_base"]
    if allow:
        assert check_values(s, data, steps) == []
    else:
        with pytest.raises(study.StudyError, match=r"01_data_prep__sample_base: group_by='patient': 2 of 4 source "
                                                    r"image\(s\) have no 'patient'.*ALLOW_MISSING_GROUP"):
            check_values(s, data, steps)


def _toy_project(tmp_path: Path) -> Path:
    """A project root with one tiny notebook standing in for 01_data_prep, to exercise the runner quickly."""
    _write(tmp_path / "pyproject.toml", '[project]\nname = "histlib"\n')
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("Toy stage. `papermill 01_data_prep.ipynb out.ipynb`"),
        nbformat.v4.new_code_cell('DATASET = "x"\nOUT_DIR = "out"\nSOURCE_DIR = None\nPATCH = 8',
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("from histlib import runs\n"
                                  "runs.write_json(runs.project_path(OUT_DIR) / 'done.json', {'patch': PATCH})"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "src").mkdir()  # the source must exist when the plan is checked
    nbformat.write(nb, str(tmp_path / "notebooks" / "01_data_prep.ipynb"))
    _write(tmp_path / "studies" / "toy.yaml",
           "name: toy\nstages: [data]\nbase: {name: a, source: src, prepare: {PATCH: 4}}\n")
    return tmp_path


@pytest.mark.slow
def test_run_study_executes_exports_html_and_skips_when_finished(tmp_path, monkeypatch):
    root = _toy_project(tmp_path)
    monkeypatch.chdir(root)
    rows = study.run_study("studies/toy.yaml")
    assert [r["status"] for r in rows] == ["finished"]
    assert (root / "data/prepared/a/done.json").read_text().strip().startswith("{")
    html = root / "results/toy/notebooks/01_data_prep__a.html"
    assert html.is_file() and "PATCH" in html.read_text()
    rows = study.run_study("studies/toy.yaml")
    assert rows[0]["status"].startswith("skipped")
    _write(root / "studies/toy.yaml", "name: toy\nstages: [data]\nbase: {name: a, source: src, prepare: {PATCH: 5}}\n")
    assert study.run_study("studies/toy.yaml")[0]["status"] == "finished"


def test_unknown_notebook_parameter_is_rejected_before_running(tmp_path, monkeypatch):
    root = _toy_project(tmp_path)
    monkeypatch.chdir(root)
    _write(root / "studies/toy.yaml", "name: toy\nstages: [data]\nbase: {name: a, prepare: {PACH: 4}}\n")
    with pytest.raises(study.StudyError, match="PACH"):
        study.run_study("studies/toy.yaml")
    assert not (root / "results").exists()


def test_missing_notebook_is_a_clear_error(tmp_path, monkeypatch):
    root = _toy_project(tmp_path)
    monkeypatch.chdir(root)
    _write(root / "studies/toy.yaml", "name: toy\nstages: [data, base_gan]\nbase: {name: a}\n")
    with pytest.raises(study.StudyError, match="02_base_gan.ipynb"):
        study.run_study("studies/toy.yaml")


def test_failed_step_keeps_failed_notebook_and_is_reported(tmp_path, monkeypatch):
    root = _toy_project(tmp_path)
    monkeypatch.chdir(root)
    nb_path = root / "notebooks" / "01_data_prep.ipynb"
    nb = nbformat.read(str(nb_path), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("raise ValueError('bad patch')"))
    nbformat.write(nb, str(nb_path))
    rows = study.run_study("studies/toy.yaml")
    assert rows[0]["status"] == "failed" and rows[0]["error"] == "ValueError: bad patch"
    out = root / "results/toy/notebooks"
    assert (out / "01_data_prep__a.failed.ipynb").is_file()
    assert not (out / "01_data_prep__a.ipynb").exists()
    shutil.rmtree(root / "results")


def test_changed_settings_move_old_outputs_aside_and_same_settings_resume(tmp_path, monkeypatch):
    root = _toy_project(tmp_path)
    monkeypatch.chdir(root)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("Toy training stage. `papermill 02_base_gan.ipynb out.ipynb`"),
        nbformat.v4.new_code_cell('PROFILE = "demo"\nDATASET_DIR = "d"\nRUN_DIR = "r"\nKIMG = 1',
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("from histlib import runs\n"
                                  "log = runs.project_path(RUN_DIR) / 'log.txt'\n"
                                  "log.parent.mkdir(parents=True, exist_ok=True)\n"
                                  "_ = log.open('a').write(f'kimg={KIMG}\\n')"),
    ]
    nbformat.write(nb, str(root / "notebooks" / "02_base_gan.ipynb"))
    spec = "name: toy\nstages: [base_gan]\nbase: {name: a}\nbase_gan: {KIMG: %d}\n"
    _write(root / "studies/toy.yaml", spec % 1)
    study.run_study("studies/toy.yaml")
    log = root / "results/toy/a/base_gan/default/log.txt"
    assert log.read_text() == "kimg=1\n"
    study.run_study("studies/toy.yaml", force=True)  # same settings: the run folder is kept (resumable)
    assert log.read_text() == "kimg=1\nkimg=1\n"
    _write(root / "studies/toy.yaml", spec % 2)
    study.run_study("studies/toy.yaml")
    assert log.read_text() == "kimg=2\n"
    moved = list((root / "results/.superseded/toy").glob("02_base_gan__a-*/run_dir/log.txt"))
    assert len(moved) == 1 and moved[0].read_text() == "kimg=1\nkimg=1\n"


def test_a_changed_classify_step_moves_only_its_own_runs(tmp_path, monkeypatch):
    """Every classify step of a dataset writes into the same RUN_ROOT: a step whose settings changed moves aside its
    own runs, never the real runs or another variant's."""
    root = _toy_project(tmp_path)
    monkeypatch.chdir(root)
    toy = study.load_study("studies/toy.yaml")
    run_root = root / "results/toy/t/classify"
    names = ["real__resnet34__seed0", "synthetic__scratch__resnet34__seed0", "real+synthetic__scratch__resnet34__seed0",
             "synthetic__freeze_d1__resnet34__seed0", "real+synthetic__freeze_d1__resnet34__seed0",
             "synthetic__freeze_d1_g2__resnet34__seed0"]
    for n in names:
        _write(run_root / n / "metrics.json", "{}")
    params = {"RUN_ROOT": "results/toy/t/classify", "TRAIN_SETS": ["synthetic", "real+synthetic"],
              "VARIANT": "freeze_d1"}
    step = study.Step("classify", "t", "05_classify__t__freeze_d1", "05_classify.ipynb", params, hash="new")
    _write(root / "results/toy/notebooks/.state/05_classify__t__freeze_d1.json", '{"hash": "old"}')
    _supersede_outputs(toy, step)
    assert sorted(p.name for p in run_root.iterdir()) == sorted(set(names) - {
        "synthetic__freeze_d1__resnet34__seed0", "real+synthetic__freeze_d1__resnet34__seed0"})
    moved = root / "results/.superseded/toy/05_classify__t__freeze_d1-old/run_root"
    assert sorted(p.name for p in moved.iterdir()) == ["real+synthetic__freeze_d1__resnet34__seed0",
                                                      "synthetic__freeze_d1__resnet34__seed0"]
    # the real step moves only the real runs
    real = study.Step("classify", "t", "05_classify__t__real", "05_classify.ipynb",
                      {"RUN_ROOT": "results/toy/t/classify", "TRAIN_SETS": ["real"]}, hash="new")
    _write(root / "results/toy/notebooks/.state/05_classify__t__real.json", '{"hash": "old"}')
    _supersede_outputs(toy, real)
    assert "real__resnet34__seed0" not in {p.name for p in run_root.iterdir()}
    assert len(list(run_root.iterdir())) == 3


def test_a_classify_step_whose_own_settings_changed_keeps_its_still_planned_runs(tmp_path, monkeypatch):
    """A seed added (nothing upstream changed): the runs the new settings still plan stay, to be skipped when their
    config is unchanged; a dropped model's runs and a dropped training set's move aside. With an upstream change, or
    a state file from before ``upstream`` was recorded, every run of the step moves, the dropped set's too."""
    root = _toy_project(tmp_path)
    monkeypatch.chdir(root)
    toy = study.load_study("studies/toy.yaml")
    run_root = root / "results/toy/t/classify"
    state = root / "results/toy/notebooks/.state/05_classify__t__pretrained.json"
    before = {"RUN_ROOT": "results/toy/t/classify", "VARIANT": "pretrained", "SEEDS": [0],
              "TRAIN_SETS": ["synthetic", "real+synthetic", "real+synthetic+stain"], "MODELS": ["resnet34", "vit"]}
    after = {**before, "SEEDS": [0, 1], "TRAIN_SETS": ["synthetic", "real+synthetic"], "MODELS": ["resnet34"]}
    old_runs = [f"{ts}__pretrained__{m}__seed0" for ts in before["TRAIN_SETS"] for m in before["MODELS"]]
    still_planned = ["synthetic__pretrained__resnet34__seed0", "real+synthetic__pretrained__resnet34__seed0"]

    def setup(upstream):
        shutil.rmtree(root / "results", ignore_errors=True)
        for n in [*old_runs, "real__resnet34__seed0"]:
            _write(run_root / n / "metrics.json", "{}")
        _write(state, json.dumps({"hash": "old", "params": before, **({"upstream": upstream} if upstream else {})}))

    step = study.Step("classify", "t", "05_classify__t__pretrained", "05_classify.ipynb", after, hash="new",
                      upstream="up")
    setup("up")
    _supersede_outputs(toy, step)
    assert sorted(p.name for p in run_root.iterdir()) == sorted([*still_planned, "real__resnet34__seed0"])
    moved = root / "results/.superseded/toy/05_classify__t__pretrained-old/run_root"
    assert sorted(p.name for p in moved.iterdir()) == sorted(set(old_runs) - set(still_planned))
    for upstream in ("changed", None):  # another upstream, or a state file without one: the step's runs all move
        setup(upstream)
        _supersede_outputs(toy, step)
        assert [p.name for p in run_root.iterdir()] == ["real__resnet34__seed0"]
        assert sorted(p.name for p in moved.iterdir()) == sorted(old_runs)


def test_a_current_step_of_an_earlier_runner_has_its_state_brought_up_to_date(tmp_path, monkeypatch):
    """A finished state file with the legacy hash, or without ``upstream``, gets the current hash and upstream, so
    that a later change of only the step's own settings keeps its still-planned runs; a step with another hash, or
    one that did not finish, is left as it was."""
    root = _toy_project(tmp_path)
    monkeypatch.chdir(root)
    toy = study.load_study("studies/toy.yaml")
    state = root / "results/toy/notebooks/.state/05_classify__t__pretrained.json"
    step = study.Step("classify", "t", "05_classify__t__pretrained", "05_classify.ipynb", {}, hash="h", upstream="up",
                      legacy_hash="old-h", legacy_upstream="old-up")
    for info, updated in [({"status": "finished", "hash": "other"}, False), ({"status": "failed", "hash": "h"}, False),
                          ({"status": "failed", "hash": "old-h"}, False),
                          ({"status": "finished", "hash": "h", "upstream": "up"}, False),
                          ({"status": "finished", "hash": "h", "seconds": 3}, True),
                          ({"status": "finished", "hash": "old-h", "upstream": "old-up", "seconds": 3}, True),
                          ({"status": "finished", "hash": "old-h"}, True)]:
        _write(state, json.dumps(info))
        assert refresh_state(toy, step) is updated
        assert json.loads(state.read_text()) == ({**info, "hash": "h", "upstream": "up"} if updated else info)
    state.unlink()
    assert refresh_state(toy, step) is False and not state.exists()


def test_the_step_hash_covers_the_notebooks_code_not_its_text(tmp_path, monkeypatch):
    """Rewording a markdown cell or a comment, trailing spaces or blank lines keep every step's hash (a finished
    study is not re-run); a new statement, or the ``parameters`` tag moved, changes the hash of that notebook's steps.
    A step that finished under the legacy hash (the notebook file's bytes) counts as finished."""
    root = _toy_project(tmp_path)
    monkeypatch.chdir(root)
    toy = study.load_study("studies/toy.yaml")
    steps = study.plan(toy)
    study.hash_steps(steps)
    first = {s.name: (s.hash, s.upstream, s.legacy_hash) for s in steps}
    nb_path = root / "notebooks" / "01_data_prep.ipynb"
    nb = nbformat.read(str(nb_path), as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code" and "PATCH" in c.source)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("A new paragraph."))
    code.source = code.source.replace("PATCH = 8", "PATCH = 8  # the default", 1) + "   \n\n# a new comment\n"
    nbformat.write(nb, str(nb_path))
    study.hash_steps(steps)
    assert {s.name: (s.hash, s.upstream) for s in steps} == {n: h[:2] for n, h in first.items()}
    assert all(s.legacy_hash != first[s.name][2] for s in steps if s.stage == "data")  # the file's bytes changed
    # a form feed inside a string must not shift which line a comment is cut from
    ff_path = tmp_path / "ff.ipynb"
    hashes = []
    for c in ("C = 1", "C = 5"):
        source = f'A = "\f"; {c}\nB = 2  # c\n'
        ff_path.write_text(json.dumps({"cells": [{"cell_type": "code", "metadata": {}, "source": source}]}))
        hashes.append(notebook_code_hash(ff_path))
    assert hashes[0] != hashes[1]
    for edit in ("statement", "tag"):
        edited = nbformat.read(str(nb_path), as_version=4)
        cell = next(c for c in edited.cells if c.cell_type == "code" and "PATCH" in c.source)
        if edit == "statement":
            cell.source += "\nEXTRA = 1\n"
        else:
            cell.metadata["tags"] = []
        nbformat.write(edited, str(nb_path))
        study.hash_steps(steps)
        assert all(s.hash != first[s.name][0] for s in steps if s.stage == "data"), edit
        nbformat.write(nb, str(nb_path))
    study.hash_steps(steps)
    data = steps[0]
    _write(root / "results/toy/notebooks" / f"{data.name}.html", "<html></html>")
    for old_hash, done in [(data.legacy_hash, True), (data.hash, True), (first[data.name][2], False)]:
        _write(root / "results/toy/notebooks/.state" / f"{data.name}.json",
               json.dumps({"status": "finished", "hash": old_hash}))
        assert study.is_done(toy, data) is done


def test_a_classify_steps_state_counts_the_runs_it_trained(tmp_path, monkeypatch):
    """The finished state of a classify step records how many of its planned runs this execution trained (a run
    kept from before, its ``metrics.json`` older than the step's start, is not counted) and on how many images;
    other steps record none."""
    monkeypatch.chdir(_toy_project(tmp_path))
    params = {"RUN_ROOT": "results/toy/t/classify", "VARIANT": "pretrained", "SEEDS": [0, 1],
              "TRAIN_SETS": ["synthetic"], "MODELS": ["resnet34"]}
    step = study.Step("classify", "t", "05_classify__t__pretrained", "05_classify.ipynb", params)
    root = tmp_path / "results/toy/t/classify"
    for seed in (0, 1):
        _write(root / f"synthetic__pretrained__resnet34__seed{seed}" / "metrics.json", "{}")
        _write(root / f"synthetic__pretrained__resnet34__seed{seed}" / "stats.jsonl", '{"epoch": 1, "nimg": 640}\n')
    old = time.time() - 100
    os.utime(root / "synthetic__pretrained__resnet34__seed0" / "metrics.json", (old, old))
    assert _runs_trained(step, time.time() - 50) == {"runs": {"planned": 2, "trained": 1, "images": 640}}
    (root / "synthetic__pretrained__resnet34__seed1" / "stats.jsonl").unlink()  # images unknown, runs still counted
    assert _runs_trained(step, time.time() - 50) == {"runs": {"planned": 2, "trained": 1, "images": None}}
    assert _runs_trained(study.Step("data", "t", "01_data_prep__t", "01_data_prep.ipynb", {}), 0.0) == {}


def test_upstream_hash_ignores_the_steps_own_parameters(tmp_path, monkeypatch):
    root = _toy_project(tmp_path)
    monkeypatch.chdir(root)
    steps = study.plan(study.load_study("studies/toy.yaml"))
    study.hash_steps(steps)
    first = dataclasses.replace(steps[0])
    steps[0].params = {**steps[0].params, "PATCH": 16}
    study.hash_steps(steps)
    assert steps[0].hash != first.hash and steps[0].upstream == first.upstream
    nb = root / "notebooks" / "01_data_prep.ipynb"
    nb.write_text(nb.read_text().replace("PATCH = 8", "PATCH = 9"))  # the notebook's default: its code
    study.hash_steps(steps)
    assert steps[0].upstream != first.upstream


@pytest.mark.slow
def test_failed_step_is_recorded_as_failed_and_retried(tmp_path, monkeypatch):
    root = _toy_project(tmp_path)
    monkeypatch.chdir(root)
    nb = nbformat.read(str(root / "notebooks" / "01_data_prep.ipynb"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("assert PATCH != 7, 'patch 7 is refused'"))
    nbformat.write(nb, str(root / "notebooks" / "01_data_prep.ipynb"))
    _write(root / "studies/toy.yaml", "name: toy\nstages: [data]\nbase: {name: a, source: src, prepare: {PATCH: 7}}\n")
    rows = study.run_study("studies/toy.yaml")
    assert rows[0]["status"] == "failed" and "patch 7 is refused" in rows[0]["error"]
    state = json.loads((root / "results/toy/notebooks/.state/01_data_prep__a.json").read_text())
    assert state["status"] == "failed" and "patch 7 is refused" in state["error"]
    assert (root / "results/toy/notebooks/01_data_prep__a.failed.html").is_file()
    index = (root / "results/toy/index.html").read_text()
    assert "failed" in index and "01_data_prep__a.failed.html" in index


def test_prepared_dataset_of_another_study_is_flagged(tmp_path):
    from histlib.data.prepare import PREPARE_JSON

    text = (ROOT / "studies" / "demo.yaml").read_text().replace("name: sample_target", "name: zz_conflict_probe")
    s = study.load_study(_write(tmp_path / "s.yaml", text), results_root=tmp_path / "results")
    steps = study.plan(s)
    study.hash_steps(steps)
    folder = ROOT / "data" / "prepared" / "zz_conflict_probe"
    try:
        folder.mkdir(parents=True)
        (folder / PREPARE_JSON).write_text('{"config_hash": "prepared-elsewhere"}')
        found = study.prepared_conflicts(s, steps)
        assert len(found) == 1 and "zz_conflict_probe" in found[0] and "other settings" in found[0]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_dataset_prepared_with_the_steps_own_settings_is_not_flagged(tmp_path):
    """ALLOW_MISSING_GROUP is part of the prepared dataset's hash when true: the conflict check must hash it too,
    or every study that sets it warns that its own dataset was "prepared with other settings"."""
    from histlib.data.prepare import PREPARE_JSON, PrepareConfig, prepare_hash
    from histlib.study.spec import stage_parameters

    text = (ROOT / "studies" / "demo.yaml").read_text().replace("name: sample_target", "name: zz_conflict_probe")
    s = study.load_study(_write(tmp_path / "s.yaml", text), results_root=tmp_path / "results")
    steps = study.plan(s)
    study.hash_steps(steps)
    step = next(st for st in steps if st.stage == "data" and st.dataset == "zz_conflict_probe")
    step.params["ALLOW_MISSING_GROUP"] = True
    values = {**(stage_parameters("data") or {}), **step.params}
    names = {f.name for f in dataclasses.fields(PrepareConfig)}
    cfg = PrepareConfig(**{k.lower(): v for k, v in values.items() if k.lower() in names},
                        source=values["SOURCE_DIR"], out=values["OUT_DIR"]).resolve_paths()
    folder = ROOT / "data" / "prepared" / "zz_conflict_probe"
    try:
        folder.mkdir(parents=True)
        (folder / PREPARE_JSON).write_text(json.dumps({"config_hash": prepare_hash(cfg)}))
        assert study.prepared_conflicts(s, [step]) == []
        step.params["SEED"] = values["SEED"] + 1  # another split: flagged
        assert len(study.prepared_conflicts(s, [step])) == 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_two_study_files_with_one_name_do_not_share_a_results_folder(tmp_path, monkeypatch):
    """A second study file with the first's name is refused before anything moves (each would retire the other's
    steps); once the first file is gone (moved or renamed), the folder is taken over."""
    root = _toy_project(tmp_path)
    monkeypatch.chdir(root)
    study.run_study("studies/toy.yaml")
    text = (root / "studies/toy.yaml").read_text()
    _write(root / "studies/toy_copy.yaml", text.replace("PATCH: 4", "PATCH: 6"))
    with pytest.raises(study.StudyError, match=r"studies/toy_copy.yaml: results/toy holds the results of "
                                               r"studies/toy.yaml.*same name 'toy'"):
        study.run_study("studies/toy_copy.yaml", dry_run=True)
    assert (root / "results/toy/notebooks/.state/01_data_prep__a.json").is_file()
    (root / "studies/toy.yaml").unlink()  # moved: its results folder is the copy's now
    rows = study.run_study("studies/toy_copy.yaml")
    assert [r["status"] for r in rows] == ["finished"]


def test_steps_dropped_from_the_plan_are_moved_aside(tmp_path):
    """A study file that drops a variant: the variant's fine-tune, generation and classifier runs (but not the
    real-only runs in the same classify folder, nor the kept variant's) leave the results tree before the study
    runs, so the analysis, which reads that tree, cannot count them."""
    from histlib import runs
    from histlib.study.execution import retire_dropped_steps
    from histlib.study.steps import state_path

    text = (ROOT / "studies" / "demo.yaml").read_text()
    s = study.load_study(_write(tmp_path / "s.yaml", text), results_root=tmp_path / "results")
    before = study.plan(s)
    study.hash_steps(before)
    for step in before:  # every step "ran": its state file, its report and its run folders
        runs.write_json(state_path(s, step), {"status": "finished", "hash": step.hash, "params": step.params})
        (state_path(s, step).parent.parent / f"{step.name}.html").write_text("report")
        for _, path in _step_outputs(step):
            path.mkdir(parents=True, exist_ok=True)
        if step.params.get("RUN_ROOT"):
            for ts in step.params["TRAIN_SETS"]:
                variant = step.params.get("VARIANT")
                name = f"{ts}__{variant}__resnet34__seed0" if variant and ts != "real" else f"{ts}__resnet34__seed0"
                (Path(runs.project_path(step.params["RUN_ROOT"])) / name).mkdir(parents=True, exist_ok=True)
    root = s.out_dir / "sample_target"
    assert (root / "classify" / "synthetic__freeze_d1__resnet34__seed0").is_dir()

    s2 = study.load_study(_write(tmp_path / "s2.yaml", text.replace("variants: [pretrained, freeze_d1]",
                                                                     "variants: [pretrained]")),
                          results_root=tmp_path / "results")
    after = study.plan(s2)
    study.hash_steps(after)
    dropped = {st.name for st in before} - {st.name for st in after}
    assert dropped == {"03_finetune__sample_target__freeze_d1", "04_generate__sample_target__freeze_d1",
                       "05_classify__sample_target__freeze_d1"}
    assert sorted(retire_dropped_steps(s2, after, move=False)) == sorted(dropped)
    assert (root / "finetune" / "freeze_d1").is_dir()  # a dry run moves nothing
    assert sorted(retire_dropped_steps(s2, after)) == sorted(dropped)
    left = sorted(p.name for p in (root / "classify").iterdir())
    assert left == ["real+synthetic__pretrained__resnet34__seed0", "real__resnet34__seed0",
                    "synthetic__pretrained__resnet34__seed0"]
    assert not (root / "finetune" / "freeze_d1").exists() and (root / "finetune" / "pretrained").is_dir()
    assert not (root / "generate" / "freeze_d1").exists()
    for name in dropped:
        assert not state_path(s2, next(st for st in before if st.name == name)).exists()
        aside = tmp_path / "results" / ".superseded" / "demo"
        moved = [p for p in aside.iterdir() if p.name.startswith(name + "-")]
        assert len(moved) == 1 and (moved[0] / "notebooks" / f"{name}.html").is_file()
    assert retire_dropped_steps(s2, after) == []  # nothing left to move
