"""``diffsolve.ot.sinkhorn``: log-domain Sinkhorn with fused kernels, batching, ε-scaling,
acceleration and implicit gradients.

Iteration (log domain; Peyré & Cuturi, "Computational Optimal
Transport", 2019, eqs. (4.43)-(4.44))::

    g_j <- eps log b_j - eps LSE_i((f_i - C_ij) / eps)
    f_i <- eps log a_i - eps LSE_j((g_j - C_ij) / eps)

The soft-minima come from the ``ot.lse_cols`` / ``ot.lse_rows`` kernels (Numba on NumPy
inputs, CUDA on CuPy inputs), which stream ``C`` once per half-step without forming
``exp(-C/eps)``; other namespaces (array_api_strict) use ``diffsolve._backend.logsumexp``.
``kernel="absorbed"`` (the NumPy default) evaluates the same soft-minima through a
stabilised kernel rebuilt on absorption and BLAS products (:class:`_AbsorbedOps`).
"""

from __future__ import annotations

import inspect
import itertools
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import _backend as B
from .. import _validate as V
from .._autodiff import custom_vjp
from .._status import Status, report
from .._tolerance import default_rtol
from .._typing import Array, ArrayLike, Callback
from ._errors import (
    _broadcast_shapes,
    check_arrays,
    check_eps,
    check_measure,
    check_ot_inputs,
    marginal_error,
)
from ._implicit import entropic_potentials_vjp, normalise_gauge
from ._options import RTOL, legacy_options
from ._result import OTResult, OTState

__all__ = ["SinkhornSettings", "sinkhorn"]

WHERE = "diffsolve.ot.sinkhorn"
ACCELERATIONS = (None, "momentum", "anderson")
GRADIENTS = ("implicit", "envelope")

# ε-scaling: intermediate stages stop at this L1 marginal error relative to the total mass
# (their plans are thrown away; only the potentials are carried to the next ε)
_STAGE_RTOL = 1e-2
# momentum: plain iterations (in checks) before the contraction rate is estimated, and the
# largest over-relaxation used (ω -> 2 is the stability limit, Lehmann et al. 2021)
_MOMENTUM_WARMUP_CHECKS = 3
_OMEGA_MAX = 1.9
# Anderson: history length and Tikhonov regularisation of its least-squares problem
_ANDERSON_DEPTH = 5
_ANDERSON_REG = 1e-10


# ---------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SinkhornSettings:
    """The options of one :func:`sinkhorn` call, validated once; the forward and backward
    rules read this object (defaults live in the public signature only).

    Attributes
    ----------
    eps, rtol, atol, maxiter, error_measure, check_every, eps_scaling,
    acceleration, gradient, kernel, throw, callback
        The arguments of the same names of :func:`diffsolve.ot.sinkhorn`, validated (a frozen
        dataclass: read it, do not build it).

    See Also
    --------
    diffsolve.ot.sinkhorn : The function whose options these are.

    Examples
    --------
    >>> import dataclasses
    >>> import diffsolve as ds
    >>> "rtol" in {f.name for f in dataclasses.fields(ds.ot.SinkhornSettings)}
    True
    """

    eps: float
    rtol: float | None  # None: dtype-aware (_tolerance.default_rtol), set by the solve
    atol: float
    maxiter: int
    error_measure: str
    check_every: int
    eps_scaling: Any
    acceleration: str | None
    gradient: str
    kernel: str
    throw: bool
    callback: Any

    @property
    def fixed_budget(self) -> bool:
        """``rtol = atol = 0``: run exactly ``maxiter`` iterations."""
        return self.rtol == 0 and self.atol == 0


def _settings(eps, *, rtol, atol, maxiter, error_measure, check_every, eps_scaling,
              acceleration, gradient, kernel, throw, callback, deprecated, quiet=False):
    o = legacy_options(WHERE, sinkhorn.fwd, deprecated, {"rtol": rtol, "atol": atol,
                                                         "maxiter": maxiter},
                       tol_is="atol", quiet=quiet)
    rtol, atol = V.tolerances(WHERE, 0.0 if o["rtol"] is None else o["rtol"], o["atol"])
    rtol = None if o["rtol"] is None else rtol  # the default: chosen from the dtype
    if isinstance(eps_scaling, Sequence) and not isinstance(eps_scaling, str):
        eps_scaling = tuple(eps_scaling)
    elif eps_scaling is False:
        eps_scaling = None
    elif eps_scaling is not None:
        eps_scaling = V.positive_int(WHERE, "eps_scaling", eps_scaling)
    return SinkhornSettings(
        eps=check_eps(WHERE, eps), rtol=rtol, atol=atol,
        maxiter=V.positive_int(WHERE, "maxiter", o["maxiter"]),
        error_measure=check_measure(WHERE, error_measure),
        check_every=V.positive_int(WHERE, "check_every", check_every),
        eps_scaling=eps_scaling,
        acceleration=V.choice(WHERE, "acceleration", acceleration, ACCELERATIONS),
        gradient=V.choice(WHERE, "gradient", gradient, GRADIENTS),
        kernel=V.choice(WHERE, "kernel", kernel, ("auto", "lse", "absorbed")),
        throw=V.boolean(WHERE, "throw", throw),
        callback=V.callback(WHERE, callback),
    )


def _schedule(eps_scaling, eps, cost_scale):
    """The list of ε values to run, ending with ``eps``."""
    if eps_scaling is None or eps_scaling is False:
        return [eps]
    if isinstance(eps_scaling, numbers.Integral) and not isinstance(eps_scaling, bool):
        k = int(eps_scaling)
        if k < 1:
            raise ValueError(f"{WHERE}: eps_scaling must be a number of stages >= 1, a "
                             f"decreasing sequence of eps values, or None; got {eps_scaling!r}")
        start = cost_scale
        if k == 1 or start <= eps:
            return [eps]
        ratio = (eps / start) ** (1.0 / (k - 1))
        return [start * ratio**i for i in range(k - 1)] + [eps]
    if isinstance(eps_scaling, Sequence) and not isinstance(eps_scaling, str):
        values = [float(v) for v in eps_scaling]
        if not values or any(not math.isfinite(v) or v <= 0 for v in values) or any(
                v2 > v1 for v1, v2 in itertools.pairwise(values)):
            raise ValueError(f"{WHERE}: an eps_scaling schedule must be a non-increasing "
                             f"sequence of positive numbers, got {eps_scaling!r}")
        values = [v for v in values if v > eps]
        return [*values, eps]
    raise TypeError(f"{WHERE}: eps_scaling must be None, a number of stages (int) or a "
                    f"decreasing sequence of eps values, got {type(eps_scaling).__name__}")


