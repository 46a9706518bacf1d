"""The discrete adjoint of a vectorised batch (``batch_mode="vectorized"``).

The forward (:mod:`._vectorized`) advanced every trajectory of the batch in the same
iterations, a trajectory that did not accept a step in an iteration holding ``h = 0``.
This reverses those iterations, last to first, with the reverse of one explicit
Runge–Kutta step (:mod:`._adjoint`, after Sandu 2006) applied to the whole batch: its
stages recomputed with one call of ``f`` on the batch each, its vector–Jacobian products
one call of the batched ``vjp`` (or of HIPS autograd on the batched ``f``) each. A row
that did not accept a step in an iteration has ``h = 0`` there: its stages all equal its
state and every cotangent its step would add is multiplied by ``h``, so its adjoint state
passes through unchanged (the cotangents the VJPs see for it are zero).

Gradients are those of the per-trajectory discrete adjoint (the same steps, the same
arithmetic order in the stage combinations), to rounding in the output seeds.
"""

from __future__ import annotations

import math

from .. import _backend as B
from ._adjoint import reverse_stages
from ._integrate import theta_powers
from ._vector_field import make_vjp
from ._vectorized import _StageArithmetic, _t_shape

__all__ = ["vectorized_reverse"]

np = B.host_namespace()


def _scatter_rows(xp, target, rows, vals):
    """``target[rows] += vals`` where ``rows`` may repeat (host ints, sorted)."""
    if rows.shape[0] == 0:
        return target
    # occurrence of each row within its run: repeated rows go into separate passes
    first = np.concatenate(([True], rows[1:] != rows[:-1]))
    run_start = np.maximum.accumulate(np.where(first, np.arange(rows.shape[0]), 0))
    occ = np.arange(rows.shape[0]) - run_start
    for o in range(int(occ.max()) + 1):
        sel = np.nonzero(occ == o)[0]
        idx = xp.asarray(rows[sel], device=B.device(target))
        target[idx, ...] = target[idx, ...] + vals[xp.asarray(sel, device=B.device(vals)),
                                                   ...]
    return target


def _output_seeds(xp, group, ys_bar, h, a, times, device, s, buf=None, live=None):
    """``(ȳ, K̄)``: what the outputs of one record send back to its rows' states and
    slopes, ``ȳ_b = Σ_q ȳ_qb`` and ``K̄_i,b = Σ_q h_b b_i(θ_q) ȳ_qb`` over the outputs
    ``q`` of row ``b`` in that step (``K̄_i`` None where every ``b_i(θ)`` is 0). On the
    host (``buf`` (s, B, n) and ``live`` (s,) given) the slopes' cotangents are written
    into ``buf``, ``live`` marks them, and ``K̄`` is ``buf``."""
    rows, qs, W, live_stages = group
    if buf is not None:  # one pass of the row kernel
        ybar = np.empty_like(a)
        B.get_kernel(np, "ode.rows_output_seeds")(rows, qs, W, live_stages, h, ys_bar, ybar,
                                                   buf, live)
        return ybar, buf
    yq = ys_bar[xp.asarray(qs, device=device), xp.asarray(rows, device=device), :]
    Kbar: list = [None] * s
    hw = times(h[rows][:, None] * W)  # (M, s): h b_i(θ)
    ybar = _scatter_rows(xp, xp.zeros_like(a), rows, yq)
    for i in live_stages:
        Kbar[i] = _scatter_rows(xp, xp.zeros_like(a), rows, hw[:, i:i + 1] * yq)
    return ybar, Kbar


def _output_groups(trajs, rec, PT):
    """The reached outputs computed inside steps, grouped by the record of their step:
    ``{record: (rows, qs, W)}`` with host ``rows``/``qs`` sorted by row and the dense
    weights ``W = b(θ)`` (``(M, s)``)."""
    out_step = np.stack([tr.out_step for tr in trajs])  # (B, T)
    out_theta = np.stack([tr.out_theta for tr in trajs])
    rows, qs = np.nonzero(out_step >= 0)
    if rows.shape[0] == 0:
        return {}
    r = rec.step_record[rec.step_start[rows] + out_step[rows, qs]]
    order = np.lexsort((qs, rows, r))  # by record, then row, then output
    rows, qs, r = rows[order], qs[order], r[order]
    W = theta_powers(out_theta[rows, qs], PT.shape[0]) @ PT
    bounds = np.nonzero(np.diff(r))[0] + 1
    starts = np.concatenate(([0], bounds))
    # per group, the stages whose weights are not all 0 (one segmented pass for all)
    live = np.logical_or.reduceat(W != 0.0, starts, axis=0)
    ends = [*bounds.tolist(), r.shape[0]]
    groups = {}
    for g, (lo, hi) in enumerate(zip(starts.tolist(), ends)):
        groups[int(r[lo])] = (rows[lo:hi], qs[lo:hi], np.ascontiguousarray(W[lo:hi]),
                              np.nonzero(live[g])[0])
    return groups


