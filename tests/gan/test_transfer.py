"""histlib.gan.transfer: freezing (block order of the contract), loading a base, new classes, relabelling, and
fine-tuning runs that keep frozen tensors and each class's colour."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from gan_toys import load, make_colour_folder, tiny_cfg, tiny_d, tiny_g

from histlib import runs
from histlib.gan.checkpoint import load_generator
from histlib.gan.launch import train_gan
from histlib.gan.networks import Generator
from histlib.gan.transfer import class_embedding_names, freeze_discriminator, freeze_generator, load_pretrained

pytestmark = pytest.mark.usefixtures("seeded")


# ----------------------------------------------------------------------------------------------------------------
# Freezing and loading a base


def test_freeze_discriminator_block_one_is_fromrgb_and_top_block():
    D = tiny_d(res=32)
    names = freeze_discriminator(D, 1)
    assert names and all(n.startswith("blocks.0.") for n in names)
    assert {"blocks.0.fromrgb.weight", "blocks.0.conv0.weight", "blocks.0.conv1.weight", "blocks.0.skip.weight"} <= set(
        names
    )
    frozen = {n for n, p in D.named_parameters() if not p.requires_grad}
    assert frozen == set(names)
    assert set(freeze_discriminator(tiny_d(res=32), 2)) == {
        n for n, _ in tiny_d(res=32).named_parameters() if n.startswith(("blocks.0.", "blocks.1."))
    }
    with pytest.raises(ValueError, match="freeze_d"):
        freeze_discriminator(D, len(D.blocks) + 1)


def test_freeze_generator_counts_from_4x4_and_keeps_mapping_trainable():
    G = tiny_g(res=32)
    names = freeze_generator(G, 1)
    assert "synthesis.blocks.0.const" in names and all(n.startswith("synthesis.blocks.0.") for n in names)
    assert G.synthesis.blocks[0].resolution == 4
    assert all(p.requires_grad for p in G.mapping.parameters())
    with pytest.raises(ValueError, match="freeze_g"):
        freeze_generator(G, -1)


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_frozen_parameters_stay_bit_identical_through_training_steps():
    G, D = tiny_g(res=32), tiny_d(res=32)
    frozen_d = set(freeze_discriminator(D, 2))
    frozen_g = set(freeze_generator(G, 2))
    before_g, before_d = _snapshot(G), _snapshot(D)
    opt_g = torch.optim.Adam([p for p in G.parameters() if p.requires_grad], lr=1e-2)
    opt_d = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        z, c = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
        logits, embed, proxy = D(G(z, c), c)
        loss = torch.nn.functional.softplus(-logits).mean() - (embed * proxy).sum(1).mean()
        opt_g.zero_grad()
        opt_d.zero_grad()
        loss.backward()
        opt_g.step()
        opt_d.step()
    for module, before, frozen in ((G, before_g, frozen_g), (D, before_d, frozen_d)):
        for name, p in module.named_parameters():
            if name in frozen:
                assert not p.requires_grad and p.grad is None
                assert torch.equal(p, before[name]), f"{name} changed although frozen"
            else:
                assert not torch.equal(p, before[name]), f"{name} did not change although trainable"


def test_load_pretrained_reinitialises_exactly_the_class_embeddings():
    G9 = tiny_g(num_classes=9)
    for _ in range(3):
        G9.mapping(torch.randn(18, 16), torch.arange(18) % 9, update_emas=True)
    D9 = tiny_d(num_classes=9)
    G6, D6 = tiny_g(num_classes=6), tiny_d(num_classes=6)
    g_init = G6.state_dict()
    g_init = {k: v.clone() for k, v in g_init.items()}

    report = load_pretrained(G6, G9.state_dict())
    assert set(report["reinitialised"]) == {"mapping.embed.weight", "mapping.w_avg_c"} == set(class_embedding_names(G6))
    assert set(report["skipped"]) == set(report["reinitialised"])
    src, dst = G9.state_dict(), G6.state_dict()
    assert set(report["loaded"]) == set(dst) - set(report["reinitialised"])
    for name in report["loaded"]:
        assert torch.equal(dst[name], src[name]), name
    assert G6.mapping.embed.weight.shape == (16, 6)
    assert not torch.equal(G6.mapping.embed.weight, g_init["mapping.embed.weight"])  # freshly drawn
    torch.testing.assert_close(G6.mapping.w_avg_c, G9.mapping.w_avg.expand(6, -1))

    report = load_pretrained(D6, D9.state_dict())
    assert report["reinitialised"] == ["proxies.weight"]
    for name in report["loaded"]:
        assert torch.equal(D6.state_dict()[name], D9.state_dict()[name]), name
    # The new networks run.
    img = G6(torch.randn(2, 16), torch.tensor([0, 5]))
    D6(img, torch.tensor([0, 5]))


def test_load_pretrained_same_classes_and_errors():
    G_src, G_dst = tiny_g(), tiny_g()
    report = load_pretrained(G_dst, G_src.state_dict())
    assert report["reinitialised"] == [] and report["skipped"] == []
    for k, v in G_src.state_dict().items():
        assert torch.equal(G_dst.state_dict()[k], v)
    forced = load_pretrained(tiny_g(), G_src.state_dict(), reinit_class_embeddings=True)
    assert set(forced["reinitialised"]) == {"mapping.embed.weight", "mapping.w_avg_c"}

    with pytest.raises(ValueError, match="reinit_class_embeddings=True"):
        load_pretrained(tiny_g(num_classes=4), G_src.state_dict(), reinit_class_embeddings=False)
    with pytest.raises(ValueError, match="synthesis.blocks.0.const"):
        load_pretrained(tiny_g(channel_max=8), G_src.state_dict())
    with pytest.raises(ValueError, match="missing"):
        load_pretrained(tiny_g(res=32), G_src.state_dict())
    bad = dict(G_src.state_dict())
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="extra.weight"):
        load_pretrained(tiny_g(), bad)


def test_realignment_finds_the_swap_and_ignores_noise():
    from histlib.gan.transfer import realignment

    swapped = torch.tensor([[30, 2, 0], [1, 0, 31], [0, 29, 3]])  # embedding 1 draws class 2, embedding 2 class 1
    perm = realignment(swapped)
    assert perm == [0, 2, 1]  # class 1 takes embedding 2, class 2 takes embedding 1
    assert realignment(torch.tensor([[20, 6, 6], [5, 22, 5], [6, 6, 20]])) is None  # already right
    # a swap worth less than min_gain of all images is left alone
    assert realignment(torch.tensor([[30, 0, 0], [0, 14, 18], [0, 18, 14]]), min_gain=0.2) is None
    # D must tell the moved classes apart on real images, or its view of G is not evidence
    sure = torch.tensor([[30, 1, 1], [0, 28, 4], [2, 3, 27]])
    unsure = torch.tensor([[30, 1, 1], [0, 16, 16], [2, 14, 16]])  # classes 1 and 2 confused on reals
    assert realignment(swapped, real_view=sure) == [0, 2, 1]
    assert realignment(swapped, real_view=unsure) is None


def test_permute_classes_moves_embeddings_means_and_adam_moments():
    from histlib.gan.transfer import permute_classes

    torch.manual_seed(0)
    G = Generator(z_dim=8, w_dim=8, num_classes=3, img_resolution=8, mapping_layers=1, channel_base=64,
                  channel_max=8).eval()
    opt = torch.optim.Adam(G.parameters(), lr=0.01)
    z = torch.randn(4, 8)
    G(z, torch.zeros(4, dtype=torch.long)).square().mean().backward()
    opt.step()
    G.mapping.w_avg_c.copy_(torch.randn(3, 8))
    before = {k: G(z, torch.full((4,), k), noise_mode="const") for k in range(3)}
    w_avg_c = G.mapping.w_avg_c.clone()
    m = opt.state[G.mapping.embed.weight]["exp_avg"].clone()
    permute_classes(G, [2, 0, 1], opt)  # class 0 takes embedding 2, class 1 embedding 0, class 2 embedding 1
    for new, old in ((0, 2), (1, 0), (2, 1)):
        assert torch.equal(G(z, torch.full((4,), new), noise_mode="const"), before[old])
        assert torch.equal(G.mapping.w_avg_c[new], w_avg_c[old])
        assert torch.equal(opt.state[G.mapping.embed.weight]["exp_avg"][:, new], m[:, old])


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning runs


def test_finetune_freezing_keeps_frozen_tensors(toy, tmp_path):
    base = tmp_path / "base"
    train_gan(tiny_cfg(toy, kimg=0.016), base)
    target = make_colour_folder(tmp_path / "target", {"a": (20, 200, 20), "b": (200, 200, 20), "c": (90, 90, 90)},
                                n=4)
    run = tmp_path / "ft"
    summary = train_gan(tiny_cfg(target, kimg=0.032, resume_from=str(base), freeze_d=1, freeze_g=2), run)
    b, f = load(base / "checkpoints" / "latest.pt"), load(run / "checkpoints" / "latest.pt")
    report = runs.read_json(run / "finetune.json")
    frozen_g, frozen_d = report["frozen"]["G"], report["frozen"]["D"]
    assert frozen_d and all(n.startswith("blocks.0.") for n in frozen_d)
    assert frozen_g and all(n.startswith(("synthesis.blocks.0.", "synthesis.blocks.1.")) for n in frozen_g)
    assert summary["frozen_g_tensors"] == len(frozen_g) and summary["frozen_d_tensors"] == len(frozen_d)
    assert summary["freeze_g_blocks"] == 2 and summary["freeze_d_blocks"] == 1
    for name in frozen_d:
        assert torch.equal(b["D"][name], f["D"][name]), name
    for name in frozen_g:
        assert torch.equal(b["G"][name], f["G"][name]), name
        # G_ema's frozen blocks are G's (the ones its trainable blocks were trained against), unchanged
        assert torch.equal(b["G"][name], f["G_ema"][name]), name
    # trainable tensors moved, the class embeddings were re-initialised for 3 classes
    assert not torch.equal(b["D"]["blocks.1.conv0.weight"], f["D"]["blocks.1.conv0.weight"])
    assert not torch.equal(b["G"]["synthesis.blocks.2.conv1.weight"], f["G"]["synthesis.blocks.2.conv1.weight"])
    assert f["D"]["proxies.weight"].shape[0] == 3 and f["G"]["mapping.embed.weight"].shape[1] == 3
    assert "proxies.weight" in report["D"]["reinitialised"] and report["num_D"]["loaded"] > 0
    assert report["resume_from"].endswith("latest.pt") and report["base_classes"] == ["blue", "red"]


def test_finetune_reinitialises_class_embeddings_by_name(toy, tmp_path):
    """Same class count, other class names: the class embeddings are re-drawn, not mapped onto unrelated classes."""
    base = tmp_path / "base"
    train_gan(tiny_cfg(toy, kimg=0.016), base)
    renamed = make_colour_folder(tmp_path / "renamed", {"x0": (40, 60, 200), "x1": (210, 50, 40)}, n=4)
    run = tmp_path / "ft"
    train_gan(tiny_cfg(renamed, kimg=0.016, resume_from=str(base)), run)
    report = runs.read_json(run / "finetune.json")
    reinit = report["G"]["reinitialised"]
    assert any(n.endswith("embed.weight") for n in reinit)
    assert report["G_ema"]["reinitialised"] == reinit
    b = load(base / "checkpoints" / "latest.pt")
    f = load(run / "checkpoints" / "latest.pt")
    name = next(n for n in reinit if n.endswith("embed.weight"))
    assert not torch.equal(f["G"][name], b["G"][name])


def test_finetune_of_a_projection_base_keeps_the_head_and_refuses_another_d(toy, tmp_path):
    proj = {"D_kwargs": {"cond_projection": True}}
    base = tmp_path / "base"
    train_gan(tiny_cfg(toy, kimg=0.016, **proj), base)
    renamed = make_colour_folder(tmp_path / "renamed", {"x0": (40, 60, 200), "x1": (210, 50, 40), "x2": (0, 0, 0)}, n=4)
    run = tmp_path / "ft"
    train_gan(tiny_cfg(renamed, kimg=0.016, resume_from=str(base), **proj), run)
    report = runs.read_json(run / "finetune.json")
    assert "projection.cmap.weight" in report["D"]["reinitialised"]
    assert "projection.proj.weight" in report["D"]["loaded"]
    with pytest.raises(ValueError, match="D cond_projection True in the base vs False here"):
        train_gan(tiny_cfg(renamed, kimg=0.016, resume_from=str(base), D_kwargs={"cond_projection": False}),
                  tmp_path / "plain")
    assert not (tmp_path / "plain").exists()
    with pytest.raises(ValueError, match="D uncond_logit True in the base vs False here"):
        train_gan(tiny_cfg(renamed, kimg=0.016, resume_from=str(base),
                           D_kwargs={"cond_projection": True, "uncond_logit": False}), tmp_path / "only")
    assert not (tmp_path / "only").exists()


# ----------------------------------------------------------------------------------------------------------------
# Class fidelity of transfer (issue: fine-tuned generators drew the wrong class)

BASE_COLOURS = {"b_red": (210, 40, 40), "b_green": (40, 190, 60), "b_blue": (40, 60, 210), "b_yellow": (220, 210, 40)}
# other names, other order: a fine-tuned generator must draw t_blue blue, not whatever base class it started at
TARGET_COLOURS = {"t_blue": (50, 70, 200), "t_red": (200, 50, 50), "t_green": (50, 180, 70)}


def _class_colour_agreement(G, classes, colours):
    """Fraction of classes whose generated mean colour is nearest their own class's colour (and the means)."""
    torch.manual_seed(0)
    z = torch.randn(64, G.z_dim)
    refs = np.array([colours[c] for c in classes]) / 127.5 - 1
    hits, means = 0, []
    for k in range(len(classes)):
        with torch.no_grad():
            mean = G(z, torch.full((64,), k), noise_mode="const").mean(dim=[0, 2, 3]).numpy()
        means.append(((mean + 1) * 127.5).round().tolist())
        hits += int(np.linalg.norm(refs - mean, axis=1).argmin() == k)
    return hits / len(colours), means