# ---------------------------------------------------------------------------------------
# the soft-minimum half-steps (kernels or array API)
# ---------------------------------------------------------------------------------------
class _Ops:
    """``lse_rows(g)`` / ``lse_cols(f)``: eps * LSE over the rows / columns of (g - C) / eps."""

    def __init__(self, xp, C):
        self.xp = xp
        self.k_rows = B.get_kernel(xp, "ot.lse_rows")
        self.k_cols = B.get_kernel(xp, "ot.lse_cols")
        self.C = B.contiguous(xp, C) if self.k_rows is not None else C

    def rows(self, g, eps, active, f=None):
        xp = self.xp
        if self.k_rows is not None:
            out = xp.empty(self.C.shape[:2], dtype=self.C.dtype, device=B.device(self.C))
            return self.k_rows(self.C, B.contiguous(xp, g), eps, xp.astype(active, xp.uint8),
                               out)
        return eps * B.logsumexp((g[:, None, :] - self.C) / eps, axis=-1, xp=xp)

    def cols(self, f, eps, active, g=None):
        xp = self.xp
        if self.k_cols is not None:
            shape = (self.C.shape[0], self.C.shape[2])
            out = xp.empty(shape, dtype=self.C.dtype, device=B.device(self.C))
            return self.k_cols(self.C, B.contiguous(xp, f), eps, xp.astype(active, xp.uint8),
                               out)
        return eps * B.logsumexp((f[:, :, None] - self.C) / eps, axis=-2, xp=xp)


class _AbsorbedOps(_Ops):
    """The same soft-minima through a stabilised kernel and matrix-vector products.

    With reference potentials ``(fh, gh)`` and ``K_ij = exp((fh_i + gh_j - C_ij)/eps)`` (the
    plan at the reference, entries in [0, 1]),

        eps LSE_j((g_j - C_ij)/eps) = eps log (K v)_i - fh_i,    v = exp((g - gh)/eps),

    and likewise for columns with ``u = exp((f - fh)/eps)``: two BLAS products per iteration
    instead of ``2 n m`` exponentials. Whenever a potential has moved more than
    ``tau * eps`` from its reference the kernel is rebuilt at the current potentials
    (absorption; Schmitzer, "Stabilized sparse scaling algorithms for entropy regularized
    transport problems", SIAM J. Sci. Comput. 2019, section 3.1). So ``u, v`` stay within
    ``e^{+-tau}`` and every row/column sum of ``K`` with positive mass stays far from
    underflow: entries that underflow at the reference are below ``1e-308`` of a row sum
    of order ``a_i / m``, and can grow by at most ``e^tau`` before the next absorption.
    The potentials themselves are log-domain values, so any ``eps`` is safe.
    """

    K: Any  # the stabilised kernel; None until built and after a failed absorption

    def __init__(self, xp, C, a, b):
        super().__init__(xp, C)
        self.pos_a, self.pos_b = a > 0, b > 0
        # all weights positive (the usual case): no masking of -inf potentials needed
        self.dense = bool(xp.all(self.pos_a)) and bool(xp.all(self.pos_b))
        self.tau = 50.0 if C.dtype == xp.float64 else 10.0
        self.fh = self.gh = self.K = None
        self.eps = None
        self.n_absorb = 0

    def _absorb(self, f, g, eps):
        self.fh, self.gh, self.eps = f, g, eps
        # NumPy: rebuilt in place in one buffer (no four (n, m) temporaries per rebuild)
        self.K = _plan(f, g, self.C, eps, self.xp, out=self.K)
        self.n_absorb += 1
        # A kernel entry overflows when a potential was pushed too far by a product that
        # lost its subnormal terms (float32 cost/eps near 100: BLAS code paths that flush
        # subnormals differ with memory alignment). Multiplying by inf would give inf * 0
        # = NaN; such a half-step takes the exact log-sum-exp instead (see _usable).
        self.finite = bool(self.xp.all(self.xp.isfinite(self.K)))

    finite = True

    def _usable(self, scaling) -> bool:
        return scaling is not None and self.finite and \
            bool(self.xp.all(self.xp.isfinite(scaling)))

    def _scaling(self, x, ref, pos, eps):
        """``exp((x - ref)/eps)`` (0 at zero weights), or None if ``x`` moved too far."""
        xp = self.xp
        if self.dense:
            d = x - ref
        else:  # zero-weight entries are -inf in both: use 0 - 0 there, not inf - inf
            zero = xp.zeros_like(x)
            d = xp.where(pos, x, zero) - xp.where(pos, ref, zero)
        if bool(xp.max(xp.abs(d)) > self.tau * eps):
            return None
        e = xp.exp(d / eps)
        return e if self.dense else xp.where(pos, e, xp.zeros_like(e))

    def _log(self, s, ref, pos, eps):
        xp = self.xp
        if self.dense:
            return eps * xp.log(s) - ref
        ok = pos & (s > 0)
        return xp.where(ok, eps * xp.log(xp.where(ok, s, xp.ones_like(s))) - xp.where(
            ok, ref, xp.zeros_like(ref)), xp.zeros_like(s))

    def _underflow(self, s, pos):
        xp = self.xp
        return bool(xp.any(s == 0)) if self.dense else bool(xp.any(pos & (s == 0)))

    # Only the argument that moved since the last half-step is tested against its
    # reference: rows() gets a new g (f is the one cols() just tested), and vice versa.
    def rows(self, g, eps, active, f=None):
        if f is None:
            return _Ops.rows(self, g, eps, active)
        if self.K is None or eps != self.eps:
            self._absorb(f, g, eps)
        v = self._scaling(g, self.gh, self.pos_b, eps)
        if v is None:
            self._absorb(f, g, eps)
            v = self._scaling(g, self.gh, self.pos_b, eps)
        if not self._usable(v):
            self.K = None  # rebuilt at the next half-step
            return _Ops.rows(self, g, eps, active)
        # K and v are finite (_usable): an "invalid" flag from the product is BLAS's own
        with B.finite_operands_product(self.xp):
            if self.K.shape[0] == 1:  # a 2-D product is one BLAS gemv; 3-D may not be
                s = (self.K[0, ...] @ v[0, ...])[None, ...]
            else:
                s = self.xp.matmul(self.K, v[..., None])[..., 0]
        if self._underflow(s, self.pos_a):  # a row of K underflowed entirely
            return _Ops.rows(self, g, eps, active)
        return self._log(s, self.fh, self.pos_a, eps)

    def cols(self, f, eps, active, g=None):
        if g is None:
            return _Ops.cols(self, f, eps, active)
        if self.K is None or eps != self.eps:
            self._absorb(f, g, eps)
        u = self._scaling(f, self.fh, self.pos_a, eps)
        if u is None:
            self._absorb(f, g, eps)
            u = self._scaling(f, self.fh, self.pos_a, eps)
        if not self._usable(u):
            self.K = None  # rebuilt at the next half-step
            return _Ops.cols(self, f, eps, active)
        with B.finite_operands_product(self.xp):  # u and K are finite (_usable)
            if self.K.shape[0] == 1:
                s = (u[0, ...] @ self.K[0, ...])[None, ...]
            else:
                s = self.xp.matmul(u[..., None, :], self.K)[..., 0, :]
        if self._underflow(s, self.pos_b):
            return _Ops.cols(self, f, eps, active)
        return self._log(s, self.gh, self.pos_b, eps)


