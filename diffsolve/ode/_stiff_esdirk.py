"""The adaptive loop of the ESDIRK methods (``kvaerno3``, ``kvaerno5``) for stiff problems.

One attempted step from ``(t, y)`` with slope ``k_1 = f(t, y)`` solves the implicit stages
one after the other by simplified Newton (:mod:`._stiff_newton`), all with the matrix
``I − hγJ``; the error estimate is ``h Σ e_i k_i`` in the norm of the explicit methods and
the step size follows the same controller (:class:`._controller.Controller` with the pair's
orders). A step whose Newton iteration fails is retried once with a freshly computed ``J``
(when the one in use is older than the step), else rejected with ``h / 4``.

The trajectory keeps, for every accepted step, the converged stage arguments ``G`` and
slopes ``K``: the backward rule (:mod:`._stiff_adjoint`) differentiates the stage
equations at exactly those points by the implicit function theorem, so it neither
re-runs nor unrolls the Newton iterations. Outputs at ``t_eval`` are step end points (a
step that would pass one is shortened to land on it, and the next step resumes the
controller's size): the cubic Hermite interpolant (:meth:`ESDIRKTableau.dense_weights`)
is only third-order accurate, and at the long steps of a stiff solve its error would
dominate. ``jump_ts`` times are step end points too, and the step after one starts afresh
(new slope, controller state and first-step guess).
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
from ._stiff_newton import SLOW_ITERS, SLOW_RATE, IterationMatrix, newton_stage

np = B.host_namespace()

__all__ = ["integrate_esdirk"]

#: factor of the step size after a Newton failure with a fresh Jacobian
NEWTON_SHRINK = 0.25


class ESDIRKStepper:
    """Stage arithmetic of one ESDIRK tableau for states of one namespace and size."""

    def __init__(self, xp, tab, n, dtype, device, rtol, atol, mat: IterationMatrix):
        self.xp, self.tab, self.n = xp, tab, n
        self.dtype, self.device = dtype, device
        self.rtol, self.atol = float(rtol), float(atol)
        self.s = tab.n_stages
        self.A = [[float(v) for v in tab.A[i, :]] for i in range(self.s)]
        self.c = [float(v) for v in tab.c]
        self.e = [float(v) for v in tab.e]
        self.gamma = float(tab.gamma)
        self.mat = mat
        self.newton_iters = 0
        self.eta = 1.0

    def weighted(self, w, K, upto=None):
        """``Σ_j w_j K[j]`` over the non-zero weights (``None`` when all are zero)."""
        out = None
        for j in range(self.s if upto is None else upto):
            wj = w[j]
            if wj != 0.0:
                out = wj * K[j] if out is None else out + wj * K[j]
        return out

    def rms_scaled(self, x, y):
        xp = self.xp
        sc = self.atol + self.rtol * xp.abs(y)
        return float(xp.sqrt(xp.mean((x / sc) ** 2))) if self.n else 0.0

    def predict(self, K, i):
        """A guess of ``k_i`` for Newton's first iterate: the slopes of the two previous
        stages extrapolated linearly in ``c`` (the last slope alone when their nodes
        coincide)."""
        c = self.c
        if i < 2 or c[i - 1] == c[i - 2]:
            return K[i - 1]
        w = (c[i] - c[i - 1]) / (c[i - 1] - c[i - 2])
        return K[i - 1] + w * (K[i - 1] - K[i - 2])

    def stage_times(self, t, h, t_limit=None):
        """``t + c_i h``; with ``t_limit`` (just before a declared jump) none passes it, so
        that ``f`` is evaluated on the side of the discontinuity the step integrates."""
        times = [t + ci * h for ci in self.c]
        if t_limit is not None:
            sign = 1.0 if h > 0 else -1.0
            times = [t_limit if sign * (ti - t_limit) > 0 else ti for ti in times]
        return times

    def solve_stage(self, rhs, t_i, psi, K, i, hg, scale):
        """Stage ``i``: ``g = ψ + hγ f(t_i, g)`` by simplified Newton from the predicted
        slope; ``(g, k, ok, n_iters, rate)`` (see :func:`._stiff_newton.newton_stage`)."""
        guess = psi + hg * self.predict(K, i)
        g, k, ok, iters, rate, self.eta = newton_stage(
            rhs, t_i, psi, guess, hg, self.mat, scale, self.xp, self.eta)
        return g, k, ok, iters, rate

    def attempt(self, rhs, t, y, k1, h, times):
        """One step: ``(y_new, E, G, K, ok, slow)``; ``ok=False`` when Newton failed."""
        xp, s = self.xp, self.s
        mat = self.mat
        if not mat.prepare(h):
            return None, math.inf, None, None, False, True
        hg = h * self.gamma
        scale = self.atol + self.rtol * xp.abs(y)
        G = [y] + [None] * (s - 1)
        K = [k1] + [None] * (s - 1)
        slow = False
        for i in range(1, s):
            part = self.weighted(self.A[i], K, upto=i)
            psi = y if part is None else y + h * part
            g, k, ok, iters, rate = self.solve_stage(rhs, times[i], psi, K, i, hg, scale)
            self.newton_iters += iters
            if not ok:
                return None, math.inf, None, None, False, True
            slow = slow or rate > SLOW_RATE or iters > SLOW_ITERS
            G[i], K[i] = g, k
        y_new = G[s - 1]
        err = h * self.weighted(self.e, K)
        sc = self.atol + self.rtol * xp.maximum(xp.abs(y), xp.abs(y_new))
        E = float(xp.sqrt(xp.mean((err / sc) ** 2))) if self.n else 0.0
        return y_new, E, G, K, True, slow



def _gmres_failure_hint(mat) -> str:
    """Why the steps shrank to nothing, when GMRES stage solves are what failed."""
    return (f"; the last steps failed in the Newton iteration of the implicit stages "
            f"({mat.last_failure}): use a better preconditioner= or "
            "linear_solver='direct'")


def judge_step(ctrl, E: float, rejected: bool, h_abs: float, h_prop, *, fixed: bool,
               t: float, trajectory):
    """Whether a stiff loop keeps an attempted step whose stages were solved.

    Returns ``(accepted, h_abs, stop)``. A replayed step (``fixed``) is always kept, but
    non-finite values stop the loop (``stop = (status, message)``); an adaptive one follows
    the controller, and a step shortened to land on a target time (``h_prop``, from
    :func:`next_step_end`) does not shrink the next.
    """
    if fixed:
        if not math.isfinite(E):
            status = Status.NONFINITE
            return True, h_abs, (status, status_message(status, t, trajectory=trajectory))
        return True, h_abs, None
    accepted, factor = ctrl.decide(E, rejected)
    h_abs *= factor
    if accepted and h_prop is not None:
        h_abs = max(h_abs, h_prop)
    return accepted, h_abs, None


def next_step_end(t: float, h_abs: float, t_end: float, direction: float, *, fixed: bool,
                  step_ts, n_acc: int, n_steps: int, max_steps: int, min_step: float,
                  t1: float, trajectory):
    """Where the next attempted step of a stiff loop ends, or why the loop stops.

    Returns ``(stop, t_new, h_prop)``: ``stop`` is ``None`` or ``(status, message)``
    (budget spent, step underflow); ``h_prop`` is the controller's step when it was
    shortened to land on ``t_end`` (so the next step is not shrunk by it), else ``None``.
    A replayed step sequence (``fixed``) takes the next recorded time.
    """
    if n_steps >= max_steps:
        status = Status.MAX_ITERATIONS
        return (status, status_message(status, t, t1=t1, max_steps=max_steps,
                                       trajectory=trajectory)), t, None
    if fixed:
        return None, float(step_ts[n_acc + 1]), None
    if h_abs < min_step:
        status = Status.STEP_UNDERFLOW
        return (status, status_message(status, t, min_step=min_step,
                                       trajectory=trajectory)), t, None
    t_new = t + h_abs * direction
    if direction * (t_new - t_end) > 0:
        return None, t_end, h_abs
    return None, t_new, None


def integrate_esdirk(stepper: ESDIRKStepper, rhs, y0, t_out, *, controller: str, first_step,
                     max_steps: int, step_ts, f0, callback=None, shape=None,
                     trajectory=None, jump_ts=()) -> Trajectory:
    """Adaptive ESDIRK from ``t_out[0]`` over the increasing/decreasing host times ``t_out``.

    Never raises on a failed solve (the trajectory's ``status``/``message`` say why).
    Every accepted state is stored (``every = 1``) with its stages (``traj.stages``).
    """
    xp, tab, mat = stepper.xp, stepper.tab, stepper.mat
    n = stepper.n
    n_out = t_out.shape[0]
    t0, t1 = float(t_out[0]), float(t_out[-1])
    direction = 1.0 if t1 >= t0 else -1.0
    interval = abs(t1 - t0)
    ys = xp.full((n_out, n), math.nan, dtype=stepper.dtype, device=stepper.device)
    ys[0, :] = y0
    out_step = np.full(n_out, -1, dtype=np.int64)
    out_theta = np.zeros(n_out)
    ts = [t0]
    errs: list[float] = []
    states = {0: y0}
    stage_records: list = []
    nfe = 0
    fixed = step_ts is not None
    jumps = sorted((float(v) for v in jump_ts if direction * (float(v) - t0) > 0
                    and direction * (t1 - float(v)) > 0), key=lambda v: direction * v)
    ji = 0

    def first_h(t, y, k):
        if first_step is not None:
            return float(first_step), 0
        return initial_step(stepper.rms_scaled, rhs, t, y, k, direction, tab.error_order,
                            stepper.rtol, stepper.atol, interval), 1

    ctrl = Controller(controller, tab.order, tab.error_order)
    if fixed:
        h_abs = 0.0
    else:
        h_abs, used = first_h(t0, y0, f0)
        nfe += used
    q = 1
    while q < n_out and t_out[q] == t0:
        ys[q, :] = y0
        q += 1
    t, y, k1 = t0, y0, f0
    n_acc = n_steps = n_rej = 0
    message = ""
    status = Status.SUCCESS
    n_jac0 = mat.jacobian.nfe
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
        if q < n_out and \
                direction * (float(t_out[q]) - t_end) < 0:
            t_end = float(t_out[q])
        rejected = False
        retried = False
        newton_failed = False  # the last attempt failed in the stages' Newton iteration
        while True:
            stop, t_new, h_prop = next_step_end(
                t, h_abs, t_end, direction, fixed=fixed, step_ts=step_ts, n_acc=n_acc,
                n_steps=n_steps, max_steps=max_steps, min_step=min_step, t1=t1,
                trajectory=trajectory)
            if stop is not None:
                status, message = stop
                if newton_failed and status is Status.STEP_UNDERFLOW and \
                        mat.linear_solver == "gmres" and mat.last_failure:
                    message += _gmres_failure_hint(mat)
                break
            h = t_new - t
            if not fixed:
                h_abs = abs(h)
            mat.start_step(t, y)
            at_jump = ji < len(jumps) and t_new == jumps[ji]
            times = stepper.stage_times(
                t, h, math.nextafter(t_new, -direction * math.inf) if at_jump else None)
            y_new, E, G, K, ok, slow = stepper.attempt(rhs, t, y, k1, h, times)
            n_steps += 1
            newton_failed = not ok
            if not ok:
                if not mat.fresh and not retried:
                    # a Jacobian from an earlier state: recompute it here, retry the step
                    # (the failed attempt counts as rejected: n_steps = accepted + rejected)
                    mat.stale = True
                    retried = True
                    n_rej += 1
                    continue
                if fixed:
                    status = Status.DIVERGED
                    message = (f"diffsolve.ode.odeint: the Newton iteration of the implicit "
                               f"stages failed at t={t!r} with the replayed step h={h!r}; "
                               "replay the steps of a solve with the same method, or let "
                               "the step size adapt")
                    break
                h_abs *= NEWTON_SHRINK
                rejected = True
                n_rej += 1
                continue
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
        mat.stale = mat.stale or slow
        errs.append(E)
        while q < n_out and direction * (float(t_out[q]) - t_new) <= 0:
            theta = (float(t_out[q]) - t) / h
            ys[q, :] = y + h * stepper.weighted(tab.dense_weights(theta), K)
            out_step[q] = n_acc
            out_theta[q] = theta
            q += 1
        stage_records.append((G, K, times))
        n_acc += 1
        t = t_new
        y = y_new
        ts.append(t)
        states[n_acc] = y
        if ji < len(jumps) and t == jumps[ji]:
            # a declared discontinuity: restart as at t0 (the FSAL slope is stale across it)
            ji += 1
            ctrl = Controller(controller, tab.order, tab.error_order)
            k1 = rhs(t, y)
            nfe += 1
            if not fixed:
                h_abs, used = first_h(t, y, k1)
                nfe += used
            mat.stale = True
        else:
            k1 = K[-1]
        if callback is not None:
            yv = xp.reshape(y, shape) if shape is not None else y
            if wants_stop(callback(ODEState(t, yv, h, n_steps, n_acc, E, trajectory))):
                status = Status.STOPPED
                message = status_message(status, t, trajectory=trajectory)
                break
    success = not message
    stats = np.asarray([n_steps, n_acc, n_rej,
                        nfe + stepper.newton_iters + (mat.jacobian.nfe - n_jac0)],
                       dtype=np.int64)
    traj = Trajectory(ys=ys, ts=np.asarray(ts), states=states, every=1, out_step=out_step,
                      out_theta=out_theta, errs=np.asarray(errs, dtype=np.float64),
                      stiff=np.zeros((0,), dtype=np.float64), stats=stats, success=success,
                      message=message or "The solver reached the end of the integration "
                      "interval.", t_fail=math.nan if success else t, status=status,
                      n_reached=q)
    traj.stages = stage_records
    traj.stiff_stats = {"n_jac": mat.n_jac, "n_lu": mat.n_lu,
                        "n_newton": stepper.newton_iters, "n_linear_solves": mat.n_solves,
                        "n_krylov_products": mat.krylov_products}
    return traj
