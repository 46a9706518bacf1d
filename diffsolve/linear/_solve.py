"""``diffsolve.linear.solve``: a differentiable linear solve with a hand-written adjoint."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

from .. import _backend as B
from .. import _validate as V
from .._autodiff import custom_vjp
from .._status import Status, report
from .._tolerance import resolve_rtol
from .._typing import Array, Callback, Matrix
from ._dcdm import SMOOTHERS, dcdm_solve
from ._direction_model import ConvDirectionModel
from ._iterative import CG_FAMILY, iterative_solve, thresholds, true_residuals
from ._operator import MatrixOperator, as_operator
from ._relaxation import check_omega
from ._result import LinearSolveResult, LinearSolveState

__all__ = ["LinearSolveSettings", "solve"]

WHERE = "diffsolve.linear.solve"
METHODS = ("direct", "cg", "pcg", "sor", "ssor-cg", "dcdm")
RELAXATION_METHODS = ("sor", "ssor-cg")
#: old option names, accepted for one release with a DeprecationWarning
RENAMED = {"tol": "rtol", "max_iter": "maxiter"}
#: the default ``rtol`` where the dtype allows it (float64); ``rtol=None`` is
#: ``max(RTOL, 64 eps)`` of the solve's dtype (``diffsolve._tolerance`` records the
#: float32 floor of the true residual that fixes 64 eps)
RTOL = 1e-8


@dataclass(frozen=True)
class LinearSolveSettings:
    """The options of one :func:`solve` call, validated once; the forward and the
    backward rule read this object (defaults live only in the signature of ``solve``).

    Attributes
    ----------
    method, rtol, atol, maxiter, M, omega, callback, check_every, model, k, smoother, throw
        The arguments of the same names of :func:`diffsolve.linear.solve`, validated (a frozen
        dataclass: read it, do not build it).

    See Also
    --------
    diffsolve.linear.solve : The function whose options these are.

    Examples
    --------
    >>> import dataclasses
    >>> import diffsolve as ds
    >>> "rtol" in {f.name for f in dataclasses.fields(ds.linear.LinearSolveSettings)}
    True
    """

    method: str
    rtol: float
    atol: float
    maxiter: int | None
    M: Any
    omega: float
    callback: Any
    check_every: int | None
    model: Any
    k: int
    smoother: str | None
    throw: bool

    @property
    def fixed_budget(self) -> bool:
        """``rtol = atol = 0``: run exactly ``maxiter`` iterations."""
        return self.rtol == 0 and self.atol == 0 and self.method != "direct"


def _check_b(b, op: MatrixOperator, where: str = WHERE):
    b = V.float_array(where, "b", b, min_ndim=1, max_ndim=2)
    if b.shape[0] != op.n:
        raise ValueError(
            f"{where}: b has shape {tuple(b.shape)} but A is {op.shape}; b must have shape "
            f"({op.n},) or ({op.n}, k)"
        )
    return b


def _result_dtype(op: MatrixOperator, b, xp):
    dtype = xp.result_type(op.dtype, b.dtype) if op.kind != "operator" else b.dtype
    return dtype if xp.isdtype(dtype, "real floating") else xp.float64


def _settings(method, rtol, atol, maxiter, x0, M, omega, callback, check_every, b, model, k,
              smoother, throw, deprecated, *, xp, dtype, where: str = WHERE) -> LinearSolveSettings:
    given: Any = {"rtol": rtol, "maxiter": maxiter}  # reused below for the option's name
    for old, new in RENAMED.items():
        # the new name is a parameter of solve: "given" means "not at its default"
        if old in deprecated and given[new] != _defaults()[new]:
            raise TypeError(f"{where}: got both {old}= (deprecated) and {new}=; pass only "
                            f"{new}=")
    options = V.renamed_options(where, deprecated, RENAMED)
    if "rtol" in options:
        rtol = options.pop("rtol")
    if "maxiter" in options:
        maxiter = options.pop("maxiter")
    V.unexpected_options(where, options, (
        "method", "x0", "rtol", "atol", "maxiter", "M", "omega", "callback", "check_every",
        "model", "k", "smoother", "throw"))
    method = V.choice(where, "method", method, METHODS)
    rtol, atol = V.tolerances(where, resolve_rtol(xp, dtype, rtol, RTOL), atol)
    maxiter = V.positive_int(where, "maxiter", maxiter, allow_none=True)
    check_every = V.positive_int(where, "check_every", check_every, allow_none=True)
    throw = V.boolean(where, "throw", throw)
    callback = V.callback(where, callback)
    if method != "dcdm" and (model is not None or k != 2 or smoother != "auto"):
        raise ValueError(f"{where}: model, k and smoother are options of method='dcdm'; "
                         f"method={method!r} does not use them")
    if method == "dcdm":
        k = V.positive_int(where, "k", k)
        smoother = V.choice(where, "smoother", smoother, SMOOTHERS)
        if M is not None:
            raise ValueError(f"{where}: method='dcdm' takes its directions from model, not "
                             "from a preconditioner M; drop M, or use method='pcg'")
    if method != "direct" and rtol == 0 and atol == 0 and maxiter is None:
        raise ValueError(f"{where}: rtol = atol = 0 runs exactly maxiter iterations of "
                         f"{method}; pass maxiter, or set rtol (e.g. 1e-8) or atol > 0")
    if method == "direct" and (M is not None or x0 is not None or callback is not None):
        given = "x0" if x0 is not None else "M" if M is not None else "callback"
        raise ValueError(
            f"{where}: x0, M and callback are used by iterative methods only; "
            f"method='direct' got {given}: drop it, or choose method='cg'"
        )
    if M is not None and method in RELAXATION_METHODS:
        raise ValueError(f"{where}: method={method!r} builds its own SOR/SSOR(omega) "
                         "preconditioner; drop M, or use method='pcg' with your M")
    if omega is not None and method not in RELAXATION_METHODS:
        raise ValueError(f"{where}: omega is the relaxation parameter of 'sor' and 'ssor-cg'; "
                         f"method={method!r} does not use it")
    omega = check_omega(1.0 if omega is None else omega, WHERE)
    return LinearSolveSettings(method, rtol, atol, maxiter, M, omega, callback, check_every,
                               model, k, smoother, throw)


def _check_every(settings: LinearSolveSettings) -> int | None:
    """Sweeps between SOR's residual tests: none before the last one on a fixed budget
    (``rtol = atol = 0`` runs exactly ``maxiter`` sweeps, and on the CPU a residual costs
    about as much as a sweep), else the user's ``check_every``."""
    if settings.method == "sor" and settings.fixed_budget and settings.check_every is None:
        return settings.maxiter
    return settings.check_every


