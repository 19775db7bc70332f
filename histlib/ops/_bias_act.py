"""Fused bias + activation + gain + clamp: ``y = clamp(act(x + b) * gain, -clamp, clamp)``.

``_bias_act_ref`` is the specification (plain PyTorch autograd). The ``'cuda'`` path (``bias_act.cu``) and the
``'compiled'`` path (``torch.compile`` of an element-wise formula) do the whole thing in one pass over memory; both
are wrapped in two autograd functions whose backward passes call the same fused op again, so first and second
derivatives work (R1 and path-length regularisation differentiate through the networks twice):

* forward:        ``y  = clamp(gain * f(s))``,                                 ``s = x + b``
* backward:       ``dx = dy * gain * f'(s) * [|gain * f(s)| <= clamp]``,       ``db = sum(dx)``
* double backward: ``d(dy) = same as backward``, ``dx' = ddx * dy * gain * f''(s) * mask``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from histlib.ops import _dispatch

_SELU_SCALE = 1.0507009873554805
_SELU_ALPHA = 1.6732632423543772
_SOFTPLUS_THRESHOLD = 20.0  # same as torch.nn.functional.softplus: above it softplus(s) = s


class ActSpec(NamedTuple):
    """One activation, shared by every path.

    Attributes:
        func: reference ``f(s, alpha)``, differentiable twice by autograd.
        def_alpha: default ``alpha`` (slope of lrelu, scale of elu; unused by the others).
        def_gain: default output gain (√2 keeps the variance of relu-like activations).
        cuda_idx: activation number in ``bias_act.cu``.
        d1: ``f'(s, alpha)``, element-wise torch formula (the compiled path's backward).
        d2: ``f''(s, alpha)``.
        has_2nd_grad: ``f''`` is not identically zero.
    """

    func: Any
    def_alpha: float
    def_gain: float
    cuda_idx: int
    d1: Any
    d2: Any
    has_2nd_grad: bool


def _zeros(s: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.zeros_like(s)


def _ones(s: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.ones_like(s)


def _sig_d1(s: torch.Tensor) -> torch.Tensor:
    sg = torch.sigmoid(s)
    return sg * (1 - sg)


def _softplus_d1(s: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.where(s > _SOFTPLUS_THRESHOLD, torch.ones_like(s), torch.sigmoid(s))


def _softplus_d2(s: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.where(s > _SOFTPLUS_THRESHOLD, torch.zeros_like(s), _sig_d1(s))


def _swish_d1(s: torch.Tensor, alpha: float) -> torch.Tensor:
    sg = torch.sigmoid(s)
    return sg * (1 + s * (1 - sg))


def _swish_d2(s: torch.Tensor, alpha: float) -> torch.Tensor:
    sg = torch.sigmoid(s)
    return sg * (1 - sg) * (2 + s * (1 - 2 * sg))


def _tanh_d1(s: torch.Tensor, alpha: float) -> torch.Tensor:
    t = torch.tanh(s)
    return 1 - t * t


def _tanh_d2(s: torch.Tensor, alpha: float) -> torch.Tensor:
    t = torch.tanh(s)
    return -2 * t * (1 - t * t)


def _sigmoid_d2(s: torch.Tensor, alpha: float) -> torch.Tensor:
    sg = torch.sigmoid(s)
    return sg * (1 - sg) * (1 - 2 * sg)


def _exp_neg(s: torch.Tensor, scale: float) -> torch.Tensor:
    # exp only where it is used, so large positive s never makes inf * 0 = nan
    return torch.where(s > 0, torch.zeros_like(s), scale * torch.exp(torch.clamp(s, max=0)))


_SQRT2 = math.sqrt(2)

activation_funcs: dict[str, ActSpec] = {
    "linear": ActSpec(lambda s, a: s, 0.0, 1.0, 0, _ones, _zeros, False),
    "relu": ActSpec(lambda s, a: torch.relu(s), 0.0, _SQRT2, 1,
                    lambda s, a: (s > 0).to(s.dtype), _zeros, False),
    "lrelu": ActSpec(lambda s, a: F.leaky_relu(s, a), 0.2, _SQRT2, 2,
                     lambda s, a: torch.where(s > 0, torch.ones_like(s), torch.full_like(s, a)), _zeros, False),
    "tanh": ActSpec(lambda s, a: torch.tanh(s), 0.0, 1.0, 3, _tanh_d1, _tanh_d2, True),
    "sigmoid": ActSpec(lambda s, a: torch.sigmoid(s), 0.0, 1.0, 4, lambda s, a: _sig_d1(s), _sigmoid_d2, True),
    "elu": ActSpec(lambda s, a: F.elu(s, a), 1.0, 1.0, 5,
                   lambda s, a: torch.where(s > 0, torch.ones_like(s), _exp_neg(s, a)),
                   lambda s, a: _exp_neg(s, a), True),
    "selu": ActSpec(lambda s, a: torch.selu(s), 0.0, 1.0, 6,
                    lambda s, a: torch.where(s > 0, torch.full_like(s, _SELU_SCALE),
                                             _exp_neg(s, _SELU_SCALE * _SELU_ALPHA)),
                    lambda s, a: _exp_neg(s, _SELU_SCALE * _SELU_ALPHA), True),
    "softplus": ActSpec(lambda s, a: F.softplus(s, beta=1, threshold=_SOFTPLUS_THRESHOLD), 0.0, 1.0, 7,
                        _softplus_d1, _softplus_d2, True),
    "swish": ActSpec(lambda s, a: s * torch.sigmoid(s), 0.0, _SQRT2, 8, _swish_d1, _swish_d2, True),
}


# ----------------------------------------------------------------------------------------------------------------
# Public op


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             impl: str = "auto") -> torch.Tensor:
    """Add a bias along ``dim``, apply an activation, scale by ``gain`` and clamp to ``[-clamp, clamp]``.

    Args:
        x: input of any shape and float dtype, e.g. ``[N, C, H, W]`` (contiguous or channels_last).
        b: bias ``[x.shape[dim]]`` or None.
        dim: the dimension of ``x`` that ``b`` runs along.
        act: a key of :data:`activation_funcs`.
        alpha: activation parameter (lrelu slope, elu scale); None = the activation's default.
        gain: output scale; None = the activation's default (√2 for relu, lrelu and swish, else 1).
        clamp: clamp the output to ``[-clamp, clamp]``; None = no clamping.
        impl: ``'auto'``, ``'ref'``, ``'cuda'`` or ``'compiled'`` (see :mod:`histlib.ops._dispatch`).

    Returns:
        Tensor of the shape, dtype and memory format of ``x``.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"bias_act: x must be a floating-point tensor, got {type(x).__name__}"
                        f"{'' if not isinstance(x, torch.Tensor) else ' of dtype ' + str(x.dtype)}")
    if act not in activation_funcs:
        raise ValueError(f"bias_act: unknown act {act!r}; choose one of {sorted(activation_funcs)}")
    if x.ndim == 0:
        raise ValueError("bias_act: x must have at least one dimension")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"bias_act: dim={dim} is out of range for x of shape {list(x.shape)}")
    dim = dim % x.ndim
    if b is not None:
        if not isinstance(b, torch.Tensor) or b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias_act: b must have shape [{x.shape[dim]}] (x.shape[{dim}]), got "
                             f"{list(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}")
        if b.device != x.device:
            raise ValueError(f"bias_act: b is on {b.device} but x is on {x.device}")
    spec = activation_funcs[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    clamp = float(-1 if clamp is None else clamp)
    if clamp != -1 and clamp < 0:
        raise ValueError(f"bias_act: clamp must be None or >= 0, got {clamp}")

    path = _dispatch.resolve("bias_act", impl, x.device.type, str(x.device),
                             _PROBES)
    _dispatch.record("bias_act", path)
    if path == "ref":
        return _bias_act_ref(x, b, dim, act, alpha, gain, clamp)
    if b is not None:
        b = b.to(x.dtype)
    return _function(path, dim, act, alpha, gain, clamp)(x, b)


def _bias_act_ref(x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str, alpha: float, gain: float,
                  clamp: float) -> torch.Tensor:
    """The specification, in plain PyTorch (``clamp < 0`` = no clamping)."""
    if b is not None:
        x = x + b.to(x.dtype).reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    y = activation_funcs[act].func(x, alpha)
    if gain != 1:
        y = y * gain
    if clamp >= 0:
        y = y.clamp(-clamp, clamp)
    return y


# ----------------------------------------------------------------------------------------------------------------
# Fused paths ('cuda', 'compiled'): one element-wise kernel with three modes, and two autograd functions around it


def _elementwise_torch(x: torch.Tensor, b: torch.Tensor, g: torch.Tensor | None, mode: int, dim: int, act: str,
                       alpha: float, gain: float, clamp: float) -> torch.Tensor:
    """mode 0: ``clamp(gain f(s))``; mode 1: ``g gain f'(s) mask``; mode 2: ``g gain f''(s) mask``."""
    spec = activation_funcs[act]
    s = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)]) if b.numel() else x
    if mode == 0:
        return _bias_act_ref(s, None, dim, act, alpha, gain, clamp)
    d = (spec.d1 if mode == 1 else spec.d2)(s, alpha)
    out = g * d * gain
    if clamp >= 0:
        out = out * ((spec.func(s, alpha) * gain).abs() <= clamp).to(out.dtype)
    return out


