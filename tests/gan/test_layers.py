"""Layers of StyleGAN2 (histlib.gan.layers) against direct formulas written here with plain torch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from histlib import ops
from histlib.gan.layers import (
    Conv2dLayer,
    FullyConnectedLayer,
    MinibatchStdLayer,
    SynthesisLayer,
    ToRGBLayer,
    conv2d_resample,
    modulated_conv2d,
)

FILTER = ops.setup_filter([1, 3, 3, 1])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _interior(x: torch.Tensor, m: int) -> torch.Tensor:
    return x[..., m:-m, m:-m]


# ----------------------------------------------------------------------------------------------------------------
# conv2d_resample: the fast paths agree with "resample, then convolve" away from the border


def test_conv_up_matches_upsample_then_conv():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    f = FILTER.double()
    y = conv2d_resample(x, w, f, up=2, padding=1)
    ref = F.conv2d(ops.upsample2d(x, f, up=2), w, padding=1)
    assert y.shape == ref.shape == (2, 5, 16, 16)
    # Both are the same linear shift-invariant operator; only the zero padding at the border differs.
    torch.testing.assert_close(_interior(y, 3), _interior(ref, 3))


def test_conv_down_matches_conv_then_downsample():
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    f = FILTER.double()
    y = conv2d_resample(x, w, f, down=2, padding=1)
    ref = ops.downsample2d(F.conv2d(x, w, padding=1), f, down=2)
    assert y.shape == ref.shape == (2, 5, 8, 8)
    torch.testing.assert_close(_interior(y, 2), _interior(ref, 2))


@pytest.mark.parametrize("cin,cout", [(3, 6), (6, 3)])
def test_conv_1x1_resampling_is_exact(cin, cout):
    x = torch.randn(2, cin, 8, 8, dtype=torch.float64)
    w = torch.randn(cout, cin, 1, 1, dtype=torch.float64)
    f = FILTER.double()
    torch.testing.assert_close(conv2d_resample(x, w, f, up=2), F.conv2d(ops.upsample2d(x, f), w))
    torch.testing.assert_close(conv2d_resample(x, w, f, down=2), F.conv2d(ops.downsample2d(x, f), w))


def test_resampling_conv_keeps_a_constant_image_centred():
    # A constant image through a constant kernel stays constant inside: no half-pixel shift, unit DC gain.
    x = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    w = torch.ones(1, 1, 3, 3, dtype=torch.float64) / 9
    f = FILTER.double()
    up = conv2d_resample(x, w, f, up=2, padding=1)
    down = conv2d_resample(torch.ones(1, 1, 16, 16, dtype=torch.float64), w, f, down=2, padding=1)
    torch.testing.assert_close(_interior(up, 3), torch.ones_like(_interior(up, 3)))
    torch.testing.assert_close(_interior(down, 2), torch.ones_like(_interior(down, 2)))


def test_conv_resample_rejects_bad_arguments():
    x = torch.randn(1, 2, 8, 8)
    w = torch.randn(2, 2, 3, 3)
    with pytest.raises(ValueError, match="filter"):
        conv2d_resample(x, w, None, up=2, padding=1)
    with pytest.raises(ValueError, match="padding"):
        conv2d_resample(x, w, FILTER, up=2, padding=0)


# ----------------------------------------------------------------------------------------------------------------
# Equalised learning-rate layers


def test_fully_connected_layer_formula():
    layer = FullyConnectedLayer(7, 5, activation="lrelu", lr_multiplier=0.1, bias_init=0.3)
    x = torch.randn(4, 7)
    w = layer.weight * 0.1 / math.sqrt(7)
    b = layer.bias * 0.1
    expected = F.leaky_relu(x @ w.t() + b, 0.2) * math.sqrt(2)
    torch.testing.assert_close(layer(x), expected)
    # Stored parameters are divided by the lr multiplier, so the effective weights have unit fan-in variance.
    assert abs(float((layer.weight * 0.1).detach().std()) - 1) < 0.5
    torch.testing.assert_close(layer.bias.detach() * 0.1, torch.full([5], 0.3))
    linear = FullyConnectedLayer(7, 5)
    torch.testing.assert_close(linear(x), x @ (linear.weight / math.sqrt(7)).t() + linear.bias)


@pytest.mark.parametrize("up,down,size", [(1, 1, 8), (2, 1, 16), (1, 2, 4)])
def test_conv2d_layer_formula_and_shapes(up, down, size):
    layer = Conv2dLayer(3, 4, 3, activation="lrelu", up=up, down=down, conv_clamp=0.5)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 3, 8, 8)
    y = layer(x, gain=0.7)
    assert y.shape == (2, 4, size, size)
    assert float(y.detach().abs().max()) <= 0.5 * 0.7 + 1e-6
    if up == down == 1:
        z = F.conv2d(x, layer.weight / math.sqrt(3 * 9), layer.bias, padding=1)
        torch.testing.assert_close(y, (F.leaky_relu(z, 0.2) * math.sqrt(2) * 0.7).clamp(-0.35, 0.35))


# ----------------------------------------------------------------------------------------------------------------
# Modulated convolution


def _naive_modconv(x, weight, styles, demodulate, up=1, down=1):
    """One sample at a time with an explicitly modulated (and demodulated) kernel."""
    outs = []
    for n in range(x.shape[0]):
        w = weight * styles[n].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / w.square().sum(dim=[1, 2, 3], keepdim=True).sqrt()
        k = w.shape[-1]
        f = FILTER.to(x.dtype)
        outs.append(conv2d_resample(x[n : n + 1], w, f, up=up, down=down, padding=k // 2))
    return torch.cat(outs)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("up,down,k", [(1, 1, 3), (2, 1, 3), (1, 2, 3), (1, 1, 1)])
def test_modulated_conv_fused_equals_unfused_and_naive(demodulate, up, down, k):
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    weight = torch.randn(5, 4, k, k, dtype=torch.float64)
    styles = torch.randn(3, 4, dtype=torch.float64)
    size = 8 * up // down
    noise = torch.randn(3, 1, size, size, dtype=torch.float64)
    kwargs = dict(demodulate=demodulate, up=up, down=down, padding=k // 2, resample_filter=FILTER.double())
    fused = modulated_conv2d(x, weight, styles, fused_modconv=True, **kwargs)
    unfused = modulated_conv2d(x, weight, styles, fused_modconv=False, **kwargs)
    naive = _naive_modconv(x, weight, styles, demodulate, up, down)
    assert fused.shape == (3, 5, size, size)
    torch.testing.assert_close(fused, unfused)
    torch.testing.assert_close(fused, naive)
    with_noise = modulated_conv2d(x, weight, styles, noise=noise, fused_modconv=True, **kwargs)
    torch.testing.assert_close(with_noise, naive + noise)
    torch.testing.assert_close(modulated_conv2d(x, weight, styles, noise=noise, fused_modconv=False, **kwargs),
                               with_noise)


def test_demodulation_gives_unit_variance():
    # StyleGAN2 eq. 3: for i.i.d. unit-variance inputs the demodulated output has unit variance, whatever the
    # scale of the weights or styles.
    x = torch.randn(4, 32, 24, 24)
    weight = torch.randn(16, 32, 3, 3) * 5
    styles = torch.rand(4, 32) * 3 + 0.1
    y = modulated_conv2d(x, weight, styles, padding=1)
    var = _interior(y, 1).var(dim=[2, 3])  # [N, O] per sample and channel, away from the zero border
    assert torch.allclose(var.mean(), torch.tensor(1.0), atol=0.05), float(var.mean())
    assert float((var - 1).abs().max()) < 0.25
    # Without demodulation the variance follows the weight scale instead.
    y_raw = modulated_conv2d(x, weight, styles, demodulate=False, padding=1)
    assert float(y_raw.var()) > 10


def test_modulated_conv_checks_shapes():
    with pytest.raises(ValueError, match="styles"):
        modulated_conv2d(torch.randn(2, 4, 8, 8), torch.randn(3, 4, 3, 3), torch.randn(2, 5), padding=1)


# ----------------------------------------------------------------------------------------------------------------
# Synthesis layer, ToRGB, minibatch std


def test_synthesis_layer_noise_modes():
    layer = SynthesisLayer(4, 6, w_dim=8, resolution=16, up=2)
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(2, 8)
    with torch.no_grad():
        layer.noise_strength.fill_(0.5)
    y_none = layer(x, w, noise_mode="none")
    assert y_none.shape == (2, 6, 16, 16)
    torch.testing.assert_close(layer(x, w, noise_mode="const"), layer(x, w, noise_mode="const"))
    assert not torch.allclose(layer(x, w, noise_mode="const"), y_none)
    assert not torch.allclose(layer(x, w, noise_mode="random"), layer(x, w, noise_mode="random"))
    with torch.no_grad():
        layer.noise_strength.zero_()
    torch.testing.assert_close(layer(x, w, noise_mode="random"), y_none)
    torch.testing.assert_close(layer(x, w, fused_modconv=False, noise_mode="none"), y_none)
    with pytest.raises(ValueError, match="noise_mode"):
        layer(x, w, noise_mode="fixed")


def test_noise_strength_learns():
    layer = SynthesisLayer(4, 4, w_dim=8, resolution=8)
    layer(torch.randn(2, 4, 8, 8), torch.randn(2, 8), noise_mode="const").square().sum().backward()
    assert layer.noise_strength.grad is not None and float(layer.noise_strength.grad.abs()) > 0


def test_torgb_is_not_demodulated():
    layer = ToRGBLayer(8, 3, w_dim=4)
    x = torch.randn(2, 8, 4, 4)
    w = torch.randn(2, 4)
    styles = layer.affine(w) / math.sqrt(8)
    expected = torch.stack([F.conv2d(x[n : n + 1], layer.weight * styles[n].reshape(1, -1, 1, 1))[0]
                            for n in range(2)]) + layer.bias.reshape(1, -1, 1, 1)
    torch.testing.assert_close(layer(x, w), expected)


@pytest.mark.parametrize("n,group,channels", [(8, 4, 1), (8, 2, 2), (6, 4, 1), (3, 4, 1)])
def test_minibatch_std_matches_direct_formula(n, group, channels):
    x = torch.randn(n, 4, 3, 3, dtype=torch.float64)
    y = MinibatchStdLayer(group, channels)(x)
    assert y.shape == (n, 4 + channels, 3, 3)
    torch.testing.assert_close(y[:, :4], x)
    g = max(d for d in range(1, min(group, n) + 1) if n % d == 0)
    groups = n // g
    for i in range(n):
        members = x[[j for j in range(n) if j % groups == i % groups]]  # [g, C, H, W]
        assert members.shape[0] == g
        std = (members.var(dim=0, unbiased=False) + 1e-8).sqrt()  # [C, H, W]
        for f, part in enumerate(std.chunk(channels, dim=0)):
            torch.testing.assert_close(y[i, 4 + f], torch.full((3, 3), float(part.mean()), dtype=torch.float64))
