"""The continuous adjoint of the stiff methods: ``adjoint="backsolve"``, an ESDIRK solve back.

The continuous adjoint integrates, backwards between consecutive output times
(Chen et al., "Neural ordinary differential equations", NeurIPS 2018, Alg. 1)::

    a' = −f_yᵀ(t, y(t)) a,   p̄' = −f_pᵀ(t, y(t)) a,

with ``a`` incremented by the output cotangent at each output time. For a stiff ``f`` the
``a`` equation is as stiff as the forward one (its Jacobian is ``−f_yᵀ``), so it is
integrated by an ESDIRK pair: the forward tableau, or ``kvaerno5`` after ``rodas5`` or
``method="auto"`` (a Rosenbrock step would need the exact Jacobian of the adjoint field).

``y(t)`` is *not* integrated backwards, as the explicit methods' backsolve does: in reverse
time a stiff field's decaying modes grow like ``exp(|λ| t)`` and the reintegrated ``y``
leaves the solution within a few steps (on Robertson's problem every such attempt ended in
a step-size underflow). It is read from the forward solve instead — the stiff loops store
every accepted state —, by the cubic Hermite interpolant through ``(y_n, f(t_n, y_n))``
and ``(y_{n+1}, f(t_{n+1}, y_{n+1}))`` on each forward step: what Cao, Li, Petzold and
Serban, "Adjoint sensitivity analysis for differential-algebraic equations", SIAM J. Sci.
Comput. 24 (2003) 1076–1089, do with checkpointed forward solutions (SUNDIALS CVODES'
adjoint module; SciML calls it the interpolating adjoint). The gradient is that of the
exact solution up to the forward and backward tolerances, not the exact gradient of the
computed solution (that is ``adjoint="discrete"``).

Newton unknowns are ``a`` alone (``n``); the stage equations are linear in ``a`` and the
simplified Newton matrix is ``I + hγ Jᵀ`` with ``J`` at the step's start (the forward
``jac`` recipe). ``p̄`` does not feed back: its stage values are explicit sums of the stage
slopes ``−f_pᵀ a`` (the ESDIRK formula applied to a quadrature), and it enters the error
estimate like ``a``.
"""

from __future__ import annotations

import bisect
import math

from .. import _backend as B
from ._stiff_esdirk import ESDIRKStepper, integrate_esdirk
from ._stiff_jacobian import make_jacobian
from ._stiff_newton import IterationMatrix, newton_stage
from ._stiff_tableaux import STIFF_TABLEAUX

np = B.host_namespace()

__all__ = ["ForwardInterpolant", "stiff_backsolve"]


class ForwardInterpolant:
    """``y(t)`` of a stored forward trajectory: the cubic Hermite interpolant per step.

    The slopes at the step ends are evaluated once per step (lazily); at a declared jump
    the slope on each side is the one of that side's step.
    """

    def __init__(self, traj, rhs, jumps, xp):
        self.ts = [float(v) for v in traj.ts]
        self.states = traj.states
        self.rhs, self.xp = rhs, xp
        self.jumps = set(jumps)
        self.increasing = len(self.ts) < 2 or self.ts[-1] >= self.ts[0]
        self._keys = self.ts if self.increasing else [-v for v in self.ts]
        self._slopes: dict = {}
        self.nfe = 0

    def _slope(self, n: int, side: int):
        """``f`` at state ``n``, seen from step ``n`` (side 0) or step ``n − 1`` (side 1)."""
        key = (n, side if self.ts[n] in self.jumps else 0)
        s = self._slopes.get(key)
        if s is None:
            t = self.ts[n]
            if key[1] == 1:  # just before the jump, as the forward step integrated it
                t = math.nextafter(t, self.ts[n - 1])
            s = self._slopes[key] = self.rhs(t, self.states[n])
            self.nfe += 1
        return s

    def __call__(self, t: float):
        N = len(self.ts) - 1
        key = t if self.increasing else -t
        # the step whose closed interval holds t (the last one for t at the end)
        n = min(max(bisect.bisect_right(self._keys, key) - 1, 0), N - 1)
        t0, t1 = self.ts[n], self.ts[n + 1]
        h = t1 - t0
        th = (t - t0) / h
        y0, y1 = self.states[n], self.states[n + 1]
        f0, f1 = self._slope(n, 0), self._slope(n + 1, 1)
        # Hermite basis on [0, 1] (Hairer, Nørsett & Wanner I, II.6)
        h00 = (1.0 + 2.0 * th) * (1.0 - th) ** 2
        h01 = th * th * (3.0 - 2.0 * th)
        h10 = th * (1.0 - th) ** 2
        h11 = th * th * (th - 1.0)
        return h00 * y0 + h01 * y1 + (h * h10) * f0 + (h * h11) * f1


