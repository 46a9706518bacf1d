"""The Python-driven adaptive Runge–Kutta loop (any vector field ``f``, any namespace).

One :class:`Stepper` per solve holds the tableau's coefficients in the namespace of the
state, preallocated stage buffers ``K`` (slopes) and ``G`` (stage arguments), and the two
stage operations: on NumPy and CuPy they are the compiled kernels
``ode.rk_combine`` / ``ode.rk_error_norm`` (one call each, no temporaries), on other
namespaces (array_api_strict) plain array-API expressions. States are kept flat, shape
``(n,)``; ``f`` sees them in the user's shape.

:func:`integrate` returns a :class:`Trajectory`: the outputs at ``t_eval`` and what the
discrete adjoint needs to replay the solve (accepted step times, checkpointed states, the
step and θ each output came from, per-step error and stiffness estimates).
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from .. import _backend as B
from .._status import Status
from .._typing import Array, HostArray
from ..krylov._common import wants_stop
from ._controller import Controller, initial_step, initial_step_host
from ._result import status_message
from ._settings import ODEState

__all__ = ["Stepper", "Trajectory", "integrate"]

np = B.host_namespace()  # host bookkeeping (array_api_compat.numpy)

WHERE = "diffsolve.ode.odeint"


class Stepper:
    """Stage arithmetic of one tableau for states of one namespace, dtype and size."""

    def __init__(self, xp, tab, dtype, device, n, rtol, atol):
        self.xp, self.tab, self.n = xp, tab, n
        self.rtol, self.atol = float(rtol), float(atol)
        s = tab.n_stages
        self.s = s
        self.dtype = dtype
        combine = B.get_kernel(xp, "ode.rk_combine")
        if combine is not None:
            self.kernel = True
            self._combine = combine
            self._norm = B.get_kernel(xp, "ode.rk_error_norm")
            cdtype = xp.float64
        else:
            self.kernel = False
            cdtype = dtype
        self.cdtype = cdtype
        self.device = device
        self.numpy = B.is_numpy(xp)
        if self.numpy:  # the kernels take the tableau's own float64 host arrays
            self.A_rows = tab.A_rows
            self.e = tab.e
        else:
            self.A_rows = [xp.asarray(row, dtype=cdtype, device=device) for row in tab.A_rows]
            self.e = xp.asarray(tab.e, dtype=cdtype, device=device)
        self._one = self.coeffs([1.0])
        self.c = [float(v) for v in tab.c]
        self.K = xp.zeros((s, n), dtype=dtype, device=device)
        self.G = xp.zeros((s, n), dtype=dtype, device=device)
        self.G_rows = [self.G[i, ...] for i in range(s)]

    @cached_property
    def dense_PT(self):
        """The continuous extension's ``Pᵀ`` (``(m, s)``): dense output uses ``Q = h Pᵀ K``."""
        PT = self.tab.P.T.copy()
        return PT if self.numpy else self.xp.asarray(PT, dtype=self.cdtype, device=self.device)

    # -- stage operations ------------------------------------------------------------
    def coeffs(self, w):
        """Host weights (a list of floats) as an array the combination accepts."""
        if self.numpy:
            return B.host_numpy(w)  # float64, no namespace-wrapper overhead
        return self.xp.asarray(w, dtype=self.cdtype, device=self.device)

    def combine(self, y, coeffs, h, out=None, K=None):
        """``y + h Σ_j coeffs[j] K[j]`` (into ``out`` when the kernel path is used)."""
        K = self.K if K is None else K
        m = coeffs.shape[0]
        if self.kernel:
            if out is None:
                out = self.xp.empty_like(y)
            return self._combine(y, K, coeffs, h, out)
        if m == 0:
            return y
        return y + h * (coeffs @ K[:m, :])

    def error_norm(self, y, y_new, h, K=None):
        if self.kernel:
            return float(self._norm(y, y_new, self.K if K is None else K, self.e, h,
                                    self.rtol, self.atol))
        K = self.K if K is None else K
        xp = self.xp
        err = h * (self.e @ K)
        sc = self.atol + self.rtol * xp.maximum(xp.abs(y), xp.abs(y_new))
        return float(xp.sqrt(xp.mean((err / sc) ** 2)))

    def rms_scaled(self, x, y):
        """``sqrt(mean((x / (atol + rtol |y|))²))`` (the initial-step heuristic's norm)."""
        if self.kernel:
            return float(self._norm(y, y, self.xp.reshape(x, (1, self.n)), self._one, 1.0,
                                    self.rtol, self.atol)) if self.n else 0.0
        xp = self.xp
        sc = self.atol + self.rtol * xp.abs(y)
        return float(xp.sqrt(xp.mean((x / sc) ** 2))) if self.n else 0.0

    def stiffness(self, K=None, G=None):
        """``‖k_s − k_{s−1}‖ / ‖g_s − g_{s−1}‖``: Shampine's estimate of ``|λ|`` (ALGORITHMS §3)."""
        xp = self.xp
        K = self.K if K is None else K
        G = self.G if G is None else G
        s = self.s
        den = float(xp.linalg.vector_norm(G[s - 1, ...] - G[s - 2, ...]))
        if den == 0.0:
            return 0.0
        return float(xp.linalg.vector_norm(K[s - 1, ...] - K[s - 2, ...])) / den

    def stages(self, rhs, t, y, h, K=None, G=None):
        """Fill stages 1..s-1 from ``K[0] = f(t, y)``; returns ``y_new`` (= ``G[s-1]``)."""
        K = self.K if K is None else K
        G = self.G if G is None else G
        jax_stages = getattr(rhs, "jax_stages", None)
        if jax_stages is not None and self.numpy:
            # a from_jax field: the whole step's stages in one compiled call
            Kj, Gj = jax_stages(self.tab.A, self.c, t, h, y, K[0, ...])
            K[1:, ...] = Kj[1:, ...]
            G[1:, ...] = Gj[1:, ...]
            return G[self.s - 1, ...]
        c = self.c
        A_rows = self.A_rows
        if self.kernel:
            combine = self._combine
            G_rows = self.G_rows if G is self.G else [G[i, ...] for i in range(self.s)]
            f = getattr(rhs, "direct", None)
            if f is not None:  # unbatched field: call f itself, one Python frame less
                params, shape = rhs.params, rhs.shape
                for i in range(1, self.s):
                    g = combine(y, K, A_rows[i], h, G_rows[i])
                    ti = t + c[i] * h
                    out = f(ti, g, params)
                    if getattr(out, "shape", None) != shape:
                        rhs(ti, g)  # raises the error naming t
                    K[i] = out
            else:
                for i in range(1, self.s):
                    g = combine(y, K, A_rows[i], h, G_rows[i])
                    K[i] = rhs(t + c[i] * h, g)
        else:
            for i in range(1, self.s):
                g = y + h * (A_rows[i] @ K[:i, :])
                G[i, :] = g
                K[i, :] = rhs(t + c[i] * h, g)
        return G[self.s - 1, ...]


