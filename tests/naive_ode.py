"""Naive references for the ODE kernels and solver: plain loops, no tricks."""

from __future__ import annotations

import math

import numpy as np


def rk_combine(y, K, coeffs, h):
    out = np.array(y, dtype=np.float64, copy=True)
    for i in range(out.shape[0]):
        for j in range(len(coeffs)):
            out[i] += h * coeffs[j] * K[j][i]
    return out


def rk_error_norm(y, y_new, K, e, h, rtol, atol):
    total = 0.0
    for i in range(len(y)):
        err = sum(h * e[j] * K[j][i] for j in range(len(e)))
        sc = atol + rtol * max(abs(y[i]), abs(y_new[i]))
        total += (err / sc) ** 2
    return math.sqrt(total / len(y))


def rk_fixed(f, y0, ts, tab):
    """Explicit RK with the tableau's (A, b, c) on the grid ``ts``, written from scratch."""
    y = np.array(y0, dtype=np.float64)
    s = len(tab.b)
    for n in range(len(ts) - 1):
        t, h = ts[n], ts[n + 1] - ts[n]
        k = []
        for i in range(s):
            g = y + h * sum(tab.A[i][j] * k[j] for j in range(i)) if i else y
            k.append(np.asarray(f(t + tab.c[i] * h, g), dtype=np.float64))
        y = y + h * sum(tab.b[i] * k[i] for i in range(s))
    return y