@pytest.fixture(scope="module")
def colour_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour_base")
    data = make_colour_folder(root / "data", BASE_COLOURS, n=16)
    # cond_lambda 0.25 (the demo profile's before it became 0.5): the 'random' case below needs the swap it was built
    # to undo; at 0.5 this toy's randomly started classes collapse onto one colour instead (no swap for the
    # relabelling to undo; docs/results.md), while the default 'match' start is right at both weights
    cfg = tiny_cfg(data, kimg=4.0, tick_kimg=0.5, snapshot_ticks=100, batch_size=16, augment="none", lr_g=0.005,
                   lr_d=0.005, r1_gamma=0.01, pl_weight=0.0, style_mixing_prob=0.0, ema_kimg=0.2, cond_lambda=0.25)
    train_gan(cfg, root / "run")
    G, info = load_generator(root / "run")
    base_agreement, means = _class_colour_agreement(G, info["classes"], BASE_COLOURS)
    assert base_agreement == 1.0, f"the base GAN itself did not learn its colours: {means}"
    return root / "run", cfg


@pytest.mark.parametrize(("class_init", "cond_lambda"), [("match", 0.5), ("match", 0.25), ("random", 0.25)])
def test_finetune_keeps_each_class_between_different_class_sets(colour_base, tmp_path, class_init, cond_lambda):
    """Base classes red/green/blue/yellow, target classes blue/red/green under other names: each fine-tuned class
    must draw its own colour. Before the fix, freshly drawn class embeddings kept whatever base colour they landed
    on (t_green drawn red and t_red green). 'match' starts each class at the most similar base class; with
    'random' the relabelling by D's view (realign_classes) must undo the swap."""
    base, base_cfg = colour_base
    data = make_colour_folder(tmp_path / "target", TARGET_COLOURS, n=16)
    cfg = dataclasses.replace(base_cfg, data_dir=str(data), kimg=0.5, resume_from=str(base), class_init=class_init,
                              cond_lambda=cond_lambda)
    train_gan(cfg, tmp_path / "ft")
    report = runs.read_json(tmp_path / "ft" / "finetune.json")
    assert report["class_init"]["method"] == class_init
    if class_init == "match":
        assert report["class_init"]["matched_base_class"] == {"t_blue": "b_blue", "t_red": "b_red",
                                                              "t_green": "b_green"}
    G, info = load_generator(tmp_path / "ft")
    agreement, means = _class_colour_agreement(G, info["classes"], TARGET_COLOURS)
    assert agreement == 1.0, f"generated mean colours {means} for {info['classes']}"
    stats = [json.loads(line) for line in open(tmp_path / "ft" / "stats.jsonl")]
    assert all("d_class_agreement" in r for r in stats)
    if class_init == "random":  # the swap was undone by relabelling, not by luck
        assert any(r.get("class_realign") for r in stats)
        assert runs.read_json(tmp_path / "ft" / "metrics.json")["class_realignments"]