@dataclass
class Trajectory:
    """A finished solve of one (possibly batch-shared) system."""

    ys: Array                        # (T, n) in the state's namespace
    ts: HostArray                    # accepted step times, t_0 .. t_N
    states: Mapping                  # step index -> state y_n (flat), every `every` steps
    every: int
    out_step: HostArray              # (T,) step each output was interpolated in (-1: y0)
    out_theta: HostArray             # (T,)
    errs: HostArray                  # (N,) scaled error of each accepted step
    stiff: HostArray                 # (N,) |λ| estimate of each accepted step
    stats: HostArray                 # n_steps, n_accepted, n_rejected, nfe
    success: bool = True
    message: str = ""
    t_fail: float = math.nan
    local: dict = field(default_factory=dict)
    status: Status = Status.SUCCESS  # why it stopped (SUCCESS: reached t_eval[-1])
    all_states: object = None        # (N+1, n) from the compiled loop, for its adjoint
    n_reached: int = -1              # outputs computed: ys[:n_reached] (the rest is NaN)
    # the implicit methods (_stiff_*.py): per accepted step (G, K, stage times), work counts,
    # and for method="auto" where it switched and its two phases
    stages: Sequence | None = None
    stiff_stats: dict | None = None
    t_switch: float = math.nan
    auto_parts: tuple | None = None

    def __post_init__(self):
        if self.n_reached < 0:
            self.n_reached = int(self.out_step.shape[0]) if self.success else \
                reached_outputs(self.out_step)

    @property
    def errors_within_tolerance(self) -> bool:
        """Every accepted step met ``E <= 1`` (replayed ``step_ts`` need not)."""
        return bool(self.errs.shape[0] == 0 or float(self.errs.max()) <= 1.0)


