"""Discrete adjoint of the ESDIRK steps, by the implicit function theorem at the stages.

The forward pass stores, for each accepted step, the converged stage arguments ``g_i``
and slopes ``k_i`` (and the times ``t_i`` ``f`` was evaluated at). A step is the map

    k_1 = f(t_1, y_n);   for i ≥ 2:  g_i = ψ_i + hγ f(t_i, g_i),  ψ_i = y_n + h Σ_{j<i} a_ij k_j,
                                     k_i = f(t_i, g_i);          y_{n+1} = g_s,

with outputs ``y_n + h Σ_i w_i(θ) k_i`` inside the step. Only the *solution* of each stage
equation is differentiated, never the Newton iterations that found it (the implicit
function theorem: ``dg_i = (I − hγJ_i)⁻¹ (dψ_i + hγ f_p dp)``, ``J_i = ∂f/∂y(t_i, g_i)``).
Reversed, stage by stage from ``i = s`` down to 2::

    ḡ_i ← ḡ_i + J_iᵀ k̄_i                   (k_i = f(t_i, g_i))
    λ_i = (I − hγ J_i)⁻ᵀ ḡ_i                 (one transposed solve per stage)
    ȳ_n += λ_i,   k̄_j += h a_ij λ_i (j < i),   p̄ += f_pᵀ(t_i, g_i) (k̄_i + hγ λ_i)

then ``ȳ_n += ḡ_1 + f_yᵀ(t_1, y_n) k̄_1`` and ``p̄ += f_pᵀ(t_1, y_n) k̄_1``. ``J_i`` is the
exact Jacobian at the stored stage (the user's ``jac``, else assembled from VJPs), and the
transposed systems are solved by the same factorisations as the forward's Newton matrix
(dense LAPACK LU or sparse LU). Step sizes are held constant, as in the explicit methods'
discrete adjoint.
"""

from __future__ import annotations

from .. import _backend as B
from ._stiff_newton import ShiftedLU

np = B.host_namespace()

__all__ = ["esdirk_adjoint"]


def _transposed_solve(xp, J, hg, rhs_vec):
    lu = ShiftedLU(J, 1.0, hg, xp)
    if lu.singular:
        return xp.full_like(rhs_vec, float("nan"))
    return lu.solve(rhs_vec, trans=True)


def _jt(J, v):
    """``Jᵀ v`` for a dense or sparse ``J``."""
    if B.is_sparse(J):
        return J.T @ v
    return v @ J


def esdirk_adjoint(tab, jacobian, fvjp, traj, ys_bar, xp, has_params: bool):
    """Reverse through the accepted ESDIRK steps of ``traj``: ``(ȳ_0, p̄, a_0)``.

    ``jacobian``: the exact Jacobian recipe; ``fvjp(t, y, v) -> (v_y, v_p)``;
    ``ys_bar``: (T, n) cotangent of the outputs. ``a_0`` is the part of ``ȳ_0`` that came
    through the steps (for the gradient w.r.t. ``t_eval[0]``).
    """
    s = tab.n_stages
    A = [[float(v) for v in tab.A[i, :]] for i in range(s)]
    gamma = float(tab.gamma)
    N = len(traj.ts) - 1
    by_step: dict[int, list] = {}
    for q in range(1, traj.out_step.shape[0]):
        by_step.setdefault(int(traj.out_step[q]), []).append(q)
    a = None
    p_bar = None

    def add(lst, i, v):
        lst[i] = v if lst[i] is None else lst[i] + v

    def add_p(vp):
        nonlocal p_bar
        if has_params and vp is not None:
            p_bar = vp if p_bar is None else p_bar + vp

    for n in range(N - 1, -1, -1):
        G, _, times = traj.stages[n]
        y = traj.states[n]
        h = float(traj.ts[n + 1] - traj.ts[n])
        hg = h * gamma
        Kbar = [None] * s
        Gbar = [None] * s
        ybar = None
        if a is not None:
            Gbar[s - 1] = a
        for q in by_step.get(n, ()):
            yq_bar = ys_bar[q, ...]
            w = tab.dense_weights(float(traj.out_theta[q]))
            for i in range(s):
                if w[i] != 0.0:
                    add(Kbar, i, (h * w[i]) * yq_bar)
            ybar = yq_bar if ybar is None else ybar + yq_bar
        for i in range(s - 1, 0, -1):
            if Kbar[i] is None and Gbar[i] is None:
                continue
            J = jacobian(times[i], G[i])
            g_tot = Gbar[i]
            if Kbar[i] is not None:
                vy = _jt(J, Kbar[i])
                g_tot = vy if g_tot is None else g_tot + vy
            lam = _transposed_solve(xp, J, hg, g_tot)
            ybar = lam if ybar is None else ybar + lam
            for j in range(i):
                if A[i][j] != 0.0:
                    add(Kbar, j, (h * A[i][j]) * lam)
            if has_params:
                v = hg * lam if Kbar[i] is None else Kbar[i] + hg * lam
                add_p(jacobian.pull_for(times[i], G[i])(v)[1])
        if Kbar[0] is not None:
            vy, vp = jacobian.pull_for(times[0], y)(Kbar[0])
            ybar = vy if ybar is None else ybar + vy
            add_p(vp)
        if Gbar[0] is not None:
            ybar = Gbar[0] if ybar is None else ybar + Gbar[0]
        a = ybar
    through = a
    y0_bar = ys_bar[0, ...]
    for q in by_step.get(-1, ()):
        y0_bar = y0_bar + ys_bar[q, ...]
    if through is not None:
        y0_bar = y0_bar + through
    else:
        through = xp.zeros_like(y0_bar)
    return y0_bar, p_bar, through
