"""Facts about a matrix that a sequence of solves with the same matrix computes once.

A user who calls ``solve(A, b_k, method="cg")`` for many right-hand sides with one ``A``
would otherwise pay the symmetry test ``max|A - Aᵀ|`` (a sparse transpose and a sparse
difference, several passes over A) on every call. The cache is keyed on the matrix's
*content*, not on the Python object: a fingerprint made of its shape, dtype and weighted
sums, modulo 2⁶⁴, of the bit patterns of its entries and of its index arrays (a pass or
two over each). A matrix mutated in place, by however little, therefore gets a new key
and is tested again; a different matrix that reuses a freed buffer is no stale hit either.
Two different matrices would share a key only if several of these sums collided modulo
2⁶⁴ at once.

NumPy only: on CuPy a fingerprint costs a device synchronisation, about what it saves.
"""

from __future__ import annotations

from collections import OrderedDict

from .. import _backend as B

__all__ = ["fingerprint", "known_symmetric", "remember_symmetric"]

_MAX_ENTRIES = 16
_symmetric: OrderedDict[tuple, bool] = OrderedDict()


def fingerprint(op) -> tuple | None:
    """A key that changes whenever the entries or the pattern of ``op.A`` change, or None
    where the cache does not apply (a LinearOperator, a GPU array, an empty matrix)."""
    xp = op.xp
    if op.kind == "operator" or not B.is_numpy(xp):
        return None
    A = op.A
    if op.kind == "sparse":
        if A.nnz == 0:
            return None
        parts: tuple = (A.data, A.indices, A.indptr)
    else:
        parts = (xp.reshape(A, (-1,)),)
    sums = tuple(B.content_checksum(p) for p in parts)
    return (op.kind, str(op.dtype), tuple(op.shape), *(p.shape[0] for p in parts), *sums)


def known_symmetric(key: tuple | None) -> bool:
    """Whether a matrix with this fingerprint passed the symmetry test before."""
    if key is None or key not in _symmetric:
        return False
    _symmetric.move_to_end(key)
    return True


def remember_symmetric(key: tuple | None) -> None:
    """Record that the matrix with this fingerprint passed the symmetry test."""
    if key is None:
        return
    _symmetric[key] = True
    _symmetric.move_to_end(key)
    while len(_symmetric) > _MAX_ENTRIES:
        _symmetric.popitem(last=False)