def _check_x0(x0, b, where: str = WHERE):
    if x0 is None:
        return None
    x0 = V.float_array(where, "x0", x0, min_ndim=1, max_ndim=2)
    if tuple(x0.shape) != tuple(b.shape):
        raise ValueError(f"{where}: x0 must be an array of b's shape {tuple(b.shape)}, got "
                         f"{tuple(x0.shape)}")
    return x0


def _residual_norm(op: MatrixOperator, x, b, xp):
    """``||b - A x||`` per column (a float for a vector ``b``), without overflow."""
    norm = true_residuals(op, x, b, xp)
    return float(norm[0]) if b.ndim == 1 else norm


def _factorise(op: MatrixOperator, xp):
    if op.kind == "operator":
        raise ValueError(
            f"{WHERE}: method='direct' needs the entries of A, but A is a LinearOperator; "
            "use method='cg' (symmetric positive definite A) or pass the matrix"
        )
    return B.DenseLU(op.A, xp) if op.kind == "dense" else B.SparseLU(op.A, xp)


def _solution_out_of_range(op: MatrixOperator, b, xp) -> bool:
    """Whether ``max|b| / max|A|`` alone exceeds the dtype's range (by a factor ``n``):
    then an overflowing LU solution says nothing about A's conditioning."""
    data = op.A.data if op.kind == "sparse" else op.A
    a_max = float(xp.max(xp.abs(data)))
    b_max = float(xp.max(xp.abs(b)))
    if not (a_max > 0 and b_max > 0):
        return False
    limit = math.log2(float(xp.finfo(b.dtype).max)) - math.log2(op.n)
    return math.log2(b_max) - math.log2(a_max) > limit


