"""Hypergradients with JAX arrays: derivatives compiled once per function, not per call.

The compiled path (one jitted function per (outer, inner) pair, shared across calls) must
give what the generic path gives, miss its cache for a new closure or a rebound global,
stay bounded, and leave every failure to the generic path's errors and warnings.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import diffsolve as ds
from diffsolve.bilevel import _derivatives as D
from diffsolve.bilevel import _hypergradient as H

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

hypergradient = ds.bilevel.hypergradient
_SCALE = 1.0  # read by _global_inner: rebinding it must not reuse a stale compile


def _problem(kind="ridge", p=12, n=30, seed=0):
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.standard_normal((n, p)) / np.sqrt(p))
    Xv = jnp.asarray(rng.standard_normal((n, p)) / np.sqrt(p))
    t = jnp.asarray(rng.standard_normal(n))
    tv = jnp.asarray(rng.standard_normal(n))
    lab, labv = (t > 0) * 1.0, (tv > 0) * 1.0

    if kind == "ridge":
        def inner(x, w):
            return 0.5 * jnp.sum((X @ w - t) ** 2) / n + 0.5 * jnp.exp(x[0]) * jnp.sum(w * w)
    else:
        def inner(x, w):
            z = X @ w
            return jnp.sum(jnp.logaddexp(0.0, z) - lab * z) / n + \
                0.5 * jnp.exp(x[0]) * jnp.sum(w * w)

    def outer(x, w):
        z = Xv @ w
        return jnp.sum(jnp.logaddexp(0.0, z) - labv * z) / n

    x = jnp.asarray([np.log(0.3)])
    w = jnp.zeros(p)
    for _ in range(40):  # Newton: w* to machine precision
        g = jax.grad(inner, 1)(x, w)
        w = w - jnp.linalg.solve(jax.hessian(inner, 1)(x, w), g)
    return outer, inner, x, w


@pytest.fixture
def compiled(monkeypatch):
    """How many calls the compiled path answered (``None``: left to the generic path)."""
    answered = []
    real = H._jax_implicit_cg

    def spy(*args):
        out = real(*args)
        answered.append(out is not None)
        return out

    monkeypatch.setattr(H, "_jax_implicit_cg", spy)
    return answered


def _handwritten(outer, inner):
    """``outer_grad`` and ``inner_hvp`` from jax, as a user would write them by hand."""
    def outer_grad(x, w):
        return jax.grad(outer, (0, 1))(x, w)

    def inner_hvp(x, w, v):
        return jax.vjp(jax.grad(inner, 1), x, w)[1](v)

    return {"outer_grad": outer_grad, "inner_hvp": inner_hvp}


def _generic(monkeypatch, *args, **kw):
    monkeypatch.setattr(H, "_JAX_FAST_PATH", False)
    try:
        return hypergradient(*args, **kw)
    finally:
        monkeypatch.setattr(H, "_JAX_FAST_PATH", True)


@pytest.mark.parametrize("kind", ["ridge", "logistic"])
@pytest.mark.parametrize("budget", [{}, {"rtol": 0.0, "maxiter": 5}, {"ridge": 0.1}])
@pytest.mark.parametrize("by_hand", [False, True])
def test_compiled_path_agrees_with_generic(monkeypatch, compiled, kind, budget, by_hand):
    outer, inner, x, w = _problem(kind)
    if by_hand:
        budget = {**budget, **_handwritten(outer, inner)}
    g, info = hypergradient(outer, inner, x, w, return_info=True, **budget)
    assert compiled == [True]
    g0, info0 = _generic(monkeypatch, outer, inner, x, w, return_info=True, **budget)
    assert type(g) is type(g0) and g.dtype == g0.dtype and g.shape == x.shape
    np.testing.assert_allclose(np.asarray(g), np.asarray(g0), rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.asarray(info.v), np.asarray(info0.v), rtol=1e-12,
                               atol=1e-14 * float(jnp.max(jnp.abs(info0.v))))
    assert (info.n_iters, info.status, info.converged) == \
        (info0.n_iters, info0.status, info0.converged)
    assert info.residual_norm == pytest.approx(info0.residual_norm, rel=1e-3, abs=1e-15)
    assert info.inner_grad_norm == pytest.approx(info0.inner_grad_norm, rel=1e-6, abs=1e-15)
    assert info.message.split(";")[0].split(" residual")[0] == \
        info0.message.split(";")[0].split(" residual")[0]


def test_second_call_does_not_trace_again():
    outer, inner, x, w = _problem()
    traces = []

    def counted(x_, w_):
        traces.append(1)  # Python side effects run only while JAX traces
        return inner(x_, w_)

    g1 = hypergradient(outer, counted, x, w)
    n_first = len(traces)
    assert n_first > 0
    g2 = hypergradient(outer, counted, x, w * (1 + 1e-9))  # new values, same shapes
    g3 = hypergradient(outer, counted, x, w, rtol=1e-6, ridge=1e-3)  # options are data
    assert len(traces) == n_first
    np.testing.assert_allclose(np.asarray(g2), np.asarray(g1), rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(g3)))


def _closure(c):
    def inner(x, w):
        return 0.5 * jnp.sum((w - c * x[0]) ** 2)
    return inner


def _outer(x, w):
    return 0.5 * jnp.sum((w - 1.0) ** 2)


def test_new_closure_misses_the_cache():
    """y*(x) = c x, so dΦ/dx = c Σ(c x − 1): a stale compile would keep the first c."""
    x = jnp.asarray([0.7])
    for c in (1.0, 2.0, -3.0):
        w = jnp.full(4, c * 0.7)
        g = hypergradient(_outer, _closure(c), x, w)
        np.testing.assert_allclose(np.asarray(g), [c * 4 * (c * 0.7 - 1.0)], rtol=1e-12)


def _global_inner(x, w):
    return 0.5 * jnp.sum((w - _SCALE * x[0]) ** 2)


def test_rebound_global_misses_the_cache(monkeypatch):
    x = jnp.asarray([0.7])
    for c in (1.0, 5.0):
        monkeypatch.setitem(_global_inner.__globals__, "_SCALE", c)
        g = hypergradient(_outer, _global_inner, x, jnp.full(3, c * 0.7))
        np.testing.assert_allclose(np.asarray(g), [c * 3 * (c * 0.7 - 1.0)], rtol=1e-12)


def test_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(D, "JIT_CACHE_SIZE", 3)
    D.clear_jit_cache()
    x = jnp.asarray([0.5])
    for c in range(1, 7):
        hypergradient(_outer, _closure(float(c)), x, jnp.full(2, c * 0.5))
        assert len(D._JIT_CACHE) <= 3
    assert len(D._JIT_CACHE) == 3


def test_failures_go_through_the_generic_path(compiled):
    outer, inner, x, w = _problem()
    # a NaN in ∇ᵧ outer: NaN out, no warning (as the generic path)
    nan_outer = lambda x_, w_: jnp.sum(jnp.full(w_.shape, jnp.nan) * w_)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g, info = hypergradient(nan_outer, inner, x, w, return_info=True)
    assert np.all(np.isnan(np.asarray(g))) and info.status is ds.Status.NONFINITE
    # a non-scalar inner: the generic path's error
    with pytest.raises(ValueError, match="must return a scalar"):
        hypergradient(outer, lambda x_, w_: w_ * x_[0], x, w)
    # a concave inner: CG meets negative curvature
    with pytest.raises(ValueError, match="non-positive curvature"):
        hypergradient(outer, lambda x_, w_: -jnp.sum(w_ ** 2) * jnp.exp(x_[0]), x, w)
    # a hand-written derivative of the wrong shape: the generic path's error
    with pytest.raises(ValueError, match=r"outer_grad\(...\)\[1\] returned"):
        hypergradient(outer, inner, x, w, outer_grad=lambda x_, w_: (x_, w_[:-1]))
    # too few iterations: warned, with the generic path's status
    with pytest.warns(ds.ConvergenceWarning, match="CG on the Hessian system stopped"):
        _, info = hypergradient(outer, inner, x, w, maxiter=1, return_info=True)
    assert info.status is ds.Status.MAX_ITERATIONS and info.n_iters == 1
    # the first four were left to the generic path; a plain shortfall is the compiled one
    assert compiled == [False, False, False, False, True]


def test_penalised_gradient_compiles_once_for_all_lambdas():
    outer, inner, x, w = _problem(p=5)
    D.clear_jit_cache()
    oracle = D.Oracle(outer, inner, None, jnp, where="test")
    for lam in (0.5, 2.0, 10.0):
        got = oracle.penalised_grad_y(x, w, lam)
        want = jax.grad(lambda w_, lam=lam: outer(x, w_) + lam * inner(x, w_))(w)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12)
    assert [k[0] for k in D._JIT_CACHE] == ["pen"]


def test_float32_keeps_its_dtype_and_agrees(monkeypatch, compiled):
    outer, inner, x, w = _problem("logistic")
    x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
    g, info = hypergradient(outer, inner, x32, w32, rtol=1e-5, return_info=True)
    g0, info0 = _generic(monkeypatch, outer, inner, x32, w32, rtol=1e-5, return_info=True)
    assert compiled == [True]
    assert g.dtype == jnp.float32 and info.v.dtype == jnp.float32
    assert info.n_iters == info0.n_iters and info.status is info0.status
    np.testing.assert_allclose(np.asarray(g), np.asarray(g0), rtol=1e-5)


def test_threads_share_one_compile():
    from concurrent.futures import ThreadPoolExecutor

    outer, inner, x, w = _problem(p=6)
    D.clear_jit_cache()
    with ThreadPoolExecutor(4) as pool:
        grads = list(pool.map(lambda _: hypergradient(outer, inner, x, w), range(8)))
    for g in grads[1:]:
        np.testing.assert_array_equal(np.asarray(g), np.asarray(grads[0]))
    assert [k[0] for k in D._JIT_CACHE] == ["hypergradient-cg"]


def test_numpy_array_mutated_in_place_misses_the_cache():
    """A NumPy array the objective reads, changed in place between calls, must not be served
    by a function compiled with its old values (jax.jit alone would bake them in)."""
    D.clear_jit_cache()
    target = np.array([1.0, 2.0, 3.0])

    def inner(x, y):
        return 0.5 * jnp.sum((y - x) ** 2)

    def outer(x, y):
        return 0.5 * jnp.sum((y - target) ** 2)

    x = jnp.zeros(3)
    y = x  # the inner solution y*(x) = x
    first = hypergradient(outer, inner, x, y)
    np.testing.assert_allclose(np.asarray(first), -target, rtol=1e-12, atol=1e-12)
    target[:] = [5.0, -1.0, 0.5]  # mutated in place, same binding
    second = hypergradient(outer, inner, x, y)
    np.testing.assert_allclose(np.asarray(second), -target, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("which", ["x", "y"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_input_gets_the_generic_error(compiled, which, bad):
    """The compiled path checks x and y for NaN / inf inside the jitted function (no eager
    host sync); a bad entry still gets the error every other path gives."""
    outer, inner, x, w = _problem(p=4)
    if which == "x":
        x = x.at[0].set(bad)
    else:
        w = w.at[2].set(bad)
    with pytest.raises(ValueError, match=f"{which} contains NaN or inf"):
        hypergradient(outer, inner, x, w)
    assert compiled == [False]


def test_options_kept_on_the_device_follow_new_values():
    """The options array is cached per set of values: a new rtol or maxiter is honoured."""
    outer, inner, x, w = _problem(p=12)
    _, loose = hypergradient(outer, inner, x, w, rtol=1e-2, return_info=True)
    _, tight = hypergradient(outer, inner, x, w, rtol=1e-12, return_info=True)
    assert loose.n_iters < tight.n_iters
    assert loose.residual_norm > tight.residual_norm
    with pytest.warns(ds.ConvergenceWarning):
        _, short = hypergradient(outer, inner, x, w, rtol=1e-12, maxiter=2, return_info=True)
    assert short.n_iters == 2



def test_numpy_arrays_and_scalars_are_keyed_by_content():
    """Bound NumPy arrays and NumPy scalars carry their content in the cache key (exact
    checksum); JAX arrays and other objects go by identity alone."""
    a = np.array([1.0, 2.0])
    key = D._content(a)
    a[1] = np.nextafter(2.0, 3.0)
    assert D._content(a) != key
    assert D._content(np.float64(2.0)) == D._content(np.float64(2.0))
    assert D._content(np.float64(2.0)) != D._content(np.float64(3.0))
    assert D._content(jnp.ones(2)) is None and D._content(2.0) is None
