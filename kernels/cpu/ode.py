"""Numba kernels for explicit Runge–Kutta integration (:mod:`diffsolve.ode`).

Two kinds of kernel live here:

- *stage kernels* used by the Python-driven step loop (any vector field ``f``):
  :func:`rk_combine` forms a stage argument / dense output ``y + h Σ_j a_j K[j]`` in one
  pass and :func:`rk_error_norm` the scaled RMS norm of the embedded error estimate, so a
  step costs two small compiled calls per stage instead of a handful of NumPy
  temporaries. Their CuPy twins in :mod:`diffsolve.kernels.cuda.ode` have the same
  signatures.
- the *compiled integrator* :func:`rk_solve`, which runs the whole adaptive loop (stages,
  error norm, step-size control, dense output, records for the adjoint) in nopython mode
  for a vector field that is itself a Numba ``@njit`` function ``f(t, y, params)``. It has
  no GPU twin: a Numba CPU function cannot run on the GPU.

Arrays are C-contiguous; states are 1-D ``(n,)``, stages ``(s, n)``.
"""

from __future__ import annotations

import math
import weakref

import numba
import numpy as np
from numba.typed import List

from ._config import jit

__all__ = ["fits_pointer", "is_jitted", "rk_combine", "rk_combine_rows", "rk_dense_rows",
           "rk_error_norm",
           "rk_error_norm_rows", "rk_reverse", "rk_solve", "rk_solve_batch", "rows_commit",
           "rows_decide", "rows_next_steps", "rows_output_seeds",
           "rows_stage_cotangents"]


@jit()
def rk_combine(y, K, coeffs, h, out):  # pragma: no cover - compiled
    """``out = y + h * Σ_{j < m} coeffs[j] * K[j]`` with ``m = len(coeffs)``; returns out.

    ``y``, ``out``: (n,); ``K``: (s, n) with ``s >= m``; ``h`` a float. (A Numba
    dispatcher called directly: this is on the per-stage hot path of the Python loop.)
    """
    n = y.shape[0]
    m = coeffs.shape[0]
    for i in range(n):
        acc = 0.0
        for j in range(m):
            acc += coeffs[j] * K[j, i]
        out[i] = y[i] + h * acc
    return out


@jit()
def rk_error_norm(y, y_new, K, e, h, rtol, atol):  # pragma: no cover - compiled
    """``sqrt(mean_i ((h Σ_j e_j K[j, i]) / (atol + rtol max(|y_i|, |y_new_i|)))²))``.

    The scaled error of Hairer, Nørsett & Wanner, Solving ODEs I, §II.4. Returns a float.
    """
    n = y.shape[0]
    m = e.shape[0]
    acc = 0.0
    for i in range(n):
        err = 0.0
        for j in range(m):
            err += e[j] * K[j, i]
        sc = atol + rtol * max(abs(y[i]), abs(y_new[i]))
        r = h * err / sc
        acc += r * r
    return math.sqrt(acc / max(n, 1))


@jit()
def rk_combine_rows(Y, K, coeffs, h, out, acc):  # pragma: no cover - compiled
    """:func:`rk_combine` per row of a batch: ``out[b] = Y[b] + h[b] Σ_j coeffs[j] K[j, b]``.

    ``Y``, ``out``: (B, n) C-contiguous; ``K``: (s, B, n) C-contiguous with
    ``s >= len(coeffs)``; ``h``: (B,); ``acc``: a float64 scratch of B·n entries, or an
    empty array where ``out`` is float64 (the sums then accumulate in ``out`` itself, the
    same values in one buffer less: 1.4x faster at B·n = 4096). Each entry's arithmetic is
    :func:`rk_combine`'s, in the same order: the sum over j from 0.0 in j order, in float64,
    then ``y + h·sum`` (the vectorised batch then takes the steps its rows' own solves
    take, to the last bit of the error estimate, whose cancellation would magnify a
    reordered sum). The loops run over the flat batch (contiguous 1-D loops that
    vectorise). Returns ``out``.
    """
    n_rows, n = Y.shape
    N = n_rows * n
    Yf = Y.reshape(N)
    of = out.reshape(N)
    Kf = K.reshape((K.shape[0], N))
    if acc.shape[0] == 0:  # float64 out: accumulate in place
        _stage_sums(of, Kf, coeffs, N)
        _add_scaled_rows(of, Yf, h, of, n_rows, n)
    else:
        _stage_sums(acc, Kf, coeffs, N)
        _add_scaled_rows(of, Yf, h, acc, n_rows, n)
    return out


@jit(inline="always")
def _stage_sums(buf, Kf, coeffs, N):  # pragma: no cover - compiled
    """``buf[:N] = Σ_j coeffs[j] Kf[j]`` from 0.0 in j order (1-D views: the loops
    vectorise, 2x faster than indexing ``Kf[j, k]``)."""
    for k in range(N):
        buf[k] = 0.0
    for j in range(coeffs.shape[0]):
        cj = coeffs[j]
        Kj = Kf[j]
        for k in range(N):
            buf[k] += cj * Kj[k]


@jit(inline="always")
def _add_scaled_rows(of, Yf, h, buf, n_rows, n):  # pragma: no cover - compiled
    """``of[b·n + i] = Yf[b·n + i] + h[b] buf[b·n + i]`` (``buf`` may be ``of``)."""
    for b in range(n_rows):
        hb = h[b]
        base = b * n
        for i in range(base, base + n):
            of[i] = Yf[i] + hb * buf[i]


