"""The iterative methods of diffsolve.linear.solve: pcg, sor, ssor-cg (cg is covered too)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import diffsolve as ds
from tests.helpers import assert_close, poisson_2d, spd_matrix

solve = ds.linear.solve
ITERATIVE = {
    "cg": {},
    "pcg": {},
    "sor": {"omega": 1.5, "maxiter": 50_000},
    "ssor-cg": {"omega": 1.5},
}


def _sparse_for(xp, A):
    name = xp.__name__.split(".")[-1]
    if name == "numpy":
        return A
    if name == "cupy":
        import cupyx.scipy.sparse as csp

        return csp.csr_matrix(A)
    pytest.skip("sparse matrices exist for NumPy (SciPy) and CuPy only")


def _raises(exc, *patterns):
    joined = "".join(f"(?=.*{p})" for p in patterns)
    return pytest.raises(exc, match=re.compile(joined, re.S))


@pytest.mark.parametrize("method", list(ITERATIVE))
@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("n_rhs", [None, 2])
def test_every_method_solves(xp, method, kind, n_rhs):
    A = poisson_2d(6, shift=0.2)
    rng = np.random.default_rng(3)
    b = rng.standard_normal(A.shape[0] if n_rhs is None else (A.shape[0], n_rhs))
    A_in = _sparse_for(xp, A) if kind == "sparse" else xp.asarray(A.toarray())
    res = solve(A_in, xp.asarray(b), method=method, rtol=1e-10, **ITERATIVE[method])
    assert res.converged and res.n_iters > 0
    assert_close(res.x, np.linalg.solve(A.toarray(), b), xp=xp, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sor_keeps_dtype(dtype):
    A = poisson_2d(8, shift=0.1).astype(dtype)
    b = np.ones(A.shape[0], dtype=dtype)
    res = solve(A, b, method="sor", omega=1.6, rtol=1e-5 if dtype == np.float32 else 1e-10)
    assert res.x.dtype == dtype and res.converged


def test_sor_matches_a_plain_gauss_seidel_loop():
    """ω = 1 in natural row order: the same sweeps as a textbook Gauss–Seidel loop."""
    A = poisson_2d(5, shift=0.3)
    Ad = A.toarray()
    b = np.linspace(1.0, 2.0, A.shape[0])
    tol = 1e-9 * np.linalg.norm(b)
    x = np.zeros_like(b)
    sweeps = 0
    while np.linalg.norm(b - Ad @ x) > tol:
        for i in range(len(b)):
            x[i] = (b[i] - Ad[i] @ x + Ad[i, i] * x[i]) / Ad[i, i]
        sweeps += 1
    res = solve(A, b, method="sor", omega=1.0, rtol=1e-9)
    assert res.n_iters == sweeps
    np.testing.assert_allclose(res.x, x, rtol=1e-12)


def test_good_omega_beats_gauss_seidel_and_ssor_beats_cg():
    A = poisson_2d(24)
    b = np.ones(A.shape[0])
    m = 24
    beta = np.cos(np.pi / (m + 1))  # Jacobi spectral radius of the 5-point Laplacian
    omega_star = 1 + (beta / (1 + np.sqrt(1 - beta**2))) ** 2  # Young's optimum
    gs = solve(A, b, method="sor", omega=1.0, rtol=1e-8)
    young = solve(A, b, method="sor", omega=float(omega_star), rtol=1e-8)
    assert young.n_iters < gs.n_iters / 5
    cg = solve(A, b, method="cg", rtol=1e-8)
    ssor = solve(A, b, method="ssor-cg", omega=1.7, rtol=1e-8)
    assert ssor.n_iters < cg.n_iters / 2


def test_sor_on_nonsymmetric_diagonally_dominant_matrix(rng):
    A = rng.standard_normal((15, 15)) * 0.3 + np.diag(np.full(15, 4.0))
    b = rng.standard_normal(15)
    for A_in in (A, sp.csr_matrix(A)):
        res = solve(A_in, b, method="sor", omega=1.1, rtol=1e-12)
        np.testing.assert_allclose(res.x, np.linalg.solve(A, b), rtol=1e-9)


def test_sor_warm_start_and_callback():
    A = poisson_2d(10)
    b = np.ones(A.shape[0])
    cold = solve(A, b, method="sor", omega=1.5, rtol=1e-10)
    warm = solve(A, b, method="sor", omega=1.5, rtol=1e-10, x0=cold.x * (1 + 1e-6))
    assert warm.n_iters < cold.n_iters / 2
    seen = []
    res = solve(A, b, method="sor", omega=1.5, rtol=1e-6, callback=seen.append)
    assert len(seen) == res.n_iters
    assert [s.n_iters for s in seen] == list(range(1, res.n_iters + 1))
    # SOR's callback sees the true residual of the iterate it is given
    np.testing.assert_allclose(seen[-1].residual_norm, np.linalg.norm(b - A @ seen[-1].x),
                               rtol=1e-10)


def test_pcg_default_is_jacobi(rng):
    d = np.geomspace(1.0, 1e3, 50)
    A = d[:, None] * spd_matrix(rng, 50, cond=4.0) * d[None, :]
    b = rng.standard_normal(50)
    plain = solve(A, b, method="cg", rtol=1e-8, maxiter=10_000)
    pcg = solve(A, b, method="pcg", rtol=1e-8)
    assert pcg.n_iters < plain.n_iters / 2
    same = solve(A, b, method="cg", M="jacobi", rtol=1e-8)
    assert same.n_iters == pcg.n_iters


def test_sor_maxiter_is_reported():
    A = poisson_2d(10)
    with pytest.warns(ds.ConvergenceWarning, match=r"after 5 iterations.*tune omega"):
        res = solve(A, np.ones(A.shape[0]), method="sor", maxiter=5)
    assert res.converged is False and res.n_iters == 5 and res.info == 5
    assert res.status is ds.Status.MAX_ITERATIONS


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("omega", [0.0, 2.0, -0.5, 2.5, "1.2", True])
def test_omega_outside_open_interval(omega):
    with _raises(ValueError, "diffsolve.linear.solve", "omega must be a number in the open "
                 "interval \\(0, 2\\)", re.escape(repr(omega))):
        solve(poisson_2d(3), np.ones(9), method="sor", omega=omega)


def test_omega_and_M_only_where_they_mean_something():
    A = poisson_2d(3)
    with _raises(ValueError, "omega is the relaxation parameter", "method='cg'"):
        solve(A, np.ones(9), method="cg", omega=1.2)
    with _raises(ValueError, "builds its own SOR/SSOR", "method='pcg'"):
        solve(A, np.ones(9), method="ssor-cg", M=lambda r: r)
    with _raises(ValueError, "M='ilu' is not a built-in preconditioner", "jacobi"):
        solve(A, np.ones(9), method="pcg", M="ilu")


def test_zero_or_missing_diagonal(xp):
    A = np.array([[4.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 4.0]])
    with _raises(ValueError, "diffsolve.linear.solve", r"A\[1, 1\] is zero or not stored"):
        solve(xp.asarray(A), xp.asarray(np.ones(3)), method="sor")
    S = sp.csr_matrix(A)
    S.eliminate_zeros()  # the (1, 1) entry is now missing from the pattern
    with _raises(ValueError, r"A\[1, 1\] is zero or not stored"):
        solve(S, np.ones(3), method="ssor-cg")


def test_sor_needs_matrix_entries():
    op = spla.aslinearoperator(poisson_2d(3))
    with _raises(ValueError, "SOR needs the entries of A", "LinearOperator"):
        solve(op, np.ones(9), method="sor")
    with _raises(ValueError, "M='jacobi' needs the diagonal"):
        solve(op, np.ones(9), method="pcg")


def test_non_square_for_sor():
    with _raises(ValueError, "A must be square"):
        solve(sp.random(4, 5, density=0.5, format="csr", random_state=0), np.ones(4),
              method="sor")


@pytest.mark.parametrize("method", ["cg", "pcg"])
def test_compiled_cg_loop_matches_the_python_loop(rng, method):
    """NumPy + CSR + one right-hand side runs CG in one Numba call (krylov.cg_solve_csr);
    a callback forces the Python-driven loop: same iterations, same iterate."""
    d = np.geomspace(1.0, 30.0, 100)
    A = sp.csr_matrix(d[:, None] * poisson_2d(10, shift=0.05).toarray() * d[None, :])
    b = rng.standard_normal(100)
    fast = solve(A, b, method=method, rtol=1e-10)
    slow = solve(A, b, method=method, rtol=1e-10, callback=lambda xk: None)
    assert fast.n_iters == slow.n_iters and fast.converged and slow.converged
    np.testing.assert_allclose(fast.x, slow.x, rtol=1e-10, atol=1e-14)
    x0 = fast.x + 1e-3
    warm_fast = solve(A, b, method=method, rtol=1e-10, x0=x0)
    warm_slow = solve(A, b, method=method, rtol=1e-10, x0=x0, callback=lambda xk: None)
    assert warm_fast.n_iters == warm_slow.n_iters
    with pytest.warns(ds.ConvergenceWarning):
        capped = solve(A, b, method=method, maxiter=3)
    assert capped.n_iters == 3 and not capped.converged


def test_diverging_sor_is_reported_without_overflow_warnings():
    """An indefinite matrix makes SOR diverge: converged=False, an infinite residual and a
    ConvergenceWarning that says so, and no raw overflow RuntimeWarning (pytest.ini turns
    every other warning into an error)."""
    A = poisson_2d(6, shift=-1.0)  # shift below the smallest eigenvalue: indefinite
    with pytest.warns(ds.ConvergenceWarning, match="iterates diverged"):
        res = solve(A, np.ones(A.shape[0]), method="sor", omega=1.5, maxiter=3000)
    assert not res.converged and not np.isfinite(res.residual_norm)
    assert res.status is ds.Status.DIVERGED