@pytest.mark.parametrize("projection", ["random", "matched"])
def test_projection_class_embeddings_start_random_or_matched(projection):
    """``projection_init``: D's projection-head class embeddings of the new classes are drawn afresh ('random') or
    copied from the base classes each target class was matched to ('matched'), as G's label embeddings are."""
    from histlib.gan.transfer import init_class_embeddings_from_base

    torch.manual_seed(0)
    base_G, base_D = tiny_g(num_classes=4).eval(), tiny_d(num_classes=4, cond_projection=True).eval()
    G, D = tiny_g(num_classes=3), tiny_d(num_classes=3, cond_projection=True)
    fresh = D.projection.cmap.weight.detach().clone()
    real = torch.rand(12, 3, 16, 16) * 2 - 1
    labels = torch.arange(3).repeat_interleave(4)
    with torch.no_grad():
        info = init_class_embeddings_from_base(G, D, base_G, base_D, real, labels, samples_per_class=4,
                                               projection=projection)
    assert info["projection"] == projection and len(set(info["match"])) == 3
    wanted = base_D.projection.cmap.weight[torch.as_tensor(info["match"])] if projection == "matched" else fresh
    assert torch.equal(D.projection.cmap.weight, wanted)
    with pytest.raises(ValueError, match="projection="):
        init_class_embeddings_from_base(G, D, base_G, base_D, real, labels, samples_per_class=4, projection="x")
    from histlib.gan.config import TrainConfig

    with pytest.raises(ValueError, match="projection_init"):
        TrainConfig.from_profile("demo", projection_init="x").validate()


