"""CuPy twins of :mod:`diffsolve.kernels.cpu.relaxation` (CUDA, via ``cupy.RawKernel``).

Every public function here has the same name, signature and semantics as its
Numba twin, on ``cupy.ndarray`` arguments instead of ``numpy.ndarray``, with
these differences, all forced by the GPU:

* There is no sequential :func:`sor_sweep` / :func:`ssor_sweep`: a sequential
  sweep is one long chain of dependent rows, which a GPU cannot run in
  parallel. Only the multicolour sweeps exist, and :func:`sor_solve` always
  sweeps by colour.
* ``color_ptr`` (the ``n_colors + 1`` offsets of the colour groups) stays on
  the **host**, as a ``numpy.ndarray`` or list: one kernel is launched per
  colour and its grid size is that colour's row count, which the host must
  know. Everything else (matrix, ``diag``, ``b``, ``x``, ``color_rows``,
  ``colors``) lives on the device. A ``cupy.ndarray`` ``color_ptr`` is
  accepted but copied to the host on every call (a synchronisation).
* :func:`greedy_coloring` is a parallel Jones--Plassmann colouring, not the
  CPU's natural-order greedy one: a valid colouring, usually with a few more
  colours. For reproducible comparisons pass the same ``color_ptr`` /
  ``color_rows`` to both twins.

This module imports :mod:`cupy` at the top on purpose: it is only imported
once CuPy inputs have been seen, so an ``ImportError`` here means CuPy is
missing, not that diffsolve is broken.

Kernels are generated per combination of dtypes, compiled by NVRTC on first
use and kept in :class:`._raw.KernelCache` (CuPy also caches the binaries on disk).
Results may differ from the CPU twins in the last bits: the CUDA compiler
contracts ``a * b + c`` into fused multiply-adds, which Numba (without
``DIFFSOLVE_FASTMATH``) does not. The order of operations is the same.
"""

from __future__ import annotations

import cupy
import numpy as np

from .._validate import check_relaxation_system, check_sor_solve_args
from ._raw import KernelCache, as_device, launch
from .sparse import csr_matvec

__all__ = [
    "color_groups",
    "greedy_coloring",
    "sor_solve",
    "sor_sweep_multicolor",
    "ssor_sweep_multicolor",
]


# --------------------------------------------------------------------------
# CUDA sources: templates over typedef'd names; _CACHE.get() prepends the
# typedefs for one dtype combination. Row and entry counters are 64-bit.
# --------------------------------------------------------------------------

_SOR_COLOR_1D = r"""
extern "C" __global__ void sor_color_1d(
    const IP* __restrict__ indptr, const IX* __restrict__ indices,
    const TD* __restrict__ data, const TG* __restrict__ diag,
    const TB* __restrict__ b, TX* x, const IR* __restrict__ color_rows,
    const long long offset, const long long count, const double omega)
{
    // One thread per row of the current colour: rows color_rows[offset ..
    // offset + count). No two rows of a colour are coupled, so a thread
    // reads x only at rows of other colours (not written by this launch)
    // and writes only its own x[i]: race-free. x is both read and written,
    // hence not __restrict__.
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= count) return;
    const long long i = (long long)color_rows[offset + t];
    const long long start = (long long)indptr[i];
    const long long stop = (long long)indptr[i + 1];
    TX s = (TX)0;
    for (long long jj = start; jj < stop; ++jj) {
        const long long j = (long long)indices[jj];
        if (j != i) s += (TX)data[jj] * x[j];
    }
    const TX om = (TX)omega;
    const TX keep = (TX)1 - om;
    // Same expression as the CPU twin: keep * x_i + (omega / a_ii) * (b_i - s).
    x[i] = keep * x[i] + om / (TX)diag[i] * ((TX)b[i] - s);
}
"""

