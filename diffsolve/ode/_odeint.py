"""``diffsolve.ode.odeint``: adaptive explicit Runge–Kutta with adjoints and regularisers."""

from __future__ import annotations

import math
import numbers

from .. import _backend as B
from .._autodiff import custom_vjp
from ._adjoint import backsolve_adjoint, discrete_adjoint, one_step_adjoint, t_eval_cotangent
from ._integrate import Stepper, Trajectory, integrate
from ._regularizers import global_regularizers, local_step
from ._result import ODEResult, ODESolveError, status_message
from ._tableaux import TABLEAUX
from ._vector_field import make_rhs, make_vjp

__all__ = ["odeint"]

np = B.host_namespace()
_NDARRAY = np.ndarray  # numpy.ndarray (the namespace re-exports it)
_HOST_FLOATS = (np.dtype(np.float64), np.dtype(np.float32))

WHERE = "diffsolve.ode.odeint"
METHODS = tuple(TABLEAUX)
CONTROLLERS = ("pi", "i")
ADJOINTS = ("discrete", "backsolve")
REGULARIZERS = ("error", "stiffness")
LOCAL = (None, "unbiased", "biased")
BATCH_MODES = ("per-trajectory", "shared")


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


def _check_options(method, rtol, atol, controller, first_step, max_steps, adjoint,
                   regularizers, local_regularization, batch_mode, checkpoint_every):
    if method not in METHODS:
        raise ValueError(f"{WHERE}: method={method!r} is not known; choose one of "
                         f"{list(METHODS)}")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if type(v) is float and 0.0 < v < math.inf:  # the common case, no ABC check
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
                or v <= 0:
            raise ValueError(f"{WHERE}: {name} must be a finite number > 0, got {v!r} "
                             "(e.g. rtol=1e-6, atol=1e-9)")
    if controller not in CONTROLLERS:
        raise ValueError(f"{WHERE}: controller={controller!r} is not known; choose 'pi' or "
                         "'i' (the I controller reproduces scipy's RK45 step sequence)")
    if first_step is not None and (not isinstance(first_step, numbers.Real)
                                   or not first_step > 0 or not math.isfinite(first_step)):
        raise ValueError(f"{WHERE}: first_step must be a positive number or None, got "
                         f"{first_step!r}")
    if (type(max_steps) is not int and (isinstance(max_steps, bool)
                                       or not isinstance(max_steps, numbers.Integral))) \
            or max_steps < 1:
        raise ValueError(f"{WHERE}: max_steps must be a positive integer, got {max_steps!r}")
    if adjoint not in ADJOINTS:
        raise ValueError(f"{WHERE}: adjoint={adjoint!r} is not known; choose one of "
                         f"{list(ADJOINTS)}")
    if isinstance(regularizers, str):
        regularizers = (regularizers,)
    regularizers = tuple(regularizers or ())
    unknown = [r for r in regularizers if r not in REGULARIZERS]
    if unknown:
        raise ValueError(f"{WHERE}: regularizers {unknown} are not known; choose from "
                         f"{list(REGULARIZERS)}")
    if regularizers and adjoint == "backsolve":
        # the backsolve forward keeps no per-step records, and its backward integrates the
        # adjoint ODE, which knows nothing of the solver's error or stiffness estimates
        local = ("" if local_regularization is None
                 else f" (with local_regularization={local_regularization!r})")
        raise ValueError(f"{WHERE}: regularizers={regularizers}{local} are built from the "
                         "solver's own stages, which only the discrete adjoint "
                         "differentiates; use adjoint='discrete' (with checkpoint_every=k "
                         "to store only every k-th state)")
    if local_regularization not in LOCAL:
        raise ValueError(f"{WHERE}: local_regularization={local_regularization!r} is not "
                         f"known; choose None, 'unbiased' or 'biased'")
    if local_regularization is not None and not regularizers:
        raise ValueError(f"{WHERE}: local_regularization={local_regularization!r} needs "
                         "regularizers=('error',) and/or 'stiffness'")
    if batch_mode not in BATCH_MODES:
        raise ValueError(f"{WHERE}: batch_mode={batch_mode!r} is not known; choose one of "
                         f"{list(BATCH_MODES)}")
    if (type(checkpoint_every) is not int and (
            isinstance(checkpoint_every, bool)
            or not isinstance(checkpoint_every, numbers.Integral))) or checkpoint_every < 1:
        raise ValueError(f"{WHERE}: checkpoint_every must be a positive integer, got "
                         f"{checkpoint_every!r}")
    return regularizers


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


