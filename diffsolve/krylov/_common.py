"""What the Krylov methods share: option checks, the operator and preconditioner wrappers,
the (N, k) working layout, overflow-safe norms and right-hand-side scaling, the final
true-residual verdict and its message.

Working layout. Every method works on C-contiguous ``(N, k)`` arrays: ``k`` independent
systems (columns) of ``N`` unknowns. A right-hand side of any shape is one system
(``batch_axis=None``: reshaped to ``(N, 1)``); with ``batch_axis=a`` the systems are indexed
by axis ``a`` of ``b`` and the inner products run over the other axes. The user's ``A``
(and ``M``) always see arrays of b's shape.

Scaling. Each system is solved for ``b / s`` with ``s`` the power of two nearest below
``max|b|`` (exact in binary floating point), and ``x = s y``. So ``||b||²`` never
overflows (``|b| ~ 1e200`` in float64, ``1e20`` in float32 solve like ``|b| ~ 1``) and
the stopping test ``||r|| <= max(rtol ||b||, atol)`` becomes
``||r_s|| <= max(rtol ||b_s||, atol / s)``, the same test.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from .. import _backend as B
from .. import _validate as V
from .._status import Status, worst_status
from .._tolerance import resolve_rtol

__all__ = ["Layout", "LinearMap", "Preconditioner", "check_common", "finish", "safe_norms",
           "scale_columns", "wants_stop"]

#: the default ``rtol`` where the dtype allows it (float64); ``rtol=None`` is
#: ``max(RTOL, 64 eps)`` (``diffsolve._tolerance``, which records the float32 floors)
RTOL = 1e-8


# --------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------
def check_common(where, b, x0, rtol, atol, maxiter, callback, check_every, *,
                 batch_axis=None, allow_batch=True):
    """Validate what every method takes; returns ``(xp, b, x0, rtol, atol, maxiter, ...)``.

    ``maxiter`` stays ``None`` here (each method has its own default).
    """
    # any array-API array (torch included: bilevel objectives written in torch solve their
    # Hessian systems here); the public solvers apply the stricter input policy
    if not B.is_array(b):
        raise TypeError(f"{where}: b must be an array, got a {type(b).__module__}."
                        f"{type(b).__qualname__}")
    xp = B.array_namespace(b, x0, where=where)
    if not xp.isdtype(b.dtype, "real floating"):
        if xp.isdtype(b.dtype, "integral"):
            b = xp.astype(b, xp.float64)
        else:
            raise TypeError(f"{where}: b has dtype {b.dtype}; the Krylov methods work in "
                            "float32 or float64 (integers are promoted to float64)")
    if b.dtype not in (xp.float32, xp.float64):
        raise TypeError(f"{where}: b has dtype {b.dtype}; use float32 or float64")
    if math.prod(tuple(b.shape)) == 0:
        raise ValueError(f"{where}: b has shape {tuple(b.shape)} with no entries; pass a "
                         "non-empty right-hand side")
    if x0 is not None:
        if not B.is_array(x0):
            raise TypeError(f"{where}: x0 must be an array of b's shape or None")
        if tuple(x0.shape) != tuple(b.shape):
            raise ValueError(f"{where}: x0 has shape {tuple(x0.shape)} but b has shape "
                             f"{tuple(b.shape)}; pass an initial guess of b's shape")
        x0 = xp.astype(x0, b.dtype)
    rtol, atol = V.tolerances(where, resolve_rtol(xp, b.dtype, rtol, RTOL), atol)
    maxiter = V.positive_int(where, "maxiter", maxiter, allow_none=True)
    if rtol == 0 and atol == 0 and maxiter is None:
        raise ValueError(f"{where}: rtol = atol = 0 runs exactly maxiter iterations; "
                         "pass maxiter")
    V.callback(where, callback)
    check_every = default_check_every(
        xp, V.positive_int(where, "check_every", check_every, allow_none=True))
    if batch_axis is not None:
        if not allow_batch:
            raise ValueError(f"{where}: batch_axis is an option of cg only; solve the "
                             "systems one at a time")
        batch_axis = V.integer(where, "batch_axis", batch_axis, minimum=-b.ndim)
        if batch_axis >= b.ndim:
            raise ValueError(f"{where}: batch_axis={batch_axis} but b has {b.ndim} "
                             "dimension(s)")
        batch_axis %= b.ndim
    return xp, b, x0, rtol, atol, maxiter, callback, check_every, batch_axis


def default_check_every(xp, check_every: int | None) -> int:
    """Iterations between convergence tests: the user's, else 1 on the host and 8 on CuPy
    (each test reads a number back from the GPU)."""
    if check_every is None:
        return 8 if B.is_cupy(xp) else 1
    return check_every


# --------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------
def _reshape(xp, v, shape):
    # eager jax.numpy.reshape costs ≈ 40 µs of Python; compiled (compiled()), ≈ 8 µs
    return xp.reshape(v, shape)


class Layout:
    """Between the user's shape (b's) and the working ``(N, k)`` layout."""

    def __init__(self, xp, shape, batch_axis):
        self.xp = xp
        self.shape = tuple(int(s) for s in shape)
        self.batch_axis = batch_axis
        if batch_axis is None:
            self.k = 1
            self.moved = self.shape
        else:
            self.k = self.shape[batch_axis]
            self.moved = (*tuple(s for i, s in enumerate(self.shape) if i != batch_axis), self.k)
        self.N = math.prod(self.shape) // max(self.k, 1)
        # the common cases need no data movement: a vector, or columns of a matrix
        self.identity = len(self.shape) == 2 and batch_axis == 1

    def to_work(self, v):
        xp = self.xp
        if self.identity:
            return v
        if self.batch_axis is not None and self.batch_axis != len(self.shape) - 1:
            v = xp.moveaxis(v, self.batch_axis, -1)
        return compiled(xp, _reshape, static=("shape",))(v, shape=(self.N, self.k))

    def to_user(self, v):
        xp = self.xp
        if self.identity:
            return v
        if self.batch_axis is None:
            return compiled(xp, _reshape, static=("shape",))(v, shape=self.shape)
        v = xp.reshape(v, self.moved)
        if self.batch_axis != len(self.shape) - 1:
            v = xp.moveaxis(v, -1, self.batch_axis)
        return v

    def per_system(self, values):
        """A ``(k,)`` array as the result reports it: a float for one system."""
        if self.batch_axis is None:
            return float(values[0])
        return values


# --------------------------------------------------------------------------------------
# operators
# --------------------------------------------------------------------------------------
class LinearMap:
    """``A`` as a product on working arrays. ``A``: a callable on arrays of b's shape, a
    LinearOperator, a dense 2-D array or a SciPy / CuPy sparse matrix (or diffsolve.CSR).

    ``csr`` is the canonical CSR matrix for sparse ``A`` (the compiled CG fast path reads
    it); ``diagonal()`` gives the diagonal of a matrix ``A`` (``None`` otherwise).
    """

    # which of these is set depends on kind; the others stay None
    csr: Any
    dense: Any
    _kernel: Any

    def __init__(self, A, xp, layout: Layout, where: str, name: str = "A"):
        self.xp = xp
        self.layout = layout
        self.csr = None
        self.dense = None
        n = layout.shape[0] if layout.shape else 1
        if B.is_sparse(A) or (B.is_array(A) and not callable(A)):
            if B.is_array(A) and A.ndim != 2:
                raise ValueError(f"{where}: {name} must be a square 2-D matrix, a "
                                 f"LinearOperator or a callable, got an array of shape "
                                 f"{tuple(A.shape)}")
            if len(layout.shape) not in (1, 2) or (len(layout.shape) == 2
                                                    and layout.batch_axis != 1):
                raise ValueError(f"{where}: a matrix {name} needs b of shape (n,) or, with "
                                 "batch_axis=1, (n, k); pass a callable for other shapes")
            if tuple(A.shape) != (n, n):
                raise ValueError(f"{where}: {name} has shape {tuple(A.shape)} but b has "
                                 f"{n} rows; {name} must be ({n}, {n})")
            if B.is_sparse(A):
                self.csr = B.as_csr(A)
                self.kind = "sparse"
                self._kernel = B.get_kernel(xp, "sparse.csr_matvec")
            else:
                self.dense = A
                self.kind = "dense"
        elif B.is_linear_operator(A):
            if tuple(A.shape) != (n, n):
                raise ValueError(f"{where}: {name} has shape {tuple(A.shape)} but b has "
                                 f"{n} rows")
            self.kind = "operator"
            self.A = A
        elif callable(A):
            self.kind = "callable"
            self.A = A
        else:
            raise TypeError(f"{where}: {name} must be a callable v -> A v, a "
                            "LinearOperator, a dense 2-D array or a sparse matrix, got a "
                            f"{type(A).__module__}.{type(A).__qualname__}")

    def rescale_extreme(self, dtype) -> float:
        """Divide a matrix ``A`` whose entries are far from 1 by a power of two near
        ``max|A|``; return that factor (1.0 when nothing was done).

        With entries near the dtype's underflow (or overflow) threshold, ``p·Ap`` leaves the
        range and the CG iterates overflow after a few steps, although the system is
        well posed. Solving ``(A / a) y = b / s`` keeps every product near 1; the caller
        recovers ``x = y s / a``. The copy is made only for such matrices.
        """
        if self.kind not in ("dense", "sparse"):
            return 1.0
        xp = self.xp
        data = self.dense if self.kind == "dense" else self.csr.data
        if math.prod(tuple(data.shape)) == 0:
            return 1.0
        m = float(xp.max(xp.abs(data)))
        info = xp.finfo(dtype)
        lo, hi = math.sqrt(float(info.smallest_normal)), math.sqrt(float(info.max))
        if not (math.isfinite(m) and m > 0) or lo <= m <= hi:
            return 1.0
        a = 2.0 ** math.floor(math.log2(m))
        if self.kind == "dense":
            self.dense = self.dense / a
        else:
            A = self.csr
            self.csr = type(A)((A.data / a, A.indices, A.indptr), shape=A.shape)
        return a

    def apply_user(self, v):
        """The product on an array of b's shape."""
        xp = self.xp
        if self.kind == "dense":
            return self.dense @ v
        if self.kind == "sparse":
            A = self.csr
            v = B.contiguous(xp, v)
            if self._kernel is None:
                return A @ v
            out = xp.empty(v.shape, dtype=xp.result_type(A.dtype, v.dtype),
                           device=B.device(v))
            return self._kernel(A.indptr, A.indices, A.data, v, out)
        if self.kind == "operator":
            return self.A.matvec(v) if v.ndim == 1 else self.A.matmat(v)
        return self.A(v)

    def __call__(self, W):
        """The product on a working ``(N, k)`` array; the result is C-contiguous."""
        xp = self.xp
        lay = self.layout
        if self.kind == "sparse" and lay.batch_axis is None and self._kernel is not None:
            # one column: the 1-D kernel keeps the row sum in a register (about 2x faster)
            out = xp.empty(W.shape, dtype=W.dtype, device=B.device(W))
            self._kernel(self.csr.indptr, self.csr.indices, self.csr.data, W[:, 0],
                         out[:, 0])
            return out
        out = self.apply_user(lay.to_user(W))
        if not B.is_array(out) or tuple(out.shape) != lay.shape:
            got = tuple(out.shape) if B.is_array(out) else type(out).__name__
            raise ValueError(f"the product with A returned {got}, but b has shape "
                             f"{lay.shape}; A must map arrays of b's shape to b's shape")
        return B.contiguous(xp, xp.astype(lay.to_work(out), W.dtype, copy=False))

    def diagonal(self):
        if self.kind == "dense":
            return self.xp.linalg.diagonal(self.dense)
        if self.kind == "sparse":
            return self.csr.diagonal()
        return None


