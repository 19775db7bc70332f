"""Class starts set by hand when fine-tuning (TrainConfig.class_map, notebook 03's CLASS_MAP): the matching keeps
them, the relabelling during training leaves them, finetune.json and the class-match tables say which were set, and
names that are not classes are refused before a run folder is made and when a study is planned."""

import pytest
import torch
from gan_toys import make_colour_folder, tiny_cfg

from histlib import runs, study
from histlib.gan.config import check_class_map
from histlib.gan.finetune_report import class_init_table
from histlib.gan.launch import train_gan
from histlib.gan.transfer import match_classes, realignment
from histlib.report_gan import class_match_table
from histlib.study.checks import check_values

SIM = torch.tensor([[0.9, 0.1, 0.1, 0.2],
                    [0.1, 0.8, 0.1, 0.7],
                    [0.1, 0.1, 0.9, 0.1]])


def test_matching_keeps_the_classes_set_by_hand_and_matches_the_rest_among_the_other_base_classes():
    assert match_classes(SIM) == [0, 1, 2]
    # target 1 set to base 0: targets 0 and 2 are matched one-to-one among bases 1, 2, 3 (0 takes 3, its best left)
    assert match_classes(SIM, {1: 0}) == [3, 0, 2]
    # two targets set to one base class: allowed; the third is matched among the base classes not set
    assert match_classes(SIM, {0: 1, 1: 1}) == [1, 1, 2]
    # every base class set: the rest take their most similar base class of all
    assert match_classes(SIM[:, :2], {0: 1, 1: 0}) == [1, 0, 0]


def test_realignment_never_moves_a_class_set_by_hand():
    swap01 = torch.tensor([[0, 20, 0], [20, 0, 0], [0, 0, 20]])
    assert realignment(swap01) == [1, 0, 2]
    assert realignment(swap01, keep=[0]) is None  # class 0 set by hand: the swap is not undone
    swap12 = torch.tensor([[20, 0, 0], [0, 0, 20], [0, 20, 0]])
    assert realignment(swap12, keep=[0]) == [0, 2, 1]  # classes not set by hand are still relabelled


def test_check_class_map_names_the_parameter_and_the_valid_names():
    assert check_class_map(None, ["a", "b"], ["x"]) == {}
    assert check_class_map({"b": "y"}, ["a", "b"], ["x", "y"]) == {1: 1}
    with pytest.raises(ValueError, match=r"TrainConfig.class_map=.*\['nope'\] not in the run's classes \['a', 'b'\]"):
        check_class_map({"nope": "x"}, ["a", "b"], ["x"])
    with pytest.raises(ValueError, match=r"TrainConfig.class_map=.*\['z'\] not in the base's classes \['x'\]"):
        check_class_map({"a": "z"}, ["a", "b"], ["x"])
    with pytest.raises(ValueError, match="records no class names"):
        check_class_map({"a": "x"}, ["a"], None)
    with pytest.raises(ValueError, match="TrainConfig.class_map.*class_init='match'"):
        tiny_cfg("d", class_map={"a": "x"}, class_init="neutral").validate()


@pytest.fixture(scope="module")
def two_colour_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("class_map")
    data = make_colour_folder(root / "base_data", {"blue": (40, 60, 200), "red": (210, 50, 40)})
    train_gan(tiny_cfg(data, kimg=0.016), root / "base")
    target = make_colour_folder(root / "target", {"x0": (40, 60, 200), "x1": (210, 50, 40)}, n=4)
    return root, target


def test_a_class_set_by_hand_starts_from_its_base_class_and_is_reported_as_set(two_colour_base, tmp_path):
    root, target = two_colour_base
    run = tmp_path / "ft"
    # x0 holds blue images; set by hand to start from red (a researcher's say, whatever the similarity)
    train_gan(tiny_cfg(target, kimg=0.016, resume_from=str(root / "base"), class_map={"x0": "red"}), run)
    init = runs.read_json(run / "finetune.json")["class_init"]
    assert init["matched_base_class"]["x0"] == "red" and init["set_by_hand"] == ["x0"]
    assert init["matched_base_class"]["x1"] == "blue"  # red's images, but blue is the one base class left
    table = class_match_table(run).set_index("target class")
    assert list(table["how"]) == ["set", "matched"]
    assert table.loc["x0", "from base class"] == "red" and table.loc["x0", "looks arbitrary"] == ""
    assert list(class_init_table(run)["how"]) == ["set", "matched"]


@pytest.mark.parametrize("class_map, match", [({"x9": "red"}, r"\['x9'\] not in the run's classes"),
                                              ({"x0": "green"}, r"\['green'\] not in the base's classes")])
def test_unknown_names_are_refused_before_a_run_folder_is_made(two_colour_base, tmp_path, class_map, match):
    root, target = two_colour_base
    with pytest.raises(ValueError, match=match):
        train_gan(tiny_cfg(target, kimg=0.016, resume_from=str(root / "base"), class_map=class_map), tmp_path / "ft")
    assert not (tmp_path / "ft").exists()


def test_study_plan_refuses_a_class_map_with_unknown_names(tmp_path):
    base = make_colour_folder(tmp_path / "base", {"blue": (40, 60, 200), "red": (210, 50, 40)}, n=2)
    target = make_colour_folder(tmp_path / "target", {"x0": (40, 60, 200), "x1": (210, 50, 40)}, n=2)
    spec = (f"name: toy\nstages: [base_gan, finetune]\nbase: {{name: a, prepared: {base.as_posix()}}}\n"
            f"targets: [{{name: b, prepared: {target.as_posix()}}}]\n"
            "finetune: {variants: [scratch, pretrained], CLASS_MAP: %s}\n")
    (tmp_path / "ok.yaml").write_text(spec % "{x0: red}")
    ok = study.load_study(tmp_path / "ok.yaml", results_root=tmp_path / "results")
    steps = study.plan(ok)
    study.validate(steps, ok)  # notebook 03 declares CLASS_MAP
    assert check_values(ok, steps) == []
    assert [s.params.get("CLASS_MAP") for s in steps if s.stage == "finetune"] == [{"x0": "red"}] * 2
    for bad, match in (("{x9: red}", r"finetune.CLASS_MAP=.*\['x9'\] not in the run's classes \['x0', 'x1'\]"),
                       ("{x0: green}", r"finetune.CLASS_MAP=.*\['green'\] not in the base's classes")):
        (tmp_path / "bad.yaml").write_text(spec % bad)
        s = study.load_study(tmp_path / "bad.yaml", results_root=tmp_path / "results")
        with pytest.raises(study.StudyError, match=match):
            check_values(s, study.plan(s))
