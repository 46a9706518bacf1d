"""The solver contract, checked row by row (see registry.py for the rows).

Every check is parametrised over the registry; a failing (row, check) pair is a contract
violation of that solver, never hidden with xfail. The checks: a DifferentiableFunction
with declared result shapes equal to the actual fields; status / converged / message /
n_iters; ``ds.vjp`` against central differences (the hypergradient against differences of
the bilevel objective); ``to_autograd`` / ``to_torch`` / ``to_jax`` against ``ds.vjp``,
results returned from ``jax.jit`` and ``jax.vmap``; second order through the adapters
correct or refused; zero cotangents give zeros, NaN/inf cotangents NaN; keyword arguments,
named cotangents, Python-scalar cotangents; inputs never modified; the bad-input table
(NaN/inf, int, complex, float16, lists, non-contiguous, read-only, torch/JAX arrays, None,
shapes, size 0, bad tolerances and budgets); rtol = atol = 0 as a fixed budget; failures
warn with their status or raise ``SolveError`` with ``throw=True``; ``throw`` defaults to
False; ``callback(state)`` with a frozen state, ``True`` stops; old option names warn and
agree; the same answers on array_api_strict and (marker ``gpu``) CuPy.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
import scipy.sparse as sp

import diffsolve as ds
from diffsolve._autodiff import DifferentiableFunction

from .checks import (
    assert_all,
    assert_fd_close,
    assert_same_answer,
    central_difference,
    cotangents,
    dense_diff_args,
    direction,
    expect_clear_error,
    grad_of,
    is_honest_nonfinite,
    loss,
    pairing,
    perturb,
    rng_for,
    to_numpy,
)
from .registry import ROWS, Problem, Row, field_value, rows

SOLVER_ROWS = rows("solver", "value")
GRADIENT_ROWS = rows("gradient")


def _ids(rs):
    return [r.id for r in rs]


@functools.cache
def reference(row_id: str):
    """The row's problem, its result, one random cotangent and the vjp's answer to it."""
    row = next(r for r in ROWS if r.id == row_id)
    p = row.make()
    if row.kind == "gradient" or not isinstance(p.fn, DifferentiableFunction):
        # not a DifferentiableFunction (reported by test_is_a_differentiable_solver): the
        # checks that need a vjp then fail on ds.vjp's own error
        return p, p.call(), None, None
    res, vjp_fn = ds.vjp(p.fn, *p.args, **p.kwargs)
    cots = cotangents(p, res, rng_for(row, "cot"))
    grads = vjp_fn(**cots)
    return p, res, cots, {n: grad_of(grads, p, n) for n in p.diff_args}


def _fresh(row: Row) -> Problem:
    return row.make()


def _with_vjp(row: Row):
    """``reference`` for checks that need the vjp: fails with ds.vjp's own error when the
    row's function is not differentiable through ds.vjp."""
    p, res, cots, grads = reference(row.id)
    if grads is None:
        ds.vjp(p.fn, *p.args, **p.kwargs)  # raises the reason
    return p, res, cots, grads


# ------------------------------------------------------------------------------------------
# declared shapes, result fields
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", SOLVER_ROWS, ids=_ids(SOLVER_ROWS))
def test_is_a_differentiable_solver(row):
    """ds.vjp and the adapters need a DifferentiableFunction with declared result shapes."""
    p = _fresh(row)
    assert isinstance(p.fn, DifferentiableFunction), (
        f"{row.id}: {p.fn!r} is not a diffsolve DifferentiableFunction: ds.vjp / to_torch / "
        "to_jax refuse it")
    assert p.fn.result_shapes is not None, (
        f"{row.id}: no result_shapes declared: ds.to_jax cannot trace it")


@pytest.mark.parametrize("row", SOLVER_ROWS, ids=_ids(SOLVER_ROWS))
def test_declared_shapes_match(row):
    p, res, _, _ = reference(row.id)
    declare = getattr(p.fn, "result_shapes", None)
    if declare is None:
        pytest.skip("no result_shapes declared (reported by test_is_a_differentiable_solver)")
    shapes = declare(*p.args, **p.kwargs)
    for name, (shape, dtype) in shapes.items():
        actual = np.asarray(to_numpy(field_value(res, name)))
        assert tuple(actual.shape) == tuple(shape), f"{name}: declared {shape}, got {actual.shape}"
        assert np.dtype(dtype) == actual.dtype, f"{name}: declared {dtype}, got {actual.dtype}"
    needed = set(type(res).differentiable_fields) if row.kind == "solver" else {"value"}
    if row.kind == "solver":
        needed |= {"status", "converged", "n_iters"}
    # properties (ODE's n_iters = n_steps) are derived from fields and need no declaration
    if dataclasses.is_dataclass(res):
        needed &= {f.name for f in dataclasses.fields(res)}
    missing = sorted(needed - set(shapes))
    assert not missing, f"fields without a declared shape (to_jax drops them): {missing}"


