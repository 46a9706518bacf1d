"""SOR and SSOR on one matrix: the stationary iteration and the SSOR preconditioner.

Split ``A = D + L + U``. The forward SOR sweep is ``x <- x + (D/ω + L)⁻¹ (b - A x)``,
computed row by row with already-updated entries; a symmetric (SSOR) sweep is a forward
then a backward sweep. One SSOR sweep from ``x = 0`` with right-hand side ``r`` applies the
SSOR preconditioner ``M⁻¹ r``, ``M = (D + ωL) D⁻¹ (D + ωU) / (ω(2 − ω))``.
(Formulas: Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed., §4.1 and §10.2.)

Backends:

- NumPy: sequential sweeps in Numba (``kernels/cpu/relaxation.py``); a 1-D solve runs the
  whole iteration, residual test included, in one compiled call.
- CuPy: rows are coloured once (greedy / Jones–Plassmann on the GPU) and each colour is
  updated in parallel (multicolour SOR; red–black for the 5-point stencil). This is SOR in
  the colour ordering of the rows, a different iteration from the natural-order CPU sweep:
  iteration counts differ slightly.
- Any other standard namespace (array_api_strict): the same iteration through dense
  triangular solves (``xp.linalg.solve``), a correctness reference for small problems.
"""

from __future__ import annotations

import math

from .. import _backend as B
from ..krylov._common import wants_stop


def check_omega(omega, where: str) -> float:
    if hasattr(omega, "shape") and tuple(omega.shape) == () and hasattr(omega, "item"):
        omega = omega.item()  # a NumPy scalar or 0-d array
    if isinstance(omega, bool) or not isinstance(omega, (int, float)) or \
            not math.isfinite(omega) or not 0 < omega < 2:
        raise ValueError(
            f"{where}: omega must be a number in the open interval (0, 2) (SOR converges "
            f"for SPD A exactly there), got {omega!r}; omega=1 is Gauss-Seidel"
        )
    return float(omega)


