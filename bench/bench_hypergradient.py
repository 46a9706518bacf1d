"""Benchmark ``diffsolve.bilevel.hypergradient``: implicit-cg, neumann and unrolled.

Run from the repository root::

    python -m bench.bench_hypergradient          # about three minutes on 2 CPU cores
    python -m bench.bench_hypergradient --quick  # smoke run, nothing written

Problem, with a closed-form hypergradient: ridge regression with one penalty per feature, λ =
exp(θ), inner ``g(θ, w) = ½||Xw − y||² + ½Σλᵢwᵢ²``, outer ``f(θ, w) = ½||X_v w − y_v||²``,
closed form ``∇_θ L = −λ ⊙ w* ⊙ H⁻¹X_vᵀ(X_v w* − y_v)`` with ``H = XᵀX + diag(λ)``. X has
singular values spread geometrically so that ``κ(H)`` is a few hundred: gradient descent then
needs thousands of steps, which is where the methods differ. Everything is float64,
objectives written with autograd.numpy, every method measured in this one process:

* **T sweep** (inner iterations): the inner problem is solved by T gradient-descent
  steps from w = 0 with α = 1/L. implicit-cg and neumann get that ``w_T`` (CG to
  rtol 1e-12; 6000 Neumann terms, about 1e-9 truncation error here) and their time
  includes the T inner steps; unrolled differentiates the same T steps.
* **K sweep** (linear-solve iterations) at the exact ``w*``: CG iterations (implicit-cg)
  or Neumann terms (neumann) against the relative error.
* **Memory**: tracemalloc peak of one hypergradient call (inner solve excluded), in
  separate runs (tracemalloc slows allocation).
* **Target**: implicit-cg at an inner solution accurate enough for 1e-8, its time
  against one inner solve, and the smallest T at which unrolled reaches the same error,
  with its time and memory. One inner solve is timed two ways: gradient descent to
  ``||∇_w g|| <= 1e-11 ||∇_w g(0)||`` (the solver unrolled differentiates) and SciPy
  Newton-CG with autograd Hessian-vector products (a fast second-order inner solver).

Results: ``bench/results/hypergradient.json`` and ``bench/results/hypergradient.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

import autograd
import autograd.numpy as anp
import numpy as np
import scipy
import scipy.optimize

import diffsolve as ds

RESULTS = Path(__file__).resolve().parent / "results"


def make_problem(n=200, n_val=200, p=50, cond_x=20.0, seed=0):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, p)))
    V, _ = np.linalg.qr(rng.standard_normal((p, p)))
    X = (U * np.geomspace(cond_x, 1.0, p)) @ V.T
    Xv = rng.standard_normal((n_val, p)) * np.geomspace(cond_x, 1.0, p) / np.sqrt(n_val)
    w_true = rng.standard_normal(p)
    y = X @ w_true + 0.1 * rng.standard_normal(n)
    yv = Xv @ w_true + 0.1 * rng.standard_normal(n_val)
    theta = np.log(0.5) + 0.3 * rng.standard_normal(p)

    def inner(t, w):
        return 0.5 * anp.sum((X @ w - y) ** 2) + 0.5 * anp.sum(anp.exp(t) * w ** 2)

    def outer(t, w):
        return 0.5 * anp.sum((Xv @ w - yv) ** 2)

    lam = np.exp(theta)
    H = X.T @ X + np.diag(lam)
    w_star = np.linalg.solve(H, X.T @ y)
    closed = -lam * w_star * np.linalg.solve(H, Xv.T @ (Xv @ w_star - yv))
    eig = np.linalg.eigvalsh(H)
    return {"inner": inner, "outer": outer, "theta": theta, "w_star": w_star,
            "closed": closed, "L": float(eig.max()), "mu": float(eig.min()), "p": p,
            "n": n, "n_val": n_val}


def rel_error(g, ref) -> float:
    return float(np.linalg.norm(g - ref) / np.linalg.norm(ref))


def timed(fn, repeats=1):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def peak_memory(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def gradient_descent(prob, T):
    grad = autograd.grad(prob["inner"], 1)
    alpha = 1.0 / prob["L"]
    w = np.zeros(prob["p"])
    for _ in range(T):
        w = w - alpha * grad(prob["theta"], w)
    return w


def gd_to_tolerance(prob, gtol_rel):
    grad = autograd.grad(prob["inner"], 1)
    alpha = 1.0 / prob["L"]
    w = np.zeros(prob["p"])
    g = grad(prob["theta"], w)
    g0 = np.linalg.norm(g)
    it = 0
    while np.linalg.norm(g) > gtol_rel * g0:
        w = w - alpha * g
        g = grad(prob["theta"], w)
        it += 1
    return w, it


def newton_cg(prob):
    """SciPy Newton-CG with autograd gradients and Hessian-vector products.

    (L-BFGS-B was tried first: its stopping test on the decrease of f limits w to about
    1e-8 relative accuracy here, not enough for a 1e-8 hypergradient.)
    """
    theta = prob["theta"]
    vg = autograd.value_and_grad(prob["inner"], 1)
    grad = autograd.grad(prob["inner"], 1)

    def hessp(w, v):
        return autograd.make_vjp(lambda w_: grad(theta, w_))(w)[0](v)

    out = scipy.optimize.minimize(lambda w: vg(theta, w), np.zeros(prob["p"]), jac=True,
                                  hessp=hessp, method="Newton-CG",
                                  options={"xtol": 1e-10, "maxiter": 1000})
    return out.x, int(out.nit), int(out.nhev)


def hg(prob, w, method, **kw):
    # the sweeps are fixed budgets (maxiter K or T with rtol=0: no warning); an
    # implicit-cg that stops above rtol=1e-12 says so
    return ds.bilevel.hypergradient(prob["outer"], prob["inner"], prob["theta"], w,
                                    method=method, **kw)


def t_sweep(prob, Ts, neumann_terms):
    alpha = 1.0 / prob["L"]
    rows = []
    for T in Ts:
        w_T, t_inner = timed(lambda T=T: gradient_descent(prob, T), repeats=1 if T > 2000 else 3)
        row = {"T": T, "inner_s": t_inner,
               "inner_rel_error": float(np.linalg.norm(w_T - prob["w_star"]) /
                                        np.linalg.norm(prob["w_star"]))}
        g, t = timed(lambda w_T=w_T: hg(prob, w_T, "implicit-cg", rtol=1e-12), repeats=3)
        row["implicit-cg"] = {"rel_error": rel_error(g, prob["closed"]), "hg_s": t,
                              "total_s": t + t_inner}
        g, t = timed(lambda w_T=w_T: hg(prob, w_T, "neumann", maxiter=neumann_terms, rtol=0.0,
                                        stepsize=alpha), repeats=1)
        row["neumann"] = {"rel_error": rel_error(g, prob["closed"]), "hg_s": t,
                          "total_s": t + t_inner}
        g, t = timed(lambda T=T: hg(prob, np.zeros(prob["p"]), "unrolled", maxiter=T,
                                    stepsize=alpha), repeats=1 if T > 2000 else 3)
        row["unrolled"] = {"rel_error": rel_error(g, prob["closed"]), "total_s": t}
        rows.append(row)
        print(f"{T:>6} {row['inner_rel_error']:>10.2e} "
              f"{row['implicit-cg']['rel_error']:>10.2e} {row['implicit-cg']['total_s']:>8.3f} "
              f"{row['neumann']['rel_error']:>10.2e} {row['neumann']['total_s']:>8.3f} "
              f"{row['unrolled']['rel_error']:>10.2e} {row['unrolled']['total_s']:>8.3f}",
              flush=True)
    return rows


def k_sweep(prob, Ks):
    alpha = 1.0 / prob["L"]
    rows = []
    for K in Ks:
        row = {"K": K}
        # rtol = 0: exactly K products each (a fixed budget)
        for method, kw in (("implicit-cg", {"maxiter": K, "rtol": 0.0}),
                           ("neumann", {"maxiter": K, "stepsize": alpha, "rtol": 0.0})):
            g, t = timed(lambda kw=kw, method=method: hg(prob, prob["w_star"], method, **kw),
                         repeats=5 if K <= 1000 else 3)
            row[method] = {"rel_error": rel_error(g, prob["closed"]), "hg_s": t}
        rows.append(row)
        print(f"{K:>6} {row['implicit-cg']['rel_error']:>10.2e} "
              f"{row['implicit-cg']['hg_s'] * 1e3:>9.2f} {row['neumann']['rel_error']:>10.2e} "
              f"{row['neumann']['hg_s'] * 1e3:>9.2f}", flush=True)
    return rows


def memory(prob, Ts, neumann_terms):
    alpha = 1.0 / prob["L"]
    w = prob["w_star"]
    out = {
        "implicit-cg_bytes": peak_memory(lambda: hg(prob, w, "implicit-cg", rtol=1e-12)),
        "neumann_bytes": peak_memory(lambda: hg(prob, w, "neumann", maxiter=neumann_terms, rtol=0.0,
                                                stepsize=alpha)),
        "unrolled_bytes": {},
    }
    for T in Ts:
        out["unrolled_bytes"][T] = peak_memory(
            lambda T=T: hg(prob, np.zeros(prob["p"]), "unrolled", maxiter=T, stepsize=alpha))
        print(f"unrolled T={T:>6}: peak {out['unrolled_bytes'][T] / 2**20:8.2f} MiB", flush=True)
    print(f"implicit-cg: peak {out['implicit-cg_bytes'] / 2**20:.3f} MiB; neumann "
          f"({neumann_terms} terms): {out['neumann_bytes'] / 2**20:.3f} MiB")
    return out


def target(prob, t_rows, mem):
    (w_gd, it_gd), t_gd = timed(lambda: gd_to_tolerance(prob, 1e-11), repeats=1)
    (w_nt, it_nt, hv_nt), t_nt = timed(lambda: newton_cg(prob), repeats=3)
    out = {"inner_gd": {"iterations": it_gd, "seconds": t_gd, "gtol_rel": 1e-11},
           "inner_newton_cg": {"iterations": it_nt, "hessian_products": hv_nt,
                               "seconds": t_nt}}
    for name, w, t_inner in (("gd", w_gd, t_gd), ("newton_cg", w_nt, t_nt)):
        g, t = timed(lambda w=w: hg(prob, w, "implicit-cg", rtol=1e-12), repeats=5)
        err = rel_error(g, prob["closed"])
        out[f"implicit-cg_at_{name}"] = {"rel_error": err, "hg_s": t,
                                         "hg_over_inner_solve": t / t_inner}
    err_ref = out["implicit-cg_at_gd"]["rel_error"]
    reach = [r for r in t_rows if r["unrolled"]["rel_error"] <= max(err_ref, 1e-8)]
    if reach:
        r = reach[0]
        out["unrolled_same_accuracy"] = {
            "T": r["T"], "rel_error": r["unrolled"]["rel_error"],
            "seconds": r["unrolled"]["total_s"],
            "peak_bytes": mem["unrolled_bytes"].get(r["T"]),
            "peak_over_implicit": (mem["unrolled_bytes"][r["T"]] / mem["implicit-cg_bytes"]
                                   if r["T"] in mem["unrolled_bytes"] else None),
            "time_over_implicit_total": r["unrolled"]["total_s"] /
            (t_gd + out["implicit-cg_at_gd"]["hg_s"]),
        }
    else:
        best = min(t_rows, key=lambda r: r["unrolled"]["rel_error"])
        out["unrolled_same_accuracy"] = {"reached": False, "best_T": best["T"],
                                         "best_rel_error": best["unrolled"]["rel_error"]}
    return out


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(11, 8.5))
    rows = result["t_sweep"]
    Ts = [r["T"] for r in rows]
    styles = {"implicit-cg": "o-", "neumann": "s--", "unrolled": "^-"}
    colors = {"implicit-cg": "C0", "neumann": "C1", "unrolled": "C2"}
    for m in styles:
        ax[0, 0].loglog(Ts, [max(r[m]["rel_error"], 1e-16) for r in rows], styles[m],
                        color=colors[m], label=m)
        ax[0, 1].loglog(Ts, [r[m]["total_s"] for r in rows], styles[m], color=colors[m],
                        label=m)
    ax[0, 1].loglog(Ts, [r["inner_s"] for r in rows], "k:", label="inner GD alone")
    ax[0, 0].set(xlabel="inner gradient-descent steps T", ylabel="relative error vs closed form",
                 title="accuracy vs inner iterations")
    ax[0, 1].set(xlabel="inner gradient-descent steps T", ylabel="seconds (inner + hypergradient)",
                 title="time vs inner iterations")
    krows = result["k_sweep"]
    Ks = [r["K"] for r in krows]
    for m in ("implicit-cg", "neumann"):
        ax[1, 0].loglog(Ks, [max(r[m]["rel_error"], 1e-16) for r in krows], styles[m],
                        color=colors[m], label=m)
    ax[1, 0].axhline(1e-8, color="grey", lw=0.8)
    ax[1, 0].set(xlabel="linear-solve iterations K (CG steps / Neumann terms)",
                 ylabel="relative error at exact w*", title="accuracy vs linear-solve iterations")
    mem = result["memory"]
    unrolled = {int(t): b for t, b in mem["unrolled_bytes"].items()}  # JSON keys are strings
    mT = sorted(unrolled)
    ax[1, 1].loglog(mT, [unrolled[t] / 2**20 for t in mT], "^-", color="C2", label="unrolled")
    ax[1, 1].axhline(mem["implicit-cg_bytes"] / 2**20, color="C0", label="implicit-cg")
    ax[1, 1].axhline(mem["neumann_bytes"] / 2**20, color="C1", ls="--", label="neumann")
    ax[1, 1].set(xlabel="unrolled steps T", ylabel="peak traced memory (MiB)",
                 title="memory of one hypergradient")
    for a in ax.flat:
        a.grid(True, which="both", alpha=0.3)
        a.legend()
    meta = result["meta"]
    fig.suptitle(f"Per-feature ridge hypergradient (p={meta['p']}, n={meta['n']}, "
                 f"κ(H)={meta['kappa']:.0f}), float64, {meta['cpus']} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--Ts", type=int, nargs="+",
                        default=[10, 30, 100, 300, 1000, 3000, 5000, 10000, 20000])
    parser.add_argument("--Ks", type=int, nargs="+",
                        default=[1, 3, 10, 30, 50, 100, 300, 1000, 3000, 10000])
    parser.add_argument("--memory-Ts", type=int, nargs="+",
                        default=[100, 1000, 5000, 10000, 20000])
    parser.add_argument("--neumann-terms", type=int, default=6000)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: a few T and K values, results not written")
    args = parser.parse_args(argv)
    if args.quick:
        args.Ts, args.Ks, args.memory_Ts, args.neumann_terms = [10, 300], [10, 100], [100], 300
    RESULTS.mkdir(exist_ok=True)
    prob = make_problem()
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "scipy": scipy.__version__, "p": prob["p"],
            "n": prob["n"], "n_val": prob["n_val"], "L": prob["L"], "mu": prob["mu"],
            "kappa": prob["L"] / prob["mu"], "neumann_terms": args.neumann_terms,
            "loadavg_start": os.getloadavg()}
    t0 = time.perf_counter()  # first call: imports and autograd's first traces
    hg(prob, prob["w_star"], "implicit-cg")
    meta["first_call_s"] = time.perf_counter() - t0
    print(f"ridge: p={prob['p']} n={prob['n']} κ(H)={meta['kappa']:.1f}; float64; first "
          f"implicit-cg call {meta['first_call_s']:.2f} s (not timed below); load "
          f"{meta['loadavg_start']}")
    # the K sweep first, and a collection between sections: the long unrolled tapes leave
    # the garbage collector with much to walk, which showed up as noise in later timings
    print("K sweep at exact w*: relative error / ms")
    print(f"{'K':>6} {'impl-cg':>10} {'ms':>9} {'neumann':>10} {'ms':>9}")
    k_rows = k_sweep(prob, args.Ks)
    gc.collect()
    print("T sweep (GD inner from 0, α = 1/L): relative error / seconds incl. the inner steps")
    print(f"{'T':>6} {'||w_T-w*||':>10} {'impl-cg':>10} {'s':>8} {'neumann':>10} {'s':>8} "
          f"{'unrolled':>10} {'s':>8}")
    t_rows = t_sweep(prob, args.Ts, args.neumann_terms)
    gc.collect()
    mem = memory(prob, args.memory_Ts, args.neumann_terms)
    gc.collect()
    tgt = target(prob, t_rows, mem)
    meta["loadavg_end"] = os.getloadavg()
    result = {"meta": meta, "t_sweep": t_rows, "k_sweep": k_rows, "memory": mem, "target": tgt}
    g = tgt["implicit-cg_at_gd"]
    print(f"target: inner GD to a 1e-11 relative gradient: {tgt['inner_gd']['iterations']} "
          f"steps, {tgt['inner_gd']['seconds']:.3f} s; implicit-cg there: error "
          f"{g['rel_error']:.2e}, {g['hg_s'] * 1e3:.1f} ms = {g['hg_over_inner_solve']:.3f} x "
          "the inner solve")
    g = tgt["implicit-cg_at_newton_cg"]
    nt = tgt["inner_newton_cg"]
    print(f"        inner Newton-CG: {nt['iterations']} iterations, {nt['hessian_products']} "
          f"Hessian products, {nt['seconds'] * 1e3:.1f} ms; implicit-cg there: error "
          f"{g['rel_error']:.2e}, {g['hg_s'] * 1e3:.1f} ms = {g['hg_over_inner_solve']:.2f} x")
    print(f"        unrolled at the same accuracy: {tgt['unrolled_same_accuracy']}")
    if args.quick:
        return
    (RESULTS / "hypergradient.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / "hypergradient.png")
    print(f"wrote {RESULTS / 'hypergradient.json'} and {RESULTS / 'hypergradient.png'}")


if __name__ == "__main__":
    main()
