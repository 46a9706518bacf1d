"""Backward rules of odeint: the discrete adjoint and the continuous (backsolve) adjoint.

Discrete adjoint (exact gradient of the computed solution, step sizes held constant):
one explicit RK step reads ``g_i = y_n + h Σ_{j<i} a_ij k_j``, ``k_i = f(t_n + c_i h, g_i)``
with the FSAL stage ``g_s = y_{n+1}``; outputs inside the step are
``y_n + h Σ b_i(θ) k_i``, the error estimate is ``h Σ e_i k_i`` and the stiffness estimate
uses ``k_s − k_{s−1}`` and ``g_s − g_{s−1}``. Reversing those assignments gives, stage by
stage from ``i = s`` down to 1 (Hairer–Nørsett–Wanner's adjoint RK scheme written as
reverse-mode differentiation, cf. Sandu, "On the properties of Runge–Kutta discrete
adjoints", 2006)::

    ḡ_i += f_yᵀ(g_i) k̄_i,   p̄ += f_pᵀ(g_i) k̄_i,   k̄_j += h a_ij ḡ_i (j < i),   ȳ_n += ḡ_i

with ``ḡ_s`` seeded by the cotangent of ``y_{n+1}``. Only states are stored (every
``checkpoint_every``-th one; the others are recomputed segment by segment), the stages
are recomputed, so memory is ``O(N/k + k)`` states for ``N`` steps.

Backsolve: the augmented system ``[y, a, p̄]' = [f, −f_yᵀ a, −f_pᵀ a]`` integrated backwards
between consecutive output times with the same method and tolerances, ``y`` reset to the
stored output and ``a`` incremented by the output cotangent at each output time
(Chen et al., "Neural ordinary differential equations", NeurIPS 2018, Alg. 1).
"""

from __future__ import annotations

import math
from typing import Any

from .. import _backend as B
from ._integrate import STEP_DENSE_BATCH, Stepper, Trajectory, integrate, theta_powers

__all__ = ["backsolve_adjoint", "discrete_adjoint", "one_step_adjoint", "reverse_stages"]

np = B.host_namespace()


