"""diffsolve.linear.prepare: the solves of a prepared matrix are those of linear.solve
(bitwise), its gradient in b matches finite differences, and it keeps its own copy of A."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import diffsolve as ds
from tests.helpers import LINEAR_GRAD_OPTIONS, central_difference, poisson_2d, spd_matrix

OPTS = LINEAR_GRAD_OPTIONS


def _matrix(rng, kind):
    if kind == "dense":
        return spd_matrix(rng, 12, cond=30.0)
    A = poisson_2d(5, shift=0.2)
    A.data = A.data * (1.0 + 0.1 * rng.random(A.nnz))
    A = ((A + A.T) * 0.5).tocsr()
    A.sort_indices()
    return A


def _same(r1, r2):
    np.testing.assert_array_equal(r1.x, r2.x)
    assert r1.n_iters == r2.n_iters
    assert r1.status == r2.status and r1.converged == r2.converged
    np.testing.assert_array_equal(np.asarray(r1.residual_norm), np.asarray(r2.residual_norm))


@pytest.mark.parametrize("method", list(OPTS))
@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("n_rhs", [None, 3])
def test_solves_are_those_of_linear_solve(rng, method, kind, n_rhs):
    A = _matrix(rng, kind)
    n = A.shape[0]
    solver = ds.linear.prepare(A, method=method, **OPTS[method])
    assert solver.method == method and solver.shape == (n, n)
    for _ in range(3):  # the later solves reuse what the first one prepared
        b = rng.standard_normal(n if n_rhs is None else (n, n_rhs))
        res = solver.solve(b)
        assert res.converged
        _same(res, ds.linear.solve(A, b, method=method, **OPTS[method]))
    _same(solver(b), res)  # calling the object is solve


@pytest.mark.parametrize("method", ["cg", "pcg", "sor", "ssor-cg"])
def test_warm_start_is_that_of_linear_solve(rng, method):
    A = poisson_2d(12)
    b = rng.standard_normal(A.shape[0])
    x0 = spla.spsolve(A.tocsc(), b) + 1e-9 * rng.standard_normal(b.shape)
    solver = ds.linear.prepare(A, method=method, **OPTS[method])
    res = solver.solve(b, x0=x0)
    _same(res, ds.linear.solve(A, b, method=method, x0=x0, **OPTS[method]))
    assert res.n_iters < solver.solve(b).n_iters


@pytest.mark.parametrize("method", list(OPTS))
@pytest.mark.parametrize("n_rhs", [None, 2])
def test_gradient_in_b_matches_finite_differences(rng, method, n_rhs):
    A = _matrix(rng, "sparse")
    n = A.shape[0]
    b = rng.standard_normal(n if n_rhs is None else (n, n_rhs))
    w = rng.standard_normal(b.shape)
    solver = ds.linear.prepare(A, method=method, **OPTS[method])
    _, pull = ds.vjp(solver.solve, b)
    (b_bar,) = pull(x=w)
    db = rng.standard_normal(b.shape)
    fd = central_difference(lambda t: float(np.sum(w * solver.solve(b + t * db).x)),
                            0.0, 1.0)
    assert abs(np.sum(b_bar * db) - fd) <= 1e-7 * max(1.0, abs(fd))
    # the same cotangent as linear.solve's gradient in b
    _, pull_ref = ds.vjp(ds.linear.solve, A, b, method=method, **OPTS[method])
    np.testing.assert_allclose(b_bar, pull_ref(x=w)[1], rtol=1e-9, atol=1e-12)


def test_sor_gradient_on_a_non_symmetric_matrix(rng):
    # SOR accepts a non-symmetric A: its adjoint relaxes on Aᵀ (prepared once)
    n = 15
    A = np.eye(n) * 4.0 + 0.5 * rng.standard_normal((n, n)) / np.sqrt(n)
    b = rng.standard_normal(n)
    w = rng.standard_normal(n)
    solver = ds.linear.prepare(A, method="sor", rtol=1e-13, maxiter=100_000)
    for _ in range(2):  # the second backward reuses the transposed SOR data
        (b_bar,) = ds.vjp(solver.solve, b)[1](x=w)
        np.testing.assert_allclose(b_bar, np.linalg.solve(A.T, w), rtol=1e-9, atol=1e-11)


def test_direct_factor_is_computed_once(rng, monkeypatch):
    from diffsolve.linear import _solve

    A = spd_matrix(rng, 8)
    calls = []
    real = _solve._factorise
    monkeypatch.setattr(_solve, "_factorise", lambda *a: calls.append(1) or real(*a))
    import diffsolve.linear._prepared as prepared_module

    monkeypatch.setattr(prepared_module, "_factorise", _solve._factorise)
    solver = ds.linear.prepare(A)
    for _ in range(4):
        b = rng.standard_normal(8)
        res = solver.solve(b)
        np.testing.assert_allclose(A @ res.x, b, atol=1e-12)
        ds.vjp(solver.solve, b)[1](x=b)
    assert len(calls) == 1


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_later_changes_to_A_do_not_reach_the_solver(rng, kind):
    A = _matrix(rng, kind)
    b = rng.standard_normal(A.shape[0])
    solver = ds.linear.prepare(A, method="cg", rtol=1e-12)
    expected = solver.solve(b).x
    if kind == "dense":
        A *= 3.0
    else:
        A.data *= 3.0
    np.testing.assert_array_equal(solver.solve(b).x, expected)


def test_linear_operator_and_float32(rng):
    A = poisson_2d(6)
    b = rng.standard_normal(A.shape[0])
    op = spla.aslinearoperator(A)
    solver = ds.linear.prepare(op, method="cg", rtol=1e-10)
    _same(solver.solve(b), ds.linear.solve(op, b, method="cg", rtol=1e-10))
    A32 = A.astype(np.float32)
    solver32 = ds.linear.prepare(A32, method="cg")
    res = solver32.solve(b.astype(np.float32))
    assert res.x.dtype == np.float32 and res.converged
    assert solver32.settings.rtol == pytest.approx(64 * np.finfo(np.float32).eps)
    # a float64 b promotes the solve, and its rtol default, as linear.solve does
    _same(solver32.solve(b), ds.linear.solve(A32, b, method="cg"))


def test_non_convergence_is_reported(rng):
    A = poisson_2d(8)
    b = rng.standard_normal(A.shape[0])
    solver = ds.linear.prepare(A, method="cg", maxiter=3)
    with pytest.warns(ds.ConvergenceWarning, match="did not converge"):
        res = solver.solve(b)
    assert not res.converged and res.status == ds.Status.MAX_ITERATIONS
    strict = ds.linear.prepare(A, method="cg", maxiter=3, throw=True)
    with pytest.raises(ds.MaxIterationsError):
        strict.solve(b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert strict.solve(np.zeros_like(b)).converged  # x = 0, no iteration


def test_bad_input_is_refused_with_clear_errors(rng):
    A = poisson_2d(4)
    n = A.shape[0]
    asym = A.tolil()
    asym[0, 1] = 5.0
    with pytest.raises(ValueError, match=re.escape("diffsolve.linear.prepare: method='cg' "
                                                   "needs a symmetric")):
        ds.linear.prepare(asym.tocsr(), method="cg")
    with pytest.raises(ValueError, match="diffsolve.linear.prepare: method"):
        ds.linear.prepare(A, method="gmres")
    with pytest.raises(ValueError, match="must be square"):
        ds.linear.prepare(np.ones((3, 4)))
    solver = ds.linear.prepare(A, method="cg")
    with pytest.raises(ValueError, match=re.escape("PreparedSolve.solve: b has shape (3,)")):
        solver.solve(np.ones(3))
    with pytest.raises(ValueError, match="PreparedSolve.solve: b contains NaN"):
        solver.solve(np.full(n, np.nan))
    with pytest.raises(TypeError, match="PreparedSolve.solve: b must be an array"):
        solver.solve([1.0] * n)
    with pytest.raises(ValueError, match="x0 must be an array of b's shape"):
        solver.solve(np.ones(n), x0=np.ones(n + 1))
    with pytest.raises(ValueError, match="method='direct' got it"):
        ds.linear.prepare(A).solve(np.ones(n), x0=np.ones(n))
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="PreparedSolve.solve"):
        solver.solve(torch.ones(n, dtype=torch.float64))


def test_dcdm_solves_are_those_of_linear_solve(rng):
    m = 16
    A = poisson_2d(m)
    solver = ds.linear.prepare(A, method="dcdm", rtol=1e-8)
    for _ in range(2):
        b = rng.standard_normal(m * m)
        res = solver.solve(b)
        assert res.converged
        _same(res, ds.linear.solve(A, b, method="dcdm", rtol=1e-8))


def test_torch_layer_of_a_prepared_solve(rng):
    torch = pytest.importorskip("torch")
    A = _matrix(rng, "sparse")
    solver = ds.linear.prepare(A, method="cg", rtol=1e-12)
    layer = ds.to_torch(solver.solve)
    b = torch.tensor(rng.standard_normal(A.shape[0]), requires_grad=True)
    x = layer(b).x
    x.sum().backward()
    expected = spla.spsolve(sp.csc_matrix(A.T), np.ones(A.shape[0]))
    np.testing.assert_allclose(b.grad.numpy(), expected, rtol=1e-9)


def test_prepare_takes_the_options_and_defaults_of_solve():
    # prepare's signature repeats solve's options (x0 goes to each solve): the same names
    # and the same defaults, so a prepared solve is the solve the user would have made
    import inspect

    def keyword_defaults(fn):
        return {name: p.default for name, p in inspect.signature(fn).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}

    solve_options = keyword_defaults(ds.linear.solve.fwd)
    solve_options.pop("x0")
    assert keyword_defaults(ds.linear.prepare) == solve_options
