"""``diffsolve.linear.solve``: a differentiable linear solve with a hand-written adjoint."""

from __future__ import annotations

import math
import numbers
import warnings

from .. import _backend as B
from .._autodiff import custom_vjp
from .._result import ConvergenceWarning, LinearSolveResult
from ._cg import conjugate_gradient
from ._operator import MatrixOperator, as_operator

__all__ = ["solve"]

WHERE = "diffsolve.linear.solve"
METHODS = ("direct", "cg")


def _check_b(b, op: MatrixOperator, xp):
    if b.ndim not in (1, 2) or b.shape[0] != op.n:
        raise ValueError(
            f"{WHERE}: b has shape {tuple(b.shape)} but A is {op.shape}; b must have shape "
            f"({op.n},) or ({op.n}, k)"
        )
    if xp.isdtype(b.dtype, "complex floating"):
        raise TypeError(f"{WHERE}: b has complex dtype {b.dtype}; only real systems are supported")
    if not B.isfinite_all(xp, b):
        raise ValueError(f"{WHERE}: b contains NaN or infinite entries; every entry must be finite")


def _result_dtype(op: MatrixOperator, b, xp):
    dtype = xp.result_type(op.dtype, b.dtype) if op.kind != "operator" else b.dtype
    return dtype if xp.isdtype(dtype, "real floating") else xp.float64


def _check_options(method, rtol, atol, maxiter, x0, M, check_every, b):
    if method not in METHODS:
        raise ValueError(f"{WHERE}: method={method!r} is not known; choose one of {list(METHODS)}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{WHERE}: {name} must be a finite number >= 0, got {value!r}")
    if method != "direct" and rtol == 0 and atol == 0:
        raise ValueError(f"{WHERE}: rtol and atol are both 0, so {method} could never stop; "
                         "set rtol (e.g. 1e-8) or atol > 0")
    if maxiter is not None and (not isinstance(maxiter, numbers.Integral) or maxiter < 1):
        raise ValueError(f"{WHERE}: maxiter must be a positive integer or None, got {maxiter!r}")
    if check_every is not None and (not isinstance(check_every, numbers.Integral)
                                    or check_every < 1):
        raise ValueError(
            f"{WHERE}: check_every must be a positive integer or None, got {check_every!r}"
        )
    if method == "direct" and (M is not None or x0 is not None):
        raise ValueError(
            f"{WHERE}: x0 and M are used by iterative methods only; method='direct' got "
            f"{'x0' if x0 is not None else 'M'}: drop it, or choose method='cg'"
        )
    if x0 is not None and (not B.is_array(x0) or tuple(x0.shape) != tuple(b.shape)):
        shape = tuple(x0.shape) if B.is_array(x0) else type(x0).__name__
        raise ValueError(f"{WHERE}: x0 must be an array of b's shape {tuple(b.shape)}, got {shape}")


def _residual_norm(op: MatrixOperator, x, b, xp):
    r = b - op.matvec(x)
    norm = xp.sqrt(xp.sum(r * r, axis=0))
    return float(norm) if norm.ndim == 0 else norm


def _factorise(op: MatrixOperator, xp):
    if op.kind == "operator":
        raise ValueError(
            f"{WHERE}: method='direct' needs the entries of A, but A is a LinearOperator; "
            "use method='cg' (symmetric positive definite A) or pass the matrix"
        )
    lu = B.DenseLU(op.A, xp) if op.kind == "dense" else B.SparseLU(op.A, xp)
    if lu.singular:
        raise ValueError(
            f"{WHERE}: A is singular to working precision (LU factorisation found a zero "
            "pivot); check the matrix, or regularise it (A + λI)"
        )
    return lu


def _cg_solve(op, b, x0, rtol, atol, maxiter, M, callback, check_every, xp, what,
              check_symmetric=True):
    if check_symmetric and op.kind != "operator":
        asym, scale = op.max_abs_asymmetry()
        if asym > 1e3 * float(xp.finfo(op.dtype).eps) * scale:
            raise ValueError(
                f"{WHERE}: method='cg' needs a symmetric positive definite A, but "
                f"max|A - Aᵀ| = {asym:.3g} (max|A| = {scale:.3g}); use method='direct'"
            )
    tol = xp.maximum(rtol * xp.sqrt(xp.sum(b * b, axis=0)), xp.asarray(atol, dtype=b.dtype))
    maxiter = 10 * op.n if maxiter is None else int(maxiter)
    if check_every is None:
        check_every = 1 if B.is_numpy(xp) else 8
    out = conjugate_gradient(op, b, x0, tol, maxiter, M, callback, check_every, WHERE)
    if not out.converged:
        warnings.warn(
            f"{WHERE}(method='cg'): {what} did not reach rtol={rtol:g}, atol={atol:g} within "
            f"maxiter={maxiter} iterations; increase maxiter, give a preconditioner M, loosen "
            "rtol, or use method='direct'",
            ConvergenceWarning,
            stacklevel=4,
        )
    return out


def _solve_shapes(A, b, **kwargs):
    # only shapes and dtypes are read here: A and b may be JAX tracers
    dtype = b.dtype if B.is_linear_operator(A) else B.promote_real_floating(A.dtype, b.dtype)
    residual_shape = () if b.ndim == 1 else (b.shape[1],)
    return {
        "x": (tuple(b.shape), dtype),
        "n_iters": ((), "int64"),
        "converged": ((), "bool"),
        "residual_norm": (residual_shape, dtype),
        "info": ((), "int64"),
    }


