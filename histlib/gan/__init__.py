"""The GAN stage: a class-conditional StyleGAN2 with ADA and D2D-CE, trained from scratch or fine-tuned from a base.

Read it in this order: :mod:`~histlib.gan.config` (settings and the profile table), :mod:`~histlib.gan.networks`
(G and D, on :mod:`~histlib.gan.layers`), :mod:`~histlib.gan.losses` and :mod:`~histlib.gan.augment` (the maths),
:mod:`~histlib.gan.phases` (one iteration as four phases), :mod:`~histlib.gan.state` (what a run holds),
:mod:`~histlib.gan.loop` (``train``: one process's training) and :mod:`~histlib.gan.launch` (``train_gan``, the public
entry: one process or several), then :mod:`~histlib.gan.transfer` (fine-tuning: loading, new classes, freezing,
its per-tick hook) and :mod:`~histlib.gan.finetune_report` (``finetune.json``, written and read),
:mod:`~histlib.gan.checkpoint` (the one checkpoint format), :mod:`~histlib.gan.distributed` (data parallelism),
:mod:`~histlib.gan.hooks` (metrics during training), :mod:`~histlib.gan.plots` and :mod:`~histlib.gan.cli`.

Importing the package imports nothing else (so ``histlib.gan.config`` stays light for the study runner); import
from the modules, e.g. ``from histlib.gan.launch import train_gan``.
"""
