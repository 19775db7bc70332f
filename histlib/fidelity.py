"""Class fidelity: does a conditional generator draw the class it is asked for?

A GAN can score well on FID and still draw class A when asked for class B (a swapped label poisons every classifier
trained on its images). Class fidelity measures that directly: a *fidelity classifier*, trained once per real
dataset on its train split (and checked on its val split), labels the generated images; the agreement between the
class asked for and the class seen, per class and overall, with the confusion matrix (rows: class asked for,
columns: class seen), is reported next to the GAN metrics of every generated set.

The fidelity classifier (:func:`fidelity_classifier`): a timm ``resnet18`` trained from scratch (no ImageNet weights,
so it is the same on every machine) at the generator's resolution with the paper's augmentation, class-balanced
sampling, 30 epochs capped at 2 000 optimiser steps; the checkpoint with the best validation balanced accuracy is
kept. It is cached under ``<cache_root>/<dataset>-<hash>/`` where the hash covers the prepared dataset's manifest and
``prepare.json`` and the classifier's settings, so every generation of a study (all variants, all sets) reuses one
classifier per target, and a re-prepared dataset gets a new one. Its validation accuracy is the ceiling of what
agreement can show and is reported beside it.

Verdicts (:func:`verdict`): a class whose agreement is at or below chance, or that is mostly seen as one other class
("drawn as"), and a set whose balanced agreement is below half-way between chance and the classifier's own
validation balanced accuracy, get a warning that the reports and the study index show.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from histlib import runs
from histlib.config import check_types
from histlib.data.dataset import to_uint8
from histlib.device import resolve_device

DEFAULT_CACHE = "results/.fidelity"


@dataclass
class FidelityConfig:
    """Settings of the fidelity classifier (part of its cache key).

    Attributes:
        model: timm model name.
        image_size: input size in pixels; None = the generator's resolution (set by the caller).
        epochs: training epochs (upper bound).
        max_steps: cap on optimiser steps, so a large real set costs no more than a small one.
        batch_size: training batch size.
        lr: AdamW learning rate.
        seed: seed of initialisation and sampling.
        pretrained: ImageNet weights (False by default: the same classifier on every machine).
    """

    model: str = "resnet18"
    image_size: int | None = None
    epochs: int = 30
    max_steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    pretrained: bool = False


def _dataset_key(real_dir: Path) -> dict[str, Any]:
    manifest = real_dir / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{real_dir}: no manifest.csv; the fidelity classifier is trained on a prepared "
                                "dataset (python -m histlib prepare)")
    key: dict[str, Any] = {"manifest_sha256": runs.file_sha256(manifest)}
    prep = real_dir / "prepare.json"
    if prep.is_file():
        key["prepare_hash"] = runs.read_json(prep).get("config_hash")
    return key


def classifier_dir(real_dir: str | os.PathLike, cfg: FidelityConfig,
                   cache_root: str | os.PathLike | None = None) -> Path:
    """The cache folder of the fidelity classifier of ``real_dir`` with settings ``cfg``."""
    real = runs.project_path(real_dir)
    key = runs.config_hash({**_dataset_key(real), **dataclasses.asdict(cfg)})
    root = runs.project_path(cache_root or DEFAULT_CACHE)
    return root / f"{real.name}-{key[:12]}"


_seconds_obtaining = 0.0  # this process's seconds in fidelity_classifier beyond cache hits (classifier_seconds)
_seconds_lock = threading.Lock()


def classifier_seconds() -> float:
    """Seconds this process has spent training real-image classifiers in :func:`fidelity_classifier`, or waiting for
    another process training the same one (cache hits cost nothing here). A study step runs in a kernel of its own,
    so there it is the step's time on these classifiers; a generate run records it as ``classifier_seconds``, and
    ``study plan`` leaves it out of a generate step's measured rate (one step of a dataset pays it, the others not)."""
    return _seconds_obtaining


