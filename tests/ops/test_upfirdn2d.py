"""upfirdn2d and helpers: reference vs an independent scipy formula, autograd, and the fused path's functions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch_plugins import fused_upfirdn2d

from histlib import ops


def naive_upfirdn2d(x: np.ndarray, f: np.ndarray, up, down, pad, flip_filter: bool, gain: float) -> np.ndarray:
    """Explicit zero insertion, zero padding / cropping, scipy convolution ('valid'), striding — nothing shared."""
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = pad
    if f.ndim == 1:  # separable taps: the 2-D filter is their outer product
        f = np.outer(f, f)
    n, c, h, w = x.shape
    xu = np.zeros([n, c, h * upy, w * upx])
    xu[:, :, ::upy, ::upx] = x
    xp = np.pad(xu, [(0, 0), (0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))])
    xp = xp[:, :, max(-py0, 0): xp.shape[2] - max(-py1, 0), max(-px0, 0): xp.shape[3] - max(-px1, 0)]
    op = scipy.signal.correlate2d if flip_filter else scipy.signal.convolve2d
    out = np.stack([np.stack([op(xp[i, j], f, mode="valid") for j in range(c)]) for i in range(n)])
    return out[:, :, ::downy, ::downx] * gain


def _x(shape=(2, 3, 5, 7), dtype=torch.float64, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


ASYM = np.array([[1.0, 2.0], [-3.0, 0.5], [0.25, 4.0]])  # 3x2, asymmetric: catches a wrong flip or axis swap
FILTERS = {
    "1331": lambda: ops.setup_filter([1, 3, 3, 1]).double(),
    "sep8": lambda: ops.setup_filter([1, 2, 4, 7, 7, 4, 2, 1], separable=True).double(),
    "asym": lambda: torch.tensor(ASYM),
}
# (up, down, padding) over factors 1, 2, 4, mixed x/y factors, asymmetric and negative padding
CASES = [
    ((1, 1), (1, 1), (0, 0, 0, 0)),
    ((2, 2), (1, 1), (2, 1, 2, 1)),
    ((4, 4), (1, 1), (3, -1, 2, 5)),
    ((1, 1), (2, 2), (1, 1, 1, 1)),
    ((1, 1), (4, 4), (2, 3, 0, 4)),
    ((2, 1), (1, 2), (1, 4, 3, 0)),
    ((4, 2), (2, 4), (5, 2, -1, 6)),
    ((2, 2), (2, 2), (3, 3, 1, 2)),
]


def _valid(x_shape, f, up, pad):
    fw = f.shape[-1]
    fh = f.shape[0]
    return x_shape[3] * up[0] + pad[0] + pad[1] >= fw and x_shape[2] * up[1] + pad[2] + pad[3] >= fh


@pytest.mark.parametrize("fname", list(FILTERS))
@pytest.mark.parametrize("up,down,pad", CASES)
@pytest.mark.parametrize("flip_filter", [False, True])
def test_ref_matches_naive(fname, up, down, pad, flip_filter):
    x = _x()
    f = FILTERS[fname]()
    if not _valid(x.shape, f, up, pad):
        pytest.skip("padded input smaller than the filter")
    got = ops.upfirdn2d(x, f, up=list(up), down=list(down), padding=list(pad), flip_filter=flip_filter, gain=1.7,
                        impl="ref")
    want = naive_upfirdn2d(x.numpy(), f.numpy(), up, down, pad, flip_filter, 1.7)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)


def test_int_arguments_and_identity_filter():
    x = _x()
    torch.testing.assert_close(ops.upfirdn2d(x, None, impl="ref"), x)
    got = ops.upfirdn2d(x, None, up=2, down=1, padding=1, gain=3.0, impl="ref")
    want = naive_upfirdn2d(x.numpy(), np.ones([1, 1]), (2, 2), (1, 1), (1, 1, 1, 1), False, 3.0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("up", [2, 4])
def test_upsample2d_box_is_nearest_neighbour(up):
    x = _x((1, 2, 3, 5))
    got = ops.upsample2d(x, ops.setup_filter([1] * up), up=up, impl="ref")
    want = x.repeat_interleave(up, dim=2).repeat_interleave(up, dim=3)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("down", [2, 4])
def test_downsample2d_box_is_average_pooling(down):
    x = _x((1, 2, 8, 12))
    got = ops.downsample2d(x, ops.setup_filter([1] * down), down=down, impl="ref")
    torch.testing.assert_close(got, F.avg_pool2d(x, down))


def test_filter2d_odd_filter_is_centred_and_keeps_size():
    x = torch.zeros([1, 1, 7, 9], dtype=torch.float64)
    x[0, 0, 3, 4] = 1
    taps = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    y = ops.filter2d(x, ops.setup_filter(taps, normalize=False).double(), impl="ref")
    assert y.shape == x.shape
    torch.testing.assert_close(y[0, 0, 2:5, 3:6], torch.outer(taps, taps))  # a convolution's impulse response
    assert y.sum().item() == pytest.approx(64.0)


@pytest.mark.parametrize("taps", [[1, 3, 3, 1], [1, 2, 1], [1, 2, 3, 4, 4, 3, 2, 1]])  # even/odd phases balanced
def test_helpers_preserve_constant_images_and_shapes(taps):
    x = torch.full([1, 2, 16, 12], 2.5, dtype=torch.float64)
    f = ops.setup_filter(taps).double()
    up = ops.upsample2d(x, f, impl="ref")
    down = ops.downsample2d(x, f, impl="ref")
    same = ops.filter2d(x, f, impl="ref")
    assert up.shape == (1, 2, 32, 24) and down.shape == (1, 2, 8, 6) and same.shape == x.shape
    m = len(taps)  # away from the zero-padded border every output is the DC gain times the constant
    torch.testing.assert_close(up[..., m:-m, m:-m], torch.full_like(up[..., m:-m, m:-m], 2.5))
    torch.testing.assert_close(down[..., 2:-2, 2:-2], torch.full_like(down[..., 2:-2, 2:-2], 2.5))
    torch.testing.assert_close(same[..., m:-m, m:-m], torch.full_like(same[..., m:-m, m:-m], 2.5))


def test_helper_padding_adds():
    x = _x((1, 1, 6, 6))
    f = ops.setup_filter([1, 3, 3, 1]).double()
    assert ops.upsample2d(x, f, padding=[1, 2, 0, 3], impl="ref").shape == (1, 1, 15, 15)
    assert ops.filter2d(x, f, padding=2, impl="ref").shape == (1, 1, 10, 10)


def test_setup_filter():
    f = ops.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and f.dtype == torch.float32
    assert f.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(f, torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64)
    assert ops.setup_filter([1, 3, 3, 1], separable=True).shape == (4,)
    assert ops.setup_filter(list(range(1, 9))).shape == (8,)  # 8 taps or more: separable by default
    assert ops.setup_filter(None).shape == (1, 1)
    g = ops.setup_filter([1, 3, 3, 1], gain=4.0)
    assert g.sum().item() == pytest.approx(4.0)
    s = ops.setup_filter([1, 3, 3, 1], gain=4.0, separable=True)
    assert s.sum().item() == pytest.approx(2.0)  # applied twice
    torch.testing.assert_close(ops.setup_filter(ASYM, flip_filter=True, normalize=False),
                               torch.tensor(ASYM[::-1, ::-1].copy(), dtype=torch.float32))
    with pytest.raises(ValueError, match="sum to 0"):
        ops.setup_filter([1, -1])
    with pytest.raises(ValueError, match="1-D / 2-D"):
        ops.setup_filter(np.ones([2, 2, 2]))


@pytest.mark.parametrize("up,down,pad", [((2, 2), (1, 1), (2, 1, 2, 1)), ((1, 1), (2, 2), (1, 1, 1, 1)),
                                         ((2, 1), (1, 2), (1, -1, 0, 2))])
@pytest.mark.parametrize("fname", ["1331", "asym"])
def test_ref_gradcheck_and_gradgradcheck(up, down, pad, fname):
    x = _x((1, 2, 5, 4), seed=1).requires_grad_(True)
    f = FILTERS[fname]()

    def fn(x):
        return ops.upfirdn2d(x, f, up=up, down=down, padding=pad, gain=2.0, impl="ref")

    assert gradcheck(fn, (x,), fast_mode=True)
    assert gradgradcheck(fn, (x,), fast_mode=True)


@pytest.mark.parametrize("fname", list(FILTERS))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_fused_function_matches_ref_with_second_derivatives(fname, case, monkeypatch):
    """The CUDA path's autograd function (adjoint padding, separable split, flip, gain) with a torch stand-in kernel."""
    up, down, pad = CASES[case]
    flip_filter = case % 2 == 1
    x = _x((1, 1, 5, 7), seed=2).requires_grad_(True)
    f = FILTERS[fname]()
    if not _valid(x.shape, f, up, pad):
        pytest.skip("padded input smaller than the filter")
    fused = fused_upfirdn2d(monkeypatch, up, down, pad, flip_filter, 1.5)
    want = naive_upfirdn2d(x.detach().numpy(), f.numpy(), up, down, pad, flip_filter, 1.5)
    np.testing.assert_allclose(fused(x, f).detach().numpy(), want, rtol=1e-10, atol=1e-10)
    assert gradcheck(lambda x: fused(x, f), (x,), fast_mode=True)
    assert gradgradcheck(lambda x: fused(x, f), (x,), fast_mode=True)


