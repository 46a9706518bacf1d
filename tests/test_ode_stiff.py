"""Stiff methods of odeint (kvaerno3, kvaerno5): order, stiff problems to reference
accuracy, Jacobian options, the implicit-function-theorem adjoint, jump_ts, bad input."""

from __future__ import annotations

import autograd.numpy as anp
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import diffsolve as ds
from diffsolve.ode import odeint
from diffsolve.ode._stiff_jacobian import colour_columns, pattern_csr
from diffsolve.ode._stiff_tableaux import STIFF_TABLEAUX
from tests.helpers import central_difference

STIFF = ["kvaerno3", "kvaerno5"]


def robertson(t, y, p):
    return anp.array([-0.04 * y[0] + 1e4 * y[1] * y[2],
                      0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                      3e7 * y[1] ** 2])


def vdp(t, y, p):
    return anp.array([y[1], p[0] * (1.0 - y[0] ** 2) * y[1] - y[0]])


def brusselator_1d(n):
    """A 1-D reaction–diffusion system (Brusselator, u and v interleaved), tridiagonal
    blocks: the pattern of ∂f/∂y has bandwidth 2."""
    alpha = 0.02 * (n + 1) ** 2 / 4.0

    def f(t, y, p):
        u, v = y[0::2], y[1::2]
        up = anp.concatenate([anp.array([1.0]), u, anp.array([1.0])])
        vp = anp.concatenate([anp.array([3.0]), v, anp.array([3.0])])
        du = 1.0 + u * u * v - 4.0 * u + alpha * (up[:-2] - 2 * u + up[2:])
        dv = 3.0 * u - u * u * v + alpha * (vp[:-2] - 2 * v + vp[2:])
        return anp.reshape(anp.stack([du, dv], axis=1), (2 * n,))

    m = 2 * n
    pattern = sp.diags([np.ones(m - abs(k)) for k in range(-2, 3)], list(range(-2, 3)),
                       format="csr")
    x = np.linspace(0, 1, n + 2)[1:-1]
    y0 = np.empty(m)
    y0[0::2] = 1.0 + np.sin(2 * np.pi * x)
    y0[1::2] = 3.0
    return f, pattern, y0


def _radau(fun, y0, t_eval, rtol=1e-12, atol=1e-14, p=None):
    sol = solve_ivp(lambda t, y: fun(t, y, p), (t_eval[0], t_eval[-1]), y0, method="Radau",
                    rtol=rtol, atol=atol, t_eval=t_eval)
    assert sol.success
    return sol.y.T


# ---------------------------------------------------------------------------------------
# tableaux and order
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", STIFF)
def test_tableau_is_stiffly_accurate_esdirk(method):
    tab = STIFF_TABLEAUX[method]
    A = tab.A
    s = tab.n_stages
    assert np.all(np.triu(A, 1) == 0) and A[0, 0] == 0
    assert np.allclose(np.diag(A)[1:], tab.gamma)
    assert np.allclose(A.sum(axis=1), tab.c)
    assert tab.c[-1] == pytest.approx(1.0, abs=1e-14)
    assert np.allclose(tab.b, A[s - 1]) and tab.b.sum() == pytest.approx(1.0, abs=1e-14)
    # L-stability: the stability function R(z) = 1 + z bᵀ (I − zA)⁻¹ 1 decays like 1/z

    def R(z):
        return 1.0 + z * tab.b @ np.linalg.solve(np.eye(s) - z * A, np.ones(s))

    assert abs(R(-1e6)) < 1e-4 and abs(R(-1e6)) < abs(R(-1e4)) / 50
    assert all(abs(R(z)) <= 1.0 for z in -np.logspace(-2, 6, 50))  # A-stable on the axis


def _end_error(method, n_steps):
    # y' = −y + cos(t) y²-free smooth nonlinear problem with a known solution:
    # y = 1/(1 + t)  solves  y' = −y², y(0) = 1
    def f(t, y, p):
        return -y * y

    T1 = 2.0
    grid = np.linspace(0.0, T1, n_steps + 1)
    res = odeint(f, np.array([1.0]), np.array([0.0, T1]), method=method, rtol=1e-11,
                 atol=1e-11, step_ts=grid)
    return abs(float(res.ys[-1, 0]) - 1.0 / (1.0 + T1))


@pytest.mark.parametrize("method", STIFF)
def test_convergence_slope_matches_order(method):
    order = STIFF_TABLEAUX[method].order
    ns = [8, 16, 32] if order == 5 else [16, 32, 64]
    errs = [_end_error(method, n) for n in ns]
    slopes = [np.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]
    assert all(abs(sl - order) < 0.35 for sl in slopes), (errs, slopes)


