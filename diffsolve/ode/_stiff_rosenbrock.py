"""``method="rodas5"``: the Rosenbrock–Wanner pair Rodas5(4), linearly implicit.

One step solves ``s = 8`` linear systems with the one matrix ``I/(hγ) − J`` (``J`` the
Jacobian at the step's start), in the transformed variables of Hairer & Wanner, Solving
ODEs II (2nd ed.), IV.7, eq. (7.4')::

    (I/(hγ) − J) u_i = f(t_n + α_i h, y_n + Σ_{j<i} a_ij u_j) + Σ_{j<i} (c_ij / h) u_j
                       + γ_i h ∂f/∂t(t_n, y_n),
    y_{n+1} = y_n + Σ_i m_i u_i,      error = Σ_i (m_i − m̂_i) u_i.

No Newton iteration: each step costs one Jacobian, one factorisation, ``s`` solves and
``s`` evaluations of ``f`` (plus one for ``∂f/∂t`` by a forward difference in ``t``). The
order conditions assume the exact ``J`` at ``y_n``, so ``J`` is recomputed every step.
Coefficients: G. A. Di Marzo, "RODAS5(4) – Méthodes de Rosenbrock d'ordre 5(4) adaptées
aux problèmes différentiels-algébriques", MSc thesis, University of Geneva (1993), as
printed in diffrax's ``rodas5`` table; the method's order is checked numerically in the
tests (convergence slope 5). Output times are step end points (as for the ESDIRK pairs);
the cubic Hermite interpolant through ``(y_n, f(t_n, y_n))`` and
``(y_{n+1}, f(t_{n+1}, y_{n+1}))`` is kept for the general case.

``rodas5`` has no discrete adjoint (it would need the derivative of ``J`` itself): its
gradients come from ``adjoint="backsolve"`` (:mod:`._stiff_backsolve`), or from
``kvaerno5``'s discrete adjoint.
"""

from __future__ import annotations

import math

from .. import _backend as B
from .._status import Status
from ..krylov._common import wants_stop
from ._controller import Controller, initial_step
from ._integrate import Trajectory
from ._result import status_message
from ._settings import ODEState
from ._stiff_esdirk import judge_step, next_step_end
from ._stiff_newton import ShiftedLU

np = B.host_namespace()

__all__ = ["RODAS5", "RosenbrockTableau", "integrate_rosenbrock"]


class RosenbrockTableau:
    """Coefficients of a Rosenbrock pair in the transformed variables ``u_i``."""

    name = "rodas5"
    implicit = True
    order, error_order = 5, 4
    stability_boundary = float("inf")
    gamma = 0.19

    def __init__(self):
        self.a = [
            [],
            [2.0],
            [3.040894194418781, 1.041747909077569],
            [2.576417536461461, 1.622083060776640, -0.9089668560264532],
            [2.760842080225597, 1.446624659844071, -0.3036980084553738, 0.2877498600325443],
            [-14.09640773051259, 6.925207756232704, -41.47510893210728, 2.343771018586405,
             24.13215229196062],
            [-14.09640773051259, 6.925207756232704, -41.47510893210728, 2.343771018586405,
             24.13215229196062, 1.0],
            [-14.09640773051259, 6.925207756232704, -41.47510893210728, 2.343771018586405,
             24.13215229196062, 1.0, 1.0],
        ]
        self.c = [
            [],
            [-10.31323885133993],
            [-21.04823117650003, -7.234992135176716],
            [32.22751541853323, -4.943732386540191, 19.44922031041879],
            [-20.69865579590063, -8.816374604402768, 1.260436877740897, -0.7495647613787146],
            [-46.22004352711257, -17.49534862857472, -289.6389582892057, 93.60855400400906,
             318.3822534212147],
            [34.20013733472935, -14.15535402717690, 57.82335640988400, 25.83362985412365,
             1.408950972071624, -6.551835421242162],
            [42.57076742291101, -13.80770672017997, 93.98938432427124, 18.77919633714503,
             -31.58359187223370, -6.685968952921985, -5.810979938412932],
        ]
        self.alpha = [0.0, 0.38, 0.3878509998321533, 0.4839718937873840, 0.4570477008819580,
                      1.0, 1.0, 1.0]
        self.gammas = [0.19, -0.1823079225333714636, -0.319231832186874912,
                       0.3449828624725343, -0.377417564392089818, 0.0, 0.0, 0.0]
        self.m = [*self.a[7], 1.0]
        self.m_hat = [*self.a[7], 0.0]
        self.n_stages = 8


