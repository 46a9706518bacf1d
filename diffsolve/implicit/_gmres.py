"""Restarted GMRES(m) in array-API code, for the matrix-free implicit systems.

The implicit system ``(∂F/∂x)ᵀ u = x̄`` is in general not symmetric (KKT conditions,
fixed points of projected or proximal steps), and we can apply only ``u ↦ (∂F/∂x)ᵀ u``
(one VJP of F). GMRES needs nothing more. The Krylov basis lives in the arrays' namespace
(NumPy, CuPy, array_api_strict); the small Hessenberg least-squares problem is kept on the
host as Python floats and solved with Givens rotations, so each Arnoldi step reads its
``m + 1`` inner products from the device (one sync each, negligible next to a VJP).

Reference: Saad & Schultz, "GMRES: a generalized minimal residual algorithm for solving
nonsymmetric linear systems" (SIAM J. Sci. Stat. Comput., 1986); Saad, *Iterative Methods
for Sparse Linear Systems*, 2nd ed., Algorithm 6.11 (modified Gram–Schmidt Arnoldi with
Givens rotations). The stopping rule ``||b - A x|| <= tol`` is SciPy's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class GMRESOutcome:
    x: object
    n_iters: int  # products with A (restarts' residual recomputations not counted)
    converged: bool
    residual_norm: float  # ||b - A x|| recomputed at the returned x


def _norm(xp, v) -> float:
    return float(xp.sqrt(xp.sum(v * v)))


def gmres(matvec: Callable, b, *, tol: float, restart: int, maxiter: int, xp) -> GMRESOutcome:
    """Solve ``A x = b`` (``b`` 1-D) from ``x = 0`` to ``||b - A x|| <= tol``.

    ``matvec(v)`` returns ``A v`` for 1-D ``v``. At most ``maxiter`` products with ``A``
    are spent in Arnoldi steps, in cycles of ``restart``; after each cycle the residual is
    recomputed from scratch (one more product), so the stopping test never trusts the
    Givens estimate alone.
    """
    x = xp.zeros_like(b)
    r = b
    beta = _norm(xp, r)
    it = 0
    while beta > tol and it < maxiter:
        m = min(restart, maxiter - it)
        V = [r / beta]
        H = [[0.0] * m for _ in range(m + 1)]
        cs: list[float] = []
        sn: list[float] = []
        g = [beta] + [0.0] * m
        k = 0
        breakdown = False
        for j in range(m):
            w = matvec(V[j])
            it += 1
            for i in range(j + 1):  # modified Gram–Schmidt
                h = float(xp.sum(V[i] * w))
                H[i][j] = h
                w = w - h * V[i]
            h_next = _norm(xp, w)
            H[j + 1][j] = h_next
            for i in range(j):  # earlier rotations on the new column
                a, c = H[i][j], H[i + 1][j]
                H[i][j] = cs[i] * a + sn[i] * c
                H[i + 1][j] = -sn[i] * a + cs[i] * c
            denom = math.hypot(H[j][j], H[j + 1][j])
            if denom == 0.0:  # A is singular on the Krylov space: no progress possible
                breakdown = True
                break
            cs.append(H[j][j] / denom)
            sn.append(H[j + 1][j] / denom)
            H[j][j], H[j + 1][j] = denom, 0.0
            g[j + 1] = -sn[j] * g[j]
            g[j] = cs[j] * g[j]
            k = j + 1
            # h_next == 0 is the "happy breakdown": the solution lies in the Krylov space
            if abs(g[j + 1]) <= tol or h_next == 0.0:
                break
            V.append(w / h_next)
        if k == 0:
            break
        y = [0.0] * k  # back substitution on the rotated (upper triangular) Hessenberg
        for i in range(k - 1, -1, -1):
            y[i] = (g[i] - sum(H[i][j] * y[j] for j in range(i + 1, k))) / H[i][i]
        for i in range(k):
            x = x + y[i] * V[i]
        r = b - matvec(x)
        beta = _norm(xp, r)
        if breakdown:  # restarting from here would break down again
            break
    return GMRESOutcome(x, it, beta <= tol, beta)
