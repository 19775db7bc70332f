"""A small C kernel for the one pass over each distance block that PyTorch cannot fuse.

``filter_block(e, t_row, t_col, t_flag)`` returns the few positions of a distance block that can matter (below a
per-row or a per-column threshold) and a per-row flag (some entry below a per-column threshold). In PyTorch this
takes broadcast comparisons, logical operations and a nonzero scan (several passes over the block, ~10-20× the
time of one vectorised pass); the C loop reads each row once while it sits in cache, vectorised by the compiler.

The C source is compiled on first use with the system C compiler (``cc -O3 -march=native``) into
``~/.cache/histlib/kernels/`` (keyed by the source hash and the machine) and loaded with ``ctypes`` — no PyTorch
headers, so the build takes about a second, and no OpenMP runtime: row ranges run in Python threads, since ctypes
releases the GIL. Without a compiler, or with ``HISTLIB_NO_NATIVE=1``, the PyTorch
version ``filter_block_torch`` (the reference twin, same results) is used after one warning.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

C_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>

/* One row of a distance block: flag = any_j row[j] < tflag[j]; appends (i, j, row[j]) where row[j] < ti, or where
   row[j] < tcol[j] when the flag is 0. Returns the new count (entries past cap are counted, not written). */
static inline int64_t filter_row(const float *restrict row, int64_t i, int64_t m, float ti,
                                 const float *restrict tcol, const float *restrict tflag, int8_t *restrict flag,
                                 int64_t *restrict out_i, int64_t *restrict out_j, float *restrict out_v,
                                 int64_t count, int64_t cap) {
    int f = 0;
    #pragma omp simd reduction(|:f)
    for (int64_t j = 0; j < m; j++) f |= row[j] < tflag[j];
    flag[i] = (int8_t)f;
    int64_t j0 = 0;
    for (; j0 + 64 <= m; j0 += 64) {
        int hit = 0;
        if (f) {
            #pragma omp simd reduction(|:hit)
            for (int jj = 0; jj < 64; jj++) hit |= row[j0 + jj] < ti;
        } else {
            #pragma omp simd reduction(|:hit)
            for (int jj = 0; jj < 64; jj++) {
                float t = tcol[j0 + jj] > ti ? tcol[j0 + jj] : ti;
                hit |= row[j0 + jj] < t;
            }
        }
        if (!hit) continue;
        for (int jj = 0; jj < 64; jj++) {
            float t = (!f && tcol[j0 + jj] > ti) ? tcol[j0 + jj] : ti;
            if (row[j0 + jj] < t) {
                if (count < cap) { out_i[count] = i; out_j[count] = j0 + jj; out_v[count] = row[j0 + jj]; }
                count++;
            }
        }
    }
    for (int64_t j = j0; j < m; j++) {
        float t = (!f && tcol[j] > ti) ? tcol[j] : ti;
        if (row[j] < t) {
            if (count < cap) { out_i[count] = i; out_j[count] = j; out_v[count] = row[j]; }
            count++;
        }
    }
    return count;
}

/* A row-major float32 block e [n, m] (row stride ld), one pass per row (see filter_row). Single-threaded: the
   caller runs row ranges in parallel threads (ctypes releases the GIL). Returns the number of entries found. */
int64_t histlib_filter_block(const float *restrict e, int64_t n, int64_t m, int64_t ld,
                             const float *restrict trow, const float *restrict tcol, const float *restrict tflag,
                             int8_t *restrict flag, int64_t *restrict out_i, int64_t *restrict out_j,
                             float *restrict out_v, int64_t cap) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++)
        count = filter_row(e + i * ld, i, m, trow[i], tcol, tflag, flag, out_i, out_j, out_v, count, cap);
    return count;
}

/* The same on an int8 block given as its two exact int32 products: each row of squared distances
   e[i,j] = ((sqb[j] + k1·G1[i,j]) + k0·G0[i,j]) + sqa[i] is formed in a cache-resident buffer, never in memory. */
int64_t histlib_filter_int8(const int32_t *restrict g0, const int32_t *restrict g1, int64_t n, int64_t m,
                            int64_t ld, float k0, float k1, const float *restrict sqa, const float *restrict sqb,
                            const float *restrict trow, const float *restrict tcol, const float *restrict tflag,
                            int8_t *restrict flag, int64_t *restrict out_i, int64_t *restrict out_j,
                            float *restrict out_v, int64_t cap) {
    float *row = (float *)malloc(sizeof(float) * (m > 0 ? m : 1));
    if (!row) return -1;
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        const int32_t *restrict a = g0 + i * ld, *restrict b = g1 + i * ld;
        const float si = sqa[i];
        #pragma omp simd
        for (int64_t j = 0; j < m; j++) {
            float t = sqb[j] + (float)b[j] * k1;
            t = t + (float)a[j] * k0;
            row[j] = t + si;
        }
        count = filter_row(row, i, m, trow[i], tcol, tflag, flag, out_i, out_j, out_v, count, cap);
    }
    free(row);
    return count;
}

/* Squared distances of row pairs in float64: out[p] = Σ_k (x[ia[p], k] − y[ib[p], k])² (float32 rows). */
void histlib_pair_sqdist(const float *restrict x, int64_t ldx, const float *restrict y, int64_t ldy, int64_t d,
                         const int64_t *restrict ia, const int64_t *restrict ib, int64_t p, double *restrict out) {
    for (int64_t q = 0; q < p; q++) {
        const float *restrict a = x + ia[q] * ldx, *restrict b = y + ib[q] * ldy;
        double acc = 0.0;
        #pragma omp simd reduction(+:acc)
        for (int64_t k = 0; k < d; k++) {
            double t = (double)a[k] - (double)b[k];
            acc += t * t;
        }
        out[q] = acc;
    }
}

/* Centred float32 rows xc = fl(x − mean): their float64 squared norms, and max |xc| (over the rows given). */
void histlib_centre_stats(const float *restrict x, int64_t n, int64_t d, int64_t ld, const float *restrict mean,
                          double *restrict sq, float *restrict maxabs) {
    float mx = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        const float *restrict row = x + i * ld;
        double acc = 0.0;
        float rmx = 0.0f;
        #pragma omp simd reduction(+:acc) reduction(max:rmx)
        for (int64_t k = 0; k < d; k++) {
            float c = row[k] - mean[k];
            acc += (double)c * (double)c;
            float a = c < 0 ? -c : c;
            rmx = a > rmx ? a : rmx;
        }
        sq[i] = acc;
        mx = rmx > mx ? rmx : mx;
    }
    *maxabs = mx;
}

/* Two int8 slices of the centred rows: y = fl(alpha·xc), Q1 = rint(y), r = fl(254·(y − Q1)), Q2 = rint(r).
   Writes Q1 [n, d], [Q1|Q2] and [Q2|Q1] [n, 2d], and per row Σ(r − Q2)² and ΣQ2² in float64. */
void histlib_quantise(const float *restrict x, int64_t n, int64_t d, int64_t ld, const float *restrict mean,
                      float alpha, int8_t *restrict q1, int8_t *restrict qq, int8_t *restrict qr,
                      double *restrict rho2, double *restrict q2sq) {
    for (int64_t i = 0; i < n; i++) {
        const float *restrict row = x + i * ld;
        int8_t *restrict o1 = q1 + i * d, *restrict oq = qq + i * 2 * d, *restrict orr = qr + i * 2 * d;
        double acc_r = 0.0, acc_q = 0.0;
        #pragma omp simd reduction(+:acc_r, acc_q)
        for (int64_t k = 0; k < d; k++) {
            float c = row[k] - mean[k];
            float y = c * alpha;
            float a1 = __builtin_rintf(y);
            float r = (y - a1) * 254.0f;
            float a2 = __builtin_rintf(r);
            float rho = r - a2;
            acc_r += (double)rho * (double)rho;
            acc_q += (double)a2 * (double)a2;
            int8_t i1 = (int8_t)a1, i2 = (int8_t)a2;
            o1[k] = i1; oq[k] = i1; oq[d + k] = i2; orr[k] = i2; orr[d + k] = i1;
        }
        rho2[i] = acc_r;
        q2sq[i] = acc_q;
    }
}
"""

