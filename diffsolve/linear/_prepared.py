"""``diffsolve.linear.prepare``: one matrix, many right-hand sides.

A sequence of solves with the same ``A`` (time stepping, a Newton method with a frozen
Jacobian, a bilevel inner loop) pays in :func:`diffsolve.linear.solve` for what depends on
``A`` alone on every call: validating it and the options, the symmetry test of the CG
family, the LU factor, the preconditioner or SOR data and the Krylov set-up. A
:class:`PreparedSolve` does all of that once and keeps it; each ``solve(b)`` then validates
``b`` and runs the same code path, with the same verdict, as ``linear.solve``.
"""

from __future__ import annotations

from typing import Any

from .. import _backend as B
from .._autodiff import DifferentiableFunction
from .._status import report
from .._typing import Array, Callback, Matrix
from ._direction_model import ConvDirectionModel
from ._iterative import CG_FAMILY, check_symmetric
from ._operator import as_operator
from ._relaxation import Relaxation
from ._result import LinearSolveResult, LinearSolveState
from ._solve import (
    LinearSolveSettings,
    _check_b,
    _check_x0,
    _factorise,
    _result_dtype,
    _settings,
    _solve_shapes,
    adjoint_solution,
    run_validated,
)

__all__ = ["PreparedSolve", "prepare"]

WHERE = "diffsolve.linear.prepare"
WHERE_SOLVE = "diffsolve.linear.PreparedSolve.solve"


class PreparedSolve:
    """``A x = b`` for one matrix ``A`` and many ``b``, made by :func:`prepare`.

    ``solve(b, x0=None)`` (or calling the object) returns the
    :class:`~diffsolve.linear.LinearSolveResult` that ``diffsolve.linear.solve(A, b,
    **options)`` returns, status, warning and ``throw`` included, and is differentiable in
    ``b`` (:func:`diffsolve.vjp`, :func:`diffsolve.to_torch`, ...): the adjoint solve
    ``Aᵀλ = x̄`` reuses the prepared data. ``A`` is fixed, so it gets no gradient; for
    gradients with respect to ``A`` call :func:`diffsolve.linear.solve`.

    Attributes
    ----------
    method : str
        The method the solves use.
    shape : tuple of int
        ``(n, n)``.
    settings : LinearSolveSettings
        The validated options, for ``A``'s dtype (a ``b`` that promotes the solve to
        float64 gets float64's default ``rtol``, as in ``linear.solve``).

    See Also
    --------
    diffsolve.linear.prepare : Makes this.
    diffsolve.linear.solve : One solve, differentiable in ``A`` and ``b``.

    Examples
    --------
    >>> import numpy as np
    >>> import diffsolve as ds
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> solver = ds.linear.prepare(A, method="cg")
    >>> [bool(np.allclose(A @ solver.solve(b).x, b)) for b in np.eye(2)]
    [True, True]
    """

    def __init__(self, A: Matrix, options: dict[str, Any]) -> None:
        op, xp = as_operator(A, None, WHERE)
        if op.kind != "operator":
            # the solver's own copy: an A changed in place later cannot go stale against
            # its factor, preconditioner or symmetry test
            op = op.copy()
        self._op, self._xp, self._options = op, xp, options
        dtype = op.dtype if op.kind != "operator" else xp.float64
        self._settings: dict[Any, LinearSolveSettings] = {}
        self.settings = self._settings_for(dtype)
        method = self.settings.method
        self.method, self.shape = method, tuple(op.shape)
        self._prepared: Any = None
        self._plans: dict = {}
        self._transposed: Any = None
        if method == "direct":
            self._prepared = _factorise(op, xp)
        elif method in CG_FAMILY or method == "dcdm":
            check_symmetric(op, xp, method, WHERE)
        if method == "sor":
            self._prepared = Relaxation(op, self.settings.omega, WHERE)
        self.solve = DifferentiableFunction(
            self._forward, self._backward, self._shapes, LinearSolveResult,
            public_name=WHERE_SOLVE)

    def __call__(self, b: Array, *, x0: Array | None = None) -> LinearSolveResult:
        """``self.solve(b, x0=x0)``."""
        return self.solve(b, x0=x0)

    def __repr__(self) -> str:
        return f"<PreparedSolve method={self.method!r} shape={self.shape}>"

    def _settings_for(self, dtype) -> LinearSolveSettings:
        settings = self._settings.get(dtype)
        if settings is None:
            o = self._options
            settings = self._settings[dtype] = _settings(
                o["method"], o["rtol"], o["atol"], o["maxiter"], None, o["M"], o["omega"],
                o["callback"], o["check_every"], None, o["model"], o["k"], o["smoother"],
                o["throw"], {}, xp=self._xp, dtype=dtype, where=WHERE)
        return settings

    def _forward(self, b: Array, *, x0: Array | None = None):
        xp, op = self._xp, self._op
        if not B.is_array(b):
            raise TypeError(f"{WHERE_SOLVE}: b must be an array of shape ({op.n},) or "
                            f"({op.n}, k), got a {type(b).__name__} (wrap lists with "
                            "numpy.asarray)")
        if B.array_namespace(b) is not xp:
            raise TypeError(f"{WHERE_SOLVE}: A was prepared as a {xp.__name__} matrix but b "
                            f"is a {type(b).__module__}.{type(b).__name__}; pass b from the "
                            "same library and device (prepare A again for the other one)")
        b = _check_b(b, op, WHERE_SOLVE)
        dtype = _result_dtype(op, b, xp)
        settings = self._settings_for(dtype)
        if x0 is not None and settings.method == "direct":
            raise ValueError(f"{WHERE_SOLVE}: x0 is used by iterative methods only; "
                             "method='direct' got it: drop it, or prepare with method='cg'")
        x0 = _check_x0(x0, b, WHERE_SOLVE)
        b = xp.astype(b, dtype, copy=False)
        res, (prepared, _) = run_validated(op, b, x0, settings, xp, prepared=self._prepared,
                                           plans=self._plans, check_symmetric=False)
        self._prepared = prepared  # what the first solve made (preconditioner, DCDM data)
        report(res, throw=settings.throw, fixed_budget=settings.fixed_budget)
        return res, settings

    def _backward(self, ctx, cotangents):
        xp, op = self._xp, self._op
        b = ctx.args[0]
        x = ctx.result.x
        settings = ctx.residuals if ctx.residuals is not None else \
            self._settings_for(x.dtype)
        if settings.method == "sor" and self._transposed is None:
            op_t = op.transpose()
            self._transposed = (op_t, Relaxation(op_t, settings.omega, WHERE))
        lam = adjoint_solution(op, x, cotangents["x"], settings, self._prepared, xp,
                               plans=self._plans, transposed=self._transposed)
        return (xp.astype(lam, b.dtype) if xp.isdtype(b.dtype, "real floating") else None,)

    def _shapes(self, b, **kwargs):
        return _solve_shapes(self._op.A, b)


