"""A batch of independent trajectories advanced together: ``batch_mode="vectorized"``.

Every trajectory keeps its own time, step size, controller state, accept/reject decisions
and outputs, exactly as its own solve would (``batch_mode="per-trajectory"``), but each
stage of an iteration is one call of the user's ``f`` on the whole ``(B, d)`` batch. One
iteration attempts one step of every trajectory still running; a trajectory that has
finished (or failed) rides along with ``h = 0`` and its results are left alone. This is
what ``jax.vmap`` of an adaptive solve compiles to (the loop runs until the last
trajectory finishes), written out for NumPy and CuPy.

The per-row arithmetic keeps the single-trajectory order, so that a row takes the steps
of its own solve: stage sums, error norms and dense outputs in compiled row kernels on
NumPy (array expressions in the same order on CuPy), and the step-size controller in a
compiled kernel on host arrays (libm's ``pow``, as Python's; NumPy's vectorised ``power``
differs in the last bit for a few percent of arguments, and the error estimate's
cancellation would amplify that into different steps).

Cost model: per iteration ``s - 1`` calls of ``f`` on the batch plus about ten kernel calls
and array operations, whatever ``B``; a field whose batched evaluation is cheap per row (a
matrix product, a ufunc) is then evaluated at vectorised speed instead of once per
trajectory and stage. The controller reads the ``B`` error norms once per iteration: on
CuPy that is one explicit device-to-host copy of a ``B``-vector (and host-to-device copies
of the step times and sizes), the batched form of the single trajectory's one number per
step.

The discrete adjoint reverses the same iterations (:mod:`._vectorized_adjoint`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import _backend as B
from .._status import Status
from ._controller import MAX_FACTOR, MIN_FACTOR, SAFETY
from ._integrate import Trajectory, theta_powers
from ._result import status_message

__all__ = ["VectorizedRecord", "integrate_vectorized", "row_field"]

np = B.host_namespace()

WHERE = "diffsolve.ode.odeint"

#: NumPy states use the compiled row kernels (kernels/cpu/ode.py); ``False`` runs the array
#: expressions that CuPy states run (the same arithmetic order; tests compare the two)
ROW_KERNELS = True

_CONTRACT = ("with batch_mode='vectorized', f(t, Y, params) is called on the whole batch: "
             "Y of shape (B, *state_shape), t an array of shape (B, 1, ...) holding each "
             "row's time, and it must return dY/dt of Y's shape, row b depending on row b "
             "of t and Y only")


def _t_shape(n_rows: int, shape: tuple) -> tuple:
    return (n_rows,) + (1,) * len(shape)


def row_field(f, vjp, xp, shape: tuple, dtype, device):
    """``(f_row, vjp_row)``: the batched field (and its batched ``vjp``) applied to one
    trajectory, in the per-trajectory contract ``f_row(t, y, params)`` with ``y`` of
    ``shape``. The backward rules that work one trajectory at a time call these, so that
    they evaluate exactly the user's batched functions, on a batch of one row."""
    shape = tuple(shape)
    t_shape = _t_shape(1, shape)

    # (the time array is made from the batch's dtype and device, not from y: under an
    # autodiff tracer y is a box without them)
    def f_row(t, y, params):
        tt = xp.full(t_shape, t, dtype=dtype, device=device)
        out = f(tt, y[None, ...], params)
        if getattr(out, "shape", None) != (1, *shape):
            return out  # the caller's shape check names what came back
        return out[0, ...]

    if vjp is None:
        return f_row, None

    def vjp_row(t, y, params, v):
        tt = xp.full(t_shape, t, dtype=dtype, device=device)
        out = vjp(tt, y[None, ...], params, v[None, ...])
        if not isinstance(out, tuple) or len(out) != 2:
            return out  # make_vjp reports the contract
        vy, vp = out
        return (vy[0, ...] if getattr(vy, "shape", None) == (1, *shape) else vy), vp

    return f_row, vjp_row


