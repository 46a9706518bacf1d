"""The per-block-pair work of the sharded Sinkhorn: what one Dask task computes.

Every function here receives one block of source points ``X_I`` (p, d), one block of target
points ``Y_J`` (q, d) and the potentials on them, and returns a small array: a partial
soft-minimum (q,), row sums and a plan-point product (p, d + 1), or one block of the plan.
No function keeps anything between calls, so a task lost with its worker is recomputed
from its inputs alone.

The squared Euclidean cost runs through the Numba kernels of
:mod:`diffsolve.kernels.cpu.ot_blocks` on NumPy blocks; a user cost
``cost(X_I, Y_J) -> (p, q)``, and every cost on CuPy blocks, forms the block's cost
matrix (one block pair, never more) and reduces it with array-API code.
"""

from __future__ import annotations

import math

from .. import _backend as B

SQEUCLIDEAN = "sqeuclidean"


def block_cost(P, Q, cost, xp):
    """The cost block ``c(P_i, Q_j)`` (p, q)."""
    if cost != SQEUCLIDEAN:
        return cost(P, Q)
    c = xp.zeros((P.shape[0], Q.shape[0]), dtype=P.dtype, device=B.device(P))
    # one coordinate at a time: the same sum order as the Numba kernel, no (p, q, d) array
    for k in range(P.shape[1]):
        t = P[:, k, None] - Q[None, :, k]
        c = c + t * t
    return c


def _kernels(xp, cost, P):
    return cost == SQEUCLIDEAN and B.is_numpy(xp) and P.dtype == xp.float64


def pair_lse(P, Q, w, eps, cost, swapped):
    """``eps * log sum_j exp((w_j - c_ij) / eps)`` over the block pair, shape (p,).

    ``swapped``: ``P`` are target points and ``Q`` source points, so a user cost is called
    as ``cost(Q, P)`` and transposed (squared Euclidean is symmetric).
    """
    xp = B.array_namespace(P, Q, w)
    if _kernels(xp, cost, P):
        kern = B.get_kernel(xp, "ot_blocks.sqeuclidean_lse")
        out = xp.empty((P.shape[0],), dtype=P.dtype)
        return kern(B.contiguous(xp, P), B.contiguous(xp, Q), B.contiguous(xp, w), eps, out)
    c = block_cost(Q, P, cost, xp).T if swapped else block_cost(P, Q, cost, xp)
    return eps * B.logsumexp((w[None, :] - c) / eps, axis=1, xp=xp)


def combine_partials(parts, eps):
    """Tree-reduction step: soft-minimum partials (eps-scaled log-sum-exps, one per row
    block) combined into one, ``M + eps log sum_k exp((x_k - M) / eps)``: the (max, sum)
    pair of an online log-sum-exp, folded into one number per point."""
    if len(parts) == 1:
        return parts[0]
    xp = B.array_namespace(*parts)
    x = xp.stack(parts)
    mx = xp.max(x, axis=0)
    safe = xp.where(xp.isfinite(mx), mx, xp.zeros_like(mx))
    s = xp.sum(xp.exp((x - safe[None, :]) / eps), axis=0)
    return xp.where(mx == -math.inf, mx, safe + eps * xp.log(s))


def pair_apply(P, Q, u, w, eps, cost, swapped):
    """Row sums of the plan block and its product with ``Q``'s points: ``(1, p, d + 1)``
    with ``[..., 0] = sum_j K_ij`` and ``[..., 1:] = sum_j K_ij Q_j``.

    For a user cost the product is replaced by the cotangent of ``P`` (``sum_j K_ij
    dc(P_i, Q_j)/dP_i``, from autograd), which is what the gradient needs.
    """
    xp = B.array_namespace(P, Q, u, w)
    p, d = P.shape
    if _kernels(xp, cost, P):
        kern = B.get_kernel(xp, "ot_blocks.sqeuclidean_apply")
        r = xp.empty((p,), dtype=P.dtype)
        PQ = xp.empty((p, d), dtype=P.dtype)
        r, PQ = kern(B.contiguous(xp, P), B.contiguous(xp, Q), B.contiguous(xp, u),
                     B.contiguous(xp, w), eps, r, PQ)
        return xp.concat([r[:, None], PQ], axis=1)[None, ...]
    c = block_cost(Q, P, cost, xp).T if swapped else block_cost(P, Q, cost, xp)
    K = xp.exp((u[:, None] + w[None, :] - c) / eps)
    r = xp.sum(K, axis=1)
    if cost == SQEUCLIDEAN:
        second = K @ Q
    else:
        second = cost_cotangent(P, Q, K, cost, swapped)
    return xp.concat([r[:, None], second], axis=1)[None, ...]


def cost_cotangent(P, Q, K, cost, swapped):
    """``sum_j K_ij d c(P_i, Q_j) / d P_i`` for a user cost written with autograd.numpy."""
    from autograd import make_vjp

    if swapped:
        vjp, _ = make_vjp(lambda Pb: cost(Q, Pb))(P)
        return vjp(K.T)
    vjp, _ = make_vjp(lambda Pb: cost(Pb, Q))(P)
    return vjp(K)


def pair_plan(P, Q, u, w, eps, cost):
    """One block of the plan, ``exp((u_i + w_j - c_ij) / eps)`` (p, q)."""
    xp = B.array_namespace(P, Q, u, w)
    c = block_cost(P, Q, cost, xp)
    return xp.exp((u[:, None] + w[None, :] - c) / eps)


def pair_extremes(P, Q, cost):
    """``[[min c, max c]]`` over the block pair (for the ε-scaling schedule), (1, 1, 2)."""
    xp = B.array_namespace(P, Q)
    c = block_cost(P, Q, cost, xp)
    return xp.reshape(xp.stack([xp.min(c), xp.max(c)]), (1, 1, 2))
