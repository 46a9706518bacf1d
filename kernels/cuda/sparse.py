"""CuPy twins of :mod:`diffsolve.kernels.cpu.sparse` (CUDA, via ``cupy.RawKernel``).

Every public function here has the same name, signature and semantics as its
Numba twin, on ``cupy.ndarray`` arguments instead of ``numpy.ndarray``: a CSR
matrix is passed as ``indptr``, ``indices``, ``data`` (the attributes of a
``cupyx.scipy.sparse.csr_matrix``), the result is written into the
preallocated ``out`` and ``out`` is returned, and all arithmetic is done in
``out.dtype``.

This module imports :mod:`cupy` at the top on purpose: it is only imported
once CuPy inputs have been seen, so an ``ImportError`` here means CuPy is
missing, not that diffsolve is broken.

Kernels are generated per combination of dtypes (float32/float64 values,
int32/int64 indices), compiled by NVRTC on first use and kept in
:class:`._raw.KernelCache`; CuPy also caches the compiled binaries on disk, so later
processes skip NVRTC.

Results may differ from the CPU twins in the last bits: the CUDA compiler
contracts ``acc + a * b`` into a fused multiply-add, which Numba (without
``DIFFSOLVE_FASTMATH``) does not. The summation order is the same.
"""

from __future__ import annotations

import cupy
import numpy as np

from ._raw import KernelCache, as_device, launch

__all__ = ["csr_matvec", "csr_sampled_outer"]


# --------------------------------------------------------------------------
# CUDA sources. Each one is a template over typedef'd names; _CACHE.get()
# prepends the typedefs for one dtype combination. Row and entry counters are
# 64-bit so that i * k and indptr values beyond 2**31 cannot overflow.
# --------------------------------------------------------------------------

_CSR_MATVEC_1D = r"""
extern "C" __global__ void csr_matvec_1d(
    const IP* __restrict__ indptr, const IX* __restrict__ indices,
    const TD* __restrict__ data, const TX* __restrict__ x,
    TO* __restrict__ out, const long long n_rows)
{
    // One thread per row: rows of PDE matrices are short and of similar
    // length, so a scalar thread-per-row loop keeps every lane busy.
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_rows) return;
    const long long start = (long long)indptr[i];
    const long long stop = (long long)indptr[i + 1];
    TO acc = (TO)0;
    for (long long jj = start; jj < stop; ++jj) {
        acc += (TO)data[jj] * (TO)x[indices[jj]];
    }
    out[i] = acc;
}
"""

_CSR_MATVEC_2D = r"""
extern "C" __global__ void csr_matvec_2d(
    const IP* __restrict__ indptr, const IX* __restrict__ indices,
    const TD* __restrict__ data, const TX* __restrict__ x,
    TO* __restrict__ out, const long long n_rows, const long long k)
{
    // One thread per row, looping over the k right-hand sides inside the
    // thread. x and out are C-contiguous (n, k). A register accumulator per
    // column (rather than accumulating in global memory) avoids k global
    // read-modify-writes per stored entry; re-reading the row's indices and
    // values for each column hits L1.
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_rows) return;
    const long long start = (long long)indptr[i];
    const long long stop = (long long)indptr[i + 1];
    for (long long c = 0; c < k; ++c) {
        TO acc = (TO)0;
        for (long long jj = start; jj < stop; ++jj) {
            acc += (TO)data[jj] * (TO)x[(long long)indices[jj] * k + c];
        }
        out[i * k + c] = acc;
    }
}
"""

