"""Per-call set-up and thread choice (issue 14, item 5).

* ``call_threaded`` measures whether threads pay and switches (the choice is invisible in
  the results: the kernels reduce over fixed blocks);
* the compiled CG loop gives the same iterates on one thread and on all;
* ``linear.solve(method="sor")`` on a fixed budget sweeps exactly ``maxiter`` times, and the
  residual it reports (reused from the compiled loop) is the true residual of ``x``;
* the per-matrix symmetry cache never answers for a matrix mutated in place.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import scipy.sparse as sp

import diffsolve as ds
from diffsolve.kernels.cpu import _config, krylov, relaxation
from diffsolve.linear import _matrix_cache
from tests.helpers import poisson_2d

solve = ds.linear.solve


# --- thread choice ---------------------------------------------------------------------

def _drive(choice, seconds, calls):
    """Run ``calls`` calls with per-unit times ``seconds[parallel]``; the modes chosen."""
    modes = []
    for _ in range(calls):
        parallel = choice.next_is_parallel()
        modes.append(parallel)
        choice.record(parallel, seconds[parallel])
    return modes


def test_thread_choice_goes_serial_when_threads_are_slow_and_comes_back():
    c = _config._ThreadChoice()
    # two trials first: threads twice, then one thread twice
    assert _drive(c, {True: 10.0, False: 1.0}, 4) == [True, True, False, False]
    # threads are 10x slower (a busy machine): one thread runs, threads are retried with
    # a growing gap
    modes = _drive(c, {True: 10.0, False: 1.0}, 2000)
    assert modes.count(True) <= 2 * 8     # trials only: gaps 16, 32, ..., 1024
    assert c.gap == _config._PROBE_MAX
    # the machine becomes idle: the next trial of threads wins and threads stay
    modes = _drive(c, {True: 0.5, False: 1.0}, _config._PROBE_MAX + 2)
    assert modes[-100:].count(True) >= 96
    after = _drive(c, {True: 0.5, False: 1.0}, 200)
    assert after.count(False) <= 2 * 4   # trials of one thread only


def test_thread_choice_sees_load_at_once_and_keeps_the_faster_of_a_trial():
    c = _config._ThreadChoice()
    _drive(c, {True: 0.5, False: 1.0}, 4)
    assert _drive(c, {True: 0.5, False: 1.0}, 5) == [True] * 5
    # load arrives: the first slow parallel call is recorded and the next call is serial
    assert _drive(c, {True: 20.0, False: 1.5}, 2) == [True, False]
    # a trial keeps the faster of its two calls (the first may pay a pool wake-up)
    c = _config._ThreadChoice()
    c.next_is_parallel()
    c.record(True, 9.0)
    c.next_is_parallel()
    c.record(True, 0.5)
    assert c.parallel == 0.5


def test_call_threaded_restores_the_thread_count_and_respects_one_thread():
    A = poisson_2d(300)                 # 4.5e5 stored entries: above the serial threshold
    x = np.linspace(0.0, 1.0, A.shape[0])
    before = numba.get_num_threads()
    expected = A @ x
    for _ in range(40):                 # runs both modes (trials included)
        out = ds.kernels.cpu.sparse.csr_matvec(A.indptr, A.indices, A.data, x,
                                               np.empty_like(x))
        np.testing.assert_array_equal(out, expected)
        assert numba.get_num_threads() == before
    numba.set_num_threads(1)
    try:
        ds.kernels.cpu.sparse.csr_matvec(A.indptr, A.indices, A.data, x, np.empty_like(x))
        assert numba.get_num_threads() == 1      # a user's limit is never raised
    finally:
        numba.set_num_threads(before)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_compiled_cg_gives_the_same_iterates_on_one_thread_and_on_two():
    A = poisson_2d(180)                 # work per iteration above CG_SERIAL_BELOW
    assert A.nnz + 5 * A.shape[0] >= krylov.CG_SERIAL_BELOW
    b = np.cos(np.arange(A.shape[0], dtype=np.float64))
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            x = np.zeros_like(b)
            its = krylov._cg_solve_csr(A.indptr, A.indices, A.data, b, x,
                                       np.empty(0), False, 1e-10, 60, 1e-15)
            results.append((its, x))
    finally:
        numba.set_num_threads(before)
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("m", [24, 60])  # one row block of the reductions, and two
@pytest.mark.parametrize("jacobi", [False, True])
def test_serial_twin_of_the_cg_loop_gives_the_parallel_kernels_bits(m, jacobi):
    """The one-thread build (no parallel regions) is the same source without prange, so
    iterates, iteration counts and status are bit-identical to the parallel kernel's."""
    A = poisson_2d(m)
    b = np.cos(np.arange(A.shape[0], dtype=np.float64))
    inv_diag = 1.0 / A.diagonal() if jacobi else np.empty(0)
    runs = []
    for kernel in (krylov._cg_solve_csr, krylov._cg_solve_csr_serial):
        x = np.zeros_like(b)
        out = kernel(A.indptr, A.indices, A.data, b, x, inv_diag, jacobi, 1e-10, 500, 1e-15)
        runs.append((out, x))
    assert runs[0][0] == runs[1][0] and runs[0][0][1] == krylov.CG_CONVERGED
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    # and the one-thread matvec twins, 1-D and 2-D
    from diffsolve.kernels.cpu import sparse

    X = np.stack([b, -2.0 * b], axis=1)
    for par, ser, v in ((sparse._csr_matvec_1d, sparse._csr_matvec_1d_serial, b),
                        (sparse._csr_matvec_2d, sparse._csr_matvec_2d_serial, X)):
        np.testing.assert_array_equal(par(A.indptr, A.indices, A.data, v, np.empty_like(v)),
                                      ser(A.indptr, A.indices, A.data, v, np.empty_like(v)))
    np.testing.assert_allclose(sparse.csr_matvec(A.indptr, A.indices, A.data, b,
                                                 np.empty_like(b)), A @ b, rtol=1e-14)