def _params_info(params, xp):
    if params is None:
        return 0
    if not B.is_array(params) or params.ndim != 1:
        shape = tuple(params.shape) if B.is_array(params) else type(params).__name__
        raise ValueError(f"{WHERE}: params must be ONE 1-D float array (or None), got {shape}; "
                         "flatten your parameters into a vector and unpack them inside f")
    if not xp.isdtype(params.dtype, "real floating"):
        raise TypeError(f"{WHERE}: params must have a real floating dtype, got {params.dtype}")
    return params.shape[0]


# ---------------------------------------------------------------------------------------
# the forward solve
# ---------------------------------------------------------------------------------------
class _Forward:
    """Everything the backward rule reuses.

    ``stepper`` and ``fvjp`` are built on first use: a forward solve that is never
    differentiated (or runs compiled) needs neither, and building them is a fixed cost of
    every call.
    """

    def __init__(self, stepper=None, **kw):
        self.__dict__.update(kw)
        if stepper is not None:
            self.stepper = stepper

    @property
    def stepper(self):
        st = self.__dict__.get("_stepper")
        if st is None:
            st = self._stepper = Stepper(self.xp, self.tab, self.y0.dtype, self.device,
                                         self.n, self.rtol, self.atol)
        return st

    @stepper.setter
    def stepper(self, st):
        self._stepper = st

    @property
    def fvjp(self):
        fv = self.__dict__.get("_fvjp")
        if fv is None:
            fv = self._fvjp = make_vjp(self.f, self.vjp, self.params_eff, self.shape,
                                       self.xp, self.jitted)
        return fv


#: ``ode.is_jitted`` (an isinstance test: it depends on the type of f only) by type of f
_JITTED_TYPES: dict = {}


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
                      t_fail=traj.t_fail, status=traj.status)


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


def _compiled_solve(kern, f, y0, t_out, params_eff, tab, opts, step_ts, want_stiff):
    xp = opts["xp"]
    out = kern(f, B.contiguous(xp, y0), t_out,
               *_compiled_args(xp, params_eff, tab, opts, want_stiff),
               step_ts if step_ts is not None else np.empty((0,), dtype=np.float64),
               bool(want_stiff))
    return _compiled_trajectory(out, y0, t_out, opts)


def _compiled_trajectory(out, y0, t_out, opts):
    xp = opts["xp"]
    ys, ts, states, errs, stiff, out_step, out_theta, stats, status, t_fail = out
    status, t_fail = int(status), float(t_fail)
    if status == 3:
        raise ValueError(f"{WHERE}: f(t, y, params) returned an array of the wrong shape at "
                         f"t={t_fail!r}; it must return dy/dt with y's shape "
                         f"{tuple(y0.shape)}")
    if status == 4:
        raise ValueError(f"{WHERE}: f(t, y, params) returned NaN or infinite values at the "
                         f"initial time t={t_fail!r}; check f and y0")
    every = opts["every"]
    N = ts.shape[0] - 1
    # copies, so that the full (N, n) array can be freed when checkpointing is sparser
    st = {m: (states[m] if every == 1 else xp.asarray(states[m], copy=True))
          for m in range(0, N + 1, every)}
    message = ""
    if status != 0:
        message = status_message(status, t_fail, t1=float(t_out[-1]),
                                 max_steps=opts["max_steps"])
        if opts["throw"]:
            raise ODESolveError(message)
    return Trajectory(ys=ys, ts=ts, states=st, every=every, out_step=out_step,
                      out_theta=out_theta, errs=errs, stiff=stiff, stats=stats,
                      success=status == 0, message=message or "The solver reached the end "
                      "of the integration interval.", t_fail=t_fail if status else math.nan,
                      all_states=states if every == 1 else None, status=status)


