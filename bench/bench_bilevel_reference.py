"""``diffsolve.bilevel.solve`` with default settings against reference optima.

Run from the repository root::

    python -m bench.bench_bilevel_reference          # ~5 minutes on 2 CPU cores
    python -m bench.bench_bilevel_reference --quick  # smoke run, nothing written

Every method runs with its defaults (no step, no inner step, no method option), ``maxiter``
500 and ``rtol = atol = 0`` (the whole budget), and is measured against a reference:

* **ridge** — per-feature ridge regression on scikit-learn's bundled diabetes data (10
  features, standardised; 221 training / 221 validation rows): lower level
  ``½||Xw − t||²/n + ½Σ exp(xᵢ) wᵢ²`` (closed form ``w*(x)``), upper level the validation
  mean squared error; x in the box [−8, 8].
* **logreg** — per-feature L2 logistic regression on scikit-learn's breast_cancer data (30
  hyperparameters, features standardised, an unregularised intercept; 284 training / 285
  validation rows): lower level mean logistic loss + ``½Σ exp(xᵢ) wᵢ²``, upper level the
  validation logistic loss; x in the box [−8, 8] (without a box the optimum lies at
  |xᵢ| ≈ 500, where the weights are exactly zero or free, and the problem has no finite
  minimiser worth the name).
* **cleaning** — data hyper-cleaning (Franceschi et al., ICML 2017) on scikit-learn's
  digits: 200 training samples with 50 % of the labels replaced by a wrong one, 200 clean
  validation samples, a linear softmax classifier (65 × 10 weights with the bias); lower
  level ``(1/n)Σ σ(xᵢ) CEᵢ(W) + (C/2)||W||²``, C = 1e-3; upper level the validation
  cross-entropy; x (one weight per training sample) in the box [−8, 8]. The reference's
  lower level is L-BFGS-B to a gradient of 1e-11 and its hypergradient
  ``diffsolve.bilevel.hypergradient`` (CG to 1e-10).
* **lvhba-toy** — the toy problem of Yao et al. (ICLR 2024) with a coupled lower-level
  constraint, n = 100: ``min ½||x − y₂||² + ½||y₁ − 1||²`` over ``y = (y₁, y₂) ∈
  argmin {½||y₁||² − xᵀy₁ + Σy₂ : Σx + Σy = 0}``, solution x* = −0.3, y₁* = 0.7,
  y₂* = −0.4 (all coordinates); start x = y = 10 moved onto Σx + Σy = 0, as in the
  authors' code. lv-hba only (the constraint couples x and y), with ``equality=True``.

* **svm** — SVM hyperparameter selection with a constrained lower level (Yao et al., ICLR
  2024, Sec. 5), on breast_cancer (60 training / 60 validation rows; one weight exp(cᵢ) per
  training slack, 91 lower-level variables, 60 inequality constraints):
  :mod:`bench._bilevel_svm`. lv-hba only (the constraints couple y); its reference is
  L-BFGS-B on the exact (active-set) hypergradient restarted from sampled better points
  (Φ has kinks where a row enters or leaves the active set), x in [−8, 8].

For ridge, logreg and cleaning the reference optimum comes from L-BFGS-B on the exact hypergradient
(the lower level solved by Newton's method to ``||∇|| < 1e-13``, the Hessian system by a
dense solve) to a projected gradient of 1e-10 or to L-BFGS-B's own stop; the gap is
``(Φ(x_k) − Φ*)/Φ*`` with Φ evaluated at the exact lower-level solution of each x_k.
For the toy: ``||x_k − x*|| / ||x*||``. Targets (issue 15): a gap of 1 % (toy: 1e-3)
within 500 iterations, never non-finite.

**JAXopt** (when importable): its implicit differentiation (``LBFGS(implicit_diff=True)``
for the lower level, ``tol=1e-10``) inside JAXopt's ``ProjectedGradient`` on the same box,
for ridge, logreg and cleaning — the time to 1 % is reported next to diffsolve's.

The evaluation of Φ in the callbacks is excluded from the wall times. Results:
``bench/results/bilevel_reference.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import autograd
import autograd.numpy as anp
import numpy as np
import scipy
import scipy.optimize

import diffsolve as ds

RESULTS = Path(__file__).resolve().parent / "results"
MAXITER = 500
BOX = (-8.0, 8.0)
METHODS = ("implicit", "penalty", "bo-rep")


# ---------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------
def _split(X, t, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(t))
    X = (X - X.mean(0)) / X.std(0)
    half = len(t) // 2
    return X[idx[:half]], t[idx[:half]], X[idx[half:]], t[idx[half:]]


def ridge_problem():
    from sklearn.datasets import load_diabetes

    X, t = load_diabetes(return_X_y=True)
    t = (t - t.mean()) / t.std()
    Xtr, ttr, Xva, tva = _split(X, t)
    n, p = Xtr.shape

    def inner(x, w):
        return 0.5 * anp.sum((Xtr @ w - ttr) ** 2) / n + 0.5 * anp.sum(anp.exp(x) * w ** 2)

    def outer(x, w):
        return 0.5 * anp.mean((Xva @ w - tva) ** 2)

    def wstar(x):
        return np.linalg.solve(Xtr.T @ Xtr / n + np.diag(np.exp(x)), Xtr.T @ ttr / n)

    def phi(x):
        w = wstar(x)
        H = Xtr.T @ Xtr / n + np.diag(np.exp(x))
        r = Xva.T @ (Xva @ w - tva) / len(tva)
        return float(outer(x, w)), -np.exp(x) * w * np.linalg.solve(H, r)

    return {"outer": outer, "inner": inner, "phi": phi, "x0": np.zeros(p),
            "y0": np.zeros(p), "data": (Xtr, ttr, Xva, tva), "kind": "ridge"}


def logreg_problem():
    from sklearn.datasets import load_breast_cancer

    X, t = load_breast_cancer(return_X_y=True)
    Xtr, ttr, Xva, tva = _split(X, 2.0 * t - 1.0)
    Xtr = np.hstack([Xtr, np.ones((len(ttr), 1))])
    Xva = np.hstack([Xva, np.ones((len(tva), 1))])
    p = Xtr.shape[1] - 1

    def inner(x, w):
        return anp.mean(anp.logaddexp(0.0, -ttr * (Xtr @ w))) + \
            0.5 * anp.sum(anp.exp(x) * w[:p] ** 2)

    def outer(x, w):
        return anp.mean(anp.logaddexp(0.0, -tva * (Xva @ w)))

    grad_w = autograd.grad(inner, 1)
    hess_w = autograd.hessian(inner, 1)
    cross = autograd.jacobian(grad_w, 0)
    outer_w = autograd.grad(outer, 1)
    cache: dict = {"w": np.zeros(p + 1)}

    def wstar(x):
        w = cache["w"].copy()
        for _ in range(100):
            g = grad_w(x, w)
            if np.linalg.norm(g) < 1e-13:
                break
            w = w - np.linalg.solve(hess_w(x, w), g)
        if not np.all(np.isfinite(w)):  # a bad warm start: restart from 0
            cache["w"] = np.zeros(p + 1)
            return wstar(x)
        cache["w"] = w
        return w

    def phi(x):
        w = wstar(x)
        v = np.linalg.solve(hess_w(x, w), outer_w(x, w))
        return float(outer(x, w)), -cross(x, w).T @ v

    return {"outer": outer, "inner": inner, "phi": phi, "x0": np.zeros(p),
            "y0": np.zeros(p + 1), "data": (Xtr, ttr, Xva, tva), "kind": "logreg"}


def cleaning_problem(n_train=200, n_val=200, corrupt=0.5, C=1e-3):
    """Data hyper-cleaning (Franceschi et al., ICML 2017) on scikit-learn's digits."""
    from sklearn.datasets import load_digits

    X, t = load_digits(return_X_y=True)
    X = np.hstack([X / 16.0, np.ones((len(t), 1))])
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(t))
    tr, va = idx[:n_train], idx[n_train:n_train + n_val]
    Xtr, ytr, Xva, yva = X[tr], t[tr].copy(), X[va], t[va]
    bad = rng.random(n_train) < corrupt
    ytr[bad] = (ytr[bad] + rng.integers(1, 10, int(bad.sum()))) % 10
    Ytr, Yva = np.eye(10)[ytr], np.eye(10)[yva]
    p, k = X.shape[1], 10

    def ce(Xm, Y, w):  # per-sample softmax cross-entropy, shifted for stability
        Z = Xm @ anp.reshape(w, (p, k))
        zmax = anp.max(Z, axis=1, keepdims=True)
        return -anp.sum(Y * (Z - zmax), axis=1) + anp.log(anp.sum(anp.exp(Z - zmax), axis=1))

    def inner(x, w):
        return anp.mean(1.0 / (1.0 + anp.exp(-x)) * ce(Xtr, Ytr, w)) + \
            0.5 * C * anp.sum(w ** 2)

    def outer(x, w):
        return anp.mean(ce(Xva, Yva, w))

    grad_w = autograd.grad(inner, 1)
    cache = {"w": np.zeros(p * k)}

    def wstar(x):
        r = scipy.optimize.minimize(lambda w: inner(x, w), cache["w"],
                                    jac=lambda w: grad_w(x, w), method="L-BFGS-B",
                                    options={"gtol": 1e-11, "ftol": 1e-16, "maxiter": 5000,
                                             "maxcor": 50})
        cache["w"] = r.x
        return r.x

    def phi(x):
        w = wstar(x)
        g = ds.bilevel.hypergradient(outer, inner, x, w, rtol=1e-10)
        return float(outer(x, w)), g

    return {"outer": outer, "inner": inner, "phi": phi, "x0": np.zeros(n_train),
            "y0": np.zeros(p * k), "kind": "cleaning", "data": (Xtr, Ytr, Xva, Yva, C)}