@pytest.mark.parametrize("row", rows("solver", "gradient"), ids=_ids(rows("solver", "gradient")))
def test_result_has_status_converged_message_n_iters(row):
    p = _fresh(row)
    if row.kind == "gradient":
        out = p.fn(*p.args, **{**p.kwargs, "return_info": True})
        assert isinstance(out, tuple) and len(out) == 2, "return_info=True gives (grad, info)"
        res = out[1]
    else:
        res = p.call()
    missing = [a for a in ("status", "converged", "message", "n_iters") if not hasattr(res, a)]
    assert not missing, f"{type(res).__name__} lacks {missing}"
    assert isinstance(res.message, str) and res.message, f"message is {res.message!r}"
    if np.ndim(res.converged) == 0:
        assert isinstance(res.status, ds.Status), (
            f"status is {type(res.status).__name__} {res.status!r}, not a diffsolve.Status")
        assert isinstance(res.converged, (bool, np.bool_)), f"converged is {type(res.converged)}"
        assert bool(res.converged) == (res.status == ds.Status.SUCCESS), (res.status,
                                                                          res.converged)
        assert res.status == ds.Status.SUCCESS, f"the row's problem did not converge: {res.message}"
        n = res.n_iters
        assert isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0, repr(n)
        return
    # a batch: arrays of the batch shape
    status, conv, n = (np.asarray(to_numpy(v)) for v in (res.status, res.converged, res.n_iters))
    assert status.dtype.kind in "iu" and status.shape == conv.shape == n.shape, (
        status.dtype, status.shape, conv.shape, n.shape)
    assert conv.dtype == np.bool_ and n.dtype.kind in "iu", (conv.dtype, n.dtype)
    assert np.array_equal(conv, status == int(ds.Status.SUCCESS)), (status, conv)
    assert np.all(status == int(ds.Status.SUCCESS)), f"not converged: {res.message}"
    assert np.all(n >= 0), n


# ------------------------------------------------------------------------------------------
# derivatives
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", SOLVER_ROWS, ids=_ids(SOLVER_ROWS))
def test_vjp_matches_central_differences(row):
    p, _res, cots, grads = _with_vjp(row)
    rng = rng_for(row, "fd")
    for name in p.diff_args:
        d = direction(p, name, rng)
        x = p.arg(name)

        def L(t, name=name, x=x, d=d):
            return loss(p.with_arg(name, perturb(x, d, t)).call(), cots)

        assert_fd_close(pairing(grads[name], d), central_difference(L, row.fd_step),
                        grads[name], d,
                        row.fd_rtol, f"{row.id} d/d{name}")


@pytest.mark.parametrize("row", GRADIENT_ROWS, ids=_ids(GRADIENT_ROWS))
def test_hypergradient_matches_central_differences(row):
    p, g, _, _ = reference(row.id)
    objective = p.extra["objective"]
    x = p.arg("x")
    d = rng_for(row, "fd").standard_normal(x.shape)
    fd = central_difference(lambda t: float(objective(x + t * d)))
    assert_fd_close(float(np.sum(g * d)), fd, g, d, row.fd_rtol, row.id)


def _adapter_grads(adapter, p: Problem, cots, names):
    idx = [p.index(n) for n in names]

    def args_with(vals):
        args = list(p.args)
        for i, v in zip(idx, vals):
            args[i] = v
        return args

    if adapter == "autograd":
        fa = ds.to_autograd(p.fn)

        def L(*vals):
            res = fa(*args_with(vals), **p.kwargs)
            return sum(anp.sum(cots[f] * field_value(res, f)) for f in cots)

        out = autograd.grad(L, tuple(range(len(idx))))(*[p.args[i] for i in idx])
        return [np.asarray(g) for g in out]
    if adapter == "torch":
        torch = pytest.importorskip("torch")
        ts = [torch.tensor(p.args[i], requires_grad=True) for i in idx]
        res = ds.to_torch(p.fn)(*args_with(ts), **p.kwargs)
        total = sum((torch.as_tensor(cots[f]) * field_value(res, f)).sum() for f in cots)
        total.backward()
        return [t.grad.numpy() if t.grad is not None else np.zeros(t.shape) for t in ts]
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    fj = ds.to_jax(p.fn)

    def L(*vals):
        res = fj(*args_with(vals), **p.kwargs)
        return sum(jnp.sum(jnp.asarray(cots[f]) * field_value(res, f)) for f in cots)

    out = jax.jit(jax.grad(L, argnums=tuple(range(len(idx)))))(
        *[jnp.asarray(p.args[i]) for i in idx])
    return [np.asarray(g) for g in out]


@pytest.mark.parametrize("adapter", ["autograd", "torch", "jax"])
@pytest.mark.parametrize("row", SOLVER_ROWS, ids=_ids(SOLVER_ROWS))
def test_adapter_agrees_with_vjp(row, adapter):
    p, _, cots, grads = _with_vjp(row)
    names = dense_diff_args(p)
    got = _adapter_grads(adapter, p, cots, names)
    for name, g in zip(names, got):
        want = to_numpy(grads[name])
        scale = float(np.max(np.abs(want))) if want.size else 1.0
        np.testing.assert_allclose(g, want, rtol=1e-7, atol=1e-9 * max(scale, 1e-300),
                                   err_msg=f"{row.id} {adapter}: d/d{name}")


@pytest.mark.parametrize("row", SOLVER_ROWS, ids=_ids(SOLVER_ROWS))
def test_jax_result_returns_from_jit(row):
    """A to_jax result (bare array or dataclass) can be returned from jax.jit."""
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    p, res, _, _ = _with_vjp(row)
    names = dense_diff_args(p)
    idx = [p.index(n) for n in names]
    fj = ds.to_jax(p.fn)

    def run(*vals):
        args = list(p.args)
        for i, v in zip(idx, vals):
            args[i] = v
        return fj(*args, **p.kwargs)

    out = jax.jit(run)(*[jnp.asarray(p.args[i]) for i in idx])
    for f in p.fields:
        np.testing.assert_allclose(np.asarray(field_value(out, f)),
                                   to_numpy(field_value(res, f)), rtol=1e-9, atol=1e-12,
                                   err_msg=f)