_CSR_SAMPLED_OUTER = r"""
extern "C" __global__ void csr_sampled_outer(
    const IP* __restrict__ indptr, const IX* __restrict__ indices,
    const TU* __restrict__ u, const TV* __restrict__ v,
    TO* __restrict__ out, const long long n_rows, const long long nnz,
    const long long k, const int is_2d)
{
    // One thread per stored entry: the work per entry is the same (one
    // length-k dot product) however unevenly entries are spread over rows,
    // and consecutive threads write consecutive out[jj] (coalesced).
    // is_2d == 0 means 1-D u and v (out[jj] = u[i] * v[j]); k is then unused.
    const long long jj = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (jj >= nnz) return;
    // Entries past indptr[n_rows] belong to no row (slack at the end of an
    // over-allocated indices array): leave them alone, like the CPU twin.
    if (n_rows <= 0 || jj >= (long long)indptr[n_rows]) return;
    // Row of entry jj: the largest row r with indptr[r] <= jj. Binary search
    // keeps the invariant indptr[lo] <= jj < indptr[hi]; on exit hi == lo + 1
    // so row lo is non-empty and holds jj (empty rows are skipped).
    long long lo = 0, hi = n_rows;
    while (hi - lo > 1) {
        const long long mid = lo + (hi - lo) / 2;
        if ((long long)indptr[mid] <= jj) lo = mid; else hi = mid;
    }
    const long long i = lo;
    const long long j = (long long)indices[jj];
    if (!is_2d) {
        out[jj] = (TO)u[i] * (TO)v[j];
        return;
    }
    TO acc = (TO)0;
    for (long long c = 0; c < k; ++c) {
        acc += (TO)u[i * k + c] * (TO)v[j * k + c];
    }
    out[jj] = acc;
}
"""

_SOURCES = {
    "csr_matvec_1d": (_CSR_MATVEC_1D, ("IP", "IX", "TD", "TX", "TO")),
    "csr_matvec_2d": (_CSR_MATVEC_2D, ("IP", "IX", "TD", "TX", "TO")),
    "csr_sampled_outer": (_CSR_SAMPLED_OUTER, ("IP", "IX", "TU", "TV", "TO")),
}
_CACHE = KernelCache(_SOURCES)


def _output_buffer(out):
    """Buffer the kernel may write to: `out` itself when C-contiguous."""
    if not isinstance(out, cupy.ndarray):
        raise TypeError(f"out must be a cupy.ndarray, got {type(out).__name__}")
    if out.flags.c_contiguous:
        return out
    # Strided out (e.g. a column slice): compute into a contiguous scratch
    # array and copy back, so the semantics match the Numba twin, which
    # writes through any layout.
    return cupy.empty(out.shape, dtype=out.dtype)


def csr_matvec(indptr, indices, data, x, out):
    """Sparse matrix times dense vector or matrix on the GPU, ``out = A @ x``.

    CUDA twin of :func:`diffsolve.kernels.cpu.sparse.csr_matvec`: one thread
    per row, 256-thread blocks.

    Parameters
    ----------
    indptr : cupy.ndarray of int32 or int64, shape (n_rows + 1,)
        CSR row pointer of ``A``.
    indices : cupy.ndarray of int32 or int64, shape (nnz,)
        CSR column indices of ``A``; every entry must lie in
        ``[0, n_cols)`` (not checked).
    data : cupy.ndarray of float32 or float64, shape (nnz,)
        CSR stored values of ``A``.
    x : cupy.ndarray of float32 or float64, shape (n_cols,) or (n_cols, k)
        Dense right-hand side(s). A strided ``x`` is copied to C order first.
    out : cupy.ndarray of float32 or float64, shape (n_rows,) or (n_rows, k)
        Preallocated result with the same number of dimensions as ``x``.
        Its previous contents are ignored. Must not overlap ``x``.

    Returns
    -------
    cupy.ndarray
        ``out`` itself, holding ``A @ x`` computed in ``out.dtype``. The
        launch is asynchronous on the current stream, like any CuPy call.

    Raises
    ------
    TypeError
        If an argument is not a ``cupy.ndarray`` or has an unsupported dtype.
    ValueError
        If ``x`` is not 1-D or 2-D, or if the shapes disagree.
    """
    n_rows = indptr.shape[0] - 1
    if indices.shape != data.shape:
        raise ValueError(
            f"indices and data must have the same shape, got {indices.shape} and {data.shape}"
        )
    if x.ndim == 1:
        expected = (n_rows,)
    elif x.ndim == 2:
        expected = (n_rows, x.shape[1])
    else:
        raise ValueError(f"x must be 1-D or 2-D, got {x.ndim}-D")
    if out.shape != expected:
        raise ValueError(f"out must have shape {expected} for {x.ndim}-D x, got {out.shape}")

    indptr_d = as_device(indptr, "indptr")
    indices_d = as_device(indices, "indices")
    data_d = as_device(data, "data")
    x_d = as_device(x, "x")
    buf = _output_buffer(out)
    typed = (
        (indptr_d, "indptr"),
        (indices_d, "indices"),
        (data_d, "data"),
        (x_d, "x"),
        (buf, "out"),
    )
    if x.ndim == 1:
        kern = _CACHE.get("csr_matvec_1d", *typed)
        args = (indptr_d, indices_d, data_d, x_d, buf, np.int64(n_rows))
    else:
        kern = _CACHE.get("csr_matvec_2d", *typed)
        args = (indptr_d, indices_d, data_d, x_d, buf, np.int64(n_rows), np.int64(x.shape[1]))
    if buf.size:
        launch(kern, n_rows, args)
    if buf is not out:
        out[...] = buf
    return out


