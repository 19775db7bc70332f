"""Keep the best generated samples: draw more than a set keeps, then keep the best of each class.

A generate run with ``selection`` other than ``'none'`` first draws a *pool* of ``ceil(oversample × n)`` images per
class into ``<run>/pool/`` (:func:`histlib.generate.images.generate_images`, same seeds and determinism), scores
every pool image, and keeps the ``n`` best of each class in ``<run>/images/`` (the folder the classifiers read; hard
links to the pool files where the file system allows, copies otherwise). Scores:

- ``'realism'``: the realism score of Kynkäänniemi et al. 2019 (:func:`histlib.metrics.realism_score`) of the image
  against the real train images *of the class it was asked for*, so a convincing image of another class does not
  count as realistic;
- ``'fidelity'``: the probability of the class asked for under a fidelity classifier (:mod:`histlib.fidelity`);
- ``'agree'``: the same probability, but the set keeps the *first* ``n`` draws (in draw order) that the classifier
  labels as the class asked for (its most probable class), not the ``n`` most probable ones. It drops the draws of
  another class and otherwise keeps the generator's variety: ranking by probability keeps a class's most typical
  draws, which narrows a set when nearly every draw is already of its class. When fewer than ``n`` draws agree, the
  most probable of the others fill the set;
- ``'relabel'``: the classifier's most probable class becomes the label. Each class keeps, in draw order over the
  whole pool, the first ``n`` draws the classifier labels as it, *whichever class they were asked for* (at equal draw
  index, the draw asked for the class first; :func:`relabel_keep`). A draw asked for one class that looks like
  another is kept as the other. Where a generator draws one class's images inside another's (on four of lung3's
  folds the selector labelled 14–54 % of the draws asked for lung_scc as lung_aca), ``'agree'`` drops them, so the
  synthetic classifier never sees that border from the side the real-data classifier puts it on; ``'relabel'``
  keeps them with that label. The labels are then the real-data classifier's, so a classifier trained on such a
  set also learns from that classifier, not from the generated images alone. Relabelled files are kept as
  ``<label>/<class asked>__<file name>``; when fewer than ``n`` draws carry a class's label, the most probable of
  that class's other draws fill it;
- ``'none'``: no pool, the first ``n`` draws (the behaviour without selection).

The scores come from a *selection classifier*: the fidelity classifier's recipe with another seed
(``SELECTOR_SEED``), trained once per real dataset and cached beside the fidelity classifier. Its features give the
realism scores, its probabilities the fidelity scores. The class fidelity and GAN metrics reported for the set are
measured by the seed-0 fidelity classifier (or Inception), so they are not the selection criterion itself; two
networks trained on the same images still agree more than chance, so a selected set's fidelity and precision stay
somewhat optimistic. The classifiers trained on the set (notebook 05) are the judge.

What was dropped is kept for the report: ``<run>/selection.csv`` has one row per pool image (set, class, file, draw
index, score, kept, and whether it is among the first ``n`` draws: the *unselected* set, the latents ``'none'`` draws
for the same seed; only the synthesis noise of a class's last, partial batch differs, since noise is seeded per
batch), :func:`plot_kept_dropped` shows the best kept beside the worst dropped images of each class, and
:func:`unselected_metrics` measures the unselected set the same way as the kept one (keys ``unselected/…``).

Amounts: :func:`amount_per_class` turns "``a`` × the real train split" into images per class, ``round(a × N_train /
K)`` for ``N_train`` real train images in ``K`` classes: class-balanced sets whose total is ``a`` times the real
train split (the paper's BACH setting is ``a = 1``).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from histlib import runs

if TYPE_CHECKING:
    import torch

SELECTIONS = ("none", "realism", "fidelity", "agree", "relabel")
SELECTOR_SEED = 1  # the fidelity classifier that measures the set uses seed 0
POOL_DIR = "pool"
SCORES_NAME = "selection.csv"
REPORT_NAME = "selection.json"


def check_selection(selection: str, oversample: float) -> None:
    """Raises ``ValueError`` naming the parameter when the selection or the oversampling factor is invalid."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection={selection!r}: expected one of {SELECTIONS}")
    if isinstance(oversample, bool) or not isinstance(oversample, (int, float)) or not math.isfinite(oversample) \
            or oversample < 1:
        raise ValueError(f"oversample={oversample!r}: expected a number >= 1 (images drawn per image kept)")