@pytest.mark.parametrize("method", STIFF)
def test_outputs_are_step_end_points(method):
    def f(t, y, p):
        return -y * y

    t = np.linspace(0.0, 2.0, 7)
    res = odeint(f, np.array([1.0]), t, method=method, rtol=1e-8, atol=1e-8)
    assert set(t.tolist()) <= set(res.ts.tolist())
    assert np.max(np.abs(res.ys[:, 0] - 1.0 / (1.0 + t))) < 1e-7


@pytest.mark.parametrize("method", STIFF)
def test_dense_output_is_hermite_accurate(method):
    def f(t, y, p):
        return -y * y

    t = np.linspace(0.0, 2.0, 41)
    errs = []
    for n in (8, 16):
        grid = np.linspace(0.0, 2.0, n + 1)
        res = odeint(f, np.array([1.0]), t, method=method, rtol=1e-11, atol=1e-13,
                     step_ts=grid)
        errs.append(np.max(np.abs(res.ys[:, 0] - 1.0 / (1.0 + t))))
    # the interpolant is O(h⁴), the solution it interpolates O(h^order)
    assert np.log2(errs[0] / errs[1]) > min(STIFF_TABLEAUX[method].order, 4) - 0.5


def test_rodas5_convergence_slope_is_five():
    def f(t, y, p):
        return -y * y

    errs = []
    for n in (8, 16, 32):
        res = odeint(f, np.array([1.0]), np.array([0.0, 2.0]), method="rodas5", rtol=1e-12,
                     atol=1e-12, step_ts=np.linspace(0.0, 2.0, n + 1), jac="vjp")
        errs.append(abs(float(res.ys[-1, 0]) - 1.0 / 3.0))
    slopes = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(slopes - 5.0) < 0.35), (errs, slopes)


def test_rodas5_solves_robertson_and_refuses_discrete_gradients():
    y0 = np.array([1.0, 0.0, 0.0])
    t = np.array([0.0, 0.4, 40.0, 4e3, 4e5])
    ref = _radau(robertson, y0, t, rtol=1e-11, atol=1e-16)
    res, pull = ds.vjp(odeint, robertson, y0, t, method="rodas5", rtol=1e-7, atol=1e-12)
    assert res.converged
    assert np.max(np.abs(res.ys - ref) / np.array([1.0, 1e-4, 1.0])) < 1e-4
    with pytest.raises(NotImplementedError, match="adjoint='backsolve'"):
        pull(ys=np.ones_like(res.ys))


# ---------------------------------------------------------------------------------------
# stiff problems to reference accuracy
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", STIFF)
def test_robertson_matches_reference(method):
    y0 = np.array([1.0, 0.0, 0.0])
    t = np.array([0.0, 0.4, 40.0, 4e3, 4e5])
    ref = _radau(robertson, y0, t, rtol=1e-11, atol=1e-16)
    res = odeint(robertson, y0, t, method=method, rtol=1e-7, atol=1e-12)
    assert res.converged and res.status == ds.Status.SUCCESS
    scale = np.array([1.0, 1e-4, 1.0])  # y2 lives around 1e-5
    assert np.max(np.abs(res.ys - ref) / scale) < 1e-4
    assert np.allclose(res.ys.sum(axis=1), 1.0, atol=1e-9)  # mass is conserved
    assert res.stats.n_steps < 3000


def test_van_der_pol_stiff_solves_where_explicit_gives_up():
    mu = np.array([1000.0])
    y0 = np.array([2.0, 0.0])
    t = np.array([0.0, 500.0, 1000.0, 2000.0])
    ref = _radau(vdp, y0, t, rtol=1e-10, atol=1e-12, p=mu)
    res = odeint(vdp, y0, t, mu, method="kvaerno5", rtol=1e-6, atol=1e-8)
    assert res.converged
    assert np.max(np.abs(res.ys[:, 0] - ref[:, 0])) < 1e-3
    assert res.stats.n_steps < 2000
    with pytest.warns(ds.ConvergenceWarning, match="stiff"):
        explicit = odeint(vdp, y0, t, mu, method="tsit5", rtol=1e-6, atol=1e-8,
                          max_steps=2000)
    assert explicit.status == ds.Status.MAX_ITERATIONS


def vdpol(t, y, p):
    """The IVP test set's VDPOL: ``y'' − μ(1 − y²)y' + y = 0`` in the time ``t/μ``,
    ``ε = 1/μ²``."""
    return anp.array([y[1], ((1.0 - y[0] ** 2) * y[1] - y[0]) / p[0]])