@pytest.mark.parametrize("row", SOLVER_ROWS, ids=_ids(SOLVER_ROWS))
def test_jax_vmap_returns_result(row):
    """jax.vmap over the first differentiable argument: one solve per element (the default
    vmap_method), results stacked like separate calls."""
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    p, _, _, _ = _with_vjp(row)
    name = dense_diff_args(p)[0]
    i = p.index(name)
    d = direction(p, name, rng_for(row, "vmap"))
    xs = np.stack([p.args[i], p.args[i] + 1e-3 * d])
    fj = ds.to_jax(p.fn)

    def run(x):
        args = list(p.args)
        args[i] = x
        return fj(*args, **p.kwargs)

    out = jax.vmap(run)(jnp.asarray(xs))
    for k in range(2):
        ref = p.with_arg(name, xs[k]).call()
        for f in p.fields:
            np.testing.assert_allclose(np.asarray(field_value(out, f))[k],
                                       to_numpy(field_value(ref, f)), rtol=1e-9, atol=1e-12,
                                       err_msg=f"{f}[{k}]")


@pytest.mark.parametrize("row", ROWS, ids=_ids(ROWS))
def test_throw_defaults_to_false(row):
    """One default for every family (SciPy's: report, do not raise)."""
    p = _fresh(row)
    if row.kind == "value":
        target = ds.implicit.custom_fixed_point if "fixed_point" in row.id else \
            ds.implicit.custom_root
    else:
        target = getattr(p.fn, "fwd", p.fn)
    params = inspect.signature(target).parameters
    if "throw" not in params and any(q.kind == q.VAR_KEYWORD for q in params.values()):
        # forwarded to the inner solver (the bandits to linear.solve): that default holds,
        # and test_failure_raises_solve_error_with_throw checks that throw= reaches it
        params = inspect.signature(ds.linear.solve.fwd).parameters
    assert "throw" in params, f"{row.id}: no throw= option"
    assert params["throw"].default is False, params["throw"].default


@pytest.mark.parametrize("row", SOLVER_ROWS, ids=_ids(SOLVER_ROWS))
def test_zero_cotangent_gives_zero(row):
    p, _res, cots, _ = _with_vjp(row)
    _, vjp_fn = ds.vjp(p.fn, *p.args, **p.kwargs)
    for label, grads in (("zeros", vjp_fn(**{f: np.zeros_like(c) for f, c in cots.items()})),
                         ("none given", vjp_fn())):
        for name in p.diff_args:
            assert_all(lambda a: a == 0, grad_of(grads, p, name), f"{label}: d/d{name}")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("row", SOLVER_ROWS, ids=_ids(SOLVER_ROWS))
def test_nonfinite_cotangent_gives_nan(row, bad):
    p, _res, cots, _ = _with_vjp(row)
    _, vjp_fn = ds.vjp(p.fn, *p.args, **p.kwargs)
    for f in cots:
        c = {k: np.zeros_like(v) for k, v in cots.items()}
        c[f] = np.array(c[f], copy=True)
        c[f].reshape(-1)[0] = bad
        grads = vjp_fn(**c)
        for name in p.diff_args:
            assert_all(np.isnan, grad_of(grads, p, name), f"{f}={bad} -> d/d{name}")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("row", GRADIENT_ROWS, ids=_ids(GRADIENT_ROWS))
def test_hypergradient_nonfinite_outer_gradient_gives_nan(row, bad):
    p = _fresh(row)
    w = np.array([bad, 1.0, 1.0])
    outer = (lambda x, y: anp.sum(w * y)) if bad is math.inf else p.extra["nan_outer"]
    g = p.with_arg("outer", outer).call()
    assert_all(np.isnan, g, f"outer gradient with {bad}")


@pytest.mark.parametrize("row", GRADIENT_ROWS, ids=_ids(GRADIENT_ROWS))
def test_hypergradient_zero_outer_gives_zero(row):
    p = _fresh(row)
    g = p.with_arg("outer", p.extra["zero_outer"]).call()
    assert_all(lambda a: a == 0, g, "outer = 0")


@pytest.mark.parametrize("row", SOLVER_ROWS, ids=_ids(SOLVER_ROWS))
def test_keyword_arguments_and_named_cotangents(row):
    p, _, cots, grads = _with_vjp(row)
    _, vjp_fn = ds.vjp(p.fn, *p.args, **p.kwargs)
    positional = vjp_fn(**cots)
    for name in p.diff_args:
        np.testing.assert_array_equal(to_numpy(_data(positional[name])),
                                      to_numpy(_data(grads[name])), err_msg=f"grads[{name!r}]")
    if row.kind == "value":
        pytest.skip("custom_root solvers take their arrays as *theta: no keyword form")
    names = p.arg_names()
    k = min(p.index(n) for n in p.diff_args)
    kw = {**p.kwargs, **{names[i]: p.args[i] for i in range(k, len(p.args))}}
    _, vjp_kw = ds.vjp(p.fn, *p.args[:k], **kw)
    by_kw = vjp_kw(**cots)
    for name in p.diff_args:
        np.testing.assert_allclose(to_numpy(_data(by_kw[name])), to_numpy(_data(grads[name])),
                                   rtol=1e-12, atol=1e-300,
                                   err_msg=f"{name} passed by keyword")


def _data(g):
    return g.data if sp.issparse(g) else g


