"""GAN metrics: FID, improved precision/recall (Kynkäänniemi et al. 2019), density/coverage (Naeem et al. 2020).

Public API (contract: these names and arguments stay) — feature arrays ``[N, D]``, numpy or torch:

- ``frechet_distance(real, fake)``, ``frechet_distance_from_stats(mu1, s1, mu2, s2)``, ``feature_statistics(x)``
- ``precision_recall(real, fake, k=3)``, ``density_coverage(real, fake, k=5)``, ``compute_prdc(real, fake, k, k_dc)``
- ``realism_score(real, fake, k=3)`` (per generated sample, Kynkäänniemi et al. 2019 §5), ``real_radii``
- ``compute_metrics`` / ``per_class_metrics`` (summary table), ``get_extractor`` (feature extractors),
  ``extract_features`` / ``FeatureCache``, ``GanMetricsHook`` / ``EarlyStopping`` (training hooks).
- ``folder_features`` (an image folder as features), ``gan_metrics`` / ``feature_metrics`` (the GAN metrics of a
  generated folder against the real images, overall and per class), in ``folders``.

Submodules are imported on first use, so ``import histlib.metrics`` does not import torch.
"""

from __future__ import annotations

from histlib.lazy import lazy_exports

_EXPORTS = {
    "frechet_distance": "fid",
    "frechet_distance_from_stats": "fid",
    "feature_statistics": "fid",
    "trace_sqrt_product": "fid",
    "precision_recall": "prdc",
    "density_coverage": "prdc",
    "compute_prdc": "prdc",
    "prdc_per_sample": "prdc",
    "PRDCPerSample": "prdc",
    "realism_score": "realism",
    "real_radii": "realism",
    "compute_metrics": "summary",
    "per_class_metrics": "summary",
    "table_to_dict": "summary",
    "FeatureExtractor": "features",
    "get_extractor": "features",
    "InceptionFeatures": "features",
    "VGG16Features": "features",
    "RandomTestFeatures": "features",
    "DomainFeatures": "features",
    "WeightsNotFoundError": "features",
    "find_weights": "features",
    "INCEPTION_FID_WEIGHTS": "features",
    "VGG16_WEIGHTS": "features",
    "FeatureCache": "cache",
    "extract_features": "cache",
    "dataset_fingerprint": "cache",
    "folder_features": "folders",
    "gan_metrics": "folders",
    "feature_metrics": "folders",
    "get_feature_extractor": "folders",
    "resolve_extractor": "folders",
    "GanMetricsHook": "training_hook",
    "EarlyStopping": "training_hook",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
