"""Optimal transport: log-domain Sinkhorn, Sinkhorn–Newton–Sparse, sparsity-constrained and
quadratically regularised OT, each with implicit gradients, batched, on NumPy and CuPy."""

from ._newton import sinkhorn_newton_sparse
from ._sinkhorn import sinkhorn
from ._sparse import quadratic_ot, sparse_ot

__all__ = ["quadratic_ot", "sinkhorn", "sinkhorn_newton_sparse", "sparse_ot"]
