"""CuPy twins of :mod:`diffsolve.kernels.cpu.ot_newton` (Sinkhorn–Newton–Sparse kernels).

Same names, signatures and semantics as the Numba versions, on ``cupy.ndarray`` arguments;
scalars that the CPU versions return as Python floats are returned as Python floats here
too (one device-to-host read, which the solver needs anyway to size the CSR arrays).

- :func:`plan_marginals`: one elementwise kernel for the plan, CuPy reductions for its sums.
- :func:`kth_largest`: every warp scans one row, each lane keeping the ``s`` largest entries
  of its strided slice; the ``k``-th largest of those candidates bounds the answer from
  below, and the answer is selected among the few entries above that bound.
- :func:`threshold_csr`: warp per row, ``__ballot_sync`` / ``__popc`` compaction, so each
  row's columns come out in increasing order without atomics.
- :func:`csr_transpose`: a stable sort of the entries by column.
- :func:`schur_pcg`: the same CG iteration driven from Python, its products by the CSR
  kernels of :mod:`diffsolve.kernels.cuda.sparse` (two scalars read back per iteration).

Imports :mod:`cupy` at the top: this module is only imported once CuPy inputs were seen.
"""

from __future__ import annotations

import cupy
import numpy as np

from ._raw import KernelCache, as_device
from .sparse import csr_matvec

__all__ = ["csr_transpose", "kth_largest", "newton_step", "plan_marginals", "schur_pcg",
           "threshold_csr"]

_WARP = 32
_THREADS = 256  # 8 warps, i.e. 8 rows, per block
_MAX_S = 64

_PLAN = cupy.ElementwiseKernel(
    "raw T f, raw T g, T C, T inv_eps, int64 m",
    "T P",
    "P = exp((f[i / m] + g[i % m] - C) * inv_eps)",
    "diffsolve_ot_newton_plan",
)

_LANE_TOP = r"""
extern "C" __global__ void lane_top(const real_t* __restrict__ P, const long long n,
                                    const long long m, const int s, real_t* __restrict__ out)
{
    // thread (row, lane): the s largest entries of P[row, lane::32], decreasing, padded
    // with -inf; adjacent lanes read adjacent columns (coalesced)
    const long long gid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long row = gid / 32;
    const int lane = (int)(gid % 32);
    if (row >= n) return;
    real_t* top = out + (row * 32 + lane) * s;
    // -inf without math headers: the square of the largest double overflows (to inf in
    // float as well)
    const real_t ninf = -((real_t)1e308 * (real_t)1e308);
    for (int t = 0; t < s; ++t) top[t] = ninf;
    const real_t* Pr = P + row * m;
    for (long long j = lane; j < m; j += 32) {
        const real_t v = Pr[j];
        if (v > top[s - 1]) {
            int t = s - 1;
            while (t > 0 && top[t - 1] < v) { top[t] = top[t - 1]; --t; }
            top[t] = v;
        }
    }
}
"""

_COUNT_ROWS = r"""
extern "C" __global__ void count_rows(const real_t* __restrict__ P, const real_t tau,
                                      const long long n, const long long m,
                                      long long* __restrict__ counts)
{
    // one warp per row (blockDim is a multiple of 32, so a warp never straddles two rows)
    const long long gid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long row = gid / 32;
    const int lane = threadIdx.x & 31;
    if (row >= n) return;
    const real_t* Pr = P + row * m;
    long long k = 0;
    for (long long j0 = 0; j0 < m; j0 += 32) {
        const long long j = j0 + lane;
        const bool keep = j < m && Pr[j] >= tau && Pr[j] > (real_t)0;
        k += __popc(__ballot_sync(0xffffffffu, keep));
    }
    if (lane == 0) counts[row] = k;
}
"""

_FILL_ROWS = r"""
extern "C" __global__ void fill_rows(const real_t* __restrict__ P, const real_t tau,
                                     const long long n, const long long m,
                                     const long long* __restrict__ indptr,
                                     long long* __restrict__ indices, real_t* __restrict__ data)
{
    const long long gid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long row = gid / 32;
    const int lane = threadIdx.x & 31;
    if (row >= n) return;
    const real_t* Pr = P + row * m;
    long long pos = indptr[row];
    const unsigned below = (1u << lane) - 1u;
    for (long long j0 = 0; j0 < m; j0 += 32) {
        const long long j = j0 + lane;
        const real_t v = j < m ? Pr[j] : (real_t)0;
        const bool keep = j < m && v >= tau && v > (real_t)0;
        const unsigned mask = __ballot_sync(0xffffffffu, keep);
        if (keep) {
            // lanes to the left that keep an entry come first: column order is preserved
            const long long at = pos + __popc(mask & below);
            indices[at] = j;
            data[at] = v;
        }
        pos += __popc(mask);
    }
}
"""