def reached_outputs(out_step) -> int:
    """How many outputs an early-stopped solve computed (outputs are reached in order).

    ``ys[0]`` is ``y0``; a later output is computed when it was interpolated in an accepted
    step (``out_step >= 0``; output times are strictly monotone, so none but ``ys[0]``
    sits at the initial time).
    """
    T = int(out_step.shape[0])
    for q in range(1, T):
        if int(out_step[q]) < 0:
            return q
    return T


def integrate(stepper: Stepper, rhs, y0, t_out: HostArray, *, controller: str, first_step,
              max_steps: int, step_ts, want_stiff: bool, every: int, f0=None,
              callback=None, shape=None, trajectory=None) -> Trajectory:
    """Adaptive RK from ``t_out[0]`` over the increasing/decreasing host times ``t_out``.

    Never raises on a failed solve: the trajectory's ``status``/``message`` say why it
    stopped (the caller reports). ``callback(ODEState)`` is called after each accepted
    step (``shape``: the state's shape for it; ``trajectory``: its batch index).
    """
    if f0 is None:
        f0 = rhs(float(t_out[0]), y0)
        extra_nfe = 1
    else:
        extra_nfe = 0
    opts = dict(controller=controller, first_step=first_step, max_steps=max_steps,
                step_ts=step_ts, every=every, f0=f0, callback=callback,
                shape=(stepper.n,) if shape is None else tuple(shape), trajectory=trajectory)
    if _host_path_ok(stepper, y0, f0, want_stiff):
        traj = _integrate_host(stepper, rhs, y0, t_out, **opts)
    else:
        traj = _integrate_arrays(stepper, rhs, y0, t_out, want_stiff=want_stiff, **opts)
    traj.stats[3] += extra_nfe
    return traj


def _stop(callback, t, y, h, n_steps, n_acc, E, trajectory) -> bool:
    """Whether the callback asks to stop after an accepted step."""
    # the contract's rule: True (or a NumPy/0-d bool True) stops, anything else continues
    return wants_stop(callback(ODEState(t, y, h, n_steps, n_acc, E, trajectory)))


def _readonly(y):
    """A read-only view of a NumPy state for the callback (other libraries: as is)."""
    if isinstance(y, np.ndarray):
        y = y.view()
        y.flags.writeable = False
    return y


_EMPTY = np.zeros((0,), dtype=np.float64)  # shared by trajectories without records
_EMPTY.flags.writeable = False

#: States of at most this many components take the host-float path (see _integrate_host).
HOST_MAX_N = 6


def _host_path_ok(stepper: Stepper, y0, f0, want_stiff: bool) -> bool:
    return (stepper.numpy and stepper.kernel and not want_stiff
            and 0 < stepper.n <= HOST_MAX_N and stepper.dtype == stepper.xp.float64
            and isinstance(y0, type(stepper.K)) and isinstance(f0, type(stepper.K))
            and y0.dtype == stepper.xp.float64)


def _jax_host_step(tab, jax_stages, s: int, n: int, rtol: float, atol: float):
    """:attr:`Tableau.host_step` for a :func:`~diffsolve.ode.from_jax` field: the stages in
    one compiled call, the scaled error in Python floats as the generated step does."""
    e = [float(v) for v in tab.e]
    arr = B.host_numpy

    def host_step(t, h, y, K):
        Kj, Gj = jax_stages(tab.A, tab.c, t, h, arr(y), arr(K[0]))
        rows = Kj.tolist()
        for i in range(1, s):
            K[i] = rows[i]
        g = Gj[s - 1].tolist()
        acc = 0.0
        for j in range(n):
            err = 0.0
            for i in range(s):
                err += e[i] * rows[i][j]
            a, b = abs(y[j]), abs(g[j])
            r = h * err / (atol + rtol * (b if b > a else a))
            acc += r * r
        return g, math.sqrt(acc / n)

    return host_step


