"""The one Krylov module (diffsolve.krylov): cg, minres, gmres against NumPy/SciPy, and its
policies (true-residual verdict, overflow-safe scaling, non-finite input, breakdown, fixed
budget, callbacks), on NumPy and array_api_strict."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from diffsolve import Status
from diffsolve.krylov import KrylovResult, KrylovState, cg, gmres, minres
from tests.helpers import poisson_2d, spd_matrix, to_numpy

METHODS = {"cg": cg, "minres": minres, "gmres": gmres}


def _x(xp, a):
    return xp.asarray(np.asarray(a))


def _problems(rng, n=30):
    Q = rng.standard_normal((n, n))
    return {
        "spd": spd_matrix(rng, n, cond=50.0),
        "indefinite": (Q + Q.T) / 2 + np.diag(np.linspace(-5.0, 5.0, n)) * 3,
        "nonsymmetric": Q + 3 * np.sqrt(n) * np.eye(n),
    }


# which method is meant for which class of matrix
APPLIES = {"cg": ("spd",), "minres": ("spd", "indefinite"),
           "gmres": ("spd", "indefinite", "nonsymmetric")}


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("kind", ["spd", "indefinite", "nonsymmetric"])
def test_methods_match_numpy_solve(xp, rng, name, kind):
    if kind not in APPLIES[name]:
        pytest.skip(f"{name} is not for {kind} matrices")
    A = _problems(rng)[kind]
    b = rng.standard_normal(A.shape[0])
    res = METHODS[name](_x(xp, A), _x(xp, b), rtol=1e-10, maxiter=2000)
    assert isinstance(res, KrylovResult)
    assert res.status is Status.SUCCESS and res.converged and res.n_iters > 0
    x = to_numpy(res.x)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-7, atol=1e-9)
    # the reported residual is the true one, and it meets the tolerance
    true = np.linalg.norm(b - A @ x)
    np.testing.assert_allclose(res.residual_norm, true, rtol=1e-6, atol=1e-15)
    assert true <= 1e-10 * np.linalg.norm(b)


def test_methods_match_scipy_on_sparse_matrices(rng):
    A = poisson_2d(12, shift=0.05)
    b = rng.standard_normal(A.shape[0])
    ref = spla.spsolve(A.tocsc(), b)
    for name, fn in METHODS.items():
        res = fn(A, b, rtol=1e-11)
        assert res.converged, name
        np.testing.assert_allclose(res.x, ref, rtol=1e-8, err_msg=name)
    # the iteration counts are SciPy's ballpark (same Krylov spaces)
    assert abs(cg(A, b, rtol=1e-11).n_iters - _scipy_cg_iterations(A, b)) <= 2


def _scipy_cg_iterations(A, b):
    count = [0]
    spla.cg(A, b, rtol=1e-11, callback=lambda xk: count.__setitem__(0, count[0] + 1))
    return count[0]


def test_operators_in_every_form(rng):
    A = spd_matrix(rng, 20, cond=20.0)
    b = rng.standard_normal(20)
    ref = np.linalg.solve(A, b)
    forms = {"dense": A, "csr": sp.csr_matrix(A), "operator": spla.aslinearoperator(A),
             "callable": lambda v: A @ v}
    for form, A_in in forms.items():
        for name, fn in METHODS.items():
            res = fn(A_in, b, rtol=1e-11)
            np.testing.assert_allclose(res.x, ref, rtol=1e-8, err_msg=f"{name}/{form}")


def test_callable_operator_on_any_shape(xp, rng):
    """b of shape (4, 5) is one system of 20 unknowns; A acts on that shape."""
    D = _x(xp, np.linspace(1.0, 3.0, 20).reshape(4, 5))
    b = _x(xp, rng.standard_normal((4, 5)))
    for name, fn in METHODS.items():
        res = fn(lambda v: D * v, b, rtol=1e-12)
        assert tuple(res.x.shape) == (4, 5), name
        np.testing.assert_allclose(to_numpy(res.x), to_numpy(b) / to_numpy(D), rtol=1e-9)


# ---------------------------------------------------------------------------------------
# CG: batches, preconditioners, the compiled loop
# ---------------------------------------------------------------------------------------
def test_batched_cg_matches_column_by_column(xp, rng):
    A = spd_matrix(rng, 25, cond=30.0)
    Bm = rng.standard_normal((25, 4))
    Bm[:, 2] *= 1e-3  # columns of very different sizes stop on their own tolerances
    res = cg(_x(xp, A), _x(xp, Bm), rtol=1e-10, batch_axis=1)
    assert res.converged
    statuses = to_numpy(res.status)
    assert statuses.shape == (4,) and np.all(statuses == int(Status.SUCCESS))
    b_norms = np.linalg.norm(Bm, axis=0)
    iters = []
    for j in range(4):
        one = cg(_x(xp, A), _x(xp, Bm[:, j]), rtol=1e-10)
        iters.append(one.n_iters)
        # a matrix product of 4 columns rounds differently from 4 vector products: the
        # same iteration, not the same bits
        np.testing.assert_allclose(to_numpy(res.x)[:, j], to_numpy(one.x), rtol=1e-8,
                                   atol=1e-14)
        true = np.linalg.norm(Bm[:, j] - A @ to_numpy(res.x)[:, j])
        np.testing.assert_allclose(to_numpy(res.residual_norm)[j], true, rtol=1e-3)
        assert true <= 1e-10 * b_norms[j]
    assert abs(res.n_iters - max(iters)) <= 2


def test_batch_axis_zero_solves_different_systems(rng):
    """Rows of a (B, n) batch with a different diagonal matrix each (OT's layout)."""
    D = rng.uniform(1.0, 10.0, (3, 8))
    b = rng.standard_normal((3, 8))
    res = cg(lambda v: D * v, b, rtol=1e-12, batch_axis=0)
    np.testing.assert_allclose(res.x, b / D, rtol=1e-10)
    assert res.residual_norm.shape == (3,)


def test_preconditioners(rng):
    d = np.geomspace(1.0, 1e3, 60)
    A = d[:, None] * spd_matrix(rng, 60, cond=4.0) * d[None, :]
    b = rng.standard_normal(60)
    plain = cg(A, b, rtol=1e-9, maxiter=20_000)
    diag = cg(A, b, rtol=1e-9, M=1.0 / np.diag(A))
    func = cg(A, b, rtol=1e-9, M=lambda r: r / np.diag(A))
    assert diag.converged and diag.n_iters < plain.n_iters / 2
    assert func.n_iters == diag.n_iters
    np.testing.assert_allclose(diag.x, np.linalg.solve(A, b), rtol=1e-6)
    m = minres(A, b, rtol=1e-9, M=1.0 / np.diag(A))
    assert m.converged and m.n_iters < minres(A, b, rtol=1e-9, maxiter=20_000).n_iters
    g = gmres(A, b, rtol=1e-9, M=1.0 / np.diag(A), restart=60)
    assert g.converged
    np.testing.assert_allclose(g.x, np.linalg.solve(A, b), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("jacobi", [False, True])
def test_compiled_csr_loop_matches_array_api_loop(rng, dtype, jacobi):
    """NumPy + CSR + one system runs kernels/cpu/krylov.py::cg_solve_csr; the same
    problem through a callable (array-API loop) gives the same iterations and iterate."""
    import array_api_strict as xps

    d = np.geomspace(1.0, 20.0, 144)
    A = sp.csr_matrix((d[:, None] * poisson_2d(12, shift=0.05).toarray()
                       * d[None, :]).astype(dtype))
    b = rng.standard_normal(144).astype(dtype)
    M = (1.0 / A.diagonal()).astype(dtype) if jacobi else None
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    fast = cg(A, b, rtol=rtol, M=M)
    # a callback forces the Python-driven loop with the same CSR product kernel: the
    # same iteration, iterate for iterate
    slow = cg(A, b, rtol=rtol, M=M, callback=lambda state: None)
    assert fast.converged and slow.converged and fast.n_iters == slow.n_iters
    np.testing.assert_allclose(fast.x, slow.x, rtol=1e-10 if dtype == np.float64 else 1e-5)
    # the standard-only array-API code (dense products): the same iteration up to rounding
    strict = cg(xps.asarray(A.toarray()), xps.asarray(b), rtol=rtol,
                M=None if M is None else xps.asarray(M))
    assert strict.converged and abs(strict.n_iters - fast.n_iters) <= 0.05 * fast.n_iters
    tol = 1e-8 if dtype == np.float64 else 1e-3
    np.testing.assert_allclose(fast.x, np.asarray(strict.x), rtol=tol, atol=tol * 1e-2)
    assert fast.x.dtype == dtype
    # fixed budget, overflow scaling and NaN are the same behind the fast path
    for kwargs in ({"rtol": 0.0, "atol": 0.0, "maxiter": 7},):
        f = cg(A, b, M=M, **kwargs)
        s = cg(A, b, M=M, callback=lambda state: None, **kwargs)
        assert f.n_iters == s.n_iters == 7 and f.status is s.status is Status.MAX_ITERATIONS
    big = (b * dtype(1e18 if dtype == np.float32 else 1e200)).astype(dtype)
    f = cg(A, big, rtol=rtol, M=M)
    s = cg(A, big, rtol=rtol, M=M, callback=lambda state: None)
    assert f.converged and s.converged and f.n_iters == s.n_iters


def test_compiled_kernel_reports_nonfinite():
    from diffsolve.kernels.cpu import krylov as cpu

    A = sp.csr_matrix(np.array([[4.0, 1.0], [1.0, 3.0]]))
    x = np.zeros(2)
    n_iters, status = cpu.cg_solve_csr(A.indptr, A.indices, A.data, np.array([np.nan, 1.0]),
                                       x, None, 1e-12, 50, 1e-15)
    assert status == cpu.CG_NONFINITE and n_iters == 0


# ---------------------------------------------------------------------------------------
# the policies
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("dtype,scale", [(np.float64, 1e200), (np.float64, 1e-200),
                                         (np.float32, 1e20), (np.float32, 1e-30)])
def test_overflowing_and_tiny_right_hand_sides(xp, rng, name, dtype, scale):
    """||b||² overflows (1e200 in float64, 1e20 in float32) or underflows: the solve
    scales b by a power of two and returns the scaled solution, converged."""
    A = poisson_2d(6, shift=0.3).toarray()
    b0 = rng.standard_normal(36)
    b = (b0 * scale).astype(dtype)
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    res = METHODS[name](_x(xp, A.astype(dtype)), _x(xp, b), rtol=rtol)
    assert res.status is Status.SUCCESS and res.converged and res.n_iters > 0
    x = to_numpy(res.x).astype(np.float64) / scale
    np.testing.assert_allclose(x, np.linalg.solve(A, b0), rtol=10 * rtol, atol=10 * rtol)
    assert np.isfinite(res.residual_norm) and res.residual_norm > 0


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_right_hand_side(xp, name, bad):
    A = poisson_2d(4, shift=0.3).toarray()
    b = np.ones(16)
    b[3] = bad
    res = METHODS[name](_x(xp, A), _x(xp, b))
    assert res.status is Status.NONFINITE and not res.converged
    assert np.all(np.isnan(to_numpy(res.x)))
    assert "non-finite" in res.message.lower() or "nan" in res.message.lower()
    x0 = np.zeros(16)
    x0[0] = np.nan
    res = METHODS[name](_x(xp, A), _x(xp, np.ones(16)), x0=_x(xp, x0))
    assert res.status is Status.NONFINITE


def test_nonfinite_column_of_a_batch_does_not_spoil_the_others():
    A = spd_matrix(np.random.default_rng(1), 10)
    Bm = np.ones((10, 3))
    Bm[0, 1] = np.nan
    res = cg(A, Bm, batch_axis=1)
    assert list(res.status) == [Status.SUCCESS, Status.NONFINITE, Status.SUCCESS]
    assert np.isnan(res.x[:, 1]).all() and np.isfinite(res.x[:, [0, 2]]).all()
    assert not res.converged


def test_nonfinite_iterates_are_reported():
    """An operator that returns NaN: never "converged"."""
    for name, fn in METHODS.items():
        res = fn(lambda v: v * np.nan, np.ones(5))
        assert res.status is Status.NONFINITE and not res.converged, name


def test_cg_breakdown_on_indefinite_matrix(xp):
    A = np.diag([3.0, -1.0, 2.0])
    res = cg(_x(xp, A), _x(xp, np.ones(3)))
    assert res.status is Status.BREAKDOWN and not res.converged
    assert "non-positive curvature" in res.message
    # the same system is MINRES's and GMRES's business
    for fn in (minres, gmres):
        ok = fn(_x(xp, A), _x(xp, np.ones(3)))
        assert ok.converged
        np.testing.assert_allclose(to_numpy(ok.x), [1 / 3, -1.0, 0.5], rtol=1e-10)


def test_minres_singular_inconsistent_is_a_least_squares_breakdown():
    """The Neumann Laplacian is singular (constants); b with a mean is not in its range."""
    m = 8
    T = sp.diags_array([-1.0, 2.0, -1.0], offsets=[-1, 0, 1], shape=(m, m)).tolil()
    T[0, 0] = T[m - 1, m - 1] = 1.0
    A = (sp.kron(sp.eye_array(m), T.tocsr()) + sp.kron(T.tocsr(), sp.eye_array(m))).tocsr()
    b = np.linspace(0.0, 1.0, m * m)
    res = minres(A, b, rtol=1e-10)
    assert res.status is Status.BREAKDOWN and not res.converged
    assert "least-squares" in res.message
    # the least-squares residual is the component of b along the null space
    np.testing.assert_allclose(res.residual_norm, abs(b.mean()) * m, rtol=1e-4)
    # with b in the range (zero mean) MINRES converges
    ok = minres(A, b - b.mean(), rtol=1e-10)
    assert ok.converged


def test_gmres_singular_breaks_down():
    A = np.array([[1.0, 0.0], [0.0, 0.0]])
    res = gmres(A, np.array([0.0, 1.0]))
    assert res.status is Status.BREAKDOWN and not res.converged


@pytest.mark.parametrize("name", list(METHODS))
def test_fixed_budget_runs_exactly_maxiter(xp, name):
    A = poisson_2d(10, shift=0.01).toarray()
    b = np.ones(100)
    res = METHODS[name](_x(xp, A), _x(xp, b), rtol=0.0, atol=0.0, maxiter=7)
    assert res.n_iters == 7 and res.status is Status.MAX_ITERATIONS and not res.converged
    with pytest.raises(ValueError, match="pass maxiter"):
        METHODS[name](_x(xp, A), _x(xp, b), rtol=0.0, atol=0.0)


def test_float32_true_residual_honesty():
    """float32 at rtol=1e-8: the recursive residual gets there, the true one cannot; the
    result must not say converged (reproduction of issue 11 for the CG family)."""
    A = poisson_2d(32, shift=0.01).astype(np.float32)
    b = np.ones(A.shape[0], dtype=np.float32)
    for A_in in (A, A.toarray()):
        res = cg(A_in, b, rtol=1e-8)
        true = np.linalg.norm(b.astype(np.float64) - A.astype(np.float64) @ res.x)
        assert res.converged == (true <= 1e-8 * np.linalg.norm(b))
        assert not res.converged and res.status is Status.BREAKDOWN
        assert "stagnated" in res.message and "float64" in res.message
        np.testing.assert_allclose(res.residual_norm, true, rtol=1e-2)
    # a tolerance float32 resolves is met, and then the true residual meets it
    ok = cg(A, b, rtol=1e-4)
    true = np.linalg.norm(b.astype(np.float64) - A.astype(np.float64) @ ok.x)
    assert ok.converged and true <= 1e-4 * np.linalg.norm(b)


def test_restart_from_true_residual_recovers_accuracy(rng):
    """An ill-conditioned float64 problem where the recursive residual drifts: CG restarts
    from the true residual and meets the tolerance on it."""
    A = spd_matrix(rng, 80, cond=1e9)
    b = rng.standard_normal(80)
    res = cg(A, b, rtol=1e-10, maxiter=50_000)
    true = np.linalg.norm(b - A @ res.x)
    assert res.converged == (true <= 1e-10 * np.linalg.norm(b))


@pytest.mark.parametrize("name", list(METHODS))
def test_zero_right_hand_side(xp, name):
    A = poisson_2d(4, shift=0.3).toarray()
    res = METHODS[name](_x(xp, A), _x(xp, np.zeros(16)), x0=_x(xp, np.ones(16)))
    assert res.converged and res.n_iters == 0 and not np.any(to_numpy(res.x))


@pytest.mark.parametrize("name", list(METHODS))
def test_warm_start(rng, name):
    A = poisson_2d(10, shift=0.1).toarray()
    b = rng.standard_normal(100)
    cold = METHODS[name](A, b, rtol=1e-10)
    warm = METHODS[name](A, b, rtol=1e-10, x0=cold.x * (1 + 1e-6))
    assert warm.converged and warm.n_iters < 0.7 * cold.n_iters


@pytest.mark.parametrize("name", list(METHODS))
def test_callback_state_and_stop(name):
    A = poisson_2d(10, shift=0.1).toarray()
    seen = []

    def callback(state):
        seen.append(state)
        return state.n_iters >= 3

    res = METHODS[name](A, np.ones(100), rtol=1e-12, restart=1, callback=callback) \
        if name == "gmres" else METHODS[name](A, np.ones(100), rtol=1e-12,
                                              callback=callback)
    assert res.status is Status.STOPPED and not res.converged
    assert all(isinstance(s, KrylovState) for s in seen) and seen[-1].n_iters == 3
    np.testing.assert_allclose(seen[-1].x, res.x)


def test_inputs_are_not_modified_and_views_work(rng):
    A = spd_matrix(rng, 12)
    big = rng.standard_normal((12, 3))
    b = big[:, 1]  # a non-contiguous view
    b.flags.writeable = False
    keep = b.copy()
    x0 = np.zeros(12)
    x0.flags.writeable = False
    for fn in METHODS.values():
        res = fn(A, b, x0=x0, rtol=1e-11)
        assert res.converged
        np.testing.assert_array_equal(b, keep)
        assert not np.any(x0)


def test_bad_options():
    A = np.eye(3)
    b = np.ones(3)
    with pytest.raises(TypeError, match="maxiter must be an integer"):
        cg(A, b, maxiter=True)
    with pytest.raises(ValueError, match="rtol must be >= 0"):
        minres(A, b, rtol=-1.0)
    with pytest.raises(TypeError, match="restart must be an integer"):
        gmres(A, b, restart=2.5)
    with pytest.raises(ValueError, match="x0 has shape"):
        cg(A, b, x0=np.ones(2))
    with pytest.raises(ValueError, match="no entries"):
        cg(A, np.ones(0))
    with pytest.raises(TypeError, match="float16"):
        cg(A, np.ones(3, dtype=np.float16))
    with pytest.raises(ValueError, match="A has shape"):
        cg(np.eye(4), b)
    with pytest.raises(TypeError, match="callback must be None or a callable"):
        cg(A, b, callback=3)
    with pytest.raises(ValueError, match="batch_axis=2 but b has 1"):
        cg(A, b, batch_axis=2)


# ---------------------------------------------------------------------------------------
# the implicit-differentiation wrappers (implicit/_implicit_solve.py, implicit/_gmres.py)
# ---------------------------------------------------------------------------------------
def test_implicit_wrappers_return_nan_and_nonfinite_for_a_nan_rhs():
    """root_vjp and bilevel.hypergradient call these directly (not through the autodiff
    core's NaN fill): a NaN right-hand side must give NaN, never 0."""
    import warnings

    from diffsolve.implicit._gmres import gmres as implicit_gmres
    from diffsolve.implicit._implicit_solve import cg_solve

    A = spd_matrix(np.random.default_rng(2), 6)
    b = np.ones(6)
    b[2] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = cg_solve(lambda u: A @ u, b, rtol=1e-10, maxiter=None, where="w", what="M u = b",
                       advice="-")
        g = implicit_gmres(lambda u: A @ u, b, tol=1e-10, restart=6, maxiter=60)
    assert out.status is Status.NONFINITE and not out.converged and np.isnan(out.u).all()
    assert g.status is Status.NONFINITE and not g.converged and np.isnan(g.x).all()


def test_implicit_cg_solve_reports_instead_of_warning():
    import warnings

    from diffsolve.implicit._implicit_solve import cg_solve

    A = poisson_2d(8, shift=0.01).toarray()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = cg_solve(lambda u: A @ u, np.ones(64), rtol=1e-12, maxiter=3, where="w",
                       what="M u = b", advice="-", true_residual=True)
    assert out.status is Status.MAX_ITERATIONS and out.n_iters == 3 and not out.converged
    np.testing.assert_allclose(out.residual_norm, np.linalg.norm(np.ones(64) - A @ out.u))
    assert "M u = b" in out.message
    # a matrix that is not positive definite is a usage error of CG: ValueError
    with pytest.raises(ValueError, match="not positive definite; try a ridge"):
        cg_solve(lambda u: -u, np.ones(4), rtol=1e-8, maxiter=None, where="w",
                 what="M u = b", advice="try a ridge")


@pytest.mark.parametrize("name", list(METHODS))
def test_subnormal_solution_is_judged_on_its_own_residual(name):
    """float32, |A| ~ 1e18 and |b| ~ 1e-21: x ~ 1e-39 lands among the subnormal numbers,
    which cannot carry the scaled solution's accuracy; converged must then reflect the
    residual of the x returned, not of the scaled one."""
    A = (poisson_2d(3, shift=1.0).toarray() * 1e18).astype(np.float32)
    b = (np.random.default_rng(0).standard_normal(9) * 1e-21).astype(np.float32)
    res = METHODS[name](A, b, rtol=1e-5)
    x = np.asarray(res.x, dtype=np.float64)
    true = np.linalg.norm(b.astype(np.float64) - A.astype(np.float64) @ x)
    assert res.converged == bool(true <= 1e-5 * np.linalg.norm(b.astype(np.float64)))
    if not res.converged:
        assert res.status is Status.BREAKDOWN and "subnormal" in res.message


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", ["plain", "jacobi", "atol", "budget", "tiny_b", "huge_b",
                                  "zero_b", "nan_b"])