def _direct(op: MatrixOperator, b, settings: LinearSolveSettings, xp, lu=None):
    """LU solve whose verdict reads the true residual: a factorisation that "succeeds" on
    a singular or badly conditioned A (tiny pivots, no zero) returns a huge, wrong x.
    ``lu``: the factor of an earlier solve with the same matrix (factorised here if None)."""
    lu = _factorise(op, xp) if lu is None else lu
    x = None if lu.singular else lu.solve(b)
    if x is None or not B.isfinite_all(xp, x):
        status = Status.BREAKDOWN
        if x is not None and _solution_out_of_range(op, b, xp):
            status = Status.NONFINITE  # a fine A, but x = A⁻¹b is beyond the dtype's range
        x = xp.full_like(b, math.nan)
        residual = xp.full((1 if b.ndim == 1 else b.shape[1],), math.inf, dtype=b.dtype)
        return LinearSolveResult(x=x, n_iters=0, converged=False,
                                 residual_norm=float(residual[0]) if b.ndim == 1 else residual,
                                 status=status), lu
    residual = true_residuals(op, x, b, xp)
    if settings.rtol == 0 and settings.atol == 0:
        converged = True  # no tolerance asked for: the finite LU solution is the answer
    else:
        # LU cannot promise a residual below about n·eps·||b|| (float32 at rtol=1e-8 is
        # not a failure of the factorisation), capped at sqrt(eps): a singular or badly
        # conditioned A misses that by orders of magnitude
        eps = float(xp.finfo(b.dtype).eps)
        rtol = max(settings.rtol, min(10 * op.n * eps, math.sqrt(eps)))
        converged = bool(xp.all(residual <= thresholds(b, rtol, settings.atol, xp)))
    status = Status.SUCCESS if converged else Status.BREAKDOWN
    return LinearSolveResult(x=x, n_iters=0, converged=converged,
                             residual_norm=float(residual[0]) if b.ndim == 1 else residual,
                             status=status), lu


def _solve_shapes(A, b, **kwargs):
    # only shapes and dtypes are read here: A and b may be JAX tracers
    dtype = b.dtype if B.is_linear_operator(A) else B.promote_real_floating(A.dtype, b.dtype)
    residual_shape = () if b.ndim == 1 else (b.shape[1],)
    return {
        "x": (tuple(b.shape), dtype),
        "n_iters": ((), "int64"),
        "converged": ((), "bool"),
        "residual_norm": (residual_shape, dtype),
        "status": ((), "int64"),
    }


def _solve_bwd(ctx, cotangents):
    A, b = ctx.args[:2]
    op, xp = as_operator(A, b, WHERE)
    if ctx.residuals is not None:
        prepared, settings = ctx.residuals
    else:
        # the forward ran elsewhere (JAX under jit keeps arrays only): validate the same
        # options again, through the same function, and prepare from scratch
        options = {**_defaults(), **ctx.kwargs}
        deprecated = {k: options.pop(k) for k in list(options) if k not in _defaults()}
        options.pop("x0", None)
        settings = _settings(b=b, x0=None, deprecated=deprecated, xp=xp,
                             dtype=ctx.result.x.dtype, **options)
        prepared = _factorise(op, xp) if settings.method == "direct" else None
    x = ctx.result.x
    lam = adjoint_solution(op, x, cotangents["x"], settings, prepared, xp)
    b_bar = xp.astype(lam, b.dtype) if xp.isdtype(b.dtype, "real floating") else None
    if op.kind == "dense":
        A_bar = -(lam[:, None] * x[None, :]) if x.ndim == 1 else -(lam @ xp.matrix_transpose(x))
        A_bar = xp.astype(A_bar, A.dtype) if xp.isdtype(A.dtype, "real floating") else A_bar
    elif op.kind == "sparse":
        M = op.A
        sampled_outer = B.get_kernel(xp, "sparse.csr_sampled_outer")
        g = xp.empty((M.nnz,), dtype=x.dtype, device=B.device(x))
        g = sampled_outer(M.indptr, M.indices, B.contiguous(xp, lam), B.contiguous(xp, x), g)
        A_bar = xp.astype(-g, M.data.dtype)
    else:
        A_bar = None
    return A_bar, b_bar