class _AdjointJacobian:
    """``−J(t, y(t))ᵀ``, the Jacobian of ``a' = −Jᵀa``, for :class:`IterationMatrix`."""

    def __init__(self, jacobian, y_of_t):
        self.jacobian, self.y_of_t = jacobian, y_of_t
        self.xp, self.n = jacobian.xp, jacobian.n

    @property
    def nfe(self) -> int:
        return self.jacobian.nfe

    def __call__(self, t, z):
        J = self.jacobian(t, self.y_of_t(t))
        if B.is_sparse(J):
            return (J.T * -1.0).tocsr()
        return -self.xp.matrix_transpose(J)


class AdjointStepper(ESDIRKStepper):
    """ESDIRK steps of ``[a, p̄]`` with Newton on ``a`` only (module docstring)."""

    def __init__(self, xp, tab, n, p_size, dtype, device, rtol, atol, mat, parts):
        super().__init__(xp, tab, n + p_size, dtype, device, rtol, atol, mat)
        self.n_a, self.p_size = n, p_size
        self.parts = parts  # parts(t, a) -> (−f_yᵀa, −f_pᵀa or None)

    def solve_stage(self, rhs, t_i, psi, K, i, hg, scale):
        """Newton on the ``a`` part; the ``p̄`` part explicitly from its stage slope."""
        xp, m = self.xp, self.n_a
        last_p: list = [None]

        def rhs_a(ti, g):
            fa, fp = self.parts(ti, g)
            last_p[0] = fp
            return fa

        guess = psi[:m] + hg * self.predict(K, i)[:m]
        g, k, ok, iters, rate, self.eta = newton_stage(
            rhs_a, t_i, psi[:m], guess, hg, self.mat, scale[:m], xp, self.eta)
        if ok and self.p_size:
            # −f_pᵀa at the last Newton iterate: consistent with g to the iteration's
            # tolerance, as the stage slopes k of a are
            kp = last_p[0]
            g, k = xp.concat([g, psi[m:] + hg * kp]), xp.concat([k, kp])
        return g, k, ok, iters, rate


def stiff_backsolve(fwd, traj, ys_bar, t_out, p_size: int):
    """``(ȳ_0, p̄, a_0, failed)`` of one stored stiff trajectory by the continuous adjoint.

    ``ys_bar``: (T, n) cotangents of the reached outputs ``t_out``; ``failed`` is ``None``
    or the :class:`Trajectory` of a backward solve that stopped early.
    """
    st = fwd.settings
    xp, n = fwd.xp, fwd.n
    dtype, device = ys_bar.dtype, B.device(ys_bar)
    tab = STIFF_TABLEAUX.get(st.method, STIFF_TABLEAUX["kvaerno5"])
    rtol, atol = st.norm_tolerances
    fvjp, rhs = fwd.fvjp, fwd.rhs
    zeros_p = xp.zeros((p_size,), dtype=dtype, device=device)
    T = ys_bar.shape[0]
    if T == 1 or traj.ts.shape[0] < 2:  # nothing integrated
        return ys_bar[0, ...], (zeros_p if p_size else None), xp.zeros_like(ys_bar[0, ...]), \
            None
    jumps = [float(v) for v in (fwd.jump_ts or ())]
    y_of_t = ForwardInterpolant(traj, rhs, jumps, xp)

    def parts(t, a):
        vy, vp = fvjp(t, y_of_t(t), a)
        fp = -xp.reshape(xp.asarray(vp, dtype=dtype), (p_size,)) if p_size else None
        return -vy, fp

    def aug(t, z):
        fa, fp = parts(t, z[:n])
        return xp.concat([fa, fp]) if p_size else fa

    # the forward recipe (finite differences by default): the Newton matrix only needs to
    # be good, the stage equations are solved to the tolerance whatever it is
    jacobian = make_jacobian(st.jac, fwd.jac_sparsity, xp=xp, n=n, dtype=dtype,
                             device=device, rhs=rhs, fvjp=fvjp, params=fwd.params_eff,
                             shape=fwd.shape)
    a_jac = _AdjointJacobian(jacobian, y_of_t)
    a = ys_bar[T - 1, ...]
    p_bar = zeros_p
    for q in range(T - 1, 0, -1):
        t_hi, t_lo = float(t_out[q]), float(t_out[q - 1])
        if t_hi != t_lo:
            z0 = xp.concat([a, p_bar])
            mat = IterationMatrix(a_jac, float(tab.gamma))
            stepper = AdjointStepper(xp, tab, n, p_size, dtype, device, rtol, atol, mat,
                                     parts)
            inside = [v for v in jumps if min(t_lo, t_hi) < v < max(t_lo, t_hi)]
            back = integrate_esdirk(stepper, aug, z0,
                                    np.asarray([t_hi, t_lo], dtype=np.float64),
                                    controller=st.controller, first_step=None,
                                    max_steps=st.max_steps, step_ts=None,
                                    f0=aug(t_hi, z0), jump_ts=inside)
            if not back.success:  # read the inner status: the caller reports it
                return None, None, None, back
            z = back.ys[1, ...]
            a, p_bar = z[:n], z[n:]
        if q - 1 > 0:
            a = a + ys_bar[q - 1, ...]
    return a + ys_bar[0, ...], (p_bar if p_size else None), a, None
