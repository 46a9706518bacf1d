"""``diffsolve.ode.odeint``: adaptive explicit Runge–Kutta with adjoints and regularisers."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .. import _backend as B
from .. import _validate as V
from .._autodiff import custom_vjp
from .._status import (
    ConvergenceWarning,
    Status,
    error_class,
    report,
    warn_at_caller,
    worst_status,
)
from .._typing import Array, Callback
from ._adjoint import backsolve_adjoint, discrete_adjoint, one_step_adjoint, t_eval_cotangent
from ._integrate import Stepper, Trajectory, integrate, reached_outputs
from ._regularizers import global_regularizers, local_step
from ._result import ODEResult, attach_message, status_message
from ._settings import ODESettings, ODEState, odeint_settings
from ._stiff_auto import AUTO_EXPLICIT, AUTO_IMPLICIT, auto_trajectory, stiffness_hint
from ._stiff_backsolve import stiff_backsolve
from ._stiff_jacobian import pattern_csr
from ._stiff_segments import integrate_segments
from ._stiff_solve import (
    IMPLICIT_TABLEAUX,
    auto_backward,
    lazy_vjp,
    stiff_adjoint,
    stiff_trajectory,
)
from ._stiff_tableaux import STIFF_TABLEAUX
from ._tableaux import TABLEAUX
from ._vector_field import make_rhs, make_vjp
from ._vectorized import integrate_vectorized, row_field
from ._vectorized_adjoint import vectorized_reverse

__all__ = ["odeint"]

np = B.host_namespace()
_NDARRAY = np.ndarray  # numpy.ndarray (the namespace re-exports it)
_HOST_FLOATS = (np.dtype(np.float64), np.dtype(np.float32))

WHERE = "diffsolve.ode.odeint"

#: odeint's options in its signature's order (what :func:`odeint_settings` takes)
_OPTIONS = ("method", "rtol", "atol", "controller", "first_step", "max_steps", "adjoint",
            "regularizers", "local_regularization", "seed", "vjp", "batch_mode",
            "checkpoint_every", "throw", "callback", "jac", "linear_solver",
            "preconditioner")


# ---------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------
def _host_times(t_eval):
    ndarray = type(t_eval) is _NDARRAY  # the common case, without the namespace lookup
    if ndarray and t_eval.ndim == 1 and t_eval.dtype in _HOST_FLOATS:
        # the values tolist() -> float64 would give (float32 widens exactly), in one copy
        t = np.array(t_eval, dtype=np.float64)
        if t.shape[0] < 2:
            raise ValueError(f"{WHERE}: t_eval needs at least 2 times (t_eval[0] is the "
                             f"initial time), got {t.shape[0]}")
        if not bool(np.isfinite(t).all()):
            raise ValueError(f"{WHERE}: t_eval contains NaN or infinite times")
        return _check_monotone(t)
    if ndarray or B.is_array(t_eval):
        if t_eval.ndim != 1:
            raise ValueError(f"{WHERE}: t_eval must be 1-D, got shape {tuple(t_eval.shape)}")
        # the one dtype policy (float16/bool/complex refused); NaN/size are checked below
        t_eval = V.float_array(WHERE, "t_eval", t_eval, min_ndim=1, max_ndim=1,
                               allow_empty=True, finite=False)
        if ndarray or B.is_numpy(B.array_namespace(t_eval)):
            vals = B.host_numpy(t_eval).tolist()
        else:  # a few device-to-host reads (CuPy) or standard indexing (array_api_strict)
            vals = [float(t_eval[i]) for i in range(t_eval.shape[0])]
    else:
        try:
            vals = [float(v) for v in t_eval]
        except TypeError:
            raise TypeError(f"{WHERE}: t_eval must be a 1-D array or sequence of times, got "
                            f"{type(t_eval).__name__}") from None
    if len(vals) < 2:
        raise ValueError(f"{WHERE}: t_eval needs at least 2 times (t_eval[0] is the initial "
                         f"time), got {len(vals)}")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{WHERE}: t_eval contains NaN or infinite times")
    return _check_monotone(np.array(vals, dtype=np.float64), vals)


def _check_monotone(t, vals=None):
    d = t[1:] - t[:-1]
    if not (bool((d > 0).all()) or bool((d < 0).all())):
        vals = t.tolist() if vals is None else vals  # as given (ints print as ints)
        bad = next(i for i in range(1, len(vals)) if (d[i - 1] <= 0) != (d[0] <= 0)
                   or d[i - 1] == 0)
        raise ValueError(
            f"{WHERE}: t_eval must be strictly increasing or strictly decreasing; "
            f"t_eval[{bad - 1}]={vals[bad - 1]!r}, t_eval[{bad}]={vals[bad]!r}; sort it "
            "(and drop duplicates)"
        )
    return t


def _check_step_ts(step_ts, t_out, batched_per_traj, B_):
    if step_ts is None:
        return None
    seqs = list(step_ts) if (batched_per_traj and isinstance(step_ts, (list, tuple))) \
        else [step_ts] * (B_ if batched_per_traj else 1)
    out = []
    for s in seqs:
        ts = _host_times(s)
        if ts[0] != t_out[0] or ts[-1] != t_out[-1] or \
                (ts[-1] - ts[0]) * (t_out[-1] - t_out[0]) < 0:
            raise ValueError(f"{WHERE}: step_ts must run from t_eval[0]={t_out[0]!r} to "
                             f"t_eval[-1]={t_out[-1]!r} in the same direction (e.g. a "
                             "previous result's res.ts)")
        out.append(ts)
    return out


def _check_jump_ts(jump_ts, t_out):
    """``jump_ts`` as a tuple of host floats strictly inside the integration interval."""
    if jump_ts is None:
        return ()
    t0, t1 = float(t_out[0]), float(t_out[-1])
    if B.is_array(jump_ts) or isinstance(jump_ts, (list, tuple)):
        try:
            vals = [float(v) for v in (B.host_numpy(jump_ts).tolist() if B.is_array(jump_ts)
                                       and B.is_numpy(B.array_namespace(jump_ts))
                                       else jump_ts)]
        except (TypeError, ValueError):
            vals = None
    else:
        vals = None
    if vals is None:
        raise TypeError(f"{WHERE}: jump_ts must be a 1-D array or sequence of times, got "
                        f"{type(jump_ts).__name__}")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{WHERE}: jump_ts contains NaN or infinite times")
    lo, hi = min(t0, t1), max(t0, t1)
    return tuple(sorted({v for v in vals if lo < v < hi}))


def _segment_steps(step_ts, t_seg):
    """The replayed step times inside one segment ``[t_seg[0], t_seg[-1]]``, its ends
    included (added when the replayed steps do not stop on them)."""
    a, b = float(t_seg[0]), float(t_seg[-1])
    sign = 1.0 if b >= a else -1.0
    inner = [float(v) for v in step_ts if sign * (float(v) - a) > 0 and sign * (b - float(v)) > 0]
    return np.asarray([a, *inner, b], dtype=np.float64)


def _check_y0(y0, host):
    """``y0`` under the one input policy (see :func:`diffsolve._validate.float_array`)."""
    if host and y0.dtype in _HOST_FLOATS and y0.ndim in (1, 2) and y0.size:
        # the common case without the namespace wrapper: only finiteness to check
        if not _finite(True, None, y0):
            raise ValueError(f"{WHERE}: y0 contains NaN or inf; pass finite values")
        return y0
    if B.is_array(y0) and y0.ndim not in (1, 2):
        raise ValueError(f"{WHERE}: y0 must have shape (d,) or (B, d) for a batch, got "
                         f"{tuple(y0.shape)}")
    return V.float_array(WHERE, "y0", y0, min_ndim=1, max_ndim=2)


def _check_params(params, host):
    """``params``: None or ONE 1-D float vector (may be empty), under the input policy."""
    if params is None:
        return None
    if host and params.dtype in _HOST_FLOATS and params.ndim == 1:
        if not _finite(True, None, params):
            raise ValueError(f"{WHERE}: params contains NaN or inf; pass finite values")
        return params
    if B.is_array(params) and params.ndim != 1:
        raise ValueError(f"{WHERE}: params must be ONE 1-D float array (or None), got shape "
                         f"{tuple(params.shape)}; flatten your parameters into a vector and "
                         "unpack them inside f")
    return V.float_array(WHERE, "params", params, min_ndim=1, max_ndim=1, allow_empty=True)


# ---------------------------------------------------------------------------------------
# the forward solve
# ---------------------------------------------------------------------------------------
#: ``ode.is_jitted`` (an isinstance test: it depends on the type of f only) by type of f
_JITTED_TYPES: dict = {}


_ALLOCATING: dict = {}


def _check_vectorized_inputs(xp, y0, step_ts, jump_ts, settings) -> None:
    """What ``batch_mode="vectorized"`` takes beyond the settings' own checks."""
    if y0.ndim != 2:
        raise ValueError(f"{WHERE}: batch_mode='vectorized' integrates the rows of a (B, d) "
                         f"y0, got y0 of shape {tuple(y0.shape)}; for one trajectory use the "
                         "default batch_mode (f then sees y of shape (d,))")
    if not (B.is_numpy(xp) or B.is_cupy(xp)):
        raise TypeError(f"{WHERE}: batch_mode='vectorized' runs on NumPy and CuPy arrays, "
                        f"got {xp.__name__} arrays; pass NumPy/CuPy arrays (for a torch or "
                        "JAX field, the pair from diffsolve.ode.from_torch / from_jax)")
    for name, value in (("step_ts", step_ts), ("jump_ts", jump_ts)):
        if value is not None:
            raise ValueError(f"{WHERE}: batch_mode='vectorized' does not take {name}; use "
                             "batch_mode='per-trajectory'")
    if settings.fixed_budget:
        raise ValueError(f"{WHERE}: batch_mode='vectorized' adapts each row's steps; "
                         "rtol = atol = 0 (the fixed budget) is for batch_mode="
                         "'per-trajectory'")


