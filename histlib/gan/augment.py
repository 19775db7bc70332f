"""Adaptive discriminator augmentation (ADA): the differentiable 'bgc' pipeline and its probability controller.

Written from Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data" (NeurIPS), sections
2-3 and appendix B, which describe each transformation, the distribution of its parameter and the heuristic that
adapts the augmentation probability ``p``.

The pipeline applies up to twelve transformations in a fixed order. Each one is applied to each sample
independently with probability ``p * multiplier`` (the two arbitrary rotations with ``1 - sqrt(1 - p * multiplier)``
each, so that some rotation happens with probability ``p * multiplier``):

=============  ================================================================================================
pixel blitting (exact pixel permutations, no resampling)
-----------------------------------------------------------------------------------------------------------------
``xflip``      horizontal flip with probability 1/2
``rotate90``   rotation by ``k * 90`` degrees, ``k ~ U{0, 1, 2, 3}`` (square images)
``xint``       integer translation by ``round(t * size)`` pixels, ``t ~ U(-xint_max, xint_max)`` per axis
general geometric transformations (one resampling with a combined affine matrix per sample)
-----------------------------------------------------------------------------------------------------------------
``scale``      isotropic scaling by ``2 ** N(0, scale_std**2)``
``rotate``     rotation by ``U(-pi, pi) * rotate_max``, once before and once after the anisotropic scaling
``aniso``      anisotropic scaling: x by ``s``, y by ``1 / s``, ``s = 2 ** N(0, aniso_std**2)``
``xfrac``      fractional translation by ``N(0, xfrac_std**2) * size`` pixels per axis
colour transformations (one 4x4 colour matrix per sample, RGB in homogeneous coordinates)
-----------------------------------------------------------------------------------------------------------------
``brightness`` add ``N(0, brightness_std**2)`` to every channel
``contrast``   multiply the colour vector by ``2 ** N(0, contrast_std**2)``
``lumaflip``   with probability 1/2 negate the luma component (reflection ``I - 2 v v^T``, ``v = (1,1,1)/sqrt(3)``)
``hue``        rotate around the luma axis ``v`` by ``U(-pi, pi) * hue_max``
``saturation`` scale the component orthogonal to ``v`` by ``2 ** N(0, saturation_std**2)``
=============  ================================================================================================

Images are expected in ``[-1, 1]``, so the colour operations act around mid-grey (0), as in the paper's training
setup. Samples that draw no transformation of a group come out bit-identical (the group's result is selected per
sample with ``torch.where``), so ``p = 0`` is an exact identity.

Resampling (a choice of this implementation, documented because it differs from the paper's code): the combined
geometric transform is applied by sampling the input at the back-projected output pixel centres with a Keys bicubic
kernel (``a = -0.5``; ``interpolation='bilinear'`` is available). Out-of-image taps are mirrored about the edge pixels
(``reflect`` padding: ``... x2 x1 | x0 x1 x2 ... | ...``), computed on the integer tap indices, so there is no
padded copy of the image and no edge artefact. The sampler is written with ``gather`` and arithmetic only, so it is
differentiable to any order with respect to the images (R1 regularisation differentiates through it, which
``torch.nn.functional.grid_sample`` does not support for second-order gradients). No 2x supersampling or wavelet
low-pass filter is used: reductions (scale < 1) therefore alias slightly; with the default strengths the typical
scale change is below 15 % and this was judged acceptable. The augmentation stays non-leaking for ``p < 1`` in the
paper's sense because the identity keeps a non-zero probability.

Randomness comes from torch's global generator on the images' device, so the caller controls it (seeding, saving
and restoring RNG states for exact resume). The same number of random values is drawn whatever ``p`` is.

Neither ``AugmentPipe.forward`` nor ``AdaController.accumulate`` synchronises a CUDA device with the host (keep the
pipeline on the images' device: ``pipe.to(device)``); ``AdaController.update`` reads the statistics back once every
``interval`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

_BLIT = ("xflip", "rotate90", "xint")
_GEOM = ("scale", "rotate", "aniso", "xfrac")
_COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
_GROUPS = {"b": _BLIT, "g": _GEOM, "c": _COLOR}
_INTERPOLATIONS = ("bicubic", "bilinear")


# ----------------------------------------------------------------------------------------------------------------
# Resampling helpers


def _reflect_index(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Maps integer coordinates of any value into ``[0, size)`` by mirroring about the edge pixel centres.

    Equivalent to indexing an infinitely ``reflect``-padded image (``torch.nn.functional.pad(mode='reflect')``).
    """
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= size, period - idx, idx)


