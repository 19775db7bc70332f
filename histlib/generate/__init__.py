"""The generate stage (notebook 04): class-conditional sampling to ImageFolders, their GAN metrics and audit.

Modules, lowest first (each imports only those above it):
    ``images``  sampling a GAN checkpoint into ``<out_dir>/<class>/<seed>_<index>.png`` (``generate_images``;
                deterministic per image, one or several sets, reused when the settings match).
    ``config``  ``GenerateConfig``, the stage's settings.
    ``stage``   a generate run: ``run_generation`` (with a selection through :mod:`histlib.selection`), class
                fidelity, the extractor of the GAN metrics, ``write_generation_metrics``, tables.
    ``cli``     ``python -m histlib generate``.
Feature reading and the GAN metrics of a folder live in :mod:`histlib.metrics.folders`, the memorisation audit in
:mod:`histlib.audit`; the names notebook 04 imports from here are loaded from them on first use.
"""

from __future__ import annotations

from histlib.lazy import lazy_exports

# public name -> module that defines it: the names notebook 04 imports from the package, and generate_images
_EXPORTS = {
    "GenerateConfig": "histlib.generate.config",
    "generate_images": "histlib.generate.images",
    "plot_samples": "histlib.generate.images",
    "run_generation": "histlib.generate.stage",
    "class_fidelity": "histlib.generate.stage",
    "metrics_extractor": "histlib.generate.stage",
    "write_generation_metrics": "histlib.generate.stage",
    "metrics_table": "histlib.generate.stage",
    "per_class_table": "histlib.generate.stage",
    "gan_metrics": "histlib.metrics.folders",
    "memorisation_audit": "histlib.audit",
    "summarize_audit": "histlib.audit",
    "plot_nearest_pairs": "histlib.audit",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
