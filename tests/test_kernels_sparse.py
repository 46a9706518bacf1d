"""Tests of the CSR kernels: Numba against naive references and scipy, and
the CuPy twins against the Numba kernels (``gpu`` marker).

Accuracy is checked against a rounding-error bound rather than a blanket
tolerance: a sum of ``m`` products computed in precision ``eps`` is within
about ``m * eps * sum(|products|)`` of the exact value, so every entry must
satisfy ``|got - ref| <= (m + 2) * eps * absref`` with ``absref`` the same
computation on absolute values. This is tight (a wrong index or a dropped
entry fails it by orders of magnitude) and it demands exact zeros for empty
rows.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from diffsolve.kernels.cpu.sparse import csr_matvec, csr_sampled_outer

try:  # tests/ is a package or a namespace package under the rootdir
    from tests.naive import naive_csr_matvec, naive_csr_sampled_outer
except ImportError:  # tests/ itself is on sys.path (rootdir-less prepend import)
    from naive import naive_csr_matvec, naive_csr_sampled_outer


FLOAT_DTYPES = [np.float32, np.float64]
INDEX_DTYPES = [np.int32, np.int64]
# None means 1-D x / u / v; an int is the number of columns k of a 2-D one.
KS = [None, 1, 3]

# (name, n_rows, n_cols, density, rows forced empty)
SHAPES = [
    ("square", 30, 30, 0.2, (0, 11, 29)),
    ("tall", 41, 17, 0.25, (3, 40)),
    ("wide", 13, 50, 0.15, (0, 6)),
    ("single", 1, 1, 1.0, ()),
    ("no-entries", 6, 4, 0.0, ()),
]


class CSR:
    """Random duplicate-free CSR test matrix, as raw arrays plus scipy form."""

    def __init__(self, shape, dtype, index_dtype, seed):
        _, n_rows, n_cols, density, empty_rows = shape
        rng = np.random.default_rng(seed)
        a = sp.random_array(
            (n_rows, n_cols),
            density=density,
            format="coo",
            dtype=np.float64,
            rng=rng,
            data_sampler=rng.standard_normal,
        )
        keep = ~np.isin(a.coords[0], empty_rows)
        a = sp.csr_array(
            (a.data[keep], (a.coords[0][keep], a.coords[1][keep])), shape=(n_rows, n_cols)
        )
        a.sort_indices()
        # A duplicate-free pattern is a precondition of the sampled outer
        # product (one out entry per (i, j)); random_array guarantees it.
        assert a.has_canonical_format
        self.n_rows, self.n_cols = n_rows, n_cols
        self.indptr = a.indptr.astype(index_dtype)
        self.indices = a.indices.astype(index_dtype)
        self.data = a.data.astype(dtype)
        self.scipy = sp.csr_array((self.data, self.indices, self.indptr), shape=(n_rows, n_cols))
        self.empty_rows = np.flatnonzero(np.diff(self.indptr) == 0)
        if empty_rows:
            assert set(empty_rows) <= set(self.empty_rows.tolist())
        self.rng = rng

    @property
    def row_lengths(self):
        return np.diff(self.indptr).astype(np.int64)

    def dense(self, n, k, dtype):
        """Random dense (n,) or (n, k) array of `dtype`."""
        shape = (n,) if k is None else (n, k)
        return self.rng.standard_normal(shape).astype(dtype)


def assert_within_rounding(got, ref, absref, n_terms, dtype, factor=1.0):
    """Assert ``|got - ref| <= factor * (n_terms + 2) * eps(dtype) * absref``."""
    eps = np.finfo(dtype).eps
    n_terms = np.asarray(n_terms, dtype=np.float64)
    if got.ndim == 2 and n_terms.ndim == 1:
        n_terms = n_terms[:, None]
    bound = factor * (n_terms + 2) * eps * absref
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    bad = ~(err <= bound)  # also catches NaN in got
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} entries outside the rounding bound; "
        f"worst error {err[bad].max()} vs bound {bound[bad].min()}"
    )


@pytest.fixture(params=SHAPES, ids=[s[0] for s in SHAPES])
def shape(request):
    return request.param


@pytest.fixture(params=FLOAT_DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return request.param


@pytest.fixture(params=INDEX_DTYPES, ids=lambda d: np.dtype(d).name)
def index_dtype(request):
    return request.param


@pytest.fixture(params=KS, ids=lambda k: "1d" if k is None else f"k{k}")
def k(request):
    return request.param


@pytest.fixture
def mat(shape, dtype, index_dtype):
    return CSR(shape, dtype, index_dtype, seed=1234)


# --------------------------------------------------------------------------
# The naive references themselves, on a case small enough to do by hand
# --------------------------------------------------------------------------


def test_naive_references_by_hand():
    # [[1, 0, 2],
    #  [0, 0, 0],
    #  [0, 3, 0]]
    indptr = np.array([0, 2, 2, 3])
    indices = np.array([0, 2, 1])
    data = np.array([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(
        naive_csr_matvec(indptr, indices, data, np.array([1.0, 10.0, 100.0])), [201.0, 0.0, 30.0]
    )
    x2 = np.array([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]])
    np.testing.assert_array_equal(
        naive_csr_matvec(indptr, indices, data, x2), [[201.0, 402.0], [0.0, 0.0], [30.0, 60.0]]
    )
    u = np.array([1.0, 2.0, 3.0])
    v = np.array([5.0, 7.0, 11.0])
    # entries (0,0), (0,2), (2,1)
    np.testing.assert_array_equal(naive_csr_sampled_outer(indptr, indices, u, v), [5.0, 11.0, 21.0])
    u2 = np.stack([u, -u], axis=1)
    v2 = np.stack([v, 2 * v], axis=1)
    np.testing.assert_array_equal(
        naive_csr_sampled_outer(indptr, indices, u2, v2), [-5.0, -11.0, -21.0]
    )


# --------------------------------------------------------------------------
# csr_matvec
# --------------------------------------------------------------------------


class TestCsrMatvec:
    def test_matches_naive(self, mat, dtype, k):
        x = mat.dense(mat.n_cols, k, dtype)
        out_shape = (mat.n_rows,) if k is None else (mat.n_rows, k)
        # NaN-filled out: the kernel must overwrite every entry, empty rows too.
        out = np.full(out_shape, np.nan, dtype=dtype)

        got = csr_matvec(mat.indptr, mat.indices, mat.data, x, out)

        assert got is out
        assert got.dtype == dtype and got.shape == out_shape
        ref = naive_csr_matvec(mat.indptr, mat.indices, mat.data, x)
        absref = naive_csr_matvec(mat.indptr, mat.indices, np.abs(mat.data), np.abs(x))
        assert_within_rounding(got, ref, absref, mat.row_lengths, dtype)
        assert np.all(got[mat.empty_rows] == 0)

    def test_matches_scipy(self, mat, dtype, k):
        x = mat.dense(mat.n_cols, k, dtype)
        out_shape = (mat.n_rows,) if k is None else (mat.n_rows, k)
        got = csr_matvec(mat.indptr, mat.indices, mat.data, x, np.empty(out_shape, dtype))
        expected = mat.scipy @ x
        assert expected.dtype == got.dtype
        absref = naive_csr_matvec(mat.indptr, mat.indices, np.abs(mat.data), np.abs(x))
        # Both sides round, each within the bound of the exact value.
        assert_within_rounding(got, expected, absref, mat.row_lengths, dtype, factor=2.0)

    def test_poisson_matches_scipy(self, dtype, index_dtype):
        # A structured matrix with an exactly known answer on a constant
        # vector: interior rows of the 5-point Laplacian sum to zero.
        m = 16
        t = sp.diags_array([-1.0, 2.0, -1.0], offsets=[-1, 0, 1], shape=(m, m))
        eye = sp.eye_array(m)
        a = (sp.kron(eye, t) + sp.kron(t, eye)).tocsr().astype(dtype)
        indptr, indices = a.indptr.astype(index_dtype), a.indices.astype(index_dtype)
        ones = np.ones(m * m, dtype=dtype)
        got = csr_matvec(indptr, indices, a.data, ones, np.empty(m * m, dtype))
        np.testing.assert_array_equal(got, a @ ones)
        row, col = np.divmod(np.arange(m * m), m)
        interior = (row > 0) & (row < m - 1) & (col > 0) & (col < m - 1)
        assert np.all(got[interior] == 0)
        assert np.all(got[~interior] > 0)

    def test_out_dtype_sets_precision(self, index_dtype):
        # float32 matrix and vector, float64 out: arithmetic is float64, so
        # the result matches the float64 reference to float64 rounding.
        mat = CSR(SHAPES[0], np.float32, index_dtype, seed=7)
        x = mat.dense(mat.n_cols, None, np.float32)
        got = csr_matvec(mat.indptr, mat.indices, mat.data, x, np.empty(mat.n_rows, np.float64))
        ref = naive_csr_matvec(mat.indptr, mat.indices, mat.data, x)
        absref = naive_csr_matvec(mat.indptr, mat.indices, np.abs(mat.data), np.abs(x))
        assert_within_rounding(got, ref, absref, mat.row_lengths, np.float64)

    def test_non_contiguous_x_and_out(self, dtype):
        mat = CSR(SHAPES[1], dtype, np.int32, seed=3)
        x_f = np.asfortranarray(mat.dense(mat.n_cols, 3, dtype))
        big_out = np.full((mat.n_rows, 7), np.nan, dtype=dtype)
        out = big_out[:, 1:4]
        assert not x_f.flags.c_contiguous and not out.flags.c_contiguous
        got = csr_matvec(mat.indptr, mat.indices, mat.data, x_f, out)
        assert got is out
        ref = naive_csr_matvec(mat.indptr, mat.indices, mat.data, x_f)
        absref = naive_csr_matvec(mat.indptr, mat.indices, np.abs(mat.data), np.abs(x_f))
        assert_within_rounding(big_out[:, 1:4], ref, absref, mat.row_lengths, dtype)
        # Columns outside the view are untouched.
        assert np.isnan(big_out[:, [0, 4, 5, 6]]).all()

    def test_zero_rows(self):
        indptr = np.zeros(1, dtype=np.int32)
        empty_idx = np.zeros(0, dtype=np.int32)
        got = csr_matvec(indptr, empty_idx, np.zeros(0), np.ones(5), np.empty(0))
        assert got.shape == (0,)

    @pytest.mark.parametrize(
        "x_shape, out_shape",
        [((4,), (3, 1)), ((4,), (2,)), ((4, 2), (3, 3)), ((4, 2), (3,)), ((4, 2, 1), (3, 2, 1))],
    )
    def test_shape_errors(self, x_shape, out_shape):
        a = sp.csr_array(np.eye(3, 4))
        with pytest.raises(ValueError):
            csr_matvec(a.indptr, a.indices, a.data, np.ones(x_shape), np.empty(out_shape))

    def test_indices_data_mismatch(self):
        a = sp.csr_array(np.eye(3))
        with pytest.raises(ValueError, match="same shape"):
            csr_matvec(a.indptr, a.indices, a.data[:2], np.ones(3), np.empty(3))


# --------------------------------------------------------------------------
# csr_sampled_outer
# --------------------------------------------------------------------------


class TestCsrSampledOuter:
    def test_matches_naive(self, mat, dtype, k):
        u = mat.dense(mat.n_rows, k, dtype)
        v = mat.dense(mat.n_cols, k, dtype)
        out = np.full(mat.indices.shape, np.nan, dtype=dtype)

        got = csr_sampled_outer(mat.indptr, mat.indices, u, v, out)

        assert got is out
        assert got.dtype == dtype and got.shape == mat.indices.shape
        ref = naive_csr_sampled_outer(mat.indptr, mat.indices, u, v)
        absref = naive_csr_sampled_outer(mat.indptr, mat.indices, np.abs(u), np.abs(v))
        assert_within_rounding(got, ref, absref, 1 if k is None else k, dtype)

    def test_matches_dense_outer_on_pattern(self, mat, dtype, k):
        # Independent check through scipy/numpy: (u @ v.T) read at the
        # stored (row, col) coordinates.
        u = mat.dense(mat.n_rows, k, dtype)
        v = mat.dense(mat.n_cols, k, dtype)
        got = csr_sampled_outer(mat.indptr, mat.indices, u, v, np.empty(mat.indices.shape, dtype))
        u2 = u.astype(np.float64).reshape(mat.n_rows, -1)
        v2 = v.astype(np.float64).reshape(mat.n_cols, -1)
        rows = np.repeat(np.arange(mat.n_rows), mat.row_lengths)
        expected = (u2 @ v2.T)[rows, mat.indices]
        absref = (np.abs(u2) @ np.abs(v2).T)[rows, mat.indices]
        assert_within_rounding(got, expected, absref, u2.shape[1], dtype, factor=2.0)

    def test_is_gradient_of_bilinear_form(self, dtype, index_dtype):
        # d/d(data) of u^T A v is the sampled outer product of u and v:
        # check it against central finite differences on the data array.
        mat = CSR(SHAPES[0], np.float64, index_dtype, seed=11)
        u = mat.dense(mat.n_rows, None, np.float64)
        v = mat.dense(mat.n_cols, None, np.float64)

        def form(data):
            return u @ csr_matvec(mat.indptr, mat.indices, data, v, np.empty(mat.n_rows))

        out = np.empty(mat.data.shape, dtype)
        grad = csr_sampled_outer(mat.indptr, mat.indices, u.astype(dtype), v.astype(dtype), out)
        h = 1e-3
        fd = np.empty_like(mat.data)
        for jj in range(mat.data.size):
            e = np.zeros_like(mat.data)
            e[jj] = h
            fd[jj] = (form(mat.data + e) - form(mat.data - e)) / (2 * h)
        # The form is linear in data, so central differences are exact up to
        # rounding; float32 grad is limited by its own rounding.
        rtol = 1e-5 if dtype == np.float32 else 1e-9
        np.testing.assert_allclose(grad, fd, rtol=rtol, atol=rtol * np.abs(fd).max())

    def test_non_contiguous_out(self):
        mat = CSR(SHAPES[2], np.float64, np.int64, seed=5)
        u = mat.dense(mat.n_rows, 3, np.float64)
        v = mat.dense(mat.n_cols, 3, np.float64)
        big = np.full((mat.indices.size, 2), np.nan)
        got = csr_sampled_outer(mat.indptr, mat.indices, u, v, big[:, 1])
        ref = naive_csr_sampled_outer(mat.indptr, mat.indices, u, v)
        absref = naive_csr_sampled_outer(mat.indptr, mat.indices, np.abs(u), np.abs(v))
        assert_within_rounding(got, ref, absref, 3, np.float64)
        assert_within_rounding(big[:, 1], ref, absref, 3, np.float64)
        assert np.isnan(big[:, 0]).all()

    def test_shape_errors(self):
        a = sp.csr_array(np.eye(3, 4))
        out = np.empty(a.nnz)
        with pytest.raises(ValueError, match="same ndim"):
            csr_sampled_outer(a.indptr, a.indices, np.ones(3), np.ones((4, 1)), out)
        with pytest.raises(ValueError, match="rows"):
            csr_sampled_outer(a.indptr, a.indices, np.ones(4), np.ones(4), out)
        with pytest.raises(ValueError, match="columns"):
            csr_sampled_outer(a.indptr, a.indices, np.ones((3, 2)), np.ones((4, 3)), out)
        with pytest.raises(ValueError, match="shape of indices"):
            csr_sampled_outer(a.indptr, a.indices, np.ones(3), np.ones(4), np.empty(a.nnz + 1))
        with pytest.raises(ValueError, match="1-D or 2-D"):
            csr_sampled_outer(a.indptr, a.indices, np.ones((3, 1, 1)), np.ones((4, 1, 1)), out)


# --------------------------------------------------------------------------
# CPU/GPU twins: the CuPy kernels against the Numba kernels
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda_sparse():
    """The CuPy twin module, or skip when CuPy or a CUDA device is missing."""
    cupy = pytest.importorskip("cupy")
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except (cupy.cuda.runtime.CUDARuntimeError, cupy.cuda.driver.CUDADriverError) as exc:
        pytest.skip(f"no usable CUDA device: {exc}")
    if n_devices == 0:
        pytest.skip("CuPy is installed but sees no CUDA device")
    from diffsolve.kernels.cuda import sparse

    return sparse


@pytest.mark.gpu
class TestCudaTwins:
    """The CuPy kernels must agree with the Numba kernels on the same data.

    Tolerances: both sides are within the rounding bound of the exact value
    (the GPU may fuse multiply-adds), so they are within twice it of each other.
    """

    def test_csr_matvec(self, cuda_sparse, mat, dtype, k):
        import cupy

        x = mat.dense(mat.n_cols, k, dtype)
        out_shape = (mat.n_rows,) if k is None else (mat.n_rows, k)
        cpu = csr_matvec(mat.indptr, mat.indices, mat.data, x, np.empty(out_shape, dtype))
        out_d = cupy.full(out_shape, np.nan, dtype=dtype)

        got_d = cuda_sparse.csr_matvec(
            cupy.asarray(mat.indptr),
            cupy.asarray(mat.indices),
            cupy.asarray(mat.data),
            cupy.asarray(x),
            out_d,
        )

        assert got_d is out_d
        got = cupy.asnumpy(got_d)
        assert got.dtype == dtype and got.shape == out_shape
        absref = naive_csr_matvec(mat.indptr, mat.indices, np.abs(mat.data), np.abs(x))
        assert_within_rounding(got, cpu, absref, mat.row_lengths, dtype, factor=2.0)
        assert np.all(got[mat.empty_rows] == 0)

    def test_csr_sampled_outer(self, cuda_sparse, mat, dtype, k):
        import cupy

        u = mat.dense(mat.n_rows, k, dtype)
        v = mat.dense(mat.n_cols, k, dtype)
        cpu = csr_sampled_outer(mat.indptr, mat.indices, u, v, np.empty(mat.indices.shape, dtype))
        out_d = cupy.full(mat.indices.shape, np.nan, dtype=dtype)

        got_d = cuda_sparse.csr_sampled_outer(
            cupy.asarray(mat.indptr),
            cupy.asarray(mat.indices),
            cupy.asarray(u),
            cupy.asarray(v),
            out_d,
        )

        assert got_d is out_d
        got = cupy.asnumpy(got_d)
        absref = naive_csr_sampled_outer(mat.indptr, mat.indices, np.abs(u), np.abs(v))
        assert_within_rounding(got, cpu, absref, 1 if k is None else k, dtype, factor=2.0)

    def test_non_contiguous_and_mixed_precision(self, cuda_sparse):
        import cupy

        mat = CSR(SHAPES[1], np.float32, np.int64, seed=3)
        x = np.asfortranarray(mat.dense(mat.n_cols, 3, np.float32))
        cpu_big = np.full((mat.n_rows, 5), np.nan)
        csr_matvec(mat.indptr, mat.indices, mat.data, x, cpu_big[:, 1:4])
        gpu_big = cupy.full((mat.n_rows, 5), np.nan)
        got = cuda_sparse.csr_matvec(
            cupy.asarray(mat.indptr),
            cupy.asarray(mat.indices),
            cupy.asarray(mat.data),
            cupy.asarray(x),
            gpu_big[:, 1:4],
        )
        assert got.dtype == np.float64
        gpu_big = cupy.asnumpy(gpu_big)
        assert np.isnan(gpu_big[:, [0, 4]]).all()
        absref = naive_csr_matvec(mat.indptr, mat.indices, np.abs(mat.data), np.abs(x))
        assert_within_rounding(
            gpu_big[:, 1:4], cpu_big[:, 1:4], absref, mat.row_lengths, np.float64, factor=2.0
        )

    def test_poisson_large(self, cuda_sparse):
        # Many blocks, and enough rows that a grid or index error shows.
        import cupy
        import cupyx.scipy.sparse as cusp

        m = 300
        t = sp.diags_array([-1.0, 2.0, -1.0], offsets=[-1, 0, 1], shape=(m, m))
        eye = sp.eye_array(m)
        a = (sp.kron(eye, t) + sp.kron(t, eye)).tocsr()
        rng = np.random.default_rng(0)
        x = rng.standard_normal((m * m, 4))
        cpu = csr_matvec(a.indptr, a.indices, a.data, x, np.empty((m * m, 4)))
        a_d = cusp.csr_matrix(sp.csr_matrix(a))
        out_d = cupy.empty((m * m, 4))
        cuda_sparse.csr_matvec(a_d.indptr, a_d.indices, a_d.data, cupy.asarray(x), out_d)
        np.testing.assert_allclose(cupy.asnumpy(out_d), cpu, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(cupy.asnumpy(a_d @ cupy.asarray(x)), cpu, rtol=1e-13, atol=1e-13)
        u = rng.standard_normal(m * m)
        v = rng.standard_normal(m * m)
        grad_cpu = csr_sampled_outer(a.indptr, a.indices, u, v, np.empty(a.nnz))
        grad_d = cupy.empty(a.nnz)
        u_d, v_d = cupy.asarray(u), cupy.asarray(v)
        cuda_sparse.csr_sampled_outer(a_d.indptr, a_d.indices, u_d, v_d, grad_d)
        np.testing.assert_array_equal(cupy.asnumpy(grad_d), grad_cpu)

    def test_rejects_host_arrays(self, cuda_sparse):
        import cupy

        a = sp.csr_array(np.eye(3))
        with pytest.raises(TypeError, match=r"cupy\.ndarray"):
            cuda_sparse.csr_matvec(
                cupy.asarray(a.indptr),
                cupy.asarray(a.indices),
                cupy.asarray(a.data),
                cupy.ones(3),
                np.empty(3),
            )