def _allocating_field(xp, f):
    """``f`` itself, or for an in-place ``@njit`` field ``f(t, y, params, out)`` its
    allocating adapter ``g(t, y, params) -> dy/dt`` (made once per field): the compiled
    explicit integrator calls the in-place field, every other path the adapter."""
    hit = _ALLOCATING.get(f)
    if hit is None:
        kern = B.get_kernel(xp, "ode.fits_inplace")
        hit = B.get_kernel(xp, "ode.allocating")(f) if kern(f) else f
        if len(_ALLOCATING) >= 64:
            _ALLOCATING.clear()
        _ALLOCATING[f] = hit
    return hit


def _is_jitted(xp, f) -> bool:
    jitted = _JITTED_TYPES.get(type(f))
    if jitted is None:
        jitted = _JITTED_TYPES[type(f)] = bool(B.get_kernel(xp, "ode.is_jitted")(f))
    return jitted


#: ``every`` for the backsolve forward: beyond any step count, so the integrators store
#: no state past ``y0`` (the backsolve adjoint re-integrates ``y`` backwards from the
#: outputs, Chen et al. 2018, Alg. 1, and needs none of the accepted states).
_NO_CHECKPOINTS = 1 << 62
_NO_RECORDS = np.zeros((0,), dtype=np.float64)
_NO_RECORDS.flags.writeable = False


def _backsolve_residual(traj: Trajectory) -> Trajectory:
    """What the backsolve backward reads of a trajectory: outputs and ``y0``, O(T·n).

    The per-step records (step times, error/stiffness estimates, checkpoints) are dropped
    so that the residuals do not grow with the number of steps; ``res.ts`` still holds
    the step times for the caller.
    """
    return Trajectory(ys=traj.ys, ts=_NO_RECORDS, states={0: traj.states[0]},
                      every=_NO_CHECKPOINTS, out_step=traj.out_step,
                      out_theta=traj.out_theta, errs=_NO_RECORDS, stiff=_NO_RECORDS,
                      stats=traj.stats, success=traj.success, message=traj.message,
                      t_fail=traj.t_fail, status=traj.status, n_reached=traj.n_reached)


def _stiff(settings, tab) -> bool:
    """Whether a solve ran (or may have switched to) an implicit method."""
    return settings.method == "auto" or tab.name in IMPLICIT_TABLEAUX


def _finite(host, xp, x) -> bool:
    """``B.isfinite_all``; for a NumPy array, the same test without the namespace wrapper."""
    if host:
        if x.size <= 32 and x.dtype in _HOST_FLOATS:  # a few floats: no temporary array
            return all(map(math.isfinite, x.reshape(-1).tolist()))
        return x.size == 0 or bool(np.isfinite(x).all())
    return B.isfinite_all(xp, x)


def _compiled_args(xp, params_eff, tab, opts, want_stiff):
    return (B.contiguous(xp, params_eff), tab.A, tab.c, tab.e, tab.P, tab.order,
            tab.error_order, opts["rtol"], opts["atol"], opts["controller"] == "pi",
            float(opts["first_step"] or -1.0), int(opts["max_steps"]))


def _compiled_solve(kern, f, y0, t_out, params_eff, tab, opts, step_ts, want_stiff,
                    trajectory):
    xp = opts["xp"]
    out = kern(f, B.contiguous(xp, y0), t_out,
               *_compiled_args(xp, params_eff, tab, opts, want_stiff),
               step_ts if step_ts is not None else np.empty((0,), dtype=np.float64),
               bool(want_stiff))
    return _compiled_trajectory(out, y0, t_out, opts, trajectory)


class _StateRows(Mapping):
    """``{m: states[m]}`` for every row of the compiled loop's (N+1, n) states, lazily."""

    __slots__ = ("_a",)

    def __init__(self, states):
        self._a = states

    def __getitem__(self, m):
        if not (isinstance(m, (int, np.integer)) and 0 <= m < self._a.shape[0]):
            raise KeyError(m)
        return self._a[m]

    def __contains__(self, m):
        return isinstance(m, (int, np.integer)) and 0 <= m < self._a.shape[0]

    def __len__(self):
        return self._a.shape[0]

    def __iter__(self):
        return iter(range(self._a.shape[0]))


#: status codes of the compiled integrator (kernels/cpu/ode.py) -> Status
_KERNEL_STATUS = {0: Status.SUCCESS, 1: Status.MAX_ITERATIONS, 2: Status.STEP_UNDERFLOW,
                  4: Status.NONFINITE, 5: Status.NONFINITE}