_get_compiled = _dispatch.lazy_compile(lambda: _elementwise_torch)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """The CUDA kernel walks memory linearly: accept contiguous and channels_last(_3d) layouts, copy others."""
    if t.is_contiguous():
        return t
    if t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t
    if t.ndim == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return t
    return t.contiguous()


def _kernel(path: str, x: torch.Tensor, b: torch.Tensor, g: torch.Tensor | None, mode: int, dim: int, act: str,
            alpha: float, gain: float, clamp: float) -> torch.Tensor:
    if path == "compiled":
        return _get_compiled()(x, b, g, mode, dim, act, alpha, gain, clamp)
    x = _dense(x)
    if g is not None and g.stride() != x.stride():
        g = torch.empty_like(x).copy_(g)  # same memory layout as x, element for element
    empty = x.new_empty([0])
    plugin = _load_plugin()
    return plugin.bias_act(x, b.contiguous(), g if g is not None else empty, mode,
                                   activation_funcs[act].cuda_idx, alpha, gain, clamp, x.stride(dim), x.shape[dim])


_functions: dict[tuple, Any] = {}


def _function(path: str, dim: int, act: str, alpha: float, gain: float, clamp: float):
    """``apply(x, b)`` of the autograd function for these constants (classes cached, as they are per-config)."""
    key = (path, dim, act, alpha, gain, clamp)
    if key in _functions:
        return _functions[key]
    spec = activation_funcs[act]
    trivial_grad = act == "linear" and clamp < 0 and gain == 1

    def reduce_bias(dx: torch.Tensor) -> torch.Tensor:
        return dx.sum([i for i in range(dx.ndim) if i != dim])

    class BiasAct(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b):  # [any], [C] or None
            bb = b if b is not None else x.new_empty([0])
            y = _kernel(path, x, bb, None, 0, dim, act, alpha, gain, clamp)
            ctx.save_for_backward(x, bb)
            ctx.has_b = b is not None
            return y

        @staticmethod
        def backward(ctx, dy):
            x, bb = ctx.saved_tensors
            dx = db = None
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                dx = dy if trivial_grad else BiasActGrad.apply(dy, x, bb)
            if ctx.needs_input_grad[1] and ctx.has_b:
                db = reduce_bias(dx)
            return dx, db

    class BiasActGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, dy, x, bb):
            dx = _kernel(path, x, bb, dy, 1, dim, act, alpha, gain, clamp)
            ctx.save_for_backward(dy, x, bb)
            return dx

        @staticmethod
        def backward(ctx, d_dx):
            dy, x, bb = ctx.saved_tensors
            d_dy = d_x = d_b = None
            if ctx.needs_input_grad[0]:
                d_dy = BiasActGrad.apply(d_dx, x, bb)  # dx is linear in dy with the same coefficient
            if spec.has_2nd_grad and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
                # f'' is the last derivative the networks need; a third one would silently be wrong, so refuse it
                with torch.no_grad():
                    d_x = _kernel(path, x, bb, d_dx * dy, 2, dim, act, alpha, gain, clamp)
                if torch.is_grad_enabled():
                    d_x = _ThirdOrderGuard.apply(d_x)
                if ctx.needs_input_grad[2] and bb.numel():
                    d_b = reduce_bias(d_x)
            return d_dy, d_x, d_b

    _functions[key] = BiasAct.apply
    return BiasAct.apply


