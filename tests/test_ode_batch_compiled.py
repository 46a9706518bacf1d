"""A per-trajectory batch of an ``@njit`` field: the parallel compiled batch loop
(kernels/cpu/ode_batch.py) and its batched discrete adjoint.

Each trajectory of the batch kernels runs the single-trajectory compiled code, so the batch
must give the solves one by one exactly (same steps, same numbers; checked to 1e-12),
whatever the thread count; both are checked against the Python loop (a plain Python wrapper
of the same field: odeint compiles only for a Numba function), and the batched gradients
against the per-trajectory ones and against central differences on the frozen steps.
"""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba")

import diffsolve as ds  # noqa: E402
from diffsolve import _backend as B  # noqa: E402
from diffsolve.ode import odeint  # noqa: E402

TOL = 1e-12


@numba.njit
def lv(t, y, p):
    out = np.empty(2)
    out[0] = p[0] * y[0] - p[1] * y[0] * y[1]
    out[1] = -p[2] * y[1] + p[3] * y[0] * y[1]
    return out


@numba.njit
def lv_vjp(t, y, p, v):
    vy = np.empty(2)
    vy[0] = v[0] * (p[0] - p[1] * y[1]) + v[1] * p[3] * y[1]
    vy[1] = -v[0] * p[1] * y[0] + v[1] * (-p[2] + p[3] * y[0])
    vp = np.empty(4)
    vp[0] = v[0] * y[0]
    vp[1] = -v[0] * y[0] * y[1]
    vp[2] = -v[1] * y[1]
    vp[3] = v[1] * y[0] * y[1]
    return vy, vp


@numba.njit
def vdp(t, y, p):
    out = np.empty(2)
    out[0] = y[1]
    out[1] = p[0] * (1.0 - y[0] * y[0]) * y[1] - y[0]
    return out


@numba.njit
def vdp_vjp(t, y, p, v):
    vy = np.empty(2)
    vy[0] = v[1] * (-2.0 * p[0] * y[0] * y[1] - 1.0)
    vy[1] = v[0] + v[1] * p[0] * (1.0 - y[0] * y[0])
    vp = np.empty(1)
    vp[0] = v[1] * (1.0 - y[0] * y[0]) * y[1]
    return vy, vp


@numba.njit
def square(t, y, p):
    # y' = p y²: from y0 > 0 it blows up at t = 1 / (p y0)
    return p[0] * y * y


@numba.njit
def square_vjp(t, y, p, v):
    vp = np.empty(1)
    vp[0] = np.sum(v * y * y)
    return 2.0 * p[0] * y * v, vp


@numba.njit
def lv_strided(t, y, p):
    # the same field returning a non-contiguous view: no float64[::1] signature, so the
    # batch kernel (f typed as a first-class function) refuses it and odeint falls back
    out = np.empty((2, 2))
    out[0, 0] = p[0] * y[0] - p[1] * y[0] * y[1]
    out[1, 0] = -p[2] * y[1] + p[3] * y[0] * y[1]
    return out[:, 0]


@numba.njit
def picky(t, y, p):
    # raises (Numba exceptions are Python exceptions) once y[0] exceeds p[0]
    if y[0] > p[0]:
        raise ValueError("picky: y[0] too large")
    return 0.5 * y


@numba.njit
def picky_vjp(t, y, p, v):
    if v[0] > 10.0 * p[0]:
        raise ValueError("picky_vjp: cotangent too large")
    return 0.5 * v, np.zeros(1)


PROBLEMS = {
    "lotka_volterra": (lv, lv_vjp, np.array([1.5, 1.0, 3.0, 1.0]), np.array([1.0, 1.0])),
    "van_der_pol": (vdp, vdp_vjp, np.array([2.0]), np.array([2.0, 0.0])),
}