@pytest.mark.parametrize("method", ["kvaerno5", "rodas5"])
def test_van_der_pol_mu_1e6_crosses_the_fast_transitions(method):
    # ε = 1e-12: y' reaches 1e12 in transitions of width ~1e-12 around t ≈ 0.807 and
    # 1.614, where I − hγJ is row-scaled by 1e8 (a pivot-ratio singularity test without
    # equilibration rejected every step there: a step-size underflow at t ≈ 0.807)
    p = np.array([1e-12])
    t = np.linspace(0.0, 2.0, 9)
    y0 = np.array([2.0, 0.0])
    res = odeint(vdpol, y0, t, p, method=method, rtol=1e-6, atol=1e-9)
    assert res.converged and res.status == ds.Status.SUCCESS
    # the other method at a tight tolerance as the reference (SciPy Radau fails there)
    other = "rodas5" if method == "kvaerno5" else "kvaerno5"
    ref = odeint(vdpol, y0, t, p, method=other, rtol=1e-10, atol=1e-13, max_steps=10 ** 6)
    assert ref.converged
    err = np.max(np.abs(res.ys[:, 0] - ref.ys[:, 0]))
    assert err < 1e-4, err
    # both transitions (t ≈ 0.807, 1.614) were crossed: y1 changed sign twice
    assert np.sum(np.diff(np.sign(res.ys[:, 0])) != 0) == 2


def test_shifted_lu_equilibrates_badly_row_scaled_matrices(rng):
    from diffsolve.ode._stiff_newton import ShiftedLU

    # I − cJ with the Jacobian of VDPOL (ε = 1e-12) inside a fast transition
    y1, y2, eps, c = 0.97, -1e9, 1e-12, 2.6e-13
    J = np.array([[0.0, 1.0], [(-2.0 * y1 * y2 - 1.0) / eps, (1.0 - y1 ** 2) / eps]])
    M = np.eye(2) - c * J
    lu = ShiftedLU(J, 1.0, c, np)
    assert not lu.singular
    b = rng.standard_normal(2)

    def backward_error(A, x):  # componentwise (Oettli–Prager): ~eps for a stable solve
        return np.max(np.abs(A @ x - b) / (np.abs(A) @ np.abs(x) + np.abs(b)))

    assert backward_error(M, lu.solve(b)) < 1e-14
    assert backward_error(M.T, lu.solve(b, trans=True)) < 1e-14
    # the d I − c J form of the Rosenbrock matrix, and a truly singular one
    lu2 = ShiftedLU(J, 1.0 / c, 1.0, np)
    assert backward_error(np.eye(2) / c - J, lu2.solve(b)) < 1e-14
    assert ShiftedLU(np.array([[1.0, 1.0], [0.0, 1.0]]), 1.0, 1.0, np).singular  # I − J
    # the sparse form gives the same solution
    lu3 = ShiftedLU(sp.csr_matrix(J), 1.0, c, np)
    assert np.allclose(lu3.solve(b), lu.solve(b), rtol=1e-10, atol=0)


# ---------------------------------------------------------------------------------------
# Jacobians
# ---------------------------------------------------------------------------------------
def test_colouring_is_valid_and_tight(rng):
    n = 40
    pattern = sp.random(n, n, density=0.08, random_state=1, format="csr")
    indptr, indices = pattern_csr(pattern, n)
    colour = colour_columns(indptr, indices, n)
    for r in range(n):
        cols = indices[indptr[r]:indptr[r + 1]]
        assert len(set(colour[cols].tolist())) == len(cols)  # no clash within a row
    tri = sp.diags([np.ones(n - 1), np.ones(n), np.ones(n - 1)], [-1, 0, 1], format="csr")
    ip, ix = pattern_csr(tri, n)
    assert colour_columns(ip, ix, n).max() + 1 == 3


@pytest.mark.parametrize("method", STIFF)
def test_jacobian_options_agree(method):
    f, pattern, y0 = brusselator_1d(10)
    t = np.linspace(0.0, 2.0, 5)
    m = y0.shape[0]

    def jac_dense(t_, y, p):
        J = np.zeros((m, m))
        for j in range(m):
            e = np.zeros(m)
            e[j] = 1e-7
            J[:, j] = (f(t_, y + e, p) - f(t_, y - e, p)) / 2e-7
        return J

    def jac_csr(t_, y, p):
        return ds.CSR.from_sparse(sp.csr_matrix(jac_dense(t_, y, p) * pattern.toarray()))

    def jac_scipy(t_, y, p):
        return sp.csr_matrix(jac_dense(t_, y, p))

    opts = dict(method=method, rtol=1e-8, atol=1e-10)
    ref = _radau(f, y0, t, rtol=1e-11, atol=1e-13)
    results = {
        "fd": odeint(f, y0, t, **opts),
        "vjp": odeint(f, y0, t, jac="vjp", **opts),
        "dense": odeint(f, y0, t, jac=jac_dense, **opts),
        "csr": odeint(f, y0, t, jac=jac_csr, **opts),
        "scipy": odeint(f, y0, t, jac=jac_scipy, **opts),
        "coloured fd": odeint(f, y0, t, jac_sparsity=pattern, **opts),
        "coloured vjp": odeint(f, y0, t, jac="vjp", jac_sparsity=pattern, **opts),
    }
    for name, res in results.items():
        assert res.converged, name
        assert np.max(np.abs(res.ys - ref)) < 5e-6, name
    # the coloured differences spend 5 + 1 evaluations per Jacobian instead of m + 1
    assert results["coloured fd"].stats.nfe < results["fd"].stats.nfe