_SOR_COLOR_2D = r"""
extern "C" __global__ void sor_color_2d(
    const IP* __restrict__ indptr, const IX* __restrict__ indices,
    const TD* __restrict__ data, const TG* __restrict__ diag,
    const TB* __restrict__ b, TX* x, const IR* __restrict__ color_rows,
    const long long offset, const long long count, const double omega,
    const long long k)
{
    // One thread per row of the current colour, looping over the k
    // right-hand sides (x and b are C-contiguous (n, k)). A register
    // accumulator per column; re-reading the row's entries for each column
    // hits L1. Race-free for the same reason as sor_color_1d.
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= count) return;
    const long long i = (long long)color_rows[offset + t];
    const long long start = (long long)indptr[i];
    const long long stop = (long long)indptr[i + 1];
    const TX om = (TX)omega;
    const TX keep = (TX)1 - om;
    const TX w = om / (TX)diag[i];
    for (long long c = 0; c < k; ++c) {
        TX s = (TX)0;
        for (long long jj = start; jj < stop; ++jj) {
            const long long j = (long long)indices[jj];
            if (j != i) s += (TX)data[jj] * x[j * k + c];
        }
        x[i * k + c] = keep * x[i * k + c] + w * ((TX)b[i * k + c] - s);
    }
}
"""

# Jones--Plassmann colouring, one round = jp_select then jp_assign.
# A row's random weight is a fixed hash of its index (ties broken by the
# index), so the colouring is deterministic. Two kernels per round because
# selecting reads the colours that assigning writes: in one kernel a row
# could see a neighbour coloured in this very round, ignore it, and select
# itself too.
_JP_COMMON = r"""
__device__ __forceinline__ unsigned long long jp_weight(unsigned long long i)
{
    // splitmix64 finaliser: a well-mixed 64-bit hash of the row index.
    unsigned long long z = i + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// True when row j outranks row i: larger weight, or equal weight and larger index.
__device__ __forceinline__ bool jp_outranks(long long j, long long i)
{
    const unsigned long long wj = jp_weight((unsigned long long)j);
    const unsigned long long wi = jp_weight((unsigned long long)i);
    return wj > wi || (wj == wi && j > i);
}
"""

_JP_SELECT = r"""
extern "C" __global__ void jp_select(
    const IP* __restrict__ indptr, const IX* __restrict__ indices,
    const int* __restrict__ colors, int* __restrict__ selected, const long long n)
{
    // An uncoloured row is selected when it outranks every uncoloured
    // neighbour. Two coupled rows cannot both be selected (one outranks the
    // other), so the selected rows of a round form an independent set; and
    // the highest-ranked uncoloured row is always selected, so every round
    // makes progress. This kernel only reads colors.
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    if (colors[i] >= 0) { selected[i] = 0; return; }
    int sel = 1;
    const long long stop = (long long)indptr[i + 1];
    for (long long jj = (long long)indptr[i]; jj < stop; ++jj) {
        const long long j = (long long)indices[jj];
        if (j != i && colors[j] < 0 && jp_outranks(j, i)) { sel = 0; break; }
    }
    selected[i] = sel;
}
"""

_JP_ASSIGN = r"""
extern "C" __global__ void jp_assign(
    const IP* __restrict__ indptr, const IX* __restrict__ indices,
    int* colors, const int* __restrict__ selected, const long long n)
{
    // Each selected row takes the smallest colour not used by a coloured
    // neighbour. Selected rows are pairwise uncoupled, so the colours read
    // here were all written in earlier rounds (none changes in this launch).
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || !selected[i]) return;
    const long long start = (long long)indptr[i];
    const long long stop = (long long)indptr[i + 1];
    // Colours 0..63 of the neighbours as a bit mask, in one pass.
    unsigned long long used = 0ull;
    for (long long jj = start; jj < stop; ++jj) {
        const long long j = (long long)indices[jj];
        if (j == i) continue;
        const int cj = colors[j];
        if (cj >= 0 && cj < 64) used |= 1ull << cj;
    }
    int color;
    if (used != ~0ull) {
        color = __ffsll((long long)~used) - 1;  // lowest clear bit
    } else {
        // All of 0..63 taken (only for rows with >= 64 neighbours): try
        // 64, 65, ... until one is free; there are at most deg + 1 tries.
        for (color = 64;; ++color) {
            bool taken = false;
            for (long long jj = start; jj < stop; ++jj) {
                const long long j = (long long)indices[jj];
                if (j != i && colors[j] == color) { taken = true; break; }
            }
            if (!taken) break;
        }
    }
    colors[i] = color;
}
"""

