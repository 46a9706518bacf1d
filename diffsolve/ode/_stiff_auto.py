"""``method="auto"``: explicit until the stiffness estimate says stiff, then implicit.

The explicit phase runs ``tsit5`` and reads, after every accepted step, the estimate of the
dominant eigenvalue's magnitude that the ``R_S`` regulariser uses (``λ = ‖k_s − k_{s−1}‖ /
‖g_s − g_{s−1}‖``, Shampine's estimate; Hairer–Wanner II, IV.2). On a non-stiff problem the
step size is set by accuracy and ``|hλ|`` stays well inside the stability interval; on a
stiff one the step size is pinned by stability and ``|hλ|`` sits at the interval's
boundary (≈ 3.5 for ``tsit5``) step after step. When ``|hλ| ≥`` :data:`SWITCH_FRACTION`
``×`` boundary for :data:`SWITCH_STEPS` consecutive accepted steps, the solve continues
from the current state with ``kvaerno5`` (the same idea as LSODA's switch from Adams to
BDF: L. Petzold, "Automatic selection of methods for solving stiff and nonstiff systems of
ordinary differential equations", SIAM J. Sci. Stat. Comput. 4 (1983) 136–148). There is
no switch back. The result's ``t_switch`` says where it switched (NaN: never).

The two phases are joined into one trajectory; the backward rule reverses the implicit
phase (:mod:`._stiff_adjoint`), then the explicit one with the implicit phase's initial
cotangent entering as that of the explicit phase's last state.
"""

from __future__ import annotations

import math

from .. import _backend as B
from .._status import Status
from ..krylov._common import wants_stop
from ._adjoint import discrete_adjoint
from ._integrate import Stepper, Trajectory, integrate
from ._stiff_adjoint import esdirk_adjoint

np = B.host_namespace()

__all__ = ["AUTO_EXPLICIT", "AUTO_IMPLICIT", "auto_adjoint", "auto_trajectory",
           "stiffness_hint"]

AUTO_EXPLICIT = "tsit5"
AUTO_IMPLICIT = "kvaerno5"
SWITCH_FRACTION = 0.8
SWITCH_STEPS = 15


def auto_trajectory(stepper: Stepper, run_stiff, rhs, y0, t_out, *, controller, first_step,
                    max_steps, step_ts, f0, callback, shape, trajectory) -> Trajectory:
    """Explicit phase, then (if the detector fires) ``run_stiff(y, t_seg, step_ts, f0)``."""
    limit = SWITCH_FRACTION * stepper.tab.stability_boundary
    run = {"count": 0, "switched": False, "user_stop": False}

    def detector(state):
        if callback is not None and wants_stop(callback(state)):
            run["user_stop"] = True
            return True
        lam = stepper.stiffness()
        run["count"] = run["count"] + 1 if abs(state.h) * lam >= limit else 0
        if run["count"] >= SWITCH_STEPS:
            run["switched"] = True
            return True
        return False

    first = integrate(stepper, rhs, y0, t_out, controller=controller, first_step=first_step,
                      max_steps=max_steps, step_ts=step_ts, want_stiff=True, every=1, f0=f0,
                      callback=detector, shape=shape, trajectory=trajectory)
    first.stats[3] += 1
    if run["switched"] and float(first.ts[-1]) == float(t_out[-1]):
        # it fired on the very last step: nothing is left to integrate implicitly
        run["switched"] = False
        first.status, first.success, first.t_fail = Status.SUCCESS, True, math.nan
        first.message = "The solver reached the end of the integration interval."
    if not run["switched"]:
        first.t_switch = math.nan
        first.auto_parts = None
        return first
    t_s = float(first.ts[-1])
    N1 = first.ts.shape[0] - 1
    y_s = first.states[N1]
    T = t_out.shape[0]
    nr1 = first.n_reached
    idx2 = list(range(nr1, T))
    t_seg = np.asarray([t_s] + [float(t_out[q]) for q in idx2], dtype=np.float64)
    if t_seg.shape[0] == 1:  # no output left: integrate to the end all the same
        t_seg = np.asarray([t_s, float(t_out[-1])])
    seg_steps = None
    if step_ts is not None:
        sign = 1.0 if t_seg[-1] >= t_s else -1.0
        seg_steps = np.asarray([t_s] + [float(v) for v in step_ts if sign * (float(v) - t_s) > 0])
    second = run_stiff(y_s, t_seg, seg_steps, rhs(t_s, y_s))
    second.stats[3] += 1
    # the explicit phase as a trajectory of its own, with its last state as an extra
    # output (θ = 1 of its last step): the implicit phase's initial cotangent enters there
    sub1 = Trajectory(ys=first.ys, ts=first.ts, states=first.states, every=1,
                      out_step=np.concatenate([first.out_step[:nr1], [N1 - 1]]),
                      out_theta=np.concatenate([first.out_theta[:nr1], [1.0]]),
                      errs=first.errs, stiff=first.stiff, stats=first.stats,
                      n_reached=nr1 + 1)
    xp = stepper.xp
    ys = xp.concat([first.ys[:nr1, ...], second.ys[1:1 + len(idx2), ...]], axis=0) \
        if idx2 else first.ys
    out_step = np.concatenate([first.out_step[:nr1],
                               np.where(second.out_step[1:1 + len(idx2)] >= 0,
                                        second.out_step[1:1 + len(idx2)] + N1, -1)])
    out_theta = np.concatenate([first.out_theta[:nr1], second.out_theta[1:1 + len(idx2)]])
    states = dict(first.states)
    for m, y in second.states.items():
        states[N1 + m] = y
    joined = Trajectory(ys=ys, ts=np.concatenate([first.ts, second.ts[1:]]), states=states,
                        every=1, out_step=out_step, out_theta=out_theta,
                        errs=np.concatenate([first.errs, second.errs]),
                        stiff=np.zeros((0,), dtype=np.float64),
                        stats=first.stats + second.stats, success=second.success,
                        message=second.message, t_fail=second.t_fail, status=second.status,
                        n_reached=nr1 + max(second.n_reached - 1, 0))
    joined.t_switch = t_s
    joined.auto_parts = (sub1, second, idx2, nr1)
    joined.stiff_stats = getattr(second, "stiff_stats", None)
    return joined


