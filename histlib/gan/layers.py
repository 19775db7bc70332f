"""Building blocks of StyleGAN2 (Karras et al. 2020, "Analyzing and improving the image quality of StyleGAN").

Every layer uses the equalised learning rate: parameters are stored with unit variance and scaled by the He
constant at run time, so Adam sees all layers at the same scale. Bias + activation and every FIR resampling
go through :mod:`histlib.ops` (one implementation of each, with a reference and a CUDA path).

Resampling convention (shared by :class:`Conv2dLayer` and :func:`modulated_conv2d`): a pixel covers a unit square
and a 2× upsampled image covers the same area as its source, so an ``up=2`` / ``down=2`` layer never shifts the
image by half a pixel. Upsampling convolutions run as a strided transposed convolution followed by the FIR low
pass, downsampling convolutions as the FIR low pass followed by a strided convolution; both work at the low
resolution, where the convolution is cheaper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from histlib import ops

_DEFAULT_FILTER = (1, 3, 3, 1)


def _default_gain(activation: str) -> float:
    """Gain that keeps the second moment of a unit-variance input through ``activation`` (√2 for lrelu)."""
    if activation not in ops.activation_funcs:
        raise ValueError(f"activation: expected one of {sorted(ops.activation_funcs)}, got {activation!r}")
    return float(ops.activation_funcs[activation].def_gain)


# ----------------------------------------------------------------------------------------------------------------
# Convolution with FIR resampling


def _fir_padding(fw: int, k: int, factor: int, up: bool) -> int:
    """Padding of the FIR step that keeps up/downsampled outputs aligned with their input (module docstring).

    For an upsampling conv (transposed conv of size k then filter of size fw) the output has ``H*up`` pixels when
    the filter is padded by ``(fw + up - k - 1) / 2`` on each side; for a downsampling conv (filter then a strided
    conv) by ``(fw + k - down - 1) / 2``.
    """
    total = fw + factor - k - 1 if up else fw + k - factor - 1
    if total < 0 or total % 2:
        raise ValueError(
            f"cannot align a {k}x{k} convolution with a {fw}-tap resampling filter at factor {factor}: "
            "use an odd kernel with an even-length filter"
        )
    return total // 2


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> torch.Tensor:
    """2D cross-correlation, optionally preceded by FIR upsampling or followed by FIR downsampling.

    Args:
        x: input ``[N, groups*I, H, W]``.
        w: weight ``[groups*O, I, k, k]`` (odd k), already scaled and cast to ``x.dtype``.
        f: resampling filter from :func:`histlib.ops.setup_filter`; required when ``up`` or ``down`` > 1.
        up: integer upsampling factor (output ``H*up``).
        down: integer downsampling factor (output ``H/down``).
        padding: zero padding of the plain convolution; must be ``k // 2`` ("same") when resampling.
        groups: number of groups of the convolution (the fused modulated convolution uses one per sample).

    Returns:
        ``[N, groups*O, H*up/down, W*up/down]``.
    """
    k = w.shape[-1]
    if up == 1 and down == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    if up > 1 and down > 1:
        raise ValueError("conv2d_resample: up and down cannot both be > 1")
    if f is None:
        raise ValueError("conv2d_resample: a resampling filter is required when up or down > 1")
    if padding != k // 2:
        raise ValueError(f"conv2d_resample: padding must be k // 2 = {k // 2} when resampling, got {padding}")
    fw = f.shape[-1]
    out_channels, in_per_group = w.shape[0], w.shape[1]

    if k == 1:
        # A 1x1 conv commutes with the FIR exactly (it is pointwise), so resample on the side with fewer channels.
        conv_first = out_channels < in_per_group * groups
        if up > 1:
            if conv_first:
                return ops.upsample2d(F.conv2d(x, w, groups=groups), f, up=up)
            return F.conv2d(ops.upsample2d(x, f, up=up), w, groups=groups)
        if conv_first:
            return ops.downsample2d(F.conv2d(x, w, groups=groups), f, down=down)
        return F.conv2d(ops.downsample2d(x, f, down=down), w, groups=groups)

    if up > 1:
        # Transposed conv = zero insertion followed by a true convolution; flipping the kernel turns it into the
        # cross-correlation used elsewhere, so up=2 agrees with "upsample2d, then conv2d(padding=k//2)" inside.
        go = out_channels // groups
        wt = w.reshape(groups, go, in_per_group, k, k).transpose(1, 2).reshape(groups * in_per_group, go, k, k)
        x = F.conv_transpose2d(x, wt.flip([2, 3]), stride=up, groups=groups)  # [N, G*O, (H-1)*up+k, ...]
        p = _fir_padding(fw, k, up, up=True)
        return ops.upfirdn2d(x, f, padding=[p, p, p, p], gain=up**2)

    p = _fir_padding(fw, k, down, up=False)
    x = ops.upfirdn2d(x, f, padding=[p, p, p, p])
    return F.conv2d(x, w, stride=down, groups=groups)


# ----------------------------------------------------------------------------------------------------------------
# Equalised learning-rate layers


class FullyConnectedLayer(nn.Module):
    """Dense layer with equalised learning rate and fused bias + activation.

    Args:
        in_features: input width.
        out_features: output width.
        bias: learn a bias.
        activation: ``'linear'``, ``'lrelu'`` or ``'relu'`` (see :func:`histlib.ops.bias_act`).
        lr_multiplier: learning-rate multiplier (0.01 in the mapping network): parameters are stored divided by it.
        bias_init: initial value of the effective bias (1 for the style affines, so styles start near 1).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        _default_gain(activation)
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], bias_init / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, in] -> [N, out]
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return ops.bias_act(x, b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """Convolution with equalised learning rate, optional FIR up/downsampling, bias + activation and clamping.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size; padding is "same".
        bias: learn a bias.
        activation: activation name.
        up: upsampling factor (1 or 2).
        down: downsampling factor (1 or 2).
        resample_filter: FIR taps of the resampling low pass (separable), ``[1, 3, 3, 1]`` by default.
        conv_clamp: clamp the output to ``±conv_clamp`` (keeps fp16 activations in range); None = no clamp.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter: Sequence[float] = _DEFAULT_FILTER,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        _default_gain(activation)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size: expected an odd size, got {kernel_size}")
        self.in_channels, self.out_channels, self.activation = in_channels, out_channels, activation
        self.up, self.down, self.conv_clamp, self.padding = up, down, conv_clamp, kernel_size // 2
        f = ops.setup_filter(list(resample_filter))
        self.register_buffer("resample_filter", f, persistent=False)
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = _default_gain(activation)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:  # [N, I, H, W] -> [N, O, H', W']
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype)
        x = conv2d_resample(x, w, self.resample_filter, up=self.up, down=self.down, padding=self.padding)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return ops.bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, "
            f"up={self.up}, down={self.down}, kernel_size={self.weight.shape[-1]}"
        )


# ----------------------------------------------------------------------------------------------------------------
# Modulated convolution (StyleGAN2 §2.2)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    noise: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    fused_modconv: bool = True,
) -> torch.Tensor:
    """Convolution whose weights are scaled per sample and input channel by ``styles`` (and demodulated).

    The weight seen by sample n is ``w'[o,i] = w[o,i] * s[n,i]``, demodulated to unit L2 norm over (i, kh, kw), so
    a unit-variance input gives a unit-variance output (StyleGAN2 eq. 1-3).

    Args:
        x: input ``[N, I, H, W]``.
        weight: ``[O, I, k, k]`` (any scale: demodulation removes it; without demodulation it is used as given).
        styles: ``[N, I]``.
        demodulate: normalise each output channel's effective weight.
        noise: added after the convolution and demodulation, broadcastable to ``[N, O, H', W']``.
        up: upsampling factor; down: downsampling factor (see :func:`conv2d_resample`).
        padding: zero padding; ``k // 2`` when resampling.
        resample_filter: FIR filter from :func:`histlib.ops.setup_filter`.
        fused_modconv: True: one grouped convolution with per-sample weights (fewer passes, good for inference);
            False: scale activations before and after a shared-weight convolution (same result, cheaper backward
            with a large batch).

    Returns:
        ``[N, O, H', W']``.
    """
    n, in_channels, _, _ = x.shape
    out_channels, w_in, kh, kw = weight.shape
    if w_in != in_channels or styles.shape != (n, in_channels):
        raise ValueError(
            f"modulated_conv2d: x {tuple(x.shape)}, weight {tuple(weight.shape)} and styles {tuple(styles.shape)} "
            "do not agree (expected styles [N, I] and weight [O, I, k, k])"
        )
    weight = weight.to(x.dtype)
    styles = styles.to(x.dtype)
    if demodulate and x.dtype in (torch.float16, torch.bfloat16):
        # Demodulation makes the result invariant to the scale of the weight (per output channel) and of the styles
        # (per sample), so both are brought near 1 first to keep the squared sums inside the half-precision range.
        weight = weight * weight.abs().amax(dim=[1, 2, 3], keepdim=True).clamp_min(1e-4).reciprocal()
        styles = styles * styles.abs().amax(dim=1, keepdim=True).clamp_min(1e-4).reciprocal()

    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, in_channels, 1, 1)  # [N, O, I, k, k]
        if demodulate:
            dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]

    if not fused_modconv:
        x = x * styles.reshape(n, in_channels, 1, 1)
        x = conv2d_resample(x, weight, resample_filter, up=up, down=down, padding=padding)
        if dcoefs is not None:
            x = x * dcoefs.reshape(n, out_channels, 1, 1)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return x

    if dcoefs is not None:
        w = w * dcoefs.reshape(n, out_channels, 1, 1, 1)
    x = x.reshape(1, n * in_channels, *x.shape[2:])
    x = conv2d_resample(
        x, w.reshape(n * out_channels, in_channels, kh, kw), resample_filter, up=up, down=down, padding=padding,
        groups=n,
    )
    x = x.reshape(n, out_channels, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution with per-pixel noise, bias and leaky ReLU (one "conv" of a synthesis block).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        w_dim: width of the intermediate latent w.
        resolution: output resolution (size of the constant noise map).
        kernel_size: convolution size.
        up: 1, or 2 for the first convolution of a block.
        use_noise: add per-pixel noise scaled by a learned strength (initialised to 0).
        activation: activation name.
        resample_filter: FIR taps of the upsampling filter.
        conv_clamp: output clamp (see :class:`Conv2dLayer`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = _DEFAULT_FILTER,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.resolution, self.up = in_channels, out_channels, resolution, up
        self.use_noise, self.activation, self.conv_clamp = use_noise, activation, conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = _default_gain(activation)
        f = ops.setup_filter(list(resample_filter))
        self.register_buffer("resample_filter", f, persistent=False)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool = True,
        gain: float = 1.0,
    ) -> torch.Tensor:
        """Maps ``x [N, I, H, W]`` and ``w [N, w_dim]`` to ``[N, O, H*up, W*up]``.

        ``noise_mode``: ``'random'`` (fresh noise), ``'const'`` (the stored noise map) or ``'none'``.
        """
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode: expected 'random', 'const' or 'none', got {noise_mode!r}")
        styles = self.affine(w)  # [N, I]
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            noise = noise * self.noise_strength.to(x.dtype)
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const.to(x.dtype) * self.noise_strength.to(x.dtype)
        x = modulated_conv2d(
            x, self.weight, styles, demodulate=True, noise=noise, up=self.up, padding=self.padding,
            resample_filter=self.resample_filter, fused_modconv=fused_modconv,
        )
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return ops.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, resolution={self.resolution}, "
            f"up={self.up}, activation={self.activation}"
        )


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation (the skip generator's per-block output).

    Args:
        in_channels: feature channels.
        out_channels: image channels.
        w_dim: width of w.
        kernel_size: convolution size (1).
        conv_clamp: output clamp.
    """

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1, conv_clamp: float | None = None
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        # Without demodulation the equalised-lr constant must be applied explicitly; it goes on the styles.
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain  # [N, I]
        x = modulated_conv2d(
            x, self.weight, styles, demodulate=False, padding=self.padding, fused_modconv=fused_modconv
        )
        return ops.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"


class MinibatchStdLayer(nn.Module):
    """Appends the standard deviation of features within groups of samples (Karras et al. 2018, §3).

    Samples are grouped with stride: sample i joins group ``i % (N / G)``. For each group the per-feature standard
    deviation over its G members is averaged over space and over each of ``num_channels`` channel slices, and
    broadcast back as ``num_channels`` extra feature maps.

    Args:
        group_size: members per group; when the batch is not divisible, the largest divisor of N not above it.
        num_channels: number of statistics channels appended.
    """

    def __init__(self, group_size: int, num_channels: int = 1) -> None:
        super().__init__()
        if group_size < 1 or num_channels < 1:
            raise ValueError(f"MinibatchStdLayer: group_size and num_channels must be >= 1, got {group_size}, "
                             f"{num_channels}")
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, C + num_channels, H, W]
        n, c, h, w = x.shape
        if c % self.num_channels:
            raise ValueError(f"MinibatchStdLayer: {c} channels are not divisible into {self.num_channels} slices")
        g = min(self.group_size, n)
        while n % g:
            g -= 1
        f = self.num_channels
        y = x.reshape(g, n // g, f, c // f, h, w).to(torch.promote_types(x.dtype, torch.float32))  # [G, n, F, c, H, W]
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [n, F, c, H, W]
        y = y.mean(dim=[2, 3, 4])  # [n, F]
        y = y.reshape(n // g, f, 1, 1).repeat(g, 1, h, w).to(x.dtype)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"
