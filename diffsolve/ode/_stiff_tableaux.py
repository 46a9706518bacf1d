"""Tableaux of the L-stable ESDIRK pairs used for stiff problems.

An ESDIRK ("explicit first stage, singly diagonally implicit") method with ``s`` stages
reads, for one step of size ``h`` from ``(t_n, y_n)``::

    g_1 = y_n,                                   k_1 = f(t_n, y_n)
    g_i = y_n + h Σ_{j<i} a_ij k_j + h γ k_i,    k_i = f(t_n + c_i h, g_i)   (i ≥ 2)

so each stage after the first is one implicit system of the size of the state, all with
the same matrix ``I − hγJ`` (the reason simplified Newton can share one factorisation).
Kværnø's pairs are *stiffly accurate*: the last row of ``A`` is ``b``, so
``y_{n+1} = g_s`` and ``k_s = f(t_{n+1}, y_{n+1})`` is the next step's ``k_1`` (FSAL). The
embedded solution is the previous stage ``g_{s−1}``, hence ``e = b − b̂`` is
``A[s−1] − A[s−2]``.

Coefficients: A. Kværnø, "Singly diagonally implicit Runge–Kutta methods with an
explicit first stage", BIT Numer. Math. 44 (2004) 489–502 (the 3(2) pair is given in
closed form in γ ≈ 0.4358665215, the 5(4) pair with γ = 0.26 as decimals); the decimal
values were checked against diffrax's ``kvaerno3``/``kvaerno5`` tables, and the order
conditions are checked numerically in the tests (convergence slopes).

Dense output is the cubic Hermite interpolant through ``(y_n, k_1)`` and
``(y_{n+1}, k_s)``, written as weights on the slopes so that the solution inside a step is
``y_n + h Σ_i w_i(θ) k_i``, the form the explicit tableaux use.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import _backend as B
from .._typing import HostArray

np = B.host_namespace()

__all__ = ["STIFF_TABLEAUX", "ESDIRKTableau"]


@dataclass(frozen=True)
class ESDIRKTableau:
    """An embedded, stiffly accurate ESDIRK pair.

    Attributes
    ----------
    name : str
    A : ndarray (s, s)
        Lower triangular with ``A[0, 0] = 0`` and ``A[i, i] = gamma`` for ``i ≥ 1``; row
        ``s − 1`` equals ``b``.
    c : ndarray (s,)
        Row sums of ``A`` (the nodes).
    e : ndarray (s,)
        ``b − b̂`` (error weights).
    gamma : float
    order, error_order : int
    """

    name: str
    A: HostArray
    c: HostArray
    e: HostArray
    gamma: float
    order: int
    error_order: int

    implicit = True
    #: explicit methods compare ``|hλ|`` with this; an L-stable method has no boundary
    stability_boundary = float("inf")

    @property
    def n_stages(self) -> int:
        return self.A.shape[0]

    @property
    def b(self) -> HostArray:
        return self.A[-1, :]

    def dense_weights(self, theta: float) -> list:
        """``w_i(θ)``: cubic Hermite interpolation in ``θ ∈ [0, 1]`` as slope weights."""
        th = float(theta)
        s = self.n_stages
        base = th + th * (th - 1.0) * (1.0 - 2.0 * th)
        w = [float(bi) * base for bi in self.b]
        w[0] += th * (th - 1.0) ** 2
        w[s - 1] += th * th * (th - 1.0)
        return w


def _esdirk(name: str, gamma: float, lower: list, order: int, error_order: int):
    s = len(lower) + 1
    A = np.zeros((s, s), dtype=np.float64)
    for i, row in enumerate(lower, start=1):
        A[i, :i] = row
        A[i, i] = gamma
    A.flags.writeable = False
    c = np.sum(A, axis=1)
    e = A[s - 1, :] - A[s - 2, :]
    for arr in (c, e):
        arr.flags.writeable = False
    return ESDIRKTableau(name, A, c, e, float(gamma), order, error_order)


def _kvaerno3() -> ESDIRKTableau:
    g = 0.43586652150  # the root of the L-stability condition, as printed by Kværnø
    a31 = (-4 * g * g + 6 * g - 1) / (4 * g)
    a32 = (1 - 2 * g) / (4 * g)
    a41 = (6 * g - 1) / (12 * g)
    a42 = -1 / ((24 * g - 12) * g)
    a43 = (-6 * g * g + 6 * g - 1) / (6 * g - 3)
    return _esdirk("kvaerno3", g, [[g], [a31, a32], [a41, a42, a43]], 3, 2)


def _kvaerno5() -> ESDIRKTableau:
    g = 0.26
    lower = [
        [g],
        [0.13, 0.84033320996790809],
        [0.22371961478320505, 0.47675532319799699, -0.06470895363112615],
        [0.16648564323248321, 0.10450018841591720, 0.03631482272098715,
         -0.13090704451073998],
        [0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141,
         0.61943039072480676],
        [0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046,
         0.62993304899016403, 0.06962479448202728],
    ]
    return _esdirk("kvaerno5", g, lower, 5, 4)


STIFF_TABLEAUX = {t.name: t for t in (_kvaerno3(), _kvaerno5())}
