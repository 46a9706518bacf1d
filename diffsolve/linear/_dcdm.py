"""The Deep Conjugate Direction Method (Kaneda et al., ICML 2023, Algorithm 1).

Each iteration recomputes the true residual ``r = b - A x``, asks the network for a direction
``q = N(r / ||r||)`` (an approximation of ``A⁻¹ r`` up to scale), A-orthogonalises it against
the last ``k`` directions, ``p = q - Σ_j (qᵀA p_j / p_jᵀA p_j) p_j`` (paper eq. 9, k = 2), and
takes the exact line-search step ``α = pᵀr / pᵀA p`` (which minimises the A-norm of the
error along p).

Smoothed directions (``smoother="ssor"``, diffsolve's addition, not the paper's). The network
was trained on smooth residuals (Ritz vectors of the low end of the spectrum) and it sees only
the residual, so it cannot resolve the high-frequency part of the error, nor what a varying
coefficient or a Neumann wall does locally. A relaxation sweep does exactly that, from the
matrix entries. The direction is then one two-level cycle with the network as its coarse
correction (the structure of a multigrid V-cycle, Trottenberg, Oosterlee & Schüller,
*Multigrid*, 2001, §2.4; a network as the coarse part of such a cycle: Azulay & Treister,
SIAM J. Sci. Comput. 45, 2023):

1. pre-smooth: ``z = S r`` (one symmetric Gauss–Seidel sweep from zero, ``S = M_SGS⁻¹``);
2. coarse correction: ``c = N(r₁ / ||r₁||)`` with ``r₁ = r − A z``, scaled by its
   energy-optimal step ``γ = cᵀr₁ / cᵀAc`` (the network's output is only a direction), so
   ``z += γ c``, ``r₂ = r₁ − γ A c``;
3. post-smooth: ``z += S r₂``, and ``q = z``.

Per iteration this adds two SGS sweeps and two sparse products to the network's call.

The network is not a symmetric positive definite preconditioner, so nothing guarantees
convergence. Fallback (diffsolve's addition, not the paper's): when the residual has not
improved on its best value by ``STALL_FACTOR`` for ``STALL_PATIENCE`` consecutive iterations,
or a direction is useless (``pᵀAp`` not positive or not finite, or ``p`` orthogonal to
``r``), the solve drops the network and restarts from the current iterate with conjugate
gradients (``q = r``) or, with the smoother, SGS-preconditioned CG (``q = S r``), the stored
directions cleared; either converges for any symmetric positive definite A (``M_SGS`` is
symmetric positive definite there). The switch is reported with a
:class:`DirectionFallbackWarning` naming the iteration.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any

from .. import _backend as B
from .._status import Status, caller_stacklevel
from ..krylov._common import wants_stop
from ._direction_model import ConvDirectionModel, pretrained_direction_model
from ._iterative import (
    IterativeOutcome,
    _check_symmetric,
    _verdict,
    scaled_problem,
    thresholds,
    unscale,
)
from ._relaxation import Relaxation
from ._result import LinearSolveState

__all__ = ["DirectionFallbackWarning", "PreparedDcdm", "dcdm_solve"]

#: the values of ``solve(..., smoother=...)``; "auto" is "ssor" for a matrix with entries and
#: None for a LinearOperator (which has none to relax with)
SMOOTHERS = ("auto", "ssor", None)

WHERE = "diffsolve.linear.solve"
#: iterations without a 1 % improvement of the best residual before falling back to CG. The
#: residual 2-norm of a conjugate-direction method need not fall every step (the A-norm of
#: the error does), so the window is generous: a slow start is not a stall.
STALL_PATIENCE = 10
STALL_FACTOR = 0.99

_PRETRAINED_CACHE: dict = {}


class DirectionFallbackWarning(RuntimeWarning):
    """``method="dcdm"`` left the network's directions for conjugate gradients.

    The solve still converges (CG from the current iterate); it only took the slower path.
    Train the model on matrices like this one, or use ``method="cg"``/``"pcg"``.

    See Also
    --------
    diffsolve.linear.solve : ``method="dcdm"`` emits it.
    diffsolve.linear.train_direction_model : Train a model for your matrices.

    Examples
    --------
    >>> import diffsolve as ds
    >>> issubclass(ds.linear.DirectionFallbackWarning, RuntimeWarning)
    True
    """


def resolve_model(model, op, xp, device):
    """The model bound to the unknowns of ``op`` on the namespace/device of ``b``."""
    n = op.n
    if model is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"{WHERE}: method='dcdm' with model=None uses the shipped 2-D Poisson model on "
                f"a square grid, but n={n} is not a square; pass model=ConvDirectionModel(...)"
                ".on_grid(grid_shape) (see diffsolve.linear.train_direction_model)")
        check_grid_operator(op, (side, side), xp, "the shipped 2-D Poisson model (model=None)")
        key = (xp.__name__, str(device))
        if key not in _PRETRAINED_CACHE:
            like = xp.zeros((1,), device=device) if not B.is_cupy(xp) else xp.zeros((1,))
            # the shared-level model: its count stays flat with the grid (10 → 14 iterations
            # to 1e-6 from 64² to 1024² with the smoother, where the one-level model's grows
            # 10 → 47 by 256²) at the one-level model's cost per iteration on a CPU
            _PRETRAINED_CACHE[key] = pretrained_direction_model("poisson2d-multilevel",
                                                                like=like)
        return _PRETRAINED_CACHE[key].on_grid((side, side))
    if not isinstance(model, ConvDirectionModel):
        raise TypeError(f"{WHERE}: model must be a diffsolve.linear.ConvDirectionModel or None "
                        f"(the shipped Poisson model), got a {type(model).__name__}")
    checked = model.grid_shape is None
    if checked:
        side = round(n ** (1.0 / model.dim))
        shape = next((tuple([s] * model.dim) for s in (side - 1, side, side + 1)
                      if s > 0 and s ** model.dim == n), None)
        if shape is None:
            raise ValueError(f"{WHERE}: the model is not bound to a grid and n={n} is not a "
                             f"{'square' if model.dim == 2 else 'cube'}; bind it with "
                             "model.on_grid(grid_shape, mask)")
        check_grid_operator(op, shape, xp, f"a model not bound to a grid (dim={model.dim})")
        model = model.on_grid(shape)
    if model.n_unknowns != n:
        raise ValueError(f"{WHERE}: the model's grid {model.grid_shape} has "
                         f"{model.n_unknowns} unknowns but A is {op.shape}")
    if not checked:
        # a model the user bound is checked against its grid too (the unknowns of a masked
        # grid are its fluid cells, so their couplings are compared as cells)
        check_grid_operator(op, model.grid_shape, xp,
                            f"a model bound to the grid {model.grid_shape}"
                            + (" and a mask" if model.mask is not None else ""),
                            cells=model._gather)
    if not model.namespace_matches(xp, device):
        raise ValueError(f"{WHERE}: the model's weights live in {model.xp.__name__} but b in "
                         f"{xp.__name__} (device {device}); move them once with "
                         "model = model.to(b)")
    if model.coefficient_channel:
        diagonal = op.diagonal()
        if diagonal is not None:
            # the model must see this matrix's diagonal, whatever was bound before
            model = model.on_grid(model.grid_shape, model.mask, coefficient=diagonal)
        elif model._coefficient is None:
            raise ValueError(f"{WHERE}: the model has a coefficient channel and A is a "
                             "LinearOperator, which has no diagonal to read; bind it with "
                             "model.on_grid(grid_shape, mask, coefficient=diagonal_of_A)")
    return model


@dataclass(frozen=True)
class PreparedDcdm:
    """What a DCDM solve prepares once per matrix and its adjoint reuses: the network bound
    to the grid (and to A's diagonal, for a coefficient channel) and, with a smoother, the
    symmetric Gauss–Seidel data of A (CSR parts, diagonal; the colouring on the GPU)."""

    model: ConvDirectionModel
    relaxation: Relaxation | None

    def smooth(self, r):
        """``M_SGS⁻¹ r``: one symmetric Gauss–Seidel sweep from zero."""
        assert self.relaxation is not None
        return self.relaxation.precondition(r)


def prepare(op, model, smoother, xp, device) -> PreparedDcdm:
    """Bind the model to ``op``'s grid and build the smoother that ``smoother`` names."""
    bound = resolve_model(model, op, xp, device)
    if smoother == "auto":
        smoother = None if op.kind == "operator" else "ssor"
    if smoother is None:
        return PreparedDcdm(bound, None)
    if op.kind == "operator":
        raise ValueError(f"{WHERE}: method='dcdm' with smoother='ssor' relaxes with the "
                         "entries of A, but A is a LinearOperator; pass the matrix (dense or "
                         "CSR), or smoother=None")
    # ω = 1: symmetric Gauss–Seidel, the classic multigrid smoother for diffusion stencils
    return PreparedDcdm(bound, Relaxation(op, 1.0, WHERE))


def check_grid_operator(op, grid_shape, xp, what, cells=None):
    """Raise ``ValueError`` unless ``A`` couples only grid neighbours of ``grid_shape``.

    The network maps a residual on the grid to a direction on the grid, so it is
    meaningful only for matrices of the grid's nearest-neighbour stencil (5 points in 2-D,
    7 in 3-D; unknowns in C order). A matrix that merely has a square (cubic) number of
    unknowns, a dense SPD matrix or a 3-D Laplacian of 16³ = 64² unknowns, say, is not.
    A LinearOperator is probed with three unit vectors. ``cells`` maps unknowns to grid
    cells (the fluid cells of a mask); without it unknown ``i`` is cell ``i``.
    """
    if op.kind == "operator":
        # no entries to read: probe three columns (a corner, the middle, the last cell)
        n = op.n
        idx = xp.arange(n)
        rows_list, cols_list = [], []
        for j in sorted({0, n // 2 + grid_shape[-1] // 2 if n > 1 else 0, n - 1}):
            j = min(j, n - 1)
            e = xp.astype(idx == j, xp.float64)
            col = op.matvec(xp.astype(e, op.dtype) if op.dtype is not None else e)
            nz = xp.nonzero(col != 0)[0]
            rows_list.append(nz)
            cols_list.append(xp.full(nz.shape, j, dtype=xp.int64))
        rows, cols = xp.concat(rows_list), xp.concat(cols_list)
    elif op.kind == "sparse":
        coo = op.A.tocoo()
        keep = coo.data != 0
        rows, cols = coo.row[keep], coo.col[keep]
        rows = xp.asarray(rows)
        cols = xp.asarray(cols)
    else:
        rows, cols = xp.nonzero(op.A != 0)
    rows = xp.astype(rows, xp.int64)
    cols = xp.astype(cols, xp.int64)
    if cells is not None:
        rows = xp.take(cells, rows)
        cols = xp.take(cells, cols)
    distance = xp.zeros(rows.shape, dtype=xp.int64, device=B.device(rows))
    stride = 1
    for size in reversed(grid_shape):
        ri = (rows // stride) % size
        ci = (cols // stride) % size
        distance = distance + xp.abs(ri - ci)
        stride *= size
    far = int(xp.sum(xp.astype(distance > 1, xp.int64)))
    if far:
        stencil = {2: "5-point", 3: "7-point"}.get(len(grid_shape), "nearest-neighbour")
        raise ValueError(
            f"{WHERE}: method='dcdm' with {what} needs the {stencil} grid operator of a "
            f"{'x'.join(str(g) for g in grid_shape)} grid (unknowns in row-major order), "
            f"but A couples {far} pairs of unknowns that are not grid neighbours: it is not "
            "that grid's matrix. Use method='cg'/'pcg', or train and bind a model for this "
            "matrix (diffsolve.linear.train_direction_model, model.on_grid(grid_shape))")


def _norm(xp, v):
    return float(xp.sqrt(xp.sum(v * v)))


def _direction(op, prepared: PreparedDcdm, r, rn, fallen: bool):
    """The search direction before A-orthogonalisation (module docstring), or None when the
    network's output is useless (zero, not finite, or of non-positive energy ``cᵀAc``)."""
    xp = op.xp
    if prepared.relaxation is None:
        return r if fallen else prepared.model(r / rn)
    z = prepared.smooth(r)
    if fallen:
        return z
    r1 = r - op.matvec(z)
    n1 = _norm(xp, r1)
    if n1 > 0 and math.isfinite(n1):
        c = prepared.model(r1 / n1)
        Ac = op.matvec(c)
        cAc = float(xp.sum(c * Ac))
        if not (cAc > 0 and math.isfinite(cAc)):
            # the smoothed part alone would still be a direction, but the network would be
            # silently ignored: report it as the caller reports any useless direction
            return None
        gamma = float(xp.sum(c * r1)) / cAc
        z = z + gamma * c
        r1 = r1 - gamma * Ac
    return z + prepared.smooth(r1)


def _dcdm_column(op, b, x0, tol, maxiter, prepared, k, callback):
    """One right-hand side. Returns ``(x, n_iters, fallback_iteration or None, status)``
    with status ``BREAKDOWN`` (CG itself met non-positive curvature), ``STOPPED`` (the
    callback returned True) or ``None`` (ran to its tolerance or budget: the caller reads
    the true residual)."""
    xp = op.xp
    x = xp.zeros_like(b) if x0 is None else xp.astype(x0, b.dtype, copy=True)
    r = b - op.matvec(x) if x0 is not None else b
    rn = _norm(xp, r)
    dirs: deque[Any] = deque(maxlen=max(int(k), 1))
    fallback_at = None
    best, stall = rn, 0
    eps = float(xp.finfo(b.dtype).eps)
    it = 0
    while rn > tol and it < maxiter:
        q = _direction(op, prepared, r, rn, fallback_at is not None)
        if q is None:
            useless = True
        else:
            p = q
            for pj, Apj, pApj in dirs:
                p = p - (float(xp.sum(q * Apj)) / pApj) * pj
            Ap = op.matvec(p)
            pAp = float(xp.sum(p * Ap))
            pr = float(xp.sum(p * r))
            pn = _norm(xp, p)
            useless = not (math.isfinite(pAp) and math.isfinite(pr) and pAp > 0
                           and abs(pr) > 10 * eps * pn * rn)
        if useless:
            if fallback_at is not None:
                # (preconditioned) CG itself met pᵀAp <= 0: A is not positive definite
                return x, it, fallback_at, Status.BREAKDOWN
            fallback_at = it
            dirs.clear()
            continue
        alpha = pr / pAp
        x = x + alpha * p
        r = b - op.matvec(x)  # the true residual, as in the paper (no drift)
        rn = _norm(xp, r)
        dirs.append((p, Ap, pAp))
        it += 1
        if callback is not None and wants_stop(callback(it, x, rn)):
            return x, it, fallback_at, Status.STOPPED
        if rn < STALL_FACTOR * best:
            best, stall = rn, 0
        else:
            stall += 1
            if stall >= STALL_PATIENCE and fallback_at is None:
                fallback_at = it
                dirs.clear()
                stall = 0
        if not math.isfinite(rn):
            break
    return x, it, fallback_at, None


def dcdm_solve(op, b, *, model, k, smoother, x0, rtol, atol, maxiter, callback, what,
               prepared=None, check_symmetric=True):
    """DCDM on every column of ``b``; warns (``DirectionFallbackWarning``) when it falls
    back to CG, and returns its status otherwise (nothing else is warned).

    ``prepared`` is a :class:`PreparedDcdm` from an earlier solve with the same matrix (the
    adjoint reuses the forward's). Returns an :class:`IterativeOutcome` whose ``prepared``
    is that object. ``callback`` is the user's ``callback(LinearSolveState)``.
    """
    xp = op.xp
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{WHERE}: k (directions kept for A-orthogonalisation) must be a "
                         f"positive integer, got {k!r}")
    if check_symmetric:
        _check_symmetric(op, xp, "dcdm")
    device = B.device(b)
    if prepared is None:
        prepared = prepare(op, model, smoother, xp, device)
    maxiter = 10 * op.n if maxiter is None else int(maxiter)
    s, bs, x0s, finite = scaled_problem(b, x0, xp)
    if not bool(xp.all(finite)):
        kk = 1 if b.ndim == 1 else b.shape[1]
        return IterativeOutcome(xp.full_like(b, math.nan), 0, False, prepared, Status.NONFINITE,
                                xp.full((kk,), math.nan, dtype=b.dtype))
    tols = thresholds(bs, rtol, atol / s, xp)
    cols = [bs] if b.ndim == 1 else [bs[:, j] for j in range(b.shape[1])]
    xs, iters, falls, statuses = [], [], [], []
    for j, bj in enumerate(cols):
        x0j = None if x0s is None else (x0s if b.ndim == 1 else x0s[:, j])
        if not bool(xp.any(bj != 0)):
            x0j = None  # a zero right-hand side has the solution 0: no iteration
        cb = None
        if callback is not None:
            def cb(it, x, rn, sj=float(s[j])):
                return callback(LinearSolveState(it, x * sj, rn * sj))
        x, it, fb, st = _dcdm_column(op, bj, x0j, float(tols[j]), maxiter, prepared, k, cb)
        xs.append(x)
        iters.append(it)
        falls.append(fb)
        statuses.append(st)
        if st is Status.STOPPED:
            break
    if len(xs) < len(cols):  # stopped by the callback: the other columns did not start
        xs += [xp.zeros_like(cols[0]) for _ in range(len(cols) - len(xs))]
    x = xs[0] if b.ndim == 1 else xp.stack(xs, axis=1)
    fell = [(j, f) for j, f in enumerate(falls) if f is not None]
    if fell:
        where_ = ", ".join(f"column {j}: iteration {f}" for j, f in fell) if b.ndim == 2 \
            else f"iteration {fell[0][1]}"
        warnings.warn(
            f"{WHERE}(method='dcdm'): in {what} the network's directions stagnated or broke "
            f"down ({where_}); continued with "
            f"{'SGS-preconditioned ' if prepared.relaxation is not None else ''}conjugate "
            "gradients from the current iterate. "
            "The model does not fit this matrix: train one on it "
            "(diffsolve.linear.train_direction_model) or use method='cg'/'pcg'",
            DirectionFallbackWarning, stacklevel=caller_stacklevel())
    out = _verdict(op, unscale(x, s), b, rtol, atol, max(iters), prepared,
                   Status.STOPPED in statuses, xp)
    if not out.converged and Status.BREAKDOWN in statuses:
        out.status = Status.BREAKDOWN
    return out
