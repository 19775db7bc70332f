"""The GAN stage's settings: ``TrainConfig`` and the one profile table (networks, training, generation).

Profiles:

* ``demo``: CPU, 32 px, tiny networks; the whole study in minutes on two cores.
* ``reduced``: one GPU, 64 px.
* ``paper``: the publication's setting, StyleGAN2-ADA's 256 px ``paper256`` networks.

``PROFILES`` has one entry per name of ``histlib.config.PROFILES`` (the one list of profile names).
``PROFILES[name]`` holds ``networks`` (G and D constructor arguments and the resolution), ``train`` (TrainConfig
values), optionally ``finetune`` (TrainConfig values that differ when fine-tuning, notebook 03) and ``generate``
(GenerateConfig values); ``TrainConfig.from_profile`` and ``GenerateConfig.from_profile`` read it, so a profile is
defined once.

r1_gamma follows StyleGAN2-ADA's heuristic 0.0002 · res² / batch for the small profiles and StyleGAN2's 256 px
configuration (γ = 1) for the paper. D2D-CE weights follow the authors' released StyleGAN2 + D2D-CE configurations
(PyTorch-StudioGAN) nearest in resolution: 32 px CIFAR (λ = 0.25, τ = 0.25, m_p = 0.98) for the demo and reduced
profiles, 512 px AFHQ with ADA (λ = 0.5, τ = 0.5, m_p = 0.95; the only release at >= 256 px) for the paper profile;
m_n = 1 - m_p in both, as in their loss. The demo profile fine-tunes with λ = 0.5: at 0.25 three variants of the
paper's grid drew lung_scc as lung_aca more often than scratch did on real data; at 0.5 none does (docs/results.md §1).
The demo profile's D also takes the class by a projection term (``cond_projection``) and its base GAN trains
D2D-CE on D only (``cond_lambda_g = 0``): over three seeds at 40 kimg on crc5 this reached the reference
StyleGAN2-ADA's coverage and class agreement and came within 1 point of its FID, where D2D-CE on G had lost recall
(docs/benchmarks.md, "Closing the recall gap"); fine-tuning puts D2D-CE back on G. The reduced and paper
profiles keep the published method's D2D-CE alone (not measured at their scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from histlib.config import apply_profile, check_types

AUGMENT_MODES = ("ada", "none", "fixed")
KERNEL_IMPLS = ("auto", "ref", "cuda", "compiled")
CLASS_INITS = ("match", "neutral", "random")
PROJECTION_INITS = ("random", "matched")

# Fields that may differ between a run and the checkpoint it resumes from: they change how long or how verbosely a
# run goes on, not what a training step computes.
RESUME_MUTABLE_FIELDS = ("kimg", "num_workers", "processes", "snapshot_ticks", "metrics_every_kimg",
                         "early_stop_patience", "early_stop_metric", "keep_snapshots", "grid_columns", "progress")

def _networks(resolution: int, w_dim: int, mapping_layers: int, channel_base: int, channel_max: int,
              num_fp16_res: int, conv_clamp: float | None, mbstd_group_size: int,
              cond_projection: bool = False) -> dict[str, Any]:
    """G and D of one profile: z and w of the same width, D's embedding as wide as w."""
    common = dict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res,
                  conv_clamp=conv_clamp)
    d_extra = {"cond_projection": True} if cond_projection else {}
    return dict(resolution=resolution, G=dict(z_dim=w_dim, w_dim=w_dim, mapping_layers=mapping_layers, **common),
                D=dict(mbstd_group_size=mbstd_group_size, embed_dim=w_dim, **common, **d_extra))


PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {  # CPU: tiny networks that train a few hundred iterations a minute on two cores
        # D takes the class by a projection term as well as D2D-CE (docs/benchmarks.md, "Closing the recall gap")
        "networks": _networks(32, w_dim=64, mapping_layers=2, channel_base=1024, channel_max=64, num_fp16_res=0,
                              conv_clamp=None, mbstd_group_size=4, cond_projection=True),
        # the base GAN: D2D-CE trains D only (cond_lambda_g 0); G learns the class through the projection term
        "train": dict(resolution=32, batch_size=16, kimg=10.0, tick_kimg=1.0, snapshot_ticks=4, device="cpu",
                      r1_gamma=0.0128, ema_kimg=2.0, ema_rampup=0.05, ada_kimg=20.0, mixed_precision=False,
                      style_mixing_prob=0.9, pl_weight=2.0, num_workers=0, cond_lambda_g=0.0),
        # fine-tuning (notebook 03, every variant including scratch): the conditional term weighs twice as much, on
        # D and G; it keeps fine-tuned generators' class fidelity at or above scratch's on real data (docs/results.md
        # §1, measured with D2D-CE on G and no projection)
        "finetune": dict(cond_lambda=0.5, cond_lambda_g=None),
        "generate": dict(images_per_class=32, batch_size=64, device="cpu", num_workers=0),
    },
    "reduced": {  # one GPU, 64 px
        "networks": _networks(64, w_dim=256, mapping_layers=4, channel_base=8192, channel_max=256, num_fp16_res=2,
                              conv_clamp=256, mbstd_group_size=4),
        "train": dict(resolution=64, batch_size=32, kimg=300.0, tick_kimg=10.0, snapshot_ticks=5, device="auto",
                      r1_gamma=0.0256, ema_kimg=10.0, ema_rampup=0.05, ada_kimg=100.0, mixed_precision=True,
                      num_workers=4),
        "generate": dict(images_per_class=500, batch_size=128, device="auto", num_workers=8),
    },
    "paper": {  # StyleGAN2-ADA's 'paper256' networks (channel base 16384, max 512, 8 mapping layers, mbstd 8)
        "networks": _networks(256, w_dim=512, mapping_layers=8, channel_base=16384, channel_max=512, num_fp16_res=4,
                              conv_clamp=256, mbstd_group_size=8),
        "train": dict(resolution=256, batch_size=64, kimg=10000.0, tick_kimg=4.0, snapshot_ticks=50, device="auto",
                      r1_gamma=1.0, ema_kimg=20.0, ema_rampup=None, ada_kimg=500.0, mixed_precision=True,
                      metrics_every_kimg=200.0, early_stop_patience=5, num_workers=6, cond_lambda=0.5, d2d_tau=0.5,
                      d2d_margin_pos=0.95),
        # PATH-DT-MSU's 5 000 per class (BACH's 2 625 is set by its study), three sets
        "generate": dict(images_per_class=5000, num_sets=3, batch_size=64, device="auto", num_workers=8),
    },
}


