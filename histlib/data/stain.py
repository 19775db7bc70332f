"""Macenko stain normalisation for H&E images (Macenko et al., ISBI 2009).

The method, step by step (one image, RGB ``uint8``):

1. Optical density per channel: ``OD = -log((I + 1) / Io)`` with ``Io`` the transmitted (background) intensity,
   240 by default. ``+1`` keeps ``log`` finite for black pixels.
2. Transparent pixels (``OD < beta`` in *any* channel, ``beta = 0.15``) are dropped: they are background or glass
   and carry no stain information.
3. The tissue ODs lie close to a plane spanned by the two stain vectors. The plane is estimated from the two
   leading eigenvectors of the 3×3 OD covariance matrix.
4. Every tissue OD is projected onto that plane and its angle is measured; the robust extreme angles (the
   ``alpha`` and ``100 - alpha`` percentiles, ``alpha = 1``) give the two stain directions.
5. **Column order (H first):** the stain vector with the larger *red* OD component is haematoxylin. Haematoxylin
   is blue-purple, i.e. it absorbs red light more strongly than eosin (pink), which absorbs mostly green; the
   standard reference matrix below follows this convention (0.5626 > 0.2159). This is the same rule as the public
   reference implementations.
6. Concentrations of both stains for every pixel: least squares ``OD ≈ HE @ C``.
7. Normalisation: scale each stain's concentrations so that their 99th percentile matches the target's
   (``max_conc_target``), then rebuild the image with the target stain matrix: ``I = Io * exp(-HE_target @ C) - 1``
   (the exact inverse of step 1), clipped to [0, 255] and rounded. Public ports (e.g. ``torchstain``) omit the
   ``- 1`` and truncate instead of rounding; the two results differ by at most one intensity level.

Background-only images: when fewer than ``min_tissue_pixels`` pixels survive step 2, or when the two extreme
angles coincide (a single stain or a uniform colour), no stain matrix can be estimated and a
:class:`StainNormalizationError` is raised. The caller decides what to do (``prepare`` may skip such a patch or
keep it un-normalised); this module never silently returns the input.

Everything is vectorised numpy (a 256-entry lookup table for the logarithm, one matrix product for the
concentrations, one ``exp`` for the reconstruction), so a 64 px patch takes well under a millisecond.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "REFERENCE_MAX_CONC",
    "REFERENCE_STAIN_MATRIX",
    "MacenkoNormalizer",
    "StainNormalizationError",
    "estimate_stain_matrix",
    "macenko_normalize",
]

# The standard H&E reference (columns: haematoxylin, eosin; rows: R, G, B optical density), used by the original
# Macenko MATLAB code and its public ports. A normaliser that has not been fitted maps images to this stain.
REFERENCE_STAIN_MATRIX = np.array([[0.5626, 0.2159],
                                   [0.7201, 0.8012],
                                   [0.4062, 0.5581]])
REFERENCE_MAX_CONC = np.array([1.9705, 1.0308])

# Below this many tissue pixels the covariance and the 1st/99th percentiles are not meaningful.
MIN_TISSUE_PIXELS = 100
# Smallest angle (radians) between the two estimated stain vectors; below it the image shows one stain only.
_MIN_STAIN_ANGLE = 1e-3


class StainNormalizationError(ValueError):
    """An image from which no stain matrix can be estimated (background only, or a single stain/colour)."""


def _check_image(img: Any, name: str) -> np.ndarray:
    """Returns ``img`` as a contiguous ``uint8 [H, W, 3]`` array or raises an error naming the parameter."""
    if not isinstance(img, np.ndarray):
        # PIL images and nested lists convert cleanly; anything else fails below with a clear message
        try:
            img = np.asarray(img)
        except Exception as e:  # re-raised with the parameter name
            raise TypeError(f"{name}: expected an RGB uint8 array [H, W, 3], got {type(img).__name__}") from e
    if img.dtype != np.uint8:
        raise TypeError(f"{name}: expected dtype uint8 (RGB 0..255), got {img.dtype}; convert with "
                        f"np.clip(x, 0, 255).astype(np.uint8) or load the image as 8-bit RGB")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name}: expected an RGB image of shape [H, W, 3], got shape {tuple(img.shape)}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"{name}: empty image of shape {tuple(img.shape)}")
    return np.ascontiguousarray(img)


def _od_table(Io: float) -> np.ndarray:
    """OD of each of the 256 intensities, so the logarithm is computed once instead of per pixel."""
    return -np.log((np.arange(256, dtype=np.float64) + 1.0) / Io)


def _check_params(Io: float, alpha: float, beta: float, min_tissue_pixels: int) -> None:
    if not Io > 0:
        raise ValueError(f"Io: expected a positive background intensity, got {Io}")
    if not 0 <= alpha < 50:
        raise ValueError(f"alpha: expected a percentile in [0, 50), got {alpha}")
    if not beta >= 0:
        raise ValueError(f"beta: expected a non-negative OD threshold, got {beta}")
    if int(min_tissue_pixels) < 3:
        raise ValueError(f"min_tissue_pixels: expected at least 3, got {min_tissue_pixels}")


def _percentile(x: np.ndarray, q: float) -> np.ndarray:
    """``np.percentile(x, q, axis=-1)`` (linear interpolation) through one partial sort, without its overhead."""
    n = x.shape[-1]
    k = (n - 1) * q / 100.0
    lo = int(np.floor(k))
    hi = min(lo + 1, n - 1)
    part = np.partition(x, [lo, hi] if hi != lo else [lo], axis=-1)
    a, b = part[..., lo], part[..., hi]
    return a + (b - a) * (k - lo)


def _lstsq_operator(he: np.ndarray) -> np.ndarray:
    """``[2, 3]`` matrix P with ``C = P @ OD`` the least-squares concentrations, i.e. ``inv(HE^T HE) HE^T``."""
    return np.linalg.solve(he.T @ he, he.T)


def _stain_matrix_from_od(od_tissue: np.ndarray, alpha: float) -> np.ndarray:
    """Macenko's plane fit + robust extreme angles on tissue ODs ``[N, 3]`` → stain matrix ``[3, 2]`` (H, E)."""
    centred = od_tissue - od_tissue.mean(axis=0)
    cov = centred.T @ centred / max(len(od_tissue) - 1, 1)  # [3, 3], as np.cov
    _, eigvecs = np.linalg.eigh(cov)  # ascending eigenvalues
    v1 = eigvecs[:, 2]  # direction of largest variance
    v2 = eigvecs[:, 1]
    # ODs are positive, so orienting v1 into the positive octant makes every projection onto it positive and keeps
    # the angles inside (-pi/2, pi/2): no wrap-around at ±pi that would break the percentiles.
    if v1.sum() < 0:
        v1 = -v1
    proj = od_tissue @ np.stack([v1, v2], axis=1)  # [N, 2]
    phi = np.arctan2(proj[:, 1], proj[:, 0])  # [N]
    phi_min, phi_max = float(_percentile(phi, alpha)), float(_percentile(phi, 100.0 - alpha))
    if phi_max - phi_min < _MIN_STAIN_ANGLE:
        raise StainNormalizationError(
            f"the tissue pixels show a single stain direction (angle spread {phi_max - phi_min:.2e} rad): "
            f"cannot separate haematoxylin from eosin")
    v_min = np.cos(phi_min) * v1 + np.sin(phi_min) * v2
    v_max = np.cos(phi_max) * v1 + np.sin(phi_max) * v2
    # Haematoxylin first: larger red OD component (see the module docstring)
    he = np.stack([v_min, v_max], axis=1) if v_min[0] > v_max[0] else np.stack([v_max, v_min], axis=1)
    return he  # [3, 2]


