"""The C kernels of the k-NN metrics against their PyTorch twins (skipped when no C compiler is available)."""

from __future__ import annotations

import math

import pytest
import torch

from histlib.metrics import _native as N


@pytest.fixture(scope="module")
def native():
    if N.native_library() is None:
        pytest.skip(f"native kernels unavailable: {N.BUILD_ERROR}")


def _sorted(i, j, v, m):
    order = torch.argsort(i * m + j)
    return i[order], j[order], v[order]


@pytest.mark.parametrize("n,m", [(1, 1), (3, 70), (130, 65), (257, 1000)])
@pytest.mark.parametrize("with_flag", [False, True])
def test_filter_block_matches_torch(native, n, m, with_flag):
    g = torch.Generator().manual_seed(n * m)
    e = torch.randn(n, m, generator=g)
    t_row = torch.randn(n, generator=g) - 1.5
    t_col = torch.randn(m, generator=g) - 1.5
    t_flag = torch.randn(m, generator=g) - 2.0 if with_flag else None
    i, j, v, f = N.filter_block(e, t_row, t_col, t_flag, impl="native")
    ri, rj, rv, rf = N.filter_block_torch(e, t_row, t_col, t_flag)
    i, j, v = _sorted(i, j, v, m)
    assert torch.equal(i, ri) and torch.equal(j, rj) and torch.equal(v, rv) and torch.equal(f, rf)
    assert torch.equal(v, e[i, j])


def test_filter_int8_within_one_rounding_of_torch(native):
    g = torch.Generator().manual_seed(1)
    g0 = torch.randint(-2**26, 2**26, (90, 300), dtype=torch.int32, generator=g)
    g1 = torch.randint(-2**26, 2**26, (90, 300), dtype=torch.int32, generator=g)
    sqa, sqb = torch.rand(90, generator=g) * 1e3 + 2e3, torch.rand(300, generator=g) * 1e3 + 2e3
    k0, k1 = -2.0 / 3000.0**2 * 100, -2.0 / (254 * 3000.0**2) * 100
    e = N.int8_block_torch(g0, g1, k0, k1, sqa, sqb)
    thr = torch.quantile(e.flatten(), 0.05)
    t_row = torch.full((90,), float(thr))
    t_col = torch.full((300,), -math.inf)
    i, j, v, _ = N.filter_int8(g0, g1, k0, k1, sqa, sqb, t_row, t_col, impl="native")
    # The C loop may fuse a multiply-add: values agree to a few float32 roundings, membership except at the edge.
    torch.testing.assert_close(v, e[i, j], rtol=4e-7, atol=0)
    ri, _, _, _ = N.filter_block_torch(e, t_row, t_col)
    assert abs(i.numel() - ri.numel()) <= 2


def test_pair_sqdist_and_quantise_match_torch(native):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 33, generator=g) * 10
    y = torch.randn(40, 33, generator=g)
    ia = torch.randint(0, 50, (200,), generator=g)
    ib = torch.randint(0, 40, (200,), generator=g)
    torch.testing.assert_close(N.pair_sqdist(x, y, ia, ib, impl="native"), N.pair_sqdist_torch(x, y, ia, ib),
                               rtol=1e-13, atol=0)
    mean = torch.randn(33, generator=g)
    sq, mx = N.centre_stats(x, mean, impl="native")
    rsq, rmx = N.centre_stats_torch(x, mean)
    torch.testing.assert_close(sq, rsq, rtol=1e-13, atol=0)
    assert mx == rmx
    alpha = float(torch.tensor(127.0 / mx, dtype=torch.float32))
    out = (torch.empty(50, 33, dtype=torch.int8), torch.empty(50, 66, dtype=torch.int8),
           torch.empty(50, 66, dtype=torch.int8), torch.empty(50, dtype=torch.float64),
           torch.empty(50, dtype=torch.float64))
    N.quantise(x, mean, alpha, out, impl="native")
    for got, ref in zip(out, N.quantise_torch(x, mean, alpha)):
        if got.dtype == torch.int8:
            assert torch.equal(got, ref)
        else:
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gemm", ["float32", "int8"] if hasattr(torch, "_int_mm") else ["float32"])
def test_metrics_identical_without_native_kernels(monkeypatch, gemm):
    from histlib.metrics import prdc_per_sample

    g = torch.Generator().manual_seed(3)
    real = torch.randn(300, 96, generator=g)
    fake = torch.randn(280, 96, generator=g) * 1.1
    with_native = prdc_per_sample(real, fake, 3, 5, gemm=gemm, memory_budget=4 << 20)
    monkeypatch.setenv("HISTLIB_NO_NATIVE", "1")  # the PyTorch twins of every kernel
    without = prdc_per_sample(real, fake, 3, 5, gemm=gemm, memory_budget=4 << 20)
    assert with_native.metrics() == without.metrics()
    assert torch.equal(torch.from_numpy(with_native.real_ball_counts), torch.from_numpy(without.real_ball_counts))