def _forward(f, y0, t_eval, params, method, rtol, atol, controller, first_step, max_steps,
             adjoint, regularizers, local_regularization, seed, vjp, batch_mode,
             checkpoint_every, throw, step_ts):
    if not callable(f):
        raise TypeError(f"{WHERE}: f must be a callable f(t, y, params) -> dy/dt, got "
                        f"{type(f).__name__}")
    regularizers = _check_options(method, rtol, atol, controller, first_step, max_steps,
                                  adjoint, regularizers, local_regularization, batch_mode,
                                  checkpoint_every)
    if type(y0) is not _NDARRAY and not B.is_array(y0):
        raise TypeError(f"{WHERE}: y0 must be an array (NumPy, CuPy or any array-API array), "
                        f"got {type(y0).__name__}")
    # NumPy arrays (the common case) skip the namespace lookup and its sparse checks: the
    # namespace of NumPy arrays is the host one
    host = type(y0) is _NDARRAY and (params is None or type(params) is _NDARRAY)
    xp = np if host else B.array_namespace(y0, params, where=WHERE)
    if y0.ndim not in (1, 2):
        raise ValueError(f"{WHERE}: y0 must have shape (d,) or (B, d) for a batch, got "
                         f"{tuple(y0.shape)}")
    if not (y0.dtype.kind == "f" if host else xp.isdtype(y0.dtype, "real floating")):
        if xp.isdtype(y0.dtype, "integral"):
            y0 = xp.astype(y0, xp.float64)
        else:
            raise TypeError(f"{WHERE}: y0 must be real floating, got dtype {y0.dtype}")
    if not _finite(host, xp, y0):
        raise ValueError(f"{WHERE}: y0 contains NaN or infinite values")
    _params_info(params, xp)
    t_out = _host_times(t_eval)
    batched = y0.ndim == 2
    per_traj = batched and batch_mode == "per-trajectory"
    n_traj = y0.shape[0] if per_traj else 1
    step_list = _check_step_ts(step_ts, t_out, per_traj, n_traj)
    tab = TABLEAUX[method]
    dtype, device = y0.dtype, ("cpu" if host else B.device(y0))
    want_stiff = "stiffness" in regularizers
    jitted = False
    if (host or B.is_numpy(xp)) and not (batched and not per_traj):
        jitted = _is_jitted(xp, f)
    # the compiled loop is built once for float64 states and parameters; other dtypes call
    # the @njit f from the Python loop (no per-f compilation of the integrator)
    compiled = jitted and y0.dtype == xp.float64 and (params is None
                                                       or params.dtype == xp.float64)
    params_eff = params
    if jitted and params is None:
        params_eff = xp.empty((0,), dtype=dtype)
    shape = tuple(y0.shape[1:]) if per_traj else tuple(y0.shape)
    n = math.prod(shape)
    rhs = make_rhs(f, params_eff, shape, xp)
    # the compiled forward integrates without a Stepper (the backward builds it if needed)
    stepper = None if compiled else Stepper(xp, tab, dtype, device, n, rtol, atol)
    # backsolve keeps only y0 and the outputs: checkpoint_every is for the discrete adjoint
    every = int(checkpoint_every) if adjoint == "discrete" else _NO_CHECKPOINTS
    opts = dict(xp=xp, rtol=float(rtol), atol=float(atol), controller=controller,
                first_step=first_step, max_steps=int(max_steps), every=every,
                throw=throw)
    kern = B.get_kernel(xp, "ode.rk_solve") if compiled else None
    trajs = []
    if compiled and per_traj and step_list is None and n_traj > 1:
        # the whole batch in one compiled call (one function-pointer lookup, not B)
        try:
            outs = B.get_kernel(xp, "ode.rk_solve_batch")(
                f, B.contiguous(xp, y0), t_out,
                *_compiled_args(xp, params_eff, tab, opts, want_stiff), bool(want_stiff))
        except (TypeError, ValueError):  # f without the float64 signature: one by one
            outs = None
        if outs is not None:
            trajs = [_compiled_trajectory(o, y0[b, ...], t_out, opts)
                     for b, o in enumerate(outs)]
    for b in range(len(trajs), n_traj):
        yb = y0[b, ...] if per_traj else (y0.reshape((n,)) if host else xp.reshape(y0, (n,)))
        sts = step_list[b] if step_list is not None else None
        if compiled:
            traj = _compiled_solve(kern, f, yb, t_out, params_eff, tab, opts, sts, want_stiff)
        else:
            f0 = rhs(float(t_out[0]), yb)
            if not _finite(host and type(f0) is _NDARRAY, xp, f0):
                raise ValueError(f"{WHERE}: f(t, y, params) returned NaN or infinite values at "
                                 f"the initial time t={float(t_out[0])!r}; check f and y0")
            traj = integrate(stepper, rhs, yb, t_out, controller=controller,
                             first_step=first_step, max_steps=int(max_steps), step_ts=sts,
                             want_stiff=want_stiff, every=every, throw=throw, f0=f0)
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
            rng = B.host_rng(seed)
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
    if per_traj:
        ys = xp.stack([traj.ys for traj in trajs], axis=1)
    else:
        ys = trajs[0].ys
        ys = ys.reshape((T, *y0.shape)) if type(ys) is _NDARRAY else \
            xp.reshape(ys, (T, *y0.shape))
    stats = trajs[0].stats if len(trajs) == 1 else sum(traj.stats for traj in trajs)
    failed = next((traj for traj in trajs if not traj.success), None)
    if failed is not None:
        message = failed.message
        import warnings

        from .._result import ConvergenceWarning

        warnings.warn(message, ConvergenceWarning, stacklevel=3)
    ts = tuple(traj.ts for traj in trajs) if per_traj else trajs[0].ts
    if host:  # a 0-d NumPy array, as xp.asarray makes, without the wrapper
        def scalar(v):
            return np.array(v, dtype=dtype)
    else:
        def scalar(v):
            return xp.asarray(v, dtype=dtype, device=device)
    result = ODEResult(ys=ys, reg_error=scalar(r_e), reg_stiffness=scalar(r_s),
                       n_steps=int(stats[0]), n_accepted=int(stats[1]),
                       n_rejected=int(stats[2]), nfe=int(stats[3]) + extra_nfe, ts=ts,
                       status=0 if failed is None else failed.status,
                       t_stop=math.nan if failed is None else failed.t_fail)
    if adjoint == "backsolve":
        trajs = [_backsolve_residual(traj) for traj in trajs]
    fwd = _Forward(trajs=trajs, stepper=stepper, rhs=rhs, f=f, xp=xp, t_out=t_out,
                   per_traj=per_traj, shape=shape, n=n, y0=y0, params_eff=params_eff,
                   regularizers=regularizers, local=local_regularization, tab=tab,
                   jitted=jitted, compiled=compiled, vjp=vjp, device=device,
                   rtol=float(rtol), atol=float(atol))
    return result, fwd


