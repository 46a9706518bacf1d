"""The compiled fast path of the stiff methods, for a Numba ``@njit`` vector field.

:func:`compiled_stiff_trajectory` runs the whole adaptive loop of ``kvaerno3``/``kvaerno5``
(:mod:`._stiff_esdirk`) or ``rodas5`` (:mod:`._stiff_rosenbrock`) in the Numba kernels of
``diffsolve.kernels.cpu.ode_stiff`` and returns the :class:`~._integrate.Trajectory` the
Python loop returns: the same outputs, step times and states, the converged stages of every
accepted step (``traj.stages``, read by the discrete adjoint of :mod:`._stiff_adjoint`),
the work counts (``stats``, ``stiff_stats``) and the same status and message. The kernels
take the reuse and controller constants from the Python modules at every call, so the two
paths cannot drift apart in them; the logic is mirrored line for line (keep both in sync).

Differences from the Python loop, all in the last bits: the dense LU is the kernel's own
partial-pivoting elimination (LAPACK's blocked ``getrf`` orders its sums differently) and
the error norms sum in order (NumPy sums pairwise). The step sequence is the same unless an
accept/reject or a Newton convergence test sits within rounding of its threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .. import _backend as B
from .._status import Status
from ._controller import MAX_FACTOR, MIN_FACTOR, SAFETY
from ._integrate import Trajectory
from ._result import status_message
from ._stiff_esdirk import NEWTON_SHRINK
from ._stiff_newton import KAPPA, MAX_ITERS, REFACTOR_RATIO, SLOW_ITERS, SLOW_RATE
from ._stiff_rosenbrock import RODAS5

np = B.host_namespace()

__all__ = ["COMPILED_MAX_N", "compiled_stiff_trajectory"]

WHERE = "diffsolve.ode.odeint"

#: largest state for the compiled path: its dense LU costs n³/3 per factorisation and its
#: finite-difference Jacobian n evaluations of f; beyond a few hundred unknowns a sparse
#: pattern (jac_sparsity, the Python loop's sparse LU) is the better choice, and LAPACK's
#: blocked LU beats the kernel's unblocked one
COMPILED_MAX_N = 200

#: kernel status codes (kernels/cpu/ode_stiff.py)
_OK, _MAX_STEPS, _UNDERFLOW, _BAD_SHAPE, _NONFINITE, _DIVERGED, _BAD_JAC = 0, 1, 2, 3, 5, 6, 7

_TABLES: dict = {}


def _consts():
    """The constants of the Python loop, read now (a change there reaches the kernel)."""
    return np.asarray([REFACTOR_RATIO, SLOW_RATE, SLOW_ITERS, MAX_ITERS, KAPPA,
                       NEWTON_SHRINK, SAFETY, MIN_FACTOR, MAX_FACTOR], dtype=np.float64)


def _rodas_arrays(tab):
    """``a``, ``c`` (s, s) strictly lower triangular and ``alpha``, ``gammas``, ``m``,
    ``e = m − m̂`` of a :class:`~._stiff_rosenbrock.RosenbrockTableau` as float64 arrays."""
    key = ("rodas", id(tab))
    arrs = _TABLES.get(key)
    if arrs is None:
        s = tab.n_stages
        a = np.zeros((s, s), dtype=np.float64)
        cc = np.zeros((s, s), dtype=np.float64)
        for i in range(s):
            for j, v in enumerate(tab.a[i]):
                a[i, j] = v
            for j, v in enumerate(tab.c[i]):
                cc[i, j] = v
        e = [mi - mh for mi, mh in zip(tab.m, tab.m_hat)]
        arrs = (a, cc, *(np.asarray(v, dtype=np.float64)
                         for v in (tab.alpha, tab.gammas, tab.m, e)))
        _TABLES[key] = arrs
    return arrs


def _esdirk_arrays(tab):
    key = ("esdirk", tab.name)
    arrs = _TABLES.get(key)
    if arrs is None:
        # writable copies: the tableau's arrays are read-only, the kernel's signature is not
        arrs = tuple(np.array(v, dtype=np.float64, order="C") for v in (tab.A, tab.c, tab.e))
        _TABLES[key] = arrs
    return arrs


def _host_jumps(jump_ts, t0: float, t1: float):
    """The declared jumps strictly inside ``(t0, t1)``, in integration order (as the Python
    loops select them)."""
    direction = 1.0 if t1 >= t0 else -1.0
    jumps = sorted((float(v) for v in jump_ts if direction * (float(v) - t0) > 0
                    and direction * (t1 - float(v)) > 0), key=lambda v: direction * v)
    return np.asarray(jumps, dtype=np.float64)


def compiled_stiff_trajectory(tab, settings, *, f, jac, y0, f0, t_out, params, step_ts,
                              jump_ts, trajectory):
    """One stiff trajectory by the compiled loop, or ``None`` when ``f`` (or ``jac``) lacks
    the float64 function-pointer signature (the caller then runs the Python loop).

    ``y0``, ``f0 = f(t_out[0], y0)``, ``params``: host float64 1-D arrays; ``jac``: ``None``
    (forward differences) or an ``@njit`` ``jac(t, y, params) -> (n, n)``. The caller adds
    the evaluation of ``f0`` to ``stats`` as for the Python loop.
    """
    rtol, atol = settings.norm_tolerances
    t0, t1 = float(t_out[0]), float(t_out[-1])
    kern_args = dict(y0=np.ascontiguousarray(y0), f0=np.ascontiguousarray(f0),
                     t_out=np.ascontiguousarray(t_out, dtype=np.float64),
                     params=np.ascontiguousarray(params))
    steps = np.empty((0,), dtype=np.float64) if step_ts is None else \
        np.ascontiguousarray(step_ts, dtype=np.float64)
    jumps = _host_jumps(jump_ts, t0, t1)
    common = (float(rtol), float(atol), settings.controller == "pi", settings.first_step,
              int(settings.max_steps), steps, jumps, _consts())
    rodas = tab is RODAS5
    import numba

    try:
        if rodas:
            out = B.get_kernel(np, "ode_stiff.rosenbrock_solve")(
                f, jac, *kern_args.values(), *_rodas_arrays(tab), tab.gamma, tab.order,
                tab.error_order, *common)
        else:
            out = B.get_kernel(np, "ode_stiff.esdirk_solve")(
                f, jac, *kern_args.values(), *_esdirk_arrays(tab), tab.gamma, tab.order,
                tab.error_order, *common)
    except (numba.core.errors.TypingError, TypeError, ValueError):
        return None  # f or jac without the float64 signature: the Python loop calls it
    if rodas:
        ys, ts, states, errs, out_step, out_theta, stats, sst, code, _t_last, t_fail, aux, q = \
            out
        stages = None
        stiff_stats = {"n_jac": int(sst[0]), "n_lu": int(sst[1])}
    else:
        ys, ts, states, Gs, Ks, tms, errs, out_step, out_theta, stats, sst, code, _t_last, \
            t_fail, aux, q = out
        stages = _Stages(Gs, Ks, tms)
        stiff_stats = {"n_jac": int(sst[0]), "n_lu": int(sst[1]), "n_newton": int(sst[2]),
                       "n_linear_solves": int(sst[3])}
    code = int(code)
    t_fail = float(t_fail)
    n = y0.shape[0]
    if code == _BAD_SHAPE:
        raise ValueError(f"{WHERE}: f(t, y, params) returned an array of the wrong shape at "
                         f"t={t_fail!r}; it must return dy/dt as an array of y's shape "
                         f"({n},)")
    if code == _BAD_JAC:
        raise ValueError(f"{WHERE}: jac(t, y, params) returned an array of the wrong shape "
                         f"at t={t_fail!r}; it must return ∂f/∂y of the flattened state, "
                         f"shape ({n}, {n})")
    status, message = _status(code, t_fail, float(aux), t1, settings, trajectory)
    success = code == _OK
    traj = Trajectory(ys=ys, ts=ts, states={m: states[m] for m in range(ts.shape[0])},
                      every=1, out_step=out_step, out_theta=out_theta, errs=errs,
                      stiff=np.zeros((0,), dtype=np.float64), stats=stats, success=success,
                      message=message, t_fail=math.nan if success else t_fail, status=status,
                      n_reached=int(q))
    # a read-only sequence where the Trajectory field is annotated as the Python loop's list
    traj.stages = stages
    traj.stiff_stats = stiff_stats
    return traj


class _Stages(Sequence):
    """``traj.stages`` of the compiled loop: ``stages[k] = (G, K, times)`` of accepted step
    ``k`` as the Python loop records them (lists of stage rows, a list of floats), built on
    first access from the kernel's (N, s, n) arrays: a forward solve that is never
    differentiated does not pay for N small lists. Each step's tuple is kept once built
    (one object per stage, so the adjoint's per-point VJP cache recognises a point it has
    just traced)."""

    def __init__(self, Gs, Ks, times):
        self._G, self._K, self._t = Gs, Ks, times
        self._built: dict = {}

    def __len__(self) -> int:
        return int(self._G.shape[0])

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        k = range(len(self))[k]  # negative indices, IndexError past the end
        rec = self._built.get(k)
        if rec is None:
            rec = self._built[k] = (list(self._G[k]), list(self._K[k]), self._t[k].tolist())
        return rec


def _status(code: int, t: float, aux: float, t1: float, settings, trajectory):
    """``(Status, message)`` of a kernel status code, worded as the Python loops word it."""
    if code == _OK:
        return Status.SUCCESS, "The solver reached the end of the integration interval."
    if code == _MAX_STEPS:
        status = Status.MAX_ITERATIONS
        return status, status_message(status, t, t1=t1, max_steps=settings.max_steps,
                                      trajectory=trajectory)
    if code == _UNDERFLOW:
        status = Status.STEP_UNDERFLOW
        return status, status_message(status, t, min_step=aux, trajectory=trajectory)
    if code == _DIVERGED:
        return Status.DIVERGED, (
            f"diffsolve.ode.odeint: the Newton iteration of the implicit stages failed at "
            f"t={t!r} with the replayed step h={aux!r}; replay the steps of a solve with "
            "the same method, or let the step size adapt")
    if code == _NONFINITE:
        status = Status.NONFINITE
        return status, status_message(status, t, trajectory=trajectory)
    raise AssertionError(f"{WHERE}: unknown status {code} from the compiled stiff loop")