_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_TRIED = False
_WARNED = False
BUILD_ERROR: str | None = None


def _cache_dir() -> Path:
    return Path(os.path.expanduser("~")) / ".cache" / "histlib" / "kernels"


def _build() -> ctypes.CDLL:
    tag = hashlib.sha256((C_SOURCE + platform.machine() + platform.node()).encode()).hexdigest()[:16]
    out = _cache_dir() / f"filter-{tag}.so"
    if not out.is_file():
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            raise RuntimeError("no C compiler found (cc/gcc/clang)")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            src = Path(tmp) / "filter.c"
            src.write_text(C_SOURCE)
            so = Path(tmp) / "filter.so"
            cmd = [cc, "-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC", str(src), "-o", str(so)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()[:500]}")
            os.replace(so, out)  # atomic: a concurrent build never sees a half-written library
    lib = ctypes.CDLL(str(out))
    vp, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    f = lib.histlib_filter_block
    f.restype = i64
    f.argtypes = [vp, i64, i64, i64, vp, vp, vp, vp, vp, vp, vp, i64]
    f = lib.histlib_filter_int8
    f.restype = i64
    f.argtypes = [vp, vp, i64, i64, i64, f32, f32, vp, vp, vp, vp, vp, vp, vp, vp, vp, i64]
    f = lib.histlib_pair_sqdist
    f.restype = None
    f.argtypes = [vp, i64, vp, i64, i64, vp, vp, i64, vp]
    g = lib.histlib_centre_stats
    g.restype = None
    g.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                  ctypes.c_void_p]
    q = lib.histlib_quantise
    q.restype = None
    q.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_float,
                  ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def native_library() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first use; None (after one warning) when it cannot be built."""
    global _LIB, _TRIED, BUILD_ERROR, _WARNED
    if os.environ.get("HISTLIB_NO_NATIVE", "0") in ("1", "true", "yes"):
        return None
    with _LOCK:
        if not _TRIED:
            _TRIED = True
            try:
                _LIB = _build()
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                BUILD_ERROR = str(e)
        if _LIB is None and not _WARNED:
            _WARNED = True
            warnings.warn(f"histlib.metrics: native distance filter unavailable ({BUILD_ERROR}); using the slower "
                          "PyTorch version (same results)", RuntimeWarning, stacklevel=3)
    return _LIB


def filter_block_torch(e: torch.Tensor, t_row: torch.Tensor, t_col: torch.Tensor, t_flag: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference twin of ``filter_block`` (same results, row-major order)."""
    if t_flag is None:
        flag = torch.zeros(e.shape[0], dtype=torch.bool, device=e.device)
    else:
        flag = (e - t_flag[None, :]).amin(1) < 0  # the sign of a float subtraction is exact
    t = torch.where(flag[:, None], t_row[:, None], torch.maximum(t_row[:, None], t_col[None, :]))
    i, j = torch.nonzero(e < t, as_tuple=True)
    return i, j, e[i, j], flag


