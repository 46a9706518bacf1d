"""The second half of ``python -m diffsolve demo``: learned directions, OT and ODEs."""

from __future__ import annotations

import time

import autograd.numpy as anp
import numpy as np

from . import linear, ode, ot
from ._autodiff import vjp


def _rel(a, b) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def dcdm_tour(A, b) -> None:
    """DCDM with the shipped 64² Poisson weights against CG on the demo's own system."""
    print("7. Learned conjugate directions (DCDM, shipped 64² Poisson model) vs CG, rtol 1e-6")
    for method in ("cg", "dcdm"):
        t0 = time.perf_counter()
        res = linear.solve(A, b, method=method, rtol=1e-6)
        dt = time.perf_counter() - t0
        print(f"   method={method:<5} iterations={res.n_iters:>4}  converged={res.converged}  "
              f"{dt * 1e3:7.1f} ms")
    print("   (DCDM trades iterations for network evaluations: it wins on a GPU, not on a "
          "2-core CPU; docs/dcdm.md)")


def ot_tour(rng) -> None:
    """Sinkhorn, its implicit gradient against central FD, SNS at small eps, sparse OT."""
    print("8. Optimal transport between two point clouds (n = m = 300)")
    n = 300
    x = rng.standard_normal((n, 2))
    y = rng.standard_normal((n, 2)) * 0.7 + np.array([1.0, 0.5])
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    C /= C.max()
    a = np.full(n, 1.0 / n)
    b = rng.uniform(0.5, 1.5, n)
    b /= b.sum()
    t0 = time.perf_counter()
    res, f_vjp = vjp(ot.sinkhorn, a, b, C, 0.01, rtol=1e-13)
    dt = time.perf_counter() - t0
    print(f"   sinkhorn eps=0.01: {int(res.n_iters)} iterations, L1 marginal error "
          f"{float(res.error):.1e}, cost {float(res.cost):.6f}, {dt * 1e3:.0f} ms (incl. JIT)")
    # d cost / d C along a random direction: implicit gradient vs central differences
    _, _, C_bar = f_vjp(cost=np.float64(1.0))
    D = rng.standard_normal(C.shape)
    h = 1e-6
    plus = float(ot.sinkhorn(a, b, C + h * D, 0.01, rtol=1e-13).cost)
    minus = float(ot.sinkhorn(a, b, C - h * D, 0.01, rtol=1e-13).cost)
    fd = (plus - minus) / (2 * h)
    pred = float(np.sum(C_bar * D))
    print(f"   <dcost/dC, D> = {pred:.10e}   central FD = {fd:.10e}   rel. error "
          f"{_rel(pred, fd):.1e}")
    # sinkhorn_switch=0: the paper's fixed warm-up, so that the Newton stage does the work
    t0 = time.perf_counter()
    res = ot.sinkhorn_newton_sparse(a, b, C, 0.002, rtol=1e-10, sinkhorn_switch=0)
    dt = time.perf_counter() - t0
    print(f"   sinkhorn_newton_sparse eps=0.002: {int(res.n_sinkhorn)} Sinkhorn + "
          f"{int(res.n_iters)} Newton steps, L1 marginal error {float(res.error):.1e}, "
          f"{dt * 1e3:.0f} ms")
    res = ot.sparse_ot(a, b, C, k=10, gamma=0.05)
    nnz = int(np.count_nonzero(res.plan, axis=0).max())
    print(f"   sparse_ot k=10: at most {nnz} nonzeros per column ({res.plan_values.size} "
          f"stored values instead of {n * n}), L1 marginal error {float(res.error):.1e}, "
          f"converged={bool(res.converged)}")


def _van_der_pol(t, y, params):
    mu = params[0]
    return anp.array([y[1], mu * (1.0 - y[0] ** 2) * y[1] - y[0]])


def ode_tour() -> None:
    """odeint on Van der Pol: stats, the discrete adjoint vs FD, the error regulariser."""
    print("9. ODE: Van der Pol (mu = 1) with tsit5, discrete adjoint, error regulariser")
    y0 = np.array([2.0, 0.0])
    ts = np.linspace(0.0, 10.0, 21)
    mu = np.array([1.0])
    res, f_vjp = vjp(ode.odeint, _van_der_pol, y0, ts, mu, rtol=1e-8, atol=1e-10,
                     regularizers=("error",))
    st = res.stats
    print(f"   {st.n_accepted} accepted + {st.n_rejected} rejected steps, nfe = {st.nfe}, "
          f"y(10) = {res.ys[-1]}, R_E = {float(res.reg_error):.3e}")
    cot = np.zeros_like(res.ys)
    cot[-1, 0] = 1.0
    grads = f_vjp(ys=cot)
    y0_bar, mu_bar = grads[0], grads[2]  # one cotangent per array argument: y0, t_eval, params
    h = 1e-6
    # central FD with the accepted step sequence frozen: the discrete adjoint is the exact
    # derivative of the computed solution for that sequence
    steps = res.ts

    def y_end(y0_, mu_):
        return ode.odeint(_van_der_pol, y0_, ts, mu_, rtol=1e-8, atol=1e-10,
                          step_ts=steps).ys[-1, 0]

    fd_mu = (y_end(y0, mu + h) - y_end(y0, mu - h)) / (2 * h)
    e0 = np.array([h, 0.0])
    fd_y0 = (y_end(y0 + e0, mu) - y_end(y0 - e0, mu)) / (2 * h)
    print(f"   d y1(10)/d mu   = {float(mu_bar[0]):.10e}   central FD = {float(fd_mu):.10e}"
          f"   rel. error {_rel(float(mu_bar[0]), float(fd_mu)):.1e}")
    print(f"   d y1(10)/d y0_1 = {float(y0_bar[0]):.10e}   central FD = {float(fd_y0):.10e}"
          f"   rel. error {_rel(float(y0_bar[0]), float(fd_y0)):.1e}")