def adjoint_solution(op: MatrixOperator, x, x_bar, settings: LinearSolveSettings, prepared,
                     xp, *, plans=None, transposed=None):
    """``λ = A⁻ᵀ x̄`` by the forward's method, tolerances and prepared data; a failed adjoint
    solve is reported (warned, or raised with ``throw``) as the forward's would be.

    ``plans``: the Krylov plans of a :class:`~._prepared.PreparedSolve` (reused for a
    symmetric A); ``transposed``: its ``(Aᵀ, SOR data of Aᵀ)`` for SOR's adjoint, built
    here when None.
    """
    method = settings.method
    x_bar = xp.astype(x_bar, x.dtype)
    what = "the adjoint solve Aᵀλ = x̄"
    if method == "direct":
        lam = prepared.solve(x_bar, trans=True) if not prepared.singular else None
        if lam is None:
            lam = xp.full_like(x_bar, math.nan)
        adjoint = None
    elif method == "dcdm":
        # A is symmetric (checked by the forward): Aᵀλ = x̄ is solved with the same model
        adjoint = dcdm_solve(op, x_bar, model=settings.model, k=settings.k,
                             smoother=settings.smoother, x0=None,
                             rtol=settings.rtol, atol=settings.atol, maxiter=settings.maxiter,
                             callback=None, what=what, prepared=prepared,
                             check_symmetric=False)
        lam = adjoint.x
    else:
        symmetric = method in CG_FAMILY
        # CG-family forwards checked that A is symmetric: Aᵀλ = x̄ is solved with A itself,
        # reusing its preconditioner (SSOR colouring, Jacobi diagonal). SOR accepts
        # non-symmetric A, so its adjoint relaxes on Aᵀ with the same ω.
        if symmetric:
            op_t, prepared_t = op, prepared
        else:
            op_t, prepared_t = transposed if transposed is not None else (op.transpose(), None)
        adjoint = iterative_solve(
            op_t, x_bar, method=method, x0=None,
            rtol=settings.rtol, atol=settings.atol, maxiter=settings.maxiter, M=settings.M,
            omega=settings.omega, callback=None, check_every=_check_every(settings), what=what,
            prepared=prepared_t, check_symmetric=False,
            plans=plans if symmetric else None)
        lam = adjoint.x
    if adjoint is not None and B.isfinite_all(xp, x_bar):
        # the adjoint solve is a solve of its own: its failure is reported, not hidden
        # (a NaN cotangent gives NaN gradients by design and is not a failure)
        report(_adjoint_result(adjoint, lam), throw=settings.throw,
               fixed_budget=settings.fixed_budget)
    return lam


def _adjoint_result(out, lam):
    residual = out.residual_norm
    return _AdjointReport(LinearSolveResult(
        x=lam, n_iters=out.n_iters, converged=out.converged,
        residual_norm=residual if residual is None or lam.ndim == 2 else float(residual[0]),
        status=out.status))


@dataclass(frozen=True)
class _AdjointReport:
    result: LinearSolveResult

    @property
    def status(self):
        return self.result.status

    @property
    def message(self):
        return f"{WHERE}: the adjoint solve Aᵀλ = x̄ {self.result.message}"


