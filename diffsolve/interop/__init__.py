"""Adapters that make any diffsolve solver a layer of an autodiff system.

torch and JAX are imported only when their adapter is called; autograd is a dependency.
An adapted function returns what the function returns: a result dataclass with the
framework's arrays in its differentiable fields, or, for a function registered with
``unwrap_value=True`` (a ``diffsolve.implicit.custom_root`` solver), the framework's array.
"""

from .autograd import to_autograd
from .jax import to_jax
from .torch import to_torch

__all__ = ["to_autograd", "to_jax", "to_torch"]
