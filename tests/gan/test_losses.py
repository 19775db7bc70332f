"""histlib.gan.losses: adversarial losses, lazy regularisers and D2D-CE against independent closed forms."""

import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from histlib.gan import losses

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------------
# D2D-CE


def d2d_closed_form(f, v, y, tau, m_p, m_n=None, row_max=True):
    """The released ReACGAN loss (PyTorch-StudioGAN ``Data2DataCrossEntropyLoss``) term by term, float64 loops.

    sim_ij = (cos(f_i, f_j) - m_n) / tau for j != i, with m_n = 1 - m_p unless given; the negatives are
    exp(relu(sim_ij) - max_j sim_ij); the positive term is relu((m_p - cos(f_i, v_i)) / tau);
    L_i = pos_i + log(exp(-pos_i) + sum over j of another class of the negatives).
    """
    f = np.asarray(f, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    m_n = 1.0 - m_p if m_n is None else m_n
    n = len(y)
    total = 0.0
    for i in range(n):
        sims = [(float(f[i] @ f[j]) - m_n) / tau for j in range(n) if j != i]
        top = max(sims) if (row_max and sims) else 0.0
        pos = max((m_p - float(f[i] @ v[i])) / tau, 0.0)
        acc = math.exp(-pos)
        for j in range(n):
            if j != i and y[j] != y[i]:
                acc += math.exp(max((float(f[i] @ f[j]) - m_n) / tau, 0.0) - top)
        total += pos + math.log(acc)
    return total / n


def random_unit(n, e, gen):
    x = torch.randn(n, e, generator=gen, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("tau,m_p,m_n,row_max", [(0.25, 0.98, None, True), (0.5, 0.95, None, True),
                                                 (0.5, 0.98, 0.0, False), (0.25, 0.3, -0.2, True),
                                                 (1.0, 0.0, 0.4, False)])
def test_d2d_matches_closed_form(tau, m_p, m_n, row_max):
    gen = torch.Generator().manual_seed(1)
    # class 3 appears once, class 0 several times
    y = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 1, 0])
    f = random_unit(len(y), 6, gen)
    proxies = random_unit(4, 6, gen)
    # pull some embeddings toward their proxy so that the positive clamp is active for some and not for others
    f = f + 3.0 * proxies[y] * (torch.arange(len(y)) % 2)[:, None]
    f = f / f.norm(dim=1, keepdim=True)
    v = proxies[y]
    got = losses.d2d_ce_loss(f, v, y, tau=tau, margin_pos=m_p, margin_neg=m_n, row_max=row_max)
    want = d2d_closed_form(f.numpy(), v.numpy(), y.tolist(), tau, m_p, m_n, row_max)
    assert got.dtype == torch.float64
    assert abs(got.item() - want) < 1e-10 * max(1.0, abs(want))
    # the float32 path agrees to float32 precision
    got32 = losses.d2d_ce_loss(f.float(), v.float(), y, tau=tau, margin_pos=m_p, margin_neg=m_n, row_max=row_max)
    assert abs(got32.item() - want) < 1e-4 * max(1.0, abs(want))


def test_d2d_per_sample_terms_and_edge_cases():
    gen = torch.Generator().manual_seed(2)
    y = torch.tensor([0, 0, 0, 1])
    f = random_unit(4, 5, gen)
    v = random_unit(2, 5, gen)[y]
    terms = losses.d2d_ce_loss(f, v, y, tau=0.3, margin_pos=0.5, margin_neg=0.1, row_max=False, reduction="none")
    assert terms.shape == (4,)
    for i in range(4):  # each term is the closed form of a batch where sample i is the only anchor
        num = math.exp(min(float(f[i] @ v[i]) - 0.5, 0.0) / 0.3)
        den = num + sum(math.exp(max(float(f[i] @ f[j]) - 0.1, 0.0) / 0.3) for j in range(4) if y[j] != y[i])
        assert abs(terms[i].item() + math.log(num / den)) < 1e-12
    # a batch of a single class has no negatives: every term is exactly 0
    zero = losses.d2d_ce_loss(f, v, torch.zeros(4, dtype=torch.long), reduction="none")
    assert torch.equal(zero, torch.zeros(4, dtype=torch.float64))


