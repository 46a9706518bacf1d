"""Sparsity-constrained and quadratically regularised optimal transport (work in progress)."""

from __future__ import annotations

__all__ = ["quadratic_ot", "sparse_ot"]


def sparse_ot(a, b, C, k, gamma, *, formulation="semi-dual", tol=1e-9, max_iter=1000,
              solver="lbfgs", throw=False):
    """Sparsity-constrained OT (being written; see issue 5)."""
    raise NotImplementedError("diffsolve.ot.sparse_ot is being written")


def quadratic_ot(a, b, C, gamma, *, formulation="semi-dual", tol=1e-9, max_iter=1000,
                 solver="lbfgs", throw=False):
    """Quadratically regularised OT (being written; see issue 5)."""
    raise NotImplementedError("diffsolve.ot.quadratic_ot is being written")