@dataclass
class VectorizedRecord:
    """What the batched discrete adjoint replays: per iteration that accepted a step of
    some trajectory, the step's start times ``t`` and sizes ``h`` (host, ``(B,)``; ``h``
    is 0 for rows that did not accept in it), the accepted rows, and the states ``Y`` at
    the start of the step (``(B, n)``, the state's namespace)."""

    t: list
    h: list
    accepted: list
    Y: list
    # the record of each row's k-th accepted step: step_record[step_start[row] + k] (host
    # ints, the rows one after the other)
    step_record: Any = None
    step_start: Any = None


class _RowStates(Mapping):
    """``Trajectory.states`` of one row: the state at the start of accepted step ``k``
    (``k = 0 .. N``), read from the batch records when asked for."""

    def __init__(self, rec: VectorizedRecord, row: int, y0, y_end, n_acc: int):
        self.rec, self.row, self.y0, self.y_end, self.n_acc = rec, row, y0, y_end, n_acc

    def __contains__(self, k) -> bool:
        return isinstance(k, int) and 0 <= k <= self.n_acc

    def __iter__(self):
        return iter(range(self.n_acc + 1))

    def __len__(self) -> int:
        return self.n_acc + 1

    def __getitem__(self, k: int):
        if k == 0:
            return self.y0
        if k == self.n_acc:
            return self.y_end
        if not 0 < k < self.n_acc:
            raise KeyError(k)
        # the start of step k is the end of step k - 1: the start of step k's record
        it = int(self.rec.step_record[self.rec.step_start[self.row] + k])
        return self.rec.Y[it][self.row, ...]


class _BatchField:
    """``f`` on the batch, with its contract checked on the first call."""

    def __init__(self, f, params, xp, n_rows: int, shape: tuple, n: int):
        self.f, self.params, self.xp = f, params, xp
        self.shape, self.n, self.n_rows = shape, n, n_rows
        self.full = (n_rows, *shape)
        self.t_shape = _t_shape(n_rows, shape)

    def __call__(self, t_dev, Y):
        # (the arrays' own reshape: NumPy and CuPy, without the namespace wrapper's cost)
        out = self.f(t_dev.reshape(self.t_shape), Y.reshape(self.full), self.params)
        if getattr(out, "shape", None) != self.full:
            got = getattr(out, "shape", None)
            what = f"an array of shape {tuple(got)}" if got is not None else \
                f"a {type(out).__name__}"
            raise ValueError(f"{WHERE}: f returned {what} for a batch of shape {self.full}; "
                             f"{_CONTRACT}")
        return out.reshape((self.n_rows, self.n))

    def subset(self, t_rows, Y_rows):
        """``f`` on ``m`` of the rows (``t_rows`` (m,), ``Y_rows`` (m, n)): the rows still
        running once many have finished (the contract makes ``f`` row-wise, which
        :meth:`check_rows` verified on the first call)."""
        m = int(Y_rows.shape[0])
        full = (m, *self.shape)
        out = self.f(t_rows.reshape(_t_shape(m, self.shape)), Y_rows.reshape(full),
                     self.params)
        if getattr(out, "shape", None) != full:
            got = getattr(out, "shape", None)
            what = f"an array of shape {tuple(got)}" if got is not None else \
                f"a {type(out).__name__}"
            raise ValueError(f"{WHERE}: f returned {what} for a batch of shape {full}; "
                             f"{_CONTRACT}")
        return out.reshape((m, self.n))

    def check_rows(self, t_dev, Y, F):
        """Raise unless ``f`` on the last row alone gives the last row of ``F`` (to
        rounding): a field written for one state, or one that mixes rows, would otherwise
        integrate a different system without a word."""
        xp = self.xp
        last = self.n_rows - 1
        try:
            one = self.f(xp.reshape(t_dev[last:], _t_shape(1, self.shape)),
                         xp.reshape(Y[last:, ...], (1, *self.shape)), self.params)
        except (IndexError, ValueError, TypeError) as exc:
            raise ValueError(f"{WHERE}: f(t, Y, params) fails on a batch of one row ("
                             f"{type(exc).__name__}: {exc}), so it is not row-wise; "
                             f"{_CONTRACT}. For a field written for one state of shape "
                             "(d,), use batch_mode='per-trajectory'") from exc
        if getattr(one, "shape", None) != (1, *self.shape):
            got = getattr(one, "shape", None)
            raise ValueError(f"{WHERE}: f returned shape {got} for a batch of one row, "
                             f"{(1, *self.shape)} expected; {_CONTRACT}")
        row = xp.reshape(one, (1, self.n))
        ref = F[last:, ...]
        eps = float(xp.finfo(F.dtype).eps)
        scale = xp.maximum(xp.abs(ref), xp.abs(row))
        bad = xp.abs(row - ref) > 1e3 * eps * (scale + 1.0)
        if bool(xp.any(bad)):
            raise ValueError(f"{WHERE}: f(t, Y, params) on the last row of Y alone differs "
                             "from the last row of f on the whole batch, so f is not "
                             f"row-wise; {_CONTRACT}. For a field written for one state of "
                             "shape (d,), use batch_mode='per-trajectory'")


