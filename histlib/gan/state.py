"""Everything a training run holds between two iterations, in one object: networks, optimisers, augmentation,
counters and random streams (``TrainState``), how it is built for a new run, a fine-tuning run or a resumed one
(:func:`build_state`), and the per-tick bookkeeping of noted values (:class:`Meter`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from histlib.device import rank_seed, seed_all, set_rng_state
from histlib.gan import checkpoint, transfer
from histlib.gan.augment import AdaController, AugmentPipe
from histlib.gan.config import TrainConfig, network_kwargs
from histlib.gan.distributed import Dist, Latents, all_mean
from histlib.gan.losses import PathLengthRegularizer
from histlib.gan.networks import Discriminator, Generator


@dataclass
class TrainState:
    """The networks, optimisers, augmentation, counters and random streams of one training run."""

    cfg: TrainConfig
    device: torch.device
    dist: Dist
    classes: list[str]
    net_kwargs: dict[str, Any]
    G: Generator
    D: Discriminator
    G_ema: Generator
    frozen: dict[str, list[str]]
    G_params: list[torch.nn.Parameter]
    D_params: list[torch.nn.Parameter]
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    pl_reg: PathLengthRegularizer
    augment_pipe: AugmentPipe | None
    ada: AdaController | None
    latents: Latents
    finetune: dict[str, Any] | None = None
    cur_nimg: int = 0
    tick: int = 0
    step: int = 0
    best: dict[str, Any] = field(default_factory=dict)
    next_metrics_nimg: int | None = None
    train_time: float = 0.0
    stopped_early: bool = False
    realignments: list[dict[str, Any]] = field(default_factory=list)
    data_position: dict[str, int] = field(default_factory=lambda: {"epoch": 0, "pos": 0})
    aug_p: float = 0.0  # host copy of the augmentation probability: no device sync per step
    ema_pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (G_ema, G), frozen left out
    ema_buffers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return self.G.num_classes

    @property
    def new_classes(self) -> bool:
        """Fine-tuning with classes the base did not have (the class embeddings started anew)."""
        return bool(self.finetune and (self.finetune.get("class_init") or {}).get("method") not in (None, "loaded"))

    @torch.no_grad()
    def update_ema(self) -> None:
        """G_ema follows G with a half-life of ``ema_kimg`` thousand images (ramped up early); buffers are copied."""
        cfg = self.cfg
        ema_nimg = cfg.ema_kimg * 1000
        if cfg.ema_rampup is not None:
            ema_nimg = min(ema_nimg, (self.cur_nimg + cfg.batch_size) * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch_size / max(ema_nimg, 1e-8))
        if self.ema_pairs:
            torch._foreach_lerp_([a for a, _ in self.ema_pairs], [b for _, b in self.ema_pairs], 1.0 - beta)
        for b_ema, b in self.ema_buffers:
            b_ema.copy_(b)

    def update_ada(self) -> None:
        """ADA's controller adjusts p every ``ada_interval`` iterations."""
        if self.ada is not None:
            new_p = self.ada.update(self.cur_nimg)
            if new_p is not None:
                self.aug_p = float(new_p)


