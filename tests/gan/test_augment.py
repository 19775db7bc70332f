"""Tests of the ADA pipeline and its controller (histlib.gan.augment).

Every expectation is derived from the definition of the transformation (Karras et al. 2020, appendix B) and checked
with an independent formula (``torch.flip``/``torch.rot90``/reflect padding, luma/chroma decomposition, moments of
a drawn shape), never with numbers taken from the pipeline's own output.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from histlib.gan.augment import AdaController, AugmentPipe
from histlib.gan.plots import plot_augment_grid

OPS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness", "contrast", "lumaflip", "hue",
       "saturation")
LUMA = torch.ones(3, dtype=torch.float64) / math.sqrt(3)


def only(op: str, p: float = 1.0, **kwargs) -> AugmentPipe:
    """A pipeline with one operation enabled, at probability ``p``."""
    pipe = AugmentPipe(**{name: (1 if name == op else 0) for name in OPS}, **kwargs)
    pipe.set_p(p)
    return pipe


def rand_images(n=16, c=3, size=32, seed=0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=gen, dtype=dtype) * 2 - 1  # [N, C, H, W]


def luma_chroma(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Splits RGB images into the luma coordinate along (1,1,1)/sqrt(3) and the orthogonal chroma vector."""
    v = LUMA.to(x.dtype)
    luma = torch.einsum("nchw,c->nhw", x, v)  # [N, H, W]
    chroma = x - luma[:, None] * v[None, :, None, None]  # [N, C, H, W]
    return luma, chroma