# ---------------------------------------------------------------------------------------
# the adjoint
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("jac", ["fd", "vjp"])
@pytest.mark.parametrize("method", STIFF)
def test_adjoint_matches_frozen_step_fd(method, jac, rng):
    y0 = np.array([2.0, 0.0])
    mu = np.array([20.0])
    t = np.linspace(0.0, 1.0, 6)
    # the third-order pair at a looser tolerance: the same check in fewer steps
    tol = 1e-10 if method == "kvaerno5" else 1e-8
    opts = dict(method=method, rtol=tol, atol=tol / 100, jac=jac)
    res, pull = ds.vjp(odeint, vdp, y0, t, mu, **opts)
    W = rng.standard_normal(res.ys.shape)
    y0_bar, _, p_bar = pull(ys=W)

    def loss(y, p):
        return np.sum(W * odeint(vdp, y, t, p, step_ts=res.ts, **opts).ys)

    v = rng.standard_normal(2)
    assert y0_bar @ v == pytest.approx(central_difference(lambda y: loss(y, mu), y0, v),
                                       rel=1e-6)
    fd = central_difference(lambda p: loss(y0, p), mu, np.ones(1), h=1e-4)
    assert p_bar[0] == pytest.approx(fd, rel=1e-6)


def test_adjoint_sparse_pattern_matches_fd(rng):
    f, pattern, y0 = brusselator_1d(8)
    t = np.linspace(0.0, 0.5, 3)
    opts = dict(method="kvaerno5", rtol=1e-9, atol=1e-11, jac_sparsity=pattern)
    res, pull = ds.vjp(odeint, f, y0, t, **opts)
    W = rng.standard_normal(res.ys.shape)
    y0_bar, _ = pull(ys=W)
    v = rng.standard_normal(y0.shape[0])
    fd = central_difference(
        lambda y: np.sum(W * odeint(f, y, t, step_ts=res.ts, **opts).ys), y0, v)
    assert y0_bar @ v == pytest.approx(fd, rel=1e-6)


@pytest.mark.parametrize("method", STIFF)
def test_adjoint_matches_exact_sensitivities(method, rng):
    # y' = −p K y: y(t) = expm(−p K t) y0, so ∂(wᵀy(T))/∂y0 = expm(−p K T)ᵀ w and
    # ∂/∂p = wᵀ (−K T) expm(−p K T) y0; K has eigenvalues up to 1e3 (stiff)
    K = np.array([[1000.0, -1.0, 0.0], [-1.0, 2.0, -1.0], [0.0, -1.0, 1.0]])

    def f(t, y, p):
        return -p[0] * anp.dot(K, y)

    y0 = np.array([1.0, 0.5, -0.3])
    p = np.array([1.0])
    T = 0.5
    w = rng.standard_normal(3)
    # kvaerno5 assembles J from VJPs; kvaerno3 (more, cheaper steps) takes the user's J
    tol, jac = (1e-11, "vjp") if method == "kvaerno5" else (1e-9, lambda t, y, p: -p[0] * K)
    res, pull = ds.vjp(odeint, f, y0, np.array([0.0, T]), p, method=method, rtol=tol,
                       atol=tol / 100, jac=jac)
    W = np.zeros((2, 3))
    W[1] = w
    y0_bar, _, p_bar = pull(ys=W)
    E = expm(-p[0] * K * T)
    assert np.allclose(res.ys[1], E @ y0, atol=1e-8)
    rel = 1e-6 if method == "kvaerno5" else 1e-5
    assert np.allclose(y0_bar, E.T @ w, rtol=rel, atol=1e-9)
    assert p_bar[0] == pytest.approx(w @ (-K * T) @ E @ y0, rel=rel)


# ---------------------------------------------------------------------------------------
# Krylov stage solves (linear_solver="gmres")
# ---------------------------------------------------------------------------------------
def brusselator_2d(N):
    """The 2-D periodic Brusselator of the large-problem benchmark, with an autograd f."""
    from bench.bench_ode_stiff_large import brusselator_2d as problem

    return problem(N, anp)


