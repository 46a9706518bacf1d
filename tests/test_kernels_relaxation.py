"""Tests of the SOR / SSOR relaxation kernels: Numba against naive references,
PyAMG and the explicit SSOR preconditioner, and the CuPy twins against the
Numba kernels (``gpu`` marker).

Tolerances. A sweep is a chain of row updates, each a short sum, so its
rounding error is a small multiple of ``eps * max|x|`` on the diagonally
dominant test matrices (every update contracts earlier errors). The checks
use ``TOL[dtype] * max|reference|``: ~1e-13 relative in float64 and ~2e-6 in
float32, far below what a wrong index, a stale ``x_j`` or a wrong ``omega``
produces (order 1e-2 and up).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse as sp

from diffsolve.kernels.cpu.relaxation import (
    color_groups,
    greedy_coloring,
    sor_solve,
    sor_sweep,
    sor_sweep_multicolor,
    ssor_sweep,
    ssor_sweep_multicolor,
)

try:  # tests/ is a package or a namespace package under the rootdir
    from tests.helpers import poisson_2d
    from tests.naive_relaxation import (
        naive_is_valid_coloring,
        naive_residual_norm,
        naive_sor_solve,
        naive_sor_sweep,
        naive_sor_sweep_in_order,
        naive_ssor_sweep,
    )
except ImportError:  # tests/ itself is on sys.path (rootdir-less prepend import)
    from helpers import poisson_2d
    from naive_relaxation import (
        naive_is_valid_coloring,
        naive_residual_norm,
        naive_sor_solve,
        naive_sor_sweep,
        naive_sor_sweep_in_order,
        naive_ssor_sweep,
    )


# (value dtype, index dtype): every value and index dtype appears, without
# the full product (each combination is a separate Numba compilation).
DTYPES = [(np.float64, np.int32), (np.float32, np.int64), (np.float64, np.int64)]
OMEGAS = [0.6, 1.0, 1.7]
# None means 1-D b / x; an int is the number of columns k of a 2-D one.
KS = [None, 3]
TOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-13}


def _ids_dtypes(p):
    return f"{np.dtype(p[0]).name}-{np.dtype(p[1]).name}"


class System:
    """A square CSR test matrix as raw arrays, plus b and x0 generators."""

    def __init__(self, a, dtype, index_dtype, seed=0):
        a = sp.csr_array(a)
        a.sum_duplicates()
        a.sort_indices()
        assert a.has_canonical_format
        self.n = a.shape[0]
        self.indptr = a.indptr.astype(index_dtype)
        self.indices = a.indices.astype(index_dtype)
        self.data = a.data.astype(dtype)
        self.diag = a.diagonal().astype(dtype)
        self.dtype = np.dtype(dtype)
        self.scipy = sp.csr_array((self.data, self.indices, self.indptr), shape=a.shape)
        self.rng = np.random.default_rng(seed)

    @property
    def csr(self):
        return self.indptr, self.indices, self.data, self.diag

    def vec(self, k=None):
        """Random (n,) or (n, k) array of the system's dtype."""
        shape = (self.n,) if k is None else (self.n, k)
        return self.rng.standard_normal(shape).astype(self.dtype)


