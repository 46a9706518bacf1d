"""CuPy twins of the stage kernels in :mod:`diffsolve.kernels.cpu.ode` (same signatures).

On the GPU the state, the stage slopes ``K`` and the outputs stay in device memory; a
stage argument is one fused kernel launch (``y + h Σ_j a_j K[j]`` per entry, no
temporaries), and the scaled error norm is one fused elementwise pass plus a sum, whose
single number is read back per attempted step (the accept/reject decision needs it on the
host). The compiled whole-loop integrator ``rk_solve`` has no twin: it calls a Numba CPU
function.
"""

from __future__ import annotations

import math

import cupy

from ._raw import KernelCache, as_device, launch

__all__ = ["rk_combine", "rk_error_norm"]

_COMBINE = r"""
extern "C" __global__ void rk_combine(const real_t* __restrict__ y, const real_t* __restrict__ K,
                                      const double* __restrict__ coeffs, const int m,
                                      const double h, real_t* out, const long long n)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double acc = 0.0;
    for (int j = 0; j < m; ++j) acc += coeffs[j] * (double)K[(long long)j * n + i];
    out[i] = (real_t)((double)y[i] + h * acc);
}
"""

_ERROR = r"""
extern "C" __global__ void rk_error_terms(const real_t* __restrict__ y,
                                          const real_t* __restrict__ y_new,
                                          const real_t* __restrict__ K,
                                          const double* __restrict__ e, const int m,
                                          const double h, const double rtol,
                                          const double atol, double* sq, const long long n)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double err = 0.0;
    for (int j = 0; j < m; ++j) err += e[j] * (double)K[(long long)j * n + i];
    const double a = fabs((double)y[i]), b = fabs((double)y_new[i]);
    const double r = h * err / (atol + rtol * (a > b ? a : b));
    sq[i] = r * r;
}
"""

_KERNELS = KernelCache({
    "rk_combine": (_COMBINE, ("real_t",)),
    "rk_error_terms": (_ERROR, ("real_t",)),
})


def rk_combine(y, K, coeffs, h, out):
    """``out = y + h * Σ_{j < m} coeffs[j] * K[j]`` with ``m = len(coeffs)``; returns out.

    ``y``, ``out``: (n,); ``K``: (s, n); ``coeffs``: float64 device vector.
    """
    y = as_device(y, "rk_combine: y")
    K = as_device(K, "rk_combine: K")
    c = cupy.ascontiguousarray(coeffs, dtype=cupy.float64)
    n = y.shape[0]
    kern = _KERNELS.get("rk_combine", (y, "rk_combine: y"))
    launch(kern, n, (y, K, c, cupy.int32(c.shape[0]), cupy.float64(h), out, cupy.int64(n)))
    return out


def rk_error_norm(y, y_new, K, e, h, rtol, atol):
    """``sqrt(mean_i ((h Σ_j e_j K[j, i]) / (atol + rtol max(|y_i|, |y_new_i|)))²))``.

    Returns a float (one device-to-host read of the norm).
    """
    y = as_device(y, "rk_error_norm: y")
    y_new = as_device(y_new, "rk_error_norm: y_new")
    K = as_device(K, "rk_error_norm: K")
    ev = cupy.ascontiguousarray(e, dtype=cupy.float64)
    n = y.shape[0]
    if n == 0:
        return 0.0
    sq = cupy.empty(n, dtype=cupy.float64)
    kern = _KERNELS.get("rk_error_terms", (y, "rk_error_norm: y"))
    launch(kern, n, (y, y_new, K, ev, cupy.int32(ev.shape[0]), cupy.float64(h),
                     cupy.float64(rtol), cupy.float64(atol), sq, cupy.int64(n)))
    return math.sqrt(float(sq.sum()) / n)
