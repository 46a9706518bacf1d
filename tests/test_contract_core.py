"""The shared solver contract: status vocabulary, validators, the autodiff core's argument
binding and non-finite cotangents, checked autograd tracing, and the adapters' refusals."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass

import numpy as np
import pytest

import diffsolve as ds
from diffsolve import _validate as V
from diffsolve._status import Status, report, worst_status
from diffsolve._user_function import NotTraceableError, traced_vjp

# ------------------------------------------------------------------------------ status


@dataclass(frozen=True)
class _Fake:
    status: object
    message: str = "stopped; try something"


def test_status_values_are_stable_and_hint_says_what_to_try():
    assert [int(s) for s in Status] == list(range(8))
    assert Status(1) is Status.MAX_ITERATIONS and Status(2) is Status.STEP_UNDERFLOW
    assert "maxiter" in Status.MAX_ITERATIONS.hint()
    assert Status.SUCCESS.success and not Status.NONFINITE.success


@pytest.mark.parametrize("status, error", [
    (Status.MAX_ITERATIONS, ds.MaxIterationsError),
    (Status.STEP_UNDERFLOW, ds.StepUnderflowError),
    (Status.BREAKDOWN, ds.BreakdownError),
    (Status.NONFINITE, ds.NonFiniteError),
    (Status.INFEASIBLE, ds.InfeasibleError),
    (Status.DIVERGED, ds.DivergedError),
])
def test_report_raises_the_status_error_with_the_result(status, error):
    res = _Fake(status)
    with pytest.raises(error, match="try something") as info:
        report(res, throw=True)
    assert isinstance(info.value, ds.SolveError) and info.value.result is res
    assert info.value.status is status
    with pytest.warns(ds.ConvergenceWarning, match="try something"):
        assert report(res, throw=False) is res


def test_report_is_quiet_on_success_stop_fixed_budget_and_inner_solves():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report(_Fake(Status.SUCCESS), throw=True)
        report(_Fake(Status.STOPPED), throw=True)
        report(_Fake(Status.MAX_ITERATIONS), throw=True, fixed_budget=True)
        report(_Fake(Status.NONFINITE), throw=False, warn=False)
    # a fixed budget does not excuse a NaN
    with pytest.raises(ds.NonFiniteError):
        report(_Fake(Status.NONFINITE), throw=True, fixed_budget=True)


def test_batched_status_reduces_to_the_most_informative_failure():
    assert worst_status([0, 1, 4, 0]) is Status.NONFINITE
    assert worst_status([0, 0]) is Status.SUCCESS
    with pytest.raises(ds.MaxIterationsError):
        report(_Fake(np.array([0, 1, 0])), throw=True)


# -------------------------------------------------------------------------- validators

def test_budgets_reject_bool_and_accept_numpy_integers():
    with pytest.raises(TypeError, match=r"f: maxiter must be an integer >= 1, got the bool True"):
        V.positive_int("f", "maxiter", True)
    assert V.positive_int("f", "maxiter", np.int64(3)) == 3
    assert V.positive_int("f", "maxiter", np.array(4)) == 4
    with pytest.raises(ValueError, match="maxiter must be >= 1, got 0"):
        V.positive_int("f", "maxiter", 0)
    assert V.positive_int("f", "maxiter", None, allow_none=True) is None


def test_reals_reject_bool_nan_and_negative_tolerances():
    with pytest.raises(TypeError, match="rtol must be a finite real"):
        V.tolerances("f", False, 0.0)
    with pytest.raises(ValueError, match="rtol must be finite"):
        V.tolerances("f", float("nan"), 0.0)
    with pytest.raises(ValueError, match="atol must be >= 0.0, got -1"):
        V.tolerances("f", 1e-6, -1.0)
    assert V.tolerances("f", 0, 0) == (0.0, 0.0)  # the fixed budget
    with pytest.raises(ValueError, match="eps must be > 0.0"):
        V.positive_real("f", "eps", 0.0)


def test_choice_lists_the_valid_values():
    with pytest.raises(ValueError, match="method must be one of 'cg', 'sor'; got 'gc'"):
        V.choice("f", "method", "gc", ("cg", "sor"))
    assert V.choice("f", "method", "sor", ("cg", "sor")) == "sor"
    with pytest.raises(ValueError):
        V.choice("f", "flag", 1, (True, False))  # 1 is not True


def test_renamed_options_warn_with_the_new_name():
    with pytest.warns(DeprecationWarning, match="tol= is deprecated.*use rtol= instead"):
        out = V.renamed_options("f", {"tol": 1e-3, "x": 1}, {"tol": "rtol"})
    assert out == {"rtol": 1e-3, "x": 1}
    with pytest.raises(TypeError, match="both tol= .* and rtol="):
        V.renamed_options("f", {"tol": 1e-3, "rtol": 1e-4}, {"tol": "rtol"})


@pytest.mark.parametrize("bad, error, match", [
    (np.ones(3, np.float16), TypeError, "dtype float16; diffsolve works in float32 or float64"),
    (np.ones(3, complex), TypeError, "dtype complex128"),
    (np.ones(3, bool), TypeError, "dtype bool"),

    ([1.0, 2.0], TypeError, r"b must be an array, got a builtins.list; pass np.asarray\(b\)"),
    (np.zeros(0), ValueError, r"b has shape \(0,\) with no entries"),
    (np.array([1.0, np.inf]), ValueError, "b contains NaN or inf"),
    (np.ones((2, 2)), ValueError, r"b must have 1 dimension\(s\), got shape \(2, 2\)"),
])
def test_float_array_policy(bad, error, match):
    with pytest.raises(error, match="g: " + ("" if match.startswith("b") else "b has ") + match):
        V.float_array("g", "b", bad, min_ndim=1, max_ndim=1)
    # the message names the function and the argument, then says what was wrong


def test_float_array_promotes_integers_and_keeps_float32():
    out = V.float_array("g", "b", np.arange(3))
    assert out.dtype == np.float64 and np.array_equal(out, [0.0, 1.0, 2.0])
    x32 = np.ones(2, np.float32)
    assert V.float_array("g", "b", x32) is x32


def test_float_array_refuses_framework_tensors_with_the_adapter_to_use():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"wrap the solver with diffsolve.to_torch"):
        V.float_array("g", "b", torch.ones(2))


# ------------------------------------------------------------------ the autodiff core

A = np.array([[4.0, 1.0], [1.0, 3.0]])
B = np.array([1.0, 2.0])


def test_keyword_array_gets_the_same_cotangent_as_positional():
    _, f_pos = ds.vjp(ds.linear.solve, A, B)
    _, f_kw = ds.vjp(ds.linear.solve, A, b=B)
    g_pos, g_kw = f_pos(x=np.ones(2)), f_kw(x=np.ones(2))
    assert len(g_kw) == 2
    np.testing.assert_allclose(g_kw[1], g_pos[1])
    np.testing.assert_allclose(g_kw["b"], np.linalg.solve(A.T, np.ones(2)))
    assert g_kw.names == ("A", "b") and set(g_kw.asdict()) == {"A", "b"}


def test_cotangents_by_name_explain_unknown_and_keyword_only_names():
    _, f = ds.vjp(ds.linear.solve, A, B, method="cg", x0=np.zeros(2))
    g = f(x=np.ones(2))
    with pytest.raises(KeyError, match="x0= is a keyword-only option and is not differentiated"):
        g["x0"]
    with pytest.raises(KeyError, match="no differentiable argument named 'C'"):
        g["C"]


def test_bad_call_names_the_function():
    with pytest.raises(TypeError, match="diffsolve.linear.solve: .*unexpected keyword"):
        ds.vjp(ds.linear.solve, A, B, bogus=1)


def test_scalar_cotangent_for_a_0d_output():
    a = np.ones(3) / 3
    C = np.arange(9.0).reshape(3, 3) / 9
    _, f = ds.vjp(ds.ot.sinkhorn, a, a, C, 0.5)
    g_float = f(cost=1.0)
    g_array = f(cost=np.asarray(1.0))
    for x, y in zip(g_float, g_array):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="cotangent plan= is the scalar 1.0"):
        f(plan=1.0)
    with pytest.raises(TypeError, match="cotangent cost= must be an array"):
        f(cost="1")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("method", ["direct", "cg"])
def test_nonfinite_cotangent_gives_nan_gradients(bad, method):
    _, f = ds.vjp(ds.linear.solve, A, B, method=method)
    A_bar, b_bar = f(x=np.array([bad, 1.0]))
    assert np.isnan(A_bar).all() and np.isnan(b_bar).all()
    # and a finite one is unaffected by the check
    A_bar, b_bar = f(x=np.array([1.0, 1.0]))
    assert np.isfinite(A_bar).all() and np.isfinite(b_bar).all()


# ----------------------------------------------------------- checked autograd tracing

def _plain_numpy(y, p):
    return np.array([y[1], -p[0] * y[0]])


def _with_dot(y, p):
    return np.dot(np.eye(2), y) * p[0]


def _float_cast(y, p):
    return y * float(p[0])


def _autograd_numpy(y, p):
    import autograd.numpy as anp

    return anp.stack([y[1], -p[0] * y[0]])


@pytest.mark.parametrize("fun", [_plain_numpy, _with_dot])
def test_plain_numpy_user_function_is_refused(fun):
    with pytest.raises(NotTraceableError, match=rf"diffsolve.test: autograd cannot trace the "
                                                rf"field f \('{fun.__name__}'\).*autograd.numpy"
                                                r".*pass vjp="):
        traced_vjp(fun, (np.ones(2), np.ones(1)), (0, 1), where="diffsolve.test",
                   what="the field f", ways_out="pass vjp=")


def test_hidden_dependence_through_python_floats_is_refused():
    # float(p[0]) on a box raises inside autograd, or hides p: either way no silent zero
    with pytest.raises((NotTraceableError, TypeError)):
        traced_vjp(_float_cast, (np.ones(2), np.ones(1)), (1,), where="w", what="f",
                   ways_out="x")


def test_autograd_function_and_partial_independence_trace_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vjp_fn, _ = traced_vjp(_autograd_numpy, (np.array([1.0, 2.0]), np.array([3.0])),
                               (0, 1), where="w", what="f", ways_out="x")
        gy, gp = vjp_fn(np.array([1.0, 1.0]))
        np.testing.assert_allclose(gy, [-3.0, 1.0])
        np.testing.assert_allclose(gp, [-1.0])
        # independent of p but not of y: joint tracing sees the dependence, no warning
        vjp_fn, _ = traced_vjp(lambda y, p: y * 2.0, (np.ones(2), np.ones(1)), (0, 1),
                               where="w", what="f", ways_out="x")
        np.testing.assert_allclose(vjp_fn(np.ones(2))[1], [0.0])


def test_truly_constant_function_keeps_autograds_warning():
    with pytest.warns(UserWarning, match="Output seems independent of input"):
        vjp_fn, _ = traced_vjp(lambda y: np.ones(2), (np.ones(2),), 0, where="w", what="f",
                               ways_out="x")
    np.testing.assert_allclose(vjp_fn(np.ones(2)), 0.0)


# ------------------------------------------------------------------------- adapters

def _ot_problem():
    rng = np.random.default_rng(0)
    return np.ones(4) / 4, np.ones(5) / 5, rng.random((4, 5))


def test_torch_second_order_is_refused_not_wrong():
    torch = pytest.importorskip("torch")
    At = torch.tensor(A, requires_grad=True)
    x = ds.to_torch(ds.linear.solve)(At, torch.tensor(B)).x
    # once_differentiable would not do: grad(..., inputs=A) prunes its error node and
    # returns a Hessian without the solver's second-order term
    with pytest.raises(RuntimeError, match=r"to_torch\(diffsolve.linear.solve\): backward "
                                           "with create_graph=True is not supported"):
        torch.autograd.grad((x * At.sum()).sum(), At, create_graph=True)
    g, = torch.autograd.grad((x * At.sum()).sum(), At)  # first order still works
    assert torch.isfinite(g).all()


def test_torch_keyword_differentiable_and_keyword_only_tensor_refused():
    torch = pytest.importorskip("torch")
    At = torch.tensor(A)
    b = torch.tensor(B, requires_grad=True)
    ds.to_torch(ds.linear.solve)(At, b=b).x.sum().backward()
    np.testing.assert_allclose(b.grad.numpy(), np.linalg.solve(A.T, np.ones(2)))
    x0 = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(TypeError, match=r"x0= is a keyword-only option.*x0.detach\(\)"):
        ds.to_torch(ds.linear.solve)(At, torch.tensor(B), x0=x0)


def test_autograd_second_order_is_refused():
    autograd = pytest.importorskip("autograd")
    import autograd.numpy as anp

    solve = ds.to_autograd(ds.linear.solve)

    def loss(b):
        return anp.sum(solve(A, b).x ** 2)

    with pytest.raises(TypeError, match="first order only"):
        autograd.hessian(loss)(B)
    np.testing.assert_allclose(autograd.grad(loss)(B),
                               np.linalg.solve(A.T, 2 * np.linalg.solve(A, B)))


def test_jax_result_with_string_field_returns_from_jit():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    a, b, C = _ot_problem()
    sink = ds.to_jax(ds.ot.sinkhorn)
    out = jax.jit(lambda C: sink(jnp.asarray(a), jnp.asarray(b), C, 0.1))(jnp.asarray(C))
    ref = ds.ot.sinkhorn(a, b, C, 0.1)
    np.testing.assert_allclose(np.asarray(out.cost), ref.cost, rtol=1e-10)
    assert out.error_measure == ref.error_measure


# ------------------------------------------------------------------- Numba's cache

def test_kernels_run_uncached_with_one_warning_when_numba_cannot_cache(tmp_path):
    code = textwrap.dedent("""
        import warnings
        import numba.core.caching as caching
        caching.CacheImpl._locator_classes = []   # what a read-only install looks like
        import numpy as np
        import diffsolve as ds
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            A = np.array([[4.0, 1.0], [1.0, 3.0]])
            r = ds.linear.solve(A, np.array([1.0, 2.0]), method="sor", omega=1.1)
        msgs = [str(w.message) for w in caught if "Numba cannot write its cache" in
                str(w.message)]
        assert r.converged and np.allclose(A @ r.x, [1.0, 2.0])
        print(len(msgs))
    """)
    # cwd away from the repository root: the child imports the installed diffsolve (from an
    # unpacked sdist, the root's diffsolve/ source folder has no diffsolve.kernels)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1"


def test_warnings_point_at_the_callers_line():
    a = np.ones(3) / 3
    C = np.random.default_rng(1).random((3, 3))  # not additive: Sinkhorn needs > 2 steps
    with pytest.warns(ds.ConvergenceWarning) as direct:
        ds.ot.sinkhorn(a, a, C, 0.01, maxiter=2)
    with pytest.warns(ds.ConvergenceWarning) as through_vjp:
        ds.vjp(ds.ot.sinkhorn, a, a, C, 0.01, maxiter=2)
    with pytest.warns(DeprecationWarning) as renamed:
        ds.ot.sinkhorn(a, a, C, 0.5, max_iter=100)
    for record in (direct, through_vjp, renamed):
        assert record[0].filename == __file__, record[0].filename


def test_validators_for_intervals_name_tuples_seeds_and_callables():
    assert V.interval("f", "c1", 0.25, 0.0, 0.5) == 0.25
    with pytest.raises(ValueError, match=r"f: c1 must be a number in \(0.0, 0.5\), got 0.5"):
        V.interval("f", "c1", 0.5, 0.0, 0.5)
    assert V.interval("f", "d", 1.0, 0.0, 1.0, hi_open=False) == 1.0
    assert V.choices("f", "regs", "error", ("error", "stiffness")) == ("error",)
    with pytest.raises(ValueError, match=r"regs \['bogus'\] are not known"):
        V.choices("f", "regs", ("error", "bogus"), ("error", "stiffness"))
    assert V.seed("f", np.random.default_rng(0)) is not None and V.seed("f", 3) == 3
    with pytest.raises(TypeError, match="seed must be an integer"):
        V.seed("f", 1.5)
    with pytest.raises(TypeError, match=r"vjp must be None or a callable vjp\(t, y\)"):
        V.optional_callable("f", "vjp", 3, signature="vjp(t, y)")
    with pytest.raises(TypeError, match="y is a torch array but x is a numpy array"):
        torch = pytest.importorskip("torch")
        V.same_library("f", x=np.ones(2), y=torch.ones(2))


def test_linear_warnings_point_at_the_callers_line():
    with pytest.warns(ds.ConvergenceWarning) as record:
        ds.linear.solve(A, B, method="sor", omega=1.0, maxiter=1)
    assert record[0].filename == __file__
    bandit = ds.linear.OmegaBandit(seed=0)
    with pytest.warns(ds.ConvergenceWarning) as record:
        bandit.solve(A, B, maxiter=1)
    assert record[0].filename == __file__