def _safe_log(w, xp):
    pos = w > 0
    return xp.where(pos, xp.log(xp.where(pos, w, xp.ones_like(w))),
                    xp.full_like(w, -math.inf))


def _plan(f, g, C, eps, xp, out=None):
    """``exp((f_i + g_j - C_ij) / eps)``; on NumPy written into ``out`` (or one new array)
    by in-place steps in the same order, so the values are bit-identical to the
    expression but no ``(n, m)`` temporaries are allocated."""
    if not B.is_numpy(xp):
        return xp.exp((f[..., :, None] + g[..., None, :] - C) / eps)
    if out is None or out.shape != C.shape:
        out = xp.empty(C.shape, dtype=C.dtype)
    out[...] = f[..., :, None]
    out += g[..., None, :]
    out -= C
    out /= eps
    return xp.exp(out, out=out)


def _column_error(colsum, b, measure, xp):
    d = colsum - b
    if measure == "l2-pot":
        return xp.sqrt(xp.sum(d * d, axis=-1))
    return xp.sum(xp.abs(d), axis=-1)


def _regularised_cost(P, f, g, a, b, eps, xp):
    """``<C, P> + eps sum P (log P - 1) = sum_i f_i r_i + sum_j g_j c_j - eps sum P``
    (``log P = (f + g - C)/eps``), skipping zero-weight entries whose potential is -inf."""
    r, c = xp.sum(P, axis=-1), xp.sum(P, axis=-2)
    fr = xp.where(a > 0, f, xp.zeros_like(r)) * r
    gc = xp.where(b > 0, g, xp.zeros_like(c)) * c
    return xp.sum(fr, axis=-1) + xp.sum(gc, axis=-1) - eps * xp.sum(r, axis=-1)


# ---------------------------------------------------------------------------------------
# the iteration
# ---------------------------------------------------------------------------------------
def _state(total, f, g, err, eps, batch):
    """The callback's view of the iteration: arrays in the caller's batch shape."""
    if not batch:
        return OTState(n_iters=int(total), f=f[0, ...], g=g[0, ...], error=float(err[0]),
                       eps=eps)
    xp = B.array_namespace(f)
    return OTState(n_iters=int(total), f=xp.reshape(f, (*batch, f.shape[-1])),
                   g=xp.reshape(g, (*batch, g.shape[-1])), error=xp.reshape(err, batch),
                   eps=eps)