def _integrate_host(stepper: Stepper, rhs, y0, t_out: HostArray, *, controller: str,
                    first_step, max_steps: int, step_ts, every: int, f0, callback, shape,
                    trajectory) -> Trajectory:
    """:func:`integrate` for a small float64 NumPy state, on Python floats.

    For a handful of components the cost of a step is the Python around the ``s - 1``
    calls of ``f``, not arithmetic: calling a compiled kernel, copying its result into the
    stage matrix, slicing rows. Here the state and the slopes are lists of floats, a whole
    attempted step is one call of the tableau's generated :attr:`Tableau.host_step`
    (stage arguments written into preallocated float64 buffers that ``f`` receives, slopes
    read back with ``tolist``), the controller decides with one call, dense output is
    evaluated only for the ``t_eval`` inside an accepted step, and arrays are built once
    at the end (outputs, checkpointed states). The arithmetic is that of the compiled stage
    kernels in the same order, so outputs and step sequences equal those of the array
    path.
    """
    tab = stepper.tab
    s, n = stepper.s, stepper.n
    rtol, atol = stepper.rtol, stepper.atol
    tl = t_out.tolist()
    n_out = len(tl)
    t0, t1 = tl[0], tl[-1]
    direction = 1.0 if t1 >= t0 else -1.0
    y = y0.tolist()
    ts = [t0]
    errs: list[float] = []
    state_rows: list[list] = []
    nfe = 0
    Kl = [f0.tolist()] + [None] * (s - 1)
    ctrl = Controller(controller, tab.order, tab.error_order)
    decide = ctrl.decide
    fixed = step_ts is not None
    if fixed:
        step_list = [float(v) for v in step_ts]
    interval = abs(t1 - t0)
    if fixed:
        h_abs = 0.0
    elif first_step is not None:
        h_abs = float(first_step)
    else:
        h_abs = initial_step_host(rhs, t0, y, Kl[0], stepper.G[0, ...], direction,
                                  tab.error_order, rtol, atol, interval)
        nfe += 1 if interval > 0 else 0
    q = 1
    while q < n_out and tl[q] == t0:  # outputs at the initial time: y0
        q += 1
    q_first = q
    # outputs inside accepted steps: (q, q_end, step, t, h, y, K) per step that has any
    blocks: list[tuple] = []
    key_t = None if direction > 0 else operator.neg  # bisect wants increasing keys
    # the stage arguments f sees: preallocated rows, overwritten every step (as the array
    # path's G); memoryviews make writing a few floats into them cheap
    bufs = [stepper.G[i, ...] for i in range(s)]
    mvs = [memoryview(b) for b in bufs]
    f = getattr(rhs, "direct", None)
    if f is not None:
        params, f_shape = rhs.params, rhs.shape
    else:  # a reshaping field (shared batch): rhs(t, y) flat, called as f(t, y, None)
        params, f_shape = None, (n,)

        def f(t, y, _p, _rhs=rhs):
            return _rhs(t, y)

    host_step = tab.host_step(n)(f, params, mvs, bufs, f_shape, rhs, rtol, atol)
    jax_stages = getattr(rhs, "jax_stages", None)
    if jax_stages is not None:
        host_step = _jax_host_step(tab, jax_stages, s, n, rtol, atol)
    arr = B.host_numpy

    t = t0
    n_acc = 0
    message = ""
    last_nonfinite = None
    status = Status.SUCCESS
    n_steps = n_rej = 0
    E = 0.0
    nonfinite_E = False  # the last attempted step's error estimate was NaN/inf
    while direction * (t1 - t) > 0:
        if fixed and n_acc + 1 >= len(step_list):
            break
        min_step = 10.0 * abs(math.nextafter(t, direction * math.inf) - t)
        if not fixed and h_abs < min_step:
            h_abs = min_step
        rejected = False
        while True:
            if n_steps >= max_steps:
                status = Status.MAX_ITERATIONS
                message = status_message(status, t, t1=t1, max_steps=max_steps,
                                         trajectory=trajectory)
                break
            if fixed:
                t_new = step_list[n_acc + 1]
                h = t_new - t
            else:
                if h_abs < min_step:
                    # an underflow forced by non-finite slopes is reported as such
                    status = Status.NONFINITE if nonfinite_E else Status.STEP_UNDERFLOW
                    message = status_message(status, t, min_step=min_step,
                                             nonfinite_t=last_nonfinite,
                                             trajectory=trajectory)
                    break
                h = h_abs * direction
                t_new = t + h
                if direction * (t_new - t1) > 0:
                    t_new = t1
                h = t_new - t
                h_abs = abs(h)
            y_new, E = host_step(t, h, y, Kl)
            n_steps += 1
            if fixed:
                if E != E or E == math.inf:  # NaN/inf stages: stop, not garbage
                    status = Status.NONFINITE
                    message = status_message(status, t, trajectory=trajectory)
                break
            accepted, factor = decide(E, rejected)
            h_abs *= factor
            if accepted:
                break
            nonfinite_E = not math.isfinite(E)
            if nonfinite_E:
                last_nonfinite = t
            rejected = True
            n_rej += 1
        if message:
            break
        errs.append(E)
        if q < n_out and direction * (tl[q] - t_new) <= 0:
            # the outputs in this step: found by bisection, evaluated after the loop
            q_end = bisect_right(tl, t_new, q) if key_t is None else \
                bisect_right(tl, -t_new, q, key=key_t)
            blocks.append((q, q_end, n_acc, t, h, y, Kl[:]))
            q = q_end
        n_acc += 1
        y = y_new
        Kl[0] = Kl[s - 1]
        t = t_new
        ts.append(t)
        if n_acc % every == 0:
            state_rows.append(y)
        if callback is not None and _stop(callback, t, _readonly(arr(y).reshape(shape)), h,
                                          n_steps, n_acc, E, trajectory):
            status = Status.STOPPED
            message = status_message(status, t, trajectory=trajectory)
            break
    # NumPy arrays from lists of Python floats / ints (float64 / int64, exact), built once;
    # B.host_numpy skips the array-API wrapper's dispatch
    stats = arr([n_steps, n_acc, n_rej, nfe + (s - 1) * n_steps])
    states = {0: y0}
    if state_rows:
        st = arr(state_rows)
        for i in range(len(state_rows)):
            states[(i + 1) * every] = st[i, ...]
    success = not message
    ys, out_step, out_theta = _host_outputs(tab, y0, q_first, blocks, t_out)
    return Trajectory(ys=ys, ts=arr(ts), states=states, every=every,
                      out_step=out_step, out_theta=out_theta,
                      errs=arr(errs) if errs else _EMPTY, stiff=_EMPTY, stats=stats,
                      success=success,
                      message=message or "The solver reached the end of the integration "
                      "interval.", t_fail=math.nan if success else t, status=status,
                      n_reached=q)


