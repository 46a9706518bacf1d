"""Jacobians ``J = ∂f/∂y`` of the vector field, for the Newton iterations of stiff methods.

Where ``J`` comes from (see :func:`make_jacobian`):

* ``jac=callable``: the user's ``jac(t, y, params)``, a dense ``(n, n)`` array, a
  :class:`diffsolve.CSR` or a SciPy / CuPy sparse matrix (of the flattened state);
* ``jac="vjp"``: assembled from vector–Jacobian products ``Jᵀu`` of the VJP odeint uses for
  gradients (HIPS autograd for a NumPy ``f``, or ``vjp=``, e.g. the pair from
  ``from_torch`` / ``from_jax``): exact, one product per row colour;
* ``jac="fd"`` (the default): forward differences, one evaluation of ``f`` per column
  colour.

With ``jac_sparsity=`` (the pattern of ``J``) the columns (finite differences) or rows
(VJPs) that share no row (column) are probed together: greedy colouring of the column
intersection graph, A. R. Curtis, M. J. D. Powell, J. K. Reid, "On the estimation of
sparse Jacobian matrices", IMA J. Appl. Math. 13 (1974) 117–119. A tridiagonal pattern
needs 3 probes whatever ``n``; without a pattern ``J`` is dense and takes ``n``.

The backward rule needs the *exact* Jacobian at the converged stages (the implicit function
theorem): it uses the user's ``jac`` if given, else the VJP assembly, never differences.
"""

from __future__ import annotations

import math

from .. import _backend as B

np = B.host_namespace()

__all__ = ["Jacobian", "colour_columns", "make_jacobian", "pattern_csr"]

WHERE = "diffsolve.ode.odeint"