@pytest.mark.parametrize("preconditioner", [None, "ilu"])
def test_gmres_stage_solves_agree_with_direct(preconditioner):
    from scipy.sparse.linalg import spilu

    f, pattern, y0 = brusselator_2d(12)
    t = np.array([0.0, 0.5, 1.0])
    opts = dict(method="kvaerno5", rtol=1e-7, atol=1e-10, jac_sparsity=pattern)
    ref = odeint(f, y0, t, **opts)
    calls = []

    def ilu(J, c):  # a user preconditioner: incomplete LU of I − cJ
        calls.append(c)
        M = (sp.identity(J.shape[0], format="csc") - c * J.tocsc())
        return spilu(M, drop_tol=1e-4).solve

    prec = ilu if preconditioner == "ilu" else None
    res = odeint(f, y0, t, linear_solver="gmres", preconditioner=prec, **opts)
    assert res.converged
    assert np.max(np.abs(res.ys - ref.ys) / (np.abs(ref.ys) + 1e-6)) < 1e-5
    assert (len(calls) > 0) == (preconditioner == "ilu")
    # gradients: the backward rule solves its transposed systems directly
    W = np.random.default_rng(3).standard_normal(ref.ys.shape)
    _, pull = ds.vjp(odeint, f, y0, t, linear_solver="gmres", preconditioner=prec, **opts)
    _, pull_ref = ds.vjp(odeint, f, y0, t, **opts)
    g, g_ref = pull(ys=W)[0], pull_ref(ys=W)[0]
    assert np.allclose(g, g_ref, rtol=1e-4, atol=1e-6 * np.max(np.abs(g_ref)))


def test_gmres_failures_fail_the_newton_iteration_not_the_answer():
    # a preconditioner that annihilates everything: every GMRES solve fails, so every
    # Newton iteration fails, the step shrinks to nothing, and the message says why —
    # never an inexact stage passed off as converged
    f, pattern, y0 = brusselator_2d(8)
    t = np.array([0.0, 0.3])
    opts = dict(method="kvaerno5", rtol=1e-6, atol=1e-9, jac_sparsity=pattern,
                linear_solver="gmres")
    with pytest.warns(ds.ConvergenceWarning, match="GMRES stopped") as rec:
        res = odeint(f, y0, t, preconditioner=lambda J, c: np.zeros(J.shape[0]), **opts)
    assert "preconditioner" in str(rec[0].message)
    assert res.status == ds.Status.STEP_UNDERFLOW and not res.converged
    assert np.all(np.isnan(res.ys[1]))


@pytest.mark.parametrize("method", ["kvaerno5", "kvaerno3", "rodas5"])
def test_step_counts_add_up(method):
    # every attempt is accepted or rejected, retries with a fresh Jacobian included
    f, pattern, y0 = brusselator_1d(200)
    for opts in ({}, {"linear_solver": "gmres"}):
        if method == "rodas5" and opts:
            continue
        s = odeint(f, y0, np.linspace(0.0, 10.0, 6), method=method, rtol=1e-4, atol=1e-7,
                   jac_sparsity=pattern, **opts).stats
        assert s.n_steps == s.n_accepted + s.n_rejected, (opts, s)


def test_linear_solver_refusals():
    y0 = np.array([2.0, 0.0])
    t = np.array([0.0, 1.0])
    mu = np.array([5.0])
    with pytest.raises(ValueError, match="method='rodas5' takes linear_solver='direct'"):
        odeint(vdp, y0, t, mu, method="rodas5", linear_solver="gmres")
    with pytest.raises(ValueError, match="explicit"):
        odeint(vdp, y0, t, mu, method="tsit5", linear_solver="gmres")
    with pytest.raises(ValueError, match="preconditioner"):
        odeint(vdp, y0, t, mu, method="kvaerno5", preconditioner="jacobi")
    with pytest.raises(ValueError, match="linear_solver"):
        odeint(vdp, y0, t, mu, method="kvaerno5", linear_solver="lu")
    with pytest.raises(ValueError, match="preconditioner"):
        odeint(vdp, y0, t, mu, method="kvaerno5", linear_solver="gmres",
               preconditioner="ilu")

# ---------------------------------------------------------------------------------------
# the continuous adjoint (adjoint="backsolve") of the stiff methods
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["kvaerno5", "kvaerno3", "rodas5"])
def test_backsolve_matches_exact_sensitivities(method, rng):
    # the stiff linear system of test_adjoint_matches_exact_sensitivities, three outputs
    K = np.array([[1000.0, -1.0, 0.0], [-1.0, 2.0, -1.0], [0.0, -1.0, 1.0]])

    def f(t, y, p):
        return -p[0] * anp.dot(K, y)

    y0 = np.array([1.0, 0.5, -0.3])
    p = np.array([1.0])
    t = np.array([0.0, 0.2, 0.5])
    tol = 1e-10
    res, pull = ds.vjp(odeint, f, y0, t, p, method=method, rtol=tol, atol=tol / 100,
                       adjoint="backsolve")
    W = rng.standard_normal((3, 3))
    y0_bar, _, p_bar = pull(ys=W)
    exact_y0 = W[0] + sum(expm(-K * t[q]).T @ W[q] for q in (1, 2))
    exact_p = sum(W[q] @ (-K * t[q]) @ expm(-K * t[q]) @ y0 for q in (1, 2))
    assert np.allclose(res.ys[2], expm(-K * 0.5) @ y0, atol=1e-8)
    assert np.allclose(y0_bar, exact_y0, rtol=1e-6, atol=1e-9)
    assert p_bar[0] == pytest.approx(exact_p, rel=1e-6)