def _forward(A, b, method, x0, rtol, atol, maxiter, M, omega, callback, check_every, model,
             k, smoother, throw, deprecated):
    """Validate, solve; ``(result, (prepared, settings))`` without reporting the status."""
    op, xp = as_operator(A, b, WHERE)
    b = _check_b(b, op)
    dtype = _result_dtype(op, b, xp)
    settings = _settings(method, rtol, atol, maxiter, x0, M, omega, callback, check_every,
                         b, model, k, smoother, throw, deprecated, xp=xp, dtype=dtype)
    x0 = _check_x0(x0, b)
    b = xp.astype(b, dtype, copy=False)
    return run_validated(op, b, x0, settings, xp)


def run_validated(op: MatrixOperator, b, x0, settings: LinearSolveSettings, xp, *,
                  prepared=None, plans=None, check_symmetric: bool = True):
    """Solve with validated arguments (``b`` in the solve's dtype); ``(result, (prepared,
    settings))`` without reporting the status. ``prepared``: the LU factor, preconditioner,
    SOR or DCDM data of an earlier solve with the same matrix and method (made here when
    None); ``plans``: a dict in which the CG family keeps its Krylov set-up per shape and
    dtype of ``b``; ``check_symmetric=False`` where the matrix was tested before."""
    if settings.method == "direct":
        res, lu = _direct(op, b, settings, xp, prepared)
        return res, (lu, settings)
    if settings.method == "dcdm":
        out = dcdm_solve(op, b, model=settings.model, k=settings.k, smoother=settings.smoother,
                         x0=x0, rtol=settings.rtol,
                         atol=settings.atol, maxiter=settings.maxiter,
                         callback=settings.callback, what="the solve", prepared=prepared,
                         check_symmetric=check_symmetric)
    else:
        out = iterative_solve(op, b, method=settings.method, x0=x0, rtol=settings.rtol,
                              atol=settings.atol, maxiter=settings.maxiter, M=settings.M,
                              omega=settings.omega, callback=settings.callback,
                              check_every=_check_every(settings), what="the solve",
                              prepared=prepared, check_symmetric=check_symmetric,
                              plans=plans)
    residual = out.residual_norm
    res = LinearSolveResult(x=out.x, n_iters=int(out.n_iters), converged=bool(out.converged),
                            residual_norm=float(residual[0]) if b.ndim == 1 else residual,
                            status=Status(int(out.status)))
    return res, (out.prepared, settings)


def solve_unreported(A, b, **options):
    """:func:`solve` without its warning or exception: the caller reads ``status``.

    For solvers that call ``solve`` (the ω bandits, whose own differentiable ``solve``
    hands the residuals to this module's backward rule). Returns ``(result, residuals)``
    with ``residuals = (prepared, settings)``.
    """
    named = {name: options.pop(name) for name in list(options) if name in _defaults()}
    return _forward(A, b, deprecated=options, **{**_defaults(), **named})