def _tissue_od(img: np.ndarray, Io: float, beta: float, min_tissue_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``[H*W, 3]`` (uint8) and the float64 ODs ``[T, 3]`` of the tissue pixels among them.

    A pixel is transparent when its OD is below ``beta`` in any channel. OD falls as intensity rises, so this is the
    exact integer test "some channel brighter than the brightest intensity whose OD is still >= beta", done on
    the uint8 values without building a float array of every pixel.
    """
    table = _od_table(Io)
    pixels = img.reshape(-1, 3)  # [H*W, 3]
    dark_enough = np.flatnonzero(table >= beta)
    if dark_enough.size:
        # elementwise maximum of the three channel columns: ~15x faster than pixels.max(axis=1) on a 3-wide axis
        brightest = np.maximum(np.maximum(pixels[:, 0], pixels[:, 1]), pixels[:, 2])  # [H*W]
        tissue = brightest <= dark_enough.max()
        n_tissue = int(np.count_nonzero(tissue))
    else:
        n_tissue = 0
    if n_tissue < min_tissue_pixels:
        raise StainNormalizationError(
            f"only {n_tissue} of {pixels.shape[0]} pixels are tissue (OD >= beta={beta} in every channel with "
            f"Io={Io}); at least {min_tissue_pixels} are needed to estimate the stains (background-only image?)")
    return pixels, table[pixels[tissue]]


def _analyse(img: np.ndarray, Io: float, alpha: float, beta: float, min_tissue_pixels: int,
             dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stain matrix ``[3, 2]`` (float64), ODs of all pixels ``[H*W, 3]`` and 99th-percentile concentrations ``[2]``.

    The stain matrix is always estimated in float64; ``dtype`` sets the precision of the per-pixel work
    (concentrations, and the reconstruction in ``transform``), where float32 is about twice as fast and exact
    enough for 8-bit output.
    """
    pixels, od_tissue = _tissue_od(img, Io, beta, min_tissue_pixels)
    he = _stain_matrix_from_od(od_tissue, alpha)
    od = _od_table(Io).astype(dtype)[pixels]  # [H*W, 3]
    # Least squares for every pixel at once (same as lstsq for a full-rank HE)
    conc = _lstsq_operator(he).astype(dtype) @ od.T  # [2, H*W], contiguous rows for the percentile
    max_conc = _percentile(conc, 99).astype(np.float64)  # [2]
    if not np.all(max_conc > 0):
        raise StainNormalizationError(f"99th-percentile stain concentrations are not positive ({max_conc}); "
                                      f"the image holds too little stained tissue")
    return he, od, max_conc


class MacenkoNormalizer:
    """Macenko stain normaliser with a fit/transform interface.

    Until :meth:`fit` is called the target is the standard H&E reference (:data:`REFERENCE_STAIN_MATRIX`,
    :data:`REFERENCE_MAX_CONC`).

    Args:
        Io: transmitted light intensity (the brightness of glass), 240 by default.
        alpha: percentile (in %) for the robust extreme angles, 1 by default.
        beta: OD threshold under which a pixel counts as transparent (in any channel), 0.15 by default.
        min_tissue_pixels: fewest tissue pixels from which stains are estimated; fewer raise
            :class:`StainNormalizationError`.

    Attributes:
        stain_matrix_target: ``[3, 2]`` target stain vectors (columns H, E; rows R, G, B optical density).
        max_conc_target: ``[2]`` target 99th-percentile concentrations (H, E).

    Example:
        >>> norm = MacenkoNormalizer().fit(reference_rgb)
        >>> out = norm.transform(patch_rgb)  # uint8 [H, W, 3]
    """

    def __init__(self, Io: float = 240, alpha: float = 1.0, beta: float = 0.15, *,
                 min_tissue_pixels: int = MIN_TISSUE_PIXELS):
        _check_params(Io, alpha, beta, min_tissue_pixels)
        self.Io = float(Io)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.min_tissue_pixels = int(min_tissue_pixels)
        self.stain_matrix_target = REFERENCE_STAIN_MATRIX.copy()
        self.max_conc_target = REFERENCE_MAX_CONC.copy()
        self.fitted = False

    def __repr__(self) -> str:
        target = "fitted" if self.fitted else "reference"
        return f"MacenkoNormalizer(Io={self.Io:g}, alpha={self.alpha:g}, beta={self.beta:g}, target={target})"

    def fit(self, target: np.ndarray) -> MacenkoNormalizer:
        """Takes the target stain matrix and maximum concentrations from an RGB ``uint8 [H, W, 3]`` image.

        Raises:
            TypeError, ValueError: ``target`` is not an RGB uint8 image.
            StainNormalizationError: ``target`` holds too little stained tissue.
        """
        target = _check_image(target, "target")
        he, _, max_conc = _analyse(target, self.Io, self.alpha, self.beta, self.min_tissue_pixels)
        self.stain_matrix_target = he
        self.max_conc_target = max_conc
        self.fitted = True
        return self

    def transform(self, img: np.ndarray) -> np.ndarray:
        """Returns ``img`` (RGB ``uint8 [H, W, 3]``) re-stained with the target stains, as ``uint8 [H, W, 3]``.

        Raises:
            TypeError, ValueError: ``img`` is not an RGB uint8 image.
            StainNormalizationError: ``img`` holds too little stained tissue to estimate its stains
                (e.g. a background-only patch); the caller decides whether to skip or keep such an image.
        """
        img = _check_image(img, "img")
        he, od, max_conc = _analyse(img, self.Io, self.alpha, self.beta, self.min_tissue_pixels, np.float32)
        # New OD = HE_target @ diag(max_target / max_source) @ pinv(HE) @ OD: one 3x3 matrix for every pixel
        mix = self.stain_matrix_target @ np.diag(self.max_conc_target / max_conc) @ _lstsq_operator(he)  # [3, 3]
        out = od @ (-mix.T).astype(np.float32)  # [H*W, 3], minus the new OD
        # Exact inverse of OD = -log((I + 1) / Io), so that normalising an image to its own stains returns it
        np.exp(out, out=out)
        out *= self.Io
        out -= 1.0
        np.clip(out, 0.0, 255.0, out=out)
        return np.rint(out, out=out).astype(np.uint8).reshape(img.shape)

    def fit_transform(self, target: np.ndarray) -> np.ndarray:
        """``fit(target)`` then ``transform(target)``."""
        return self.fit(target).transform(target)


def estimate_stain_matrix(img: np.ndarray, Io: float = 240, alpha: float = 1.0, beta: float = 0.15) -> np.ndarray:
    """The ``[3, 2]`` Macenko stain matrix of an RGB ``uint8`` image (columns H, E; unit-length OD vectors).

    Raises:
        TypeError, ValueError: ``img`` is not an RGB uint8 image.
        StainNormalizationError: too little stained tissue.
    """
    img = _check_image(img, "img")
    _check_params(Io, alpha, beta, MIN_TISSUE_PIXELS)
    _, od_tissue = _tissue_od(img, float(Io), float(beta), MIN_TISSUE_PIXELS)
    return _stain_matrix_from_od(od_tissue, float(alpha))


def macenko_normalize(img: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
    """Normalises one RGB ``uint8`` image to ``target``'s stains (or to the standard H&E reference when None).

    For many images, build one :class:`MacenkoNormalizer` and call ``transform`` so the target is fitted once.
    """
    norm = MacenkoNormalizer()
    if target is not None:
        norm.fit(target)
    return norm.transform(img)
