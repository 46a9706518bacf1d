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
DIFFSOLVE_SERIAL_BELOW
    Work (array entries touched) below which a ``parallel=True`` kernel runs on one
    thread; default 2^16 (see :data:`SERIAL_BELOW`).
DIFFSOLVE_ADAPTIVE_THREADS
    Set to ``0`` to run every call above the threshold on all of Numba's threads rather
    than measuring which thread count is faster (:func:`call_threaded`).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import numba

__all__ = [
    "ADAPTIVE_THREADS",
    "FASTMATH",
    "SERIAL_BELOW",
    "UncachedKernelWarning",
    "call_threaded",
    "jit",
    "njit_options",
    "serial_twin",
]


def _env_flag(name: str) -> bool:
    """Return True when environment variable `name` is set to a truthy value."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


#: Whether kernels are compiled with ``fastmath=True`` (``DIFFSOLVE_FASTMATH=1``).
FASTMATH: bool = _env_flag("DIFFSOLVE_FASTMATH")

#: Work (array entries touched) below which a ``parallel=True`` kernel runs on one thread
#: (``DIFFSOLVE_SERIAL_BELOW``). Waking Numba's thread pool costs tens of microseconds on an
#: idle machine, and on a busy one a parallel region waits for every thread to get a core
#: (measured: 10-25 ms per call on vectors of 4-200 entries at load 10 on 2 cores).
SERIAL_BELOW: int = int(os.environ.get("DIFFSOLVE_SERIAL_BELOW", str(1 << 16)))


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


def jit(parallel: bool = False, signature=None,
        **extra: Any) -> Callable[[Callable[..., Any]], Any]:
    """Decorator factory: ``numba.njit`` with :func:`njit_options`.

    Parameters
    ----------
    parallel : bool, default False
        Forwarded to :func:`njit_options`.
    signature : optional
        An explicit Numba signature (eager compilation), as ``numba.njit(signature)``.
    **extra
        Further ``numba.njit`` options (``inline="always"``).

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
    options = {**njit_options(parallel=parallel), **extra}
    sig = () if signature is None else (signature,)

    def decorate(fn: Callable[..., Any]) -> Any:
        if not options["cache"]:
            return numba.njit(*sig, **options)(fn)
        try:
            return numba.njit(*sig, **options)(fn)
        except RuntimeError as err:
            # A read-only install (site-packages owned by another user, a container image)
            # with no writable user cache: Numba refuses cache=True at decoration. The kernel
            # still works uncached; it only compiles in every process.
            if "cannot cache function" not in str(err):
                raise
            _warn_uncached(str(err))
            return numba.njit(*sig, **{**options, "cache": False})(fn)

    return decorate


