"""``diffsolve.ot.sinkhorn_newton_sparse``: Sinkhorn–Newton–Sparse (Tang et al., ICLR 2024).

Work in progress: the solver is being written (issue 5); the function exists so that
``import diffsolve.ot`` works while the module is built.
"""

from __future__ import annotations

__all__ = ["sinkhorn_newton_sparse"]


def sinkhorn_newton_sparse(a, b, C, eps, **kwargs):
    """Entropic optimal transport by Sinkhorn warm-up then sparse Newton steps."""
    raise NotImplementedError("diffsolve.ot.sinkhorn_newton_sparse is being implemented")
