"""All GAN metrics at once, overall and per class (intra-class FID, per-class P/R/D/C), as dicts and a table."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .fid import frechet_distance
from .prdc import compute_prdc

METRIC_NAMES = ("fid", "precision", "recall", "density", "coverage")


# Below this many images per set an FID is mostly sampling error (its bias grows like 1/N): warn.
FID_MIN_SAMPLES = 100


def compute_metrics(real_fid, fake_fid, real_prdc=None, fake_prdc=None, *, k: int = 3, k_dc: int = 5,
                    device=None, memory_budget: int | None = None) -> dict[str, float]:
    """FID on one pair of feature sets and precision/recall/density/coverage on another (or the same).

    Args:
        real_fid, fake_fid: features for FID (Inception pool features in the standard setting)  # [N, D]
        real_prdc, fake_prdc: features for the k-NN metrics (VGG16 fc2 in the standard setting); default: the FID
            features.
        k: neighbourhood of precision/recall (3); k_dc: of density/coverage (5).
        device, memory_budget: see ``histlib.metrics.prdc.prdc_per_sample``.

    Returns:
        ``{"fid", "precision", "recall", "density", "coverage", "n_real", "n_fake"}``; a metric that the sample
        sizes do not allow (FID needs 2 samples per set, the k-NN metrics ``k + 1``) is NaN.
    """
    real_prdc = real_fid if real_prdc is None else real_prdc
    fake_prdc = fake_fid if fake_prdc is None else fake_prdc
    n_real, n_fake = len(real_prdc), len(fake_prdc)
    out: dict[str, float] = {"n_real": float(n_real), "n_fake": float(n_fake)}
    n_min = min(len(real_fid), len(fake_fid))
    if 2 <= n_min < FID_MIN_SAMPLES:
        warnings.warn(f"FID from {len(real_fid)} real and {len(fake_fid)} generated images: with fewer than "
                      f"{FID_MIN_SAMPLES} per set it is dominated by sampling error (compare FIDs only at equal, large "
                      "sample sizes)", stacklevel=2)
    if min(n_real, n_fake) <= max(k, k_dc):
        warnings.warn(f"precision/recall/density/coverage not computed (NaN): {n_real} real and {n_fake} generated "
                      f"images, but k={k} and k_dc={k_dc} need more than {max(k, k_dc)} in each set", stacklevel=2)
    out["fid"] = (frechet_distance(real_fid, fake_fid, device=device or "cpu")
                  if min(len(real_fid), len(fake_fid)) >= 2 else math.nan)
    if min(n_real, n_fake) > max(k, k_dc):
        out.update(compute_prdc(real_prdc, fake_prdc, k, k_dc, device=device, memory_budget=memory_budget))
    else:
        out.update({m: math.nan for m in ("precision", "recall", "density", "coverage")})
    return out


def per_class_metrics(real_fid, fake_fid, real_labels, fake_labels, classes: Sequence[str], real_prdc=None,
                      fake_prdc=None, *, k: int = 3, k_dc: int = 5, device=None,
                      memory_budget: int | None = None) -> pd.DataFrame:
    """The summary table: one row ``all`` (whole sets) and one row per class (that class's reals vs fakes).

    Args:
        real_fid, fake_fid, real_prdc, fake_prdc: feature arrays as in ``compute_metrics``.
        real_labels, fake_labels: int labels ``[N]`` indexing ``classes``.
        classes: class names in label order.

    Returns:
        DataFrame indexed by ``class`` with columns ``n_real, n_fake, fid, precision, recall, density, coverage``.
    """
    real_prdc = real_fid if real_prdc is None else real_prdc
    fake_prdc = fake_fid if fake_prdc is None else fake_prdc
    rl = np.asarray(real_labels)
    fl = np.asarray(fake_labels)
    if rl.shape[0] != len(real_fid) or fl.shape[0] != len(fake_fid):
        raise ValueError(f"labels do not match the features: {rl.shape[0]} real labels for {len(real_fid)} rows, "
                         f"{fl.shape[0]} fake labels for {len(fake_fid)} rows")
    kw = {"k": k, "k_dc": k_dc, "device": device, "memory_budget": memory_budget}
    rows = {"all": compute_metrics(real_fid, fake_fid, real_prdc, fake_prdc, **kw)}
    for ci, name in enumerate(classes):
        r, f = rl == ci, fl == ci
        rows[str(name)] = compute_metrics(_take(real_fid, r), _take(fake_fid, f), _take(real_prdc, r),
                                          _take(fake_prdc, f), **kw)
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "class"
    df[["n_real", "n_fake"]] = df[["n_real", "n_fake"]].astype(int)
    return df[["n_real", "n_fake", *METRIC_NAMES]]


def _take(x, mask):
    return x[mask] if isinstance(x, np.ndarray) else x[np.nonzero(mask)[0]]


def table_to_dict(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """``{"all": {...}, "<class>": {...}}`` with plain floats (NaN kept as NaN; ``write_json`` stores null)."""
    return {str(idx): {c: (int(v) if c.startswith("n_") else float(v)) for c, v in row.items()}
            for idx, row in df.iterrows()}