@pytest.mark.parametrize("row", SOLVER_ROWS, ids=_ids(SOLVER_ROWS))
def test_python_scalar_cotangent_for_0d_outputs(row):
    p, res, _, _ = _with_vjp(row)
    zero_d = [f for f in p.fields if np.ndim(to_numpy(field_value(res, f))) == 0]
    if not zero_d:
        pytest.skip("no 0-d differentiable output")
    _, vjp_fn = ds.vjp(p.fn, *p.args, **p.kwargs)
    for f in zero_d:
        by_float = vjp_fn(**{f: 1.0})
        by_array = vjp_fn(**{f: np.asarray(1.0)})
        by_numpy_scalar = vjp_fn(**{f: np.float64(1.0)})
        for name in p.diff_args:
            for other in (by_float, by_numpy_scalar):
                np.testing.assert_array_equal(to_numpy(_data(other[name])),
                                              to_numpy(_data(by_array[name])),
                                              err_msg=f"{f}=1.0 -> d/d{name}")


# ------------------------------------------------------------------------------------------
# inputs are never modified
# ------------------------------------------------------------------------------------------
def _snapshot(problem: Problem):
    def snap(v):
        if sp.issparse(v):
            return ("sparse", v.copy())
        if isinstance(v, np.ndarray):
            return ("array", v.copy())
        if isinstance(v, (tuple, list)):
            return ("seq", [snap(u) for u in v])
        return ("other", v)

    return [snap(a) for a in problem.args], {k: snap(v) for k, v in problem.kwargs.items()}


def _assert_unchanged(before, now, what):
    kind, old = before
    if kind == "sparse":
        assert (old != now).nnz == 0 and np.array_equal(old.data, now.data), f"{what} changed"
    elif kind == "array":
        np.testing.assert_array_equal(now, old, err_msg=f"{what} was modified in place")
    elif kind == "seq":
        for i, (b, n) in enumerate(zip(old, now)):
            _assert_unchanged(b, n, f"{what}[{i}]")


@pytest.mark.parametrize("row", ROWS, ids=_ids(ROWS))
def test_inputs_are_not_modified(row):
    p = _fresh(row)
    args0, kwargs0 = _snapshot(p)
    if row.kind == "gradient":
        p.fn(*p.args, **{**p.kwargs, "return_info": True})
    else:
        res, vjp_fn = ds.vjp(p.fn, *p.args, **p.kwargs)
        cots = cotangents(p, res, rng_for(row, "mod"))
        vjp_fn(**cots)
        vjp_fn(**cots)
    for i, (b, a) in enumerate(zip(args0, p.args)):
        _assert_unchanged(b, a, f"positional argument {p.arg_names()[i]}")
    for k, b in kwargs0.items():
        _assert_unchanged(b, p.kwargs[k], f"{k}=")


# ------------------------------------------------------------------------------------------
# the bad-input table
# ------------------------------------------------------------------------------------------
ARRAY_CASES = ("nan", "inf", "int", "complex", "float16", "list", "non-contiguous",
               "read-only", "torch", "jax")


def _bad_params():
    out = []
    for r in ROWS:
        for name in r.bad_args:
            for case in ARRAY_CASES:
                out.append(pytest.param(r, name, case, id=f"{r.id}-{name}-{case}"))
    return out


def _noncontiguous(x):
    big = np.repeat(x, 2, axis=-1)
    v = big[..., ::2]
    assert not v.flags.c_contiguous and np.array_equal(v, x)
    return v


def _readonly(x):
    y = np.array(x, copy=True)
    y.setflags(write=False)
    return y


def _ref_answer(row: Row):
    p, res, _, _ = reference(row.id)
    return p, res


def _same(row, p, ref, label, rtol=None):
    def check(out):
        if row.kind == "gradient":
            np.testing.assert_allclose(to_numpy(out), to_numpy(ref), rtol=rtol or row.same_rtol,
                                       atol=1e-12, err_msg=label)
        else:
            assert_same_answer(out, ref, p, rtol or row.same_rtol, label)
    return check


@pytest.mark.parametrize("row, name, case", _bad_params())
def test_bad_array_input(row, name, case):
    p, ref = _ref_answer(row)
    x = p.arg(name)
    label = f"{row.id}: {name} {case}"
    if sp.issparse(x):
        if case in ("nan", "inf", "int", "complex", "float16"):
            y = x.copy()
            if case in ("nan", "inf"):
                y.data = y.data.copy()
                y.data[0] = math.nan if case == "nan" else math.inf
            else:
                if case == "int" and not np.array_equal(y.data, np.round(y.data)):
                    pytest.skip("not integer-valued")
                if case == "float16":
                    pytest.skip("SciPy sparse matrices cannot hold float16")
                y = y.astype({"int": np.int64, "complex": np.complex128}[case])
            x_bad = y
        elif case in ("list", "non-contiguous", "read-only"):
            x_bad = {"list": x.toarray().tolist(), "non-contiguous": x, "read-only": x}[case]
            if case == "read-only":
                x_bad = x.copy()
                for arr in (x_bad.data, x_bad.indices, x_bad.indptr):
                    arr.setflags(write=False)
            if case == "non-contiguous":
                pytest.skip("a sparse matrix has no strides")
        else:
            pytest.skip("torch/JAX have no SciPy-sparse twin")
    else:
        x = np.asarray(x)
        if case == "nan" or case == "inf":
            x_bad = np.array(x, copy=True)
            x_bad.reshape(-1)[0] = math.nan if case == "nan" else math.inf
        elif case == "int":
            if not np.array_equal(x, np.round(x)):
                pytest.skip(f"{name} is not integer-valued in this row's problem")
            x_bad = x.astype(np.int64)
        elif case == "complex":
            x_bad = x.astype(np.complex128)
        elif case == "float16":
            x_bad = x.astype(np.float16)
        elif case == "list":
            x_bad = x.tolist()
        elif case == "non-contiguous":
            if x.size <= 1:
                pytest.skip("a single entry is always contiguous")
            x_bad = _noncontiguous(x)
        elif case == "read-only":
            x_bad = _readonly(x)
        elif case == "torch":
            torch = pytest.importorskip("torch")
            x_bad = torch.tensor(x)
        else:
            jnp = pytest.importorskip("jax.numpy")
            x_bad = jnp.asarray(x)
    q = p.with_arg(name, x_bad)
    thunk = lambda: q.call()  # noqa: E731

    if case in ("non-contiguous", "read-only", "int"):
        allow = _same(row, p, ref, label)
        if case == "int":
            expect_clear_error(thunk, row, name, allow=allow, label=label)
        else:
            allow(thunk())
    elif case in ("nan", "inf"):
        def honest(out):
            assert row.kind != "gradient" and is_honest_nonfinite(out), (
                f"{label}: returned without an error and without reporting "
                f"Status.NONFINITE (status={getattr(out, 'status', None)!r})")
        expect_clear_error(thunk, row, name, allow=honest, label=label,
                           received=("nan", "inf", "finite"))
    elif case in ("list", "torch", "jax"):
        expect_clear_error(thunk, row, name, allow=_same(row, p, ref, label), label=label,
                           received=(case, "tensor") if case == "torch" else
                           (case, "jaxlib", "ArrayImpl") if case == "jax" else (case,))
    else:  # complex, float16: the one policy is a TypeError
        expect_clear_error(thunk, row, name, label=label, received=(case,))


