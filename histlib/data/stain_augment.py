"""Classic H&E stain augmentation for classifier training: HED-space jitter (Tellez et al. 2019).

Each pixel's optical density ``OD = -ln((I + 1) / 256)`` is unmixed into haematoxylin, eosin and DAB densities with
the colour-deconvolution vectors of Ruifrok & Johnston (2001); every stain density ``c`` becomes
``alpha * c + beta`` with ``alpha ~ U(1 - sigma, 1 + sigma)`` and ``beta ~ U(-sigma, sigma)`` drawn per image and
per stain, and the pixel is mixed back with the exact inverse (``I = 256 * exp(-OD) - 1``, rounded to 8 bits).
``sigma`` is the *strength*; Tellez et al. call 0.05 "HED-light" and 0.2 "HED-strong". The default,
:data:`DEFAULT_STAIN_STRENGTH` = 0.1, was chosen by looking at lung patches (``docs/benchmarks.md``, "Stain
augmentation"): at 0.05 the change is hardly visible beside the patches' own stain variation, at 0.1 it is clear
while every patch still looks like H&E, at 0.2 some patches turn grey or washed out.

Why not a library (measured in ``benchmarks/stain_augment.py``, numbers in ``docs/benchmarks.md``):
scikit-image's ``rgb2hed``/``hed2rgb`` clip negative stain densities, so their round trip alone moves pixels by 12
levels on average (of 255) at zero strength, and their density unit (natural log / ln(1e-6)) makes Tellez's
``sigma`` about 14 times stronger than in OD units; the Macenko-based augmentors (``torchstain``,
``albumentations.HEStain(method='macenko')``) estimate stains per image, fail on background-only patches and run
the data loader at a third to half of its speed at 224 px; ``albumentations`` 2.0.8 is the last release under its
MIT licence (development moved to AGPL AlbumentationsX) and its preset mode recolours every image even at zero
jitter; ``tiatoolbox`` pins versions of torch, numpy and scipy older than this project's. The fixed-matrix jitter
needs no estimation, works on every patch and is one 3×3 matrix product per pixel each way.

Random numbers come from torch's generator, so the classifier's seeding (``torch.manual_seed`` and the
data-loader workers' seeds) makes the jitter reproducible, like the other augmentations.
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_STAIN_STRENGTH", "RGB_FROM_HED", "HEDJitter", "hed_jitter"]

DEFAULT_STAIN_STRENGTH = 0.1

# Ruifrok & Johnston (2001): rows are the RGB optical densities of haematoxylin, eosin and DAB (unit vectors).
RGB_FROM_HED = torch.nn.functional.normalize(torch.tensor([[0.65, 0.70, 0.29],
                                                           [0.07, 0.99, 0.11],
                                                           [0.27, 0.57, 0.78]], dtype=torch.float64), dim=1)
_HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)


def _check_strength(strength: float, name: str = "strength") -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= float(strength) < 1:
        raise ValueError(f"{name}={strength!r}: expected a stain jitter strength in [0, 1) "
                         f"(Tellez et al.: 0.05 light, 0.2 strong; default {DEFAULT_STAIN_STRENGTH})")
    return float(strength)


def hed_jitter(img: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Scales and shifts the H, E and D densities of an RGB ``uint8 [3, H, W]`` image.

    Args:
        img: RGB ``uint8 [3, H, W]``.
        alpha: ``[3]`` factors of the H, E and D densities (1: unchanged).
        beta: ``[3]`` offsets of the H, E and D densities (0: unchanged).

    Returns:
        RGB ``uint8 [3, H, W]``; with ``alpha = 1`` and ``beta = 0`` the input itself, bit for bit.
    """
    od = -torch.log((img.reshape(3, -1).to(torch.float32) + 1.0) / 256.0)  # [3, H*W]
    # one [3, 3] matrix for the whole round trip: OD -> stains -> jitter -> OD (the offset is added separately)
    scale = RGB_FROM_HED.T @ torch.diag(alpha.to(torch.float64)) @ _HED_FROM_RGB.T  # [3, 3]
    shift = RGB_FROM_HED.T @ beta.to(torch.float64)  # [3]
    od = scale.to(torch.float32) @ od + shift.to(torch.float32)[:, None]
    out = torch.exp(-od).mul_(256.0).sub_(1.0).clamp_(0.0, 255.0).round_()
    return out.to(torch.uint8).reshape(img.shape)


class HEDJitter:
    """A torchvision-style transform: random HED-space jitter of a ``uint8 [3, H, W]`` tensor (or a PIL image).

    Args:
        strength: ``sigma`` of the module docstring, in [0, 1); 0 returns the image unchanged.
    """

    def __init__(self, strength: float = DEFAULT_STAIN_STRENGTH):
        self.strength = _check_strength(strength)

    def __repr__(self) -> str:
        return f"HEDJitter(strength={self.strength:g})"

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha [3], beta [3])`` for one image, from torch's generator."""
        u = torch.rand(2, 3, dtype=torch.float64) * 2.0 - 1.0  # [2, 3] in [-1, 1)
        return 1.0 + self.strength * u[0], self.strength * u[1]

    def __call__(self, img):
        import numpy as np
        from PIL import Image
        from torchvision import tv_tensors

        alpha, beta = self.draw()
        if isinstance(img, Image.Image):
            x = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
            return Image.fromarray(hed_jitter(x, alpha, beta).permute(1, 2, 0).numpy())
        if not isinstance(img, torch.Tensor) or img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
            raise TypeError(f"HEDJitter: expected a PIL image or a uint8 tensor [3, H, W], got "
                            f"{type(img).__name__} {getattr(img, 'dtype', '')} {tuple(getattr(img, 'shape', ()))}")
        out = hed_jitter(img.as_subclass(torch.Tensor), alpha, beta)
        return tv_tensors.wrap(out, like=img) if isinstance(img, tv_tensors.TVTensor) else out