@jit()
def rk_error_norm_rows(Y, Y_new, K, e, h, rtol, atol, out, acc):  # pragma: no cover
    """:func:`rk_error_norm` per row of a batch into ``out`` (B,), the same arithmetic
    order per row (``acc``: a float64 scratch of B·n entries; arrays C-contiguous)."""
    n_rows, n = Y.shape
    N = n_rows * n
    m = e.shape[0]
    Kf = K.reshape((K.shape[0], N))
    acc[:] = 0.0
    for j in range(m):
        ej = e[j]
        Kj = Kf[j]
        for k in range(N):
            acc[k] += ej * Kj[k]
    for b in range(n_rows):
        hb = h[b]
        total = 0.0
        for i in range(n):
            sc = atol + rtol * max(abs(Y[b, i]), abs(Y_new[b, i]))
            r = hb * acc[b * n + i] / sc
            total += r * r
        out[b] = math.sqrt(total / max(n, 1))
    return out


@jit()
def rk_dense_rows(Y, K, P, accept, t, t_new, h, t_out, direction, q, n_acc, ys, out_step,
                  out_theta):  # pragma: no cover - compiled
    """The dense outputs of a vectorised batch's accepted steps, written in place.

    For each accepted row ``b`` and each output time ``t_out[q]`` inside its step (``q``
    from ``q[b]`` on, while ``direction (t_out[q] - t_new[b]) <= 0``): ``θ = (t_out[q] -
    t[b]) / h[b]``, the continuous extension's weights ``w_j = Σ_k P[j, k] θ^(k+1)`` and
    ``ys[q, b] = Y[b] + h[b] Σ_j w_j K[j, b]`` (in :func:`rk_combine`'s order);
    ``out_step[b, q] = n_acc[b]``, ``out_theta[b, q] = θ``; ``q[b]`` advances past them.

    ``Y``: (B, n); ``K``: (s, B, n); ``P``: (s, m); ``accept``, ``t``, ``t_new``, ``h``,
    ``q``, ``n_acc``: (B,); ``t_out``: (T,); ``ys``: (T, B, n); ``out_step``,
    ``out_theta``: (B, T).
    """
    n_rows, n = Y.shape
    s, m_deg = P.shape
    T = t_out.shape[0]
    w = np.empty(s)
    acc = np.empty(n)
    for b in range(n_rows):
        if not accept[b]:
            continue
        hb = h[b]
        while q[b] < T and direction * (t_out[q[b]] - t_new[b]) <= 0:
            qq = q[b]
            theta = (t_out[qq] - t[b]) / hb
            for j in range(s):
                w[j] = 0.0
            pw = 1.0
            for k in range(m_deg):
                pw *= theta
                for j in range(s):
                    w[j] += P[j, k] * pw
            acc[:] = 0.0
            for j in range(s):
                wj = w[j]
                for i in range(n):
                    acc[i] += wj * K[j, b, i]
            for i in range(n):
                ys[qq, b, i] = Y[b, i] + hb * acc[i]
            out_step[b, qq] = n_acc[b]
            out_theta[b, qq] = theta
            q[b] = qq + 1


@jit()
def rows_next_steps(t, h_abs, fresh, rejected, running, n_steps, nonfinite_E, status,
                    t_fail, fail_min, t1, direction, max_steps, codes, h_out,
                    t_new_out):  # pragma: no cover - compiled
    """The next attempted step of every running row of a vectorised batch (host arrays).

    Per row, the checks and step choice of the single-trajectory loop before an attempt:
    a new step (``fresh``) starts at least ``10 ulp(t)`` long and clears ``rejected``; a row
    out of steps or under that minimum stops with status ``codes[0]`` (max_steps),
    ``codes[1]`` (non-finite slopes drove the underflow) or ``codes[2]`` (underflow); the
    step is clipped to ``t1``. Writes ``h_out`` (0 for rows not running) and
    ``t_new_out``; returns whether any row runs.
    """
    any_running = False
    inf_dir = direction * np.inf
    for b in range(t.shape[0]):
        tb = t[b]
        h_out[b] = 0.0
        t_new_out[b] = tb
        if not running[b]:
            continue
        min_step = 10.0 * abs(np.nextafter(tb, inf_dir) - tb)
        if fresh[b]:
            if h_abs[b] < min_step:
                h_abs[b] = min_step
            rejected[b] = False
        if n_steps[b] >= max_steps:
            status[b] = codes[0]
            t_fail[b] = tb
            running[b] = False
            continue
        if h_abs[b] < min_step:
            status[b] = codes[1] if nonfinite_E[b] else codes[2]
            t_fail[b] = tb
            fail_min[b] = min_step
            running[b] = False
            continue
        h = h_abs[b] * direction
        tn = tb + h
        if direction * (tn - t1) > 0:
            tn = t1
        h = tn - tb
        h_abs[b] = abs(h)
        h_out[b] = h
        t_new_out[b] = tn
        any_running = True
    return any_running


