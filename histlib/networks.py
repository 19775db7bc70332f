"""Class-conditional StyleGAN2 generator and a residual discriminator with a D2D-CE head.

Generator (Karras et al. 2020, "Analyzing and improving the image quality of StyleGAN"; conditioning as in Karras
et al. 2020, "Training generative adversarial networks with limited data"): the class label is embedded by a
learned linear map of its one-hot code, both the embedding and z are normalised to unit second moment and
concatenated, and an MLP maps them to w. The synthesis network starts from a learned constant 4x4 input and uses
weight-demodulated modulated convolutions, per-pixel noise and the "skip" output architecture (every block's
ToRGB output is upsampled and summed). The generator tracks the mean of w globally (``w_avg``) and per class
(``w_avg_c``); truncation pulls a sample toward the mean of its own class.

Discriminator: StyleGAN2's residual architecture (fromRGB at the input, residual blocks that halve the resolution,
an epilogue at 4x4 with minibatch standard deviation, a convolution and a dense layer) with two heads on the
final features: an unconditional adversarial logit and, for the data-to-data cross-entropy of ReACGAN (Kang et
al. 2021, "Rebooting ACGAN"), a linear projection to an L2-normalised sample embedding plus learned class proxies.

Block order and freezing (contract, DESIGN.md §1): ``Discriminator.blocks[0]`` is fromRGB + the highest-resolution
block ("block 1"), ``SynthesisNetwork.blocks[0]`` is the 4x4 block ("block 1").

Mixed precision: blocks at the ``num_fp16_res`` highest resolutions run in half precision when the tensors live on
an accelerator (fp16 by default, bf16 on request) and always in fp32 on the CPU; the decision is made from the
device of the input at run time. ``conv_clamp`` bounds the activations so that fp16 cannot overflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histlib import ops
from histlib.layers import (
    Conv2dLayer,
    FullyConnectedLayer,
    MinibatchStdLayer,
    SynthesisLayer,
    ToRGBLayer,
)

_DEFAULT_FILTER = (1, 3, 3, 1)
_MP_DTYPES = {"auto": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _check_resolution(name: str, resolution: int, minimum: int) -> int:
    if not isinstance(resolution, int) or resolution < minimum or resolution & (resolution - 1):
        raise ValueError(f"{name}: expected a power of two >= {minimum}, got {resolution!r}")
    return int(math.log2(resolution))


def _check_mp_dtype(mp_dtype: str) -> str:
    if mp_dtype not in _MP_DTYPES:
        raise ValueError(f"mp_dtype: expected one of {sorted(_MP_DTYPES)}, got {mp_dtype!r}")
    return mp_dtype


def compute_dtype(
    use_fp16: bool, device: torch.device, mp_dtype: str = "auto", default: torch.dtype = torch.float32
) -> torch.dtype:
    """Dtype in which a block runs: reduced precision only when asked for and on an accelerator.

    Args:
        use_fp16: the block is among the ``num_fp16_res`` highest resolutions.
        device: device of the block's input.
        mp_dtype: ``'auto'`` (fp16, as StyleGAN2-ADA, relying on ``conv_clamp``), ``'float16'`` or ``'bfloat16'``.
        default: the dtype otherwise (the dtype of the block's parameters: float32, or float64 in tests).

    Returns:
        ``default`` on the CPU or when ``use_fp16`` is False, otherwise the half-precision dtype.
    """
    if not use_fp16 or device.type == "cpu":
        return default
    return _MP_DTYPES[mp_dtype] or torch.float16


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scales ``x`` to unit mean square along ``dim``."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def _check_labels(c: torch.Tensor, n: int, num_classes: int) -> None:
    if not isinstance(c, torch.Tensor) or c.ndim != 1 or c.dtype not in (torch.int64, torch.int32):
        got = f"{tuple(c.shape)} {c.dtype}" if isinstance(c, torch.Tensor) else type(c).__name__
        raise ValueError(f"c: expected class indices [N] of dtype int64, got {got}")
    if c.shape[0] != n:
        raise ValueError(f"c: expected {n} labels (one per sample), got {c.shape[0]}")
    # Range checks need the values on the host; on an accelerator that would stall the pipeline every step.
    if c.device.type == "cpu" and c.numel() and (int(c.min()) < 0 or int(c.max()) >= num_classes):
        raise ValueError(f"c: class indices must lie in [0, {num_classes - 1}], got [{int(c.min())}, {int(c.max())}]")


# ----------------------------------------------------------------------------------------------------------------
# Generator


class MappingNetwork(nn.Module):
    """Maps a latent z and a class index to the intermediate latent w, broadcast to ``num_ws`` copies.

    Args:
        z_dim: width of z.
        num_classes: number of classes (>= 1).
        w_dim: width of w.
        num_ws: number of w copies the synthesis network consumes.
        num_layers: depth of the MLP.
        embed_features: width of the class embedding (default ``w_dim``).
        layer_features: width of the hidden layers (default ``w_dim``).
        lr_multiplier: learning-rate multiplier of the MLP (0.01 in StyleGAN2).
        w_avg_beta: decay of the tracked means of w.
    """

    #: Tensors whose size depends on the number of classes (re-initialised by :func:`load_pretrained`).
    class_embedding_tensors = ("embed.weight", "w_avg_c")

    def __init__(
        self,
        z_dim: int,
        num_classes: int,
        w_dim: int,
        num_ws: int,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.998,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        if num_layers < 1:
            raise ValueError(f"num_layers: expected >= 1, got {num_layers}")
        self.z_dim = z_dim
        self.num_classes = num_classes
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        embed_features = w_dim if embed_features is None else embed_features
        layer_features = w_dim if layer_features is None else layer_features
        self.embed = FullyConnectedLayer(num_classes, embed_features)  # one-hot -> embedding
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        self.layers = nn.ModuleList(
            FullyConnectedLayer(features[i], features[i + 1], activation="lrelu", lr_multiplier=lr_multiplier)
            for i in range(num_layers)
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.register_buffer("w_avg_c", torch.zeros(num_classes, w_dim))

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """Returns ``ws [N, num_ws, w_dim]`` for ``z [N, z_dim]`` and class indices ``c [N]``.

        Args:
            z: latents.
            c: int64 class indices.
            truncation_psi: 1 = no truncation, 0 = the class mean ``w_avg_c[c]``.
            truncation_cutoff: truncate only the first ``truncation_cutoff`` ws (coarse styles); None = all.
            update_emas: update ``w_avg`` and ``w_avg_c`` with this batch (training only).
        """
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z: expected [N, {self.z_dim}], got {tuple(z.shape)}")
        _check_labels(c, z.shape[0], self.num_classes)
        dtype = self.embed.weight.dtype
        onehot = F.one_hot(c.long(), self.num_classes).to(dtype)  # [N, K]
        x = torch.cat([normalize_2nd_moment(z.to(dtype)), normalize_2nd_moment(self.embed(onehot))], dim=1)
        for layer in self.layers:
            x = layer(x)  # [N, w_dim] at the end
        if update_emas:
            self._update_w_avg(x.detach(), onehot)
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)  # [N, num_ws, w_dim]
        if truncation_psi != 1:
            center = self.w_avg_c[c].unsqueeze(1)  # [N, 1, w_dim]
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws = torch.cat([center.lerp(ws[:, :cutoff], truncation_psi), ws[:, cutoff:]], dim=1)
        return ws

    @torch.no_grad()
    def _update_w_avg(self, w: torch.Tensor, onehot: torch.Tensor) -> None:
        self.w_avg.copy_(w.mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        counts = onehot.sum(dim=0)  # [K]
        means = (onehot.t() @ w) / counts.clamp_min(1).unsqueeze(1)  # [K, w_dim]
        # Classes missing from the batch keep their mean; no host sync needed.
        updated = means.lerp(self.w_avg_c, self.w_avg_beta)
        self.w_avg_c.copy_(torch.where(counts.unsqueeze(1) > 0, updated, self.w_avg_c))

    @torch.no_grad()
    def reset_class_embeddings(self) -> None:
        """Re-initialises the class embedding and starts every class mean at the global mean ``w_avg``."""
        self.embed.weight.normal_()
        self.w_avg_c.copy_(self.w_avg.unsqueeze(0).expand_as(self.w_avg_c))

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, num_classes={self.num_classes}, w_dim={self.w_dim}, num_ws={self.num_ws}"


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: (const | 2x-upsampling conv), conv, ToRGB.

    Consumes ``num_conv + 1`` ws; the ToRGB w is shared with the first conv of the next block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        use_fp16: bool = False,
        conv_clamp: float | None = None,
        mp_dtype: str = "auto",
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.use_fp16 = use_fp16
        self.mp_dtype = _check_mp_dtype(mp_dtype)
        self.register_buffer("resample_filter", ops.setup_filter(list(_DEFAULT_FILTER)), persistent=False)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
            self.num_conv = 1
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
            self.num_conv = 2
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_torgb = 1

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps features ``x``, the running image ``img`` and ``ws [N, num_conv + 1, w_dim]`` to both at 2x size."""
        dtype = compute_dtype(self.use_fp16, ws.device, self.mp_dtype, default=self.conv1.weight.dtype)
        if fused_modconv is None:
            # The grouped convolution saves passes at inference; in training a shared-weight convolution over the
            # whole batch has the cheaper backward pass.
            fused_modconv = not self.training
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)  # [N, C, 4, 4]
            x = self.conv1(x, ws[:, 0], noise_mode=noise_mode, fused_modconv=fused_modconv)
        else:
            x = x.to(dtype)
            x = self.conv0(x, ws[:, 0], noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.conv1(x, ws[:, 1], noise_mode=noise_mode, fused_modconv=fused_modconv)
        y = self.torgb(x, ws[:, self.num_conv], fused_modconv=fused_modconv).to(self.torgb.weight.dtype)
        img = y if img is None else ops.upsample2d(img, self.resample_filter, up=2) + y  # [N, C_img, R, R]
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, use_fp16={self.use_fp16}"


class SynthesisNetwork(nn.Module):
    """Maps ``ws [N, num_ws, w_dim]`` to images, from a learned 4x4 constant up to ``img_resolution``.

    Args:
        w_dim: width of w.
        img_resolution: output resolution (power of two >= 4).
        img_channels: output channels.
        channel_base: channels at resolution r are ``min(channel_base // r, channel_max)``.
        channel_max: maximum channels.
        num_fp16_res: number of highest resolutions run in half precision on an accelerator.
        conv_clamp: activation clamp (256 when using fp16).
        mp_dtype: half-precision dtype, see :func:`compute_dtype`.
    """

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int = 3,
        channel_base: int = 16384,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: float | None = None,
        mp_dtype: str = "auto",
    ) -> None:
        super().__init__()
        log2 = _check_resolution("img_resolution", img_resolution, 4)
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.blocks = nn.ModuleList()
        for r in self.block_resolutions:
            self.blocks.append(
                SynthesisBlock(
                    channels[r // 2] if r > 4 else 0, channels[r], w_dim, r, img_channels,
                    use_fp16=r >= fp16_resolution, conv_clamp=conv_clamp, mp_dtype=mp_dtype,
                )
            )
        self.num_ws = sum(b.num_conv for b in self.blocks) + self.blocks[-1].num_torgb

    def forward(
        self, ws: torch.Tensor, noise_mode: str = "random", fused_modconv: bool | None = None
    ) -> torch.Tensor:  # [N, num_ws, w_dim] -> [N, C, R, R]
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws: expected [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        x = img = None
        idx = 0
        for block in self.blocks:
            x, img = block(x, img, ws.narrow(1, idx, block.num_conv + block.num_torgb), noise_mode, fused_modconv)
            idx += block.num_conv
        return img

    def extra_repr(self) -> str:
        return f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}"


class Generator(nn.Module):
    """Class-conditional StyleGAN2 generator.

    Args:
        z_dim: width of z.
        w_dim: width of w.
        num_classes: number of classes (required).
        img_resolution: output resolution (required).
        img_channels: output channels.
        mapping_layers: depth of the mapping network.
        channel_base: see :class:`SynthesisNetwork`.
        channel_max: see :class:`SynthesisNetwork`.
        num_fp16_res: see :class:`SynthesisNetwork`.
        conv_clamp: see :class:`SynthesisNetwork`.
        embed_features: width of the class embedding (default ``w_dim``).
        mapping_lr_multiplier: learning-rate multiplier of the mapping MLP.
        w_avg_beta: decay of the tracked means of w.
        mp_dtype: half-precision dtype on accelerators, see :func:`compute_dtype`.
    """

    def __init__(
        self,
        z_dim: int = 512,
        w_dim: int = 512,
        num_classes: int | None = None,
        img_resolution: int | None = None,
        img_channels: int = 3,
        mapping_layers: int = 8,
        channel_base: int = 16384,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: float | None = None,
        embed_features: int | None = None,
        mapping_lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.998,
        mp_dtype: str = "auto",
    ) -> None:
        super().__init__()
        if num_classes is None or img_resolution is None:
            raise ValueError("Generator: num_classes and img_resolution are required")
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.num_classes = num_classes
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(
            w_dim, img_resolution, img_channels, channel_base=channel_base, channel_max=channel_max,
            num_fp16_res=num_fp16_res, conv_clamp=conv_clamp, mp_dtype=mp_dtype,
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim, num_classes, w_dim, self.num_ws, num_layers=mapping_layers, embed_features=embed_features,
            lr_multiplier=mapping_lr_multiplier, w_avg_beta=w_avg_beta,
        )

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
        update_emas: bool = False,
        fused_modconv: bool | None = None,
    ) -> torch.Tensor:
        """Generates images ``[N, C, R, R]`` (roughly in [-1, 1]) for ``z [N, z_dim]`` and class indices ``c [N]``."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)

    @staticmethod
    def mix_styles(ws1: torch.Tensor, ws2: torch.Tensor, cutoff: int | torch.Tensor) -> torch.Tensor:
        """Style mixing: ws from ``ws1`` before ``cutoff`` and from ``ws2`` from ``cutoff`` on.

        Typical use in training (StyleGAN2 mixing regularisation, conditional): map a second latent with the same
        labels, ``ws2 = G.mapping(z2, c)``, draw ``cutoff`` in ``[1, G.num_ws)`` with probability 0.9 (else
        ``G.num_ws``), and synthesise ``G.synthesis(G.mix_styles(ws, ws2, cutoff))``.

        Args:
            ws1: ``[N, num_ws, w_dim]`` (coarse styles).
            ws2: ``[N, num_ws, w_dim]`` (fine styles).
            cutoff: an int, or a ``[N]`` tensor of per-sample cutoffs (``num_ws`` = no mixing for that sample).

        Returns:
            ``[N, num_ws, w_dim]``.
        """
        if ws1.shape != ws2.shape:
            raise ValueError(f"mix_styles: ws1 {tuple(ws1.shape)} and ws2 {tuple(ws2.shape)} differ")
        if isinstance(cutoff, torch.Tensor):
            idx = torch.arange(ws1.shape[1], device=ws1.device)
            take_second = idx.unsqueeze(0) >= cutoff.to(ws1.device).reshape(-1, 1)  # [N, num_ws]
            return torch.where(take_second.unsqueeze(2), ws2, ws1)
        return torch.cat([ws1[:, :cutoff], ws2[:, cutoff:]], dim=1)

    def extra_repr(self) -> str:
        return (
            f"z_dim={self.z_dim}, w_dim={self.w_dim}, num_classes={self.num_classes}, "
            f"img_resolution={self.img_resolution}, num_ws={self.num_ws}"
        )


# ----------------------------------------------------------------------------------------------------------------
# Discriminator


class DiscriminatorBlock(nn.Module):
    """Residual block that halves the resolution; the first block also holds fromRGB.

    ``out = (skip(x) + conv1(conv0(x))) / sqrt(2)`` where skip is a 1x1 downsampling conv.
    """

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        use_fp16: bool = False,
        conv_clamp: float | None = None,
        mp_dtype: str = "auto",
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.use_fp16 = use_fp16
        self.mp_dtype = _check_mp_dtype(mp_dtype)
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:  # -> [N, C_out, R/2, R/2]
        dtype = compute_dtype(self.use_fp16, img.device, self.mp_dtype, default=self.conv0.weight.dtype)
        x = self.fromrgb(img.to(dtype)) if self.in_channels == 0 else x.to(dtype)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, use_fp16={self.use_fp16}"


class Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator with an adversarial logit and a D2D-CE embedding head.

    Args:
        num_classes: number of classes (size of ``.proxies``).
        img_resolution: input resolution (power of two >= 8).
        img_channels: input channels.
        channel_base: channels at resolution r are ``min(channel_base // r, channel_max)``.
        channel_max: maximum channels.
        num_fp16_res: number of highest resolutions run in half precision on an accelerator.
        conv_clamp: activation clamp.
        mbstd_group_size: group size of the minibatch standard deviation.
        mbstd_num_channels: number of minibatch-std channels.
        embed_dim: width of the D2D-CE embedding and of the class proxies.
        mp_dtype: half-precision dtype on accelerators, see :func:`compute_dtype`.
    """

    #: Tensors whose size depends on the number of classes (re-initialised by :func:`load_pretrained`).
    class_embedding_tensors = ("proxies.weight",)

    def __init__(
        self,
        num_classes: int,
        img_resolution: int,
        img_channels: int = 3,
        channel_base: int = 16384,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: float | None = None,
        mbstd_group_size: int = 4,
        mbstd_num_channels: int = 1,
        embed_dim: int = 512,
        mp_dtype: str = "auto",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        log2 = _check_resolution("img_resolution", img_resolution, 8)
        self.num_classes = num_classes
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.embed_dim = embed_dim
        self.block_resolutions = [2**i for i in range(log2, 2, -1)]  # R, R/2, ..., 8
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.blocks = nn.ModuleList()
        for i, r in enumerate(self.block_resolutions):
            self.blocks.append(
                DiscriminatorBlock(
                    0 if i == 0 else channels[r], channels[r], channels[r // 2], r, img_channels,
                    use_fp16=r >= fp16_resolution, conv_clamp=conv_clamp, mp_dtype=mp_dtype,
                )
            )
        c4 = channels[4]
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels)
        self.conv = Conv2dLayer(c4 + mbstd_num_channels, c4, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(c4 * 4 * 4, c4, activation="lrelu")
        self.out = FullyConnectedLayer(c4, 1)
        self.embed = FullyConnectedLayer(c4, embed_dim)
        self.proxies = nn.Embedding(num_classes, embed_dim)

    def forward(self, img: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores images ``[N, C, R, R]`` with class indices ``c [N]``.

        Returns:
            ``(logits [N], embed [N, E], proxy [N, E])``: the unconditional adversarial logit, the L2-normalised
            sample embedding and the L2-normalised proxies of the classes ``c``.
        """
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if img.ndim != 4 or tuple(img.shape[1:]) != expected:
            raise ValueError(f"img: expected [N, {', '.join(map(str, expected))}], got {tuple(img.shape)}")
        _check_labels(c, img.shape[0], self.num_classes)
        x = None
        for block in self.blocks:
            x = block(x, img)
        x = self.mbstd(x.to(self.conv.weight.dtype))  # [N, C4 + F, 4, 4]
        x = self.fc(self.conv(x).flatten(1))  # [N, C4]
        logits = self.out(x).squeeze(1)  # [N]
        embed = F.normalize(self.embed(x), dim=1)  # [N, E]
        proxy = F.normalize(self.proxies(c.long()), dim=1)  # [N, E]
        return logits, embed, proxy

    @torch.no_grad()
    def reset_class_embeddings(self) -> None:
        """Re-initialises the class proxies."""
        self.proxies.weight.normal_()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, img_resolution={self.img_resolution}, embed_dim={self.embed_dim}"


# ----------------------------------------------------------------------------------------------------------------
# Freezing and transfer


def _freeze_blocks(blocks: nn.ModuleList, k: int, prefix: str, what: str) -> list[str]:
    if not isinstance(k, int) or not 0 <= k <= len(blocks):
        raise ValueError(f"{what}: expected an int in [0, {len(blocks)}] (number of blocks), got {k!r}")
    names = []
    for i in range(k):
        for name, p in blocks[i].named_parameters():
            p.requires_grad_(False)
            names.append(f"{prefix}{i}.{name}")
    return names


def freeze_discriminator(D: Discriminator, k: int) -> list[str]:
    """Freezes the first ``k`` discriminator blocks from the image input (block 1 = fromRGB + highest resolution).

    Returns:
        Names (as in ``D.state_dict()``) of the parameters now with ``requires_grad=False``.
    """
    return _freeze_blocks(D.blocks, k, "blocks.", "freeze_d")


def freeze_generator(G: Generator, k: int) -> list[str]:
    """Freezes the first ``k`` synthesis blocks from 4x4 (block 1 = const + 4x4); the mapping stays trainable.

    Returns:
        Names (as in ``G.state_dict()``) of the parameters now with ``requires_grad=False``.
    """
    return _freeze_blocks(G.synthesis.blocks, k, "synthesis.blocks.", "freeze_g")


def class_embedding_names(module: nn.Module) -> list[str]:
    """Names in ``module.state_dict()`` of the tensors whose size depends on the number of classes."""
    names = []
    for prefix, sub in module.named_modules():
        for t in getattr(type(sub), "class_embedding_tensors", ()):
            names.append(f"{prefix}.{t}" if prefix else t)
    return names


def load_pretrained(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    reinit_class_embeddings: bool | None = None,
) -> dict:
    """Loads a checkpoint into ``module`` (a Generator or Discriminator), re-initialising the class embeddings.

    Every tensor must be present on both sides with the same shape, except the class-embedding tensors
    (:func:`class_embedding_names`: the mapping's label embedding weight and per-class ``w_avg_c``, the
    discriminator's proxies). Those are re-initialised (``w_avg_c`` starts at the loaded global ``w_avg``) when
    ``reinit_class_embeddings`` is True, or when it is None and the class counts differ; otherwise loaded.

    Args:
        module: target network.
        state_dict: source tensors (e.g. ``checkpoint['G']``).
        reinit_class_embeddings: True: always re-initialise; False: always load (class counts must match);
            None: re-initialise exactly when the class counts differ.

    Returns:
        ``{'loaded': [...], 'skipped': [...], 'reinitialised': [...]}``: target names copied from the checkpoint,
        checkpoint names not used, and target names re-initialised.

    Raises:
        ValueError: a tensor is missing on either side or has a different shape (named in the message).
    """
    target = module.state_dict()
    class_names = set(class_embedding_names(module))
    missing = sorted(set(target) - set(state_dict) - (class_names if reinit_class_embeddings is not False else set()))
    unexpected = sorted(set(state_dict) - set(target))
    if missing or unexpected:
        raise ValueError(
            f"load_pretrained: checkpoint does not match {type(module).__name__}: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    class_mismatch = [n for n in sorted(class_names) if n not in state_dict or state_dict[n].shape != target[n].shape]
    if reinit_class_embeddings is None:
        reinit = bool(class_mismatch)
    elif reinit_class_embeddings is False and class_mismatch:
        n = class_mismatch[0]
        raise ValueError(
            f"load_pretrained: class-embedding tensor {n!r} has shape {tuple(state_dict[n].shape)} in the checkpoint "
            f"but {tuple(target[n].shape)} in the model (different class count); pass reinit_class_embeddings=True"
        )
    else:
        reinit = bool(reinit_class_embeddings)
    reinit_names = class_names if reinit else set()

    for name, t in target.items():
        if name in reinit_names:
            continue
        if state_dict[name].shape != t.shape:
            raise ValueError(
                f"load_pretrained: tensor {name!r} has shape {tuple(state_dict[name].shape)} in the checkpoint but "
                f"{tuple(t.shape)} in the model (different architecture or resolution?)"
            )
    loaded = []
    with torch.no_grad():
        for name, t in target.items():
            if name not in reinit_names:
                t.copy_(state_dict[name])  # state_dict() tensors share storage with the module
                loaded.append(name)
        if reinit:
            for sub in module.modules():
                if getattr(type(sub), "class_embedding_tensors", ()):
                    sub.reset_class_embeddings()
    skipped = sorted(n for n in state_dict if n in reinit_names)
    return {"loaded": loaded, "skipped": skipped, "reinitialised": sorted(reinit_names)}


@torch.no_grad()
def class_centres(D: Discriminator, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  batch_size: int = 256) -> torch.Tensor:
    """Mean L2-normalised D2D-CE embedding of each class's images, normalised: ``[num_classes, E]``.

    Args:
        D: a discriminator (its embedding head is used; labels are not).
        images: ``[N, C, R, R]`` in [-1, 1].
        labels: ``[N]`` class indices.
        num_classes: number of classes (every one must have an image).
    """
    D_labels = torch.zeros(min(batch_size, len(images)), dtype=torch.int64, device=images.device)
    embeds = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        _, e, _ = D(x, D_labels[: len(x)])
        embeds.append(e.float())
    embed = torch.cat(embeds)  # [N, E]
    centres = []
    for k in range(num_classes):
        sel = labels == k
        if not bool(sel.any()):
            raise ValueError(f"class_centres: class {k} has no image")
        centres.append(F.normalize(embed[sel].mean(0), dim=0))
    return torch.stack(centres)  # [K, E]


def match_classes(similarity: torch.Tensor) -> list[int]:
    """For each target class (row), the source class (column) it starts from.

    With no more target than source classes, the one-to-one assignment of largest total similarity (Hungarian
    method), so no two target classes start from the same source class; otherwise each target class takes its
    most similar source class.
    """
    from scipy.optimize import linear_sum_assignment

    sim = similarity.detach().double().cpu().numpy()
    if sim.shape[0] <= sim.shape[1]:
        rows, cols = linear_sum_assignment(sim, maximize=True)
        return [int(c) for _, c in sorted(zip(rows, cols))]
    return [int(c) for c in sim.argmax(axis=1)]


@torch.no_grad()
def init_class_embeddings_from_base(G: Generator, D: Discriminator, base_G: Generator, base_D: Discriminator,
                                    real: torch.Tensor, real_labels: torch.Tensor, samples_per_class: int = 64,
                                    seed: int = 0) -> dict:
    """Starts each new class of a fine-tuned G and D from where the base networks already are, instead of at random.

    A freshly drawn class embedding makes the pretrained mapping network produce whatever base appearance happens to
    lie there, and fine-tuning rarely moves it across to the right one: target classes come out swapped (a
    generator asked for class A draws class B). Instead, in the base discriminator's D2D-CE embedding space:

    * the target classes' real images give one centre per target class;
    * the base generator's images of each base class give one centre per base class;
    * each target class is matched to a base class (:func:`match_classes` on the cosine similarities of the
      centres) and starts with that base class's label embedding and mean ``w`` (so it draws the most similar base
      appearance, and no two target classes draw the same one when there are enough base classes);
    * D's proxy of each target class starts at that class's real centre, so D2D-CE pulls each class's fakes toward
      its own real images from the first step.

    ``G``/``D`` must already hold the base weights for every tensor but the class embeddings (see
    :func:`load_pretrained`). Rescales for the different class counts so that the embedding of target class t equals
    the base embedding of its matched class exactly.

    Args:
        G, D: the networks to fine-tune (target classes).
        base_G, base_D: the base networks (base classes), e.g. the base checkpoint's ``G_ema`` and ``D``.
        real: target training images ``[N, 3, R, R]`` in [-1, 1] (a few per class suffice).
        real_labels: their classes ``[N]``.
        samples_per_class: base images generated per base class for its centre.
        seed: latent seed of those images.

    Returns:
        ``{'method': 'match', 'similarity': [[...]] (target × base), 'match': [base index per target class]}``.
    """
    device = real.device
    K_t, K_b = G.num_classes, base_G.num_classes
    target = class_centres(base_D, real, real_labels, K_t)  # [K_t, E]
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn([samples_per_class * K_b, base_G.z_dim], generator=gen).to(device)
    c = torch.arange(K_b, device=device).repeat_interleave(samples_per_class)
    fakes = torch.cat([base_G(z[i:i + 256], c[i:i + 256], noise_mode="const") for i in range(0, len(z), 256)])
    source = class_centres(base_D, fakes, c, K_b)  # [K_b, E]
    similarity = target @ source.t()  # [K_t, K_b]
    match = match_classes(similarity)
    idx = torch.as_tensor(match, device=device)
    emb, base_emb = G.mapping.embed, base_G.mapping.embed
    emb.weight.copy_(base_emb.weight[:, idx] * (base_emb.weight_gain / emb.weight_gain))
    if emb.bias is not None:
        emb.bias.copy_(base_emb.bias)
    G.mapping.w_avg_c.copy_(base_G.mapping.w_avg_c[idx])
    scale = base_D.proxies.weight.norm(dim=1).mean()
    D.proxies.weight.copy_(target.to(D.proxies.weight.dtype) * scale)
    return {"method": "match", "similarity": similarity.cpu().tolist(), "match": match}


@torch.no_grad()
def init_class_embeddings_neutral(G: Generator, base_G: Generator, noise: float = 0.01, seed: int = 0) -> dict:
    """Starts every new class of a fine-tuned G at the base's class-neutral centre, so classes separate by label.

    Each target class gets the same label embedding, the mean of the base classes' embeddings (plus ``noise`` ×
    its scale of Gaussian noise to break the symmetry), and the global mean ``w`` as its class mean. The fine-tuned
    generator then starts without any class structure, as a generator trained from scratch does, and the
    conditional loss alone decides which appearance each class takes: no base appearance carries a target label
    into training.

    Returns:
        ``{'method': 'neutral', 'noise': noise}``.
    """
    emb, base_emb = G.mapping.embed, base_G.mapping.embed
    centre = base_emb.weight.mean(dim=1, keepdim=True) * (base_emb.weight_gain / emb.weight_gain)  # [E, 1]
    gen = torch.Generator().manual_seed(int(seed))
    jitter = torch.randn(emb.weight.shape, generator=gen).to(emb.weight) * noise * centre.abs().mean()
    emb.weight.copy_(centre.expand_as(emb.weight) + jitter)
    if emb.bias is not None:
        emb.bias.copy_(base_emb.bias)
    G.mapping.w_avg_c.copy_(base_G.mapping.w_avg.unsqueeze(0).expand_as(G.mapping.w_avg_c))
    return {"method": "neutral", "noise": noise}


@torch.no_grad()
def discriminator_view(G: Generator, D: Discriminator, per_class: int = 64, seed: int = 0,
                       batch_size: int = 256) -> torch.Tensor:
    """How D's conditional head sees G's classes: ``[K, K]`` counts, row = class asked for, column = the class whose
    proxy is nearest to the image's D2D-CE embedding (D's own label for it)."""
    K = G.num_classes
    device = next(G.parameters()).device
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn([per_class * K, G.z_dim], generator=gen).to(device)
    c = torch.arange(K, device=device).repeat_interleave(per_class)
    proxies = F.normalize(D.proxies.weight.float(), dim=1)  # [K, E]
    seen = []
    for i in range(0, len(z), batch_size):
        img = G(z[i:i + batch_size], c[i:i + batch_size], noise_mode="const")
        _, embed, _ = D(img, c[i:i + batch_size])
        seen.append((embed.float() @ proxies.t()).argmax(1))
    counts = torch.zeros(K, K, dtype=torch.int64, device=device)
    counts.index_put_((c, torch.cat(seen)), torch.ones_like(c), accumulate=True)
    return counts.cpu()


@torch.no_grad()
def discriminator_real_view(D: Discriminator, real: torch.Tensor, labels: torch.Tensor, num_classes: int,
                            batch_size: int = 256) -> torch.Tensor:
    """D's conditional head on real images: ``[K, K]`` counts, row = true class, column = nearest proxy."""
    proxies = F.normalize(D.proxies.weight.float(), dim=1)
    seen = []
    for i in range(0, len(real), batch_size):
        _, embed, _ = D(real[i:i + batch_size], labels[i:i + batch_size])
        seen.append((embed.float() @ proxies.t()).argmax(1))
    counts = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=real.device)
    counts.index_put_((labels, torch.cat(seen)), torch.ones_like(labels), accumulate=True)
    return counts.cpu()