def disc(n=1, size=32, radius=6.0, centre=(0.0, 0.0), dtype=torch.float64) -> torch.Tensor:
    """White disc on black (-1) with a one-pixel linear edge, centre given relative to the image centre."""
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    r = torch.sqrt((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2)
    img = torch.clamp(radius + 0.5 - r, 0, 1) * 2 - 1  # [H, W]
    return img.expand(n, 3, size, size).clone()


def moments(x: torch.Tensor, window: float | None = None) -> dict[str, torch.Tensor]:
    """Mass, centroid and central second moments of the (x+1)/2 intensity of channel 0, per sample.

    ``window``: only pixels within this distance of the centre count (rotations bring mirrored copies of the
    image into the corners, as reflect padding should).
    """
    n, _, h, w = x.shape
    m = ((x[:, 0] + 1) / 2).clamp(min=0)  # [N, H, W]
    ys = torch.arange(h, dtype=x.dtype) - (h - 1) / 2
    xs = torch.arange(w, dtype=x.dtype) - (w - 1) / 2
    if window is not None:
        m = m * (xs[None, :] ** 2 + ys[:, None] ** 2 <= window**2)
    mass = m.sum((1, 2))
    cx = (m * xs).sum((1, 2)) / mass
    cy = (m * ys[:, None]).sum((1, 2)) / mass
    vx = (m * (xs - cx[:, None, None]) ** 2).sum((1, 2)) / mass
    vy = (m * (ys[:, None] - cy[:, None, None]) ** 2).sum((1, 2)) / mass
    return {"mass": mass, "cx": cx, "cy": cy, "vx": vx, "vy": vy}


# ----------------------------------------------------------------------------------------------------------------
# Identity and shapes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_p_zero_is_exact_identity(dtype):
    x = rand_images(dtype=dtype)
    pipe = AugmentPipe.preset("bgc")
    assert float(pipe.p) == 0
    torch.manual_seed(1)
    y = pipe(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, x)


def test_p_one_changes_every_sample_and_keeps_shape():
    x = rand_images(n=32)
    pipe = AugmentPipe.preset("bgc")
    pipe.set_p(1)
    torch.manual_seed(0)
    y = pipe(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    # brightness alone changes every sample almost surely
    assert ((y - x).abs().amax((1, 2, 3)) > 1e-6).all()


def test_p_is_a_buffer_in_state_dict():
    pipe = AugmentPipe.preset("bgc")
    pipe.set_p(0.37)
    state = pipe.state_dict()
    assert "p" in state and state["p"].dtype == torch.float32 and state["p"].ndim == 0
    other = AugmentPipe.preset("bgc")
    other.load_state_dict(state)
    assert float(other.p) == pytest.approx(0.37)


def test_presets():
    assert {op for op in OPS if getattr(AugmentPipe.preset("b"), op) > 0} == {"xflip", "rotate90", "xint"}
    assert {op for op in OPS if getattr(AugmentPipe.preset("bg"), op) > 0} == {
        "xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac"}
    assert {op for op in OPS if getattr(AugmentPipe.preset("c"), op) > 0} == {
        "brightness", "contrast", "lumaflip", "hue", "saturation"}
    assert all(getattr(AugmentPipe.preset("bgc"), op) == 1 for op in OPS)
    with pytest.raises(ValueError, match="preset"):
        AugmentPipe.preset("bgx")


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="xflip"):
        AugmentPipe(xflip=-1)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        AugmentPipe()(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="square"):
        only("rotate90")(torch.zeros(2, 3, 8, 16))
    with pytest.raises(ValueError, match="channels"):
        only("hue")(torch.zeros(2, 4, 8, 8))


def test_seeded_reproducibility():
    x = rand_images(n=8)
    pipe = AugmentPipe.preset("bgc")
    pipe.set_p(0.8)
    torch.manual_seed(123)
    a = pipe(x)
    torch.manual_seed(123)
    b = pipe(x)
    c = pipe(x)
    assert torch.equal(a, b)
    assert not torch.equal(b, c)


# ----------------------------------------------------------------------------------------------------------------
# Pixel blitting: exact


def test_xflip_is_exact_and_half_the_samples():
    x = rand_images(n=400, size=8)
    torch.manual_seed(0)
    y = only("xflip")(x)
    same = (y == x).flatten(1).all(1)
    flipped = (y == x.flip(3)).flatten(1).all(1)
    assert (same ^ flipped).all()  # every sample is exactly one of the two
    assert 0.4 < flipped.double().mean() < 0.6  # the paper flips with probability 1/2 at p = 1


def test_rot90_is_one_of_the_four_rotations():
    x = rand_images(n=400, size=8)
    torch.manual_seed(0)
    y = only("rotate90")(x)
    hits = torch.stack([(y == torch.rot90(x, k, (2, 3))).flatten(1).all(1) for k in range(4)], 1)  # [N, 4]
    assert (hits.sum(1) == 1).all()
    freq = hits.double().mean(0)
    assert ((freq > 0.17) & (freq < 0.33)).all()  # k ~ U{0..3}


def test_integer_translation_is_reflect_padded_shift():
    size, xint_max = 32, 0.125
    max_shift = round(xint_max * size)
    x = rand_images(n=64, size=size)
    torch.manual_seed(0)
    y = only("xint", xint_max=xint_max)(x)
    padded = F.pad(x, [max_shift] * 4, mode="reflect")  # independent oracle: torch's reflect padding
    shifts = []
    for i in range(x.shape[0]):
        found = [(dx, dy) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)
                 if torch.equal(y[i], padded[i, :, max_shift - dy:max_shift - dy + size,
                                                 max_shift - dx:max_shift - dx + size])]
        assert len(found) == 1, f"sample {i}: not an exact reflected shift within +-{max_shift} px"
        shifts.append(found[0])
    shifts = torch.tensor(shifts, dtype=torch.float64)
    assert (shifts != 0).any(1).double().mean() > 0.8  # most samples actually move
    assert shifts.min() < 0 < shifts.max()


# ----------------------------------------------------------------------------------------------------------------
# Geometric transformations (resampled)


def test_isotropic_scale_changes_disc_area_by_lognormal_factor():
    scale_std = 0.2
    x = disc(n=200, radius=6)
    torch.manual_seed(0)
    y = only("scale", scale_std=scale_std)(x)
    mx, my = moments(x), moments(y)
    log2_s = 0.5 * torch.log2(my["mass"] / mx["mass"])  # area scales with s^2
    assert abs(float(log2_s.mean())) < 0.06  # 4 standard errors at n = 200
    assert float(log2_s.std()) == pytest.approx(scale_std, rel=0.15)
    # isotropic: the disc stays round and centred, its second moment scales with the area
    assert torch.allclose(my["vx"], my["vy"], rtol=0.03)
    assert my["cx"].abs().max() < 0.05 and my["cy"].abs().max() < 0.05
    assert torch.allclose(0.5 * torch.log2(my["vx"] / mx["vx"]), log2_s, atol=0.03)