def _initial_steps(field, arith, xp, Y, F, t0, direction, error_order, interval,
                   first_step, n_rows, finite):
    """Hairer's starting step per row (:func:`._controller.initial_step`'s formulas on
    Python floats, its norms in the stage kernels' order: each row starts as its own
    solve does), or ``first_step`` for every row; ``(|h| (B,) host, f calls made)``."""
    if interval == 0.0:
        return np.zeros(n_rows), 0
    if first_step is not None:
        return np.full(n_rows, float(first_step)), 0
    d0 = arith.rms_rows(Y, Y).tolist()
    d1 = arith.rms_rows(F, Y).tolist()
    h0 = [min(1e-6 if (a < 1e-5 or b < 1e-5) else 0.01 * a / b, interval)
          for a, b in zip(d0, d1)]
    hd = np.asarray(h0) * direction
    F1 = field(_dev(xp, t0 + hd, Y), Y + _dev(xp, hd, Y)[:, None] * F)
    d2 = arith.rms_rows(F1 - F, Y).tolist()
    out = []
    for a, b, h, ok in zip(d1, d2, h0, finite.tolist()):
        if not ok:  # f(t0, y0) was not finite: that row stops before its first step
            out.append(0.0)
            continue
        b = b / h
        if a <= 1e-15 and b <= 1e-15:
            h1 = max(1e-6, h * 1e-3)
        else:
            h1 = (0.01 / max(a, b)) ** (1.0 / (error_order + 1))
        out.append(min(100 * h, h1, interval))
    return np.asarray(out, dtype=np.float64), 1


