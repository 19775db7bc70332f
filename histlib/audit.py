"""The memorisation audit of a generated set (notebook 04).

For every generated image, its nearest real training image in a feature space (pixels, or a network's features)
and that distance compared with the real image's own nearest-real distance: a ratio near 0 flags a (near) copy.
The folders are read as features by :mod:`histlib.metrics.folders`, as for the GAN metrics.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pandas as pd
import torch

from histlib.device import resolve_device
from histlib.metrics.folders import PIXELS, extractor_label, folder_features, get_feature_extractor, image_resolution


def nearest_neighbours(query: torch.Tensor, reference: torch.Tensor, k: int = 1, exclude_self: bool = False,
                       chunk: int = 1024, device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest reference rows (Euclidean) of each query row, computed in chunks.

    Candidates (``k + 4`` per row) come from one float32 GEMM per chunk; their distances are then recomputed in
    float64 as ``|q - r|`` directly, so identical rows give exactly 0 (the expanded GEMM form leaves round-off).

    Args:
        query: ``[N, D]``; reference: ``[M, D]``.
        k: neighbours per query.
        exclude_self: ``query`` is ``reference`` and row i must not be its own neighbour.
        chunk: query rows per block.
        device: where the GEMMs run (default CPU).

    Returns:
        ``(distances [N, k], indices [N, k])``, ascending.
    """
    dev = resolve_device(device or "cpu")
    q_all = torch.as_tensor(query).float()
    r = torch.as_tensor(reference).float().to(dev)
    if q_all.ndim != 2 or r.ndim != 2 or q_all.shape[1] != r.shape[1]:
        raise ValueError(f"nearest_neighbours: expected [N, D] and [M, D], got {tuple(q_all.shape)} and "
                         f"{tuple(r.shape)}")
    extra = 1 if exclude_self else 0
    if not 1 <= k <= r.shape[0] - extra:
        raise ValueError(f"nearest_neighbours: k={k} but only {r.shape[0] - extra} reference rows are available")
    kk = min(r.shape[0], k + 4 + extra)
    # Bound the per-chunk memory (distance block + float64 candidate gather) to about 256 MiB.
    chunk = max(1, min(chunk, (256 << 20) // (8 * kk * r.shape[1] + 4 * r.shape[0])))
    r_sq = (r * r).sum(1)  # [M]
    dists, idxs = [], []
    for s in range(0, q_all.shape[0], chunk):
        q = q_all[s:s + chunk].to(dev)  # [n, D]
        d2 = (q * q).sum(1, keepdim=True) + r_sq.unsqueeze(0) - 2 * q @ r.T  # [n, M]
        cand = d2.topk(kk, dim=1, largest=False).indices  # [n, kk]
        exact = (q.double().unsqueeze(1) - r[cand].double()).norm(dim=2)  # [n, kk]
        if exclude_self:
            own = (torch.arange(q.shape[0], device=dev) + s).unsqueeze(1)
            exact = torch.where(cand == own, math.inf, exact)
        order = exact.argsort(dim=1, stable=True)[:, :k]
        dists.append(exact.gather(1, order).cpu())
        idxs.append(cand.gather(1, order).cpu())
    return torch.cat(dists).numpy(), torch.cat(idxs).numpy()


def memorisation_audit(
    generated_dir: str | os.PathLike,
    real_dir: str | os.PathLike,
    extractor: Any = PIXELS,
    k: int = 1,
    *,
    real_split: str | None = "train",
    real_nn: bool = True,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Nearest real neighbour of every generated image in a feature space.

    Real images are resized to the generated resolution first (as the GAN saw them in training).

    Args:
        generated_dir: an ImageFolder of generated images (one set).
        real_dir: the real dataset the GAN learned from.
        extractor: ``'pixels'`` (default), an extractor name (see :func:`get_feature_extractor`) or object.
        k: neighbours per generated image.
        real_split: split of ``real_dir`` to search (None: all images).
        real_nn: also compute each real neighbour's distance to its own nearest other real image, and the
            ratio ``distance / real_nn_distance`` (≪ 1: closer to a training image than training images are to
            each other, a sign of copying).
        device: where features and distances are computed.
        batch_size, num_workers: image loading.

    Returns:
        One row per generated image and rank: ``generated, generated_class, rank, real, real_class, same_class,
        distance`` (+ ``real_nn_distance``, ``ratio``), with ``generated_path`` / ``real_path`` (absolute) for
        plotting. ``df.attrs`` holds ``extractor``, ``generated_dir``, ``real_dir``.
    """
    ext = get_feature_extractor(extractor, device=device)
    kw = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
    g_feat, g_ds = folder_features(generated_dir, ext, desc="generated features", **kw)  # [N, D]
    r_feat, r_ds = folder_features(real_dir, ext, split=real_split, resolution=image_resolution(generated_dir),
                                   desc="real features", **kw)  # [M, D]
    dist, idx = nearest_neighbours(g_feat, r_feat, k=k, device=device)
    g_root, r_root = g_ds.root, r_ds.root
    flat = idx.ravel()
    df = pd.DataFrame({
        "generated": np.repeat([p.relative_to(g_root).as_posix() for p in g_ds.paths], k),
        "generated_class": np.repeat([g_ds.classes[i] for i in g_ds.labels], k),
        "rank": np.tile(np.arange(1, k + 1), len(g_ds)),
        "real": [r_ds.paths[i].relative_to(r_root).as_posix() for i in flat],
        "real_class": [r_ds.classes[r_ds.labels[i]] for i in flat],
        "distance": dist.ravel(),
    })
    df["same_class"] = df["generated_class"] == df["real_class"]
    if real_nn and len(r_feat) > 1:
        rr, _ = nearest_neighbours(r_feat, r_feat, k=1, exclude_self=True, device=device)
        df["real_nn_distance"] = rr[flat, 0]
        nn_d = df["real_nn_distance"].to_numpy()
        df["ratio"] = np.divide(df["distance"].to_numpy(), nn_d, out=np.full(len(df), np.nan), where=nn_d > 0)
    df["generated_path"] = np.repeat([str(p) for p in g_ds.paths], k)
    df["real_path"] = [str(r_ds.paths[i]) for i in flat]
    df.attrs.update(extractor=extractor_label(ext), generated_dir=str(g_root), real_dir=str(r_root))
    return df


def summarize_audit(audit: pd.DataFrame, copy_tol: float = 1e-6) -> dict[str, Any]:
    """Summary numbers of an audit (rank-1 neighbours).

    ``n_exact_copies`` counts generated images whose nearest real image is at distance ≤ ``copy_tol`` × the median
    real-to-real nearest-neighbour distance (≤ ``copy_tol`` when that is unavailable).
    """
    a = audit[audit["rank"] == 1]
    scale = float(a["real_nn_distance"].median()) if "real_nn_distance" in a and len(a) else 1.0
    out = {
        "extractor": audit.attrs.get("extractor"), "n_generated": int(len(a)),
        "min_distance": float(a["distance"].min()), "median_distance": float(a["distance"].median()),
        "n_exact_copies": int((a["distance"] <= copy_tol * (scale if scale > 0 else 1.0)).sum()),
        "fraction_same_class": float(a["same_class"].mean()),
    }
    if "ratio" in a:
        r = a["ratio"].dropna()
        out.update({"median_real_nn_distance": scale, "min_ratio": float(r.min()) if len(r) else None,
                    "ratio_q05": float(r.quantile(0.05)) if len(r) else None,
                    "median_ratio": float(r.median()) if len(r) else None,
                    "fraction_ratio_below_0.5": float((r < 0.5).mean()) if len(r) else None})
    return out


def plot_nearest_pairs(audit: pd.DataFrame, n: int = 8, closest: bool = True):
    """The ``n`` closest (or farthest) generated/real pairs: generated images on top, their nearest real below."""
    import matplotlib.pyplot as plt
    from PIL import Image

    a = audit[audit["rank"] == 1].sort_values("distance", ascending=closest).head(n)
    cols = max(1, len(a))
    fig, axes = plt.subplots(2, cols, figsize=(1.7 * cols, 4.4), squeeze=False)
    for j, (_, r) in enumerate(a.iterrows()):
        for i, (key, label) in enumerate((("generated_path", r["generated_class"]), ("real_path", r["real_class"]))):
            with Image.open(r[key]) as im:
                axes[i][j].imshow(np.asarray(im.convert("RGB")))
            axes[i][j].set_title(f"{label}" + (f"\nd={r['distance']:.3g}" if i == 0 else ""), fontsize=7)
            axes[i][j].axis("off")
    extractor = audit.attrs.get("extractor", "features")
    which = "closest" if closest else "farthest"
    fig.suptitle(f"{which} generated (top) / nearest real (bottom) pairs, {extractor} distance", fontsize=9)
    fig.tight_layout()
    plt.close(fig)  # out of pyplot's registry: the notebook displays the returned figure once
    return fig
