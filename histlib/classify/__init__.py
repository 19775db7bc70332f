"""Classification stage: timm classifiers trained on real, synthetic or real + synthetic images (notebook 05).

Modules, lowest first (each imports only those above it):
    ``sets``      the training sets by name, run names, nested fractions of the real set (torch-free; read by the
                  study planner and the analysis).
    ``config``    ``ClassifyConfig``, one run's settings, checked when made.
    ``data``      the paper's augmentation, stain augmentation, and the training and validation sets.
    ``weights``   timm models and their ImageNet weights (local file, hub caches, download when the host answers).
    ``evaluate``  predictions, accuracy / balanced accuracy / recall / confusion, the held-out test sets.
    ``train``     one run (``train_classifier``) and a study's many (``run_classifiers``, ``summarize_runs``).
    ``plots``     training curves and confusion matrices of finished runs.
    ``cli``       ``python -m histlib classify``.

Training sets (``ClassifyConfig.train_set``, names in :mod:`histlib.classify.sets`):
    ``real``            ``real_per_class`` images per class drawn from the real set's train split (None: all), or
                        a nested fraction ``real_fraction`` of its groups (the real-data learning curve).
    ``synthetic``       ``synthetic_per_class`` images per class drawn from a generated ImageFolder.
    ``real+synthetic``  both of the above, concatenated.
    ``real+stain``, ``real+synthetic+stain``, ``synthetic+stain``: the same images with classic H&E stain
                        augmentation (HED jitter of strength ``stain_strength``, ``histlib.data.stain_augment``)
                        before the paper's augmentation.
Validation is always the real set's ``val_split``. Augmentation follows the paper: rot90, horizontal and
vertical flips, brightness/contrast/saturation factors in [0.8, 1.2]; ImageNet normalisation.

The names below are loaded on first use, so ``import histlib.classify.sets`` does not import torch.
"""

from __future__ import annotations

from histlib.lazy import lazy_exports

# public name -> submodule that defines it: the names notebook 05 imports from the package, and the one-run entry
_EXPORTS = {
    "ClassifyConfig": "config",
    "run_classifiers": "train",
    "summarize_runs": "train",
    "train_classifier": "train",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