def _option_array_params():
    return [pytest.param(r, name, case, id=f"{r.id}-{name}-{case}")
            for r in ROWS for name in r.option_arrays
            for case in ("nan", "float16", "complex", "wrong shape", "list", "read-only",
                         "non-contiguous")]


@pytest.mark.parametrize("row, name, case", _option_array_params())
def test_bad_option_arrays(row, name, case):
    """Warm starts and other array options follow the input policy too."""
    p = _fresh(row)
    good = row.option_arrays[name](p)
    label = f"{row.id}: {name}= {case}"
    if case == "nan":
        bad = good.copy()
        bad.reshape(-1)[0] = math.nan
    elif case in ("float16", "complex"):
        bad = good.astype({"float16": np.float16, "complex": np.complex128}[case])
    elif case == "wrong shape":
        bad = np.concatenate([good, good[..., :1]], axis=-1)
    elif case == "list":
        bad = good.tolist()
    elif case == "read-only":
        bad = _readonly(good)
    else:
        bad = _noncontiguous(good)
    thunk = _option_thunk(row, p, **{name: bad})
    if case in ("read-only", "non-contiguous"):
        ref = _option_thunk(row, p, **{name: good})()
        assert_same_answer(thunk(), ref, p, 0.0, label)
    elif case == "list":
        ref = _option_thunk(row, p, **{name: good})()
        expect_clear_error(thunk, row, name, label=label,
                           allow=lambda out: assert_same_answer(out, ref, p, 0.0, label))
    else:
        expect_clear_error(thunk, row, name, label=label)


@pytest.mark.parametrize("row", ROWS, ids=_ids(ROWS))
def test_none_arguments(row):
    if not row.none_args:
        pytest.skip("no required array argument")
    p, _ = _ref_answer(row)
    for name in row.none_args:
        expect_clear_error(lambda name=name: p.with_arg(name, None).call(), row, name,
                           label=f"{row.id}: {name}=None")


@pytest.mark.parametrize("row", ROWS, ids=_ids(ROWS))
def test_wrong_shapes_and_ndim(row):
    if row.shape_cases is None:
        pytest.skip("no shape cases")
    p, _ = _ref_answer(row)
    failures = []
    for label, name, q in row.shape_cases(p):
        try:
            expect_clear_error(lambda q=q: q.call(), row, name, label=f"{row.id}: {label}")
        except (AssertionError, pytest.fail.Exception) as err:
            failures.append(str(err).splitlines()[0])
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("row", ROWS, ids=_ids(ROWS))
def test_size_zero(row):
    if row.size0 is None:
        pytest.skip("no size-0 case for this row (user-defined shapes)")
    p, _ = _ref_answer(row)
    q, name = row.size0(p)

    def trivial(out):
        if row.kind == "gradient":
            return
        for f in p.fields:
            v = to_numpy(field_value(out, f))
            assert np.all(np.isfinite(v)), f"size-0 result field {f} is not finite: {v!r}"

    expect_clear_error(lambda: q.call(), row, name, allow=trivial,
                       label=f"{row.id}: size 0 ({' or '.join(name)})")


def _option_thunk(row: Row, p: Problem, **opts):
    if row.options is not None:
        return row.options(p, **opts)
    return lambda: p.fn(*p.args, **{**p.kwargs, **opts})


def _option_params():
    out = []
    for r in ROWS:
        for t in r.tols:
            out.append(pytest.param(r, t, -1e-3, id=f"{r.id}-{t}=-1e-3"))
            out.append(pytest.param(r, t, math.nan, id=f"{r.id}-{t}=nan"))
        if r.budget:
            for v, label in ((0, "0"), (True, "True"), (2.5, "2.5"), (-1, "-1")):
                out.append(pytest.param(r, r.budget, v, id=f"{r.id}-{r.budget}={label}"))
    return out


@pytest.mark.parametrize("row, option, value", _option_params())
def test_bad_options(row, option, value):
    p = _fresh(row)
    received = (repr(value), str(value)) + (("bool",) if isinstance(value, bool) else ())
    expect_clear_error(_option_thunk(row, p, **{option: value}), row, option,
                       label=f"{row.id}: {option}={value!r}", received=received)