class _StageArithmetic:
    """The stage combinations and error norms of a batch, row by row in the arithmetic
    order of the single-trajectory stage kernels (``ode.rk_combine`` /
    ``ode.rk_error_norm``): compiled row kernels on NumPy, array expressions in the same
    order elsewhere. The order matters: the embedded error estimate is a small difference
    of O(1) slopes, so a reordered sum changes it in its fourth digit and the step
    sizes in their fifth."""

    def __init__(self, xp, tab, n_rows: int, n: int, rtol: float, atol: float, dtype=None):
        self.xp, self.rtol, self.atol, self.n = xp, rtol, atol, n
        self.A = [[float(v) for v in tab.A_rows[i][:i]] for i in range(tab.n_stages)]
        self.e = [float(v) for v in tab.e]
        self.kernel = B.is_numpy(xp) and ROW_KERNELS
        if self.kernel:
            self._combine = B.get_kernel(xp, "ode.rk_combine_rows")
            self._norm = B.get_kernel(xp, "ode.rk_error_norm_rows")
            self.A_host = [B.host_numpy(tab.A_rows[i][:i]).astype("float64")
                           for i in range(tab.n_stages)]
            self.e_host = B.host_numpy(tab.e).astype("float64")
            self.E = np.empty(n_rows)
            self.acc = np.empty(n_rows * n)  # the row kernels' scratch
            # float64 stage sums accumulate in the stage buffer itself (no scratch)
            self.combine_acc = self.acc if np.dtype(dtype) != np.float64 else np.empty(0)
            # the stage arguments: written in place every iteration (f sees them, the
            # last one becomes the next state by a copy)
            self.G = np.empty((tab.n_stages, n_rows, n), dtype=dtype)
            self._one = np.ones(1)
            self._ones = np.ones(n_rows)

    def combine(self, Y, K, i: int, h_dev, hc):
        """``Y + h Σ_{j<i} a_ij K_j`` per row."""
        if self.kernel:
            return self._combine(Y, K, self.A_host[i], h_dev, self.G[i], self.combine_acc)
        return Y + hc * _weighted(self.A[i], K)

    def rms_rows(self, X, Y):
        """``sqrt(mean((X / (atol + rtol |Y|))²))`` per row, on the host (``(B,)``)."""
        if self.kernel:
            K = X[None, ...] if X.flags.c_contiguous else X.copy()[None, ...]
            return self._norm(Y, Y, K, self._one, self._ones, self.rtol, self.atol,
                              self.E, self.acc).copy()
        xp = self.xp
        r = X / (self.atol + self.rtol * xp.abs(Y))
        return B.host_vector(xp.sqrt(xp.sum(r * r, axis=1) / max(self.n, 1)))

    def error_norm(self, Y, Y_new, K, h_dev, hc):
        """The scaled RMS norm of each row's error estimate, on the host (``(B,)``)."""
        if self.kernel:
            return self._norm(Y, Y_new, K, self.e_host, h_dev, self.rtol, self.atol,
                              self.E, self.acc).copy()
        xp = self.xp
        sc = self.atol + self.rtol * xp.maximum(xp.abs(Y), xp.abs(Y_new))
        r = hc * _weighted(self.e, K) / sc
        return B.host_vector(xp.sqrt(xp.sum(r * r, axis=1) / max(self.n, 1)))


def _weighted(w, K):
    """``Σ_j w[j] K[j]`` summed in j order from 0 (as the stage kernels do)."""
    acc = None
    for j, wj in enumerate(w):
        term = wj * K[j, ...]
        acc = term if acc is None else acc + term
    return acc


def _dev(xp, x, like):
    """Host float64 values as an array beside ``like`` (one explicit copy on CuPy)."""
    return xp.asarray(x, dtype=like.dtype, device=B.device(like))


#: the fraction of running rows below which ``f`` is evaluated on the running rows only
#: (gathering and scattering them costs a few microseconds a stage; ``f`` on a fifth fewer
#: rows saves more for any field that costs more than a few array operations)
COMPACT_BELOW = 0.8


