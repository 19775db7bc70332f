"""bias_act: reference vs an independent numpy formula, autograd of the reference and of the fused-path functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch_plugins import fused_bias_act

from histlib import ops
from histlib.ops import _bias_act as bias_act_mod

ACTS = ["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"]


def naive_bias_act(x: np.ndarray, b: np.ndarray | None, dim: int, act: str, alpha: float | None,
                   gain: float | None, clamp: float | None) -> np.ndarray:
    """Written from the textbook definitions, sharing nothing with histlib."""
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for very negative x; 1 / inf = 0 is right
        return _naive(x, b, dim, act, alpha, gain, clamp)


def _naive(x, b, dim, act, alpha, gain, clamp):
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.reshape(shape)
    default_alpha = {"lrelu": 0.2, "elu": 1.0}.get(act, 0.0)
    default_gain = math.sqrt(2) if act in ("relu", "lrelu", "swish") else 1.0
    a = default_alpha if alpha is None else alpha
    g = default_gain if gain is None else gain
    if act == "linear":
        y = x
    elif act == "relu":
        y = np.maximum(x, 0)
    elif act == "lrelu":
        y = np.where(x > 0, x, a * x)
    elif act == "tanh":
        y = np.tanh(x)
    elif act == "sigmoid":
        y = 1 / (1 + np.exp(-x))
    elif act == "elu":
        y = np.where(x > 0, x, a * (np.exp(np.minimum(x, 0)) - 1))
    elif act == "selu":
        lam, al = 1.0507009873554805, 1.6732632423543772
        y = lam * np.where(x > 0, x, al * (np.exp(np.minimum(x, 0)) - 1))
    elif act == "softplus":
        y = np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))
    elif act == "swish":
        y = x / (1 + np.exp(-x))
    else:
        raise AssertionError(act)
    y = y * g
    if clamp is not None:
        y = np.clip(y, -clamp, clamp)
    return y


@pytest.fixture(autouse=True)
def _fresh_backend_record():
    ops.reset_backend_info()
    yield
    ops.set_default_impl("auto")


def _inputs(shape=(3, 5, 4, 6), dim=1, dtype=torch.float64, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype) * scale
    b = torch.randn([shape[dim]], generator=gen, dtype=dtype)
    return x, b


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.8])
@pytest.mark.parametrize("dim", [1, -1, 0])
def test_ref_matches_naive(act, clamp, dim):
    x, b = _inputs(dim=dim)
    got = ops.bias_act(x, b, dim=dim, act=act, clamp=clamp, impl="ref")
    want = naive_bias_act(x.numpy(), b.numpy(), dim % x.ndim, act, None, None, clamp)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ["lrelu", "elu", "tanh"])
def test_ref_explicit_alpha_gain_and_no_bias(act):
    x, _ = _inputs()
    got = ops.bias_act(x, None, act=act, alpha=0.37, gain=2.5, impl="ref")
    want = naive_bias_act(x.numpy(), None, 1, act, 0.37, 2.5, None)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_defaults_table():
    assert set(ops.activation_funcs) == set(ACTS)
    spec = ops.activation_funcs["lrelu"]
    assert spec.def_alpha == pytest.approx(0.2) and spec.def_gain == pytest.approx(math.sqrt(2))
    func, def_alpha, def_gain = spec[:3]  # usable as a tuple
    assert callable(func) and def_alpha == spec.def_alpha and def_gain == spec.def_gain


@pytest.mark.parametrize("act", ACTS)
def test_ref_gradcheck_and_gradgradcheck(act):
    x, b = _inputs(shape=(2, 3, 4), scale=1.5, seed=1)
    x.requires_grad_(True)
    b.requires_grad_(True)

    def fn(x, b):
        return ops.bias_act(x, b, act=act, clamp=1.2, impl="ref")

    assert gradcheck(fn, (x, b), fast_mode=True)
    assert gradgradcheck(fn, (x, b), fast_mode=True)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [-1.0, 1.2])
def test_fused_functions_match_ref_with_second_derivatives(act, clamp, monkeypatch):
    """The CUDA path's autograd functions (backward via the op in modes 1 and 2), run with a torch stand-in kernel."""
    x, b = _inputs(shape=(2, 3, 4), scale=1.5, seed=2)
    x.requires_grad_(True)
    b.requires_grad_(True)
    spec = ops.activation_funcs[act]
    fused = fused_bias_act(monkeypatch, 1, act, spec.def_alpha, spec.def_gain, clamp)
    ref = bias_act_mod._bias_act_ref(x, b, 1, act, spec.def_alpha, spec.def_gain, clamp)
    torch.testing.assert_close(fused(x, b), ref, rtol=1e-12, atol=1e-12)
    assert gradcheck(fused, (x, b), fast_mode=True)
    assert gradgradcheck(fused, (x, b), fast_mode=True)


