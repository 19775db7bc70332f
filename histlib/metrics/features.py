"""Feature extractors for the GAN metrics, and their weights.

Every extractor follows the ``FeatureExtractor`` protocol: ``name``, ``dim``, ``cache_key`` and
``__call__(images) -> features`` with ``images`` a ``torch.uint8`` tensor ``[N, 3, H, W]`` (any H, W) and the
result a float32 CPU tensor ``[N, dim]``.

- ``inception``: Inception-v3 with the TensorFlow FID weights ``pt_inception-2015-12-05`` (the network of the
  original FID code), 2048-d average-pool features. Preprocessing as ``torch-fidelity`` and the TensorFlow
  original: bilinear resize to 299×299 with TensorFlow 1.x semantics (``align_corners=False``, no half-pixel
  offset, no antialiasing), then ``(x − 128) / 128``. ``clean-fid`` resizes differently (PIL bicubic), so its
  numbers differ slightly; ``pytorch-fid`` uses PyTorch's bilinear resize, which differs too.
- ``vgg16``: torchvision's ImageNet VGG16 (``vgg16-397923af.pth``), ``fc2`` features after ReLU (4096-d), the
  features of improved precision/recall, preprocessed as ``torch-fidelity``'s VGG16 extractor (TF1 bilinear resize
  to 224, ImageNet mean/std). Kynkäänniemi et al. used a VGG16 converted from Caffe, so absolute values differ a
  little from their paper.
- ``domain:CKPT``: **domain features** — the penultimate (pre-logits) features of a classifier trained by
  ``histlib.classify`` on histology. ImageNet features are a weak proxy for H&E tissue; these are a
  tissue-aware alternative, but they depend on the checkpoint, so numbers are comparable only with the same one.
- ``random-test``: a tiny randomly initialised CNN with a fixed seed. **For tests only**: its numbers mean
  nothing about image quality.

Weights are looked up, in order, at an explicit path, in ``$HISTLIB_WEIGHTS``, in ``~/.cache/histlib/weights``
and in torch's hub cache; when absent they are downloaded to ``~/.cache/histlib/weights`` (unless
``HISTLIB_OFFLINE=1``) and always checked against their sha256. Without network and without the file, one error
says which file to place where.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------------------------
# Protocol


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the metrics need from a feature extractor."""

    name: str  # short identifier, e.g. "inception-v3-fid"
    dim: int  # feature dimension D
    cache_key: str  # identifies the extractor and its exact weights (for feature caches)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 [N, 3, H, W]`` → ``float32 [N, D]`` on CPU."""
        ...


# ----------------------------------------------------------------------------------------------------------------
# Weights


@dataclass(frozen=True)
class WeightsSpec:
    """A weights file: its name, checksum and where it can be downloaded from."""

    filename: str
    sha256: str
    urls: tuple[str, ...]
    description: str
    alt_filenames: tuple[str, ...] = ()


INCEPTION_FID_WEIGHTS = WeightsSpec(
    filename="pt_inception-2015-12-05-6726825d.pth",
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    urls=(
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    ),
    description="Inception-v3 FID weights (TensorFlow inception-2015-12-05, converted to PyTorch)",
    alt_filenames=("weights-inception-2015-12-05-6726825d.pth",),
)

VGG16_WEIGHTS = WeightsSpec(
    filename="vgg16-397923af.pth",
    sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
    urls=("https://download.pytorch.org/models/vgg16-397923af.pth",),
    description="torchvision VGG16 ImageNet weights (IMAGENET1K_V1)",
)


class WeightsNotFoundError(FileNotFoundError):
    """The weights file is missing (or corrupt) and could not be downloaded."""


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, so a file is hashed once


def weights_dir() -> Path:
    """``~/.cache/histlib/weights`` (where downloads go)."""
    return Path(os.path.expanduser("~")) / ".cache" / "histlib" / "weights"


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        _VERIFIED[key] = h.hexdigest()
    return _VERIFIED[key]


def _candidates(spec: WeightsSpec) -> list[Path]:
    names = (spec.filename, *spec.alt_filenames)
    folders = []
    if os.environ.get("HISTLIB_WEIGHTS"):
        folders.append(Path(os.environ["HISTLIB_WEIGHTS"]).expanduser())
    folders.append(weights_dir())
    try:
        folders.append(Path(torch.hub.get_dir()) / "checkpoints")
    except Exception:  # noqa: BLE001 - the hub folder is only a convenience
        pass
    return [folder / name for folder in folders for name in names]