def integrate_vectorized(xp, tab, f, params, Y0, t_out, *, shape, rtol: float, atol: float,
                         controller: str, first_step, max_steps: int):
    """Integrate the rows of ``Y0`` (``(B, *shape)``) over the host times ``t_out``.

    Returns ``(ys, trajs, record)``: the outputs ``(T, B, *shape)``, one
    :class:`~._integrate.Trajectory` per row (as its own solve would have returned, its
    ``ys`` a view of the batch's) and the :class:`VectorizedRecord` of the accepted steps.
    Never raises on a failed row: its trajectory's status says why it stopped.
    """
    n_rows = int(Y0.shape[0])
    shape = tuple(shape)
    n = math.prod(shape)
    dtype, device = Y0.dtype, B.device(Y0)
    s = tab.n_stages
    field = _BatchField(f, params, xp, n_rows, shape, n)
    arith = _StageArithmetic(xp, tab, n_rows, n, rtol, atol, dtype)
    P = B.host_numpy(tab.P).astype(np.float64)  # (s, m): b_j(θ) = Σ_k P[j, k] θ^(k+1)
    PT = P.T.copy()
    c = [float(v) for v in tab.c]
    tl = np.asarray(t_out, dtype=np.float64)
    n_out = int(tl.shape[0])
    t0, t1 = float(tl[0]), float(tl[-1])
    direction = 1.0 if t1 >= t0 else -1.0
    key = tl * direction  # increasing
    interval = abs(t1 - t0)

    Y = B.contiguous(xp, xp.reshape(Y0, (n_rows, n)))
    K = xp.empty((s, n_rows, n), dtype=dtype, device=device)
    t = np.full(n_rows, t0)
    t_dev = _dev(xp, t, Y)
    F0 = field(t_dev, Y)
    if n_rows > 1:
        field.check_rows(t_dev, Y, F0)
    K[0, ...] = F0
    ys = xp.full((n_out, n_rows, n), math.nan, dtype=dtype, device=device)
    q = np.ones(n_rows, dtype=np.int64)  # each row's next output (t_eval is strictly monotone)
    ys[0, ...] = Y
    status = np.zeros(n_rows, dtype=np.int64)  # Status per row (SUCCESS while running)
    t_fail = np.full(n_rows, math.nan)
    last_nonfinite = np.full(n_rows, math.nan)
    fail_min = np.full(n_rows, math.nan)  # the minimum step a row underflowed below
    n_steps = np.zeros(n_rows, dtype=np.int64)
    n_acc = np.zeros(n_rows, dtype=np.int64)
    n_rej = np.zeros(n_rows, dtype=np.int64)
    running = np.full(n_rows, interval > 0.0)
    finite0_dev = xp.all(xp.isfinite(F0), axis=1)
    finite0 = B.host_vector(finite0_dev)
    bad0 = ~finite0
    if bad0.any():  # those rows stop at t0; zeros keep their NaN/inf out of the arithmetic
        F0 = xp.where(finite0_dev[:, None], F0, xp.zeros_like(F0))
        K[0, ...] = F0
    status[bad0] = int(Status.NONFINITE)
    t_fail[bad0] = t0
    running &= finite0
    h_abs, init_nfe = _initial_steps(field, arith, xp, Y, F0, t0, direction,
                                     tab.error_order, interval, first_step, n_rows,
                                     finite0)
    h_abs = np.where(finite0, h_abs, 0.0)
    pi = controller == "pi"
    exp_i = -1.0 / (tab.error_order + 1)
    beta1, beta2 = 7.0 / (10.0 * tab.order), 2.0 / (5.0 * tab.order)
    factors = (SAFETY, MIN_FACTOR, MAX_FACTOR)
    codes = np.asarray([int(Status.MAX_ITERATIONS), int(Status.NONFINITE),
                        int(Status.STEP_UNDERFLOW)], dtype=np.int64)
    err_prev = np.full(n_rows, 1e-4)
    rejected = np.zeros(n_rows, dtype=bool)
    fresh = np.ones(n_rows, dtype=bool)  # about to attempt the first try of a new step
    nonfinite_E = np.zeros(n_rows, dtype=bool)
    accept = np.zeros(n_rows, dtype=bool)
    h = np.zeros(n_rows)
    t_new = np.zeros(n_rows)
    next_steps = B.get_kernel(np, "ode.rows_next_steps")
    dense = B.get_kernel(np, "ode.rk_dense_rows")
    c_col = np.asarray(c)[:, None]
    host_dtype = dtype if arith.kernel else np.float64  # the times f sees: y's dtype
    decide = B.get_kernel(np, "ode.rows_decide")
    commit = B.get_kernel(np, "ode.rows_commit")
    errs: list = []  # per record: the accepted rows' error norms (NaN elsewhere)
    rec = VectorizedRecord(t=[], h=[], accepted=[], Y=[])
    t_ends: list = []  # per record: the accepted rows' new times (NaN elsewhere)
    out_step = np.full((n_rows, n_out), -1, dtype=np.int64)
    out_theta = np.zeros((n_rows, n_out))
    while next_steps(t, h_abs, fresh, rejected, running, n_steps, nonfinite_E, status,
                     t_fail, fail_min, t1, direction, max_steps, codes, h, t_new):
        # every stage's times at once (the loop's t + c_i h, in float64 on the host)
        t_stages = t[None, :] + c_col * h[None, :]
        if t_stages.dtype != host_dtype:
            t_stages = t_stages.astype(host_dtype)
        if arith.kernel:  # host arrays: the row kernels take h as float64
            h_dev, hc = h, None
        else:
            t_stages = _dev(xp, t_stages, Y)
            h_dev = _dev(xp, h, Y)
            hc = h_dev[:, None]
        Y_new = Y
        # once a fifth of the rows have finished, f is called on the running rows only (a
        # finished row's stages are never read: it is not accepted, recorded or output)
        n_run = int(np.count_nonzero(h))
        rows = None
        if n_run < COMPACT_BELOW * n_rows:
            rows = np.nonzero(h)[0]
            rows_t = rows if arith.kernel else xp.asarray(rows, device=device)
        for i in range(1, s):
            Y_new = arith.combine(Y, K, i, h_dev, hc)
            if rows is None:
                K[i, ...] = field(t_stages[i], Y_new)
            else:
                K[i, rows_t, :] = field.subset(t_stages[i][rows_t], Y_new[rows_t, :])
        # (the last stage's argument is y_{n+1}: the tableaux are FSAL-shaped)
        E = arith.error_norm(Y, Y_new, K, h_dev, hc)
        any_accept = decide(E, t, running, rejected, err_prev, h_abs, n_steps, n_rej,
                            nonfinite_E, last_nonfinite, pi, exp_i, beta1, beta2, factors,
                            accept)
        fresh[:] = accept
        if not any_accept:
            continue
        # outputs inside the accepted steps, all rows at once
        if arith.kernel:
            dense(Y, K, P, accept, t, t_new, h, tl, direction, q, n_acc, ys, out_step,
                  out_theta)
        else:
            q = _dense_outputs(xp, Y, K, PT, accept, t, t_new, h, tl, key, direction, q,
                               n_acc, ys, out_step, out_theta)
        acc_now = accept.copy()
        rec.t.append(t.copy())
        rec.accepted.append(acc_now)
        rec.Y.append(Y)
        if arith.kernel:  # one compiled pass over the rows instead of a dozen array calls
            Y_next = np.empty_like(Y)
            h_rec, t_end, err = np.empty(n_rows), np.empty(n_rows), np.empty(n_rows)
            commit(acc_now, Y, Y_new, K, s - 1, t, t_new, h, E, t1, direction, n_acc,
                   running, Y_next, h_rec, t_end, err)
            Y = Y_next
            rec.h.append(h_rec)
            t_ends.append(t_end)
            errs.append(err)
            continue
        rec.h.append(np.where(acc_now, h, 0.0))
        t_ends.append(np.where(acc_now, t_new, math.nan))
        errs.append(np.where(acc_now, E, math.nan))
        n_acc += acc_now
        acc_dev = xp.asarray(acc_now, device=device)[:, None]
        Y = xp.where(acc_dev, Y_new, Y)
        K[0, ...] = xp.where(acc_dev, K[s - 1, ...], K[0, ...])
        t = np.where(acc_now, t_new, t)
        running &= ~(acc_now & (direction * (t1 - t) <= 0))
    # per row: the record of each accepted step, its errors, its trajectory
    R = len(rec.accepted)
    accT = np.stack(rec.accepted, axis=1) if R else np.zeros((n_rows, 0), dtype=bool)
    # np.nonzero walks (row, record) in row-major order: each row's steps in order
    _, its_flat = np.nonzero(accT)
    counts = accT.sum(axis=1)
    ends = np.cumsum(counts).tolist()
    starts = [0, *ends[:-1]]
    rec.step_record, rec.step_start = its_flat, np.asarray(starts, dtype=np.int64)
    if R:
        t_flat = np.stack(t_ends, axis=1)[accT]
        e_flat = np.stack(errs, axis=1)[accT]
    else:
        t_flat = e_flat = np.zeros((0,))
    # every row's step times with t0 in front, as one array sliced per row
    ts_flat = np.insert(t_flat, np.asarray(starts, dtype=np.int64), t0)
    nfe = 1 + init_nfe * finite0.astype(np.int64) + (s - 1) * n_steps
    stats = np.stack([n_steps, n_acc, n_rej, nfe], axis=1)
    ys_rows = xp.reshape(ys, (n_out, n_rows, n))
    Y0_flat = xp.reshape(Y0, (n_rows, n))
    no_stiff = np.zeros((0,))
    done = "The solver reached the end of the integration interval."
    trajs = []
    # (Python lists and a code table: a batch of 256 rows builds 256 trajectories here, and
    # NumPy scalar indexing and Enum calls cost a microsecond each)
    by_code = {int(v): v for v in Status}
    status_l, counts_l, q_l = status.tolist(), counts.tolist(), q.tolist()
    for b in range(n_rows):
        st = by_code[status_l[b]]
        ok = st is Status.SUCCESS
        message = done if ok else _row_message(st, b, float(t_fail[b]), t1, max_steps,
                                               float(fail_min[b]),
                                               float(last_nonfinite[b]))
        start, end = starts[b], ends[b]
        trajs.append(Trajectory(
            ys=ys_rows[:, b, :], ts=ts_flat[start + b:end + b + 1],
            states=_RowStates(rec, b, Y0_flat[b, ...], Y[b, ...], counts_l[b]), every=1,
            out_step=out_step[b], out_theta=out_theta[b], errs=e_flat[start:end],
            stiff=no_stiff,
            stats=stats[b], success=ok, message=message,
            t_fail=math.nan if ok else float(t_fail[b]), status=st,
            n_reached=n_out if ok else q_l[b]))
    return xp.reshape(ys, (n_out, n_rows, *shape)), trajs, rec


