r"""Losses of the conditional StyleGAN2: non-saturating logistic, lazy R1, lazy path length and D2D-CE.

Written from the papers:

* Karras et al. 2020, "Analyzing and improving the image quality of StyleGAN" (StyleGAN2): non-saturating logistic
  loss, R1 on real images, path-length regularisation, both evaluated lazily (every k minibatches, scaled by k).
* Kang et al. 2021, "Rebooting ACGAN: auxiliary classifier GANs with stable training" (ReACGAN): the
  data-to-data cross-entropy (D2D-CE) on L2-normalised embeddings and class proxies,

  .. math::

      L = -\frac{1}{N}\sum_i \log \frac{e^{P_i}}{e^{P_i} + \sum_{j: y_j \ne y_i} e^{Q_{ij}}},\quad
      P_i = [f_i^\top v_{y_i} - m_p]_- / \tau,\quad Q_{ij} = [f_i^\top f_j - m_n]_+ / \tau

  with :math:`[x]_- = \min(x, 0)` and :math:`[x]_+ = \max(x, 0)`: positives already closer to their proxy than
  :math:`m_p` and negatives already farther than :math:`m_n` stop contributing gradient, and samples of the same
  class (false negatives) are left out of the denominator. The authors' released code (PyTorch-StudioGAN,
  ``Data2DataCrossEntropyLoss``) fixes :math:`m_n = 1 - m_p` (it computes ``cos + m_p - 1``) and subtracts each
  row's maximum negative similarity from the negatives; :func:`d2d_ce_loss` follows it by default.
  Defaults τ = 0.25, m_p = 0.98 as the authors' StyleGAN2 + D2D-CE configurations at 32 px.

The functions return per-sample values (``[N]``) or scalars as documented; the training phases (``histlib.gan.phases``)
combines them with their weights and lazy-regularisation intervals.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------------
# Adversarial loss (non-saturating logistic)


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss ``softplus(-D(G(z)))`` per sample.

    Args:
        fake_logits: D's logits on generated images ``[N]``.

    Returns:
        ``[N]`` losses (take the mean).
    """
    return F.softplus(-fake_logits)


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminator loss ``softplus(D(G(z))) + softplus(-D(x))``, returned as its two parts.

    Args:
        real_logits: D's logits on (augmented) real images ``[N]``.
        fake_logits: D's logits on (augmented) generated images ``[M]``.

    Returns:
        ``(loss_real [N], loss_fake [M])``; the D loss is ``loss_real.mean() + loss_fake.mean()``.
    """
    return F.softplus(-real_logits), F.softplus(fake_logits)


# ----------------------------------------------------------------------------------------------------------------
# Lazy regularisers


def r1_penalty(real_img: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """Squared gradient norm ``‖∇_x D(x)‖²`` per real image, differentiable w.r.t. D's parameters.

    The R1 loss is ``γ/2 · penalty.mean()``; evaluated lazily every k D steps it is multiplied by k.

    Args:
        real_img: the (un-augmented) real batch ``[N, C, H, W]``, with ``requires_grad=True``, that produced
            ``real_logits``.
        real_logits: ``D(real_img)`` ``[N]``.

    Returns:
        ``[N]`` squared gradient norms.
    """
    if not real_img.requires_grad:
        raise ValueError("r1_penalty: real_img must have requires_grad=True before it goes through D")
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_img, create_graph=True)  # [N, C, H, W]
    return grad.float().square().sum(dim=[1, 2, 3])


def path_lengths(img: torch.Tensor, ws: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Path lengths ``‖J_w^T y‖₂`` of StyleGAN2's path-length regulariser, one per sample.

    ``y`` is Gaussian noise scaled by ``1/sqrt(H·W)`` (so the length does not depend on the resolution), ``J_w``
    the Jacobian of the image w.r.t. the intermediate latents; the norm is taken over ``w_dim`` and averaged over the
    ``num_ws`` copies of w.

    Args:
        img: images generated from ``ws`` ``[N, C, H, W]``.
        ws: the latents that produced ``img`` ``[N, num_ws, w_dim]`` (part of the graph).
        noise: the random image-space direction ``[N, C, H, W]`` (unscaled standard normal); drawn here when None.

    Returns:
        ``[N]`` path lengths, differentiable w.r.t. G's parameters.
    """
    if noise is None:
        noise = torch.randn_like(img)
    noise = noise.to(img.dtype) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)  # [N, num_ws, w_dim]
    return grad.float().square().sum(dim=2).mean(dim=1).sqrt()


class PathLengthRegularizer(torch.nn.Module):
    """Path-length penalty ``(‖J_w^T y‖ - a)²`` with ``a`` an exponential moving average of the lengths.

    The moving average is a buffer (``pl_mean``), so it is saved and restored with the module's ``state_dict``.

    Args:
        decay: EMA rate of ``a`` (StyleGAN2: 0.01).
    """

    def __init__(self, decay: float = 0.01):
        super().__init__()
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"PathLengthRegularizer: decay={decay} must be in (0, 1]")
        self.decay = float(decay)
        self.register_buffer("pl_mean", torch.zeros([]))

    def forward(self, img: torch.Tensor, ws: torch.Tensor, noise: torch.Tensor | None = None,
                batch_mean=None) -> torch.Tensor:
        """Penalty per sample ``[N]``; updates ``pl_mean`` with the batch mean of the lengths.

        Args:
            img: ``[N, C, H, W]`` generated from ``ws``.
            ws: ``[N, num_ws, w_dim]``.
            noise: optional ``[N, C, H, W]`` standard-normal direction (see :func:`path_lengths`).
            batch_mean: optional callable mapping the local mean length (0-d tensor) to the mean over all
                processes, so that every rank updates ``pl_mean`` identically under data parallelism.
        """
        lengths = path_lengths(img, ws, noise)  # [N]
        mean = lengths.detach().mean()
        if batch_mean is not None:
            mean = batch_mean(mean)
        with torch.no_grad():
            self.pl_mean.copy_(self.pl_mean.lerp(mean.to(self.pl_mean.dtype), self.decay))
        return (lengths - self.pl_mean).square()