_SOURCES = {
    "sor_color_1d": (_SOR_COLOR_1D, ("IP", "IX", "TD", "TG", "TB", "TX", "IR")),
    "sor_color_2d": (_SOR_COLOR_2D, ("IP", "IX", "TD", "TG", "TB", "TX", "IR")),
    "jp_select": (_JP_COMMON + _JP_SELECT, ("IP", "IX")),
    "jp_assign": (_JP_COMMON + _JP_ASSIGN, ("IP", "IX")),
}
_CACHE = KernelCache(_SOURCES)


def _inout_buffer(x):
    """Buffer the kernels may update in place: `x` itself when C-contiguous.

    A strided `x` is copied to a contiguous scratch array, updated there and
    copied back by the caller, so the semantics match the Numba twin.
    """
    if not isinstance(x, cupy.ndarray):
        raise TypeError(f"x must be a cupy.ndarray, got {type(x).__name__}")
    return x if x.flags.c_contiguous else cupy.ascontiguousarray(x)


def _host_color_ptr(color_ptr, n: int) -> np.ndarray:
    """`color_ptr` as a host int64 array, validated against ``n`` rows."""
    if isinstance(color_ptr, cupy.ndarray):
        color_ptr = cupy.asnumpy(color_ptr)  # synchronises; prefer a host array
    color_ptr = np.asarray(color_ptr, dtype=np.int64)
    if color_ptr.ndim != 1 or color_ptr.shape[0] < 1:
        raise ValueError(f"color_ptr must be 1-D and non-empty, got shape {color_ptr.shape}")
    if color_ptr[0] != 0 or color_ptr[-1] != n:
        raise ValueError(
            f"color_ptr must start at 0 and end at n = {n}, "
            f"got {color_ptr[0]} and {color_ptr[-1]}"
        )
    return color_ptr


def _color_sweeps(indptr, indices, data, diag, b, x, omega, color_ptr, color_rows, orders):
    """Validate once, then run one multicolour sweep per entry of `orders`.

    `orders` is a sequence of booleans (``reverse`` of each sweep). `x` is
    updated in place; returns `x`.
    """
    n = check_relaxation_system(indptr, indices, data, diag, b, x)
    ptr = _host_color_ptr(color_ptr, n)
    if color_rows.shape != (n,):
        raise ValueError(f"color_rows must have shape {(n,)}, got {color_rows.shape}")
    indptr_d = as_device(indptr, "indptr")
    indices_d = as_device(indices, "indices")
    data_d = as_device(data, "data")
    diag_d = as_device(diag, "diag")
    b_d = as_device(b, "b")
    rows_d = as_device(color_rows, "color_rows")
    buf = _inout_buffer(x)
    name = "sor_color_1d" if x.ndim == 1 else "sor_color_2d"
    kern = _CACHE.get(
        name,
        (indptr_d, "indptr"),
        (indices_d, "indices"),
        (data_d, "data"),
        (diag_d, "diag"),
        (b_d, "b"),
        (buf, "x"),
        (rows_d, "color_rows"),
    )
    tail = () if x.ndim == 1 else (np.int64(x.shape[1]),)
    n_colors = ptr.shape[0] - 1
    om = np.float64(omega)
    for reverse in orders:
        colors = range(n_colors - 1, -1, -1) if reverse else range(n_colors)
        for c in colors:
            # Launches on one stream run in order: colour c + 1 starts only
            # after every row of colour c has been written.
            offset, count = int(ptr[c]), int(ptr[c + 1] - ptr[c])
            launch(
                kern,
                count,
                (indptr_d, indices_d, data_d, diag_d, b_d, buf, rows_d,
                 np.int64(offset), np.int64(count), om, *tail),
            )
    if buf is not x:
        x[...] = buf
    return x


