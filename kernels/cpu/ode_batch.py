"""Numba kernels for a batch of independent explicit Runge–Kutta solves (``diffsolve.ode``).

``odeint(f, y0 (B, n), ..., batch_mode="per-trajectory")`` with an ``@njit`` float64 field
solves each row with its own steps. :func:`rk_solve_batch` runs those B solves in ONE
compiled call, spread over Numba's threads (``prange`` over trajectories), and
:func:`rk_reverse_batch` their discrete adjoints likewise. Each trajectory goes through
the very code of the single-trajectory kernels (:func:`diffsolve.kernels.cpu.ode.rk_solve`,
:func:`~diffsolve.kernels.cpu.ode.rk_reverse`, compiled once with ``f`` typed as a
first-class function), so a batched solve takes the steps, and gives the numbers, of the
solves one by one, bit for bit.

Why threads over trajectories rather than one vectorised step over the batch (what
``jax.vmap`` makes of a solve): every trajectory keeps its own step size, accepts and
rejects on its own and stops when it is done, so no trajectory pays for the steps of the
hardest one and no masked lanes are computed.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange
from numba.typed import List

from . import ode as _ode
from ._config import jit

__all__ = ["rk_reverse_batch", "rk_solve_batch"]

_COMPILED: dict = {}

# _DYNAMIC: the parallel loops hand trajectories out one at a time (Numba's chunk size 1,
# set around the calls: inside the kernels it would keep them from being cached), since
# their costs differ and, on a shared machine, a thread that loses its core must not hold
# back a static share of the batch


def _types():
    t = numba.types
    vec, mat, f64, i64 = t.float64[::1], t.float64[:, ::1], t.float64, t.int64
    ftype = t.FunctionType(vec(f64, vec, vec))
    vtype = t.FunctionType(t.UniTuple(vec, 2)(f64, vec, vec, vec))
    return t, vec, mat, f64, i64, ftype, vtype


def _solve_batch(f, Y0, t_out, params, A, c, e, P, order, error_order, rtol, atol, pi,
                 first_step, max_steps, want_stiff):  # pragma: no cover - compiled
    nb = Y0.shape[0]
    no_steps = np.empty(0, dtype=np.float64)
    # the first solve runs alone: its result fills the list, which then only has its
    # entries replaced (a typed list may not grow from several threads at once)
    first = _solve_one_ptr(f, Y0[0].copy(), t_out, params, A, c, e, P, order, error_order,
                           rtol, atol, pi, first_step, max_steps, no_steps, want_stiff)
    results = List()
    for _ in range(nb):
        results.append(first)
    raised = np.zeros(nb, dtype=np.bool_)
    for b in prange(1, nb):
        # params copied per trajectory: every f call passes it on, and reference counts
        # of one array updated from several threads would bounce its cache line between
        # cores
        r, ok = _solve_guarded(first, f, Y0[b].copy(), t_out, params.copy(), A, c, e, P,
                               order, error_order, rtol, atol, pi, first_step, max_steps,
                               no_steps, want_stiff)
        results[b] = r
        raised[b] = not ok
    return _gather(results, t_out.shape[0], Y0.shape[1]), raised


@jit()
def _solve_guarded(first, f, y0, t_out, params, A, c, e, P, order, error_order, rtol, atol,
                   pi, first_step, max_steps, no_steps, want_stiff):  # pragma: no cover
    """``(the solve, True)``, or ``(first, False)`` when ``f`` raised: an exception raised
    in a worker thread does not reach the caller, which raises it again by solving that
    trajectory alone. (A ``try`` inside the ``prange`` body would make the loop serial.)"""
    try:
        return _solve_one_ptr(f, y0, t_out, params, A, c, e, P, order, error_order, rtol,
                              atol, pi, first_step, max_steps, no_steps, want_stiff), True
    except Exception:
        return first, False


@jit()
def _gather(results, T, n):  # pragma: no cover - compiled
    """The per-trajectory results as flat arrays (boxing B tuples of ten arrays back to
    Python cost more than a batch of short solves). Serial: in the parallel kernel each
    of these copies would become a parallel region of its own."""
    nb = len(results)
    off = np.zeros(nb + 1, dtype=np.int64)
    for b in range(nb):
        off[b + 1] = off[b] + results[b][1].shape[0]
    total = off[nb]
    ys = np.empty((nb, T, n))
    ts = np.empty(total)
    states = np.empty((total, n))
    errs = np.empty(total - nb)
    stiff = np.empty(total - nb)
    out_step = np.empty((nb, T), dtype=np.int64)
    out_theta = np.empty((nb, T))
    stats = np.empty((nb, 4), dtype=np.int64)
    status = np.empty(nb, dtype=np.int64)
    t_fail = np.empty(nb)
    for b in range(nb):
        r = results[b]
        lo = off[b]
        hi = off[b + 1]
        ys[b] = r[0]
        ts[lo:hi] = r[1]
        states[lo:hi] = r[2]
        errs[lo - b:hi - b - 1] = r[3]
        stiff[lo - b:hi - b - 1] = r[4]
        out_step[b] = r[5]
        out_theta[b] = r[6]
        stats[b] = r[7]
        status[b] = r[8]
        t_fail[b] = r[9]
    return ys, ts, states, errs, stiff, out_step, out_theta, stats, status, t_fail, off


def rk_solve_batch(f, Y0, t_out, params, A, c, e, P, order, error_order, rtol, atol, pi,
                   first_step, max_steps, want_stiff):
    """:func:`~diffsolve.kernels.cpu.ode.rk_solve` for every row of ``Y0`` (B, n), each
    with its own steps, in ONE compiled call, parallel over the rows.

    ``f`` must be an ``@njit`` function with the float64 signature ``f(float64,
    float64[::1], float64[::1]) -> float64[::1]`` (else ``TypeError``: the caller then
    solves the rows one by one). The integrator is compiled once for every such ``f`` and
    cached on disk; Numba's thread count (``numba.set_num_threads``) sets the parallelism.
    Returns a list of :func:`~diffsolve.kernels.cpu.ode.rk_solve` result tuples, one per
    row, equal to solving the rows one by one (their arrays are views of a few arrays
    shared by the batch).
    """
    if _ode.fits_inplace(f):
        fn = _COMPILED.get("solve_inplace")
        if fn is None:
            one = _ode._compiled("pointer_inplace")
            guarded = jit()(_ode.inplace_twin(_solve_guarded, "_solve_guarded_inplace",
                                              _solve_one_ptr=one))
            t, vec, mat, f64, i64, _, _ = _types()
            ftype = t.FunctionType(t.none(f64, vec, vec, vec))
            sig = (ftype, mat, vec, vec, mat, vec, vec, mat, i64, i64, f64, f64, t.boolean,
                   f64, i64, t.boolean)
            fn = jit(parallel=True, signature=sig)(_ode.inplace_twin(
                _solve_batch, "_solve_batch_inplace", _solve_one_ptr=one,
                _solve_guarded=guarded))
            _COMPILED["solve_inplace"] = fn
    elif not _ode.fits_pointer(f):
        raise TypeError("rk_solve_batch: f must compile as f(float64, float64[::1], "
                        "float64[::1]) -> float64[::1] (a C-contiguous result), or in "
                        "place as f(float64, float64[::1], float64[::1], float64[::1])")
    else:
        fn = _COMPILED.get("solve")
    if fn is None:
        global _solve_one_ptr
        _solve_one_ptr = _ode._compiled("pointer")
        t, vec, mat, f64, i64, ftype, _ = _types()
        sig = (ftype, mat, vec, vec, mat, vec, vec, mat, i64, i64, f64, f64, t.boolean, f64,
               i64, t.boolean)
        fn = jit(parallel=True, signature=sig)(_solve_batch)
        _COMPILED["solve"] = fn
    with numba.parallel_chunksize(1):  # see _DYNAMIC
        flat, raised = fn(f, Y0, t_out, params, A, c, e, P, order, error_order, rtol, atol,
                          pi, first_step, max_steps, want_stiff)
    if raised.any():  # f raised for some trajectory: the first of them again, to raise it
        b = int(np.flatnonzero(raised)[0])
        _ode.rk_solve(f, Y0[b].copy(), t_out, params, A, c, e, P, order, error_order, rtol,
                      atol, pi, first_step, max_steps, np.empty(0), want_stiff)
        raise RuntimeError(f"rk_solve_batch: f raised an exception on trajectory {b} in "
                           "the parallel loop but not when solving it again alone")
    ys, ts, states, errs, stiff, out_step, out_theta, stats, status, t_fail, off = flat
    o = off.tolist()
    codes = status.tolist()
    fails = t_fail.tolist()
    return [(ys[b], ts[o[b]:o[b + 1]], states[o[b]:o[b + 1]], errs[o[b] - b:o[b + 1] - b - 1],
             stiff[o[b] - b:o[b + 1] - b - 1], out_step[b], out_theta[b], stats[b], codes[b],
             fails[b]) for b in range(len(codes))]


def _reverse_batch(f, vjp, ts_all, states_all, offsets, ys, ys_bar, out_step, out_theta,
                   n_reached, t_out, params, A, c, e, P, rtol, atol, rE_bar, rS_bar,
                   want_t):  # pragma: no cover - compiled
    nb = ys_bar.shape[0]
    n = ys_bar.shape[2]
    T = ys_bar.shape[1]
    through = np.zeros((nb, n))
    p_bar = np.zeros((nb, params.shape[0]))
    t_bar = np.zeros((nb, T))
    raised = np.zeros(nb, dtype=np.bool_)
    for b in prange(nb):
        raised[b] = not _reverse_guarded(f, vjp, ts_all, states_all, offsets, ys, ys_bar,
                                         out_step, out_theta, n_reached, t_out, params, A,
                                         c, e, P, rtol, atol, rE_bar, rS_bar, want_t, b,
                                         through, p_bar, t_bar)
    return through, p_bar, t_bar, raised


@jit()
def _reverse_guarded(f, vjp, ts_all, states_all, offsets, ys, ys_bar, out_step, out_theta,
                     n_reached, t_out, params, A, c, e, P, rtol, atol, rE_bar, rS_bar,
                     want_t, b, through, p_bar, t_bar):  # pragma: no cover - compiled
    """:func:`_reverse_one`; False when ``f`` or ``vjp`` raised (see _solve_guarded)."""
    try:
        _reverse_one(f, vjp, ts_all, states_all, offsets, ys, ys_bar, out_step, out_theta,
                     n_reached, t_out, params, A, c, e, P, rtol, atol, rE_bar, rS_bar,
                     want_t, b, through, p_bar, t_bar)
        return True
    except Exception:
        return False


@jit()
def _reverse_one(f, vjp, ts_all, states_all, offsets, ys, ys_bar, out_step, out_theta,
                 n_reached, t_out, params, A, c, e, P, rtol, atol, rE_bar, rS_bar, want_t,
                 b, through, p_bar, t_bar):  # pragma: no cover - compiled
    """Trajectory ``b`` of :func:`_reverse_batch`: its rows of ``through``, ``p_bar``,
    ``t_bar``."""
    n = ys_bar.shape[2]
    lo = offsets[b]
    hi = offsets[b + 1]
    nr = n_reached[b]
    p_own = params.copy()  # as in _solve_batch: no reference count shared by threads
    a, pb = _reverse_ptr(f, vjp, ts_all[lo:hi], states_all[lo:hi], ys_bar[b, :nr],
                         out_step[b, :nr], out_theta[b, :nr], p_own, A, c, e, P, rtol,
                         atol, rE_bar, rS_bar)
    through[b] = a
    p_bar[b] = pb
    if not want_t:
        return
    # t̄_q = ȳ_q · f(t_q, y_q) (q ≥ 1) and t̄_0 = −a(t_0) · f(t_0, y_0), as
    # diffsolve.ode._adjoint.t_eval_cotangent computes them from Python
    for q in range(1, nr):
        if t_out[q] == t_out[0]:
            continue
        fq = f(t_out[q], ys[b, q], p_own)
        acc = 0.0
        for i in range(n):
            acc += ys_bar[b, q, i] * fq[i]
        t_bar[b, q] = acc
    if nr == 1:  # no step taken: nothing flowed back to y0
        return
    f0 = f(t_out[0], states_all[lo], p_own)
    acc = 0.0
    for i in range(n):
        acc += a[i] * f0[i]
    t_bar[b, 0] = -acc if math.isfinite(acc) else math.nan


def rk_reverse_batch(f, vjp, ts, states, ys, ys_bar, out_step, out_theta, n_reached, t_out,
                     params, A, c, e, P, rtol, atol, rE_bar, rS_bar, want_t):
    """The discrete adjoints of :func:`rk_solve_batch`'s solves in ONE compiled call,
    parallel over the trajectories (float64).

    ``f``, ``vjp`` as :func:`~diffsolve.kernels.cpu.ode.rk_reverse` takes them (``@njit``,
    float64 signatures). Per trajectory ``b``: ``ts[b]`` (N_b + 1,) and ``states[b]``
    (N_b + 1, n) as the forward returned them (sequences of arrays), ``ys[b]`` (T, n) its
    outputs, ``ys_bar[b]`` (T, n) their cotangents, ``out_step[b]``/``out_theta[b]`` (T,)
    and ``n_reached[b]`` the outputs computed (only ``ys_bar[b, :n_reached[b]]`` is read).
    ``rE_bar``/``rS_bar``: the cotangents of the global regularisers. ``want_t``: also
    the cotangent of ``t_out`` (one ``f`` call per output).

    Returns ``(through (B, n), p_bar (B, n_p), t_bar (B, T))``: per trajectory, the
    cotangent reaching ``y0`` through the steps, that of ``params``, and that of the
    output times (zeros unless ``want_t``), each equal to what
    :func:`~diffsolve.kernels.cpu.ode.rk_reverse` gives for that trajectory alone.
    """
    fn = _COMPILED.get("reverse")
    if fn is None:
        global _reverse_ptr
        _reverse_ptr = _ode._compiled_reverse()
        t, vec, mat, f64, _, ftype, vtype = _types()
        ivec, imat = t.int64[::1], t.int64[:, ::1]
        cube = t.float64[:, :, ::1]
        sig = (ftype, vtype, vec, mat, ivec, cube, cube, imat, mat, ivec, vec, vec, mat, vec,
               vec, mat, f64, f64, f64, f64, t.boolean)
        fn = jit(parallel=True, signature=sig)(_reverse_batch)
        _COMPILED["reverse"] = fn
    lengths = np.fromiter((x.shape[0] for x in ts), dtype=np.int64, count=len(ts))
    offsets = np.zeros(len(ts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ys_bar = np.ascontiguousarray(ys_bar)
    out_step = np.ascontiguousarray(out_step, dtype=np.int64)
    out_theta = np.ascontiguousarray(out_theta, dtype=np.float64)
    n_reached = np.ascontiguousarray(n_reached, dtype=np.int64)
    rtol, atol, rE_bar, rS_bar = float(rtol), float(atol), float(rE_bar), float(rS_bar)
    with numba.parallel_chunksize(1):  # see _DYNAMIC
        through, p_bar, t_bar, raised = fn(
            f, vjp, np.concatenate(ts), np.ascontiguousarray(np.concatenate(states)),
            offsets, np.ascontiguousarray(ys), ys_bar, out_step, out_theta, n_reached, t_out,
            params, A, c, e, P, rtol, atol, rE_bar, rS_bar, bool(want_t))
    if raised.any():  # as in rk_solve_batch: raise it again from one trajectory alone
        b = int(np.flatnonzero(raised)[0])
        nr = int(n_reached[b])
        _ode.rk_reverse(f, vjp, ts[b], np.ascontiguousarray(states[b]),
                        np.ascontiguousarray(ys_bar[b, :nr]), out_step[b, :nr].copy(),
                        out_theta[b, :nr].copy(), params, A, c, e, P, rtol, atol, rE_bar,
                        rS_bar)
        if bool(want_t):  # the t_eval cotangent's own calls of f
            for q in range(nr):
                f(float(t_out[q]), np.ascontiguousarray(ys[b, q]), params)
        raise RuntimeError(f"rk_reverse_batch: f or vjp raised an exception on trajectory "
                           f"{b} in the parallel loop but not when run again alone")
    return through, p_bar, t_bar


# the single-trajectory builds the batch loops call: globals of this module, set before a
# batch kernel is compiled (Numba resolves them then, and a cached build has them linked in)
_solve_one_ptr = None
_reverse_ptr = None
