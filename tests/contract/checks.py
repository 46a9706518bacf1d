"""Helpers of the contract checks: losses, perturbations, comparisons, message matching."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
import scipy.sparse as sp

import diffsolve as ds

from .registry import Problem, Row, field_value

FD_STEP = 1e-6


def rng_for(row: Row, salt: str = "") -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{row.id}/{salt}".encode()))


def to_numpy(x):
    if x is None:
        return None
    if sp.issparse(x):
        return x
    mod = type(x).__module__
    if mod.startswith("torch"):
        return x.detach().cpu().numpy()
    if hasattr(x, "get") and mod.startswith("cupy"):
        return x.get()
    if mod.startswith("array_api_strict"):
        return np.asarray(x.__array_namespace__().asarray(x, copy=True)._array)
    return np.asarray(x)


def cotangents(problem: Problem, res, rng) -> dict:
    """A random cotangent for every differentiable field checked by the row."""
    return {f: np.asarray(rng.standard_normal(np.shape(to_numpy(field_value(res, f)))))
            for f in problem.fields}


def loss(res, cots) -> float:
    return float(sum(np.sum(cots[f] * to_numpy(field_value(res, f))) for f in cots))


def perturb(x, d, t):
    if sp.issparse(x):
        y = x.copy()
        y.data = x.data + t * d.data
        return y
    return x + t * d


def pairing(g, d) -> float:
    """<g, d> for a cotangent g of an argument and a perturbation d of it."""
    if sp.issparse(d):
        assert sp.issparse(g), f"the cotangent of a sparse argument is {type(g)}"
        return float(np.dot(np.asarray(g.data), d.data))
    return float(np.sum(to_numpy(g) * d))


def norm(x) -> float:
    if sp.issparse(x):
        return float(np.linalg.norm(x.data))
    return float(np.linalg.norm(np.ravel(to_numpy(x))))


def direction(problem: Problem, name, rng):
    x = problem.arg(name)
    return problem.directions.get(name, _gaussian)(rng, x)


def _gaussian(rng, x):
    from .registry import gaussian

    return gaussian(rng, x)


def central_difference(f, h=FD_STEP) -> float:
    h = FD_STEP if h is None else h
    return (f(h) - f(-h)) / (2 * h)


def assert_fd_close(analytic, fd, g, d, rtol, what):
    scale = abs(analytic) + norm(g) * norm(d)
    assert abs(analytic - fd) <= rtol * scale, (
        f"{what}: vjp gives <g, d> = {analytic!r}, central differences {fd!r} "
        f"(|diff| {abs(analytic - fd):.3g} > {rtol:g} * {scale:.3g})")


def dense_diff_args(problem: Problem) -> list:
    """Differentiable arguments the adapters can take as framework arrays (not sparse)."""
    return [n for n in problem.diff_args if not sp.issparse(problem.arg(n))]


def grad_of(grads, problem: Problem, name):
    """The cotangent of argument ``name`` from a ``vjp_fn`` return value."""
    try:
        return grads[name]
    except (KeyError, TypeError, IndexError):
        # fall back to the position among array arguments, in case names are missing
        from diffsolve._autodiff import is_array_argument

        names = [n for n, a in zip(problem.arg_names(), problem.args) if is_array_argument(a)]
        return tuple.__getitem__(grads, names.index(name))


def assert_all(pred, x, what):
    arr = np.asarray(x.data if sp.issparse(x) else to_numpy(x))
    assert bool(np.all(pred(arr))), f"{what}: got {arr!r}"


# ------------------------------------------------------------------------------------------
# error messages
# ------------------------------------------------------------------------------------------
_VERBS = r"(=|:|,|\)|\[|\.shape|\.dtype|\s+(has|have|must|is|are|contains|should|of|with|was|" \
         r"needs|and|or|got|\())"


def names_argument(msg: str, name: str) -> bool:
    """Whether ``msg`` names the argument ``name`` (single letters need a context such as
    ``b=``, ``'b'`` or ``b has``, since ``a`` is also an article)."""
    n = re.escape(name)
    if len(name) > 1:
        return re.search(rf"(?<![\w]){n}(?![\w])", msg) is not None
    return re.search(rf"(['`\"]{n}['`\"]|(?<![\w.]){n}(?={_VERBS}))", msg) is not None


def expect_clear_error(thunk, row: Row, name, *, allow=None, label="", received=()):
    """Run ``thunk``: it must raise a ValueError/TypeError naming the function and ``name``
    (or one of the names in a tuple), or return something ``allow(out)`` accepts (a correct
    answer). ``received``: words of which one must appear in the message (what was
    received, e.g. the dtype)."""
    names = name if isinstance(name, tuple) else (name,)
    try:
        out = thunk()
    except (ValueError, TypeError) as err:
        msg = str(err)
        assert any(w in msg for w in row.where), (
            f"{label}: the {type(err).__name__} does not name the function "
            f"({' or '.join(row.where)}): {msg!r}")
        assert any(names_argument(msg, n) for n in names), (
            f"{label}: the {type(err).__name__} does not name the argument "
            f"{' or '.join(map(repr, names))}: {msg!r}")
        if received:
            assert any(w.lower() in msg.lower() for w in received), (
                f"{label}: the {type(err).__name__} does not say what it received "
                f"({' or '.join(received)}): {msg!r}")
        return None
    except Exception as err:
        pytest.fail(f"{label}: raised {type(err).__module__}.{type(err).__name__} instead of "
                    f"a ValueError/TypeError naming {name!r}: {err}")
    if allow is None:
        pytest.fail(f"{label}: no error (returned {type(out).__name__}); expected a "
                    f"ValueError/TypeError naming {row.where[0]} and {name!r}")
    allow(out)
    return out


def assert_same_answer(out, ref, problem: Problem, rtol, label=""):
    for f in problem.fields:
        got = to_numpy(field_value(out, f))
        want = to_numpy(field_value(ref, f))
        assert np.shape(got) == np.shape(want), f"{label}: {f} shape {np.shape(got)}"
        scale = max(1.0, float(np.max(np.abs(want))) if np.size(want) else 1.0)
        np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol,
                                   atol=rtol * scale, err_msg=f"{label}: field {f}")


def status_of(res):
    return getattr(res, "status", None)


def is_honest_nonfinite(res) -> bool:
    """A result that reports a non-finite problem instead of an answer."""
    st = status_of(res)
    return st is not None and int(np.max(np.asarray(st))) == int(ds.Status.NONFINITE) and \
        not bool(np.all(np.asarray(getattr(res, "converged", True))))
