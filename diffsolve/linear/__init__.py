"""Linear systems: differentiable direct and conjugate-gradient solves."""

from ._solve import solve

__all__ = ["solve"]
