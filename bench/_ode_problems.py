"""The ODE benchmark problems, each in four interchangeable forms.

* ``f_ag(t, y, p)``: an ``autograd.numpy`` function (``y`` of shape ``(d,)`` or ``(B, d)``),
  the "plain Python f" form that diffsolve differentiates with autograd;
* ``f_nb(t, y, p)``: a Numba ``@njit`` function on one state ``(d,)`` or a batch ``(B, d)``
  (the "jittable f" form that lets diffsolve run the whole integration compiled), with its
  hand-written ``vjp_nb(t, y, p, v) -> (v_y, v_p)`` (also ``@njit``);
* ``scipy_fun(B)``: ``fun(t, y)`` for :func:`scipy.integrate.solve_ivp` on the flattened
  ``B·d`` state (plain NumPy, no autograd boxes);
* ``torch_fun()``: a ``torch.nn.Module`` ``forward(t, y)`` for torchdiffeq.

Problems: Lotka–Volterra (a=1.5, b=1, c=3, d=1, y0=(1, 1), t in [0, 10]), Van der Pol with
mu = 1 (y0=(2, 0), t in [0, 10]) and "spiral": a 2-50-2 tanh MLP vector field
``W2 tanh(W1 y + b1) + b2`` whose first layer is random (seed 0) and whose second layer is
the least-squares fit of the torchdiffeq demo spiral field ``y**3 @ A``,
``A = [[-0.1, 2], [-2, -0.1]]`` on the disk |y| <= 2.2 (closed form, so no training and
nothing bundled), y0=(2, 0), t in [0, 10].
Batched initial conditions: ``y0 * (1 + 0.1 u)`` with u ~ U[-1, 1]^d, seed 1 (the first row is
the unperturbed y0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import autograd.numpy as anp
import numba
import numpy as np

# ---------------------------------------------------------------------------------- LV ---
LV_PARAMS = np.array([1.5, 1.0, 3.0, 1.0])


def lv_ag(t, y, p):
    x, z = y[..., 0], y[..., 1]
    return anp.stack([p[0] * x - p[1] * x * z, -p[2] * z + p[3] * x * z], axis=-1)


@numba.njit(cache=False)
def lv_nb(t, y, p):
    # one state (2,) or a batch (B, 2): the loop runs on a (B, 2) view either way
    y2 = np.ascontiguousarray(y).reshape((-1, 2))
    out = np.empty_like(y2)
    for i in range(y2.shape[0]):
        out[i, 0] = p[0] * y2[i, 0] - p[1] * y2[i, 0] * y2[i, 1]
        out[i, 1] = -p[2] * y2[i, 1] + p[3] * y2[i, 0] * y2[i, 1]
    return out.reshape(y.shape)


@numba.njit(cache=False)
def lv_vjp_nb(t, y, p, v):
    """(v^T df/dy, v^T df/dp) of :func:`lv_nb`, summed over a batch for the params."""
    y2 = np.ascontiguousarray(y).reshape((-1, 2))
    v2 = np.ascontiguousarray(v).reshape((-1, 2))
    vy = np.empty_like(y2)
    vp = np.zeros(4)
    for i in range(y2.shape[0]):
        x, z, a, b = y2[i, 0], y2[i, 1], v2[i, 0], v2[i, 1]
        vy[i, 0] = a * (p[0] - p[1] * z) + b * p[3] * z
        vy[i, 1] = -a * p[1] * x + b * (-p[2] + p[3] * x)
        vp[0] += a * x
        vp[1] -= a * x * z
        vp[2] -= b * z
        vp[3] += b * x * z
    return vy.reshape(y.shape), vp



@numba.njit(cache=False)
def lv_nb_inplace(t, y, p, out):
    """:func:`lv_nb` for one state, written into ``out`` (odeint's in-place field form)."""
    out[0] = p[0] * y[0] - p[1] * y[0] * y[1]
    out[1] = -p[2] * y[1] + p[3] * y[0] * y[1]


def lv_np(t, y, p):
    out = np.empty_like(y)
    x, z = y[..., 0], y[..., 1]
    out[..., 0] = p[0] * x - p[1] * x * z
    out[..., 1] = -p[2] * z + p[3] * x * z
    return out


def lv_vjp_np(t, y, p, v):
    """NumPy VJP of :func:`lv_np` for one state or a batch (``v_p`` summed over rows)."""
    x, z = y[..., 0], y[..., 1]
    a, b = v[..., 0], v[..., 1]
    vy = np.empty_like(y)
    vy[..., 0] = a * (p[0] - p[1] * z) + b * p[3] * z
    vy[..., 1] = -a * p[1] * x + b * (-p[2] + p[3] * x)
    vp = np.array([np.sum(a * x), -np.sum(a * x * z), -np.sum(b * z), np.sum(b * x * z)])
    return vy, vp


def lv_torch(t, y, p):
    import torch

    x, z = y[..., 0], y[..., 1]
    return torch.stack([p[0] * x - p[1] * x * z, -p[2] * z + p[3] * x * z], dim=-1)


# --------------------------------------------------------------------------------- VdP ---
VDP_PARAMS = np.array([1.0])  # mu


def vdp_ag(t, y, p):
    x, v = y[..., 0], y[..., 1]
    return anp.stack([v, p[0] * (1.0 - x * x) * v - x], axis=-1)


@numba.njit(cache=False)
def vdp_nb(t, y, p):
    y2 = np.ascontiguousarray(y).reshape((-1, 2))
    out = np.empty_like(y2)
    for i in range(y2.shape[0]):
        out[i, 0] = y2[i, 1]
        out[i, 1] = p[0] * (1.0 - y2[i, 0] * y2[i, 0]) * y2[i, 1] - y2[i, 0]
    return out.reshape(y.shape)


@numba.njit(cache=False)
def vdp_vjp_nb(t, y, p, v):
    y2 = np.ascontiguousarray(y).reshape((-1, 2))
    v2 = np.ascontiguousarray(v).reshape((-1, 2))
    vy = np.empty_like(y2)
    vp = np.zeros(1)
    for i in range(y2.shape[0]):
        x, w, a, b = y2[i, 0], y2[i, 1], v2[i, 0], v2[i, 1]
        vy[i, 0] = b * (-2.0 * p[0] * x * w - 1.0)
        vy[i, 1] = a + b * p[0] * (1.0 - x * x)
        vp[0] += b * (1.0 - x * x) * w
    return vy.reshape(y.shape), vp



@numba.njit(cache=False)
def vdp_nb_inplace(t, y, p, out):
    """:func:`vdp_nb` for one state, written into ``out``."""
    out[0] = y[1]
    out[1] = p[0] * (1.0 - y[0] * y[0]) * y[1] - y[0]


def vdp_np(t, y, p):
    out = np.empty_like(y)
    x, v = y[..., 0], y[..., 1]
    out[..., 0] = v
    out[..., 1] = p[0] * (1.0 - x * x) * v - x
    return out


def vdp_vjp_np(t, y, p, v):
    """NumPy VJP of :func:`vdp_np` for one state or a batch (``v_p`` summed over rows)."""
    x, w = y[..., 0], y[..., 1]
    a, b = v[..., 0], v[..., 1]
    vy = np.empty_like(y)
    vy[..., 0] = b * (-2.0 * p[0] * x * w - 1.0)
    vy[..., 1] = a + b * p[0] * (1.0 - x * x)
    return vy, np.array([np.sum(b * (1.0 - x * x) * w)])


def vdp_torch(t, y, p):
    import torch

    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, p[0] * (1.0 - x * x) * v - x], dim=-1)