@jit()
def rows_commit(accept, Y, Y_new, K, s_last, t, t_new, h, E, t1, direction, n_acc, running,
                Y_out, rec_h, rec_t_end, rec_err):  # pragma: no cover - compiled
    """Commit an iteration of a vectorised batch (host arrays), row by row.

    An accepted row ``b`` moves to its new state and time: ``Y_out[b] = Y_new[b]``, the
    FSAL slope ``K[0, b] = K[s_last, b]``, ``t[b] = t_new[b]``, ``n_acc[b] += 1``, and it
    stops running once it reached ``t1``; the iteration's record gets ``h[b]``, ``t_new[b]``
    and its error ``E[b]``. Any other row keeps its state (``Y_out[b] = Y[b]``) and records
    ``h = 0`` and NaN time and error. ``Y``, ``Y_new``, ``Y_out``: (B, n); ``K``: (s, B, n);
    the others (B,). ``Y_out`` must be a new array: ``Y`` stays in the record of the
    accepted steps for the adjoint.
    """
    n_rows, n = Y.shape
    for b in range(n_rows):
        if accept[b]:
            for i in range(n):
                Y_out[b, i] = Y_new[b, i]
                K[0, b, i] = K[s_last, b, i]
            rec_h[b] = h[b]
            rec_t_end[b] = t_new[b]
            rec_err[b] = E[b]
            n_acc[b] += 1
            t[b] = t_new[b]
            if direction * (t1 - t[b]) <= 0:
                running[b] = False
        else:
            for i in range(n):
                Y_out[b, i] = Y[b, i]
            rec_h[b] = 0.0
            rec_t_end[b] = math.nan
            rec_err[b] = math.nan


@jit()
def rows_output_seeds(rows, qs, W, stages, h, ys_bar, y_bar, K_bar, live):  # pragma: no cover
    """What the dense outputs of one record of a vectorised batch send back, in place.

    For each output ``m`` (row ``rows[m]``, output index ``qs[m]``; sorted by row):
    ``y_bar[b] += ȳ_qb`` and, for each stage ``i`` in ``stages``, ``K_bar[i, b] += (h_b
    W[m, i]) ȳ_qb``: the reverse of ``y_q = y + h Σ_i b_i(θ_q) k_i`` with ``W[m] = b(θ_q)``.
    ``y_bar`` and ``K_bar[stages]`` are cleared first and ``live[stages]`` set. Each row's
    sums run over its outputs in order, one after the other (``np.add.reduceat`` groups
    some sums differently: the last bit may differ from it). ``ys_bar``: (T,
    B, n); ``y_bar``: (B, n); ``K_bar``: (s, B, n).
    """
    n = y_bar.shape[1]
    y_bar[:] = 0.0
    for i in stages:
        K_bar[i] = 0.0
        live[i] = True
    for m in range(rows.shape[0]):
        b = rows[m]
        q = qs[m]
        hb = h[b]
        for k in range(n):
            y_bar[b, k] += ys_bar[q, b, k]
        for i in stages:
            hw = hb * W[m, i]
            for k in range(n):
                K_bar[i, b, k] += hw * ys_bar[q, b, k]


@jit()
def rows_stage_cotangents(i, A, h, G_bar, K_bar, live, y_bar):  # pragma: no cover
    """The reverse of stage ``i``'s assignment ``g_i = y + h Σ_{j<i} a_ij k_j`` for every
    row of a vectorised batch, given the cotangent ``G_bar`` (B, n) of ``g_i``:
    ``K_bar[j] += (h_b a_ij) G_bar`` for each ``j < i`` with ``a_ij != 0`` (assigned where
    ``live[j]`` is False, which it then sets) and ``y_bar += G_bar``, in place. The
    arithmetic of ``diffsolve.ode._adjoint.reverse_stages`` with a column ``h``, entry by
    entry, in one pass instead of two array operations per coefficient. ``A``: (s, s);
    ``h``: (B,); ``K_bar``: (s, B, n); ``live``: (s,) bool.
    """
    n_rows, n = G_bar.shape
    for j in range(i):
        a = A[i, j]
        if a == 0.0:
            continue
        if live[j]:
            for b in range(n_rows):
                ha = h[b] * a
                for k in range(n):
                    K_bar[j, b, k] += ha * G_bar[b, k]
        else:
            for b in range(n_rows):
                ha = h[b] * a
                for k in range(n):
                    K_bar[j, b, k] = ha * G_bar[b, k]
            live[j] = True
    for b in range(n_rows):
        for k in range(n):
            y_bar[b, k] += G_bar[b, k]


@jit()
def rows_decide(E, t, running, rejected, err_prev, h_abs, n_steps, n_rej, nonfinite_E,
                last_nonfinite, pi, exp_i, beta1, beta2, factors,
                accept):  # pragma: no cover - compiled
    """Accept or reject each running row's attempted step from its scaled error ``E[b]``
    and scale its step size: ``diffsolve.ode._controller.Controller.decide`` and
    ``shrink`` per row, the same formulas in the same order (``**`` is libm's ``pow``, as
    in Python, so the factors are the Python loop's to the last bit; NumPy's vectorised
    ``power`` differs from it in the last bit for a few percent of arguments, which the
    error estimate's cancellation would amplify). ``factors``: the controller's
    ``(safety, min_factor, max_factor)``. Returns whether any row accepted."""
    safety, min_f, max_f = factors
    any_accept = False
    for b in range(E.shape[0]):
        accept[b] = False
        if not running[b]:
            continue
        n_steps[b] += 1
        Eb = E[b]
        if not math.isfinite(Eb):
            nonfinite_E[b] = True
            last_nonfinite[b] = t[b]
            h_abs[b] *= min_f
            rejected[b] = True
            n_rej[b] += 1
            continue
        nonfinite_E[b] = False
        if (pi and Eb <= 1.0) or ((not pi) and Eb < 1.0):
            if Eb == 0.0:
                factor = max_f
            elif pi:
                factor = min(max_f, max(min_f, safety * Eb ** (-beta1)
                                        * err_prev[b] ** beta2))
            else:
                factor = min(max_f, safety * Eb ** exp_i)
            if pi:
                err_prev[b] = max(Eb, 1e-4)
            if rejected[b]:
                factor = min(1.0, factor)
            h_abs[b] *= factor
            accept[b] = True
            any_accept = True
        else:
            h_abs[b] *= max(min_f, safety * Eb ** exp_i)
            rejected[b] = True
            n_rej[b] += 1
    return any_accept