def sor_sweep_multicolor(
    indptr, indices, data, diag, b, x, omega, color_ptr, color_rows, reverse=False
):
    """One multicolour SOR sweep on the GPU, in place.

    CUDA twin of :func:`diffsolve.kernels.cpu.relaxation.sor_sweep_multicolor`:
    one kernel launch per colour (in order, or reversed when `reverse`), one
    thread per row of that colour. The result equals a sequential SOR sweep
    in the row order ``color_rows`` (reversed when `reverse`), up to
    rounding.

    Parameters
    ----------
    indptr : cupy.ndarray of int32 or int64, shape (n + 1,)
        CSR row pointer of the square matrix ``A``.
    indices : cupy.ndarray of int32 or int64, shape (nnz,)
        CSR column indices, in ``[0, n)`` (not checked). The pattern must be
        structurally symmetric (or the colouring must come from ``A + A.T``).
    data : cupy.ndarray of float32 or float64, shape (nnz,)
        CSR stored values.
    diag : cupy.ndarray of float32 or float64, shape (n,)
        The diagonal of ``A``; must be non-zero (not checked: a zero gives
        inf/NaN, as in the CPU multicolour sweep).
    b : cupy.ndarray of float32 or float64, shape (n,) or (n, k)
        Right-hand side(s).
    x : cupy.ndarray of float32 or float64, shape of `b`
        Current iterate, overwritten in place; arithmetic is in ``x.dtype``.
        A strided `x` is updated through a contiguous copy.
    omega : float
        Relaxation factor.
    color_ptr : numpy.ndarray or list of int, shape (n_colors + 1,), on the HOST
        Rows of colour ``c`` are ``color_rows[color_ptr[c]:color_ptr[c+1]]``.
        Kept on the host because each launch's grid size is a colour's row
        count; a ``cupy.ndarray`` is accepted but copied to the host (a
        synchronisation) on every call.
    color_rows : cupy.ndarray of int32 or int64, shape (n,)
        Rows grouped by colour, on the device (see :func:`color_groups`).
    reverse : bool, default False
        Visit the colours last to first.

    Returns
    -------
    cupy.ndarray
        `x` itself. Launches are asynchronous on the current stream.

    Raises
    ------
    TypeError
        If an array that must be on the device is not a ``cupy.ndarray``,
        or a dtype is unsupported.
    ValueError
        If the shapes disagree or `color_ptr` does not span ``[0, n]``.
    """
    return _color_sweeps(
        indptr, indices, data, diag, b, x, omega, color_ptr, color_rows, (bool(reverse),)
    )


def ssor_sweep_multicolor(indptr, indices, data, diag, b, x, omega, color_ptr, color_rows):
    """One multicolour SSOR sweep on the GPU: colours forward, then backward.

    CUDA twin of :func:`diffsolve.kernels.cpu.relaxation.ssor_sweep_multicolor`
    (``2 * n_colors`` launches). Arguments as in :func:`sor_sweep_multicolor`.

    Returns
    -------
    cupy.ndarray
        `x` itself, updated in place.
    """
    return _color_sweeps(
        indptr, indices, data, diag, b, x, omega, color_ptr, color_rows, (False, True)
    )