def rober_p(t, y, p):
    return anp.array([-p[0] * y[0] + p[1] * y[1] * y[2],
                      p[0] * y[0] - p[1] * y[1] * y[2] - p[2] * y[1] ** 2,
                      p[2] * y[1] ** 2])


@pytest.mark.parametrize("method", ["kvaerno5", "rodas5", "auto"])
def test_backsolve_agrees_with_discrete_on_robertson(method, rng):
    # reintegrating y backwards blows up here (stiff decaying modes grow in reverse
    # time): the stiff backsolve reads y(t) from the stored forward steps
    p = np.array([0.04, 1e4, 3e7])
    y0 = np.array([1.0, 0.0, 0.0])
    t = np.array([0.0, 1.0, 10.0, 40.0])
    W = rng.standard_normal((4, 3))
    opts = dict(rtol=1e-8, atol=1e-12)
    _, pull = ds.vjp(odeint, rober_p, y0, t, p, method="kvaerno5", **opts)
    ref_y0, _, ref_p = pull(ys=W)
    _, pull = ds.vjp(odeint, rober_p, y0, t, p, method=method, adjoint="backsolve", **opts)
    y0_bar, _, p_bar = pull(ys=W)
    assert np.allclose(y0_bar, ref_y0, rtol=1e-5, atol=1e-9)
    assert np.allclose(p_bar, ref_p, rtol=1e-5, atol=0)


def test_backsolve_across_a_declared_jump_matches_fd(rng):
    def f(t, y, p):
        rate = anp.where(t < 0.5, p[0], 3.0 * p[0])
        return -rate * anp.array([1.0, 50.0]) * y

    y0 = np.array([1.0, 2.0])
    p = np.array([1.5])
    t = np.array([0.0, 0.3, 1.0])
    opts = dict(method="kvaerno5", rtol=1e-10, atol=1e-12, jump_ts=[0.5])
    _, pull = ds.vjp(odeint, f, y0, t, p, adjoint="backsolve", **opts)
    W = rng.standard_normal((3, 2))
    y0_bar, _, p_bar = pull(ys=W)
    # exact: y_i(t) = y0_i exp(−c_i p ∫ rate), piecewise
    c = np.array([1.0, 50.0])

    def exact(y, pp):
        integral = np.array([pp * min(tq, 0.5) + 3 * pp * max(tq - 0.5, 0.0) for tq in t])
        return np.sum(W * (y[None, :] * np.exp(-np.outer(integral, c))))

    v = rng.standard_normal(2)
    assert y0_bar @ v == pytest.approx(central_difference(lambda y: exact(y, p[0]), y0, v),
                                       rel=1e-6)
    fd = central_difference(lambda q: exact(y0, q[0]), p, np.ones(1), h=1e-5)
    assert p_bar[0] == pytest.approx(fd, rel=1e-6)


def test_backsolve_failure_is_reported_never_a_silent_gradient():
    # y' = p y from y0 = 0: the forward solution is 0 (a few long steps); the adjoint
    # a(0) = exp(p T) a(T) = exp(40) a(T) needs many more steps than max_steps allows
    def f(t, y, p):
        return p[0] * y

    y0 = np.zeros(2)
    t = np.array([0.0, 1.0])
    p = np.array([40.0])
    opts = dict(method="kvaerno5", rtol=1e-6, atol=1e-9, adjoint="backsolve", max_steps=30)
    res, pull = ds.vjp(odeint, f, y0, t, p, **opts)
    assert res.converged
    with pytest.warns(ds.ConvergenceWarning, match="backsolve adjoint's backward"):
        y0_bar, _, p_bar = pull(ys=np.ones((2, 2)))
    assert np.all(np.isnan(y0_bar)) and np.all(np.isnan(p_bar))
    _, pull = ds.vjp(odeint, f, y0, t, p, throw=True, **opts)
    with pytest.raises(ds.SolveError, match="backsolve adjoint's backward"):
        pull(ys=np.ones((2, 2)))


