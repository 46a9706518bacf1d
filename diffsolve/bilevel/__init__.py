"""Bilevel optimisation: hypergradients of x ↦ outer(x, y*(x)), y*(x) = argmin_y inner(x, y)."""

from ._hypergradient import HypergradientInfo, hypergradient

__all__ = ["HypergradientInfo", "hypergradient"]