class Preconditioner:
    """``M`` (approximating ``A⁻¹``) on working arrays.

    ``M``: ``None``; a callable ``r -> M r`` on arrays of b's shape; a LinearOperator or a
    sparse matrix; or an array broadcastable to b's shape (with at most b's ``ndim``
    dimensions) that multiplies elementwise, i.e. a diagonal preconditioner such as
    ``1 / diag(A)``. ``elementwise`` is that array in the working layout.
    """

    def __init__(self, M, xp, layout: Layout, dtype, where: str):
        self.xp = xp
        self.layout = layout
        self.elementwise = None
        self.map = None
        if M is None:
            return
        if B.is_array(M) and not callable(M):
            if M.ndim > len(layout.shape):
                raise TypeError(
                    f"{where}: an array M multiplies elementwise (a diagonal "
                    f"preconditioner) and must broadcast to b's shape {layout.shape}, got "
                    f"shape {tuple(M.shape)}; pass a matrix as a callable "
                    "(lambda r: Minv @ r), a LinearOperator or a sparse matrix")
            try:
                W = xp.broadcast_to(xp.astype(M, dtype), layout.shape)
            except (ValueError, RuntimeError) as err:
                raise ValueError(f"{where}: M of shape {tuple(M.shape)} does not broadcast "
                                 f"to b's shape {layout.shape}") from err
            self.elementwise = B.contiguous_copy(xp, layout.to_work(W))
            return
        self.map = LinearMap(M, xp, layout, where, name="M")

    @property
    def identity(self) -> bool:
        return self.elementwise is None and self.map is None

    def __call__(self, R):
        if self.elementwise is not None:
            return self.elementwise * R
        if self.map is not None:
            out = self.map(R)
            return out if self.factor == 1.0 else out * self.factor
        return R

    factor = 1.0

    def rescale(self, a: float) -> None:
        """``A`` was divided by ``a``: ``M ≈ A⁻¹`` becomes ``a M``."""
        if a == 1.0:
            return
        if self.elementwise is not None:
            self.elementwise = self.elementwise * a
        self.factor = a