class _StepReverse:
    """Reverse of one RK step, reusing buffers across steps."""

    def __init__(self, stepper: Stepper, rhs, fvjp):
        xp = stepper.xp
        self.st, self.rhs, self.fvjp, self.xp = stepper, rhs, fvjp, xp
        tab = stepper.tab
        self.A = tab.A
        self.e = [float(v) for v in tab.e]
        self.K = xp.zeros_like(stepper.K)
        self.G = xp.zeros_like(stepper.G)
        # stages whose dense-output weight b_i(θ) is not identically zero
        self.dense_rows = [i for i in range(tab.P.shape[0]) if bool(np.any(tab.P[i] != 0))]
        self._PT: dict = {}
        # f and vjp from diffsolve.ode.from_torch: the step is rebuilt in torch and reversed
        # in one backward pass instead of one VJP call per stage
        self.graph = getattr(fvjp, "step_graph", None)

    def dense_PT(self, like):
        """``Pᵀ`` (``(m, s)``) in the namespace, dtype and device of ``like``."""
        PT = self._PT.get(like.dtype)
        if PT is None:
            PT = self._PT[like.dtype] = self.xp.asarray(
                self.st.tab.P.T.copy(), dtype=like.dtype, device=B.device(like))
        return PT

    def recompute(self, t, y, h):
        K, G = self.K, self.G
        K[0, :] = self.rhs(t, y)
        G[0, :] = y
        self.st.stages(self.rhs, t, y, h, K=K, G=G)

    def run(self, t, y, h, a_next, outputs, E_bar, S_bar, p_bar):
        """Cotangent of ``y_n`` given that of ``y_{n+1}`` (``a_next``, may be None).

        ``outputs``: list of ``(θ, ȳ_q)``; ``E_bar``/``S_bar``: cotangents of this step's
        error norm and |λ| estimate. Returns ``(ȳ_n, p̄)``.
        """
        xp, st = self.xp, self.st
        s = st.s
        if self.graph is not None:
            # the last slope f(y_{n+1}) feeds only the outputs, the error and the stiffness
            # estimates: without cotangents on those it is not evaluated
            need_last = bool(S_bar) or (bool(E_bar) and self.e[s - 1] != 0.0) or (
                (s - 1) in self.dense_rows and len(outputs) > 0)
            stages = self.graph.build(t, y, h, self.A, st.c, last=need_last)
            K: Any = None  # the stage values, where a cotangent needs them (below)
            G: Any = None
        else:
            self.recompute(t, y, h)
            K, G = self.K, self.G
        Kbar, ybar = self.output_seeds(h, outputs)
        Gbar: list = [None] * s
        if a_next is not None:
            Gbar[s - 1] = a_next
        add = _add
        if (E_bar or S_bar) and K is None:
            K, G = stages.K, stages.G
        if E_bar:
            y_new = G[s - 1, ...]
            err = h * self._weighted(self.e, K)
            sc = st.atol + st.rtol * xp.maximum(xp.abs(y), xp.abs(y_new))
            r = err / sc
            E = float(xp.sqrt(xp.mean(r ** 2)))
            if E > 0.0:
                n = r.shape[0]
                g_err = (E_bar / (n * E)) * r / sc          # dE/d err
                g_sc = -(E_bar / (n * E)) * r * r / sc       # dE/d sc
                for i in range(s):
                    if self.e[i] != 0.0:
                        add(Kbar, i, (h * self.e[i]) * g_err)
                from_y = xp.abs(y) >= xp.abs(y_new)
                zero = xp.zeros_like(g_sc)
                gy = st.rtol * g_sc * xp.sign(y)
                gyn = st.rtol * g_sc * xp.sign(y_new)
                ybar = _acc(ybar, xp.where(from_y, gy, zero))
                add(Gbar, s - 1, xp.where(from_y, zero, gyn))
        if S_bar:
            dk = K[s - 1, ...] - K[s - 2, ...]
            dg = G[s - 1, ...] - G[s - 2, ...]
            nk = float(xp.linalg.vector_norm(dk))
            ng = float(xp.linalg.vector_norm(dg))
            if nk > 0.0 and ng > 0.0:
                lam = nk / ng
                gk = (S_bar / (nk * ng)) * dk
                gg = (-S_bar * lam / (ng * ng)) * dg
                add(Kbar, s - 1, gk)
                add(Kbar, s - 2, -gk)
                add(Gbar, s - 1, gg)
                add(Gbar, s - 2, -gg)
        if self.graph is not None:
            # the reverse of the stage assignments, the VJPs included, in one pass
            gy, gp = stages.pullback(Kbar, Gbar)
            if gp is not None:
                p_bar = gp if p_bar is None else p_bar + gp
            return (ybar if gy is None else _acc(ybar, gy)), p_bar
        return reverse_stages(self.A, h, Gbar, Kbar, ybar, p_bar,
                              lambda i, kb: self.fvjp(t + st.c[i] * h, G[i, ...], kb))

    def output_seeds(self, h, outputs):
        """``(K̄, ȳ)``: the cotangents that this step's outputs ``y_n + h Σ b_i(θ) k_i``
        send to its slopes (a list, ``None`` where nothing arrives) and to ``y_n``."""
        xp, s, tab = self.xp, self.st.s, self.st.tab
        Kbar: list = [None] * s
        ybar = None
        if isinstance(outputs, tuple):
            # many outputs of this step, (θ (M,) host, ȳ (M, n)): Σ_q b_i(θ_q) ȳ_q is
            # P_i · Σ_q θ_q^(m+1) ȳ_q, two matrix products whatever M
            theta, Yb = outputs
            PT = self.dense_PT(Yb)
            pw = theta_powers(theta, PT.shape[0])
            pw = xp.asarray(pw, dtype=Yb.dtype, device=B.device(Yb))
            C = h * (xp.matrix_transpose(PT) @ (xp.matrix_transpose(pw) @ Yb))
            for i in self.dense_rows:
                _add(Kbar, i, C[i, ...])
            return Kbar, xp.sum(Yb, axis=0)
        for theta, yq_bar in outputs:
            w = tab.dense_weights(theta)
            for i in range(s):
                if w[i] != 0.0:
                    _add(Kbar, i, (h * float(w[i])) * yq_bar)
            ybar = yq_bar if ybar is None else ybar + yq_bar
        return Kbar, ybar

    def _weighted(self, w, K):
        out = None
        for i, wi in enumerate(w):
            if wi != 0.0:
                out = wi * K[i, ...] if out is None else out + wi * K[i, ...]
        return out