def prepare(A: Matrix, *, method: str = "direct", rtol: float | None = None,
            atol: float = 0.0, maxiter: int | None = None, M: Matrix | str | None = None,
            omega: float | None = None, callback: Callback[LinearSolveState] | None = None,
            check_every: int | None = None, model: ConvDirectionModel | None = None,
            k: int = 2, smoother: str | None = "auto", throw: bool = False) -> PreparedSolve:
    """Validate ``A`` and the options once and prepare what every solve with ``A`` reuses.

    The options are those of :func:`diffsolve.linear.solve` (``x0`` goes to each solve).
    What is prepared here, once: the validation of ``A`` and the options, a copy of ``A``
    (the solver does not see later in-place changes; prepare again after changing ``A``),
    the LU factor (``"direct"``: SciPy's ``factorized``), the symmetry test (CG family,
    ``"dcdm"``), the SOR data (``"sor"``); the preconditioner (Jacobi diagonal, SSOR
    colouring), the Krylov set-up and the DCDM data on the first solve that needs them.

    Parameters
    ----------
    A : array (n, n), sparse matrix, diffsolve.CSR or LinearOperator
        As in :func:`diffsolve.linear.solve`.
    method, rtol, atol, maxiter, M, omega, callback, check_every, model, k, smoother, throw
        As in :func:`diffsolve.linear.solve`; ``rtol=None`` resolves per dtype of the
        solve.

    Returns
    -------
    PreparedSolve
        ``solver.solve(b, x0=None)`` (or ``solver(b)``) returns the
        :class:`~diffsolve.linear.LinearSolveResult` of ``linear.solve(A, b, ...)``,
        differentiable in ``b``.

    Raises
    ------
    ValueError, TypeError
        What :func:`diffsolve.linear.solve` raises for ``A`` and the options, here, before
        any right-hand side (a non-symmetric ``A`` for the CG family included).

    See Also
    --------
    diffsolve.linear.solve : One solve, differentiable in ``A`` and ``b``.

    Notes
    -----
    On a 576-unknown Poisson system with ``method="cg"`` (a 0.20 ms compiled CG loop),
    ``solver.solve(b)`` adds about 65 µs to the loop where ``linear.solve`` adds about 175
    (2.4x faster than SciPy's ``cg``); SOR's 20 sweeps on 512² add 6.6 % instead of 15 %
    (``bench/bench_speed_setup.py``). What is left is the solve's own contract: checking
    and scaling ``b`` and the true residual that ``converged`` reads.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> import diffsolve as ds
    >>> A = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(50, 50), format="csr")
    >>> solver = ds.linear.prepare(A, method="cg", rtol=1e-10)
    >>> for t in range(3):
    ...     res = solver.solve(np.full(50, float(t + 1)))
    ...     assert res.converged
    >>> g = ds.vjp(solver.solve, np.ones(50))[1](x=np.ones(50))[0]  # λ = A⁻ᵀ x̄
    >>> bool(np.allclose(A.T @ g, np.ones(50)))
    True
    """
    options = dict(method=method, rtol=rtol, atol=atol, maxiter=maxiter, M=M, omega=omega,
                   callback=callback, check_every=check_every, model=model, k=k,
                   smoother=smoother, throw=throw)
    return PreparedSolve(A, options)
