"""Training-set names, run names and the nested fractions of the real-data learning curve."""

import numpy as np
import pytest

from histlib.classify import sets as cs


@pytest.mark.parametrize("name, parsed", [
    ("real__resnet34__seed0", ("real", None, "resnet34", 0)),
    ("real@0.25__resnet34__seed2", ("real@0.25", None, "resnet34", 2)),
    ("real+stain__densenet169__seed1", ("real+stain", None, "densenet169", 1)),
    ("real+synthetic+stain__freeze_d1__resnet34__seed0", ("real+synthetic+stain", "freeze_d1", "resnet34", 0)),
    ("synthetic__freeze_d1_g2__efficientnet_b2__seed10", ("synthetic", "freeze_d1_g2", "efficientnet_b2", 10)),
    ("synthetic+stain__freeze_g2__resnet34__seed1", ("synthetic+stain", "freeze_g2", "resnet34", 1)),
])
def test_run_names_round_trip(name, parsed):
    got = cs.parse_run_name(name)
    assert (got["train_set"], got["variant"], got["model"], got["seed"]) == parsed
    ts, frac = (("real", 0.25) if parsed[0] == "real@0.25" else (parsed[0], 1.0))
    assert cs.run_name(ts, parsed[2], parsed[3], parsed[1], frac) == name
    assert cs.label_fraction(parsed[0]) == frac


def test_real_only_sets_carry_no_variant_and_unknown_names_are_refused():
    assert cs.run_name("real+stain", "m", 0, "freeze_d1") == "real+stain__m__seed0"
    assert cs.parse_run_name("notarun") is None and cs.parse_run_name("real__m__seedx") is None
    with pytest.raises(ValueError, match=r"'real\+stain', 'real\+synthetic\+stain'"):
        cs.check_train_set("real+jitter")
    assert [t for t in cs.TRAIN_SETS if cs.needs_synthetic(t)] == ["synthetic", "real+synthetic",
                                                                   "real+synthetic+stain", "synthetic+stain"]
    assert [t for t in cs.TRAIN_SETS if cs.uses_stain(t)] == ["real+stain", "real+synthetic+stain", "synthetic+stain"]
    assert not cs.uses_real("synthetic+stain")
    with pytest.raises(ValueError, match="real_fraction"):
        cs.check_fraction(0)


def test_nested_fraction_is_by_group_per_class_and_nested():
    rng = np.random.default_rng(0)
    # 3 classes with 10, 7 and 4 groups of 1-4 images each
    groups, labels = [], []
    for c, n_groups in enumerate((10, 7, 4)):
        for g in range(n_groups):
            k = int(rng.integers(1, 5))
            groups += [f"c{c}g{g}"] * k
            labels += [c] * k
    groups, labels = np.array(groups), np.array(labels)
    previous = set()
    for f in (0.25, 0.5, 0.75, 1.0):
        idx = cs.nested_fraction(labels, groups, f, seed=3)
        chosen = set(idx.tolist())
        assert previous <= chosen  # nested: a larger fraction holds the smaller ones
        previous = chosen
        for c, n_groups in enumerate((10, 7, 4)):
            kept = set(groups[idx][labels[idx] == c])
            assert len(kept) == max(1, int(np.ceil(f * n_groups)))
            # whole groups only: every image of a kept group is kept
            assert all(set(np.flatnonzero(groups == g)) <= chosen for g in kept)
    assert len(cs.nested_fraction(labels, groups, 1.0, seed=3)) == len(labels)
    a = cs.nested_fraction(labels, groups, 0.5, seed=3)
    assert np.array_equal(a, cs.nested_fraction(labels, groups, 0.5, seed=3))
    assert any(not np.array_equal(a, cs.nested_fraction(labels, groups, 0.5, seed=s)) for s in range(4, 8))