def _reverse_stages_host(kernel, A, h, a, K_bar, live, y_bar, p_bar, stage_vjp):
    """:func:`._adjoint.reverse_stages` on host arrays: the slopes' cotangents in one
    (s, B, n) buffer (``live`` marks those that arrived), each stage's reverse one call of
    the row kernel ``ode.rows_stage_cotangents`` (the same arithmetic)."""
    s = K_bar.shape[0]
    for i in range(s - 1, -1, -1):
        G_bar = a if i == s - 1 else None
        if live[i]:
            vy, vp = stage_vjp(i, K_bar[i])
            G_bar = vy if G_bar is None else G_bar + vy
            if vp is not None:
                p_bar = vp if p_bar is None else p_bar + vp
        if G_bar is None:
            continue
        kernel(i, A, h, np.asarray(G_bar), K_bar, live, y_bar)
    return y_bar, p_bar


def vectorized_reverse(fwd, ys_bar_all, want_t: bool):
    """``(y0_bar (B, n), p_bar or None, t_bar (T host floats), poisoned)`` for the
    output cotangents ``ys_bar_all`` (``(T, B, *shape)``) of a vectorised forward."""
    f, vjp, rec = fwd.f_batch
    xp, tab, trajs = fwd.xp, fwd.tab, fwd.trajs
    params = fwd.params_eff
    st = fwd.settings
    rtol, atol = st.norm_tolerances
    n_rows, n, shape = len(trajs), fwd.n, tuple(fwd.shape)
    T = int(fwd.t_out.shape[0])
    s = tab.n_stages
    y0 = fwd.y0
    dtype, device = y0.dtype, B.device(y0)
    full = (n_rows, *shape)
    t_shape = _t_shape(n_rows, shape)
    ys_bar = xp.reshape(xp.astype(ys_bar_all, dtype), (T, n_rows, n))
    # cotangents on outputs a failed row never reached make its gradients NaN (undefined)
    n_reached = np.asarray([tr.n_reached for tr in trajs])
    reached = np.arange(T)[:, None] < n_reached[None, :]  # (T, B)
    reached_dev = xp.asarray(reached, device=device)[:, :, None]
    nonzero = B.host_vector(xp.any(ys_bar != 0, axis=2))
    bad = np.any(nonzero & ~reached, axis=0)
    ys_bar = xp.where(reached_dev, ys_bar, xp.zeros_like(ys_bar))
    fvjp = make_vjp(f, vjp, params, full, xp, False)
    arith = _StageArithmetic(xp, tab, n_rows, n, rtol, atol, dtype)
    PT = tab.P.T.copy()
    groups = _output_groups(trajs, rec, PT)
    c = [float(v) for v in tab.c]
    A = tab.A
    a = xp.zeros((n_rows, n), dtype=dtype, device=device)
    p_bar = None
    K = xp.empty((s, n_rows, n), dtype=dtype, device=device)
    host = arith.kernel  # NumPy states: the row kernels, host arrays throughout
    if host:
        stage_kernel = B.get_kernel(np, "ode.rows_stage_cotangents")
        A_host = np.ascontiguousarray(B.host_numpy(A), dtype=np.float64)
        K_bar = np.empty((s, n_rows, n), dtype=dtype)
        live = np.zeros(s, dtype=bool)

    def call_f(t_col, Y):
        return f(t_col.reshape(t_shape), Y.reshape(full), params).reshape((n_rows, n))

    def times(t_host):
        if host:  # the times f sees on the host: y's dtype (as the forward passed them)
            return t_host.astype(dtype, copy=False)
        return xp.asarray(t_host, dtype=dtype, device=device)

    for r in range(len(rec.Y) - 1, -1, -1):
        t, h, Y = rec.t[r], rec.h[r], rec.Y[r]
        # the step's stages, recomputed as the forward formed them; the last stage's
        # slope is never read (g_s needs k_1 .. k_{s-1} only)
        h_dev = h if arith.kernel else times(h)
        hc = None if arith.kernel else h_dev[:, None]
        K[0, ...] = call_f(times(t), Y)
        G = [Y]
        for i in range(1, s):
            G.append(arith.combine(Y, K, i, h_dev, hc))
            if i < s - 1:
                K[i, ...] = call_f(times(t + c[i] * h), G[i])

        def stage_vjp(i, kb, t=t, h=h, G=G):
            vy, vp = fvjp(times(t + c[i] * h).reshape(t_shape), G[i].reshape((n_rows * n,)),
                          kb.reshape((n_rows * n,)))
            return vy.reshape((n_rows, n)), vp

        if host:
            live[:] = False
            if r in groups:
                ybar, _ = _output_seeds(xp, groups[r], ys_bar, h, a, times, device, s,
                                        K_bar, live)
            else:
                ybar = np.zeros_like(a)
            a, p_bar = _reverse_stages_host(stage_kernel, A_host, h, a, K_bar, live, ybar,
                                            p_bar, stage_vjp)
            continue
        Kbar: list = [None] * s
        ybar = xp.zeros_like(a)
        if r in groups:
            ybar, Kbar = _output_seeds(xp, groups[r], ys_bar, h, a, times, device, s)
        hcol = times(h)[:, None]
        Gbar: list = [None] * s
        Gbar[s - 1] = a
        a, p_bar = reverse_stages(A, hcol, Gbar, Kbar, ybar, p_bar, stage_vjp)
    through = a
    # outputs at the initial time are y0 itself
    t_out = fwd.t_out
    y0_flat = xp.reshape(y0, (n_rows, n))
    y0_bar = through
    for q in range(T):
        if q > 0 and t_out[q] != t_out[0]:
            break
        y0_bar = y0_bar + ys_bar[q, ...]
    t_bar = [0.0] * T
    if want_t:
        t_bar = _t_eval_cotangent(xp, call_f, trajs, ys_bar, t_out, through, y0_flat,
                                  n_reached, dtype, device)
    poisoned = bool(bad.any())
    if poisoned:
        y0_bar = xp.where(xp.asarray(bad, device=device)[:, None],
                          xp.full_like(y0_bar, math.nan), y0_bar)
        if p_bar is not None:
            p_bar = p_bar * math.nan
        t_bar = [math.nan] * T
    return y0_bar, p_bar, t_bar, poisoned