# --------------------------------------------------------------------------------------
# norms and scaling
# --------------------------------------------------------------------------------------
_COMPILED: dict = {}


def compiled(xp, fn: Callable, static: tuple[str, ...] = ()) -> Callable:
    """``fn(xp, ...)`` with ``xp`` bound; for JAX arrays compiled by ``jax.jit`` (once per
    function). Eager JAX dispatches every small array operation on its own (10–60 µs each
    on a CPU for ``zeros_like``, ``full_like`` or a broadcasting index), which made one CG
    iteration on 100 unknowns cost ≈ 3 ms; compiled, the iteration's vector algebra is a
    few calls. ``static``: arguments that select code paths (Python values)."""
    if not B.is_jax(xp):
        return functools.partial(fn, xp)
    key = (fn, static)
    hit = _COMPILED.get(key)
    if hit is None:
        import jax

        hit = _COMPILED[key] = jax.jit(functools.partial(fn, xp), static_argnames=static)
    return hit


def safe_norms(xp, W):
    """``||W[:, j]||₂`` per column without overflow or underflow in the squares.

    NaN where a column has a NaN, inf where it has an inf (and no NaN).
    """
    return compiled(xp, _safe_norms)(W)


def _safe_norms(xp, W):
    m = xp.max(xp.abs(W), axis=0)
    ok = xp.isfinite(m) & (m > 0)
    safe = xp.where(ok, m, xp.ones_like(m))
    # columns that are not scaled are not squared either (1e200 beside an inf overflows)
    Ws = xp.where(ok[None, :], W / safe[None, :], xp.zeros_like(W))
    scaled = xp.sqrt(xp.sum(Ws * Ws, axis=0)) * safe
    nan = xp.any(xp.isnan(W), axis=0)
    out = xp.where(ok, scaled, xp.where(m == 0, xp.zeros_like(m), xp.full_like(m, math.inf)))
    return xp.where(nan, xp.full_like(m, math.nan), out)