def _solve_bwd(ctx, cotangents):
    A, b = ctx.args
    kw = ctx.kwargs
    method = kw.get("method", "direct")
    op, xp = as_operator(A, b, WHERE)
    x = ctx.result.x
    x_bar = xp.astype(cotangents["x"], x.dtype)
    if method == "direct":
        lu = ctx.residuals if ctx.residuals is not None else _factorise(op, xp)
        lam = lu.solve(x_bar, trans=True)
    else:
        # the adjoint of the same CG solve: the forward checked that A is symmetric, so
        # Aᵀλ = x̄ is solved with A itself (no transposed copy, no second symmetry check)
        out = _cg_solve(op, x_bar, None, kw.get("rtol", 1e-8), kw.get("atol", 0.0),
                        kw.get("maxiter"), kw.get("M"), None, kw.get("check_every"), xp,
                        "the adjoint solve Aᵀλ = x̄", check_symmetric=False)
        lam = out.x
    b_bar = xp.astype(lam, b.dtype) if xp.isdtype(b.dtype, "real floating") else None
    if op.kind == "dense":
        A_bar = -(lam[:, None] * x[None, :]) if x.ndim == 1 else -(lam @ xp.matrix_transpose(x))
        A_bar = xp.astype(A_bar, A.dtype)
    elif op.kind == "sparse":
        M = op.A
        sampled_outer = B.get_kernel(xp, "sparse.csr_sampled_outer")
        g = xp.empty((M.nnz,), dtype=x.dtype, device=B.device(x))
        g = sampled_outer(M.indptr, M.indices, B.contiguous(xp, lam), B.contiguous(xp, x), g)
        A_bar = xp.astype(-g, M.data.dtype)
    else:
        A_bar = None
    return A_bar, b_bar


@custom_vjp(_solve_bwd, _solve_shapes, LinearSolveResult)
def solve(A, b, *, method="direct", x0=None, rtol=1e-8, atol=0.0, maxiter=None, M=None,
          callback=None, check_every=None):
    """Solve ``A x = b``, differentiably in ``A`` and ``b``.

    Parameters
    ----------
    A : array (n, n), sparse matrix, diffsolve.CSR or LinearOperator
        Dense NumPy/CuPy (or any array-API) matrix, SciPy / CuPy sparse matrix (converted
        to canonical CSR, no device move), :class:`diffsolve.CSR`, or
        ``scipy.sparse.linalg.LinearOperator`` (``method='cg'`` only; not differentiated).
    b : array, shape (n,) or (n, k)
        Right-hand side(s); the columns of a 2-D ``b`` are solved together.
    method : {"direct", "cg"}
        ``"direct"``: LU (LAPACK / SuperLU on the CPU, cuSOLVER on the GPU), its factor
        reused by the adjoint. ``"cg"``: conjugate gradients for symmetric positive
        definite A, sparse products through the compiled CSR kernels.
    x0 : array, optional
        Initial guess for iterative methods (a warm start), same shape as ``b``.
    rtol, atol : float
        Iterative methods stop when ``||b - A x|| <= max(rtol ||b||, atol)`` per column.
        The adjoint solve uses the same tolerances.
    maxiter : int, optional
        Iteration limit (default ``10 n``). Reaching it returns ``converged=False`` and
        warns with :class:`diffsolve.ConvergenceWarning`.
    M : callable, LinearOperator or matrix, optional
        Preconditioner for CG approximating ``A⁻¹`` (symmetric positive definite).
    callback : callable, optional
        ``callback(xk)`` after every iteration.
    check_every : int, optional
        Iterations between convergence tests (each reads one number from the GPU);
        default 1 on the CPU and 8 on CuPy.

    Returns
    -------
    LinearSolveResult
        ``x`` (differentiable), ``n_iters``, ``converged``, ``residual_norm``
        (``||b - A x||`` recomputed at the end), ``info`` (0, or the iteration count when
        not converged, as SciPy).

    Notes
    -----
    Backward rule: with ``λ = A⁻ᵀ x̄`` solved by the same method, ``b̄ = λ`` and
    ``Ā = -λ xᵀ``; for sparse ``A`` only the stored entries, ``Ā_ij = -λ_i x_j``, returned
    as the gradient of the CSR data array (a sparse matrix of A's pattern from
    :func:`diffsolve.vjp`).

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> res = ds.linear.solve(A, np.array([1.0, 2.0]), method="cg")
    >>> res.converged, np.allclose(A @ res.x, [1.0, 2.0])
    (True, True)
    """
    op, xp = as_operator(A, b, WHERE)
    _check_b(b, op, xp)
    _check_options(method, rtol, atol, maxiter, x0, M, check_every, b)
    dtype = _result_dtype(op, b, xp)
    b = xp.astype(b, dtype, copy=False)
    if method == "direct":
        lu = _factorise(op, xp)
        x = lu.solve(b)
        if lu.singular or not B.isfinite_all(xp, x):
            raise ValueError(f"{WHERE}: A is singular to working precision (the solution is "
                             "not finite); check the matrix, or regularise it (A + λI)")
        res = LinearSolveResult(x=x, n_iters=0, converged=True,
                                residual_norm=_residual_norm(op, x, b, xp), info=0)
        return res, lu
    out = _cg_solve(op, b, x0, rtol, atol, maxiter, M, callback, check_every, xp,
                    "the solve")
    res = LinearSolveResult(x=out.x, n_iters=out.n_iters, converged=out.converged,
                            residual_norm=_residual_norm(op, out.x, b, xp),
                            info=0 if out.converged else out.n_iters)
    return res, None