def _cubic_weights(t: torch.Tensor, a: float = -0.5) -> tuple[torch.Tensor, ...]:
    """Keys cubic convolution weights for the taps at offsets -1, 0, 1, 2 of a fractional position ``t in [0, 1)``."""

    def near(d: torch.Tensor) -> torch.Tensor:  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: torch.Tensor) -> torch.Tensor:  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)


def _warp(images: torch.Tensor, inv: torch.Tensor, interpolation: str) -> torch.Tensor:
    """Resamples ``images`` so that output pixel ``q`` takes the input value at ``inv @ q``.

    Args:
        images: ``[N, C, H, W]`` images.
        inv: ``[N, 3, 3]`` inverse transforms in pixel units about the image centre (x right, y down).
        interpolation: ``'bicubic'`` or ``'bilinear'``.

    Returns:
        ``[N, C, H, W]`` resampled images, with reflected borders.
    """
    n, c, h, w = images.shape
    dev, cdtype = images.device, inv.dtype
    xs = torch.arange(w, device=dev, dtype=cdtype) - (w - 1) / 2
    ys = torch.arange(h, device=dev, dtype=cdtype) - (h - 1) / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # [H, W]
    m = inv[:, :2, :, None, None]  # [N, 2, 3, 1, 1]
    sx = m[:, 0, 0] * gx + m[:, 0, 1] * gy + m[:, 0, 2] + (w - 1) / 2  # [N, H, W] source column
    sy = m[:, 1, 0] * gx + m[:, 1, 1] * gy + m[:, 1, 2] + (h - 1) / 2  # [N, H, W] source row
    x0, y0 = torch.floor(sx), torch.floor(sy)
    tx, ty = sx - x0, sy - y0
    x0, y0 = x0.long(), y0.long()
    if interpolation == "bicubic":
        offsets = (-1, 0, 1, 2)
        wx, wy = _cubic_weights(tx), _cubic_weights(ty)
    else:
        offsets = (0, 1)
        wx, wy = (1 - tx, tx), (1 - ty, ty)
    flat = images.reshape(n, c, h * w)  # [N, C, H*W]
    cols = [_reflect_index(x0 + o, w) for o in offsets]  # each [N, H, W]
    rows = [_reflect_index(y0 + o, h) * w for o in offsets]
    out = None
    for row, wyk in zip(rows, wy):
        acc = None
        for col, wxk in zip(cols, wx):
            idx = (row + col).reshape(n, 1, h * w).expand(n, c, h * w)
            term = flat.gather(2, idx) * wxk.reshape(n, 1, h * w).to(images.dtype)
            acc = term if acc is None else acc + term
        term = acc * wyk.reshape(n, 1, h * w).to(images.dtype)
        out = term if out is None else out + term
    return out.reshape(n, c, h, w)