def reference(pb):
    """L-BFGS-B on the exact hypergradient, in the box."""
    t0 = time.perf_counter()
    r = scipy.optimize.minimize(pb["phi"], pb["x0"], jac=True, method="L-BFGS-B",
                                bounds=[BOX] * len(pb["x0"]),
                                options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 20000,
                                         "maxcor": 30})
    x = r.x
    g = pb["phi"](x)[1]
    pg = np.linalg.norm(x - np.clip(x - g, *BOX))
    return {"value": float(r.fun), "x": x.tolist(), "projected_grad": float(pg),
            "iterations": int(r.nit), "message": str(r.message),
            "time_s": time.perf_counter() - t0}


def toy_problem(n=100):
    def outer(x, y):
        return 0.5 * anp.sum((x - y[n:]) ** 2) + 0.5 * anp.sum((y[:n] - 1.0) ** 2)

    def inner(x, y):
        return 0.5 * anp.sum(y[:n] ** 2) - anp.dot(x, y[:n]) + anp.sum(y[n:])

    def constraint(x, y):
        return anp.reshape(anp.sum(x) + anp.sum(y), (1,))

    w = np.full(3 * n, 10.0)
    w = w - w.mean()
    return {"outer": outer, "inner": inner, "constraint": constraint, "x0": w[:n],
            "y0": w[n:], "x_star": np.full(n, -0.3),
            "y_star": np.concatenate([np.full(n, 0.7), np.full(n, -0.4)])}