def _iterate(xp, a, b, C, schedule, tol, maxiter, measure, check_every, acceleration, f, g,
             callback=None, kernel="lse", fixed_budget=False, batch=()):
    """Run the schedule on flattened problems (Bt, n, m) with per-problem tolerances ``tol``
    (Bt,). Returns ``f, g, n_iters`` (xp int) and ``stopped`` (xp bool: the problems still
    running when the callback returned True)."""
    Bt, n, _m = C.shape
    dt = C.dtype
    dev = B.device(C)
    ops: _Ops
    if (kernel == "absorbed" and Bt == 1 and len(schedule) == 1 and acceleration is None
            and B.is_numpy(xp) and not (f is None and g is not None)):
        ops = _AbsorbedOps(xp, C, a, b)
        if ops.dense:
            stop_tol = -math.inf if fixed_budget else float(tol[0])
            return _iterate_absorbed_one(xp, ops, a, b, schedule[0], stop_tol, maxiter,
                                         measure, check_every, f, g, callback, batch)
    ops = _AbsorbedOps(xp, C, a, b) if kernel == "absorbed" else _Ops(xp, C)
    loga, logb = _safe_log(a, xp), _safe_log(b, xp)
    pos_a, pos_b = a > 0, b > 0
    mass = xp.sum(a, axis=-1)
    n_iters = xp.zeros((Bt,), dtype=xp.int64, device=dev)
    all_on = xp.ones((Bt,), dtype=xp.bool, device=dev)
    stopped = xp.zeros((Bt,), dtype=xp.bool, device=dev)
    halt = False
    if f is None and g is None:
        f = xp.zeros((Bt, n), dtype=dt, device=dev)
    total = 0
    for stage, eps in enumerate(schedule):
        last = stage == len(schedule) - 1
        if last:
            # a fixed budget (rtol = atol = 0) never stops on the error
            stage_tol = xp.full_like(mass, -math.inf) if fixed_budget else tol
        else:
            stage_tol = xp.maximum(_STAGE_RTOL * mass, tol)
        if f is None:  # warm start from g only
            f = eps * loga - ops.rows(g, eps, all_on)
        active = all_on
        omega = xp.ones((Bt, 1), dtype=dt, device=dev)
        prev_err = None
        err = xp.full((Bt,), math.inf, dtype=dt, device=dev)
        rate_checks = 0
        hist_f: list[Any]
        hist_t: list[Any]
        hist_f, hist_t = [], []
        it = 0
        while True:
            # without a g there is no state to check yet (cold start: the first iteration
            # computes g from f = 0, as POT's first iteration does)
            check = it % check_every == 0 and g is not None
            Lc = ops.cols(f, eps, active, g)
            if check:
                # the state (f, g) has exact row marginals (its last f-update was plain), so
                # the column error is the whole L1 error; it costs one exp per column
                colsum = xp.exp((g + Lc) / eps)
                err = xp.where(active, _column_error(colsum, b, measure, xp), err)
                bad = ~xp.isfinite(err)
                active = active & (err > stage_tol) & ~bad
                if callback is not None and callback(_state(total, f, g, err, eps, batch)):
                    # before the last stage no problem has reached the final eps: every
                    # finite one was stopped, not only those above the stage tolerance
                    stopped, halt = (active if last else ~bad), True
                    break
                if not bool(xp.any(active)):  # the one host sync per check
                    break
                if acceleration == "momentum":
                    omega, rate_checks = _update_omega(xp, omega, err, prev_err, rate_checks,
                                                       check_every, active)
                elif acceleration == "anderson" and prev_err is not None:
                    if bool(xp.any(active & (err > prev_err))):
                        hist_f, hist_t = [], []  # extrapolation went astray: restart
                prev_err = err
            if total >= maxiter:
                break
            pre_check = (it + 1) % check_every == 0
            col = active[:, None]
            g_new = eps * logb - Lc
            if acceleration == "momentum" and g is not None:
                g_new = _relax(g, g_new, omega, pos_b, xp)
            g = g_new if (g is None or Bt == 1) else xp.where(col, g_new, g)
            f_new = eps * loga - ops.rows(g, eps, active, f)
            if acceleration == "momentum" and not pre_check:
                f_new = _relax(f, f_new, omega, pos_a, xp)
            elif acceleration == "anderson" and not pre_check:
                f_new = _anderson(xp, f, f_new, hist_f, hist_t)
            # (one problem: the loop stops as soon as it is inactive, no masking needed)
            f = f_new if Bt == 1 else xp.where(col, f_new, f)
            n_iters = n_iters + xp.astype(active, xp.int64)
            it += 1
            total += 1
        if total >= maxiter or halt:
            break  # (in an intermediate stage: the final ε was never reached)
    return f, g, n_iters, stopped


def _relax(x, x_new, omega, pos, xp):
    """Over-relaxation ``x + omega (x_new - x)`` on the entries of positive weight; the
    potentials of zero weights are -inf in both, and ``-inf - -inf`` would be NaN."""
    zero = xp.zeros_like(x)
    step = xp.where(pos, x_new, zero) - xp.where(pos, x, zero)
    return xp.where(pos, x + omega * step, x_new)


def _iterate_absorbed_one(xp, ops, a, b, eps, tol, maxiter, measure, check_every, f, g,
                          callback, batch):
    """:func:`_iterate` for the common NumPy case, on 1-D arrays: one problem, all weights
    positive, one ε, no acceleration, ``kernel="absorbed"``.

    The same operations in the same order as the general loop with :class:`_AbsorbedOps`
    (bit-identical iterates, absorption points and iteration counts), without its
    per-iteration overhead: no batch masking, no wrapper dispatch, Python floats for the
    few scalars, ``out=`` buffers for the vectors, one BLAS product per half-step.
    """
    on = xp.ones((1,), dtype=xp.bool)
    C0 = ops.C[0, ...]
    thr = ops.tau * eps
    eloga, elogb = eps * xp.log(a[0, ...]), eps * xp.log(b[0, ...])
    if f is None:  # cold start (the caller routes a g-only warm start elsewhere)
        f = xp.zeros(eloga.shape, dtype=C0.dtype)
    else:
        f = f[0, ...]
    if g is not None:
        g = g[0, ...]
    du, dv = xp.empty_like(eloga), xp.empty_like(elogb)  # scaled differences, then u / v
    err = xp.full((1,), math.inf, dtype=C0.dtype)
    it = 0
    K = None
    stopped = False

    def absorb(f, g):
        # None when the kernel is not finite (potentials that left the range): that
        # half-step then takes the exact log-sum-exp instead of a product with inf
        # entries, whose inf * 0 would be NaN
        ops._absorb(f[None, :], g[None, :], eps)
        return ops.K[0, ...] if ops.finite else None

    def scaling(x, ref, out):
        # exp((x - ref)/eps), or None when x moved more than tau*eps from ref (max |d| >
        # thr, exactly as _AbsorbedOps._scaling, without the array-API wrappers)
        d = xp.subtract(x, ref, out=out)
        if d.max() > thr or -d.min() > thr:
            return None
        xp.divide(d, eps, out=d)
        return xp.exp(d, out=d)

    while True:
        check = it % check_every == 0 and g is not None
        # column half-step: Lc = eps LSE_i((f_i - C_ij)/eps)
        if g is None and C0.dtype != xp.float64:
            # float32: the fused kernel, which accumulates in float64 (a float32 first step
            # changes the iterates by more than their float32 rounding near the tolerance)
            Lc = ops.cols(f[None, :], eps, on)[0, ...]
        elif g is None:
            # first step of a cold start (or an f-only warm start): the kernel is built at
            # the reference gh_j = min_i (C_ij - f_i), where each column's largest entry is
            # exactly 1, so its column sums cannot underflow and Lc = eps log(sum_i K_ij)
            # - gh_j is the log-sum-exp shifted by its maximum. The same value as the fused
            # kernel to rounding, but no Numba parallel region, which on a loaded machine
            # waits for both cores (milliseconds, more than the whole solve at n = 500).
            gh = xp.min(C0 - f[:, None], axis=0)
            K = absorb(f, gh)
            if K is None:
                Lc = _Ops.cols(ops, f[None, :], eps, on)[0, ...]
            else:
                s = xp.sum(K, axis=0)
                Lc = xp.log(s, out=s)
                Lc *= eps
                Lc -= gh
        else:
            if K is None:
                K = absorb(f, g)
            u = None if K is None else scaling(f, ops.fh[0, ...], du)
            if u is None and K is not None:
                K = absorb(f, g)
                u = None if K is None else scaling(f, ops.fh[0, ...], du)
            s = None if K is None else u @ K
            if s is None or s.min() == 0:  # no finite kernel, or a column underflowed
                Lc = _Ops.cols(ops, f[None, :], eps, on)[0, ...]
            else:
                Lc = xp.log(s, out=s)
                Lc *= eps
                Lc -= ops.gh[0, ...]
        if check:
            colsum = xp.exp((g + Lc) / eps)
            err = _column_error(colsum[None, :], b, measure, xp)
            e = float(err[0])
            if callback is not None and callback(_state(it, f[None, :], g[None, :], err,
                                                        eps, batch)):
                stopped = e > tol and math.isfinite(e)
                break
            if not (e > tol and math.isfinite(e)):
                break
        if it >= maxiter:
            break
        g = xp.subtract(elogb, Lc, out=Lc)
        # row half-step: Lr = eps LSE_j((g_j - C_ij)/eps)
        if K is None:
            K = absorb(f, g)
        v = None if K is None else scaling(g, ops.gh[0, ...], dv)
        if v is None and K is not None:
            K = absorb(f, g)
            v = None if K is None else scaling(g, ops.gh[0, ...], dv)
        s = None if K is None else K @ v
        if s is None or s.min() == 0:  # no finite kernel, or a row underflowed
            Lr = _Ops.rows(ops, g[None, :], eps, on)[0, ...]
        else:
            Lr = xp.log(s, out=s)
            Lr *= eps
            Lr -= ops.fh[0, ...]
        f = xp.subtract(eloga, Lr, out=Lr)
        it += 1
    return (f[None, :], g[None, :], xp.full((1,), it, dtype=xp.int64),
            xp.full((1,), stopped, dtype=xp.bool))


