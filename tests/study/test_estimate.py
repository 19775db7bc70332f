"""Stage time estimates of ``study plan``: from earlier steps' states on this machine, else a short probe."""

import json
import math

import pytest

from histlib import runs, study
from histlib.study import estimate
from histlib.study.steps import state_path

DEMO = runs.project_path("studies/demo.yaml")


def _write_state(root, name, notebook, params, seconds, status="finished"):
    runs.write_json(root / "other_study" / "notebooks" / ".state" / f"{name}.json",
                    {"status": status, "hash": "x", "params": params, "notebook": notebook, "seconds": seconds})


def _demo_steps(results_root):
    s = study.load_study(DEMO, results_root)
    return study.plan(s)


def test_measured_rates_scale_with_the_work(tmp_path):
    params = {"PROFILE": "demo", "RESOLUTION": 32, "KIMG": 2}
    _write_state(tmp_path, "03_finetune__x__pretrained", "03_finetune.ipynb", params, 100.0)
    _write_state(tmp_path, "03_finetune__x__freeze_d1", "03_finetune.ipynb", params, 60.0, status="failed")
    _write_state(tmp_path, "05_classify__x__real", "05_classify.ipynb",
                 {"MODELS": ["resnet34"], "SEEDS": [0, 1], "TRAIN_SETS": ["real"], "EPOCHS": 5, "IMAGE_SIZE": 32},
                 50.0)
    _write_state(tmp_path, "06_analysis", "06_analysis.ipynb", {"STUDY_DIR": "results/x"}, 10.0)
    steps = _demo_steps(tmp_path)
    rows = {r["stage"]: r for r in estimate.estimate(steps, tmp_path, probe=False)}
    # every step pays the shortest step's 10 s (start-up), the rest scales: the fine-tunes at (100 - 10) / 2 s per
    # kimg (the failed state is not a measurement)
    ft = [st for st in steps if st.stage == "finetune"]
    assert rows["finetune"]["seconds"] == pytest.approx(10.0 * len(ft) + 45.0 * sum(st.params["KIMG"] for st in ft))
    basis = rows["finetune"]["basis"]
    assert basis.startswith("measured: 1 earlier step") and "10 s start-up" in basis
    # 3 classify steps: real (1 train set) and 2 variants × (synthetic, real+synthetic), 1 seed, 2 epochs; (50 - 10) /
    # (2 seeds × 5 epochs) = 4 s per classifier epoch
    assert rows["classify"]["seconds"] == pytest.approx(3 * 10.0 + (1 * 2 + 2 * 2 * 2) * 4.0)
    # nothing measured at the base GAN's kind of work and no probe: no number, and a reason
    assert rows["base_gan"]["seconds"] is None and "nothing measured" in rows["base_gan"]["basis"]


def test_a_generate_steps_rate_leaves_out_its_classifier_training(tmp_path, monkeypatch):
    """A dataset's first generate step trains the real-image classifiers (costed apart, _generate_classifiers): the
    seconds its run recorded for them are not part of its measured rate per image drawn."""
    monkeypatch.setattr(runs, "project_path", lambda p: tmp_path / p)
    params = {"PROFILE": "demo", "IMAGES_PER_CLASS": 100, "RESOLUTION": 32}
    for name, seconds, classifiers in (("first", 140.0, 100.0), ("second", 40.0, 0.0), ("older", 40.0, None)):
        run_dir = f"results/other_study/x/generate/{name}"
        if classifiers is not None:  # "older": a run from before classifier_seconds was recorded
            runs.write_json(tmp_path / run_dir / "metrics.json", {"classifier_seconds": classifiers})
        _write_state(tmp_path / "results", f"04_generate__x__{name}", "04_generate.ipynb",
                     {**params, "RUN_DIR": run_dir}, seconds)
    _write_state(tmp_path / "results", "05_classify__x__real", "05_classify.ipynb",
                 {"MODELS": ["resnet34"], "SEEDS": [0], "TRAIN_SETS": ["real"], "EPOCHS": 1, "IMAGE_SIZE": 32}, 10.0)
    rates = estimate.measured_rates("results")
    kind = next(k for k in rates if k[0] == "generate")
    # overhead: the shortest step's 10 s; each generate step then drew 100 images per class in 30 s once the first
    # step's 100 s of classifier training are left out
    assert rates[estimate.OVERHEAD_KEY] == [10.0] and rates[kind] == pytest.approx([0.3, 0.3, 0.3])


