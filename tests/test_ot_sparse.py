"""Tests of diffsolve.ot.sparse_ot / quadratic_ot, their kernels and their gradients.

Reference points: POT 0.9.7's ``ot.smooth`` (same regulariser: ``reg`` there is our
``gamma``, ``max_nz`` our ``k``; both maximise the same dual and semi-dual), ``ot.emd``
for ``k = 1``, naive loop implementations of the top-k operator and the sparse simplex
projection, and central finite differences for the backward rule.

Where the sparsity constraint binds (``res.binding``), the dual optimum is a kink and the
plan is one element of a subdifferential: it is not a smooth function of the inputs, so
the finite-difference checks use problems where it does not bind (k above the support
size of the quadratic solution).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import diffsolve as ds
import diffsolve.ot as dot
from diffsolve.kernels.cpu.ot_sparse import (
    relu_marginals,
    scatter_add_rows,
    simplex_rows,
    topk_rows,
)
from tests.helpers import assert_close, central_difference, to_numpy
from tests.naive_ot_sparse import (
    naive_scatter_add_rows,
    naive_sparse_simplex_projection,
    naive_topk_relu,
    naive_topk_rows,
)

ot = pytest.importorskip("ot")


def _cloud_problem(seed, n, m, *, uniform=True):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(m, 2)) + 0.5
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    C /= C.max()
    if uniform:
        a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    else:
        a, b = rng.uniform(0.5, 1.0, n), rng.uniform(0.5, 1.0, m)
        a /= a.sum()
        b /= b.sum()
    return a, b, C


def _pot_quiet(fn, *args, **kwargs):
    """POT 0.9.7's sparse projection prints a shape on every call, and its L-BFGS call
    passes SciPy's deprecated ``disp``: keep the log clean (and the warning filter happy)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------