# ---------------------------------------------------------------------------------------
# the compiled integrator
# ---------------------------------------------------------------------------------------
# status codes returned by rk_solve (decoded into messages by diffsolve.ode);
# NONFINITE: the step size underflowed right after a step with non-finite slopes, or a
# replayed (fixed) step produced them
OK, MAX_STEPS, UNDERFLOW, BAD_SHAPE, NONFINITE_F0, NONFINITE = 0, 1, 2, 3, 4, 5


@jit()
def _rms_scaled(x, sc):  # pragma: no cover - compiled
    acc = 0.0
    for i in range(x.shape[0]):
        r = x[i] / sc[i]
        acc += r * r
    return math.sqrt(acc / max(x.shape[0], 1))


@jit()
def _grow(a, n):  # pragma: no cover - compiled
    """``a`` (1-D) with room for index ``n`` (capacity doubled when full)."""
    if n < a.shape[0]:
        return a
    b = np.empty(2 * a.shape[0], dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


@jit()
def _grow2(a, n):  # pragma: no cover - compiled
    """``a`` (2-D) with room for row ``n``."""
    if n < a.shape[0]:
        return a
    b = np.empty((2 * a.shape[0], a.shape[1]), dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


# How the integrator calls the field. ``f(t, y, params) -> dy/dt`` returns a new array;
# an in-place field ``f(t, y, params, out)`` writes dy/dt into ``out`` (the stage row
# itself: no allocation per call, 29 -> 5.5 ns a call through a function pointer). The
# in-place build of the integrator is the same source with the second pair of helpers.
@jit()
def _f_value(f, t, y, params):  # pragma: no cover - compiled
    return f(t, y, params)


@jit()
def _f_stage(f, t, y, params, K, st):  # pragma: no cover - compiled
    ki = f(t, y, params)
    for i in range(K.shape[1]):
        K[st, i] = ki[i]


@jit()
def _f_value_inplace(f, t, y, params):  # pragma: no cover - compiled
    out = np.empty(y.shape[0], dtype=y.dtype)
    f(t, y, params, out)
    return out


@jit()
def _f_stage_inplace(f, t, y, params, K, st):  # pragma: no cover - compiled
    f(t, y, params, K[st])


def _solve_one(f, y0, t_out, params, A, c, e, P, order, error_order, rtol, atol, pi,
               first_step, max_steps, step_ts, want_stiff):  # pragma: no cover - compiled
    n = y0.shape[0]
    s = c.shape[0]
    n_out = t_out.shape[0]
    dtype = y0.dtype
    ys = np.full((n_out, n), np.nan, dtype=dtype)
    ys[0] = y0
    out_step = np.full(n_out, -1, dtype=np.int64)
    out_theta = np.zeros(n_out, dtype=np.float64)
    cap = 64
    ts = np.empty(cap, dtype=np.float64)
    states = np.empty((cap, n), dtype=dtype)
    errs = np.empty(cap, dtype=np.float64)
    stiff = np.empty(cap, dtype=np.float64)
    K = np.empty((s, n), dtype=dtype)
    G = np.empty((s, n), dtype=dtype)
    stats = np.zeros(4, dtype=np.int64)  # n_steps, n_accepted, n_rejected, nfe
    t0 = t_out[0]
    t1 = t_out[n_out - 1]
    direction = 1.0 if t1 >= t0 else -1.0
    status = OK
    t_fail = t0
    ts[0] = t0
    states[0] = y0
    f0 = _f_value(f, t0, y0, params)
    stats[3] += 1
    if f0.shape[0] != n:
        return ys, ts[:1], states[:1], errs[:0], stiff[:0], out_step, out_theta, stats, \
            BAD_SHAPE, t0
    K[0] = f0
    for i in range(n):
        if not math.isfinite(K[0, i]):
            return ys, ts[:1], states[:1], errs[:0], stiff[:0], out_step, out_theta, \
                stats, NONFINITE_F0, t0
    y = y0.copy()
    sc = np.empty(n, dtype=np.float64)
    fixed = step_ts.shape[0] > 0
    interval = abs(t1 - t0)
    if fixed:
        h_abs = 0.0
    elif first_step > 0:
        h_abs = first_step
    elif interval == 0.0:
        h_abs = 0.0
    else:
        # Hairer's initial step, in SciPy's form (common.select_initial_step)
        for i in range(n):
            sc[i] = atol + abs(y0[i]) * rtol
        d0 = _rms_scaled(y0, sc)
        d1 = _rms_scaled(K[0], sc)
        if d0 < 1e-5 or d1 < 1e-5:
            h0 = 1e-6
        else:
            h0 = 0.01 * d0 / d1
        h0 = min(h0, interval)
        y1 = np.empty(n, dtype=dtype)
        for i in range(n):
            y1[i] = y0[i] + h0 * direction * K[0, i]
        f1 = _f_value(f, t0 + h0 * direction, y1, params)
        stats[3] += 1
        diff = np.empty(n, dtype=np.float64)
        for i in range(n):
            diff[i] = f1[i] - K[0, i]
        d2 = _rms_scaled(diff, sc) / h0
        if d1 <= 1e-15 and d2 <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (error_order + 1))
        h_abs = min(100 * h0, h1, interval)
    exp_i = -1.0 / (error_order + 1)
    beta1 = 7.0 / (10.0 * order)
    beta2 = 2.0 / (5.0 * order)
    err_prev = 1e-4
    nonfinite_E = False
    t = t0
    n_acc = 0
    q = 1
    while q < n_out and t_out[q] == t0:
        ys[q] = y0
        out_step[q] = -1
        q += 1
    while direction * (t1 - t) > 0:
        if fixed and n_acc + 1 >= step_ts.shape[0]:
            break
        min_step = 10.0 * abs(np.nextafter(t, direction * np.inf) - t)
        if not fixed:
            if h_abs < min_step:
                h_abs = min_step
        rejected = False
        while True:
            if stats[0] >= max_steps:
                status = MAX_STEPS
                t_fail = t
                break
            if fixed:
                t_new = step_ts[n_acc + 1]
                h = t_new - t
            else:
                if h_abs < min_step:
                    status = NONFINITE if nonfinite_E else UNDERFLOW
                    t_fail = t
                    break
                h = h_abs * direction
                t_new = t + h
                if direction * (t_new - t1) > 0:
                    t_new = t1
                h = t_new - t
                h_abs = abs(h)
            for st in range(1, s):
                for i in range(n):
                    acc = 0.0
                    for j in range(st):
                        acc += A[st, j] * K[j, i]
                    G[st, i] = y[i] + h * acc
                _f_stage(f, t + c[st] * h, G[st], params, K, st)
            stats[0] += 1
            stats[3] += s - 1
            acc2 = 0.0
            for i in range(n):
                err = 0.0
                for j in range(s):
                    err += e[j] * K[j, i]
                sci = atol + rtol * max(abs(y[i]), abs(G[s - 1, i]))
                r = h * err / sci
                acc2 += r * r
            E = math.sqrt(acc2 / max(n, 1))
            nonfinite_E = not math.isfinite(E)
            if fixed:
                if nonfinite_E:
                    status = NONFINITE
                    t_fail = t
                break
            if nonfinite_E:
                h_abs *= 0.2
                rejected = True
                stats[2] += 1
                continue
            if (pi and E <= 1.0) or ((not pi) and E < 1.0):
                if E == 0.0:
                    factor = 10.0
                elif pi:
                    factor = min(10.0, max(0.2, 0.9 * E ** (-beta1) * err_prev ** beta2))
                else:
                    factor = min(10.0, 0.9 * E ** exp_i)
                if rejected:
                    factor = min(1.0, factor)
                if pi:
                    err_prev = max(E, 1e-4)
                h_abs *= factor
                break
            h_abs *= max(0.2, 0.9 * E ** exp_i)
            rejected = True
            stats[2] += 1
        if status != OK:
            break
        # accepted step n_acc: t -> t_new
        S = 0.0
        if want_stiff:
            num = 0.0
            den = 0.0
            for i in range(n):
                dk = K[s - 1, i] - K[s - 2, i]
                dg = G[s - 1, i] - G[s - 2, i]
                num += dk * dk
                den += dg * dg
            S = math.sqrt(num / den) if den > 0 else 0.0
        errs = _grow(errs, n_acc)
        stiff = _grow(stiff, n_acc)
        errs[n_acc] = E
        stiff[n_acc] = S
        while q < n_out and direction * (t_out[q] - t_new) <= 0:
            theta = (t_out[q] - t) / h
            for i in range(n):
                acc = 0.0
                for j in range(s):
                    bj = 0.0
                    pw = 1.0
                    for m in range(P.shape[1]):
                        pw *= theta
                        bj += P[j, m] * pw
                    acc += bj * K[j, i]
                ys[q, i] = y[i] + h * acc
            out_step[q] = n_acc
            out_theta[q] = theta
            q += 1
        n_acc += 1
        stats[1] += 1
        ts = _grow(ts, n_acc)
        states = _grow2(states, n_acc)
        ts[n_acc] = t_new
        for i in range(n):
            y[i] = G[s - 1, i]
            K[0, i] = K[s - 1, i]
        states[n_acc] = y
        t = t_new
    return ys, ts[: n_acc + 1], states[: n_acc + 1], errs[:n_acc], stiff[:n_acc], out_step, \
        out_theta, stats, status, t_fail


def rk_solve(f, y0, t_out, params, A, c, e, P, order, error_order, rtol, atol, pi,
             first_step, max_steps, step_ts, want_stiff):
    """Integrate ``dy/dt = f(t, y, params)`` from ``t_out[0]`` over ``t_out``, compiled.

    ``f`` must be a Numba ``@njit`` function returning a new 1-D array. The tableau is
    given in FSAL form (``A`` (s, s) with last row ``b``; ``c``; error weights ``e``;
    dense coefficients ``P`` (s, m)). ``pi``: PI controller (else the I controller that
    reproduces SciPy's RK45 step sequence); ``first_step <= 0``: Hairer's initial step;
    ``step_ts`` non-empty: replay those step times. Returns ``(ys, ts, states, errs,
    stiff, out_step, out_theta, stats, status, t_fail)``: outputs at ``t_out``, accepted
    step times, the state at each of them, per-step scaled error ``E`` and eigenvalue
    estimate ``‖k_s − k_{s−1}‖/‖g_s − g_{s−1}‖`` (Shampine's stiffness test), the step
    and θ each output was interpolated in, ``[n_steps, n_accepted, n_rejected, nfe]``, a
    status code (``OK``, ``MAX_STEPS``, ``UNDERFLOW``, ``BAD_SHAPE``, ``NONFINITE_F0``,
    ``NONFINITE``) and the time it refers to.
    """
    args = (y0, t_out, params, A, c, e, P, order, error_order, rtol, atol, pi, first_step,
            max_steps, step_ts, want_stiff)
    if y0.dtype == np.float64 and params.dtype == np.float64 and fits_inplace(f):
        return _compiled("pointer_inplace")(f, *args)
    if y0.dtype == np.float64 and params.dtype == np.float64 and fits_pointer(f):
        try:
            # (passed as the dispatcher itself: a value made once with numba's
            # CompileResultWAP would save the per-call address lookup, ≈ 30 µs, but has no
            # native entry point, so an exception raised in f would crash the process)
            return _compiled("pointer")(f, *args)
        except (numba.core.errors.TypingError, TypeError, ValueError):
            pass
    # f has another signature (float32, a non-contiguous result): specialise
    return _compiled("generic")(f, *args)


_POINTER_TYPES: tuple = ()


def _pointer_types():
    global _POINTER_TYPES
    if not _POINTER_TYPES:  # Numba type objects cost microseconds to build: made once
        t = numba.types
        vec = t.float64[::1]
        _POINTER_TYPES = ((t.float64, vec, vec), vec, (t.float64, vec, vec, vec),
                          t.UniTuple(vec, 2))
    return _POINTER_TYPES


# The answers of fits_inplace / fits_pointer per dispatcher (and vjp): a dispatcher only
# gains overloads, so an answer never goes stale; weak keys let the fields be freed.
_FITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _remembered(kind: str, f, vjp, check) -> bool:
    try:
        per_f = _FITS.setdefault(f, {})
        vjp_ref = weakref.ref(vjp) if vjp is not None else None
    except TypeError:  # not weak-referenceable: no cache
        return check()
    key = (kind, None if vjp is None else id(vjp))
    hit = per_f.get(key)
    if hit is None or (vjp is not None and hit[1]() is not vjp):
        hit = per_f[key] = (check(), vjp_ref)
    return hit[0]


def fits_inplace(f) -> bool:
    """Whether the ``@njit`` ``f`` is an in-place field ``f(t, y, params, out) -> None``
    (it writes dy/dt into ``out``) with the float64 signature the compiled integrator
    takes: four parameters, compiling for ``(float64, float64[::1], float64[::1],
    float64[::1])`` and returning nothing (remembered per dispatcher)."""
    return _remembered("inplace", f, None, lambda: _fits_inplace(f))


def _fits_inplace(f) -> bool:
    import inspect

    try:
        n_args = len(inspect.signature(f.py_func).parameters)
    except (TypeError, ValueError, AttributeError):
        return False
    if n_args != 4:
        return False
    vec = numba.types.float64[::1]
    return _returns(f, (numba.types.float64, vec, vec, vec), numba.types.none)


def inplace_twin(fn, name: str, **replace):
    """``fn`` (a plain function or a dispatcher's Python function) rebuilt under ``name``
    with some of the globals it reads replaced: the in-place build of a kernel, cached by
    Numba under its own name."""
    import types

    py = getattr(fn, "py_func", fn)
    twin = types.FunctionType(py.__code__, {**py.__globals__, **replace}, name,
                              py.__defaults__, py.__closure__)
    twin.__qualname__ = name
    twin.__module__ = py.__module__
    return twin


def allocating(f):
    """An ``@njit`` ``g(t, y, params) -> dy/dt`` calling the in-place field ``f``: what
    every path other than the compiled explicit integrator calls (compiled once per
    field, not cached: it closes over ``f``)."""
    @numba.njit
    def g(t, y, params):  # pragma: no cover - compiled
        out = np.empty(y.shape[0], dtype=y.dtype)
        f(t, y, params, out)
        return out

    return g


def fits_pointer(f, vjp=None) -> bool:
    """Whether the ``@njit`` ``f`` (and ``vjp``) compile for the first-class function types
    of the compiled kernels, their results included.

    ``f(float64, float64[::1], float64[::1]) -> float64[::1]``;
    ``vjp(float64, float64[::1], float64[::1], float64[::1]) -> (float64[::1],
    float64[::1])``. Checked here because Numba's own check is not enough: a function
    whose result has another type (a non-contiguous view) is refused when first passed as
    a function pointer, but once compiled for those argument types it is accepted the
    next time and its result then read with the wrong layout (wrong numbers, no error).
    """
    def check():
        f_args, f_ret, v_args, v_ret = _pointer_types()
        return _returns(f, f_args, f_ret) and (vjp is None or _returns(vjp, v_args, v_ret))

    return _remembered("pointer", f, vjp, check)


def _returns(fn, args, ret) -> bool:
    cres = fn.overloads.get(args)
    if cres is None:
        try:
            fn.compile(args)
        except (numba.core.errors.NumbaError, TypeError, ValueError):
            return False  # it does not compile for these argument types
        cres = fn.overloads.get(args)
        if cres is None:
            return False
    return cres.signature.return_type == ret


_COMPILED: dict = {}


def _compiled(kind: str):
    """The integrator compiled once for any ``f`` with the float64 signature, or per ``f``.

    ``"pointer"``: ``f`` is typed as a first-class function
    ``float64[::1](float64, float64[::1], float64[::1])``, so the integrator is compiled
    once and cached on disk like every other kernel (a Numba function that takes a
    dispatcher argument is specialised per ``f`` and cannot be cached: several seconds of
    compilation per new vector field and process). ``"generic"``: that specialisation,
    for vector fields of another signature (float32 states).
    """
    fn = _COMPILED.get(kind)
    if fn is None:
        if kind == "pointer_inplace":
            t = numba.types
            vec, mat, f64, i64 = t.float64[::1], t.float64[:, ::1], t.float64, t.int64
            ftype = t.FunctionType(t.none(f64, vec, vec, vec))
            sig = (ftype, vec, vec, vec, mat, vec, vec, mat, i64, i64, f64, f64, t.boolean,
                   f64, i64, vec, t.boolean)
            fn = jit(signature=sig)(inplace_twin(
                _solve_one, "_solve_one_inplace", _f_value=_f_value_inplace,
                _f_stage=_f_stage_inplace))
        elif kind == "pointer":
            t = numba.types
            vec, mat, f64, i64 = t.float64[::1], t.float64[:, ::1], t.float64, t.int64
            ftype = t.FunctionType(vec(f64, vec, vec))
            sig = (ftype, vec, vec, vec, mat, vec, vec, mat, i64, i64, f64, f64, t.boolean,
                   f64, i64, vec, t.boolean)
            fn = jit(signature=sig)(_solve_one)
            global _solve_one_ptr
            _solve_one_ptr = fn
        else:
            fn = jit()(_solve_one)
        _COMPILED[kind] = fn
    return fn


def is_jitted(f) -> bool:
    """Whether ``f`` is a Numba dispatcher (an ``@njit`` function) usable by :func:`rk_solve`."""
    from numba.core.dispatcher import Dispatcher

    return isinstance(f, Dispatcher)


# ---------------------------------------------------------------------------------------
# the compiled discrete adjoint
# ---------------------------------------------------------------------------------------
def _reverse(f, vjp, ts, states, ys_bar, out_step, out_theta, params, A, c, e, P, rtol, atol,
             rE_bar, rS_bar):  # pragma: no cover - compiled
    n = states.shape[1]
    s = c.shape[0]
    N = ts.shape[0] - 1
    n_out = ys_bar.shape[0]
    n_p = params.shape[0]
    a = np.zeros(n)
    p_bar = np.zeros(n_p)
    K = np.empty((s, n))
    G = np.empty((s, n))
    Kbar = np.empty((s, n))
    Gbar = np.empty((s, n))
    touched = np.zeros(s, dtype=np.bool_)
    gtouched = np.zeros(s, dtype=np.bool_)
    ybar = np.empty(n)
    q = n_out - 1
    for step in range(N - 1, -1, -1):
        y = states[step]
        t = ts[step]
        h = ts[step + 1] - t
        # recompute the stages of this step
        k0 = f(t, y, params)
        for i in range(n):
            K[0, i] = k0[i]
            G[0, i] = y[i]
        for st in range(1, s):
            for i in range(n):
                acc = 0.0
                for j in range(st):
                    acc += A[st, j] * K[j, i]
                G[st, i] = y[i] + h * acc
            ki = f(t + c[st] * h, G[st], params)
            for i in range(n):
                K[st, i] = ki[i]
        Kbar[:] = 0.0
        Gbar[:] = 0.0
        touched[:] = False
        gtouched[:] = False
        ybar[:] = 0.0
        for i in range(n):
            Gbar[s - 1, i] = a[i]
        gtouched[s - 1] = True
        # outputs interpolated inside this step: y_n + h Σ b_j(θ) k_j
        while q >= 1 and out_step[q] == step:
            theta = out_theta[q]
            for j in range(s):
                w = 0.0
                pw = 1.0
                for m in range(P.shape[1]):
                    pw *= theta
                    w += P[j, m] * pw
                if w != 0.0:
                    touched[j] = True
                    for i in range(n):
                        Kbar[j, i] += h * w * ys_bar[q, i]
            for i in range(n):
                ybar[i] += ys_bar[q, i]
            q -= 1
        E_bar = rE_bar * abs(h)
        if E_bar != 0.0:
            tot = 0.0
            r = np.empty(n)
            sc = np.empty(n)
            for i in range(n):
                err = 0.0
                for j in range(s):
                    err += e[j] * K[j, i]
                sc[i] = atol + rtol * max(abs(y[i]), abs(G[s - 1, i]))
                r[i] = h * err / sc[i]
                tot += r[i] * r[i]
            E = math.sqrt(tot / n)
            if E > 0.0:
                for i in range(n):
                    g_err = E_bar / (n * E) * r[i] / sc[i]
                    g_sc = -E_bar / (n * E) * r[i] * r[i] / sc[i]
                    for j in range(s):
                        if e[j] != 0.0:
                            Kbar[j, i] += h * e[j] * g_err
                    if abs(y[i]) >= abs(G[s - 1, i]):
                        ybar[i] += rtol * g_sc * np.sign(y[i])
                    else:
                        Gbar[s - 1, i] += rtol * g_sc * np.sign(G[s - 1, i])
                for j in range(s):
                    if e[j] != 0.0:
                        touched[j] = True
        S_bar = rS_bar * abs(h)
        if S_bar != 0.0:
            nk = 0.0
            ng = 0.0
            for i in range(n):
                dk = K[s - 1, i] - K[s - 2, i]
                dg = G[s - 1, i] - G[s - 2, i]
                nk += dk * dk
                ng += dg * dg
            nk = math.sqrt(nk)
            ng = math.sqrt(ng)
            if nk > 0.0 and ng > 0.0:
                lam = nk / ng
                for i in range(n):
                    gk = S_bar / (nk * ng) * (K[s - 1, i] - K[s - 2, i])
                    gg = -S_bar * lam / (ng * ng) * (G[s - 1, i] - G[s - 2, i])
                    Kbar[s - 1, i] += gk
                    Kbar[s - 2, i] -= gk
                    Gbar[s - 1, i] += gg
                    Gbar[s - 2, i] -= gg
                touched[s - 1] = True
                touched[s - 2] = True
                gtouched[s - 2] = True
        for st in range(s - 1, -1, -1):
            if touched[st]:
                vy, vp = vjp(t + c[st] * h, G[st], params, Kbar[st])
                for i in range(n):
                    Gbar[st, i] += vy[i]
                for i in range(n_p):
                    p_bar[i] += vp[i]
                gtouched[st] = True
            if not gtouched[st]:
                continue
            for j in range(st):
                if A[st, j] != 0.0:
                    touched[j] = True
                    for i in range(n):
                        Kbar[j, i] += h * A[st, j] * Gbar[st, i]
            for i in range(n):
                ybar[i] += Gbar[st, i]
        for i in range(n):
            a[i] = ybar[i]
    return a, p_bar


def rk_reverse(f, vjp, ts, states, ys_bar, out_step, out_theta, params, A, c, e, P, rtol,
               atol, rE_bar, rS_bar):
    """The discrete adjoint of :func:`rk_solve`'s solve, compiled (float64).

    ``f`` and ``vjp(t, y, params, v) -> (v_y, v_params)`` are Numba ``@njit`` functions;
    ``ts``/``states``/``out_step``/``out_theta`` are what :func:`rk_solve` returned,
    ``ys_bar`` (T, n) the output cotangents, ``rE_bar``/``rS_bar`` those of
    ``R_E = Σ E_j |h_j|`` and ``R_S = Σ λ_j |h_j|``. Recomputes each step's stages and
    reverses them (``diffsolve.ode._adjoint`` has the same recursion in array code).
    Returns ``(a, p_bar)``: the cotangent reaching ``y0`` through the steps and that of
    ``params``.
    """
    return _compiled_reverse()(f, vjp, ts, states, ys_bar, out_step, out_theta, params, A, c,
                               e, P, rtol, atol, rE_bar, rS_bar)


def _compiled_reverse():
    """The discrete adjoint compiled once for ``f``/``vjp`` typed as first-class functions."""
    fn = _COMPILED.get("reverse")
    if fn is None:
        t = numba.types
        vec, mat, f64 = t.float64[::1], t.float64[:, ::1], t.float64
        ftype = t.FunctionType(vec(f64, vec, vec))
        vtype = t.FunctionType(t.UniTuple(vec, 2)(f64, vec, vec, vec))
        sig = (ftype, vtype, vec, mat, mat, t.int64[::1], vec, vec, mat, vec, vec, mat, f64,
               f64, f64, f64)
        fn = jit(signature=sig)(_reverse)
        _COMPILED["reverse"] = fn
    return fn


def _solve_batch(f, Y0, t_out, params, A, c, e, P, order, error_order, rtol, atol, pi,
                 first_step, max_steps, want_stiff):  # pragma: no cover - compiled
    results = List()
    no_steps = np.empty(0, dtype=np.float64)
    for b in range(Y0.shape[0]):
        results.append(_solve_one_ptr(f, Y0[b].copy(), t_out, params, A, c, e, P, order,
                                      error_order, rtol, atol, pi, first_step, max_steps,
                                      no_steps, want_stiff))
    return results


# the function-pointer build of the integrator, called by _solve_batch (set on first use so
# that the batch loop reuses that compiled code instead of compiling the integrator again)
_solve_one_ptr = None


def rk_solve_batch(f, Y0, t_out, params, A, c, e, P, order, error_order, rtol, atol, pi,
                   first_step, max_steps, want_stiff):
    """:func:`rk_solve` for every row of ``Y0`` (B, n), each with its own steps, in ONE call.

    Passing a Numba function to compiled code costs a lookup per call (~0.1 ms); looping
    over the batch inside the compiled code pays it once. ``f`` must have the float64
    signature. Returns a list of :func:`rk_solve` result tuples, one per trajectory.

    The serial loop: ``odeint`` calls the parallel
    :func:`diffsolve.kernels.cpu.ode_batch.rk_solve_batch` (same results, one thread per
    trajectory at a time); this one stays as the single-threaded reference to time it
    against.
    """
    if not fits_pointer(f):
        raise TypeError("rk_solve_batch: f must compile as f(float64, float64[::1], "
                        "float64[::1]) -> float64[::1]")
    fn = _COMPILED.get("batch")
    if fn is None:
        _compiled("pointer")
        t = numba.types
        vec, mat, f64, i64 = t.float64[::1], t.float64[:, ::1], t.float64, t.int64
        ftype = t.FunctionType(vec(f64, vec, vec))
        sig = (ftype, mat, vec, vec, mat, vec, vec, mat, i64, i64, f64, f64, t.boolean, f64,
               i64, t.boolean)
        fn = jit(signature=sig)(_solve_batch)
        _COMPILED["batch"] = fn
    return list(fn(f, Y0, t_out, params, A, c, e, P, order, error_order, rtol, atol, pi,
                   first_step, max_steps, want_stiff))
