"""Fused CG vector kernels (kernels/cpu/krylov.py, kernels/cuda/krylov.py) vs naive loops."""

from __future__ import annotations

import numpy as np
import pytest

from diffsolve.kernels.cpu import krylov as cpu
from tests.naive import (
    naive_cg_direction,
    naive_cg_next,
    naive_cg_step_size,
    naive_cg_update,
    naive_column_dots,
    naive_curvature_dots,
)

SHAPES = [(1, 1), (7, 1), (2048, 2), (5000, 3), (4097, 1)]  # around the 2048-row block size


def _arrays(rng, shape, dtype, n_arrays):
    return [np.ascontiguousarray(rng.standard_normal(shape).astype(dtype)) for _ in range(n_arrays)]


def _tol(dtype):
    return {"rtol": 1e-12, "atol": 1e-12} if dtype == np.float64 else {"rtol": 2e-4, "atol": 1e-4}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_column_and_curvature_dots(rng, shape, dtype):
    a, b = _arrays(rng, shape, dtype, 2)
    out = cpu.column_dots(a, b, np.empty(shape[1], dtype))
    assert out.dtype == dtype
    np.testing.assert_allclose(out, naive_column_dots(a, b), **_tol(dtype))
    cur = cpu.curvature_dots(a, b, np.empty((3, shape[1]), dtype))
    np.testing.assert_allclose(cur, naive_curvature_dots(a, b), **_tol(dtype))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cg_update_and_direction(rng, shape, dtype):
    x, r, p, Ap = _arrays(rng, shape, dtype, 4)
    alpha = rng.standard_normal(shape[1]).astype(dtype)
    alpha[0] = 0.0  # a finished column must not move
    want_x, want_r, want_rr = naive_cg_update(x, r, p, Ap, alpha)
    x0_col = x[:, 0].copy()
    rr = cpu.cg_update(x, r, p, Ap, alpha, np.empty(shape[1], dtype))
    np.testing.assert_allclose(x, want_x, **_tol(dtype))
    np.testing.assert_allclose(r, want_r, **_tol(dtype))
    np.testing.assert_allclose(rr, want_rr, **_tol(dtype))
    np.testing.assert_array_equal(x[:, 0], x0_col)
    beta = rng.standard_normal(shape[1]).astype(dtype)
    want_p = naive_cg_direction(p, r, beta)
    out = cpu.cg_direction(p, r, beta)
    assert out is p
    np.testing.assert_allclose(p, want_p, **_tol(dtype))


def _scalar_case(rng):
    """Six columns covering: stepping, finished, flagged, zero curvature, zero rz."""
    k = 6
    rz = np.abs(rng.standard_normal(k)) + 0.1
    rz[5] = 0.0
    curv = np.abs(rng.standard_normal((3, k))) + 0.1
    curv[1, 3] = 0.0  # pᵀAp = 0: must be flagged
    a_norm = np.abs(rng.standard_normal(k))
    active = np.array([True, False, True, True, True, True])
    bad = np.array([False, False, True, False, False, False])
    return rz, curv, a_norm, active, bad


def test_cg_step_size_and_next(rng):
    rz, curv, a_norm, active, bad = _scalar_case(rng)
    want_alpha, want_norm, want_bad = naive_cg_step_size(rz, curv, a_norm, active, bad, 1e-12)
    a_norm_k, bad_k = a_norm.copy(), bad.copy()
    alpha = cpu.cg_step_size(rz, curv, a_norm_k, active, bad_k, 1e-12, np.empty(6))
    np.testing.assert_allclose(alpha, want_alpha, rtol=1e-15)
    np.testing.assert_allclose(a_norm_k, want_norm, rtol=1e-15)
    np.testing.assert_array_equal(bad_k, want_bad)
    assert bad_k[3] and alpha[1] == 0.0 and alpha[2] == 0.0 and alpha[3] == 0.0

    rz_new = np.abs(rng.standard_normal(6))
    rr = np.array([1.0, 1.0, 1.0, 1.0, 1e-20, 1.0])
    tol = np.full(6, 1e-8)
    iters = np.arange(6, dtype=np.int64)
    want = naive_cg_next(rz, rz_new, rr, tol, active, bad_k, iters)
    rz_k, active_k, iters_k = rz.copy(), active.copy(), iters.copy()
    beta = cpu.cg_next(rz_k, rz_new, rr, tol, active_k, bad_k, iters_k, np.empty(6))
    for got, exp in zip((beta, rz_k, active_k, iters_k), want):
        np.testing.assert_array_equal(got, exp)
    assert active_k[0] and not active_k[4]  # column 4 met its tolerance