def test_fused_functions_without_bias_and_other_dim(monkeypatch):
    x, _ = _inputs(shape=(2, 3, 4), seed=3)
    x.requires_grad_(True)
    fused = fused_bias_act(monkeypatch, 2, "swish", 0.0, 1.0, -1.0)
    assert gradgradcheck(lambda x: fused(x, None), (x,))
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert gradgradcheck(fused, (x, b), fast_mode=True)


@pytest.mark.parametrize("path", ["ref", "fused"])
def test_channels_last(path, monkeypatch):
    x, b = _inputs(shape=(2, 6, 5, 3), dtype=torch.float32)
    x_cl = x.to(memory_format=torch.channels_last)
    assert not x_cl.is_contiguous()
    if path == "ref":
        got = ops.bias_act(x_cl, b, act="lrelu", clamp=2.0, impl="ref")
    else:
        got = fused_bias_act(monkeypatch, 1, "lrelu", 0.2, math.sqrt(2), 2.0)(x_cl, b)
    want = naive_bias_act(x.numpy(), b.numpy(), 1, "lrelu", None, None, 2.0)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_keep_dtype(dtype):
    x, b = _inputs(shape=(2, 4, 3, 3), dtype=torch.float32)
    got = ops.bias_act(x.to(dtype), b.to(dtype), act="swish", impl="ref")
    assert got.dtype == dtype
    want = naive_bias_act(x.numpy(), b.numpy(), 1, "swish", None, None, None)
    tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    np.testing.assert_allclose(got.float().numpy(), want, rtol=tol, atol=tol)


def test_clamp_zero_and_large_inputs():
    x = torch.tensor([[-1e4, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4]], dtype=torch.float64)
    for act in ACTS:
        y = ops.bias_act(x, act=act, impl="ref")
        assert torch.isfinite(y).all(), act
        np.testing.assert_allclose(y.numpy(), naive_bias_act(x.numpy(), None, 1, act, None, None, None),
                                   rtol=1e-12, atol=1e-12)
    assert ops.bias_act(x, act="linear", clamp=0, impl="ref").abs().max() == 0


def test_bad_arguments():
    x, b = _inputs()
    with pytest.raises(ValueError, match="unknown act"):
        ops.bias_act(x, b, act="gelu")
    with pytest.raises(ValueError, match=r"b must have shape \[5\]"):
        ops.bias_act(x, b[:3])
    with pytest.raises(ValueError, match="dim"):
        ops.bias_act(x, b, dim=4)
    with pytest.raises(ValueError, match="clamp"):
        ops.bias_act(x, b, clamp=-2)
    with pytest.raises(ValueError, match="impl"):
        ops.bias_act(x, b, impl="triton")
    with pytest.raises(TypeError, match="floating-point"):
        ops.bias_act(torch.ones(2, 3, dtype=torch.long))


def test_cuda_request_on_cpu_raises_not_downgrades():
    x, b = _inputs()
    with pytest.raises(ops.OpUnavailableError, match="CUDA tensor"):
        ops.bias_act(x, b, impl="cuda")


def test_auto_on_cpu_is_ref_silently(recwarn):
    x, b = _inputs()
    ops.bias_act(x, b, act="relu")
    assert ops.backend_info() == {"bias_act": "ref"}
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