def csr_sampled_outer(indptr, indices, u, v, out):
    """Outer product ``u @ v.T`` sampled on a CSR sparsity pattern, on the GPU.

    CUDA twin of :func:`diffsolve.kernels.cpu.sparse.csr_sampled_outer`:
    for every stored entry ``jj`` at row ``i``, column ``j = indices[jj]``,
    ``out[jj] = sum_c u[i, c] * v[j, c]`` (2-D) or ``u[i] * v[j]`` (1-D).
    One thread per stored entry (its row found by binary search in
    ``indptr``), 256-thread blocks.

    Parameters
    ----------
    indptr : cupy.ndarray of int32 or int64, shape (n_rows + 1,)
        CSR row pointer of the pattern.
    indices : cupy.ndarray of int32 or int64, shape (nnz,)
        CSR column indices of the pattern; every entry must lie in
        ``[0, n_cols)`` (not checked).
    u : cupy.ndarray of float32 or float64, shape (n_rows,) or (n_rows, k)
        Left factor.
    v : cupy.ndarray of float32 or float64, shape (n_cols,) or (n_cols, k)
        Right factor, with the same number of dimensions (and ``k``) as ``u``.
    out : cupy.ndarray of float32 or float64, shape (nnz,)
        Preallocated result, aligned with ``indices``. Its previous contents
        are ignored.

    Returns
    -------
    cupy.ndarray
        ``out`` itself, computed in ``out.dtype``.

    Raises
    ------
    TypeError
        If an argument is not a ``cupy.ndarray`` or has an unsupported dtype.
    ValueError
        If the shapes of ``u``, ``v`` and ``out`` do not fit the pattern.
    """
    n_rows = indptr.shape[0] - 1
    if out.shape != indices.shape:
        raise ValueError(f"out must have the shape of indices {indices.shape}, got {out.shape}")
    if u.ndim != v.ndim:
        raise ValueError(f"u and v must have the same ndim, got {u.ndim} and {v.ndim}")
    if u.shape[0] != n_rows:
        raise ValueError(f"u must have {n_rows} rows, got shape {u.shape}")
    if u.ndim == 1:
        k = 1  # unused by the kernel in the 1-D case
    elif u.ndim == 2:
        if u.shape[1] != v.shape[1]:
            raise ValueError(
                f"u and v must have the same number of columns, got {u.shape} and {v.shape}"
            )
        k = u.shape[1]
    else:
        raise ValueError(f"u and v must be 1-D or 2-D, got {u.ndim}-D")

    indptr_d = as_device(indptr, "indptr")
    indices_d = as_device(indices, "indices")
    u_d = as_device(u, "u")
    v_d = as_device(v, "v")
    buf = _output_buffer(out)
    kern = _CACHE.get(
        "csr_sampled_outer",
        (indptr_d, "indptr"),
        (indices_d, "indices"),
        (u_d, "u"),
        (v_d, "v"),
        (buf, "out"),
    )
    nnz = indices.shape[0]
    launch(
        kern,
        nnz,
        (
            indptr_d,
            indices_d,
            u_d,
            v_d,
            buf,
            np.int64(n_rows),
            np.int64(nnz),
            np.int64(k),
            np.int32(u.ndim == 2),
        ),
    )
    if buf is not out:
        out[...] = buf
    return out