_CACHE = KernelCache({
    "lane_top": (_LANE_TOP, ("real_t",)),
    "count_rows": (_COUNT_ROWS, ("real_t",)),
    "fill_rows": (_FILL_ROWS, ("real_t",)),
})


def _warp_launch(kern, n_rows, args):
    threads = n_rows * _WARP
    if threads <= 0:
        return
    kern(((threads + _THREADS - 1) // _THREADS,), (_THREADS,), args)


def plan_marginals(f, g, C, inv_eps, P, r, c):
    """CUDA twin of :func:`diffsolve.kernels.cpu.ot_newton.plan_marginals`."""
    n, m = C.shape
    if f.shape != (n,) or g.shape != (m,) or P.shape != (n, m) or r.shape != (n,) \
            or c.shape != (m,):
        raise ValueError(
            f"plan_marginals: shapes disagree: f {f.shape}, g {g.shape}, C {C.shape}, "
            f"P {P.shape}, r {r.shape}, c {c.shape}"
        )
    if not (C.flags.c_contiguous and P.flags.c_contiguous):
        raise ValueError("plan_marginals: C and P must be C-contiguous")
    dt = P.dtype.type
    _PLAN(as_device(f, "f"), as_device(g, "g"), C, dt(inv_eps), np.int64(m), P)
    cupy.sum(P, axis=1, out=r)
    cupy.sum(P, axis=0, out=c)
    return P, r, c


def _select(values, k):
    # the k-th largest of a 1-D array (a sort: only used on the small candidate sets)
    return cupy.sort(values)[values.shape[0] - k]


def kth_largest(P, k):
    """CUDA twin of :func:`diffsolve.kernels.cpu.ot_newton.kth_largest`."""
    k = int(k)
    if P.ndim != 2 or not 1 <= k <= P.size:
        raise ValueError(f"kth_largest: P must be 2-D and k in [1, {P.size}], got {k}")
    P = cupy.ascontiguousarray(P)
    n, m = P.shape
    s = -(-k // n)
    if s > _MAX_S or s >= m:
        # as on the CPU: a strided sample proposes the bound, a count checks it
        flat = P.reshape(-1)
        q = max(1, flat.shape[0] // 65536)
        sample = flat[::q]
        rank = min(sample.shape[0], -(-5 * k // (4 * q)) + 16)
        lower = _select(sample, rank)
        if int(cupy.count_nonzero(P >= lower)) < k:
            return float(_select(flat, k))
    else:
        top = cupy.empty((n, _WARP, s), dtype=P.dtype)
        kern = _CACHE.get("lane_top", (P, "P"))
        _warp_launch(kern, n, (P, np.int64(n), np.int64(m), np.int32(s), top))
        cand = top.reshape(-1)
        cand = cand[cupy.isfinite(cand)]  # lanes with fewer than s columns: -inf padding
        lower = _select(cand, k)
    return float(_select(P[P >= lower], k))


def threshold_csr(P, tau):
    """CUDA twin of :func:`diffsolve.kernels.cpu.ot_newton.threshold_csr`."""
    if P.ndim != 2 or not P.flags.c_contiguous:
        raise ValueError("threshold_csr: P must be a C-contiguous 2-D array")
    n, m = P.shape
    t = P.dtype.type(tau)
    counts = cupy.empty(n, dtype=cupy.int64)
    _warp_launch(_CACHE.get("count_rows", (P, "P")), n,
                 (P, t, np.int64(n), np.int64(m), counts))
    indptr = cupy.zeros(n + 1, dtype=cupy.int64)
    cupy.cumsum(counts, out=indptr[1:])
    nnz = int(indptr[-1])
    indices = cupy.empty(nnz, dtype=cupy.int64)
    data = cupy.empty(nnz, dtype=P.dtype)
    _warp_launch(_CACHE.get("fill_rows", (P, "P")), n,
                 (P, t, np.int64(n), np.int64(m), indptr, indices, data))
    return indptr, indices, data


def csr_transpose(indptr, indices, data, n_cols):
    """CUDA twin of :func:`diffsolve.kernels.cpu.ot_newton.csr_transpose`."""
    n_cols = int(n_cols)
    nnz = indices.shape[0]
    if data.shape != (nnz,) or indptr.ndim != 1 or int(indptr[-1]) != nnz:
        raise ValueError("csr_transpose: indptr, indices and data disagree")
    n_rows = indptr.shape[0] - 1
    # the row of every stored entry: the last row whose start is <= the entry's position
    rows = cupy.searchsorted(indptr.astype(cupy.int64, copy=False),
                             cupy.arange(nnz, dtype=cupy.int64), side="right") - 1
    rows = cupy.minimum(rows, n_rows - 1).astype(cupy.int64, copy=False)
    cols = indices.astype(cupy.int64, copy=False)
    # lexicographic (column, row) order: rows are already increasing, so a stable sort by
    # column keeps them sorted within each column of the transpose
    order = cupy.lexsort(cupy.stack([rows, cols]))
    indptr_t = cupy.zeros(n_cols + 1, dtype=cupy.int64)
    cupy.cumsum(cupy.bincount(cols, minlength=n_cols)[:n_cols], out=indptr_t[1:])
    return indptr_t, rows[order], data[order]


def schur_pcg(indptr, indices, data, indptr_t, indices_t, data_t, rinv, c, free, minv, rhs,
              x, rtol, maxiter):
    """CUDA twin of :func:`diffsolve.kernels.cpu.ot_newton.schur_pcg`."""
    m = rhs.shape[0]
    n = indptr.shape[0] - 1
    if x.shape != (m,) or not x.flags.c_contiguous or indptr_t.shape[0] != m + 1:
        raise ValueError("schur_pcg: x must be C-contiguous of rhs's shape (m,) and the "
                         "transpose must have m rows")
    u = cupy.empty(n, dtype=x.dtype)
    w = cupy.empty(m, dtype=x.dtype)

    def apply(v):
        csr_matvec(indptr, indices, data, v, u)
        csr_matvec(indptr_t, indices_t, data_t, u * rinv, w)
        return free * (c * v - w)

    x[...] = 0
    r = rhs.copy()
    z = minv * r
    p = z.copy()
    rz = float(cupy.vdot(r, z))
    rr = float(cupy.vdot(r, r))
    target = float(rtol) * rr ** 0.5
    it = 0
    while it < int(maxiter):
        if rr ** 0.5 <= target or rz <= 0:
            break
        Ap = apply(p)
        pAp = float(cupy.vdot(p, Ap))
        if not pAp > 0:
            break
        alpha = rz / pAp
        x += alpha * p
        r -= alpha * Ap
        z = minv * r
        rr = float(cupy.vdot(r, r))
        rz_new = float(cupy.vdot(r, z))
        p = z + (rz_new / rz) * p
        rz = rz_new
        it += 1
    return it


def newton_step(indptr, indices, data, indptr_t, indices_t, data_t, r, c, grad_f, grad_g,
                eps, fixed, rtol, maxiter, df, dg):
    """CUDA twin of :func:`diffsolve.kernels.cpu.ot_newton.newton_step`."""
    n, m = r.shape[0], c.shape[0]
    if df.shape != (n,) or dg.shape != (m,) or grad_f.shape != (n,) \
            or grad_g.shape != (m,) or indptr.shape[0] != n + 1 or indptr_t.shape[0] != m + 1:
        raise ValueError("newton_step: shapes of r, c, gradients, steps and CSR disagree")
    if not 0 <= int(fixed) < m:
        raise ValueError(f"newton_step: fixed must lie in [0, {m}), got {fixed}")
    dt = r.dtype
    tiny = float(np.finfo(dt).tiny)
    eps_mach = float(np.finfo(dt).eps)
    pos = r > tiny
    rinv = cupy.where(pos, 1 / cupy.where(pos, r, 1), 0).astype(dt)
    free = cupy.ones(m, dtype=dt)
    free[int(fixed)] = 0
    sq = cupy.empty(m, dtype=dt)
    csr_matvec(indptr_t, indices_t, data_t * data_t, rinv, sq)
    diag = cupy.maximum(c - sq, 64 * eps_mach * c + tiny)
    minv = free / diag
    ef = eps * grad_f
    w = cupy.empty(m, dtype=dt)
    csr_matvec(indptr_t, indices_t, data_t, rinv * ef, w)
    rhs = free * (eps * grad_g - w)
    its = schur_pcg(indptr, indices, data, indptr_t, indices_t, data_t, rinv, c, free, minv,
                    rhs, dg, rtol, maxiter)
    u = cupy.empty(n, dtype=dt)
    csr_matvec(indptr, indices, data, dg, u)
    df[...] = rinv * (ef - u)
    return its
