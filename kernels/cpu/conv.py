"""Numba kernel for the 'same' convolutions of :class:`diffsolve.linear.ConvDirectionModel`.

One kernel serves 2-D and 3-D grids: activations are ``(batch, channels, D, H, W)``
(a 2-D grid is ``D = 1`` with a ``(1, 3, 3)`` filter), filters ``(c_out, c_in, kd, kh, kw)``
with odd sizes, zero padding of half the filter size, stride 1. It is a cross-correlation,
as in every deep-learning library.

The loop order is chosen for the small channel counts of the model (16) and for large
grids: threads split the output rows; each row's ``c_out`` accumulators (one row, in L1)
are updated from the ``c_in × kd × kh`` input rows it reads (in L2), so every input row is
read from memory once per output row instead of once per ``(c_out, c_in, tap)`` over the
whole plane, and the innermost loop runs along contiguous ``W`` without bounds tests so
that it vectorises (an elementwise update: no fast-math needed, the sums run in a fixed
order). Measured against im2col + BLAS in
``bench/bench_dcdm.py`` (the faster of the two is what the model uses on NumPy).

The CuPy twin in :mod:`diffsolve.kernels.cuda.conv` has the identical signature.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._config import jit

__all__ = ["conv_same", "conv_same_fused"]


@jit(parallel=True)
def _conv_rows(x, w, bias, residual, out, relu_in, relu_out,
               add_residual):  # pragma: no cover - compiled
    nb, cin, nd, nh, nw = x.shape
    cout, _, kd, kh, kw = w.shape
    pd, ph, pw = kd // 2, kh // 2, kw // 2
    zero = x.dtype.type(0)
    for task in prange(nb * nd * nh):
        b = task // (nd * nh)
        d = (task % (nd * nh)) // nh
        h = task % nh
        # the input rows this output row reads, copied once into a zero-padded private
        # buffer: the inner loop then has no bounds to test and cannot alias the output,
        # which is what lets LLVM vectorise it
        rows = np.zeros((cin, kd, kh, nw + 2 * pw), dtype=x.dtype)
        valid = np.zeros((kd, kh), dtype=np.bool_)
        for a in range(kd):
            sd = d + a - pd
            for c in range(kh):
                sh = h + c - ph
                if 0 <= sd < nd and 0 <= sh < nh:
                    valid[a, c] = True
                    for ci in range(cin):
                        for i in range(nw):
                            v = x[b, ci, sd, sh, i]
                            # ReLU written so that NaN passes through, as xp.maximum does
                            rows[ci, a, c, pw + i] = zero if relu_in and v < zero else v
        acc = np.empty(nw, dtype=x.dtype)
        for co in range(cout):
            bv = bias[co]
            for i in range(nw):
                acc[i] = bv
            for ci in range(cin):
                for a in range(kd):
                    for c in range(kh):
                        if not valid[a, c]:
                            continue
                        for e in range(kw):
                            wv = w[co, ci, a, c, e]
                            for i in range(nw):
                                acc[i] += wv * rows[ci, a, c, i + e]
            for i in range(nw):
                v = acc[i] + residual[b, co, d, h, i] if add_residual else acc[i]
                out[b, co, d, h, i] = zero if relu_out and v < zero else v
    return out


def conv_same(x, w, bias, out):
    """``out = conv(x, w) + bias`` with zero 'same' padding, stride 1 (in place).

    Parameters
    ----------
    x : ndarray (B, C_in, D, H, W), C-contiguous float32/float64
    w : ndarray (C_out, C_in, kd, kh, kw), odd filter sizes, x's dtype
    bias : ndarray (C_out,)
    out : ndarray (B, C_out, D, H, W), overwritten

    Returns
    -------
    out
    """
    conv_same_checks(x, w, out)
    return _conv_rows(x, w, bias, out, out, False, False, False)


def conv_same_checks(x, w, out):
    """Raise ``ValueError`` unless ``x``, ``w`` and ``out`` fit :func:`conv_same`."""
    if x.ndim != 5 or w.ndim != 5 or w.shape[1] != x.shape[1]:
        raise ValueError(f"conv_same: x {x.shape} and w {w.shape} must be 5-D with matching "
                         "input channels")
    if any(k % 2 == 0 for k in w.shape[2:]):
        raise ValueError(f"conv_same: filter sizes must be odd, got {w.shape[2:]}")
    if out.shape != (x.shape[0], w.shape[0], *x.shape[2:]):
        raise ValueError(f"conv_same: out has shape {out.shape}, expected "
                         f"{(x.shape[0], w.shape[0], *x.shape[2:])}")


def conv_same_fused(x, w, bias, out, *, relu_in=False, relu_out=False, residual=None):
    """``out = act(residual + conv(act_in(x), w) + bias)`` in one pass (CPU only).

    The residual block of the direction network is ``h + conv(relu(conv(relu(h))))``:
    with the ReLUs applied while the input rows are copied and the output row is written,
    and the residual added there, one block is two passes over the grid instead of five.
    ``relu_in``: apply ReLU to ``x``; ``relu_out``: to the result; ``residual``: an array of
    ``out``'s shape added before ``relu_out``. Same checks and layout as :func:`conv_same`.

    Returns
    -------
    out
    """
    conv_same_checks(x, w, out)
    if residual is not None and residual.shape != out.shape:
        raise ValueError(f"conv_same_fused: residual has shape {residual.shape}, expected "
                         f"{out.shape}")
    return _conv_rows(x, w, bias, out if residual is None else residual, out, bool(relu_in),
                      bool(relu_out), residual is not None)