def test_a_classify_step_costs_only_the_runs_it_trains(tmp_path):
    """A measured classify step that kept 1 of its 2 runs cost its seconds for the one it trained; a planned step whose
    finished runs it will keep (no state yet, or the same upstream) is costed for the others only, and for all of
    them when an upstream change moves them aside."""
    _write_state(tmp_path, "06_analysis", "06_analysis.ipynb", {"STUDY_DIR": "results/x"}, 10.0)
    params = {"MODELS": ["resnet34"], "SEEDS": [0, 1], "TRAIN_SETS": ["real"], "EPOCHS": 5, "IMAGE_SIZE": 32}
    state = tmp_path / "other_study" / "notebooks" / ".state" / "05_classify__x__real.json"
    runs.write_json(state, {"status": "finished", "hash": "x", "params": params, "notebook": "05_classify.ipynb",
                            "seconds": 50.0, "runs": {"planned": 2, "trained": 1}})
    rates = estimate.measured_rates(tmp_path)
    assert rates[("classify", 32, ("resnet34",))] == [pytest.approx((50.0 - 10.0) / 5)]  # 1 run × 5 epochs, not 2 × 5
    demo = study.load_study(DEMO, tmp_path)
    steps = study.plan(demo)
    study.hash_steps(steps)
    pre = next(st for st in steps if st.name.endswith("classify__sample_target__pretrained"))  # 2 sets, seed 0
    full = estimate.estimate([pre], tmp_path, probe=False, study=demo)[0]["seconds"]
    assert full == pytest.approx(10.0 + 2 * 2 * 8.0)  # 2 runs × 2 epochs at 8 s
    run_root = runs.project_path(pre.params["RUN_ROOT"])
    runs.write_json(run_root / "synthetic__pretrained__resnet34__seed0" / "metrics.json", {})
    assert estimate.estimate([pre], tmp_path, probe=False, study=demo)[0]["seconds"] == pytest.approx(10.0 + 2 * 8.0)
    own = state_path(demo, pre)
    # a seed added (the same upstream) keeps the finished run; another epoch count, or an upstream change, does not
    for upstream, before, seconds in [(pre.upstream, {"SEEDS": [0, 1]}, 10.0 + 2 * 8.0),
                                      (pre.upstream, {"EPOCHS": 3}, full), ("changed", {"SEEDS": [0, 1]}, full)]:
        runs.write_json(own, {"status": "finished", "hash": "old", "upstream": upstream,
                              "params": {**pre.params, **before}})
        assert estimate.estimate([pre], tmp_path, probe=False, study=demo)[0]["seconds"] == pytest.approx(seconds)