@pytest.mark.parametrize("path", ["ref", "fused"])
def test_channels_last(path, monkeypatch):
    x = _x((2, 3, 6, 5), dtype=torch.float32)
    x_cl = x.to(memory_format=torch.channels_last)
    f = ops.setup_filter([1, 3, 3, 1])
    args = ((2, 2), (1, 1), (2, 1, 2, 1), False, 4.0)
    if path == "ref":
        got = ops.upfirdn2d(x_cl, f, *args[:3], flip_filter=False, gain=4.0, impl="ref")
    else:
        got = fused_upfirdn2d(monkeypatch, *args)(x_cl, f)
    want = naive_upfirdn2d(x.numpy(), f.numpy(), *args)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_keep_dtype(dtype):
    x = _x((1, 2, 6, 6), dtype=torch.float32)
    f = ops.setup_filter([1, 3, 3, 1])
    got = ops.upsample2d(x.to(dtype), f, impl="ref")
    assert got.dtype == dtype
    want = ops.upsample2d(x.double(), f.double(), impl="ref")
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def test_bad_arguments():
    x = _x()
    f = ops.setup_filter([1, 3, 3, 1]).double()
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        ops.upfirdn2d(x[0], f)
    with pytest.raises(ValueError, match="up must be"):
        ops.upfirdn2d(x, f, up=0)
    with pytest.raises(ValueError, match="padding"):
        ops.upfirdn2d(x, f, padding=[1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        ops.upfirdn2d(x, f, padding=-3)
    with pytest.raises(ValueError, match="filter"):
        ops.upfirdn2d(x, torch.ones(2, 2, 2))
    with pytest.raises(ops.OpUnavailableError, match="CUDA tensor"):
        ops.upfirdn2d(x, f, impl="cuda")
