"""CuPy twins of :mod:`diffsolve.kernels.cpu.ot` (identical signatures, ``out`` in place).

``lse_rows``: one 256-thread block per row (``blockIdx.x``) and problem (``blockIdx.y``);
each thread keeps an online log-sum-exp pair (running max, sum rescaled to it) over a
strided part of the row, then the pairs are merged in shared memory. ``lse_cols``: one thread
per column, so a warp reads 32 consecutive entries of a row of ``C`` (coalesced, ``C`` never
transposed); the rows are split into chunks (``blockIdx.y``) so that a square problem still
fills the GPU, each chunk writes its (max, sum) pair per column, and a second kernel merges
the chunks in a fixed order (deterministic, no atomics). Problems with ``active[k] == 0``
are skipped. Arithmetic in the input dtype (float32 or float64).

The online pair update is the streaming log-sum-exp of Milakov & Gimelshein, "Online
normalizer calculation for softmax" (2018), algorithm 3.
"""

from __future__ import annotations

import cupy
import numpy as np

from ._raw import KernelCache, as_device

__all__ = ["lse_cols", "lse_rows"]

_THREADS = 256
# aim for at least this many blocks in lse_cols (a few per SM on current GPUs)
_TARGET_BLOCKS = 1024
_MIN_ROWS_PER_CHUNK = 32

_COMMON = r"""
// -inf without relying on <math.h>'s INFINITY under NVRTC
#define NEG_INF ((real_t)(-__longlong_as_double(0x7ff0000000000000LL)))
__device__ __forceinline__ void lse_push(real_t v, real_t &mx, real_t &s) {
    // add exp(v) to the pair (mx, s) meaning exp(mx) * s; -inf terms add nothing
    if (v == NEG_INF) return;
    if (v > mx) { s = s * exp(mx - v) + (real_t)1; mx = v; }
    else        { s += exp(v - mx); }
}
__device__ __forceinline__ void lse_merge(real_t m2, real_t s2, real_t &mx, real_t &s) {
    if (m2 == NEG_INF) return;
    if (mx == NEG_INF) { mx = m2; s = s2; return; }
    if (m2 > mx) { s = s * exp(mx - m2) + s2; mx = m2; }
    else         { s += s2 * exp(m2 - mx); }
}
"""

_ROWS = _COMMON + r"""
extern "C" __global__ void lse_rows(const real_t* __restrict__ C, const real_t* __restrict__ g,
                                    const double eps, const unsigned char* __restrict__ active,
                                    real_t* __restrict__ out, const long long n, const long long m)
{
    const long long k = blockIdx.y, i = blockIdx.x;
    if (!active[k]) return;
    const real_t inv = (real_t)(1.0 / eps);
    const real_t* row = C + (k * n + i) * m;
    const real_t* gk = g + k * m;
    real_t mx = NEG_INF, s = 0;
    for (long long j = threadIdx.x; j < m; j += blockDim.x)
        lse_push((gk[j] - row[j]) * inv, mx, s);
    __shared__ real_t sm[256], ss[256];
    sm[threadIdx.x] = mx; ss[threadIdx.x] = s;
    __syncthreads();
    for (int h = blockDim.x / 2; h > 0; h >>= 1) {
        if (threadIdx.x < h) {
            real_t a = sm[threadIdx.x], b = ss[threadIdx.x];
            lse_merge(sm[threadIdx.x + h], ss[threadIdx.x + h], a, b);
            sm[threadIdx.x] = a; ss[threadIdx.x] = b;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        const real_t M = sm[0];
        out[k * n + i] = (M == NEG_INF) ? NEG_INF
                                          : (real_t)eps * (M + log(ss[0]));
    }
}
"""

_COLS = _COMMON + r"""
extern "C" __global__ void lse_cols_partial(const real_t* __restrict__ C,
                                            const real_t* __restrict__ f, const double eps,
                                            const unsigned char* __restrict__ active,
                                            real_t* __restrict__ pm, real_t* __restrict__ ps,
                                            const long long n, const long long m,
                                            const long long rows_per_chunk)
{
    const long long k = blockIdx.z, c = blockIdx.y;
    const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (!active[k] || j >= m) return;
    const real_t inv = (real_t)(1.0 / eps);
    const long long lo = c * rows_per_chunk;
    const long long hi = (lo + rows_per_chunk < n) ? lo + rows_per_chunk : n;
    const real_t* Ck = C + k * n * m;
    const real_t* fk = f + k * n;
    real_t mx = NEG_INF, s = 0;
    for (long long i = lo; i < hi; ++i)
        lse_push((fk[i] - Ck[i * m + j]) * inv, mx, s);
    const long long idx = (k * gridDim.y + c) * m + j;
    pm[idx] = mx; ps[idx] = s;
}

extern "C" __global__ void lse_cols_merge(const real_t* __restrict__ pm,
                                          const real_t* __restrict__ ps, const double eps,
                                          const unsigned char* __restrict__ active,
                                          real_t* __restrict__ out, const long long m,
                                          const long long n_chunks)
{
    const long long k = blockIdx.y;
    const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (!active[k] || j >= m) return;
    real_t mx = NEG_INF, s = 0;
    for (long long c = 0; c < n_chunks; ++c) {
        const long long idx = (k * n_chunks + c) * m + j;
        lse_merge(pm[idx], ps[idx], mx, s);
    }
    out[k * m + j] = (mx == NEG_INF) ? NEG_INF : (real_t)eps * (mx + log(s));
}
"""

