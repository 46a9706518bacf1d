"""diffsolve.linear.solve: forward correctness, options, convergence reporting, bad input."""

from __future__ import annotations

import contextlib
import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import diffsolve as ds
from tests.helpers import assert_close, poisson_2d, spd_matrix, to_numpy

solve = ds.linear.solve


def _as_xp(xp, a):
    return xp.asarray(a)


def _sparse_for(xp, A):
    """A in the sparse format of xp (SciPy for NumPy, cupyx for CuPy); skip otherwise."""
    name = xp.__name__.split(".")[-1]
    if name == "numpy":
        return A
    if name == "cupy":
        import cupyx.scipy.sparse as csp

        return csp.csr_matrix(A)
    pytest.skip("sparse matrices exist for NumPy (SciPy) and CuPy only")


@pytest.mark.parametrize("method", ["direct", "cg"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_dense_solution_matches_numpy(xp, rng, method, dtype):
    A = spd_matrix(rng, 12, cond=50.0).astype(dtype)
    b = rng.standard_normal(12).astype(dtype)
    tol = 1e-10 if dtype == "float64" else 1e-4
    res = solve(_as_xp(xp, A), _as_xp(xp, b), method=method, rtol=tol)
    assert res.converged and res.info == 0
    assert_close(res.x, np.linalg.solve(A.astype(float), b.astype(float)), xp=xp,
                 dtype=getattr(xp, dtype), rtol=1e-6 if dtype == "float64" else 1e-3)
    assert float(res.residual_norm) <= 10 * tol * np.linalg.norm(b)


@pytest.mark.parametrize("method", ["direct", "cg"])
def test_sparse_solution_matches_scipy(xp, method):
    A = poisson_2d(9, shift=0.1)
    b = np.linspace(-1.0, 1.0, A.shape[0])
    res = solve(_sparse_for(xp, A), _as_xp(xp, b), method=method, rtol=1e-12)
    assert_close(res.x, spla.spsolve(A.tocsc(), b), xp=xp, rtol=1e-9, atol=1e-12)
    if method == "cg":
        assert 0 < res.n_iters < A.shape[0]


@pytest.mark.parametrize("method", ["direct", "cg"])
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_several_right_hand_sides(xp, rng, method, kind):
    A = poisson_2d(6, shift=0.5)
    Ad = A.toarray()
    B = rng.standard_normal((A.shape[0], 3))
    B[:, 1] *= 1e-3  # columns of different scale stop at their own tolerance
    A_in = _sparse_for(xp, A) if kind == "sparse" else _as_xp(xp, Ad)
    res = solve(A_in, _as_xp(xp, B), method=method, rtol=1e-11)
    assert_close(res.x, np.linalg.solve(Ad, B), xp=xp, rtol=1e-8, atol=1e-13)
    assert to_numpy(res.residual_norm).shape == (3,)
    assert np.all(to_numpy(res.residual_norm) <= 1e-10 * np.linalg.norm(B, axis=0))


def test_linear_operator_with_cg():
    A = poisson_2d(8)
    op = spla.aslinearoperator(A)
    b = np.ones(A.shape[0])
    res = solve(op, b, method="cg", rtol=1e-10)
    np.testing.assert_allclose(A @ res.x, b, atol=1e-8)
    res2 = solve(op, np.ones((A.shape[0], 2)), method="cg", rtol=1e-10)
    np.testing.assert_allclose(res2.x[:, 0], res.x, rtol=1e-8)


def test_csr_parts_are_accepted():
    A = poisson_2d(5)
    C = ds.CSR.from_sparse(A)
    b = np.ones(A.shape[0])
    np.testing.assert_allclose(solve(C, b).x, spla.spsolve(A.tocsc(), b), rtol=1e-12)


def test_warm_start_saves_iterations(rng):
    A = poisson_2d(12, shift=0.01)
    b = rng.standard_normal(A.shape[0])
    cold = solve(A, b, method="cg", rtol=1e-10)
    near = cold.x + 1e-9 * rng.standard_normal(A.shape[0])
    warm = solve(A, b, method="cg", rtol=1e-10, x0=near)
    assert warm.converged and warm.n_iters < cold.n_iters / 2
    np.testing.assert_allclose(warm.x, cold.x, rtol=1e-7)


def test_callback_sees_every_iterate():
    A = poisson_2d(7)
    seen = []
    res = solve(A, np.ones(A.shape[0]), method="cg",
                callback=lambda state: seen.append(state))
    assert len(seen) == res.n_iters
    assert all(isinstance(s, ds.linear.LinearSolveState) for s in seen)
    assert [s.n_iters for s in seen] == list(range(1, res.n_iters + 1))
    np.testing.assert_allclose(seen[-1].x, res.x)
    assert seen[0].residual_norm > seen[-1].residual_norm


@pytest.mark.parametrize("method", ["cg", "pcg", "sor", "ssor-cg", "dcdm"])
def test_callback_returning_true_stops_without_warning(method):
    A = poisson_2d(8, shift=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = solve(A, np.ones(64), method=method, rtol=1e-12,
                    callback=lambda state: state.n_iters >= 2)
    assert res.status is ds.Status.STOPPED and not res.converged and res.n_iters == 2
    assert "callback" in res.message


def test_jacobi_preconditioner_reduces_iterations(rng):
    # badly row-scaled SPD matrix: D A D with D spanning 4 decades
    d = np.geomspace(1.0, 1e4, 60)
    A = d[:, None] * spd_matrix(rng, 60, cond=5.0) * d[None, :]
    b = rng.standard_normal(60)
    plain = solve(A, b, method="cg", rtol=1e-8, maxiter=5000)
    inv_diag = 1.0 / np.diag(A)
    pre = solve(A, b, method="cg", rtol=1e-8, M=lambda r: inv_diag[:, None] * r
                if r.ndim == 2 else inv_diag * r)
    assert pre.converged and pre.n_iters < plain.n_iters / 3
    np.testing.assert_allclose(pre.x, np.linalg.solve(A, b), rtol=1e-6)


def test_integer_b_promotes_to_float64():
    res = solve(np.eye(3) * 2.0, np.array([2, 4, 6]))
    assert res.x.dtype == np.float64
    np.testing.assert_allclose(res.x, [1.0, 2.0, 3.0])


def test_zero_right_hand_side_gives_zero_without_iterations():
    res = solve(poisson_2d(4), np.zeros(16), method="cg")
    assert res.converged and res.n_iters == 0
    assert not np.any(res.x)


def test_maxiter_reports_nonconvergence(xp):
    A = poisson_2d(10)
    b = _as_xp(xp, np.ones(A.shape[0]))
    with pytest.warns(ds.ConvergenceWarning, match=r"after 3 iterations.*increase maxiter"):
        res = solve(_as_xp(xp, A.toarray()), b, method="cg", maxiter=3)
    assert res.converged is False and res.status is ds.Status.MAX_ITERATIONS
    assert res.info == 3 and res.n_iters == 3
    assert "did not converge" in res.message
    with pytest.raises(ds.MaxIterationsError, match="increase maxiter") as err:
        solve(_as_xp(xp, A.toarray()), b, method="cg", maxiter=3, throw=True)
    assert err.value.result.n_iters == 3 and err.value.status is ds.Status.MAX_ITERATIONS


def test_convergence_checks_can_be_spaced(rng):
    A = poisson_2d(8)
    b = rng.standard_normal(A.shape[0])
    every = solve(A, b, method="cg", rtol=1e-9)
    spaced = solve(A, b, method="cg", rtol=1e-9, check_every=5)
    # finished columns are frozen between checks: same answer, same iteration count
    assert spaced.n_iters == every.n_iters
    np.testing.assert_allclose(spaced.x, every.x, rtol=1e-12)


# ------------------------------------------------------------------------------------------
# bad input: ValueError/TypeError naming the function, the argument, what came, what works
# ------------------------------------------------------------------------------------------
def _raises(exc, *patterns):
    joined = "".join(f"(?=.*{p})" for p in patterns)
    return pytest.raises(exc, match=re.compile(joined, re.S))


def test_non_square_matrix(xp):
    with _raises(ValueError, "diffsolve.linear.solve", "square", r"\(3, 4\)"):
        solve(_as_xp(xp, np.ones((3, 4))), _as_xp(xp, np.ones(3)))
    with _raises(ValueError, "diffsolve.linear.solve", "square"):
        solve(sp.random(3, 4, density=0.5, format="csr", random_state=0), np.ones(3))
    with _raises(ValueError, "2-D square", r"\(2, 2, 2\)"):
        solve(_as_xp(xp, np.ones((2, 2, 2))), _as_xp(xp, np.ones(2)))


def test_shape_mismatch(xp):
    with _raises(ValueError, "diffsolve.linear.solve", r"b has shape \(4,\)",
                 r"\(3,\) or \(3, k\)"):
        solve(_as_xp(xp, np.eye(3)), _as_xp(xp, np.ones(4)))
    with _raises(ValueError, "x0 must be an array of b's shape"):
        solve(_as_xp(xp, np.eye(3)), _as_xp(xp, np.ones(3)), method="cg",
              x0=_as_xp(xp, np.ones(2)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input(xp, bad):
    A = np.eye(3)
    A[1, 2] = bad
    with _raises(ValueError, "diffsolve.linear.solve", "A contains NaN or infinite"):
        solve(_as_xp(xp, A), _as_xp(xp, np.ones(3)))
    b = np.ones(3)
    b[0] = bad
    with _raises(ValueError, "diffsolve.linear.solve", "b contains NaN or inf"):
        solve(_as_xp(xp, np.eye(3)), _as_xp(xp, b))
    S = sp.csr_matrix(A)
    with _raises(ValueError, "A contains NaN or infinite"):
        solve(S, np.ones(3))


def _zero_pivot_warning(xp):
    """cupyx's LU warns on an exact zero pivot (it has no status-returning API) and diffsolve
    does not hide that warning; NumPy's path reads LAPACK's status and warns once."""
    if "cupy" in xp.__name__:
        return pytest.warns(RuntimeWarning, match="Singular matrix")
    return contextlib.nullcontext()


def test_singular_matrix_direct(xp):
    A = np.array([[1.0, 2.0], [2.0, 4.0]])
    with _zero_pivot_warning(xp), \
            pytest.warns(ds.ConvergenceWarning, match="singular or ill-conditioned.*lstsq"):
        res = solve(_as_xp(xp, A), _as_xp(xp, np.array([1.0, 0.0])))
    assert res.status is ds.Status.BREAKDOWN and not res.converged and res.info < 0
    with _zero_pivot_warning(xp), pytest.raises(ds.BreakdownError, match="regularise"):
        solve(_as_xp(xp, A), _as_xp(xp, np.array([1.0, 0.0])), throw=True)


def test_singular_sparse_direct():
    A = sp.csr_matrix(np.array([[1.0, 2.0], [2.0, 4.0]]))
    with pytest.warns(ds.ConvergenceWarning, match="singular"):
        res = solve(A, np.array([1.0, 0.0]))
    assert res.status is ds.Status.BREAKDOWN and not res.converged


def test_singular_matrix_cg(xp):
    A = np.array([[1.0, 1.0], [1.0, 1.0]])
    with pytest.warns(ds.ConvergenceWarning, match="not symmetric positive definite"):
        res = solve(_as_xp(xp, A), _as_xp(xp, np.array([1.0, 0.0])), method="cg")
    assert res.status is ds.Status.BREAKDOWN and not res.converged


def test_indefinite_matrix_cg(xp):
    A = np.diag([3.0, -1.0, 2.0])
    with pytest.raises(ds.BreakdownError, match="not symmetric positive definite"):
        solve(_as_xp(xp, A), _as_xp(xp, np.ones(3)), method="cg", throw=True)


def test_nonsymmetric_matrix_cg(xp):
    A = np.array([[2.0, 1.0], [0.0, 2.0]])
    with _raises(ValueError, "symmetric positive definite", r"max\|A - Aᵀ\|"):
        solve(_as_xp(xp, A), _as_xp(xp, np.ones(2)), method="cg")


def test_mixed_libraries_are_refused():
    strict = pytest.importorskip("array_api_strict")
    with _raises(TypeError, "diffsolve.linear.solve", "different array libraries", "numpy",
                 "array_api_strict"):
        solve(np.eye(2), strict.ones(2, dtype=strict.float64))


@pytest.mark.gpu
def test_mixed_numpy_cupy_is_refused():
    cupy = pytest.importorskip("cupy")
    with _raises(TypeError, "different array libraries", "cupy", "numpy", "cupy.asarray"):
        solve(np.eye(2), cupy.ones(2))
    import cupyx.scipy.sparse as csp

    with _raises(TypeError, "different array libraries"):
        solve(csp.csr_matrix(cupy.eye(2)), np.ones(2))


def test_unusable_arguments():
    with _raises(TypeError, "A must be a 2-D array", "list", "numpy.asarray"):
        solve([[1.0, 0.0], [0.0, 1.0]], np.ones(2))
    with _raises(TypeError, "b must be an array"):
        solve(np.eye(2), [1.0, 2.0])
    with _raises(ValueError, "method must be one of", "'direct'", "'cg'", "'qr'"):
        solve(np.eye(2), np.ones(2), method="qr")
    with _raises(ValueError, "rtol must be >= 0", "-1"):
        solve(np.eye(2), np.ones(2), method="cg", rtol=-1)
    with _raises(ValueError, "maxiter must be >= 1", "0"):
        solve(np.eye(2), np.ones(2), method="cg", maxiter=0)
    with _raises(ValueError, "rtol = atol = 0 runs exactly maxiter", "pass maxiter"):
        solve(np.eye(2), np.ones(2), method="cg", rtol=0.0)
    with _raises(ValueError, "iterative methods only", "'cg'"):
        solve(np.eye(2), np.ones(2), M=np.eye(2))
    with _raises(ValueError, "LinearOperator", "method='cg'"):
        solve(spla.aslinearoperator(np.eye(2)), np.ones(2))
    with _raises(TypeError, "complex"):
        solve(np.eye(2), np.ones(2, dtype=complex))
    with _raises(TypeError, "A has dtype float16", "float32 or float64"):
        solve(np.eye(2, dtype=np.float16), np.ones(2))


def test_non_canonical_csr_parts_are_refused():
    # column indices out of order in row 0: the data array would not be the canonical one
    C = ds.CSR(np.array([1.0, 2.0, 3.0]), np.array([1, 0, 1]), np.array([0, 2, 3]), (2, 2))
    with _raises(ValueError, "unsorted or repeated", "sum_duplicates"):
        solve(C, np.ones(2))
    with _raises(ValueError, "indptr has 2 entries", "n_rows \\+ 1 = 3"):
        ds.CSR(np.ones(1), np.zeros(1, dtype=np.int32), np.array([0, 1]), (2, 2))


def test_converged_solves_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve(poisson_2d(5), np.ones(25), method="cg")