def _update_omega(xp, omega, err, prev_err, rate_checks, check_every, active):
    """Adaptive over-relaxation ``x <- x + omega (T x - x)`` of both half-steps.

    Sinkhorn linearised at the solution is block Gauss-Seidel on a 2-cyclic system, so
    Young's SOR theory applies (Thibault et al. 2017; Lehmann, von Renesse, Sambale,
    Uschmajew 2021): with ``kappa`` the rate of plain Sinkhorn, relaxation ``omega`` has rate
    ``lam`` solving ``(lam + omega - 1)^2 = lam omega^2 kappa``, and the optimum is
    ``omega* = 2 / (1 + sqrt(1 - kappa))``. At every check the observed per-iteration rate
    ``lam`` (error ratio between checks) gives ``kappa = (lam + omega - 1)^2 / (lam omega^2)``
    and ``omega`` moves to ``omega*`` (capped at 1.9); when the error grows, ``omega - 1`` is
    halved instead (the safeguard)."""
    if prev_err is None:
        return omega, rate_checks + 1
    rate_checks += 1
    ratio = err / xp.where(prev_err > 0, prev_err, xp.ones_like(prev_err))
    grew = (ratio >= 1) & active
    if rate_checks <= _MOMENTUM_WARMUP_CHECKS:  # let the transient of plain Sinkhorn pass
        return omega, rate_checks
    w = omega[:, 0]
    lam = xp.clip(ratio, 1e-12, 1.0) ** (1.0 / check_every)
    kappa = xp.clip((lam + w - 1) ** 2 / (lam * w * w), 0.0, 1.0)
    w_opt = xp.clip(2 / (1 + xp.sqrt(1 - kappa)), 1.0, _OMEGA_MAX)
    # only ever raise omega from the estimate (a fast-converging problem gives a noisy
    # kappa); lowering is the safeguard's job
    w_new = xp.where(grew, 1 + (w - 1) / 2, xp.maximum(w, w_opt))
    return xp.where(active, w_new, w)[:, None], rate_checks


def _anderson(xp, f, tf, hist_f, hist_t):
    """Anderson mixing of the fixed-point map ``f -> T(f)`` (one full Sinkhorn iteration;
    Walker & Ni 2011, type II, regularised): keep the last ``_ANDERSON_DEPTH`` pairs,
    minimise ``||sum_i alpha_i (T(f_i) - f_i)||`` with ``sum alpha = 1`` per problem."""
    # potentials of zero-weight points are -inf: keep them out of the least squares
    fin = xp.isfinite(tf)
    zero = xp.zeros_like(tf)
    hist_f.append(xp.where(fin, f, zero))
    hist_t.append(xp.where(fin, tf, zero))
    if len(hist_f) > _ANDERSON_DEPTH:
        del hist_f[0], hist_t[0]
    k = len(hist_f)
    if k < 2:
        return tf
    Fs = xp.stack(hist_f, axis=1)  # (B, k, n)
    Ts = xp.stack(hist_t, axis=1)
    R = Ts - Fs
    # the map commutes with f -> f + c, so the residual's mean carries no information
    R = R - xp.mean(R, axis=-1, keepdims=True)
    G = xp.matmul(R, xp.matrix_transpose(R))  # (B, k, k)
    scale = xp.max(xp.abs(G), axis=(-2, -1), keepdims=True)
    eye = xp.eye(k, dtype=G.dtype, device=B.device(G))
    G = G + (_ANDERSON_REG * scale + xp.finfo(G.dtype).smallest_normal) * eye
    ones = xp.ones((*G.shape[:-1], 1), dtype=G.dtype, device=B.device(G))
    z = xp.linalg.solve(G, ones)[..., 0]
    alpha = z / xp.sum(z, axis=-1, keepdims=True)
    mixed = xp.sum(alpha[..., None] * Ts, axis=1)
    ok = xp.all(xp.isfinite(alpha), axis=-1, keepdims=True)
    return xp.where(fin & ok, mixed, tf)


