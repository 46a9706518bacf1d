"""Lazy access to Dask, and the conversions every entry point of
:mod:`diffsolve.distributed` shares. ``import diffsolve`` never imports Dask; this module
imports it on first use and says how to install it when it is missing."""

from __future__ import annotations

from .. import _backend as B

INSTALL = "pip install 'diffsolve[distributed]' (dask[array] and distributed)"


def dask_modules():
    """``(dask.array, dask)``, imported on first use."""
    try:
        import dask
        import dask.array as da
    except ImportError as err:  # pragma: no cover - dask is an optional extra
        raise ImportError(f"diffsolve.distributed needs Dask: {INSTALL}") from err
    return da, dask


def is_dask_array(x) -> bool:
    """Whether ``x`` is a ``dask.array.Array`` (without importing Dask when it is not
    loaded: an object of a module never imported cannot be a Dask array)."""
    import sys

    mod = sys.modules.get("dask.array")
    return mod is not None and isinstance(x, mod.Array)


def as_dask_array(where: str, name: str, x, *, ndim: int | None = None, min_ndim: int = 0,
                  chunks="auto"):
    """``x`` as a Dask array: Dask arrays as they are, NumPy/CuPy arrays wrapped (their
    chunks stay on their device); anything else is refused by name."""
    da, _ = dask_modules()
    if not is_dask_array(x):
        if not B.is_array(x) or not (B.is_numpy(B.array_namespace(x)) or
                                     B.is_cupy(B.array_namespace(x))):
            raise TypeError(f"{where}: {name} must be a dask.array.Array (or a NumPy/CuPy "
                            f"array), got a {type(x).__module__}.{type(x).__name__}; wrap it "
                            "with dask.array.from_array(x, chunks=...)")
        x = da.from_array(x, chunks=chunks if chunks != "auto" else _default_chunks(x))
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{where}: {name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if x.ndim < min_ndim:
        raise ValueError(f"{where}: {name} must have at least {min_ndim} dimensions (a "
                         f"leading batch dimension), got shape {tuple(x.shape)}")
    if any(s != s for s in x.shape):
        raise ValueError(f"{where}: {name} has unknown chunk sizes {x.shape}; call "
                         f"{name}.compute_chunk_sizes() first")
    return x


def _default_chunks(x):
    """8 blocks along the first axis (the others whole)."""
    n = int(x.shape[0]) if x.ndim else 1
    return (max(1, -(-n // 8)), *tuple(x.shape[1:]))


def meta_like(x, ndim: int, dtype=None):
    """An empty array of ``x``'s chunk type (NumPy or CuPy) with ``ndim`` dimensions, the
    ``meta=`` that tells Dask what the chunks of a new array are."""
    meta = x._meta if is_dask_array(x) else x
    xp = B.array_namespace(meta)
    return xp.empty((0,) * ndim, dtype=dtype if dtype is not None else meta.dtype)