class Relaxation:
    """SOR(ω) data prepared for one matrix: CSR parts, diagonal, colouring on the GPU."""

    def __init__(self, op, omega: float, where: str):
        xp = op.xp
        self.xp = xp
        self.omega = omega
        self.where = where
        if op.kind == "operator":
            raise ValueError(
                f"{where}: SOR needs the entries of A, but A is a LinearOperator; pass the "
                "matrix (dense or CSR), or use method='cg'"
            )
        self.n = op.n
        self.csr = op.A if op.kind == "sparse" else B.dense_to_csr(op.A, xp)
        if self.csr is not None:
            diag = self.csr.diagonal()
        else:
            diag = xp.linalg.diagonal(op.A)
        zero = xp.nonzero(diag == 0)[0]
        if zero.shape[0]:
            raise ValueError(
                f"{where}: SOR divides by the diagonal, but A[{int(zero[0])}, {int(zero[0])}] "
                f"is zero or not stored ({zero.shape[0]} such rows); reorder or regularise A, "
                "or use method='direct'"
            )
        self.diag = B.contiguous(xp, xp.astype(diag, op.dtype, copy=False))
        self.kernels = None
        if self.csr is not None:
            names = ("sor_sweep", "ssor_sweep", "sor_solve") if B.is_numpy(xp) else \
                ("sor_sweep_multicolor", "ssor_sweep_multicolor", "sor_solve")
            self.kernels = {name.replace("_multicolor", ""): B.get_kernel(xp, f"relaxation.{name}")
                            for name in names}
            if B.is_cupy(xp):
                coloring = B.get_kernel(xp, "relaxation.greedy_coloring")
                groups = B.get_kernel(xp, "relaxation.color_groups")
                # colour the pattern of A + Aᵀ: for a non-symmetric A two coupled rows could
                # otherwise share a colour, and their parallel update would race
                pattern = B.as_csr(abs(self.csr) + abs(self.csr).T)
                self.color_ptr, self.color_rows = groups(
                    coloring(pattern.indptr, pattern.indices))
        else:
            A = op.A
            D = xp.linalg.diagonal(A)
            lower = xp.tril(A, k=-1)
            upper = xp.triu(A, k=1)
            diag_matrix = A - lower - upper
            self._dense = (A, D, diag_matrix, lower, upper)

    # -- sweeps ---------------------------------------------------------------------------
    def _csr_args(self):
        c = self.csr
        return c.indptr, c.indices, c.data, self.diag

    def _extra(self):
        return (self.color_ptr, self.color_rows) if B.is_cupy(self.xp) else ()

    def sweep(self, b, x, symmetric: bool):
        """One SOR (or SSOR) sweep; returns the new ``x`` (in place on NumPy/CuPy)."""
        if self.kernels is not None:
            if symmetric:
                return self.kernels["ssor_sweep"](*self._csr_args(), b, x, self.omega,
                                                  *self._extra())
            return self.kernels["sor_sweep"](*self._csr_args(), b, x, self.omega, *self._extra())
        xp = self.xp
        A, _, Dm, lower, upper = self._dense
        w = self.omega
        x = x + xp.linalg.solve(Dm / w + lower, b - A @ x)
        if symmetric:
            x = x + xp.linalg.solve(Dm / w + upper, b - A @ x)
        return x

    def precondition(self, r):
        """``M⁻¹ r`` for the SSOR preconditioner: one symmetric sweep from zero."""
        xp = self.xp
        z = xp.zeros(r.shape, dtype=r.dtype, device=B.device(r))
        return self.sweep(B.contiguous(xp, r), z, symmetric=True)

    def residual_norms(self, op, b, x):
        """``||b - A x||`` per column (shape (1,) for a vector), without overflow."""
        from ..krylov._common import safe_norms

        r = b - op.matvec(x)
        return safe_norms(self.xp, r[:, None] if r.ndim == 1 else r)

    # -- the stationary iteration -------------------------------------------------------
    def iterate(self, op, b, x0, tol, maxiter, symmetric, callback, check_every):
        """SOR iteration to ``||b - A x|| <= tol`` per column.

        Returns ``(x, sweeps, converged, stopped, norm)``; ``callback(sweeps, x, norms)``
        (``norms`` the true residual norms) returning ``True`` stops (``stopped``).
        ``norm`` is the compiled loop's ``||b - A x||`` of the returned ``x`` (squares
        summed in float64), or None where the loop ran in Python. The caller scales ``b``
        so that the squared norms cannot overflow.
        """
        xp = self.xp
        x = B.contiguous_copy(xp, x0) if x0 is not None else xp.zeros_like(b)
        if self.kernels is not None and b.ndim == 1 and callback is None:
            # one compiled call: sweeps and residual tests without returning to Python
            tol_value = float(tol)
            if B.is_cupy(xp):
                n_iters, residual = self.kernels["sor_solve"](
                    *self._csr_args(), b, x, self.omega, symmetric, tol_value, maxiter,
                    color_ptr=self.color_ptr, color_rows=self.color_rows,
                    check_every=check_every)
            else:
                n_iters, residual = self.kernels["sor_solve"](
                    *self._csr_args(), b, x, self.omega, symmetric, tol_value, maxiter,
                    check_every=check_every)
            residual = float(residual)
            return x, int(n_iters), residual <= tol_value, False, residual
        norms = self.residual_norms(op, b, x)
        sweeps = 0
        while True:
            if sweeps % check_every == 0 or sweeps >= maxiter:
                if bool(xp.all(norms <= tol)):
                    return x, sweeps, True, False, None
                if sweeps >= maxiter or not B.isfinite_all(xp, norms):
                    return x, sweeps, False, False, None
            x = self.sweep(b, x, symmetric)
            sweeps += 1
            norms = self.residual_norms(op, b, x)
            if callback is not None and wants_stop(callback(sweeps, x, norms)):
                return x, sweeps, bool(xp.all(norms <= tol)), True, None
