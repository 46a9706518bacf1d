"""
Bilevel data hyper-cleaning
===========================

Two in five training labels are wrong. Hyper-cleaning (Franceschi et al., ICML 2017)
learns one weight per training sample, ``σ(x_i)``, so that the classifier trained on the
weighted loss does well on a small clean validation set:

* lower level: ``y*(x) = argmin_y Σ_i σ(x_i) ℓ(y; a_i, b_i) / n + c ||y||²``, a weighted,
  ridge-regularised logistic regression;
* upper level: ``min_x`` the validation loss of ``y*(x)``.

:func:`diffsolve.bilevel.solve` with ``method="implicit"`` alternates warm-started inner
gradient steps with implicit hypergradient steps on ``x``. The learned weights separate
the corrupted samples from the clean ones, and the classifier trained with them beats the
one trained on the unweighted, corrupted data.
"""

import autograd
import autograd.numpy as anp
import matplotlib.pyplot as plt
import numpy as np
import scipy.optimize

import diffsolve as ds

rng = np.random.default_rng(0)
d, n_train, n_val, n_test = 10, 200, 100, 2000
w_true = rng.standard_normal(d)


def sample(n):
    a = rng.standard_normal((n, d))
    return a, np.where(a @ w_true > 0, 1.0, -1.0)


a_train, b_train = sample(n_train)
a_val, b_val = sample(n_val)
a_test, b_test = sample(n_test)
corrupted = rng.random(n_train) < 0.4
b_train = np.where(corrupted, -b_train, b_train)   # flip 40 % of the training labels
c = 1e-3


def logistic(margins):
    return anp.logaddexp(0.0, -margins)


def inner(x, y):
    weights = 1.0 / (1.0 + anp.exp(-x))
    return anp.mean(weights * logistic(b_train * (a_train @ y))) + c * anp.sum(y**2)


def outer(x, y):
    return anp.mean(logistic(b_val * (a_val @ y)))


def accuracy(y):
    return float(np.mean(np.sign(a_test @ y) == b_test))


res = ds.bilevel.solve(outer, inner, np.zeros(n_train), np.zeros(d), method="implicit",
                       maxiter=300, stepsize=50.0, inner_stepsize=1.0, inner_iters=20,
                       rtol=0.0, atol=0.0)        # a fixed budget of 300 outer iterations
weights = 1.0 / (1.0 + np.exp(-res.x))

# the baseline: the same regression on the corrupted data with every weight 1 (x = +inf)
def unweighted(y):
    return anp.mean(logistic(b_train * (a_train @ y))) + c * anp.sum(y**2)


baseline = scipy.optimize.minimize(unweighted, np.zeros(d), jac=autograd.grad(unweighted),
                                   method="L-BFGS-B")
print(f"test accuracy without cleaning: {accuracy(baseline.x):.3f}, "
      f"with the learned weights: {accuracy(res.y):.3f}")
print(f"mean weight of corrupted samples {weights[corrupted].mean():.2f}, "
      f"of clean samples {weights[~corrupted].mean():.2f}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
ax1.plot(np.arange(1, res.n_iters + 1), res.history.outer)
ax1.set(xlabel="outer iteration", ylabel="validation loss", title="upper-level objective")
bins = np.linspace(0, 1, 21)
ax2.hist(weights[~corrupted], bins=bins, alpha=0.7, label="clean samples")
ax2.hist(weights[corrupted], bins=bins, alpha=0.7, label="corrupted samples")
ax2.set(xlabel="learned weight sigma(x_i)", ylabel="samples", title="learned sample weights")
ax2.legend()
fig.tight_layout()
plt.show()