def test_adapters_agree_with_vjp():
    torch = pytest.importorskip("torch")
    y0 = np.array([2.0, 0.0])
    mu = np.array([20.0])
    t = np.linspace(0.0, 1.0, 3)
    opts = dict(method="kvaerno5", rtol=1e-8, atol=1e-10)
    _, pull = ds.vjp(odeint, vdp, y0, t, mu, **opts)
    y0_bar, _, p_bar = pull(ys=np.ones((3, 2)))
    y0t = torch.tensor(y0, requires_grad=True)
    pt = torch.tensor(mu, requires_grad=True)
    out = ds.to_torch(odeint)(vdp, y0t, t, pt, **opts)
    out.ys.sum().backward()
    assert np.allclose(y0t.grad.numpy(), y0_bar, rtol=1e-12)
    assert np.allclose(pt.grad.numpy(), p_bar, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# method="auto"
# ---------------------------------------------------------------------------------------
def test_auto_switches_on_stiff_van_der_pol_and_reports_where():
    t = np.linspace(0.0, 2000.0, 5)
    mu = np.array([1000.0])
    res = odeint(vdp, np.array([2.0, 0.0]), t, mu, method="auto", rtol=1e-6, atol=1e-8)
    stiff = odeint(vdp, np.array([2.0, 0.0]), t, mu, method="kvaerno5", rtol=1e-6,
                   atol=1e-8)
    assert res.converged and 0.0 < res.t_switch < 1.0  # early, in the first transient
    assert res.t_switch in res.ts.tolist()
    assert np.allclose(res.ys, stiff.ys, rtol=1e-4, atol=1e-6)
    assert res.stats.n_steps < 2 * stiff.stats.n_steps


def test_auto_stays_explicit_on_lotka_volterra():
    from tests.lotka_volterra import lv

    p = np.array([1.5, 1.0, 3.0, 1.0])
    t = np.linspace(0.0, 30.0, 7)
    for rtol in (1e-3, 1e-6, 1e-9):
        res = odeint(lv, np.array([1.0, 1.0]), t, p, method="auto", rtol=rtol, atol=rtol)
        explicit = odeint(lv, np.array([1.0, 1.0]), t, p, method="tsit5", rtol=rtol,
                          atol=rtol)
        assert np.isnan(res.t_switch)
        assert np.array_equal(res.ys, explicit.ys)  # the same steps as tsit5


def test_auto_gradients_through_the_switch_match_fd(rng):
    t = np.linspace(0.0, 1.0, 4)
    mu = np.array([1000.0])
    y0 = np.array([2.0, 0.0])
    kw = dict(method="auto", rtol=1e-9, atol=1e-11)
    res, pull = ds.vjp(odeint, vdp, y0, t, mu, **kw)
    assert 0.0 < res.t_switch < 1.0
    W = rng.standard_normal(res.ys.shape)
    y0_bar, _, p_bar = pull(ys=W)

    def loss(y, p):  # replayed steps: the detector switches at the same step
        return np.sum(W * odeint(vdp, y, t, p, step_ts=res.ts, **kw).ys)

    v = rng.standard_normal(2)
    assert y0_bar @ v == pytest.approx(central_difference(lambda y: loss(y, mu), y0, v),
                                       rel=1e-6)
    fd = central_difference(lambda p: loss(y0, p), mu, np.ones(1), h=1e-2)
    assert p_bar[0] == pytest.approx(fd, rel=1e-5)


def test_max_steps_message_names_the_stiffness_estimate():
    with pytest.raises(ds.SolveError, match=r"stiffness estimate \|hλ\|.*method='kvaerno5'"):
        odeint(vdp, np.array([2.0, 0.0]), np.array([0.0, 100.0]), np.array([1000.0]),
               method="tsit5", max_steps=500, throw=True)
    with pytest.raises(ds.SolveError, match="does not look stiff"):
        odeint(vdp, np.array([2.0, 0.0]), np.array([0.0, 100.0]), np.array([1.0]),
               method="tsit5", max_steps=20, throw=True)


# ---------------------------------------------------------------------------------------
# jump_ts
# ---------------------------------------------------------------------------------------
def _forced(t, y, p):
    # y' = p u(t) − y/2, u a unit step at t = 1 (right-continuous)
    u = 1.0 if t >= 1.0 else 0.0
    return p[0] * u - 0.5 * y


def _forced_exact(t, p=1.0):
    return np.where(t < 1.0, np.exp(-0.5 * t),
                    np.exp(-0.5 * t) + 2.0 * p * (1.0 - np.exp(-0.5 * (t - 1.0))))


@pytest.mark.parametrize("method", ["tsit5", "dopri5", "bs3", *STIFF, "rodas5"])
def test_jump_ts_meets_atol_on_a_discontinuous_field(method):
    tol = 1e-9
    t = np.linspace(0.0, 3.0, 7)
    p = np.array([1.0])
    kw = dict(method=method, rtol=tol, atol=tol)
    with_jump = odeint(_forced, np.array([1.0]), t, p, jump_ts=[1.0], **kw)
    without = odeint(_forced, np.array([1.0]), t, p, **kw)
    err = np.max(np.abs(with_jump.ys[:, 0] - _forced_exact(t)))
    assert with_jump.converged and err < 10 * tol
    assert 1.0 in with_jump.ts.tolist()  # a step ends exactly on the jump
    if method in ("tsit5", "dopri5"):  # they "succeed" 60-100x off without the jump
        assert np.max(np.abs(without.ys[:, 0] - _forced_exact(t))) > 10 * tol


@pytest.mark.parametrize("method", ["tsit5", "kvaerno5"])
def test_jump_ts_gradients_match_fd(method, rng):
    t = np.linspace(0.0, 3.0, 4)
    p = np.array([1.3])
    kw = dict(method=method, rtol=1e-10, atol=1e-10, jump_ts=[1.0])
    res, pull = ds.vjp(odeint, _forced, np.array([1.0]), t, p, **kw)
    W = rng.standard_normal(res.ys.shape)
    y0_bar, _, p_bar = pull(ys=W)

    def loss(y, q):
        return np.sum(W * odeint(_forced, y, t, q, step_ts=res.ts, **kw).ys)

    assert y0_bar[0] == pytest.approx(
        central_difference(lambda y: loss(y, p), np.array([1.0]), np.ones(1)), rel=1e-6)
    assert p_bar[0] == pytest.approx(
        central_difference(lambda q: loss(np.array([1.0]), q), p, np.ones(1)), rel=1e-6)


def _relaxation_to_step(t, y, p):
    u = 1.0 if t >= 1.0 else 0.0
    return -50.0 * (y - u)


def test_jump_ts_outside_interval_is_ignored_and_bad_values_refused():
    t = np.linspace(0.0, 0.5, 3)
    a = odeint(_relaxation_to_step, np.array([1.0]), t, method="kvaerno3", jump_ts=[5.0])
    b = odeint(_relaxation_to_step, np.array([1.0]), t, method="kvaerno3")
    assert np.array_equal(a.ys, b.ys)
    with pytest.raises(ValueError, match="jump_ts"):
        odeint(_relaxation_to_step, np.array([1.0]), t, method="kvaerno3",
               jump_ts=[np.nan])
    with pytest.raises(TypeError, match="jump_ts"):
        odeint(_relaxation_to_step, np.array([1.0]), t, method="kvaerno3", jump_ts=1.0)


# ---------------------------------------------------------------------------------------
# bad input and refusals
# ---------------------------------------------------------------------------------------
def test_refusals_name_the_argument():
    y0 = np.array([2.0, 0.0])
    t = np.array([0.0, 1.0])
    mu = np.array([5.0])
    with pytest.raises(ValueError, match="jac is used by the implicit methods"):
        odeint(vdp, y0, t, mu, method="tsit5", jac="fd")
    with pytest.raises(ValueError, match="jac_sparsity"):
        odeint(vdp, y0, t, mu, method="tsit5", jac_sparsity=np.ones((2, 2)))
    with pytest.raises(ValueError, match="regularizers"):
        odeint(vdp, y0, t, mu, method="kvaerno5", regularizers=("error",))
    with pytest.raises(ValueError, match="jac"):
        odeint(vdp, y0, t, mu, method="kvaerno5", jac="autograd")
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        odeint(vdp, y0, t, mu, method="kvaerno5", jac=lambda t, y, p: np.eye(3))
    with pytest.raises(ValueError, match="jac_sparsity has shape"):
        odeint(vdp, y0, t, mu, method="kvaerno5", jac_sparsity=np.ones((3, 3)))


def test_float32_and_batches():
    y0 = np.array([[2.0, 0.0], [1.0, 0.5]])
    t = np.linspace(0.0, 1.0, 3)
    mu = np.array([10.0])
    batch = odeint(vdp, y0, t, mu, method="kvaerno3", rtol=1e-7, atol=1e-9)
    for b in range(2):
        one = odeint(vdp, y0[b], t, mu, method="kvaerno3", rtol=1e-7, atol=1e-9)
        assert np.array_equal(batch.ys[:, b, :], one.ys)
    r32 = odeint(vdp, y0[0].astype(np.float32), t, mu.astype(np.float32),
                 method="kvaerno5", rtol=1e-4, atol=1e-6)
    assert r32.ys.dtype == np.float32
    assert np.allclose(r32.ys, batch.ys[:, 0, :], atol=1e-3)


@pytest.mark.parametrize("method", ["kvaerno5", "rodas5"])
def test_standard_namespace_matches_numpy(method):
    xps = pytest.importorskip("array_api_strict")

    def f(t, y, p):
        return xps.stack([-0.04 * y[0] + 1e4 * y[1] * y[2],
                          0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                          3e7 * y[1] ** 2])

    t = np.array([0.0, 4.0, 40.0])
    res = odeint(f, xps.asarray([1.0, 0.0, 0.0]), xps.asarray(t), method=method,
                 rtol=1e-6, atol=1e-10)
    ref = odeint(robertson, np.array([1.0, 0.0, 0.0]), t, method=method, rtol=1e-6,
                 atol=1e-10)
    assert isinstance(res.ys, type(xps.asarray([1.0])))
    assert np.allclose(np.asarray(res.ys), ref.ys, rtol=1e-9, atol=1e-14)
