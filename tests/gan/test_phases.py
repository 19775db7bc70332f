"""histlib.gan.phases: R1 is the gradient through the augmentation, checked against float64 finite differences; the
phase table and the lazy-regularisation gain."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from gan_toys import make_colour_folder, tiny_cfg

from histlib.data.dataset import ImageDataset, to_uint8_tensor
from histlib.gan.augment import AugmentPipe
from histlib.gan.config import TrainConfig
from histlib.gan.distributed import Dist
from histlib.gan.networks import Discriminator
from histlib.gan.phases import cond_weights, phases, r1_penalty_augmented
from histlib.gan.state import Meter, build_state


def _state(p: float):
    torch.manual_seed(0)
    D = Discriminator(num_classes=2, img_resolution=8, channel_base=64, channel_max=8, embed_dim=4,
                      mbstd_group_size=2).double()
    pipe = AugmentPipe.preset("bgc").double()
    pipe.set_p(p)
    return SimpleNamespace(D=D, augment_pipe=pipe, aug_p=p)


def _logit_sum(state, x, c, seed):
    torch.manual_seed(seed)  # the same augmentation draw for every evaluation
    img = state.augment_pipe(x) if state.aug_p > 0 else x
    return state.D(img, c)[0].sum()


def test_r1_is_the_gradient_through_the_augmentation_float64():
    state = _state(p=1.0)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    c = torch.tensor([0, 1])
    torch.manual_seed(5)
    got = r1_penalty_augmented(state, x, c)  # [2]
    # explicit: central differences of sum_i D(A(x))_i w.r.t. every pixel of the un-augmented x, same draw
    grad = torch.zeros_like(x)
    eps = 1e-6
    with torch.no_grad():
        for idx in range(x.numel()):
            xp, xm = x.clone().view(-1), x.clone().view(-1)
            xp[idx] += eps
            xm[idx] -= eps
            grad.view(-1)[idx] = (_logit_sum(state, xp.view_as(x), c, 5) - _logit_sum(state, xm.view_as(x), c, 5)) \
                / (2 * eps)
    want = grad.square().sum(dim=[1, 2, 3])
    torch.testing.assert_close(got.detach().double(), want, rtol=1e-5, atol=1e-7)  # r1_penalty returns float32
    # and it is not the un-augmented penalty: the augmentation changes the gradient
    plain = r1_penalty_augmented(SimpleNamespace(D=state.D, augment_pipe=None, aug_p=0.0), x, c)
    assert not torch.allclose(plain, got, rtol=1e-3)


def test_phase_table_follows_the_config():
    cfg = SimpleNamespace(pl_weight=2.0, pl_interval=4, r1_gamma=0.0, r1_interval=16)
    names = [(n, k) for n, _, k in phases(SimpleNamespace(cfg=cfg))]
    assert names == [("Gmain", 1), ("Greg", 4), ("Dmain", 1)]  # no R1 phase with gamma 0


def test_a_lazy_regulariser_is_scaled_by_its_interval():
    """R1 run every k-th iteration weighs k times as much: the gain comes from the table's interval."""
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    c = torch.tensor([0, 1])
    state = _state(p=0.0)
    state.D.requires_grad_(False)
    plain = r1_penalty_augmented(state, x, c).mean()
    for k in (4, 16):
        cfg = SimpleNamespace(pl_weight=0.0, pl_interval=4, r1_gamma=2.0, r1_interval=k)
        state.cfg, state.dist, state.D_params = cfg, Dist(), list(state.D.parameters())
        state.opt_D = torch.optim.SGD(state.D_params, lr=0.0)  # lr 0: D stays as it is for the next k
        (name, phase, interval), = [row for row in phases(state) if row[0] == "Dreg"]
        [(loss_name, loss)] = phase(state, x, c, Meter(torch.device("cpu")))
        assert (interval, loss_name) == (k, "R1")
        torch.testing.assert_close(loss.detach(), (plain * (cfg.r1_gamma / 2) * k).detach())


def test_d2d_weights_warm_up_linearly():
    """``cond_lambda_warmup_kimg``: both D2D-CE weights grow from 0 to their values, then stay; None: full at once."""
    cfg = TrainConfig(cond_lambda=0.25, cond_lambda_g=0.1, cond_lambda_warmup_kimg=2.0)
    got = [cond_weights(cfg, n) for n in (0, 500, 1000, 2000, 10_000)]
    want = [(0.0, 0.0), (0.0625, 0.025), (0.125, 0.05), (0.25, 0.1), (0.25, 0.1)]
    for (d, g), (wd, wg) in zip(got, want):
        assert abs(d - wd) < 1e-12 and abs(g - wg) < 1e-12
    assert cond_weights(TrainConfig(cond_lambda=0.25), 0) == (0.25, 0.25)  # G's weight follows D's when None
    with pytest.raises(ValueError, match="cond_lambda_warmup_kimg"):
        TrainConfig(cond_lambda_warmup_kimg=0).validate()


def test_d_main_leaves_d2d_out_until_the_warm_up_starts(tmp_path):
    """The training phase uses the ramp: no D2D-CE at the first image, D2D-CE once images have been seen."""
    data = make_colour_folder(tmp_path / "toy", {"red": (200, 30, 30), "blue": (30, 30, 200)}, n=4)
    cfg = tiny_cfg(data, cond_lambda=0.25, cond_lambda_warmup_kimg=1.0).validate()
    dataset = ImageDataset(data, transform=to_uint8_tensor)
    state = build_state(cfg, dataset, 2, torch.device("cpu"), Dist(), None)
    (_, d_main, _), = [row for row in phases(state) if row[0] == "Dmain"]
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    c = torch.tensor([0, 1] * 4)
    names = [name for name, _ in d_main(state, x, c, Meter(torch.device("cpu")))]
    assert names == ["D adversarial"]
    state.cur_nimg = 100
    names = [name for name, _ in d_main(state, x, c, Meter(torch.device("cpu")))]
    assert names == ["D adversarial", "D D2D-CE"]