@pytest.mark.parametrize("row", [r for r in ROWS if r.budget and len(r.tols) == 2],
                         ids=_ids([r for r in ROWS if r.budget and len(r.tols) == 2]))
def test_zero_tolerances_run_a_fixed_budget(row):
    """rtol = atol = 0 means "run exactly maxiter iterations": no error, no warning (rows
    where a fixed budget has no meaning must refuse it with a clear error)."""
    p = _fresh(row)
    if p.kwargs.get("method") == "direct":
        pytest.skip("a direct solve has no iterations")
    thunk = _option_thunk(row, p, **{row.tols[0]: 0.0, row.tols[1]: 0.0, row.budget: 3})
    if not row.fixed_budget:
        expect_clear_error(thunk, row, "rtol", label=f"{row.id}: rtol = atol = 0")
        return
    res = thunk()
    if row.kind == "gradient":
        return
    status, conv, n = (np.asarray(to_numpy(v)) for v in (res.status, res.converged, res.n_iters))
    assert np.all(status == int(ds.Status.MAX_ITERATIONS)) and not np.any(conv), status
    assert np.all(n == 3 * (row.summed_batch if n.ndim == 0 else 1)), n


# ------------------------------------------------------------------------------------------
# other namespaces
# ------------------------------------------------------------------------------------------
def _convert(problem: Problem, xp) -> Problem:
    def conv(v):
        if isinstance(v, np.ndarray):
            return xp.asarray(v)
        return v

    return Problem(problem.fn, tuple(conv(a) for a in problem.args), dict(problem.kwargs),
                   problem.diff_args, problem.fields, problem.directions, problem.extra)


def _run_in(row: Row, xp):
    p_np, res_np, cots, grads_np = reference(row.id)
    if row.make_xp is not None:
        p = row.make_xp(xp)
        if "step_ts" in p_np.kwargs:  # replay NumPy's steps: compare like with like
            p = p.with_kwargs(step_ts=p_np.kwargs["step_ts"])
    else:
        if any(sp.issparse(a) for a in p_np.args):
            pytest.skip("sparse SciPy input")
        p = _convert(row.make(), xp)
    if row.kind == "gradient":
        g = p.call()
        np.testing.assert_allclose(to_numpy(g), to_numpy(res_np), rtol=1e-8, atol=1e-12)
        return
    res, vjp_fn = ds.vjp(p.fn, *p.args, **p.kwargs)
    assert_same_answer(res, res_np, p_np, 1e-8, f"{row.id} in {xp.__name__}")
    grads = vjp_fn(**{f: xp.asarray(c) for f, c in cots.items()})
    for name in p.diff_args:
        np.testing.assert_allclose(to_numpy(grad_of(grads, p, name)), to_numpy(grads_np[name]),
                                   rtol=1e-7, atol=1e-10, err_msg=f"d/d{name}")


@pytest.mark.parametrize("row", ROWS, ids=_ids(ROWS))
def test_array_api_strict(row):
    if row.strict is not None and row.make_xp is None:
        pytest.skip(f"not on array_api_strict: {row.strict}")
    xps = pytest.importorskip("array_api_strict")
    _run_in(row, xps)


@pytest.mark.gpu
@pytest.mark.parametrize("row", ROWS, ids=_ids(ROWS))
def test_cupy(row):
    cupy = pytest.importorskip("cupy")
    _run_in(row, cupy)




# ------------------------------------------------------------------------------------------
# second order through the adapters: correct or refused, never silently wrong
# ------------------------------------------------------------------------------------------
def _quadratic_grads(p: Problem, cots, args):
    """∇ of L = Σ_f <cot_f, field_f²>/2 at ``args`` through ds.vjp (cotangent cot_f·field_f)."""
    res, vjp_fn = ds.vjp(p.fn, *args, **p.kwargs)
    grads = vjp_fn(**{f: c * to_numpy(field_value(res, f)) for f, c in cots.items()})
    return grads


def _hvp_by_differences(p: Problem, cots, names, v, h=1e-5):
    idx = [p.index(n) for n in names]

    def at(t):
        args = list(p.args)
        for i, n in zip(idx, names):
            args[i] = args[i] + t * v[n]
        g = _quadratic_grads(p, cots, tuple(args))
        return [to_numpy(grad_of(g, p, n)) for n in names]

    plus, minus = at(h), at(-h)
    return [(a - b) / (2 * h) for a, b in zip(plus, minus)]