def _download(spec: WeightsSpec, dest: Path) -> list[str]:
    """Tries each URL; returns the list of failures (empty when ``dest`` now holds verified weights)."""
    from histlib.progress import progress as progress_bar

    errors = []
    dest.parent.mkdir(parents=True, exist_ok=True)
    for url in spec.urls:
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            h = hashlib.sha256()
            with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
                total = int(r.headers.get("Content-Length") or 0) or None
                with progress_bar(total=total, unit="B", unit_scale=True, desc=f"download {spec.filename}") as bar:
                    while block := r.read(1 << 20):
                        f.write(block)
                        h.update(block)
                        bar.update(len(block))
            if h.hexdigest() != spec.sha256:
                errors.append(f"{url}: checksum {h.hexdigest()} does not match")
                tmp.unlink(missing_ok=True)
                continue
            os.replace(tmp, dest)
            return []
        except OSError as e:  # URLError, timeouts, disk errors
            errors.append(f"{url}: {e}")
            tmp.unlink(missing_ok=True)
    return errors


def find_weights(spec: WeightsSpec, path: str | os.PathLike | None = None, download: bool | None = None) -> Path:
    """Returns a local, checksum-verified copy of ``spec``'s weights.

    Args:
        spec: which weights (``INCEPTION_FID_WEIGHTS``, ``VGG16_WEIGHTS``).
        path: an explicit file to use (must match the checksum).
        download: allow downloading when no local copy exists (default: yes unless ``HISTLIB_OFFLINE=1``).

    Raises:
        WeightsNotFoundError: no verified local copy and the download was not possible; the message names the
            file, its sha256 and where to put it.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"{p}: weights file not found ({spec.description})")
        got = _sha256(p)
        if got != spec.sha256:
            raise WeightsNotFoundError(f"{p}: sha256 {got} does not match the expected {spec.sha256} "
                                       f"for {spec.filename} ({spec.description})")
        return p
    mismatched = []
    for p in _candidates(spec):
        if p.is_file():
            if _sha256(p) == spec.sha256:
                return p
            mismatched.append(str(p))
    offline_env = os.environ.get("HISTLIB_OFFLINE", "0") in ("1", "true", "yes")
    if download is None:
        download = not offline_env
    reason = "downloads disabled (HISTLIB_OFFLINE=1)" if offline_env else "downloads disabled by the caller"
    errors = _download(spec, weights_dir() / spec.filename) if download else [reason]
    if not errors:
        return weights_dir() / spec.filename
    where = os.environ.get("HISTLIB_WEIGHTS") or str(weights_dir())
    raise WeightsNotFoundError(
        f"{spec.description}: file {spec.filename!r} (sha256 {spec.sha256}) not found. Place it in {where}/ "
        f"(or set HISTLIB_WEIGHTS to the folder holding it)."
        + (f" It can be downloaded from {spec.urls[0]}." if spec.urls else "")
        + (f" Files with a wrong checksum were ignored: {mismatched}." if mismatched else "")
        + f" Download attempts: {'; '.join(errors)}"
    )


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state_dict, got {type(sd).__name__}")
    return sd


# ----------------------------------------------------------------------------------------------------------------
# Resizing


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with TensorFlow 1.x ``resize_bilinear(align_corners=False)`` semantics.

    The source coordinate of output pixel ``o`` is ``o · in/out`` (no half-pixel offset), the neighbours are
    ``floor`` and ``floor + 1`` clamped to the border, and no antialiasing is applied — the resize of the original
    TensorFlow FID code and of ``torch-fidelity``.

    Args:
        x: float tensor ``[N, C, H, W]``.
        size: ``(out_h, out_w)``.
    """
    if not x.is_floating_point() or x.ndim != 4:
        raise ValueError(f"resize_bilinear_tf1: expected a float tensor [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
    out_h, out_w = size

    def axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(n_in / n_out, dtype=torch.float32)
        src = torch.arange(n_out, dtype=x.dtype, device=x.device) * scale.to(x.device)
        lo = src.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, src - lo.to(x.dtype)

    ylo, yhi, dy = axis(x.shape[2], out_h)
    xlo, xhi, dx = axis(x.shape[3], out_w)
    top = x.index_select(2, ylo)
    bottom = x.index_select(2, yhi)
    tl, tr = top.index_select(3, xlo), top.index_select(3, xhi)
    bl, br = bottom.index_select(3, xlo), bottom.index_select(3, xhi)
    dx = dx.view(1, 1, 1, out_w)
    t = tl + (tr - tl) * dx
    b = bl + (br - bl) * dx
    return t + (b - t) * dy.view(1, 1, out_h, 1)


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        desc = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"feature extractor: expected uint8 images [N, 3, H, W], got {desc}")


# ----------------------------------------------------------------------------------------------------------------
# Inception-v3 (FID variant)