class _ThirdOrderGuard(torch.autograd.Function):
    """Identity that refuses to be differentiated (third derivatives of the fused paths are not implemented)."""

    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("bias_act: third-order derivatives are not implemented for the fused paths; "
                           "use impl='ref'")


# ----------------------------------------------------------------------------------------------------------------
# Availability probes for the dispatcher


def _load_plugin():
    from histlib.ops import _build

    return _build.load_extension("bias_act", ["bias_act.cpp", "bias_act.cu"])


# built lazily: _get_compiled and _check_against_ref are looked up when a probe runs
_PROBES = _dispatch.make_probes(_load_plugin, lambda: _get_compiled(), lambda path: _check_against_ref(path))


def _check_against_ref(path: str) -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    for act, clamp in (("lrelu", 0.5), ("swish", -1.0)):
        x = torch.randn([2, 5, 3, 7], device="cuda", generator=gen, dtype=torch.float64, requires_grad=True)
        b = torch.randn([5], device="cuda", generator=gen, dtype=torch.float64, requires_grad=True)
        spec = activation_funcs[act]
        outs = []
        for run in (path, "ref"):
            args = (1, act, spec.def_alpha, spec.def_gain, clamp)
            y = _bias_act_ref(x, b, *args) if run == "ref" else _function(run, *args)(x, b)
            gx, gb = torch.autograd.grad((y * y).sum(), [x, b], create_graph=True)
            ggx, = torch.autograd.grad((gx * gx).sum() + gb.sum(), [x])
            outs.append([y, gx, gb, ggx])
        for got, want in zip(*outs):
            if not torch.allclose(got, want, rtol=1e-9, atol=1e-9):
                raise RuntimeError(f"bias_act {path!r} path disagrees with the reference on this device "
                                   f"(act={act}, max abs error {(got - want).abs().max().item():.3g})")

