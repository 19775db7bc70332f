"""The study's generation axes: selections and amounts of synthetic data, each its own generate and classify step."""

from pathlib import Path

import pytest

from histlib import study

ROOT = Path(__file__).resolve().parents[2]


def _study(tmp_path: Path, generate: str):
    text = (ROOT / "studies" / "demo.yaml").read_text()
    assert "generate:\n  IMAGES_PER_CLASS: 24\n" in text
    path = tmp_path / "s.yaml"
    path.write_text(text.replace("generate:\n  IMAGES_PER_CLASS: 24\n", f"generate:\n{generate}"))
    return study.load_study(path)


def test_without_the_axes_the_plan_is_unchanged(tmp_path):
    plain = study.plan(_study(tmp_path, "  IMAGES_PER_CLASS: 24\n"))
    gen = [st for st in plain if st.stage == "generate"]
    assert [st.name.split("__")[-1] for st in gen] == ["pretrained", "freeze_d1"]
    assert all("SELECTION" not in st.params and "AMOUNT" not in st.params for st in gen)
    # naming 'none' alone is the same set: same names, same parameters, same hashes
    named = study.plan(_study(tmp_path, "  IMAGES_PER_CLASS: 24\n  selections: [none]\n"))
    study.hash_steps(plain)
    study.hash_steps(named)
    assert [(st.name, st.hash) for st in plain] == [(st.name, st.hash) for st in named]


def test_each_selection_and_amount_is_a_generated_set_and_a_classify_step(tmp_path):
    s = _study(tmp_path, "  IMAGES_PER_CLASS: 24\n  selections: [none, realism]\n  amounts: [0.5, 2]\n")
    steps = study.plan(s)
    gen = {st.name.split("__")[-1]: st for st in steps if st.stage == "generate"}
    assert sorted(gen) == sorted(f"{v}-{x}" for v in ("pretrained", "freeze_d1")
                                 for x in ("0.5x", "2x", "realism-0.5x", "realism-2x"))
    p = gen["freeze_d1-realism-2x"].params
    assert p["SELECTION"] == "realism" and p["AMOUNT"] == 2 and p["RUN_DIR"].endswith("/generate/freeze_d1-realism-2x")
    assert p["CHECKPOINT"].endswith("/finetune/freeze_d1/checkpoints/latest.pt")
    assert "SELECTION" not in gen["pretrained-0.5x"].params
    cls = {st.params.get("VARIANT"): st for st in steps if st.stage == "classify"}
    assert set(cls) == {None, *gen}  # the real set once, then every generated set
    c = cls["pretrained-realism-0.5x"]
    assert c.params["SYNTH_DIR"].endswith("/generate/pretrained-realism-0.5x/images")
    assert "04_generate__sample_target__pretrained-realism-0.5x" in c.depends
    study.hash_steps(steps)
    assert len({st.hash for st in steps}) == len(steps)


@pytest.mark.parametrize("generate, match", [
    ("  selections: [none, best]\n", r"generate.selections: 'best' is not one of"),
    ("  amounts: [1, 0]\n", r"generate.amounts: 0 is not a positive number"),
    ("  amounts: [1, 1]\n", "without repeats"),
    ("  selections: [realism]\n  SELECTION: fidelity\n", "either selections .* or SELECTION"),
    ("  amounts: 2\n", r"generate.amounts=2: expected a non-empty list"),
])
def test_bad_axes_get_one_clear_error(tmp_path, generate, match):
    with pytest.raises(study.StudyError, match=match):
        study.plan(_study(tmp_path, generate))