# kernels vs naive references
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,m,k", [(9, 4, 1), (9, 4, 3), (9, 4, 9), (70, 5, 60), (1, 3, 1)])
def test_topk_rows_vs_naive(rng, dtype, n, m, k):
    alpha = rng.normal(size=n).astype(dtype)
    shift = rng.normal(size=m).astype(dtype)
    Ct = rng.normal(size=(m, n)).astype(dtype)
    Ct[0, : n // 2] = Ct[0, 0]  # ties: the smaller index comes first
    alpha[: n // 2] = alpha[0]
    idx, val = topk_rows(alpha, shift, Ct, k, np.empty((m, k), np.int64),
                         np.empty((m, k), dtype))
    ridx, rval = naive_topk_rows(alpha, shift, Ct, k)
    np.testing.assert_array_equal(idx, ridx)
    # z = alpha + shift - c is rounded once per operation in the kernel's dtype
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(val, rval, rtol=0, atol=8 * eps * (np.abs(alpha).max()
                               + np.abs(shift).max() + np.abs(Ct).max()))


def test_scatter_add_rows_vs_naive(rng):
    idx = rng.integers(0, 7, size=(5, 3))
    w = rng.normal(size=(5, 3))
    np.testing.assert_allclose(scatter_add_rows(idx, w, np.empty(7)),
                               naive_scatter_add_rows(idx, w, 7), rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_marginals_vs_naive(rng, dtype):
    n, m = 13, 6
    alpha, beta = rng.normal(size=n).astype(dtype), rng.normal(size=m).astype(dtype)
    C = rng.normal(size=(n, m)).astype(dtype)
    row, col = np.empty(n, dtype), np.empty(m, dtype)
    sumsq = relu_marginals(alpha, beta, C, row, col)
    P = np.array([naive_topk_relu(alpha + beta[j] - C[:, j], n) for j in range(m)]).T
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(row, P.sum(axis=1), rtol=tol)
    np.testing.assert_allclose(col, P.sum(axis=0), rtol=tol)
    np.testing.assert_allclose(sumsq, (P * P).sum(), rtol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_simplex_rows_vs_naive(rng, dtype):
    n, m = 17, 6
    alpha = rng.normal(size=n).astype(dtype)
    Ct = rng.normal(size=(m, n)).astype(dtype)
    b = rng.uniform(0.5, 1.0, m).astype(dtype)
    scale = (1.0 / (0.3 * b)).astype(dtype)
    scale[2] = 20.0  # a peaked column: one entry survives
    tau, zy, yy = (np.empty(m, dtype) for _ in range(3))
    row = np.empty(n, dtype)
    simplex_rows(alpha, Ct, scale, b, tau, zy, yy, row)
    Y = np.array([naive_sparse_simplex_projection((alpha - Ct[j]) * scale[j], n)
                  for j in range(m)])
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(row, (b[:, None] * Y).sum(axis=0), rtol=tol, atol=tol)
    np.testing.assert_allclose(yy, (Y * Y).sum(axis=1), rtol=tol)
    np.testing.assert_allclose(zy, ((alpha[None, :] - Ct) * Y).sum(axis=1), rtol=tol,
                               atol=tol)
    X = (alpha[None, :] - Ct) * scale[:, None]
    np.testing.assert_allclose(np.maximum(X - tau[:, None], 0), Y, atol=tol)


def test_kernel_argument_errors():
    with pytest.raises(ValueError, match="k must satisfy"):
        topk_rows(np.zeros(3), np.zeros(2), np.zeros((2, 3)), 4, np.empty((2, 4), np.int64),
                  np.empty((2, 4)))
    with pytest.raises(ValueError, match="C-contiguous"):
        topk_rows(np.zeros(3), np.zeros(2), np.zeros((3, 2)).T, 1, np.empty((2, 1), np.int64),
                  np.empty((2, 1)))
    with pytest.raises(ValueError, match="outside"):
        scatter_add_rows(np.array([[3]]), np.ones((1, 1)), np.empty(2))


@pytest.mark.gpu
def test_kernels_cuda_vs_cpu(rng):
    cp = pytest.importorskip("cupy")
    from diffsolve.kernels.cuda import ot_sparse as gpu

    n, m, k = 300, 40, 7
    alpha, shift, Ct = rng.normal(size=n), rng.normal(size=m), rng.normal(size=(m, n))
    idx, val = topk_rows(alpha, shift, Ct, k, np.empty((m, k), np.int64), np.empty((m, k)))
    gidx, gval = gpu.topk_rows(cp.asarray(alpha), cp.asarray(shift), cp.asarray(Ct), k,
                               cp.empty((m, k), cp.int64), cp.empty((m, k)))
    np.testing.assert_array_equal(gidx.get(), idx)
    np.testing.assert_allclose(gval.get(), val, rtol=1e-14)
    w = rng.normal(size=(m, k))
    out = gpu.scatter_add_rows(gidx, cp.asarray(w), cp.empty(n))
    np.testing.assert_allclose(out.get(), scatter_add_rows(idx, w, np.empty(n)), rtol=1e-12,
                               atol=1e-14)
    C = rng.normal(size=(n, m))
    row, col = np.empty(n), np.empty(m)
    s = relu_marginals(alpha, shift, C, row, col)
    grow, gcol = cp.empty(n), cp.empty(m)
    gs = gpu.relu_marginals(cp.asarray(alpha), cp.asarray(shift), cp.asarray(C), grow, gcol)
    np.testing.assert_allclose(grow.get(), row, rtol=1e-12)
    np.testing.assert_allclose(gcol.get(), col, rtol=1e-12)
    assert abs(float(gs) - s) <= 1e-12 * s
    b = rng.uniform(0.5, 1.0, m)
    scale = 1.0 / (0.2 * b)
    outs = [np.empty(m) for _ in range(3)] + [np.empty(n)]
    simplex_rows(alpha, Ct, scale, b, *outs)
    gouts = [cp.empty(m) for _ in range(3)] + [cp.empty(n)]
    gpu.simplex_rows(cp.asarray(alpha), cp.asarray(Ct), cp.asarray(scale), cp.asarray(b),
                     *gouts)
    for got, ref in zip(gouts, outs):
        np.testing.assert_allclose(got.get(), ref, rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------------------------------
# the plan against the naive operators, on every namespace
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("formulation", ["semi-dual", "dual"])
@pytest.mark.parametrize("k", [2, 4, 12])
def test_plan_matches_naive_operators(xp, formulation, k):
    a, b, C = _cloud_problem(1, 12, 9, uniform=False)
    gamma = 0.2
    res = _binding_ok(dot.sparse_ot, xp.asarray(a), xp.asarray(b), xp.asarray(C), k, gamma,
                      formulation=formulation)
    f, g, T = to_numpy(res.f), to_numpy(res.g), to_numpy(res.plan)
    ref = np.zeros_like(C)
    for j in range(C.shape[1]):
        if formulation == "semi-dual":
            ref[:, j] = b[j] * naive_sparse_simplex_projection((f - C[:, j]) / (gamma * b[j]), k)
        else:
            ref[:, j] = naive_topk_relu(f + g[j] - C[:, j], k) / gamma
    np.testing.assert_allclose(T, ref, atol=1e-12)
    # the recovered beta of the semi-dual is the dual's: t_j = [f + g_j - c_j]_+ on the support
    support = T > 0
    np.testing.assert_allclose(T[support], ((f[:, None] + g[None, :] - C) / gamma)[support],
                               rtol=1e-9)
    assert ((T > 0).sum(axis=0) <= k).all()
    # the sparse form is the same plan
    idx, vals = to_numpy(res.plan_indices), to_numpy(res.plan_values)
    assert idx.shape == (9, min(k, 12)) and vals.shape == idx.shape
    np.testing.assert_array_equal(T[idx, np.arange(9)[:, None]], vals)
    np.testing.assert_allclose(vals.sum(axis=1), T.sum(axis=0), rtol=1e-12)


# ------------------------------------------------------------------------------------------
# against POT's ot.smooth
# ------------------------------------------------------------------------------------------
POT_CASES = [(12, 10, 3, 0.1), (15, 15, 5, 0.05), (20, 12, 20, 0.1)]


@pytest.mark.parametrize("formulation", ["semi-dual", "dual"])
@pytest.mark.parametrize("n,m,k,gamma", POT_CASES)
def test_against_pot(formulation, n, m, k, gamma):
    a, b, C = _cloud_problem(n + m, n, m)
    res = _binding_ok(dot.sparse_ot, a, b, C, k, gamma, formulation=formulation)
    regul = ot.smooth.SparsityConstrained(max_nz=k, gamma=gamma) if k < n else \
        ot.smooth.SquaredL2(gamma=gamma)
    reg_type = "sparsity_constrained" if k < n else "l2"
    solve = ot.smooth.smooth_ot_semi_dual if formulation == "semi-dual" else \
        ot.smooth.smooth_ot_dual
    G, log = _pot_quiet(solve, a, b, C, gamma, reg_type=reg_type, max_nz=k, log=True,
                        stopThr=1e-14, numItermax=5000)
    pot_value = -float(log["res"].fun)
    ours = float(res.dual_value)
    # the same maximum, ours at least as high (it is maximised to a tighter tolerance)
    assert abs(ours - pot_value) <= 1e-6
    assert ours >= pot_value - 1e-10
    # POT's own objective and plan maps evaluated at our potentials give our numbers
    f, g = res.f, res.g
    if formulation == "semi-dual":
        value, _ = _pot_quiet(ot.smooth.semi_dual_obj_grad, f, a, b, C, regul)
        plan = _pot_quiet(ot.smooth.get_plan_from_semi_dual, f, b, C, regul)
    else:
        value, _, _ = ot.smooth.dual_obj_grad(f, g, a, b, C, regul)
        plan = ot.smooth.get_plan_from_dual(f, g, C, regul)
    assert abs(value - ours) <= 1e-12
    np.testing.assert_allclose(res.plan, plan, atol=1e-12)
    # and POT's plan is ours up to POT's own (looser) convergence
    np.testing.assert_allclose(res.plan, G, atol=1e-3 / n)
    if not res.binding:
        assert res.error <= 1e-9
        assert abs(float(res.cost) - ours) <= 1e-9  # no duality gap without the l0 cut


def test_quadratic_ot_against_pot():
    a, b, C = _cloud_problem(7, 14, 11, uniform=False)
    for formulation, solve in (("dual", ot.smooth.smooth_ot_dual),
                               ("semi-dual", ot.smooth.smooth_ot_semi_dual)):
        res = dot.quadratic_ot(a, b, C, 0.1, formulation=formulation)
        G, log = _pot_quiet(solve, a, b, C, 0.1, reg_type="l2", log=True, stopThr=1e-14,
                            numItermax=5000)
        assert abs(float(res.dual_value) + float(log["res"].fun)) <= 1e-9
        np.testing.assert_allclose(res.plan, G, atol=1e-6)
        assert res.k == 14 and not res.binding
        assert abs(float(res.cost) - float(res.dual_value)) <= 1e-10


@pytest.mark.parametrize("formulation", ["semi-dual", "dual"])
def test_k1_recovers_unregularised_ot(formulation):
    a, b, C = _cloud_problem(11, 9, 9)
    E = ot.emd(a, b, C)
    res = dot.sparse_ot(a, b, C, 1, 1e-3, formulation=formulation)
    assert res.converged
    np.testing.assert_allclose(res.plan, E, atol=1e-10)
    assert ((res.plan > 0).sum(axis=0) <= 1).all()


# ------------------------------------------------------------------------------------------
# namespaces, dtypes, batches, solvers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("formulation", ["semi-dual", "dual"])
def test_namespaces_and_dtypes(xp, dtype_name, formulation):
    # k = 4 does not bind here (a unique, smooth solution that every solver must find)
    a, b, C = _cloud_problem(3, 10, 8)
    ref = dot.sparse_ot(a, b, C, 4, 0.1, formulation=formulation)
    assert not ref.binding
    dtype = getattr(xp, dtype_name)
    res = dot.sparse_ot(xp.asarray(a, dtype=dtype), xp.asarray(b, dtype=dtype),
                        xp.asarray(C, dtype=dtype), 4, 0.1, formulation=formulation)
    for name in ("plan", "f", "g", "cost", "plan_values", "dual_value"):
        out = getattr(res, name)
        assert out.dtype == dtype, name
    assert_close(res.plan, xp.asarray(ref.plan, dtype=dtype), xp=xp,
                 atol=1e-4 if dtype_name == "float32" else 1e-9)
    assert abs(float(res.dual_value) - float(ref.dual_value)) <= (
        1e-5 if dtype_name == "float32" else 1e-11)
    assert res.converged


def test_own_lbfgs_matches_scipy():
    a, b, C = _cloud_problem(4, 30, 25, uniform=False)
    for formulation in ("semi-dual", "dual"):
        ref = dot.sparse_ot(a, b, C, 6, 0.05, formulation=formulation, solver="lbfgs-scipy")
        own = dot.sparse_ot(a, b, C, 6, 0.05, formulation=formulation, solver="lbfgs-xp")
        assert own.converged and ref.converged
        assert abs(float(own.dual_value) - float(ref.dual_value)) <= 1e-11
        if not ref.binding:
            np.testing.assert_allclose(own.plan, ref.plan, atol=1e-9)


def test_batched_equals_loop(xp):
    probs = [_cloud_problem(s, 8, 6, uniform=False) for s in (20, 21)]
    a = xp.asarray(np.stack([p[0] for p in probs]))
    b = xp.asarray(np.stack([p[1] for p in probs]))
    C = xp.asarray(np.stack([p[2] for p in probs]))
    res = dot.sparse_ot(a, b, C, 3, 0.1)
    assert tuple(res.plan.shape) == (2, 8, 6) and tuple(res.cost.shape) == (2,)
    assert tuple(res.plan_indices.shape) == (2, 6, 3)
    assert tuple(res.converged.shape) == (2,) and bool(xp.all(res.converged))
    for i, (ai, bi, Ci) in enumerate(probs):
        one = dot.sparse_ot(xp.asarray(ai), xp.asarray(bi), xp.asarray(Ci), 3, 0.1)
        np.testing.assert_allclose(to_numpy(res.plan)[i], to_numpy(one.plan), atol=1e-12)
        np.testing.assert_allclose(to_numpy(res.f)[i], to_numpy(one.f), atol=1e-10)
        assert to_numpy(res.n_iters)[i] == one.n_iters


def test_zero_weights_are_handled():
    a, b, C = _cloud_problem(5, 8, 6)
    a[2] = 0.0
    b[1] = 0.0
    a /= a.sum()
    b /= b.sum()
    for formulation in ("semi-dual", "dual"):
        res = dot.sparse_ot(a, b, C, 4, 0.2, formulation=formulation)
        assert res.converged and np.isfinite(res.f).all() and np.isfinite(res.g).all()
        assert np.all(res.plan[2] == 0) and np.all(res.plan[:, 1] == 0)


# ------------------------------------------------------------------------------------------
# bad input, non-convergence
# ------------------------------------------------------------------------------------------
def test_bad_input():
    a, b, C = _cloud_problem(6, 4, 3)
    with pytest.raises(ValueError, match=r"sparse_ot: k must be >= 1"):
        dot.sparse_ot(a, b, C, 0, 0.1)
    with pytest.raises(TypeError, match=r"sparse_ot: k must be an integer >= 1"):
        dot.sparse_ot(a, b, C, 1.5, 0.1)
    for gamma in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match=r"sparse_ot: gamma must be (> 0|finite)"):
            dot.sparse_ot(a, b, C, 2, gamma)
    with pytest.raises(ValueError, match=r"quadratic_ot: gamma"):
        dot.quadratic_ot(a, b, C, 0.0)
    with pytest.raises(TypeError, match="gamma must be a finite real number"):
        dot.sparse_ot(a, b, C, 2, "big")
    with pytest.raises(ValueError, match="formulation must be one of 'semi-dual', 'dual'"):
        dot.sparse_ot(a, b, C, 2, 0.1, formulation="primal")
    with pytest.raises(ValueError, match="solver must be one of 'lbfgs'"):
        dot.sparse_ot(a, b, C, 2, 0.1, solver="newton")
    with pytest.raises(ValueError, match="rtol must be >= 0"):
        dot.sparse_ot(a, b, C, 2, 0.1, rtol=-1.0)
    with pytest.raises(ValueError, match=r"k m < n\): no plan exists; use k >= 2"):
        dot.sparse_ot(np.full(8, 1 / 8), np.full(4, 1 / 4), np.ones((8, 4)), 1, 0.1)
    with pytest.raises(ValueError, match="maxiter must be >= 1"):
        dot.sparse_ot(a, b, C, 2, 0.1, maxiter=0)
    with pytest.raises(ValueError, match="different total mass"):
        dot.sparse_ot(a, 2 * b, C, 2, 0.1)
    with pytest.raises(ValueError, match="C has shape"):
        dot.sparse_ot(a, b, C.T, 2, 0.1)
    with pytest.raises(ValueError, match="negative"):
        dot.sparse_ot(-a, -b, C, 2, 0.1)
    C_bad = C.copy()
    C_bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dot.sparse_ot(a, b, C_bad, 2, 0.1)


def test_non_convergence_warns_and_throws():
    a, b, C = _cloud_problem(8, 30, 30)
    with pytest.warns(ds.ConvergenceWarning, match="MAX_ITERATIONS.*increase maxiter"):
        res = dot.sparse_ot(a, b, C, 30, 0.01, maxiter=2)
    assert not res.converged and res.n_iters == 2 and res.error > 1e-9
    assert res.status == ds.Status.MAX_ITERATIONS and "MAX_ITERATIONS" in res.message
    with pytest.raises(ds.MaxIterationsError, match="increase maxiter"):
        dot.sparse_ot(a, b, C, 30, 0.01, maxiter=2, throw=True)
    with pytest.warns(ds.ConvergenceWarning):
        dot.sparse_ot(a, b, C, 30, 0.01, maxiter=2, solver="lbfgs-xp")


# ------------------------------------------------------------------------------------------
# gradients
# ------------------------------------------------------------------------------------------
# k = 5 is above the support size of every column of the quadratic solution of this
# problem (checked below: binding is False), so the support is stable under perturbation.
GRAD_CASES = [
    ("sparse-semi", dot.sparse_ot, dict(k=5, gamma=0.3, formulation="semi-dual")),
    ("sparse-dual", dot.sparse_ot, dict(k=5, gamma=0.3, formulation="dual")),
    ("quad-dual", dot.quadratic_ot, dict(gamma=0.3)),
    ("quad-semi", dot.quadratic_ot, dict(gamma=0.3, formulation="semi-dual")),
]


def _grad_problem():
    a, b, C = _cloud_problem(3, 7, 5, uniform=False)
    return a, b, C


@pytest.mark.parametrize("name,fn,kw", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_vjp_vs_finite_differences(rng, name, fn, kw):
    a, b, C = _grad_problem()
    kw = dict(kw, rtol=1e-14)
    res, f_vjp = ds.vjp(fn, a, b, C, **kw)
    assert not res.binding and res.converged
    cot = dict(plan=rng.normal(size=C.shape), f=rng.normal(size=a.shape),
               g=rng.normal(size=b.shape), cost=np.asarray(1.7))
    a_bar, b_bar, C_bar = f_vjp(**cot)

    def loss(a_, b_, C_):
        r = fn(a_, b_, C_, **kw)
        return sum(float(np.sum(getattr(r, k_) * v)) for k_, v in cot.items())

    dC = rng.normal(size=C.shape)
    fd = central_difference(lambda C_: loss(a, b, C_), C, dC)
    np.testing.assert_allclose(np.sum(C_bar * dC), fd, rtol=1e-6, atol=1e-8)
    # weights: only mass-preserving directions are meaningful
    da, db = rng.normal(size=a.shape), rng.normal(size=b.shape)
    da -= da.mean()
    db -= db.mean()
    fd = central_difference(lambda a_: loss(a_, b, C), a, da)
    np.testing.assert_allclose(np.sum(a_bar * da), fd, rtol=1e-6, atol=1e-8)
    fd = central_difference(lambda b_: loss(a, b_, C), b, db)
    np.testing.assert_allclose(np.sum(b_bar * db), fd, rtol=1e-6, atol=1e-8)


def test_vjp_batched_and_strict(xp, rng):
    a, b, C = _grad_problem()
    Tb = rng.normal(size=C.shape)
    _ref, f_ref = ds.vjp(dot.sparse_ot, a, b, C, 5, 0.3, rtol=1e-13)
    ra, rb, rC = f_ref(plan=Tb, cost=np.asarray(1.0))
    aa, bb = xp.asarray(np.stack([a, a])), xp.asarray(np.stack([b, b]))
    _res, f_vjp = ds.vjp(dot.sparse_ot, aa, bb, xp.asarray(C), 5, 0.3, rtol=1e-13)
    ga, gb, gC = f_vjp(plan=xp.asarray(np.stack([Tb, 0 * Tb])),
                       cost=xp.asarray([1.0, 0.0]))
    assert tuple(gC.shape) == C.shape  # C was broadcast over the batch: its cotangent summed
    np.testing.assert_allclose(to_numpy(gC), rC, atol=1e-9)
    np.testing.assert_allclose(to_numpy(ga)[0], ra, atol=1e-9)
    np.testing.assert_allclose(to_numpy(gb)[0], rb, atol=1e-9)


def test_to_autograd():
    import autograd
    import autograd.numpy as anp

    a, b, C = _grad_problem()
    rng = np.random.default_rng(0)
    w = rng.normal(size=C.shape)
    fn = ds.to_autograd(dot.sparse_ot)

    def loss(C_):
        r = fn(a, b, C_, 5, 0.3, rtol=1e-14)
        return anp.sum(w * r.plan) + r.cost

    g = autograd.grad(loss)(C)
    v = rng.normal(size=C.shape)
    np.testing.assert_allclose(np.sum(g * v), central_difference(loss, C, v), rtol=1e-6)


def test_to_torch():
    torch = pytest.importorskip("torch")
    a, b, C = _grad_problem()
    w = np.random.default_rng(1).normal(size=C.shape)
    Ct = torch.tensor(C, requires_grad=True)
    at = torch.tensor(a, requires_grad=True)
    res = ds.to_torch(dot.quadratic_ot)(at, torch.tensor(b), Ct, 0.3, rtol=1e-14)
    assert isinstance(res.plan, torch.Tensor)
    ((res.plan * torch.tensor(w)).sum() + res.f.pow(2).sum()).backward()
    _, f_vjp = ds.vjp(dot.quadratic_ot, a, b, C, 0.3, rtol=1e-14)
    ra, _, rC = f_vjp(plan=w, f=2 * res.f.detach().numpy())
    np.testing.assert_allclose(Ct.grad.numpy(), rC, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(at.grad.numpy(), ra, rtol=1e-9, atol=1e-12)


def test_to_jax():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    a, b, C = _grad_problem()
    for fn, args in ((dot.sparse_ot, (5, 0.3)), (dot.quadratic_ot, (0.3,))):
        f = ds.to_jax(fn)

        def loss(C_, f=f, args=args):
            return f(jnp.asarray(a), jnp.asarray(b), C_, *args, rtol=1e-13).cost

        ref = fn(a, b, C, *args, rtol=1e-13)
        # the envelope theorem: d cost / d C is the plan (the rule must read gamma and the
        # formulation from the call: under JAX the result keeps its arrays only)
        for grad in (jax.grad(loss), jax.jit(jax.grad(loss))):
            np.testing.assert_allclose(np.asarray(grad(jnp.asarray(C))), ref.plan, atol=1e-10)


def _split_support_problem():
    """40 x 30 clouds, k = 3, gamma = 0.05: k binds and the plan's support graph falls
    apart into several components (its Hessian has one null vector per component)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 2)), rng.normal(size=(30, 2)) + 0.3
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    a, b = rng.uniform(0.5, 1.5, 40), rng.uniform(0.5, 1.5, 30)
    return a / a.sum(), b / b.sum(), C / C.max()


@pytest.mark.parametrize("formulation", ["semi-dual", "dual"])
def test_support_solve_is_least_squares_on_a_split_support(formulation):
    # reproduction: the private MINRES loop of the polish and the backward stopped on its
    # least-squares test or drifted when the support graph was split: ||A x - P rhs|| was
    # 7 % (semi-dual) and 4 % (dual) of ||P rhs|| here, and the backward's cotangents
    # wrong by as much. The null space (one shift per component) is now projected out and
    # krylov.minres solves the consistent system to its tolerance.
    import array_api_compat.numpy as xnp

    from diffsolve.ot._sparse import _components, _solve_support, _support_system

    a, b, C = _split_support_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ds.ConvergenceWarning)  # INFEASIBLE: k binds
        res = dot.sparse_ot(a, b, C, 3, 0.05, formulation=formulation, rtol=1e-10)
    T = res.plan
    labels = _components(T > 0, xnp)
    n_comp = len(np.unique(labels if formulation == "dual" else labels[:40]))
    assert n_comp >= 2
    size = 70 if formulation == "dual" else 40
    rhs = np.random.default_rng(1).standard_normal(size)
    sol = _solve_support(T, b, 0.05, formulation, rhs, 1e-12, 4 * 70, xnp)
    assert sol.status == ds.Status.SUCCESS and sol.converged
    A_op, _ = _support_system(T, b, 0.05, formulation, xnp)
    A = np.stack([A_op(e) for e in np.eye(size)], axis=1)
    assert np.linalg.matrix_rank(A) == size - n_comp
    # the least-squares optimum: A x = A A^+ rhs
    want = A @ (np.linalg.pinv(A) @ rhs)
    np.testing.assert_allclose(A @ sol.x, want, atol=1e-10 * np.linalg.norm(rhs))


def test_backward_where_every_column_is_its_own_component():
    # reproduction: k = 1 on a permutation plan splits the support into n components; the
    # private MINRES returned a_bar ~ 3e11 (a least-squares iterate that drifted along the
    # null space) for the dual. The cotangents are now O(1), and the plan, constant on
    # this piece, contributes nothing to C_bar.
    r = np.random.default_rng(4)
    x, y = r.normal(size=(6, 2)), r.normal(size=(6, 2)) + 0.3
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    C /= C.max()
    u = np.full(6, 1 / 6)
    for formulation in ("dual", "semi-dual"):
        res, f_vjp = ds.vjp(dot.sparse_ot, u, u, C, 1, 0.1, formulation=formulation)
        assert (np.count_nonzero(res.plan, axis=0) == 1).all()
        cot = dict(plan=r.normal(size=C.shape), f=r.normal(size=6), g=r.normal(size=6),
                   cost=np.asarray(1.3))
        grads = f_vjp(**cot)
        assert all(np.all(np.isfinite(g)) and np.abs(g).max() < 10 for g in grads)
        _, _, C_bar = f_vjp(plan=cot["plan"], cost=cot["cost"])
        np.testing.assert_allclose(C_bar, 1.3 * res.plan, atol=1e-12)


def test_backward_reads_the_support_solve_status(monkeypatch):
    # the backward warns once (at the user's line), for the whole batch, when its MINRES
    # solve misses the tolerance; the gradient is still returned
    import diffsolve.ot._sparse as sp

    a, b, C = _grad_problem()
    Tb = np.random.default_rng(2).normal(size=C.shape)
    _, f_vjp = ds.vjp(dot.sparse_ot, np.stack([a, a]), b, C, 5, 0.3, rtol=1e-13)
    want = f_vjp(plan=np.stack([Tb, Tb]))
    monkeypatch.setattr(sp, "_BWD_RTOL", 1e-300)  # below anything float64 resolves
    with pytest.warns(ds.ConvergenceWarning, match=r"sparse_ot: the implicit-"
                      r"differentiation MINRES.*\(problem 0, 2 of 2\).*larger gamma") as seen:
        got = f_vjp(plan=np.stack([Tb, Tb]))
    assert len(seen) == 1 and seen[0].filename == __file__
    for g, w in zip(got, want, strict=True):  # MINRES's best iterate: close, not exact
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * np.abs(w).max())


def test_dense_top_k_keeps_k_entries_at_exact_ties(xp):
    # reproduction: two identical sources keep identical potentials, so their entries tie
    # in every column; the dense path (array_api_strict) kept every entry >= the k-th
    # largest and returned columns with k + 1 nonzeros (and mass beyond b_j for the
    # semi-dual). Ties are now broken by the smaller index, as in the top-k kernels.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(5, 2))
    x[1] = x[0]
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    C /= C.max()
    a, b = np.full(6, 1 / 6), np.full(5, 1 / 5)
    for formulation in ("semi-dual", "dual"):
        res = _binding_ok(dot.sparse_ot, xp.asarray(a), xp.asarray(b), xp.asarray(C), 2,
                          0.05, formulation=formulation)
        T = to_numpy(res.plan)
        assert (np.count_nonzero(T, axis=0) <= 2).all()
        if formulation == "semi-dual":
            np.testing.assert_allclose(T.sum(axis=0), b, rtol=1e-12)


def test_backward_in_binding_case_is_finite():
    """Where k binds the plan is not differentiable; the rule still returns the derivative
    of the smooth piece it stopped on (finite, and zero for cotangents that only move
    the plan off its support)."""
    a, b, C = _cloud_problem(0, 12, 10)
    with pytest.warns(ds.ConvergenceWarning, match="INFEASIBLE"):
        res, f_vjp = ds.vjp(dot.sparse_ot, a, b, C, 2, 0.1)
    assert res.binding and res.status == ds.Status.INFEASIBLE and not res.converged
    ga, gb, gC = f_vjp(plan=np.ones_like(C), cost=np.asarray(1.0))
    assert np.isfinite(gC).all() and np.isfinite(ga).all() and np.isfinite(gb).all()


@pytest.mark.gpu
@pytest.mark.parametrize("k", [4, 6, 40])
def test_cupy_matches_numpy(k):
    """CuPy runs diffsolve's own L-BFGS: compare with the same solver on NumPy. k = 4
    binds on this problem, k = 6 does not (gradients compared), k = 40 is quadratic OT."""
    cp = pytest.importorskip("cupy")
    a, b, C = _cloud_problem(2, 40, 30)
    w = np.random.default_rng(0).normal(size=C.shape)
    for formulation in ("semi-dual", "dual"):
        ref, f_ref = ds.vjp(dot.sparse_ot, a, b, C, k, 0.1, formulation=formulation,
                            solver="lbfgs-xp")
        res, f_gpu = ds.vjp(dot.sparse_ot, cp.asarray(a), cp.asarray(b), cp.asarray(C), k,
                            0.1, formulation=formulation)
        assert isinstance(res.plan, cp.ndarray) and res.converged
        assert isinstance(res.plan_indices, cp.ndarray)
        assert abs(float(res.dual_value) - float(ref.dual_value)) <= 1e-9
        if not ref.binding:
            np.testing.assert_allclose(res.plan.get(), ref.plan, atol=1e-9)
            _, _, gC = f_gpu(plan=cp.asarray(w), cost=cp.asarray(1.0))
            _, _, rC = f_ref(plan=w, cost=np.asarray(1.0))
            np.testing.assert_allclose(gC.get(), rC, atol=1e-7)


@pytest.mark.gpu
def test_cupy_float32_and_batch():
    cp = pytest.importorskip("cupy")
    probs = [_cloud_problem(s, 30, 20) for s in (5, 6)]
    a, b, C = (cp.asarray(np.stack([p[i] for p in probs]), dtype=cp.float32) for i in range(3))
    res = dot.sparse_ot(a, b, C, 5, 0.1)
    assert res.plan.dtype == cp.float32 and res.plan.shape == (2, 30, 20)
    assert bool(cp.all(res.converged))
    assert int((res.plan > 0).sum(axis=1).max()) <= 5


def _binding_ok(fn, *args, **kw):
    """A solve where k may bind: SUCCESS, or INFEASIBLE (the honest status at a kink of the
    dual, with its ConvergenceWarning) when the binding plan misses the marginals."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = fn(*args, **kw)
    status = ds.Status(int(res.status))
    assert status in (ds.Status.SUCCESS, ds.Status.INFEASIBLE), res.message
    assert (status == ds.Status.INFEASIBLE) == bool(res.binding and not res.converged)
    assert [str(w.message) for w in seen] == ([res.message] if not res.converged else [])
    return res


def _kink_problem():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 2)), rng.normal(size=(5, 2))
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    return np.full(8, 1 / 8), np.full(5, 1 / 5), C / C.max()


def test_cost_is_continuous_where_k_binds():
    # reproduction: with a binding k the cost (then the primal objective of the recovered
    # plan) jumped by 0.023 (19 %) when C[2, 3] moved by 1e-9: the plan switches between
    # top-k selections at a kink, and L-BFGS stalled at different points of the kink. The
    # cost is now the dual value, a concave (continuous) function of C, maximised with
    # restarts at the kink.
    a, b, C = _kink_problem()
    D = np.zeros_like(C)
    D[2, 3] = 1e-9
    costs = [float(_binding_ok(dot.sparse_ot, a, b, C + t * D, 2, 0.05).cost)
             for t in (-1, 0, 1)]
    # what is left is where L-BFGS stalls on the kink (the maximum of a nonsmooth concave
    # function): 1e-9 to a few 1e-9 apart here, depending on the path of the solve
    assert max(costs) - min(costs) <= 1e-8
    res = _binding_ok(dot.sparse_ot, a, b, C, 2, 0.05)
    assert res.binding and res.status == ds.Status.INFEASIBLE
    assert float(res.cost) == float(res.dual_value)
    assert abs(float(res.primal_cost) - float(res.cost)) > 1e-4  # the relaxation's gap


@pytest.mark.parametrize("formulation", ["semi-dual", "dual"])
def test_cost_gradient_is_the_envelope_and_matches_finite_differences(formulation):
    # the cost is the dual value: its vjp is (f, g, plan) without a linear solve, and where
    # k does not bind it is the gradient (central differences); where k binds it is the
    # supergradient of the returned top-k selection (see test_backward_in_binding_case)
    a, b, C = _grad_problem()
    rng = np.random.default_rng(1)
    res, f_vjp = ds.vjp(dot.sparse_ot, a, b, C, 5, 0.3, formulation=formulation)
    assert not res.binding and res.converged
    a_bar, b_bar, C_bar = f_vjp(cost=1.0)
    np.testing.assert_allclose(C_bar, res.plan, rtol=1e-12)
    dC = rng.standard_normal(C.shape)

    def cost(t):
        return float(dot.sparse_ot(a, b, C + t * dC, 5, 0.3, formulation=formulation).cost)

    fd = central_difference(cost, 0.0, 1.0, h=1e-6)
    np.testing.assert_allclose(np.sum(C_bar * dC), fd, rtol=1e-6, atol=1e-9)
    da, db = rng.standard_normal(7), rng.standard_normal(5)
    da -= da.mean()
    db -= db.mean()
    fd = central_difference(lambda t: float(dot.sparse_ot(
        a + t * da, b + t * db, C, 5, 0.3, formulation=formulation).cost), 0.0, 1.0, h=1e-6)
    np.testing.assert_allclose(a_bar @ da + b_bar @ db, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("fn", [dot.sparse_ot, dot.quadratic_ot])
def test_callback_fixed_budget_and_deprecated_names(fn):
    a, b, C = _cloud_problem(4, 10, 8)
    args = (a, b, C, 20, 0.1) if fn is dot.sparse_ot else (a, b, C, 0.1)
    states = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stop = fn(*args, callback=lambda s: states.append(s) or s.n_iters >= 3, throw=True)
        assert stop.status == ds.Status.STOPPED and stop.n_iters == 3
        assert [s.n_iters for s in states] == [1, 2, 3]
        assert states[-1].f.shape == (10,) and isinstance(states[-1].error, float)
        fixed = fn(*args, rtol=0, atol=0, maxiter=5, throw=True)
        assert fixed.status == ds.Status.MAX_ITERATIONS and not fixed.converged
        assert fixed.n_iters <= 5 and fixed.tolerance == 0.0
    new = fn(*args, rtol=1e-7)
    with pytest.warns(DeprecationWarning, match="tol= is deprecated.*use rtol="):
        old = fn(*args, tol=1e-7)
    assert old.tolerance == new.tolerance and old.n_iters == new.n_iters
    with pytest.warns(DeprecationWarning, match="max_iter= is deprecated.*use maxiter="):
        fn(*args, max_iter=500)