def _compiled_trajectory(out, y0, t_out, opts, trajectory=None):
    xp = opts["xp"]
    ys, ts, states, errs, stiff, out_step, out_theta, stats, code, t_fail = out
    code, t_fail = int(code), float(t_fail)
    if code == 3:
        raise ValueError(f"{WHERE}: f(t, y, params) returned an array of the wrong shape at "
                         f"t={t_fail!r}; it must return dy/dt with y's shape "
                         f"{tuple(y0.shape)}")
    status = _KERNEL_STATUS[code]
    every = opts["every"]
    N = ts.shape[0] - 1
    # every row, as views built when read (a batch of short solves spent a third of its
    # time building these dicts); else copies, so that the full (N, n) array can be freed
    st = _StateRows(states) if every == 1 else \
        {m: xp.asarray(states[m], copy=True) for m in range(0, N + 1, every)}
    message = ""
    if code == 5:  # the step size underflowed on non-finite slopes, or a fixed step met them
        message = status_message(status, t_fail, trajectory=trajectory,
                                 nonfinite_t=None if opts["fixed"] else t_fail)
    elif code != 0:
        message = status_message(status, t_fail, t1=float(t_out[-1]),
                                 max_steps=opts["max_steps"], trajectory=trajectory)
    return Trajectory(ys=ys, ts=ts, states=st,
                      every=every, out_step=out_step,
                      out_theta=out_theta, errs=errs, stiff=stiff, stats=stats,
                      success=code == 0, message=message or "The solver reached the end "
                      "of the integration interval.", t_fail=t_fail if code else math.nan,
                      all_states=states if every == 1 else None, status=status,
                      n_reached=out_step.shape[0] if code == 0 else reached_outputs(out_step))


def _nonfinite_start(xp, y0, t_out, dtype, device, host, trajectory) -> Trajectory:
    """The trajectory of a solve whose ``f(t_0, y_0)`` is not finite: ``ys[0] = y0`` only."""
    T = t_out.shape[0]
    n = y0.shape[0]
    if host:
        ys = np.full((T, n), math.nan, dtype=dtype)
        ys[0, :] = y0
    else:
        ys = xp.concat([xp.reshape(y0, (1, n)),
                        xp.full((T - 1, n), math.nan, dtype=dtype, device=device)], axis=0)
    t0 = float(t_out[0])
    return Trajectory(ys=ys, ts=np.asarray([t0]), states={0: y0}, every=1,
                      out_step=np.full(T, -1, dtype=np.int64), out_theta=np.zeros(T),
                      errs=_NO_RECORDS, stiff=_NO_RECORDS,
                      stats=np.asarray([0, 0, 0, 1], dtype=np.int64), success=False,
                      message=status_message(Status.NONFINITE, t0, trajectory=trajectory)
                      + " (at the initial time)",
                      t_fail=t0, status=Status.NONFINITE, n_reached=1)


class _Forward:
    """Everything the backward rule reuses.

    ``stepper`` and ``fvjp`` are built on first use: a forward solve that is never
    differentiated (or runs compiled) needs neither, and building them is a fixed cost of
    every call.
    """

    # given as keywords to __init__ (the forward pass's locals)
    xp: Any
    tab: Any
    y0: Any
    device: Any
    n: int
    settings: ODESettings
    f: Callable[..., Any]
    params_eff: Any
    shape: tuple[int, ...]
    jitted: bool
    f_batch: Any  # batch_mode="vectorized": (the batched f, its vjp, the record); else None

    def __init__(self, stepper=None, **kw):
        self.__dict__.update(kw)
        if stepper is not None:
            self.stepper = stepper

    @property
    def stepper(self):
        st = self.__dict__.get("_stepper")
        if st is None:
            st = self._stepper = Stepper(self.xp, self.tab, self.y0.dtype, self.device,
                                         self.n, *self.settings.norm_tolerances)
        return st

    @stepper.setter
    def stepper(self, st):
        self._stepper = st

    @property
    def fvjp(self):
        fv = self.__dict__.get("_fvjp")
        if fv is None:
            fv = self._fvjp = make_vjp(self.f, self.settings.vjp, self.params_eff,
                                       self.shape, self.xp, self.jitted)
        return fv