def _defaults() -> dict[str, Any]:
    """The keyword defaults of :func:`solve`, read from its signature (written once)."""
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = {name: p.default for name, p in inspect.signature(solve.fwd).parameters.items()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return _DEFAULTS


_DEFAULTS: dict[str, Any] | None = None


@custom_vjp(_solve_bwd, _solve_shapes, LinearSolveResult)
def solve(A: Matrix, b: Array, *, method: str = "direct", x0: Array | None = None,
          rtol: float | None = None, atol: float = 0.0, maxiter: int | None = None,
          M: Matrix | str | None = None, omega: float | None = None,
          callback: Callback[LinearSolveState] | None = None, check_every: int | None = None,
          model: ConvDirectionModel | None = None, k: int = 2, smoother: str | None = "auto",
          throw: bool = False, **deprecated: Any) -> tuple[LinearSolveResult, Any]:
    """Solve ``A x = b``, differentiably in ``A`` and ``b``.

    Parameters
    ----------
    A : array (n, n), sparse matrix, diffsolve.CSR or LinearOperator
        Dense NumPy/CuPy (or any array-API) matrix, SciPy / CuPy sparse matrix (converted
        to canonical CSR, no device move), :class:`diffsolve.CSR`, or
        ``scipy.sparse.linalg.LinearOperator`` (CG family only; not differentiated).
        float32 or float64 (integers are promoted to float64; float16, complex and bool
        raise ``TypeError``).
    b : array, shape (n,) or (n, k)
        Right-hand side(s); the columns of a 2-D ``b`` are solved together. Same dtype
        policy as ``A``; NaN/inf entries and size 0 raise ``ValueError``.
    method : {"direct", "cg", "pcg", "sor", "ssor-cg", "dcdm"}
        ``"direct"``: LU (LAPACK / SuperLU on the CPU, cuSOLVER on the GPU), its factor
        reused by the adjoint; its true residual decides ``converged``. ``"cg"``:
        conjugate gradients (:func:`diffsolve.krylov.cg`) for symmetric positive definite
        A, sparse products through the compiled CSR kernels. ``"pcg"``: CG preconditioned
        by ``M`` (default ``M="jacobi"``). ``"sor"``: stationary SOR(ω) iteration (Numba
        sweeps on the CPU; multicolour SOR on the GPU, a different row ordering).
        ``"ssor-cg"``: CG preconditioned by one SSOR(ω) sweep. ``"dcdm"``: the Deep
        Conjugate Direction Method (Kaneda et al. 2023) with the network ``model``, for
        symmetric positive definite A of a regular grid's 5-point (7-point in 3-D)
        stencil (see ``docs/dcdm.md``).
    x0 : array, optional
        Initial guess for iterative methods (a warm start), same shape as ``b``.
    rtol : float, optional
        Default ``1e-8`` in float64 and ``64 eps`` (7.6e-6) in float32, where rounding
        keeps the true residual above ``1e-8`` (``diffsolve._tolerance``).
    atol : float
        With ``rtol``, every method reports ``converged`` from the true residual:
        ``||b - A x|| <= max(rtol ||b||, atol)`` per column, computed without overflow
        (each column is scaled by a power of two near ``max|b|``). Iterative methods stop
        there; ``rtol = atol = 0`` runs exactly ``maxiter`` iterations (then
        ``status=MAX_ITERATIONS`` without a warning). ``"direct"`` tests its residual
        against ``rtol`` raised to what LU promises, ``min(10 n eps, sqrt(eps))``
        (``rtol = atol = 0`` skips the test); a miss is ``Status.BREAKDOWN`` (singular or
        ill-conditioned A). The adjoint solve uses the same tolerances.
    maxiter : int, optional
        Iteration limit (default ``10 n`` for the CG family and DCDM, 10 000 sweeps for
        SOR).
    M : callable, LinearOperator, matrix or "jacobi", optional
        Preconditioner for ``"cg"`` / ``"pcg"`` approximating ``A⁻¹`` (symmetric positive
        definite).
    omega : float in (0, 2), optional
        Relaxation parameter of ``"sor"`` and ``"ssor-cg"`` (default 1: Gauss–Seidel /
        symmetric Gauss–Seidel). :class:`diffsolve.linear.OmegaBandit` learns it online
        across a sequence of systems.
    callback : callable, optional
        ``callback(state)`` after every iteration, with a
        :class:`~diffsolve.linear.LinearSolveState` ``(n_iters, x, residual_norm)``;
        returning ``True`` stops the solve with ``status=Status.STOPPED`` (no warning).
    check_every : int, optional
        Iterations between convergence tests (each reads one number from the GPU);
        default 1 on the CPU and 8 on CuPy.
    model : ConvDirectionModel, optional
        ``method="dcdm"`` only: the direction network, bound to the grid of the unknowns
        (:meth:`ConvDirectionModel.on_grid`; an unbound model assumes a square/cubic grid
        and checks that A is that grid's stencil) and on b's device
        (:meth:`ConvDirectionModel.to`). None: the shipped 2-D Poisson model
        ``"poisson2d-multilevel"`` (its depth follows the grid; needs the 5-point matrix of
        a square grid).
    k : int
        ``method="dcdm"`` only: directions kept for A-orthogonalisation (paper: 2). When
        the network's directions stagnate the solve continues with CG (SGS-preconditioned
        CG with the smoother) and warns with ``diffsolve.linear.DirectionFallbackWarning``.
    smoother : {"auto", "ssor", None}
        ``method="dcdm"`` only. ``"ssor"``: each direction is a two-level cycle, a symmetric
        Gauss–Seidel sweep before and after the network's correction (scaled by its
        energy-optimal step), so the network handles the smooth error and the sweeps the
        rough and coefficient-driven part; it needs A's entries. None: the network's output
        alone (the paper's method). ``"auto"`` (default): ``"ssor"`` for a matrix, None for a
        LinearOperator. With the shipped Poisson models it needs fewer iterations than
        IC(0)-PCG on 2-D and 3-D Poisson, log-normal coefficients, Neumann walls and
        unseen obstacles, where the network alone often falls back to CG; an iteration
        costs two sweeps and two products more (``docs/dcdm.md``).
    throw : bool
        ``False`` (default): a solve that fails warns with
        :class:`diffsolve.ConvergenceWarning` and returns its status. ``True``: raise the
        :class:`diffsolve.SolveError` subclass of the status (``MaxIterationsError``,
        ``BreakdownError``, ...), which carries the result.
    **deprecated
        ``tol`` (now ``rtol``) and ``max_iter`` (now ``maxiter``) still work for one
        release, with a ``DeprecationWarning``.

    Returns
    -------
    LinearSolveResult
        ``x`` (differentiable), ``n_iters``, ``converged``, ``residual_norm``
        (``||b - A x||`` recomputed at the end), ``status``, ``message``, ``info`` (0, the
        iteration count when not converged, -1 for a breakdown, as SciPy).

    Raises
    ------
    ValueError, TypeError
        Bad input: a wrong shape or dtype, an unknown option value, an option out of range,
        arrays from two libraries. The message names the argument, what was received and
        what would work.
    diffsolve.SolveError
        Only with ``throw=True``: the subclass matching the result's ``status``
        (:class:`~diffsolve.MaxIterationsError`, :class:`~diffsolve.NonFiniteError`, ...),
        carrying the :class:`LinearSolveResult` as ``result``.

    Warns
    -----
    diffsolve.ConvergenceWarning
        With ``throw=False`` (the default), when the solve stops without meeting its
        tolerance; the :class:`LinearSolveResult` is returned and its ``message`` says what to
        try. A budget requested on purpose (``rtol = atol = 0``) does not warn.

    See Also
    --------
    diffsolve.krylov.cg : The conjugate-gradient kernel behind ``method="cg"`` / ``"pcg"``.
    diffsolve.linear.OmegaBandit : Learn ``omega`` of ``"sor"`` / ``"ssor-cg"`` over a sequence.
    diffsolve.linear.pretrained_direction_model : The shipped network of ``method="dcdm"``.
    diffsolve.vjp : Differentiate a solve without a framework.

    Notes
    -----
    Backward rule: with ``λ = A⁻ᵀ x̄`` solved by the same method, ``b̄ = λ`` and
    ``Ā = -λ xᵀ``; for sparse ``A`` only the stored entries, ``Ā_ij = -λ_i x_j``, returned
    as the gradient of the CSR data array (a sparse matrix of A's pattern from
    :func:`diffsolve.vjp`). A failed adjoint solve warns (or raises with ``throw=True``)
    like the forward; a NaN/inf cotangent gives NaN gradients.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> res = ds.linear.solve(A, np.array([1.0, 2.0]), method="cg")
    >>> res.converged, res.status.name, np.allclose(A @ res.x, [1.0, 2.0])
    (True, 'SUCCESS', True)
    """
    res, residuals = _forward(A, b, method, x0, rtol, atol, maxiter, M, omega, callback,
                              check_every, model, k, smoother, throw, deprecated)
    settings = residuals[1]
    report(res, throw=settings.throw, fixed_budget=settings.fixed_budget)
    return res, residuals