def pool_counts(counts: Mapping[str, int], oversample: float) -> dict[str, int]:
    """Images to draw per class: ``ceil(oversample × n)``."""
    return {c: int(math.ceil(n * oversample - 1e-9)) for c, n in counts.items()}


def amount_per_class(dataset_dir: str | os.PathLike, amount: float, split: str = "train") -> int:
    """Images per class for ``amount`` × the real ``split``: ``round(amount × N_split / K)`` (at least 1).

    Raises:
        ValueError: ``amount`` is not a positive number, or the dataset has no image in ``split``.
    """
    from histlib.data.manifest import load_manifest

    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount) or amount <= 0:
        raise ValueError(f"amount={amount!r}: expected a positive number (generated images relative to the real "
                         f"{split} split)")
    df = load_manifest(runs.project_path(dataset_dir))
    part = df[df["split"] == split]
    if len(part) == 0:
        raise ValueError(f"{dataset_dir}: no image in split {split!r}; amount={amount} is relative to it")
    return max(1, int(round(amount * len(part) / part["class"].nunique())))


def keep_mask(scores: np.ndarray, labels: np.ndarray, index: np.ndarray, counts: Mapping[int, int]) -> np.ndarray:
    """The ``counts[label]`` highest-scoring samples of each label (ties: the earlier draw)  # bool [N]"""
    keep = np.zeros(len(scores), dtype=bool)
    for label, n in counts.items():
        rows = np.flatnonzero(labels == label)
        if len(rows) < n:
            raise ValueError(f"class {label}: {len(rows)} pool images for {n} to keep")
        order = np.lexsort((index[rows], -scores[rows]))  # descending score, then ascending draw index
        keep[rows[order[:n]]] = True
    return keep


def rank_scores(scores: pd.DataFrame, selection: str) -> np.ndarray:
    """What :func:`keep_mask` ranks a pool by: the score, or for ``'agree'`` +inf where the classifier labels a draw
    as its class asked for (so those tie, and the earlier draw wins) and the probability elsewhere  # float [N]"""
    if selection == "agree":
        return np.where(scores["agrees"].to_numpy(bool), np.inf, scores["score"].to_numpy(float))
    return scores["score"].to_numpy(float)


def relabel_keep(scores: pd.DataFrame, counts: Mapping[str, int]) -> np.ndarray:
    """``'relabel'``: the class each pool image is kept as (``''``: dropped)  # object [N]

    ``scores`` has ``class`` (asked for), ``label`` (the classifier's most probable class), ``index`` (draw index)
    and ``score`` (probability of the class asked for). Each class ``c`` keeps the first ``counts[c]`` draws labelled
    ``c``, by draw index (at equal index the draw asked for ``c`` first); a class short of such draws is filled with
    its own other draws (asked for ``c``, not kept as another class), the most probable first.

    Raises:
        ValueError: a class cannot be filled from the pool (raise ``oversample``).
    """
    asked = scores["class"].to_numpy(object)
    label = scores["label"].to_numpy(object)
    index = scores["index"].to_numpy(np.int64)
    prob = scores["score"].to_numpy(float)
    kept_as = np.full(len(scores), "", dtype=object)
    for cls, n in counts.items():
        rows = np.flatnonzero(label == cls)
        order = np.lexsort((asked[rows] != cls, index[rows]))  # draw index, then the draw asked for cls first
        kept_as[rows[order[:n]]] = cls
    for cls, n in counts.items():
        short = n - int((kept_as == cls).sum())
        if short <= 0:
            continue
        rows = np.flatnonzero((asked == cls) & (kept_as == ""))
        if len(rows) < short:
            raise ValueError(f"class {cls}: {int((kept_as == cls).sum()) + len(rows)} pool images to keep {n} as it "
                             "after relabelling; raise oversample")
        kept_as[rows[keep_mask(prob[rows], np.zeros(len(rows), dtype=int), index[rows], {0: short})]] = cls
    return kept_as


