"""A square linear operator built from whatever ``A`` the user gave, after validation.

``solve`` accepts a dense array, a SciPy/CuPy sparse matrix, a :class:`~diffsolve.CSR` or a
LinearOperator. This module checks it once (square, finite, matching ``b``) and wraps it so
that the solvers only ever call ``op.matvec``. Sparse products go
through the compiled CSR kernel of the array's backend (Numba on the CPU, CUDA on the GPU).
"""

from __future__ import annotations

import math
from typing import Any

from .. import _backend as B
from .. import _validate as V


class MatrixOperator:
    """``A`` as the solvers see it.

    Attributes
    ----------
    kind : {"dense", "sparse", "operator"}
    A : the dense array, the canonical CSR matrix, or the LinearOperator
    shape, dtype
    """

    _matvec_kernel: Any  # the CSR product kernel for kind="sparse", None otherwise

    def __init__(self, A, kind: str, xp):
        self.A = A
        self.kind = kind
        self.xp = xp
        self.shape = tuple(A.shape)
        self.dtype = A.dtype
        self._matvec_kernel = B.get_kernel(xp, "sparse.csr_matvec") if kind == "sparse" else None

    @property
    def n(self) -> int:
        return self.shape[0]

    def matvec(self, x):
        """``A @ x`` for ``x`` of shape (n,) or (n, k)."""
        xp = self.xp
        if self.kind == "dense":
            return self.A @ x
        if self.kind == "sparse":
            A = self.A
            x = B.contiguous(xp, x)
            out = xp.empty(x.shape, dtype=xp.result_type(A.dtype, x.dtype), device=x.device)
            if x.ndim == 2 and x.shape[1] == 1:
                # one column: the 1-D kernel keeps the row sum in a register (about 2x faster)
                self._matvec_kernel(A.indptr, A.indices, A.data, x[:, 0], out[:, 0])
                return out
            return self._matvec_kernel(A.indptr, A.indices, A.data, x, out)
        # scipy's LinearOperator takes (n,) through matvec and (n, k) through matmat
        return self.A.matvec(x) if x.ndim == 1 else self.A.matmat(x)

    def copy(self) -> MatrixOperator:
        """The same operator on a copy of the entries (a LinearOperator is not copied)."""
        if self.kind == "dense":
            return MatrixOperator(self.xp.asarray(self.A, copy=True), "dense", self.xp)
        if self.kind == "sparse":
            return MatrixOperator(self.A.copy(), "sparse", self.xp)
        return self

    def transpose(self) -> MatrixOperator:
        """``Aᵀ`` on the same device (sparse transposes are re-compressed to CSR)."""
        if self.kind == "dense":
            return MatrixOperator(self.xp.matrix_transpose(self.A), "dense", self.xp)
        if self.kind == "sparse":
            return MatrixOperator(B.as_csr(self.A.T), "sparse", self.xp)
        return MatrixOperator(self.A.T, "operator", self.xp)

    def diagonal(self):
        """The diagonal of a dense or sparse A (LinearOperators have none to give)."""
        if self.kind == "dense":
            return self.xp.linalg.diagonal(self.A)
        if self.kind == "sparse":
            return self.A.diagonal()
        return None

    def max_abs_asymmetry(self) -> tuple[float, float]:
        """``(max |A - Aᵀ|, max |A|)`` for dense and sparse matrices (one pass over A)."""
        xp = self.xp
        if self.kind == "dense":
            A = self.A
            return float(xp.max(xp.abs(A - xp.matrix_transpose(A)))), float(xp.max(xp.abs(A)))
        if self.kind == "sparse":
            A = self.A
            if A.nnz == 0:
                return 0.0, 0.0
            diff = A - A.T
            asym = float(abs(diff).max()) if diff.nnz else 0.0
            return asym, float(xp.max(xp.abs(A.data)))
        raise TypeError("max_abs_asymmetry needs the matrix entries")


def as_operator(A, b, where: str):
    """Validate ``A`` (and its size against ``b``) and wrap it; returns ``(op, xp)``.
    ``b=None``: ``A`` alone (:func:`diffsolve.linear.prepare`)."""
    for name, value in (("A", A), ("b", b)):
        if value is not None and \
                type(value).__module__.split(".")[0] in ("torch", "jax", "jaxlib", "autograd"):
            # a framework tensor given to the plain function: say which adapter to use
            V.array_argument(where, name, value, is_array=B.is_array)
    if not (B.is_sparse(A) or B.is_linear_operator(A) or B.is_array(A)):
        raise TypeError(
            f"{where}: A must be a 2-D array, a scipy.sparse / cupyx.scipy.sparse matrix, a "
            f"diffsolve.CSR or a LinearOperator; got a {type(A).__name__} (wrap lists with "
            "numpy.asarray)"
        )
    if b is not None and not B.is_array(b):
        raise TypeError(
            f"{where}: b must be an array of shape (n,) or (n, k), got a {type(b).__name__} "
            "(wrap lists with numpy.asarray)"
        )
    xp = B.array_namespace(A, b, where=where)
    if B.is_sparse(A):
        if isinstance(A, B.CSR):
            M = A.to_sparse()
            if not M.has_canonical_format:
                raise ValueError(
                    f"{where}: A is a diffsolve.CSR whose indices are unsorted or repeated; "
                    "its data array is the differentiable leaf, so it must be canonical: "
                    "build it from a matrix after .sum_duplicates() and .sort_indices()"
                )
        else:
            M = B.as_csr(A)
        kind = "sparse"
    elif B.is_linear_operator(A):
        M, kind = A, "operator"
    else:
        M, kind = A, "dense"
        if A.ndim != 2:
            raise ValueError(
                f"{where}: A must be a 2-D square matrix, got an array of shape "
                f"{tuple(A.shape)}; for a batch of systems call solve once per matrix"
            )
    n_rows, n_cols = M.shape
    if n_rows != n_cols:
        raise ValueError(
            f"{where}: A must be square, got shape ({n_rows}, {n_cols}); a least-squares "
            "problem needs the normal equations (A.T @ A) or a QR/lstsq solver"
        )
    if kind != "operator":
        values = M.data if kind == "sparse" else M
        # the one dtype policy (diffsolve._validate.float_array): integers promote to
        # float64, float16 / bool / complex are refused (the kernels have no such path)
        if xp.isdtype(values.dtype, "integral"):
            M = M.astype("float64") if kind == "sparse" else xp.astype(M, xp.float64)
            values = M.data if kind == "sparse" else M
        elif values.dtype not in (xp.float32, xp.float64):
            raise TypeError(
                f"{where}: A has dtype {values.dtype}; diffsolve solves real systems in "
                "float32 or float64 (integers are promoted to float64): convert A, e.g. "
                "A.astype(np.float64)"
            )
        if math.prod(tuple(M.shape)) == 0:
            raise ValueError(f"{where}: A has shape {tuple(M.shape)} with no entries; pass "
                             "a non-empty square matrix")
        if not B.isfinite_all(xp, values):
            raise ValueError(
                f"{where}: A contains NaN or infinite entries; every entry must be finite"
            )
    return MatrixOperator(M, kind, xp), xp
