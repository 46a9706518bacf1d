"""Krylov solvers on JAX arrays: their array algebra runs as compiled functions
(``krylov._common.compiled``), not as eager JAX operations one by one. Same answers,
statuses and iteration counts as on NumPy arrays, for every outcome a solve can have."""

from __future__ import annotations

import numpy as np
import pytest

from diffsolve import Status
from diffsolve.krylov import _common as C
from diffsolve.krylov import cg, gmres, minres

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

SOLVERS = {"cg": cg, "minres": minres, "gmres": gmres}


def _spd(rng, n=30, cond=50.0):
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * np.geomspace(1.0, cond, n)) @ Q.T


def _both(solver, A, b, **kw):
    """The solve with NumPy arrays and with JAX arrays (A as a matrix and as a callable)."""
    ref = solver(A, b, **kw)
    Aj, bj = jnp.asarray(A), jnp.asarray(b)
    kwj = {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    out = [solver(Aj, bj, **kwj), solver(lambda v: Aj @ v, bj, **kwj)]
    return ref, out


def _same(ref, got, rtol=1e-8):
    assert isinstance(got.x, jax.Array)
    assert got.status == ref.status and got.converged == ref.converged
    # the last iteration can fall on either side of the tolerance by rounding
    assert abs(got.n_iters - ref.n_iters) <= 1
    np.testing.assert_allclose(np.asarray(got.x), ref.x, rtol=rtol,
                               atol=rtol * float(np.max(np.abs(ref.x))))
    # a converged residual is rounding (the two libraries sum in different orders); the
    # verdict on it is the same
    if ref.converged:
        assert 0.0 <= got.residual_norm <= 100.0 * ref.residual_norm + 1e-300
    else:
        np.testing.assert_allclose(got.residual_norm, ref.residual_norm, rtol=1e-6)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_jax_solves_match_numpy(name):
    rng = np.random.default_rng(0)
    A, b = _spd(rng), rng.standard_normal(30)
    ref, out = _both(SOLVERS[name], A, b, rtol=1e-10)
    assert ref.converged
    for got in out:
        _same(ref, got)


@pytest.mark.parametrize("scale", [1e-300, 1.0, 1e300])
def test_jax_cg_extreme_right_hand_sides_and_warm_start(scale):
    rng = np.random.default_rng(1)
    A, b = _spd(rng), rng.standard_normal(30) * scale
    x0 = 0.5 * np.linalg.solve(A, b)
    for kw in ({}, {"x0": x0}):
        ref, out = _both(cg, A, b, rtol=1e-10, **kw)
        assert ref.converged and np.all(np.isfinite(ref.x))
        for got in out:
            _same(ref, got)


def test_jax_cg_batch_of_columns():
    rng = np.random.default_rng(2)
    A, b = _spd(rng), rng.standard_normal((30, 4))
    b[:, 2] = 0.0  # a zero column: x = 0 in 0 iterations, beside the others
    ref, out = _both(cg, A, b, rtol=1e-9, batch_axis=1)
    for got in out:
        np.testing.assert_array_equal(np.asarray(got.status), np.asarray(ref.status))
        # both within the tolerance times cond(A) = 50 of the exact answer
        np.testing.assert_allclose(np.asarray(got.x), np.linalg.solve(A, b), rtol=0, atol=1e-7)
    assert np.all(np.asarray(out[0].x)[:, 2] == 0.0)


def test_jax_cg_failures_are_reported_like_numpy():
    rng = np.random.default_rng(3)
    A, b = _spd(rng), rng.standard_normal(30)
    # non-finite right-hand side: NaN x, NONFINITE
    bad = b.copy()
    bad[4] = np.nan
    ref, out = _both(cg, A, bad)
    assert ref.status is Status.NONFINITE
    for got in out:
        assert got.status is Status.NONFINITE and np.all(np.isnan(np.asarray(got.x)))
    # indefinite matrix: a breakdown that names the curvature
    D = np.diag(np.r_[np.ones(15), -np.ones(15)])
    ref, out = _both(cg, D, b)
    assert ref.status is Status.BREAKDOWN
    for got in out:
        assert got.status is Status.BREAKDOWN and got.message == ref.message
    # a fixed budget runs exactly maxiter iterations
    ref, out = _both(cg, A, b, rtol=0.0, atol=0.0, maxiter=5)
    for got in out:
        assert got.n_iters == 5 and got.status is Status.MAX_ITERATIONS
        _same(ref, got)


def test_jax_solves_compile_once():
    """A second solve of another system of the same shapes compiles nothing new."""
    rng = np.random.default_rng(4)
    A = jnp.asarray(_spd(rng))
    cg(A, jnp.asarray(rng.standard_normal(30)))
    before = {k: f._cache_size() for k, f in C._COMPILED.items()}
    res = cg(A, jnp.asarray(rng.standard_normal(30)), rtol=1e-9)
    assert res.converged and before
    assert {k: f._cache_size() for k, f in C._COMPILED.items()} == before