def draw_index(paths) -> np.ndarray:
    """Draw index of generated files ``<seed>_<index>.<ext>``  # int64 [N]"""
    return np.array([int(Path(p).stem.rsplit("_", 1)[1]) for p in paths], dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------------
# Scores


def selector_checkpoint(cfg, resolution: int, run_dir: str | os.PathLike, progress: bool = False) -> Path:
    """The selection classifier of ``cfg.dataset_dir`` (trained on first use, cached like the fidelity classifier)."""
    from histlib import fidelity
    from histlib.device import resolve_device

    if cfg.dataset_dir is None:
        raise ValueError(f"selection={cfg.selection!r} needs the real dataset (dataset_dir) to learn the classes from")
    cache = cfg.fidelity_cache or (Path(run_dir).parent.parent / ".fidelity")
    return fidelity.fidelity_classifier(cfg.dataset_dir, int(resolution), cfg=selector_config(), cache_root=cache,
                                        device=str(resolve_device(cfg.device)), progress=progress)


def selector_config():
    """Settings of the selection classifier: the fidelity classifier's, with seed ``SELECTOR_SEED``."""
    from histlib.fidelity import FidelityConfig

    return FidelityConfig(seed=SELECTOR_SEED)


def score_pool(pool_dir: str | os.PathLike, selection: str, selector: str | os.PathLike, *,
               real_dir: str | os.PathLike | None = None, real_split: str | None = "train", k: int = 3,
               device: str | torch.device | None = None, num_workers: int = 0) -> pd.DataFrame:
    """Scores every image of a generated ImageFolder.

    Args:
        pool_dir: the pool (one set).
        selection: ``'realism'``, ``'fidelity'``, ``'agree'`` or ``'relabel'``.
        selector: the selection classifier's checkpoint.
        real_dir, real_split: the real images (realism only), resized to the generated resolution.
        k: neighbourhood of the real balls (realism).

    Returns:
        Columns ``class, file, index, score`` in the folder's order (``file`` relative to ``pool_dir``); for
        ``'agree'`` and ``'relabel'`` also ``agrees`` (the classifier's most probable class is the one asked for);
        ``'relabel'`` also ``label`` (that class) and ``label_score`` (its probability).
    """
    import torch

    from histlib.device import resolve_device
    from histlib.metrics import realism_score
    from histlib.metrics.folders import folder_features, get_feature_extractor, image_dataset, image_resolution

    if selection == "realism":
        ext = get_feature_extractor(f"domain:{selector}", device=device)
        fake, g_ds = folder_features(pool_dir, ext, num_workers=num_workers)  # [N, D]
        real, r_ds = folder_features(real_dir, ext, split=real_split, num_workers=num_workers,
                                     resolution=image_resolution(pool_dir))  # [M, D]
        scores = np.full(len(g_ds), np.nan)
        for i, cls in enumerate(g_ds.classes):
            if cls not in r_ds.classes:
                raise ValueError(f"{real_dir}: no real images of class {cls!r} to score its realism against")
            sel_f = g_ds.labels == i
            scores[sel_f] = realism_score(real[torch.from_numpy(r_ds.labels == r_ds.classes.index(cls))],
                                          fake[torch.from_numpy(sel_f)], k, device=device)
    elif selection in ("fidelity", "agree", "relabel"):
        from histlib.fidelity import FidelityClassifier

        clf = FidelityClassifier(selector, device=resolve_device(device or "auto"))
        g_ds = image_dataset(pool_dir, None, None)
        unknown = sorted(set(g_ds.classes) - set(clf.classes))
        if unknown:
            raise ValueError(f"{pool_dir}: classes {unknown} are unknown to the selection classifier {clf.classes}")
        index = np.array([clf.classes.index(c) for c in g_ds.classes])
        probs = [clf.probabilities(x) for x, _ in torch.utils.data.DataLoader(g_ds, batch_size=256,
                                                                             num_workers=num_workers)]
        p = np.concatenate(probs)  # [N, K]
        asked = index[g_ds.labels]
        scores = p[np.arange(len(g_ds)), asked]
        agrees = p.argmax(1) == asked
        seen = index[p[:, index].argmax(1)]  # 'relabel': the most probable of the pool's classes
    else:
        raise ValueError(f"selection={selection!r}: expected 'realism', 'fidelity', 'agree' or 'relabel'")
    root = Path(g_ds.root)
    out = pd.DataFrame({"class": [g_ds.classes[i] for i in g_ds.labels],
                        "file": [Path(p).relative_to(root).as_posix() for p in g_ds.paths],
                        "index": draw_index(g_ds.paths), "score": scores})
    if selection in ("agree", "relabel"):
        out["agrees"] = agrees
    if selection == "relabel":
        out["label"] = [clf.classes[i] for i in seen]
        out["label_score"] = p[np.arange(len(g_ds)), seen]
    return out


def kept_path(row: Mapping[str, Any]) -> str:
    """Where a kept pool image lies in the kept set: its pool path, or ``<label>/<class asked>__<file name>`` for
    an image ``'relabel'`` keeps as another class than the one asked for."""
    kept_as = row.get("kept_as", "")
    if not isinstance(kept_as, str) or kept_as in ("", row["class"]):
        return row["file"]
    return f"{kept_as}/{row['class']}__{Path(row['file']).name}"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: a copy holds the same bytes
        shutil.copyfile(src, dst)


# ----------------------------------------------------------------------------------------------------------------
# The selected stage


def generate_selected(cfg, run_dir: str | os.PathLike, counts: Mapping[str, int], device, progress: bool = True,
                      ) -> dict[str, Any]:
    """Draws the pool, scores it and keeps the best ``counts[class]`` per class and set in ``<run_dir>/images``.

    Returns:
        A report shaped like :func:`histlib.generate.images.generate_images`' (for the kept images) with ``pool_dir``,
        ``pool_set_dirs`` and ``selection`` (the summary that ``metrics.json`` gets as ``selection/…`` keys).
    """
    from histlib.generate.images import generate_images, set_dirs

    check_selection(cfg.selection, cfg.oversample)
    run_dir = runs.project_path(run_dir)
    pcounts = pool_counts(counts, cfg.oversample)
    pool = generate_images(cfg.checkpoint, run_dir / POOL_DIR, pcounts, truncation_psi=cfg.truncation_psi,
                           seed=cfg.seed, batch_size=cfg.batch_size, device=device, classes=list(counts),
                           image_format=cfg.image_format, num_sets=cfg.num_sets, noise_mode=cfg.noise_mode,
                           progress=progress)
    t0 = time.perf_counter()
    selector = selector_checkpoint(cfg, pool["resolution"], run_dir)
    key = runs.config_hash({"pool": pool["settings_hash"], "selection": cfg.selection, "oversample": cfg.oversample,
                            "k": cfg.k_pr, "counts": dict(counts), "selector": runs.file_sha256(selector),
                            "real_split": cfg.real_split})
    out = run_dir / "images"
    report_path = out / REPORT_NAME
    if report_path.is_file() and (run_dir / SCORES_NAME).is_file() and runs.read_json(report_path).get("key") == key:
        return {**runs.read_json(report_path)["report"], "reused": True}
    tables = []
    with runs.atomic_dir(out) as tmp:
        for j, (pool_set, kept_set) in enumerate(zip(pool["set_dirs"], set_dirs(tmp, cfg.num_sets))):
            df = score_pool(pool_set, cfg.selection, selector, real_dir=cfg.dataset_dir, real_split=cfg.real_split,
                            k=cfg.k_pr, device=device, num_workers=cfg.num_workers)
            classes = list(dict.fromkeys(df["class"]))
            labels = df["class"].map({c: i for i, c in enumerate(classes)}).to_numpy()
            idx = df["index"].to_numpy()
            if cfg.selection == "relabel":
                df["kept_as"] = relabel_keep(df, counts)
                df["kept"] = df["kept_as"] != ""
            else:
                wanted = {classes.index(c): n for c, n in counts.items()}
                df["kept"] = keep_mask(rank_scores(df, cfg.selection), labels, idx, wanted)
            df["unselected"] = idx < df["class"].map(counts).to_numpy()
            for cls in classes:
                (kept_set / cls).mkdir(parents=True, exist_ok=True)
            for _, r in df[df["kept"]].iterrows():
                _link_or_copy(Path(pool_set) / r["file"], kept_set / kept_path(r))
            df.insert(0, "set", j)
            tables.append(df)
        scores = pd.concat(tables, ignore_index=True)
        report = _report(cfg, pool, counts, pcounts, scores, out, selector, time.perf_counter() - t0)
        runs.write_json(tmp / REPORT_NAME, {"key": key, "report": report})
    runs.atomic_write_text(run_dir / SCORES_NAME, scores.to_csv(index=False))
    return {**report, "reused": False}


def _report(cfg, pool: Mapping[str, Any], counts: Mapping[str, int], pcounts: Mapping[str, int],
            scores: pd.DataFrame, out: Path, selector: Path, seconds: float) -> dict[str, Any]:
    n = sum(counts.values()) * cfg.num_sets
    summary: dict[str, Any] = {"method": cfg.selection, "oversample": float(cfg.oversample), "k": cfg.k_pr,
                               "n_pool": int(len(scores)), "n_kept": int(scores["kept"].sum()),
                               "selector": runs.display_path(selector)}
    for cls, part in scores.groupby("class", sort=False):
        kept, dropped = part[part["kept"]]["score"], part[~part["kept"]]["score"]
        summary[f"score_kept_mean/{cls}"] = float(kept[np.isfinite(kept)].mean()) if len(kept) else None
        summary[f"score_dropped_mean/{cls}"] = float(dropped.mean()) if len(dropped) else None
        summary[f"threshold/{cls}"] = float(kept.min()) if len(kept) else None
        summary[f"kept_from_unselected/{cls}"] = float(part.loc[part["unselected"], "kept"].mean())
        if "agrees" in part:  # 'agree', 'relabel': the share of the pool the classifier labels as the class asked for
            summary[f"agreeing/{cls}"] = float(part["agrees"].mean())
        if "kept_as" in scores:  # 'relabel': the share of the images kept as cls that were asked for another class
            as_cls = scores[scores["kept_as"] == cls]
            summary[f"relabelled_in/{cls}"] = float((as_cls["class"] != cls).mean()) if len(as_cls) else None
    seconds_all = float(pool["seconds"]) + seconds
    from histlib.generate.images import set_dirs

    return {**{k: v for k, v in pool.items() if k not in ("reused",)},
            "settings": {**pool["settings"], "images_per_class": dict(counts), "pool_per_class": dict(pcounts),
                         "selection": cfg.selection, "oversample": float(cfg.oversample)},
            "out_dir": out.as_posix(), "set_dirs": [p.as_posix() for p in set_dirs(out, cfg.num_sets)],
            "counts": [dict(counts)] * cfg.num_sets, "n_images": n, "seconds": round(seconds_all, 3),
            "images_per_s": round(n / max(seconds_all, 1e-9), 1),
            "pool_dir": pool["out_dir"], "pool_set_dirs": pool["set_dirs"], "selection": summary}


# ----------------------------------------------------------------------------------------------------------------
# Report: kept beside dropped, the kept set beside the unselected one


def read_scores(run_dir: str | os.PathLike) -> pd.DataFrame:
    """``<run_dir>/selection.csv`` (empty when the run made no selection)."""
    path = runs.project_path(run_dir) / SCORES_NAME
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def plot_kept_dropped(report: Mapping[str, Any], n_per_class: int = 6):
    """The best kept (left) and the worst dropped (right) images of each class of the first set, with their scores
    (the probability of the class asked for, or the realism score); with ``'relabel'``, the images kept as each
    class show those asked for another class first, titled ``as <class>`` in blue with the probability of that
    class. None (with a line saying so) when the run made no selection."""
    import matplotlib.pyplot as plt
    from PIL import Image

    if "pool_dir" not in report:
        print("No selection (selection='none'): every drawn image is kept.")
        return None
    scores = read_scores(Path(report["out_dir"]).parent)
    scores = scores[scores["set"] == 0]
    pool = Path(report["pool_set_dirs"][0])
    classes = list(dict.fromkeys(scores["class"]))
    fig, axes = plt.subplots(len(classes), 2 * n_per_class, squeeze=False,
                             figsize=(1.1 * 2 * n_per_class + 1.5, 1.25 * len(classes)))
    for i, cls in enumerate(classes):
        part = scores[scores["class"] == cls].sort_values("score", ascending=False)
        kept = part[part["kept"]]
        if "kept_as" in scores:  # 'relabel': the images kept as cls, those asked for another class first
            kept = scores[scores["kept_as"] == cls]
            kept = kept.assign(_own=kept["class"] == cls).sort_values(["_own", "score"], ascending=[True, False])
        shown = [("kept", kept.head(n_per_class)), ("dropped", part[~part["kept"]].tail(n_per_class))]
        for half, (what, rows) in enumerate(shown):
            for j in range(n_per_class):
                ax = axes[i][half * n_per_class + j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j < len(rows):
                    r = rows.iloc[j]
                    with Image.open(pool / r["file"]) as im:
                        ax.imshow(np.asarray(im.convert("RGB")))
                    relabelled = what == "kept" and r["class"] != cls  # 'relabel': asked for another class
                    title = f"as {cls} {r['label_score']:.3g}" if relabelled else f"{what} {r['score']:.3g}"
                    colour = "blue" if relabelled else "black" if what == "kept" else "red"
                    ax.set_title(title, fontsize=6, color=colour)
            if half == 0:
                axes[i][0].set_ylabel(cls, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"selection by {report['selection']['method']} (oversample {report['selection']['oversample']:g}): "
                 "best kept (left), worst dropped (right)", fontsize=9)
    fig.tight_layout()
    plt.close(fig)  # out of pyplot's registry: the notebook displays the returned figure once
    return fig


def unselected_metrics(cfg, report: Mapping[str, Any], extractor: Any = None,
                       progress: bool = False) -> dict[str, Any]:
    """GAN metrics (first set, against the real ``cfg.real_split``) and class fidelity (all sets) of the
    *unselected* set: the first ``n`` draws of each class of the pool, the latents ``selection='none'`` draws for
    the same seed (the noise of a class's last, partial batch aside). Keys ``unselected/<extractor>/<metric>`` and
    ``unselected/fidelity/…``, measured exactly as the kept set's; ``{}`` when the run made no selection."""
    import torch

    from histlib.metrics.folders import (
        extractor_label,
        feature_metrics,
        folder_features,
        get_feature_extractor,
        image_resolution,
    )

    if "pool_dir" not in report:
        return {}
    scores = read_scores(Path(report["out_dir"]).parent)
    out: dict[str, Any] = {}
    if extractor is not None:
        ext = get_feature_extractor(extractor, device=cfg.device)
        kw = dict(num_workers=cfg.num_workers, progress=progress)
        fake, g_ds = folder_features(report["pool_set_dirs"][0], ext, desc="pool features", **kw)
        real, r_ds = folder_features(cfg.dataset_dir, ext, split=cfg.real_split, desc="real features",
                                     resolution=image_resolution(report["pool_set_dirs"][0]), **kw)
        first = draw_index(g_ds.paths) < np.array([report["settings"]["images_per_class"][g_ds.classes[i]]
                                                   for i in g_ds.labels])
        metrics = feature_metrics(real, r_ds, fake[torch.from_numpy(first)], g_ds.labels[first], g_ds.classes,
                                  extractor_label(ext), k_pr=cfg.k_pr, k_dc=cfg.k_dc, device=cfg.device)
        out.update({f"unselected/{k}": v for k, v in metrics.items()})
    if cfg.fidelity and cfg.dataset_dir is not None:
        out.update({f"unselected/fidelity/{k}": v for k, v in _unselected_fidelity(cfg, report, scores).items()})
    return out


def _unselected_fidelity(cfg, report: Mapping[str, Any], scores: pd.DataFrame) -> dict[str, Any]:
    import torch

    from histlib import fidelity
    from histlib.data.dataset import to_uint8_tensor
    from histlib.device import resolve_device

    clf = fidelity.FidelityClassifier(fidelity.classifier_for_run(cfg, report), device=resolve_device(cfg.device))
    asked, seen = [], []
    for j, pool_set in enumerate(report["pool_set_dirs"]):
        part = scores[(scores["set"] == j) & scores["unselected"]]
        for cls, rows in part.groupby("class", sort=False):
            imgs = torch.stack([to_uint8_tensor(_open_rgb(Path(pool_set) / f)) for f in rows["file"]])
            seen.append(clf.predict(imgs))
            asked.append(np.full(len(rows), clf.classes.index(cls)))
    keep = ("agreement", "balanced_agreement", "n", "chance")
    result = fidelity.agreement(np.concatenate(asked), np.concatenate(seen), clf.classes, clf)
    return {k: v for k, v in result.items() if k in keep or k.startswith("agreement/")}


def _open_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def comparison_table(metrics: Mapping[str, Any], fidelity_result: Mapping[str, Any] | None,
                     unselected: Mapping[str, Any]) -> pd.DataFrame:
    """The kept set beside the unselected one: GAN metrics (with ``n_real``/``n_fake``) per extractor and class
    fidelity; empty when there was no selection."""
    if not unselected:
        return pd.DataFrame()
    rows: dict[str, dict[str, Any]] = {"kept": {}, "unselected": {}}
    for key, v in metrics.items():
        parts = key.split("/")
        if len(parts) == 2 and parts[1] in ("fid", "precision", "recall", "density", "coverage", "n_real", "n_fake"):
            rows["kept"][key] = v
            rows["unselected"][key] = unselected.get(f"unselected/{key}")
    for m in ("agreement", "balanced_agreement", "n"):
        if fidelity_result:
            rows["kept"][f"fidelity/{m}"] = fidelity_result.get(m)
        if f"unselected/fidelity/{m}" in unselected:
            rows["unselected"][f"fidelity/{m}"] = unselected[f"unselected/fidelity/{m}"]
    return pd.DataFrame.from_dict(rows, orient="index")