def fidelity_classifier(real_dir: str | os.PathLike, image_size: int, *, cfg: FidelityConfig | None = None,
                        cache_root: str | os.PathLike | None = None, device: str = "auto",
                        progress: bool = False) -> Path:
    """The checkpoint of the fidelity classifier of a prepared dataset, trained on first use and cached.

    Args:
        real_dir: the prepared real dataset (train split for training, val split for checking).
        image_size: the generator's resolution (used when ``cfg.image_size`` is None).
        cfg: classifier settings (default :class:`FidelityConfig`).
        cache_root: parent of the cache folders (default ``results/.fidelity`` in the project).
        device: ``'auto'``, ``'cpu'`` or ``'cuda[:N]'`` (not part of the cache key).
        progress: progress bars while training.

    Returns:
        Path of ``checkpoints/best.pt`` (with ``metrics.json`` beside it holding the validation accuracy).
    """
    cfg = dataclasses.replace(cfg or FidelityConfig())
    check_types(cfg)
    if cfg.image_size is None:
        cfg.image_size = int(image_size)
    out = classifier_dir(real_dir, cfg, cache_root)
    ckpt = out / "checkpoints" / "best.pt"
    if (out / "metrics.json").is_file() and ckpt.is_file():
        return ckpt
    # Concurrent study steps (the generate steps of one target) share this cache: one trains, the others wait and
    # read its checkpoint. Unlocked, each trained its own and the last rename won, so a set measured before it was
    # scored by a classifier no longer in the cache.
    global _seconds_obtaining
    t0 = time.perf_counter()
    try:
        with runs.file_lock(out.parent / f".{out.name}.lock"):
            if not ((out / "metrics.json").is_file() and ckpt.is_file()):
                _train_fidelity_classifier(real_dir, cfg, out, device, progress)
    finally:
        with _seconds_lock:
            _seconds_obtaining += time.perf_counter() - t0
    return ckpt


def _train_fidelity_classifier(real_dir: str | os.PathLike, cfg: FidelityConfig, out: Path, device: str,
                               progress: bool) -> None:
    from histlib.classify.config import ClassifyConfig
    from histlib.classify.train import train_classifier

    ccfg = ClassifyConfig(model=cfg.model, train_set="real", real_dir=runs.project_path(real_dir).as_posix(),
                          image_size=cfg.image_size, epochs=cfg.epochs, max_steps=cfg.max_steps,
                          batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, pretrained=cfg.pretrained,
                          balanced_sampling=True, device=device, amp=False, channels_last=False)
    with runs.atomic_dir(out) as tmp:
        train_classifier(ccfg, tmp, progress=progress)
        runs.write_json(tmp / "fidelity.json", {"fidelity_config": dataclasses.asdict(cfg),
                                                 "real_dir": runs.display_path(real_dir)})


def classifier_for_run(cfg: Any, report: Mapping[str, Any], progress: bool = False) -> Path:
    """The fidelity classifier of a generate run's real dataset (:func:`fidelity_classifier` at the generated
    resolution), cached in ``cfg.fidelity_cache``, by default ``.fidelity/`` beside the run's stage folder
    (``results/<study>/<dataset>/.fidelity/``), so every variant of a target shares one.

    Args:
        cfg: the run's ``histlib.generate.GenerateConfig`` (``dataset_dir``, ``fidelity_cache``, ``device``).
        report: its images' report (``out_dir`` = ``<run>/images``, ``resolution``).
        progress: progress bars while training.
    """
    run_dir = Path(report["out_dir"]).parent  # <run>/images -> <run>
    cache = cfg.fidelity_cache or (run_dir.parent.parent / ".fidelity")
    return fidelity_classifier(cfg.dataset_dir, int(report["resolution"]), cache_root=cache,
                               device=str(resolve_device(cfg.device)), progress=progress)


