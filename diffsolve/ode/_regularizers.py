"""Solver-heuristic regularisers: global sums over accepted steps and the local variant.

Global (Pal, Ma, Shah, Rackauckas, "Opening the Blackbox", ICML 2021):
``R_E = Σ_j E_j |h_j|`` with ``E_j`` the scaled RMS error estimate of accepted step ``j``,
and ``R_S = Σ_j λ_j |h_j|`` with ``λ_j = ‖k_s − k_{s−1}‖ / ‖g_s − g_{s−1}‖`` (Shampine's
estimate of the dominant eigenvalue's magnitude, Hairer–Wanner II, IV.2), so each term is
the DOPRI5 stiffness indicator ``|hλ|`` of the step (for ``bs3`` the last two stages sit
at ``c = 3/4`` and ``1``, so the estimate also sees the explicit time dependence of f).
Both are differentiated by the discrete adjoint with the step sizes held constant.

Local (Pal, Edelman, Rackauckas, "Locally regularized neural differential equations",
ICML 2023): after the solve, draw ``t_r`` uniformly in ``[t_0, t_1]`` ("unbiased") or
uniformly among the accepted step times ("biased"), take ``u_r = y(t_r)`` from the dense
output, and take ONE step from ``(t_r, u_r)`` with Hairer's initial step ``h_r``;
``R_E = E(t_r) |h_r|`` (and ``R_S = λ(t_r) |h_r|``). Only that step's stages carry
gradient (``u_r`` and ``h_r`` are constants of the backward pass), which makes the
regulariser's gradient cost one step instead of a reverse sweep.
"""

from __future__ import annotations

from .. import _backend as B
from ._controller import initial_step
from ._integrate import Stepper, Trajectory, state_at

__all__ = ["global_regularizers", "local_step"]

np = B.host_namespace()


def global_regularizers(traj: Trajectory) -> tuple[float, float]:
    """``(R_E, R_S)`` of one trajectory from its per-step records."""
    hs = np.abs(traj.ts[1:] - traj.ts[:-1])
    r_e = float(np.sum(traj.errs * hs)) if traj.errs.shape[0] else 0.0
    r_s = float(np.sum(traj.stiff * hs)) if traj.stiff.shape[0] else 0.0
    return r_e, r_s


def local_step(stepper: Stepper, rhs, traj: Trajectory, mode: str, rng,
               want_stiff: bool) -> dict | None:
    """One extra step from a sampled point of the solution; returns its record."""
    xp, tab = stepper.xp, stepper.tab
    ts = traj.ts
    N = ts.shape[0] - 1
    if N == 0:
        return None
    t0, t1 = float(ts[0]), float(ts[-1])
    direction = 1.0 if t1 >= t0 else -1.0
    nfe = 0
    if mode == "unbiased":
        t_r = t0 + float(rng.uniform()) * (t1 - t0)
        n = 0
        while n < N - 1 and direction * (float(ts[n + 1]) - t_r) <= 0:
            n += 1
        y_n = state_at(stepper, rhs, traj, n)
        h = float(ts[n + 1] - ts[n])
        theta = (t_r - float(ts[n])) / h
        stepper.K[0, :] = rhs(float(ts[n]), y_n)
        stepper.stages(rhs, float(ts[n]), y_n, h)
        nfe += stepper.s
        u_r = stepper.combine(y_n, stepper.coeffs(tab.dense_weights(theta)), h)
        u_r = xp.asarray(u_r, copy=True)
    else:
        n = int(rng.integers(N))
        t_r = float(ts[n])
        u_r = state_at(stepper, rhs, traj, n)
    f0 = rhs(t_r, u_r)
    nfe += 1
    dt = initial_step(stepper.rms_scaled, rhs, t_r, u_r, f0, direction, tab.error_order,
                      stepper.rtol, stepper.atol, abs(t1 - t0))
    nfe += 1
    h_r = direction * dt
    stepper.K[0, :] = f0
    y_new = stepper.stages(rhs, t_r, u_r, h_r)
    nfe += stepper.s - 1
    E = stepper.error_norm(u_r, y_new, h_r)
    S = stepper.stiffness() if want_stiff else 0.0
    return {"t": t_r, "y": u_r, "h": h_r, "E": E, "S": S, "nfe": nfe}
