"""``diffsolve.linear.solve``: a differentiable linear solve with a hand-written adjoint."""

from __future__ import annotations

import math
import numbers

from .. import _backend as B
from .._autodiff import custom_vjp
from ._dcdm import dcdm_solve
from ._iterative import CG_FAMILY, iterative_solve
from ._operator import MatrixOperator, as_operator
from ._relaxation import check_omega
from ._result import LinearSolveResult

__all__ = ["solve"]

WHERE = "diffsolve.linear.solve"
METHODS = ("direct", "cg", "pcg", "sor", "ssor-cg", "dcdm")
RELAXATION_METHODS = ("sor", "ssor-cg")


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


def _check_options(method, rtol, atol, maxiter, x0, M, omega, check_every, b, model=None, k=2):
    if method not in METHODS:
        raise ValueError(f"{WHERE}: method={method!r} is not known; choose one of {list(METHODS)}")
    if method != "dcdm" and (model is not None or k != 2):
        raise ValueError(f"{WHERE}: model and k are options of method='dcdm'; "
                         f"method={method!r} does not use them")
    if method == "dcdm" and M is not None:
        raise ValueError(f"{WHERE}: method='dcdm' takes its directions from model, not from "
                         "a preconditioner M; drop M, or use method='pcg'")
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
    if M is not None and method in RELAXATION_METHODS:
        raise ValueError(f"{WHERE}: method={method!r} builds its own SOR/SSOR(omega) "
                         "preconditioner; drop M, or use method='pcg' with your M")
    if omega is not None and method not in RELAXATION_METHODS:
        raise ValueError(f"{WHERE}: omega is the relaxation parameter of 'sor' and 'ssor-cg'; "
                         f"method={method!r} does not use it")
    if x0 is not None and (not B.is_array(x0) or tuple(x0.shape) != tuple(b.shape)):
        shape = tuple(x0.shape) if B.is_array(x0) else type(x0).__name__
        raise ValueError(f"{WHERE}: x0 must be an array of b's shape {tuple(b.shape)}, got {shape}")
    return check_omega(1.0 if omega is None else omega, WHERE)