def test_rotation_keeps_radius_and_spreads_angle():
    x = disc(n=200, radius=3, centre=(8.0, 0.0))
    torch.manual_seed(0)
    y = only("rotate")(x)
    m = moments(y, window=15)
    radius = torch.sqrt(m["cx"] ** 2 + m["cy"] ** 2)
    assert torch.allclose(radius, torch.full_like(radius, 8.0), atol=0.2)
    assert torch.allclose(m["mass"], moments(x)["mass"], rtol=0.03)
    angle = torch.atan2(m["cy"], m["cx"])
    # uniform angles: mean resultant length near 0, and every quadrant is visited
    assert float(torch.sqrt(torch.cos(angle).mean() ** 2 + torch.sin(angle).mean() ** 2)) < 0.15
    assert len({int(q) for q in torch.floor((angle + math.pi) / (math.pi / 2))}) == 4


def test_anisotropic_scale_preserves_area_and_stretches_axes():
    aniso_std = 0.2
    x = disc(n=200, radius=6)
    torch.manual_seed(0)
    y = only("aniso", aniso_std=aniso_std)(x)
    mx, my = moments(x), moments(y)
    assert torch.allclose(my["mass"], mx["mass"], rtol=0.03)
    log2_s = 0.25 * torch.log2(my["vx"] / my["vy"])  # vx ~ s^2, vy ~ s^-2
    assert float(log2_s.std()) == pytest.approx(aniso_std, rel=0.15)
    assert torch.allclose(my["vx"] * my["vy"], mx["vx"] * mx["vy"], rtol=0.1)


def test_fractional_translation_moves_centroid():
    xfrac_std, size = 0.05, 32
    x = disc(n=200, size=size, radius=4)
    torch.manual_seed(0)
    y = only("xfrac", xfrac_std=xfrac_std)(x)
    m = moments(y)
    shift = torch.stack([m["cx"], m["cy"]], 1) / size  # [N, 2] as a fraction of the size
    assert float(shift.std()) == pytest.approx(xfrac_std, rel=0.15)
    assert (shift.abs() > 1e-3).all(1).double().mean() > 0.9  # sub-pixel moves, not rounded
    assert torch.allclose(m["mass"], moments(x)["mass"], rtol=0.03)


