"""The contract registry: one row per public differentiable solver and method.

A row is a tiny seeded float64 problem (a factory, so that every check gets fresh arrays),
the names of its differentiable positional arguments and output fields, and what the
bad-input table applies to. The factories set tight tolerances so that central finite
differences (step 1e-6) see the solver's exact derivative to about 1e-6 relative.

Kinds of rows:

* ``"solver"``: a :class:`diffsolve._autodiff.DifferentiableFunction` returning a result
  dataclass (``linear.solve``, the OT solvers, ``odeint``; the bandits' ``solve`` is
  expected to behave the same);
* ``"value"``: a ``custom_root`` / ``custom_fixed_point`` solver, which returns x* itself;
* ``"gradient"``: :func:`diffsolve.bilevel.hypergradient`, which *is* a gradient: its
  checks compare it with finite differences of the bilevel objective, feed zero and NaN
  outer gradients, and so on.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import array_api_compat
import autograd
import autograd.numpy as anp
import numpy as np
import scipy.sparse as sp

import diffsolve as ds
from diffsolve._autodiff import DifferentiableFunction

# ------------------------------------------------------------------------------------------
# rows
# ------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """One call of a row's solver, with what to differentiate.

    ``args``/``kwargs`` are the call; ``diff_args`` names the positional arguments whose
    cotangents are checked; ``fields`` the differentiable outputs checked; ``directions``
    maps an argument name to ``direction(rng, x)`` giving an admissible perturbation
    (zero-sum for OT marginals, symmetric for SPD matrices); the default is Gaussian.
    ``extra`` carries what ``"gradient"`` rows need (objective, zero/NaN outer).
    """

    fn: Callable
    args: tuple
    kwargs: dict
    diff_args: tuple
    fields: tuple
    directions: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def arg_names(self) -> tuple:
        """Names of the positional arguments, as the autodiff core names them."""
        if isinstance(self.fn, DifferentiableFunction):
            return self.fn.bind(self.args, dict(self.kwargs))[2]
        params = [p for p in inspect.signature(self.fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return tuple(p.name for p in params[:len(self.args)])

    def index(self, name) -> int:
        return self.arg_names().index(name)

    def arg(self, name):
        return self.args[self.index(name)]

    def with_arg(self, name, value) -> Problem:
        args = list(self.args)
        args[self.index(name)] = value
        return replace(self, args=tuple(args))

    def with_kwargs(self, **kw) -> Problem:
        return replace(self, kwargs={**self.kwargs, **kw})

    def call(self):
        return self.fn(*self.args, **self.kwargs)


@dataclass(frozen=True)
class Row:
    """A registry row.

    ``where``: names accepted as "the function" in error messages. ``budget``/``tols``: the
    names of the iteration budget and the tolerance options (``None``: the row has none).
    ``bad_args``: arguments the dtype/value table is applied to; ``shape_cases(problem)``
    yields ``(label, argument name, problem)`` with a wrong shape or ndim; ``size0``
    builds a size-0 problem (and the names of the arguments that are empty). ``options(problem,
    **opts)`` returns a thunk calling the row with options changed (decorator options for
    ``custom_root``). ``strict``: ``None`` if the row runs on array_api_strict, else why not;
    ``make_xp(xp)`` builds the problem in another namespace when converting ``make()``'s
    arrays is not enough (user functions written for NumPy). ``starve``: options that keep
    the solver from meeting its tolerance before its first iteration (for the failure and
    callback checks). ``renames``: ``(old options, equivalent new options, new name)``
    triples: the old spelling keeps working for one release with a DeprecationWarning
    naming the new one. ``summed_batch``: problems whose iteration counts a scalar
    ``n_iters`` sums (odeint's per-trajectory batch reports totals).
    """

    id: str
    family: str
    where: tuple
    make: Callable[[], Problem]
    kind: str = "solver"
    fd_rtol: float = 1e-5
    budget: str | None = "maxiter"
    tols: tuple = ("rtol", "atol")
    bad_args: tuple = ()
    none_args: tuple = ()
    shape_cases: Callable | None = None
    size0: Callable | None = None
    options: Callable | None = None
    strict: str | None = None
    make_xp: Callable | None = None
    same_rtol: float = 1e-9
    fd_step: float = 1e-6
    fixed_budget: bool = True
    starve: dict = field(default_factory=dict)
    renames: tuple = ()
    summed_batch: int = 1
    option_arrays: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.id


# ------------------------------------------------------------------------------------------
# directions
# ------------------------------------------------------------------------------------------


def gaussian(rng, x):
    if sp.issparse(x):
        d = x.copy()
        d.data = rng.standard_normal(d.data.shape)
        return d
    return rng.standard_normal(np.shape(x))


def zero_sum(rng, x):
    """Perturbations of a marginal that keep its mass (OT needs sum(a) = sum(b))."""
    d = rng.standard_normal(np.shape(x))
    return d - d.mean(axis=-1, keepdims=True)


def symmetric(rng, x):
    """Perturbations of a symmetric matrix that keep it symmetric (and its pattern)."""
    if sp.issparse(x):
        R = x.copy().tocsr()
        R.data = rng.standard_normal(R.data.shape)
        S = ((R + R.T) * 0.5).tocsr()
        S.sum_duplicates()
        S.sort_indices()
        A = x.tocsr()
        assert S.nnz == A.nnz and np.array_equal(S.indices, A.indices), "pattern changed"
        return S
    R = rng.standard_normal(np.shape(x))
    return (R + R.T) / 2


# ------------------------------------------------------------------------------------------
# linear
# ------------------------------------------------------------------------------------------


def _spd_int(n=6):
    """A well-conditioned SPD matrix with integer entries (so the int case applies)."""
    A = 4.0 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)
    A[0, n - 1] = A[n - 1, 0] = 1.0
    return A


def _linear_b(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(-3, 4, n).astype(np.float64) + np.arange(n) % 2  # integer valued


LINEAR_OPTS = {
    "direct": {},
    "cg": {"rtol": 1e-13},
    "pcg": {"rtol": 1e-13},
    "sor": {"rtol": 1e-13, "omega": 1.1},
    "ssor-cg": {"rtol": 1e-13, "omega": 1.1},
    "dcdm": {"rtol": 1e-12, "maxiter": 500},
}


def _linear_problem(method):
    def make():
        if method == "dcdm":
            from bench.train_dcdm_weights import poisson2d

            A = poisson2d(8)
            b = _linear_b(64)
        else:
            A, b = _spd_int(), _linear_b()
        sym = method != "direct" and method != "sor"
        dirs = {"A": symmetric} if sym else {}
        return Problem(ds.linear.solve, (A, b), {"method": method, **LINEAR_OPTS[method]},
                       ("A", "b"), ("x",), dirs)

    return make


def _linear_columns_problem():
    """Several right-hand sides solved together (b of shape (n, k))."""
    A = _spd_int()
    b = np.stack([_linear_b(seed=s) for s in (0, 1, 2)], axis=1)
    return Problem(ds.linear.solve, (A, b), {"method": "cg", "rtol": 1e-13}, ("A", "b"),
                   ("x",), {"A": symmetric})


def _linear_shapes(p: Problem):
    A, b = p.args
    yield "b longer than A", "b", p.with_arg("b", np.concatenate([b, b[:1]]))
    yield "b 3-d", "b", p.with_arg("b", b[:, None, None])
    if not sp.issparse(A):
        yield "A not square", "A", p.with_arg("A", A[:, :-1])
        yield "A 1-d", "A", p.with_arg("A", A[0])


def _linear_size0(p: Problem):
    A = np.zeros((0, 0))
    return p.with_arg("A", A).with_arg("b", np.zeros(0)), ("A", "b")


def _bandit_make(contextual=False):
    """A one-arm bandit (omega = 1.1), so that every call solves the same system."""
    def make():
        p = _linear_problem("sor")()
        kw = dict(p.kwargs)
        kw.pop("method")
        kw.pop("omega")
        if contextual:
            bandit = ds.linear.ContextualOmegaBandit((0.0, 1.0), omegas=[1.1], method="sor")
            kw["context"] = 0.5
        else:
            bandit = ds.linear.OmegaBandit(omegas=[1.1], method="sor", seed=0)
        return replace(p, fn=bandit.solve, kwargs=kw, directions={})

    return make


# ------------------------------------------------------------------------------------------
# optimal transport
# ------------------------------------------------------------------------------------------


def _ot_arrays(n=5, m=4, seed=0, integer_cost=True):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 1.5, n)
    a /= a.sum()
    b = rng.uniform(0.5, 1.5, m)
    b /= b.sum()
    if integer_cost:
        C = rng.integers(0, 4, (n, m)).astype(np.float64)
    else:
        C = rng.uniform(0.0, 1.0, (n, m))
    return a, b, C


OT_DIRS = {"a": zero_sum, "b": zero_sum}


def _sinkhorn_problem(**opts):
    def make():
        a, b, C = _ot_arrays()
        kw = {"rtol": 1e-13, "atol": 0.0, "maxiter": 20_000, **opts}
        fields = ("cost",) if opts.get("gradient") == "envelope" else ("plan", "f", "g", "cost")
        return Problem(ds.ot.sinkhorn, (a, b, C, 1.0), kw, ("a", "b", "C"), fields, OT_DIRS)

    return make


def _sinkhorn_batched_problem():
    """Two problems in one call: status, converged, n_iters become arrays of the batch."""
    pairs = [_ot_arrays(seed=s) for s in (0, 1)]
    a, b, C = (np.stack([p[i] for p in pairs]) for i in range(3))
    return Problem(ds.ot.sinkhorn, (a, b, C, 1.0), {"rtol": 1e-13, "atol": 0.0,
                                                  "maxiter": 20_000},
                   ("a", "b", "C"), ("plan", "f", "g", "cost"), OT_DIRS)


def _ot_batched_shapes(p: Problem):
    C = p.arg("C")
    yield "C has an extra column", "C", p.with_arg("C", np.concatenate([C, C[..., :1]], -1))
    yield "C 1-d", "C", p.with_arg("C", C[0, 0])


def _sns_problem():
    a, b, C = _ot_arrays()
    return Problem(ds.ot.sinkhorn_newton_sparse, (a, b, C, 1.0),
                   {"rtol": 1e-13, "atol": 0.0, "maxiter": 100}, ("a", "b", "C"),
                   ("plan", "f", "g", "cost"), OT_DIRS)


def _sparse_problem(formulation):
    def make():
        a, b, C = _ot_arrays(integer_cost=False)
        return Problem(ds.ot.sparse_ot, (a, b, C, 4, 0.05),  # k does not bind
                       {"formulation": formulation, "rtol": 1e-12, "maxiter": 2000},
                       ("a", "b", "C"), ("plan", "f", "g", "cost"), OT_DIRS)

    return make


def _quadratic_problem():
    a, b, C = _ot_arrays(integer_cost=False)
    return Problem(ds.ot.quadratic_ot, (a, b, C, 0.5), {"rtol": 1e-12, "maxiter": 2000},
                   ("a", "b", "C"), ("plan", "f", "g", "cost"), OT_DIRS)


def _ot_shapes(p: Problem):
    a, _b, C = p.args[:3]
    yield "C has an extra column", "C", p.with_arg("C", np.concatenate([C, C[:, :1]], 1))
    yield "C 1-d", "C", p.with_arg("C", C[0])
    yield "a 0-d", "a", p.with_arg("a", a[0])


def _ot_size0(p: Problem):
    _, _b, C = p.args[:3]
    return p.with_arg("a", np.zeros(0)).with_arg("C", np.zeros((0, C.shape[1]))), ("a", "C")


# ------------------------------------------------------------------------------------------
# ODEs
# ------------------------------------------------------------------------------------------


def ode_f(t, y, p):
    """A damped oscillator, written with autograd.numpy (the documented way)."""
    return anp.stack([p[0] * y[1], -p[1] * y[0] - p[2] * y[1]])


def ode_f_xp(t, y, p):
    """The same vector field in any array-API namespace (for array_api_strict / CuPy)."""
    xp = array_api_compat.array_namespace(y)
    return xp.stack([p[0] * y[1], -p[1] * y[0] - p[2] * y[1]])


def ode_vjp_xp(t, y, p, v):
    xp = array_api_compat.array_namespace(y, p)
    v_y = xp.stack([-p[1] * v[1], p[0] * v[0] - p[2] * v[1]])
    v_p = xp.stack([y[1] * v[0], -y[0] * v[1], -y[1] * v[1]])
    return v_y, v_p


ODE_TOL = {"rtol": 1e-10, "atol": 1e-12}


def _ode_problem(adjoint, regularizers=(), f=ode_f, extra_kw=None, xp=np):
    def make():
        y0 = xp.asarray([1.0, 0.0], dtype=xp.float64)
        t = xp.asarray(np.linspace(0.0, 1.0, 4))
        p = xp.asarray([1.0, 2.0, 1.0], dtype=xp.float64)
        tol = ODE_TOL if not regularizers else {"rtol": 1e-6, "atol": 1e-8}
        kw = {**tol, "adjoint": adjoint, "regularizers": regularizers, **(extra_kw or {})}
        # replay the adaptive steps so that finite differences see the solver's own function
        # (the discrete adjoint is the exact gradient of the computed solution)
        first = ds.ode.odeint(f, y0, t, p, **kw)
        kw["step_ts"] = first.ts
        fields = ("ys",) + (("reg_error", "reg_stiffness") if regularizers else ())
        return Problem(ds.ode.odeint, (f, y0, t, p), kw, ("y0", "params"), fields)

    return make


def _ode_batched_problem():
    """Three trajectories, each with its own steps (batch_mode="per-trajectory")."""
    y0 = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    t = np.linspace(0.0, 1.0, 4)
    p = np.array([1.0, 2.0, 1.0])
    first = ds.ode.odeint(ode_f, y0, t, p, **ODE_TOL)
    return Problem(ds.ode.odeint, (ode_f, y0, t, p), {**ODE_TOL, "step_ts": first.ts},
                   ("y0", "params"), ("ys",))


def _ode_shapes(p: Problem):
    y0, params = p.arg("y0"), p.arg("params")
    yield "y0 3-d", "y0", p.with_arg("y0", y0[None, None])
    yield "params 2-d", "params", p.with_arg("params", params[:, None])


def _ode_size0(p: Problem):
    return p.with_arg("y0", np.zeros(0)), ("y0",)


# ------------------------------------------------------------------------------------------
# implicit differentiation
# ------------------------------------------------------------------------------------------

_rng_root = np.random.default_rng(7)
ROOT_X = _rng_root.standard_normal((8, 3))


def root_F(w, lam, yv):
    """Ridge regression's stationarity condition, written with autograd.numpy."""
    return anp.dot(ROOT_X.T, anp.dot(ROOT_X, w) - yv) + lam * w


def root_solver(init, lam, yv):
    H = ROOT_X.T @ ROOT_X + float(lam[0]) * np.eye(3)
    return np.linalg.solve(H, ROOT_X.T @ yv)


def _root_problem(solve="gmres", **opts):
    def make():
        fn = ds.implicit.custom_root(root_F, solve=solve, **opts)(root_solver)
        rng = np.random.default_rng(3)
        return Problem(fn, (np.zeros(3), np.array([2.0]), rng.standard_normal(8)), {},
                       ("theta[0]", "theta[1]"), ("value",),
                       extra={"decorate": lambda **o: ds.implicit.custom_root(
                           root_F, solve=solve, **{**opts, **o})(root_solver)})

    return make


FP_W = 0.4 * np.random.default_rng(11).standard_normal((3, 3)) / np.sqrt(3)


def fp_T(x, a, W):
    return 0.5 * anp.tanh(anp.dot(W, x)) + a


def fp_solver(init, a, W):
    x = np.zeros_like(a)  # init's shape is checked by custom_fixed_point, not here
    for _ in range(200):
        x = 0.5 * np.tanh(W @ x) + a
    return x


def _fixed_point_problem():
    fn = ds.implicit.custom_fixed_point(fp_T)(fp_solver)
    return Problem(fn, (np.zeros(3), np.array([0.3, -0.2, 0.5]), FP_W.copy()), {},
                   ("theta[0]", "theta[1]"), ("value",),
                   extra={"decorate": lambda **o: ds.implicit.custom_fixed_point(
                       fp_T, **o)(fp_solver)})


def _fixed_point_problem_xp(xp):
    """custom_fixed_point in namespace ``xp`` with a user vjp= of T."""
    def T(x, a, W):
        return 0.5 * xp.tanh(W @ x) + a

    def vjp(x, theta):
        a, W = theta
        z = W @ x
        d = 0.5 * (1.0 - xp.tanh(z) ** 2)

        def vjp_fn(u):
            du = d * u
            return W.T @ du, u, du[:, None] * x[None, :]

        return T(x, a, W), vjp_fn

    def solver(init, a, W):
        x = xp.zeros_like(a)
        for _ in range(200):
            x = T(x, a, W)
        return x

    fn = ds.implicit.custom_fixed_point(T, vjp=vjp)(solver)
    p = _fixed_point_problem()
    return Problem(fn, tuple(xp.asarray(a) for a in p.args), {}, p.diff_args, p.fields)


def _value_options(p: Problem, **opts):
    def thunk():
        fn = p.extra["decorate"](**opts)
        return fn(*p.args, **p.kwargs)

    return thunk


def _value_shapes(p: Problem):
    yield "init of the wrong shape", "init", p.with_arg("init", np.zeros(4))


# ------------------------------------------------------------------------------------------
# bilevel
# ------------------------------------------------------------------------------------------

_rng_hg = np.random.default_rng(5)
HG_A = _rng_hg.standard_normal((30, 3)) / np.sqrt(30)
HG_B = _rng_hg.standard_normal(30)
HG_C = _rng_hg.standard_normal(3)
HG_STEPS = 40


def hg_inner(x, y):
    return 0.5 * anp.sum((anp.dot(HG_A, y) - HG_B) ** 2) + 0.5 * x[0] * anp.sum(y ** 2)


def hg_outer(x, y):
    return 0.5 * anp.sum((y - HG_C) ** 2) + 0.1 * x[0] * anp.sum(y)


def hg_ystar(x):
    H = HG_A.T @ HG_A + x[0] * np.eye(3)
    return np.linalg.solve(H, HG_A.T @ HG_B)


def hg_stepsize(x):
    return 1.0 / (1.1 * np.linalg.eigvalsh(HG_A.T @ HG_A + x[0] * np.eye(3))[-1])


def _hg_unrolled_y(x, y0, stepsize):
    grad_y = autograd.grad(hg_inner, 1)
    y = y0
    for _ in range(HG_STEPS):
        y = y - stepsize * grad_y(x, y)
    return y


def _hg_problem(method):
    def make():
        x = np.array([1.0])
        if method == "unrolled":
            y = np.zeros(3)
            alpha = hg_stepsize(x)
            kw = {"maxiter": HG_STEPS, "stepsize": alpha}

            def objective(x_):
                return hg_outer(x_, _hg_unrolled_y(x_, y, alpha))
        else:
            y = hg_ystar(x)
            kw = {"rtol": 1e-12, "maxiter": 300} if method == "implicit-cg" else \
                {"maxiter": 300, "stepsize": hg_stepsize(x)}

            def objective(x_):
                return hg_outer(x_, hg_ystar(x_))
        nan_w = np.array([np.nan, 1.0, 1.0])
        return Problem(ds.bilevel.hypergradient, (hg_outer, hg_inner, x, y, method), kw,
                       ("x",), ("value",),
                       extra={"objective": objective,
                              "zero_outer": lambda x_, y_: 0.0 * anp.sum(y_),
                              "nan_outer": lambda x_, y_: anp.sum(nan_w * y_)})

    return make


def _hg_problem_xp(method):
    """The hypergradient problem in namespace ``xp`` with hand-written derivatives (the
    documented way to run implicit-cg / neumann outside NumPy + autograd)."""
    def make(xp):
        p = _hg_problem(method)()
        A, B_, C_ = (xp.asarray(v) for v in (HG_A, HG_B, HG_C))
        AtA = xp.asarray(HG_A.T @ HG_A)

        def inner(x, y):
            r = A @ y - B_
            return 0.5 * xp.sum(r * r) + 0.5 * x[0] * xp.sum(y * y)

        def outer(x, y):
            return 0.5 * xp.sum((y - C_) ** 2) + 0.1 * x[0] * xp.sum(y)

        def outer_grad(x, y):
            return xp.reshape(0.1 * xp.sum(y), (1,)), y - C_ + 0.1 * x[0]

        def inner_hvp(x, y, v):
            return xp.reshape(xp.sum(y * v), (1,)), AtA @ v + x[0] * v

        x, y = (xp.asarray(v) for v in (p.arg("x"), p.arg("y")))
        return Problem(p.fn, (outer, inner, x, y, method),
                       {**p.kwargs, "outer_grad": outer_grad, "inner_hvp": inner_hvp},
                       p.diff_args, p.fields, extra=p.extra)

    return make


def _root_problem_xp(solve):
    """custom_root in namespace ``xp`` with a user vjp= (and jvp= for normal-cg)."""
    def make(xp):
        X = xp.asarray(ROOT_X)

        def F(w, lam, yv):
            return X.T @ (X @ w - yv) + lam * w

        def vjp(w, theta):
            lam, yv = theta

            def vjp_fn(u):
                return X.T @ (X @ u) + lam * u, xp.reshape(xp.sum(u * w), (1,)), -(X @ u)

            return F(w, lam, yv), vjp_fn

        def jvp(w, theta):
            lam, yv = theta
            return F(w, lam, yv), lambda d: X.T @ (X @ d) + lam * d

        def solver(init, lam, yv):
            H = X.T @ X + lam[0] * xp.eye(3, dtype=X.dtype)
            return xp.linalg.solve(H, X.T @ yv)

        fn = ds.implicit.custom_root(F, solve=solve, vjp=vjp, jvp=jvp)(solver)
        p = _root_problem(solve)()
        return Problem(fn, tuple(xp.asarray(a) for a in p.args), {}, p.diff_args, p.fields)

    return make


def _hg_size0(p: Problem):
    return p.with_arg("y", np.zeros(0)), ("y",)


# ------------------------------------------------------------------------------------------
# the registry
# ------------------------------------------------------------------------------------------

LINEAR_WHERE = ("diffsolve.linear.solve",)
X0 = {"x0": lambda p: np.full(np.shape(p.arg("b")), 0.1)}
F0G0 = {"f0": lambda p: np.zeros(np.shape(p.arg("a"))),
        "g0": lambda p: np.zeros(np.shape(p.arg("b")))}
STRICT_USER_F = ("user functions written with autograd.numpy run on NumPy only; "
                 "the array_api_strict problem is built by make_xp")

ROWS: list[Row] = []

for _m in ("direct", "cg", "pcg", "sor", "ssor-cg", "dcdm"):
    ROWS.append(Row(
        id=f"linear.solve[{_m}]", family="linear", where=LINEAR_WHERE,
        make=_linear_problem(_m), bad_args=("A", "b"), none_args=("A", "b"),
        shape_cases=_linear_shapes, size0=_linear_size0,
        strict=None if _m != "dcdm" else "dcdm's network runs on NumPy/CuPy (tested there)",
        option_arrays=X0 if _m != "direct" else {},
    ))

ROWS.append(Row(
    id="linear.solve[cg-columns]", family="linear", where=LINEAR_WHERE,
    make=_linear_columns_problem, bad_args=("b",), none_args=("b",),
    shape_cases=_linear_shapes, size0=_linear_size0,
))
for _cls, _ctx in (("OmegaBandit", False), ("ContextualOmegaBandit", True)):
    ROWS.append(Row(
        id=f"linear.{_cls}.solve", family="linear",
        where=(f"diffsolve.linear.{_cls}", f"{_cls}.solve", "diffsolve.linear.solve"),
        make=_bandit_make(_ctx), bad_args=("A", "b"), none_args=("A", "b"),
        shape_cases=_linear_shapes, size0=_linear_size0,
    ))

# the old spellings: tol=x was an absolute marginal error (atol=x, rtol=0); max_iter
OT_RENAMES = (
    ({"max_iter": 20_000, "maxiter": None}, {"maxiter": 20_000}, "maxiter"),
    ({"tol": 1e-13, "rtol": None, "atol": None}, {"atol": 1e-13, "rtol": 0.0}, "atol"),
)
OT_RENAMES_L_BFGS = (({"max_iter": 2000, "maxiter": None}, {"maxiter": 2000}, "maxiter"),)

SINKHORN_VARIANTS = {
    "lse": {"kernel": "lse"},
    "absorbed": {"kernel": "absorbed"},
    "momentum": {"acceleration": "momentum"},
    "anderson": {"acceleration": "anderson"},
    "eps-scaling": {"eps_scaling": 4},
    "envelope": {"gradient": "envelope"},
}
for _label, _opts in SINKHORN_VARIANTS.items():
    ROWS.append(Row(
        id=f"ot.sinkhorn[{_label}]", family="ot", where=("diffsolve.ot.sinkhorn",),
        renames=OT_RENAMES, option_arrays=F0G0,
        make=_sinkhorn_problem(**_opts), bad_args=("a", "b", "C"), none_args=("a", "b", "C"),
        shape_cases=_ot_shapes, size0=_ot_size0,
    ))

ROWS.append(Row(
    id="ot.sinkhorn[batched]", family="ot", where=("diffsolve.ot.sinkhorn",),
    make=_sinkhorn_batched_problem, bad_args=("C",), none_args=("a", "b", "C"),
    shape_cases=_ot_batched_shapes, size0=_ot_size0,
))
ROWS.append(Row(
    id="ot.sinkhorn_newton_sparse", family="ot", renames=OT_RENAMES,
    where=("diffsolve.ot.sinkhorn_newton_sparse",), make=_sns_problem,
    # without these the Sinkhorn warm-up alone meets the tolerance (no Newton step at all)
    starve={"n_sinkhorn": 1, "sinkhorn_switch": 0},
    bad_args=("a", "b", "C"), none_args=("a", "b", "C"), shape_cases=_ot_shapes,
    size0=_ot_size0,
))
for _form in ("semi-dual", "dual"):
    ROWS.append(Row(
        id=f"ot.sparse_ot[{_form}]", family="ot", where=("diffsolve.ot.sparse_ot",),
        renames=OT_RENAMES_L_BFGS,
        make=_sparse_problem(_form), fd_rtol=1e-4, bad_args=("a", "b", "C"),
        none_args=("a", "b", "C"), shape_cases=_ot_shapes, size0=_ot_size0,
        same_rtol=1e-7,
    ))
ROWS.append(Row(
    id="ot.quadratic_ot", family="ot", where=("diffsolve.ot.quadratic_ot",),
    renames=OT_RENAMES_L_BFGS,
    make=_quadratic_problem, fd_rtol=1e-4, bad_args=("a", "b", "C"),
    none_args=("a", "b", "C"), shape_cases=_ot_shapes, size0=_ot_size0, same_rtol=1e-7,
))

ODE_VARIANTS = {
    "discrete": ("discrete", ()),
    "backsolve": ("backsolve", ()),
    "discrete+regularizers": ("discrete", ("error", "stiffness")),
}
for _label, (_adj, _regs) in ODE_VARIANTS.items():
    ROWS.append(Row(
        id=f"ode.odeint[{_label}]", family="ode", where=("diffsolve.ode.odeint",),
        make=_ode_problem(_adj, _regs), budget="max_steps", bad_args=("y0", "params"),
        # the error regulariser sums error estimates (differences of stages), whose
        # rounding noise needs a larger finite-difference step
        fd_step=1e-3 if _regs else 1e-6, fd_rtol=1e-4 if _regs else 1e-5,
        # rtol = atol = 0 (fixed steps) has no error control for the regularisers or the
        # backsolve adjoint's own adaptive solve: odeint refuses it with a clear error
        fixed_budget=_adj == "discrete" and not _regs,
        none_args=("y0",), shape_cases=_ode_shapes, size0=_ode_size0,
        strict=STRICT_USER_F,
        make_xp=(lambda xp, _a=_adj, _r=_regs: _ode_problem(
            _a, _r, f=ode_f_xp, extra_kw={"vjp": ode_vjp_xp}, xp=xp)()),
    ))

ROWS.append(Row(
    id="ode.odeint[batched]", family="ode", where=("diffsolve.ode.odeint",),
    make=_ode_batched_problem, budget="max_steps", bad_args=("y0",), none_args=("y0",),
    size0=_ode_size0, strict="covered by the unbatched rows", summed_batch=3,
))

for _solve in ("gmres", "cg", "normal-cg"):
    ROWS.append(Row(
        id=f"implicit.custom_root[{_solve}]", family="implicit",
        where=("diffsolve.implicit.custom_root",), make=_root_problem(_solve), kind="value",
        none_args=("init",), bad_args=(), shape_cases=_value_shapes,
        options=_value_options, tols=("rtol",),
        strict="custom_root's F needs autograd (NumPy) unless vjp= is given",
        make_xp=_root_problem_xp(_solve),
    ))
ROWS.append(Row(
    id="implicit.custom_fixed_point[gmres]", family="implicit",
    where=("diffsolve.implicit.custom_fixed_point", "diffsolve.implicit.custom_root"),
    make=_fixed_point_problem, kind="value", none_args=("init",),
    shape_cases=_value_shapes, options=_value_options, tols=("rtol",),
    strict="custom_fixed_point's T needs autograd (NumPy) unless vjp= is given",
    make_xp=_fixed_point_problem_xp,
))

for _method in ("implicit-cg", "neumann", "unrolled"):
    ROWS.append(Row(
        id=f"bilevel.hypergradient[{_method}]", family="bilevel",
        where=("diffsolve.bilevel.hypergradient",), make=_hg_problem(_method),
        kind="gradient", bad_args=("x", "y"), none_args=("x", "y"),
        size0=_hg_size0,  # x and y may have any shape: only the user's functions know
        tols=("rtol",) if _method != "unrolled" else (),
        strict=None if _method != "unrolled" else
        "method='unrolled' differentiates with autograd (NumPy only), as documented",
        make_xp=None if _method == "unrolled" else _hg_problem_xp(_method),
        renames=(({"n_steps": HG_STEPS, "maxiter": None}, {"maxiter": HG_STEPS}, "maxiter"),)
        if _method == "unrolled" else (),
    ))

ROW_IDS = [r.id for r in ROWS]


def rows(*kinds) -> list:
    return [r for r in ROWS if r.kind in kinds]


def field_value(res: Any, name: str):
    """An output field of a result (a ``"value"`` row returns the bare array)."""
    if name == "value" and not hasattr(res, "value"):
        return res
    return getattr(res, name)
