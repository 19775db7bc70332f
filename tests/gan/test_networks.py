"""Conditional StyleGAN2 generator and D2D-CE discriminator (histlib.gan.networks): block order, shapes, contracts."""

from __future__ import annotations

import math

import pytest
import torch
from gan_toys import tiny_d, tiny_g

from histlib.gan.config import network_kwargs
from histlib.gan.networks import Discriminator, Generator, compute_dtype
from histlib.gan.transfer import load_pretrained

pytestmark = pytest.mark.usefixtures("seeded")


# ----------------------------------------------------------------------------------------------------------------
# Shapes and conditioning


@pytest.mark.parametrize("res", [16, 32, 64])
def test_shapes(res):
    G, D = tiny_g(res=res), tiny_d(res=res)
    assert G.num_ws == 2 * int(math.log2(res)) - 2 == G.synthesis.num_ws
    assert len(G.synthesis.blocks) == int(math.log2(res)) - 1 and G.synthesis.blocks[0].resolution == 4
    assert len(D.blocks) == int(math.log2(res)) - 2 and D.blocks[0].resolution == res
    assert hasattr(D.blocks[0], "fromrgb") and not any(hasattr(b, "fromrgb") for b in D.blocks[1:])
    z, c = torch.randn(5, 16), torch.tensor([0, 1, 2, 1, 0])
    ws = G.mapping(z, c)
    assert ws.shape == (5, G.num_ws, 16)
    img = G(z, c)
    assert img.shape == (5, 3, res, res) and img.dtype == torch.float32 and torch.isfinite(img).all()
    logits, embed, proxy = D(img, c)
    assert logits.shape == (5,) and embed.shape == (5, 8) and proxy.shape == (5, 8)


def test_labels_change_outputs():
    G, D = tiny_g(), tiny_d()
    G.eval()
    z = torch.randn(1, 16).repeat(3, 1)
    c = torch.tensor([0, 1, 2])
    img = G(z, c, noise_mode="const")
    for i in range(3):
        for j in range(i):
            assert (img[i] - img[j]).abs().max() > 1e-3, f"classes {i} and {j} give the same image"
    torch.testing.assert_close(G(z, c, noise_mode="const"), img)  # const noise: deterministic

    same = torch.randn(1, 3, 16, 16).repeat(3, 1, 1, 1)
    logits, embed, proxy = D(same, c)
    # The adversarial logit and the sample embedding are unconditional; the class enters through the proxies.
    torch.testing.assert_close(logits, logits[:1].expand(3))
    torch.testing.assert_close(embed, embed[:1].expand(3, -1))
    assert (proxy[0] - proxy[1]).abs().max() > 1e-3 and (proxy[1] - proxy[2]).abs().max() > 1e-3
    torch.testing.assert_close(D(same, torch.tensor([2, 2, 0]))[2], proxy[[2, 2, 0]])