def _second_order(adapter, p: Problem, cots, names, v):
    """Hessian-vector products of L through the adapter; None when the adapter refuses."""
    idx = [p.index(n) for n in names]

    def args_with(vals):
        args = list(p.args)
        for i, val in zip(idx, vals):
            args[i] = val
        return args

    x0 = [p.args[i] for i in idx]
    if adapter == "torch":
        torch = pytest.importorskip("torch")
        ts = [torch.tensor(x, requires_grad=True) for x in x0]
        res = ds.to_torch(p.fn)(*args_with(ts), **p.kwargs)
        L = sum((torch.as_tensor(c) * field_value(res, f) ** 2).sum() / 2 for f, c in cots.items())
        try:  # refusing create_graph, or a once_differentiable second backward, is fine
            gs = torch.autograd.grad(L, ts, create_graph=True)
            s = sum((g * torch.as_tensor(v[n])).sum() for g, n in zip(gs, names))
            hs = torch.autograd.grad(s, ts, allow_unused=True)
        except RuntimeError:
            return None
        return [np.zeros(t.shape) if h is None else h.detach().numpy() for h, t in zip(hs, ts)]
    if adapter == "jax":
        jax = pytest.importorskip("jax")
        jnp = pytest.importorskip("jax.numpy")
        fj = ds.to_jax(p.fn)

        def L(*vals):
            res = fj(*args_with(vals), **p.kwargs)
            return sum(jnp.sum(jnp.asarray(c) * field_value(res, f) ** 2) / 2
                       for f, c in cots.items())

        def s(*vals):
            gs = jax.grad(L, argnums=tuple(range(len(vals))))(*vals)
            return sum(jnp.sum(g * jnp.asarray(v[n])) for g, n in zip(gs, names))

        try:
            hs = jax.grad(s, argnums=tuple(range(len(x0))))(*[jnp.asarray(x) for x in x0])
        except Exception as err:
            if "pure_callback" in str(err) or "differentiat" in str(err).lower() or \
                    "JVP" in str(err) or "jvp" in str(err):
                return None
            raise
        return [np.asarray(h) for h in hs]
    fa = ds.to_autograd(p.fn)

    def L(*vals):
        res = fa(*args_with(vals), **p.kwargs)
        return sum(anp.sum(c * field_value(res, f) ** 2) / 2 for f, c in cots.items())

    def s(*vals):
        gs = autograd.grad(L, tuple(range(len(vals))))(*vals)
        return sum(anp.sum(g * v[n]) for g, n in zip(gs, names))

    try:
        hs = autograd.grad(s, tuple(range(len(x0))))(*x0)
    except (NotImplementedError, TypeError, ValueError, RuntimeError) as err:
        if "diffsolve" in str(err) or "order" in str(err).lower():
            return None
        raise
    return [np.asarray(h) for h in hs]


@pytest.mark.parametrize("adapter", ["autograd", "torch", "jax"])
@pytest.mark.parametrize("row", SOLVER_ROWS, ids=_ids(SOLVER_ROWS))
def test_second_order_is_correct_or_refused(row, adapter):
    """The issue's to_torch Sinkhorn Hessian: a backward rule treated as a constant in a
    second backward gives silently wrong Hessians; an adapter must refuse instead."""
    p, _, cots, _ = _with_vjp(row)
    names = [n for n in dense_diff_args(p) if not p.directions]  # keep admissible directions
    names = names or dense_diff_args(p)
    rng = rng_for(row, "hvp")
    v = {n: direction(p, n, rng) for n in names}
    got = _second_order(adapter, p, cots, names, v)
    if got is None:
        return  # refused: fine
    want = _hvp_by_differences(p, cots, names, v)
    for n, g, w in zip(names, got, want):
        scale = float(np.max(np.abs(w))) + 1e-12
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * scale,
                                   err_msg=f"{row.id} {adapter}: second order d²/d{n} "
                                           "is neither refused nor correct")


# ------------------------------------------------------------------------------------------
# failure is reported (status + ConvergenceWarning, or SolveError with throw=True); a
# callback returning True stops with Status.STOPPED
# ------------------------------------------------------------------------------------------
def _starved(row: Row, p: Problem, **opts):
    """The row's call with a budget of one iteration (decorator options for custom_root)."""
    return _option_thunk(row, p, **{row.budget: 1}, **row.starve, **opts)


def _failure_rows():
    return [r for r in ROWS if r.budget and not r.id.endswith("[direct]")
            and not r.id.endswith("[unrolled]")]


@pytest.mark.parametrize("row", _failure_rows(), ids=_ids(_failure_rows()))
def test_failure_warns_with_its_status(row):
    p = _fresh(row)
    with pytest.warns(ds.ConvergenceWarning) as caught:
        if row.kind == "value":  # the implicit solve runs in the backward pass
            fn = p.extra["decorate"](maxiter=1, rtol=1e-14)
            out, vjp_fn = ds.vjp(fn, *p.args)
            vjp_fn(np.ones(np.shape(out)))
        else:
            out = _starved(row, p)()
    assert caught, "no ConvergenceWarning"
    if row.kind == "solver":
        status = np.asarray(to_numpy(out.status))
        assert np.all(status != int(ds.Status.SUCCESS)) and not np.any(
            np.asarray(to_numpy(out.converged))), (out.status, out.converged)
        assert out.message and str(caught[0].message) in (out.message, str(caught[0].message))


@pytest.mark.parametrize("row", _failure_rows(), ids=_ids(_failure_rows()))
def test_failure_raises_solve_error_with_throw(row):
    p = _fresh(row)
    with pytest.raises(ds.SolveError) as err:
        if row.kind == "value":
            fn = p.extra["decorate"](maxiter=1, rtol=1e-14, throw=True)
            _, vjp_fn = ds.vjp(fn, *p.args)
            vjp_fn(np.ones(np.shape(p.args[0])))
        else:
            _starved(row, p, throw=True)()
    e = err.value
    assert isinstance(e.status, ds.Status) and e.status != ds.Status.SUCCESS, e.status
    assert e.result is not None and str(e), "a SolveError carries its result and message"


def _callback_rows():
    out = []
    for r in ROWS:
        if r.kind != "solver" or r.id.endswith("[direct]"):
            continue
        out.append(r)
    return out