def _forward(f, y0, t_eval, params, settings: ODESettings, step_ts, jac_sparsity=None,
             jump_ts=None):
    """The forward solve: ``(result, residuals)``; never warns or raises on a failed solve
    (the caller reports)."""
    if not callable(f):
        raise TypeError(f"{WHERE}: f must be a callable f(t, y, params) -> dy/dt, got "
                        f"{type(f).__name__}")
    if type(y0) is not _NDARRAY and not B.is_array(y0):
        V.array_argument(WHERE, "y0", y0, is_array=B.is_array)
    # NumPy arrays (the common case) skip the namespace lookup and its sparse checks: the
    # namespace of NumPy arrays is the host one
    host = type(y0) is _NDARRAY and (params is None or type(params) is _NDARRAY)
    y0 = _check_y0(y0, host)
    params = _check_params(params, host)
    xp = np if host else B.array_namespace(y0, params, where=WHERE)
    t_out = _host_times(t_eval)
    method, controller = settings.method, settings.controller
    regularizers = settings.regularizers
    local_regularization = settings.local_regularization
    rtol, atol = settings.norm_tolerances
    batched = y0.ndim == 2
    vectorized = settings.batch_mode == "vectorized"
    if vectorized:
        _check_vectorized_inputs(xp, y0, step_ts, jump_ts, settings)
    per_traj = batched and settings.batch_mode != "shared"
    n_traj = y0.shape[0] if per_traj else 1
    step_list = _check_step_ts(step_ts, t_out, per_traj, n_traj)
    if step_list is None and settings.fixed_budget:
        # rtol = atol = 0: the fixed budget, max_steps equal steps over the interval
        grid = np.linspace(float(t_out[0]), float(t_out[-1]), settings.max_steps + 1)
        step_list = [grid] * n_traj
    implicit = method in IMPLICIT_TABLEAUX
    auto = method == "auto"  # tsit5 until the stiffness estimate says stiff, then kvaerno5
    tab = IMPLICIT_TABLEAUX[method] if implicit else \
        TABLEAUX[AUTO_EXPLICIT if auto else method]
    dtype, device = y0.dtype, ("cpu" if host else B.device(y0))
    want_stiff = settings.want_stiff
    callback = settings.callback
    jitted = False
    if (host or B.is_numpy(xp)) and not (batched and not per_traj) and not vectorized:
        jitted = _is_jitted(xp, f)
    f_kernel = f  # what the compiled explicit integrator calls
    # an in-place field f(t, y, p, out): every other path (a shared batch included, which
    # calls f from Python) calls its allocating adapter
    if jitted or ((host or B.is_numpy(xp)) and _is_jitted(xp, f)):
        f = _allocating_field(xp, f)
    # the compiled loop is built once for float64 states and parameters; other dtypes call
    # the @njit f from the Python loop (no per-f compilation of the integrator), and so
    # does a callback (it is called from Python after each step)
    compiled = jitted and not (implicit or auto) and callback is None and \
        y0.dtype == xp.float64 and (params is None or params.dtype == xp.float64)
    params_eff = params
    if jitted and params is None:
        params_eff = xp.empty((0,), dtype=dtype)
    shape = tuple(y0.shape[1:]) if per_traj else tuple(y0.shape)
    n = math.prod(shape)
    trajs = []
    f_batch = None
    if vectorized:
        ys_v, trajs, vrecord = integrate_vectorized(
            xp, tab, f, params_eff, y0, t_out, shape=shape, rtol=rtol, atol=atol,
            controller=controller, first_step=settings.first_step,
            max_steps=settings.max_steps)
        # the backward rules that work one trajectory at a time see the user's batched f
        # (and vjp) on a batch of one row
        f_batch = (f, settings.vjp, vrecord)
        f, vjp_row = row_field(f, settings.vjp, xp, shape, dtype, device)
        settings = dataclasses.replace(settings, vjp=vjp_row)
    rhs = make_rhs(f, params_eff, shape, xp)
    # the compiled forward integrates without a Stepper (the backward builds it if needed)
    stepper = None if (compiled or implicit or vectorized) else \
        Stepper(xp, tab, dtype, device, n, rtol, atol)
    jumps = _check_jump_ts(jump_ts, t_out)
    if auto and jumps:
        raise ValueError(f"{WHERE}: method='auto' does not take jump_ts; choose the method "
                         "(an explicit one, or 'kvaerno5' for a stiff problem) and pass "
                         "jump_ts to it")
    if jac_sparsity is not None:
        if not (implicit or auto):
            raise ValueError(f"{WHERE}: jac_sparsity is used by the implicit methods "
                             f"{tuple(IMPLICIT_TABLEAUX)}; method={method!r} needs no "
                             "Jacobian")
        pattern_csr(jac_sparsity, n)  # checked here, before any step
    # backsolve keeps only y0 and the outputs: checkpoint_every is for the discrete adjoint
    every = settings.checkpoint_every if settings.adjoint == "discrete" else _NO_CHECKPOINTS
    opts = dict(xp=xp, rtol=rtol, atol=atol, controller=controller,
                first_step=settings.first_step, max_steps=settings.max_steps, every=every,
                fixed=step_list is not None)
    kern = B.get_kernel(xp, "ode.rk_solve") if compiled else None
    if compiled and per_traj and step_list is None and n_traj > 1 and not jumps:
        # the whole batch in one compiled call, parallel over trajectories (one
        # function-pointer lookup, not B)
        try:
            outs = B.get_kernel(xp, "ode_batch.rk_solve_batch")(
                f_kernel, B.contiguous(xp, y0), t_out,
                *_compiled_args(xp, params_eff, tab, opts, want_stiff), bool(want_stiff))
        except (TypeError, ValueError):  # f without the float64 signature: one by one
            outs = None
        if outs is not None:
            trajs = [_compiled_trajectory(o, y0[b, ...], t_out, opts, b)
                     for b, o in enumerate(outs)]
    for b in range(len(trajs), n_traj):
        yb = y0[b, ...] if per_traj else (y0.reshape((n,)) if host else xp.reshape(y0, (n,)))
        sts = step_list[b] if step_list is not None else None
        index = b if per_traj else None
        if jumps and not implicit:
            # one solve per segment between declared jumps, joined (every state stored)
            seg_opts = {**opts, "every": 1}

            def run(y_start, t_seg, sts=sts, index=index, seg_opts=seg_opts):
                seg_sts = None if sts is None else _segment_steps(sts, t_seg)
                if compiled:
                    return _compiled_solve(kern, f_kernel, y_start, t_seg, params_eff, tab,
                                           seg_opts, seg_sts, want_stiff, index)
                f0 = rhs(float(t_seg[0]), y_start)
                if not _finite(host and type(f0) is _NDARRAY, xp, f0):
                    return _nonfinite_start(xp, y_start, t_seg, dtype, device, host, index)
                out = integrate(stepper, rhs, y_start, t_seg,  # type: ignore[arg-type]
                                controller=controller, first_step=settings.first_step,
                                max_steps=settings.max_steps, step_ts=seg_sts,
                                want_stiff=want_stiff, every=1, f0=f0, callback=callback,
                                shape=shape, trajectory=index)
                out.stats[3] += 1
                return out

            traj = integrate_segments(run, yb, t_out, jumps, xp)
        elif compiled:
            traj = _compiled_solve(kern, f_kernel, yb, t_out, params_eff, tab, opts, sts,
                                   want_stiff, index)
        else:
            f0 = rhs(float(t_out[0]), yb)
            if not _finite(host and type(f0) is _NDARRAY, xp, f0):
                traj = _nonfinite_start(xp, yb, t_out, dtype, device, host, index)
            elif auto:
                def run_stiff(y_s, t_seg, seg_steps, f_s, index=index):
                    return stiff_trajectory(
                        STIFF_TABLEAUX[AUTO_IMPLICIT], settings, rhs=rhs,
                        fvjp=lazy_vjp(f, settings.vjp, params_eff, shape, xp, jitted),
                        y0=y_s, t_out=t_seg, params=params_eff, shape=shape, xp=xp,
                        dtype=dtype, device=device, step_ts=seg_steps, f0=f_s,
                        callback=callback, trajectory=index, jac_sparsity=jac_sparsity,
                        jump_ts=(), f=f, jitted=jitted)

                traj = auto_trajectory(stepper, run_stiff, rhs, yb, t_out,  # type: ignore[arg-type]
                                       controller=controller, first_step=settings.first_step,
                                       max_steps=settings.max_steps, step_ts=sts, f0=f0,
                                       callback=callback, shape=shape, trajectory=index)
            elif implicit:
                traj = stiff_trajectory(
                    tab, settings, rhs=rhs, fvjp=lazy_vjp(f, settings.vjp, params_eff, shape,
                                                         xp, jitted),
                    y0=yb, t_out=t_out, params=params_eff, shape=shape, xp=xp, dtype=dtype,
                    device=device, step_ts=sts, f0=f0, callback=callback, trajectory=index,
                    jac_sparsity=jac_sparsity, jump_ts=jumps, f=f, jitted=jitted)
            else:  # neither compiled nor implicit: stepper was built above
                traj = integrate(stepper, rhs, yb, t_out,  # type: ignore[arg-type]
                                 controller=controller,
                                 first_step=settings.first_step,
                                 max_steps=settings.max_steps, step_ts=sts,
                                 want_stiff=want_stiff, every=every, f0=f0,
                                 callback=callback, shape=shape, trajectory=index)
                traj.stats[3] += 1
        trajs.append(traj)
    # regularisers
    r_e = r_s = 0.0
    extra_nfe = 0
    if regularizers:
        if local_regularization is None:
            for traj in trajs:
                e_, s_ = global_regularizers(traj)
                r_e += e_
                r_s += s_
        else:
            rng = B.host_rng(settings.seed)
            if stepper is None:
                stepper = Stepper(xp, tab, dtype, device, n, rtol, atol)
            for traj in trajs:
                rec = local_step(stepper, rhs, traj, local_regularization, rng, want_stiff)
                traj.local = rec or {}
                if rec:
                    r_e += rec["E"] * abs(rec["h"])
                    r_s += rec["S"] * abs(rec["h"])
                    extra_nfe += rec["nfe"]
    if "error" not in regularizers:
        r_e = 0.0
    if not want_stiff:
        r_s = 0.0
    T = t_out.shape[0]
    if vectorized:
        ys = ys_v
    elif per_traj:
        ys = xp.stack([traj.ys for traj in trajs], axis=1)
    else:
        ys = trajs[0].ys
        ys = ys.reshape((T, *y0.shape)) if type(ys) is _NDARRAY else \
            xp.reshape(ys, (T, *y0.shape))
    stats = trajs[0].stats if len(trajs) == 1 else sum(traj.stats for traj in trajs)
    if len(trajs) == 1:
        failed = None if trajs[0].success else trajs[0]
    else:
        worst = worst_status(traj.status for traj in trajs)
        failed = next((traj for traj in trajs if traj.status is worst), None) \
            if worst is not Status.SUCCESS else None
    ts = tuple(traj.ts for traj in trajs) if per_traj else trajs[0].ts
    if host:  # a 0-d NumPy array, as xp.asarray makes, without the wrapper
        def scalar(v):
            return np.array(v, dtype=dtype)
    else:
        def scalar(v):
            return xp.asarray(v, dtype=dtype, device=device)
    if failed is not None:
        status, message, t_stop, converged = failed.status, failed.message, failed.t_fail, False
    elif settings.fixed_budget:
        status, t_stop, converged = Status.MAX_ITERATIONS, math.nan, False
        message = status_message(status, t_stop, max_steps=None if step_ts is not None
                                 else settings.max_steps)
    else:
        status, message, t_stop = Status.SUCCESS, "", math.nan
        # adaptive steps meet the error control by construction; replayed ones may not
        converged = step_list is None or all(t.errors_within_tolerance for t in trajs)
    result = ODEResult(ys=ys, reg_error=scalar(r_e), reg_stiffness=scalar(r_s),
                       n_steps=int(stats[0]), n_accepted=int(stats[1]),
                       n_rejected=int(stats[2]), nfe=int(stats[3]) + extra_nfe, ts=ts,
                       status=status, t_stop=t_stop, converged=converged)
    if failed is not None and status is Status.MAX_ITERATIONS and not implicit:
        # an explicit method out of steps: say whether stiffness is why
        hint_stepper = stepper if stepper is not None else \
            Stepper(xp, tab, dtype, device, n, rtol, atol)
        message += stiffness_hint(hint_stepper, rhs, failed)
    if message:
        attach_message(result, message)
    if auto:
        switches = [getattr(traj, "t_switch", math.nan) for traj in trajs]
        object.__setattr__(result, "_t_switch", tuple(switches) if per_traj else switches[0])
    if settings.adjoint == "backsolve" and not _stiff(settings, tab):
        # (the stiff backsolve reads y(t) from the stored steps)
        trajs = [_backsolve_residual(traj) for traj in trajs]
    fwd = _Forward(trajs=trajs, stepper=stepper, rhs=rhs, f=f, xp=xp, t_out=t_out,
                   per_traj=per_traj, shape=shape, n=n, y0=y0, params_eff=params_eff,
                   tab=tab, jitted=jitted, compiled=compiled, device=device,
                   settings=settings, jac_sparsity=jac_sparsity, jump_ts=jump_ts,
                   f_batch=f_batch)
    return result, fwd