class Meter:
    """Sums of the values noted during a tick (on the device: no host sync per step), averaged over the tick and
    over processes at its end."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, list] = {}

    def note(self, name: str, value: torch.Tensor) -> None:
        s = self.sums.setdefault(name, [torch.zeros([], device=self.device, dtype=torch.float64), 0])
        s[0] += value.detach().double()
        s[1] += 1

    def means(self, dist_info: Dist) -> dict[str, float]:
        names = sorted(self.sums)
        if not names:
            return {}
        sums = torch.stack([self.sums[n][0] for n in names])
        counts = torch.tensor([float(self.sums[n][1]) for n in names], dtype=torch.float64, device=sums.device)
        values = all_mean(sums / counts, dist_info)
        self.sums.clear()
        return {n: float(v) for n, v in zip(names, values.tolist())}


def adam(params: list[torch.nn.Parameter], lr: float, betas: list[float], eps: float, reg_interval: int | None,
         device: torch.device) -> torch.optim.Adam:
    """Adam with lazy-regularisation scaling: lr·k/(k+1) and beta**(k/(k+1)) when a regulariser runs every k steps.

    On CUDA the fused implementation (one kernel for all parameters) is used.
    """
    ratio = reg_interval / (reg_interval + 1) if reg_interval else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=(betas[0] ** ratio, betas[1] ** ratio), eps=eps,
                            fused=True if device.type == "cuda" else None)


def _network_kwargs(cfg: TrainConfig, num_classes: int, device: torch.device) -> dict[str, Any]:
    kw = network_kwargs(cfg.profile, resolution=cfg.resolution)
    out = {name: {**kw[name], **extra, "num_classes": num_classes, "img_resolution": cfg.resolution}
           for name, extra in (("G", cfg.G_kwargs), ("D", cfg.D_kwargs))}
    if device.type != "cuda" or not cfg.mixed_precision:  # fp16 only where it pays off and is supported
        for k in out.values():
            if "num_fp16_res" in k:
                k["num_fp16_res"] = 0
    return out


def _augmentation(cfg: TrainConfig, device: torch.device) -> tuple[AugmentPipe | None, AdaController | None]:
    if cfg.augment == "none":
        return None, None
    pipe = AugmentPipe.preset(cfg.augment_preset).to(device)
    pipe.set_p(cfg.augment_p)
    ada = None
    if cfg.augment == "ada":
        ada = AdaController(pipe, target=cfg.ada_target, interval=cfg.ada_interval, kimg=cfg.ada_kimg,
                            batch_size=cfg.batch_size)
    return pipe, ada


def build_state(cfg: TrainConfig, dataset, num_classes: int, device: torch.device, dist_info: Dist,
                resume: dict[str, Any] | None) -> TrainState:
    """A run's state: networks built under the run's seed (the same initial weights on every rank), then a resumed
    run's checkpoint (``resume``) or a base checkpoint (``cfg.resume_from``) applied, blocks frozen, optimisers and
    augmentation made, and (resuming) every counter, stream and random state restored."""
    seed_all(cfg.seed)
    net_kwargs = _network_kwargs(cfg, num_classes, device)
    G, D = checkpoint.build_networks(net_kwargs, device)
    G_ema = copy.deepcopy(G).eval()
    classes = list(dataset.classes)
    finetune = None
    if resume is not None:
        for name, module in (("G", G), ("D", D), ("G_ema", G_ema)):
            module.load_state_dict(resume[name])
    elif cfg.resume_from:
        base = checkpoint.load_checkpoint(cfg.resume_from, map_location=device)
        finetune = transfer.apply_base(base, G, D, G_ema, dataset, classes, num_classes, net_kwargs, cfg, device)
    frozen = transfer.apply_freezing(G, D, G_ema, cfg)
    G_params = [p for n, p in G.named_parameters() if n not in set(frozen["G"])]
    D_params = [p for n, p in D.named_parameters() if n not in set(frozen["D"])]
    for module in (G, D, G_ema):
        module.requires_grad_(False)
    if dist_info.active and resume is None:
        for t in [*G.state_dict().values(), *D.state_dict().values(), *G_ema.state_dict().values()]:
            torch.distributed.broadcast(t, src=0)
    pipe, ada = _augmentation(cfg, device)
    class_probs = None if cfg.balanced_sampling else \
        np.bincount(dataset.labels, minlength=num_classes) / len(dataset.labels)
    state = TrainState(
        cfg=cfg, device=device, dist=dist_info, classes=classes, net_kwargs=net_kwargs, G=G, D=D, G_ema=G_ema,
        frozen=frozen, G_params=G_params, D_params=D_params,
        opt_G=adam(G_params, cfg.lr_g, cfg.betas, cfg.adam_eps, cfg.pl_interval if cfg.pl_weight > 0 else None,
                   device),
        opt_D=adam(D_params, cfg.lr_d, cfg.betas, cfg.adam_eps, cfg.r1_interval if cfg.r1_gamma > 0 else None,
                   device),
        pl_reg=PathLengthRegularizer(cfg.pl_decay).to(device), augment_pipe=pipe, ada=ada,
        latents=Latents(cfg.seed, G.z_dim, num_classes, class_probs, dist_info, device), finetune=finetune,
        next_metrics_nimg=int(cfg.metrics_every_kimg * 1000) if cfg.metrics_every_kimg else None,
        aug_p=float(pipe.p) if pipe is not None else 0.0,
        ema_pairs=[(p_ema, p) for (n, p_ema), (_, p) in zip(G_ema.named_parameters(), G.named_parameters())
                   if n not in set(frozen["G"])],
        ema_buffers=list(zip(G_ema.buffers(), G.buffers())))
    if resume is not None:
        restore(state, resume)
    else:
        seed_all(rank_seed(cfg.seed, dist_info.rank))
    return state


def restore(state: TrainState, ckpt: dict[str, Any]) -> None:
    """Puts a full checkpoint's optimisers, augmentation, counters, streams and random states into ``state``
    (hooks and early stopping are restored by the loop, which owns them)."""
    state.opt_G.load_state_dict(ckpt["opt_G"])
    state.opt_D.load_state_dict(ckpt["opt_D"])
    state.pl_reg.load_state_dict(ckpt["pl_reg"])
    if state.augment_pipe is not None and ckpt.get("augment_pipe") is not None:
        state.augment_pipe.load_state_dict(ckpt["augment_pipe"])
        state.aug_p = float(state.augment_pipe.p)
    if state.ada is not None and ckpt.get("ada") is not None:
        state.ada.load_state_dict(ckpt["ada"])
    state.cur_nimg, state.tick, state.step = int(ckpt["cur_nimg"]), int(ckpt["tick"]), int(ckpt["step"])
    state.data_position = dict(ckpt["data"])
    state.best = ckpt.get("best") or {}
    state.next_metrics_nimg = ckpt.get("next_metrics_nimg", state.next_metrics_nimg)
    state.train_time = float(ckpt.get("train_time", 0.0))
    state.stopped_early = bool(ckpt.get("stopped_early"))
    state.realignments = list(ckpt.get("realignments") or [])
    state.finetune = ckpt.get("finetune")
    state.latents.gen.set_state(ckpt["latent_rng"])
    rng = ckpt["rng"]
    if len(rng) == state.dist.world:
        set_rng_state(rng[state.dist.rank], state.device)
    else:  # another process count: exact continuation is impossible, keep going reproducibly
        seed_all(rank_seed(state.cfg.seed + state.cur_nimg, state.dist.rank))
