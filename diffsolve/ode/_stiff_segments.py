"""Declared discontinuities (``jump_ts``) for the explicit methods: one solve per segment.

A right-hand side with a jump in time breaks the error estimate of every step that
straddles it: the solver shrinks the step and "succeeds" with an error far beyond the
tolerance. Declaring the jump splits the interval at it; each segment is a fresh solve
(new first slope — the FSAL slope of the previous step is stale across the jump —, new
controller state and initial step), and the segments' trajectories are joined into one,
so that the outputs and the discrete adjoint (which recomputes every step's first slope
from its stored state) see one sequence of steps. The implicit methods restart at the
jumps inside their own loop (:mod:`._stiff_esdirk`).
"""

from __future__ import annotations

import itertools
import math

from .. import _backend as B
from .._status import Status
from ._integrate import Trajectory

np = B.host_namespace()

__all__ = ["integrate_segments"]


def _segments(t_out, jumps):
    """``[(t_start, t_end, [output indices in (t_start, t_end]])]`` (the first segment also
    owns the outputs at ``t_out[0]``)."""
    t0, t1 = float(t_out[0]), float(t_out[-1])
    direction = 1.0 if t1 >= t0 else -1.0
    cuts = [t0, *sorted(jumps, key=lambda v: direction * v), t1]
    out = []
    q = 1
    T = t_out.shape[0]
    for a, b in itertools.pairwise(cuts):
        idx = []
        while q < T and direction * (float(t_out[q]) - b) <= 0:
            idx.append(q)
            q += 1
        out.append((a, b, idx))
    return out


def integrate_segments(run, y0, t_out, jumps, xp) -> Trajectory:
    """Solve segment by segment with ``run(y_start, t_seg) -> Trajectory`` and join them.

    ``t_seg`` holds the segment's start, its outputs and its end (appended when the end
    is not an output). The joined trajectory stores every state (``every = 1``).
    """
    T = t_out.shape[0]
    n = y0.shape[0]
    rows = [None] * T
    rows[0] = y0
    out_step = np.full(T, -1, dtype=np.int64)
    out_theta = np.zeros(T)
    ts = [float(t_out[0])]
    states = {0: y0}
    errs, stiff = [], []
    stats = np.zeros(4, dtype=np.int64)
    y = y0
    offset = 0
    last: Trajectory | None = None
    for a, b, idx in _segments(t_out, jumps):
        times = [a] + [float(t_out[q]) for q in idx]
        appended = not idx or times[-1] != b
        if appended:
            times.append(b)
        traj = run(y, np.asarray(times, dtype=np.float64))
        last = traj
        stats += traj.stats
        N = traj.ts.shape[0] - 1
        for k, q in enumerate(idx, start=1):
            if k < traj.n_reached:
                rows[q] = traj.ys[k, ...]
                out_step[q] = int(traj.out_step[k]) + (offset if traj.out_step[k] >= 0 else 0)
                out_theta[q] = float(traj.out_theta[k])
        for m in range(1, N + 1):
            states[offset + m] = _state(traj, m)
        ts.extend(float(v) for v in traj.ts[1:])
        errs.extend(traj.errs.tolist())
        stiff.extend(traj.stiff.tolist())
        offset += N
        if not traj.success:
            break
        y = states[offset]
    assert last is not None  # there is always at least one segment
    nan_row = xp.full((n,), math.nan, dtype=y0.dtype, device=B.device(y0))
    ys = xp.stack([r if r is not None else nan_row for r in rows], axis=0)
    reached = next((q for q in range(1, T) if rows[q] is None), T)
    return Trajectory(ys=ys, ts=np.asarray(ts), states=states, every=1, out_step=out_step,
                      out_theta=out_theta, errs=np.asarray(errs, dtype=np.float64),
                      stiff=np.asarray(stiff, dtype=np.float64), stats=stats,
                      success=last.success, message=last.message, t_fail=last.t_fail,
                      status=last.status if not last.success else Status.SUCCESS,
                      n_reached=reached)


def _state(traj: Trajectory, m: int):
    all_states = traj.all_states
    if all_states is not None:
        return all_states[m, ...]  # type: ignore[index]
    return traj.states[m]