# ---------------------------------------------------------------------------------------
# the backward rule
# ---------------------------------------------------------------------------------------
def _call_settings(ctx) -> tuple[ODESettings, object]:
    """The settings of the primal call (when the forward ran elsewhere: JAX under jit),
    from odeint's own signature, so that its defaults stay written in one place."""
    bound = odeint.signature.bind(*ctx.args, **ctx.kwargs)
    bound.apply_defaults()
    a = bound.arguments
    return odeint_settings(*(a[k] for k in _OPTIONS)), a["step_ts"]


def _call_extras(ctx) -> dict:
    """The primal call's ``jac_sparsity`` and ``jump_ts`` (for a forward run again)."""
    bound = odeint.signature.bind(*ctx.args, **ctx.kwargs)
    bound.apply_defaults()
    return {k: bound.arguments[k] for k in ("jac_sparsity", "jump_ts")}


def _compiled_reverse_ok(fwd, traj) -> bool:
    """The compiled adjoint runs for the compiled forward with an @njit vjp."""
    vjp = fwd.settings.vjp
    if not (fwd.compiled and traj.all_states is not None and vjp is not None):
        return False
    # f and vjp as the kernel types them (f may have run compiled with another signature)
    return bool(B.get_kernel(fwd.xp, "ode.is_jitted")(vjp)) and \
        bool(B.get_kernel(fwd.xp, "ode.fits_pointer")(fwd.f, vjp))


def _unreached(xp, ys_bar, nr: int):
    """``(ys_bar with the rows of unreached outputs zeroed, whether any was non-zero)``.

    Outputs past an early stop are NaN: their derivative is undefined, so a non-zero
    cotangent there makes the gradients NaN, and a zero one contributes nothing.
    """
    T = ys_bar.shape[0]
    if nr >= T:
        return ys_bar, False
    tail = ys_bar[nr:, ...]
    poisoned = bool(xp.any(tail != 0))
    ys_bar = xp.concat([ys_bar[:nr, ...], xp.zeros_like(tail)], axis=0)
    return ys_bar, poisoned


def _reverse_batch(fwd, ys_bar_all, rE: float, rS: float, want_t: bool):
    """The compiled discrete adjoints of a per-trajectory batch in one kernel call.

    Returns ``(y0_bar (B, n), p_bar (n_p,), t_bar (list of T floats), poisoned)``, the
    sums over trajectories of what the per-trajectory loop of :func:`_odeint_bwd`
    computes; the ``y0_bar`` rows of trajectories whose unreached outputs have a non-zero
    cotangent are NaN and ``poisoned`` then says that ``p_bar``/``t_bar`` are too.
    """
    trajs = fwd.trajs
    st = fwd.settings
    n_reached = [traj.n_reached for traj in trajs]
    ys_bar = np.ascontiguousarray(np.moveaxis(ys_bar_all, 1, 0))  # (B, T, n)
    T = ys_bar.shape[1]
    bad = [b for b, nr in enumerate(n_reached) if nr < T and bool(np.any(ys_bar[b, nr:]))]
    ys = np.stack([traj.ys for traj in trajs]) if want_t else np.empty((0, 0, 0))
    through, p_bars, t_bars = B.get_kernel(fwd.xp, "ode_batch.rk_reverse_batch")(
        fwd.f, st.vjp, [traj.ts for traj in trajs], [traj.all_states for traj in trajs], ys,
        ys_bar, np.stack([traj.out_step for traj in trajs]),
        np.stack([traj.out_theta for traj in trajs]), n_reached, fwd.t_out,
        B.contiguous(fwd.xp, fwd.params_eff), fwd.tab.A, fwd.tab.c, fwd.tab.e, fwd.tab.P,
        *st.norm_tolerances, rE, rS, want_t)
    y0_bar = ys_bar[:, 0, :] + through
    if bad:
        y0_bar[bad] = math.nan
        return y0_bar, np.full(p_bars.shape[1], math.nan), [math.nan] * T, True
    return y0_bar, p_bars.sum(axis=0), t_bars.sum(axis=0).tolist(), False


