"""In-place ``@njit`` vector fields ``f(t, y, params, out)``: the compiled explicit
integrator writes the slopes straight into its stage rows (no array allocated per call);
every other path calls an allocating adapter. Results must be bit-identical to the same
field written to return a new array."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import diffsolve as ds
from diffsolve.ode import odeint


@numba.njit
def lv(t, y, p):
    out = np.empty_like(y)
    out[0] = p[0] * y[0] - p[1] * y[0] * y[1]
    out[1] = p[2] * y[0] * y[1] - p[3] * y[1]
    return out


@numba.njit
def lv_inplace(t, y, p, out):
    out[0] = p[0] * y[0] - p[1] * y[0] * y[1]
    out[1] = p[2] * y[0] * y[1] - p[3] * y[1]


@numba.njit
def lv_vjp(t, y, p, v):
    vy = np.empty(2)
    vy[0] = v[0] * (p[0] - p[1] * y[1]) + v[1] * p[2] * y[1]
    vy[1] = -v[0] * p[1] * y[0] + v[1] * (p[2] * y[0] - p[3])
    vp = np.array([v[0] * y[0], -v[0] * y[0] * y[1], v[1] * y[0] * y[1], -v[1] * y[1]])
    return vy, vp


P = np.array([1.5, 1.0, 3.0, 1.0])
T = np.linspace(0.0, 8.0, 41)


def _same(a, b):
    assert a.stats == b.stats
    np.testing.assert_array_equal(a.ys, b.ys)


@pytest.mark.parametrize("method", ["tsit5", "dopri5", "bs3"])
def test_one_trajectory_bitwise_equal(method):
    y0 = np.array([1.0, 0.5])
    _same(odeint(lv_inplace, y0, T, P, method=method), odeint(lv, y0, T, P, method=method))


def test_per_trajectory_batch_bitwise_equal():
    Y = np.random.default_rng(0).uniform(0.5, 1.5, (37, 2))
    a = odeint(lv_inplace, Y, T, P, rtol=1e-7, atol=1e-9)
    b = odeint(lv, Y, T, P, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(a.ys, b.ys)
    assert a.n_steps == b.n_steps


@pytest.mark.parametrize("kw", [dict(dtype=np.float32), dict(method="kvaerno5"),
                                dict(callback=lambda state: False), dict(method="auto")],
                         ids=["float32", "implicit", "callback", "auto"])
def test_other_paths_call_the_allocating_adapter(kw):
    y0 = np.array([1.0, 0.5], dtype=kw.pop("dtype", np.float64))
    a = odeint(lv_inplace, y0, T, P, **kw)
    b = odeint(lv, y0, T, P, **kw)
    np.testing.assert_array_equal(a.ys, b.ys)


def test_gradients_equal():
    Y = np.random.default_rng(1).uniform(0.5, 1.5, (5, 2))
    W = np.random.default_rng(2).standard_normal((T.shape[0], 5, 2))
    outs = []
    for f in (lv_inplace, lv):
        _, pull = ds.vjp(odeint, f, Y, T, P, vjp=lv_vjp, rtol=1e-8, atol=1e-10)
        outs.append(pull(ys=W))
    for a, b in zip(*outs):
        if b is None:
            assert a is None
        else:
            np.testing.assert_array_equal(a, b)


def test_a_four_argument_field_of_another_signature_is_not_taken_for_in_place():
    from diffsolve.kernels.cpu import ode as kern

    @numba.njit
    def returns_array(t, y, p, scale):
        return scale * y

    assert not kern.fits_inplace(returns_array)
    assert kern.fits_inplace(lv_inplace) and not kern.fits_inplace(lv)


def test_fit_answers_are_remembered_per_dispatcher():
    from diffsolve.kernels.cpu import ode as kern

    assert kern.fits_pointer(lv) and not kern.fits_inplace(lv)
    assert kern.fits_inplace(lv_inplace) and not kern.fits_pointer(lv_inplace)
    assert kern._FITS[lv][("pointer", None)][0] is True
    assert kern._FITS[lv_inplace][("inplace", None)][0] is True
    assert kern.fits_pointer(lv, lv_vjp)
    assert kern._FITS[lv][("pointer", id(lv_vjp))][1]() is lv_vjp