# ----------------------------------------------------------------------------------------------------------------
# D2D-CE (ReACGAN)


def d2d_ce_loss(embed: torch.Tensor, proxy: torch.Tensor, labels: torch.Tensor, tau: float = 0.25,
                margin_pos: float = 0.98, margin_neg: float | None = None, row_max: bool = True,
                reduction: str = "mean") -> torch.Tensor:
    """Data-to-data cross-entropy of ReACGAN in the authors' released form (see the module docstring).

    Per sample ``i`` with ``a_i = [m_p - f_i·v_{y_i}]_+ / τ`` and ``s_ij = (f_i·f_j - m_n) / τ`` (``j ≠ i``)::

        L_i = a_i + log(exp(-a_i) + Σ_{j: y_j ≠ y_i} exp([s_ij]_+ - M_i)),   M_i = max_{j ≠ i} s_ij  (no gradient)

    ``M_i`` is the row maximum the released code subtracts from the negatives (``row_max``; it also rescales the
    negatives' weight against the positive term, so it is part of the loss's definition, not only a numerical
    guard); with ``row_max=False`` it is 0, the loss of the paper. The sum is evaluated as a log-sum-exp, so small
    ``τ`` cannot overflow. A sample with no negative in the batch contributes exactly 0.

    Args:
        embed: L2-normalised sample embeddings ``f`` ``[N, E]``.
        proxy: L2-normalised proxies of the samples' classes ``v_{y_i}`` ``[N, E]``.
        labels: class ids ``[N]`` (int64).
        tau: temperature τ > 0.
        margin_pos: m_p; positive similarities above it give no gradient (easy positives).
        margin_neg: m_n; negative similarities below it give no gradient (easy negatives). None = ``1 - m_p``,
            as in the released code (``cos + m_p - 1``).
        row_max: subtract the detached row maximum ``M_i`` from the negatives, as the released code does.
        reduction: ``'mean'`` (the loss), ``'sum'`` or ``'none'`` (``[N]`` per-sample terms).

    Returns:
        The loss (0-d) or ``[N]`` terms, in float32 (or float64 when the inputs are float64).
    """
    if embed.ndim != 2 or proxy.shape != embed.shape:
        raise ValueError(f"d2d_ce_loss: expected embed and proxy of the same shape [N, E], got "
                         f"{tuple(embed.shape)} and {tuple(proxy.shape)}")
    if labels.shape != embed.shape[:1]:
        raise ValueError(f"d2d_ce_loss: labels must have shape [{embed.shape[0]}], got {tuple(labels.shape)}")
    if tau <= 0:
        raise ValueError(f"d2d_ce_loss: tau={tau} must be positive")
    m_n = 1.0 - margin_pos if margin_neg is None else margin_neg
    dtype = torch.float64 if embed.dtype == torch.float64 else torch.float32
    f = embed.to(dtype)
    v = proxy.to(dtype)
    n = f.shape[0]
    attract = (margin_pos - (f * v).sum(dim=1)).clamp(min=0.0) / tau  # [N]
    sim = (f @ f.t() - m_n) / tau  # [N, N]
    eye = torch.eye(n, dtype=torch.bool, device=f.device)
    shift = torch.zeros(n, 1, dtype=dtype, device=f.device)
    if row_max and n > 1:
        shift = sim.detach().masked_fill(eye, float("-inf")).amax(dim=1, keepdim=True)  # [N, 1]
    neg = sim.clamp(min=0.0) - shift
    same = labels[:, None] == labels[None, :]  # [N, N]; includes the diagonal (a sample is not its own negative)
    neg = neg.masked_fill(same, float("-inf"))
    logits = torch.cat([-attract[:, None], neg], dim=1)  # [N, 1 + N]
    terms = attract + torch.logsumexp(logits, dim=1)  # [N]
    if reduction == "mean":
        return terms.mean()
    if reduction == "sum":
        return terms.sum()
    if reduction == "none":
        return terms
    raise ValueError(f"d2d_ce_loss: reduction={reduction!r}; expected 'mean', 'sum' or 'none'")


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenates ``x`` from all processes along dim 0; only this process's part keeps its gradient.

    Without an initialised process group (or with one process) returns ``x`` unchanged. The other ranks' parts are
    constants here; their own processes hold the gradient for them, so summing the per-rank gradients over ranks
    gives the gradient of a loss computed on the whole global batch.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def d2d_ce_loss_global(embed: torch.Tensor, proxy: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.Tensor:
    """D2D-CE over the global batch of all processes (data parallelism), as if one process held every sample.

    Embeddings, proxies and labels are gathered (:func:`gather_with_grad`), so every sample's negatives come from
    the whole global batch. The value is the global-batch loss on every rank, and the gradient on each rank covers
    the local samples' part of it; multiply by the world size before gradients are *averaged* over ranks (or sum
    them) to obtain the global gradient. With one process this is :func:`d2d_ce_loss`.

    Args:
        embed, proxy, labels: this process's ``[n, E]``, ``[n, E]``, ``[n]``.
        **kwargs: ``tau``, ``margin_pos``, ``margin_neg`` of :func:`d2d_ce_loss`.
    """
    return d2d_ce_loss(gather_with_grad(embed), gather_with_grad(proxy), gather_with_grad(labels), **kwargs)
