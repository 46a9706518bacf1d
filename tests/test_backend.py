"""diffsolve._backend: namespaces, devices, sparse detection, logsumexp, kernel dispatch."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.special import logsumexp as scipy_logsumexp

import diffsolve as ds
from diffsolve import _backend as B
from tests.helpers import to_numpy


def test_namespace_of_dense_sparse_and_operators(xp):
    x = xp.ones(3)
    assert B.array_namespace(x).__name__.split(".")[-1] == xp.__name__.split(".")[-1]
    assert B.is_numpy(B.array_namespace(sp.eye(3, format="csr")))
    assert B.is_numpy(B.array_namespace(spla.aslinearoperator(np.eye(2)), None, 1.0))
    assert B.is_numpy(B.array_namespace(ds.CSR.from_sparse(sp.eye(2))))


def test_mixed_libraries_raise_with_advice():
    strict = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match=r"myfunc: inputs live in different array libraries: "
                                        r"numpy \(ndarray\), array_api_strict"):
        B.array_namespace(np.ones(2), strict.ones(2), where="myfunc")
    with pytest.raises(TypeError, match="myfunc: expected arrays, got a builtins.str"):
        B.array_namespace(np.ones(2), "x", where="myfunc")


def test_sparse_and_operator_detection():
    S = sp.random(4, 4, density=0.5, format="coo", random_state=1)
    assert B.is_sparse(S) and B.is_sparse(sp.csr_array(S)) and B.is_sparse(ds.CSR.from_sparse(S))
    assert not B.is_sparse(np.eye(2))
    assert B.is_linear_operator(spla.aslinearoperator(S)) and not B.is_linear_operator(S)


def test_as_csr_is_canonical_and_keeps_values():
    rows, cols = np.array([0, 0, 1, 0]), np.array([1, 0, 1, 1])
    S = sp.coo_matrix((np.array([1.0, 2.0, 3.0, 4.0]), (rows, cols)), shape=(2, 2))
    C = B.as_csr(S)
    assert C.format == "csr" and C.has_canonical_format
    np.testing.assert_array_equal(C.toarray(), [[2.0, 5.0], [0.0, 3.0]])
    already = B.as_csr(C)
    assert already is C


def test_device(xp):
    x = xp.ones(2)
    assert B.device(x) == x.device


@settings(max_examples=60, deadline=None, derandomize=True)  # same examples in CI
@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 6)),
              elements=st.floats(-1e300, 1e300, allow_nan=False)),
       st.sampled_from([None, 0, 1]))
def test_logsumexp_matches_scipy(x, axis):
    np.testing.assert_allclose(B.logsumexp(x, axis=axis), scipy_logsumexp(x, axis=axis),
                               rtol=1e-12)


def test_logsumexp_edge_cases(xp):
    x = xp.asarray([[-np.inf, -np.inf], [1000.0, 1000.0], [np.inf, 0.0]])
    out = to_numpy(B.logsumexp(x, axis=1, xp=xp))
    assert out[0] == -np.inf
    np.testing.assert_allclose(out[1], 1000.0 + np.log(2.0), rtol=1e-15)
    assert out[2] == np.inf
    x32 = xp.asarray([-200.0, -200.0], dtype=xp.float32)  # exp underflows in float32
    r32 = B.logsumexp(x32, keepdims=True, xp=xp)
    assert r32.dtype == xp.float32 and r32.shape == (1,)
    np.testing.assert_allclose(to_numpy(r32), [-200.0 + np.log(2.0)], rtol=1e-6)


def test_kernel_dispatch():
    import array_api_compat.numpy as xnp

    from diffsolve.kernels.cpu import sparse as cpu_sparse

    assert B.get_kernel(xnp, "sparse.csr_matvec") is cpu_sparse.csr_matvec
    strict = pytest.importorskip("array_api_strict")
    assert B.get_kernel(strict, "sparse.csr_matvec") is None  # standard-only fallback
    with pytest.raises(ValueError, match="has no kernel 'nope'"):
        B.get_kernel(xnp, "sparse.nope")
    with pytest.raises(ValueError, match="'module.function'"):
        B.get_kernel(xnp, "csr_matvec")


@pytest.mark.gpu
def test_kernel_dispatch_gpu():
    import array_api_compat.cupy as xcp

    from diffsolve.kernels.cuda import sparse as cuda_sparse

    assert B.get_kernel(xcp, "sparse.csr_matvec") is cuda_sparse.csr_matvec


def test_readonly_arrays_are_exportable():
    a = np.broadcast_to(np.ones(3), (2, 3))
    out = B.dlpack_exportable(a)
    assert out.flags.writeable and np.array_equal(out, a)
    b = np.ones(3)
    assert B.dlpack_exportable(b) is b  # writeable arrays cross without a copy


def test_promote_real_floating():
    assert B.promote_real_floating(np.float32, np.float32) == np.float32
    assert B.promote_real_floating(np.int64, np.float32) == np.float64
    assert B.promote_real_floating(np.int32, np.int64) == np.float64


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_lu_solves_match_numpy(dtype):
    # the direct LAPACK getrs path (b of A's dtype) and the scipy fallback (other dtypes)
    rng = np.random.default_rng(0)
    A = (rng.standard_normal((6, 6)) + 6 * np.eye(6)).astype(dtype)
    lu = B.DenseLU(A, B.host_namespace())
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for b in (rng.standard_normal(6), rng.standard_normal((6, 3))):
        for bb in (b.astype(dtype), b.astype(np.float64 if dtype == np.float32 else
                                              np.float32)):
            for trans in (False, True):
                M = A.T if trans else A
                ref = np.linalg.solve(M.astype(np.float64), bb.astype(np.float64))
                x = lu.solve(bb, trans=trans)
                assert np.allclose(x, ref, rtol=tol * 10, atol=tol * 10)


def test_dense_lu_travels_between_dask_workers():
    # a factor inside a persisted residual is pickled when Dask moves it to another
    # worker; a LAPACK wrapper kept on the instance made that fail (and the scheduler
    # wait forever)
    cloudpickle = pytest.importorskip("cloudpickle")
    A = np.array([[4.0, 1.0], [1.0, 3.0]])
    lu = B.DenseLU(A, B.host_namespace())
    moved = cloudpickle.loads(cloudpickle.dumps(lu))
    b = np.array([1.0, 2.0])
    assert np.array_equal(moved.solve(b), lu.solve(b))
    assert np.allclose(A @ moved.solve(b), b)


def _naive_checksum(v):
    """The definition, one entry at a time in Python integers: sum_i ((i+1)·c | 1)·bits_i
    modulo 2⁶⁴, with c = 0x9E3779B97F4A7C15."""
    flat = np.ascontiguousarray(v).reshape(-1)
    width = flat.dtype.itemsize
    bits = flat.view({8: np.uint64, 4: np.uint32, 2: np.uint16}.get(width, np.uint8))
    c, total = 0x9E3779B97F4A7C15, 0
    for i, b in enumerate(bits.tolist()):
        total += ((((i + 1) * c) % 2**64) | 1) * int(b)
    return total % 2**64


@pytest.mark.parametrize("make", [
    lambda r: r.standard_normal(257),
    lambda r: r.standard_normal((7, 9)).astype(np.float32),
    lambda r: r.standard_normal((6, 5)).T,  # not contiguous
    lambda r: r.integers(-5, 5, 40).astype(np.int16),
    lambda r: r.integers(0, 2, 9).astype(bool),
    lambda r: np.zeros(0),
])
def test_content_checksum_matches_the_naive_definition(make):
    v = make(np.random.default_rng(3))
    assert B.content_checksum(v) == _naive_checksum(v)


def test_content_checksum_sees_every_change():
    v = np.random.default_rng(4).standard_normal(1000)
    base = B.content_checksum(v)
    for i in (0, 500, 999):
        w = v.copy()
        w[i] = np.nextafter(w[i], np.inf)  # the smallest possible change
        assert B.content_checksum(w) != base
    assert B.content_checksum(v[::-1].copy()) != base  # a permutation
    assert B.content_checksum(-0.0 * np.ones(3)) != B.content_checksum(np.zeros(3))


def test_namespace_is_remembered_per_types_but_not_for_csr():
    """array_namespace answers from a per-type memo; diffsolve's CSR (NumPy or CuPy data
    behind one type) is looked at every time, and errors are never remembered."""
    B._NAMESPACE_BY_TYPES.clear()
    assert B.is_numpy(B.array_namespace(np.ones(2), None, 1.0))
    assert (np.ndarray, type(None), float) in B._NAMESPACE_BY_TYPES
    B.array_namespace(ds.CSR.from_sparse(sp.eye(2)))
    assert (ds.CSR,) not in B._NAMESPACE_BY_TYPES
    with pytest.raises(TypeError, match="expected arrays"):
        B.array_namespace(np.ones(2), "x")
    assert (np.ndarray, str) not in B._NAMESPACE_BY_TYPES
    strict = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match="different array libraries"):
        B.array_namespace(np.ones(2), strict.ones(2))
    with pytest.raises(TypeError, match="different array libraries"):  # still, the second time
        B.array_namespace(np.ones(2), strict.ones(2))


def test_finite_operands_product_ignores_the_invalid_flag_only():
    import array_api_compat.numpy as xp

    with B.finite_operands_product(xp):
        out = np.array([np.inf]) - np.array([np.inf])  # "invalid": ignored inside
        assert np.isnan(out[0])
        with pytest.warns(RuntimeWarning, match="overflow"):
            np.array([1e308]) * 10.0  # overflow is still reported
    with pytest.warns(RuntimeWarning, match="invalid"):
        np.array([np.inf]) - np.array([np.inf])  # and invalid again outside