# ---------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------
def _timed_callback(measure, every):
    """A callback recording ``measure(state)`` every ``every`` iterations and the time
    spent in it (excluded from the curve's times)."""
    rec = {"iter": [], "gap": [], "time_s": [], "excluded": 0.0, "t0": None}

    def callback(state):
        now = time.perf_counter()
        if state.n_iters % every == 0 or state.n_iters == 1:
            rec["iter"].append(state.n_iters)
            rec["gap"].append(float(measure(state)))
            rec["time_s"].append(now - rec["t0"] - rec["excluded"])
        rec["excluded"] += time.perf_counter() - now

    return rec, callback


def _summary(rec, target, res):
    gaps = np.asarray(rec["gap"])
    hit = np.flatnonzero(gaps <= target)
    return {"status": res.status.name, "n_iters": res.n_iters,
            "final_gap": float(gaps[-1]) if gaps.size else None,
            "best_gap": float(np.nanmin(gaps)) if gaps.size else None,
            "iters_to_target": int(rec["iter"][hit[0]]) if hit.size else None,
            "time_to_target_s": float(rec["time_s"][hit[0]]) if hit.size else None,
            "finite": bool(np.all(np.isfinite(res.x)) and np.all(np.isfinite(res.y))),
            "message": res.message,
            "curve": {k: rec[k] for k in ("iter", "gap", "time_s")}}