def _residual_norm(op: MatrixOperator, x, b, xp):
    """``||b - A x||`` per column, scaled by the largest entry so that a diverged iterate
    reports a huge (or infinite) norm instead of overflowing while squaring."""
    r = b - op.matvec(x)
    scale = xp.max(xp.abs(r), axis=0)
    ok = xp.isfinite(scale) & (scale > 0)
    safe = xp.where(ok, scale, xp.ones_like(scale))
    scaled = xp.sqrt(xp.sum((r / safe) ** 2, axis=0)) * safe
    norm = xp.where(ok, scaled, xp.where(scale == 0, xp.zeros_like(scale),
                                         xp.full_like(scale, float("inf"))))
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
    elif method == "dcdm":
        # A is symmetric (checked by the forward): Aᵀλ = x̄ is solved with the same model
        lam = dcdm_solve(op, x_bar, model=kw.get("model"), k=kw.get("k", 2), x0=None,
                         rtol=kw.get("rtol", 1e-8), atol=kw.get("atol", 0.0),
                         maxiter=kw.get("maxiter"), callback=None,
                         what="the adjoint solve Aᵀλ = x̄", prepared=ctx.residuals,
                         check_symmetric=False).x
    else:
        symmetric = method in CG_FAMILY
        # CG-family forwards checked that A is symmetric: Aᵀλ = x̄ is solved with A itself,
        # reusing its preconditioner (SSOR colouring, Jacobi diagonal). SOR accepts
        # non-symmetric A, so its adjoint relaxes on Aᵀ with the same ω.
        out = iterative_solve(
            op if symmetric else op.transpose(), x_bar, method=method, x0=None,
            rtol=kw.get("rtol", 1e-8), atol=kw.get("atol", 0.0), maxiter=kw.get("maxiter"),
            M=kw.get("M"), omega=check_omega(kw.get("omega") or 1.0, WHERE), callback=None,
            check_every=kw.get("check_every"), what="the adjoint solve Aᵀλ = x̄",
            prepared=ctx.residuals if symmetric else None, check_symmetric=False)
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
          omega=None, callback=None, check_every=None, model=None, k=2):
    """Solve ``A x = b``, differentiably in ``A`` and ``b``.

    Parameters
    ----------
    A : array (n, n), sparse matrix, diffsolve.CSR or LinearOperator
        Dense NumPy/CuPy (or any array-API) matrix, SciPy / CuPy sparse matrix (converted
        to canonical CSR, no device move), :class:`diffsolve.CSR`, or
        ``scipy.sparse.linalg.LinearOperator`` (``method='cg'`` only; not differentiated).
    b : array, shape (n,) or (n, k)
        Right-hand side(s); the columns of a 2-D ``b`` are solved together.
    method : {"direct", "cg", "pcg", "sor", "ssor-cg", "dcdm"}
        ``"direct"``: LU (LAPACK / SuperLU on the CPU, cuSOLVER on the GPU), its factor
        reused by the adjoint. ``"cg"``: conjugate gradients for symmetric positive
        definite A, sparse products through the compiled CSR kernels. ``"pcg"``: CG
        preconditioned by ``M`` (default ``M="jacobi"``). ``"sor"``: stationary SOR(ω)
        iteration (Numba sweeps on the CPU; multicolour SOR on the GPU, a different row
        ordering). ``"ssor-cg"``: CG preconditioned by one SSOR(ω) sweep. ``"dcdm"``: the
        Deep Conjugate Direction Method (Kaneda et al. 2023) with the network ``model``,
        for symmetric positive definite A on a regular grid (see ``docs/dcdm.md``).
    x0 : array, optional
        Initial guess for iterative methods (a warm start), same shape as ``b``.
    rtol, atol : float
        Iterative methods stop when ``||b - A x|| <= max(rtol ||b||, atol)`` per column.
        The adjoint solve uses the same tolerances.
    maxiter : int, optional
        Iteration limit (default ``10 n`` for the CG family, 10 000 sweeps for SOR).
        Reaching it returns ``converged=False`` and warns with
        :class:`diffsolve.ConvergenceWarning`.
    M : callable, LinearOperator, matrix or "jacobi", optional
        Preconditioner for ``"cg"`` / ``"pcg"`` approximating ``A⁻¹`` (symmetric positive
        definite).
    omega : float in (0, 2), optional
        Relaxation parameter of ``"sor"`` and ``"ssor-cg"`` (default 1: Gauss–Seidel /
        symmetric Gauss–Seidel). :class:`diffsolve.linear.OmegaBandit` learns it online
        across a sequence of systems.
    callback : callable, optional
        ``callback(xk)`` after every iteration.
    check_every : int, optional
        Iterations between convergence tests (each reads one number from the GPU);
        default 1 on the CPU and 8 on CuPy.
    model : ConvDirectionModel, optional
        ``method="dcdm"`` only: the direction network, bound to the grid of the unknowns
        (:meth:`ConvDirectionModel.on_grid`; an unbound model assumes a square/cubic grid)
        and on b's device (:meth:`ConvDirectionModel.to`). None: the shipped 2-D Poisson
        model (64² training grid; needs a square number of unknowns).
    k : int
        ``method="dcdm"`` only: directions kept for A-orthogonalisation (paper: 2). When
        the network's directions stagnate the solve continues with CG and warns with
        ``diffsolve.linear.DirectionFallbackWarning``.

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
    omega = _check_options(method, rtol, atol, maxiter, x0, M, omega, check_every, b, model, k)
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
    if method == "dcdm":
        out = dcdm_solve(op, b, model=model, k=k, x0=x0, rtol=rtol, atol=atol, maxiter=maxiter,
                         callback=callback, what="the solve")
    else:
        out = iterative_solve(op, b, method=method, x0=x0, rtol=rtol, atol=atol,
                              maxiter=maxiter, M=M, omega=omega, callback=callback,
                              check_every=check_every, what="the solve")
    res = LinearSolveResult(x=out.x, n_iters=out.n_iters, converged=out.converged,
                            residual_norm=_residual_norm(op, out.x, b, xp),
                            info=0 if out.converged else out.n_iters)
    return res, out.prepared