def scale_columns(xp, Bw):
    """``(s, finite)``: a power-of-two scale per column of ``Bw`` (1 for zero or
    non-finite columns) and whether the column is finite."""
    return compiled(xp, _scale_columns)(Bw)


def _scale_columns(xp, Bw):
    m = xp.max(xp.abs(Bw), axis=0)
    finite = xp.isfinite(m) & ~xp.any(xp.isnan(Bw), axis=0)
    use = finite & (m > 0)
    safe = xp.where(use, m, xp.ones_like(m))
    s = 2.0 ** xp.floor(xp.log2(safe))
    return xp.where(use, s, xp.ones_like(s)), finite


def unscale_columns(xp, Y, s, skip=None, a: float = 1.0):
    """``(X, overflow)``: ``X = Y * s / a`` per column without overflowing, NaN in the
    columns whose values exceed the dtype's range (``overflow``) or are ``skip``ped.

    The product itself would raise NumPy's overflow warning for a solution beyond the
    dtype's range, so those columns are found first, from exponents (``log2``), multiplied
    by 1 and replaced by NaN. ``a`` (a power of two) is the factor a matrix was divided
    by; the order of the two products keeps every intermediate within ``|X|`` or ``|Y|``.
    """
    return compiled(xp, _unscale_columns, static=("a",))(Y, s, skip=skip, a=a)


