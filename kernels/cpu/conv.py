"""Numba kernel for the 'same' convolutions of :class:`diffsolve.linear.ConvDirectionModel`.

One kernel serves 2-D and 3-D grids: activations are ``(batch, channels, D, H, W)``
(a 2-D grid is ``D = 1`` with a ``(1, 3, 3)`` filter), filters ``(c_out, c_in, kd, kh, kw)``
with odd sizes, zero padding of half the filter size, stride 1. It is a cross-correlation,
as in every deep-learning library.

The loop order is chosen for the small channel counts of the model (16): threads split the
``(batch, c_out)`` planes, and the innermost loop runs along contiguous ``W`` so that it
vectorises. Measured against im2col + BLAS in ``bench/bench_dcdm.py`` (the faster of the two
is what the model uses on NumPy).

The CuPy twin in :mod:`diffsolve.kernels.cuda.conv` has the identical signature.
"""

from __future__ import annotations

from numba import prange

from ._config import jit

__all__ = ["conv_same"]


@jit(parallel=True)
def _conv_same(x, w, bias, out):  # pragma: no cover - compiled
    nb, cin, nd, nh, nw = x.shape
    cout, _, kd, kh, kw = w.shape
    pd, ph, pw = kd // 2, kh // 2, kw // 2
    for plane in prange(nb * cout):
        b = plane // cout
        co = plane % cout
        bv = bias[co]
        for d in range(nd):
            for h in range(nh):
                for i in range(nw):
                    out[b, co, d, h, i] = bv
        for ci in range(cin):
            for a in range(kd):
                d_lo = max(0, pd - a)
                d_hi = min(nd, nd + pd - a)
                for c in range(kh):
                    h_lo = max(0, ph - c)
                    h_hi = min(nh, nh + ph - c)
                    for e in range(kw):
                        i_lo = max(0, pw - e)
                        i_hi = min(nw, nw + pw - e)
                        wv = w[co, ci, a, c, e]
                        for d in range(d_lo, d_hi):
                            sd = d + a - pd
                            for h in range(h_lo, h_hi):
                                sh = h + c - ph
                                for i in range(i_lo, i_hi):
                                    out[b, co, d, h, i] += wv * x[b, ci, sd, sh, i + e - pw]
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
    if x.ndim != 5 or w.ndim != 5 or w.shape[1] != x.shape[1]:
        raise ValueError(f"conv_same: x {x.shape} and w {w.shape} must be 5-D with matching "
                         "input channels")
    if any(k % 2 == 0 for k in w.shape[2:]):
        raise ValueError(f"conv_same: filter sizes must be odd, got {w.shape[2:]}")
    if out.shape != (x.shape[0], w.shape[0], *x.shape[2:]):
        raise ValueError(f"conv_same: out has shape {out.shape}, expected "
                         f"{(x.shape[0], w.shape[0], *x.shape[2:])}")
    return _conv_same(x, w, bias, out)