def test_geometric_identity_matrix_resamples_exactly():
    # A zero-strength geometric transform still goes through the sampler: it must reproduce the input.
    x = rand_images(n=4)
    pipe = AugmentPipe(**{op: (1 if op in ("scale", "xfrac") else 0) for op in OPS}, scale_std=0, xfrac_std=0)
    pipe.set_p(1)
    assert torch.allclose(pipe(x), x, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Colour transformations


def test_brightness_adds_a_constant():
    x = rand_images(n=400, size=8)
    torch.manual_seed(0)
    y = only("brightness", brightness_std=0.2)(x)
    diff = y - x
    b = diff.mean((1, 2, 3))
    assert torch.allclose(diff, b[:, None, None, None].expand_as(diff), atol=1e-12)
    assert torch.allclose(y.mean((1, 2, 3)), x.mean((1, 2, 3)) + b, atol=1e-12)
    assert float(b.std()) == pytest.approx(0.2, rel=0.15)


def test_contrast_scales_deviations_from_the_mean():
    x = rand_images(n=400, size=8)
    torch.manual_seed(0)
    y = only("contrast", contrast_std=0.5)(x)
    dx, dy = x - x.mean((1, 2, 3), keepdim=True), y - y.mean((1, 2, 3), keepdim=True)
    c = (dy * dx).sum((1, 2, 3)) / (dx * dx).sum((1, 2, 3))  # least-squares factor
    assert torch.allclose(dy, c[:, None, None, None] * dx, atol=1e-12)
    assert float(torch.log2(c).std()) == pytest.approx(0.5, rel=0.15)


def test_lumaflip_flips_luma_and_keeps_chroma():
    x = rand_images(n=400, size=8)
    torch.manual_seed(0)
    y = only("lumaflip")(x)
    lx, cx = luma_chroma(x)
    ly, cy = luma_chroma(y)
    assert torch.allclose(cy, cx, atol=1e-12)
    per_flip = (ly + lx).abs().flatten(1).amax(1) < 1e-12
    per_same = (ly - lx).abs().flatten(1).amax(1) < 1e-12
    assert (per_flip ^ per_same).all()
    assert 0.4 < per_flip.double().mean() < 0.6


def test_hue_rotation_keeps_luma_and_chroma_norm():
    x = rand_images(n=200, size=8)
    torch.manual_seed(0)
    y = only("hue")(x)
    lx, cx = luma_chroma(x)
    ly, cy = luma_chroma(y)
    assert torch.allclose(ly, lx, atol=1e-12)
    assert torch.allclose(cy.norm(dim=1), cx.norm(dim=1), atol=1e-12)
    # the chroma plane is rotated by one angle per sample, spread over (-pi, pi)
    cos = (cx * cy).sum(1).flatten(1).sum(1) / (cx.norm(dim=1) ** 2).flatten(1).sum(1)
    assert cos.min() < -0.8 and cos.max() > 0.8


def test_saturation_scales_chroma_and_keeps_luma():
    x = rand_images(n=400, size=8)
    torch.manual_seed(0)
    y = only("saturation", saturation_std=1.0)(x)
    lx, cx = luma_chroma(x)
    ly, cy = luma_chroma(y)
    assert torch.allclose(ly, lx, atol=1e-12)
    s = (cy * cx).sum((1, 2, 3)) / (cx * cx).sum((1, 2, 3))
    assert torch.allclose(cy, s[:, None, None, None] * cx, atol=1e-12)
    assert float(torch.log2(s).std()) == pytest.approx(1.0, rel=0.15)
    # an extreme strength drives some samples nearly to grey
    torch.manual_seed(0)
    z = only("saturation", saturation_std=6.0)(x)
    ratio = luma_chroma(z)[1].flatten(1).norm(dim=1) / cx.flatten(1).norm(dim=1)
    assert ratio.min() < 0.05


def test_grey_images_get_brightness_contrast_lumaflip_only():
    x = rand_images(n=64, c=1, size=8)
    pipe = AugmentPipe.preset("c")
    pipe.set_p(1)
    torch.manual_seed(0)
    y = pipe(x)
    # affine per sample: y = a x + b with a possibly negative (luma flip)
    dx, dy = x - x.mean((1, 2, 3), keepdim=True), y - y.mean((1, 2, 3), keepdim=True)
    a = (dy * dx).sum((1, 2, 3)) / (dx * dx).sum((1, 2, 3))
    assert torch.allclose(dy, a[:, None, None, None] * dx, atol=1e-12)
    assert (a < 0).any() and (a > 0).any()


# ----------------------------------------------------------------------------------------------------------------
# Probability


@pytest.mark.parametrize("op", ["brightness", "xint", "scale", "rotate"])
def test_half_the_samples_at_p_half(op):
    x = rand_images(n=1000, size=32, dtype=torch.float32)
    torch.manual_seed(0)
    y = only(op, p=0.5)(x)
    changed = (y != x).flatten(1).any(1).double().mean()
    # binomial sd at n=1000 is 0.016; at 32 px xint rounds both shifts to 0 with probability (1/8)^2
    assert 0.44 < float(changed) < 0.56


def test_multiplier_scales_probability():
    x = rand_images(n=1000, size=8, dtype=torch.float32)
    pipe = AugmentPipe(**{op: (0.5 if op == "brightness" else 0) for op in OPS})
    pipe.set_p(0.6)
    torch.manual_seed(0)
    changed = (pipe(x) != x).flatten(1).any(1).double().mean()
    assert 0.25 < float(changed) < 0.35


# ----------------------------------------------------------------------------------------------------------------
# Gradients


def test_gradients_flow_through_full_pipeline():
    x = rand_images(n=8, dtype=torch.float32).requires_grad_(True)
    pipe = AugmentPipe.preset("bgc")
    pipe.set_p(1)
    torch.manual_seed(0)
    pipe(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert (x.grad.abs().flatten(1).sum(1) > 0).all()


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_gradcheck_and_gradgradcheck(interpolation):
    x = rand_images(n=2, size=5).requires_grad_(True)
    pipe = AugmentPipe.preset("bgc", interpolation=interpolation)
    pipe.set_p(1)

    def fn(inp):
        torch.manual_seed(3)  # the same draws at every call: a deterministic function of the images
        return pipe(inp)

    assert not torch.equal(fn(x), x)
    assert torch.autograd.gradcheck(fn, (x,))
    if interpolation == "bicubic":  # the default path; the bilinear one shares every other operation
        assert torch.autograd.gradgradcheck(fn, (x,))


# ----------------------------------------------------------------------------------------------------------------
# Controller


def test_controller_moves_p_at_stated_speed_and_clamps():
    pipe = AugmentPipe.preset("bgc")
    ctrl = AdaController(pipe, target=0.6, interval=4, kimg=0.2, batch_size=10)  # step 10*4/200 = 0.2
    assert ctrl.adjust_step == pytest.approx(0.2)
    results = []
    for step in range(1, 29):
        ctrl.accumulate(torch.rand(10, 1) + 0.1)  # all real logits positive: rt = 1 > target
        results.append(ctrl.update(cur_nimg=10 * step))
    assert results[:3] == [None] * 3 and all(r is None for i, r in enumerate(results) if (i + 1) % 4)
    updates = [r for r in results if r is not None]
    assert updates == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0], abs=1e-6)
    assert ctrl.rt == 1.0 and float(pipe.p) == pytest.approx(1.0)
    for step in range(8):
        ctrl.accumulate(-torch.rand(10) - 0.1)  # all negative: rt = -1 < target
        ctrl.update(cur_nimg=300 + 10 * step)
    assert ctrl.rt == -1.0 and ctrl.p == pytest.approx(0.6, abs=1e-6)
    for step in range(40):
        ctrl.accumulate(-torch.ones(10))
        ctrl.update(cur_nimg=400 + 10 * step)
    assert ctrl.p == 0.0