def test_a_classify_step_is_costed_per_image_where_the_set_sizes_are_known(tmp_path):
    """Measured per image trained (a state's ``runs.images``, or an older state's run folders' last ``nimg``), a
    classify step costs each run's real and generated images × epochs: the generated set on disk, or what the
    planned generate step writing it will make (``AMOUNT`` × the real train split)."""
    res = tmp_path / "results"
    _write_state(res, "06_analysis", "06_analysis.ipynb", {"STUDY_DIR": "results/x"}, 10.0)
    params = {"MODELS": ["resnet34"], "SEEDS": [0], "TRAIN_SETS": ["real"], "EPOCHS": 5, "IMAGE_SIZE": 32}
    runs.write_json(res / "other_study/notebooks/.state/05_classify__x__real.json",
                    {"status": "finished", "hash": "x", "params": params, "notebook": "05_classify.ipynb",
                     "seconds": 110.0, "runs": {"planned": 1, "trained": 1, "images": 1000}})
    old = {**params, "SEEDS": [0, 1], "RUN_ROOT": str(tmp_path / "old_runs")}  # a state without ``runs``
    for seed, nimg in [(0, 700), (1, 500)]:
        stats = tmp_path / "old_runs" / f"real__resnet34__seed{seed}" / "stats.jsonl"
        stats.parent.mkdir(parents=True)
        stats.write_text(json.dumps({"epoch": 1, "nimg": 1}) + "\n" + json.dumps({"epoch": 2, "nimg": nimg}) + "\n")
    runs.write_json(res / "other_study/notebooks/.state/05_classify__y__real.json",
                    {"status": "finished", "hash": "y", "params": old, "notebook": "05_classify.ipynb",
                     "seconds": 250.0})
    rates = estimate.measured_rates(res)
    assert sorted(rates[("classify", 32, ("resnet34",), estimate.IMAGES)]) == [pytest.approx(0.1), pytest.approx(0.2)]
    real = tmp_path / "real"
    real.mkdir()
    rows = "".join(f"a{i}.png,{'ab'[i % 2]},train\n" for i in range(10))
    (real / "manifest.csv").write_text("path,class,split\n" + rows + "v.png,a,val\n")
    gen = tmp_path / "gen"
    for i in range(6):
        _touch(gen / "images" / "set0" / "a" / f"{i}.png")
    step = study.Step("classify", "t", "05_classify__t__v", "05_classify.ipynb",
                      {**params, "SEEDS": [0, 1], "EPOCHS": 3, "TRAIN_SETS": ["synthetic", "real+synthetic"],
                       "REAL_DIR": str(real), "SYNTH_DIR": str(gen / "images"), "VARIANT": "v",
                       "RUN_ROOT": str(tmp_path / "runs")})
    assert estimate.classify_images(step, [step]) is None  # set1 is neither on disk nor planned
    for i in range(8):
        _touch(gen / "images" / "set1" / "b" / f"{i}.png")
    _touch(gen / "images" / "set1" / ".cache" / "x.png")  # hidden: not counted
    # synthetic: (6 + 8) × 3 epochs; real + synthetic: (10 + 6 + 10 + 8) × 3
    assert estimate.classify_images(step, [step]) == 42 + 102
    generate = study.Step("generate", "t", "04_generate__t__v", "04_generate.ipynb",
                          {"RUN_DIR": str(gen), "AMOUNT": 0.5, "NUM_SETS": 2})
    # the generate step to run rewrites the sets: 0.5 × 10 = 5 images each; synthetic (5 + 5) × 3, real + synthetic
    # (15 + 15) × 3
    assert estimate.classify_images(step, [generate, step]) == 30 + 90
    assert estimate.classify_images(step, [generate, step], {"real+synthetic__v__resnet34__seed1"}) == 30 + 45
    capped = study.Step("classify", "t", "c", "05_classify.ipynb", {**step.params, "SYNTH_PER_CLASS": 1})
    assert estimate.classify_images(capped, [generate, capped]) == (2 + 2) * 3 + (12 + 12) * 3  # 1 per class, 2 classes
    # max_steps in CONFIG_OVERRIDES stops each run after so many batches: at most 2 × BATCH 4 = 8 images a run
    short = study.Step("classify", "t", "s", "05_classify.ipynb",
                       {**step.params, "BATCH": 4, "CONFIG_OVERRIDES": {"max_steps": 2}})
    assert estimate.classify_images(short, [generate, short]) == 2 * 8 + 2 * 8
    rows = estimate.estimate([generate, step], res, probe=False)
    assert {r["stage"]: r["seconds"] for r in rows}["classify"] == pytest.approx(10.0 + 0.15 * 120)
    assert "per image trained" in {r["stage"]: r["basis"] for r in rows}["classify"]


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_another_resolution_is_not_a_measurement(tmp_path):
    _write_state(tmp_path, "02_base_gan__x", "02_base_gan.ipynb", {"PROFILE": "demo", "RESOLUTION": 64, "KIMG": 2},
                 100.0)
    rows = {r["stage"]: r for r in estimate.estimate(_demo_steps(tmp_path), tmp_path, probe=False)}
    assert rows["base_gan"]["seconds"] is None


