"""timm classifiers and their ImageNet weights: found without waiting on a network that is not there.

Order: a local file (``ClassifyConfig.weights_file``), the Hugging Face or torch hub cache, a download when the hub
host answers. Otherwise ``pretrained='auto'`` warns once per model (saying where to put the file) and the model
starts from scratch; ``pretrained: true/false`` is recorded in ``env.json``, ``metrics.json`` and the checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

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


@contextlib.contextmanager
def _download_bars():
    """The Hugging Face hub's own download bar only where histlib draws bars (``histlib.progress.mode()``): in a
    study step (plain lines) its widget would stay stuck in the exported report."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    from histlib.progress import mode

    quiet = mode() != "bar" and not are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        yield
    finally:
        if quiet:
            enable_progress_bars()


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
            with _download_bars():
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

