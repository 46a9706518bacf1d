"""Numba kernels for log-domain Sinkhorn: fused, numerically stable soft-minimum updates.

A log-domain Sinkhorn iteration needs, for a batch of cost matrices ``C`` (B, n, m) and
potentials, the two soft-minima

    lse_rows:  out[k, i] = eps * log sum_j exp((g[k, j] - C[k, i, j]) / eps)    (B, n)
    lse_cols:  out[k, j] = eps * log sum_i exp((f[k, i] - C[k, i, j]) / eps)    (B, m)

computed straight from ``C``: no ``exp(-C/eps)`` array and no ``(n, m)`` temporary is ever
made, and ``C`` is never transposed. Each sum shifts out its maximum exponent first (two
passes over a row/column block: the max, then the sum of exponentials), so any finite input
is safe for any ``eps > 0`` in float32 and float64; a slice whose potentials are all
``-inf`` gives ``-inf``.

Rows are independent: ``lse_rows`` runs blocks of ``_ROWS`` rows per ``prange`` task. ``lse_cols``
splits the columns into blocks of ``_COLS`` and streams the rows of ``C`` through each
block (contiguous reads, per-column running max and sum kept in a small buffer), so it
reads ``C`` in memory order too. Problems with ``active[k] == 0`` are skipped (their
``out`` entries are left untouched), which is how converged problems of a batch freeze.

The exponential is computed by :func:`_exp_neg`, a ``exp`` for non-positive
arguments that LLVM vectorises (Numba's ``math.exp`` is a scalar libm call unless Intel's
SVML is installed): Cody–Waite reduction ``x = k ln2 + r`` with ``|r| <= ln2/2`` and a
degree-13 Taylor polynomial of ``exp(r)`` (truncation error below ``(ln2/2)^14/14!`` ~ 5e-18,
i.e. within an ulp or two of float64's libm), then ``2^k`` from a table of powers of two. Arguments
below -700 flush to exactly 0 (their share of a sum whose largest term is 1 is below 1e-304).

The CuPy twins in :mod:`diffsolve.kernels.cuda.ot` have identical signatures.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._config import call_threaded, jit, serial_twin

__all__ = ["lse_cols", "lse_rows"]

# columns per block of lse_cols: the running max/sum of a block (2 x 256 x 8 bytes) stay in
# L1 while the rows stream through; wide enough for full vector loads
_COLS = 256
# rows per parallel task of lse_rows (one scratch row buffer per task)
_ROWS = 16

_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
# 2^k for k = -1022 .. 1 (index k + 1022), exact powers of two
_POW2 = np.ldexp(1.0, np.arange(-1022, 2))


@jit()
def _exp_neg(x):  # pragma: no cover - compiled
    # exp(x) for x <= 0 (a max-shifted exponent); see the module docstring
    x = max(x, -700.0)
    k = math.floor(x * _INV_LN2 + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    # Horner form of sum_{p <= 13} r^p / p!
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    # 2^k from a table (k in [-1010, 0] here): a gather, which vectorises, where ldexp would
    # be a libm call
    return p * _POW2[np.int64(k) + 1022] if x > -700.0 else 0.0


@jit(parallel=True)
def _lse_rows(C, g, eps, active, out):  # pragma: no cover - compiled
    B, n, m = C.shape
    inv = 1.0 / eps
    n_chunks = (n + _ROWS - 1) // _ROWS
    for t in prange(B * n_chunks):
        k = t // n_chunks
        if active[k] == 0:
            continue
        lo = (t - k * n_chunks) * _ROWS
        hi = min(n, lo + _ROWS)
        gk = g[k]
        # the shifted exponents of one row go through a buffer, then are summed in a
        # separate loop: a fused `s += exp(...)` is a serial floating-point reduction that
        # LLVM may not reorder without fast-math, which would keep the exponentials scalar
        tmp = np.empty(m)
        for i in range(lo, hi):
            row = C[k, i]
            mx = -np.inf
            for j in range(m):
                v = gk[j] - row[j]
                tmp[j] = v
                mx = max(mx, v)
            if mx == -np.inf:
                out[k, i] = -np.inf
                continue
            for j in range(m):
                tmp[j] = _exp_neg((tmp[j] - mx) * inv)
            s = 0.0
            for j in range(m):
                s += tmp[j]
            out[k, i] = mx + eps * math.log(s)
    return out


@jit(parallel=True)
def _lse_cols(C, f, eps, active, out):  # pragma: no cover - compiled
    B, n, m = C.shape
    inv = 1.0 / eps
    n_blocks = (m + _COLS - 1) // _COLS
    for t in prange(B * n_blocks):
        k = t // n_blocks
        if active[k] == 0:
            continue
        lo = (t - k * n_blocks) * _COLS
        hi = min(m, lo + _COLS)
        w = hi - lo
        mx = np.full(w, -np.inf)
        s = np.zeros(w)
        fk = f[k]
        for i in range(n):
            fi = fk[i]
            row = C[k, i, lo:hi]
            for j in range(w):
                mx[j] = max(mx[j], fi - row[j])
        for i in range(n):
            fi = fk[i]
            row = C[k, i, lo:hi]
            for j in range(w):
                s[j] += _exp_neg((fi - row[j] - mx[j]) * inv)
        for j in range(w):
            if mx[j] == -np.inf:
                out[k, lo + j] = -np.inf
            else:
                out[k, lo + j] = mx[j] + eps * math.log(s[j])
    return out


def _call(kern, C, *args):
    # small problems on one thread, in the one-thread build (see _config.call_threaded)
    return call_threaded(kern, C.size, C, *args, serial=_SERIAL[kern])


_SERIAL = {_lse_rows: serial_twin(_lse_rows), _lse_cols: serial_twin(_lse_cols)}


def _check(C, v, active, out, n_v, n_out, what):
    if C.ndim != 3 or v.ndim != 2 or out.ndim != 2 or active.ndim != 1:
        raise ValueError(f"{what}: expected C (B, n, m), potentials (B, .), active (B,), "
                         f"out (B, .); got {C.shape}, {v.shape}, {active.shape}, {out.shape}")
    B = C.shape[0]
    if v.shape != (B, n_v) or out.shape != (B, n_out) or active.shape != (B,):
        raise ValueError(f"{what}: shapes do not match C {C.shape}: potentials {v.shape}, "
                         f"active {active.shape}, out {out.shape}")
    if not (C.flags.c_contiguous and v.flags.c_contiguous and out.flags.c_contiguous):
        raise ValueError(f"{what}: C, potentials and out must be C-contiguous")


def lse_rows(C, g, eps, active, out):
    """``out[k, i] = eps * log sum_j exp((g[k, j] - C[k, i, j]) / eps)`` for active ``k``.

    Parameters
    ----------
    C : float64 array (B, n, m), C-contiguous
    g : float64 array (B, m)
    eps : float > 0
    active : uint8 array (B,)
        Problems with 0 are skipped (``out[k]`` untouched).
    out : float64 array (B, n)
        Written in place and returned.

    Notes
    -----
    The fast exponential is float64; float32 inputs are computed by the caller in float64
    (see :func:`diffsolve.ot.sinkhorn`) or with the CuPy twin.
    """
    _check(C, g, active, out, C.shape[2], C.shape[1], "lse_rows")
    return _call(_lse_rows, C, g, float(eps), active, out)


def lse_cols(C, f, eps, active, out):
    """``out[k, j] = eps * log sum_i exp((f[k, i] - C[k, i, j]) / eps)`` for active ``k``.

    Same conventions as :func:`lse_rows`; ``C`` is read row by row (never transposed).
    """
    _check(C, f, active, out, C.shape[1], C.shape[2], "lse_cols")
    return _call(_lse_cols, C, f, float(eps), active, out)