def int8_block_torch(g0: torch.Tensor, g1: torch.Tensor, k0: float, k1: float, sqa: torch.Tensor,
                     sqb: torch.Tensor) -> torch.Tensor:
    """Squared distances of an int8 block from its int32 products: ``((|y|² + k1·G1) + k0·G0) + |x|²``  # [n, m]"""
    e = torch.add(sqb[None, :], g1, alpha=k1)
    e.add_(g0, alpha=k0)
    return e.add_(sqa[:, None])


def _run_rows(n: int, call) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs ``call(r0, r1, out_i, out_j, out_v, cap) -> count`` on row ranges in parallel, growing buffers."""

    def run(r0: int, r1: int):
        cap = max(256, 8 * (r1 - r0))
        while True:
            oi = torch.empty(cap, dtype=torch.int64)
            oj = torch.empty(cap, dtype=torch.int64)
            ov = torch.empty(cap, dtype=torch.float32)
            count = call(r0, r1, oi, oj, ov, cap)
            if count < 0:
                raise MemoryError("histlib native filter: out of memory")
            if count <= cap:
                return oi[:count] + r0, oj[:count], ov[:count]
            cap = int(count)

    out = _parallel(run, n, min_rows=64)
    if len(out) == 1:
        return out[0]
    return tuple(torch.cat([o[t] for o in out]) for t in range(3))


def _use_native(impl: str, *tensors: torch.Tensor) -> ctypes.CDLL | None:
    if impl == "torch" or any(t.device.type != "cpu" for t in tensors):
        return None
    lib = native_library()
    if lib is None and impl == "native":
        raise RuntimeError(f"native distance kernels unavailable: {BUILD_ERROR or 'disabled by HISTLIB_NO_NATIVE'}")
    return lib


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def filter_block(e: torch.Tensor, t_row: torch.Tensor, t_col: torch.Tensor, t_flag: torch.Tensor | None = None,
                 impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over a distance block: row flags and the sparse entries below a threshold.

    ``flag[i] = any_j e[i, j] < t_flag[j]`` (all False when ``t_flag`` is None); entries ``(i, j, e[i, j])`` with
    ``e[i, j] < t_row[i]``, or ``e[i, j] < t_col[j]`` in rows whose flag is False (order unspecified).

    Args:
        e: float32 block ``[n, m]`` (rows contiguous); t_row ``[n]``, t_col ``[m]``, t_flag ``[m]`` float32.
        impl: ``'auto'`` (C on CPU when it builds, else PyTorch), ``'native'`` (error if unavailable), ``'torch'``.

    Returns:
        ``(i [P] int64, j [P] int64, v [P] float32, flag [n] bool)``.
    """
    lib = _use_native(impl, e)
    if lib is None:
        return filter_block_torch(e, t_row, t_col, t_flag)
    if e.dtype != torch.float32 or e.stride(1) != 1:
        raise ValueError(f"filter_block: expected a float32 block with contiguous rows, got {e.dtype} {e.stride()}")
    n, m = e.shape
    t_row, t_col = _f32(t_row), _f32(t_col)
    t_flag = _f32(torch.full((m,), -math.inf) if t_flag is None else t_flag)
    flag = torch.empty(n, dtype=torch.int8)

    def call(r0, r1, oi, oj, ov, cap):
        return lib.histlib_filter_block(e[r0:r1].data_ptr(), r1 - r0, m, e.stride(0), t_row[r0:r1].data_ptr(),
                                        t_col.data_ptr(), t_flag.data_ptr(), flag[r0:r1].data_ptr(), oi.data_ptr(),
                                        oj.data_ptr(), ov.data_ptr(), cap)

    i, j, v = _run_rows(n, call)
    return i, j, v, flag.to(torch.bool)