def test_embeddings_are_l2_normalised():
    D = tiny_d()
    _, embed, proxy = D(torch.randn(6, 3, 16, 16) * 3, torch.tensor([0, 1, 2, 0, 1, 2]))
    torch.testing.assert_close(embed.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(proxy.norm(dim=1), torch.ones(6))


def test_bad_inputs_are_named():
    G, D = tiny_g(), tiny_d()
    with pytest.raises(ValueError, match="c: class indices"):
        G(torch.randn(2, 16), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="int64"):
        G(torch.randn(2, 16), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="z:"):
        G(torch.randn(2, 15), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="img:"):
        D(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="ws:"):
        G.synthesis(torch.randn(2, G.num_ws + 1, 16))
    with pytest.raises(ValueError, match="img_resolution"):
        tiny_g(res=24)


# ----------------------------------------------------------------------------------------------------------------
# Tracked means, truncation, style mixing


def test_w_avg_tracks_class_means():
    G = tiny_g(w_avg_beta=0.0)  # beta 0: the tracked means equal the last batch's means
    z = torch.randn(7, 16)
    c = torch.tensor([0, 0, 1, 1, 1, 0, 0])  # class 2 absent
    before = G.mapping.w_avg_c[2].clone()
    w = G.mapping(z, c, update_emas=True)[:, 0].detach()
    torch.testing.assert_close(G.mapping.w_avg, w.mean(0))
    torch.testing.assert_close(G.mapping.w_avg_c[0], w[c == 0].mean(0))
    torch.testing.assert_close(G.mapping.w_avg_c[1], w[c == 1].mean(0))
    torch.testing.assert_close(G.mapping.w_avg_c[2], before)

    G.mapping.w_avg_beta = 0.9
    G.mapping.w_avg_c.zero_()
    G.mapping(z, c, update_emas=True)
    torch.testing.assert_close(G.mapping.w_avg_c[0], 0.1 * w[c == 0].mean(0))


def test_truncation_pulls_to_the_class_mean():
    G = tiny_g()
    for _ in range(5):
        G.mapping(torch.randn(12, 16), torch.arange(12) % 3, update_emas=True)
    w_avg_c = G.mapping.w_avg_c.clone()
    assert (w_avg_c[0] - w_avg_c[1]).abs().max() > 1e-3  # the classes have distinct means
    z, c = torch.randn(4, 16), torch.tensor([2, 0, 1, 2])
    ws0 = G.mapping(z, c, truncation_psi=0)
    torch.testing.assert_close(ws0, w_avg_c[c].unsqueeze(1).expand(-1, G.num_ws, -1))
    ws1 = G.mapping(z, c)
    half = G.mapping(z, c, truncation_psi=0.5)
    torch.testing.assert_close(half, 0.5 * ws1 + 0.5 * ws0)
    cut = G.mapping(z, c, truncation_psi=0, truncation_cutoff=3)
    torch.testing.assert_close(cut[:, :3], ws0[:, :3])
    torch.testing.assert_close(cut[:, 3:], ws1[:, 3:])
    torch.testing.assert_close(G.mapping.w_avg_c, w_avg_c)  # no update without update_emas


def test_mix_styles():
    G = tiny_g()
    a, b = torch.zeros(3, G.num_ws, 16), torch.ones(3, G.num_ws, 16)
    mixed = G.mix_styles(a, b, 2)
    assert mixed[:, :2].eq(0).all() and mixed[:, 2:].eq(1).all()
    per_sample = G.mix_styles(a, b, torch.tensor([1, G.num_ws, 0]))
    assert per_sample[0, :1].eq(0).all() and per_sample[0, 1:].eq(1).all()
    assert per_sample[1].eq(0).all() and per_sample[2].eq(1).all()


def test_fused_and_unfused_generator_agree():
    G = tiny_g()
    z, c = torch.randn(3, 16), torch.tensor([0, 1, 2])
    fused = G(z, c, noise_mode="const", fused_modconv=True)
    torch.testing.assert_close(G(z, c, noise_mode="const", fused_modconv=False), fused, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Mixed precision decision


def test_mixed_precision_is_decided_by_device():
    assert compute_dtype(True, torch.device("cpu")) == torch.float32
    assert compute_dtype(False, torch.device("cuda")) == torch.float32
    assert compute_dtype(True, torch.device("cuda")) == torch.float16
    assert compute_dtype(True, torch.device("cuda"), "bfloat16") == torch.bfloat16
    # On the CPU a network with half-precision blocks computes exactly what the fp32 network computes.
    G16, G32 = tiny_g(num_fp16_res=2, conv_clamp=256), tiny_g(conv_clamp=256)
    G32.load_state_dict(G16.state_dict())
    z, c = torch.randn(2, 16), torch.tensor([0, 1])
    torch.testing.assert_close(G16(z, c, noise_mode="const"), G32(z, c, noise_mode="const"))
    D16, D32 = tiny_d(num_fp16_res=2, conv_clamp=256), tiny_d(conv_clamp=256)
    D32.load_state_dict(D16.state_dict())
    img = torch.randn(2, 3, 16, 16)
    for a, b in zip(D16(img, c), D32(img, c)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_blocks_run_when_forced(monkeypatch, half):
    # On the CPU the device rule always picks fp32; forcing the half-precision path here exercises its casts
    # (half blocks, fp32 image accumulation and epilogue, R1 double backward) without a GPU.
    import histlib.gan.networks as networks

    monkeypatch.setattr(networks, "compute_dtype", lambda use_fp16, device, mp_dtype="auto", default=None: (
        half if use_fp16 else default))
    G, D = tiny_g(res=32, num_fp16_res=2, conv_clamp=256), tiny_d(res=32, num_fp16_res=2, conv_clamp=256)
    G32, D32 = tiny_g(res=32, conv_clamp=256), tiny_d(res=32, conv_clamp=256)
    G32.load_state_dict(G.state_dict())
    D32.load_state_dict(D.state_dict())
    z, c = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
    for train in (True, False):  # unfused and fused modulated convolutions
        G.train(train)
        G32.train(train)
        img = G(z, c, noise_mode="const")
        ref = G32(z, c, noise_mode="const")
        assert img.dtype == torch.float32
        assert (img - ref).abs().max() < 0.05 * ref.abs().max()
    x = img.detach().requires_grad_(True)
    logits, embed, proxy = D(x, c)
    assert logits.dtype == embed.dtype == torch.float32
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    grad.square().sum().backward()
    assert torch.isfinite(D.blocks[0].fromrgb.weight.grad).all() and D.blocks[0].fromrgb.weight.grad.abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mp_dtype", ["float16", "bfloat16"])
def test_mixed_precision_on_gpu(mp_dtype):
    kw = dict(num_fp16_res=2, conv_clamp=256, mp_dtype=mp_dtype)
    G, D = tiny_g(res=32, **kw).cuda(), tiny_d(res=32, **kw).cuda()
    G32, D32 = tiny_g(res=32).cuda(), tiny_d(res=32).cuda()
    G32.load_state_dict(G.state_dict())
    D32.load_state_dict(D.state_dict())
    z, c = torch.randn(8, 16, device="cuda"), torch.arange(8, device="cuda") % 3
    img, img32 = G(z, c, noise_mode="const"), G32(z, c, noise_mode="const")
    assert img.dtype == torch.float32
    assert (img - img32).abs().max() < 0.1 * img32.abs().max()
    logits, embed, _ = D(img, c)
    logits32, _, _ = D32(img32, c)
    assert (logits - logits32).abs().max() < 0.1 * logits32.abs().max() + 0.05
    (logits.sum() + embed.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in D.parameters() if p.grad is not None)


# ----------------------------------------------------------------------------------------------------------------
# Projection head (and how it transfers)


def test_projection_head_makes_the_logit_conditional_and_transfers_like_the_proxies():
    D = tiny_d(cond_projection=True)
    same = torch.randn(1, 3, 16, 16).repeat(3, 1, 1, 1)
    logits, embed, proxy = D(same, torch.tensor([0, 1, 2]))
    assert (logits[0] - logits[1]).abs() > 1e-4 and (logits[1] - logits[2]).abs() > 1e-4  # the class moves the logit
    torch.testing.assert_close(embed, embed[:1].expand(3, -1))  # the D2D-CE head stays as it was
    plain = tiny_d()
    assert plain.projection is None and set(D.state_dict()) - set(plain.state_dict()) == {
        "projection.proj.weight", "projection.proj.bias", "projection.cmap.weight"}
    # second order through the conditional logit (R1)
    x = same.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x, torch.tensor([0, 1, 2]))[0].sum(), x, create_graph=True)
    g.square().sum().backward()
    assert D.projection.proj.weight.grad is not None and D.projection.cmap.weight.grad.abs().sum() > 0
    # fine-tuning onto other classes re-draws the class embedding and keeps the projection weights
    D5 = tiny_d(num_classes=5, cond_projection=True)
    report = load_pretrained(D5, D.state_dict())
    assert report["reinitialised"] == ["projection.cmap.weight", "proxies.weight"]
    assert torch.equal(D5.projection.proj.weight, D.projection.proj.weight)
    assert D5.projection.cmap.weight.shape == (5, D.projection.dim)
    with pytest.raises(ValueError, match="cond_projection"):
        tiny_d(cond_projection="yes")


def test_a_projection_only_logit_is_the_projection_term_alone():
    torch.manual_seed(0)
    D = tiny_d(cond_projection=True, uncond_logit=False)
    assert D.out is None and not any(k.startswith("out.") for k in D.state_dict())
    x, c = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    logits, _, _ = D(x, c)
    # the same features through the head give the logit, with no other term
    feats = {}
    D.fc.register_forward_hook(lambda m, i, o: feats.setdefault("x", o))
    D(x, c)
    torch.testing.assert_close(logits, D.projection(feats["x"], c))
    both = tiny_d(cond_projection=True)
    both.load_state_dict(D.state_dict(), strict=False)
    assert not torch.allclose(both(x, c)[0], logits)  # the unconditional term is what differs
    with pytest.raises(ValueError, match="uncond_logit=False.*cond_projection=True"):
        tiny_d(uncond_logit=False)
    with pytest.raises(ValueError, match="uncond_logit"):
        tiny_d(cond_projection=True, uncond_logit=0)


def test_projection_layers_map_the_class_embedding_slowly_and_transfer_with_the_head():
    torch.manual_seed(0)
    D = tiny_d(num_classes=4, cond_projection=True, uncond_logit=False, projection_layers=3)
    assert len(D.projection.mlp) == 3
    head = D.projection
    e = torch.nn.functional.normalize(head.cmap.weight, dim=1)
    # through the layers the classes' embeddings start closer together than the random draws themselves
    with torch.no_grad():
        m = torch.nn.functional.normalize(head.mlp(e * math.sqrt(head.dim)), dim=1)
    off = ~torch.eye(4, dtype=torch.bool)
    assert (m @ m.t())[off].mean() > (e @ e.t())[off].mean() + 0.1
    # second order through the layers (R1), and their learning rate is 1 % of the embedding's
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    (g,) = torch.autograd.grad(D(x, torch.tensor([0, 1, 2, 3]))[0].sum(), x, create_graph=True)
    g.square().sum().backward()
    assert all(p.grad is not None for p in head.mlp.parameters())
    assert head.mlp[0].weight_gain < 0.01 * 2 / math.sqrt(head.dim)
    D3 = tiny_d(num_classes=3, cond_projection=True, uncond_logit=False, projection_layers=3)
    report = load_pretrained(D3, D.state_dict())
    assert report["reinitialised"] == ["projection.cmap.weight", "proxies.weight"]
    assert torch.equal(D3.projection.mlp[2].weight, head.mlp[2].weight)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="projection_layers"):
            tiny_d(cond_projection=True, projection_layers=bad)
    with pytest.raises(ValueError, match="projection_layers: only with cond_projection"):
        tiny_d(projection_layers=2)