def test_controller_rt_is_mean_sign():
    pipe = AugmentPipe.preset("bgc")
    ctrl = AdaController(pipe, target=0.6, interval=2, kimg=1, batch_size=4)
    ctrl.accumulate(torch.tensor([1.5, -0.1, 2.0, 3.0]))
    assert ctrl.update(0) is None
    ctrl.accumulate(torch.tensor([[0.3], [-4.0], [0.0], [1.0]]))  # zero counts with sign 0
    p = ctrl.update(8)
    assert ctrl.rt == pytest.approx((3 - 1 + 1 - 1 + 0 + 1) / 8)  # 0.375 < 0.6: p would go down, clamps at 0
    assert p == 0.0
    # at the target exactly, p stays
    pipe.set_p(0.5)
    ctrl = AdaController(pipe, target=0.5, interval=1, kimg=1, batch_size=4)
    ctrl.accumulate(torch.tensor([1.0, 1.0, 1.0, -1.0]))
    assert ctrl.update(4) == 0.5


def test_controller_without_statistics_keeps_p():
    pipe = AugmentPipe.preset("bgc")
    pipe.set_p(0.3)
    ctrl = AdaController(pipe, interval=1, kimg=1, batch_size=4)
    assert ctrl.update(4) is None and float(pipe.p) == pytest.approx(0.3)


def test_controller_state_dict_round_trip_continues_identically():
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(6, generator=gen) + 3 * math.sin(i / 4) for i in range(40)]

    def make():
        pipe = AugmentPipe.preset("bgc")
        return pipe, AdaController(pipe, target=0.6, interval=4, kimg=0.05, batch_size=6)

    pipe_a, a = make()
    trace_a = []
    for i, lg in enumerate(logits):
        a.accumulate(lg)
        trace_a.append((a.update(6 * (i + 1)), a.rt))
        if i == 17:  # mid-interval: partial statistics must travel
            saved_ctrl, saved_pipe = a.state_dict(), {k: v.clone() for k, v in pipe_a.state_dict().items()}
    pipe_b, b = make()
    pipe_b.load_state_dict(saved_pipe)
    b.load_state_dict(saved_ctrl)
    trace_b = []
    for i, lg in enumerate(logits[18:], start=18):
        b.accumulate(lg)
        trace_b.append((b.update(6 * (i + 1)), b.rt))
    assert trace_b == trace_a[18:]
    assert float(pipe_b.p) == float(pipe_a.p)
    assert any(r is not None for r, _ in trace_b)
    assert len({r for r, _ in trace_a if r is not None}) > 2  # p actually moved both ways during the trace