_SOURCES = {
    "lse_rows": (_ROWS, ("real_t",)),
    "lse_cols_partial": (_COLS, ("real_t",)),
    "lse_cols_merge": (_COLS, ("real_t",)),
}
_CACHE = KernelCache(_SOURCES)


def _check(C, v, active, out, n_v, n_out, what):
    if C.ndim != 3 or v.ndim != 2 or out.ndim != 2 or active.ndim != 1:
        raise ValueError(f"{what}: expected C (B, n, m), potentials (B, .), active (B,), "
                         f"out (B, .); got {C.shape}, {v.shape}, {active.shape}, {out.shape}")
    B = C.shape[0]
    if v.shape != (B, n_v) or out.shape != (B, n_out) or active.shape != (B,):
        raise ValueError(f"{what}: shapes do not match C {C.shape}: potentials {v.shape}, "
                         f"active {active.shape}, out {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{what}: out must be C-contiguous")
    if B > 65535:
        raise ValueError(f"{what}: at most 65535 problems per call, got {B}")


def lse_rows(C, g, eps, active, out):
    """``out[k, i] = eps * log sum_j exp((g[k, j] - C[k, i, j]) / eps)`` for active ``k``
    (CUDA twin of :func:`diffsolve.kernels.cpu.ot.lse_rows`)."""
    C = as_device(C, "lse_rows: C")
    g = as_device(g, "lse_rows: g").astype(C.dtype, copy=False)
    active = as_device(active, "lse_rows: active").astype(cupy.uint8, copy=False)
    _check(C, g, active, out, C.shape[2], C.shape[1], "lse_rows")
    B, n, m = C.shape
    if B == 0 or n == 0:
        return out
    kern = _CACHE.get("lse_rows", (C, "lse_rows: C"))
    # scalars as explicitly typed NumPy scalars: the kernel takes double and long long
    kern((n, B), (_THREADS,), (C, g, np.float64(eps), active, out, np.int64(n), np.int64(m)))
    return out


def lse_cols(C, f, eps, active, out):
    """``out[k, j] = eps * log sum_i exp((f[k, i] - C[k, i, j]) / eps)`` for active ``k``
    (CUDA twin of :func:`diffsolve.kernels.cpu.ot.lse_cols`)."""
    C = as_device(C, "lse_cols: C")
    f = as_device(f, "lse_cols: f").astype(C.dtype, copy=False)
    active = as_device(active, "lse_cols: active").astype(cupy.uint8, copy=False)
    _check(C, f, active, out, C.shape[1], C.shape[2], "lse_cols")
    B, n, m = C.shape
    if B == 0 or m == 0:
        return out
    col_blocks = (m + _THREADS - 1) // _THREADS
    want = max(1, _TARGET_BLOCKS // (col_blocks * B))
    n_chunks = max(1, min(want, n // _MIN_ROWS_PER_CHUNK, 65535))
    rows_per_chunk = (n + n_chunks - 1) // n_chunks
    n_chunks = (n + rows_per_chunk - 1) // rows_per_chunk
    pm = cupy.empty((B, n_chunks, m), dtype=C.dtype)
    ps = cupy.empty((B, n_chunks, m), dtype=C.dtype)
    part = _CACHE.get("lse_cols_partial", (C, "lse_cols: C"))
    part((col_blocks, n_chunks, B), (_THREADS,),
         (C, f, np.float64(eps), active, pm, ps, np.int64(n), np.int64(m),
          np.int64(rows_per_chunk)))
    merge = _CACHE.get("lse_cols_merge", (C, "lse_cols: C"))
    merge((col_blocks, B), (_THREADS,),
          (pm, ps, np.float64(eps), active, out, np.int64(m), np.int64(n_chunks)))
    return out