def _odeint_bwd(ctx, cot):
    args = ctx.args
    f, y0, t_eval = args[0], args[1], args[2]
    params = args[3] if len(args) > 3 else None
    fwd = ctx.residuals
    if fwd is None:  # the JAX adapter under jit keeps no residuals: solve again
        settings, step_ts = _call_settings(ctx)
        _, fwd = _forward(f, y0, t_eval, params, settings, step_ts, **_call_extras(ctx))
    st = fwd.settings
    xp = fwd.xp
    ys_bar_all = xp.astype(cot["ys"], fwd.y0.dtype)
    rE = float(cot["reg_error"]) if "error" in st.regularizers else 0.0
    rS = float(cot["reg_stiffness"]) if "stiffness" in st.regularizers else 0.0
    local = st.local_regularization
    T = fwd.t_out.shape[0]
    t_bar: Any  # host floats, then an array of t_eval's library (or None)
    y0_bars, p_bar, t_bar = [], None, [0.0] * T
    poisoned_p = poisoned_t = False
    global_reg = bool(rE or rS) and local is None
    want_t = B.is_array(t_eval) and \
        B.array_namespace(t_eval).isdtype(t_eval.dtype, "real floating")
    p_size = 0 if params is None else params.shape[0]
    trajs = fwd.trajs
    if fwd.f_batch is not None and st.adjoint == "discrete":
        # a vectorised batch: its iterations reversed with batched stages and VJPs
        y0_bars, p_bar, t_bar, poisoned_p = vectorized_reverse(fwd, ys_bar_all, want_t)
        poisoned_t = poisoned_p
        trajs = []
    elif fwd.per_traj and len(trajs) > 1 and st.adjoint == "discrete" and local is None and \
            _compiled_reverse_ok(fwd, trajs[0]) and \
            all(traj.all_states is not None for traj in trajs):
        # every trajectory's compiled adjoint in one call, parallel over trajectories
        y0_bars, p_bar, t_bar, poisoned_p = _reverse_batch(fwd, ys_bar_all, rE, rS, want_t)
        poisoned_t = poisoned_p
        trajs = []
    for b, traj in enumerate(trajs):
        if fwd.per_traj:
            ys_bar = ys_bar_all[:, b, :]
        else:
            ys_bar = xp.reshape(ys_bar_all, (T, fwd.n))
        ys_b = traj.ys
        y0_b = traj.states[0]
        nr = traj.n_reached
        ys_bar, poisoned = _unreached(xp, ys_bar, nr)
        if st.adjoint == "discrete" and _compiled_reverse_ok(fwd, traj):
            # only the reached outputs (the kernel walks them back from the last one)
            through, pb = B.get_kernel(xp, "ode.rk_reverse")(
                f, st.vjp, traj.ts, traj.all_states, B.contiguous(xp, ys_bar[:nr, ...]),
                traj.out_step[:nr], traj.out_theta[:nr], B.contiguous(xp, fwd.params_eff),
                fwd.tab.A, fwd.tab.c, fwd.tab.e, fwd.tab.P, *st.norm_tolerances,
                rE if local is None else 0.0, rS if local is None else 0.0)
            y0_bar = ys_bar[0, ...] + through
            pb = pb if params is not None else None
        elif st.method == "auto" and st.adjoint == "discrete":
            y0_bar, pb, through = auto_backward(fwd, traj, ys_bar)
            pb = pb if params is not None else None
        elif st.adjoint == "discrete" and fwd.tab.name in IMPLICIT_TABLEAUX:
            y0_bar, pb, through = stiff_adjoint(fwd, traj, ys_bar)
            pb = pb if params is not None else None
        elif st.adjoint == "discrete":
            y0_bar, pb, through = discrete_adjoint(
                fwd.stepper, fwd.rhs, fwd.fvjp, traj, ys_bar,
                rE if local is None else 0.0, rS if local is None else 0.0)
        else:
            y0_bar, pb, through = _backsolve(fwd, xp, traj, ys_bar[:nr, ...],
                                             fwd.t_out[:nr], p_size)
            if y0_bar is None:  # the adjoint solve failed (reported): NaN gradients
                poisoned = True
                y0_bar = xp.zeros_like(y0_b)
                through = y0_bar
                pb = None
        if local is not None and traj.local and (rE or rS):
            rec = traj.local
            pl = one_step_adjoint(fwd.stepper, fwd.rhs, fwd.fvjp, rec["t"], rec["y"],
                                  rec["h"], rE, rS)
            if pl is not None:
                pb = pl if pb is None else pb + pl
        if pb is not None:
            p_bar = pb if p_bar is None else p_bar + pb
        # one f call per output: only when t_eval has a cotangent slot (a float array)
        tb = t_eval_cotangent(xp, fwd.rhs, ys_b, ys_bar, fwd.t_out, through, y0_b, nr) \
            if want_t else [0.0] * T
        if poisoned:
            y0_bar = xp.full_like(y0_bar, math.nan)
            poisoned_p = poisoned_t = True
        y0_bars.append(y0_bar)
        t_bar = [a + c for a, c in zip(t_bar, tb)]
    if global_reg:
        t_bar[0] = math.nan  # see odeint's Notes: not defined for the global regularisers
    if poisoned_t:
        t_bar = [math.nan] * T
    if fwd.per_traj:
        y0_bar = xp.stack(y0_bars, axis=0)
    else:
        y0_bar = xp.reshape(y0_bars[0], tuple(y0.shape))
    y0_bar = xp.astype(y0_bar, y0.dtype) if xp.isdtype(y0.dtype, "real floating") else None
    if params is not None:
        pxp = B.array_namespace(params)
        p_bar = pxp.zeros_like(params) if p_bar is None else \
            pxp.astype(pxp.reshape(pxp.asarray(p_bar), params.shape), params.dtype)
        if poisoned_p:
            p_bar = pxp.full_like(p_bar, math.nan)
    else:
        p_bar = None
    if want_t:
        txp = B.array_namespace(t_eval)
        t_bar = txp.asarray(t_bar, dtype=t_eval.dtype, device=B.device(t_eval))
    else:
        t_bar = None
    grads = (None, y0_bar, t_bar, p_bar)
    return grads[:len(args)]


def _backsolve(fwd, xp, traj, ys_bar, t_out, p_size):
    """The backsolve adjoint over the reached outputs; ``(None, None, None)`` when its own
    adaptive solve fails (raised with ``throw=True``, else warned: gradients are NaN)."""
    st = fwd.settings
    rtol, atol = st.norm_tolerances

    def make_stepper(size):
        return Stepper(xp, fwd.tab, fwd.y0.dtype, B.device(fwd.y0), size, rtol, atol)

    if _stiff(st, fwd.tab):
        # the adjoint ODE of a stiff field is as stiff: an ESDIRK pair integrates it, with
        # y(t) from the stored forward steps (reintegrated backwards, it would blow up)
        y0_bar, pb, through, failed = stiff_backsolve(fwd, traj, ys_bar, t_out, p_size)
    else:
        nr = ys_bar.shape[0]
        y0_bar, pb, through, failed = backsolve_adjoint(
            xp, make_stepper, fwd.rhs, fwd.fvjp, fwd.n, p_size, traj.ys[:nr, ...], ys_bar,
            t_out, controller=st.controller, max_steps=st.max_steps)
    if failed is None:
        return y0_bar, pb, through
    inner = failed.message.removeprefix(WHERE + ": ")
    message = (f"{WHERE}: the backsolve adjoint's backward integration failed, so the "
               f"gradients are NaN: {inner}. Try adjoint='discrete' (it replays the forward "
               "steps and cannot fail where the forward solve did not)")
    if st.throw:
        raise error_class(failed.status)(message, status=failed.status)
    warn_at_caller(message, ConvergenceWarning)
    return None, None, None


def _odeint_shapes(f, y0, t_eval, params=None, **kwargs):
    T = t_eval.shape[0] if hasattr(t_eval, "shape") else len(t_eval)
    dtype = y0.dtype
    return {
        "ys": ((T, *tuple(y0.shape)), dtype),
        "reg_error": ((), dtype),
        "reg_stiffness": ((), dtype),
        "n_steps": ((), "int64"),
        "n_accepted": ((), "int64"),
        "n_rejected": ((), "int64"),
        "nfe": ((), "int64"),
        "status": ((), "int64"),
        "t_stop": ((), "float64"),
        "converged": ((), "bool"),
    }


