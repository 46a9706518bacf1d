"""
Learning SOR's relaxation parameter over a heat-equation simulation
===================================================================

Each time step of an implicit heat-equation solver is a linear system
``(I + s_t (-Δ)) u_{t+1} = b_t``, and successive over-relaxation (SOR) needs far fewer
iterations with a good relaxation parameter ω than with Gauss–Seidel's ω = 1. The best ω
depends on ``s_t``, which changes with the time-dependent diffusion coefficient.

:class:`diffsolve.linear.OmegaBandit` learns one ω from the iteration counts alone
(Tsallis-INF); :class:`diffsolve.linear.ContextualOmegaBandit` also sees ``s_t`` and
learns ω as a function of it (Khodak et al., ICLR 2024). The plot compares their
cumulative cost, in SOR iterations, with Gauss–Seidel over the same sequence of systems.
"""

import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse as sp

import diffsolve as ds

m = 24                      # interior grid points per side: n = 576 unknowns
h = 1.0 / (m + 1)
dt = 0.05
steps = 300
T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
neg_laplacian = ((sp.kron(sp.eye(m), T) + sp.kron(T, sp.eye(m))) / h**2).tocsr()
identity = sp.eye(m * m, format="csr")
g = np.arange(1, m + 1) * h
gx, gy = np.meshgrid(g, g, indexing="ij")


def diffusion(t):
    """A diffusion coefficient that swings over two orders of magnitude."""
    return 0.02 + 0.5 * (1.0 + np.sin(2 * np.pi * t / (steps * dt) * 3)) ** 2


def source(t):
    cx, cy = 0.5 + 0.25 * np.cos(20 * t), 0.5 + 0.25 * np.sin(20 * t)
    return 50.0 * np.exp(-((gx - cx) ** 2 + (gy - cy) ** 2) / 0.01).ravel()


def simulate(policy):
    """Crank–Nicolson steps; returns SOR iterations and the ω used at each step."""
    u = np.zeros(m * m)
    iters, omegas = [], []
    for k in range(steps):
        t = (k + 0.5) * dt
        s = 0.5 * dt * diffusion(t)
        A = (identity + s * neg_laplacian).tocsr()
        b = u - s * (neg_laplacian @ u) + dt * source(t)
        kw = {"x0": u, "rtol": 1e-8, "maxiter": 5000}
        if policy == "Gauss-Seidel (omega = 1)":
            res, omega = ds.linear.solve(A, b, method="sor", omega=1.0, **kw), 1.0
        elif isinstance(policy, ds.linear.ContextualOmegaBandit):
            res = policy.solve(A, b, context=s, **kw)
            omega = res.omega
        else:
            res = policy.solve(A, b, **kw)
            omega = res.omega
        u = res.x
        iters.append(res.n_iters)
        omegas.append(omega)
    return np.array(iters), np.array(omegas)


s_values = 0.5 * dt * diffusion((np.arange(steps) + 0.5) * dt)
policies = {
    "Gauss-Seidel (omega = 1)": "Gauss-Seidel (omega = 1)",
    "OmegaBandit (Tsallis-INF)": ds.linear.OmegaBandit(method="sor", seed=0),
    "ContextualOmegaBandit (context s_t)": ds.linear.ContextualOmegaBandit(
        context_range=(float(s_values.min()), float(s_values.max())), method="sor", seed=0),
}
runs = {name: simulate(p) for name, p in policies.items()}
for name, (iters, _) in runs.items():
    print(f"{name:38s} {iters.sum():6d} SOR iterations in {steps} steps")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for name, (iters, omegas) in runs.items():
    ax1.plot(np.cumsum(iters), label=name)
    ax2.plot(omegas, ".", ms=3, label=name)
ax1.set(xlabel="time step", ylabel="cumulative SOR iterations", title="cost of the simulation")
ax1.legend(fontsize=8)
ax2.set(xlabel="time step", ylabel="omega used", title="relaxation parameter chosen")
twin = ax2.twinx()
twin.plot(s_values, color="0.6", lw=1)
twin.set_ylabel("s_t (grey)")
fig.tight_layout()
plt.show()
