"""One training iteration of the conditional StyleGAN2 (Karras et al. 2020, with lazy regularisation), as four
phases on a global batch of ``cfg.batch_size`` real images:

1. ``G main``: non-saturating logistic loss on augmented fakes + ``cond_lambda_g`` (default ``cond_lambda``) × D2D-CE
   of the fakes' embeddings (both D2D-CE weights ramped up from 0 over ``cond_lambda_warmup_kimg`` when set).
2. ``G reg`` (every ``pl_interval`` iterations): path-length penalty on a shrunk batch.
3. ``D main``: logistic loss on augmented fakes and reals + ``cond_lambda`` × D2D-CE of the reals' embeddings; the
   signs of the real logits feed the ADA controller.
4. ``D reg`` (every ``r1_interval`` iterations): ``γ/2`` × R1; R1 is the squared gradient of ``D(augment(x))`` with
   respect to the un-augmented real ``x`` (StyleGAN2-ADA's definition).

Each phase is a function ``(state, real, real_c, meter) -> [(name, loss)]`` that steps its optimiser; :func:`phases`
is the table of them with the interval at which each runs. A regulariser that runs every k-th iteration has its loss
scaled by k (lazy regularisation: the same gradient per image as running it every iteration); the table sets that
gain from the interval, so the two cannot disagree. The losses' maths is in :mod:`histlib.gan.losses`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch

from histlib.gan import losses
from histlib.gan.config import TrainConfig
from histlib.gan.distributed import all_mean, average_gradients, device_randn
from histlib.gan.networks import Generator
from histlib.gan.state import Meter, TrainState

Losses = list[tuple[str, torch.Tensor]]


@contextlib.contextmanager
def trainable(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Gradients for these parameters only inside the block (frozen ones stay off, the other network too)."""
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(False)


def optimizer_step(state: TrainState, loss: torch.Tensor, params: list[torch.nn.Parameter],
                   opt: torch.optim.Optimizer) -> None:
    """Backward, average the gradients over processes, step, clear."""
    loss.backward()
    average_gradients(params, state.dist)
    opt.step()
    opt.zero_grad(set_to_none=True)


def run_G(state: TrainState, z: torch.Tensor, c: torch.Tensor, update_emas: bool = False):
    """Images ``[n, 3, R, R]`` and their ``ws`` for latents ``z`` and labels ``c``, with style mixing (the second
    latent and the cut-off come from the shared latent stream)."""
    G = state.G
    ws = G.mapping(z, c, update_emas=update_emas)  # [n, num_ws, w_dim]
    cut = state.latents.mixing_cutoff(state.cfg.style_mixing_prob, ws.shape[1])
    if cut is not None:
        z2, _ = state.latents.draw(len(z) * state.dist.world)
        ws = Generator.mix_styles(ws, G.mapping(z2, c, update_emas=False), cut)
    return G.synthesis(ws, noise_mode=state.cfg.noise_mode), ws


def run_D(state: TrainState, img: torch.Tensor, c: torch.Tensor):
    """``D(augment(img), c)``; p = 0 is the identity, so the pipe's work is skipped then."""
    if state.augment_pipe is not None and state.aug_p > 0:
        img = state.augment_pipe(img)
    return state.D(img, c)


