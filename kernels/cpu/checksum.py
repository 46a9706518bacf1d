"""A one-pass exact checksum of an array's bits, for caches keyed on array content.

``sum_i w_i bits_i`` modulo 2⁶⁴ with ``w_i = (i·c) | 1`` and ``c = ⌊2⁶⁴/φ⌋`` (Knuth's
multiplicative hashing constant, *The Art of Computer Programming* vol. 3, §6.4): every
weight is odd, hence invertible modulo 2⁶⁴, so a change of any one entry changes the sum,
and the irregular weights make a permutation of entries change it too. Written as NumPy
array expressions this is four passes over memory (the weights, their product, the sum)
and two temporaries as large as the array; here it is one read of the data.
"""

from __future__ import annotations

import numpy as np

from ._config import jit

__all__ = ["weighted_bit_sum"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@jit()
def weighted_bit_sum(bits):  # pragma: no cover - compiled
    """``sum_i ((i+1)·c | 1) · bits[i]`` modulo 2⁶⁴ of a 1-D unsigned-integer array."""
    acc = np.uint64(0)
    one = np.uint64(1)
    w = np.uint64(0)
    for i in range(bits.shape[0]):
        w += _GOLDEN  # (i+1)·c modulo 2⁶⁴, without a multiplication
        acc += (w | one) * np.uint64(bits[i])
    return acc