def run_hyper(pb, ref, maxiter, every):
    out = {}
    for method in METHODS:
        rec, cb = _timed_callback(lambda s: (pb["phi"](s.x)[0] - ref["value"]) / ref["value"],
                                  every)
        rec["t0"] = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            # the runs' own ConvergenceWarnings are recorded in the results, not lost
            warnings.simplefilter("always")
            res = ds.bilevel.solve(pb["outer"], pb["inner"], pb["x0"], pb["y0"], method,
                                   maxiter=maxiter, rtol=0.0, atol=0.0,
                                   x_projection=("box", *BOX), callback=cb)
        out[method] = _summary(rec, 1e-2, res)
        out[method]["warnings"] = [str(w.message)[:300] for w in caught]
        print(f"  {method:9s} {res.status.name:15s} final gap {out[method]['final_gap']:.3g}"
              f"  to 1 %: {out[method]['iters_to_target']} it, "
              f"{out[method]['time_to_target_s']} s")
    return out


def run_toy(maxiter, every):
    pb = toy_problem()
    xs = pb["x_star"]
    rec, cb = _timed_callback(lambda s: np.linalg.norm(s.x - xs) / np.linalg.norm(xs), every)
    rec["t0"] = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = ds.bilevel.solve(pb["outer"], pb["inner"], pb["x0"], pb["y0"], "lv-hba",
                               constraint=pb["constraint"], options={"equality": True},
                               maxiter=maxiter, rtol=0.0, atol=0.0, callback=cb)
    out = {"lv-hba": _summary(rec, 1e-3, res)}
    out["lv-hba"]["warnings"] = [str(w.message)[:300] for w in caught]
    print(f"  lv-hba    {res.status.name:15s} final rel. distance "
          f"{out['lv-hba']['final_gap']:.3g}, best {out['lv-hba']['best_gap']:.3g}")
    return out


def run_svm(maxiter, every):
    from bench._bilevel_svm import svm_problem, svm_reference

    with warnings.catch_warnings(record=True) as kinks:
        # the reference sits on a kink of Φ (strict complementarity fails there): the
        # problem module warns once; recorded with the results
        warnings.simplefilter("always")
        pb = svm_problem()
        ref = svm_reference(pb)
    print(f"  reference Φ* = {ref['value']:.10g} ({ref['iterations']} it, {ref['rounds']} "
          f"rounds, {ref['time_s']:.1f} s)")
    rec, cb = _timed_callback(lambda s: (pb["phi"](s.x)[0] - ref["value"]) / ref["value"],
                              every)
    rec["t0"] = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = ds.bilevel.solve(pb["outer"], pb["inner"], pb["x0"], pb["y0"], "lv-hba",
                               constraint=pb["constraint"], maxiter=maxiter, rtol=0.0,
                               atol=0.0, x_projection=("box", *pb["box"]), callback=cb)
    out = {"lv-hba": _summary(rec, 1e-2, res)}
    out["lv-hba"]["warnings"] = [str(w.message)[:300] for w in caught]
    print(f"  lv-hba    {res.status.name:15s} final gap {out['lv-hba']['final_gap']:.3g}, "
          f"best {out['lv-hba']['best_gap']:.3g}")
    ref = {k: v for k, v in ref.items() if k != "x"}
    ref["warnings"] = sorted({str(w.message)[:200] for w in kinks})
    return ref, out


def _jax_cleaning(jax, jnp, data):
    """The hyper-cleaning objectives in jax.numpy: ``(inner(w, x), outer(w), size of w)``."""
    Xtr, Ytr, Xva, Yva = (jnp.asarray(a) for a in data[:4])
    C, p, k = data[4], Xtr.shape[1], Ytr.shape[1]

    def ce(Xm, Y, w):
        Z = Xm @ jnp.reshape(w, (p, k))
        return -jnp.sum(Y * Z, axis=1) + jax.scipy.special.logsumexp(Z, axis=1)

    def inner(w, x):
        return jnp.mean(jax.nn.sigmoid(x) * ce(Xtr, Ytr, w)) + 0.5 * C * jnp.sum(w ** 2)

    def outer(w):
        return jnp.mean(ce(Xva, Yva, w))

    return inner, outer, p * k