def test_controller_rejects_bad_settings():
    pipe = AugmentPipe.preset("bgc")
    with pytest.raises(ValueError, match="batch_size"):
        AdaController(pipe)
    with pytest.raises(ValueError, match="interval"):
        AdaController(pipe, interval=0, batch_size=4)
    with pytest.raises(ValueError, match="kimg"):
        AdaController(pipe, kimg=0, batch_size=4)


# ----------------------------------------------------------------------------------------------------------------
# Plot


def test_plot_augment_grid_returns_figure_and_keeps_rng():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = rand_images(n=3, size=16, dtype=torch.float32)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    fig = plot_augment_grid(x, [0.0, 0.5, 1.0])
    assert torch.equal(torch.get_rng_state(), state)
    assert len(fig.axes) == 4 * 3
    # the p = 0 row shows the originals
    assert (fig.axes[3].images[0].get_array() == fig.axes[0].images[0].get_array()).all()
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# Controller under torch.distributed (gloo, 2 CPU processes)


def _ddp_worker(rank: int, world: int, init_file: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        pipe = AugmentPipe.preset("bgc")
        pipe.set_p(0.5)
        ctrl = AdaController(pipe, target=0.6, interval=2, kimg=0.1, batch_size=8 * world)  # step 16*2/100
        # rank 0 sees only positive logits, rank 1 only negative ones for its first half: global rt = 0.5 < 0.6
        for step in range(2):
            ctrl.accumulate(torch.ones(8) if rank == 0 else torch.cat([-torch.ones(4), torch.ones(4)]))
            result = ctrl.update(cur_nimg=16 * (step + 1))
        dist.barrier()
        queue.put((rank, ctrl.rt, result, float(pipe.p)))
    finally:
        dist.destroy_process_group()


def test_controller_all_reduces_statistics_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(tmp_path / "init"), queue)) for r in range(2)]
    for proc in procs:
        proc.start()
    # results are read before joining, so a process that aborts at interpreter exit cannot hide a finished result
    results = sorted(queue.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    # global statistics: rank 0 has 16 positives, rank 1 has 8 negatives and 8 positives -> rt = (16 + 0) / 32
    assert [r[1] for r in results] == [0.5, 0.5]
    # rt < target: p goes down by one step of 0.32 on both ranks
    assert results[0][2] == results[1][2] == pytest.approx(0.5 - 0.32, abs=1e-6)
    assert results[0][3] == results[1][3]


# ----------------------------------------------------------------------------------------------------------------
# GPU (run with -m gpu)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_cuda_forward_backward_and_accumulate_never_sync():
    dev = torch.device("cuda")
    pipe = AugmentPipe.preset("bgc").to(dev)
    ctrl = AdaController(pipe, batch_size=8)
    x = (torch.rand(8, 3, 64, 64, device=dev) * 2 - 1).requires_grad_(True)
    for p in (0.0, 0.7):
        pipe.set_p(p)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            y = pipe(x)
            (grad,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)  # R1-style double backward
            grad.square().sum().backward()
            ctrl.accumulate(torch.randn(8, 1, device=dev))
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert torch.isfinite(x.grad).all()
        if p == 0:
            assert torch.equal(y, x)


@pytest.mark.gpu
@needs_cuda
def test_cuda_warp_matches_cpu():
    from histlib.gan.augment import _rotate2d, _scale2d, _warp

    x = rand_images(n=4, size=32, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    inv = _rotate2d(torch.rand(4, generator=gen) * 6) @ _scale2d(torch.rand(4, generator=gen) + 0.5, torch.ones(4))
    for interpolation in ("bicubic", "bilinear"):
        cpu = _warp(x, inv, interpolation)
        gpu = _warp(x.cuda(), inv.cuda(), interpolation).cpu()
        assert torch.allclose(cpu, gpu, atol=1e-5)