def test_cg_vector_fast_path_matches_the_general_path(dtype, case, monkeypatch):
    # a NumPy vector b with a CSR A and no x0 takes a scalar fast path; x0 = 0 takes the
    # general one-column path: the same arithmetic, so bitwise the same result
    from diffsolve.krylov import _cg

    taken: list = []
    fast_path = _cg._run_host_vector

    def spy(*args):
        out = fast_path(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(_cg, "_run_host_vector", spy)
    A = sp.csr_matrix(poisson_2d(12)).astype(dtype)
    rng = np.random.default_rng(1)
    b = rng.standard_normal(A.shape[0]).astype(dtype)
    opts: dict = {}
    if case == "jacobi":
        opts["M"] = (1.0 / A.diagonal()).astype(dtype)
    elif case == "atol":
        opts.update(rtol=0.0, atol=1e-3)
    elif case == "budget":
        opts["maxiter"] = 5  # not converged: the fast path hands it to the general path
    elif case == "tiny_b":
        b = b * dtype(1e-30)
    elif case == "huge_b":
        b = b * dtype(1e30)
    elif case == "zero_b":
        b = np.zeros_like(b)
    elif case == "nan_b":
        b[3] = np.nan
    fast = cg(A, b, **opts)
    general = cg(A, b, x0=np.zeros_like(b), **opts)
    assert fast.status == general.status and fast.converged == general.converged
    assert fast.n_iters == general.n_iters
    assert np.array_equal(fast.x, general.x, equal_nan=True)
    assert fast.residual_norm == general.residual_norm or \
        (np.isnan(fast.residual_norm) and np.isnan(general.residual_norm))
    assert fast.message == general.message
    assert fast.x.dtype == b.dtype and fast.x.shape == b.shape
    # the fast path answered the converged solves, the general one everything else
    assert taken == [case in ("plain", "jacobi", "atol", "tiny_b", "huge_b")]
    if case in ("plain", "jacobi", "tiny_b", "huge_b"):
        assert fast.converged