class FidelityClassifier:
    """A loaded fidelity classifier: ``predict(images_uint8)`` → class indices in its own class order."""

    def __init__(self, checkpoint: str | os.PathLike, device: str | torch.device = "cpu"):
        from histlib.classify.data import eval_transform
        from histlib.classify.weights import load_classifier

        self.path = Path(checkpoint)
        self.device = torch.device(device)
        self.model, ckpt = load_classifier(self.path, self.device)
        self.classes: list[str] = runs.check_names(list(ckpt.get("classes") or []), self.path)
        self.image_size = int(ckpt["image_size"])
        self.val_accuracy = float(ckpt.get("val_accuracy", float("nan")))
        self.val_balanced_accuracy = float(ckpt.get("val_balanced_accuracy", float("nan")))
        self.transform = eval_transform(self.image_size)

    @torch.no_grad()
    def _logits(self, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Logits ``[N, K]`` (float32, on the CPU) of uint8 images ``[N, 3, H, W]``, in batches."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        out = [torch.zeros(0, len(self.classes))]
        for i in range(0, len(images), batch_size):
            x = self.transform(images[i:i + batch_size]).to(self.device)  # [B, 3, S, S] normalised
            out.append(self.model(x).float().cpu())
        return torch.cat(out)

    def predict(self, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Predicted class indices ``[N]`` of uint8 images ``[N, 3, H, W]``."""
        return self._logits(images, batch_size).argmax(1).numpy()

    def probabilities(self, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``[N, K]`` (softmax, the classifier's class order) of uint8 images ``[N, 3, H, W]``."""
        return torch.softmax(self._logits(images, batch_size), 1).numpy()


def agreement(asked: Sequence[int] | np.ndarray, seen: Sequence[int] | np.ndarray, classes: Sequence[str],
              classifier: FidelityClassifier | None = None) -> dict[str, Any]:
    """Class fidelity of labelled generated images.

    Args:
        asked: class index each image was generated for ``[N]``.
        seen: class index the fidelity classifier gives it ``[N]`` (same class order).
        classes: class names in index order.
        classifier: the classifier used (its validation accuracy is reported as the ceiling).

    Returns:
        Flat keys: ``agreement`` (fraction of images seen as the class asked for), ``balanced_agreement`` (mean
        over classes), ``agreement/<class>``, ``drawn_as/<class>`` (the class most often seen), ``confusion_matrix``
        (rows asked, columns seen), ``classes``, ``chance``, ``n``, ``classifier_val_accuracy``,
        ``classifier_val_balanced_accuracy``, ``classifier``, and ``warnings`` (:func:`verdict`).
    """
    asked = np.asarray(asked, dtype=np.int64)
    seen = np.asarray(seen, dtype=np.int64)
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (asked, seen), 1)
    rows = cm.sum(1)
    per_class = {c: (float(cm[i, i] / rows[i]) if rows[i] else None) for i, c in enumerate(classes)}
    present = [v for v in per_class.values() if v is not None]
    out: dict[str, Any] = {
        "agreement": float(np.trace(cm) / max(cm.sum(), 1)),
        "balanced_agreement": float(np.mean(present)) if present else float("nan"),
        **{f"agreement/{c}": v for c, v in per_class.items()},
        **{f"drawn_as/{c}": classes[int(cm[i].argmax())] for i, c in enumerate(classes) if rows[i]},
        "confusion_matrix": cm.tolist(), "classes": list(classes), "chance": 1.0 / k, "n": int(cm.sum()),
    }
    if classifier is not None:
        out.update({"classifier_val_accuracy": classifier.val_accuracy,
                    "classifier_val_balanced_accuracy": classifier.val_balanced_accuracy,
                    "classifier": runs.display_path(classifier.path)})
    out["warnings"] = verdict(out)
    return out


def verdict(result: Mapping[str, Any]) -> list[str]:
    """Warnings for a fidelity result: classes drawn as another class, or a set near or below chance."""
    classes = list(result["classes"])
    chance = float(result["chance"])
    warnings = []
    for c in classes:
        a = result.get(f"agreement/{c}")
        if a is None:
            continue
        other = result.get(f"drawn_as/{c}")
        if other is not None and other != c:
            warnings.append(f"class {c!r} is mostly drawn as {other!r} (agreement {a:.0%}, chance {chance:.0%})")
        elif a <= chance:
            warnings.append(f"class {c!r} is recognised no better than chance (agreement {a:.0%})")
    ceiling = result.get("classifier_val_balanced_accuracy")
    bal = float(result["balanced_agreement"])
    if ceiling is not None and np.isfinite(ceiling) and ceiling > chance:
        threshold = chance + 0.5 * (ceiling - chance)
        if bal < threshold:
            warnings.insert(0, f"balanced agreement {bal:.0%} is near or below chance ({chance:.0%}); the fidelity "
                               f"classifier reaches {ceiling:.0%} on real validation images, so the generated "
                               "labels are not trustworthy")
    elif bal <= chance:
        warnings.insert(0, f"balanced agreement {bal:.0%} is at or below chance ({chance:.0%})")
    return warnings


@torch.no_grad()
def generator_fidelity(G: torch.nn.Module, classes: Sequence[str], classifier: FidelityClassifier,
                       per_class: int = 100, seed: int = 0, truncation_psi: float = 1.0,
                       batch_size: int = 128, noise_mode: str = "random") -> dict[str, Any]:
    """Class fidelity of a generator, sampled in memory (``per_class`` images per class, fixed latents).

    The synthesis noise is random, as in training and in a generated set, drawn from its own seeded stream (the
    same images every call; the global RNG is left alone). The generator's classes are matched to the
    classifier's by name; a generator class the classifier does not know is left out.
    """
    device = next(G.parameters()).device
    names = [c for c in classes if c in classifier.classes]
    if not names:
        raise ValueError(f"generator classes {list(classes)} share no name with the fidelity classifier's "
                         f"{classifier.classes}")
    gen = torch.Generator().manual_seed(int(seed))
    asked, seen = [], []
    was_training = G.training
    G.eval()
    try:
        for name in names:
            k = list(classes).index(name)
            for start in range(0, per_class, batch_size):
                m = min(batch_size, per_class - start)
                z = torch.randn([m, G.z_dim], generator=gen).to(device)
                c = torch.full((m,), k, dtype=torch.int64, device=device)
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(int(seed) * 1_000_003 + k * 10_007 + start)
                    img = to_uint8(G(z, c, truncation_psi=truncation_psi, noise_mode=noise_mode)).cpu()
                seen.append(classifier.predict(img))
                asked.append(np.full(m, classifier.classes.index(name)))
    finally:
        G.train(was_training)
    return agreement(np.concatenate(asked), np.concatenate(seen), classifier.classes, classifier)


def sets_fidelity(images_dirs: Sequence[str | os.PathLike], classifier: FidelityClassifier,
                  num_workers: int = 0) -> dict[str, Any]:
    """Class fidelity pooled over several generated sets (every image of every set counted once)."""
    from histlib.data.dataset import ImageDataset, to_uint8_tensor

    asked, seen = [], []
    for d in images_dirs:
        ds = ImageDataset(runs.project_path(d), split=None, transform=to_uint8_tensor)
        unknown = sorted(set(ds.classes) - set(classifier.classes))
        if unknown:
            raise ValueError(f"{d}: classes {unknown} are unknown to the fidelity classifier "
                             f"({classifier.classes}); was it trained on another dataset?")
        index = np.array([classifier.classes.index(c) for c in ds.classes])
        for x, y in torch.utils.data.DataLoader(ds, batch_size=256, num_workers=num_workers):
            seen.append(classifier.predict(x))
            asked.append(index[y.numpy()])
    result = agreement(np.concatenate(asked), np.concatenate(seen), classifier.classes, classifier)
    result["n_sets"] = len(images_dirs)
    return result


def metrics_keys(result: Mapping[str, Any]) -> dict[str, Any]:
    """A fidelity result as ``metrics.json`` keys ``fidelity/...``."""
    return {f"fidelity/{k}": v for k, v in result.items()}


def from_metrics(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fidelity result stored in a ``metrics.json`` (None when it has none)."""
    out = {k[len("fidelity/"):]: v for k, v in metrics.items() if str(k).startswith("fidelity/")}
    return out or None


def confusion_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """The confusion matrix of a fidelity result as a table (rows: class asked for, columns: class seen)."""
    classes = list(result["classes"])
    table = pd.DataFrame(result["confusion_matrix"], index=pd.Index(classes, name="asked for"),
                         columns=pd.Index(classes, name="seen as"))
    return table


def report_html(result: Mapping[str, Any] | None, title: str = "Class fidelity") -> str:
    """An HTML block for reports: agreement, the classifier's own accuracy, warnings in a red box, the confusion
    matrix (rows: class asked for, columns: class the fidelity classifier sees)."""
    import html

    if not result:
        return f"<p><b>{html.escape(title)}</b>: not measured.</p>"
    warn = list(result.get("warnings") or [])
    ceiling = result.get("classifier_val_balanced_accuracy")
    head = (f"<p><b>{html.escape(title)}</b>: {result['agreement']:.1%} of {result['n']} generated images are seen as "
            f"the class they were generated for (balanced {result['balanced_agreement']:.1%}; chance "
            f"{result['chance']:.1%}"
            + (f"; the fidelity classifier reaches {ceiling:.1%} balanced accuracy on real validation images"
               if ceiling is not None else "") + ").</p>")
    box = ""
    if warn:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in warn)
        box = ('<div style="border:2px solid #c00;background:#fee;padding:6px 10px;margin:6px 0">'
               f"<b>Warning: the generated labels are not trustworthy.</b><ul>{items}</ul></div>")
    table = confusion_table(result).to_html(border=0)
    return head + box + table


class FidelityView:
    """Jupyter display of a fidelity result (:func:`report_html`); ``str()`` gives plain text."""

    def __init__(self, result: Mapping[str, Any] | None, title: str = "Class fidelity"):
        self.result, self.title = result, title

    def _repr_html_(self) -> str:
        return report_html(self.result, self.title)

    def __repr__(self) -> str:
        r = self.result
        if not r:
            return f"{self.title}: not measured"
        lines = [f"{self.title}: agreement {r['agreement']:.1%} (balanced {r['balanced_agreement']:.1%}, "
                 f"chance {r['chance']:.1%}, n={r['n']})"]
        lines += [f"WARNING: {w}" for w in r.get("warnings") or []]
        lines.append(confusion_table(r).to_string())
        return "\n".join(lines)


class FidelityHook:
    """A ``train_gan`` metrics hook: class fidelity of ``G_ema`` (keys ``fidelity/…``) at each evaluation.

    Args:
        classifier: a :class:`FidelityClassifier` or its checkpoint path.
        classes: the generator's class names in index order.
        per_class: images per class each time.
        seed: latent seed (the same latents every time, so curves compare like with like).
    """

    def __init__(self, classifier: FidelityClassifier | str | os.PathLike, classes: Sequence[str],
                 per_class: int = 64, seed: int = 0):
        self.classifier = classifier if isinstance(classifier, FidelityClassifier) else FidelityClassifier(classifier)
        self.classes = list(classes)
        self.per_class = per_class
        self.seed = seed

    def __call__(self, G_ema: torch.nn.Module, cur_nimg: int) -> dict[str, float]:
        self.classifier.model.to(next(G_ema.parameters()).device)
        self.classifier.device = next(G_ema.parameters()).device
        r = generator_fidelity(G_ema, self.classes, self.classifier, self.per_class, self.seed)
        out = {"fidelity/agreement": r["agreement"], "fidelity/balanced_agreement": r["balanced_agreement"]}
        out.update({f"fidelity/agreement/{c}": r[f"agreement/{c}"] for c in r["classes"]
                    if r.get(f"agreement/{c}") is not None})
        return out
