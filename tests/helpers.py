"""Test helpers: namespace-aware comparisons, finite differences, test matrices."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def to_numpy(x):
    """A NumPy copy of an array of any library under test (host copy is fine in tests)."""
    if hasattr(x, "get"):  # cupy
        return x.get()
    if type(x).__module__.startswith("array_api_strict"):
        return np.asarray(x.__array_namespace__().asarray(x, copy=True)._array)
    return np.asarray(x)


def assert_close(actual, desired, *, xp=None, rtol=1e-7, atol=0.0, dtype=None):
    """Like ``xp_assert_close``: namespace, dtype and shape checked as well as the values."""
    if xp is not None:
        import array_api_compat

        got = array_api_compat.array_namespace(actual)
        assert got.__name__.split(".")[-1] == xp.__name__.split(".")[-1], (got, xp)
    if dtype is not None:
        assert actual.dtype == dtype, (actual.dtype, dtype)
    a, d = to_numpy(actual), to_numpy(desired)
    assert a.shape == d.shape, (a.shape, d.shape)
    np.testing.assert_allclose(a, d, rtol=rtol, atol=atol)


def central_difference(f, x, direction, h=1e-6):
    """(f(x + h v) - f(x - h v)) / 2h for a scalar function of a NumPy array."""
    return (f(x + h * direction) - f(x - h * direction)) / (2 * h)


def spd_matrix(rng, n, cond=10.0):
    """A dense symmetric positive definite matrix with condition number ``cond``."""
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eig = np.geomspace(1.0, cond, n)
    A = (q * eig) @ q.T
    return (A + A.T) / 2


def poisson_2d(m, shift=0.0):
    """The 5-point Laplacian on an m x m interior grid (+ shift I), as canonical CSR."""
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    eye = sp.eye(m)
    A = (sp.kron(t, eye) + sp.kron(eye, t) + shift * sp.eye(m * m)).tocsr()
    A.sum_duplicates()
    A.sort_indices()
    return A


def ot_problem(rng, n=7, m=5, batch=(), scale=1.0):
    """Random positive weights ``a`` (n,), ``b`` (m,) of mass 1 and a cost in [0, scale),
    with optional leading batch dimensions."""
    C = rng.random((*batch, n, m)) * scale
    a = rng.random((*batch, n)) + 0.1
    a /= a.sum(-1, keepdims=True)
    b = rng.random((*batch, m)) + 0.1
    b /= b.sum(-1, keepdims=True)
    return a, b, C


def ot_clouds(rng, n, m=None):
    """Two Gaussian clouds in 2-D, squared-Euclidean cost scaled to max 1, uniform weights."""
    m = n if m is None else m
    x = rng.standard_normal((n, 2))
    y = rng.standard_normal((m, 2)) + 1.0
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return np.full(n, 1.0 / n), np.full(m, 1.0 / m), C / C.max()


#: options of each ``linear.solve`` method for gradient checks: tolerances tight enough for
#: central differences (SOR with a budget that reaches them)
LINEAR_GRAD_OPTIONS = {
    "direct": {},
    "cg": {"rtol": 1e-13},
    "pcg": {"rtol": 1e-13},
    "sor": {"rtol": 1e-13, "omega": 1.3, "maxiter": 100_000},
    "ssor-cg": {"rtol": 1e-13, "omega": 1.2},
}