def network_kwargs(profile: str, resolution: int | None = None) -> dict[str, dict[str, Any]]:
    """Constructor arguments of G and D for a profile, without ``num_classes`` (it comes from the dataset).

    Args:
        profile: ``'demo'`` (32 px, tiny), ``'reduced'`` (64 px) or ``'paper'`` (256 px, StyleGAN2 'paper256').
        resolution: override of the profile's resolution (power of two >= 8).

    Returns:
        ``{'G': {...}, 'D': {...}}``; use as ``Generator(num_classes=K, **kw['G'])`` and
        ``Discriminator(num_classes=K, **kw['D'])``.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile: expected one of {sorted(PROFILES)}, got {profile!r}")
    spec = PROFILES[profile]["networks"]
    res = spec["resolution"] if resolution is None else resolution
    if not isinstance(res, int) or res < 8 or res & (res - 1):
        raise ValueError(f"resolution: expected a power of two >= 8, got {res!r}")
    return {"G": dict(spec["G"], img_resolution=res, img_channels=3),
            "D": dict(spec["D"], img_resolution=res, img_channels=3)}


@dataclass
class TrainConfig:
    """Settings of one GAN training or fine-tuning run (written to ``config.json``).

    Build it with :meth:`from_profile` (``'demo'``, ``'reduced'``, ``'paper'``) and override fields; every field is a
    plain type. Fine-tuning is a config change: ``resume_from`` (a checkpoint or a base run directory), optionally
    ``freeze_d`` / ``freeze_g``.
    """

    # data
    data_dir: str = "data/prepared/sample_base"
    split: str | None = "train"
    resolution: int = 32
    num_classes: int | None = None  # None: the number of classes in the data
    balanced_sampling: bool = True
    num_workers: int = 0
    # schedule
    profile: str = "demo"
    batch_size: int = 16
    kimg: float = 20.0
    tick_kimg: float = 1.0
    snapshot_ticks: int = 5
    keep_snapshots: bool = True
    seed: int = 0
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda' | 'cuda:N'
    processes: int | None = None  # data-parallel training processes; None: one per visible GPU (1 on CPU)
    # optimisation
    lr_g: float = 0.0025
    lr_d: float = 0.0025
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])
    adam_eps: float = 1e-8
    # regularisation
    r1_gamma: float = 0.0128
    r1_interval: int = 16
    pl_weight: float = 2.0
    pl_interval: int = 4
    pl_decay: float = 0.01
    pl_batch_shrink: int = 2
    style_mixing_prob: float = 0.9
    ema_kimg: float = 5.0
    ema_rampup: float | None = 0.05
    # conditioning (D2D-CE, ReACGAN)
    cond_lambda: float = 0.25
    cond_lambda_g: float | None = None  # D2D-CE weight in G's loss; None: cond_lambda (D's weight on reals)
    d2d_tau: float = 0.25
    d2d_margin_pos: float = 0.98
    d2d_margin_neg: float | None = None  # None: 1 - d2d_margin_pos, as the authors' released loss
    # D2D-CE's weights (D's and G's) grow linearly from 0 over the first this many thousand images; None: full weight
    # from the first iteration
    cond_lambda_warmup_kimg: float | None = None
    # augmentation
    augment: str = "ada"  # 'ada' | 'none' | 'fixed'
    augment_preset: str = "bgc"
    augment_p: float = 0.0  # initial p for 'ada', the constant p for 'fixed'
    ada_target: float = 0.6
    ada_interval: int = 4
    ada_kimg: float = 100.0
    # fine-tuning
    resume_from: str | None = None
    freeze_d: int = 0
    freeze_g: int = 0
    class_init: str = "match"  # new classes when fine-tuning: 'match' (from the most similar base class) | 'random'
    # 'match': target class -> base class set by hand, the rest matched (check_class_map); no base (scratch): unused
    class_map: dict[str, str] | None = None
    # class_init='match' with a projection head in D: its new class embeddings drawn afresh ('random') or copied from
    # the matched base classes ('matched'), as G's are
    projection_init: str = "random"
    realign_classes: bool = True  # fine-tuning with new classes: relabel G's embeddings when D sees classes swapped
    realign_min_gain: float = 0.2
    realign_min_real_recall: float = 0.75  # D must tell the classes it would move apart on real images this well
    class_check_per_class: int = 32  # images per class of D's per-tick view of G's classes
    # periodic metrics (hooks) and early stopping
    metrics_every_kimg: float | None = None
    early_stop_patience: int | None = None
    early_stop_metric: str = "fid"
    # networks and kernels
    G_kwargs: dict[str, Any] = field(default_factory=dict)
    D_kwargs: dict[str, Any] = field(default_factory=dict)
    kernel_impl: str = "auto"  # 'auto' | 'ref' | 'cuda' | 'compiled'
    mixed_precision: bool = True  # fp16 in the top resolutions on CUDA (the networks' num_fp16_res); fp32 on CPU
    allow_tf32: bool = False
    noise_mode: str = "random"  # synthesis noise while training: 'random' (StyleGAN2) or 'const'
    # outputs
    grid_columns: int = 8
    progress: bool = True

    @classmethod
    def from_profile(cls, profile: str = "demo", stage: str = "base", **overrides: Any) -> TrainConfig:
        """The settings of a profile, with ``overrides`` applied (unknown names raise one clear error).

        * ``demo``: CPU, 32 px, tiny networks, a few minutes on two cores.
        * ``reduced``: 64 px, one GPU, minutes.
        * ``paper``: 256 px, StyleGAN2's 256 px configuration (batch 64, γ = 1, EMA 20 kimg, 8 mapping layers).

        ``stage='finetune'`` (notebook 03, every variant of the grid including scratch) layers the profile's
        fine-tuning settings on top of its training ones (``demo``: D2D-CE weight ``cond_lambda`` 0.5 instead of
        0.25); ``'base'`` (notebook 02) uses the training settings alone.

        An override of ``None`` means "not set here": the profile's value, else the field's own default (fields
        whose default is None keep None), so a notebook can pass all of its parameters and leave the unset ones
        (``KIMG = None``) to the profile.
        """
        if profile not in PROFILES:
            raise ValueError(f"TrainConfig.from_profile: profile={profile!r}; expected one of {tuple(PROFILES)}")
        if stage not in ("base", "finetune"):
            raise ValueError(f"TrainConfig.from_profile: stage={stage!r}; expected 'base' or 'finetune'")
        values = dict(PROFILES[profile]["train"])
        if stage == "finetune":
            values.update(PROFILES[profile].get("finetune", {}))
        return apply_profile(cls, profile, values, overrides)

    def validate(self) -> TrainConfig:
        """Checks the values; raises ``ValueError`` naming the field and what was expected."""
        check_types(self)

        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: expected {expected}")

        need(self.profile in PROFILES, "profile", f"one of {tuple(PROFILES)}")
        need(self.augment in AUGMENT_MODES, "augment", f"one of {AUGMENT_MODES}")
        need(self.kernel_impl in KERNEL_IMPLS, "kernel_impl", f"one of {KERNEL_IMPLS}")
        need(self.noise_mode in ("random", "const"), "noise_mode", "'random' or 'const'")
        need(self.class_init in CLASS_INITS, "class_init", f"one of {CLASS_INITS}")
        need(self.projection_init in PROJECTION_INITS, "projection_init", f"one of {PROJECTION_INITS}")
        need(self.class_map is None or self.class_init == "match", "class_map",
             "None, or a mapping target class -> base class with class_init='match'")
        need(0 < self.realign_min_gain <= 1, "realign_min_gain", "a fraction in (0, 1]")
        need(0 <= self.realign_min_real_recall <= 1, "realign_min_real_recall", "a fraction in [0, 1]")
        need(self.class_check_per_class >= 0, "class_check_per_class", "an integer >= 0 (0: no check)")
        need(self.device == "auto" or self.device == "cpu" or str(self.device).startswith("cuda"), "device",
             "'auto', 'cpu', 'cuda' or 'cuda:N'")
        need(isinstance(self.resolution, int) and self.resolution >= 4 and self.resolution & (self.resolution - 1) == 0,
             "resolution", "a power of two >= 4")
        need(self.batch_size >= 1, "batch_size", "a positive integer")
        need(self.kimg > 0, "kimg", "a positive number")
        need(self.tick_kimg > 0, "tick_kimg", "a positive number")
        need(self.snapshot_ticks >= 1, "snapshot_ticks", "a positive integer")
        need(self.r1_interval >= 1, "r1_interval", "a positive integer")
        need(self.pl_interval >= 1, "pl_interval", "a positive integer")
        need(self.pl_batch_shrink >= 1, "pl_batch_shrink", "a positive integer")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)")
        need(self.r1_gamma >= 0, "r1_gamma", "a number >= 0")
        need(self.pl_weight >= 0, "pl_weight", "a number >= 0")
        need(0 <= self.style_mixing_prob <= 1, "style_mixing_prob", "a probability")
        need(self.cond_lambda >= 0, "cond_lambda", "a number >= 0")
        need(self.cond_lambda_g is None or self.cond_lambda_g >= 0, "cond_lambda_g", "None or a number >= 0")
        need(self.d2d_tau > 0, "d2d_tau", "a positive number")
        need(self.cond_lambda_warmup_kimg is None or self.cond_lambda_warmup_kimg > 0, "cond_lambda_warmup_kimg",
             "None or a positive number")
        need(0 <= self.augment_p <= 1, "augment_p", "a probability")
        need(self.ada_kimg > 0, "ada_kimg", "a positive number")
        need(self.ema_kimg >= 0, "ema_kimg", "a number >= 0")
        need(self.freeze_d >= 0, "freeze_d", "an integer >= 0")
        need(self.freeze_g >= 0, "freeze_g", "an integer >= 0")
        need(self.metrics_every_kimg is None or self.metrics_every_kimg > 0, "metrics_every_kimg",
             "None or a positive number")
        need(self.num_workers >= 0, "num_workers", "an integer >= 0")
        need(self.processes is None or self.processes >= 1, "processes",
             "None (one per visible GPU) or an integer >= 1")
        need(self.grid_columns >= 1, "grid_columns", "a positive integer")
        need(isinstance(self.G_kwargs, dict), "G_kwargs", "a dict of Generator arguments")
        need(isinstance(self.D_kwargs, dict), "D_kwargs", "a dict of Discriminator arguments")
        return self


def check_class_map(class_map: dict[str, str] | None, classes: list[str], base_classes: list[str] | None,
                    ) -> dict[int, int]:
    """``TrainConfig.class_map`` as indices: ``{target class index: base class index}`` (empty for None).

    The map may be partial (the other target classes are matched by similarity) and may start several target classes
    from one base class (the researcher says they all correspond to it; the automatic match does the same when
    target classes outnumber the base's).

    Raises:
        ValueError: a name that is not one of the run's classes or of the base's, or a base that recorded no class
            names; the message names ``TrainConfig.class_map`` and the valid names.
    """
    if not class_map:
        return {}
    if base_classes is None:
        raise ValueError(f"TrainConfig.class_map={class_map!r}: the base checkpoint records no class names to map to; "
                         "leave class_map unset")
    bad_t = [t for t in class_map if t not in classes]
    bad_b = [b for b in class_map.values() if b not in base_classes]
    if bad_t or bad_b:
        what = [f"target class(es) {bad_t} not in the run's classes {list(classes)}"] if bad_t else []
        what += [f"base class(es) {bad_b} not in the base's classes {list(base_classes)}"] if bad_b else []
        raise ValueError(f"TrainConfig.class_map={class_map!r}: {'; '.join(what)}; expected a mapping target class "
                         "-> base class")
    return {classes.index(t): list(base_classes).index(b) for t, b in class_map.items()}