def filter_int8(g0: torch.Tensor, g1: torch.Tensor, k0: float, k1: float, sqa: torch.Tensor, sqb: torch.Tensor,
                t_row: torch.Tensor, t_col: torch.Tensor, t_flag: torch.Tensor | None = None, impl: str = "auto"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``filter_block`` on the squared distances ``int8_block_torch(g0, g1, k0, k1, sqa, sqb)``, formed row by row
    in cache (the C version never writes the float block to memory). Same returns as ``filter_block``.

    The C loop may fuse a multiply and an add (one rounding instead of two), so its values can differ from the
    PyTorch twin's by an ulp; both stay within the error bound the callers use.
    """
    lib = _use_native(impl, g0)
    if lib is None:
        return filter_block_torch(int8_block_torch(g0, g1, k0, k1, sqa, sqb), t_row, t_col, t_flag)
    n, m = g0.shape
    if g0.dtype != torch.int32 or g1.shape != g0.shape or g0.stride() != g1.stride() or g0.stride(1) != 1:
        raise ValueError("filter_int8: expected two int32 blocks of the same shape with contiguous rows")
    sqa, sqb, t_row, t_col = _f32(sqa), _f32(sqb), _f32(t_row), _f32(t_col)
    t_flag = _f32(torch.full((m,), -math.inf) if t_flag is None else t_flag)
    flag = torch.empty(n, dtype=torch.int8)

    def call(r0, r1, oi, oj, ov, cap):
        return lib.histlib_filter_int8(g0[r0:r1].data_ptr(), g1[r0:r1].data_ptr(), r1 - r0, m, g0.stride(0), k0, k1,
                                       sqa[r0:r1].data_ptr(), sqb.data_ptr(), t_row[r0:r1].data_ptr(), t_col.data_ptr(),
                                       t_flag.data_ptr(), flag[r0:r1].data_ptr(), oi.data_ptr(), oj.data_ptr(),
                                       ov.data_ptr(), cap)

    i, j, v = _run_rows(n, call)
    return i, j, v, flag.to(torch.bool)


def pair_sqdist_torch(x: torch.Tensor, y: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
    """Reference twin of ``pair_sqdist``."""
    return (x.index_select(0, ia).to(torch.float64) - y.index_select(0, ib).to(torch.float64)).square_().sum(1)


def pair_sqdist(x: torch.Tensor, y: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor, impl: str = "auto"
                ) -> torch.Tensor:
    """``Σ_k (x[ia_p, k] − y[ib_p, k])²`` in float64 for row pairs ``p`` (CPU tensors)  # [P] float64"""
    ia = ia.to(torch.int64).contiguous()
    ib = ib.to(torch.int64).contiguous()
    lib = _use_native(impl, x, y)
    ok = lib is not None and x.dtype == y.dtype == torch.float32 and x.stride(1) == 1 and y.stride(1) == 1
    if not ok:
        return pair_sqdist_torch(x, y, ia, ib)
    out = torch.empty(ia.numel(), dtype=torch.float64)

    def run(p0, p1):
        lib.histlib_pair_sqdist(x.data_ptr(), x.stride(0), y.data_ptr(), y.stride(0), x.shape[1],
                                ia[p0:p1].data_ptr(), ib[p0:p1].data_ptr(), p1 - p0, out[p0:p1].data_ptr())

    _parallel(run, ia.numel(), min_rows=256)
    return out


_POOL = None


def _pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="histlib-filter")
    return _POOL


