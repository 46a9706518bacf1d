"""diffsolve.linear.solve under the solver contract (issue 11): every reproduction of the
issue for the linear family, plus the contract's settings / status / callback / input rules.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import diffsolve as ds
from diffsolve import Status
from tests.helpers import poisson_2d

solve = ds.linear.solve
ITERATIVE = ("cg", "pcg", "sor", "ssor-cg", "dcdm")
ALL = ("direct", *ITERATIVE)
OPTIONS = {"sor": {"omega": 1.5}, "ssor-cg": {"omega": 1.5}}


def _grid(m=8, shift=0.1):
    """A 5-point matrix of a square grid: every method (dcdm included) applies."""
    return poisson_2d(m, shift=shift)


def _neumann_laplacian(m):
    """The pure-Neumann 5-point Laplacian of an m x m grid (PyAMG's unit_square Neumann
    problem): symmetric positive semidefinite, singular along the constants."""
    T = sp.diags_array([-1.0, 2.0, -1.0], offsets=[-1, 0, 1], shape=(m, m)).tolil()
    T[0, 0] = T[m - 1, m - 1] = 1.0
    T = T.tocsr()
    return (sp.kron(sp.eye_array(m), T) + sp.kron(T, sp.eye_array(m))).tocsr()


# ---------------------------------------------------------------------------------------
# reproduction 1: ||b||² overflowing returned x = 0, converged=True, n_iters=0
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("scale", [1e154, 1e200, 1e300])
def test_overflowing_rhs_float64_is_solved(method, scale):
    A = _grid()
    b0 = np.linspace(1.0, 2.0, A.shape[0])
    ref = np.linalg.solve(A.toarray(), b0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning, no ConvergenceWarning
        res = solve(A, b0 * scale, method=method, rtol=1e-8, **OPTIONS.get(method, {}))
    assert res.converged and res.status is Status.SUCCESS
    if method != "direct":
        assert res.n_iters > 0
    np.testing.assert_allclose(res.x / scale, ref, rtol=1e-6)
    assert np.isfinite(res.residual_norm) and res.residual_norm <= 1e-8 * scale * \
        np.linalg.norm(b0)


@pytest.mark.parametrize("method", ["direct", "cg", "pcg", "sor", "ssor-cg"])
def test_overflowing_rhs_float32_is_solved(method):
    A = _grid().astype(np.float32)
    b0 = np.linspace(1.0, 2.0, A.shape[0]).astype(np.float32)
    scale = np.float32(1.8e19)  # ||b||² overflows float32 (max 3.4e38)
    res = solve(A, b0 * scale, method=method, rtol=1e-4, **OPTIONS.get(method, {}))
    assert res.converged and res.x.dtype == np.float32
    ref = np.linalg.solve(A.toarray().astype(np.float64), b0.astype(np.float64))
    np.testing.assert_allclose(res.x.astype(np.float64) / float(scale), ref, rtol=1e-3)


# ---------------------------------------------------------------------------------------
# reproduction 3: a direct solve of a singular matrix said converged=True, info=0
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_direct_solve_of_singular_neumann_laplacian_is_not_converged(kind):
    A = _neumann_laplacian(16)
    A_in = A if kind == "sparse" else A.toarray()
    b = np.random.default_rng(0).standard_normal(A.shape[0])  # has a mean: no solution
    with pytest.warns(ds.ConvergenceWarning, match="singular or ill-conditioned.*lstsq"):
        res = solve(A_in, b)
    assert not res.converged and res.status is Status.BREAKDOWN and res.info != 0
    if np.all(np.isfinite(res.x)):  # whatever LU returned, the reported residual is true
        # (x is huge: its residual is mostly rounding, computed two ways)
        np.testing.assert_allclose(res.residual_norm, np.linalg.norm(b - A @ res.x),
                                   rtol=0.1)
    with pytest.raises(ds.BreakdownError):
        solve(A_in, b, throw=True)
    # a consistent right-hand side (zero mean) still has a solution LU may find: then
    # converged is whatever the true residual says
    c = b - b.mean()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ds.ConvergenceWarning)
        ok = solve(A_in, c)
    assert ok.converged == bool(np.linalg.norm(c - A @ ok.x) <=
                                max(1e-8, min(10 * A.shape[0] * 2.2e-16, 1.5e-8))
                                * np.linalg.norm(c))


def test_direct_solve_checks_its_residual_on_ill_conditioned_matrices():
    n = 12
    H = 1.0 / (np.arange(n)[:, None] + np.arange(n)[None, :] + 1.0)  # Hilbert, cond 1e16
    b = np.ones(n)
    with pytest.warns(ds.ConvergenceWarning):
        res = solve(H, b, rtol=1e-14)
    assert not res.converged
    assert res.residual_norm == pytest.approx(np.linalg.norm(b - H @ res.x), rel=1e-3)


# ---------------------------------------------------------------------------------------
# reproduction 4: converged came from the recursive residual (float32 at rtol=1e-8)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["cg", "pcg", "ssor-cg", "sor"])
def test_float32_converged_reflects_the_true_residual(method):
    A = poisson_2d(32, shift=0.01).astype(np.float32)
    b = np.ones(A.shape[0], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ds.ConvergenceWarning)
        res = solve(A, b, method=method, rtol=1e-8, maxiter=3000, **OPTIONS.get(method, {}))
    true = np.linalg.norm(b.astype(np.float64) - A.astype(np.float64) @ res.x)
    assert res.converged == bool(true <= 1e-8 * np.linalg.norm(b))
    assert not res.converged  # float32 cannot resolve 1e-8 here
    np.testing.assert_allclose(res.residual_norm, true, rtol=0.2)  # float32 vs float64


def test_float32_cg_warns_with_what_to_do():
    A = poisson_2d(32, shift=0.01).astype(np.float32)
    b = np.ones(A.shape[0], dtype=np.float32)
    with pytest.warns(ds.ConvergenceWarning, match="float64"):
        res = solve(A, b, method="cg", rtol=1e-8)
    assert res.status is Status.BREAKDOWN  # the true residual stagnated


# ---------------------------------------------------------------------------------------
# reproduction 5: maxiter=True ran one iteration
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ITERATIVE)
@pytest.mark.parametrize("option", ["maxiter", "check_every"])
def test_bool_budgets_are_refused(method, option):
    with pytest.raises(TypeError, match=f"diffsolve.linear.solve: {option} must be an "
                                        "integer.*the bool True"):
        solve(_grid(), np.ones(64), method=method, **{option: True},
              **OPTIONS.get(method, {}))


def test_numpy_integer_budgets_are_accepted():
    res = solve(_grid(), np.ones(64), method="cg", maxiter=np.int64(200))
    assert res.converged


# ---------------------------------------------------------------------------------------
# reproduction 7: float16 crashed inside Numba, size 0 gave raw NumPy errors
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ALL)
def test_float16_is_refused_clearly(method):
    A = _grid()
    with pytest.raises(TypeError, match="diffsolve.linear.solve: A has dtype float16.*float32 "
                                        "or float64"):
        solve(A.toarray().astype(np.float16), np.ones(64), method=method,
              **OPTIONS.get(method, {}))
    with pytest.raises(TypeError, match="diffsolve.linear.solve: b has dtype float16"):
        solve(A, np.ones(64, dtype=np.float16), method=method, **OPTIONS.get(method, {}))


@pytest.mark.parametrize("method", ALL)
def test_size_zero_is_refused_clearly(method):
    with pytest.raises(ValueError, match="diffsolve.linear.solve: .* no entries"):
        solve(np.zeros((0, 0)), np.zeros(0), method=method, **OPTIONS.get(method, {}))
    with pytest.raises(ValueError, match="diffsolve.linear.solve: b has shape \\(4, 0\\)"):
        solve(np.eye(4), np.zeros((4, 0)), method=method, **OPTIONS.get(method, {}))


@pytest.mark.parametrize("method", ["direct", "cg", "sor"])
def test_integers_promote_to_float64(method):
    A = np.array([[4, 1], [1, 3]])
    res = solve(A, np.array([1, 2]), method=method, **OPTIONS.get(method, {}))
    assert res.x.dtype == np.float64 and res.converged
    np.testing.assert_allclose(res.x, np.linalg.solve(A, [1.0, 2.0]), rtol=1e-7)
    res = solve(sp.csr_matrix(A), np.array([1.0, 2.0]), method=method,
                **OPTIONS.get(method, {}))
    assert res.converged


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_x0_is_refused(bad):
    x0 = np.zeros(64)
    x0[1] = bad
    with pytest.raises(ValueError, match="x0 contains NaN or inf"):
        solve(_grid(), np.ones(64), method="cg", x0=x0)


# ---------------------------------------------------------------------------------------
# the contract: settings, status, throw, callbacks, fixed budget, renames
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ITERATIVE)
def test_fixed_budget_runs_exactly_maxiter_without_warning(method):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = solve(_grid(), np.ones(64), method=method, rtol=0.0, atol=0.0, maxiter=4,
                    **OPTIONS.get(method, {}))
    assert res.n_iters == 4 and res.status is Status.MAX_ITERATIONS and not res.converged


@pytest.mark.parametrize("method", ITERATIVE)
def test_zero_rhs_gives_zero_in_no_iterations(method):
    res = solve(_grid(), np.zeros(64), method=method, x0=np.ones(64),
                **OPTIONS.get(method, {})) if method != "sor" else \
        solve(_grid(), np.zeros(64), method=method, **OPTIONS.get(method, {}))
    assert res.converged and res.n_iters == 0 and not np.any(res.x)


@pytest.mark.parametrize("method", ALL)
def test_status_message_info_of_a_success(method):
    res = solve(_grid(), np.ones(64), method=method, **OPTIONS.get(method, {}))
    assert res.status is Status.SUCCESS and res.info == 0 and "converged" in res.message


@pytest.mark.parametrize("method", ITERATIVE)
def test_throw_raises_the_status_error(method):
    with pytest.raises(ds.MaxIterationsError) as err:
        solve(_grid(), np.ones(64), method=method, rtol=1e-12, maxiter=2, throw=True,
              **OPTIONS.get(method, {}))
    assert isinstance(err.value, ds.SolveError) and err.value.result.n_iters == 2
    with pytest.raises(TypeError, match="throw must be True or False"):
        solve(_grid(), np.ones(64), method=method, throw="yes", **OPTIONS.get(method, {}))


@pytest.mark.parametrize("method", ITERATIVE)
def test_callback_state_sees_every_iteration(method):
    seen = []
    res = solve(_grid(), np.ones(64), method=method, callback=seen.append,
                **OPTIONS.get(method, {}))
    assert [s.n_iters for s in seen] == list(range(1, res.n_iters + 1))
    assert isinstance(seen[-1], ds.linear.LinearSolveState)
    np.testing.assert_allclose(seen[-1].x, res.x)
    with pytest.raises(TypeError, match="callback must be None or a callable"):
        solve(_grid(), np.ones(64), method=method, callback="print",
              **OPTIONS.get(method, {}))


def test_callback_stop_with_several_rhs():
    res = solve(_grid(), np.ones((64, 3)), method="cg", rtol=1e-12,
                callback=lambda s: s.n_iters == 2)
    assert res.status is Status.STOPPED and res.n_iters == 2
    assert res.residual_norm.shape == (3,)


def test_renamed_options_warn_and_work():
    with pytest.warns(DeprecationWarning, match="tol= is deprecated.*use rtol="):
        res = solve(_grid(), np.ones(64), method="cg", tol=1e-10)
    assert res.converged
    with pytest.warns(DeprecationWarning, match="max_iter= is deprecated.*use maxiter="):
        res = solve(_grid(), np.ones(64), method="sor", max_iter=3, omega=1.5,
                    rtol=0.0, atol=0.0)
    assert res.n_iters == 3
    with pytest.raises(TypeError, match="both tol= .*and rtol="):
        solve(_grid(), np.ones(64), method="cg", tol=1e-10, rtol=1e-6)
    with pytest.raises(TypeError, match="unexpected keyword argument.*rtoll"):
        solve(_grid(), np.ones(64), method="cg", rtoll=1e-8)


def test_settings_are_validated_once_and_frozen():
    from diffsolve.linear._solve import LinearSolveSettings, solve_unreported

    _, (_, settings) = solve_unreported(_grid(), np.ones(64), method="sor", omega=1.5)
    assert isinstance(settings, LinearSolveSettings) and settings.omega == 1.5
    assert settings.maxiter is None and settings.rtol == 1e-8  # defaults of the signature
    with pytest.raises(AttributeError):
        settings.rtol = 1.0


@pytest.mark.parametrize("method", ALL)
def test_inputs_unmodified_read_only_and_non_contiguous(method):
    A = _grid().toarray()
    big = np.ones((64, 3))
    big[:, 1] = np.linspace(1.0, 2.0, 64)
    b = big[:, 1]  # non-contiguous
    A.flags.writeable = False
    big.flags.writeable = False
    keep_A, keep_b = A.copy(), b.copy()
    res = solve(A, b, method=method, **OPTIONS.get(method, {}))
    assert res.converged
    np.testing.assert_array_equal(A, keep_A)
    np.testing.assert_array_equal(b, keep_b)
    np.testing.assert_allclose(res.x, np.linalg.solve(keep_A, keep_b), rtol=1e-6)


def test_adjoint_of_fixed_budget_does_not_warn():
    A = _grid()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, f_vjp = ds.vjp(solve, A, np.ones(64), method="cg", rtol=0.0, atol=0.0,
                          maxiter=5)
        f_vjp(x=np.ones(64))


def test_direct_solution_beyond_the_range_is_nonfinite_not_a_singular_matrix():
    # a well-conditioned A whose solution A⁻¹b overflows float64: the message must not
    # blame A (it did: "A is singular or ill-conditioned")
    A = 1e-3 * (np.diag(np.full(6, 4.0)) + np.diag(np.full(5, -1.0), 1)
                + np.diag(np.full(5, -1.0), -1))
    b = np.full(6, 1e307)
    with pytest.raises(ds.NonFiniteError, match="exceeds the dtype's range") as info:
        ds.linear.solve(A, b, method="direct", throw=True)
    assert info.value.result.status == ds.Status.NONFINITE
    assert "singular" not in str(info.value)
    # a singular A is still a breakdown
    S = np.array([[1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ds.BreakdownError):
        ds.linear.solve(S, np.array([1.0, 2.0]), method="direct", throw=True)