# ---------------------------------------------------------------------------------------
# the backward rule
# ---------------------------------------------------------------------------------------
def _get_args(ctx):
    args, kw = ctx.args, ctx.kwargs
    f, y0, t_eval = args[0], args[1], args[2]
    params = args[3] if len(args) > 3 else kw.get("params")
    return f, y0, t_eval, params


def _compiled_reverse_ok(fwd, traj) -> bool:
    """The compiled adjoint runs for the compiled forward with an @njit vjp."""
    if not (fwd.compiled and traj.all_states is not None and fwd.vjp is not None):
        return False
    if not B.get_kernel(fwd.xp, "ode.is_jitted")(fwd.vjp):
        return False
    return True


def _odeint_bwd(ctx, cot):
    f, y0, t_eval, params = _get_args(ctx)
    kw = dict(ctx.kwargs)
    kw.pop("params", None)
    fwd = ctx.residuals
    if fwd is None:  # the JAX adapter under jit keeps no residuals: solve again
        _, fwd = _solve(f, y0, t_eval, params, **kw)
    xp = fwd.xp
    adjoint = kw.get("adjoint", "discrete")
    ys_bar_all = xp.astype(cot["ys"], fwd.y0.dtype)
    rE = float(cot["reg_error"]) if "error" in fwd.regularizers else 0.0
    rS = float(cot["reg_stiffness"]) if "stiffness" in fwd.regularizers else 0.0
    T = fwd.t_out.shape[0]
    y0_bars, p_bar, t_bar = [], None, [0.0] * T
    global_reg = bool(rE or rS) and fwd.local is None
    for b, traj in enumerate(fwd.trajs):
        if fwd.per_traj:
            ys_bar = ys_bar_all[:, b, :]
            ys_b = traj.ys
        else:
            ys_bar = xp.reshape(ys_bar_all, (T, fwd.n))
            ys_b = traj.ys
        y0_b = traj.states[0]
        if adjoint == "discrete" and _compiled_reverse_ok(fwd, traj):
            through, pb = B.get_kernel(xp, "ode.rk_reverse")(
                f, fwd.vjp, traj.ts, traj.all_states, B.contiguous(xp, ys_bar), traj.out_step,
                traj.out_theta, B.contiguous(xp, fwd.params_eff), fwd.tab.A, fwd.tab.c,
                fwd.tab.e, fwd.tab.P, fwd.rtol, fwd.atol,
                rE if fwd.local is None else 0.0, rS if fwd.local is None else 0.0)
            y0_bar = ys_bar[0, ...] + through
            pb = pb if params is not None else None
        elif adjoint == "discrete":
            y0_bar, pb, through = discrete_adjoint(
                fwd.stepper, fwd.rhs, fwd.fvjp, traj, ys_bar,
                rE if fwd.local is None else 0.0, rS if fwd.local is None else 0.0)
        else:
            def make_stepper(size, _xp=xp, _fwd=fwd):
                return Stepper(_xp, _fwd.tab, _fwd.y0.dtype, B.device(_fwd.y0), size,
                               kw.get("rtol", 1e-6), kw.get("atol", 1e-9))
            p_size = 0 if params is None else params.shape[0]
            y0_bar, pb, through = backsolve_adjoint(
                xp, make_stepper, fwd.rhs, fwd.fvjp, fwd.n, p_size, ys_b, ys_bar, fwd.t_out,
                controller=kw.get("controller", "pi"), max_steps=kw.get("max_steps", 100_000))
        if fwd.local is not None and traj.local and (rE or rS):
            rec = traj.local
            pl = one_step_adjoint(fwd.stepper, fwd.rhs, fwd.fvjp, rec["t"], rec["y"], rec["h"],
                                  rE, rS)
            if pl is not None:
                pb = pl if pb is None else pb + pl
        if pb is not None:
            p_bar = pb if p_bar is None else p_bar + pb
        y0_bars.append(y0_bar)
        tb = t_eval_cotangent(xp, fwd.rhs, ys_b, ys_bar, fwd.t_out, through, y0_b)
        t_bar = [a + c for a, c in zip(t_bar, tb)]
    if global_reg:
        t_bar[0] = math.nan  # see odeint's Notes: not defined for the global regularisers
    if fwd.per_traj:
        y0_bar = xp.stack(y0_bars, axis=0)
    else:
        y0_bar = xp.reshape(y0_bars[0], tuple(y0.shape))
    y0_bar = xp.astype(y0_bar, y0.dtype) if xp.isdtype(y0.dtype, "real floating") else None
    if params is not None:
        pxp = B.array_namespace(params)
        p_bar = pxp.zeros_like(params) if p_bar is None else \
            pxp.astype(pxp.reshape(pxp.asarray(p_bar), params.shape), params.dtype)
    else:
        p_bar = None
    if B.is_array(t_eval) and B.array_namespace(t_eval).isdtype(t_eval.dtype, "real floating"):
        txp = B.array_namespace(t_eval)
        t_bar = txp.asarray(t_bar, dtype=t_eval.dtype, device=B.device(t_eval))
    else:
        t_bar = None
    grads = (None, y0_bar, t_bar, p_bar)
    return grads[:len(ctx.args)]


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
    }