# ----------------------------------------------------------------------------------------------------------------
# Second-order gradients (R1 and path-length regularisation)


def test_r1_double_backward_through_discriminator():
    D = tiny_d()
    img = torch.randn(4, 3, 16, 16, requires_grad=True)
    logits, _, _ = D(img, torch.tensor([0, 1, 2, 0]))
    (grad,) = torch.autograd.grad(logits.sum(), img, create_graph=True)
    penalty = grad.square().sum(dim=[1, 2, 3]).mean()
    penalty.backward()
    for name in ("blocks.0.fromrgb.weight", "blocks.0.conv0.weight", "blocks.1.conv1.weight", "conv.weight"):
        g = dict(D.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_path_length_double_backward_through_synthesis():
    G = tiny_g()
    ws = G.mapping(torch.randn(4, 16), torch.tensor([0, 1, 2, 0])).detach().requires_grad_(True)
    img = G.synthesis(ws, noise_mode="const")
    y = torch.randn_like(img) / math.sqrt(16 * 16)
    (grad,) = torch.autograd.grad((img * y).sum(), ws, create_graph=True)
    lengths = grad.square().sum(2).mean(1).sqrt()
    (lengths - lengths.mean().detach()).square().mean().backward()
    for name in ("synthesis.blocks.0.conv1.weight", "synthesis.blocks.2.conv0.weight",
                 "synthesis.blocks.2.conv0.affine.weight"):
        g = dict(G.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_double_backward_matches_finite_differences():
    # R1 gradient w.r.t. one weight of fromRGB, checked against central differences in float64.
    D = tiny_d().double()
    img = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    c = torch.tensor([0, 1])

    def r1():
        x = img.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x, c)[0].sum(), x, create_graph=True)
        return g.square().sum()

    w = D.blocks[0].conv0.weight
    (analytic,) = torch.autograd.grad(r1(), w)
    idx = (1, 2, 0, 1)
    eps = 1e-6  # small: the lrelu kinks make R1 only piecewise smooth in the weights
    with torch.no_grad():
        w[idx] += eps
    plus = float(r1().detach())
    with torch.no_grad():
        w[idx] -= 2 * eps
    minus = float(r1().detach())
    numeric = (plus - minus) / (2 * eps)
    assert math.isclose(float(analytic[idx]), numeric, rel_tol=1e-4, abs_tol=1e-8)


