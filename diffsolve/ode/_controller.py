"""Step-size control: Hairer's initial step, the I controller (SciPy's RK45 rule) and a PI
controller.

All of this is host arithmetic on Python floats: the error norm of a step is one number,
read once per attempted step (one device synchronisation per step on CuPy, inherent to
adaptive stepping).
"""

from __future__ import annotations

import array
import math

__all__ = ["MAX_FACTOR", "MIN_FACTOR", "SAFETY", "Controller", "initial_step",
           "initial_step_host"]

SAFETY = 0.9
MIN_FACTOR = 0.2
MAX_FACTOR = 10.0


class Controller:
    """Accept/reject decisions and the next step size, from scaled error norms ``E``.

    ``kind="i"`` (integral): ``factor = 0.9 E^(-1/(q+1))`` clipped to [0.2, 10], accept if
    ``E < 1``, no growth right after a rejection: exactly SciPy's ``RungeKutta._step_impl``
    (scipy/integrate/_ivp/rk.py), so ``dopri5`` reproduces ``solve_ivp(method="RK45")``
    step for step. ``kind="pi"``: ``factor = 0.9 E^(-β1) E_prev^(β2)`` with the
    OrdinaryDiffEq.jl defaults ``β1 = 7/(10p)``, ``β2 = 2/(5p)`` (p the method order; 0.14,
    0.08 for the 5th-order pairs; Hairer–Wanner II, IV.2 "PI control"), accept if
    ``E <= 1``; rejections use the I rule. ``q`` is the embedded (error) order.
    """

    __slots__ = ("beta1", "beta2", "err_prev", "exp_i", "pi")

    def __init__(self, kind: str, order: int, error_order: int):
        self.pi = kind == "pi"
        self.exp_i = -1.0 / (error_order + 1)
        self.beta1 = 7.0 / (10.0 * order)
        self.beta2 = 2.0 / (5.0 * order)
        self.err_prev = 1e-4

    def accepts(self, E: float) -> bool:
        return E <= 1.0 if self.pi else E < 1.0

    def grow(self, E: float, rejected: bool) -> float:
        """Factor for the next step after an accepted step with error ``E``."""
        if E == 0.0:
            factor = MAX_FACTOR
        elif self.pi:
            factor = min(MAX_FACTOR, max(MIN_FACTOR, SAFETY * E ** (-self.beta1)
                                         * self.err_prev ** self.beta2))
        else:
            factor = min(MAX_FACTOR, SAFETY * E ** self.exp_i)
        if self.pi:
            self.err_prev = max(E, 1e-4)
        if rejected:
            factor = min(1.0, factor)
        return factor

    def decide(self, E: float, rejected: bool) -> tuple[bool, float]:
        """``(accepted, factor)`` for an attempted step with error ``E``: one call per step
        in the Python loop, the same decisions and factors as :meth:`accepts`,
        :meth:`grow` and :meth:`shrink`."""
        if E != E or E == math.inf:  # not finite (E >= 0): reject, shrink 5x
            return False, MIN_FACTOR
        if self.pi:
            if E <= 1.0:
                return True, self.grow(E, rejected)
        elif E < 1.0:  # the I rule of grow(), inlined (the hot case of controller="i")
            factor = MAX_FACTOR if E == 0.0 else min(MAX_FACTOR, SAFETY * E ** self.exp_i)
            return True, min(1.0, factor) if rejected else factor
        return False, max(MIN_FACTOR, SAFETY * E ** self.exp_i)

    def shrink(self, E: float) -> float:
        """Factor for the retry after a rejected step (0.2 when ``E`` is not finite)."""
        if not math.isfinite(E):
            return MIN_FACTOR
        return max(MIN_FACTOR, SAFETY * E ** self.exp_i)


def initial_step(rms_scaled, rhs, t0, y0, f0, direction, error_order, rtol, atol, interval):
    """Hairer–Nørsett–Wanner I, II.4 starting step, in SciPy's form (``select_initial_step``).

    ``rms_scaled(x, y0)`` is ``sqrt(mean((x / (atol + rtol |y0|))²))``; ``rhs(t, y)``
    evaluates the vector field (one call). Returns ``|h|`` (a float).
    """
    if interval == 0.0:
        return 0.0
    d0 = rms_scaled(y0, y0)
    d1 = rms_scaled(f0, y0)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = min(h0, interval)
    y1 = y0 + (h0 * direction) * f0
    f1 = rhs(t0 + h0 * direction, y1)
    d2 = rms_scaled(f1 - f0, y0) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (error_order + 1))
    return min(100 * h0, h1, interval)


def initial_step_host(rhs, t0, y0, f0, buf, direction, error_order, rtol, atol, interval):
    """:func:`initial_step` for a small state given as lists of floats ``y0``, ``f0``.

    The same formulas in the same floating-point order (the scaled norm as the
    ``ode.rk_error_norm`` kernel computes it, ``y1 = y0 + (h0 direction) f0`` elementwise),
    so it returns the same ``|h|`` to the last bit. ``buf`` (a writable float64 array of
    ``y0``'s size) receives ``y1`` for the one call of ``rhs``.
    """
    if interval == 0.0:
        return 0.0
    n = len(y0)
    sc = [atol + rtol * abs(v) for v in y0]

    def rms(x):
        acc = 0.0
        for xi, si in zip(x, sc):
            r = xi / si
            acc += r * r
        return math.sqrt(acc / n)

    d0 = rms(y0)
    d1 = rms(f0)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = min(h0, interval)
    hd = h0 * direction
    memoryview(buf)[:] = memoryview(array.array("d", [a + hd * b for a, b in zip(y0, f0)]))
    f1 = rhs(t0 + h0 * direction, buf).tolist()
    d2 = rms([a - b for a, b in zip(f1, f0)]) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (error_order + 1))
    return min(100 * h0, h1, interval)