def test_probes_time_the_gan_and_the_classifier(monkeypatch):
    monkeypatch.setattr(estimate, "PROBE_SECONDS", 0.05)
    sec_per_kimg, basis = estimate.probe_gan("demo", 32)
    assert math.isfinite(sec_per_kimg) and sec_per_kimg > 0 and basis.startswith("probe:")
    per_epoch, basis = estimate.probe_classifier(["resnet18"], 32, 8, images_per_epoch=80, device_name="cpu")
    assert per_epoch > 0 and "80 training images" in basis
    assert estimate.probe_classifier(["resnet18"], 32, 8, images_per_epoch=None) is None
    assert estimate.probe_gan("paper", 256) is None or estimate._probe_device("paper").type == "cuda"


@pytest.mark.slow
def test_every_demo_stage_but_analysis_gets_a_probe(tmp_path, monkeypatch):
    monkeypatch.setattr(estimate, "PROBE_SECONDS", 0.05)
    sec_per_kimg, _ = estimate.probe_gan("demo", 32)
    rows = {r["stage"]: r for r in estimate.estimate(_demo_steps(tmp_path), tmp_path, probe=True)}
    for stage in ("data", "base_gan", "finetune", "generate", "classify"):
        assert rows[stage]["seconds"] is not None and rows[stage]["basis"].startswith("probe:"), rows[stage]
    # a probe leaves out start-up and the rest, so the GAN stage is at least its iterations' time
    assert rows["base_gan"]["seconds"] >= sec_per_kimg * 8 * 0.2


def test_plan_prints_each_stage_with_its_basis(tmp_path, capsys):
    _write_state(tmp_path, "02_base_gan__x", "02_base_gan.ipynb", {"PROFILE": "demo", "RESOLUTION": 32, "KIMG": 4},
                 40.0)
    _write_state(tmp_path, "06_analysis", "06_analysis.ipynb", {"STUDY_DIR": "results/x"}, 5.0)
    study.run_study(DEMO, dry_run=True, results_root=tmp_path, probe=False)
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("base_gan"))
    kimg = next(st.params["KIMG"] for st in _demo_steps(tmp_path) if st.stage == "base_gan")
    assert estimate.format_seconds(5.0 + kimg * 35.0 / 4) in line and "measured: 1 earlier step" in line
    assert "classify" in out and "?" in next(ln for ln in out.splitlines() if ln.strip().startswith("classify"))


@pytest.mark.parametrize("seconds,text", [(None, "?"), (0.2, "< 1 s"), (40, "40 s"), (210, "3.5 min"),
                                          (7560, "2.1 h")])
def test_format_seconds(seconds, text):
    assert estimate.format_seconds(seconds) == text


@pytest.mark.parametrize("prepare, expected", [
    ({"PATCH": None, "VAL_FRACTION": 0.2, "TEST_FRACTION": 0.2}, 6),  # whole images: 10 × 0.6
    ({"PATCH": None, "VAL_FRACTION": 0.2, "FOLDS": 5, "FOLD": 1}, 6),  # one fold of five is the test split
    ({"PATCH": 32, "VAL_FRACTION": 0.5}, 80),  # 128 px images cut into 16 patches of 32 px: 160 × 0.5
    ({"VAL_FRACTION": 0.5}, 45),  # the notebook's defaults, patch 64 and stride 32: nine per image
    ({}, 67),  # and its default VAL_FRACTION 0.25: 90 × 0.75
])
def test_the_real_train_split_before_the_data_step_has_run(tmp_path, prepare, expected):
    """Before its data step has run, a classify step's real train split is counted from the source images: whole
    images with ``PATCH: null``, else the patches the tiling cuts, less the val and test (or fold) shares."""
    from PIL import Image

    for i in range(10):
        (tmp_path / "src" / "a").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (128, 128)).save(tmp_path / "src" / "a" / f"{i}.png")
    data = study.Step("data", "t", "01_data_prep__t", "01_data_prep.ipynb",
                      {"SOURCE_DIR": str(tmp_path / "src"), "OUT_DIR": str(tmp_path / "prep"), **prepare})
    step = study.Step("classify", "t", "05_classify__t__real", "05_classify.ipynb",
                      {"REAL_DIR": str(tmp_path / "prep"), "MODELS": ["resnet34"], "SEEDS": [0], "EPOCHS": 1,
                       "TRAIN_SETS": ["real"]})
    assert estimate._train_images(step, [data, step]) == expected