# ----------------------------------------------------------------------------------------------------------------
# Profiles


@pytest.mark.parametrize("profile,res", [("demo", 32), ("reduced", 64), ("paper", 256)])
def test_network_kwargs(profile, res):
    kw = network_kwargs(profile)
    assert kw["G"]["img_resolution"] == kw["D"]["img_resolution"] == res
    assert network_kwargs(profile, resolution=16)["G"]["img_resolution"] == 16
    if profile == "paper":
        assert kw["G"]["channel_base"] == kw["D"]["channel_base"] == 16384
        assert kw["G"]["channel_max"] == 512 and kw["G"]["mapping_layers"] == 8
        assert kw["G"]["num_fp16_res"] == 4 and kw["G"]["conv_clamp"] == 256
    if profile == "demo":
        G, D = Generator(num_classes=2, **kw["G"]), Discriminator(num_classes=2, **kw["D"])
        img = G(torch.randn(2, G.z_dim), torch.tensor([0, 1]))
        assert img.shape == (2, 3, 32, 32)
        assert D(img, torch.tensor([0, 1]))[0].shape == (2,)
    with pytest.raises(ValueError, match="profile"):
        network_kwargs("huge")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu_including_r1(monkeypatch):
    # Whatever kernels 'auto' picks on the GPU, the networks compute what they compute on the CPU (fp32 throughout).
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    G, D = tiny_g(res=32), tiny_d(res=32)
    z, c = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])

    def run(device):
        g, d = G.to(device), D.to(device)
        img = g(z.to(device), c.to(device), noise_mode="const")
        x = img.detach().requires_grad_(True)
        logits, embed, _ = d(x, c.to(device))
        (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        d.zero_grad()
        grad.square().sum().backward()
        return [t.detach().cpu() for t in (img, logits, embed, d.blocks[0].conv0.weight.grad)]

    gpu = run("cuda")
    cpu = run("cpu")
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
