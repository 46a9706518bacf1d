"""Divergence of a bilevel run: detected from what the loop measures, reported with a remedy.

A run has diverged when a value it measures is non-finite (status ``NONFINITE``), or when
one of them has grown by more than :data:`GROWTH_FACTOR` over its first finite value
(status ``DIVERGED``): the iterate norms ``||x||``, ``||y||`` (each against
``1 + ||·||`` at the start, so a start at 0 is not a special case), the outer objective
``|outer|`` (against ``1 + |outer₀|``) and the stationarity measure. Stopping there
keeps the iterates far from overflow (NumPy would warn of it), and the numbers past that
point say nothing. A step that is too long makes the iterates grow geometrically, so the
factor is reached within tens of iterations; a convergent run does not grow its iterates a
millionfold.
"""

from __future__ import annotations

import math

from .._status import Status

#: growth over the first finite value that counts as divergence
GROWTH_FACTOR = 1e6


class DivergenceMonitor:
    """Watches named scalars; :meth:`check` returns ``None`` or ``(status, what)``."""

    def __init__(self, factor: float = GROWTH_FACTOR):
        self.factor = factor
        self.first: dict[str, float] = {}

    def check(self, **values: float) -> tuple[Status, str] | None:
        for name, v in values.items():
            if not math.isfinite(v):
                return Status.NONFINITE, f"{name} became {v}"
        for name, v in values.items():
            a = abs(v)
            if name not in self.first:
                self.first[name] = a
            elif a > self.factor * (1.0 + self.first[name]):
                return Status.DIVERGED, (f"{name} grew from {self.first[name]:.3g} to "
                                         f"{a:.3g} (more than {self.factor:g} times)")
        return None


def advice(method: str, user_steps: dict[str, float | None]) -> str:
    """What to change after a divergence, given which steps the user set."""
    given = [f"{k}={v:g}" for k, v in user_steps.items() if v is not None]
    if given:
        names = " / ".join(k for k, v in user_steps.items() if v is not None)
        return (f"reduce {names} (you gave {', '.join(given)}: try a tenth), or leave "
                f"{names}=None so that solve sets the steps from the problem")
    return ("reduce stepsize / inner_stepsize below the estimated ones (the curvature grows "
            "away from the start), and check that the objectives are finite and inner is "
            "bounded below in y")