def _generate_step(tmp_path, name, dataset="prep", **params):
    return study.Step("generate", "t", f"04_generate__t__{name}", "04_generate.ipynb",
                      {"DATASET_DIR": str(tmp_path / dataset), "RUN_DIR": str(tmp_path / "t" / "generate" / name),
                       **params})


@pytest.mark.parametrize("params, counts, expected", [
    ({"AMOUNT": 0.5}, (1212, 2), 303.0),  # half the real train split per class
    ({"AMOUNT": 0.5, "SELECTION": "fidelity"}, (1212, 2), 606.0),  # the notebook's OVERSAMPLE 2: the pool
    ({"AMOUNT": 3, "SELECTION": "agree", "OVERSAMPLE": 1.5}, (311, 3), 467.0),  # ceil(311 × 1.5)
    ({"AMOUNT": 0.5}, None, None),  # train split unknown
    ({"IMAGES_PER_CLASS": 40, "SELECTION": "realism"}, None, 80.0),
])
def test_a_generate_step_draws_its_amount_and_the_pool_of_its_selection(params, counts, expected):
    assert estimate._drawn_per_class(params, counts) == expected


def test_a_generate_step_pays_for_the_classifiers_it_trains_first(tmp_path, monkeypatch):
    """The fidelity and selection classifiers are cached per dataset: the first generate step of a dataset trains
    them (their epochs over the real train split, capped at max_steps), the others of that dataset do not."""
    from histlib.fidelity import FidelityConfig

    rows = [{"path": f"{c}/{i}.png", "class": c, "split": "train"} for c in "ab" for i in range(50)]
    (tmp_path / "prep").mkdir()
    with open(tmp_path / "prep" / "manifest.csv", "w") as f:
        f.write("path,class,split\n" + "".join(f"{r['path']},{r['class']},{r['split']}\n" for r in rows))
    monkeypatch.setattr(estimate, "probe_classifier", lambda *a, **k: (0.01, "probe"))
    first = _generate_step(tmp_path, "pretrained-agree", SELECTION="agree")
    second = _generate_step(tmp_path, "freeze_g2-agree", SELECTION="agree")
    plain = _generate_step(tmp_path, "x", dataset="other", FIDELITY=False, METRICS=False)
    steps = [first, second, plain]
    assert [w for w, _ in estimate._classifiers_to_train(first, steps)] == ["fidelity classifier",
                                                                            "selection classifier"]
    assert estimate._classifiers_to_train(second, steps) == [] and estimate._classifiers_to_train(plain, steps) == []
    seconds, basis = estimate._generate_classifiers(first, steps, {})
    cfg = FidelityConfig()
    assert seconds == pytest.approx(2 * 0.01 * min(cfg.epochs * 100, cfg.max_steps * cfg.batch_size))
    assert "selection classifier" in basis
    assert estimate._generate_classifiers(second, steps, {})[0] == 0.0
    # a dataset's first step without a selection pays the fidelity classifier, the first with one the selector
    unselected = _generate_step(tmp_path, "pretrained")
    steps = [unselected, first]
    assert [w for w, _ in estimate._classifiers_to_train(unselected, steps)] == ["fidelity classifier"]
    assert [w for w, _ in estimate._classifiers_to_train(first, steps)] == ["selection classifier"]
    # every selection scores with the selector: realism by its features, relabel by its probabilities
    for sel in ("realism", "relabel"):
        step = _generate_step(tmp_path, f"pretrained-{sel}", SELECTION=sel)
        assert [w for w, _ in estimate._classifiers_to_train(step, [unselected, step])] == ["selection classifier"]