def run_jaxopt(pb, ref, maxiter, every):
    """JAXopt: implicit-diff L-BFGS lower level inside ProjectedGradient on the box."""
    try:
        import jax
        import jax.numpy as jnp
        import jaxopt
    except ImportError as e:
        return {"skipped": f"jaxopt not importable: {e}"}
    jax.config.update("jax_enable_x64", True)
    if pb["kind"] == "cleaning":
        inner, outer, q = _jax_cleaning(jax, jnp, pb["data"])
    else:
        Xtr, ttr, Xva, tva = (jnp.asarray(a) for a in pb["data"])
        n, q = Xtr.shape
        if pb["kind"] == "ridge":
            def inner(w, x):
                return 0.5 * jnp.sum((Xtr @ w - ttr) ** 2) / n + \
                    0.5 * jnp.sum(jnp.exp(x) * w ** 2)

            def outer(w):
                return 0.5 * jnp.mean((Xva @ w - tva) ** 2)
        else:
            def inner(w, x):
                return jnp.mean(jnp.logaddexp(0.0, -ttr * (Xtr @ w))) + \
                    0.5 * jnp.sum(jnp.exp(x) * w[:q - 1] ** 2)

            def outer(w):
                return jnp.mean(jnp.logaddexp(0.0, -tva * (Xva @ w)))

    lower = jaxopt.LBFGS(fun=inner, tol=1e-10, maxiter=1000, implicit_diff=True)
    w0 = jnp.zeros(q)

    def phi(x):
        return outer(lower.run(w0, x).params)

    solver = jaxopt.ProjectedGradient(fun=jax.jit(phi), projection=jaxopt.projection.projection_box,
                                      maxiter=maxiter, tol=0.0, jit=True)
    x = jnp.asarray(pb["x0"])
    state = solver.init_state(x, hyperparams_proj=BOX)
    update = jax.jit(lambda x, s: solver.update(x, s, hyperparams_proj=BOX))
    x, state = update(x, state)  # compile outside the clock
    x = jnp.asarray(pb["x0"])
    state = solver.init_state(x, hyperparams_proj=BOX)
    rec = {"iter": [], "gap": [], "time_s": []}
    elapsed = 0.0
    for k in range(1, maxiter + 1):
        t0 = time.perf_counter()
        x, state = update(x, state)
        x.block_until_ready()
        elapsed += time.perf_counter() - t0
        if k % every == 0 or k == 1:
            rec["iter"].append(k)
            rec["gap"].append((pb["phi"](np.asarray(x))[0] - ref["value"]) / ref["value"])
            rec["time_s"].append(elapsed)
    gaps = np.asarray(rec["gap"])
    hit = np.flatnonzero(gaps <= 1e-2)
    return {"final_gap": float(gaps[-1]), "best_gap": float(np.nanmin(gaps)),
            "iters_to_target": int(rec["iter"][hit[0]]) if hit.size else None,
            "time_to_target_s": float(rec["time_s"][hit[0]]) if hit.size else None,
            "curve": rec, "version": getattr(jaxopt, "__version__", "0.8.x")}