def serial_twin(kernel: Any, **callees: Any) -> Any:
    """A one-thread build of the ``parallel=True`` kernel ``kernel``, for small calls.

    The same Python source compiled without Numba's parallel backend (``prange`` runs as
    ``range``), so the twin does the same arithmetic in the same order: kernels that
    reduce over fixed row blocks give bit-identical results. A small call pays no parallel
    region at all (setting one thread for the call, as :func:`call_threaded` does, still
    opens one per ``prange``: a few microseconds each, the bulk of a 500-unknown CG
    iteration). ``callees`` replaces the kernels the body calls by their own twins.

    The twin is a separate function, named ``<name>_serial``, so that Numba's on-disk
    cache keeps both builds (it files a function's builds under its qualified name).
    """
    import types

    fn = kernel.py_func
    name = fn.__name__ + "_serial"
    glob = fn.__globals__ if not callees else {**fn.__globals__, **callees}
    twin = types.FunctionType(fn.__code__, glob, name, fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_serial"
    twin.__module__ = fn.__module__
    twin.__doc__ = f"One-thread build of :func:`{fn.__name__}` (see :func:`serial_twin`)."
    return jit(parallel=False)(twin)


_uncached_warned = False


class UncachedKernelWarning(RuntimeWarning):
    """Numba cannot write its on-disk cache; kernels are compiled in every process."""


def _warn_uncached(reason: str) -> None:
    global _uncached_warned
    if _uncached_warned:
        return
    _uncached_warned = True
    warnings.warn(
        "diffsolve: Numba cannot write its cache here (" + reason + "); the CPU kernels "
        "run uncached and are compiled again in every process. Set NUMBA_CACHE_DIR to a "
        "writable folder to keep compiled kernels between runs",
        UncachedKernelWarning, stacklevel=3,
    )


#: Whether :func:`call_threaded` learns, per kernel and size, whether threads pay
#: (``DIFFSOLVE_ADAPTIVE_THREADS=0`` turns it off: every call above the threshold then uses
#: all of Numba's threads, as before).
ADAPTIVE_THREADS: bool = os.environ.get("DIFFSOLVE_ADAPTIVE_THREADS", "1").strip().lower() \
    not in {"0", "false", "no", "off"}

# Calls between two trials of the mode not in use, at first and at most. A trial that loses
# doubles the gap: on a machine that stays busy, a 10x slower parallel trial costs 10/1024 of
# a call in the long run; a trial that wins switches at once.
_PROBE_FIRST = 16
_PROBE_MAX = 1024


class _ThreadChoice:
    """Seconds per unit of work, with all threads and with one, of one kernel at one size.

    A mode is measured by a *trial*: two calls in a row, keeping the faster (the first
    call after a stint in the other mode wakes the thread pool or refills the caches).
    Between trials the faster mode runs, and its time keeps being recorded, so a machine
    that becomes busy is seen at once; the other mode is tried again after ``gap`` calls.
    """

    __slots__ = ("best", "countdown", "gap", "parallel", "serial", "trial")

    def __init__(self) -> None:
        self.parallel = math.inf  # not measured yet
        self.serial = math.inf
        self.countdown = 0
        self.gap = _PROBE_FIRST
        self.trial: list[bool] = [True, True]  # modes still to run in the current trial
        self.best = math.inf

    def next_is_parallel(self) -> bool:
        if self.trial:
            return self.trial[0]
        self.countdown -= 1
        faster = self.parallel <= self.serial
        if self.countdown <= 0:
            self.trial = [not faster, not faster]
            return not faster
        return faster

    def record(self, parallel: bool, seconds_per_unit: float) -> None:
        if not self.trial:
            if parallel:
                self.parallel = seconds_per_unit
            else:
                self.serial = seconds_per_unit
            return
        self.trial.pop()
        self.best = min(self.best, seconds_per_unit)
        if self.trial:
            return
        leader = self.parallel <= self.serial
        if parallel:
            self.parallel = self.best
        else:
            self.serial = self.best
        self.best = math.inf
        if math.inf in (self.parallel, self.serial):
            self.trial = [not parallel, not parallel]  # measure the other mode too
            return
        # back off while the leader holds: on a machine that stays busy a 10x slower
        # trial of threads then costs little in the long run
        kept = (self.parallel <= self.serial) == leader
        self.gap = min(2 * self.gap, _PROBE_MAX) if kept else _PROBE_FIRST
        self.countdown = self.gap


_choices: dict[tuple[Any, int], _ThreadChoice] = {}


def call_threaded(kernel: Callable[..., Any], work: int, *args: Any,
                  serial_below: int | None = None,
                  repeats: Callable[[Any], int] | None = None,
                  serial: Callable[..., Any] | None = None) -> Any:
    """Call a ``parallel=True`` kernel with the number of threads that is fastest now.

    Below ``serial_below`` units of work the call runs on one thread: waking Numba's pool
    costs more than it saves. Above, the choice is measured: each kernel (and size, to a
    factor of two) keeps its time per unit of work with all threads and with one, runs the
    faster, and now and then tries the other again. On a busy machine a parallel region
    waits for every thread to get a core (measured: 10x slower than one thread for
    sinkhorn's ``lse`` pass at n = 500 with 2 threads and 2 busy cores); the measurement
    sees that and goes serial, and back to threads when they pay again. The results do not
    depend on the choice: the kernels reduce over fixed blocks, whatever the thread count.

    "All threads" is ``numba.get_num_threads()`` in the calling thread, so
    ``NUMBA_NUM_THREADS`` and ``numba.set_num_threads`` remain the limit. The count is set
    for this call only (``numba.set_num_threads`` is thread-local). A kernel's
    :func:`serial_twin`, passed as ``serial``, runs the calls below the threshold instead:
    it opens no parallel region at all.

    Parameters
    ----------
    kernel : numba dispatcher
        A kernel compiled with ``jit(parallel=True)``.
    work : int
        A measure of the call's size, e.g. the number of array entries it touches.
    *args
        The kernel's arguments.
    serial_below : int, optional
        The threshold; default :data:`SERIAL_BELOW`. Kernels whose work per entry is tiny
        (a pass over a dense plan) amortise a parallel region only at larger sizes.
    repeats : callable, optional
        For a kernel that loops (a whole CG solve): ``repeats(result)`` is how many times
        the call did ``work`` (its iteration count), so that the measured time per unit
        compares calls that ran for different numbers of iterations.
    serial : callable, optional
        The kernel's :func:`serial_twin` (same arguments, same results), for the calls
        below the threshold and when Numba has one thread.

    Returns
    -------
    object
        What ``kernel(*args)`` returns.
    """
    small = work < (SERIAL_BELOW if serial_below is None else serial_below)
    if small and serial is not None:
        return serial(*args)
    n_threads = numba.get_num_threads()
    if n_threads == 1:
        return (kernel if serial is None else serial)(*args)
    if small:
        numba.set_num_threads(1)
        try:
            return kernel(*args)
        finally:
            numba.set_num_threads(n_threads)
    if not ADAPTIVE_THREADS:
        return kernel(*args)
    key = (kernel, max(int(work), 1).bit_length())
    choice = _choices.get(key)
    if choice is None:
        choice = _choices[key] = _ThreadChoice()
    parallel = choice.next_is_parallel()
    if not parallel:
        numba.set_num_threads(1)
    start = time.perf_counter()
    try:
        out = kernel(*args)
    finally:
        if not parallel:
            numba.set_num_threads(n_threads)
    units = max(int(work), 1) * (1 if repeats is None else max(int(repeats(out)), 1))
    choice.record(parallel, (time.perf_counter() - start) / units)
    return out