def pattern_csr(jac_sparsity, n: int):
    """``(indptr, indices)`` host int64 arrays of a pattern given as a dense array, a SciPy
    or CuPy sparse matrix or a :class:`diffsolve.CSR`; the diagonal is always included
    (the Newton matrix ``I − hγJ`` has it)."""
    if isinstance(jac_sparsity, B.CSR):
        indptr = B.host_numpy(jac_sparsity.indptr)
        indices = B.host_numpy(jac_sparsity.indices)
        shape = jac_sparsity.shape
    elif B.is_sparse(jac_sparsity):
        A = B.as_csr(jac_sparsity)
        indptr, indices, shape = B.host_numpy(A.indptr), B.host_numpy(A.indices), A.shape
    elif B.is_array(jac_sparsity):
        dense = B.host_numpy(jac_sparsity)
        shape = tuple(dense.shape)
        if len(shape) != 2:
            raise ValueError(f"{WHERE}: jac_sparsity must be a 2-D pattern ({n}, {n}), got "
                             f"shape {shape}")
        rows, cols = np.nonzero(dense)
        indptr = np.concatenate([np.zeros(1, dtype=np.int64),
                                 np.cumsum(np.bincount(rows, minlength=shape[0]))])
        indices = cols
    else:
        raise TypeError(f"{WHERE}: jac_sparsity must be a dense 0/1 array, a SciPy/CuPy sparse "
                        f"matrix or a diffsolve.CSR of shape ({n}, {n}), got "
                        f"{type(jac_sparsity).__name__}")
    if tuple(shape) != (n, n):
        raise ValueError(f"{WHERE}: jac_sparsity has shape {tuple(shape)}, but the state has "
                         f"{n} components; give the pattern of ∂f/∂y, shape ({n}, {n})")
    indptr = np.asarray(indptr, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    # union with the diagonal, sorted by (row, column), duplicates dropped
    keys = np.unique(np.concatenate([rows * n + indices, np.arange(n, dtype=np.int64) * (n + 1)]))
    rows, cols = keys // n, keys % n
    indptr = np.concatenate([np.zeros(1, dtype=np.int64),
                             np.cumsum(np.bincount(rows, minlength=n))])
    return indptr, cols


def colour_columns(indptr, indices, n: int):
    """Greedy colouring of the columns of a CSR pattern: two columns sharing a row get
    different colours (Curtis–Powell–Reid). Returns an int64 array of colours."""
    # the rows of each column (the transposed pattern)
    order = np.argsort(indices, kind="stable")
    rows_of_entries = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    col_rows = rows_of_entries[order]
    col_ptr = np.concatenate([np.zeros(1, dtype=np.int64),
                              np.cumsum(np.bincount(indices, minlength=n))])
    indptr_l, indices_l = indptr.tolist(), indices.tolist()
    col_ptr_l, col_rows_l = col_ptr.tolist(), col_rows.tolist()
    colour = [-1] * n
    for j in range(n):
        used = set()
        for r in col_rows_l[col_ptr_l[j]:col_ptr_l[j + 1]]:
            for k in indices_l[indptr_l[r]:indptr_l[r + 1]]:
                ck = colour[k]
                if ck >= 0:
                    used.add(ck)
        c = 0
        while c in used:
            c += 1
        colour[j] = c
    return np.asarray(colour, dtype=np.int64)


class Jacobian:
    """``J(t, y)`` of the flattened field, dense ``(n, n)`` or sparse CSR, by one recipe.

    ``nfe`` counts the evaluations of ``f`` spent (finite differences), ``n_vjp`` the VJPs,
    ``n_evals`` the Jacobians formed.
    """

    def __init__(self, kind, xp, n, dtype, device, *, rhs=None, fvjp=None, user=None,
                 params=None, shape=None, pattern=None):
        self.kind, self.xp, self.n = kind, xp, n
        self.dtype, self.device = dtype, device
        self.rhs, self.fvjp, self.user = rhs, fvjp, user
        self.params, self.shape = params, shape
        self.nfe = self.n_vjp = self.n_evals = 0
        #: ``pullback_at(t, y) -> pull``, ``pull(v) -> (v_y, v_p)``: the VJPs at one point
        #: from one trace of f (set for an autograd-traced field); else fvjp per product
        self.pullback_at = None
        self._last_pull = None
        self.sparse = pattern is not None
        if pattern is not None:
            indptr, indices = pattern
            self.indptr, self.indices = indptr, indices
            self.rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
            if kind == "vjp":  # rows sharing no column: colour the columns of Jᵀ
                t_indptr, t_indices = _transpose_pattern(indptr, indices, n)
                self.colour = colour_columns(t_indptr, t_indices, n)
                self.entry_colour = self.colour[self.rows]
            else:
                self.colour = colour_columns(indptr, indices, n)
                self.entry_colour = self.colour[indices]
            self.n_colours = int(self.colour.max()) + 1 if n else 0
            self._csr_parts = (xp.asarray(indptr, device=device),
                               xp.asarray(indices, device=device))
        self.eps = float(xp.finfo(dtype).eps)

    @property
    def probes(self) -> int:
        """Products (f evaluations or VJPs) one Jacobian costs."""
        return self.n_colours if self.sparse else self.n

    def __call__(self, t: float, y):
        self.n_evals += 1
        if self.kind == "user":
            return self._user(t, y)
        if self.kind == "vjp":
            return self._by_vjp(t, y)
        return self._by_fd(t, y)

    # -- recipes -----------------------------------------------------------------------
    def _user(self, t, y):
        xp, n = self.xp, self.n
        shape = self.shape
        J = self.user(t, xp.reshape(y, shape) if shape != (n,) else y, self.params)
        if isinstance(J, B.CSR):
            J = J.to_sparse()
        if B.is_sparse(J):
            J = B.as_csr(J)
            if tuple(J.shape) != (n, n):
                raise ValueError(f"{WHERE}: jac returned a sparse matrix of shape "
                                 f"{tuple(J.shape)} at t={t!r}; expected ({n}, {n})")
            return J
        if getattr(J, "shape", None) != (n, n):
            raise ValueError(f"{WHERE}: jac(t, y, params) returned "
                             f"{_describe(J)} at t={t!r}; it must return ∂f/∂y of the "
                             f"flattened state, shape ({n}, {n}) (dense array, "
                             "diffsolve.CSR or SciPy/CuPy sparse matrix)")
        return J

    def _assemble(self, data):
        """A CSR matrix of the pattern with the given entries (host int parts)."""
        xp = self.xp
        indptr, indices = self._csr_parts
        if B.is_numpy(xp):
            return B.CSR(B.host_numpy(data), self.indices, self.indptr,
                         (self.n, self.n)).to_sparse()
        return B.CSR(data, indices, indptr, (self.n, self.n)).to_sparse()

    def _by_fd(self, t, y):
        xp, n = self.xp, self.n
        f0 = self.rhs(t, y)
        root = math.sqrt(self.eps)
        # step of each component: relative to |y_j|, floored so that a component at 0
        # still moves; the difference actually taken (y + δ) − y is divided by
        delta = root * xp.maximum(xp.abs(y), xp.asarray(1e-3, dtype=self.dtype,
                                                        device=self.device))
        delta = (y + delta) - y
        if not self.sparse:
            cols = []
            for j in range(n):
                e = xp.zeros_like(y)
                e[j] = delta[j]
                cols.append((self.rhs(t, y + e) - f0) / delta[j])
            self.nfe += n + 1
            return xp.stack(cols, axis=1)
        host_delta = B.host_numpy(delta) if B.is_numpy(xp) else delta
        data = xp.zeros((self.indices.shape[0],), dtype=self.dtype, device=self.device)
        colour = self.colour
        for c in range(self.n_colours):
            mask_cols = xp.asarray(colour == c, device=self.device)
            v = xp.where(mask_cols, delta, xp.zeros_like(delta))
            df = self.rhs(t, y + v) - f0
            sel = np.nonzero(self.entry_colour == c)[0]
            r, cidx = self.rows[sel], self.indices[sel]
            if B.is_numpy(xp):
                data[sel] = df[r] / host_delta[cidx]
            else:
                data[xp.asarray(sel)] = df[xp.asarray(r)] / delta[xp.asarray(cidx)]
        self.nfe += self.n_colours + 1
        return self._assemble(data)

    def pull_for(self, t, y):
        """``pull(v) -> (v_y, v_p)`` at ``(t, y)``: the one traced for the last Jacobian
        when it was formed at this very point, else a new one."""
        last = self._last_pull
        if last is not None and last[0] == t and last[1] is y:
            return last[2]
        if self.pullback_at is not None:
            pull = self.pullback_at(t, y)
        else:
            def pull(v, t=t, y=y):
                return self.fvjp(t, y, v)
        self._last_pull = (t, y, pull)
        return pull

    def _by_vjp(self, t, y):
        xp, n = self.xp, self.n
        pull = self.pull_for(t, y)
        if not self.sparse:
            rows = []
            for i in range(n):
                u = xp.zeros_like(y)
                u[i] = 1.0
                rows.append(xp.asarray(pull(u)[0], dtype=self.dtype))
            self.n_vjp += n
            return xp.stack(rows, axis=0)
        data = xp.zeros((self.indices.shape[0],), dtype=self.dtype, device=self.device)
        colour = self.colour  # of the rows
        for c in range(self.n_colours):
            u = xp.asarray(colour == c, device=self.device)
            u = xp.astype(u, self.dtype)
            w = xp.asarray(pull(u)[0], dtype=self.dtype)
            sel = np.nonzero(self.entry_colour == c)[0]
            cidx = self.indices[sel]
            if B.is_numpy(xp):
                data[sel] = w[cidx]
            else:
                data[xp.asarray(sel)] = w[xp.asarray(cidx)]
        self.n_vjp += self.n_colours
        return self._assemble(data)


def _transpose_pattern(indptr, indices, n):
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    keys = np.sort(indices * n + rows)
    t_rows, t_cols = keys // n, keys % n
    t_indptr = np.concatenate([np.zeros(1, dtype=np.int64),
                               np.cumsum(np.bincount(t_rows, minlength=n))])
    return t_indptr, t_cols


def _describe(out) -> str:
    shape = getattr(out, "shape", None)
    if shape is None:
        return f"a {type(out).__name__}"
    return f"an array of shape {tuple(shape)}"


def make_jacobian(jac, jac_sparsity, *, xp, n, dtype, device, rhs, fvjp, params, shape,
                  exact: bool = False) -> Jacobian:
    """The Jacobian recipe for odeint's ``jac`` / ``jac_sparsity`` options.

    ``exact=True`` (the backward rule) replaces finite differences by the VJP assembly.
    """
    pattern = pattern_csr(jac_sparsity, n) if jac_sparsity is not None else None
    common = dict(rhs=rhs, fvjp=fvjp, params=params, shape=tuple(shape))
    if callable(jac):
        return Jacobian("user", xp, n, dtype, device, user=jac, **common)
    kind = "vjp" if (exact or jac == "vjp") else "fd"
    return Jacobian(kind, xp, n, dtype, device, pattern=pattern, **common)