@custom_vjp(_odeint_bwd, _odeint_shapes, ODEResult, public_name=WHERE)
def odeint(f: Callable[..., Array], y0: Array, t_eval: Array | Sequence[float],
           params: Array | None = None, *, method: str = "tsit5", rtol: float = 1e-6,
           atol: float = 1e-9, controller: str = "pi", first_step: float | None = None,
           max_steps: int = 100_000, adjoint: str = "discrete",
           regularizers: Sequence[str] = (), local_regularization: str | None = None,
           seed: int | None = None, vjp: Callable[..., Any] | None = None,
           batch_mode: str = "per-trajectory", checkpoint_every: int = 1,
           throw: bool = False, step_ts: Array | Sequence[Array] | None = None,
           callback: Callback[ODEState] | None = None, jac: Callable | str | None = None,
           jac_sparsity: Any = None, jump_ts: Any = None, linear_solver: str = "direct",
           preconditioner: Callable | str | None = None) -> tuple[ODEResult, Any]:
    """Solve ``dy/dt = f(t, y, params)`` with an adaptive Runge–Kutta method.

    Explicit pairs (``tsit5``, ``dopri5``, ``bs3``) for non-stiff problems; L-stable ESDIRK
    pairs (``kvaerno3``, ``kvaerno5``) and the Rosenbrock method ``rodas5`` for stiff ones;
    ``method="auto"`` switches from ``tsit5`` to ``kvaerno5`` when the stiffness estimate
    says so.

    Parameters
    ----------
    f : callable
        ``f(t, y, params) -> dy/dt`` with ``t`` a Python float, ``y`` an array of ``y0``'s
        shape (one trajectory ``(d,)``; ``(B, d)`` with ``batch_mode="shared"``) and
        ``params`` as given. Three kinds: (a) a Python function written with
        ``autograd.numpy`` (VJP by autograd); (b) any function plus ``vjp=``; (c) a Numba
        ``@njit`` function returning a new 1-D array: for float64 states the whole forward
        integration then runs compiled, with no Python per step (``params=None`` reaches
        it as an empty float64 array; float32 states call it from the Python loop); its
        gradients need ``vjp=``; when it is ``@njit`` too (returning ``(v_y, v_params)``
        float64 arrays, ``v_params`` empty for ``params=None``) the discrete adjoint also
        runs compiled (with ``checkpoint_every=1``), otherwise it calls f and vjp once per
        stage from Python. An ``@njit`` f may also be in place, ``f(t, y, params, out)``
        writing dy/dt into ``out`` (float64, four parameters, no return value): the
        compiled integrator then allocates nothing per call; every other path calls it
        through an allocating adapter (same results, bit for bit).
        PyTorch / JAX functions: see :func:`diffsolve.ode.from_torch` / ``from_jax``.
    y0 : array, shape (d,) or (B, d)
        Initial state(s); NumPy, CuPy or any array-API array, float32 or float64.
    t_eval : array or sequence, shape (T,)
        Strictly increasing or decreasing output times; ``t_eval[0]`` is the initial time
        and the solve ends at ``t_eval[-1]``.
    params : 1-D array, optional
        All parameters as ONE vector (differentiable).
    method : {"tsit5", "dopri5", "bs3", "kvaerno3", "kvaerno5"}
        Tsitouras 5(4), Dormand–Prince 5(4), Bogacki–Shampine 3(2); each with its own
        continuous extension for ``t_eval`` (outputs do not shorten steps). For stiff
        problems, the L-stable ESDIRK pairs of Kværnø 3(2) and 5(4) (implicit stages by
        simplified Newton; see ``jac``).
    rtol, atol : float >= 0
        Accept a step when ``E = rms(err / (atol + rtol max(|y_n|, |y_{n+1}|))) <= 1``
        (``atol = 0`` needs a state no component of which stays exactly 0).
        ``rtol = atol = 0`` is a fixed budget, SciPy's "run exactly maxiter iterations":
        ``max_steps`` equal steps over ``t_eval`` without error control (or the given
        ``step_ts``); the result then has ``status = MAX_ITERATIONS``,
        ``converged=False`` and nothing is warned or raised (no regularisers, discrete
        adjoint only).
    controller : {"pi", "i"}
        PI step-size control, or the I rule that reproduces ``scipy.integrate.solve_ivp``
        (``dopri5`` + ``"i"`` takes RK45's steps).
    first_step : float, optional
        Initial ``|h|``; default Hairer's heuristic (as SciPy's ``select_initial_step``).
    max_steps : int
        Attempted steps allowed (per trajectory). The name is diffrax's: odeint's
        iterations are steps, and ``res.n_iters`` counts them.
    adjoint : {"discrete", "backsolve"}
        Backward rule: exact gradient of the computed solution (reverse through the
        accepted steps, step sizes constant), or the continuous adjoint integrated
        backwards (stores only ``y0`` and the ``T`` outputs, whatever the number of steps;
        only as accurate as the tolerances; no regularisers).
    regularizers : tuple of {"error", "stiffness"}
        Compute ``reg_error`` ``R_E = Σ_j E_j |h_j|`` and/or ``reg_stiffness``
        ``R_S = Σ_j λ_j |h_j|`` (``λ_j = ‖k_s − k_{s−1}‖/‖g_s − g_{s−1}‖``), summed over
        accepted steps (and trajectories); differentiable with the discrete adjoint.
    local_regularization : {None, "unbiased", "biased"}
        Instead of the sums, one extra step from ``t_r`` drawn uniformly in the interval
        ("unbiased") or among accepted step times ("biased"): ``R = E(t_r) |h_r|``.
    seed : int, optional
        Seed of the draw of ``t_r``.
    vjp : callable, optional
        ``vjp(t, y, params, v) -> (v_y, v_params)``: ``v_y = (∂f/∂y)ᵀ v``,
        ``v_params = (∂f/∂params)ᵀ v`` (``None`` when ``params`` is None).
    batch_mode : {"per-trajectory", "shared", "vectorized"}
        For ``y0`` of shape (B, d): independent solves, each with its own steps (``f`` sees
        ``(d,)``; equal to looping), or one solve of the (B, d) system with one step size
        and the error norm over the whole batch (``f`` sees ``(B, d)``: one vectorised
        call per stage). A per-trajectory batch of an ``@njit`` ``f`` (float64) runs in
        one compiled call over Numba's threads (``NUMBA_NUM_THREADS``), each trajectory
        with exactly the steps of its own solve; so does its discrete adjoint with an
        ``@njit`` ``vjp``. ``"vectorized"`` (NumPy and CuPy; explicit methods): the
        independent solves of ``"per-trajectory"``, each row with its own steps, step
        sizes, accept/reject decisions and outputs, but every stage is ONE call of ``f``
        on the whole batch: ``f(t, Y, params)`` with ``Y`` of shape (B, d) and ``t`` an
        array of shape (B, 1) holding each row's time; it must return (B, d), row b
        depending on row b only (checked on the first call: a field written for one
        state, or one that mixes rows, raises). Once fewer than 80 % of the rows are
        still running, ``f`` gets the running rows only (a batch of fewer rows). A
        ``vjp=`` has the same batched form and returns ``v_params`` summed over the rows.
        The discrete adjoint reverses the batch the same way (one call of ``vjp`` per
        stage). For a field whose
        evaluation on a batch is elementwise the steps are bitwise those of
        ``"per-trajectory"``; with matrix products the rows' error estimates move in
        their last digits and the outputs agree to the tolerance. It does not take
        ``step_ts``, ``jump_ts``, ``callback``, ``regularizers`` or
        ``checkpoint_every``.
    checkpoint_every : int
        The discrete adjoint stores every k-th accepted state and recomputes the others
        (memory ``N/k + k`` states instead of ``N``). Ignored by the backsolve adjoint,
        whose forward keeps only ``y0`` and the outputs (memory independent of ``N``).
    throw : bool
        What a failed solve does (``max_steps`` reached, step-size underflow, ``f``
        returning NaN/inf). ``False`` (the default, as SciPy's ``solve_ivp``): warn with a
        :class:`diffsolve.ConvergenceWarning` and return the result, whose ``status``
        says why and whose outputs past the failure are NaN. ``True``: raise the
        :class:`diffsolve.SolveError` subclass of the status
        (:class:`~diffsolve.MaxIterationsError`, :class:`~diffsolve.StepUnderflowError`,
        :class:`~diffsolve.NonFiniteError`; ``diffsolve.ode.ODESolveError`` is
        ``SolveError``), carrying the result. It also applies to the backsolve adjoint's
        own backward solve (warned: the gradients are NaN).
    step_ts : array or sequence of arrays, optional
        Replay these step times (e.g. a previous ``res.ts``) instead of adapting: the step
        sequence is then frozen, for finite-difference checks or fixed-step integration
        (``converged`` then says whether every replayed step met the tolerance).
    callback : callable, optional
        ``callback(state) -> bool | None``, called after each accepted step with a frozen
        :class:`~diffsolve.ode.ODEState` (``t``, ``y``, ``h``, ``n_steps``,
        ``n_accepted``, ``error``, ``trajectory``); returning ``True`` stops the solve
        with ``status = STOPPED`` (no warning), the outputs after ``t`` being NaN. Cost:
        one Python call per accepted step (no extra device synchronisation on CuPy: the
        step's error norm is read anyway), and an ``@njit`` ``f`` then runs from the
        Python loop instead of the compiled one.
    jac : callable or {"fd", "vjp"}, optional
        The Jacobian ``∂f/∂y`` for the Newton iterations of the stiff (implicit) methods
        ``"kvaerno3"`` and ``"kvaerno5"`` (explicit methods refuse it): a callable
        ``jac(t, y, params)`` returning a dense ``(n, n)`` array, a :class:`diffsolve.CSR` or
        a SciPy / CuPy sparse matrix; ``"fd"`` (default) forward differences, one evaluation
        of ``f`` per column colour; ``"vjp"`` assembled exactly from the vector–Jacobian
        products used for gradients, one per row colour. The backward rule uses the exact
        Jacobian (the callable, else the VJP assembly), never differences.
    jac_sparsity : array or sparse matrix, optional
        The sparsity pattern of ``∂f/∂y`` (stiff methods): columns (rows) that share no
        row (column) are probed together, e.g. 3 probes for a tridiagonal pattern whatever
        ``n`` (Curtis, Powell & Reid 1974). Without it ``J`` is dense and takes ``n``.
    jump_ts : array or sequence of float, optional
        Times strictly inside the interval where ``f`` is discontinuous (every method): a
        step never crosses one; it ends on it and the next starts afresh (new first slope,
        controller state and initial step; the stiff methods evaluate ``f`` just before
        the jump for the step that ends on it). Every state is then stored
        (``checkpoint_every`` is ignored); ``res.ts`` contains the jumps.
    linear_solver : {"direct", "gmres"}
        How the ESDIRK pairs (``kvaerno3``, ``kvaerno5``, ``auto`` once stiff) solve their
        Newton systems ``(I − hγJ) Δ = r``. ``"direct"`` (default): one LU factorisation
        (dense LAPACK, or SuperLU / cuSOLVER for a sparse ``J``) reused while ``hγ`` and
        ``J`` are. ``"gmres"``: restarted GMRES(30) on products with ``J``, to a relative
        residual of 1e-3 within 300 products (a Newton iteration corrects the rest; a
        solve that does not get there fails the iteration, which refreshes ``J`` or
        shrinks the step, never a silent inexact stage): for large sparse ``J`` whose LU
        fills in (2-D/3-D grids). ``rodas5`` refuses it. The backward rule solves its
        transposed systems directly.
    preconditioner : {"jacobi"} or callable, optional
        With ``linear_solver="gmres"``: ``"jacobi"`` (default; ``1 / diag(I − hγJ)``) or
        ``preconditioner(J, c)`` returning an approximation of ``(I − cJ)⁻¹`` (a callable
        ``v -> M v``, a matrix, or an array multiplying elementwise), called whenever
        ``J`` or ``c = hγ`` changes (e.g. an incomplete LU of ``I − cJ``).

    Returns
    -------
    ODEResult
        ``ys`` (T, d) or (T, B, d), ``reg_error``, ``reg_stiffness`` (differentiable),
        ``stats`` (``ODEStats(n_steps, n_accepted, n_rejected, nfe)``), ``ts``,
        ``status`` (a :class:`diffsolve.Status`), ``converged``, ``message``,
        ``n_iters`` (= ``n_steps``), ``t_stop``, ``success``.

    Raises
    ------
    TypeError, ValueError
        Bad input, naming the argument: ``y0`` and ``params`` follow diffsolve's one
        input policy (float32/float64 kept, integers promoted to float64, float16 /
        bool / complex / lists refused, no NaN/inf, ``y0`` not empty); ``f`` returning
        the wrong shape.
    diffsolve.SolveError
        A failed solve with ``throw=True`` (see ``throw``).

    See Also
    --------
    diffsolve.ode.from_torch : A vector field written with PyTorch.
    diffsolve.ode.from_jax : A vector field written with JAX.
    diffsolve.ode.TABLEAUX : The Runge--Kutta pairs behind ``method=``.

    Notes
    -----
    Gradients: w.r.t. ``y0``, ``params`` (positionally or by keyword) and ``t_eval``
    when it is a float array (``t̄_q = ȳ_q · f(t_q, y_q)``, ``t̄_0 = −a(t_0) · f(t_0,
    y_0)``, the continuous-time formulas; with a non-zero cotangent of a *global*
    regulariser ``t̄_0`` is NaN, since the regularisers' dependence on the start time is
    not defined with frozen steps). After an early stop (``throw=False``) the outputs not
    reached are NaN: a zero cotangent there contributes nothing, a non-zero one makes the
    gradients of that trajectory (and the shared ``params``/``t_eval``) NaN. A vector
    field that autograd cannot trace (written with plain NumPy) raises
    :class:`diffsolve.NotTraceableError` at the first VJP instead of giving a zero
    gradient.

    Examples
    --------
    >>> import numpy as np
    >>> import autograd.numpy as anp
    >>> from diffsolve.ode import odeint
    >>> def f(t, y, p):
    ...     return -p[0] * y
    >>> res = odeint(f, np.array([1.0]), np.array([0.0, 1.0]), np.array([2.0]))
    >>> bool(abs(res.ys[-1, 0] - np.exp(-2.0)) < 1e-6)
    True

    A batch of independent trajectories, ``f`` called once per stage on the whole batch
    (each row keeps its own steps):

    >>> W = np.array([[0.0, 1.0], [-1.0, 0.0]])
    >>> def rotate(t, Y, p):   # Y: (B, 2), t: (B, 1)
    ...     return Y @ W.T
    >>> Y0 = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    >>> res = odeint(rotate, Y0, np.linspace(0.0, np.pi, 5), batch_mode="vectorized")
    >>> res.ys.shape, bool(np.allclose(res.ys[-1], -Y0, atol=1e-5))
    ((5, 3, 2), True)
    """
    settings = odeint_settings(method, rtol, atol, controller, first_step, max_steps,
                               adjoint, regularizers, local_regularization, seed, vjp,
                               batch_mode, checkpoint_every, throw, callback, jac,
                               linear_solver, preconditioner)
    result, fwd = _forward(f, y0, t_eval, params, settings, step_ts, jac_sparsity, jump_ts)
    # stacklevel 4: report -> odeint -> DifferentiableFunction.__call__ (or vjp) -> caller
    report(result, throw=settings.throw, fixed_budget=settings.fixed_budget)
    return result, fwd
