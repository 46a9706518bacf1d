"""
Implicit differentiation of the lasso
=====================================

The lasso solution ``w*(λ) = argmin_w ||X w − y||² / (2n) + λ ||w||₁`` has no closed form,
but it is a fixed point of proximal gradient:
``w* = prox_{ηλ||·||₁}(w* − η ∇f(w*))``. :func:`diffsolve.implicit.custom_root`
differentiates any lasso solver through that condition by the implicit function theorem
(Blondel et al., NeurIPS 2022): the solver itself can be a plain NumPy loop that
autograd never sees.

Below, ``dw*/dλ`` along the regularisation path from the implicit rule is checked against
finite differences, and the hypergradient of a validation loss tunes λ.
"""

import autograd.numpy as anp
import matplotlib.pyplot as plt
import numpy as np
import scipy.optimize

import diffsolve as ds

rng = np.random.default_rng(0)
n, d = 60, 12
w_true = np.zeros(d)
w_true[:4] = [2.0, -1.5, 1.0, 0.5]
X = rng.standard_normal((n, d))
y = X @ w_true + 0.5 * rng.standard_normal(n)
X_val = rng.standard_normal((n, d))
y_val = X_val @ w_true + 0.5 * rng.standard_normal(n)
L = np.linalg.norm(X, 2) ** 2 / n          # Lipschitz constant of the smooth part's gradient


def smooth(w, lam):
    return 0.5 * anp.sum((X @ w - y) ** 2) / n


def soft_threshold(v, stepsize, lam):
    return anp.sign(v) * anp.maximum(anp.abs(v) - stepsize * lam, 0.0)


F = ds.implicit.proximal_gradient_fixed_point(smooth, soft_threshold, stepsize=1.0 / L)


@ds.implicit.custom_root(F, solve="gmres")
def lasso(init, lam):
    """FISTA in plain NumPy; custom_root supplies the derivative."""
    w = z = init
    t = 1.0
    for _ in range(3000):
        w_next = soft_threshold(z - (X.T @ (X @ z - y) / n) / L, 1.0 / L, lam)
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        z = w_next + (t - 1) / t_next * (w_next - w)
        w, t = w_next, t_next
    return w


# %%
# The regularisation path and its derivative
# ------------------------------------------
# ``ds.vjp`` returns the solution and a function giving ``u·dw*/dλ`` for a cotangent
# ``u``; with ``u`` the unit vectors it gives the whole derivative of a few coefficients.

lams = np.geomspace(0.01, 1.5, 40)
path, slope, slope_fd = [], [], []
for lam in lams:
    w, f_vjp = ds.vjp(lasso, np.zeros(d), np.array(lam))
    path.append(w)
    slope.append([float(f_vjp(np.eye(d)[j])[1]) for j in range(4)])
    h = 1e-5 * lam
    w_plus = lasso(np.zeros(d), np.array(lam + h))
    w_minus = lasso(np.zeros(d), np.array(lam - h))
    slope_fd.append((w_plus[:4] - w_minus[:4]) / (2 * h))
path, slope, slope_fd = np.array(path), np.array(slope), np.array(slope_fd)
print("max |implicit - finite differences| of dw/dlambda:",
      f"{np.abs(slope - slope_fd).max():.2e}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
ax1.semilogx(lams, path)
ax1.set(xlabel="lambda", ylabel="w*(lambda)", title="lasso path (12 coefficients)")
for j in range(4):
    line, = ax2.semilogx(lams, slope[:, j], label=f"w{j}: implicit")
    ax2.semilogx(lams[::3], slope_fd[::3, j], "o", ms=4, mfc="none", color=line.get_color())
ax2.set(xlabel="lambda", ylabel="dw*/dlambda",
        title="derivative: implicit (lines), finite differences (circles)")
ax2.legend(fontsize=8)
fig.tight_layout()

# %%
# Tuning λ with the hypergradient
# -------------------------------
# The validation loss ``||X_val w*(λ) − y_val||² / (2n)`` is differentiated through the
# lasso solution; SciPy's L-BFGS, given that gradient, finds the minimum over ``log λ``.


def validation(lam):
    w, f_vjp = ds.vjp(lasso, np.zeros(d), np.array(lam))
    r = X_val @ w - y_val
    loss = 0.5 * float(r @ r) / n
    (_, lam_bar) = f_vjp(X_val.T @ r / n)
    return loss, float(lam_bar)


curve = [validation(lam)[0] for lam in lams]
trace = []


def objective(log_lam):
    """Validation loss and its derivative in log(lambda), for SciPy's L-BFGS."""
    lam = float(np.exp(log_lam[0]))
    loss, grad = validation(lam)
    trace.append((lam, loss))
    return loss, np.array([lam * grad])          # chain rule: d/dlog(lam) = lam d/dlam


opt = scipy.optimize.minimize(objective, x0=[np.log(1.0)], jac=True, method="L-BFGS-B")
trace = np.array(trace)
print(f"lambda tuned by L-BFGS on the hypergradient: {trace[-1, 0]:.4f} after "
      f"{len(trace)} evaluations (grid minimum at {lams[int(np.argmin(curve))]:.4f})")

fig, ax = plt.subplots(figsize=(6.4, 4.2))
ax.semilogx(lams, curve, label="validation loss")
ax.semilogx(trace[:, 0], trace[:, 1], "o-", ms=4, label="L-BFGS iterates (hypergradient)")
ax.set(xlabel="lambda", ylabel="validation loss")
ax.legend()
fig.tight_layout()
plt.show()
