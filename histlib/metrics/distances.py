"""Chunked k-nearest-neighbour radii and ball membership for precision/recall/density/coverage.

The k-NN metrics compare every distance ``d(real_i, fake_j)`` with a k-th-nearest-neighbour radius. Done naively
(as the reference package ``prdc`` does) this needs three dense ``N × N`` distance matrices in float64; here the
distances are computed block by block (float32 GEMMs, or exact int8 GEMMs on CPUs with AMX) on the chosen device,
so memory stays within ``memory_budget`` bytes whatever ``N`` is, and the within-set matrices are computed once
per unordered block pair (symmetry). Each block is read once by ``_native.filter_block``, which keeps only the
few entries that can matter (candidate neighbours, pairs that may lie inside a ball); everything after that works
on those sparse entries.

Exactness. A float32 distance can be off by a few units in the last place, which could flip a comparison
``d < radius`` that sits on the boundary. Every float32 value comes with a rigorous error bound (below); a
comparison is decided from the float32 value only when it holds with the whole error interval, and the few
borderline pairs are recomputed from the original features in float64 and compared exactly the way ``prdc``
does: squared distances rounded to float32 when both inputs are float32 (scikit-learn computes them in float64
and stores float32), then square roots, then a strict ``<``. The k-th-neighbour radii are resolved the same way.
The results therefore equal ``prdc``'s, not just approximately.

Error bounds. Rows are centred on a common mean (distances do not change). In float32 mode a block is
``fl(fl(|y|² − 2 x·y) + |x|²)`` (one GEMM); with unit roundoff ``u = 2⁻²⁴`` and ``D`` features any float32
summation order satisfies ``|fl(s) − s| ≤ γ_{D+1} Σ|terms|``, which with the rounding of the centred inputs and
of the norms stays below ``(2D + 24) u (|x|² + |y|²)``. TF32 and reduced-precision GEMMs are switched off while
the blocks are computed, since they break this bound. In int8 mode (CPUs with AMX) the rows are split into two
int8 slices whose products are exact in int32; the bound then comes from the quantisation residuals (see
``_quantise``). Either way the bound is a sum of products of per-row factors, ``Σ_t f_t(i) g_t(j)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from . import _native

_U32 = 2.0**-24  # float32 unit roundoff
_U64 = 2.0**-53
_EXTRA_CANDIDATES = 6  # neighbours kept beyond k+1 per row, so the exact radius rarely needs a fallback
DEFAULT_CPU_BUDGET = 1 << 30  # bytes


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def as_features(x, name: str = "features") -> torch.Tensor:
    """Returns ``x`` (numpy array or torch tensor ``[N, D]``) as a CPU torch tensor without copying when possible.

    Raises:
        ValueError: not two-dimensional, empty, or holding NaN/Inf.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
    else:
        a = np.asarray(x)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"{name}: expected a numeric array [N, D], got dtype {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a))
    if t.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [N, D], got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name}: empty feature array of shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    # A NaN/Inf anywhere makes its column sum non-finite (float64 sums of finite values cannot overflow here).
    if not bool(torch.isfinite(t.sum(0, dtype=torch.float64)).all()):
        raise ValueError(f"{name}: contains NaN or Inf values")
    return t


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``'auto'`` → CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_budget(device: torch.device) -> int:
    """Bytes the distance blocks may use: 1 GiB on CPU, a quarter of the free memory on a GPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(64 << 20, free // 4)
    return DEFAULT_CPU_BUDGET


@contextlib.contextmanager
def _exact_float32_matmul() -> Iterator[None]:
    """Full-precision float32 GEMMs (no TF32 / bf16 shortcuts) inside the block, as the error bound assumes."""
    prec = torch.get_float32_matmul_precision()
    cuda_tf32 = torch.backends.cuda.matmul.allow_tf32
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.set_float32_matmul_precision(prec)
        torch.backends.cuda.matmul.allow_tf32 = cuda_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def int8_gemm_available(device: torch.device) -> bool:
    """True on CPUs with AMX int8 units (where an int8 GEMM is ~8× a float32 one) and a torch with ``_int_mm``."""
    if device.type != "cpu" or not hasattr(torch, "_int_mm"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            return "amx_int8" in f.read()
    except OSError:
        return False


_INT8_CHECKED: dict[int, bool] = {}


def _int8_gemm_ok(d: int) -> bool:
    """``torch._int_mm`` is exact for inner sizes ``d`` and ``2d`` here (some builds mishandle tiny shapes)."""
    if d not in _INT8_CHECKED:
        ok = 2 * 127 * 127 * d < 2**31  # int32 accumulators must not overflow
        g = torch.Generator().manual_seed(0)
        for k in (d, 2 * d):
            if not ok:
                break
            a = torch.randint(-127, 128, (19, k), dtype=torch.int8, generator=g)
            b = torch.randint(-127, 128, (23, k), dtype=torch.int8, generator=g)
            try:
                ok = torch.equal(torch._int_mm(a, b.T).to(torch.int64), a.to(torch.int64) @ b.to(torch.int64).T)
            except RuntimeError:
                ok = False
        _INT8_CHECKED[d] = ok
    return _INT8_CHECKED[d]


@dataclass
class FeatureSet:
    """One feature set prepared for blockwise squared distances.

    Attributes:
        orig: the features as given (CPU), the source of every exact float64 recomputation.
        sq: float64 squared norms of the centred float32 rows  # [N]
        round32: squared distances are rounded to float32 before the comparison (as scikit-learn does for float32
            inputs); False for float64 inputs.
        mean: the common centre  # [D]
        gemm: ``'float32'`` or ``'int8'`` (how blocks are computed).
        err_f, err_g: non-negative factors with ``|d²_block(i, j) − d²(i, j)| ≤ Σ_t err_f[i, t]·err_g[j, t]``.
        xc: float32 centred rows (``float32`` mode)  # [N, D]
        sq32: the norms rounded to float32 (the values the blocks add)  # [N]
        q1, qq, qr: int8 slices ``Q1``, ``[Q1|Q2]``, ``[Q2|Q1]`` (``int8`` mode)  # [N, D], [N, 2D], [N, 2D]
        kappa: ``(-2/α², -2/(254 α²))``, the float scale of the two integer products (``int8`` mode).
    """

    orig: torch.Tensor
    sq: torch.Tensor
    round32: bool
    mean: torch.Tensor
    gemm: str
    err_f: torch.Tensor
    err_g: torch.Tensor
    xc: torch.Tensor | None = None
    q1: torch.Tensor | None = None
    qq: torch.Tensor | None = None
    qr: torch.Tensor | None = None
    kappa: tuple[float, float] = (0.0, 0.0)
    sq32: torch.Tensor | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return self.orig.shape[0]

    @property
    def dim(self) -> int:
        return self.orig.shape[1]

    @property
    def device(self) -> torch.device:
        return self.sq.device

    def rows64(self, idx: torch.Tensor) -> torch.Tensor:
        """Original rows ``idx`` (CPU index tensor) in float64  # [len(idx), D]"""
        return self.orig.index_select(0, idx).to(torch.float64)


