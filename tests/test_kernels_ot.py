"""Fused log-sum-exp kernels (kernels/cpu/ot.py, kernels/cuda/ot.py) vs naive references."""

from __future__ import annotations

import numpy as np
import pytest

from diffsolve.kernels.cpu import ot as cpu
from tests.naive_ot import naive_lse_cols, naive_lse_rows

# around the lse_cols block width (256) and the lse_rows chunk (16 rows)
SHAPES = [(1, 1, 1), (1, 7, 3), (2, 17, 300), (3, 40, 513), (1, 257, 16)]
EPS = [1.0, 1e-2, 1e-4]


def _problem(rng, shape, dtype, eps):
    B, n, m = shape
    C = rng.random(shape).astype(dtype)
    f = (rng.standard_normal((B, n)) * 0.3).astype(dtype)
    g = (rng.standard_normal((B, m)) * 0.3).astype(dtype)
    return C, f, g


def _tol(dtype):
    return {"rtol": 1e-12, "atol": 1e-12} if dtype == np.float64 else {"rtol": 1e-5,
                                                                       "atol": 1e-5}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", EPS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lse_rows_and_cols(rng, shape, eps, dtype):
    C, f, g = _problem(rng, shape, dtype, eps)
    active = np.ones(shape[0], np.uint8)
    out = cpu.lse_rows(C, g, eps, active, np.empty(shape[:2], dtype))
    assert out.dtype == dtype
    np.testing.assert_allclose(out, naive_lse_rows(C, g, eps), **_tol(dtype))
    out = cpu.lse_cols(C, f, eps, active, np.empty((shape[0], shape[2]), dtype))
    np.testing.assert_allclose(out, naive_lse_cols(C, f, eps), **_tol(dtype))


def test_inactive_problems_untouched_and_neg_inf(rng):
    C, f, g = _problem(rng, (3, 5, 4), np.float64, 0.1)
    g[1, :] = -np.inf  # an all -inf slice gives -inf, no NaN
    f[1, 2] = -np.inf  # a single zero-weight point drops out of its sums
    active = np.array([1, 1, 0], np.uint8)
    out = np.full((3, 5), 7.0)
    cpu.lse_rows(C, g, 0.1, active, out)
    assert np.all(out[1] == -np.inf)
    np.testing.assert_allclose(out[0], naive_lse_rows(C, g, 0.1)[0], rtol=1e-12)
    assert np.all(out[2] == 7.0)
    out = np.full((3, 4), 7.0)
    cpu.lse_cols(C, f, 0.1, active, out)
    np.testing.assert_allclose(out[:2], naive_lse_cols(C, f, 0.1)[:2], rtol=1e-12)
    assert np.all(out[2] == 7.0)


def test_tiny_eps_no_overflow(rng):
    # exponents of order 1e6: only max-shifting keeps them finite
    C, _f, g = _problem(rng, (1, 30, 20), np.float64, 1e-6)
    active = np.ones(1, np.uint8)
    out = cpu.lse_rows(C, g, 1e-6, active, np.empty((1, 30)))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, naive_lse_rows(C, g, 1e-6), rtol=1e-12, atol=1e-12)


def test_exp_polynomial_accuracy():
    x = np.concatenate([np.linspace(-699.0, 0.0, 20001), -np.logspace(-12, 2, 2001)])
    got = cpu.lse_rows(np.zeros((1, 1, x.size)), x[None], 1.0, np.ones(1, np.uint8),
                       np.empty((1, 1)))
    np.testing.assert_allclose(got[0, 0], np.log(np.sum(np.exp(x))), rtol=1e-14)
    # one term at a time: exp(x) itself (max shift is 0 when the row is [0, x])
    for v in (-1e-3, -0.3466, -1.0, -20.5, -300.0, -698.0):
        row = np.array([[[0.0, -v]]])
        got = cpu.lse_rows(row, np.zeros((1, 2)), 1.0, np.ones(1, np.uint8), np.empty((1, 1)))
        np.testing.assert_allclose(got[0, 0], np.log1p(np.exp(v)), rtol=0, atol=5e-16)


def test_bad_arguments():
    C = np.zeros((1, 3, 2))
    with pytest.raises(ValueError, match="lse_rows"):
        cpu.lse_rows(C, np.zeros((1, 3)), 1.0, np.ones(1, np.uint8), np.empty((1, 3)))
    with pytest.raises(ValueError, match="C-contiguous"):
        cpu.lse_cols(np.zeros((1, 2, 3)).transpose(0, 2, 1), np.zeros((1, 3)), 1.0,
                     np.ones(1, np.uint8), np.empty((1, 2)))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [*SHAPES, (2, 3000, 700)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_twins_match_cpu(rng, shape, dtype):
    cupy = pytest.importorskip("cupy")
    from diffsolve.kernels.cuda import ot as gpu

    C, f, g = _problem(rng, shape, dtype, 1e-2)
    f[0, 0] = -np.inf
    active = np.ones(shape[0], np.uint8)
    if shape[0] > 1:
        active[-1] = 0
    on = active.astype(bool)
    for eps in EPS:
        want = cpu.lse_rows(C, g, eps, active, np.empty(shape[:2], dtype))
        got = gpu.lse_rows(cupy.asarray(C), cupy.asarray(g), eps, cupy.asarray(active),
                           cupy.empty(shape[:2], dtype))
        np.testing.assert_allclose(got.get()[on], want[on], **_tol(dtype))
        want = cpu.lse_cols(C, f, eps, active, np.empty((shape[0], shape[2]), dtype))
        got = gpu.lse_cols(cupy.asarray(C), cupy.asarray(f), eps, cupy.asarray(active),
                           cupy.empty((shape[0], shape[2]), dtype))
        np.testing.assert_allclose(got.get()[on], want[on], **_tol(dtype))


@pytest.mark.parametrize("shape", [(1, 7, 5), (3, 40, 33)])
def test_serial_twins_give_the_parallel_kernels_bits(rng, shape):
    """Small problems run the one-thread builds (no parallel region): the same source
    without prange, so the same numbers, inactive problems included."""
    C = rng.random(shape) * 3.0
    v = rng.standard_normal((shape[0], shape[2]))
    u = rng.standard_normal((shape[0], shape[1]))
    active = np.ones(shape[0], dtype=np.int8)
    active[0] = 0
    for par, vec, n_out in ((cpu._lse_rows, v, shape[1]), (cpu._lse_cols, u, shape[2])):
        out_p = np.full((shape[0], n_out), 7.0)
        out_s = np.full((shape[0], n_out), 7.0)
        par(C, vec, 0.1, active, out_p)
        cpu._SERIAL[par](C, vec, 0.1, active, out_s)
        np.testing.assert_array_equal(out_p, out_s)
        assert np.all(out_s[0] == 7.0)  # an inactive problem is left alone