RODAS5 = RosenbrockTableau()


def _hermite(xp, y0, y1, f0, f1, h, theta):
    th = float(theta)
    h00 = 1.0 - th * th * (3.0 - 2.0 * th)
    h10 = th * (1.0 - th) ** 2
    h01 = th * th * (3.0 - 2.0 * th)
    h11 = th * th * (th - 1.0)
    return h00 * y0 + h01 * y1 + (h * h10) * f0 + (h * h11) * f1


def _factor(xp, J, hg):
    return ShiftedLU(J, 1.0 / hg, 1.0, xp)


def integrate_rosenbrock(tab, jacobian, rhs, y0, t_out, *, xp, dtype, device, rtol, atol,
                         controller, first_step, max_steps, step_ts, f0, callback=None,
                         shape=None, trajectory=None, jump_ts=()) -> Trajectory:
    """Adaptive Rodas5 over the host times ``t_out``; never raises on a failed solve."""
    n = y0.shape[0]
    T = t_out.shape[0]
    t0, t1 = float(t_out[0]), float(t_out[-1])
    direction = 1.0 if t1 >= t0 else -1.0
    interval = abs(t1 - t0)
    ys = xp.full((T, n), math.nan, dtype=dtype, device=device)
    ys[0, :] = y0
    out_step = np.full(T, -1, dtype=np.int64)
    out_theta = np.zeros(T)
    ts, errs, states = [t0], [], {0: y0}
    fixed = step_ts is not None
    jumps = sorted((float(v) for v in jump_ts if direction * (float(v) - t0) > 0
                    and direction * (t1 - float(v)) > 0), key=lambda v: direction * v)
    ji = 0
    s = tab.n_stages
    e = [mi - mh for mi, mh in zip(tab.m, tab.m_hat)]
    root_eps = math.sqrt(float(xp.finfo(dtype).eps))

    def rms(x, y_a, y_b=None):
        sc = atol + rtol * (xp.abs(y_a) if y_b is None
                            else xp.maximum(xp.abs(y_a), xp.abs(y_b)))
        return float(xp.sqrt(xp.mean((x / sc) ** 2))) if n else 0.0

    def first_h(t, y, k):
        if first_step is not None:
            return float(first_step), 0
        return initial_step(rms, rhs, t, y, k, direction, tab.error_order, rtol, atol,
                            interval), 1

    nfe = 0
    ctrl = Controller(controller, tab.order, tab.error_order)
    h_abs = 0.0
    if not fixed:
        h_abs, used = first_h(t0, y0, f0)
        nfe += used
    q = 1
    while q < T and t_out[q] == t0:
        ys[q, :] = y0
        q += 1
    t, y, fy = t0, y0, f0
    n_acc = n_steps = n_rej = n_jac = 0
    status, message = Status.SUCCESS, ""
    jac_nfe0 = jacobian.nfe
    J = None
    while direction * (t1 - t) > 0:
        if fixed and n_acc + 1 >= len(step_ts):
            break
        min_step = 10.0 * abs(math.nextafter(t, direction * math.inf) - t)
        if not fixed and h_abs < min_step:
            h_abs = min_step
        while ji < len(jumps) and direction * (jumps[ji] - t) <= 0:
            ji += 1
        t_end = jumps[ji] if ji < len(jumps) else t1
        # outputs are step end points: the cubic Hermite interpolant is only third-order
        # accurate, the steps are of the method's order
        if q < T and \
                direction * (float(t_out[q]) - t_end) < 0:
            t_end = float(t_out[q])
        if J is None:  # once per accepted state: rejected retries reuse it
            J = jacobian(t, y)
            n_jac += 1
            dt = root_eps * max(abs(t), 1.0) * direction
            ft = (rhs(t + dt, y) - fy) / dt
            nfe += 1
        rejected = False
        while True:
            stop, t_new, h_prop = next_step_end(
                t, h_abs, t_end, direction, fixed=fixed, step_ts=step_ts, n_acc=n_acc,
                n_steps=n_steps, max_steps=max_steps, min_step=min_step, t1=t1,
                trajectory=trajectory)
            if stop is not None:
                status, message = stop
                break
            h = t_new - t
            if not fixed:
                h_abs = abs(h)
            at_jump = ji < len(jumps) and t_new == jumps[ji]
            t_cap = math.nextafter(t_new, -direction * math.inf) if at_jump else None
            lu = _factor(xp, J, h * tab.gamma)
            n_steps += 1
            U: list = []
            ok = not lu.singular
            for i in range(s if ok else 0):
                ti = t + tab.alpha[i] * h
                if t_cap is not None and direction * (ti - t_cap) > 0:
                    ti = t_cap
                arg = y
                for j, aij in enumerate(tab.a[i]):
                    arg = arg + aij * U[j]
                fi = fy if i == 0 else rhs(ti, arg)
                nfe += 0 if i == 0 else 1
                rhs_i = fi + (tab.gammas[i] * h) * ft
                for j, cij in enumerate(tab.c[i]):
                    rhs_i = rhs_i + (cij / h) * U[j]
                U.append(lu.solve(rhs_i))
            if ok:
                y_new = y
                err = None
                for i in range(s):
                    if tab.m[i] != 0.0:
                        y_new = y_new + tab.m[i] * U[i]
                    if e[i] != 0.0:
                        err = e[i] * U[i] if err is None else err + e[i] * U[i]
                E = rms(err, y, y_new)
            else:
                E = math.inf
            accepted, h_abs, stop = judge_step(ctrl, E, rejected, h_abs, h_prop,
                                               fixed=fixed, t=t, trajectory=trajectory)
            if stop is not None:
                status, message = stop
            if accepted:
                break
            rejected = True
            n_rej += 1
        if message:
            break
        errs.append(E)
        f_new = rhs(t_new, y_new)
        nfe += 1
        while q < T and direction * (float(t_out[q]) - t_new) <= 0:
            theta = (float(t_out[q]) - t) / h
            ys[q, :] = _hermite(xp, y, y_new, fy, f_new, h, theta)
            out_step[q] = n_acc
            out_theta[q] = theta
            q += 1
        n_acc += 1
        t, y, fy = t_new, y_new, f_new
        J = None
        ts.append(t)
        states[n_acc] = y
        if ji < len(jumps) and t == jumps[ji]:
            ji += 1
            ctrl = Controller(controller, tab.order, tab.error_order)
            fy = rhs(t, y)  # the slope on the far side of the jump
            nfe += 1
            if not fixed:
                h_abs, used = first_h(t, y, fy)
                nfe += used
        if callback is not None:
            yv = xp.reshape(y, shape) if shape is not None else y
            if wants_stop(callback(ODEState(t, yv, h, n_steps, n_acc, E, trajectory))):
                status = Status.STOPPED
                message = status_message(status, t, trajectory=trajectory)
                break
    success = not message
    stats = np.asarray([n_steps, n_acc, n_rej, nfe + (jacobian.nfe - jac_nfe0)],
                       dtype=np.int64)
    traj = Trajectory(ys=ys, ts=np.asarray(ts), states=states, every=1, out_step=out_step,
                      out_theta=out_theta, errs=np.asarray(errs, dtype=np.float64),
                      stiff=np.zeros((0,), dtype=np.float64), stats=stats, success=success,
                      message=message or "The solver reached the end of the integration "
                      "interval.", t_fail=math.nan if success else t, status=status,
                      n_reached=q)
    traj.stiff_stats = {"n_jac": n_jac, "n_lu": n_steps}
    return traj