def test_small_calls_take_the_serial_twin_without_touching_the_thread_count(monkeypatch):
    import diffsolve.kernels.cpu._config as config

    def no_switch(n):
        raise AssertionError("numba.set_num_threads called for a call below the threshold")

    monkeypatch.setattr(config.numba, "set_num_threads", no_switch)
    A = poisson_2d(12)
    b = np.ones(A.shape[0])
    res = solve(A, b, method="cg", rtol=1e-10)
    assert res.converged
    np.testing.assert_allclose(A @ res.x, b, atol=1e-8)


def test_small_cg_runs_on_one_thread_and_agrees_with_the_public_solve():
    A = poisson_2d(24)
    b = np.ones(A.shape[0])
    assert A.nnz + 5 * A.shape[0] < krylov.CG_SERIAL_BELOW
    res = solve(A, b, method="cg", rtol=1e-10)
    x = np.zeros_like(b)
    its, code = krylov.cg_solve_csr(A.indptr, A.indices, A.data, b, x, None,
                                    1e-10 * np.linalg.norm(b), 10 * A.shape[0], 1e-15)
    assert code == krylov.CG_CONVERGED and res.converged
    assert res.n_iters == its
    np.testing.assert_allclose(res.x, x, rtol=0, atol=1e-12)


# --- SOR through the public call -------------------------------------------------------

@pytest.mark.parametrize("scale", [1.0, 3.0, 1e-3])
def test_sor_fixed_budget_equals_the_sweep_kernel_and_reports_the_true_residual(scale):
    A = poisson_2d(40)
    b = scale * (1.0 + np.sin(np.arange(A.shape[0], dtype=np.float64)))
    res = solve(A, b, method="sor", omega=1.5, rtol=0, atol=0, maxiter=20)
    assert res.n_iters == 20 and res.status == ds.Status.MAX_ITERATIONS
    # 20 sweeps of the bare kernel on b / s, s the power of two the solve scales b by
    s = 2.0 ** np.floor(np.log2(np.max(np.abs(b))))
    x = np.zeros_like(b)
    for _ in range(20):
        relaxation.sor_sweep(A.indptr, A.indices, A.data, A.diagonal(), b / s, x, 1.5)
    np.testing.assert_array_equal(res.x, x * s)
    true = np.linalg.norm(b - A @ res.x)
    assert res.residual_norm == pytest.approx(true, rel=1e-12)


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_sor_converged_agrees_with_the_reported_residual(scale):
    A = poisson_2d(12)
    b = scale * np.ones(A.shape[0])
    for rtol in (1e-3, 1e-6, 1e-9):
        res = solve(A, b, method="sor", omega=1.3, rtol=rtol)
        true = np.linalg.norm(b - A @ res.x)
        assert res.residual_norm == pytest.approx(true, rel=1e-12)
        assert res.converged == (res.residual_norm <= rtol * np.linalg.norm(b))
        assert res.converged


def test_sor_check_every_is_honoured_on_the_cpu():
    A = poisson_2d(12)
    b = np.ones(A.shape[0])
    every = solve(A, b, method="sor", omega=1.3, rtol=1e-8)
    sparse = solve(A, b, method="sor", omega=1.3, rtol=1e-8, check_every=7)
    assert sparse.converged and every.converged
    assert sparse.n_iters % 7 == 0
    assert every.n_iters <= sparse.n_iters < every.n_iters + 7