# ------------------------------------------------------------------------------ spiral ---
SPIRAL_A = np.array([[-0.1, 2.0], [-2.0, -0.1]])


def mlp_sizes(d: int, hidden: int) -> int:
    """Number of parameters of a d-hidden-d tanh MLP (W1, b1, W2, b2 flattened)."""
    return hidden * d + hidden + d * hidden + d


def mlp_unpack(p, d: int, hidden: int):
    """Views ``W1 (hidden, d), b1 (hidden,), W2 (d, hidden), b2 (d,)`` of the flat ``p``."""
    i = 0
    W1 = p[i:i + hidden * d].reshape((hidden, d))
    i += hidden * d
    b1 = p[i:i + hidden]
    i += hidden
    W2 = p[i:i + d * hidden].reshape((d, hidden))
    i += d * hidden
    b2 = p[i:i + d]
    return W1, b1, W2, b2


def mlp_init(d: int, hidden: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """A seeded Glorot-like initialisation of a d-hidden-d MLP, flattened."""
    rng = np.random.default_rng(seed)
    W1 = rng.standard_normal((hidden, d)) * scale / np.sqrt(d)
    b1 = rng.standard_normal(hidden) * 0.1 * scale
    W2 = rng.standard_normal((d, hidden)) * scale / np.sqrt(hidden)
    b2 = np.zeros(d)
    return np.concatenate([W1.ravel(), b1, W2.ravel(), b2])


def mlp_ag_factory(d: int, hidden: int):
    """The autograd.numpy MLP field ``f(t, y, p)`` for ``y`` of shape (d,) or (B, d)."""

    def f(t, y, p):
        W1, b1, W2, b2 = mlp_unpack(p, d, hidden)
        return anp.dot(anp.tanh(anp.dot(y, W1.T) + b1), W2.T) + b2

    return f


def mlp_np_factory(d: int, hidden: int):
    def f(t, y, p):
        W1, b1, W2, b2 = mlp_unpack(p, d, hidden)
        return np.tanh(y @ W1.T + b1) @ W2.T + b2

    return f


def mlp_nb_factory(d: int, hidden: int):
    """Numba forms of the d-hidden-d tanh MLP field: ``f(t, y, p)`` for one state (d,) or a
    batch (B, d), and ``vjp(t, y, p, v) -> (v_y, v_p)`` (v_p summed over the batch)."""
    o1 = hidden * d
    o2 = o1 + hidden
    o3 = o2 + d * hidden
    n_p = o3 + d

    @numba.njit(cache=False)
    def f(t, y, p):
        y2 = np.ascontiguousarray(y).reshape((-1, d))
        out = np.empty_like(y2)
        h = np.empty(hidden)
        for b in range(y2.shape[0]):
            for j in range(hidden):
                s = p[o1 + j]
                for k in range(d):
                    s += p[j * d + k] * y2[b, k]
                h[j] = np.tanh(s)
            for i in range(d):
                s = p[o3 + i]
                for j in range(hidden):
                    s += p[o2 + i * hidden + j] * h[j]
                out[b, i] = s
        return out.reshape(y.shape)

    @numba.njit(cache=False)
    def vjp(t, y, p, v):
        y2 = np.ascontiguousarray(y).reshape((-1, d))
        v2 = np.ascontiguousarray(v).reshape((-1, d))
        vy = np.zeros_like(y2)
        vp = np.zeros(n_p)
        h = np.empty(hidden)
        for b in range(y2.shape[0]):
            for j in range(hidden):
                s = p[o1 + j]
                for k in range(d):
                    s += p[j * d + k] * y2[b, k]
                h[j] = np.tanh(s)
            for i in range(d):
                vp[o3 + i] += v2[b, i]
            for j in range(hidden):
                gh = 0.0
                for i in range(d):
                    vp[o2 + i * hidden + j] += v2[b, i] * h[j]
                    gh += p[o2 + i * hidden + j] * v2[b, i]
                ga = gh * (1.0 - h[j] * h[j])
                vp[o1 + j] += ga
                for k in range(d):
                    vp[j * d + k] += ga * y2[b, k]
                    vy[b, k] += p[j * d + k] * ga
        return vy.reshape(y.shape), vp

    return f, vjp


def mlp_vjp_np_factory(d: int, hidden: int):
    """NumPy ``vjp(t, y, p, v) -> (v_y, v_p)`` of the MLP field (a hand-written backward,
    vectorised over a batch; the fast ``vjp=`` for the plain-Python training loop)."""

    def vjp(t, y, p, v):
        W1, b1, W2, _ = mlp_unpack(p, d, hidden)
        y2 = y.reshape(-1, d)
        v2 = v.reshape(-1, d)
        h = np.tanh(y2 @ W1.T + b1)
        ga = (v2 @ W2) * (1.0 - h * h)
        vp = np.concatenate([(ga.T @ y2).ravel(), ga.sum(0), (v2.T @ h).ravel(), v2.sum(0)])
        return (ga @ W1).reshape(y.shape), vp

    return vjp


def mlp_torch_factory(d: int, hidden: int):
    def f(t, y, p):
        import torch

        W1, b1, W2, b2 = mlp_unpack(p, d, hidden)
        return torch.tanh(y @ W1.T + b1) @ W2.T + b2

    return f


def spiral_field(y):
    """The torchdiffeq demo spiral ``dy/dt = y**3 @ A``."""
    return (y ** 3) @ SPIRAL_A


def spiral_mlp_params(hidden: int = 50, seed: int = 0, n_fit: int = 4000) -> np.ndarray:
    """2-``hidden``-2 tanh MLP fitted to :func:`spiral_field` on the disk |y| <= 2.2.

    W1, b1 random (seeded); (W2, b2) the ridge least-squares fit, so the field is a
    realistic "trained spiral" with no training loop.
    """
    rng = np.random.default_rng(seed)
    W1 = rng.standard_normal((hidden, 2)) * 1.0
    b1 = rng.standard_normal(hidden) * 0.5
    r = 2.2 * np.sqrt(rng.uniform(size=n_fit))
    th = rng.uniform(0, 2 * np.pi, size=n_fit)
    Y = np.stack([r * np.cos(th), r * np.sin(th)], axis=1)
    H = np.hstack([np.tanh(Y @ W1.T + b1), np.ones((n_fit, 1))])
    T = spiral_field(Y)
    coef = np.linalg.solve(H.T @ H + 1e-6 * np.eye(hidden + 1), H.T @ T)
    W2 = coef[:hidden].T
    b2 = coef[hidden]
    return np.concatenate([W1.ravel(), b1, W2.ravel(), b2])


_SPIRAL_NB, _SPIRAL_VJP_NB = mlp_nb_factory(2, 50)


# ------------------------------------------------------------------------------ registry ---
@dataclass(frozen=True)
class Problem:
    name: str
    params: np.ndarray
    y0: np.ndarray
    t0: float
    t1: float
    f_ag: Callable
    f_nb: Callable
    f_np: Callable
    f_torch: Callable
    vjp_nb: Callable
    n_eval: int = 51

    @property
    def d(self) -> int:
        return self.y0.shape[0]

    def t_eval(self) -> np.ndarray:
        return np.linspace(self.t0, self.t1, self.n_eval)

    def batch_y0(self, B: int, seed: int = 1) -> np.ndarray:
        """(B, d) initial states: y0 perturbed by up to ±10 % (row 0 unperturbed)."""
        if B == 1:
            return self.y0[None, :].copy()
        rng = np.random.default_rng(seed)
        Y = self.y0[None, :] * (1.0 + 0.1 * rng.uniform(-1, 1, size=(B, self.d)))
        Y[0] = self.y0
        return Y

    def scipy_fun(self, B: int | None = None):
        """``fun(t, y)`` for solve_ivp: one state (B None) or B states flattened."""
        p, f = self.params, self.f_np
        if B is None:
            return lambda t, y: f(t, y, p)
        d = self.d

        def fun(t, y):
            return f(t, y.reshape(B, d), p).reshape(-1)

        return fun

    def torch_fun(self):
        import torch

        p = torch.as_tensor(self.params, dtype=torch.float64)
        f = self.f_torch

        class Field(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.nfe = 0

            def forward(self, t, y):
                self.nfe += 1
                return f(t, y, p)

        return Field()


def get_problems() -> dict[str, Problem]:
    sp = spiral_mlp_params()
    return {
        "lotka_volterra": Problem("lotka_volterra", LV_PARAMS.copy(), np.array([1.0, 1.0]),
                                  0.0, 10.0, lv_ag, lv_nb, lv_np, lv_torch, lv_vjp_nb),
        "van_der_pol": Problem("van_der_pol", VDP_PARAMS.copy(), np.array([2.0, 0.0]),
                               0.0, 10.0, vdp_ag, vdp_nb, vdp_np, vdp_torch,
                               vdp_vjp_nb),
        "spiral_mlp": Problem("spiral_mlp", sp, np.array([2.0, 0.0]), 0.0, 10.0,
                              mlp_ag_factory(2, 50), _SPIRAL_NB,
                              mlp_np_factory(2, 50), mlp_torch_factory(2, 50), _SPIRAL_VJP_NB),
    }


def reference_solution(prob: Problem, Y0: np.ndarray, t_eval: np.ndarray,
                       tol: float = 1e-13) -> np.ndarray:
    """Tight DOP853 solution (rtol = atol = ``tol``) at ``t_eval``, shape (T, B, d).

    A batch is solved as one flattened system: the step size is set by the hardest
    trajectory, so every trajectory is at least as accurate as when solved alone.
    """
    from scipy.integrate import solve_ivp

    B, d = Y0.shape
    sol = solve_ivp(prob.scipy_fun(B), (t_eval[0], t_eval[-1]), Y0.reshape(-1),
                    method="DOP853", t_eval=t_eval, rtol=tol, atol=tol)
    if not sol.success:
        raise RuntimeError(f"reference solve failed for {prob.name}: {sol.message}")
    return sol.y.T.reshape(len(t_eval), B, d)


def max_abs_error(ys: np.ndarray, ref: np.ndarray) -> float:
    """Max over times, trajectories and components of |y - y_ref| (the benchmark's error)."""
    return float(np.max(np.abs(np.asarray(ys).reshape(ref.shape) - ref)))


# ------------------------------------------------------------------------------- timing ---
class Timing(tuple):
    """``(wall_s, repeats, result, cpu_s)``: medians of wall-clock and process CPU time."""

    __slots__ = ()

    def __new__(cls, wall_s, repeats, result, cpu_s):
        return super().__new__(cls, (wall_s, repeats, result, cpu_s))


def time_repeats(fn, *, min_repeats: int = 3, max_repeats: int = 30,
                 budget_s: float = 1.0) -> Timing:
    """Median wall and CPU time of repeated ``fn()`` calls (after any warm-up the caller did).

    Repeats until ``budget_s`` is spent, at least ``min_repeats`` and at most
    ``max_repeats`` times. Returns ``(median wall s, repeats, last result, median CPU s)``.
    The process CPU time is the robust measure on a shared machine (other processes steal
    wall time, not CPU time); every solver timed here is single-threaded.
    """
    import statistics
    import time

    walls, cpus = [], []
    out = None
    start = time.perf_counter()
    while len(walls) < max_repeats:
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        if len(walls) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return Timing(statistics.median(walls), len(walls), out, statistics.median(cpus))


def machine_meta() -> dict:
    """Versions and load, for the results JSON (the machine is shared: ratios, not seconds)."""
    import os
    import platform

    import scipy

    meta = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "cpu_count": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
    }
    try:  # the diffsolve.ode code measured (the working tree may be ahead of it)
        import subprocess

        meta["git_head"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                          capture_output=True, text=True, timeout=10,
                                          check=False).stdout.strip()
    except OSError:
        pass
    try:
        import torch
        import torchdiffeq

        meta["torch"] = torch.__version__
        meta["torchdiffeq"] = torchdiffeq.__version__
    except ImportError:
        pass
    return meta