def _solve(f, y0, t_eval, params=None, *, method="tsit5", rtol=1e-6, atol=1e-9,
           controller="pi", first_step=None, max_steps=100_000, adjoint="discrete",
           regularizers=(), local_regularization=None, seed=None, vjp=None,
           batch_mode="per-trajectory", checkpoint_every=1, throw=True, step_ts=None):
    return _forward(f, y0, t_eval, params, method, rtol, atol, controller, first_step,
                    max_steps, adjoint, regularizers, local_regularization, seed, vjp,
                    batch_mode, checkpoint_every, throw, step_ts)


@custom_vjp(_odeint_bwd, _odeint_shapes, ODEResult, public_name=WHERE)
def odeint(f, y0, t_eval, params=None, *, method="tsit5", rtol=1e-6, atol=1e-9,
           controller="pi", first_step=None, max_steps=100_000, adjoint="discrete",
           regularizers=(), local_regularization=None, seed=None, vjp=None,
           batch_mode="per-trajectory", checkpoint_every=1, throw=True, step_ts=None):
    """Solve ``dy/dt = f(t, y, params)`` with an adaptive explicit Runge–Kutta pair.

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
        stage from Python.
        PyTorch / JAX functions: see :func:`diffsolve.ode.from_torch` / ``from_jax``.
    y0 : array, shape (d,) or (B, d)
        Initial state(s); NumPy, CuPy or any array-API array, float32 or float64.
    t_eval : array or sequence, shape (T,)
        Strictly increasing or decreasing output times; ``t_eval[0]`` is the initial time
        and the solve ends at ``t_eval[-1]``.
    params : 1-D array, optional
        All parameters as ONE vector (differentiable).
    method : {"tsit5", "dopri5", "bs3"}
        Tsitouras 5(4), Dormand–Prince 5(4), Bogacki–Shampine 3(2); each with its own
        continuous extension for ``t_eval`` (outputs do not shorten steps).
    rtol, atol : float > 0
        Accept a step when ``E = rms(err / (atol + rtol max(|y_n|, |y_{n+1}|))) <= 1``.
    controller : {"pi", "i"}
        PI step-size control, or the I rule that reproduces ``scipy.integrate.solve_ivp``
        (``dopri5`` + ``"i"`` takes RK45's steps).
    first_step : float, optional
        Initial ``|h|``; default Hairer's heuristic (as SciPy's ``select_initial_step``).
    max_steps : int
        Attempted steps allowed (per trajectory).
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
    batch_mode : {"per-trajectory", "shared"}
        For ``y0`` of shape (B, d): independent solves, each with its own steps (``f`` sees
        ``(d,)``; equal to looping), or one solve of the (B, d) system with one step size
        and the error norm over the whole batch (``f`` sees ``(B, d)``: one vectorised
        call per stage).
    checkpoint_every : int
        The discrete adjoint stores every k-th accepted state and recomputes the others
        (memory ``N/k + k`` states instead of ``N``). Ignored by the backsolve adjoint,
        whose forward keeps only ``y0`` and the outputs (memory independent of ``N``).
    throw : bool
        On failure (max_steps, step-size underflow) raise :class:`ODESolveError`; with
        ``False`` warn (:class:`diffsolve.ConvergenceWarning`) and return a result with
        ``success == False`` (``status`` 1 or 2) and NaN outputs past the failure.
    step_ts : array or sequence of arrays, optional
        Replay these step times (e.g. a previous ``res.ts``) instead of adapting: the step
        sequence is then frozen, for finite-difference checks or fixed-step integration.

    Returns
    -------
    ODEResult
        ``ys`` (T, d) or (T, B, d), ``reg_error``, ``reg_stiffness`` (differentiable),
        ``stats`` (``ODEStats(n_steps, n_accepted, n_rejected, nfe)``), ``ts``,
        ``status``/``t_stop`` (and the ``success``/``message`` properties).

    Notes
    -----
    Gradients: w.r.t. ``y0``, ``params`` (pass it positionally) and ``t_eval``
    (``t̄_q = ȳ_q · f(t_q, y_q)``, ``t̄_0 = −a(t_0) · f(t_0, y_0)``, the continuous-time
    formulas; with a non-zero cotangent of a *global* regulariser ``t̄_0`` is NaN, since
    the regularisers' dependence on the start time is not defined with frozen steps).

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
    """
    return _solve(f, y0, t_eval, params, method=method, rtol=rtol, atol=atol,
                  controller=controller, first_step=first_step, max_steps=max_steps,
                  adjoint=adjoint, regularizers=regularizers,
                  local_regularization=local_regularization, seed=seed, vjp=vjp,
                  batch_mode=batch_mode, checkpoint_every=checkpoint_every, throw=throw,
                  step_ts=step_ts)