class _Conv(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3) + ReLU: the unit of Inception-v3 (parameter names as torchvision)."""

    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):
    # TensorFlow's average pooling ignores the zero padding.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _MixedA(nn.Module):
    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, kernel_size=1)
        self.branch5x5_1 = _Conv(cin, 48, kernel_size=1)
        self.branch5x5_2 = _Conv(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = _Conv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, kernel_size=3, padding=1)
        self.branch_pool = _Conv(cin, pool, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b1, b5, b3, self.branch_pool(_avg3(x))], 1)


class _MixedB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = _Conv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, kernel_size=1)
        self.branch7x7_1 = _Conv(cin, c7, kernel_size=1)
        self.branch7x7_2 = _Conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = _Conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([b1, b7, bd, self.branch_pool(_avg3(x))], 1)


class _MixedD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, kernel_size=1)
        self.branch3x3_2 = _Conv(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = _Conv(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class _MixedE(nn.Module):
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # the last block of the TensorFlow graph pools with max, not average
        self.branch1x1 = _Conv(cin, 320, kernel_size=1)
        self.branch3x3_1 = _Conv(cin, 384, kernel_size=1)
        self.branch3x3_2a = _Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = _Conv(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class InceptionV3FIDNet(nn.Module):
    """Inception-v3 as in the TensorFlow FID graph; parameter names match ``pt_inception-2015-12-05``."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, kernel_size=3)
        self.Mixed_5b = _MixedA(192, 32)
        self.Mixed_5c = _MixedA(256, 64)
        self.Mixed_5d = _MixedA(288, 64)
        self.Mixed_6a = _MixedB(288)
        self.Mixed_6b = _MixedC(768, 128)
        self.Mixed_6c = _MixedC(768, 160)
        self.Mixed_6d = _MixedC(768, 160)
        self.Mixed_6e = _MixedC(768, 192)
        self.Mixed_7a = _MixedD(768)
        self.Mixed_7b = _MixedE(1280, max_pool=False)
        self.Mixed_7c = _MixedE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # unused for FID; kept so the original weight file loads strictly

    def forward(self, x):
        """Normalised images ``[N, 3, 299, 299]`` → pool features ``[N, 2048]``."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))  # [N, 2048]


def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], path: Path) -> None:
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # Files saved by old PyTorch versions lack BatchNorm's num_batches_tracked, which inference never reads.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the network: missing {missing[:5]}, unexpected {unexpected[:5]}")


class _TorchExtractor:
    """Shared batching/device logic: subclasses define ``net`` and ``preprocess``."""

    name = "abstract"
    dim = 0
    cache_key = "abstract"

    def __init__(self, device: str | torch.device | None = None, batch_size: int = 64):
        from .distances import resolve_device

        self.device = resolve_device(device)
        self.batch_size = int(batch_size)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:  # float [N, 3, H, W] in [0, 255] → network input
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        outs = []
        for s in range(0, images.shape[0], self.batch_size):
            x = images[s:s + self.batch_size].to(self.device).to(torch.float32)
            outs.append(self.forward(self.preprocess(x)).to(torch.float32).cpu())
        if not outs:
            return torch.empty(0, self.dim)
        return torch.cat(outs)  # [N, D]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, device={self.device})"


class InceptionFeatures(_TorchExtractor):
    """Inception-v3 FID features (2048-d), TF1 bilinear resize to 299, ``(x − 128)/128``."""

    name = "inception-v3-fid"
    dim = 2048
    input_size = 299

    def __init__(self, weights: str | os.PathLike | None = None, device=None, batch_size: int = 64,
                 download: bool | None = None):
        super().__init__(device, batch_size)
        path = find_weights(INCEPTION_FID_WEIGHTS, weights, download)
        self.net = InceptionV3FIDNet()
        _load_strict(self.net, _load_state_dict(path), path)
        self.net.eval().requires_grad_(False).to(self.device)
        self.cache_key = f"{self.name}-{INCEPTION_FID_WEIGHTS.sha256[:16]}"

    def preprocess(self, x):
        x = resize_bilinear_tf1(x, (self.input_size, self.input_size))
        return (x - 128.0) / 128.0


class VGG16Features(_TorchExtractor):
    """torchvision VGG16 ``fc2`` features after ReLU (4096-d), TF1 bilinear resize to 224, ImageNet mean/std."""

    name = "vgg16-fc2"
    dim = 4096
    input_size = 224
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(self, weights: str | os.PathLike | None = None, device=None, batch_size: int = 32,
                 download: bool | None = None):
        import torchvision

        super().__init__(device, batch_size)
        path = find_weights(VGG16_WEIGHTS, weights, download)
        model = torchvision.models.vgg16(weights=None)
        _load_strict(model, _load_state_dict(path), path)
        # classifier = [fc1, relu, dropout, fc2, relu, dropout, fc3]: keep up to fc2's ReLU.
        model.classifier = model.classifier[:5]
        self.net = model.eval().requires_grad_(False).to(self.device)
        self.cache_key = f"{self.name}-{VGG16_WEIGHTS.sha256[:16]}"
        self._mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1) * 255.0

    def preprocess(self, x):
        x = resize_bilinear_tf1(x, (self.input_size, self.input_size))
        return (x - self._mean) / self._std


class _TinyNet(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, dim, 3, stride=2, padding=1), nn.ReLU(),
        )

    def forward(self, x):
        return self.body(x).mean((2, 3))


class RandomTestFeatures(_TorchExtractor):
    """FOR TESTS ONLY: a tiny CNN with fixed random weights (seeded), same interface as the real extractors.

    Its features respond to colour and texture, which is enough to exercise the metric pipeline end to end, but
    its numbers say nothing about image quality.
    """

    name = "random-test"
    input_size = 32

    def __init__(self, dim: int = 64, seed: int = 0, device=None, batch_size: int = 256):
        super().__init__(device, batch_size)
        self.dim = int(dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = _TinyNet(self.dim)
        self.net.eval().requires_grad_(False).to(self.device)
        self.cache_key = f"{self.name}-d{self.dim}-s{seed}"

    def preprocess(self, x):
        return resize_bilinear_tf1(x, (self.input_size, self.input_size)) / 127.5 - 1.0


class DomainFeatures(_TorchExtractor):
    """DOMAIN FEATURES: pre-logits features of a histology classifier trained by ``histlib.classify``.

    The checkpoint is a dict with ``model_name``, ``num_classes``, ``state_dict`` and ``image_size`` (optionally
    ``mean``/``std``; ImageNet statistics otherwise). Images are resized to ``image_size`` (bilinear,
    antialiased) and normalised as during training; features are ``forward_head(forward_features(x),
    pre_logits=True)``.
    """

    def __init__(self, checkpoint: str | os.PathLike, device=None, batch_size: int = 64):
        import timm

        super().__init__(device, batch_size)
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: classifier checkpoint not found (domain feature extractor)")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, foreign or pickled-code files: one line naming the file
            raise ValueError(f"{path}: cannot read as a classifier checkpoint ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
        need = ("model_name", "num_classes", "state_dict", "image_size")
        if not isinstance(ckpt, dict) or any(k not in ckpt for k in need):
            have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
            raise ValueError(f"{path}: expected a classifier checkpoint with keys {list(need)}, got {have}")
        try:
            model = timm.create_model(ckpt["model_name"], pretrained=False, num_classes=int(ckpt["num_classes"]))
            model.load_state_dict(ckpt["state_dict"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: the classifier checkpoint does not load into {ckpt['model_name']!r} "
                             f"({str(e).splitlines()[0][:200]})") from None
        self.net = model.eval().requires_grad_(False).to(self.device)
        self.input_size = int(ckpt["image_size"])
        mean = ckpt.get("mean", (0.485, 0.456, 0.406))
        std = ckpt.get("std", (0.229, 0.224, 0.225))
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        with torch.no_grad():  # pre-logits width differs between timm families: measure it
            probe = torch.zeros(1, 3, self.input_size, self.input_size, device=self.device)
            self.dim = int(self.forward(probe).shape[1])
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        self.name = f"domain-{ckpt['model_name']}"
        self.cache_key = f"{self.name}-{digest}"

    def preprocess(self, x):
        x = F.interpolate(x / 255.0, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                          antialias=True)
        return (x - self._mean) / self._std

    def forward(self, x):
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


EXTRACTORS = ("inception", "vgg16", "domain:CKPT", "random-test")


def get_extractor(spec: str, device=None, weights: str | os.PathLike | None = None, **kwargs) -> FeatureExtractor:
    """Builds an extractor from its command-line name.

    Args:
        spec: ``'inception'``, ``'vgg16'``, ``'domain:PATH/TO/classifier.pt'`` or ``'random-test'`` (tests only).
        device: ``'cpu'``, ``'cuda'``, None/``'auto'``.
        weights: explicit weights file for ``inception``/``vgg16``.
    """
    if spec in ("inception", "inception-v3-fid"):
        return InceptionFeatures(weights, device=device, **kwargs)
    if spec in ("vgg16", "vgg16-fc2"):
        return VGG16Features(weights, device=device, **kwargs)
    if spec == "random-test":
        return RandomTestFeatures(device=device, **kwargs)
    if spec.startswith("domain:"):
        return DomainFeatures(spec[len("domain:"):], device=device, **kwargs)
    raise ValueError(f"extractor={spec!r}: expected one of {', '.join(EXTRACTORS)}")
