"""Numba kernels for the stiff methods of :mod:`diffsolve.ode` (``kvaerno3``, ``kvaerno5``,
``rodas5``): the whole adaptive loop compiled, for an ``@njit`` vector field.

:func:`esdirk_solve` runs the ESDIRK pairs (simplified Newton on the implicit stages with
one matrix ``I − hγJ`` reused across stages and steps), :func:`rosenbrock_solve` the
Rosenbrock pair Rodas5 (one matrix ``I/(hγ) − J`` per step, no iteration). Both are line
for line the Python loops of ``diffsolve/ode/_stiff_esdirk.py``,
``diffsolve/ode/_stiff_newton.py`` and ``diffsolve/ode/_stiff_rosenbrock.py`` (the same
decisions in the same order: Jacobian reuse, refactorisation, the η/θ convergence test,
the step controller of ``_controller.py``, outputs at step end points, restarts at declared
jumps); their constants are passed in by the caller from those modules, so they cannot
drift apart. They record what those loops record (accepted times and states, the
converged stages ``G``, ``K`` and stage times of every step for the discrete adjoint, the
scaled errors, the work counts), so the Python adjoint runs unchanged on the result.

The vector field ``f(t, y, params)`` has the function-pointer type
``float64[::1](float64, float64[::1], float64[::1])`` of :func:`.ode.rk_solve`, and the
optional Jacobian ``jac(t, y, params)`` the type ``float64[:, ::1](float64, float64[::1],
float64[::1])``: each kernel is compiled once per process (and cached on disk), not once
per vector field. Without ``jac``, ``J`` is formed by forward differences with the
increment of ``_stiff_jacobian.py`` (one evaluation of ``f`` per column, plus one at the
point). The dense LU with partial pivoting is the textbook right-looking elimination
(Golub & Van Loan, Matrix Computations, 4th ed., Algorithm 3.4.1) of the matrix with its
rows equilibrated by powers of two, as ``diffsolve.ode._stiff_newton.ShiftedLU`` does; it
reports a singular factor by the pivot-ratio test of ``diffsolve._backend.DenseLU``.

Status codes (decoded into messages by ``diffsolve.ode._stiff_compiled``): :data:`OK`,
:data:`MAX_STEPS`, :data:`UNDERFLOW`, :data:`BAD_SHAPE` (``f`` returned a wrong shape),
:data:`NONFINITE` (a replayed step met non-finite values), :data:`DIVERGED` (Newton failed
on a replayed step), :data:`BAD_JAC` (``jac`` returned a wrong shape).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._config import jit
from .ode import _grow as _grow1
from .ode import _grow2
from .ode import _rms_scaled as _rms_ratio

__all__ = ["BAD_JAC", "BAD_SHAPE", "DIVERGED", "MAX_STEPS", "NONFINITE", "OK", "UNDERFLOW",
           "esdirk_solve", "rosenbrock_solve"]

OK, MAX_STEPS, UNDERFLOW, BAD_SHAPE, NONFINITE, DIVERGED, BAD_JAC = 0, 1, 2, 3, 5, 6, 7

#: float64 machine epsilon (the kernels are float64 only)
_EPS = 2.220446049250313e-16
#: smallest float64 whose reciprocal does not overflow (LAPACK's dlamch("S"))
_SFMIN = 2.2250738585072014e-308


# ---------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------
@jit()
def _eval(f, t, y, params, out):  # pragma: no cover - compiled
    """``out = f(t, y, params)``; ``False`` when ``f`` returned another length (indexing
    past a short result would read garbage: compiled code has no bounds checks)."""
    v = f(t, y, params)
    if v.shape[0] != out.shape[0]:
        return False
    for i in range(out.shape[0]):
        out[i] = v[i]
    return True


@jit()
def _initial_step(f, t0, y0, f0, params, direction, error_order, rtol, atol, interval, sc,
                  y1, f1):  # pragma: no cover - compiled
    """``_controller.initial_step`` (Hairer–Nørsett–Wanner I, II.4 in SciPy's form):
    ``(|h|, ok)``, ``ok=False`` when ``f`` returned a wrong shape."""
    if interval == 0.0:
        return 0.0, True
    n = y0.shape[0]
    for i in range(n):
        sc[i] = atol + rtol * abs(y0[i])
    d0 = _rms_ratio(y0, sc)
    d1 = _rms_ratio(f0, sc)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = min(h0, interval)
    hd = h0 * direction
    for i in range(n):
        y1[i] = y0[i] + hd * f0[i]
    if not _eval(f, t0 + h0 * direction, y1, params, f1):
        return 0.0, False
    for i in range(n):
        f1[i] = f1[i] - f0[i]
    d2 = _rms_ratio(f1, sc) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (error_order + 1))
    return min(100 * h0, h1, interval), True


@jit()
def _decide(E, rejected, pi, exp_i, beta1, beta2, err_prev, safety, min_factor,
            max_factor):  # pragma: no cover - compiled
    """``_controller.Controller.decide``: ``(accepted, factor, err_prev)``."""
    if E != E or E == math.inf:
        return False, min_factor, err_prev
    if pi:
        if E <= 1.0:
            if E == 0.0:
                factor = max_factor
            else:
                factor = min(max_factor, max(min_factor, safety * E ** (-beta1)
                                             * err_prev ** beta2))
            err_prev = max(E, 1e-4)
            if rejected:
                factor = min(1.0, factor)
            return True, factor, err_prev
    elif E < 1.0:
        factor = max_factor if E == 0.0 else min(max_factor, safety * E ** exp_i)
        if rejected:
            factor = min(1.0, factor)
        return True, factor, err_prev
    return False, max(min_factor, safety * E ** exp_i), err_prev


@jit()
def _jacobian(f, jac, use_jac, t, y, params, J, f0, fj, ytmp, delta):  # pragma: no cover
    """``J = ∂f/∂y`` at ``(t, y)``: the user's ``jac``, or forward differences as
    ``_stiff_jacobian.Jacobian._by_fd`` (the increment ``√ε max(|y_j|, 10⁻³)``, then the
    difference actually representable ``(y_j + δ) − y_j``). Returns ``(code, nfe)``."""
    n = y.shape[0]
    if use_jac:
        Ju = jac(t, y, params)
        if Ju.shape[0] != n or Ju.shape[1] != n:
            return BAD_JAC, 0
        for i in range(n):
            for j in range(n):
                J[i, j] = Ju[i, j]
        return OK, 0
    if not _eval(f, t, y, params, f0):
        return BAD_SHAPE, 1
    root = math.sqrt(_EPS)
    for j in range(n):
        d = root * max(abs(y[j]), 1e-3)
        delta[j] = (y[j] + d) - y[j]
    for j in range(n):
        for i in range(n):
            ytmp[i] = y[i]
        ytmp[j] = y[j] + delta[j]
        if not _eval(f, t, ytmp, params, fj):
            return BAD_SHAPE, j + 2
        for i in range(n):
            J[i, j] = (fj[i] - f0[i]) / delta[j]
    return OK, n + 1


@jit()
def _lu_factor(M, piv, rs):  # pragma: no cover - compiled
    """In-place LU with partial pivoting of ``S M`` (``P S M = L U``, unit ``L`` below the
    diagonal) with ``S = diag(rs)`` the power-of-two row equilibration of
    ``diffsolve.ode._stiff_newton.ShiftedLU`` (``rs_i = 2^-round(log2 max_j |M_ij|)``);
    returns whether it is singular by ``DenseLU``'s test on the scaled factor: a
    non-finite pivot, or ``min |u_kk| <= ε max |u_kk| / 2``. A matrix with a non-finite
    entry is reported singular without factorising (it could not give a usable solve)."""
    n = M.shape[0]
    for i in range(n):
        big = 0.0
        for j in range(n):
            if not math.isfinite(M[i, j]):
                return True
            big = max(big, abs(M[i, j]))
        rs[i] = 2.0 ** (-round(math.log2(big))) if big > 0.0 else 1.0
        if rs[i] != 1.0:
            for j in range(n):
                M[i, j] *= rs[i]
    for k in range(n):
        p = k
        amax = abs(M[k, k])
        for i in range(k + 1, n):
            v = abs(M[i, k])
            if v > amax:
                amax = v
                p = i
        piv[k] = p
        if p != k:
            for j in range(n):
                tmp = M[k, j]
                M[k, j] = M[p, j]
                M[p, j] = tmp
        pk = M[k, k]
        if pk != 0.0:  # an exactly zero column: nothing to eliminate (LAPACK's getf2)
            # the multipliers by the reciprocal pivot, as getf2 scales them (fewer
            # differences in the last bits from the LAPACK factor of the Python loop)
            if abs(pk) >= _SFMIN:
                rp = 1.0 / pk
                for i in range(k + 1, n):
                    M[i, k] *= rp
            else:
                for i in range(k + 1, n):
                    M[i, k] /= pk
            for i in range(k + 1, n):
                lik = M[i, k]
                if lik != 0.0:
                    for j in range(k + 1, n):
                        M[i, j] -= lik * M[k, j]
    scale = 0.0
    small = math.inf
    for k in range(n):
        a = abs(M[k, k])
        if not math.isfinite(a):
            return True
        scale = max(scale, a)
        small = min(small, a)
    return not (scale > 0.0 and small > _EPS * scale * 0.5)


@jit()
def _lu_solve(LU, piv, rs, b, x):  # pragma: no cover - compiled
    """``x = M⁻¹ b = (S M)⁻¹ S b`` from :func:`_lu_factor`'s factor (``x`` may be ``b``)."""
    n = LU.shape[0]
    for i in range(n):
        x[i] = rs[i] * b[i]
    for k in range(n):
        p = piv[k]
        if p != k:
            tmp = x[k]
            x[k] = x[p]
            x[p] = tmp
    for i in range(n):
        acc = x[i]
        for j in range(i):
            acc -= LU[i, j] * x[j]
        x[i] = acc
    # back substitution by columns (LAPACK/OpenBLAS trsv order: each x_j, once known, is
    # subtracted from the rows above it)
    for j in range(n - 1, -1, -1):
        x[j] = x[j] / LU[j, j]
        xj = x[j]
        for i in range(j):
            x[i] -= LU[i, j] * xj


@jit()
def _grow3(a, n):  # pragma: no cover - compiled
    """``a`` (3-D) with room for index ``n`` along its first axis (the 1-D and 2-D
    versions are the explicit loop's, imported above)."""
    if n < a.shape[0]:
        return a
    b = np.empty((2 * a.shape[0], a.shape[1], a.shape[2]), dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


@jit()
def _next_step_end(t, h_abs, t_end, direction, fixed, step_ts, n_acc, n_steps, max_steps,
                   min_step):  # pragma: no cover - compiled
    """``_stiff_esdirk.next_step_end``: ``(code, t_new, h_prop)`` (``h_prop < 0``: none)."""
    if n_steps >= max_steps:
        return MAX_STEPS, t, -1.0
    if fixed:
        return OK, step_ts[n_acc + 1], -1.0
    if h_abs < min_step:
        return UNDERFLOW, t, -1.0
    t_new = t + h_abs * direction
    if direction * (t_new - t_end) > 0:
        return OK, t_end, h_abs
    return OK, t_new, -1.0


# ---------------------------------------------------------------------------------------
# ESDIRK
# ---------------------------------------------------------------------------------------
@jit()
def _esdirk_attempt(f, params, A, c, e, gamma, rtol, atol, t, y, k1, h, times, LU, piv, rs,
                    G, K, psi, g, dg, fg, scale, eta, consts):  # pragma: no cover
    """``ESDIRKStepper.attempt`` with ``newton_stage`` inlined, the factor already checked.

    Returns ``(code, ok, E, slow, iters, eta, n_solves)``; ``G``, ``K`` receive the
    stages (row ``s − 1`` of ``G`` is the new state)."""
    slow_rate, slow_iters, max_iters, kappa = consts[1], consts[2], int(consts[3]), consts[4]
    n = y.shape[0]
    s = c.shape[0]
    hg = h * gamma
    roundoff = 4.0 * _EPS
    for i in range(n):
        scale[i] = atol + rtol * abs(y[i])
        G[0, i] = y[i]
        K[0, i] = k1[i]
    slow = False
    iters_total = 0
    n_solves = 0
    for st in range(1, s):
        # ψ = y + h Σ_{j<st} a_ij k_j (zero weights skipped, as the Python loop does)
        for i in range(n):
            acc = 0.0
            any_w = False
            for j in range(st):
                w = A[st, j]
                if w != 0.0:
                    acc += w * K[j, i]
                    any_w = True
            psi[i] = y[i] + h * acc if any_w else y[i]
        # the guess: slopes of the two previous stages extrapolated linearly in c
        if st < 2 or c[st - 1] == c[st - 2]:
            for i in range(n):
                g[i] = psi[i] + hg * K[st - 1, i]
        else:
            w = (c[st] - c[st - 1]) / (c[st - 1] - c[st - 2])
            for i in range(n):
                g[i] = psi[i] + hg * (K[st - 1, i] + w * (K[st - 1, i] - K[st - 2, i]))
        # simplified Newton (_stiff_newton.newton_stage)
        norm_prev = -1.0
        rate = 0.0
        eta = max(eta, 1e-16) ** 0.8
        ok = False
        m = 0
        done = False
        while m < max_iters and not done:
            m += 1
            if not _eval(f, times[st], g, params, fg):
                return BAD_SHAPE, False, math.inf, True, iters_total + m, eta, n_solves
            for i in range(n):
                dg[i] = psi[i] + hg * fg[i] - g[i]
            _lu_solve(LU, piv, rs, dg, dg)
            n_solves += 1
            acc = 0.0
            for i in range(n):
                v = dg[i] / scale[i]
                acc += v * v
            norm = math.sqrt(acc / n)
            if not math.isfinite(norm):
                rate = math.inf
                done = True
                break
            small = True
            for i in range(n):
                gn = g[i] + dg[i]
                if not abs(dg[i]) <= roundoff * abs(gn):
                    small = False
                g[i] = gn
            if small:  # updates at the rounding level of g: nothing left to gain
                ok = True
                done = True
                break
            if norm_prev >= 0.0:
                theta = norm / norm_prev if norm_prev > 0 else 0.0
                rate = max(rate, theta)
                if theta >= 1.0:
                    done = True
                    break
                eta = theta / (1.0 - theta)
            if eta * norm <= kappa or norm == 0.0:
                ok = True
                done = True
                break
            norm_prev = norm
        iters_total += m
        if not ok:
            return OK, False, math.inf, True, iters_total, eta, n_solves
        slow = slow or rate > slow_rate or m > slow_iters
        for i in range(n):
            G[st, i] = g[i]
            K[st, i] = (g[i] - psi[i]) / hg
    acc2 = 0.0
    for i in range(n):
        acc = 0.0
        for j in range(s):
            if e[j] != 0.0:
                acc += e[j] * K[j, i]
        err = h * acc
        sc = atol + rtol * max(abs(y[i]), abs(G[s - 1, i]))
        r = err / sc
        acc2 += r * r
    E = math.sqrt(acc2 / n)
    return OK, True, E, slow, iters_total, eta, n_solves


def _esdirk_solve(f, jac, use_jac, y0, f0, t_out, params, A, c, e, gamma, order,
                  error_order, rtol, atol, pi, has_first, first_step, max_steps, step_ts,
                  jumps, consts):  # pragma: no cover - compiled
    refactor_ratio, shrink = consts[0], consts[5]
    safety, min_factor, max_factor = consts[6], consts[7], consts[8]
    n = y0.shape[0]
    s = c.shape[0]
    n_out = t_out.shape[0]
    ys = np.full((n_out, n), np.nan)
    ys[0] = y0
    out_step = np.full(n_out, -1, dtype=np.int64)
    out_theta = np.zeros(n_out)
    cap = 16
    ts = np.empty(cap)
    states = np.empty((cap, n))
    Gs = np.empty((cap, s, n))
    Ks = np.empty((cap, s, n))
    tms = np.empty((cap, s))
    errs = np.empty(cap)
    stats = np.zeros(4, dtype=np.int64)    # n_steps, n_accepted, n_rejected, nfe
    sstats = np.zeros(4, dtype=np.int64)   # n_jac, n_lu, n_newton, n_linear_solves
    # preallocated work arrays: nothing is allocated per Newton iteration but what f returns
    y = y0.copy()
    k1 = f0.copy()
    J = np.empty((n, n))
    LU = np.empty((n, n))
    piv = np.zeros(n, dtype=np.int64)
    rs = np.ones(n)
    G = np.empty((s, n))
    K = np.empty((s, n))
    psi = np.empty(n)
    g = np.empty(n)
    dg = np.empty(n)
    fg = np.empty(n)
    scale = np.empty(n)
    w1 = np.empty(n)
    w2 = np.empty(n)
    w3 = np.empty(n)
    times = np.empty(s)
    t0 = t_out[0]
    t1 = t_out[n_out - 1]
    direction = 1.0 if t1 >= t0 else -1.0
    interval = abs(t1 - t0)
    fixed = step_ts.shape[0] > 0
    n_jumps = jumps.shape[0]
    ji = 0
    nfe = 0
    jac_nfe = 0
    exp_i = -1.0 / (error_order + 1)
    beta1 = 7.0 / (10.0 * order)
    beta2 = 2.0 / (5.0 * order)
    err_prev = 1e-4
    ts[0] = t0
    states[0] = y0
    status = OK
    t_fail = t0
    aux = 0.0
    h_abs = 0.0
    if not fixed:
        if has_first:
            h_abs = first_step
        else:
            h_abs, okf = _initial_step(f, t0, y0, k1, params, direction, error_order, rtol,
                                       atol, interval, w1, w2, w3)
            nfe += 1
            if not okf:
                status = BAD_SHAPE
    q = 1
    while q < n_out and t_out[q] == t0:
        ys[q] = y0
        q += 1
    t = t0
    n_acc = 0
    n_steps = 0
    n_rej = 0
    n_newton = 0
    # the iteration matrix's state (IterationMatrix)
    have_J = False
    fresh = False
    stale = True
    has_hM = False
    h_M = 0.0
    singular = False
    eta = 1.0
    E = 0.0
    h = 0.0
    t_new = t
    slow = False
    while status == OK and direction * (t1 - t) > 0:
        if fixed and n_acc + 1 >= step_ts.shape[0]:
            break
        min_step = 10.0 * abs(np.nextafter(t, direction * np.inf) - t)
        if not fixed and h_abs < min_step:
            h_abs = min_step
        while ji < n_jumps and direction * (jumps[ji] - t) <= 0:
            ji += 1
        t_end = jumps[ji] if ji < n_jumps else t1
        if q < n_out and direction * (t_out[q] - t_end) < 0:
            t_end = t_out[q]
        rejected = False
        retried = False
        while True:
            code, t_new, h_prop = _next_step_end(t, h_abs, t_end, direction, fixed, step_ts,
                                                 n_acc, n_steps, max_steps, min_step)
            if code != OK:
                status = code
                t_fail = t
                aux = min_step
                break
            h = t_new - t
            if not fixed:
                h_abs = abs(h)
            # start_step: recompute J when marked stale
            if stale or not have_J:
                code, used = _jacobian(f, jac, use_jac, t, y, params, J, w1, w2, w3, psi)
                jac_nfe += used
                if code != OK:
                    status = code
                    t_fail = t
                    break
                sstats[0] += 1
                have_J = True
                fresh = True
                stale = False
                has_hM = False
            else:
                fresh = False
            at_jump = ji < n_jumps and t_new == jumps[ji]
            t_lim = np.nextafter(t_new, -direction * np.inf)
            for i in range(s):
                ti = t + c[i] * h
                if at_jump and direction * (ti - t_lim) > 0:
                    ti = t_lim
                times[i] = ti
            # prepare(h): refactor unless h is within REFACTOR_RATIO of the factor's h_M
            if not (has_hM and abs(h - h_M) <= refactor_ratio * abs(h_M)):
                hgm = h * gamma
                h_M = h
                has_hM = True
                sstats[1] += 1
                for i in range(n):
                    for j in range(n):
                        LU[i, j] = (1.0 if i == j else 0.0) - hgm * J[i, j]
                singular = _lu_factor(LU, piv, rs)
            n_steps += 1
            if singular:
                ok = False
            else:
                code, ok, E, slow, iters, eta, ns = _esdirk_attempt(
                    f, params, A, c, e, gamma, rtol, atol, t, y, k1, h, times, LU, piv, rs, G,
                    K, psi, g, dg, fg, scale, eta, consts)
                n_newton += iters
                sstats[3] += ns
                if code != OK:
                    status = code
                    t_fail = t
                    break
            if not ok:
                if not fresh and not retried:
                    # a Jacobian from an earlier state: recompute it here, retry the step
                    # (the failed attempt counts as rejected: n_steps = accepted + rejected)
                    stale = True
                    retried = True
                    n_rej += 1
                    continue
                if fixed:
                    status = DIVERGED
                    t_fail = t
                    aux = h
                    break
                h_abs *= shrink
                rejected = True
                n_rej += 1
                continue
            if fixed:
                if not math.isfinite(E):
                    status = NONFINITE
                    t_fail = t
                break
            accepted, factor, err_prev = _decide(E, rejected, pi, exp_i, beta1, beta2,
                                                 err_prev, safety, min_factor, max_factor)
            h_abs *= factor
            if accepted and h_prop >= 0.0:
                h_abs = max(h_abs, h_prop)  # a shortened step does not shrink the next
            if accepted:
                break
            rejected = True
            n_rej += 1
        if status != OK:
            break
        stale = stale or slow
        errs = _grow1(errs, n_acc)
        errs[n_acc] = E
        while q < n_out and direction * (t_out[q] - t_new) <= 0:
            # the cubic Hermite weights of ESDIRKTableau.dense_weights on the slopes
            th = (t_out[q] - t) / h
            base = th + th * (th - 1.0) * (1.0 - 2.0 * th)
            for i in range(n):
                acc = 0.0
                for j in range(s):
                    wj = A[s - 1, j] * base
                    if j == 0:
                        wj += th * (th - 1.0) ** 2
                    if j == s - 1:
                        wj += th * th * (th - 1.0)
                    if wj != 0.0:
                        acc += wj * K[j, i]
                ys[q, i] = y[i] + h * acc
            out_step[q] = n_acc
            out_theta[q] = th
            q += 1
        Gs = _grow3(Gs, n_acc)
        Ks = _grow3(Ks, n_acc)
        tms = _grow2(tms, n_acc)
        Gs[n_acc] = G
        Ks[n_acc] = K
        tms[n_acc] = times
        n_acc += 1
        t = t_new
        for i in range(n):
            y[i] = G[s - 1, i]
        ts = _grow1(ts, n_acc)
        states = _grow2(states, n_acc)
        ts[n_acc] = t
        states[n_acc] = y
        if ji < n_jumps and t == jumps[ji]:
            # a declared discontinuity: restart as at t0 (the FSAL slope is stale across it)
            ji += 1
            err_prev = 1e-4
            nfe += 1
            if not _eval(f, t, y, params, k1):
                status = BAD_SHAPE
                t_fail = t
                break
            if not fixed:
                if has_first:
                    h_abs = first_step
                else:
                    h_abs, okf = _initial_step(f, t, y, k1, params, direction, error_order,
                                               rtol, atol, interval, w1, w2, w3)
                    nfe += 1
                    if not okf:
                        status = BAD_SHAPE
                        t_fail = t
                        break
            stale = True
        else:
            for i in range(n):
                k1[i] = K[s - 1, i]
    stats[0] = n_steps
    stats[1] = n_acc
    stats[2] = n_rej
    stats[3] = nfe + n_newton + jac_nfe
    sstats[2] = n_newton
    if status == OK:
        t_fail = np.nan
    return (ys, ts[: n_acc + 1], states[: n_acc + 1], Gs[:n_acc], Ks[:n_acc], tms[:n_acc],
            errs[:n_acc], out_step, out_theta, stats, sstats, status, t, t_fail, aux, q)


# ---------------------------------------------------------------------------------------
# Rodas5
# ---------------------------------------------------------------------------------------
def _rosenbrock_solve(f, jac, use_jac, y0, f0, t_out, params, a, cc, alpha, gammas, m,
                      e, gamma, order, error_order, rtol, atol, pi, has_first, first_step,
                      max_steps, step_ts, jumps, consts):  # pragma: no cover - compiled
    safety, min_factor, max_factor = consts[6], consts[7], consts[8]
    n = y0.shape[0]
    s = alpha.shape[0]
    n_out = t_out.shape[0]
    ys = np.full((n_out, n), np.nan)
    ys[0] = y0
    out_step = np.full(n_out, -1, dtype=np.int64)
    out_theta = np.zeros(n_out)
    cap = 16
    ts = np.empty(cap)
    states = np.empty((cap, n))
    errs = np.empty(cap)
    stats = np.zeros(4, dtype=np.int64)
    sstats = np.zeros(4, dtype=np.int64)   # n_jac, n_lu
    y = y0.copy()
    fy = f0.copy()
    ynew = np.empty(n)
    fnew = np.empty(n)
    ft = np.empty(n)
    J = np.empty((n, n))
    LU = np.empty((n, n))
    piv = np.zeros(n, dtype=np.int64)
    rs = np.ones(n)
    U = np.empty((s, n))
    arg = np.empty(n)
    fi = np.empty(n)
    w1 = np.empty(n)
    w2 = np.empty(n)
    w3 = np.empty(n)
    w4 = np.empty(n)
    t0 = t_out[0]
    t1 = t_out[n_out - 1]
    direction = 1.0 if t1 >= t0 else -1.0
    interval = abs(t1 - t0)
    fixed = step_ts.shape[0] > 0
    n_jumps = jumps.shape[0]
    ji = 0
    root_eps = math.sqrt(_EPS)
    nfe = 0
    jac_nfe = 0
    exp_i = -1.0 / (error_order + 1)
    beta1 = 7.0 / (10.0 * order)
    beta2 = 2.0 / (5.0 * order)
    err_prev = 1e-4
    ts[0] = t0
    states[0] = y0
    status = OK
    t_fail = t0
    aux = 0.0
    h_abs = 0.0
    if not fixed:
        if has_first:
            h_abs = first_step
        else:
            h_abs, okf = _initial_step(f, t0, y0, fy, params, direction, error_order, rtol,
                                       atol, interval, w1, w2, w3)
            nfe += 1
            if not okf:
                status = BAD_SHAPE
    q = 1
    while q < n_out and t_out[q] == t0:
        ys[q] = y0
        q += 1
    t = t0
    n_acc = 0
    n_steps = 0
    n_rej = 0
    n_jac = 0
    have_J = False
    E = 0.0
    h = 0.0
    t_new = t
    while status == OK and direction * (t1 - t) > 0:
        if fixed and n_acc + 1 >= step_ts.shape[0]:
            break
        min_step = 10.0 * abs(np.nextafter(t, direction * np.inf) - t)
        if not fixed and h_abs < min_step:
            h_abs = min_step
        while ji < n_jumps and direction * (jumps[ji] - t) <= 0:
            ji += 1
        t_end = jumps[ji] if ji < n_jumps else t1
        if q < n_out and direction * (t_out[q] - t_end) < 0:
            t_end = t_out[q]
        if not have_J:  # once per accepted state: rejected retries reuse it
            code, used = _jacobian(f, jac, use_jac, t, y, params, J, w1, w2, w3, w4)
            jac_nfe += used
            if code != OK:
                status = code
                t_fail = t
                break
            have_J = True
            n_jac += 1
            dt = root_eps * max(abs(t), 1.0) * direction
            nfe += 1
            if not _eval(f, t + dt, y, params, ft):
                status = BAD_SHAPE
                t_fail = t
                break
            for i in range(n):
                ft[i] = (ft[i] - fy[i]) / dt
        rejected = False
        while True:
            code, t_new, h_prop = _next_step_end(t, h_abs, t_end, direction, fixed, step_ts,
                                                 n_acc, n_steps, max_steps, min_step)
            if code != OK:
                status = code
                t_fail = t
                aux = min_step
                break
            h = t_new - t
            if not fixed:
                h_abs = abs(h)
            at_jump = ji < n_jumps and t_new == jumps[ji]
            t_cap = np.nextafter(t_new, -direction * np.inf)
            inv = 1.0 / (h * gamma)
            for i in range(n):
                for j in range(n):
                    LU[i, j] = (inv if i == j else 0.0) - J[i, j]
            singular = _lu_factor(LU, piv, rs)
            n_steps += 1
            if not singular:
                for st in range(s):
                    ti = t + alpha[st] * h
                    if at_jump and direction * (ti - t_cap) > 0:
                        ti = t_cap
                    if st == 0:
                        for i in range(n):
                            fi[i] = fy[i]
                    else:
                        for i in range(n):
                            acc = y[i]
                            for j in range(st):
                                acc = acc + a[st, j] * U[j, i]
                            arg[i] = acc
                        nfe += 1
                        if not _eval(f, ti, arg, params, fi):
                            status = BAD_SHAPE
                            t_fail = t
                            break
                    gh = gammas[st] * h
                    for i in range(n):
                        acc = fi[i] + gh * ft[i]
                        for j in range(st):
                            acc = acc + (cc[st, j] / h) * U[j, i]
                        U[st, i] = acc
                    _lu_solve(LU, piv, rs, U[st], U[st])
                if status != OK:
                    break
                acc2 = 0.0
                for i in range(n):
                    yi = y[i]
                    for st in range(s):
                        if m[st] != 0.0:
                            yi = yi + m[st] * U[st, i]
                    ynew[i] = yi
                    err = 0.0
                    first = True
                    for st in range(s):
                        if e[st] != 0.0:
                            if first:
                                err = e[st] * U[st, i]
                                first = False
                            else:
                                err = err + e[st] * U[st, i]
                    sc = atol + rtol * max(abs(y[i]), abs(yi))
                    r = err / sc
                    acc2 += r * r
                E = math.sqrt(acc2 / n)
            else:
                E = math.inf
            if fixed:
                if not math.isfinite(E):
                    status = NONFINITE
                    t_fail = t
                break
            accepted, factor, err_prev = _decide(E, rejected, pi, exp_i, beta1, beta2,
                                                 err_prev, safety, min_factor, max_factor)
            h_abs *= factor
            if accepted and h_prop >= 0.0:
                h_abs = max(h_abs, h_prop)  # a shortened step does not shrink the next
            if accepted:
                break
            rejected = True
            n_rej += 1
        if status != OK:
            break
        errs = _grow1(errs, n_acc)
        errs[n_acc] = E
        nfe += 1
        if not _eval(f, t_new, ynew, params, fnew):
            status = BAD_SHAPE
            t_fail = t
            break
        while q < n_out and direction * (t_out[q] - t_new) <= 0:
            th = (t_out[q] - t) / h
            h00 = 1.0 - th * th * (3.0 - 2.0 * th)
            h10 = th * (1.0 - th) ** 2
            h01 = th * th * (3.0 - 2.0 * th)
            h11 = th * th * (th - 1.0)
            for i in range(n):
                ys[q, i] = h00 * y[i] + h01 * ynew[i] + (h * h10) * fy[i] + \
                    (h * h11) * fnew[i]
            out_step[q] = n_acc
            out_theta[q] = th
            q += 1
        n_acc += 1
        t = t_new
        for i in range(n):
            y[i] = ynew[i]
            fy[i] = fnew[i]
        have_J = False
        ts = _grow1(ts, n_acc)
        states = _grow2(states, n_acc)
        ts[n_acc] = t
        states[n_acc] = y
        if ji < n_jumps and t == jumps[ji]:
            ji += 1
            err_prev = 1e-4
            nfe += 1
            if not _eval(f, t, y, params, fy):  # the slope on the far side of the jump
                status = BAD_SHAPE
                t_fail = t
                break
            if not fixed:
                if has_first:
                    h_abs = first_step
                else:
                    h_abs, okf = _initial_step(f, t, y, fy, params, direction, error_order,
                                               rtol, atol, interval, w1, w2, w3)
                    nfe += 1
                    if not okf:
                        status = BAD_SHAPE
                        t_fail = t
                        break
    stats[0] = n_steps
    stats[1] = n_acc
    stats[2] = n_rej
    stats[3] = nfe + jac_nfe
    sstats[0] = n_jac
    sstats[1] = n_steps
    if status == OK:
        t_fail = np.nan
    return (ys, ts[: n_acc + 1], states[: n_acc + 1], errs[:n_acc], out_step, out_theta,
            stats, sstats, status, t, t_fail, aux, q)


# ---------------------------------------------------------------------------------------
# compiled once, by signature
# ---------------------------------------------------------------------------------------
_COMPILED: dict = {}


def _types():
    t = numba.types
    vec, mat, f64, i64 = t.float64[::1], t.float64[:, ::1], t.float64, t.int64
    ftype = t.FunctionType(vec(f64, vec, vec))
    jtype = t.FunctionType(mat(f64, vec, vec))
    return t, vec, mat, f64, i64, ftype, jtype


def _kernel(kind: str):
    """The integrator ``kind`` ("esdirk" or "rosenbrock") compiled for the function-pointer
    types of ``f`` and ``jac`` (once per process; Numba's disk cache keeps it across)."""
    fn = _COMPILED.get(kind)
    if fn is None:
        t, vec, mat, f64, i64, ftype, jtype = _types()
        if kind == "esdirk":
            sig = (ftype, jtype, t.boolean, vec, vec, vec, vec, mat, vec, vec, f64, i64, i64,
                   f64, f64, t.boolean, t.boolean, f64, i64, vec, vec, vec)
            fn = jit(signature=sig)(_esdirk_solve)
        else:
            sig = (ftype, jtype, t.boolean, vec, vec, vec, vec, mat, mat, vec, vec, vec, vec,
                   f64, i64, i64, f64, f64, t.boolean, t.boolean, f64, i64, vec, vec, vec)
            fn = jit(signature=sig)(_rosenbrock_solve)
        _COMPILED[kind] = fn
    return fn


@jit(signature=numba.types.float64[:, ::1](numba.types.float64, numba.types.float64[::1],
                                           numba.types.float64[::1]))
def _no_jac(t, y, params):  # pragma: no cover - compiled
    """Stands in for ``jac`` when ``J`` is formed by differences (never called)."""
    return np.empty((0, 0))


def _check_signature(fn, what: str, result) -> None:
    """Raise ``TypeError`` unless the Numba function ``fn`` compiled for ``(float64,
    float64[::1], float64[::1])`` returns exactly ``result``.

    A first-class function call does not check the result's layout: a field returning a
    strided view (``out[::2]``) or a transposed Jacobian (``J.T``) would be read as if
    C-contiguous, a silently wrong solution. The caller falls back to the Python loop."""
    t = numba.types
    args = (t.float64, t.float64[::1], t.float64[::1])
    try:
        cres = fn.get_compile_result(numba.core.typing.Signature(None, args, None))
    except Exception as err:  # compilation disabled for this signature, typing failed
        raise TypeError(f"{what} has no float64 build: {err}") from err
    got = cres.signature.return_type
    if got != result:
        raise TypeError(f"{what} returns {got}, the compiled stiff loop needs {result}")


def _check_fields(f, jac) -> None:
    t = numba.types
    _check_signature(f, "f", t.float64[::1])
    if jac is not None:
        _check_signature(jac, "jac", t.float64[:, ::1])


def esdirk_solve(f, jac, y0, f0, t_out, params, A, c, e, gamma, order, error_order, rtol,
                 atol, pi, first_step, max_steps, step_ts, jumps, consts):
    """Integrate ``dy/dt = f(t, y, params)`` over ``t_out`` with an ESDIRK pair, compiled.

    Parameters
    ----------
    f : Numba function
        ``f(t, y, params) -> float64[::1]`` with the float64 function-pointer signature.
    jac : Numba function or None
        ``jac(t, y, params) -> float64[:, ::1]`` (n, n); ``None``: forward differences.
    y0, f0 : ndarray (n,)
        Initial state and ``f(t_out[0], y0)`` (already evaluated by the caller).
    t_out : ndarray (T,)
        Output times, monotone; ``t_out[0]`` is the initial time.
    params : ndarray
        Flat float64 parameters (empty when there are none).
    A, c, e, gamma, order, error_order
        The tableau (``ESDIRKTableau``).
    rtol, atol : float
        Scalar tolerances of the error norm.
    pi : bool
        PI controller (else the I controller).
    first_step : float or None
        Initial ``|h|``; ``None``: Hairer's estimate.
    max_steps : int
        Budget of attempted steps.
    step_ts : ndarray
        Step times to replay (empty: adaptive).
    jumps : ndarray
        Declared discontinuities strictly inside the interval, in integration order.
    consts : ndarray (9,)
        ``REFACTOR_RATIO, SLOW_RATE, SLOW_ITERS, MAX_ITERS, KAPPA, NEWTON_SHRINK, SAFETY,
        MIN_FACTOR, MAX_FACTOR`` of the Python loop.

    Returns
    -------
    tuple
        ``(ys, ts, states, Gs, Ks, times, errs, out_step, out_theta, stats, stiff_stats,
        code, t_last, t_fail, aux, n_reached)``: outputs, accepted step times and states,
        per accepted step the stages (N, s, n) and stage times (N, s), scaled errors,
        output bookkeeping, ``[n_steps, n_accepted, n_rejected, nfe]``, ``[n_jac, n_lu,
        n_newton, n_linear_solves]``, a status code, the time reached, the time of the
        failure, the failure's step (``min_step`` or ``h``) and the outputs computed.
        Raises ``TypeError``/``TypingError`` when ``f`` or ``jac`` lacks the signature.
    """
    _check_fields(f, jac)
    return _kernel("esdirk")(
        f, _no_jac if jac is None else jac, jac is not None, y0, f0, t_out, params, A, c, e,
        float(gamma), int(order), int(error_order), float(rtol), float(atol), bool(pi),
        first_step is not None, float(first_step or 0.0), int(max_steps), step_ts, jumps,
        consts)


def rosenbrock_solve(f, jac, y0, f0, t_out, params, a, cc, alpha, gammas, m, e, gamma,
                     order, error_order, rtol, atol, pi, first_step, max_steps, step_ts,
                     jumps, consts):
    """Integrate with a Rosenbrock pair (Rodas5) in transformed variables, compiled.

    ``a``, ``cc`` (s, s) strictly lower triangular, ``alpha``, ``gammas``, ``m`` (the
    solution weights) and ``e`` (``m − m̂``) of ``RosenbrockTableau``; the other arguments
    as in :func:`esdirk_solve`. Returns ``(ys, ts, states, errs, out_step, out_theta,
    stats, stiff_stats, code, t_last, t_fail, aux, n_reached)`` with ``stiff_stats``
    ``[n_jac, n_lu, 0, 0]``.
    """
    _check_fields(f, jac)
    return _kernel("rosenbrock")(
        f, _no_jac if jac is None else jac, jac is not None, y0, f0, t_out, params, a, cc,
        alpha, gammas, m, e, float(gamma), int(order), int(error_order), float(rtol),
        float(atol), bool(pi), first_step is not None, float(first_step or 0.0),
        int(max_steps), step_ts, jumps, consts)
