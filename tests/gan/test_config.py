"""histlib.gan.config: profiles own the defaults (a notebook parameter left at None means the profile's value, or the
field default), and TrainConfig refuses what it cannot run."""

import dataclasses
import json

import pytest

from histlib.gan.config import TrainConfig
from histlib.generate.config import GenerateConfig


@pytest.mark.parametrize("profile, kimg, batch, res", [("demo", 10.0, 16, 32), ("paper", 10000.0, 64, 256)])
def test_train_config_none_means_profile_value(profile, kimg, batch, res):
    cfg = TrainConfig.from_profile(profile, kimg=None, batch_size=None, resolution=None, resume_from=None,
                                   metrics_every_kimg=None)
    assert (cfg.kimg, cfg.batch_size, cfg.resolution, cfg.resume_from) == (kimg, batch, res, None)
    assert TrainConfig.from_profile(profile, kimg=3).kimg == 3


def test_generate_config_none_means_profile_value_or_field_default():
    demo = GenerateConfig.from_profile("demo", checkpoint="c", dataset_dir="d", images_per_class=None, num_sets=None)
    paper = GenerateConfig.from_profile("paper", checkpoint="c", dataset_dir="d", images_per_class=None, num_sets=None)
    assert (demo.images_per_class, demo.num_sets) == (32, 1)
    assert (paper.images_per_class, paper.num_sets) == (5000, 3)


def test_finetune_stage_layers_the_profile_s_finetune_settings():
    base = TrainConfig.from_profile("demo")
    ft = TrainConfig.from_profile("demo", stage="finetune")
    assert (base.cond_lambda, ft.cond_lambda) == (0.25, 0.5)  # demo fine-tunes with the heavier conditional term
    assert TrainConfig.from_profile("demo", stage="finetune", cond_lambda=0.3).cond_lambda == 0.3
    assert TrainConfig.from_profile("demo", stage="finetune", cond_lambda=None).cond_lambda == 0.5
    paper = TrainConfig.from_profile("paper", stage="finetune")
    assert paper == TrainConfig.from_profile("paper")  # no fine-tuning settings of its own
    with pytest.raises(ValueError, match="stage='train'"):
        TrainConfig.from_profile("demo", stage="train")


def test_every_profile_table_follows_the_one_list_of_names():
    from histlib.config import PROFILE_ABOUT, PROFILES
    from histlib.gan.config import PROFILES as GAN_PROFILES

    assert tuple(GAN_PROFILES) == PROFILES
    assert tuple(PROFILE_ABOUT) == PROFILES


def test_profiles_and_validation():
    for profile, res in (("demo", 32), ("reduced", 64), ("paper", 256)):
        cfg = TrainConfig.from_profile(profile)
        assert cfg.profile == profile and cfg.resolution == res
        cfg.validate()
    paper = TrainConfig.from_profile("paper")
    assert paper.batch_size == 64 and paper.r1_gamma == 1.0 and paper.ema_kimg == 20 and paper.augment == "ada"
    assert TrainConfig.from_profile("demo", kimg=3).kimg == 3
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_profile("demo", kimgs=3)
    with pytest.raises(ValueError, match="profile"):
        TrainConfig.from_profile("huge")
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment="strong").validate()
    with pytest.raises(ValueError, match="resolution"):
        TrainConfig(resolution=48).validate()
    # plain types only: survives a JSON round trip
    cfg = TrainConfig.from_profile("demo")
    from histlib.config import from_dict

    assert from_dict(TrainConfig, json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
