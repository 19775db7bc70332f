"""Compatibility names for the GAN stage, which lives in :mod:`histlib.gan` (``from histlib.gan.loop import
train_gan``).

Kept so that code and notebooks written against ``histlib.train_gan`` keep working; new code imports from
``histlib.gan`` and its modules.
"""

from histlib.gan.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, load_generator
from histlib.gan.cli import add_arguments, main
from histlib.gan.config import PROFILES, RESUME_MUTABLE_FIELDS, TrainConfig
from histlib.gan.hooks import metrics_hooks
from histlib.gan.loop import TrainingDiverged, train_gan
from histlib.gan.plots import (
    class_grid,
    make_grid,
    plot_augment,
    plot_class_agreement,
    plot_class_grid,
    plot_losses,
)

__all__ = ["CHECKPOINT_FORMAT", "PROFILES", "RESUME_MUTABLE_FIELDS", "TrainConfig", "TrainingDiverged",
           "add_arguments", "class_grid", "load_checkpoint", "load_generator", "main", "make_grid", "metrics_hooks",
           "plot_augment", "plot_class_agreement", "plot_class_grid", "plot_losses", "train_gan"]
