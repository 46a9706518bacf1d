"""Argument checks shared by the Numba kernels and their CUDA twins.

Neither Numba nor a raw CUDA kernel checks bounds, so a wrong shape would corrupt memory
silently; the Python dispatchers of both twins run the same checks first.
"""

from __future__ import annotations

import numpy as np


def check_relaxation_system(indptr, indices, data, diag, b, x):
    """Validate the shapes and dtypes shared by every SOR sweep; returns ``n``."""
    n = indptr.shape[0] - 1
    if indices.shape != data.shape:
        raise ValueError(
            f"indices and data must have the same shape, got {indices.shape} and {data.shape}"
        )
    if diag.shape != (n,):
        raise ValueError(f"diag must have shape {(n,)}, got {diag.shape}")
    if x.ndim not in (1, 2):
        raise ValueError(f"x must be 1-D or 2-D, got {x.ndim}-D")
    if x.shape[0] != n:
        raise ValueError(f"x must have {n} rows (the matrix is {n} x {n}), got shape {x.shape}")
    if b.shape != x.shape:
        raise ValueError(f"b and x must have the same shape, got {b.shape} and {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    if not getattr(x.flags, "writeable", True):  # NumPy only: CuPy arrays are writeable
        raise ValueError("x is updated in place and must be writeable")
    return n


def check_sor_solve_args(indptr, indices, data, diag, b, x, maxiter, check_every,
                         color_ptr, color_rows):
    """Validate the arguments of ``sor_solve``; returns ``(n, maxiter, check_every)``."""
    n = check_relaxation_system(indptr, indices, data, diag, b, x)
    if x.ndim != 1:
        raise ValueError(f"sor_solve takes 1-D b and x, got shape {x.shape}")
    maxiter = int(maxiter)
    check_every = int(check_every)
    if maxiter < 0:
        raise ValueError(f"maxiter must be >= 0, got {maxiter}")
    if check_every < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}")
    if (color_ptr is None) != (color_rows is None):
        raise ValueError("pass both color_ptr and color_rows, or neither")
    return n, maxiter, check_every