def reverse_stages(A, h, Gbar: list, Kbar: list, ybar, p_bar, stage_vjp):
    """The reverse of one explicit step's stage assignments ``g_i = y + h Σ_{j<i} a_ij k_j``,
    ``k_i = f(t + c_i h, g_i)``, from the last stage to the first: returns ``(ȳ, p̄)``.

    ``Gbar``/``Kbar``: the cotangents of the stage arguments and slopes so far (lists,
    ``None`` where nothing arrived; updated in place); ``stage_vjp(i, k̄_i) -> (v_y, v_p)``
    the VJP of ``f`` at stage ``i``; ``h`` the step size (a float, or a column of each
    row's step size for a vectorised batch).
    """
    for i in range(len(Gbar) - 1, -1, -1):
        if Kbar[i] is not None:
            vy, vp = stage_vjp(i, Kbar[i])
            _add(Gbar, i, vy)
            if vp is not None:
                p_bar = vp if p_bar is None else p_bar + vp
        if Gbar[i] is None:
            continue
        for j in range(i):
            if A[i, j] != 0.0:
                _add(Kbar, j, (h * float(A[i, j])) * Gbar[i])
        ybar = _acc(ybar, Gbar[i])
    return ybar, p_bar


def _acc(a, b):
    return b if a is None else a + b


def _add(lst, i, v):
    lst[i] = v if lst[i] is None else lst[i] + v


def discrete_adjoint(stepper: Stepper, rhs, fvjp, traj: Trajectory, ys_bar, rE_bar: float,
                     rS_bar: float):
    """Reverse through the accepted steps of ``traj``: returns ``(ȳ_0, p̄, a_ys0)``.

    ``ys_bar``: (T, n) cotangent of the outputs; ``rE_bar``/``rS_bar``: cotangents of
    ``R_E = Σ E_j |h_j|`` and ``R_S = Σ λ_j |h_j|``. ``a_ys0`` is the part of ``ȳ_0`` that
    reaches ``y0`` through the steps (for the gradient w.r.t. ``t_eval[0]``).
    """
    xp = stepper.xp
    rev = _StepReverse(stepper, rhs, fvjp)
    N = len(traj.ts) - 1
    # the outputs interpolated in accepted steps are one run q_first .. q_end - 1 in step
    # order; the others (at t_eval[0], or never reached) have step -1
    out_step = traj.out_step
    in_steps = np.nonzero(out_step[1:] >= 0)[0] + 1
    ranges = {}
    if in_steps.shape[0]:
        u = np.unique_all(out_step[in_steps])
        ranges = {n: (int(in_steps[i]), int(in_steps[i]) + c) for n, i, c in
                  zip(u.values.tolist(), u.indices.tolist(), u.counts.tolist())}
    a = None
    p_bar = None
    cache: dict[int, object] = {}

    def state(n):
        nonlocal cache
        if n in traj.states:
            return traj.states[n]
        if n not in cache:
            cache = _segment(stepper, rhs, traj, n)
        return cache[n]

    def outputs(n):
        lo, hi = ranges.get(n, (0, 0))
        if hi - lo >= STEP_DENSE_BATCH:
            return (traj.out_theta[lo:hi], ys_bar[lo:hi, ...])
        return [(float(traj.out_theta[q]), ys_bar[q, ...]) for q in range(lo, hi)]

    loop = getattr(rev.graph, "reverse_steps", None)
    if FUSED_REVERSE and loop is not None and N > 0 and rE_bar == 0.0 and rS_bar == 0.0 \
            and traj.every == 1:
        # without regulariser cotangents, what each step receives from outside (its
        # outputs) is known before the reverse sweep starts: the whole sweep is one
        # compiled loop (JaxStepGraph), not one host call per step. Not with checkpoints:
        # the loop reads every state at once, which checkpoint_every > 1 chose not to keep
        a, p_bar = _fused_reverse(rev, loop, traj, N, state, sorted(ranges), outputs, ys_bar)
    else:
        for n in range(N - 1, -1, -1):
            y = state(n)
            t, h = float(traj.ts[n]), float(traj.ts[n + 1] - traj.ts[n])
            a, p_bar = rev.run(t, y, h, a, outputs(n), rE_bar * abs(h), rS_bar * abs(h),
                               p_bar)
    through = a
    y0_bar = ys_bar[0, ...]
    # outputs at t_eval[0] itself (and unreached ones, whose cotangents the caller zeroed)
    at_start = np.nonzero(out_step[1:] < 0)[0] + 1
    if at_start.shape[0]:
        y0_bar = y0_bar + xp.sum(xp.take(ys_bar, xp.asarray(at_start, device=B.device(ys_bar)),
                                         axis=0), axis=0)
    if through is not None:
        y0_bar = y0_bar + through
    else:
        through = xp.zeros_like(y0_bar)
    return y0_bar, p_bar, through


