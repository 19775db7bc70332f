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

Block order and freezing (contract: ``freeze_d=k`` and ``freeze_g=k`` count blocks this way):
``Discriminator.blocks[0]`` is fromRGB + the highest-resolution block ("block 1"), ``SynthesisNetwork.blocks[0]`` is the
4x4 block ("block 1").

Mixed precision: blocks at the ``num_fp16_res`` highest resolutions run in half precision when the tensors live on
an accelerator (fp16 by default, bf16 on request) and always in fp32 on the CPU; the decision is made from the
device of the input at run time. ``conv_clamp`` bounds the activations so that fp16 cannot overflow.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from histlib import ops
from histlib.gan.layers import (
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


def _channels_and_fp16(img_resolution: int, channel_base: int, channel_max: int,
                       num_fp16_res: int) -> tuple[dict[int, int], int]:
    """The rule G and D share: ``{resolution: channels}`` for 4 … ``img_resolution``, and the lowest resolution whose
    blocks run in half precision (the ``num_fp16_res`` highest ones, never below 8)."""
    log2 = int(math.log2(img_resolution))
    channels = {2**i: min(channel_base // 2**i, channel_max) for i in range(2, log2 + 1)}
    return channels, max(2 ** (log2 + 1 - num_fp16_res), 8)


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
        self.z_dim, self.num_classes, self.w_dim, self.num_ws = z_dim, num_classes, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
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

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 use_fp16: bool = False, conv_clamp: float | None = None, mp_dtype: str = "auto") -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.resolution = in_channels, out_channels, resolution
        self.use_fp16, self.mp_dtype = use_fp16, _check_mp_dtype(mp_dtype)
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
        channels, fp16_resolution = _channels_and_fp16(img_resolution, channel_base, channel_max, num_fp16_res)
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

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int, img_channels: int,
                 use_fp16: bool = False, conv_clamp: float | None = None, mp_dtype: str = "auto") -> None:
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.use_fp16, self.mp_dtype = use_fp16, _check_mp_dtype(mp_dtype)
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


class ProjectionHead(nn.Module):
    """Class-conditional term of the adversarial logit (projection discriminator, Miyato & Koyama 2018).

    ``<W x, m(e_c)> / sqrt(dim)`` for D's features ``x`` and a learned class embedding ``e_c`` normalised to unit
    second moment, as StyleGAN2-ADA conditions its discriminator. ``m`` is the identity (``layers`` 0) or, as there,
    ``layers`` leaky-ReLU dense layers at a learning-rate multiplier of 0.01: a slowly learned map under which the
    classes' embeddings start closer together than the nearly orthogonal random draws themselves.
    Unlike D2D-CE it scores whether an image fits its label without pulling a class's images together.
    """

    #: Tensors whose size depends on the number of classes (re-initialised by :func:`load_pretrained`).
    class_embedding_tensors = ("cmap.weight",)

    def __init__(self, num_classes: int, in_features: int, dim: int, layers: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.proj = FullyConnectedLayer(in_features, dim)
        self.cmap = nn.Embedding(num_classes, dim)
        nn.init.normal_(self.cmap.weight)
        self.mlp = nn.Sequential(*(FullyConnectedLayer(dim, dim, activation="lrelu", lr_multiplier=0.01)
                                   for _ in range(layers)))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # -> [N]
        cmap = self.mlp(normalize_2nd_moment(self.cmap(c.long()).to(x.dtype)))  # [N, dim]
        return (self.proj(x) * cmap).sum(dim=1) / math.sqrt(self.dim)

    @torch.no_grad()
    def reset_class_embeddings(self) -> None:
        """Re-initialises the class embedding."""
        self.cmap.weight.normal_()


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
        cond_projection: add a projection term (:class:`ProjectionHead`) to the adversarial logit, so that the
            logit itself depends on the class (as StyleGAN2-ADA's); without it the logit is unconditional and the
            class enters only through D2D-CE.
        uncond_logit: keep the unconditional term of the adversarial logit (default). ``False`` needs
            ``cond_projection`` and makes the logit the projection term alone, as StyleGAN2-ADA's discriminator
            scores an image only against its class.
        projection_layers: dense layers between the projection head's class embedding and the logit (0: none;
            StyleGAN2-ADA has 8 at a learning-rate multiplier of 0.01), see :class:`ProjectionHead`.
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
        cond_projection: bool = False,
        uncond_logit: bool = True,
        projection_layers: int = 0,
        mp_dtype: str = "auto",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        if not isinstance(cond_projection, bool):
            raise ValueError(f"cond_projection: expected true or false, got {cond_projection!r}")
        if not isinstance(uncond_logit, bool):
            raise ValueError(f"uncond_logit: expected true or false, got {uncond_logit!r}")
        if not uncond_logit and not cond_projection:
            raise ValueError("uncond_logit=False: the logit would have no term left; set cond_projection=True "
                             "(the logit is then the projection term alone)")
        if isinstance(projection_layers, bool) or not isinstance(projection_layers, int) or projection_layers < 0:
            raise ValueError(f"projection_layers: expected an integer >= 0, got {projection_layers!r}")
        if projection_layers and not cond_projection:
            raise ValueError("projection_layers: only with cond_projection=True (they map its class embedding)")
        log2 = _check_resolution("img_resolution", img_resolution, 8)
        self.num_classes = num_classes
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.embed_dim = embed_dim
        self.block_resolutions = [2**i for i in range(log2, 2, -1)]  # R, R/2, ..., 8
        channels, fp16_resolution = _channels_and_fp16(img_resolution, channel_base, channel_max, num_fp16_res)
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
        self.out = FullyConnectedLayer(c4, 1) if uncond_logit else None
        self.embed = FullyConnectedLayer(c4, embed_dim)
        self.proxies = nn.Embedding(num_classes, embed_dim)
        self.projection = ProjectionHead(num_classes, c4, c4, projection_layers) if cond_projection else None

    def forward(self, img: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores images ``[N, C, R, R]`` with class indices ``c [N]``.

        Returns:
            ``(logits [N], embed [N, E], proxy [N, E])``: the adversarial logit (unconditional unless
            ``cond_projection``), the L2-normalised sample embedding and the L2-normalised proxies of the classes ``c``.
        """
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if img.ndim != 4 or tuple(img.shape[1:]) != expected:
            raise ValueError(f"img: expected [N, {', '.join(map(str, expected))}], got {tuple(img.shape)}")
        _check_labels(c, img.shape[0], self.num_classes)
        x = self.features(img)  # [N, C4]
        logits = self.out(x).squeeze(1) if self.out is not None else 0  # [N]; uncond_logit=False: the projection alone
        if self.projection is not None:
            logits = logits + self.projection(x, c)
        embed = F.normalize(self.embed(x), dim=1)  # [N, E]
        proxy = F.normalize(self.proxies(c.long()), dim=1)  # [N, E]
        return logits, embed, proxy

    def features(self, img: torch.Tensor) -> torch.Tensor:
        """The features ``[N, C4]`` both heads read (the adversarial logit and the D2D-CE embedding); no class."""
        x = None
        for block in self.blocks:
            x = block(x, img)
        x = self.mbstd(x.to(self.conv.weight.dtype))  # [N, C4 + F, 4, 4]
        return self.fc(self.conv(x).flatten(1))

    @torch.no_grad()
    def reset_class_embeddings(self) -> None:
        """Re-initialises the class proxies."""
        self.proxies.weight.normal_()

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, img_resolution={self.img_resolution}, embed_dim={self.embed_dim}, "
                f"cond_projection={self.projection is not None}")