# ---------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------
def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in ("ridge", "logreg", "cleaning", "svm", "lvhba-toy")
             if k in result["problems"]]
    fig, axes = plt.subplots(2, len(names), figsize=(4.5 * len(names), 8), squeeze=False)
    for j, name in enumerate(names):
        pr = result["problems"][name]
        runs = dict(pr["runs"])
        if isinstance(pr.get("jaxopt"), dict) and "curve" in pr["jaxopt"]:
            runs["JAXopt PG + implicit L-BFGS"] = pr["jaxopt"]
        for i, xkey in enumerate(("iter", "time_s")):
            ax = axes[i, j]
            for label, r in runs.items():
                c = r["curve"]
                g = np.maximum(np.asarray(c["gap"], dtype=float), 1e-16)
                ax.semilogy(c[xkey], g, label=label)
            ax.axhline(pr["target"], color="k", ls=":", lw=1, label="target")
            ax.set_xlabel("iteration" if xkey == "iter" else "wall time [s]")
            ax.set_ylabel(pr["metric"])
            ax.set_title(name)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def markdown(result):
    lines = ["# bilevel.solve with default settings against reference optima", "",
             f"Machine: {result['meta']['machine']}, {result['meta']['cpus']} CPUs; "
             f"maxiter {MAXITER}, rtol = atol = 0 (the whole budget).", ""]
    for name, pr in result["problems"].items():
        lines += [f"## {name}", "", f"metric: {pr['metric']}, target {pr['target']:g}", ""]
        if "reference" in pr:
            r = pr["reference"]
            lines += [f"reference Φ* = {r['value']:.12g} (L-BFGS-B, {r['iterations']} "
                      f"iterations, projected gradient {r['projected_grad']:.2g})", ""]
            if "rounds" in r:
                lines += [f"(restarted {r['rounds']} times from sampled better points; the "
                          f"first L-BFGS-B stop was {r['first_value']:.6g}; Φ has a kink at "
                          "the reference, so the projected gradient is one-sided)", ""]
        lines += ["| method | status | final | best | iterations to target | "
                  "time to target [s] |", "|---|---|---|---|---|---|"]
        runs = dict(pr["runs"])
        if isinstance(pr.get("jaxopt"), dict) and "curve" in pr["jaxopt"]:
            runs["JAXopt (PG + implicit-diff L-BFGS)"] = dict(pr["jaxopt"], status="-")
        for m, r in runs.items():
            tt = r["time_to_target_s"]
            lines.append(f"| {m} | {r['status']} | {r['final_gap']:.3g} | {r['best_gap']:.3g} "
                         f"| {r['iters_to_target'] or 'missed'} | "
                         f"{'missed' if tt is None else f'{tt:.3g}'} |")
        if isinstance(pr.get("jaxopt"), dict) and "skipped" in pr["jaxopt"]:
            lines.append(f"\nJAXopt: {pr['jaxopt']['skipped']}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 10 iterations per method, nothing written")
    parser.add_argument("--no-jaxopt", action="store_true")
    args = parser.parse_args(argv)
    maxiter = 10 if args.quick else MAXITER
    every = 1 if args.quick else 5
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "scipy": scipy.__version__,
            "loadavg_start": os.getloadavg()}
    t0 = time.perf_counter()
    problems = {}
    for name, make in (("ridge", ridge_problem), ("logreg", logreg_problem),
                       ("cleaning", cleaning_problem)):
        print(name)
        pb = make()
        ref = reference(pb)
        print(f"  reference Φ* = {ref['value']:.10g} ({ref['iterations']} it, projected "
              f"gradient {ref['projected_grad']:.2g})")
        problems[name] = {"metric": "(Φ(x) − Φ*)/Φ*", "target": 1e-2, "reference": ref,
                          "runs": run_hyper(pb, ref, maxiter, every)}
        if not args.no_jaxopt:
            problems[name]["jaxopt"] = run_jaxopt(pb, ref, maxiter, every)
            j = problems[name]["jaxopt"]
            print(f"  JAXopt: {j.get('skipped') or j['final_gap']}")
    print("svm")
    ref, runs = run_svm(maxiter, every)
    problems["svm"] = {"metric": "(Φ(x) − Φ*)/Φ*", "target": 1e-2, "reference": ref,
                       "runs": runs, "jaxopt": {"skipped": "constrained lower level"}}
    print("lvhba-toy")
    problems["lvhba-toy"] = {"metric": "||x − x*|| / ||x*||", "target": 1e-3,
                             "runs": run_toy(maxiter, every)}
    result = {"meta": meta, "problems": problems}
    result["meta"]["total_time_s"] = time.perf_counter() - t0
    result["meta"]["loadavg_end"] = os.getloadavg()
    if args.quick:
        return result
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bilevel_reference.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "bilevel_reference.md").write_text(markdown(result))
    plot(result, RESULTS / "bilevel_reference.png")
    print(f"wrote {RESULTS / 'bilevel_reference.json'} ({result['meta']['total_time_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
