"""Adapters that make any diffsolve solver a layer of an autodiff system.

torch and JAX are imported only when their adapter is called; autograd is a dependency.
"""

from .autograd import to_autograd
from .jax import to_jax
from .torch import to_torch

__all__ = ["to_autograd", "to_jax", "to_torch"]