class BlockOperand:
    """The left operand of a run of blocks (built once per row block, reused for every column block)."""

    def __init__(self, a: FeatureSet, r0: int, r1: int):
        self.a, self.r0, self.r1 = a, r0, r1

    def _int8_products(self, b: FeatureSet, c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, r0, r1 = self.a, self.r0, self.r1
        g0 = torch._int_mm(a.q1[r0:r1], b.q1[c0:c1].T)  # Q1·Q1ᵀ, exact int32
        g1 = torch._int_mm(a.qq[r0:r1], b.qr[c0:c1].T)  # Q1·Q2ᵀ + Q2·Q1ᵀ, exact int32
        return g0, g1

    def sq_dists(self, b: FeatureSet, c0: int, c1: int) -> torch.Tensor:
        """float32 squared distances of rows ``r0:r1`` of ``a`` to rows ``c0:c1`` of ``b``  # [n, m]"""
        a, r0, r1 = self.a, self.r0, self.r1
        if a.gemm == "float32":
            # |y|² − 2 x·y in one GEMM (beta = 1 on the broadcast norms), then + |x|²: one extra vectorised pass.
            e = torch.addmm(b.sq32[None, c0:c1], a.xc[r0:r1], b.xc[c0:c1].T, alpha=-2.0)
            return e.add_(a.sq32[r0:r1, None])
        g0, g1 = self._int8_products(b, c0, c1)
        return _native.int8_block_torch(g0, g1, *a.kappa, a.sq32[r0:r1], b.sq32[c0:c1])

    def filtered(self, b: FeatureSet, c0: int, c1: int, t_row: torch.Tensor, t_col: torch.Tensor,
                 t_flag: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block's sparse entries below ``t_row``/``t_col`` and its row flags (``_native.filter_block``),
        without keeping the block: ``(i, j, v, flag)`` with block-local indices."""
        if self.a.gemm == "float32":
            return _native.filter_block(self.sq_dists(b, c0, c1), t_row, t_col, t_flag)
        g0, g1 = self._int8_products(b, c0, c1)
        a, r0, r1 = self.a, self.r0, self.r1
        return _native.filter_int8(g0, g1, *a.kappa, a.sq32[r0:r1], b.sq32[c0:c1], t_row, t_col, t_flag)


def eps_rows(a: FeatureSet, r0: int, r1: int, b: FeatureSet, c0: int, c1: int) -> torch.Tensor:
    """Bound on the error of every entry of each row of block ``(a[r0:r1], b[c0:c1])``  # [n] float64"""
    return (a.err_f[r0:r1] * b.err_g[c0:c1].amax(0)).sum(1)


def eps_cols(a: FeatureSet, r0: int, r1: int, b: FeatureSet, c0: int, c1: int) -> torch.Tensor:
    """Bound on the error of every entry of each column of block ``(a[r0:r1], b[c0:c1])``  # [m] float64"""
    return (b.err_g[c0:c1] * a.err_f[r0:r1].amax(0)).sum(1)


def prepare(sets: Iterable[torch.Tensor], device: torch.device, gemm: str = "auto") -> list[FeatureSet]:
    """Centres all sets on (the float32 rounding of) the mean of the first one and builds the GEMM operands.

    Any common shift leaves distances unchanged; ``fl(x − c)`` of float32 values has a relative error of at most
    u of the result, which is what the error bounds assume.

    Args:
        sets: CPU feature tensors ``[N_i, D]``.
        device: compute device.
        gemm: ``'float32'``, ``'int8'`` (CPU with ``torch._int_mm``) or ``'auto'`` (int8 on CPUs with AMX).
    """
    sets = list(sets)
    dims = {s.shape[1] for s in sets}
    if len(dims) != 1:
        raise ValueError(f"feature dimensions differ: {[tuple(s.shape) for s in sets]}")
    d = dims.pop()
    if gemm == "auto":
        # Below 64 features the int8 path saves nothing worth its quantisation pass.
        gemm = "int8" if d >= 64 and int8_gemm_available(device) and _int8_gemm_ok(d) else "float32"
    if gemm not in ("float32", "int8"):
        raise ValueError(f"gemm={gemm!r}: expected 'auto', 'float32' or 'int8'")
    if gemm == "int8" and not (device.type == "cpu" and hasattr(torch, "_int_mm") and _int8_gemm_ok(d)):
        raise ValueError(f"gemm='int8' is not available here (CPU with torch._int_mm giving exact results for "
                         f"{d} features); use gemm='float32'")
    mean = _chunked_mean(sets[0]).to(torch.float32)  # [D]
    stats = []
    for s in sets:
        sq = torch.empty(s.shape[0], dtype=torch.float64)
        mx = 0.0
        for r0, r1, chunk in _float32_chunks(s):
            sq[r0:r1], m = _native.centre_stats(chunk, mean)
            mx = max(mx, m)
        stats.append((s, sq, mx))
    scale = max(mx for _, _, mx in stats)
    if gemm == "int8" and scale == 0.0:
        gemm = "float32"  # all rows identical: nothing to quantise
    out = []
    for s, sq, _ in stats:
        common = {"orig": s, "sq": sq.to(device), "round32": s.dtype == torch.float32, "mean": mean.to(torch.float64),
                  "gemm": gemm, "sq32": sq.to(device=device, dtype=torch.float32)}
        if gemm == "float32":
            xc = torch.empty(s.shape, dtype=torch.float32, device=device)
            m = mean.to(device)
            for r0, r1, chunk in _float32_chunks(s):
                torch.sub(chunk.to(device), m, out=xc[r0:r1])
            # fl(|y|² − 2x·y) + |x|²: |error| ≤ γ_{D+1}(|y|² + 2Σ|x_k y_k|) + ... ≤ 2(D+1)u(|x|²+|y|²), plus the
            # rounding of the centred rows, of the norms and of the last addition (a few u).
            c = (2 * d + 24) * _U32 * 1.01
            sqd = common["sq"]
            one = torch.ones_like(sqd)
            out.append(FeatureSet(xc=xc, err_f=torch.stack([c * sqd, c * one], 1), err_g=torch.stack([one, sqd], 1),
                                  **common))
        else:
            out.append(_quantise(s, mean, scale, common))
    return out


def _float32_chunks(x: torch.Tensor, nbytes: int = 64 << 20):
    """``(r0, r1, float32 rows)``: the tensor itself when it is float32 and contiguous, else converted chunks."""
    if x.dtype == torch.float32 and x.is_contiguous():
        yield 0, x.shape[0], x
        return
    step = max(1, nbytes // (4 * x.shape[1]))
    for r0 in range(0, x.shape[0], step):
        yield r0, min(x.shape[0], r0 + step), x[r0:r0 + step].to(torch.float32).contiguous()


def _quantise(x: torch.Tensor, mean: torch.Tensor, scale: float, common: dict) -> FeatureSet:
    """Two int8 slices per row with a shared scale, and the rigorous error factors of the int8 block distances.

    With ``α = 127/scale`` and ``y = fl(α·fl(x − mean))``: ``Q1 = round(y)``, ``Q2 = round(fl(254 (y − Q1)))``, so
    ``x ≈ x̃ = (Q1 + Q2/254)/α``. A block computes ``ĉ = (Q1·Q1ᵀ + Q1·Q2ᵀ + Q2·Q1ᵀ)/α²`` exactly in int32 (the small
    ``Q2·Q2ᵀ`` term is left out), and ``x·y − ĉ = Δx·ỹ + x·Δy + (Q2x·Q2y)/(254α)²`` with ``Δ = x − x̃``, bounded
    by Cauchy–Schwarz with per-row norms. ``|Δ| ≤ (|ρ| + 128u√D)/(254α) + 2u|x|`` with ``ρ`` the float32 residual
    of the second rounding (``y − Q1`` is exact; ``fl(αx)`` and ``fl(254·)`` round by at most u), and
    ``|x̃| ≤ |x| + |Δ|``. The float32 evaluation of ``|x|² + |y|² − 2ĉ`` and the centring add at most
    ``24u(|x|² + |y|²)``.
    """
    n, d = x.shape
    alpha = float(torch.tensor(127.0 / scale, dtype=torch.float32))  # a float32 value: y = fl(α·x) exactly as used
    q1 = torch.empty(n, d, dtype=torch.int8)
    qq = torch.empty(n, 2 * d, dtype=torch.int8)
    qr = torch.empty(n, 2 * d, dtype=torch.int8)
    rho2 = torch.empty(n, dtype=torch.float64)
    q2sq = torch.empty(n, dtype=torch.float64)
    for r0, r1, chunk in _float32_chunks(x):
        _native.quantise(chunk, mean, alpha, (q1[r0:r1], qq[r0:r1], qr[r0:r1], rho2[r0:r1], q2sq[r0:r1]))
    slack = 1.0 + (d + 16) * _U32  # float64 sums of float32 squares: a margin far above their round-off
    sq = common["sq"].cpu()
    nx = sq.sqrt()
    p = ((rho2.sqrt() * slack + 128 * _U32 * math.sqrt(d)) / (254 * alpha) + 2 * _U32 * nx) * slack
    nn = nx + p
    qn = q2sq.sqrt() * slack / (254 * alpha)
    one = torch.ones_like(sq)
    cu = 24 * _U32
    err_f = torch.stack([2 * p, 2 * nn, 2 * qn, cu * sq, cu * one], 1)
    err_g = torch.stack([nn, p, qn, one, sq], 1)
    return FeatureSet(q1=q1, qq=qq, qr=qr, kappa=(-2.0 / alpha**2, -2.0 / (254.0 * alpha**2)), err_f=err_f,
                      err_g=err_g, **common)


def _chunked_mean(x: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    step = max(1, (64 << 20) // (8 * x.shape[1]))
    for r0 in range(0, x.shape[0], step):
        total += x[r0:r0 + step].sum(0, dtype=torch.float64)
    return total / x.shape[0]


def _block_size(n_max: int, dim: int, budget: int, gemm: str = "float32") -> int:
    """Rows per block so that a block's distances, temporaries and operands fit in ``budget`` bytes."""
    # Per element: the float32 block and a temporary of the same size, index/bool temporaries; int8 adds two int32
    # products. Per row: the operand slabs.
    per_elem = 12.0 if gemm == "float32" else 20.0
    per_row = 8.0 * (dim + 2) if gemm == "float32" else 10.0 * dim
    bs = int((-per_row + math.sqrt(per_row**2 + 4 * per_elem * budget)) / (2 * per_elem))
    return max(1, min(n_max, max(64, bs)))


def _blocks(n: int, bs: int, min_blocks: int = 1) -> list[tuple[int, int]]:
    nb = max(1, math.ceil(n / bs))
    # Within-set matrices compute (nb + 1) / (2 nb) of all pairs: a few blocks buy most of the symmetry saving,
    # as long as blocks stay large enough for an efficient GEMM.
    nb = max(nb, min(min_blocks, n // 512))
    step = math.ceil(n / nb)
    return [(r0, min(n, r0 + step)) for r0 in range(0, n, step)]


def _round_down32(t: torch.Tensor) -> torch.Tensor:
    """float64 → float32 rounded toward −∞ (a float32 bound that is never above the float64 one)."""
    f = t.to(torch.float32)
    fix = f.to(torch.float64) > t
    return torch.where(fix, torch.nextafter(f, torch.full_like(f, -math.inf)), f)


def _round_up32(t: torch.Tensor) -> torch.Tensor:
    f = t.to(torch.float32)
    fix = f.to(torch.float64) < t
    return torch.where(fix, torch.nextafter(f, torch.full_like(f, math.inf)), f)


# ----------------------------------------------------------------------------------------------------------------
# Exact (reference-compatible) arithmetic on a few pairs


def exact_sq_dists(a: FeatureSet, ia: torch.Tensor, b: FeatureSet, ib: torch.Tensor,
                   budget: int = 256 << 20) -> torch.Tensor:
    """Squared distances ``|a[ia_p] − b[ib_p]|²`` in float64 from the original features (CPU)  # [P]"""
    ia = ia.to("cpu", torch.int64)
    ib = ib.to("cpu", torch.int64)
    if a.orig.dtype == b.orig.dtype == torch.float32:
        return _native.pair_sqdist(a.orig, b.orig, ia, ib)
    out = torch.empty(ia.numel(), dtype=torch.float64)
    step = max(1, budget // (3 * 8 * a.dim))
    for s in range(0, ia.numel(), step):
        d = a.rows64(ia[s:s + step]) - b.rows64(ib[s:s + step])
        out[s:s + step] = d.square_().sum(1)
    return out


def reference_distance(sq: torch.Tensor, round32: bool) -> torch.Tensor:
    """Squared float64 distances → the distances ``prdc`` compares (float32 sqrt of float32 values for float32 data)."""
    if round32:
        return sq.to(torch.float32).sqrt()
    return sq.sqrt()


def _strictly_inside(d_sq: torch.Tensor, radius_sq: torch.Tensor, round32: bool) -> torch.Tensor:
    """``d < radius`` exactly as ``prdc`` evaluates it, from float64 squared values."""
    return reference_distance(d_sq, round32) < reference_distance(radius_sq, round32)


# ----------------------------------------------------------------------------------------------------------------
# k-NN radii


class Radii:
    """k-NN radii of one set: float32 values with rigorous bounds for every row, exact values on demand.

    The radius of row i for k is the (k+1)-th smallest distance of the row, its own zero included (``prdc``'s
    "itself excluded"). The float32 k-th value ``w`` is within ``eps[i]`` of the exact one (an order statistic
    moves at most as much as the values it is taken from), which is all the bulk comparisons need; the exact
    float64 value is resolved only for rows that own a borderline comparison.
    """

    def __init__(self, x: FeatureSet, ks: Iterable[int], budget: int):
        ks = sorted({int(k) for k in ks})
        n = x.n
        if ks[0] < 1:
            raise ValueError(f"k={ks[0]}: expected k >= 1")
        if ks[-1] >= n:
            raise ValueError(f"k={ks[-1]} needs at least k+1={ks[-1] + 1} samples in a set; got {n}")
        self.x, self.ks, self.budget = x, ks, budget
        kk = min(n, ks[-1] + 1 + _EXTRA_CANDIDATES)
        self.complete = kk == n
        self.vals, self.idx = _knn_candidates(x, kk, budget)  # [N, kk] sorted float32, int64 (CPU)
        # [N] bound on |float32 − exact| for every entry of the row (the row is the left or the right operand).
        f, g = x.err_f, x.err_g
        self.eps = torch.maximum((f * g.amax(0)).sum(1), (g * f.amax(0)).sum(1)).cpu()
        self._exact = {k: torch.full((n,), math.nan, dtype=torch.float64) for k in ks}

    def approx(self, k: int) -> torch.Tensor:
        """float32 k-th squared distances as float64  # [N]"""
        return self.vals[:, k].to(torch.float64)

    def lower(self, k: int) -> torch.Tensor:
        return self.approx(k) - self.eps

    def upper(self, k: int) -> torch.Tensor:
        return self.approx(k) + self.eps

    def exact(self, k: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Exact float64 squared radii for ``rows`` (all rows when None), resolved once and remembered."""
        rows = torch.arange(self.x.n) if rows is None else rows.to("cpu", torch.int64)
        known = self._exact[k]
        todo = torch.unique(rows[torch.isnan(known[rows])])
        if todo.numel():
            rad, ok = _resolve_kth(self.x, todo, self.vals[todo], self.idx[todo], self.eps[todo], [k],
                                   self.complete)
            known[todo] = rad[k]
            bad = todo[~ok]
            if bad.numel():
                known[bad] = _exact_rows_kth(self.x, bad, [k], self.budget)[k]
        return known[rows]


def _knn_candidates(x: FeatureSet, kk: int, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``kk`` smallest float32 squared distances of each row (and their columns), sorted, over symmetric blocks.

    Diagonal blocks first (a top-k per row gives every row a current k-th value τ); then each off-diagonal block
    is computed once and serves both its rows and its columns: only entries below ``τ`` of their row or column can
    enter a candidate list, and those few are found in one pass (``_native.filter_block``) and merged.
    """
    n = x.n
    dev = x.device
    # Several blocks let the symmetry pay off; int8 GEMMs want larger blocks than float32 ones to run at speed.
    blocks = _blocks(n, _block_size(n, x.dim, budget, x.gemm), min_blocks=8 if x.gemm == "float32" else 4)
    vals = torch.full((n, kk), math.inf, dtype=torch.float32, device=dev)
    idx = torch.full((n, kk), -1, dtype=torch.int64, device=dev)
    with _exact_float32_matmul(), torch.no_grad():
        for r0, r1 in blocks:
            e = BlockOperand(x, r0, r1).sq_dists(x, r0, r1)  # [n, n] squared distances
            t = min(kk, r1 - r0)
            v, j = torch.topk(e, t, dim=1, largest=False, sorted=True)
            vals[r0:r1, :t] = v
            idx[r0:r1, :t] = j + r0
            del e
        for bi, (r0, r1) in enumerate(blocks):
            op = BlockOperand(x, r0, r1)
            for c0, c1 in blocks[bi + 1:]:
                tau = vals[:, -1]  # current k-th candidate of every row: only smaller entries matter
                i, j, v, _ = op.filtered(x, c0, c1, tau[r0:r1], tau[c0:c1])
                gi, gj = i + r0, j + c0
                keep = v < tau[gi]
                _merge(vals, idx, gi[keep], gj[keep], v[keep])
                keep = v < tau[gj]
                _merge(vals, idx, gj[keep], gi[keep], v[keep])
    return vals.cpu(), idx.cpu()


def _merge(vals: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, v: torch.Tensor) -> None:
    """Merges new candidates ``(rows, cols, v)`` into the sorted per-row lists ``vals``/``idx`` (in place)."""
    if rows.numel() == 0:
        return
    kk = vals.shape[1]
    urows = torch.unique(rows)
    # Old and new candidates of the touched rows as one list, sorted by (row, value); keep the first kk per row.
    all_r = torch.cat([urows.repeat_interleave(kk), rows])
    all_v = torch.cat([vals[urows].flatten(), v])
    all_i = torch.cat([idx[urows].flatten(), cols])
    order = torch.argsort(all_v, stable=True)
    order = order[torch.argsort(all_r[order], stable=True)]
    r_sorted = all_r[order]
    start = torch.searchsorted(r_sorted, urows)
    take = (start[:, None] + torch.arange(kk, device=rows.device)).flatten()  # each row has >= kk entries
    vals[urows] = all_v[order[take]].view(-1, kk)
    idx[urows] = all_i[order[take]].view(-1, kk)


def _resolve_kth(x: FeatureSet, row_ids: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, eps: torch.Tensor,
                 ks: list[int], complete: bool) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Exact k-th values from sorted approximate candidates.

    For row i with approximate k-th value w and error bound ε, candidates below ``w − 2ε`` are certainly smaller
    than the exact k-th value and those above ``w + 2ε`` certainly larger; the exact value is found among the few
    in between, which are recomputed in float64. ``ok`` is False for rows where that window may extend past the
    candidates (then the caller recomputes the row).
    """
    v64 = vals.to(torch.float64)  # [R, kk]
    n, kk = v64.shape
    e = eps[:, None]
    windows, below = {}, {}
    union = torch.zeros_like(v64, dtype=torch.bool)
    ok = torch.ones(n, dtype=torch.bool)
    for k in ks:
        w = v64[:, k:k + 1]
        win = (v64 >= w - 2 * e) & (v64 <= w + 2 * e)
        windows[k] = win
        below[k] = (v64 < w - 2 * e).sum(1)
        union |= win
        if not complete:
            ok &= v64[:, -1] > (w + 2 * e).squeeze(1)
    rows, slots = torch.nonzero(union, as_tuple=True)
    exact = torch.full_like(v64, math.inf)
    exact[rows, slots] = exact_sq_dists(x, row_ids[rows], x, idx[rows, slots])
    radii = {}
    for k in ks:
        ek = torch.where(windows[k], exact, torch.full_like(exact, math.inf))
        ek, _ = torch.sort(ek, dim=1)
        pos = (k - below[k]).clamp(0, kk - 1)
        radii[k] = ek.gather(1, pos[:, None]).squeeze(1)
    return radii, ok


def _exact_rows_kth(x: FeatureSet, rows: torch.Tensor, ks: list[int], budget: int) -> dict[int, torch.Tensor]:
    """Exact k-th values for a few rows: float64 distances to every row, resolved like the float32 candidates."""
    n = x.n
    out = {k: torch.empty(rows.numel(), dtype=torch.float64) for k in ks}
    step = max(1, min(rows.numel(), budget // (8 * 3 * max(n, x.dim))))
    cstep = max(1, budget // (8 * 4 * x.dim))
    mean = x.mean
    for s in range(0, rows.numel(), step):
        r = rows[s:s + step]
        xr = x.rows64(r) - mean  # [r, D]
        ar = xr.square().sum(1)
        d = torch.empty(r.numel(), n, dtype=torch.float64)
        amax = torch.zeros((), dtype=torch.float64)
        for c0 in range(0, n, cstep):
            xc = x.orig[c0:c0 + cstep].to(torch.float64) - mean
            ac = xc.square().sum(1)
            amax = torch.maximum(amax, ac.max())
            d[:, c0:c0 + cstep] = ar[:, None] + ac[None, :] - 2 * xr @ xc.T
        eps = (2 * x.dim + 16) * _U64 * (ar + amax)
        vals, order = torch.sort(d, dim=1)
        del d
        rad, _ = _resolve_kth(x, r, vals, order, eps, ks, complete=True)
        for k in ks:
            out[k][s:s + step] = rad[k]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Ball membership across the two sets


@dataclass
class CrossStats:
    """Per-sample results of comparing real-fake distances with the radii.

    Attributes:
        real_ball_count: ``{k: int64 [N_real]}`` fakes strictly inside each real sample's k-NN ball.
        fake_in_real_ball: ``{k: bool [N_fake]}`` the fake lies inside at least one real k-NN ball (precision).
        real_in_fake_ball: ``{k: bool [N_real]}`` the real lies inside at least one fake k-NN ball (recall).
        borderline_pairs: pairs whose float32 comparison was not conclusive and were recomputed in float64.
    """

    real_ball_count: dict[int, torch.Tensor]
    fake_in_real_ball: dict[int, torch.Tensor]
    real_in_fake_ball: dict[int, torch.Tensor]
    borderline_pairs: int = 0


def _thresholds(lower: torch.Tensor, upper: torch.Tensor, eps: torch.Tensor, u: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 thresholds on a float32 squared distance ``e`` with error ``≤ eps`` against a radius in
    ``[lower, upper]``: ``e < t_in`` ⇒ certainly inside (even after ``prdc``'s rounding), ``e ≥ t_out`` ⇒ certainly
    outside, anything between is borderline."""
    t_in = _round_down32(lower * (1 - 8 * u) - eps)
    t_out = _round_up32(upper + eps)
    return t_in, t_out


def cross_stats(real: FeatureSet, fake: FeatureSet, real_radii: Radii | None, fake_radii: Radii | None,
                budget: int, real_ks: Iterable[int] = (), fake_ks: Iterable[int] = (),
                count_ks: Iterable[int] | None = None) -> CrossStats:
    """Decides, for every real-fake pair, whether it lies inside the real's and the fake's k-NN balls.

    One GEMM per block and one pass over it (``_native.filter_block``) that keeps the few pairs below some ball's
    "certainly outside" threshold; those are classified as certainly inside or borderline, and the borderline
    pairs are decided exactly (float64) at the end.

    Args:
        real, fake: prepared sets. real_radii, fake_radii: their ``Radii``.
        real_ks: k values for which to evaluate the real balls (precision, density, coverage).
        fake_ks: k values for which to evaluate the fake balls (recall).
        count_ks: real-ball k values whose per-ball counts must be exact (density, coverage; default all
            ``real_ks``); for the others only "inside some ball" is exact (precision), which lets borderline
            pairs of already-decided fakes be skipped.
    """
    nr, nf = real.n, fake.n
    dev = real.device
    kr, kf = sorted(set(real_ks)), sorted(set(fake_ks))
    count_ks = set(kr) if count_ks is None else set(count_ks)
    round32 = real.round32 and fake.round32
    u = _U32 if round32 else _U64
    r_lo = {k: real_radii.lower(k).to(dev) for k in kr}
    r_hi = {k: real_radii.upper(k).to(dev) for k in kr}
    f_lo = {k: fake_radii.lower(k).to(dev) for k in kf}
    f_hi = {k: fake_radii.upper(k).to(dev) for k in kf}
    count = {k: torch.zeros(nr, dtype=torch.int64, device=dev) for k in kr}
    prec = {k: torch.zeros(nf, dtype=torch.bool, device=dev) for k in kr}
    rec = {k: torch.zeros(nr, dtype=torch.bool, device=dev) for k in kf}
    amb_r: dict[int, list[torch.Tensor]] = {k: [] for k in kr}  # borderline (real, fake) pairs, real balls
    amb_f: dict[int, list[torch.Tensor]] = {k: [] for k in kf}  # ... fake balls
    bs = _block_size(max(nr, nf), real.dim, budget, real.gemm)
    rblocks, fblocks = _blocks(nr, bs), _blocks(nf, bs)
    never = torch.tensor(-math.inf, dtype=torch.float32, device=dev)
    with _exact_float32_matmul(), torch.no_grad():
        for r0, r1 in rblocks:
            op = BlockOperand(real, r0, r1)
            for c0, c1 in fblocks:
                eps_r = eps_rows(real, r0, r1, fake, c0, c1)  # [n]
                eps_f = eps_cols(real, r0, r1, fake, c0, c1)  # [m]
                th_r = {k: _thresholds(r_lo[k][r0:r1], r_hi[k][r0:r1], eps_r, u) for k in kr}
                th_f = {k: _thresholds(f_lo[k][c0:c1], f_hi[k][c0:c1], eps_f, u) for k in kf}
                # Every pair that may lie inside some ball is below the loosest "certainly outside" threshold.
                t_row = torch.stack([th_r[k][1] for k in kr]).amax(0) if kr else never.expand(r1 - r0)
                t_col = torch.stack([th_f[k][1] for k in kf]).amax(0) if kf else never.expand(c1 - c0)
                # With one fake k, a real certainly inside some fake ball needs no more pairs for recall: the
                # kernel flags such rows and drops their fake-ball candidates (fake balls are often large).
                t_flag = th_f[kf[0]][0] if len(kf) == 1 else None
                i, j, v, flag = op.filtered(fake, c0, c1, t_row, t_col, t_flag)
                if t_flag is not None:
                    rec[kf[0]][r0:r1] |= flag.to(dev)
                for k in kr:
                    t_in, t_out = th_r[k][0][i], th_r[k][1][i]
                    ins = v < t_in
                    count[k].index_add_(0, i[ins] + r0, torch.ones_like(i[ins]))
                    prec[k][j[ins] + c0] = True
                    brd = (v < t_out) & ~ins
                    if bool(brd.any()):
                        amb_r[k].append(_borderline(i[brd] + r0, j[brd] + c0, v[brd], eps_r[i[brd]]))
                for k in kf:
                    t_in, t_out = th_f[k][0][j], th_f[k][1][j]
                    ins = v < t_in
                    rec[k][i[ins] + r0] = True
                    brd = (v < t_out) & ~ins
                    if bool(brd.any()):
                        amb_f[k].append(_borderline(i[brd] + r0, j[brd] + c0, v[brd], eps_f[j[brd]]))
    n_border = 0
    for k in kr:
        if amb_r[k]:
            p = torch.cat(amb_r[k])
            if k not in count_ks:  # only "inside some real ball" matters: skip fakes already known to be inside
                p = p[~prec[k].cpu()[p[:, 1].to(torch.int64)]]
            rows, cols, inside, n_exact = _decide(p, real_radii, k, 0, real, fake, round32, u)
            n_border += n_exact
            rows, cols = rows[inside].to(dev), cols[inside].to(dev)
            count[k].index_add_(0, rows, torch.ones_like(rows))
            prec[k][cols] = True
    for k in kf:
        if amb_f[k]:
            p = torch.cat(amb_f[k])
            p = p[~rec[k].cpu()[p[:, 0].to(torch.int64)]]  # reals already inside some fake ball are decided
            rows, cols, inside, n_exact = _decide(p, fake_radii, k, 1, real, fake, round32, u)
            n_border += n_exact
            rec[k][rows[inside].to(dev)] = True
    return CrossStats(real_ball_count={k: v.cpu() for k, v in count.items()},
                      fake_in_real_ball={k: v.cpu() for k, v in prec.items()},
                      real_in_fake_ball={k: v.cpu() for k, v in rec.items()},
                      borderline_pairs=n_border)


def _borderline(rows: torch.Tensor, cols: torch.Tensor, v: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Packs borderline pairs with their float32 value and error bound: float64 ``[P, 4]`` on CPU."""
    return torch.stack([rows.to(torch.float64), cols.to(torch.float64), v.to(torch.float64), eps.to(torch.float64)],
                       1).cpu()


def _decide(p: torch.Tensor, radii: Radii, k: int, owner: int, real: FeatureSet, fake: FeatureSet,
            round32: bool, u: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Decides borderline pairs exactly: first against the exact radius with the float32 value and its bound (which
    settles most of them), then with the float64 distance for the rest.

    Args:
        p: ``_borderline`` rows ``[P, 4]``; owner: 0 when the ball is the real sample's (row), 1 the fake's (col).

    Returns:
        ``(rows, cols, inside, n_exact)`` with ``n_exact`` the pairs whose distance had to be recomputed.
    """
    rows, cols = p[:, 0].to(torch.int64), p[:, 1].to(torch.int64)
    v, eps = p[:, 2], p[:, 3]
    rad = radii.exact(k, rows if owner == 0 else cols)
    surely_in = v + eps < rad * (1 - 8 * u)
    surely_out = v - eps >= rad
    inside = surely_in.clone()
    todo = torch.nonzero(~(surely_in | surely_out)).flatten()
    if todo.numel():
        d = exact_sq_dists(real, rows[todo], fake, cols[todo])
        inside[todo] = _strictly_inside(d, rad[todo], round32)
    return rows, cols, inside, int(todo.numel())
