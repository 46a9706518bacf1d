"""What the CuPy RawKernel modules share: dtype→C type names, a per-module cache of
compiled kernels keyed by dtypes, 256-thread launches, and input checks.

Each kernel module holds CUDA sources written over typedef'd names (``real_t``,
``index_t`` ...); :class:`KernelCache` prepends the typedefs for the dtypes of a call,
compiles once per combination and keeps the result (CuPy also caches binaries on disk).
"""

from __future__ import annotations

import cupy
import numpy as np

#: Threads per block for every launch. 256 is a multiple of the warp size that keeps
#: enough blocks per SM for latency hiding on all current GPUs.
THREADS_PER_BLOCK = 256

CTYPES = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.int32): "int",
    np.dtype(np.int64): "long long",
}


def ctype(arr, what: str) -> str:
    """C type name for the dtype of `arr`, or TypeError if unsupported."""
    try:
        return CTYPES[np.dtype(arr.dtype)]
    except KeyError:
        raise TypeError(
            f"{what} has unsupported dtype {arr.dtype}; "
            "expected float32/float64 values and int32/int64 indices"
        ) from None


class KernelCache:
    """Compiled kernels of one module, built on first use per dtype combination.

    Parameters
    ----------
    sources : dict
        ``name -> (source, typedef_names)``: the CUDA source of the ``extern "C"`` kernel
        ``name`` and the typedef'd names it is written over, in order.
    """

    def __init__(self, sources: dict):
        self.sources = sources
        self.kernels: dict[tuple, cupy.RawKernel] = {}

    def get(self, name: str, *arrays_and_names) -> cupy.RawKernel:
        """The kernel ``name`` for the dtypes of ``(array, description)`` pairs, in order."""
        ctypes = tuple(ctype(arr, what) for arr, what in arrays_and_names)
        key = (name, ctypes)
        kern = self.kernels.get(key)
        if kern is None:
            source, typedef_names = self.sources[name]
            typedefs = "".join(
                f"typedef {ct} {tn};\n" for ct, tn in zip(ctypes, typedef_names, strict=True)
            )
            kern = cupy.RawKernel(typedefs + source, name)
            self.kernels[key] = kern
        return kern


def launch(kern: cupy.RawKernel, n_threads: int, args: tuple) -> None:
    """Launch `kern` with one thread per work item in 256-thread blocks."""
    if n_threads <= 0:
        # A zero-sized grid is an invalid launch configuration in CUDA.
        return
    n_blocks = (n_threads + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
    kern((n_blocks,), (THREADS_PER_BLOCK,), args)


def as_device(arr, what: str):
    """C-contiguous ``cupy.ndarray`` view (or copy) of an input `arr`."""
    if not isinstance(arr, cupy.ndarray):
        raise TypeError(f"{what} must be a cupy.ndarray, got {type(arr).__name__}")
    return cupy.ascontiguousarray(arr)
