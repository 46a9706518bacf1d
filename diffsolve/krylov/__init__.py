"""The one Krylov module: conjugate gradients, MINRES and GMRES behind one result type.

Every linear system that diffsolve solves iteratively goes through here: ``linear.solve``
(CG family), the implicit systems of ``implicit.custom_root`` and
``bilevel.hypergradient``, and the Newton / implicit / sparse systems of ``ot``.

Stable API::

    cg(A, b, *, x0=None, rtol=None, atol=0.0, maxiter=None, M=None, callback=None,
       check_every=None, batch_axis=None) -> KrylovResult
    minres(A, b, *, x0=None, rtol=None, atol=0.0, maxiter=None, M=None,
           callback=None) -> KrylovResult
    gmres(A, b, *, x0=None, rtol=None, atol=0.0, restart=30, maxiter=None, M=None,
          callback=None) -> KrylovResult

    KrylovResult(x, status, converged, n_iters, residual_norm, message)
    KrylovState(n_iters, x, residual_norm)        # what a callback sees

One policy for all three:

* ``A`` is a callable ``v -> A v`` on arrays of b's shape, a LinearOperator, a dense
  matrix or a sparse matrix; ``M`` (a preconditioner approximating ``A⁻¹``) the same, or an
  array that multiplies elementwise (a diagonal preconditioner).
* One stopping rule: the **true** residual ``||b - A x|| <= max(rtol ||b||, atol)``,
  recomputed at exit; ``converged`` is that test. When a method's recursive residual says
  "converged" but the true one does not, it restarts from the true residual while the
  budget lasts. ``rtol = atol = 0`` runs exactly ``maxiter`` iterations. The default
  ``rtol=None`` is ``1e-8`` in float64 and ``64 eps`` (7.6e-6) in float32.
* Norms cannot overflow: each system is solved for ``b / s`` with ``s`` a power of two
  near ``max|b|``. NaN or inf in ``b``, ``x0`` or the iterates gives ``Status.NONFINITE``
  and a NaN ``x``, never "converged". A zero ``b`` gives ``x = 0`` in 0 iterations.
* Breakdown (``Status.BREAKDOWN``): non-positive curvature in CG, a singular Krylov space
  in GMRES, an indefinite preconditioner or a least-squares stop in MINRES, and a true
  residual that stagnates above the tolerance. The lucky breakdown (the exact solution
  found) is convergence.
* Failures are returned, never warned about or raised: callers read ``status`` and report
  it (``diffsolve._status.report``), or propagate it into their own result.
* ``callback(state) -> bool | None``; returning ``True`` stops with ``Status.STOPPED``.
"""

from ._cg import cg
from ._gmres import gmres
from ._minres import minres
from ._result import KrylovResult, KrylovState

__all__ = ["KrylovResult", "KrylovState", "cg", "gmres", "minres"]
