"""The compiled stiff loop (kernels/cpu/ode_stiff.py) against the Python loop it mirrors.

The Python loop runs on a plain Python wrapper of the same ``@njit`` field (odeint takes the
compiled path for a Numba function only). Both use the same Jacobian bits (the forward
differences call the same compiled ``f`` at the same points), so they differ only through
the LU (the kernel's elimination vs LAPACK's ``getrf``) and the order of the error-norm sums:
rounding-level differences in each Newton update that the adaptive loop carries along. The
step sequences are identical and the outputs agree to ``RTOL`` (1e-9 relative, far below the
solver tolerances 1e-6..1e-8: a mirrored rule that differed — a constant, a reuse decision,
a controller factor — moves the outputs by the solver's own error, orders above it).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from diffsolve import ConvergenceWarning, Status  # noqa: E402
from diffsolve.ode import _stiff_solve as S  # noqa: E402
from diffsolve.ode import odeint  # noqa: E402

RTOL = 1e-9


@numba.njit
def robertson(t, y, p):
    out = np.empty(3)
    out[0] = -0.04 * y[0] + 1e4 * y[1] * y[2]
    out[1] = 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2
    out[2] = 3e7 * y[1] ** 2
    return out


@numba.njit
def robertson_jac(t, y, p):
    J = np.zeros((3, 3))
    J[0, 0] = -0.04
    J[0, 1] = 1e4 * y[2]
    J[0, 2] = 1e4 * y[1]
    J[1, 0] = 0.04
    J[1, 1] = -1e4 * y[2] - 6e7 * y[1]
    J[1, 2] = -1e4 * y[1]
    J[2, 1] = 6e7 * y[1]
    return J


@numba.njit
def vdp(t, y, p):
    # Van der Pol in Hairer–Wanner's scaled form (ε = p[0] = 1e-6)
    out = np.empty(2)
    out[0] = y[1]
    out[1] = ((1.0 - y[0] ** 2) * y[1] - y[0]) / p[0]
    return out


@numba.njit
def linear(t, y, p):
    # y' = A y + sin(t) with eigenvalues -1 .. -1e4 (a stiff linear system, n = 6)
    n = y.shape[0]
    out = np.empty(n)
    for i in range(n):
        lam = -(10.0 ** (4.0 * i / (n - 1)))
        out[i] = lam * y[i] + (y[i - 1] if i > 0 else 0.0) + math.sin(t) * p[i]
    return out


def py(fn):
    """A plain Python wrapper: odeint then runs the Python loop."""
    def wrapper(t, y, p):
        return fn(t, y, p)
    return wrapper


PROBLEMS = {
    "robertson": (robertson, np.array([1.0, 0.0, 0.0]), np.array([0.0, 1e-3, 1.0, 1e2, 1e4]),
                  None, 1e-7, 1e-10),
    "vdp": (vdp, np.array([2.0, -0.66]), np.array([0.0, 0.5, 1.0, 2.0]), np.array([1e-6]),
            1e-6, 1e-6),
    "linear": (linear, np.ones(6), np.array([0.0, 0.1, 1.0, 3.0]), np.linspace(1.0, 2.0, 6),
               1e-8, 1e-10),
}
METHODS = ["kvaerno3", "kvaerno5", "rodas5"]


def solve_both(name, method, **kw):
    f, y0, ts, p, rtol, atol = PROBLEMS[name]
    taken = []
    orig = S.compiled_stiff_trajectory

    def spy(*a, **k):
        out = orig(*a, **k)
        taken.append(out is not None)
        return out

    S.compiled_stiff_trajectory = spy
    try:
        rc = odeint(f, y0, ts, p, method=method, rtol=rtol, atol=atol, **kw)
    finally:
        S.compiled_stiff_trajectory = orig
    assert taken == [True], "the compiled path was not taken"
    kw_py = dict(kw)
    if callable(kw.get("jac")):
        kw_py["jac"] = py(kw["jac"])
    rp = odeint(py(f), y0, ts, p, method=method, rtol=rtol, atol=atol, **kw_py)
    return rc, rp


def assert_same(rc, rp):
    assert rc.status == rp.status
    assert rc.success == rp.success
    assert rc.message == rp.message
    assert (rc.n_steps, rc.n_accepted, rc.n_rejected, rc.nfe) == \
        (rp.n_steps, rp.n_accepted, rp.n_rejected, rp.nfe)
    np.testing.assert_array_equal(np.isnan(rc.ys), np.isnan(rp.ys))
    scale = np.nanmax(np.abs(rp.ys), axis=0)
    np.testing.assert_allclose(rc.ys, rp.ys, rtol=RTOL, atol=RTOL * scale.max() * 1e-6)
    # step times: bit-identical for the first ~100 steps here, then the error estimate of
    # a step whose stiff components sit at the rounding level of the stage solves (the
    # linear system's λ = -1e4 mode) differs O(1) relatively between two LUs, and the
    # controller's E^(-β) turns that into 1e-7..1e-5 relative differences of h: the same
    # sensitivity the Python loop has to its own rounding, not a different rule
    np.testing.assert_allclose(rc.ts, rp.ts, rtol=1e-4, atol=0)


@pytest.mark.parametrize("method", ["kvaerno3", "kvaerno5"])
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_compiled_esdirk_matches_python_loop(name, method):
    rc, rp = solve_both(name, method)
    assert rc.success
    assert rc.n_accepted > 10
    assert_same(rc, rp)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_compiled_rodas5_matches_python_loop(name):
    # Rodas5's error estimate U_8 is a small difference of stage solves with the
    # ill-conditioned I/(hγ) - J: it carries 1e-11..1e-5 relative rounding noise, which the
    # LU's last bits change, so the two step sequences may part (VdP: 569 vs 566 steps);
    # the outputs still agree far inside the tolerance, and the counts within 2 %
    rc, rp = solve_both(name, "rodas5")
    rtol = PROBLEMS[name][4]
    assert rc.success and rp.success and rc.status == rp.status
    assert abs(rc.n_steps - rp.n_steps) <= 0.02 * rp.n_steps
    np.testing.assert_allclose(rc.ys, rp.ys, rtol=rtol / 10, atol=PROBLEMS[name][5] / 10)


def test_stiff_stats_and_stages_recorded():
    f, y0, ts, _p, rtol, atol = PROBLEMS["robertson"]
    got = {}
    orig = S.compiled_stiff_trajectory

    def spy(*a, **k):
        got["traj"] = out = orig(*a, **k)
        return out

    S.compiled_stiff_trajectory = spy
    try:
        odeint(f, y0, ts, method="kvaerno5", rtol=rtol, atol=atol)
    finally:
        S.compiled_stiff_trajectory = orig
    traj = got["traj"]
    N = traj.ts.shape[0] - 1
    assert len(traj.stages) == N == traj.errs.shape[0]
    G, K, times = traj.stages[3]
    assert len(G) == len(K) == len(times) == 7
    np.testing.assert_array_equal(G[-1], traj.states[4])  # stiffly accurate: y_{n+1} = g_s
    np.testing.assert_allclose(K[-1], robertson(times[-1], G[-1], np.empty(0)), rtol=1e-5,
                               atol=1e-12)
    st = traj.stiff_stats
    assert set(st) == {"n_jac", "n_lu", "n_newton", "n_linear_solves"}
    assert 0 < st["n_jac"] <= st["n_lu"] and st["n_newton"] == st["n_linear_solves"] > 0


def test_user_njit_jacobian():
    rc, rp = solve_both("robertson", "kvaerno5", jac=robertson_jac)
    assert_same(rc, rp)
    fd = odeint(robertson, *PROBLEMS["robertson"][1:3], method="kvaerno5", rtol=1e-7,
                atol=1e-10)
    assert rc.nfe < fd.nfe  # no evaluations of f spent on J
    np.testing.assert_allclose(rc.ys, fd.ys, rtol=1e-5, atol=1e-10)
    rc, rp = solve_both("robertson", "rodas5", jac=robertson_jac)
    np.testing.assert_allclose(rc.ys, rp.ys, rtol=1e-8, atol=1e-12)


@numba.njit
def bad_jac(t, y, p):
    return np.zeros((2, 2))


def test_wrong_shape_jacobian_is_refused():
    f, y0, ts, _p, _rtol, _atol = PROBLEMS["robertson"]
    with pytest.raises(ValueError, match=r"jac\(t, y, params\).*shape \(3, 3\)"):
        odeint(f, y0, ts, method="kvaerno5", jac=bad_jac)


@pytest.mark.parametrize("method", METHODS)
def test_max_steps_reported_alike(method):
    with pytest.warns(ConvergenceWarning, match="max_steps"):
        rc, rp = solve_both("robertson", method, max_steps=40)
    assert rc.status == rp.status == Status.MAX_ITERATIONS and not rc.success
    assert "max_steps=40" in rc.message
    assert (rc.n_steps, rc.n_accepted) == (rp.n_steps, rp.n_accepted)
    np.testing.assert_array_equal(np.isnan(rc.ys), np.isnan(rp.ys))
    if method == "rodas5":  # where it stopped: within Rodas5's step noise (see above)
        assert rc.t_stop == pytest.approx(rp.t_stop, rel=1e-2)
        assert re.sub(r"t=[0-9.e+-]+ before", "", rc.message) == \
            re.sub(r"t=[0-9.e+-]+ before", "", rp.message)
    else:
        assert rc.message == rp.message


@numba.njit
def blows_up(t, y, p):
    # finite until t = 0.5, NaN after: Newton fails, the step shrinks until it underflows
    out = np.empty(2)
    out[0] = -1e3 * y[0]
    out[1] = math.nan if t > 0.5 else -y[1]
    return out


@pytest.mark.parametrize("method", METHODS)
def test_nan_field_reported_alike(method):
    ts = np.array([0.0, 0.25, 1.0])
    y0 = np.array([1.0, 1.0])
    with pytest.warns(ConvergenceWarning, match="underflow"):
        rc = odeint(blows_up, y0, ts, method=method)
        rp = odeint(py(blows_up), y0, ts, method=method)
    assert not rc.success and rc.status == rp.status == Status.STEP_UNDERFLOW
    assert rc.message == rp.message
    assert rc.n_steps == rp.n_steps
    np.testing.assert_allclose(rc.ys[:2], rp.ys[:2], rtol=1e-9)
    assert np.isnan(rc.ys[2]).all()


@numba.njit
def robertson_strided(t, y, p):
    # float64, but a strided view: not the float64[::1] result the kernel's type needs
    return np.repeat(robertson(t, y, p), 2)[::2]


def test_njit_field_without_float64_signature_falls_back():
    _f, y0, ts, _p, _rtol, _atol = PROBLEMS["robertson"]
    taken = []
    orig = S.compiled_stiff_trajectory

    def spy(*a, **k):
        out = orig(*a, **k)
        taken.append(out is not None)
        return out

    S.compiled_stiff_trajectory = spy
    try:
        rc = odeint(robertson_strided, y0, ts, method="kvaerno5", rtol=1e-5, atol=1e-8)
    finally:
        S.compiled_stiff_trajectory = orig
    assert taken == [False]  # tried, refused by the signature: the Python loop ran
    rp = odeint(py(robertson_strided), y0, ts, method="kvaerno5", rtol=1e-5, atol=1e-8)
    assert rc.success
    np.testing.assert_array_equal(rc.ys, rp.ys)


@numba.njit
def linear_vjp(t, y, p, v):
    n = y.shape[0]
    vy = np.empty(n)
    vp = np.empty(n)
    for i in range(n):
        lam = -(10.0 ** (4.0 * i / (n - 1)))
        vy[i] = lam * v[i] + (v[i + 1] if i + 1 < n else 0.0)
        vp[i] = math.sin(t) * v[i]
    return vy, vp


def test_discrete_adjoint_of_compiled_trajectory():
    import diffsolve as ds

    f, y0, ts, p, _, _ = PROBLEMS["linear"]
    kw = dict(method="kvaerno5", rtol=1e-9, atol=1e-11, vjp=linear_vjp)
    rng = np.random.default_rng(3)
    res, pull = ds.vjp(odeint, f, y0, ts, p, **kw)
    W = rng.standard_normal(res.ys.shape)
    y0_bar, _, p_bar = pull(ys=W)
    _res_py, pull_py = ds.vjp(odeint, py(f), y0, ts, p, **kw)
    y0_bar_py, _, p_bar_py = pull_py(ys=W)
    np.testing.assert_allclose(y0_bar, y0_bar_py, rtol=1e-9)
    np.testing.assert_allclose(p_bar, p_bar_py, rtol=1e-9)

    def loss(y, q):  # the same steps: the derivative of the discrete solution
        return np.sum(W * odeint(f, y, ts, q, step_ts=res.ts, **kw).ys)

    eps = 1e-6
    for i in (0, 3, 5):
        e = np.zeros(6)
        e[i] = eps
        fd_y = (loss(y0 + e, p) - loss(y0 - e, p)) / (2 * eps)
        fd_p = (loss(y0, p + e) - loss(y0, p - e)) / (2 * eps)
        assert y0_bar[i] == pytest.approx(fd_y, rel=1e-6, abs=1e-9)
        assert p_bar[i] == pytest.approx(fd_p, rel=1e-6, abs=1e-9)


def test_compiled_loop_crosses_van_der_pol_mu_1e6():
    # the fast transitions make I − hγJ badly row-scaled (rows 1e8 apart): the compiled
    # LU equilibrates its rows as the Python loop's ShiftedLU does, else it calls the
    # matrix singular and the step size underflows at t ≈ 0.807
    @numba.njit
    def vdpol(t, y, p):
        out = np.empty(2)
        out[0] = y[1]
        out[1] = ((1.0 - y[0] ** 2) * y[1] - y[0]) / p[0]
        return out

    def python_vdpol(t, y, p):
        return vdpol(t, y, p)

    p = np.array([1e-12])
    t = np.linspace(0.0, 2.0, 9)
    y0 = np.array([2.0, 0.0])
    for method in ("kvaerno5", "rodas5"):
        fast = odeint(vdpol, y0, t, p, method=method, rtol=1e-6, atol=1e-9)
        slow = odeint(python_vdpol, y0, t, p, method=method, rtol=1e-6, atol=1e-9)
        assert fast.converged and slow.converged
        assert np.max(np.abs(fast.ys - slow.ys) / (np.abs(slow.ys) + 1e-3)) < 1e-4