def _eye(n: int, size: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(size, device=like.device, dtype=like.dtype).expand(n, size, size).clone()


def _scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    m = _eye(sx.shape[0], 3, sx)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _rotate2d(theta: torch.Tensor) -> torch.Tensor:
    m = _eye(theta.shape[0], 3, theta)
    cos, sin = torch.cos(theta), torch.sin(theta)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
    return m


def _translate2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = _eye(tx.shape[0], 3, tx)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


# ----------------------------------------------------------------------------------------------------------------
# The pipeline


class AugmentPipe(torch.nn.Module):
    """Differentiable ADA augmentation pipeline (Karras et al. 2020, appendix B).

    Each constructor multiplier scales the probability of its transformation (0 disables it); the ``*_std`` and
    ``*_max`` arguments set the strengths (see the module docstring for the distributions). The current
    augmentation probability is the buffer ``p`` (a float32 scalar saved in the ``state_dict``), usually driven by
    :class:`AdaController`.

    Args:
        xflip, rotate90, xint: probability multipliers of the pixel-blitting operations.
        scale, rotate, aniso, xfrac: probability multipliers of the general geometric operations.
        brightness, contrast, lumaflip, hue, saturation: probability multipliers of the colour operations.
        xint_max: largest integer translation as a fraction of the image size.
        scale_std: standard deviation of log2 of the isotropic scale.
        rotate_max: largest rotation as a fraction of pi.
        aniso_std: standard deviation of log2 of the anisotropic scale.
        xfrac_std: standard deviation of the fractional translation as a fraction of the image size.
        brightness_std: standard deviation of the brightness offset (image units, range ``[-1, 1]``).
        contrast_std: standard deviation of log2 of the contrast factor.
        hue_max: largest hue rotation as a fraction of pi.
        saturation_std: standard deviation of log2 of the saturation factor.
        interpolation: ``'bicubic'`` (default) or ``'bilinear'`` resampling for the geometric group.
    """

    def __init__(
        self,
        xflip: float = 1,
        rotate90: float = 1,
        xint: float = 1,
        scale: float = 1,
        rotate: float = 1,
        aniso: float = 1,
        xfrac: float = 1,
        brightness: float = 1,
        contrast: float = 1,
        lumaflip: float = 1,
        hue: float = 1,
        saturation: float = 1,
        xint_max: float = 0.125,
        scale_std: float = 0.2,
        rotate_max: float = 1,
        aniso_std: float = 0.2,
        xfrac_std: float = 0.125,
        brightness_std: float = 0.2,
        contrast_std: float = 0.5,
        hue_max: float = 1,
        saturation_std: float = 1,
        interpolation: str = "bicubic",
    ) -> None:
        super().__init__()
        params = dict(locals())
        for name in (*_BLIT, *_GEOM, *_COLOR):
            value = float(params[name])
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"AugmentPipe: multiplier {name}={params[name]!r} must be a finite number >= 0")
            setattr(self, name, value)
        for name in ("xint_max", "scale_std", "rotate_max", "aniso_std", "xfrac_std", "brightness_std",
                     "contrast_std", "hue_max", "saturation_std"):
            value = float(params[name])
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"AugmentPipe: strength {name}={params[name]!r} must be a finite number >= 0")
            setattr(self, name, value)
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"AugmentPipe: interpolation={interpolation!r}, expected one of {_INTERPOLATIONS}")
        self.interpolation = interpolation
        self.register_buffer("p", torch.zeros([], dtype=torch.float32))

    @classmethod
    def preset(cls, name: str = "bgc", **kwargs: Any) -> AugmentPipe:
        """Builds a pipeline from the paper's named groups.

        Args:
            name: letters from ``'b'`` (blit: xflip, rotate90, xint), ``'g'`` (geometric: scale, rotate, aniso,
                xfrac) and ``'c'`` (colour: brightness, contrast, lumaflip, hue, saturation), e.g. ``'bgc'``,
                ``'bg'``, ``'b'``, ``'c'``.
            **kwargs: strengths or ``interpolation`` passed to the constructor.

        Returns:
            An :class:`AugmentPipe` with the named groups enabled (multiplier 1) and the others disabled, ``p = 0``.
        """
        if not isinstance(name, str) or not name or any(ch not in _GROUPS for ch in name) or len(set(name)) != len(
            name
        ):
            raise ValueError(f"AugmentPipe.preset: name={name!r}, expected letters from 'b', 'g', 'c' such as 'bgc'")
        enabled = {op for ch in name for op in _GROUPS[ch]}
        mults = {op: (1.0 if op in enabled else 0.0) for op in (*_BLIT, *_GEOM, *_COLOR)}
        clash = set(kwargs) & set(mults)
        if clash:
            raise ValueError(f"AugmentPipe.preset: multipliers {sorted(clash)} are set by the preset name")
        return cls(**mults, **kwargs)

    def set_p(self, value: float) -> None:
        """Sets the augmentation probability (clamped to ``[0, 1]``) in place."""
        with torch.no_grad():
            self.p.fill_(min(max(float(value), 0.0), 1.0))

    def extra_repr(self) -> str:
        ops = [f"{op}={getattr(self, op):g}" for op in (*_BLIT, *_GEOM, *_COLOR) if getattr(self, op) > 0]
        return ", ".join(ops) + f", interpolation={self.interpolation}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augments a batch.

        Args:
            images: ``[N, C, H, W]`` floating-point images, nominally in ``[-1, 1]``; colour operations need
                ``C`` = 3 (RGB) or 1 (grey: brightness, contrast and luma flip only), ``rotate90`` needs H = W.

        Returns:
            ``[N, C, H, W]`` augmented images of the same dtype, differentiable (to any order) w.r.t. ``images``.
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
            raise ValueError(
                f"AugmentPipe: images must be a floating-point tensor [N, C, H, W], got "
                f"{getattr(images, 'dtype', type(images))} of shape {tuple(getattr(images, 'shape', ()))}"
            )
        n, c, h, w = images.shape
        if h < 2 or w < 2:
            raise ValueError(f"AugmentPipe: images must be at least 2x2 pixels, got {h}x{w}")
        dev = images.device
        cdtype = torch.float64 if images.dtype == torch.float64 else torch.float32
        p = self.p.detach().to(device=dev, dtype=cdtype)
        x = images

        def prob(mult: float) -> torch.Tensor:
            return torch.clamp(p * mult, max=1.0)

        def draw(mult: float) -> torch.Tensor:  # [N] bool: which samples get this operation
            return torch.rand(n, device=dev, dtype=cdtype) < prob(mult)

        x = self._blit(x, draw, dev, cdtype)
        if any(getattr(self, op) > 0 for op in _GEOM):
            x = self._geometric(x, draw, prob, p, dev, cdtype)

        # Colour transformations, composed into one (C+1)x(C+1) homogeneous matrix per sample, applied in the order
        # brightness, contrast, luma flip, hue, saturation.
        if any(getattr(self, op) > 0 for op in _COLOR):
            if c not in (1, 3):
                raise ValueError(f"AugmentPipe: colour operations need 1 or 3 channels, got C={c}")
            x = self._color(x, draw, n, c, dev, cdtype)
        return x

    def _blit(self, x: torch.Tensor, draw: Callable[[float], torch.Tensor], dev: torch.device,
              cdtype: torch.dtype) -> torch.Tensor:
        """Pixel blitting (x-flip, rotation by 90°, integer translation): exact permutations of pixels."""
        n, c, h, w = x.shape
        if self.xflip > 0:
            flip = draw(self.xflip) & (torch.randint(0, 2, (n,), device=dev) == 1)
            x = torch.where(flip.reshape(n, 1, 1, 1), x.flip(3), x)
        if self.rotate90 > 0:
            if h != w:
                raise ValueError(f"AugmentPipe: rotate90 needs square images, got {h}x{w}")
            k = (torch.randint(0, 4, (n,), device=dev) * draw(self.rotate90)).reshape(n, 1, 1, 1)
            x = torch.where(k == 1, torch.rot90(x, 1, (2, 3)), torch.where(k == 2, x.flip(2, 3), torch.where(
                k == 3, torch.rot90(x, 3, (2, 3)), x)))
        if self.xint > 0:
            mask = draw(self.xint)
            t = (torch.rand(n, 2, device=dev, dtype=cdtype) * 2 - 1) * self.xint_max  # [N, 2] fraction of size
            dx = torch.round(t[:, :1] * w).long() * mask[:, None]  # [N, 1] pixels
            dy = torch.round(t[:, 1:] * h).long() * mask[:, None]
            rows = _reflect_index(torch.arange(h, device=dev)[None, :] - dy, h)  # [N, H]
            cols = _reflect_index(torch.arange(w, device=dev)[None, :] - dx, w)  # [N, W]
            x = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))
            x = x.gather(3, cols[:, None, None, :].expand(n, c, h, w))
        return x

    def _geometric(self, x: torch.Tensor, draw: Callable[[float], torch.Tensor],
                   prob: Callable[[float], torch.Tensor], p: torch.Tensor, dev: torch.device,
                   cdtype: torch.dtype) -> torch.Tensor:
        """General geometric transformations, composed into one inverse matrix per sample and applied by one warp.

        The forward transform is M = T_frac @ R_post @ A @ R_pre @ S (S applied first); sampling needs
        M^-1 = S^-1 @ R_pre^-1 @ ... @ T^-1, built here in drawing order from the analytic inverse of each factor.
        """
        n, _, h, w = x.shape
        inv = _eye(n, 3, p.expand(n))
        geom = torch.zeros(n, dtype=torch.bool, device=dev)
        zero = torch.zeros(n, device=dev, dtype=cdtype)
        if self.scale > 0:
            mask = draw(self.scale)
            s = torch.where(mask, torch.exp2(torch.randn(n, device=dev, dtype=cdtype) * self.scale_std), 1 + zero)
            inv, geom = inv @ _scale2d(1 / s, 1 / s), geom | mask
        if self.rotate > 0:
            p_rot = 1 - torch.sqrt(1 - prob(self.rotate))
            for stage in ("pre", "post"):
                mask = torch.rand(n, device=dev, dtype=cdtype) < p_rot
                theta = (torch.rand(n, device=dev, dtype=cdtype) * 2 - 1) * math.pi * self.rotate_max
                inv, geom = inv @ _rotate2d(torch.where(mask, -theta, zero)), geom | mask
                if stage == "pre" and self.aniso > 0:  # the anisotropic scaling sits between the two rotations
                    inv, geom = self._aniso(inv, geom, draw, n, dev, cdtype, zero)
        elif self.aniso > 0:
            inv, geom = self._aniso(inv, geom, draw, n, dev, cdtype, zero)
        if self.xfrac > 0:
            mask = draw(self.xfrac)
            t = torch.randn(n, 2, device=dev, dtype=cdtype) * self.xfrac_std
            t = torch.where(mask[:, None], t, 0)  # [N, 2] fraction of size
            inv, geom = inv @ _translate2d(-t[:, 0] * w, -t[:, 1] * h), geom | mask
        return torch.where(geom.reshape(n, 1, 1, 1), _warp(x, inv, self.interpolation), x)

    def _aniso(
        self, inv: torch.Tensor, geom: torch.Tensor, draw: Callable[[float], torch.Tensor], n: int,
        dev: torch.device, cdtype: torch.dtype, zero: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Composes the anisotropic scaling into the inverse matrices ``inv`` ``[N, 3, 3]``; marks ``geom`` ``[N]``."""
        mask = draw(self.aniso)
        s = torch.where(mask, torch.exp2(torch.randn(n, device=dev, dtype=cdtype) * self.aniso_std), 1 + zero)
        return inv @ _scale2d(1 / s, s), geom | mask

    def _color(
        self, x: torch.Tensor, draw: Callable[[float], torch.Tensor], n: int, c: int, dev: torch.device,
        cdtype: torch.dtype,
    ) -> torch.Tensor:
        """Draws and applies the colour group to ``x`` ``[N, C, H, W]``."""
        eye = torch.eye(c + 1, device=dev, dtype=cdtype)
        v = torch.full((c,), 1 / math.sqrt(c), device=dev, dtype=cdtype)  # luma axis
        vvt = torch.outer(v, v)  # [C, C] projector onto the luma axis
        mat = eye.expand(n, c + 1, c + 1).clone()  # [N, C+1, C+1]
        color = torch.zeros(n, dtype=torch.bool, device=dev)

        def compose(mask: torch.Tensor, m: torch.Tensor) -> None:
            # Unapplied samples get an exact identity factor, so their matrix (and pixels) stay bit-identical.
            nonlocal mat, color
            mat = torch.where(mask[:, None, None], m, eye) @ mat
            color = color | mask

        def linear(block: torch.Tensor) -> torch.Tensor:  # [N, C, C] -> [N, C+1, C+1]
            m = eye.expand(n, c + 1, c + 1).clone()
            m[:, :c, :c] = block
            return m

        if self.brightness > 0:
            mask = draw(self.brightness)
            b = torch.randn(n, device=dev, dtype=cdtype) * self.brightness_std
            m = eye.expand(n, c + 1, c + 1).clone()
            m[:, :c, c] = b[:, None]
            compose(mask, m)
        if self.contrast > 0:
            mask = draw(self.contrast)
            s = torch.exp2(torch.randn(n, device=dev, dtype=cdtype) * self.contrast_std)
            compose(mask, linear(s[:, None, None] * torch.eye(c, device=dev, dtype=cdtype)))
        if self.lumaflip > 0:
            mask = draw(self.lumaflip) & (torch.randint(0, 2, (n,), device=dev) == 1)
            compose(mask, linear((torch.eye(c, device=dev, dtype=cdtype) - 2 * vvt).expand(n, c, c)))
        if self.hue > 0 and c == 3:
            mask = draw(self.hue)
            theta = (torch.rand(n, device=dev, dtype=cdtype) * 2 - 1) * math.pi * self.hue_max
            # Rodrigues: R = cos I + sin [v]_x + (1 - cos) v v^T, a rotation about the luma axis.
            # [v]_x for v = (1,1,1)/sqrt(3) is (A - A^T)/sqrt(3) with A the cyclic permutation; built on the
            # device from eye() because a tensor literal would be a blocking host-to-device copy.
            cyclic = torch.roll(torch.eye(3, device=dev, dtype=cdtype), 1, 0)
            cross = (cyclic - cyclic.T) / math.sqrt(3)
            cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
            compose(mask, linear(cos * torch.eye(3, device=dev, dtype=cdtype) + sin * cross + (1 - cos) * vvt))
        if self.saturation > 0 and c == 3:
            mask = draw(self.saturation)
            s = torch.exp2(torch.randn(n, device=dev, dtype=cdtype) * self.saturation_std)[:, None, None]
            compose(mask, linear(vvt + (torch.eye(3, device=dev, dtype=cdtype) - vvt) * s))
        mat = mat.to(x.dtype)
        out = torch.einsum("nij,njhw->nihw", mat[:, :c, :c], x) + mat[:, :c, c, None, None]  # [N, C, H, W]
        return torch.where(color.reshape(n, 1, 1, 1), out, x)


# ----------------------------------------------------------------------------------------------------------------
# The controller


class AdaController:
    """Adapts ``pipe.p`` from the sign of the discriminator's outputs on real images (Karras et al. 2020, eq. 3).

    ``r_t = E[sign(D(real))]`` is measured over ``interval`` discriminator steps; then
    ``p += sign(r_t - target) * batch_size * interval / (kimg * 1000)``, clamped to ``[0, 1]``, so ``p`` can go
    from 0 to 1 in ``kimg`` thousand real images. Call :meth:`accumulate` with D's real logits at every D step and
    :meth:`update` once per D step (every rank the same number of times under ``torch.distributed``).

    Args:
        pipe: the pipeline whose ``p`` buffer is adjusted.
        target: target value of ``r_t`` (0.6 in the paper).
        interval: number of D steps between adjustments.
        kimg: thousands of images for ``p`` to go from 0 to 1.
        batch_size: global batch size (all ranks together) of one D step.
    """

    def __init__(
        self, pipe: AugmentPipe, target: float = 0.6, interval: int = 4, kimg: float = 500,
        batch_size: int | None = None,
    ) -> None:
        if not isinstance(pipe, AugmentPipe):
            raise ValueError(f"AdaController: pipe must be an AugmentPipe, got {type(pipe).__name__}")
        if not (-1.0 <= float(target) <= 1.0):
            raise ValueError(f"AdaController: target={target!r} must lie in [-1, 1] (it is a mean of signs)")
        if int(interval) != interval or interval < 1:
            raise ValueError(f"AdaController: interval={interval!r} must be a positive integer")
        if not (math.isfinite(float(kimg)) and float(kimg) > 0):
            raise ValueError(f"AdaController: kimg={kimg!r} must be a positive number")
        if batch_size is None or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"AdaController: batch_size={batch_size!r} must be a positive integer (global batch)")
        self.pipe = pipe
        self.target = float(target)
        self.interval = int(interval)
        self.kimg = float(kimg)
        self.batch_size = int(batch_size)
        self.rt: float | None = None  # last measured E[sign(D(real))]
        self.last_update_nimg: int | None = None
        self._steps = 0  # update() calls since the start
        self._stats: torch.Tensor | None = None  # [2]: sum of signs, number of logits

    @property
    def p(self) -> float:
        """Current augmentation probability (reads the pipeline's buffer)."""
        return float(self.pipe.p)

    @property
    def adjust_step(self) -> float:
        """Change of ``p`` at each adjustment."""
        return self.batch_size * self.interval / (self.kimg * 1000)

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Adds the signs of a batch of D's real logits (any shape) to the running statistics; no host sync."""
        logits = real_logits.detach().reshape(-1)
        dtype = torch.float32 if logits.device.type == "mps" else torch.float64
        total = torch.sign(logits).sum(dtype=dtype)
        count = torch.full((), float(logits.numel()), device=logits.device, dtype=dtype)
        stats = torch.stack([total, count])
        if self._stats is None or self._stats.device != stats.device:
            self._stats = stats if self._stats is None else self._stats.to(stats.device) + stats
        else:
            self._stats.add_(stats)

    def update(self, cur_nimg: int) -> float | None:
        """Counts one D step; every ``interval`` steps adjusts ``p`` from the accumulated signs.

        Under an initialised ``torch.distributed`` process group the statistics are summed over ranks first, so
        every rank computes the same ``p``. The statistics are reset after each adjustment.

        Args:
            cur_nimg: number of real images shown so far (recorded in ``last_update_nimg``).

        Returns:
            The new ``p`` when an adjustment happened, else ``None`` (not due yet, or nothing was accumulated).
        """
        self._steps += 1
        if self._steps % self.interval != 0:
            return None
        stats = self._stats
        if stats is None:  # nothing accumulated on this rank: it must still join the all-reduce
            stats = torch.zeros(2, dtype=torch.float64, device=self.pipe.p.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_world_size() > 1:
                stats = stats.clone()
                torch.distributed.all_reduce(stats)
        total, count = (float(v) for v in stats.tolist())
        if self._stats is not None:
            self._stats.zero_()
        if count == 0:
            return None
        self.rt = total / count
        diff = self.rt - self.target
        direction = (diff > 0) - (diff < 0)
        self.pipe.set_p(self.p + direction * self.adjust_step)
        self.last_update_nimg = int(cur_nimg)
        return self.p

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: p, the partial statistics, the step counter and the last r_t."""
        stats = [0.0, 0.0] if self._stats is None else [float(v) for v in self._stats.tolist()]
        return {
            "p": self.p,
            "rt": self.rt,
            "steps": self._steps,
            "sign_sum": stats[0],
            "count": stats[1],
            "last_update_nimg": self.last_update_nimg,
            "target": self.target,
            "interval": self.interval,
            "kimg": self.kimg,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` output (the settings ``target``/``interval``/``kimg``/``batch_size`` stay those
        of this controller, so a fine-tuning run may change them)."""
        missing = {"p", "rt", "steps", "sign_sum", "count"} - set(state)
        if missing:
            raise ValueError(f"AdaController.load_state_dict: missing keys {sorted(missing)}")
        self.pipe.set_p(state["p"])
        self.rt = None if state["rt"] is None else float(state["rt"])
        self._steps = int(state["steps"])
        self.last_update_nimg = state.get("last_update_nimg")
        dev = self.pipe.p.device
        dtype = torch.float32 if dev.type == "mps" else torch.float64
        self._stats = torch.tensor([float(state["sign_sum"]), float(state["count"])], dtype=dtype, device=dev)


# ----------------------------------------------------------------------------------------------------------------
# Visualisation