def _parallel(fn, n: int, min_rows: int = 16) -> list:
    """``fn(r0, r1)`` on contiguous row ranges, one per thread (the C functions release the GIL)."""
    parts = min(torch.get_num_threads(), max(1, n // min_rows))
    bounds = [(n * p // parts, n * (p + 1) // parts) for p in range(parts)]
    if len(bounds) == 1:
        return [fn(*bounds[0])]
    return [f.result() for f in [_pool().submit(fn, r0, r1) for r0, r1 in bounds]]


def centre_stats_torch(x: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Reference twin of ``centre_stats``."""
    c = x.to(torch.float32) - mean
    return torch.linalg.vector_norm(c, dim=1, dtype=torch.float64).square(), float(c.abs().amax()) if c.numel() else 0.0


def centre_stats(x: torch.Tensor, mean: torch.Tensor, impl: str = "auto") -> tuple[torch.Tensor, float]:
    """Squared float64 norms of ``fl(x − mean)`` per row and ``max |fl(x − mean)|`` for float32 rows ``x [n, d]``.

    The norms are accumulated in float64 from the exact squares of the float32 differences (the C loop and the
    PyTorch twin agree to float64 round-off).
    """
    lib = None if impl == "torch" else native_library()
    if lib is None or x.device.type != "cpu" or x.dtype != torch.float32 or x.stride(1) != 1:
        return centre_stats_torch(x, mean)
    n, d = x.shape
    mean = mean.to(torch.float32).contiguous()
    sq = torch.empty(n, dtype=torch.float64)

    def run(r0, r1):
        mx = ctypes.c_float(0.0)
        lib.histlib_centre_stats(x[r0:r1].data_ptr(), r1 - r0, d, x.stride(0), mean.data_ptr(), sq[r0:r1].data_ptr(),
                                 ctypes.byref(mx))
        return mx.value

    return sq, max(_parallel(run, n), default=0.0)


def quantise_torch(x: torch.Tensor, mean: torch.Tensor, alpha: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference twin of ``quantise``: ``(q1 [n, d], qq [n, 2d], qr [n, 2d], Σρ² [n], ΣQ2² [n])``."""
    y = (x.to(torch.float32) - mean) * alpha
    a1 = torch.round(y)
    r = (y - a1) * 254
    a2 = torch.round(r)
    rho2 = (r - a2).to(torch.float64).square().sum(1)
    q2sq = a2.to(torch.float64).square().sum(1)
    i1, i2 = a1.to(torch.int8), a2.to(torch.int8)
    return i1, torch.cat([i1, i2], 1), torch.cat([i2, i1], 1), rho2, q2sq


def quantise(x: torch.Tensor, mean: torch.Tensor, alpha: float, out: tuple[torch.Tensor, ...],
             impl: str = "auto") -> None:
    """Two int8 slices of ``fl(x − mean)`` (see ``histlib.metrics.distances._quantise``), written into
    ``out = (q1, qq, qr, rho2, q2sq)``."""
    q1, qq, qr, rho2, q2sq = out
    lib = None if impl == "torch" else native_library()
    if lib is None or x.device.type != "cpu" or x.dtype != torch.float32 or x.stride(1) != 1:
        for t, v in zip(out, quantise_torch(x, mean, alpha)):
            t.copy_(v)
        return
    n, d = x.shape
    mean = mean.to(torch.float32).contiguous()

    def run(r0, r1):
        lib.histlib_quantise(x[r0:r1].data_ptr(), r1 - r0, d, x.stride(0), mean.data_ptr(), alpha,
                             q1[r0:r1].data_ptr(), qq[r0:r1].data_ptr(), qr[r0:r1].data_ptr(), rho2[r0:r1].data_ptr(),
                             q2sq[r0:r1].data_ptr())

    _parallel(run, n)
