"""Lotka–Volterra fields shared by the ODE tests: autograd, Numba, and Numba with its VJP."""

from __future__ import annotations

import autograd.numpy as anp
import numpy as np
from numba import njit


def lv(t, y, p):
    return anp.array([p[0] * y[0] - p[1] * y[0] * y[1], -p[2] * y[1] + p[3] * y[0] * y[1]])


@njit(cache=True)
def lv_jit(t, y, p):
    out = np.empty(2)
    out[0] = p[0] * y[0] - p[1] * y[0] * y[1]
    out[1] = -p[2] * y[1] + p[3] * y[0] * y[1]
    return out


@njit(cache=True)
def lv_jit_vjp(t, y, p, v):
    vy = np.empty(2)
    vy[0] = v[0] * (p[0] - p[1] * y[1]) + v[1] * p[3] * y[1]
    vy[1] = -v[0] * p[1] * y[0] + v[1] * (-p[2] + p[3] * y[0])
    vp = np.array([v[0] * y[0], -v[0] * y[0] * y[1], -v[1] * y[1], v[1] * y[0] * y[1]])
    return vy, vp