#: A step with at least this many outputs evaluates them as one matrix product; fewer, one
#: by one (the per-output evaluation costs less than setting the product up).
STEP_DENSE_BATCH = 4


def theta_powers(theta: HostArray, m: int) -> HostArray:
    """``[θ, θ², ..., θ^m]`` per row: ``(M, m)`` from the host values ``theta`` (``(M,)``)."""
    return np.cumprod(np.broadcast_to(theta[:, None], (theta.shape[0], m)), axis=1)


def _host_outputs(tab, y0, q_first: int, blocks: list, t_out: HostArray):
    """``(ys, out_step, out_theta)`` of a host-path solve from its output blocks.

    Outputs before ``q_first`` are at the initial time (``y0``); each block
    ``(q, q_end, step, t, h, y, K)`` holds the accepted step (start ``t``, size ``h``, state
    ``y`` and slopes ``K`` as lists) in which outputs ``q .. q_end - 1`` lie. A step's few
    outputs are evaluated one by one (:meth:`Tableau.host_dense`, Python floats), many as
    one matrix product: no Python per output. The two agree to rounding (last bits).
    """
    arr = B.host_numpy
    n_out, n = t_out.shape[0], y0.shape[0]
    ys = np.full((n_out, n), math.nan, dtype=np.float64)
    ys[:q_first, :] = y0
    out_step = np.full(n_out, -1, dtype=np.int64)
    out_theta = np.zeros(n_out, dtype=np.float64)
    if not blocks:
        return ys, out_step, out_theta
    q_last = blocks[-1][1]
    counts = arr([b[1] - b[0] for b in blocks])
    h = arr([b[4] for b in blocks])
    theta = (t_out[q_first:q_last] - np.repeat(arr([b[3] for b in blocks]), counts)) / \
        np.repeat(h, counts)
    out_step[q_first:q_last] = np.repeat(arr([b[2] for b in blocks]), counts)
    out_theta[q_first:q_last] = theta
    host_dense = tab.host_dense(n)
    idx: list[int] = []
    vals: list[list] = []
    big = []
    for k, (q, q_end, _, t, hk, y, K) in enumerate(blocks):
        if q_end - q >= STEP_DENSE_BATCH:
            big.append(k)
            continue
        for i in range(q, q_end):
            idx.append(i)
            vals.append(host_dense((float(t_out[i]) - t) / hk, hk, y, K))
    if idx:
        ys[arr(idx), :] = arr(vals)
    if big:
        # the continuous extension as a polynomial in θ, y + Σ_m θ^(m+1) Q_m with
        # Q = h Pᵀ K (the form SciPy's RkDenseOutput evaluates)
        Q = np.matmul(tab.P.T, arr([blocks[k][6] for k in big])) * h[big][:, None, None]
        powers = theta_powers(theta, Q.shape[1])
        for j, k in enumerate(big):
            q, q_end, y = blocks[k][0], blocks[k][1], blocks[k][5]
            ys[q:q_end, :] = arr(y) + powers[q - q_first:q_end - q_first] @ Q[j]
    return ys, out_step, out_theta


