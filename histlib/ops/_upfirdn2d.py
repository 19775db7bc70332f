"""Upsample, FIR-filter and downsample 2-D images in one op (the resampling of StyleGAN2).

``upfirdn2d(x, f, up, down, padding)`` on ``x [N, C, H, W]``, per channel:

1. upsample by zero insertion: ``x_up[i * up] = x[i]``, zeros elsewhere (size ``H * up``);
2. pad with zeros by ``padding = [x0, x1, y0, y1]`` (negative values crop);
3. convolve with the FIR filter ``f`` (a true convolution; ``flip_filter=True`` gives a correlation), scaled by
   ``gain`` (``gain ** (f.ndim / 2)`` per pass, so a separable 1-D filter applied twice scales by ``gain`` overall);
4. downsample by keeping every ``down``-th sample.

Output size: ``(H * up_y + y0 + y1 - fh) // down_y + 1`` rows (same for columns).

``_upfirdn2d_ref`` is the specification. The fused paths (``'cuda'``, ``'compiled'``) run inside an autograd function
whose backward is again an upfirdn2d (swapped up/down, flipped filter, adjoint padding), so derivatives of every
order work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from histlib.ops import _dispatch

Scaling = int | Sequence[int]
Padding = int | Sequence[int]


# ----------------------------------------------------------------------------------------------------------------
# Argument helpers


def _parse_scaling(s: Scaling, name: str) -> tuple[int, int]:
    """int or ``[sx, sy]`` → ``(sx, sy)``."""
    if isinstance(s, int | np.integer):
        s = [int(s), int(s)]
    s = [int(v) for v in s]
    if len(s) != 2 or min(s) < 1:
        raise ValueError(f"upfirdn2d: {name} must be an int >= 1 or [x, y] of such ints, got {s}")
    return s[0], s[1]


def _parse_padding(p: Padding) -> tuple[int, int, int, int]:
    """int, ``[px, py]`` or ``[x0, x1, y0, y1]`` → ``(x0, x1, y0, y1)``."""
    if isinstance(p, int | np.integer):
        p = [int(p), int(p)]
    p = [int(v) for v in p]
    if len(p) == 2:
        p = [p[0], p[0], p[1], p[1]]
    if len(p) != 4:
        raise ValueError(f"upfirdn2d: padding must be an int, [px, py] or [x0, x1, y0, y1], got {p}")
    return p[0], p[1], p[2], p[3]


def _get_filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """``(fw, fh)`` of a 2-D filter ``[fh, fw]`` or a separable 1-D filter ``[ft]``."""
    if f is None:
        return 1, 1
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2):
        raise ValueError(f"upfirdn2d: f must be a 1-D (separable) or 2-D filter tensor, got "
                         f"{list(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")
    fw = f.shape[-1]
    fh = f.shape[0]
    if fw < 1 or fh < 1:
        raise ValueError(f"upfirdn2d: f must not be empty, got shape {list(f.shape)}")
    return fw, fh


def setup_filter(f: Any, device: torch.device | str = "cpu", normalize: bool = True, flip_filter: bool = False,
                 gain: float = 1, separable: bool | None = None) -> torch.Tensor:
    """Turn filter taps into the float32 tensor the ops take.

    Args:
        f: taps: None (identity), a number, a 1-D list / array (e.g. ``[1, 3, 3, 1]``) or a 2-D array.
        device: where the filter lives.
        normalize: divide by the sum of the taps (unit DC gain).
        flip_filter: flip the taps (store a correlation kernel instead of a convolution kernel).
        gain: overall gain, applied as ``gain ** (f.ndim / 2)`` so that a separable filter used twice gives ``gain``.
        separable: keep a 1-D filter 1-D (applied along x then y). None = separable when it has 8 taps or more
            (the two passes beat one 2-D pass only for long filters).

    Returns:
        ``[ft]`` (separable) or ``[fh, fw]`` float32 tensor on ``device``.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[np.newaxis]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"setup_filter: f must be a number or a non-empty 1-D / 2-D array, got shape {list(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if separable and f.ndim != 1:
        raise ValueError("setup_filter: separable=True needs 1-D taps")
    if normalize:
        total = f.sum()
        if total == 0:
            raise ValueError("setup_filter: cannot normalize a filter whose taps sum to 0 (pass normalize=False)")
        f = f / total
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


