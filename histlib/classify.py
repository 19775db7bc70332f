"""Classification stage: timm classifiers trained on real, synthetic or real + synthetic images (notebook 05).

One run trains one (train set, model, seed) and writes the contract run directory (DESIGN.md §4):
``config.json`` (the ``ClassifyConfig``), ``env.json`` (versions, device, whether ImageNet weights were used),
``stats.jsonl`` (one line per epoch), ``metrics.json`` (accuracy, balanced accuracy, per-class recall, confusion
matrix on the validation split; flat keys) and ``checkpoints/best.pt`` (best epoch by validation balanced
accuracy). ``run_classifiers`` repeats that over train sets × models × seeds in independent run directories and
skips runs whose config matches a finished one.

Training sets (``ClassifyConfig.train_set``, names in ``histlib.classify_sets``):
    ``real``            ``real_per_class`` images per class drawn from the real set's train split (None: all), or
                        a nested fraction ``real_fraction`` of its groups (the real-data learning curve).
    ``synthetic``       ``synthetic_per_class`` images per class drawn from a generated ImageFolder.
    ``real+synthetic``  both of the above, concatenated.
    ``real+stain``, ``real+synthetic+stain``: the same images with classic H&E stain augmentation (HED jitter of
                        strength ``stain_strength``, ``histlib.data.stain_augment``) before the paper's augmentation.
Validation is always the real set's ``val_split``. Augmentation follows the paper: rot90, horizontal and
vertical flips, brightness/contrast/saturation factors in [0.8, 1.2]; ImageNet normalisation. The transforms and
the training sets are built in ``histlib.classify_data`` (re-exported here).

ImageNet weights are used when they can be found without waiting on a network that is not there: a local file
(``weights_file``), the Hugging Face or torch hub cache, or a download when the hub host answers. Otherwise the
run warns once (saying where to put the file) and trains from scratch; ``pretrained: true/false`` is recorded in
``env.json``, ``metrics.json`` and the checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import torch
from torch import nn

from histlib.classify_data import (  # noqa: F401  (re-exported: the training data is part of this stage's API)
    COLOR_FACTORS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomRot90,
    TrainSet,
    build_train_set,
    build_val_set,
    eval_transform,
    synthetic_dir_for,
    train_transform,
)
from histlib.classify_sets import (  # noqa: F401  (TRAIN_SETS and run_name re-exported: this stage's public names)
    TRAIN_SETS,
    check_fraction,
    check_train_set,
    needs_synthetic,
    nested_fraction,
    run_name,
    train_set_label,
    uses_real,
    uses_stain,
)
from histlib.config import check_types, from_dict
from histlib.data.stain_augment import DEFAULT_STAIN_STRENGTH, HEDJitter
from histlib.progress import iterate
from histlib.progress import mode as progress_mode
from histlib.runs import Run, atomic_torch_save, config_hash, read_json
from histlib.runtime import resolve_device

PAPER_MODELS = ("resnet34", "densenet169", "efficientnet_b2")


@dataclass
class ClassifyConfig:
    """Settings of one classifier run (written to ``config.json``).

    Attributes:
        model: a timm model name (paper: ``resnet34``, ``densenet169``, ``efficientnet_b2``).
        train_set: one of ``histlib.classify_sets.TRAIN_SETS``: ``'real'``, ``'synthetic'``, ``'real+synthetic'``,
            ``'real+stain'``, ``'real+synthetic+stain'``.
        real_dir: prepared real dataset (``manifest.csv`` with train/val splits); always needed for validation.
        synthetic_dir: generated ImageFolder ``<dir>/<class>/*.png``; ``{seed}`` in the path is replaced by the
            seed, and a folder of generated sets ``set0, set1, …`` resolves to ``set<seed>``, so each seed trains on
            its own freshly generated set (as in the paper).
        real_per_class: real training images per class (None: all of the train split).
        synthetic_per_class: synthetic images per class (None: all of the generated set).
        subset_seed: seed of the per-class draws and of the fraction's group order (None: ``seed``).
        real_fraction: fraction of the real train split's groups kept for ``train_set='real'`` (1: all), drawn per
            class and nested (``histlib.classify_sets.nested_fraction``): the real-data learning curve.
        stain_strength: strength ``sigma`` of the HED jitter of the ``+stain`` training sets (Tellez et al. 2019:
            0.05 light, 0.2 strong; ``histlib.data.stain_augment``); unused by the other sets.
        train_split, val_split: split names in the real set's manifest.
        image_size: network input size in pixels (images are resized to it).
        epochs: training epochs (upper bound with early stopping).
        batch_size: training batch size.
        optimizer: ``'adamw'`` or ``'sgd'``.
        lr, weight_decay, momentum: optimiser settings (momentum for SGD only); no decay on norms and biases.
        warmup_epochs: linear warm-up before the cosine decay (0: none).
        label_smoothing: cross-entropy label smoothing.
        balanced_sampling: draw classes uniformly (with replacement) instead of shuffling; for imbalanced sets.
        pretrained: ``'auto'`` (ImageNet weights when available, else from scratch), True (must have them),
            False (from scratch).
        weights_file: a local ImageNet checkpoint for ``model`` (``.safetensors``/``.pth``/``.bin``).
        amp: mixed precision, ``'auto'`` = on for CUDA (bf16 where supported, else fp16), off on CPU.
        channels_last: ``'auto'`` = on for CUDA.
        num_workers: data-loader processes, ``'auto'`` = 0 on CPU (decoding would compete with the model for the
            same cores), ``min(8, cores)`` on CUDA.
        seed: seed of initialisation, sampling and augmentation.
        device: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
        early_stopping_patience: stop after this many epochs without a better validation balanced accuracy
            (None or 0: never).
        max_steps: stop after this many optimiser steps (for quick tests); None: ``epochs`` full epochs.
        variant: the GAN variant that generated ``synthetic_dir`` (a label: run names and ``metrics.json`` carry it).
        test_split: the real set's split the chosen checkpoint is evaluated on once, when the manifest has it
            (``test_*`` keys; nothing is selected on it). None: no test evaluation.
        extra_test_sets: ``{name: prepared dataset}`` evaluated once with the chosen checkpoint (all their images;
            they may hold a subset of the classes), e.g. CRC-VAL-HE-7K for a model trained on NCT-CRC-HE-100K
            (``extra/<name>/*`` keys).
    """

    model: str = "resnet34"
    train_set: str = "real"
    real_dir: str | None = None
    synthetic_dir: str | None = None
    real_per_class: int | None = None
    synthetic_per_class: int | None = None
    subset_seed: int | None = None
    real_fraction: float = 1.0
    stain_strength: float = DEFAULT_STAIN_STRENGTH
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 224
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    balanced_sampling: bool = False
    pretrained: str | bool = "auto"
    weights_file: str | None = None
    amp: str | bool = "auto"
    channels_last: str | bool = "auto"
    num_workers: str | int = "auto"
    seed: int = 0
    device: str = "auto"
    early_stopping_patience: int | None = None
    max_steps: int | None = None
    variant: str | None = None
    test_split: str | None = "test"
    extra_test_sets: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check_types(self)
        check_train_set(self.train_set)
        check_fraction(self.real_fraction, "ClassifyConfig.real_fraction")
        if self.real_fraction < 1 and (self.train_set != "real" or self.real_per_class is not None):
            raise ValueError(f"ClassifyConfig.real_fraction={self.real_fraction}: a fraction of the real train split "
                             f"is for train_set 'real' without real_per_class (got train_set={self.train_set!r}, "
                             f"real_per_class={self.real_per_class})")
        HEDJitter(self.stain_strength)  # checks the strength
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"ClassifyConfig.optimizer={self.optimizer!r}: expected 'adamw' or 'sgd'")
        for name in ("pretrained", "amp", "channels_last"):
            if getattr(self, name) not in ("auto", True, False):
                raise ValueError(f"ClassifyConfig.{name}={getattr(self, name)!r}: expected 'auto', true or false")
        if not (self.num_workers == "auto" or (isinstance(self.num_workers, int) and self.num_workers >= 0)):
            raise ValueError(f"ClassifyConfig.num_workers={self.num_workers!r}: expected 'auto' or an integer >= 0")
        for name in ("image_size", "epochs", "batch_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ClassifyConfig.{name}={getattr(self, name)!r}: expected a positive integer")
        for name in ("real_per_class", "synthetic_per_class", "max_steps"):
            v = getattr(self, name)
            if v is not None and int(v) <= 0:
                raise ValueError(f"ClassifyConfig.{name}={v!r}: expected a positive integer or null")
        if self.lr <= 0:
            raise ValueError(f"ClassifyConfig.lr={self.lr!r}: expected a positive number")
        if not isinstance(self.extra_test_sets, dict) or not all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in self.extra_test_sets.items()):
            raise ValueError(f"ClassifyConfig.extra_test_sets={self.extra_test_sets!r}: expected a mapping of "
                             "names to prepared dataset folders")


# ----------------------------------------------------------------------------------------------------------------
# Models and ImageNet weights

_WARNED: set[str] = set()  # models whose missing-weights warning was already shown in this process
_REACHABLE: dict[str, bool] = {}  # host -> answered a TCP connect (cached per process)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def host_reachable(host: str, port: int = 443, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds (DNS included).

    The Hugging Face client retries a dead network for about 50 s before giving up; this check lets an offline
    machine skip the lookup at once. The answer is cached for the process.
    """
    key = f"{host}:{port}"
    if key in _REACHABLE:
        return _REACHABLE[key]
    result = [False]

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result[0] = True
        except OSError:
            pass

    # DNS resolution ignores socket timeouts, so the probe runs in a thread that is abandoned after the deadline.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    _REACHABLE[key] = result[0]
    return result[0]


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "huggingface" / "hub"


def _torch_cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _pretrained_cfg(model_name: str) -> dict[str, Any] | None:
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        return None
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return cfg if (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")) else None


def _cached_weights(pcfg: dict[str, Any]) -> tuple[str, Path] | None:
    """A local copy of the model's ImageNet weights in the Hugging Face or torch hub cache, if any."""
    hub_id = pcfg.get("hf_hub_id")
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        repo_dir = _hf_cache_dir() / ("models--" + repo.replace("/", "--"))
        ref = repo_dir / "refs" / (revision or "main")
        names = [pcfg["hf_hub_filename"]] if pcfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
        snapshots = [repo_dir / "snapshots" / ref.read_text().strip()] if ref.is_file() else []
        if not snapshots and (repo_dir / "snapshots").is_dir():
            snapshots = sorted((repo_dir / "snapshots").iterdir())
        for snap in snapshots:
            for name in names:
                if (snap / name).is_file():
                    return "hf-cache", snap / name
    url = pcfg.get("url")
    if url:
        f = _torch_cache_dir() / os.path.basename(urlparse(url).path)
        if f.is_file():
            return "torch-cache", f
    return None


def weights_help(model_name: str) -> str:
    """Where ImageNet weights for ``model_name`` can be put so that an offline machine finds them."""
    pcfg = _pretrained_cfg(model_name) or {}
    lines = ["To use ImageNet weights offline, do one of:"]
    hub_id = pcfg.get("hf_hub_id")
    if hub_id:
        repo = hub_id.partition("@")[0]
        lines += [
            f"  - download https://huggingface.co/{repo}/resolve/main/model.safetensors and set "
            f"ClassifyConfig.weights_file (JSON key \"weights_file\") to its path;",
            f"  - or run `python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\"` on a machine "
            f"with internet, then copy the folder models--{repo.replace('/', '--')} from its Hugging Face cache "
            f"(~/.cache/huggingface/hub) into this machine's cache {_hf_cache_dir()} (HF_HUB_CACHE or HF_HOME "
            f"choose another folder);",
        ]
    if pcfg.get("url"):
        lines.append(f"  - or put {os.path.basename(urlparse(pcfg['url']).path)} (from {pcfg['url']}) into the torch "
                     f"hub cache {_torch_cache_dir()} (set TORCH_HOME to use another folder).")
    if len(lines) == 1:
        lines = [f"timm lists no ImageNet weights for {model_name!r}; set ClassifyConfig.weights_file to a local "
                 "checkpoint of this architecture."]
    return "\n".join(lines)


def _hub_host(pcfg: dict[str, Any]) -> str:
    if pcfg.get("hf_hub_id"):
        return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    return urlparse(pcfg.get("url", "")).hostname or "github.com"


def _check_loaded(model: nn.Module, file: Path, classifier: Any) -> None:
    """Raises when a weights file left most of the backbone untouched (timm loads non-strictly)."""
    import timm

    file_sd = timm.models.load_state_dict(str(file))
    heads = tuple(classifier) if isinstance(classifier, (list, tuple)) else (classifier or "",)
    keys = [k for k in model.state_dict() if not (heads[0] and k.startswith(heads))]
    same = sum(1 for k in keys if k in file_sd and file_sd[k].shape == model.state_dict()[k].shape
               and torch.equal(file_sd[k].to(model.state_dict()[k].dtype), model.state_dict()[k]))
    if same < 0.5 * len(keys):
        raise ValueError(f"weights file {file}: only {same} of {len(keys)} tensors of timm model "
                         f"{type(model).__name__} were found in it; is it a checkpoint of this architecture?")


def create_classifier(model_name: str, num_classes: int, pretrained: str | bool = "auto",
                      weights_file: str | os.PathLike | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A timm model with a ``num_classes`` head, from ImageNet weights when they can be had without stalling.

    Order: ``weights_file``; the Hugging Face / torch hub cache; a download when the hub host answers a TCP
    connect within 2 s and ``HF_HUB_OFFLINE`` is not set. With ``pretrained='auto'`` and no weights, one warning per
    model (with ``weights_help``) and the model starts from scratch.

    Args:
        model_name: any ``timm.create_model`` name (e.g. ``resnet34``, ``densenet169``, ``efficientnet_b2``).
        num_classes: size of the new classification head.
        pretrained: ``'auto'``, True (raise when the weights are unavailable) or False (from scratch).
        weights_file: local ImageNet checkpoint for this architecture.

    Returns:
        ``(model, info)`` with ``info = {"pretrained": bool, "weights_source": str | None, "weights_file": ...}``.
    """
    import timm

    if pretrained not in ("auto", True, False):
        raise ValueError(f"pretrained={pretrained!r}: expected 'auto', True or False")
    if not timm.is_model(model_name.partition(".")[0]):
        raise ValueError(f"ClassifyConfig.model={model_name!r}: not a timm model name (see timm.list_models())")
    scratch = {"pretrained": False, "weights_source": None, "weights_file": None}
    if pretrained is False:
        return timm.create_model(model_name, pretrained=False, num_classes=num_classes), scratch

    pcfg = _pretrained_cfg(model_name)
    found: tuple[str, Path] | None = None
    if weights_file is not None:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ClassifyConfig.weights_file={str(weights_file)!r}: file not found")
        found = ("file", path)
    elif pcfg is not None:
        found = _cached_weights(pcfg)
    if found is not None:
        source, path = found
        try:
            model = timm.create_model(model_name, pretrained=True, num_classes=num_classes,
                                      pretrained_cfg_overlay={"file": str(path), "source": ""})
        except (RuntimeError, KeyError, ValueError) as e:
            raise ValueError(f"weights file {path} ({source}) does not fit the tensors of timm model "
                             f"{model_name!r}: {str(e)[:400]}") from None
        _check_loaded(model, path, model.pretrained_cfg.get("classifier"))
        return model, {"pretrained": True, "weights_source": source, "weights_file": str(path)}

    reason = None
    if pcfg is None:
        reason = f"timm lists no pretrained weights for {model_name!r}"
    elif _env_true("HF_HUB_OFFLINE") and pcfg.get("hf_hub_id"):
        reason = "HF_HUB_OFFLINE is set and they are not in the local caches"
    elif not host_reachable(_hub_host(pcfg)):
        reason = f"{_hub_host(pcfg)} cannot be reached and they are not in the local caches"
    else:
        try:
            model = timm.create_model(model_name, pretrained=True, num_classes=num_classes)
            return model, {"pretrained": True, "weights_source": "download", "weights_file": None}
        except Exception as e:  # noqa: BLE001 — any download failure means "no weights" for 'auto'
            reason = f"the download failed ({type(e).__name__}: {e})"
    message = f"ImageNet weights for timm model {model_name!r} are not available: {reason}.\n{weights_help(model_name)}"
    if pretrained is True:
        raise RuntimeError(message + "\n(ClassifyConfig.pretrained=true; set it to 'auto' or false to train "
                                     "from scratch instead)")
    if model_name not in _WARNED:
        _WARNED.add(model_name)
        warnings.warn(message + "\nTraining from scratch (pretrained=false is recorded in env.json and "
                      "metrics.json).", UserWarning, stacklevel=2)
    return timm.create_model(model_name, pretrained=False, num_classes=num_classes), scratch


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Loads ``checkpoints/best.pt`` written by ``train_classifier`` as an eval-mode model.

    Returns:
        ``(model, checkpoint)``; the checkpoint dict holds ``model_name``, ``num_classes``, ``classes``,
        ``image_size``, ``mean``, ``std``, ``config`` and the ``state_dict``.
    """
    import timm

    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    for key in ("model_name", "num_classes", "state_dict"):
        if key not in ckpt:
            raise ValueError(f"{path}: not a classifier checkpoint (no {key!r})")
    model = timm.create_model(ckpt["model_name"], pretrained=False, num_classes=ckpt["num_classes"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt


# ----------------------------------------------------------------------------------------------------------------
# Training and evaluation


def _resolve_flag(value: str | bool, device: torch.device, name: str) -> bool:
    if value == "auto":
        return device.type == "cuda"
    if value and device.type != "cuda":
        raise ValueError(f"ClassifyConfig.{name}=true needs a CUDA device (the CPU path runs in fp32)")
    return bool(value)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow it so augmentation is reproducible
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def classification_metrics(y_true, y_pred, classes: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall and confusion matrix (scikit-learn).

    Args:
        y_true, y_pred: integer labels ``[N]``.
        classes: class names in label order (every label in ``range(len(classes))``).

    Returns:
        ``{"accuracy", "balanced_accuracy", "recall": {class: r}, "confusion_matrix": [[...]] (rows = true,
        columns = predicted), "classes"}``. Balanced accuracy averages recall over the classes present in
        ``y_true``; the recall of a class absent from ``y_true`` is reported as None.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, recall_score

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    labels = list(range(len(classes)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*y_pred contains classes not in y_true.*")
        bal = float(balanced_accuracy_score(y_true, y_pred))
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    present = np.bincount(y_true, minlength=len(classes)) > 0
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": bal,
        "recall": {c: (float(r) if p else None) for c, r, p in zip(classes, recall, present)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": list(classes),
    }


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, amp: bool = False,
            channels_last: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels, predictions and mean cross-entropy of ``model`` over ``loader``.

    Returns:
        ``(y_true [N], y_pred [N], mean loss)``.
    """
    model.eval()
    ys, ps, loss_sum, n = [], [], 0.0, 0
    for x, y in loader:
        x, y = _to_device(x, y, device, channels_last)
        with torch.autocast(device_type=device.type, dtype=_amp_dtype(device), enabled=amp):
            logits = model(x)  # [B, K]
        loss_sum += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
        n += len(y)
        ys.append(y.cpu())
        ps.append(logits.argmax(1).cpu())
    return torch.cat(ys).numpy(), torch.cat(ps).numpy(), loss_sum / max(n, 1)


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on the device: images ``[B, 3, S, S]`` (channels-last when asked), labels ``[B]``."""
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def _amp_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norm weights and biases (1-D tensors), the usual practice for conv nets."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: ClassifyConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (with momentum) as configured."""
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def cosine_lr_factor(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """LR multiplier at optimiser step ``step``: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _loaders(cfg: ClassifyConfig, train_ds, val_ds, device: torch.device):
    if cfg.num_workers == "auto":
        workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
    else:
        workers = int(cfg.num_workers)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.balanced_sampling:
        from histlib.data.sampling import ClassBalancedSampler

        sampler = ClassBalancedSampler(train_ds.labels, num_samples=len(train_ds), seed=cfg.seed)
    else:
        sampler = torch.utils.data.RandomSampler(train_ds, generator=gen)
    common = {"num_workers": workers, "pin_memory": device.type == "cuda", "worker_init_fn": _seed_worker,
              "persistent_workers": workers > 0}
    # drop the ragged last batch (BatchNorm fails on a batch of one) unless that would leave no batch at all
    train = torch.utils.data.DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, generator=gen,
                                        drop_last=len(train_ds) > cfg.batch_size, **common)
    val = torch.utils.data.DataLoader(val_ds, batch_size=2 * cfg.batch_size, shuffle=False, **common)
    return train, val, sampler, workers


def train_classifier(cfg: ClassifyConfig, run_dir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Trains one classifier and evaluates its best epoch on the validation split.

    Writes ``config.json``, ``env.json``, ``stats.jsonl`` (one line per epoch), ``checkpoints/best.pt``
    (``{model_name, num_classes, classes, image_size, mean, std, state_dict, config, pretrained, epoch, ...}``,
    written whenever validation balanced accuracy improves) and ``metrics.json`` (last, so its presence marks a
    finished run).

    Args:
        cfg: the run's settings.
        run_dir: the run directory (created; a previous ``stats.jsonl`` there is replaced).
        progress: show tqdm progress bars.

    Returns:
        The metrics as written to ``metrics.json`` (flat keys: ``accuracy``, ``balanced_accuracy``,
        ``recall/<class>``, ``confusion_matrix``, ``pretrained``, counts, timings).
    """
    t_begin = time.perf_counter()
    device = resolve_device(cfg.device, "ClassifyConfig.device")
    amp = _resolve_flag(cfg.amp, device, "amp")
    channels_last = _resolve_flag(cfg.channels_last, device, "channels_last")
    _seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    train_ds, report = build_train_set(cfg)
    classes = report["classes"]
    label = train_set_label(cfg.train_set, cfg.real_fraction)
    val_ds = build_val_set(cfg, classes)
    model, winfo = create_classifier(cfg.model, len(classes), cfg.pretrained, cfg.weights_file)
    run = Run(run_dir)  # made once the data and the model are known to be usable: bad input leaves no folder
    for stale in (run.metrics_path, run.stats_path):
        stale.unlink(missing_ok=True)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run.write_config(cfg)
    run.write_env(device=str(device), pretrained=winfo["pretrained"], weights_source=winfo["weights_source"],
                  weights_file=winfo["weights_file"], amp=amp, amp_dtype=str(_amp_dtype(device)) if amp else None,
                  channels_last=channels_last)

    train_loader, val_loader, sampler, workers = _loaders(cfg, train_ds, val_ds, device)
    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr_factor(s, total_steps, warmup_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=amp and _amp_dtype(device) == torch.float16)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    ckpt_path = run.checkpoints / "best.pt"

    best, best_epoch, stale_epochs, step, epochs_run, stopped_early = -1.0, 0, 0, 0, 0, False
    t_start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        if step >= total_steps:
            break
        epochs_run = epoch
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = iterate(train_loader, desc=f"{cfg.model} epoch {epoch}/{cfg.epochs}", leave=False, disable=not progress)
        for x, y in bar:
            x, y = _to_device(x, y, device, channels_last)
            with torch.autocast(device_type=device.type, dtype=_amp_dtype(device), enabled=amp):
                logits = model(x)  # [B, K]
                loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
            if step >= total_steps:
                break
        train_time = time.perf_counter() - t0
        y_true, y_pred, val_loss = predict(model, val_loader, device, amp, channels_last)
        m = classification_metrics(y_true, y_pred, classes)
        improved = m["balanced_accuracy"] > best
        if improved:
            best, best_epoch, stale_epochs = m["balanced_accuracy"], epoch, 0
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            atomic_torch_save({
                "model_name": cfg.model, "num_classes": len(classes), "classes": classes,
                "image_size": cfg.image_size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "state_dict": state,
                "config": dataclasses.asdict(cfg), "pretrained": winfo["pretrained"], "epoch": epoch, "step": step,
                "val_balanced_accuracy": m["balanced_accuracy"], "val_accuracy": m["accuracy"],
            }, ckpt_path)
        else:
            stale_epochs += 1
        run.log_stats({
            "epoch": epoch, "step": step, "nimg": step * cfg.batch_size, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
            "val_loss": val_loss, "val_accuracy": m["accuracy"], "val_balanced_accuracy": m["balanced_accuracy"],
            "best": improved, "epoch_time_s": train_time, "train_img_per_s": seen / max(train_time, 1e-9),
        })
        if progress and progress_mode() == "plain":  # one line per epoch in exported reports
            print(f"{cfg.model} {label}{f' ({cfg.variant})' if cfg.variant else ''} seed {cfg.seed}: epoch "
                  f"{epoch}/{cfg.epochs}, train loss {loss_sum / max(seen, 1):.3f}, val balanced accuracy "
                  f"{100 * m['balanced_accuracy']:.1f} %{' (best)' if improved else ''}", flush=True)
        if cfg.early_stopping_patience and stale_epochs >= cfg.early_stopping_patience:
            stopped_early = True
            break
    train_time_s = time.perf_counter() - t_start

    # Final numbers come from the saved checkpoint, so metrics.json always describes best.pt.
    best_model, _ = load_classifier(ckpt_path, device)
    if channels_last:
        best_model = best_model.to(memory_format=torch.channels_last)
    y_true, y_pred, val_loss = predict(best_model, val_loader, device, amp, channels_last)
    m = classification_metrics(y_true, y_pred, classes)
    held_out = evaluate_held_out(cfg, best_model, classes, device, amp, channels_last)
    metrics = {
        "model": cfg.model, "train_set": label, "seed": cfg.seed, "variant": cfg.variant,
        "pretrained": winfo["pretrained"], "weights_source": winfo["weights_source"],
        "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "val_loss": val_loss,
        "recall": m["recall"], "confusion_matrix": m["confusion_matrix"], "classes": classes,
        "n_val": int(len(y_true)), "val_per_class": val_ds.class_counts(),
        "val_y_true": y_true.tolist(), "val_y_pred": y_pred.tolist(), **group_ids("val_", val_ds), **held_out,
        **{k: v for k, v in report.items() if k != "classes"},
        "best_epoch": best_epoch, "epochs_run": epochs_run, "steps": step, "stopped_early": stopped_early,
        "train_time_s": train_time_s, "total_time_s": time.perf_counter() - t_begin,
        "device": str(device), "amp": amp, "channels_last": channels_last,
        "num_workers": workers, "image_size": cfg.image_size, "config_hash": config_hash(cfg),
    }
    run.write_metrics(metrics)
    return run.read_metrics()


def _held_out_loader(root: Path, split: str | None, classes: list[str], cfg: ClassifyConfig, device: torch.device):
    from histlib.data.dataset import ImageDataset

    ds = ImageDataset(root, split=split, transform=eval_transform(cfg.image_size), classes=classes,
                      subset_of_classes=True)
    return torch.utils.data.DataLoader(ds, batch_size=2 * cfg.batch_size, shuffle=False,
                                       pin_memory=device.type == "cuda")


def group_ids(prefix: str, dataset) -> dict[str, Any]:
    """``{prefix}groups``: each evaluated image's group (the manifest's ``group`` column: source image, slide,
    cluster …) as an integer code in order of first appearance, beside the predictions in the same order, and
    ``{prefix}n_groups``; the analysis resamples these groups, not single patches, for its intervals."""
    codes, uniques = pd.factorize(dataset.manifest["group"].astype(str), sort=False)
    return {f"{prefix}groups": codes.tolist(), f"{prefix}n_groups": int(len(uniques))}


def _prefixed(prefix: str, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], dataset) -> dict[str, Any]:
    m = classification_metrics(y_true, y_pred, classes)
    return {f"{prefix}accuracy": m["accuracy"], f"{prefix}balanced_accuracy": m["balanced_accuracy"],
            f"{prefix}recall": m["recall"], f"{prefix}confusion_matrix": m["confusion_matrix"],
            f"{prefix}n": int(len(y_true)), f"{prefix}y_true": y_true.tolist(), f"{prefix}y_pred": y_pred.tolist(),
            **group_ids(prefix, dataset)}


def evaluate_held_out(cfg: ClassifyConfig, model: nn.Module, classes: list[str], device: torch.device,
                      amp: bool = False, channels_last: bool = False) -> dict[str, Any]:
    """The chosen checkpoint on data nothing was tuned on: the real set's ``test_split`` (keys ``test_*``) when its
    manifest has one, and every ``extra_test_sets`` entry (keys ``extra/<name>/*``; balanced accuracy over the
    classes the set holds)."""
    from histlib.data.dataset import load_manifest

    out: dict[str, Any] = {}
    if cfg.test_split and cfg.test_split in set(load_manifest(Path(cfg.real_dir))["split"]):
        loader = _held_out_loader(Path(cfg.real_dir), cfg.test_split, classes, cfg, device)
        y_true, y_pred, _ = predict(model, loader, device, amp, channels_last)
        out.update(_prefixed("test_", y_true, y_pred, classes, loader.dataset))
        out["test_split"] = cfg.test_split
    for name, folder in cfg.extra_test_sets.items():
        from histlib.runs import project_path

        root = project_path(folder)
        try:
            loader = _held_out_loader(root, None, classes, cfg, device)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"ClassifyConfig.extra_test_sets[{name!r}]: {e}") from None
        y_true, y_pred, _ = predict(model, loader, device, amp, channels_last)
        out.update(_prefixed(f"extra/{name}/", y_true, y_pred, classes, loader.dataset))
    return out


def run_classifiers(train_sets: list[str], models: list[str], seeds: list[int] | int, base_cfg: ClassifyConfig,
                    out_root: str | os.PathLike, progress: bool = True,
                    real_fractions: list[float] | tuple[float, ...] = (1.0,)) -> pd.DataFrame:
    """Trains every (train set, model) once per seed, each in ``<out_root>/<run_name(...)>/`` (the variant of
    ``base_cfg.variant`` is part of the name of synthetic runs).

    A run whose ``config.json`` hash matches its config and that has a ``metrics.json`` is skipped (its metrics
    are read back), so an interrupted study resumes where it stopped.

    Args:
        train_sets: e.g. ``['real', 'real+synthetic']``.
        models: timm names.
        seeds: seed list, or a count ``n`` meaning ``range(n)``.
        base_cfg: every other setting.
        out_root: parent folder of the run directories.
        progress: show progress bars.
        real_fractions: for ``train_set='real'``, the fractions of the real train split to train on (the
            real-data learning curve, nested by group; 1.0 is the full ``real`` run, which always runs).

    Returns:
        One row per run: ``train_set`` (``real@<f>`` for a fraction), ``model, seed, pretrained, accuracy,
        balanced_accuracy, n_train, best_epoch, train_time_s, skipped, run_dir``.
    """
    from histlib.progress import readable_warnings

    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    fractions = sorted({1.0, *(check_fraction(f, "real_fractions") for f in real_fractions)})
    with readable_warnings():
        return pd.DataFrame(_run_all(train_sets, models, seeds, base_cfg, out_root, progress, fractions))


def _run_all(train_sets: list[str], models: list[str], seeds: list[int], base_cfg: ClassifyConfig,
             out_root: str | os.PathLike, progress: bool, fractions: list[float]) -> list[dict[str, Any]]:
    rows = []
    for ts, frac in [(s, f) for s in train_sets for f in (fractions if s == "real" else [1.0])]:
        for model in models:
            for seed in seeds:
                cfg = dataclasses.replace(base_cfg, train_set=ts, model=model, seed=int(seed), real_fraction=frac)
                path = Path(out_root) / run_name(ts, model, int(seed), base_cfg.variant, frac)
                run = Run(path)
                skipped = run.is_finished(cfg)
                metrics = run.read_metrics() if skipped else train_classifier(cfg, path, progress=progress)
                rows.append({
                    "train_set": train_set_label(ts, frac),
                    "variant": base_cfg.variant if needs_synthetic(ts) else None, "model": model,
                    "seed": int(seed), "pretrained": metrics.get("pretrained"),
                    "accuracy": metrics["accuracy"], "balanced_accuracy": metrics["balanced_accuracy"],
                    "test_accuracy": metrics.get("test_accuracy"),
                    "test_balanced_accuracy": metrics.get("test_balanced_accuracy"),
                    "n_train": metrics.get("n_train"), "best_epoch": metrics.get("best_epoch"),
                    "train_time_s": metrics.get("train_time_s"), "skipped": skipped, "run_dir": str(path),
                })
    return rows


def summarize_runs(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of (val, and test when measured) accuracy and balanced accuracy per
    (train set, variant, model); the standard deviation is left empty for fewer than two seeds."""
    results = results.copy()
    if "variant" not in results:
        results["variant"] = None
    results["variant"] = results["variant"].fillna("")
    cols = [c for c in ("accuracy", "balanced_accuracy", "test_accuracy", "test_balanced_accuracy")
            if c in results and results[c].notna().any()]
    g = results.groupby(["train_set", "variant", "model"], sort=False)
    out = g[cols].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out["n_seeds"] = g.size()
    out["pretrained"] = g["pretrained"].agg(lambda s: bool(s.all()))
    return out.reset_index()


# ----------------------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="ClassifyConfig as JSON (a config.json of a run works)")
    parser.add_argument("--run-dir", required=True, help="run directory to write")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field; VALUE is parsed as JSON when it can be (repeatable)")
    parser.add_argument("--force", action="store_true", help="train even when a finished run with this config exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(args: argparse.Namespace) -> int:
    cfg = from_dict(ClassifyConfig, read_json(args.config), **_parse_overrides(args.set))
    done = Path(args.run_dir).is_dir() and Run(args.run_dir).is_finished(cfg)  # Run() makes the folder
    if done and not args.force:
        metrics = Run(args.run_dir).read_metrics()
        print(f"{args.run_dir}: finished run with the same config, skipped (use --force to retrain)")
    else:
        metrics = train_classifier(cfg, args.run_dir, progress=not args.no_progress)
    print(f"accuracy {metrics['accuracy']:.4f}  balanced accuracy {metrics['balanced_accuracy']:.4f}  "
          f"pretrained {str(metrics['pretrained']).lower()}  ({args.run_dir}/metrics.json)")
    return 0