def test_reductions_do_not_depend_on_thread_count(rng):
    import numba

    a, b = _arrays(rng, (50_000, 2), np.float64, 2)
    first = cpu.column_dots(a, b, np.empty(2))
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = cpu.column_dots(a, b, np.empty(2))
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(first, single)  # bit-for-bit: fixed row blocks


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_twins_match_cpu(rng, shape):
    cupy = pytest.importorskip("cupy")
    from diffsolve.kernels.cuda import krylov as gpu

    x, r, p, Ap = _arrays(rng, shape, np.float64, 4)
    alpha = rng.standard_normal(shape[1])
    beta = rng.standard_normal(shape[1])
    g = [cupy.asarray(v) for v in (x, r, p, Ap)]
    k = shape[1]
    np.testing.assert_allclose(cupy.asnumpy(gpu.column_dots(g[0], g[1], cupy.empty(k))),
                               cpu.column_dots(x, r, np.empty(k)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(gpu.curvature_dots(g[2], g[3], cupy.empty((3, k)))),
                               cpu.curvature_dots(p, Ap, np.empty((3, k))), rtol=1e-12, atol=1e-12)
    rr_gpu = gpu.cg_update(g[0], g[1], g[2], g[3], cupy.asarray(alpha), cupy.empty(k))
    rr_cpu = cpu.cg_update(x, r, p, Ap, alpha, np.empty(k))
    np.testing.assert_allclose(cupy.asnumpy(rr_gpu), rr_cpu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(g[0]), x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cupy.asnumpy(g[1]), r, rtol=1e-12, atol=1e-12)
    gpu.cg_direction(g[2], g[1], cupy.asarray(beta))
    cpu.cg_direction(p, r, beta)
    np.testing.assert_allclose(cupy.asnumpy(g[2]), p, rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_cuda_scalar_twins_match_cpu(rng):
    cupy = pytest.importorskip("cupy")
    from diffsolve.kernels.cuda import krylov as gpu

    rz, curv, a_norm, active, bad = _scalar_case(rng)
    g = [cupy.asarray(v) for v in (rz, curv, a_norm, active, bad)]
    alpha_g = gpu.cg_step_size(g[0], g[1], g[2], g[3], g[4], 1e-12, cupy.empty(6))
    alpha_c = cpu.cg_step_size(rz, curv, a_norm, active, bad, 1e-12, np.empty(6))
    np.testing.assert_allclose(cupy.asnumpy(alpha_g), alpha_c, rtol=1e-14)
    np.testing.assert_allclose(cupy.asnumpy(g[2]), a_norm, rtol=1e-14)
    np.testing.assert_array_equal(cupy.asnumpy(g[4]), bad)
    rz_new = np.abs(rng.standard_normal(6))
    rr = np.array([1.0, 1.0, 1.0, 1.0, 1e-20, 1.0])
    tol = np.full(6, 1e-8)
    iters = np.zeros(6, dtype=np.int64)
    h = [cupy.asarray(v) for v in (rz_new, rr, tol, iters)]
    beta_g = gpu.cg_next(g[0], h[0], h[1], h[2], g[3], g[4], h[3], cupy.empty(6))
    beta_c = cpu.cg_next(rz, rz_new, rr, tol, active, bad, iters, np.empty(6))
    np.testing.assert_allclose(cupy.asnumpy(beta_g), beta_c, rtol=1e-14)
    np.testing.assert_array_equal(cupy.asnumpy(g[3]), active)
    np.testing.assert_array_equal(cupy.asnumpy(h[3]), iters)