# ----------------------------------------------------------------------------------------------------------------
# Public ops


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: Scaling = 1, down: Scaling = 1, padding: Padding = 0,
              flip_filter: bool = False, gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR-filter and downsample ``x`` (see the module docstring).

    Args:
        x: ``[N, C, H, W]`` float tensor (contiguous or channels_last).
        f: filter from :func:`setup_filter` (``[fh, fw]`` or separable ``[ft]``), or None for identity.
        up: upsampling factor, int or ``[ux, uy]``.
        down: downsampling factor, int or ``[dx, dy]``.
        padding: int, ``[px, py]`` or ``[x0, x1, y0, y1]``, applied after upsampling; negative crops.
        flip_filter: False = convolution, True = correlation.
        gain: overall gain.
        impl: ``'auto'``, ``'ref'``, ``'cuda'`` or ``'compiled'``.

    Returns:
        ``[N, C, H_out, W_out]`` in the dtype of ``x``.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"upfirdn2d: x must be a float [N, C, H, W] tensor, got "
                         f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    fw, fh = _get_filter_size(f)
    if f is not None and f.device != x.device:
        raise ValueError(f"upfirdn2d: f is on {f.device} but x is on {x.device}")
    upx, upy = _parse_scaling(up, "up")
    downx, downy = _parse_scaling(down, "down")
    px0, px1, py0, py1 = _parse_padding(padding)
    _, _, h, w = x.shape
    out_w = (w * upx + px0 + px1 - fw) // downx + 1
    out_h = (h * upy + py0 + py1 - fh) // downy + 1
    if out_w < 1 or out_h < 1:
        raise ValueError(f"upfirdn2d: output would be empty ({out_h}x{out_w}) for input {h}x{w}, filter {fh}x{fw}, "
                         f"up={up}, down={down}, padding={padding}")

    path = _dispatch.resolve("upfirdn2d", impl, x.device.type, str(x.device),
                             _PROBES)
    _dispatch.record("upfirdn2d", path)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if path == "ref":
        return _upfirdn2d_ref(x, f, (upx, upy), (downx, downy), (px0, px1, py0, py1), flip_filter, gain)
    return _function(path, (upx, upy), (downx, downy), (px0, px1, py0, py1), bool(flip_filter), float(gain))(x, f)


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, up: Scaling = 2, padding: Padding = 0,
               flip_filter: bool = False, gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """Upsample by ``up`` with the interpolation filter ``f``; output ``[N, C, H * up_y, W * up_x]``.

    The gain is multiplied by ``up_x * up_y`` so the filter's unit DC gain survives the zero insertion.
    ``padding`` adds to the padding that keeps the output aligned (``[x0, x1, y0, y1]`` or int).
    """
    upx, upy = _parse_scaling(up, "up")
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, down: Scaling = 2, padding: Padding = 0,
                 flip_filter: bool = False, gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """Low-pass with ``f`` and keep every ``down``-th sample; output ``[N, C, H // down_y, W // down_x]``
    (for sizes divisible by ``down``)."""
    downx, downy = _parse_scaling(down, "down")
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def filter2d(x: torch.Tensor, f: torch.Tensor | None, padding: Padding = 0, flip_filter: bool = False,
             gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """Filter with ``f`` keeping the size (``[N, C, H, W]`` in and out when ``padding=0``)."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


# ----------------------------------------------------------------------------------------------------------------
# Reference


def _upfirdn2d_ref(x: torch.Tensor, f: torch.Tensor, up: tuple[int, int], down: tuple[int, int],
                   padding: tuple[int, int, int, int], flip_filter: bool, gain: float) -> torch.Tensor:
    """The specification in plain PyTorch: zero insertion, pad/crop, depthwise conv2d, stride."""
    n, c, h, w = x.shape  # [N, C, H, W]
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding
    channels_last = x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)

    if upx > 1 or upy > 1:  # zero insertion
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)  # [N, C, H*uy, W*ux]
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]

    f = f.to(x.dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:  # conv2d correlates; a convolution needs the flipped taps
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        weight = f[None, None].expand(c, 1, *f.shape)  # [C, 1, fh, fw]
        x = F.conv2d(x, weight, stride=(downy, downx), groups=c)  # striding = keeping every down-th sample
    else:
        weight = f[None, None].expand(c, 1, f.shape[0])  # [C, 1, ft]
        x = F.conv2d(x, weight.unsqueeze(2), stride=(1, downx), groups=c)
        x = F.conv2d(x, weight.unsqueeze(3), stride=(downy, 1), groups=c)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


# ----------------------------------------------------------------------------------------------------------------
# Fused paths ('cuda', 'compiled')


_get_compiled = _dispatch.lazy_compile(lambda: _upfirdn2d_ref)


def _kernel(path: str, x: torch.Tensor, f: torch.Tensor, up: tuple[int, int], down: tuple[int, int],
            padding: tuple[int, int, int, int], flip_filter: bool, gain: float) -> torch.Tensor:
    if path == "compiled":
        return _get_compiled()(x, f, up, down, padding, flip_filter, gain)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    fk = f.to(acc) * (gain ** (f.ndim / 2))
    if not flip_filter:  # the kernel correlates
        fk = fk.flip(list(range(fk.ndim)))
    plugin = _load_plugin()
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding
    if fk.ndim == 2:
        return plugin.upfirdn2d(x, fk.contiguous(), upx, upy, downx, downy, px0, px1, py0, py1)
    # separable: a pass along x, then one along y
    t = plugin.upfirdn2d(x, fk[None, :].contiguous(), upx, 1, downx, 1, px0, px1, 0, 0)
    return plugin.upfirdn2d(t, fk[:, None].contiguous(), 1, upy, 1, downy, 0, 0, py0, py1)


_functions: dict[tuple, Any] = {}


def _function(path: str, up: tuple[int, int], down: tuple[int, int], padding: tuple[int, int, int, int],
              flip_filter: bool, gain: float):
    """``apply(x, f)`` of the autograd function for these constants (classes cached per config)."""
    key = (path, up, down, padding, flip_filter, gain)
    if key in _functions:
        return _functions[key]
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = padding

    class Upfirdn2d(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, f):  # [N, C, H, W], [fh, fw] or [ft]
            y = _kernel(path, x, f, up, down, padding, flip_filter, gain)
            ctx.save_for_backward(f)
            ctx.x_shape = x.shape
            return y

        @staticmethod
        def backward(ctx, dy):  # [N, C, H_out, W_out]
            f, = ctx.saved_tensors
            _, _, ih, iw = ctx.x_shape
            _, _, oh, ow = dy.shape
            fw, fh = _get_filter_size(f)
            # Adjoint: zero-insert dy by `down`, correlate with the taps the forward convolved with, keep every
            # `up`-th sample. The padding lines the first tap up with input sample 0 and drops samples beyond it.
            p = (fw - px0 - 1, iw * upx - ow * downx + px0 - upx + 1,
                 fh - py0 - 1, ih * upy - oh * downy + py0 - upy + 1)
            dx = None
            if ctx.needs_input_grad[0]:
                dx = _function(path, down, up, p, not flip_filter, gain)(dy, f)
            return dx, None

    _functions[key] = Upfirdn2d.apply
    return Upfirdn2d.apply


# ----------------------------------------------------------------------------------------------------------------
# Availability probes for the dispatcher


def _load_plugin():
    from histlib.ops import _build

    return _build.load_extension("upfirdn2d", ["upfirdn2d.cpp", "upfirdn2d.cu"])


# built lazily: _get_compiled and _check_against_ref are looked up when a probe runs
_PROBES = _dispatch.make_probes(_load_plugin, lambda: _get_compiled(), lambda path: _check_against_ref(path))


def _check_against_ref(path: str) -> None:
    # float64: the same kernel template, and no TF32 in cuDNN's convolutions of the reference
    gen = torch.Generator(device="cuda").manual_seed(0)
    f = setup_filter([1, 3, 3, 1], device="cuda").double()
    for up, down, pad in (((2, 2), (1, 1), (2, 1, 2, 1)), ((1, 1), (2, 2), (1, 1, 1, 1))):
        x = torch.randn([2, 3, 9, 8], device="cuda", generator=gen, dtype=torch.float64, requires_grad=True)
        outs = []
        for run in (path, "ref"):
            args = (up, down, pad, False, 4.0)
            y = _upfirdn2d_ref(x, f, *args) if run == "ref" else _function(run, *args)(x, f)
            gx, = torch.autograd.grad((y * y).sum(), [x], create_graph=True)
            ggx, = torch.autograd.grad((gx * gx).sum(), [x])
            outs.append([y, gx, ggx])
        for got, want in zip(*outs):
            if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-9, atol=1e-9):
                raise RuntimeError(f"upfirdn2d {path!r} path disagrees with the reference on this device "
                                   f"(up={up}, down={down})")