def auto_adjoint(stepper, rhs, fvjp, jacobian, traj, ys_bar, xp, has_params):
    """``(ȳ_0, p̄, a_0)`` of an ``auto`` trajectory (see the module docstring)."""
    if traj.auto_parts is None:
        return discrete_adjoint(stepper, rhs, fvjp, traj, ys_bar, 0.0, 0.0)
    sub1, second, idx2, nr1 = traj.auto_parts
    zero = xp.zeros_like(ys_bar[:1, ...])
    # the implicit phase's outputs: its start (no cotangent of its own) and idx2
    bar2 = xp.concat([zero, ys_bar[nr1:, ...]], axis=0) if idx2 else \
        xp.concat([zero, zero], axis=0)
    from ._stiff_tableaux import STIFF_TABLEAUX

    y_s_bar, p2, _ = esdirk_adjoint(STIFF_TABLEAUX[AUTO_IMPLICIT], jacobian, fvjp, second,
                                    bar2, xp, has_params)
    bar1 = xp.concat([ys_bar[:nr1, ...], xp.reshape(y_s_bar, (1, -1))], axis=0)
    y0_bar, p1, through = discrete_adjoint(stepper, rhs, fvjp, sub1, bar1, 0.0, 0.0)
    if p1 is None:
        p_bar = p2
    else:
        p_bar = p1 if p2 is None else p1 + p2
    return y0_bar, p_bar, through


def stiffness_hint(stepper: Stepper, rhs, traj: Trajectory) -> str:
    """For an explicit solve that ran out of steps: ``|hλ|`` near its end, compared with
    the method's stability boundary, and the stiff methods to try."""
    if traj.ts.shape[0] < 2 or not traj.states:
        return ""
    m = max(k for k in traj.states if k < traj.ts.shape[0])
    t = float(traj.ts[m])
    h = float(traj.ts[-1] - traj.ts[-2])
    y = traj.states[m]
    K, G = stepper.xp.zeros_like(stepper.K), stepper.xp.zeros_like(stepper.G)
    K[0, :] = rhs(t, y)
    G[0, :] = y
    stepper.stages(rhs, t, y, h, K=K, G=G)
    hl = abs(h) * stepper.stiffness(K=K, G=G)
    if not math.isfinite(hl):
        return ""
    bound = stepper.tab.stability_boundary
    verdict = ("the step size is pinned at the stability limit: the problem is stiff"
               if hl >= SWITCH_FRACTION * bound else "the problem does not look stiff there")
    return (f"; the stiffness estimate |hλ| of the last steps is {hl:.3g} against the "
            f"method's stability boundary {bound:.3g} ({verdict}); for stiff problems use "
            "method='kvaerno5' or 'kvaerno3' (implicit, L-stable), or method='auto'")
