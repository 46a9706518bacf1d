"""Optimal transport: log-domain Sinkhorn, Sinkhorn–Newton–Sparse, sparsity-constrained and
quadratically regularised OT, each with implicit gradients, batched, on NumPy and CuPy."""

from ._newton import SNSResult, SNSSettings, SNSState, sinkhorn_newton_sparse
from ._result import OTResult, OTState
from ._sinkhorn import SinkhornSettings, sinkhorn
from ._sparse import (
    QuadraticOTResult,
    SparseOTResult,
    SparseOTSettings,
    quadratic_ot,
    sparse_ot,
)

__all__ = [
    "OTResult",
    "OTState",
    "QuadraticOTResult",
    "SNSResult",
    "SNSSettings",
    "SNSState",
    "SinkhornSettings",
    "SparseOTResult",
    "SparseOTSettings",
    "quadratic_ot",
    "sinkhorn",
    "sinkhorn_newton_sparse",
    "sparse_ot",
]