def _unscale_columns(xp, Y, s, skip=None, a: float = 1.0):
    info = xp.finfo(Y.dtype)
    finite_Y = xp.where(xp.isfinite(Y), Y, xp.zeros_like(Y))
    ymax = xp.max(xp.abs(finite_Y), axis=0)
    pos = ymax > 0
    bound = xp.log2(xp.where(pos, ymax, xp.ones_like(ymax))) + xp.log2(s) - math.log2(a)
    overflow = pos & (bound >= math.log2(float(info.max)))
    drop = overflow if skip is None else overflow | skip
    s_safe = xp.where(drop, xp.ones_like(s), s)[None, :]
    Y_safe = xp.where(drop[None, :], xp.zeros_like(Y), Y)
    X = (Y_safe * s_safe) / a if a < 1.0 else (Y_safe / a) * s_safe
    X = xp.where(drop[None, :], xp.full_like(X, math.nan), X)
    return X, overflow


def scaled_system(xp, layout: Layout, b, x0, rtol: float, atol: float):
    """One system (MINRES, GMRES) solved for ``b / s``: ``(s_arr, s, early, Bs, Y, tol)``.

    ``s`` is the power of two of :func:`scale_columns` (``s_arr`` its 1-array), ``Bs`` and
    ``Y`` the scaled right-hand side and start, ``tol`` the scaled threshold
    ``max(rtol ||b||, atol) / s``. ``early`` is ``Status.NONFINITE`` for a non-finite
    ``b`` or ``x0``, ``Status.SUCCESS`` for a zero ``b`` (then ``x = 0``), else ``None``.
    """
    Bw = layout.to_work(b)
    s_arr, finite = scale_columns(xp, Bw)
    s = float(s_arr[0])
    if x0 is not None:
        finite = finite & xp.all(xp.isfinite(layout.to_work(x0)), axis=0)
    zeros = xp.zeros_like(Bw)
    if not bool(finite[0]):
        return s_arr, s, Status.NONFINITE, zeros, zeros, 0.0
    Bs = B.contiguous_copy(xp, Bw / s)
    if float(xp.max(xp.abs(Bs))) == 0:
        return s_arr, s, Status.SUCCESS, Bs, zeros, atol / s
    Y = zeros if x0 is None else B.contiguous_copy(xp, layout.to_work(x0) / s)
    return s_arr, s, None, Bs, Y, max(rtol * float(safe_norms(xp, Bs)[0]), atol / s)


# --------------------------------------------------------------------------------------
# the verdict
# --------------------------------------------------------------------------------------
def finish(xp, layout: Layout, *, method, Y, s, true_norm, tol, status, n_iters,
           column_iters, rtol, atol, maxiter, detail=None, residual_of=None, a_scale=1.0):
    """Build the :class:`KrylovResult` from the scaled solution ``Y`` (working layout).

    ``true_norm`` and ``tol`` are the scaled per-column true residuals and thresholds;
    ``status`` the per-column statuses decided by the method (int array). The verdict
    ``converged`` is the true residual test; ``NONFINITE`` columns get NaN ``x``.
    """
    from ._result import KrylovResult

    X, overflow, status, residual, lossy = compiled(xp, _unscaled, static=("a",))(
        Y, s, status, true_norm, a=a_scale)
    if bool(xp.any(overflow)):
        detail = (f"the solution x = A⁻¹b exceeds the largest {X.dtype} "
                  f"({float(xp.finfo(X.dtype).max):.3g}); rescale A or b, or use float64")
    if residual_of is not None:
        if bool(xp.any(lossy)):
            own = residual_of(X)
            missed = lossy & ~(own <= tol * s)
            residual = xp.where(lossy, own, residual)
            status = xp.where(missed, xp.full_like(status, int(Status.BREAKDOWN)), status)
            if bool(xp.any(missed)):
                detail = ("x underflows to subnormal numbers in this precision, which do "
                          "not resolve the tolerance; rescale A or b, or use float64")
    residual = xp.where(status == int(Status.NONFINITE), xp.full_like(residual, math.nan),
                        residual)
    # one read of the k statuses (a JAX array indexed entry by entry costs ≈ 40 µs each)
    read = (B.report_floats(status) if B.is_jax(xp) else
            [status[j] for j in range(layout.k)])
    statuses = [int(v) for v in read]
    converged = all(v == int(Status.SUCCESS) for v in statuses)
    worst = worst_status(statuses)
    x = layout.to_user(X)
    res_out = layout.per_system(residual)
    status_out = Status(statuses[0]) if layout.batch_axis is None else status
    message = _message(method, worst, statuses, n_iters, residual, tol * s, rtol, atol,
                       maxiter, layout, detail)
    return KrylovResult(x=x, status=status_out, converged=converged, n_iters=int(n_iters),
                        residual_norm=res_out, message=message)