def test_d2d_gradients_finite_and_correct():
    gen = torch.Generator().manual_seed(3)
    y = torch.tensor([0, 1, 2, 1, 0, 2, 2])
    f = random_unit(7, 4, gen).requires_grad_(True)
    v = random_unit(3, 4, gen)[y].requires_grad_(True)
    loss = losses.d2d_ce_loss(f, v, y, tau=0.5, margin_pos=0.2, margin_neg=-0.3)
    gf, gv = torch.autograd.grad(loss, [f, v])
    assert torch.isfinite(gf).all() and torch.isfinite(gv).all() and gf.abs().sum() > 0
    # the row maximum is a constant to the gradient (detached, as released), so gradcheck runs without it
    assert torch.autograd.gradcheck(
        lambda a, b: losses.d2d_ce_loss(a, b, y, tau=0.5, margin_pos=0.2, margin_neg=-0.3, row_max=False), (f, v))


def test_d2d_stable_for_small_temperature():
    gen = torch.Generator().manual_seed(4)
    y = torch.tensor([0, 1, 0, 1, 2, 2])
    f = random_unit(6, 3, gen).float().requires_grad_(True)
    v = random_unit(3, 3, gen).float()[y]
    loss = losses.d2d_ce_loss(f, v, y, tau=1e-3, margin_pos=1.0, margin_neg=-1.0)  # exp(±2000) in a naive sum
    (g,) = torch.autograd.grad(loss, f)
    assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_d2d_easy_positive_and_negative_give_no_gradient():
    # two samples of different classes, each equal to its proxy (easy positive), pointing apart (easy negative)
    f = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    v = f.detach().clone()
    y = torch.tensor([0, 1])
    loss = losses.d2d_ce_loss(f, v, y, tau=0.5, margin_pos=0.9, margin_neg=0.0, row_max=False)
    (g,) = torch.autograd.grad(loss, f)
    assert torch.equal(g, torch.zeros_like(g))
    assert abs(loss.item() - math.log(1 + math.exp(0.0 - 0.0))) < 1e-6  # num = e^0, den = e^0 + e^0