def realignment(view: torch.Tensor, min_gain: float = 0.2, real_view: torch.Tensor | None = None,
                min_real_recall: float = 0.75) -> list[int] | None:
    """The relabelling of G's class embeddings that D's view asks for, or None.

    ``view[r, s]``: images of embedding r that D labels s. The one-to-one assignment of embeddings to classes with
    the most agreement (Hungarian method) is returned as ``perm`` (class s takes embedding ``perm[s]``) when it
    raises the agreement by at least ``min_gain`` (a fraction of all images) over keeping every embedding where it
    is, and when D can tell the classes it would move apart on real images (``real_view``, rows true class: the
    recall of each moved class at least ``min_real_recall``); otherwise None. The second condition keeps a D that
    still confuses two similar classes from relabelling a generator that draws them right.
    """
    from scipy.optimize import linear_sum_assignment

    cm = view.double().numpy()
    rows, cols = linear_sum_assignment(cm, maximize=True)
    gain = (cm[rows, cols].sum() - np.trace(cm)) / max(cm.sum(), 1.0)
    if gain < min_gain:
        return None
    perm = [0] * len(rows)
    for r, s in zip(rows, cols):
        perm[int(s)] = int(r)
    if real_view is not None:
        real = real_view.double().numpy()
        recall = np.diag(real) / np.maximum(real.sum(axis=1), 1.0)
        moved = [s for s, r in enumerate(perm) if r != s]
        if moved and recall[moved].min() < min_real_recall:
            return None
    return perm


