"""Numba compilation flags for the CPU kernels: the single place they are set.

Every compiled kernel in :mod:`diffsolve.kernels.cpu` is decorated with
:func:`jit`, so changing a flag here changes it everywhere at once.

Environment variables
---------------------
DIFFSOLVE_FASTMATH
    Set to ``1`` to compile with ``fastmath=True``. Off by default because
    fast-math lets LLVM reassociate floating-point sums (results then depend
    on vector width and thread count) and assume no NaN/Inf, which would
    silently hide NaNs that the solvers rely on to detect breakdown. It is
    read once, at import time. Numba's on-disk cache is keyed on the
    function's bytecode and signature but *not* on compiler flags, so a
    cached non-fastmath build would be silently reused; fast-math builds are
    therefore not cached (``cache=False``) and are compiled afresh in every
    process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numba

__all__ = ["FASTMATH", "jit", "njit_options"]


def _env_flag(name: str) -> bool:
    """Return True when environment variable `name` is set to a truthy value."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


#: Whether kernels are compiled with ``fastmath=True`` (``DIFFSOLVE_FASTMATH=1``).
FASTMATH: bool = _env_flag("DIFFSOLVE_FASTMATH")


def njit_options(parallel: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``numba.njit`` shared by all diffsolve kernels.

    Parameters
    ----------
    parallel : bool, default False
        Compile with Numba's parallel backend, which turns ``numba.prange``
        loops into multi-threaded loops. Only ask for it in kernels that
        contain a ``prange``: otherwise Numba emits a
        ``NumbaPerformanceWarning`` (an error under the test suite's
        ``filterwarnings = error``).

    Returns
    -------
    dict
        ``cache=True`` so compiled machine code is stored next to the source
        and reused across processes (first-call JIT cost is paid once per
        machine, not once per interpreter), except under fast-math (see the
        module docstring); ``nogil=True`` so kernels release
        the GIL and can run concurrently from Python threads; ``fastmath``
        from ``DIFFSOLVE_FASTMATH``; and ``parallel`` as given.

    Examples
    --------
    >>> opts = njit_options(parallel=True)
    >>> opts["nogil"], opts["parallel"], opts["cache"] == (not opts["fastmath"])
    (True, True, True)
    """
    return {
        # Numba's cache ignores flags: never let fast-math and strict builds
        # share (and overwrite) one cache entry.
        "cache": not FASTMATH,
        "nogil": True,
        "fastmath": FASTMATH,
        "parallel": bool(parallel),
    }


def jit(parallel: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """Decorator factory: ``numba.njit`` with :func:`njit_options`.

    Parameters
    ----------
    parallel : bool, default False
        Forwarded to :func:`njit_options`.

    Returns
    -------
    callable
        A decorator that compiles a function in nopython mode.

    Notes
    -----
    Because of ``cache=True`` the decorated function must live in a module
    file: Numba refuses to cache functions defined interactively or in a
    doctest (``RuntimeError: cannot cache function ...``).

    Examples
    --------
    In a module of :mod:`diffsolve.kernels.cpu`::

        from numba import prange
        from ._config import jit

        @jit(parallel=True)
        def _scale(x, alpha, out):
            for i in prange(x.shape[0]):
                out[i] = alpha * x[i]
            return out
    """
    return numba.njit(**njit_options(parallel=parallel))
