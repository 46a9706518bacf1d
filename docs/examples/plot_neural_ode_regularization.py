"""
Regularising a neural ODE: fewer function evaluations for the same fit
======================================================================

A neural ODE ``dy/dt = f_θ(t, y)`` is trained to carry points to their targets. Nothing
in the task loss asks for dynamics that are easy to integrate, and the adaptive solver's
number of function evaluations (NFE) often grows during training. The regularisers of
:func:`diffsolve.ode.odeint` add the solver's own heuristics to the loss (Pal et al.,
ICML 2021): ``R_E``, the sum of the local error estimates, and ``R_S``, a stiffness
estimate. Both are computed during the forward solve and differentiated by the same
discrete adjoint as the solution.

Three runs from the same initial network: no regulariser, ``R_E``, and ``R_E + R_S``,
80 epochs of full-batch Adam each.
Gradients come from :func:`diffsolve.vjp` (no deep-learning framework); the vector field
is written with ``autograd.numpy``, which differentiates it.
"""

import autograd.numpy as anp
import matplotlib.pyplot as plt
import numpy as np

import diffsolve as ds

rng = np.random.default_rng(0)
sizes = [(2, 32), (32,), (32, 2), (2,)]
n_params = sum(int(np.prod(s)) for s in sizes)


def unpack(p):
    out, i = [], 0
    for s in sizes:
        k = int(np.prod(s))
        out.append(anp.reshape(p[i:i + k], s))
        i += k
    return out


def field(t, y, p):
    """A 2-32-2 tanh network; y is the whole batch, shape (B, 2)."""
    W1, b1, W2, b2 = unpack(p)
    return anp.tanh(y @ W1 + b1) @ W2 + b2


# the task: a rotation by 1.5 rad combined with a contraction
y0 = rng.standard_normal((32, 2))
angle = 1.5
rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
target = 0.6 * y0 @ rotation
t_eval = np.array([0.0, 1.0])
options = {"rtol": 1e-5, "atol": 1e-7, "batch_mode": "shared"}


def train(weights, epochs=80, lr=0.03):
    """Adam on task loss + weights . (R_E, R_S); returns per-epoch NFE and task loss."""
    p = 0.3 * np.random.default_rng(1).standard_normal(n_params)
    m, v = np.zeros_like(p), np.zeros_like(p)
    regs = tuple(name for name, w in zip(("error", "stiffness"), weights) if w > 0)
    nfe, task = [], []
    for epoch in range(1, epochs + 1):
        res, f_vjp = ds.vjp(ds.ode.odeint, field, y0, t_eval, p, regularizers=regs,
                            **options)
        diff = res.ys[-1] - target
        task.append(float(np.mean(diff**2)))
        nfe.append(res.stats.nfe)
        ys_bar = np.zeros_like(res.ys)
        ys_bar[-1] = 2.0 * diff / diff.size
        cotangents = {"ys": ys_bar}
        if "error" in regs:
            cotangents["reg_error"] = weights[0]
        if "stiffness" in regs:
            cotangents["reg_stiffness"] = weights[1]
        g = f_vjp(**cotangents)["params"]
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - lr * (m / (1 - 0.9**epoch)) / (np.sqrt(v / (1 - 0.999**epoch)) + 1e-8)
    return np.array(nfe), np.array(task)


runs = {
    "no regulariser": train((0.0, 0.0)),
    "R_E (weight 3)": train((3.0, 0.0)),
    "R_E + R_S (weights 2, 0.2)": train((2.0, 0.2)),
}
for name, (nfe, task) in runs.items():
    print(f"{name:32s} final task loss {task[-1]:.4f}, NFE {nfe[0]} -> {nfe[-1]}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for name, (nfe, task) in runs.items():
    ax1.plot(np.arange(1, len(nfe) + 1), nfe, label=name)
    ax2.semilogy(np.arange(1, len(task) + 1), task, label=name)
ax1.set(xlabel="epoch", ylabel="NFE of the forward solve", title="cost of one solve")
ax2.set(xlabel="epoch", ylabel="task loss (MSE)", title="fit")
ax1.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# The regularisers trade fit for cheaper dynamics: the weights set the exchange rate. On
# this small task the unregularised network's NFE climbs while it fits the targets more
# closely; the regularised runs keep it lower and stop at a larger task loss. The
# benchmark ``python -m bench.bench_ode_regularization`` measures this trade-off over
# several tasks and seeds.
