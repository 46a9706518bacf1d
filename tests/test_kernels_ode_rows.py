"""The row kernels of the vectorised batch (kernels/cpu/ode.py) against naive references:
the single-trajectory stage kernels row by row (bitwise: same arithmetic order), and the
Python controller (``diffsolve.ode._controller.Controller``) row by row."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("numba")

from diffsolve import _backend as B
from diffsolve._status import Status
from diffsolve.ode._controller import MAX_FACTOR, MIN_FACTOR, SAFETY, Controller

xp = B.host_namespace()


def _k(name):
    return B.get_kernel(xp, "ode." + name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_combine_and_error_norm_rows_equal_the_one_row_kernels(dtype):
    rng = np.random.default_rng(0)
    n_rows, n, s = 5, 7, 6
    Y = rng.standard_normal((n_rows, n)).astype(dtype)
    Y_new = rng.standard_normal((n_rows, n)).astype(dtype)
    K = rng.standard_normal((s, n_rows, n)).astype(dtype)
    coeffs = rng.standard_normal(4)
    h = rng.uniform(0.01, 0.3, n_rows)
    scratch = np.empty(n_rows * n)
    out = _k("rk_combine_rows")(Y, K, coeffs, h, np.empty_like(Y), scratch)
    if dtype == np.float64:  # sums accumulated in the output itself: the same bits
        in_place = _k("rk_combine_rows")(Y, K, coeffs, h, np.empty_like(Y), np.empty(0))
        np.testing.assert_array_equal(in_place, out)
    e = rng.standard_normal(s)
    E = _k("rk_error_norm_rows")(Y, Y_new, K, e, h, 1e-6, 1e-9, np.empty(n_rows), scratch)
    for b in range(n_rows):
        Kb = np.ascontiguousarray(K[:, b, :])
        ref = _k("rk_combine")(Y[b], Kb, coeffs, float(h[b]), np.empty_like(Y[b]))
        np.testing.assert_array_equal(out[b], ref)
        assert E[b] == _k("rk_error_norm")(Y[b], Y_new[b], Kb, e, float(h[b]), 1e-6, 1e-9)
        # and a plain loop in the documented order
        acc = np.zeros(n)
        for j in range(4):
            acc = acc + coeffs[j] * K[j, b].astype(np.float64)
        np.testing.assert_allclose(out[b], Y[b] + h[b] * acc,
                                   rtol=1e-6 if dtype == np.float32 else 1e-15)


def test_dense_rows_equal_a_naive_loop():
    rng = np.random.default_rng(1)
    n_rows, n, s, m_deg = 4, 3, 7, 4
    Y = rng.standard_normal((n_rows, n))
    K = rng.standard_normal((s, n_rows, n))
    P = rng.standard_normal((s, m_deg))
    t_out = np.linspace(0.0, 1.0, 11)
    t = np.array([0.05, 0.3, 0.0, 0.55])
    h = np.array([0.3, 0.05, 0.2, 0.45])
    t_new = t + h
    accept = np.array([True, True, False, True])
    q = np.array([1, 4, 1, 6])
    n_acc = np.array([3, 7, 1, 9])
    ys = np.full((11, n_rows, n), np.nan)
    out_step = np.full((n_rows, 11), -1)
    out_theta = np.zeros((n_rows, 11))
    q0 = q.copy()
    _k("rk_dense_rows")(Y, K, P, accept, t, t_new, h, t_out, 1.0, q, n_acc, ys, out_step,
                        out_theta)
    for b in range(n_rows):
        inside = [i for i in range(q0[b], 11) if accept[b] and t_out[i] <= t_new[b]]
        assert q[b] == (inside[-1] + 1 if inside else q0[b])
        for i in inside:
            theta = (t_out[i] - t[b]) / h[b]
            w = np.array([sum(P[j, k] * theta ** (k + 1) for k in range(m_deg))
                          for j in range(s)])
            np.testing.assert_allclose(ys[i, b], Y[b] + h[b] * (w @ K[:, b]), rtol=1e-13,
                                       atol=1e-14)
            assert out_step[b, i] == n_acc[b] and out_theta[b, i] == theta
    assert np.isnan(ys[:, 2]).all() and (out_step[2] == -1).all()


@pytest.mark.parametrize("kind", ["pi", "i"])
def test_rows_decide_is_the_python_controller_row_by_row(kind):
    rng = np.random.default_rng(2)
    n_rows = 400
    E = np.exp(rng.uniform(-8, 3, n_rows))
    E[:5] = [0.0, 1.0, np.nan, np.inf, 1.0 - 1e-16]
    running = rng.uniform(size=n_rows) < 0.9
    rejected = rng.uniform(size=n_rows) < 0.3
    err_prev = np.exp(rng.uniform(-9, 0, n_rows))
    h_abs = rng.uniform(0.01, 1.0, n_rows)
    t = rng.uniform(0, 5, n_rows)
    args = [a.copy() for a in (rejected, err_prev, h_abs)]
    n_steps = np.zeros(n_rows, dtype=np.int64)
    n_rej = np.zeros(n_rows, dtype=np.int64)
    nonfinite = np.zeros(n_rows, dtype=bool)
    last_nf = np.full(n_rows, np.nan)
    accept = np.zeros(n_rows, dtype=bool)
    order, error_order = 5, 4
    ctrl0 = Controller(kind, order, error_order)
    _k("rows_decide")(E, t, running, args[0], args[1], args[2], n_steps, n_rej, nonfinite,
                      last_nf, kind == "pi", ctrl0.exp_i, ctrl0.beta1, ctrl0.beta2,
                      (SAFETY, MIN_FACTOR, MAX_FACTOR), accept)
    for b in range(n_rows):
        if not running[b]:
            assert not accept[b] and n_steps[b] == 0 and args[2][b] == h_abs[b]
            continue
        ctrl = Controller(kind, order, error_order)
        ctrl.err_prev = float(err_prev[b])
        ok, factor = ctrl.decide(float(E[b]), bool(rejected[b]))
        assert accept[b] == ok
        assert args[2][b] == h_abs[b] * factor  # bitwise: libm pow on both sides
        assert n_rej[b] == (0 if ok else 1) and n_steps[b] == 1
        assert nonfinite[b] == (not math.isfinite(E[b]))
        if ok and kind == "pi":
            assert args[1][b] == ctrl.err_prev
        assert args[0][b] == (rejected[b] or not ok)


def test_rows_next_steps_follow_the_loop_rules():
    n_rows = 6
    t = np.array([0.0, 0.9, 0.5, 0.2, 0.3, 1.0])
    h_abs = np.array([0.1, 0.5, 1e-20, 0.1, 0.1, 0.1])
    fresh = np.array([True, True, False, True, True, True])
    rejected = np.array([True, False, True, True, False, False])
    running = np.array([True, True, True, True, False, True])
    n_steps = np.array([0, 3, 4, 10, 0, 0])
    nonfinite = np.array([False, False, True, False, False, False])
    status = np.zeros(n_rows, dtype=np.int64)
    t_fail = np.full(n_rows, np.nan)
    fail_min = np.full(n_rows, np.nan)
    codes = np.array([int(Status.MAX_ITERATIONS), int(Status.NONFINITE),
                      int(Status.STEP_UNDERFLOW)])
    h = np.zeros(n_rows)
    t_new = np.zeros(n_rows)
    t[5] = 0.95
    anyr = _k("rows_next_steps")(t, h_abs, fresh, rejected, running, n_steps, nonfinite,
                                 status, t_fail, fail_min, 1.0, 1.0, 10, codes, h, t_new)
    assert anyr
    assert h[0] == 0.1 and t_new[0] == 0.1 and not rejected[0]  # fresh clears rejected
    assert t_new[1] == 1.0 and h[1] == 1.0 - 0.9  # clipped to t1
    assert status[2] == int(Status.NONFINITE) and not running[2] and t_fail[2] == 0.5
    assert fail_min[2] == 10 * (np.nextafter(0.5, np.inf) - 0.5)
    assert status[3] == int(Status.MAX_ITERATIONS) and not running[3]
    assert h[4] == 0.0 and status[4] == 0  # not running: untouched
    assert abs(h[5] - 0.05) < 1e-15 and running[5]


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_commit_rows_equal_the_array_expressions(direction):
    """rows_commit against the array expressions it replaces on the host (the CuPy path)."""
    rng = np.random.default_rng(5)
    n_rows, n, s = 6, 3, 7
    accept = np.array([True, False, True, True, False, True])
    Y = rng.standard_normal((n_rows, n))
    Y_new = rng.standard_normal((n_rows, n))
    K = rng.standard_normal((s, n_rows, n))
    t = direction * np.array([0.0, 0.1, 0.5, 0.9, 0.2, 0.95])
    h = direction * np.array([0.1, 0.2, 0.3, 0.1, 0.05, 0.05])
    t_new = t + h
    t1 = direction * 1.0
    E = rng.uniform(0.0, 2.0, n_rows)
    n_acc = rng.integers(0, 5, n_rows)
    running = np.array([True, True, True, True, False, True])
    # the references (the array path of diffsolve.ode._vectorized)
    Y_ref = np.where(accept[:, None], Y_new, Y)
    K0_ref = np.where(accept[:, None], K[s - 1], K[0])
    t_ref = np.where(accept, t_new, t)
    running_ref = running & ~(accept & (direction * (t1 - t_ref) <= 0))
    n_acc_ref = n_acc + accept
    h_ref = np.where(accept, h, 0.0)
    t_end_ref = np.where(accept, t_new, np.nan)
    err_ref = np.where(accept, E, np.nan)
    Y_out, h_rec, t_end, err = np.empty_like(Y), np.empty(n_rows), np.empty(n_rows), \
        np.empty(n_rows)
    K_in = K.copy()
    _k("rows_commit")(accept, Y, Y_new, K_in, s - 1, t, t_new, h, E, t1, direction, n_acc,
                      running, Y_out, h_rec, t_end, err)
    np.testing.assert_array_equal(Y_out, Y_ref)
    np.testing.assert_array_equal(K_in[0], K0_ref)
    np.testing.assert_array_equal(K_in[1:], K[1:])
    np.testing.assert_array_equal(t, t_ref)
    np.testing.assert_array_equal(running, running_ref)
    np.testing.assert_array_equal(n_acc, n_acc_ref)
    np.testing.assert_array_equal(h_rec, h_ref)
    np.testing.assert_array_equal(t_end, t_end_ref)
    np.testing.assert_array_equal(err, err_ref)
    assert not running[3] and not running[5] and running[0]  # rows that reached t1 stop


def test_stage_cotangents_rows_equal_reverse_stages():
    """rows_stage_cotangents, stage by stage, against ode._adjoint.reverse_stages with a
    column h (the array path): the same cotangents, bitwise."""
    from diffsolve.ode._adjoint import reverse_stages
    from diffsolve.ode._tableaux import get_tableau

    rng = np.random.default_rng(11)
    tab = get_tableau("tsit5")
    A = np.ascontiguousarray(B.host_numpy(tab.A), dtype=np.float64)
    s, n_rows, n = A.shape[0], 5, 3
    h = rng.uniform(0.0, 0.3, n_rows)
    h[2] = 0.0  # a row that did not step
    a = rng.standard_normal((n_rows, n))
    seeds = {1: rng.standard_normal((n_rows, n)), 4: rng.standard_normal((n_rows, n))}
    J = rng.standard_normal((s, n, n))  # a linear "vjp" per stage: v -> v J_i

    def stage_vjp(i, kb):
        return kb @ J[i], None

    Kbar = [seeds.get(i) for i in range(s)]
    ref_y, _ = reverse_stages(A, h[:, None], [None] * (s - 1) + [a], Kbar,
                              np.zeros((n_rows, n)), None, stage_vjp)
    K_bar = np.zeros((s, n_rows, n))
    live = np.zeros(s, dtype=bool)
    for i, v in seeds.items():
        K_bar[i] = v
        live[i] = True
    y_bar = np.zeros((n_rows, n))
    kernel = _k("rows_stage_cotangents")
    for i in range(s - 1, -1, -1):
        G = a if i == s - 1 else None
        if live[i]:
            vy = K_bar[i] @ J[i]
            G = vy if G is None else G + vy
        if G is not None:
            kernel(i, A, h, G, K_bar, live, y_bar)
    np.testing.assert_array_equal(y_bar, ref_y)
    for i in range(s):
        if Kbar[i] is None:
            assert not live[i]
        else:
            np.testing.assert_array_equal(K_bar[i], Kbar[i])


def test_output_seeds_rows_equal_segmented_sums():
    rng = np.random.default_rng(12)
    T, n_rows, n, s = 9, 6, 2, 7
    rows = np.array([0, 0, 2, 3, 3, 3, 5])
    qs = np.array([1, 2, 4, 2, 3, 7, 8])
    W = rng.standard_normal((rows.shape[0], s))
    W[:, 5] = 0.0  # a stage no output reads
    stages = np.array([i for i in range(s) if np.any(W[:, i] != 0.0)])
    h = rng.uniform(0.05, 0.5, n_rows)
    ys_bar = rng.standard_normal((T, n_rows, n))
    y_bar = np.full((n_rows, n), 7.0)  # cleared by the kernel
    K_bar = np.full((s, n_rows, n), 3.0)
    live = np.zeros(s, dtype=bool)
    _k("rows_output_seeds")(rows, qs, W, stages, h, ys_bar, y_bar, K_bar, live)
    # the naive reference: each output added in turn, in output order
    ref_y = np.zeros((n_rows, n))
    ref_K = np.zeros((s, n_rows, n))
    for m in range(rows.shape[0]):
        b, q = rows[m], qs[m]
        ref_y[b] = ref_y[b] + ys_bar[q, b]
        for i in stages:
            ref_K[i, b] = ref_K[i, b] + (h[b] * W[m, i]) * ys_bar[q, b]
    np.testing.assert_array_equal(y_bar, ref_y)
    for i in range(s):
        if i == 5:
            assert not live[i]
            np.testing.assert_array_equal(K_bar[i], 3.0)  # untouched
            continue
        assert live[i]
        np.testing.assert_array_equal(K_bar[i], ref_K[i])
    # and the segmented sums of the array path, to rounding
    starts = np.array([0, 2, 3, 6])
    seg = np.add.reduceat((h[rows][:, None] * W)[:, 1:2] * ys_bar[qs, rows, :], starts, axis=0)
    np.testing.assert_allclose(K_bar[1][rows[starts]], seg, rtol=1e-14, atol=1e-15)
