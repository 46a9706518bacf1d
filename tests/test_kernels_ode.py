"""ODE stage kernels against the naive references; CPU and CUDA twins against each other."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from diffsolve.kernels.cpu import ode as cpu
from tests import naive_ode as naive


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("m", [0, 1, 4, 7])
def test_rk_combine_matches_naive(rng, dtype, m):
    n = 13
    y = rng.standard_normal(n).astype(dtype)
    K = rng.standard_normal((7, n)).astype(dtype)
    c = rng.standard_normal(m)
    out = np.empty_like(y)
    got = cpu.rk_combine(y, K, c, 0.37, out)
    assert got is out and got.dtype == dtype
    tol = 1e-13 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, naive.rk_combine(y, K, c, 0.37), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rk_error_norm_matches_naive(rng, dtype):
    n = 9
    y, y_new = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    K = rng.standard_normal((7, n)).astype(dtype)
    e = rng.standard_normal(7)
    got = cpu.rk_error_norm(y, y_new, K, e, -0.2, 1e-3, 1e-6)
    want = naive.rk_error_norm(y, y_new, K, e, -0.2, 1e-3, 1e-6)
    assert got == pytest.approx(want, rel=1e-12 if dtype == np.float64 else 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_twins_match_cpu(rng, dtype):
    cupy = pytest.importorskip("cupy")
    from diffsolve.kernels.cuda import ode as gpu

    n = 1000
    y = rng.standard_normal(n).astype(dtype)
    y_new = rng.standard_normal(n).astype(dtype)
    K = rng.standard_normal((7, n)).astype(dtype)
    c = rng.standard_normal(5)
    out = cupy.empty(n, dtype=dtype)
    got = gpu.rk_combine(cupy.asarray(y), cupy.asarray(K), cupy.asarray(c), 0.5, out)
    want = cpu.rk_combine(y, K, c, 0.5, np.empty_like(y))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got.get(), want, rtol=tol, atol=tol)
    e = rng.standard_normal(7)
    g = gpu.rk_error_norm(cupy.asarray(y), cupy.asarray(y_new), cupy.asarray(K),
                          cupy.asarray(e), 0.1, 1e-3, 1e-6)
    assert g == pytest.approx(cpu.rk_error_norm(y, y_new, K, e, 0.1, 1e-3, 1e-6), rel=tol)


@njit(cache=True)
def _decay_rotation(t, y, p):
    out = np.empty(2)
    out[0] = -p[0] * y[0] + y[1]
    out[1] = -y[0] - p[0] * y[1] + 0.1 * np.sin(t)
    return out


@pytest.mark.parametrize("method", ["tsit5", "dopri5", "bs3"])
def test_rk_solve_fixed_steps_matches_naive(method):
    from diffsolve.ode._tableaux import TABLEAUX

    tab = TABLEAUX[method]
    ts = np.linspace(0.0, 2.0, 11)
    p = np.array([0.3])
    y0 = np.array([1.0, -0.5])
    out = cpu.rk_solve(_decay_rotation, y0, np.array([0.0, 2.0]), p, tab.A, tab.c, tab.e,
                       tab.P, tab.order, tab.error_order, 1e-6, 1e-9, True, -1.0, 100, ts,
                       False)
    ys, ts_out, states, _, _, out_step, _, stats, status, _ = out
    assert int(status) == cpu.OK and list(stats[:3]) == [10, 10, 0]
    np.testing.assert_array_equal(ts_out, ts)
    want = naive.rk_fixed(lambda t, y: _decay_rotation.py_func(t, y, p), y0, ts, tab)
    np.testing.assert_allclose(ys[-1], want, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(states[-1], want, rtol=1e-13, atol=1e-14)
    assert out_step[-1] == 9


@njit(cache=True)
def _nan_from_half(t, y, p):
    out = np.empty(2)
    scale = 1.0 if t < 0.5 else np.nan
    out[0] = -y[0] * scale
    out[1] = -y[1] * scale
    return out


@pytest.mark.parametrize("fixed", [False, True])
def test_rk_solve_reports_nonfinite_slopes(fixed):
    # f turns NaN at t = 0.5: the adaptive loop shrinks the step on the non-finite error
    # estimates until it underflows (NONFINITE, not UNDERFLOW); replayed steps stop at once
    from diffsolve.ode._tableaux import TABLEAUX

    tab = TABLEAUX["tsit5"]
    steps = np.linspace(0.0, 1.0, 11) if fixed else np.empty(0)
    out = cpu.rk_solve(_nan_from_half, np.ones(2), np.array([0.0, 1.0]), np.ones(1), tab.A,
                       tab.c, tab.e, tab.P, tab.order, tab.error_order, 1e-6, 1e-9, True,
                       -1.0, 10_000, steps, False)
    ys, ts_out, _, _, _, _, _, _, status, t_fail = out
    assert int(status) == cpu.NONFINITE
    assert np.isfinite(ts_out).all() and ts_out[-1] <= 0.5 + 1e-12
    assert float(t_fail) == pytest.approx(0.5 if not fixed else 0.4, abs=1e-9)
    assert np.isnan(ys[-1]).all()
