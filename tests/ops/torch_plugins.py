"""Stand-ins for the CUDA extensions with their calling conventions, in plain PyTorch (test code only).

The fused path's autograd functions, argument handling (strides, channels-last, adjoint padding, separable split)
run through them on the CPU, so the tests check everything of the CUDA path but the kernels themselves
(``tests/ops/test_ops_gpu.py`` checks those on a GPU).
"""

from __future__ import annotations

import torch

from histlib.ops import _bias_act, _upfirdn2d


class BiasActPlugin:
    @staticmethod
    def bias_act(x, b, g, mode, act_idx, alpha, gain, clamp, step, size):
        act = next(name for name, spec in _bias_act.activation_funcs.items() if spec.cuda_idx == act_idx)
        if b.numel():
            # the kernel's rule: the bias index of the element at memory offset i is (i // step) % size
            offset = torch.zeros(x.shape, dtype=torch.long)
            for i, (n, st) in enumerate(zip(x.shape, x.stride())):
                offset = offset + (torch.arange(n) * st).reshape([-1 if j == i else 1 for j in range(x.ndim)])
            x = x + b[(offset // step) % size].to(x.device)
        return _bias_act._elementwise_torch(x, x.new_empty([0]), g if g.numel() else None, mode, 0, act, alpha, gain,
                                            clamp)


class Upfirdn2dPlugin:
    @staticmethod
    def upfirdn2d(x, f, upx, upy, downx, downy, px0, px1, py0, py1):
        # the kernel correlates with taps that already hold the gain
        return _upfirdn2d._upfirdn2d_ref(x, f.to(x.dtype), (upx, upy), (downx, downy), (px0, px1, py0, py1), True,
                                         1.0)


def fused_bias_act(monkeypatch, *args):
    """The CUDA path's autograd function of bias_act (cached under its own key) running on the stand-in kernel."""
    monkeypatch.setattr(_bias_act, "_load_plugin", lambda: BiasActPlugin)
    monkeypatch.setattr(_bias_act, "_functions", {})
    return _bias_act._function("cuda", *args)


def fused_upfirdn2d(monkeypatch, *args):
    monkeypatch.setattr(_upfirdn2d, "_load_plugin", lambda: Upfirdn2dPlugin)
    monkeypatch.setattr(_upfirdn2d, "_functions", {})
    return _upfirdn2d._function("cuda", *args)