@pytest.mark.parametrize("row", _callback_rows(), ids=_ids(_callback_rows()))
def test_callback_state_is_frozen_and_true_stops(row):
    p = _fresh(row)
    states = []

    def stop(state):
        states.append(state)
        return True

    # no warning: STOPPED was asked for
    res = p.fn(*p.args, **{**p.kwargs, **row.starve, "callback": stop})
    assert states, "the callback was never called"
    st = states[0]
    assert dataclasses.is_dataclass(st), f"the state is a {type(st).__name__}, not a dataclass"
    name = dataclasses.fields(st)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(st, name, None)
    assert hasattr(st, "n_iters"), f"{type(st).__name__} has no n_iters"
    status = np.asarray(to_numpy(res.status))
    n = np.asarray(to_numpy(res.n_iters))
    # converging at the very check where the callback asks to stop may report SUCCESS
    stopped = status == int(ds.Status.STOPPED)
    at_first = (status == int(ds.Status.SUCCESS)) & (n == int(getattr(st, "n_iters", -1)))
    assert np.all(stopped | at_first), (res.status, res.n_iters, st)
    assert not np.any(np.asarray(to_numpy(res.converged))[stopped])
    # returning None (or False) does not stop
    seen = []
    res2 = p.fn(*p.args, **{**p.kwargs, **row.starve, "callback": lambda s: seen.append(s)})
    assert np.all(np.asarray(to_numpy(res2.status)) == int(ds.Status.SUCCESS)), res2.status
    assert len(seen) >= 1


# ------------------------------------------------------------------------------------------
# renamed options keep working for one release
# ------------------------------------------------------------------------------------------
def _rename_params():
    return [pytest.param(r, old, new, name, id=f"{r.id}-{'+'.join(old)}")
            for r in ROWS for old, new, name in r.renames]


def _apply(kwargs, changes):
    out = dict(kwargs)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("row, old, new, name", _rename_params())
def test_old_option_names_warn_and_agree(row, old, new, name):
    p = _fresh(row)
    with pytest.warns(DeprecationWarning, match=rf"\b{name}\b"):
        out_old = p.fn(*p.args, **_apply(p.kwargs, old))
    out_new = p.fn(*p.args, **_apply(p.kwargs, new))
    if row.kind == "gradient":
        np.testing.assert_array_equal(out_old, out_new)
    else:
        assert_same_answer(out_old, out_new, p, 0.0, f"{row.id} {old} vs {new}")


# ------------------------------------------------------------------------------------------
# float32 is kept
# ------------------------------------------------------------------------------------------
def _as_float32(p: Problem, row: Row) -> Problem:
    def conv(v):
        if sp.issparse(v) and v.dtype == np.float64:
            return v.astype(np.float32)
        if isinstance(v, np.ndarray) and v.dtype == np.float64:
            return v.astype(np.float32)
        return v

    kw = dict(p.kwargs)
    if row.family == "ode":
        kw.pop("step_ts", None)
        kw.update(rtol=1e-5, atol=1e-7)
    elif "rtol" in kw:
        kw["rtol"] = 1e-5
    return Problem(p.fn, tuple(conv(a) for a in p.args), kw, p.diff_args, p.fields,
                   p.directions, p.extra)


F32_ROWS = rows("solver")


@pytest.mark.parametrize("row", F32_ROWS, ids=_ids(F32_ROWS))
def test_float32_is_kept(row):
    _, res64, cots, _ = _with_vjp(row)
    p = _as_float32(row.make(), row)
    res, vjp_fn = ds.vjp(p.fn, *p.args, **p.kwargs)
    assert np.all(np.asarray(to_numpy(res.status)) == int(ds.Status.SUCCESS)), res.message
    for f in p.fields:
        v = field_value(res, f)
        assert v.dtype == np.float32, f"{f} is {v.dtype} for float32 inputs"
        if f.startswith("reg_"):  # sums of error estimates: set by the tolerances, not x
            continue
        want = to_numpy(field_value(res64, f))
        scale = float(np.max(np.abs(want))) if np.size(want) else 1.0
        np.testing.assert_allclose(to_numpy(v), want, rtol=1e-3, atol=1e-4 * scale,
                                   err_msg=f"float32 {f} vs float64")
    grads = vjp_fn(**{f: c.astype(np.float32) for f, c in cots.items()})
    for name in p.diff_args:
        g = grad_of(grads, p, name)
        g = g.data if sp.issparse(g) else g
        assert g.dtype == np.float32, f"cotangent of {name} is {g.dtype} for float32 inputs"


# ------------------------------------------------------------------------------------------
# the vjp function: reusable, and strict about its cotangents
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", SOLVER_ROWS, ids=_ids(SOLVER_ROWS))
def test_vjp_fn_is_reusable(row):
    """A backward rule must not consume its residuals (LU factors, checkpoints, ...)."""
    p, _, cots, _ = _with_vjp(row)
    _, vjp_fn = ds.vjp(p.fn, *p.args, **p.kwargs)
    first = vjp_fn(**cots)
    other = vjp_fn(**{f: 2.0 * c for f, c in cots.items()})
    again = vjp_fn(**cots)
    for name in p.diff_args:
        g1, g2, g3 = (to_numpy(_data(grad_of(g, p, name))) for g in (first, other, again))
        np.testing.assert_array_equal(g3, g1, err_msg=f"d/d{name} changed on a second call")
        np.testing.assert_allclose(g2, 2.0 * g1, rtol=1e-9, atol=1e-12 * max(
            1.0, float(np.max(np.abs(g1)))), err_msg=f"d/d{name} is not linear in the cotangent")


@pytest.mark.parametrize("row", SOLVER_ROWS, ids=_ids(SOLVER_ROWS))
def test_bad_cotangents_are_refused(row):
    p, _res, cots, _ = _with_vjp(row)
    _, vjp_fn = ds.vjp(p.fn, *p.args, **p.kwargs)
    f = next(iter(cots))
    with pytest.raises(ValueError, match=rf"\b{f}\b"):
        vjp_fn(**{f: np.zeros((*np.shape(cots[f]), 2))})
    with pytest.raises(TypeError, match="no_such_output"):
        vjp_fn(no_such_output=np.zeros(1))
