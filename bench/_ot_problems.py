"""Problems and helpers shared by the optimal-transport benchmarks."""

from __future__ import annotations

import statistics
import time

import numpy as np


def clouds(n, seed=0, xp=np):
    """Two Gaussian clouds of n points in 2-D, squared-Euclidean cost scaled to max 1,
    uniform weights: ``(a, b, C)`` in the namespace ``xp`` (NumPy or CuPy)."""
    rng = np.random.default_rng(seed)
    x = xp.asarray(rng.standard_normal((n, 2)))
    y = xp.asarray(rng.standard_normal((n, 2)) + 1.0)
    # |x - y|^2 = |x|^2 + |y|^2 - 2 x.y, formed on the arrays' own device
    C = (x * x).sum(-1)[:, None] + (y * y).sum(-1)[None, :] - 2.0 * (x @ y.T)
    C = xp.maximum(C, 0.0)
    C /= C.max()
    a = xp.full(n, 1.0 / n)
    return a, a.copy(), C


def l1_error(P, a, b):
    """The one error function every OT benchmark uses: ``||P 1 - a||_1 + ||P^T 1 - b||_1``."""
    import array_api_compat

    from diffsolve.ot._errors import marginal_error

    xp = array_api_compat.array_namespace(P)
    return float(marginal_error(P, a, b, xp, "l1"))


def timed(fn, repeats, sync=lambda: None):
    """Median wall time of ``repeats`` calls of ``fn`` (``sync`` waits for a GPU) and the
    last result."""
    times, out = [], None
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out