#: reverse a from_jax field's explicit steps in one compiled loop where that applies
#: (tests turn it off to compare with the per-step route)
FUSED_REVERSE = True


def _fused_reverse(rev: _StepReverse, loop, traj: Trajectory, N: int, state, with_outputs,
                   outputs, ys_bar):
    """``(ȳ_0 through the steps, p̄)`` of the whole reverse sweep in one call of ``loop``
    (``JaxStepGraph.reverse_steps``). The output seeds are gathered here with
    :meth:`_StepReverse.output_seeds` (the per-step route's arithmetic), one row per step
    that has outputs (``slots[n]``: its row, −1 for none), so their memory is that of the
    outputs, not of the steps; the states are read as the per-step route reads them."""
    xp, st = rev.xp, rev.st
    s = st.s
    ts = np.asarray(traj.ts, dtype=np.float64)
    hs = ts[1:N + 1] - ts[:N]
    y_first = state(0)
    n = y_first.shape[0]
    ys = xp.empty((N, n), dtype=y_first.dtype)
    for m in range(N):
        ys[m] = state(m)
    slots = np.full((N,), -1, dtype=np.int64)
    Kc = xp.zeros((max(len(with_outputs), 1), s, n), dtype=ys_bar.dtype)
    yc = xp.zeros((Kc.shape[0], n), dtype=ys_bar.dtype)
    last = False
    for j, m in enumerate(with_outputs):
        slots[m] = j
        Kbar, ybar = rev.output_seeds(float(hs[m]), outputs(m))
        for i, k in enumerate(Kbar):
            if k is not None:
                Kc[j, i] = k
                last = last or i == s - 1
        yc[j] = ybar
    return loop(rev.A, st.c, ts[:N], hs, ys, slots, Kc, yc, last)