def test_a_checkpoint_older_than_a_config_field_resumes_at_its_default(tmp_path):
    """A field added after a checkpoint was written (``projection_init``) counts as its default when resuming; a
    value other than the default is still a difference."""
    from histlib.gan.checkpoint import check_resume_config
    from histlib.gan.config import TrainConfig

    cfg = TrainConfig.from_profile("demo")
    saved = dataclasses.asdict(cfg)
    del saved["projection_init"]
    check_resume_config(saved, cfg, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="projection_init"):
        check_resume_config(saved, dataclasses.replace(cfg, projection_init="matched"), tmp_path / "ckpt.pt")


def test_a_base_without_d2d_ce_matches_classes_in_d_s_features(tmp_path):
    """A base trained with ``cond_lambda`` 0 (the class only through a projection-only logit) never trains D's
    D2D-CE head; fine-tuning then matches the new classes in the features both heads read, and gets them right."""
    proj_only = {"D_kwargs": {"cond_projection": True, "uncond_logit": False}}
    data = make_colour_folder(tmp_path / "data", BASE_COLOURS, n=16)
    cfg = tiny_cfg(data, kimg=4.0, tick_kimg=0.5, snapshot_ticks=100, batch_size=16, augment="none", lr_g=0.005,
                   lr_d=0.005, r1_gamma=0.01, pl_weight=0.0, style_mixing_prob=0.0, ema_kimg=0.2, cond_lambda=0.0,
                   **proj_only)
    train_gan(cfg, tmp_path / "base")
    G, info = load_generator(tmp_path / "base")
    assert _class_colour_agreement(G, info["classes"], BASE_COLOURS)[0] == 1.0  # the projection taught the colours
    target = make_colour_folder(tmp_path / "target", TARGET_COLOURS, n=16)
    ft = dataclasses.replace(cfg, data_dir=str(target), kimg=0.032, resume_from=str(tmp_path / "base"),
                             cond_lambda=0.5)
    train_gan(ft, tmp_path / "ft")
    report = runs.read_json(tmp_path / "ft" / "finetune.json")["class_init"]
    assert report["space"] == "features"
    assert report["matched_base_class"] == {"t_blue": "b_blue", "t_red": "b_red", "t_green": "b_green"}
    from histlib.gan.transfer import class_centres
    with pytest.raises(ValueError, match="space='nowhere'"):
        class_centres(tiny_d(num_classes=4), torch.zeros(2, 3, 16, 16), torch.tensor([0, 1]), 2, space="nowhere")