def _unscaled(xp, Y, s, status, true_norm, a=1.0):
    """``(X, overflow, status, residual, lossy)`` of :func:`finish`: the unscaled solution
    (NaN where it overflows or the column is not finite), the statuses updated for that,
    the unscaled residual norms, and the converged columns whose ``x`` lost bits when
    unscaled."""
    nonfinite = status == int(Status.NONFINITE)
    # a: the factor A was divided by (x = y s / a)
    X, overflow = _unscale_columns(xp, Y, s, skip=nonfinite, a=a)
    # an x that overflows once unscaled is not a usable answer either
    bad_x = (overflow | ~xp.all(xp.isfinite(X), axis=0)) & ~nonfinite
    status = xp.where(bad_x, xp.full_like(status, int(Status.NONFINITE)), status)
    X = xp.where(bad_x[None, :], xp.full_like(X, math.nan), X)
    # unscaling by a power of two is exact unless x lands among the subnormal numbers,
    # which carry fewer bits, or below them (a nonzero scaled entry that becomes 0): then
    # the returned x is judged on its own residual
    tiny = float(xp.finfo(X.dtype).smallest_normal)
    lossy = xp.any((Y != 0) & (xp.abs(X) < tiny), axis=0) & (status == int(Status.SUCCESS))
    return X, overflow, status, true_norm * s, lossy


def _message(method, worst, statuses, n_iters, residual, tol, rtol, atol, maxiter, layout,
             detail):
    which = ""
    if layout.batch_axis is not None:
        bad = [j for j, v in enumerate(statuses) if v == int(worst)]
        which = f" (systems {bad[:8]}{'...' if len(bad) > 8 else ''} of {len(statuses)})"
    j = next((i for i, v in enumerate(statuses) if v == int(worst)), 0)
    r = float(residual[j])
    t = float(tol[j])
    head = f"{method}: "
    if worst is Status.SUCCESS:
        return (f"{head}converged in {n_iters} iterations: ||b - A x|| = {r:.3g} <= "
                f"max(rtol ||b||, atol) = {t:.3g}")
    if worst is Status.STOPPED:
        return f"{head}the callback stopped the solve after {n_iters} iterations{which}"
    state = (f"stopped after {n_iters} iterations{which} with ||b - A x|| = {r:.3g} > "
             f"max(rtol ||b||, atol) = {t:.3g} (rtol={rtol:g}, atol={atol:g}, "
             f"maxiter={maxiter})")
    if worst is Status.NONFINITE:
        state = f"stopped after {n_iters} iterations{which}"
    # a method's own detail is more precise than the generic hint of the status
    return f"{head}{state}; {detail or worst.hint()}"


def wants_stop(value) -> bool:
    """Whether a callback's return value asks to stop: ``True`` (a NumPy/0-d bool too);
    ``None`` and anything else continue."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if type(value).__name__ in ("bool_", "bool") and hasattr(value, "item"):
        return bool(value)
    if getattr(value, "shape", None) == () and getattr(value, "dtype", None) is not None \
            and "bool" in str(value.dtype):
        return bool(value)
    return False


def resolve_maxiter(maxiter, default: int) -> int:
    return default if maxiter is None else int(maxiter)


def is_callable_operator(A) -> bool:
    # collections.abc.Callable is a runtime ABC, which mypy does not accept in isinstance
    return isinstance(A, Callable) and not B.is_array(A)  # type: ignore[arg-type]