def _integrate_arrays(stepper: Stepper, rhs, y0, t_out: HostArray, *, controller: str,
                      first_step, max_steps: int, step_ts, want_stiff: bool, every: int,
                      f0, callback, shape, trajectory) -> Trajectory:
    """:func:`integrate` on arrays of the state's namespace (stage kernels on NumPy/CuPy)."""
    xp, tab = stepper.xp, stepper.tab
    s, K = stepper.s, stepper.K
    n_out = t_out.shape[0]
    t0, t1 = float(t_out[0]), float(t_out[-1])
    direction = 1.0 if t1 >= t0 else -1.0
    ys = xp.full((n_out, stepper.n), math.nan, dtype=stepper.dtype, device=stepper.device)
    ys[0, :] = y0
    out_step = np.full(n_out, -1, dtype=np.int64)
    out_theta = np.zeros(n_out)
    ts = [t0]
    errs: list[float] = []
    stiff: list[float] = []
    states = {0: y0}
    stats = np.zeros(4, dtype=np.int64)
    K[0, :] = f0
    ctrl = Controller(controller, tab.order, tab.error_order)
    fixed = step_ts is not None
    interval = abs(t1 - t0)
    if fixed:
        h_abs = 0.0
    elif first_step is not None:
        h_abs = float(first_step)
    else:
        h_abs = initial_step(stepper.rms_scaled, rhs, t0, y0, f0, direction, tab.error_order,
                             stepper.rtol, stepper.atol, interval)
        stats[3] += 1 if interval > 0 else 0
    q = 1
    while q < n_out and t_out[q] == t0:
        ys[q, :] = y0
        q += 1
    tl = t_out.tolist()
    key_t = None if direction > 0 else operator.neg  # bisect wants increasing keys
    dense_PT = stepper.dense_PT
    t, y = t0, y0
    n_acc = 0
    message = ""
    combine = stepper.combine
    accepts, grow, shrink = ctrl.accepts, ctrl.grow, ctrl.shrink
    error_norm, stages = stepper.error_norm, stepper.stages
    last_nonfinite = None
    status = Status.SUCCESS
    n_steps = n_rej = 0  # Python ints in the loop, written to `stats` at the end
    nonfinite_E = False  # the last attempted step's error estimate was NaN/inf
    while direction * (t1 - t) > 0:
        if fixed and n_acc + 1 >= len(step_ts):
            break
        min_step = 10.0 * abs(math.nextafter(t, direction * math.inf) - t)
        if not fixed and h_abs < min_step:
            h_abs = min_step
        rejected = False
        while True:
            if n_steps >= max_steps:
                status = Status.MAX_ITERATIONS
                message = status_message(status, t, t1=t1, max_steps=max_steps,
                                         trajectory=trajectory)
                break
            if fixed:
                t_new = float(step_ts[n_acc + 1])
                h = t_new - t
            else:
                if h_abs < min_step:
                    status = Status.NONFINITE if nonfinite_E else Status.STEP_UNDERFLOW
                    message = status_message(status, t, min_step=min_step,
                                             nonfinite_t=last_nonfinite,
                                             trajectory=trajectory)
                    break
                h = h_abs * direction
                t_new = t + h
                if direction * (t_new - t1) > 0:
                    t_new = t1
                h = t_new - t
                h_abs = abs(h)
            y_new = stages(rhs, t, y, h)
            n_steps += 1
            E = error_norm(y, y_new, h)
            nonfinite_E = not math.isfinite(E)
            if fixed:
                if nonfinite_E:  # NaN/inf stages: stop, not garbage
                    status = Status.NONFINITE
                    message = status_message(status, t, trajectory=trajectory)
                break
            if nonfinite_E:
                last_nonfinite = t
                h_abs *= shrink(E)
                rejected = True
                n_rej += 1
                continue
            if accepts(E):
                h_abs *= grow(E, rejected)
                break
            h_abs *= shrink(E)
            rejected = True
            n_rej += 1
        if message:
            break
        errs.append(E)
        if want_stiff:
            stiff.append(stepper.stiffness())
        if q < n_out and direction * (tl[q] - t_new) <= 0:
            q_end = bisect_right(tl, t_new, q) if key_t is None else \
                bisect_right(tl, -t_new, q, key=key_t)
            if q_end - q >= STEP_DENSE_BATCH:
                # y + Σ_m θ^(m+1) Q_m, Q = h Pᵀ K: one matrix product for the step's outputs
                theta_v = (t_out[q:q_end] - t) / h
                out_theta[q:q_end] = theta_v
                powers = theta_powers(theta_v, dense_PT.shape[0])
                if not stepper.numpy:
                    powers = xp.asarray(powers, dtype=stepper.cdtype, device=stepper.device)
                val = y + powers @ (h * (dense_PT @ K))
                ys[q:q_end, :] = val if stepper.numpy else xp.astype(val, stepper.dtype)
            else:
                for i in range(q, q_end):
                    theta = (tl[i] - t) / h
                    if stepper.kernel:
                        combine(y, stepper.coeffs(tab.dense_weights(theta)), h, ys[i, ...])
                    else:
                        ys[i, :] = combine(y, stepper.coeffs(tab.dense_weights(theta)), h)
                    out_theta[i] = theta
            out_step[q:q_end] = n_acc
            q = q_end
        n_acc += 1
        y = y_new.copy() if stepper.kernel else xp.asarray(y_new, copy=True)
        K[0, ...] = K[s - 1, ...]
        t = t_new
        ts.append(t)
        if n_acc % every == 0:
            states[n_acc] = y
        if callback is not None and _stop(callback, t, _readonly(xp.reshape(y, shape)), h,
                                          n_steps, n_acc, E, trajectory):
            status = Status.STOPPED
            message = status_message(status, t, trajectory=trajectory)
            break
    stats[0] += n_steps
    stats[1] = n_acc
    stats[2] += n_rej
    stats[3] += (s - 1) * n_steps
    success = not message
    return Trajectory(ys=ys, ts=np.asarray(ts), states=states, every=every, out_step=out_step,
                      out_theta=out_theta, errs=np.asarray(errs, dtype=np.float64),
                      stiff=np.asarray(stiff, dtype=np.float64), stats=stats, success=success,
                      message=message or "The solver reached the end of the integration "
                      "interval.", t_fail=math.nan if success else t,
                      status=status, n_reached=q)


def state_at(stepper: Stepper, rhs, traj: Trajectory, n: int):
    """The state at the start of accepted step ``n`` (recomputed from the last checkpoint)."""
    if n in traj.states:
        return traj.states[n]
    base = (n // traj.every) * traj.every
    y = traj.states[base]
    K = stepper.xp.zeros_like(stepper.K)
    G = stepper.xp.zeros_like(stepper.G)
    for m in range(base, n):
        t, h = float(traj.ts[m]), float(traj.ts[m + 1] - traj.ts[m])
        K[0, :] = rhs(t, y)
        y = stepper.xp.asarray(stepper.stages(rhs, t, y, h, K=K, G=G), copy=True)
    return y