def _t_eval_cotangent(xp, call_f, trajs, ys_bar, t_out, through, y0, n_reached, dtype,
                      device):
    """:func:`._adjoint.t_eval_cotangent` summed over the rows, one batched ``f`` call per
    output time: ``t̄_q = Σ_b ȳ_qb · f(t_q, y_qb)`` (q ≥ 1), ``t̄_0 = −Σ_b a_b · f(t_0,
    y0_b)``. Rows that did not reach an output are evaluated at ``y0`` instead (their
    cotangent there is zero, and ``f`` of a NaN state could be NaN)."""
    T = int(t_out.shape[0])
    n_rows = len(trajs)
    out = [0.0] * T
    ys = xp.stack([tr.ys for tr in trajs], axis=1)  # (T, B, n)
    for q in range(1, T):
        if t_out[q] == t_out[0]:
            continue
        ok = n_reached > q
        if not ok.any():
            continue
        ok_dev = xp.asarray(ok, device=device)[:, None]
        yq = xp.where(ok_dev, ys[q, ...], y0)
        Fq = call_f(xp.full((n_rows,), float(t_out[q]), dtype=dtype, device=device), yq)
        out[q] = float(xp.sum(xp.where(ok_dev, ys_bar[q, ...] * Fq, xp.zeros_like(Fq))))
    moved = n_reached > 1  # a row that took no step sent nothing back to y0
    if moved.any():
        F0 = call_f(xp.full((n_rows,), float(t_out[0]), dtype=dtype, device=device), y0)
        mv = xp.asarray(moved, device=device)[:, None]
        out[0] = -float(xp.sum(xp.where(mv, through * F0, xp.zeros_like(F0))))
        if not math.isfinite(out[0]):
            out[0] = math.nan
    return out
