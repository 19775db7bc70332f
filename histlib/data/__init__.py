"""The data stage: folders, tiling, WSI regions, stain normalisation, splits, merging, sampling, prepared datasets.

Importing this package is cheap (no torch, no image libraries); the names below are loaded on first use, e.g.
``from histlib.data import ImageDataset`` or ``histlib.data.prepare_dataset(cfg)``.
"""

from __future__ import annotations

from histlib.lazy import lazy_exports

# public name -> submodule that defines it (loaded lazily so that `import histlib.data` stays cheap)
_LAZY = {
    "MANIFEST_COLUMNS": "manifest",
    "load_manifest": "manifest",
    "class_count_table": "manifest",
    "split_summary": "manifest",
    "to_rgb8": "manifest",
    "ImageDataset": "dataset",
    "to_uint8_tensor": "dataset",
    "to_uint8": "dataset",
    "ClassBalancedSampler": "balanced_sampling",
    "infinite_balanced_indices": "balanced_sampling",
    "validate_folder": "folders",
    "FolderReport": "folders",
    "tile_positions": "tiling",
    "group_split": "splits",
    "merge_datasets": "merge",
    "PrepareConfig": "prepare",
    "prepare_dataset": "prepare",
    "build_sample": "embedded_sample",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