def greedy_coloring(indptr, indices):
    """Parallel distance-1 colouring of a symmetric sparsity pattern, on the GPU.

    Jones--Plassmann: every row gets a fixed pseudo-random weight (a hash of
    its index, so the result is deterministic); in each round, every
    uncoloured row that outranks all its uncoloured neighbours takes the
    smallest colour not used by its coloured neighbours. Rounds repeat until
    every row is coloured (each round colours at least the top-ranked
    uncoloured row, so this ends; typically after a few tens of rounds).

    The twin of :func:`diffsolve.kernels.cpu.relaxation.greedy_coloring` in
    contract (a valid colouring as int32 colours ``0 .. n_colors - 1``), not in
    result: the CPU's natural-order greedy colouring is sequential, and this
    one usually needs a few more colours (e.g. 3--5 instead of 2 on the
    5-point Laplacian).

    Parameters
    ----------
    indptr : cupy.ndarray of int32 or int64, shape (n + 1,)
        CSR row pointer of the pattern.
    indices : cupy.ndarray of int32 or int64, shape (nnz,)
        CSR column indices; the pattern must be structurally symmetric
        (pass the pattern of ``A + A.T`` otherwise). Not checked: with an
        asymmetric pattern two coupled rows may share a colour.

    Returns
    -------
    cupy.ndarray of int32, shape (n,)
        Colour of every row, on the device.

    Notes
    -----
    Each round ends with a device-to-host read of one integer (the number
    of rows still uncoloured).
    """
    n = indptr.shape[0] - 1
    indptr_d = as_device(indptr, "indptr")
    indices_d = as_device(indices, "indices")
    colors = cupy.full(n, -1, dtype=cupy.int32)
    if n <= 0:
        return colors
    selected = cupy.empty(n, dtype=cupy.int32)
    typed = ((indptr_d, "indptr"), (indices_d, "indices"))
    select = _CACHE.get("jp_select", *typed)
    assign = _CACHE.get("jp_assign", *typed)
    args = (indptr_d, indices_d, colors, selected, np.int64(n))
    # At most n rounds, since each colours at least one row.
    for _ in range(n):
        launch(select, n, args)
        launch(assign, n, args)
        if int(cupy.count_nonzero(colors < 0)) == 0:
            return colors
    raise RuntimeError("greedy_coloring did not finish in n rounds (a bug)")


def color_groups(colors):
    """Group rows by colour, on the GPU.

    CUDA twin of :func:`diffsolve.kernels.cpu.relaxation.color_groups`.
    Sorting the unique keys ``color * n + row`` puts rows in colour order,
    ascending within a colour, without relying on a stable sort.

    Parameters
    ----------
    colors : cupy.ndarray of int, shape (n,)
        Non-negative colour of every row (e.g. from :func:`greedy_coloring`).

    Returns
    -------
    color_ptr : numpy.ndarray of int64, shape (n_colors + 1,), on the HOST
        Rows of colour ``c`` are ``color_rows[color_ptr[c]:color_ptr[c + 1]]``;
        ``n_colors = colors.max() + 1``. On the host because the sweeps need
        the counts to size their launches.
    color_rows : cupy.ndarray of int64, shape (n,)
        Row numbers sorted by colour, ascending within a colour, on the
        device.

    Raises
    ------
    ValueError
        If `colors` is not 1-D or has a negative entry.

    Notes
    -----
    Device-to-host traffic is small: the minimum and maximum colour (two
    integers, one read) to validate and size the result, then ``color_ptr``
    itself (``n_colors + 1`` integers).
    """
    colors_d = as_device(colors, "colors")
    if colors_d.ndim != 1:
        raise ValueError(f"colors must be 1-D, got shape {colors_d.shape}")
    n = colors_d.shape[0]
    if n == 0:
        return np.zeros(1, dtype=np.int64), cupy.zeros(0, dtype=cupy.int64)
    lo, hi = (int(v) for v in cupy.stack([colors_d.min(), colors_d.max()]).get())
    if lo < 0:
        raise ValueError("colors must be non-negative")
    n_colors = hi + 1
    key = colors_d.astype(cupy.int64) * n + cupy.arange(n, dtype=cupy.int64)
    key = cupy.sort(key)
    color_rows = key % n
    sorted_colors = key // n
    # color_ptr[c] = number of rows with colour < c.
    ptr_d = cupy.searchsorted(
        sorted_colors, cupy.arange(n_colors + 1, dtype=cupy.int64), side="left"
    )
    return cupy.asnumpy(ptr_d).astype(np.int64), color_rows