def random_dd(n, density, seed):
    """Random, structurally symmetric, strictly diagonally dominant matrix.

    Only the pattern is symmetric (the two triangles get independent random
    values); the diagonal is ``1 + sum |off-diagonal|`` of its row, and a few
    rows keep only their diagonal.
    """
    rng = np.random.default_rng(seed)
    coo = sp.random_array((n, n), density=density, format="coo", rng=rng)
    r, c = coo.coords
    isolated = np.zeros(n, dtype=bool)
    isolated[rng.choice(n, size=max(1, n // 20), replace=False)] = True
    keep = (r != c) & ~isolated[r] & ~isolated[c]
    r, c = r[keep], c[keep]
    rows, cols = np.concatenate([r, c]), np.concatenate([c, r])
    pattern = sp.coo_array((np.ones(rows.size), (rows, cols)), shape=(n, n)).tocsr()
    pattern.sum_duplicates()
    pattern.data = rng.standard_normal(pattern.nnz)
    diag = 1.0 + np.asarray(abs(pattern).sum(axis=1)).ravel()
    return (pattern + sp.diags_array(diag)).tocsr()


@pytest.fixture(scope="module")
def dd_matrix():
    return random_dd(60, 0.08, seed=7)


@pytest.fixture(params=DTYPES, ids=_ids_dtypes)
def system(request, dd_matrix):
    dtype, index_dtype = request.param
    return System(dd_matrix, dtype, index_dtype, seed=11)


@pytest.fixture(params=KS, ids=lambda k: "1d" if k is None else f"k{k}")
def k(request):
    return request.param


def assert_close(got, ref, dtype):
    """``max|got - ref| <= TOL[dtype] * max|ref|`` (NaN fails)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape
    scale = max(float(np.abs(ref).max(initial=0.0)), 1.0)
    err = float(np.abs(got - ref).max(initial=0.0))
    assert err <= TOL[np.dtype(dtype)] * scale, (err, TOL[np.dtype(dtype)] * scale)


# --------------------------------------------------------------------------
# The naive references themselves, by hand
# --------------------------------------------------------------------------


def test_naive_references_by_hand():
    # [[4, -1], [-1, 4]], b = 1, from 0 with omega = 1 (Gauss-Seidel):
    # forward: x0 = 1/4, x1 = (1 + 1/4)/4 = 5/16; backward after it:
    # x1 = 5/16 again, x0 = (1 + 5/16)/4 = 21/64.
    indptr, indices = np.array([0, 2, 4]), np.array([0, 1, 0, 1])
    data, diag, b = np.array([4.0, -1.0, -1.0, 4.0]), np.array([4.0, 4.0]), np.ones(2)
    x0 = np.zeros(2)
    np.testing.assert_array_equal(
        naive_sor_sweep(indptr, indices, data, diag, b, x0, 1.0), [0.25, 5 / 16]
    )
    np.testing.assert_array_equal(
        naive_sor_sweep(indptr, indices, data, diag, b, x0, 1.0, reverse=True), [5 / 16, 0.25]
    )
    np.testing.assert_array_equal(
        naive_ssor_sweep(indptr, indices, data, diag, b, x0, 1.0), [21 / 64, 5 / 16]
    )
    # omega = 2 from x = 0: x0 = 2 * 1/4 = 1/2; x1 = -0 + 2 * (1 + 1/2)/4 = 3/4.
    np.testing.assert_array_equal(
        naive_sor_sweep(indptr, indices, data, diag, b, x0, 2.0), [0.5, 0.75]
    )
    assert naive_residual_norm(indptr, indices, data, b, np.array([1 / 3, 1 / 3])) == 0.0
    assert naive_is_valid_coloring(indptr, indices, [0, 1])
    assert not naive_is_valid_coloring(indptr, indices, [1, 1])


# --------------------------------------------------------------------------
# Sequential sweeps
# --------------------------------------------------------------------------


class TestSorSweep:
    @pytest.mark.parametrize("omega", OMEGAS)
    @pytest.mark.parametrize("reverse", [False, True], ids=["forward", "backward"])
    def test_matches_naive(self, system, k, omega, reverse):
        b, x = system.vec(k), system.vec(k)
        ref = naive_sor_sweep(*system.csr, b, x, omega, reverse=reverse)

        got = sor_sweep(*system.csr, b, x, omega, reverse=reverse)

        assert got is x and got.dtype == system.dtype
        assert_close(got, ref, system.dtype)

    @pytest.mark.parametrize("omega", OMEGAS)
    def test_ssor_matches_naive(self, system, k, omega):
        b, x = system.vec(k), system.vec(k)
        ref = naive_ssor_sweep(*system.csr, b, x, omega)

        got = ssor_sweep(*system.csr, b, x, omega)

        assert got is x
        assert_close(got, ref, system.dtype)

    def test_2d_columns_are_independent_1d_sweeps(self, system):
        b, x = system.vec(4), system.vec(4)
        cols = [sor_sweep(*system.csr, b[:, c].copy(), x[:, c].copy(), 1.3) for c in range(4)]
        sor_sweep(*system.csr, b, x, 1.3)
        # Same arithmetic in the same order per column: bit for bit.
        np.testing.assert_array_equal(x, np.stack(cols, axis=1))

    @pytest.mark.parametrize("omega", [0.8, 1.0, 1.5])
    @pytest.mark.parametrize("which", ["poisson", "random"])
    def test_forward_matches_pyamg(self, omega, which, dd_matrix):
        from pyamg.relaxation.relaxation import sor

        a = poisson_2d(12, shift=0.1) if which == "poisson" else dd_matrix
        s = System(a, np.float64, np.int32, seed=3)
        b, x0 = s.vec(), s.vec()
        ours, theirs = x0.copy(), x0.copy()
        for _ in range(20):
            sor_sweep(*s.csr, b, ours, omega)
            sor(s.scipy, theirs, b, omega, iterations=1, sweep="forward")
        # PyAMG divides by a_ii after the sum, we multiply by omega / a_ii:
        # a last-bit difference per update, nothing more after 20 sweeps.
        rel = np.abs(ours - theirs).max() / np.abs(theirs).max()
        assert rel <= 1e-12, rel

    def test_poisson_iterates_converge_to_solution(self):
        s = System(poisson_2d(8), np.float64, np.int32)
        b = s.vec()
        x = np.zeros(s.n)
        for _ in range(200):
            ssor_sweep(*s.csr, b, x, 1.6)
        np.testing.assert_allclose(s.scipy @ x, b, atol=1e-10)

    def test_ssor_from_zero_applies_inverse_preconditioner(self, dd_matrix):
        # M = (D + wL) D^-1 (D + wU) / (w (2 - w)), A = D + L + U.
        s = System(random_dd(14, 0.3, seed=5), np.float64, np.int32)
        dense = s.scipy.toarray()
        d = np.diag(np.diag(dense))
        lower, upper = np.tril(dense, -1), np.triu(dense, 1)
        r = s.vec()
        for omega in (0.5, 1.0, 1.4, 1.9):
            m = (d + omega * lower) @ np.linalg.inv(d) @ (d + omega * upper)
            m /= omega * (2 - omega)
            x = np.zeros(s.n)
            ssor_sweep(*s.csr, r, x, omega)
            np.testing.assert_allclose(x, np.linalg.solve(m, r), rtol=1e-12, atol=1e-14)

    def test_float32_arithmetic_and_mixed_inputs(self, dd_matrix):
        # x sets the precision: float64 matrix and b with a float32 x.
        s = System(dd_matrix, np.float64, np.int32)
        b, x = s.vec(), s.vec().astype(np.float32)
        ref = naive_sor_sweep(*s.csr, b, x, 1.2)
        got = sor_sweep(*s.csr, b, x, 1.2)
        assert got.dtype == np.float32
        assert_close(got, ref, np.float32)

    def test_zero_sized(self):
        empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0)
        indptr = np.zeros(1, np.int32)
        x = np.zeros(0)
        assert sor_sweep(indptr, empty_i, empty_f, empty_f, np.zeros(0), x, 1.5) is x

    def test_validation(self, dd_matrix):
        s = System(dd_matrix, np.float64, np.int32)
        b, x = s.vec(), s.vec()
        indptr, indices, data, diag = s.csr
        with pytest.raises(ValueError, match="same shape"):
            sor_sweep(indptr, indices, data[:-1], diag, b, x, 1.0)
        with pytest.raises(ValueError, match="diag"):
            sor_sweep(indptr, indices, data, diag[:-1], b, x, 1.0)
        with pytest.raises(ValueError, match="rows"):
            sor_sweep(indptr, indices, data, diag, b[:-1], x[:-1], 1.0)
        with pytest.raises(ValueError, match="b and x"):
            sor_sweep(indptr, indices, data, diag, b[:, None], x, 1.0)
        with pytest.raises(ValueError, match="1-D or 2-D"):
            ssor_sweep(indptr, indices, data, diag, b[:, None, None], x[:, None, None], 1.0)
        with pytest.raises(TypeError, match="float32 or float64"):
            sor_sweep(indptr, indices, data, diag, b, x.astype(np.int64), 1.0)
        x.flags.writeable = False
        with pytest.raises(ValueError, match="writeable"):
            sor_sweep(indptr, indices, data, diag, b, x, 1.0)


# --------------------------------------------------------------------------
# Compiled stationary iteration
# --------------------------------------------------------------------------


class TestSorSolve:
    @pytest.mark.parametrize("symmetric", [False, True], ids=["sor", "ssor"])
    @pytest.mark.parametrize("omega", [1.0, 1.5])
    @pytest.mark.parametrize("which", ["poisson", "random"])
    def test_matches_naive(self, symmetric, omega, which, dd_matrix):
        a = poisson_2d(6, shift=0.2) if which == "poisson" else dd_matrix
        s = System(a, np.float64, np.int32, seed=2)
        b, x0 = s.vec(), s.vec()
        tol = 1e-9 * np.linalg.norm(b)
        x_ref, it_ref, res_ref = naive_sor_solve(*s.csr, b, x0, omega, symmetric, tol, 500)

        x = x0.copy()
        it, res = sor_solve(*s.csr, b, x, omega, symmetric, tol, 500)

        assert isinstance(it, int) and isinstance(res, float)
        assert 0 < it < 500
        assert it == it_ref
        assert res <= tol
        np.testing.assert_allclose(res, res_ref, rtol=1e-6)
        np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-12 * np.abs(x_ref).max())
        assert res == pytest.approx(np.linalg.norm(b - s.scipy @ x), rel=1e-12)

    def test_converged_on_entry_does_nothing(self, dd_matrix):
        s = System(dd_matrix, np.float64, np.int32)
        b = s.vec()
        x = np.linalg.solve(s.scipy.toarray(), b)
        x_before = x.copy()
        res0 = np.linalg.norm(b - s.scipy @ x)
        it, res = sor_solve(*s.csr, b, x, 1.5, False, 10 * res0 + 1e-14, 100)
        assert it == 0
        assert res == pytest.approx(res0, rel=1e-6, abs=1e-15)
        np.testing.assert_array_equal(x, x_before)

    def test_maxiter(self, dd_matrix):
        s = System(dd_matrix, np.float64, np.int32)
        b = s.vec()
        x = np.zeros(s.n)
        it, res = sor_solve(*s.csr, b, x, 1.2, True, 0.0, 7)
        assert it == 7
        ref = np.zeros(s.n)
        for _ in range(7):
            ref = naive_ssor_sweep(*s.csr, b, ref, 1.2)
        assert_close(x, ref, np.float64)
        assert res == pytest.approx(np.linalg.norm(b - s.scipy @ x), rel=1e-12)
        x0 = s.vec()
        x = x0.copy()
        it, res = sor_solve(*s.csr, b, x, 1.2, False, 0.0, 0)
        assert it == 0 and res == pytest.approx(np.linalg.norm(b - s.scipy @ x0), rel=1e-12)
        np.testing.assert_array_equal(x, x0)

    def test_check_every(self):
        s = System(poisson_2d(6), np.float64, np.int32)
        b = s.vec()
        tol = 1e-8 * np.linalg.norm(b)
        it1, _ = sor_solve(*s.csr, b, np.zeros(s.n), 1.5, False, tol, 1000)
        it5, res5 = sor_solve(*s.csr, b, np.zeros(s.n), 1.5, False, tol, 1000, check_every=5)
        assert res5 <= tol
        # Checked only at multiples of 5: the first multiple of 5 at or past it1.
        assert it5 == -(-it1 // 5) * 5
        # The last sweep is always checked, whatever check_every.
        it, _ = sor_solve(*s.csr, b, np.zeros(s.n), 1.5, False, 0.0, 13, check_every=5)
        assert it == 13

    def test_float32(self, dd_matrix):
        s = System(dd_matrix, np.float32, np.int64)
        b = s.vec()
        x = np.zeros(s.n, np.float32)
        tol = 1e-5 * float(np.linalg.norm(b))
        it, res = sor_solve(*s.csr, b, x, 1.3, False, tol, 500)
        assert 0 < it < 500 and res <= tol
        # The kernel's residual is formed in float32, near its cancellation
        # limit here (||r|| ~ 1e-5 ||b||): agreement to a few percent.
        assert naive_residual_norm(*s.csr[:3], b, x) == pytest.approx(res, rel=5e-2)

    def test_nan_runs_to_maxiter(self, dd_matrix):
        s = System(dd_matrix, np.float64, np.int32)
        b = s.vec()
        b[3] = np.nan
        it, res = sor_solve(*s.csr, b, np.zeros(s.n), 1.0, False, 1e-8, 5)
        assert it == 5 and np.isnan(res)

    def test_zero_diagonal_raises(self, dd_matrix):
        # Numba's Python error model checks float division by zero.
        s = System(dd_matrix, np.float64, np.int32)
        indptr, indices, data, diag = s.csr
        with pytest.raises(ZeroDivisionError):
            sor_solve(indptr, indices, data, diag * 0, s.vec(), np.zeros(s.n), 1.0, False,
                      1e-8, 5)

    def test_validation(self, dd_matrix):
        s = System(dd_matrix, np.float64, np.int32)
        b = s.vec(2)
        with pytest.raises(ValueError, match="1-D"):
            sor_solve(*s.csr, b, np.zeros_like(b), 1.0, False, 1e-8, 10)
        b = s.vec()
        with pytest.raises(ValueError, match="maxiter"):
            sor_solve(*s.csr, b, np.zeros_like(b), 1.0, False, 1e-8, -1)
        with pytest.raises(ValueError, match="check_every"):
            sor_solve(*s.csr, b, np.zeros_like(b), 1.0, False, 1e-8, 10, check_every=0)
        with pytest.raises(ValueError, match="both"):
            sor_solve(*s.csr, b, np.zeros_like(b), 1.0, False, 1e-8, 10,
                      color_ptr=np.array([0, s.n]))


# --------------------------------------------------------------------------
# Colouring and multicolour sweeps
# --------------------------------------------------------------------------


class TestColoring:
    def test_poisson_is_red_black(self):
        m = 9
        a = poisson_2d(m)
        for index_dtype in (np.int32, np.int64):
            colors = greedy_coloring(a.indptr.astype(index_dtype), a.indices.astype(index_dtype))
            assert colors.dtype == np.int32
            row, col = np.divmod(np.arange(m * m), m)
            np.testing.assert_array_equal(colors, (row + col) % 2)

    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_valid_on_random_patterns(self, seed):
        a = random_dd(80, 0.06 * (seed + 1), seed=seed)
        colors = greedy_coloring(a.indptr, a.indices)
        assert naive_is_valid_coloring(a.indptr, a.indices, colors)
        assert colors.max() + 1 <= np.diff(a.indptr).max()
        # Greedy in natural order: every row's colour is the smallest one
        # missing among its earlier neighbours.
        for i in range(a.shape[0]):
            nbrs = a.indices[a.indptr[i] : a.indptr[i + 1]]
            taken = {int(colors[j]) for j in nbrs if j < i}
            assert colors[i] == min(set(range(len(taken) + 1)) - taken)

    def test_complete_graph_needs_n_colors(self):
        a = sp.csr_array(np.ones((6, 6)))
        np.testing.assert_array_equal(greedy_coloring(a.indptr, a.indices), np.arange(6))

    def test_color_groups(self):
        colors = np.array([2, 0, 2, 0, 1, 2, 0], dtype=np.int32)
        color_ptr, color_rows = color_groups(colors)
        assert color_ptr.dtype == np.int64 and color_rows.dtype == np.int64
        np.testing.assert_array_equal(color_ptr, [0, 3, 4, 7])
        np.testing.assert_array_equal(color_rows, [1, 3, 6, 4, 0, 2, 5])
        # A colour with no row gets an empty range.
        color_ptr, color_rows = color_groups(np.array([3, 0, 3]))
        np.testing.assert_array_equal(color_ptr, [0, 1, 1, 1, 3])
        np.testing.assert_array_equal(color_rows, [1, 0, 2])
        color_ptr, color_rows = color_groups(np.zeros(0, np.int32))
        np.testing.assert_array_equal(color_ptr, [0])
        assert color_rows.shape == (0,)
        with pytest.raises(ValueError, match="non-negative"):
            color_groups(np.array([0, -1]))


@pytest.fixture(scope="module")
def mc_matrix():
    """A random pattern with several colours and enough rows for threads."""
    return random_dd(300, 0.02, seed=21)


@pytest.fixture(params=DTYPES, ids=_ids_dtypes)
def mc_system(request, mc_matrix):
    dtype, index_dtype = request.param
    s = System(mc_matrix, dtype, index_dtype, seed=4)
    s.color_ptr, s.color_rows = color_groups(greedy_coloring(s.indptr, s.indices))
    assert len(s.color_ptr) - 1 >= 3
    return s


class TestMulticolor:
    @pytest.mark.parametrize("omega", [0.9, 1.6])
    @pytest.mark.parametrize("reverse", [False, True], ids=["forward", "backward"])
    def test_equals_sequential_in_color_order(self, mc_system, k, omega, reverse):
        s = mc_system
        b, x = s.vec(k), s.vec(k)
        order = s.color_rows[::-1] if reverse else s.color_rows
        ref = naive_sor_sweep_in_order(order, *s.csr, b, x, omega)

        got = sor_sweep_multicolor(*s.csr, b, x, omega, s.color_ptr, s.color_rows, reverse)

        assert got is x
        assert_close(got, ref, s.dtype)

    @pytest.mark.parametrize("omega", [0.9, 1.6])
    def test_ssor_equals_sequential_in_color_order(self, mc_system, k, omega):
        s = mc_system
        b, x = s.vec(k), s.vec(k)
        ref = naive_sor_sweep_in_order(s.color_rows, *s.csr, b, x, omega)
        ref = naive_sor_sweep_in_order(s.color_rows[::-1], *s.csr, b, ref, omega)

        got = ssor_sweep_multicolor(*s.csr, b, x, omega, s.color_ptr, s.color_rows)

        assert got is x
        assert_close(got, ref, s.dtype)

    def test_poisson_red_black_against_permuted_sequential(self):
        # On the red-black Poisson ordering the multicolour sweep is the
        # natural-order sweep of the permuted matrix P A P^T.
        s = System(poisson_2d(10, shift=0.3), np.float64, np.int32, seed=8)
        s.color_ptr, s.color_rows = color_groups(greedy_coloring(s.indptr, s.indices))
        assert len(s.color_ptr) == 3
        p = s.color_rows
        perm = System(s.scipy[p][:, p], np.float64, np.int32)
        b, x = s.vec(), s.vec()
        xp = x[p].copy()
        sor_sweep_multicolor(*s.csr, b, x, 1.4, s.color_ptr, s.color_rows)
        sor_sweep(*perm.csr, b[p].copy(), xp, 1.4)
        assert_close(x[p], xp, np.float64)

    def test_independent_of_thread_count(self, mc_matrix):
        s = System(mc_matrix, np.float64, np.int32)
        cp, cr = color_groups(greedy_coloring(s.indptr, s.indices))
        b, x0 = s.vec(2), s.vec(2)
        results = []
        before = numba.get_num_threads()
        try:
            for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
                numba.set_num_threads(threads)
                for k in (None, 2):
                    x = x0[:, 0].copy() if k is None else x0.copy()
                    bb = b[:, 0].copy() if k is None else b
                    ssor_sweep_multicolor(*s.csr, bb, x, 1.3, cp, cr)
                    results.append(x)
        finally:
            numba.set_num_threads(before)
        # No race and no thread-dependent rounding: bit for bit.
        for got, ref in zip(results[2:], results[:2]):
            np.testing.assert_array_equal(got, ref)

    @pytest.mark.parametrize("symmetric", [False, True], ids=["sor", "ssor"])
    def test_sor_solve_with_colors_matches_naive(self, mc_matrix, symmetric):
        s = System(mc_matrix, np.float64, np.int32, seed=6)
        cp, cr = color_groups(greedy_coloring(s.indptr, s.indices))
        b, x0 = s.vec(), s.vec()
        tol = 1e-9 * np.linalg.norm(b)
        x_ref, it_ref, _ = naive_sor_solve(*s.csr, b, x0, 1.3, symmetric, tol, 300, order=cr)
        x = x0.copy()
        it, res = sor_solve(*s.csr, b, x, 1.3, symmetric, tol, 300, color_ptr=cp, color_rows=cr)
        assert it == it_ref and res <= tol
        np.testing.assert_allclose(x, x_ref, rtol=0, atol=1e-12 * np.abs(x_ref).max())

    def test_validation(self, mc_matrix):
        s = System(mc_matrix, np.float64, np.int32)
        cp, cr = color_groups(greedy_coloring(s.indptr, s.indices))
        b, x = s.vec(), s.vec()
        with pytest.raises(ValueError, match="color_rows"):
            sor_sweep_multicolor(*s.csr, b, x, 1.0, cp, cr[:-1])
        with pytest.raises(ValueError, match="end at n"):
            sor_sweep_multicolor(*s.csr, b, x, 1.0, cp[:-1], cr)
        with pytest.raises(ValueError, match="color_ptr"):
            ssor_sweep_multicolor(*s.csr, b, x, 1.0, cp.reshape(1, -1), cr)


# --------------------------------------------------------------------------
# CUDA twins against the Numba kernels
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda_relax():
    """The CuPy twin module, or skip when CuPy or a CUDA device is missing."""
    cupy = pytest.importorskip("cupy")
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except (cupy.cuda.runtime.CUDARuntimeError, cupy.cuda.driver.CUDADriverError) as exc:
        pytest.skip(f"no usable CUDA device: {exc}")
    if n_devices == 0:
        pytest.skip("CuPy is installed but sees no CUDA device")
    from diffsolve.kernels.cuda import relaxation

    return relaxation


def _to_device(cupy, s):
    return tuple(cupy.asarray(a) for a in s.csr)


# Both twins are within rounding of the exact sweep; the GPU may fuse
# multiply-adds, so allow a few times the CPU-vs-naive tolerance.
GPU_FACTOR = 8.0


@pytest.mark.gpu
class TestCudaTwins:
    @pytest.mark.parametrize("reverse", [False, True], ids=["forward", "backward"])
    def test_sor_sweep_multicolor(self, cuda_relax, mc_system, k, reverse):
        cupy = pytest.importorskip("cupy")
        s = mc_system
        b, x = s.vec(k), s.vec(k)
        x_d = cupy.asarray(x)
        b_d = cupy.asarray(b)
        rows_d = cupy.asarray(s.color_rows)
        for _ in range(3):
            sor_sweep_multicolor(*s.csr, b, x, 1.4, s.color_ptr, s.color_rows, reverse)
            got_d = cuda_relax.sor_sweep_multicolor(
                *_to_device(cupy, s), b_d, x_d, 1.4, s.color_ptr, rows_d, reverse
            )
            assert got_d is x_d
        got = cupy.asnumpy(x_d)
        assert got.dtype == s.dtype
        scale = max(float(np.abs(x).max()), 1.0)
        assert np.abs(got - x).max() <= GPU_FACTOR * TOL[s.dtype] * scale

    def test_ssor_sweep_multicolor(self, cuda_relax, mc_system, k):
        cupy = pytest.importorskip("cupy")
        s = mc_system
        b, x = s.vec(k), s.vec(k)
        x_d = cupy.asarray(x)
        ssor_sweep_multicolor(*s.csr, b, x, 0.8, s.color_ptr, s.color_rows)
        # color_ptr as a plain list works too (it is host data).
        cuda_relax.ssor_sweep_multicolor(
            *_to_device(cupy, s), cupy.asarray(b), x_d, 0.8, list(s.color_ptr),
            cupy.asarray(s.color_rows),
        )
        scale = max(float(np.abs(x).max()), 1.0)
        assert np.abs(cupy.asnumpy(x_d) - x).max() <= GPU_FACTOR * TOL[s.dtype] * scale

    def test_strided_x_and_device_color_ptr(self, cuda_relax, mc_matrix):
        cupy = pytest.importorskip("cupy")
        s = System(mc_matrix, np.float64, np.int32)
        cp, cr = color_groups(greedy_coloring(s.indptr, s.indices))
        b, x = s.vec(3), s.vec(3)
        big = cupy.full((s.n, 5), np.nan)
        big[:, 1:4] = cupy.asarray(x)
        sor_sweep_multicolor(*s.csr, b, x, 1.2, cp, cr)
        got = cuda_relax.sor_sweep_multicolor(
            *_to_device(cupy, s), cupy.asarray(b), big[:, 1:4], 1.2, cupy.asarray(cp),
            cupy.asarray(cr),
        )
        assert got.shape == (s.n, 3)
        big = cupy.asnumpy(big)
        assert np.isnan(big[:, [0, 4]]).all()
        assert np.abs(big[:, 1:4] - x).max() <= GPU_FACTOR * TOL[s.dtype] * np.abs(x).max()

    @pytest.mark.parametrize("which", ["poisson", "random", "clique"])
    def test_coloring_valid(self, cuda_relax, which, mc_matrix):
        cupy = pytest.importorskip("cupy")
        if which == "poisson":
            a = poisson_2d(64)
        elif which == "random":
            a = sp.csr_array(mc_matrix)
        else:  # more than 64 colours: the kernel's fallback path
            a = sp.csr_array(np.ones((100, 100)))
        for index_dtype in (np.int32, np.int64):
            colors_d = cuda_relax.greedy_coloring(
                cupy.asarray(a.indptr.astype(index_dtype)),
                cupy.asarray(a.indices.astype(index_dtype)),
            )
            assert isinstance(colors_d, cupy.ndarray) and colors_d.dtype == np.int32
            colors = cupy.asnumpy(colors_d)
            assert naive_is_valid_coloring(a.indptr, a.indices, colors)
            assert colors.max() + 1 <= np.diff(a.indptr).max()
            if which == "clique":
                assert colors.max() + 1 == 100
            cp_d, cr_d = cuda_relax.color_groups(colors_d)
            assert isinstance(cp_d, np.ndarray) and isinstance(cr_d, cupy.ndarray)
            cp, cr = color_groups(colors)
            np.testing.assert_array_equal(cp_d, cp)
            np.testing.assert_array_equal(cupy.asnumpy(cr_d), cr)

    @pytest.mark.parametrize("symmetric", [False, True], ids=["sor", "ssor"])
    def test_sor_solve_vs_cpu_multicolor(self, cuda_relax, mc_matrix, symmetric):
        cupy = pytest.importorskip("cupy")
        s = System(mc_matrix, np.float64, np.int32, seed=9)
        cp, cr = color_groups(greedy_coloring(s.indptr, s.indices))
        b, x = s.vec(), s.vec()
        tol = 1e-9 * np.linalg.norm(b)
        x_d = cupy.asarray(x)
        it, res = sor_solve(
            *s.csr, b, x, 1.3, symmetric, tol, 400, color_ptr=cp, color_rows=cr, check_every=8
        )
        it_d, res_d = cuda_relax.sor_solve(
            *_to_device(cupy, s), cupy.asarray(b), x_d, 1.3, symmetric, tol, 400,
            color_ptr=cp, color_rows=cupy.asarray(cr),
        )
        assert it_d == it and it % 8 == 0
        assert res_d <= tol
        assert res_d == pytest.approx(res, rel=1e-3)
        np.testing.assert_allclose(cupy.asnumpy(x_d), x, rtol=0, atol=1e-10 * np.abs(x).max())

    def test_sor_solve_colors_itself(self, cuda_relax):
        cupy = pytest.importorskip("cupy")
        s = System(poisson_2d(32, shift=0.1), np.float32, np.int32, seed=10)
        b = s.vec()
        tol = 1e-4 * float(np.linalg.norm(b))
        x_d = cupy.zeros(s.n, dtype=np.float32)
        it, res = cuda_relax.sor_solve(
            *_to_device(cupy, s), cupy.asarray(b), x_d, 1.7, False, tol, 2000
        )
        assert 0 < it < 2000 and res <= tol
        x = cupy.asnumpy(x_d).astype(np.float64)
        # Both residuals are formed in float32 near its cancellation limit.
        exact = np.linalg.norm(b - s.scipy.astype(np.float64) @ x)
        assert exact == pytest.approx(res, rel=0.1)
        it0, res0 = cuda_relax.sor_solve(
            *_to_device(cupy, s), cupy.asarray(b), x_d, 1.7, False, 10 * res, 2000
        )
        assert it0 == 0 and res0 <= 10 * res