def _segment(stepper, rhs, traj, n):
    """States of the checkpoint segment containing step ``n``, recomputed once."""
    xp = stepper.xp
    base = (n // traj.every) * traj.every
    y = traj.states[base]
    out = {base: y}
    K, G = xp.zeros_like(stepper.K), xp.zeros_like(stepper.G)
    for m in range(base, min(base + traj.every, len(traj.ts) - 1) - 1):
        t, h = float(traj.ts[m]), float(traj.ts[m + 1] - traj.ts[m])
        K[0, :] = rhs(t, y)
        y = xp.asarray(stepper.stages(rhs, t, y, h, K=K, G=G), copy=True)
        out[m + 1] = y
    return out


def one_step_adjoint(stepper: Stepper, rhs, fvjp, t, y, h, E_bar, S_bar):
    """Parameter cotangent of one step's regularisers (local regularisation): ``p̄``."""
    rev = _StepReverse(stepper, rhs, fvjp)
    _, p_bar = rev.run(t, y, h, None, [], E_bar * abs(h), S_bar * abs(h), None)
    return p_bar


def backsolve_adjoint(xp, make_stepper, f_rhs, fvjp, n: int, p_size: int, ys, ys_bar,
                      t_out, *, controller: str, max_steps: int):
    """Continuous adjoint by integrating ``[y, a, p̄]`` backwards.

    ``ys``/``ys_bar``: (T, n) forward outputs and their cotangents; ``make_stepper(size)``
    builds a :class:`Stepper` for the augmented state. Returns ``(ȳ_0, p̄, a0, failed)``:
    ``failed`` is ``None``, or the :class:`Trajectory` of the backward solve that stopped
    early (its ``status``/``message`` say why; the other entries are then meaningless).
    """
    T = ys.shape[0]
    zeros_p = xp.zeros((p_size,), dtype=ys.dtype, device=B.device(ys))

    def aug(t, z):
        y, a = z[:n], z[n:2 * n]
        vy, vp = fvjp(t, y, a)
        parts = [f_rhs(t, y), -vy]
        if p_size:
            parts.append(-xp.reshape(xp.asarray(vp, dtype=ys.dtype), (p_size,)))
        return xp.concat(parts)

    if T == 1:  # nothing integrated (a solve stopped before its first output)
        return ys_bar[0, ...], (zeros_p if p_size else None), xp.zeros_like(ys_bar[0, ...]), None
    a = ys_bar[T - 1, ...]
    p_bar = zeros_p
    stepper = make_stepper(2 * n + p_size)
    for q in range(T - 1, 0, -1):
        t_hi, t_lo = float(t_out[q]), float(t_out[q - 1])
        if t_hi != t_lo:
            z0 = xp.concat([ys[q, ...], a, p_bar])
            traj = integrate(stepper, aug, z0, np.asarray([t_hi, t_lo], dtype=np.float64),
                             controller=controller, first_step=None, max_steps=max_steps,
                             step_ts=None, want_stiff=False, every=1 << 30)
            if not traj.success:  # read the inner status: the caller reports it
                return None, None, None, traj
            z = traj.ys[1, ...]
            a, p_bar = z[n:2 * n], z[2 * n:]
        if q - 1 > 0:
            a = a + ys_bar[q - 1, ...]
    through = a
    return through + ys_bar[0, ...], (p_bar if p_size else None), through, None


def t_eval_cotangent(xp, rhs, ys, ys_bar, t_out, through0, y0, n_reached=None):
    """``t̄_q = ȳ_q · f(t_q, y_q)`` (q ≥ 1), ``t̄_0 = −a(t_0) · f(t_0, y_0)``: host floats.

    Outputs from ``n_reached`` on were not computed (an early stop): their entries are 0
    here (the caller turns the gradients NaN when their cotangent is not zero).
    """
    T = ys.shape[0]
    out = [0.0] * T
    for q in range(1, T if n_reached is None else n_reached):
        if t_out[q] == t_out[0]:
            continue
        out[q] = float(xp.sum(ys_bar[q, ...] * rhs(float(t_out[q]), ys[q, ...])))
    if n_reached == 1:  # no step taken: nothing flowed back to y0 (and f(t_0) may be NaN)
        return out
    out[0] = -float(xp.sum(through0 * rhs(float(t_out[0]), y0)))
    if not math.isfinite(out[0]):
        out[0] = math.nan
    return out