def _residual_norm(indptr, indices, data, b, x, ax) -> float:
    """``||b - A x||_2`` as a Python float (one device-to-host read).

    Residual in ``x.dtype`` like the CPU twin, squares summed in float64.
    `ax` is an ``(n,)`` scratch array of ``x.dtype``.
    """
    csr_matvec(indptr, indices, data, x, ax)
    cupy.subtract(b.astype(ax.dtype, copy=False), ax, out=ax)
    return float(cupy.sqrt(cupy.sum(cupy.square(ax.astype(cupy.float64, copy=False)))))


def sor_solve(
    indptr, indices, data, diag, b, x, omega, symmetric, tol, maxiter, *,
    color_ptr=None, color_rows=None, check_every=8,
):
    """Multicolour SOR (or SSOR) iteration on the GPU until ``||b - A x|| <= tol``.

    CUDA twin of :func:`diffsolve.kernels.cpu.relaxation.sor_solve`, with
    multicolour sweeps: sequential SOR does not exist on the GPU. With the
    same `color_ptr` / `color_rows` it runs the same iteration as the CPU
    twin given them. The sweeps are queued asynchronously; the residual is
    computed (a CSR matvec, then one number read back to the host) only
    every `check_every` sweeps and after the last, so the solve may do up to
    ``check_every - 1`` sweeps more than the CPU, which checks every sweep
    by default.

    Parameters
    ----------
    indptr, indices, data, diag, omega
        As in :func:`sor_sweep_multicolor` (on the device).
    b : cupy.ndarray of float32 or float64, shape (n,)
        Right-hand side (1-D only).
    x : cupy.ndarray of float32 or float64, shape (n,)
        Initial guess, overwritten by the final iterate.
    symmetric : bool
        SSOR sweeps (colours forward then backward) instead of SOR.
    tol : float
        Absolute tolerance on the residual 2-norm.
    maxiter : int
        Maximum number of sweeps (a symmetric sweep counts as one).
    color_ptr, color_rows : optional
        A colouring as from :func:`color_groups` (`color_ptr` on the host).
        When omitted, the matrix is coloured here with
        :func:`greedy_coloring` (cost: a few tens of small kernel rounds).
    check_every : int, keyword-only, default 8
        Sweeps between residual checks (each is a device-to-host read).

    Returns
    -------
    n_iters : int
        Number of sweeps done; ``0`` if `x` already satisfied `tol`.
    residual_norm : float
        ``||b - A x||_2`` of the returned `x`.

    Raises
    ------
    ValueError
        If `b` or `x` is not 1-D, shapes disagree, `maxiter` < 0,
        `check_every` < 1, or only one of `color_ptr`, `color_rows` is given.
    """
    n, maxiter, check_every = check_sor_solve_args(
        indptr, indices, data, diag, b, x, maxiter, check_every, color_ptr, color_rows)
    if color_ptr is None:
        color_ptr, color_rows = color_groups(greedy_coloring(indptr, indices))
    ptr = _host_color_ptr(color_ptr, n)  # validate and move to the host once
    buf = _inout_buffer(x)
    ax = cupy.empty(n, dtype=buf.dtype)
    orders = (False, True) if symmetric else (False,)

    res = _residual_norm(indptr, indices, data, b, buf, ax)
    it = 0
    if not res <= tol:
        while it < maxiter:
            _color_sweeps(indptr, indices, data, diag, b, buf, omega, ptr, color_rows, orders)
            it += 1
            if it % check_every == 0 or it == maxiter:
                res = _residual_norm(indptr, indices, data, b, buf, ax)
                if res <= tol:
                    break
    if buf is not x:
        x[...] = buf
    return it, res