def _d2d(state: TrainState, embed: torch.Tensor, proxy: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The global-batch D2D-CE and its value ×W (gradients are averaged, not summed, over ranks afterwards)."""
    cfg = state.cfg
    loss = losses.d2d_ce_loss_global(embed, proxy, c, tau=cfg.d2d_tau, margin_pos=cfg.d2d_margin_pos,
                                     margin_neg=cfg.d2d_margin_neg)
    return loss, loss * state.dist.world


def cond_weights(cfg: TrainConfig, cur_nimg: int) -> tuple[float, float]:
    """D2D-CE's weights ``(D's on reals, G's on fakes)`` after ``cur_nimg`` images: ``cond_lambda`` and
    ``cond_lambda_g`` (None: ``cond_lambda``), scaled by ``cur_nimg / (1000 * cond_lambda_warmup_kimg)`` until that
    reaches 1 when a warm-up is set."""
    w_d = cfg.cond_lambda
    w_g = cfg.cond_lambda if cfg.cond_lambda_g is None else cfg.cond_lambda_g
    if cfg.cond_lambda_warmup_kimg is not None:
        ramp = min(1.0, cur_nimg / (cfg.cond_lambda_warmup_kimg * 1000))
        w_d, w_g = w_d * ramp, w_g * ramp
    return w_d, w_g


def g_main(state: TrainState, real: torch.Tensor, real_c: torch.Tensor, meter: Meter) -> Losses:
    with trainable(state.G_params):
        z, c = state.latents.draw(state.cfg.batch_size)
        img, _ = run_G(state, z, c)
        logits, embed, proxy = run_D(state, img, c)
        loss_adv = losses.g_nonsaturating_loss(logits).mean()
        meter.note("loss_g", loss_adv)
        out, loss = [("G adversarial", loss_adv)], loss_adv
        weight = cond_weights(state.cfg, state.cur_nimg)[1]
        if weight > 0:
            value, scaled = _d2d(state, embed, proxy, c)
            loss = loss + weight * scaled
            meter.note("loss_g_d2d", value)
            out.append(("G D2D-CE", value))
        optimizer_step(state, loss, state.G_params, state.opt_G)
    return out


def g_reg(state: TrainState, real: torch.Tensor, real_c: torch.Tensor, meter: Meter, gain: int) -> Losses:
    """Path-length penalty, its loss × ``gain`` (the lazy-regularisation interval, set by :func:`phases`)."""
    cfg, W = state.cfg, state.dist.world
    n_global = max(W, cfg.batch_size // cfg.pl_batch_shrink // W * W)
    with trainable(state.G_params):
        z, c = state.latents.draw(n_global)
        img, ws = run_G(state, z, c)
        noise = device_randn((n_global, *img.shape[1:]), state.latents.seed(), state.device)
        noise = noise[state.dist.rank * len(z):(state.dist.rank + 1) * len(z)]
        pen = state.pl_reg(img, ws, noise, batch_mean=lambda m: all_mean(m, state.dist))
        loss = pen.mean() * cfg.pl_weight * gain
        meter.note("loss_pl", pen.mean())
        meter.note("pl_mean", state.pl_reg.pl_mean)
        optimizer_step(state, loss, state.G_params, state.opt_G)
    return [("path length", loss)]


def d_main(state: TrainState, real: torch.Tensor, real_c: torch.Tensor, meter: Meter) -> Losses:
    """The fakes' w also update G's tracked means of w: over the global batch, identically on every rank."""
    cfg = state.cfg
    with trainable(state.D_params):
        z, c, z_all, c_all = state.latents.draw(cfg.batch_size, keep_global=True)
        with torch.no_grad():
            img, _ = run_G(state, z, c, update_emas=not state.dist.active)
            if state.dist.active:
                state.G.mapping(z_all, c_all, update_emas=True)
        fake_logits, _, _ = run_D(state, img, c)
        real_logits, embed, proxy = run_D(state, real, real_c)
        if state.ada is not None:
            state.ada.accumulate(real_logits)
        loss_real, loss_fake = losses.d_logistic_loss(real_logits, fake_logits)
        loss = loss_real.mean() + loss_fake.mean()
        meter.note("loss_d", loss)
        meter.note("real_logit", real_logits.mean())
        meter.note("fake_logit", fake_logits.mean())
        out = [("D adversarial", loss)]
        weight = cond_weights(cfg, state.cur_nimg)[0]
        if weight > 0:
            value, scaled = _d2d(state, embed, proxy, real_c)
            loss = loss + weight * scaled
            meter.note("loss_d_d2d", value)
            out.append(("D D2D-CE", value))
        optimizer_step(state, loss, state.D_params, state.opt_D)
    return out


def r1_penalty_augmented(state: TrainState, real: torch.Tensor, real_c: torch.Tensor) -> torch.Tensor:
    """``‖∇_x D(augment(x))‖²`` per real image: the gradient with respect to the *un-augmented* image through the
    same augmented path the main loss sees (StyleGAN2-ADA), differentiable w.r.t. D's parameters."""
    x = real.detach().requires_grad_(True)
    logits, _, _ = run_D(state, x, real_c)
    return losses.r1_penalty(x, logits)


def d_reg(state: TrainState, real: torch.Tensor, real_c: torch.Tensor, meter: Meter, gain: int) -> Losses:
    """``γ/2`` × R1, its loss × ``gain`` (the lazy-regularisation interval, set by :func:`phases`)."""
    cfg = state.cfg
    with trainable(state.D_params):
        pen = r1_penalty_augmented(state, real, real_c)
        loss = pen.mean() * (cfg.r1_gamma / 2) * gain
        meter.note("r1_penalty", pen.mean())
        optimizer_step(state, loss, state.D_params, state.opt_D)
    return [("R1", loss)]


Phase = Callable[[TrainState, torch.Tensor, torch.Tensor, Meter], Losses]


def _lazy(name: str, regulariser: Callable[..., Losses], interval: int) -> tuple[str, Phase, int]:
    """A regulariser run every ``interval`` iterations, its loss scaled by the same ``interval``."""
    return name, functools.partial(regulariser, gain=interval), interval


def phases(state: TrainState) -> list[tuple[str, Phase, int]]:
    """``[(name, phase, interval)]`` in execution order; a phase runs when ``step % interval == 0`` (a
    regulariser with weight 0 is left out)."""
    cfg = state.cfg
    out: list[tuple[str, Phase, int]] = [("Gmain", g_main, 1)]
    if cfg.pl_weight > 0:
        out.append(_lazy("Greg", g_reg, cfg.pl_interval))
    out.append(("Dmain", d_main, 1))
    if cfg.r1_gamma > 0:
        out.append(_lazy("Dreg", d_reg, cfg.r1_interval))
    return out