@torch.no_grad()
def permute_classes(G: Generator, perm: Sequence[int], optimizer: torch.optim.Optimizer | None = None) -> None:
    """Relabels G's classes: class s takes what class ``perm[s]`` had (label embedding, class mean of w, and the
    optimiser's moments of the embedding), so each class keeps drawing what it drew, under its new label."""
    idx = torch.as_tensor(list(perm), device=G.mapping.embed.weight.device)
    weight = G.mapping.embed.weight
    state = optimizer.state.get(weight, {}) if optimizer is not None else {}
    for t in [weight, *(v for v in state.values() if isinstance(v, torch.Tensor) and v.shape == weight.shape)]:
        t.copy_(t[:, idx])
    G.mapping.w_avg_c.copy_(G.mapping.w_avg_c[idx])


# ----------------------------------------------------------------------------------------------------------------
# Profiles


_PROFILES = {
    # CPU demo: tiny networks that train a few hundred iterations a minute on two cores.
    "demo": dict(
        resolution=32,
        G=dict(z_dim=64, w_dim=64, mapping_layers=2, channel_base=1024, channel_max=64, num_fp16_res=0,
               conv_clamp=None),
        D=dict(channel_base=1024, channel_max=64, num_fp16_res=0, conv_clamp=None, mbstd_group_size=4, embed_dim=64),
    ),
    # One GPU, 64 px, a whole study in minutes.
    "reduced": dict(
        resolution=64,
        G=dict(z_dim=256, w_dim=256, mapping_layers=4, channel_base=8192, channel_max=256, num_fp16_res=2,
               conv_clamp=256),
        D=dict(channel_base=8192, channel_max=256, num_fp16_res=2, conv_clamp=256, mbstd_group_size=4,
               embed_dim=256),
    ),
    # StyleGAN2-ADA's 'paper256' configuration (fmaps 0.5 -> channel base 16384, max 512, 8 mapping layers,
    # minibatch-std groups of 8) with mixed precision on the four highest resolutions.
    "paper": dict(
        resolution=256,
        G=dict(z_dim=512, w_dim=512, mapping_layers=8, channel_base=16384, channel_max=512, num_fp16_res=4,
               conv_clamp=256),
        D=dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256, mbstd_group_size=8,
               embed_dim=512),
    ),
}


def network_kwargs(profile: str, resolution: int | None = None) -> dict:
    """Constructor arguments of G and D for a profile, without ``num_classes`` (it comes from the dataset).

    Args:
        profile: ``'demo'`` (32 px, tiny), ``'reduced'`` (64 px) or ``'paper'`` (256 px, StyleGAN2 'paper256').
        resolution: override of the profile's resolution (power of two >= 8).

    Returns:
        ``{'G': {...}, 'D': {...}}``; use as ``Generator(num_classes=K, **kw['G'])`` and
        ``Discriminator(num_classes=K, **kw['D'])``.
    """
    if profile not in _PROFILES:
        raise ValueError(f"profile: expected one of {sorted(_PROFILES)}, got {profile!r}")
    spec = _PROFILES[profile]
    res = spec["resolution"] if resolution is None else resolution
    _check_resolution("resolution", res, 8)
    return {
        "G": dict(spec["G"], img_resolution=res, img_channels=3),
        "D": dict(spec["D"], img_resolution=res, img_channels=3),
    }
