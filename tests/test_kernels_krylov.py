"""Fused CG vector kernels (kernels/cpu/krylov.py, kernels/cuda/krylov.py) vs naive loops."""

from __future__ import annotations

import numpy as np
import pytest
from diffsolve.kernels.cpu import krylov as cpu

from tests.naive import (
    naive_cg_direction,
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