def _batch(y0, n, seed=1):
    rng = np.random.default_rng(seed)
    return y0[None, :] * (1.0 + 0.1 * rng.uniform(-1.0, 1.0, size=(n, y0.shape[0])))


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls of the two batch kernels (so a test cannot pass on a fallback)."""
    seen = {"ode_batch.rk_solve_batch": 0, "ode_batch.rk_reverse_batch": 0}
    for name in seen:
        kern = B.get_kernel(np, name)

        def counted(*a, _k=kern, _n=name):
            seen[_n] += 1
            return _k(*a)

        monkeypatch.setitem(B._KERNEL_CACHE, ("diffsolve.kernels.cpu", name), counted)
    return seen


def _close(a, b, tol=TOL):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(float(np.max(np.abs(b))), 1e-300)
    assert float(np.max(np.abs(a - b))) <= tol * scale, float(np.max(np.abs(a - b))) / scale


@pytest.mark.parametrize("name", list(PROBLEMS))
@pytest.mark.parametrize("kw", [{}, {"controller": "i", "method": "dopri5"},
                                {"regularizers": ("error", "stiffness"), "method": "bs3"}])
def test_batch_equals_single_solves(name, kw, calls):
    f, _, p, y0 = PROBLEMS[name]
    Y0 = _batch(y0, 9)
    t = np.linspace(0.0, 6.0, 13)
    res = odeint(f, Y0, t, p, **kw)
    assert calls["ode_batch.rk_solve_batch"] == 1
    assert res.ys.shape == (13, 9, 2) and len(res.ts) == 9
    loop = [odeint(f, Y0[b], t, p, **kw) for b in range(9)]
    for b, r in enumerate(loop):
        _close(res.ys[:, b], r.ys)
        assert res.ts[b].shape == r.ts.shape  # the same steps
        _close(res.ts[b], r.ts)
    assert res.stats.n_steps == sum(r.stats.n_steps for r in loop)
    assert res.stats.nfe == sum(r.stats.nfe for r in loop)
    assert float(res.reg_error) == pytest.approx(sum(float(r.reg_error) for r in loop),
                                                 rel=TOL)
    assert float(res.reg_stiffness) == pytest.approx(
        sum(float(r.reg_stiffness) for r in loop), rel=TOL)
    # the Python loop on the same field (not a Numba function: no compiled path)
    py = odeint(f.py_func, Y0, t, p, **kw)
    np.testing.assert_allclose(res.ys, py.ys, rtol=1e-10, atol=1e-12)
    assert res.stats == py.stats


def test_thread_count_does_not_change_results():
    f, _, p, y0 = PROBLEMS["van_der_pol"]
    Y0 = _batch(y0, 17)
    t = np.linspace(0.0, 5.0, 7)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = odeint(f, Y0, t, p)
    finally:
        numba.set_num_threads(before)
    many = odeint(f, Y0, t, p)
    np.testing.assert_array_equal(one.ys, many.ys)
    for a, b in zip(one.ts, many.ts):
        np.testing.assert_array_equal(a, b)


def test_failing_trajectory_among_good_ones(calls):
    # y' = y² blows up at t = 1/y0: trajectory 2 (y0 = 2) within [0, 1], the others not
    Y0 = np.array([[-1.0], [0.5], [2.0], [-0.5]])
    t = np.linspace(0.0, 1.0, 5)
    p = np.array([1.0])
    with pytest.warns(ds.ConvergenceWarning, match="trajectory 2"):
        res = odeint(square, Y0, t, p)
    assert calls["ode_batch.rk_solve_batch"] == 1
    assert res.status in (ds.Status.STEP_UNDERFLOW, ds.Status.NONFINITE)
    assert not res.success and res.t_stop == pytest.approx(0.5, abs=1e-3)
    assert np.isnan(res.ys[3:, 2]).all() and np.isfinite(res.ys[:3, 2]).all()
    for b in (0, 1, 3):  # the good ones are intact: as solved alone
        _close(res.ys[:, b], odeint(square, Y0[b], t, p).ys)
    # gradients: a zero cotangent on the unreached outputs leaves every gradient finite
    # and equal to the per-trajectory loop; a non-zero one there poisons that row (NaN)
    # and the shared params (diffsolve's rule for outputs that were not computed)
    W = np.ones_like(res.ys)
    W[3:, 2] = 0.0
    with pytest.warns(ds.ConvergenceWarning):
        res, pull = ds.vjp(odeint, square, Y0, t, p, vjp=square_vjp)
    gy, gt, gp = pull(ys=W)
    assert calls["ode_batch.rk_reverse_batch"] == 1
    ref_y, ref_t, ref_p = [], np.zeros_like(t), np.zeros_like(p)
    for b in range(4):
        with pytest.warns(ds.ConvergenceWarning) if b == 2 else _nothing():
            _, pl = ds.vjp(odeint, square, Y0[b], t, p, vjp=square_vjp)
        a, bt, c = pl(ys=W[:, b])
        ref_y.append(a)
        ref_t += bt
        ref_p += c
    _close(gy, np.array(ref_y))
    _close(gt, ref_t)
    _close(gp, ref_p)
    W[4, 2] = 1.0
    gy, gt, gp = pull(ys=W)
    assert np.isnan(gy[2]).all() and np.isfinite(np.delete(gy, 2, axis=0)).all()
    assert np.isnan(gp).all() and np.isnan(gt).all()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("name", list(PROBLEMS))
@pytest.mark.parametrize("regs", [(), ("error", "stiffness")])
def test_batched_adjoint_equals_per_trajectory(name, regs, calls):
    f, vjp, p, y0 = PROBLEMS[name]
    Y0 = _batch(y0, 6)
    t = np.linspace(0.0, 4.0, 9)
    res, pull = ds.vjp(odeint, f, Y0, t, p, vjp=vjp, regularizers=regs)
    W = np.random.default_rng(2).standard_normal(res.ys.shape)
    kw = {"ys": W, "reg_error": 0.3, "reg_stiffness": -0.2} if regs else {"ys": W}
    gy, gt, gp = pull(**kw)
    assert calls["ode_batch.rk_reverse_batch"] == 1
    ref_y, ref_t, ref_p = [], np.zeros_like(t), np.zeros_like(p)
    for b in range(6):
        _, pl = ds.vjp(odeint, f, Y0[b], t, p, vjp=vjp, regularizers=regs)
        a, bt, c = pl(**{**kw, "ys": W[:, b]})
        ref_y.append(a)
        ref_t += bt
        ref_p += c
    _close(gy, np.array(ref_y))
    _close(gp, ref_p)
    if regs:  # t̄_0 is not defined with global regularisers (odeint's Notes)
        assert np.isnan(gt[0]) and np.isnan(ref_t[0])
        gt, ref_t = gt[1:], ref_t[1:]
    _close(gt, ref_t)
    # the Python discrete adjoint (Python loop, Python VJP) agrees too
    _, pull_py = ds.vjp(odeint, f.py_func, Y0, t, p, vjp=vjp.py_func, regularizers=regs)
    gy_py, gt_py, gp_py = pull_py(**kw)
    np.testing.assert_allclose(gy, gy_py, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gp, gp_py, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gt, gt_py[1:] if regs else gt_py, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_batched_adjoint_matches_central_differences(name, calls):
    # the discrete adjoint is the exact derivative of the computed solution with the step
    # times frozen: replay the steps (step_ts) for the perturbed solves
    f, vjp, p, y0 = PROBLEMS[name]
    Y0 = _batch(y0, 4)
    t = np.linspace(0.0, 3.0, 7)
    res, pull = ds.vjp(odeint, f, Y0, t, p, vjp=vjp)
    W = np.random.default_rng(3).standard_normal(res.ys.shape)
    gy, _, gp = pull(ys=W)
    assert calls["ode_batch.rk_reverse_batch"] == 1
    steps = list(res.ts)

    def loss(Y, q):
        return float(np.sum(W * odeint(f, Y, t, q, step_ts=steps, rtol=1e-6,
                                       atol=1e-9).ys))

    eps = 1e-6
    fd_p = np.array([(loss(Y0, p + eps * e) - loss(Y0, p - eps * e)) / (2 * eps)
                     for e in np.eye(p.shape[0])])
    fd_y = np.zeros_like(Y0)
    for b in range(Y0.shape[0]):
        for i in range(Y0.shape[1]):
            E = np.zeros_like(Y0)
            E[b, i] = eps
            fd_y[b, i] = (loss(Y0 + E, p) - loss(Y0 - E, p)) / (2 * eps)
    np.testing.assert_allclose(gp, fd_p, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gy, fd_y, rtol=1e-6, atol=1e-7)


def test_field_without_the_float64_signature_falls_back():
    p = PROBLEMS["lotka_volterra"][2]
    Y0 = _batch(np.array([1.0, 1.0]), 5)
    t = np.linspace(0.0, 3.0, 4)
    ref = odeint(lv, Y0, t, p)
    # twice: once compiled for these argument types, Numba accepts the field as a function
    # pointer and would read its strided result as contiguous (wrong numbers, no error)
    for _ in range(2):
        res = odeint(lv_strided, Y0, t, p)
        np.testing.assert_array_equal(res.ys, ref.ys)
        assert res.stats == ref.stats
        # the fallback solved each row alone (compiled per field), with the same steps
        for b in range(5):
            np.testing.assert_array_equal(res.ts[b], ref.ts[b])
        np.testing.assert_array_equal(odeint(lv_strided, Y0[1], t, p).ys, ref.ys[:, 1])
    # gradients: the Python discrete adjoint (the compiled one needs the pointer types)
    res, pull = ds.vjp(odeint, lv_strided, Y0, t, p, vjp=lv_vjp)
    gy, _, gp = pull(ys=np.ones_like(res.ys))
    res, pull = ds.vjp(odeint, lv, Y0, t, p, vjp=lv_vjp)
    ry, _, rp = pull(ys=np.ones_like(res.ys))
    np.testing.assert_allclose(gy, ry, rtol=1e-10)
    np.testing.assert_allclose(gp, rp, rtol=1e-10)


def test_kernel_rows_equal_single_kernel():
    from diffsolve.kernels.cpu import ode as K
    from diffsolve.kernels.cpu import ode_batch as KB
    from diffsolve.ode import TABLEAUX

    tab = TABLEAUX["tsit5"]
    f, _, p, y0 = PROBLEMS["van_der_pol"]
    Y0 = _batch(y0, 5)
    t = np.linspace(0.0, 2.0, 5)
    args = (t, p, tab.A, tab.c, tab.e, tab.P, tab.order, tab.error_order, 1e-7, 1e-10, True,
            -1.0, 10_000)
    outs = KB.rk_solve_batch(f, Y0, *args, True)
    serial = K.rk_solve_batch(f, Y0, *args, True)  # the serial loop it replaced
    assert len(outs) == len(serial) == 5
    for b, (out, ser) in enumerate(zip(outs, serial)):
        one = K.rk_solve(f, Y0[b].copy(), *args, np.empty(0), True)
        for x, y, z in zip(out, one, ser):
            np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(z, y)
    with pytest.raises(TypeError, match="C-contiguous"):
        KB.rk_solve_batch(lv_strided, Y0, *args, True)


@pytest.mark.parametrize("bad", [0, 5])
def test_exception_in_f_or_vjp_is_raised(bad):
    # an exception raised by the field in a worker thread of the parallel loop reaches the
    # caller as itself (as from the single-trajectory kernel), for the first trajectory
    # (solved before the parallel loop) or a later one
    Y0 = np.full((8, 1), 0.1)
    Y0[bad] = 1.0
    t = np.linspace(0.0, 2.0, 3)
    p = np.array([1.5])  # y = 0.1 e^(t/2) stays below, y = e^(t/2) crosses it
    with pytest.raises(ValueError, match="picky: y"):
        odeint(picky, Y0, t, p)
    res = odeint(picky, np.full((8, 1), 0.1), t, p)  # the kernel still works afterwards
    np.testing.assert_allclose(res.ys[-1], 0.1 * np.exp(1.0), rtol=1e-6)
    res, pull = ds.vjp(odeint, picky, np.full((8, 1), 0.1), t, p, vjp=picky_vjp)
    W = np.zeros_like(res.ys)
    W[-1, bad] = 100.0
    with pytest.raises(ValueError, match="picky_vjp: cotangent"):
        pull(ys=W)
    W[-1, bad] = 1.0
    gy = pull(ys=W)[0]
    np.testing.assert_allclose(gy[bad], np.exp(1.0), rtol=1e-6)