def _dense_outputs(xp, Y, K, PT, accept, t, t_new, h, tl, key, direction, q, n_acc, ys,
                   out_step, out_theta):
    """:func:`rk_dense_rows` in array operations (CuPy states); returns the new ``q``."""
    n_out = int(tl.shape[0])
    passed = accept & (key[np.minimum(q, n_out - 1)] <= t_new * direction) & (q < n_out)
    if not passed.any():
        return q
    q_end = np.where(passed, np.searchsorted(key, t_new * direction, side="right"), q)
    m = q_end - q
    total = int(m.sum())
    rows = np.repeat(np.arange(q.shape[0]), m)
    starts = np.repeat(np.cumsum(m) - m, m)
    qs = np.repeat(q, m) + (np.arange(total) - starts)
    theta = (tl[qs] - t[rows]) / h[rows]
    W = theta_powers(theta, PT.shape[0]) @ PT  # (M, s): b_j(θ) per output
    device = B.device(Y)
    rows_dev = xp.asarray(rows, device=device)
    Ksel = xp.take(K, rows_dev, axis=1)  # (s, M, n)
    W_dev = _dev(xp, W.T.copy(), Y)  # (s, M)
    vals = xp.take(Y, rows_dev, axis=0) + _dev(xp, h[rows], Y)[:, None] * \
        xp.sum(W_dev[:, :, None] * Ksel, axis=0)
    ys[xp.asarray(qs, device=device), rows_dev, :] = vals
    out_step[rows, qs] = n_acc[rows]
    out_theta[rows, qs] = theta
    return q_end


def _row_message(st: Status, b: int, t_fail: float, t1: float, max_steps: int,
                 min_step: float, last_nonfinite: float) -> str:
    """Why row ``b`` stopped, worded as its own solve would say it."""
    if st is Status.MAX_ITERATIONS:
        return status_message(st, t_fail, t1=t1, max_steps=max_steps, trajectory=b)
    if st is Status.NONFINITE and math.isnan(min_step):  # non-finite f(t0, y0)
        return status_message(st, t_fail, trajectory=b)
    return status_message(st, t_fail, min_step=min_step,
                          nonfinite_t=None if math.isnan(last_nonfinite) else last_nonfinite,
                          trajectory=b)