def test_d2d_default_is_the_released_form():
    """Defaults: m_n = 1 - m_p and the row maximum, as the authors' code; it differs from m_n = 0 without it."""
    gen = torch.Generator().manual_seed(5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    f = random_unit(6, 4, gen)
    v = random_unit(3, 4, gen)[y]
    got = losses.d2d_ce_loss(f, v, y, tau=0.25, margin_pos=0.98)
    assert abs(got.item() - d2d_closed_form(f.numpy(), v.numpy(), y.tolist(), 0.25, 0.98)) < 1e-10
    paper = losses.d2d_ce_loss(f, v, y, tau=0.25, margin_pos=0.98, margin_neg=0.0, row_max=False)
    assert abs(got.item() - paper.item()) > 1e-3


def test_d2d_rejects_bad_input():
    f = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="same shape"):
        losses.d2d_ce_loss(f, torch.zeros(3, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        losses.d2d_ce_loss(f, f, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="tau"):
        losses.d2d_ce_loss(f, f, torch.zeros(3, dtype=torch.long), tau=0)


def test_gather_with_grad_single_process_is_identity():
    x = torch.randn(3, 2)
    assert losses.gather_with_grad(x) is x


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_d2d_global_over_two_gloo_processes(tmp_path):
    """Per-rank gradients summed over ranks equal the gradient of the loss on the whole batch."""
    gen = torch.Generator().manual_seed(5)
    y = torch.tensor([0, 1, 2, 0, 1, 1, 2, 0])
    f = random_unit(8, 4, gen).float()
    v = random_unit(3, 4, gen).float()[y]
    torch.save({"f": f, "v": v, "y": y}, tmp_path / "in.pt")
    child = textwrap.dedent("""
        import os, sys, torch, torch.distributed as dist
        from histlib.gan import losses
        rank, out = int(sys.argv[1]), sys.argv[2]
        dist.init_process_group("gloo", rank=rank, world_size=2)
        d = torch.load(os.path.join(out, "in.pt"))
        sl = slice(4 * rank, 4 * rank + 4)
        f = d["f"][sl].clone().requires_grad_(True)
        v = d["v"][sl].clone().requires_grad_(True)
        loss = losses.d2d_ce_loss_global(f, v, d["y"][sl], tau=0.5, margin_pos=0.3, margin_neg=-0.2)
        gf, gv = torch.autograd.grad(loss, [f, v])
        torch.save({"loss": loss.detach(), "gf": gf, "gv": gv}, os.path.join(out, f"r{rank}.pt"))
        sys.stdout.flush()
        dist.barrier()
        dist.destroy_process_group()
        os._exit(0)
    """)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", child, str(r), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode(errors="replace")
    r = [torch.load(tmp_path / f"r{i}.pt") for i in range(2)]
    fa, va = f.clone().requires_grad_(True), v.clone().requires_grad_(True)
    want = losses.d2d_ce_loss(fa, va, y, tau=0.5, margin_pos=0.3, margin_neg=-0.2)
    gf, gv = torch.autograd.grad(want, [fa, va])
    for i in range(2):
        assert torch.allclose(r[i]["loss"], want, atol=1e-6)
        assert torch.allclose(r[i]["gf"], gf[4 * i:4 * i + 4], atol=1e-6)
        assert torch.allclose(r[i]["gv"], gv[4 * i:4 * i + 4], atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Adversarial losses


def test_logistic_losses_match_log_sigmoid():
    real = torch.tensor([-30.0, -1.0, 0.0, 2.0, 40.0], dtype=torch.float64)
    fake = torch.tensor([-2.0, 0.5, 50.0], dtype=torch.float64)
    lr, lf = losses.d_logistic_loss(real, fake)
    # -log(sigmoid(x)) = log(1 + e^{-x});  -log(1 - sigmoid(x)) = log(1 + e^{x})
    assert torch.allclose(lr, torch.tensor([math.log1p(math.exp(-x)) for x in real.tolist()], dtype=torch.float64))
    assert torch.allclose(lf, torch.tensor([math.log1p(math.exp(x)) for x in fake.tolist()], dtype=torch.float64))
    g = losses.g_nonsaturating_loss(fake)
    assert torch.allclose(g, torch.tensor([math.log1p(math.exp(-x)) for x in fake.tolist()], dtype=torch.float64))
    assert torch.isfinite(losses.g_nonsaturating_loss(torch.tensor([-1e4, 1e4]))).all()


# ----------------------------------------------------------------------------------------------------------------
# R1 and path length


def test_r1_penalty_closed_form_and_double_backward():
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    # D(x) = <w, x> + 0.5 * ||x||^2  =>  grad_x D = w + x,  penalty = ||w + x||^2
    logits = (x * w).sum(dim=[1, 2, 3]) + 0.5 * x.square().sum(dim=[1, 2, 3])
    pen = losses.r1_penalty(x, logits)
    want = (w + x).square().sum(dim=[1, 2, 3])
    assert torch.allclose(pen, want.float().to(pen.dtype))
    (gw,) = torch.autograd.grad(pen.sum(), w)  # d/dw sum_n ||w + x_n||^2 = 2 sum_n (w + x_n)
    assert torch.allclose(gw, 2 * (w + x).sum(0).detach())
    with pytest.raises(ValueError, match="requires_grad"):
        losses.r1_penalty(x.detach(), logits)


def test_path_lengths_closed_form():
    gen = torch.Generator().manual_seed(7)
    n, k, d, c, h = 3, 2, 5, 3, 4
    m = torch.randn(k, d, c * h * h, generator=gen, dtype=torch.float64, requires_grad=True)
    ws = torch.randn(n, k, d, generator=gen, dtype=torch.float64, requires_grad=True)
    img = torch.einsum("nkd,kdp->np", ws, m).view(n, c, h, h)  # linear generator
    noise = torch.randn(n, c, h, h, generator=gen, dtype=torch.float64)
    got = losses.path_lengths(img, ws, noise)
    y = noise.view(n, -1) / h  # / sqrt(H*W)
    jt_y = torch.einsum("kdp,np->nkd", m, y)  # [N, K, D]
    want = jt_y.square().sum(2).mean(1).sqrt()
    assert torch.allclose(got, want.float().to(got.dtype))
    (gm,) = torch.autograd.grad(got.sum(), m)  # differentiable w.r.t. the generator's weights
    assert torch.isfinite(gm).all() and gm.abs().sum() > 0


def test_path_length_regularizer_tracks_mean():
    reg = losses.PathLengthRegularizer(decay=0.25)
    ws = torch.randn(4, 2, 3, requires_grad=True)
    img = (ws.sum(1) @ torch.randn(3, 12)).view(4, 3, 2, 2)
    noise = torch.randn(4, 3, 2, 2)
    lengths = losses.path_lengths(img, ws, noise).detach()
    pen = reg(img, ws, noise)
    assert torch.allclose(reg.pl_mean, 0.25 * lengths.mean())
    assert torch.allclose(pen, (lengths - reg.pl_mean).square())
    assert "pl_mean" in reg.state_dict()
    # with a cross-process mean the buffer follows that mean instead
    reg2 = losses.PathLengthRegularizer(decay=0.5)
    reg2(img, ws, noise, batch_mean=lambda m: m * 0 + 2.0)
    assert reg2.pl_mean.item() == pytest.approx(1.0)
