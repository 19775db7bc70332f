"""CUDA kernels vs the reference on a grid of shapes and dtypes: forward, backward and double backward.

Run with ``pytest -m gpu tests/ops`` on a machine with a CUDA device and nvcc (``tools/gpu_check.sh`` does). The
extensions are built on first use; a build failure fails these tests (it is not a reason to skip).

Before each run the caching allocator is poisoned: blocks the size of the expected outputs are filled with NaN and
freed, so the op's outputs very likely reuse NaN-filled memory and any element a kernel forgets to write shows up.

Tolerances (max abs error / max |reference|, the reference computed in float64 from the same rounded inputs):
fp64 1e-9, fp32 2e-5, fp16 4e-3, bf16 3e-2 — a few ulps of the output dtype, since the kernels accumulate in
fp32 (fp64 for fp64) and round once. Double backward rounds the intermediate gradient to the dtype, hence 2x.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from histlib import ops
from histlib.ops import _bias_act as bias_act_mod
from histlib.ops import _dispatch
from histlib.ops import _upfirdn2d as upfirdn2d_mod

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {"fp64": 1e-9, "fp32": 2e-5, "fp16": 4e-3, "bf16": 3e-2}
ACTS = list(ops.activation_funcs)
DEV = "cuda"


def poison(*likes: torch.Tensor) -> None:
    """Fill and free blocks shaped like the coming outputs so that the allocator hands out NaN-filled memory."""
    blocks = [torch.full_like(t, float("nan"), memory_format=torch.preserve_format) for t in likes for _ in range(2)]
    del blocks


def assert_close(got: torch.Tensor, want: torch.Tensor, dname: str, what: str, factor: float = 1.0) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == DTYPES[dname], f"{what}: dtype {got.dtype}"
    got64 = got.double()
    assert torch.isfinite(got64).all() == torch.isfinite(want).all(), f"{what}: NaN/inf where the reference has none"
    scale = want.abs().max().item() or 1.0
    err = (got64 - want).abs().max().item() / scale
    assert err <= TOL[dname] * factor, f"{what}: max rel error {err:.3g} > {TOL[dname] * factor:.3g} ({dname})"


@pytest.fixture(scope="module", autouse=True)
def _extensions():
    for name in ("bias_act", "upfirdn2d"):
        from histlib.ops import _build

        _build.load_extension(name, [f"{name}.cpp", f"{name}.cu"])  # raises BuildError with the compiler output


# ----------------------------------------------------------------------------------------------------------------
# bias_act

BA_SHAPES = [  # (shape, dim, channels_last)
    ((2, 7, 5, 3), 1, False),
    ((3, 33), 1, False),
    ((4, 64, 9, 11), 1, True),
    ((1, 5, 1, 1), 1, False),
    ((6, 4, 10), 2, False),
    ((2, 300, 17, 17), 1, False),
]


def _grads(out, inputs, grad_outputs=None, create_graph=False):
    """autograd.grad where an input that does not influence ``out`` gets zeros instead of None."""
    gs = torch.autograd.grad(out, inputs, grad_outputs, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for g, i in zip(gs, inputs)]


def _bias_act_all(x, b, gy, ggx, ggb, impl, **kw):
    """Forward, first derivatives, and second derivatives w.r.t. x, b and the incoming gradient gy."""
    x = x.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True)
    gy = gy.detach().requires_grad_(True)  # in R1 / path length the incoming gradient depends on weights too
    y = ops.bias_act(x, b, impl=impl, **kw)
    gx, gb = _grads(y, [x, b], gy, create_graph=True)
    second = _grads((gx * ggx).sum() + (gb * ggb).sum(), [x, b, gy])
    return y, gx, gb, second


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("shape,dim,channels_last", BA_SHAPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.7])
def test_bias_act_cuda_matches_ref(dname, shape, dim, channels_last, act, clamp):
    dtype = DTYPES[dname]
    gen = torch.Generator(device=DEV).manual_seed(len(shape) * 1000 + ACTS.index(act))
    x = (torch.randn(shape, device=DEV, generator=gen) * 2).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    b = torch.randn(shape[dim], device=DEV, generator=gen).to(dtype)
    gy = torch.randn(shape, device=DEV, generator=gen).to(dtype)
    ggx = torch.randn(shape, device=DEV, generator=gen).to(dtype)
    ggb = torch.randn(shape[dim], device=DEV, generator=gen).to(dtype)
    kw = dict(dim=dim, act=act, clamp=clamp)

    poison(x, x, x, x, b, b)
    y, gx, gb, second = _bias_act_all(x, b, gy, ggx, ggb, "cuda", **kw)
    y_r, gx_r, gb_r, second_r = _bias_act_all(x.double(), b.double(), gy.double(), ggx.double(), ggb.double(),
                                              "ref", **kw)
    assert_close(y, y_r, dname, "forward")
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(gx, gx_r, dname, "dx")
    assert_close(gb, gb_r, dname, "db", factor=4)  # a sum over many elements in the dtype
    for got, want, what in zip(second, second_r, ("d2/dx", "d2/db", "d2/dgy")):
        assert_close(got, want, dname, what, factor=4)


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_cuda_gradcheck_fp64(act):
    x = torch.randn(2, 3, 4, 5, device=DEV, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, device=DEV, dtype=torch.float64, requires_grad=True)

    def fn(x, b):
        return ops.bias_act(x, b, act=act, clamp=1.5, impl="cuda")

    assert gradcheck(fn, (x, b))
    assert gradgradcheck(fn, (x, b))


def test_bias_act_cuda_no_bias_and_linear_fast_path():
    x = torch.randn(4, 8, 3, 3, device=DEV)
    torch.testing.assert_close(ops.bias_act(x, None, act="linear", impl="cuda"), x)
    torch.testing.assert_close(ops.bias_act(x, None, act="relu", impl="cuda"), torch.relu(x) * math.sqrt(2))


def test_bias_act_large_tensor_index_math():
    x = torch.randn(3, 1000, 37, 41, device=DEV, dtype=torch.float16)  # > 2^22 elements, odd inner sizes
    b = torch.randn(1000, device=DEV, dtype=torch.float16)
    poison(x)
    got = ops.bias_act(x, b, act="lrelu", impl="cuda")
    assert_close(got, ops.bias_act(x.double(), b.double(), act="lrelu", impl="ref"), "fp16", "forward")


# ----------------------------------------------------------------------------------------------------------------
# upfirdn2d

FILTERS = {
    "1331": lambda: ops.setup_filter([1, 3, 3, 1], device=DEV),
    "sep8": lambda: ops.setup_filter([1, 2, 4, 7, 7, 4, 2, 1], device=DEV, separable=True),
    "asym": lambda: torch.tensor([[1.0, 2.0], [-3.0, 0.5], [0.25, 4.0]], device=DEV),
}
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
UP_SHAPES = [((2, 3, 8, 8), False), ((1, 5, 7, 9), False), ((3, 16, 12, 10), True), ((2, 1, 11, 6), True)]


def _upfirdn_all(x, f, gy, ggx, impl, **kw):
    x = x.detach().requires_grad_(True)
    gy = gy.detach().requires_grad_(True)
    y = ops.upfirdn2d(x, f, impl=impl, **kw)
    (gx,) = _grads(y, [x], gy, create_graph=True)
    # gx is linear in gy: the second derivative that matters flows to gy, through the backward's own backward
    (ggy,) = _grads((gx * ggx).sum(), [gy])
    return y, gx, ggy


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("shape,channels_last", UP_SHAPES)
@pytest.mark.parametrize("fname", list(FILTERS))
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("flip_filter", [False, True])
def test_upfirdn2d_cuda_matches_ref(dname, shape, channels_last, fname, case, flip_filter):
    dtype = DTYPES[dname]
    up, down, pad = CASES[case]
    f = FILTERS[fname]()
    fw, fh = f.shape[-1], f.shape[0]
    if shape[3] * up[0] + pad[0] + pad[1] < fw or shape[2] * up[1] + pad[2] + pad[3] < fh:
        pytest.skip("padded input smaller than the filter")
    gen = torch.Generator(device=DEV).manual_seed(case * 101 + len(shape))
    x = torch.randn(shape, device=DEV, generator=gen).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    kw = dict(up=up, down=down, padding=pad, flip_filter=flip_filter, gain=1.7)
    with torch.no_grad():
        y_shape = ops.upfirdn2d(x.double(), f.double(), impl="ref", **kw).shape
    gy = torch.randn(y_shape, device=DEV, generator=gen).to(dtype)
    ggx = torch.randn(shape, device=DEV, generator=gen).to(dtype)

    poison(gy, gy, x, x)
    y, gx, ggy = _upfirdn_all(x, f, gy, ggx, "cuda", **kw)
    y_r, gx_r, ggy_r = _upfirdn_all(x.double(), f.double(), gy.double(), ggx.double(), "ref", **kw)
    assert_close(y, y_r, dname, "forward", factor=2)
    if channels_last and shape[1] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(gx, gx_r, dname, "dx", factor=2)
    assert_close(ggy, ggy_r, dname, "d2/dgy", factor=2)


@pytest.mark.parametrize("case", [1, 3, 6])
def test_upfirdn2d_cuda_gradcheck_fp64(case):
    up, down, pad = CASES[case]
    f = FILTERS["asym"]().double()
    x = torch.randn(1, 2, 6, 5, device=DEV, dtype=torch.float64, requires_grad=True)

    def fn(x):
        return ops.upfirdn2d(x, f, up=up, down=down, padding=pad, gain=2.0, impl="cuda")

    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


@pytest.mark.parametrize("dname", ["fp32", "fp16"])
def test_stylegan_shapes(dname):
    """The resampling of a 256 px StyleGAN2 layer, at batch 4."""
    dtype = DTYPES[dname]
    x = torch.randn(4, 256, 128, 128, device=DEV).to(dtype)
    f = ops.setup_filter([1, 3, 3, 1], device=DEV)
    for fn in (ops.upsample2d, ops.downsample2d, ops.filter2d):
        poison(x, x, x, x)
        got = fn(x, f, impl="cuda")
        assert_close(got, fn(x.double(), f.double(), impl="ref"), dname, fn.__name__, factor=2)


# ----------------------------------------------------------------------------------------------------------------
# dispatch on a GPU


def test_auto_uses_validated_kernels_without_warning(recwarn):
    ops.reset_backend_info()
    x = torch.randn(2, 8, 16, 16, device=DEV)
    b = torch.randn(8, device=DEV)
    ops.bias_act(x, b, act="lrelu")
    ops.upsample2d(x, ops.setup_filter([1, 3, 3, 1], device=DEV))
    info = ops.backend_info()
    assert info == {op: _dispatch.AUTO_PREFERENCE[op][0] for op in ("bias_act", "upfirdn2d")}, info
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in recwarn]
    with ops.use_impl("ref"):
        ops.reset_backend_info()
        ops.bias_act(x, b, act="lrelu")
        assert ops.backend_info() == {"bias_act": "ref"}


def test_compiled_path_second_derivatives():
    """torch.compile'd reference inside the fused autograd functions, on the GPU."""
    # float64: cuDNN would use TF32 for the reference's float32 convolutions
    x = torch.randn(2, 6, 9, 8, device=DEV, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, device=DEV, dtype=torch.float64, requires_grad=True)
    f = ops.setup_filter([1, 3, 3, 1], device=DEV).double()
    results = {}
    for impl in ("compiled", "ref"):
        y = ops.bias_act(ops.upsample2d(x, f, impl=impl), b, act="swish", clamp=2.0, impl=impl)
        (gx,) = torch.autograd.grad((y * y).sum(), [x], create_graph=True)
        (ggx,) = torch.autograd.grad((gx * gx).sum(), [x])
        results[impl] = (y, gx, ggx)
    for got, want in zip(results["compiled"], results["ref"]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_third_derivative_of_fused_path_is_refused():
    x = torch.randn(2, 3, device=DEV, dtype=torch.float64, requires_grad=True)
    y = bias_act_mod._function("cuda", 1, "tanh", 0.0, 1.0, -1.0)(x, None)
    (g,) = torch.autograd.grad(y.sum(), [x], create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="third-order"):
        torch.autograd.grad(gg.sum(), [x])


def test_cuda_kernel_rejects_cpu_tensor_clearly():
    with pytest.raises(ops.OpUnavailableError, match="CUDA tensor"):
        ops.bias_act(torch.randn(2, 3), impl="cuda")
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        upfirdn2d_mod._kernel("cuda", torch.ones(1, 1, 4, 4), torch.ones(2, 2), (1, 1), (1, 1), (0, 0, 0, 0),
                              False, 1.0)