# ---------------------------------------------------------------------------------------
# forward and backward rules
# ---------------------------------------------------------------------------------------
def _sinkhorn_shapes(a, b, C, eps, **kwargs):
    batch = _broadcast_shapes(tuple(a.shape)[:-1], tuple(b.shape)[:-1], tuple(C.shape)[:-2])
    n, m = int(a.shape[-1]), int(b.shape[-1])
    dtype = B.promote_real_floating(a.dtype, b.dtype, C.dtype)
    return {
        "plan": ((*batch, n, m), dtype),
        "f": ((*batch, n), dtype),
        "g": ((*batch, m), dtype),
        "cost": (batch, dtype),
        "n_iters": (batch, "int64"),
        "converged": (batch, "bool"),
        "error": (batch, dtype),
        "status": (batch, "int64"),
        "tolerance": (batch, dtype),
    }


def _unbroadcast(x_bar, shape, xp):
    """Sum a cotangent of the broadcast argument back to the argument's own shape."""
    shape = tuple(int(s) for s in shape)
    extra = x_bar.ndim - len(shape)
    if extra:
        x_bar = xp.sum(x_bar, axis=tuple(range(extra)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and x_bar.shape[i] != 1)
    if axes:
        x_bar = xp.sum(x_bar, axis=axes, keepdims=True)
    return x_bar


def _call_settings(ctx) -> SinkhornSettings:
    """The settings of the call being differentiated: saved by the forward rule, or (the
    JAX adapter keeps arrays only) re-read from the call without repeating its warnings."""
    if ctx.residuals is not None:
        return ctx.residuals[3]
    kw = dict(ctx.kwargs)
    eps = ctx.args[3] if len(ctx.args) > 3 else kw.pop("eps")
    defaults = {k: p.default for k, p in sinkhorn.signature.parameters.items()
                if p.default is not inspect.Parameter.empty}
    known = {k: kw.pop(k, v) for k, v in defaults.items() if k not in ("f0", "g0")}
    kw.pop("f0", None), kw.pop("g0", None)
    return _settings(eps, **known, deprecated=kw, quiet=True)


def _sinkhorn_bwd(ctx, cot):
    a0, b0, C0 = ctx.args[:3]
    xp = B.array_namespace(a0, b0, C0, where=WHERE)
    s = _call_settings(ctx)
    if ctx.residuals is not None:
        a, b, C = ctx.residuals[:3]
    else:
        a, b, C, _ = check_ot_inputs(WHERE, a0, b0, C0, xp)
    res = ctx.result
    dt = res.plan.dtype
    cot_plan, cot_f, cot_g = cot["plan"], cot["f"], cot["g"]
    if s.gradient == "envelope":
        if any(bool(xp.any(c != 0)) for c in (cot_plan, cot_f, cot_g)):
            raise ValueError(
                f"{WHERE}: gradient='envelope' differentiates the cost only, but the "
                "plan/f/g received a nonzero cotangent; use gradient='implicit' to "
                "differentiate those")
        cot_plan = cot_f = cot_g = None
    a_bar, b_bar, C_bar = entropic_potentials_vjp(
        a, b, C, s.eps, res.f, res.g, res.plan, cot_plan, cot_f, cot_g,
        xp.astype(cot["cost"], dt, copy=False), xp, where=WHERE)
    grads = tuple(xp.astype(_unbroadcast(g_, x.shape, xp), dt, copy=False)
                  for g_, x in ((a_bar, a0), (b_bar, b0), (C_bar, C0)))
    return grads + (None,) * (len(ctx.args) - 3)


@custom_vjp(_sinkhorn_bwd, _sinkhorn_shapes, OTResult, public_name=WHERE)
def sinkhorn(a: Array, b: Array, C: Array, eps: ArrayLike, *, rtol: float | None = None,
             atol: float = 0.0, maxiter: int = 10_000, error_measure: str = "l1",
             check_every: int = 10, eps_scaling: int | Sequence[float] | None = None,
             acceleration: str | None = None, f0: Array | None = None,
             g0: Array | None = None, gradient: str = "implicit", throw: bool = False,
             callback: Callback[OTState] | None = None, kernel: str = "auto",
             **deprecated: Any) -> tuple[OTResult, Any]:
    """Entropic optimal transport by log-domain Sinkhorn, differentiable in ``a``, ``b``, ``C``.

    Solves ``min_P <C, P> + eps * sum_ij P_ij (log P_ij - 1)`` subject to ``P 1 = a`` and
    ``P^T 1 = b``, for one problem or a batch (leading dimensions), stable for any
    ``eps > 0``: all work is done on the potentials ``f, g`` with
    ``P_ij = exp((f_i + g_j - C_ij) / eps)``.

    Parameters
    ----------
    a : array, shape (..., n)
        Source weights, nonnegative, finite. float32 and float64 are kept, integer arrays
        promote to float64; float16, bool, complex, lists and size-0 arrays are refused.
    b : array, shape (..., m)
        Target weights, same total mass as ``a`` (relative precision 1e-6).
    C : array, shape (..., n, m)
        Finite cost matrix. Batch dimensions of ``a``, ``b``, ``C`` broadcast.
    eps : float > 0
        Entropic regularisation, in cost units. Normalise ``C`` (e.g. ``C / C.max()``) and
        take ``eps`` between 1e-3 and 1e-1; smaller ``eps`` is closer to unregularised OT but
        needs more iterations (use ``eps_scaling`` / ``acceleration``).
    rtol, atol : float >= 0
        Stop a problem when its marginal error (``error_measure``) is
        ``<= atol + rtol * sum(a)`` (``rtol`` is relative to the total mass). The default
        ``rtol=None`` depends on the dtype the solve runs in: 1e-9 in float64 (for unit
        mass an absolute 1e-9) and ``64 eps`` = 7.6e-6 in float32, whose marginal error
        stalls at a few ``eps`` (a float32 solve has converged when its error is within a
        small multiple of the rounding of its own marginals). The reported ``tolerance``
        is the one the iteration stopped at. An explicit ``rtol`` is used as given.
        ``rtol = atol = 0`` runs exactly ``maxiter`` iterations (a fixed budget: status
        ``MAX_ITERATIONS``, no warning). Replaces ``tol=`` (deprecated: ``tol=x`` is
        ``atol=x, rtol=0``).
    maxiter : int
        Iteration budget (one iteration = one column and one row update), shared by all
        ε-scaling stages. Replaces ``max_iter=`` (deprecated).
    error_measure : {"l1", "l2-pot"}
        ``"l1"``: ``||P 1 - a||_1 + ||P^T 1 - b||_1``; ``"l2-pot"``: ``||P^T 1 - b||_2``,
        POT's stopping criterion, for comparisons.
    check_every : int
        Iterations between error checks (each check reads one flag from the GPU; it costs
        no extra pass over ``C`` on any backend).
    eps_scaling : None, int or sequence of float
        ε-scaling (Kosowsky & Yuille 1994; Schmitzer 2019): ``k`` stages from ``eps0 =
        max(C) - min(C)`` geometrically down to ``eps``, or an explicit non-increasing
        schedule. Intermediate stages stop at a 1e-2 relative marginal error and pass their
        potentials on. Pays off for small ``eps``.
    acceleration : None, "momentum" or "anderson"
        ``"momentum"``: adaptive over-relaxation ``f <- f + omega (T f - f)`` with ``omega``
        estimated from the observed contraction rate (Thibault et al. 2017; Lehmann et al.
        2021), safeguarded. ``"anderson"``: Anderson mixing (depth 5) of the potentials,
        restarted whenever the error grows.
    f0, g0 : arrays, optional
        Warm start potentials (shapes ``(..., n)``, ``(..., m)``), e.g. from a previous
        result with nearby inputs.
    gradient : {"implicit", "envelope"}
        Backward rule. ``"implicit"``: implicit differentiation of the optimality conditions
        (plan, ``f``, ``g`` and ``cost``; memory of one plan, independent of the iteration
        count). ``"envelope"``: the cost only, ``dW/dC = P``, ``dW/da = f``,
        ``dW/db = g``; a nonzero cotangent of plan/f/g then raises.
    throw : bool
        Raise the status's :class:`diffsolve.SolveError` subclass (e.g.
        :class:`diffsolve.MaxIterationsError`) instead of warning when a problem fails.
    callback : callable, optional
        ``callback(state) -> bool | None`` at every check, with a frozen
        :class:`~diffsolve.ot._result.OTState`: ``n_iters`` (iterations so far),
        ``f``, ``g`` (current potentials), ``error`` (per-problem marginal error; float for
        one problem) and ``eps`` (the current ε of the schedule). Returning ``True`` stops
        the solve: the problems not yet converged get ``Status.STOPPED`` (no warning).
    kernel : {"auto", "lse", "absorbed"}
        How the soft-minima are evaluated. ``"lse"``: the fused log-sum-exp kernels, streaming
        ``C`` with ``2 n m`` exponentials per iteration, no extra memory. ``"absorbed"``:
        Schmitzer's stabilised kernel, the plan at reference potentials rebuilt whenever
        a potential moves by more than ``50 eps`` (``10 eps`` in float32), and two BLAS
        matrix-vector products per iteration in between: the same iterates (to rounding),
        several times faster on the CPU, one more ``(n, m)`` array. ``"auto"``:
        ``"absorbed"`` for NumPy, ``"lse"`` elsewhere (on CuPy the fused kernels are
        memory-bound like a product, and need no per-iteration host sync).
    **deprecated
        The option names used before the solver contract, ``tol`` and ``max_iter``, still
        work with a ``DeprecationWarning`` (see ``rtol``, ``atol`` and ``maxiter`` above);
        any other keyword raises ``TypeError``.

    Returns
    -------
    OTResult
        ``plan`` ``(..., n, m)``, ``f`` ``(..., n)``, ``g`` ``(..., m)``, ``cost`` ``(...)``:
        the regularised objective ``W = <C, P> + eps sum P (log P - 1)`` at the returned
        plan (all four differentiable). The potentials are normalised so that
        ``sum(f) = sum(g)`` (over positive weights; zero weights get ``-inf``).
        ``n_iters``, ``converged`` (``error <= tolerance``), ``error`` (in
        ``error_measure``, recomputed from the returned plan), ``status``
        (:class:`diffsolve.Status`), ``tolerance`` (``atol + rtol * sum(a)``) and
        ``message``: Python scalars for one problem, arrays of shape ``(...)`` for a
        batch. A failed solve warns :class:`diffsolve.ConvergenceWarning` (or raises with
        ``throw=True``).

    Raises
    ------
    ValueError, TypeError
        Bad input: a wrong shape or dtype, an unknown option value, an option out of range,
        arrays from two libraries. The message names the argument, what was received and
        what would work.
    diffsolve.SolveError
        Only with ``throw=True``: the subclass matching the result's ``status``
        (:class:`~diffsolve.MaxIterationsError`, :class:`~diffsolve.NonFiniteError`, ...),
        carrying the :class:`OTResult` as ``result``.

    Warns
    -----
    diffsolve.ConvergenceWarning
        With ``throw=False`` (the default), when the solve stops without meeting its
        tolerance; the :class:`OTResult` is returned and its ``message`` says what to
        try. A budget requested on purpose (``rtol = atol = 0``) does not warn.

    See Also
    --------
    diffsolve.ot.sinkhorn_newton_sparse : Newton steps after Sinkhorn (small ``eps``).
    diffsolve.ot.sparse_ot : Plans with at most ``k`` nonzeros per column.
    diffsolve.ot.quadratic_ot : Quadratically regularised OT (sparse plans).
    diffsolve.to_torch : Use the solver as a PyTorch layer.

    Notes
    -----
    With ``kernel="lse"`` each iteration streams ``C`` twice through fused log-sum-exp
    kernels (Numba on NumPy, CUDA on CuPy; array_api_strict uses
    ``diffsolve._backend.logsumexp``); ``kernel="absorbed"`` does two matrix-vector
    products with a stabilised kernel instead (same iterates). The error check
    uses the column sums ``exp((g + eps LSE_i((f_i - C_ij)/eps))/eps)`` of the state, which
    the next column update needs anyway. Problems of a batch that converge are frozen (the
    kernels skip them). float32 inputs run in float32 (the CPU kernels accumulate in
    float64).

    Gradients: the cost's cotangent always uses the envelope theorem; the implicit rule
    solves the Schur complement of the optimality Jacobian with CG. Gradients with respect to
    ``(a, b)`` are defined up to ``(c, -c)``; the minimum-norm one is returned.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> x = np.linspace(0, 1, 5)
    >>> C = (x[:, None] - x[None, :]) ** 2
    >>> a = b = np.full(5, 0.2)
    >>> res = ds.ot.sinkhorn(a, b, C, 0.01)
    >>> res.converged, res.status.name, res.error <= 1e-9
    (True, 'SUCCESS', True)
    >>> np.allclose(res.plan.sum(axis=1), a)
    True
    """
    check_arrays(WHERE, a=a, b=b, C=C, f0=f0, g0=g0)
    xp = B.array_namespace(a, b, C, f0, g0, where=WHERE)
    s = _settings(eps, rtol=rtol, atol=atol, maxiter=maxiter, error_measure=error_measure,
                  check_every=check_every, eps_scaling=eps_scaling, acceleration=acceleration,
                  gradient=gradient, kernel=kernel, throw=throw, callback=callback,
                  deprecated=deprecated)
    a, b, C, batch = check_ot_inputs(WHERE, a, b, C, xp)
    out = _solve(xp, a, b, C, batch, s, f0, g0)
    report(out, throw=s.throw, fixed_budget=s.fixed_budget)
    return out, (a, b, C, s)


def _solve(xp, a, b, C, batch, s: SinkhornSettings, f0=None, g0=None) -> OTResult:
    """The whole solve on validated inputs, without reporting: what :func:`sinkhorn` and the
    solvers built on it (Sinkhorn–Newton–Sparse's warm-up) call; they read ``status``."""
    kernel = s.kernel
    if kernel == "auto":
        kernel = "absorbed" if B.is_numpy(xp) else "lse"
    eps = s.eps
    n, m = int(C.shape[-2]), int(C.shape[-1])
    nb = math.prod(batch)
    dt = C.dtype
    a2 = xp.reshape(a, (nb, n))
    b2 = xp.reshape(b, (nb, m))
    C2 = xp.reshape(C, (nb, n, m))
    f_init = _warm(f0, "f0", batch, n, dt, xp)
    g_init = _warm(g0, "g0", batch, m, dt, xp)
    if s.eps_scaling is None:
        schedule = [eps]
    else:
        cost_scale = float(xp.max(C2) - xp.min(C2)) if isinstance(s.eps_scaling, int) else eps
        schedule = _schedule(s.eps_scaling, eps, cost_scale)
    rtol = default_rtol(xp, dt, RTOL) if s.rtol is None else s.rtol
    tol = s.atol + rtol * xp.sum(a2, axis=-1)
    f, g, n_iters, stopped = _iterate(xp, a2, b2, C2, schedule, tol, s.maxiter,
                                      s.error_measure, s.check_every, s.acceleration, f_init,
                                      g_init, s.callback, kernel, s.fixed_budget, batch)
    f, g = normalise_gauge(f, g, a2, b2, xp)
    P = _plan(f, g, C2, eps, xp)
    err = marginal_error(P, a2, b2, xp, s.error_measure)
    err = xp.where(xp.isfinite(err), err, xp.full_like(err, math.inf))
    # potentials that are not finite on the support (overflowed inputs) are a failure even
    # if the plan's marginals happen to look right
    pos_f = xp.all(xp.isfinite(f) | ~(a2 > 0), axis=-1)
    pos_g = xp.all(xp.isfinite(g) | ~(b2 > 0), axis=-1)
    nonfinite = ~xp.isfinite(err) | ~pos_f | ~pos_g
    ok = (err <= tol) & ~nonfinite
    if s.fixed_budget:
        ok = xp.zeros_like(ok)
    def code(st):
        return xp.full(ok.shape, int(st), dtype=xp.int64, device=B.device(ok))

    status = xp.where(ok, code(Status.SUCCESS), xp.where(
        nonfinite, code(Status.NONFINITE), xp.where(stopped, code(Status.STOPPED),
                                                    code(Status.MAX_ITERATIONS))))
    cost = _regularised_cost(P, f, g, a2, b2, eps, xp)
    if batch:
        return OTResult(plan=xp.reshape(P, (*batch, n, m)), f=xp.reshape(f, (*batch, n)),
                        g=xp.reshape(g, (*batch, m)), cost=xp.reshape(cost, batch),
                        n_iters=xp.reshape(n_iters, batch), converged=xp.reshape(ok, batch),
                        error=xp.reshape(err, batch), status=xp.reshape(status, batch),
                        tolerance=xp.reshape(tol, batch), error_measure=s.error_measure)
    return OTResult(plan=P[0, ...], f=f[0, ...], g=g[0, ...], cost=cost[0, ...],
                    n_iters=int(n_iters[0]), converged=bool(ok[0]), error=float(err[0]),
                    status=Status(int(status[0])), tolerance=float(tol[0]),
                    error_measure=s.error_measure)


def _warm(x, name, batch, size, dt, xp):
    if x is None:
        return None
    # -inf entries (zero weights of a previous result) are allowed: not finite-checked
    x = V.float_array(WHERE, name, x, min_ndim=1, finite=False)
    if bool(xp.any(xp.isnan(x))):
        raise ValueError(f"{WHERE}: {name} contains NaN; pass finite potentials (or -inf "
                         "at zero weights), e.g. a previous result's "
                         f"{'f' if name == 'f0' else 'g'}")
    if tuple(x.shape)[-1:] != (size,):
        raise ValueError(f"{WHERE}: {name} has shape {tuple(x.shape)}; it must end in {size} "
                         f"(batch shape {batch}), e.g. a previous result's "
                         f"{'f' if name == 'f0' else 'g'}")
    try:
        x = xp.broadcast_to(xp.astype(x, dt), (*batch, size))
    except ValueError:
        raise ValueError(f"{WHERE}: {name} has shape {tuple(x.shape)}, which does not "
                         f"broadcast to {(*batch, size)}") from None
    x = xp.reshape(x, (math.prod(batch), size))
    # -inf entries (zero weights of a previous result) restart from 0
    return xp.where(xp.isfinite(x), x, xp.zeros_like(x))
