"""The autograd, PyTorch and JAX adapters: same results, gradients vs finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import diffsolve as ds
from tests.helpers import central_difference, poisson_2d, spd_matrix

OPTS = {"direct": {}, "cg": {"rtol": 1e-13}}


@pytest.fixture
def dense_problem(rng):
    A = spd_matrix(rng, 8, cond=10.0)
    return A, rng.standard_normal(8), rng.standard_normal(8)


@pytest.fixture
def sparse_problem(rng):
    A = poisson_2d(4, shift=0.2)
    return ds.CSR.from_sparse(A), rng.standard_normal(A.shape[0]), rng.standard_normal(A.shape[0])


def _reference_grads(A, b, w, method):
    """Gradients of sum(w * x) from the framework-free core."""
    _, f_vjp = ds.vjp(ds.linear.solve, A, b, method=method, **OPTS[method])
    A_bar, b_bar = f_vjp(x=w)
    return (A_bar.data if isinstance(A_bar, ds.CSR) else A_bar), b_bar


def _fd_check(loss, x, grad, rng, n_dirs=2):
    """Central differences of a scalar loss along random directions vs <grad, dir>."""
    for _ in range(n_dirs):
        v = rng.standard_normal(x.shape)
        np.testing.assert_allclose(np.sum(grad * v), central_difference(loss, x, v),
                                   rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------------------
# autograd
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["direct", "cg"])
def test_autograd_dense(dense_problem, rng, method):
    import autograd
    import autograd.numpy as anp

    A, b, w = dense_problem
    solve = ds.to_autograd(ds.linear.solve)

    def loss(A, b):
        return anp.sum(w * solve(A, b, method=method, **OPTS[method]).x)

    gA, gb = autograd.grad(loss, argnum=(0, 1))(A, b)
    rA, rb = _reference_grads(A, b, w, method)
    np.testing.assert_allclose(gA, rA, rtol=1e-10)
    np.testing.assert_allclose(gb, rb, rtol=1e-10)
    _fd_check(lambda b_: loss(A, b_), b, gb, rng)
    sym = lambda M: M + M.T  # noqa: E731 - CG needs symmetric perturbations
    v = sym(rng.standard_normal(A.shape))
    np.testing.assert_allclose(np.sum(gA * v), central_difference(lambda A_: loss(A_, b), A, v),
                               rtol=1e-6)


@pytest.mark.parametrize("method", ["direct", "cg"])
def test_autograd_sparse(sparse_problem, rng, method):
    import autograd
    import autograd.numpy as anp

    C, b, w = sparse_problem
    solve = ds.to_autograd(ds.linear.solve)

    def loss(data):
        return anp.sum(w * solve(C.with_data(data), b, method=method, **OPTS[method]).x)

    g = autograd.grad(loss)(C.data)
    np.testing.assert_allclose(g, _reference_grads(C, b, w, method)[0], rtol=1e-10)
    # symmetric perturbation of the stored values, so that CG sees an SPD matrix
    A = C.to_sparse()
    for _ in range(2):
        D = A.copy()
        D.data = rng.standard_normal(A.nnz)
        D = (D + D.T).tocsr()
        D.sort_indices()
        np.testing.assert_allclose(np.sum(g * D.data), central_difference(loss, C.data, D.data),
                                   rtol=1e-6)


def test_autograd_returns_same_result_type(dense_problem):
    A, b, _ = dense_problem
    res = ds.to_autograd(ds.linear.solve)(A, b, method="cg")
    assert isinstance(res, ds.LinearSolveResult) and res.converged
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b), rtol=1e-7)


def test_autograd_runs_one_adjoint_for_all_arguments(dense_problem, monkeypatch):
    import autograd
    import autograd.numpy as anp

    A, b, w = dense_problem
    calls = []
    original = ds.linear.solve.bwd
    monkeypatch.setattr(ds.linear.solve, "bwd", lambda *a: calls.append(1) or original(*a))
    solve = ds.to_autograd(ds.linear.solve)
    autograd.grad(lambda A, b: anp.sum(w * solve(A, b).x), argnum=(0, 1))(A, b)
    assert len(calls) == 1


# ------------------------------------------------------------------------------------------
# PyTorch
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["direct", "cg"])
def test_torch_dense_gradcheck(dense_problem, method):
    torch = pytest.importorskip("torch")
    A, b, w = dense_problem
    solve = ds.to_torch(ds.linear.solve)
    At = torch.tensor(A, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)

    def f(A_, b_):
        S = (A_ + A_.T) / 2  # gradcheck perturbs single entries; keep CG's matrix symmetric
        return solve(S, b_, method=method, **OPTS[method]).x

    assert torch.autograd.gradcheck(f, (At, bt), eps=1e-6, atol=1e-7, rtol=1e-5)
    res = solve(At, bt, method=method)
    assert isinstance(res, ds.LinearSolveResult) and isinstance(res.x, torch.Tensor)
    (res.x * torch.tensor(w)).sum().backward()
    rA, rb = _reference_grads(A, b, w, method)
    np.testing.assert_allclose(At.grad.numpy(), rA, rtol=1e-9)
    np.testing.assert_allclose(bt.grad.numpy(), rb, rtol=1e-9)


@pytest.mark.parametrize("method", ["direct", "cg"])
def test_torch_sparse(sparse_problem, rng, method):
    torch = pytest.importorskip("torch")
    C, b, w = sparse_problem
    data = torch.tensor(C.data, requires_grad=True)
    Ct = ds.CSR(data, torch.from_numpy(C.indices), torch.from_numpy(C.indptr), C.shape)
    res = ds.to_torch(ds.linear.solve)(Ct, torch.tensor(b), method=method, **OPTS[method])
    (res.x * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(data.grad.numpy(), _reference_grads(C, b, w, method)[0],
                               rtol=1e-9)


def test_torch_batched_rhs_and_second_order_use(rng):
    torch = pytest.importorskip("torch")
    A = spd_matrix(rng, 6)
    B = torch.tensor(rng.standard_normal((6, 2)), requires_grad=True)
    solve = ds.to_torch(ds.linear.solve)
    # a solve feeding a second solve: gradients chain through both adjoints
    x2 = solve(torch.tensor(A), solve(torch.tensor(A), B).x).x
    x2.pow(2).sum().backward()
    Ainv = np.linalg.inv(A)
    expected = 2 * (Ainv.T @ Ainv.T @ (Ainv @ Ainv @ B.detach().numpy()))
    np.testing.assert_allclose(B.grad.numpy(), expected, rtol=1e-9)


def test_torch_exchange_is_zero_copy():
    torch = pytest.importorskip("torch")
    from diffsolve.interop.torch import _to_backend, _to_torch

    t = torch.arange(6, dtype=torch.float64)
    a = _to_backend(t)
    a[0] = 42.0
    assert t[0].item() == 42.0
    back = _to_torch(a)
    assert back.data_ptr() == t.data_ptr()


@pytest.mark.gpu
def test_torch_cuda_solve_stays_on_gpu(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    A = spd_matrix(rng, 16)
    b = rng.standard_normal(16)
    w = rng.standard_normal(16)
    for method in ("direct", "cg"):
        At = torch.tensor(A, device="cuda", requires_grad=True)
        bt = torch.tensor(b, device="cuda", requires_grad=True)
        res = ds.to_torch(ds.linear.solve)(At, bt, method=method, **OPTS[method])
        assert res.x.device.type == "cuda"
        (res.x * torch.tensor(w, device="cuda")).sum().backward()
        rA, rb = _reference_grads(A, b, w, method)
        np.testing.assert_allclose(At.grad.cpu().numpy(), rA, rtol=1e-8)
        np.testing.assert_allclose(bt.grad.cpu().numpy(), rb, rtol=1e-8)


@pytest.mark.gpu
def test_torch_cuda_sparse(sparse_problem):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    C, b, w = sparse_problem
    for method in ("direct", "cg"):
        data = torch.tensor(C.data, device="cuda", requires_grad=True)
        Ct = ds.CSR(data, torch.from_numpy(C.indices).cuda(), torch.from_numpy(C.indptr).cuda(),
                    C.shape)
        res = ds.to_torch(ds.linear.solve)(Ct, torch.tensor(b, device="cuda"), method=method,
                                           **OPTS[method])
        assert res.x.device.type == "cuda"
        (res.x * torch.tensor(w, device="cuda")).sum().backward()
        np.testing.assert_allclose(data.grad.cpu().numpy(), _reference_grads(C, b, w, method)[0],
                                   rtol=1e-8)


# ------------------------------------------------------------------------------------------
# JAX
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["direct", "cg"])
def test_jax_dense_under_jit(dense_problem, rng, method):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    A, b, w = dense_problem
    solve = ds.to_jax(ds.linear.solve)

    @jax.jit
    def loss(A_, b_):
        return jnp.sum(jnp.asarray(w) * solve(A_, b_, method=method, **OPTS[method]).x)

    gA, gb = jax.grad(loss, argnums=(0, 1))(jnp.asarray(A), jnp.asarray(b))
    rA, rb = _reference_grads(A, b, w, method)
    np.testing.assert_allclose(np.asarray(gA), rA, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(gb), rb, rtol=1e-9)
    f = lambda b_: float(loss(jnp.asarray(A), jnp.asarray(b_)))  # noqa: E731
    _fd_check(f, b, np.asarray(gb), rng)


@pytest.mark.parametrize("method", ["direct", "cg"])
def test_jax_sparse(sparse_problem, method):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    C, b, w = sparse_problem
    solve = ds.to_jax(ds.linear.solve)

    def loss(data):
        return jnp.sum(jnp.asarray(w) * solve(C.with_data(data), jnp.asarray(b), method=method,
                                              **OPTS[method]).x)

    g = jax.jit(jax.grad(loss))(jnp.asarray(C.data))
    np.testing.assert_allclose(np.asarray(g), _reference_grads(C, b, w, method)[0], rtol=1e-9)


def test_jax_result_fields_and_vmap(dense_problem):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    A, b, _ = dense_problem
    solve = ds.to_jax(ds.linear.solve)
    res = jax.jit(lambda A_, b_: solve(A_, b_, method="cg"))(jnp.asarray(A), jnp.asarray(b))
    assert isinstance(res, ds.LinearSolveResult)
    assert bool(res.converged) and int(res.n_iters) > 0
    Bs = np.stack([b, 2 * b, -b])
    xs = jax.vmap(lambda b_: solve(jnp.asarray(A), b_).x)(jnp.asarray(Bs))
    np.testing.assert_allclose(np.asarray(xs), np.linalg.solve(A, Bs.T).T, rtol=1e-10)
    g = jax.grad(lambda Bs_: jax.vmap(lambda b_: solve(jnp.asarray(A), b_).x)(Bs_).sum())(
        jnp.asarray(Bs))
    np.testing.assert_allclose(np.asarray(g)[0], np.linalg.solve(A.T, np.ones(8)), rtol=1e-10)


def test_jax_traced_pattern_is_refused(sparse_problem):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    C, b, _ = sparse_problem
    solve = ds.to_jax(ds.linear.solve)

    @jax.jit
    def f(data, indices):
        return solve(ds.CSR(data, indices, C.indptr, C.shape), jnp.asarray(b)).x

    with pytest.raises(TypeError, match="indices/indptr of a diffsolve.CSR are traced"):
        f(jnp.asarray(C.data), jnp.asarray(C.indices))


def test_adapters_refuse_plain_functions():
    with pytest.raises(TypeError, match="to_autograd: fn must be a diffsolve solver"):
        ds.to_autograd(np.linalg.solve)(np.eye(2), np.ones(2))
    with pytest.raises(ValueError, match="vmap_method must be one of"):
        ds.to_jax(ds.linear.solve, vmap_method="magic")