def test_sor_float32_keeps_the_true_residual_verdict():
    A = poisson_2d(12).astype(np.float32)
    b = np.ones(A.shape[0], dtype=np.float32)
    res = solve(A, b, method="sor", omega=1.3, rtol=1e-5)
    true = np.linalg.norm((b - A @ res.x).astype(np.float64))
    assert res.converged
    assert res.residual_norm == pytest.approx(true, rel=1e-5)


# --- the per-matrix cache --------------------------------------------------------------

def test_symmetry_cache_does_not_answer_for_a_matrix_mutated_in_place():
    A = sp.csr_matrix(poisson_2d(8, shift=0.5))
    b = np.ones(A.shape[0])
    assert solve(A, b, method="cg").converged
    assert solve(A, b, method="cg").converged   # the cached verdict
    # make A non-symmetric in place: same object, same buffers
    A.data[A.indices == (A.indices[0] + 1)] += 0.5
    with pytest.raises(ValueError, match="symmetric"):
        solve(A, b, method="cg")


def test_fingerprint_follows_content_not_identity():
    A = sp.csr_matrix(poisson_2d(6, shift=0.5))
    op, _ = ds.linear._operator.as_operator(A, np.ones(A.shape[0]), "test")
    key = _matrix_cache.fingerprint(op)
    copy_op, _ = ds.linear._operator.as_operator(A.copy(), np.ones(A.shape[0]), "test")
    assert _matrix_cache.fingerprint(copy_op) == key       # equal content, equal key
    for mutate in (lambda M: M.data.__setitem__(0, np.nextafter(M.data[0], np.inf)),
                   lambda M: M.data.__setitem__(-1, np.nextafter(M.data[-1], -np.inf)),
                   lambda M: M.data.__setitem__(slice(0, 2), M.data[1::-1].copy()),
                   lambda M: M.indices.__setitem__(slice(1, 3), M.indices[2:0:-1].copy())):
        M = A.copy()
        mutate(M)
        op_m = ds.linear._operator.MatrixOperator(M, "sparse", op.xp)
        assert _matrix_cache.fingerprint(op_m) != key
    dense = ds.linear._operator.MatrixOperator(np.eye(3), "dense", op.xp)
    assert _matrix_cache.fingerprint(dense) is not None


# --- dtype-aware default tolerance of sinkhorn -----------------------------------------

def _ot_problem(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.random((n, 2)), rng.random((n, 2))
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    a = rng.random(n) + 0.1
    b = rng.random(n) + 0.1
    return (a / a.sum()).astype(dtype), (b / b.sum()).astype(dtype), C.astype(dtype)


@pytest.mark.parametrize("kernel", ["absorbed", "lse"])
@pytest.mark.parametrize("eps", [1.0, 0.05])
def test_float32_sinkhorn_default_tolerance_is_reachable(kernel, eps):
    a, b, C = _ot_problem(200, np.float32)
    res = ds.ot.sinkhorn(a, b, C, eps, kernel=kernel)   # no warning (filterwarnings=error)
    assert res.converged and res.status == ds.Status.SUCCESS
    assert res.n_iters < 2_000
    expected = 64 * np.finfo(np.float32).eps * float(a.sum(dtype=np.float64))
    assert float(res.tolerance) == pytest.approx(expected, rel=1e-6)
    # the reported error is the one the stopping test read, and it is below the tolerance
    assert float(res.error) <= float(res.tolerance)


def test_float64_sinkhorn_default_tolerance_is_unchanged_and_explicit_rtol_is_kept():
    a, b, C = _ot_problem(60, np.float64)
    res = ds.ot.sinkhorn(a, b, C, 0.1)
    assert res.converged
    assert float(res.tolerance) == pytest.approx(1e-9 * float(a.sum()), rel=1e-12)
    same = ds.ot.sinkhorn(a, b, C, 0.1, rtol=1e-9)
    np.testing.assert_array_equal(res.plan, same.plan)
    a32, b32, C32 = (v.astype(np.float32) for v in (a, b, C))
    with pytest.warns(ds.ConvergenceWarning):
        strict = ds.ot.sinkhorn(a32, b32, C32, 1.0, rtol=1e-9, maxiter=300)
    assert not strict.converged and strict.n_iters == 300
    assert float(strict.tolerance) == pytest.approx(1e-9 * float(a32.sum()), rel=1e-6)
