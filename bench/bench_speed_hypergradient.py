"""Hypergradient speed against JAXopt's implicit differentiation (jit), issue 14 item 4.

Ridge and logistic regression, a scalar log-regularisation ``x`` (shape (1,)), ``p`` = 100
and 1000 features, ``n`` = 500 training and 500 validation samples, float64. The inner
solution ``w*`` is computed once beforehand; both sides differentiate through it:

* **JAXopt**: ``jaxopt.implicit_diff.custom_root`` on the optimality condition
  ``∇_w inner = 0`` with ``jaxopt.linear_solve.solve_cg`` (the same relative tolerance),
  the whole hypergradient ``jax.jit``-compiled; its compile time is reported apart.
* **diffsolve**, :func:`diffsolve.bilevel.hypergradient` (implicit-cg, ``rtol`` the same)
  three ways: JAX arrays with ``jax.numpy`` objectives (derivatives from ``jax.vjp``,
  jitted by diffsolve); NumPy arrays with ``autograd.numpy`` objectives (the autograd
  default); NumPy arrays with hand-written ``outer_grad`` / ``inner_hvp``.

Timings are interleaved pairs (JAXopt, diffsolve) in one process; the ratio is
JAXopt time ÷ diffsolve time (above 1: diffsolve is faster), min and median over the pairs.
The first call of each is timed apart ("first", compile / trace / cache fill).

Results: ``bench/results/speed_hypergradient.{json,md}`` (``--tag`` names a run, e.g.
``before`` / ``after``; the files keep one entry per tag).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-10


def make_data(p, n=500, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) / np.sqrt(p)
    Xv = rng.standard_normal((n, p)) / np.sqrt(p)
    w_true = rng.standard_normal(p)
    y = X @ w_true + 0.1 * rng.standard_normal(n)
    yv = Xv @ w_true + 0.1 * rng.standard_normal(n)
    return X, y, Xv, yv


def objectives(kind, lib, X, y, Xv, yv):
    """``(outer, inner)`` written with ``lib`` (``jax.numpy`` or ``autograd.numpy``)."""
    n = X.shape[0]
    if kind == "ridge":
        def inner(x, w):
            r = X @ w - y
            return 0.5 * lib.sum(r * r) / n + 0.5 * lib.exp(x[0]) * lib.sum(w * w)

        def outer(x, w):
            r = Xv @ w - yv
            return 0.5 * lib.sum(r * r) / n
        return outer, inner
    lab, labv = (y > 0) * 1.0, (yv > 0) * 1.0

    def inner(x, w):
        z = X @ w
        return lib.sum(lib.logaddexp(0.0, z) - lab * z) / n + \
            0.5 * lib.exp(x[0]) * lib.sum(w * w)

    def outer(x, w):
        z = Xv @ w
        return lib.sum(lib.logaddexp(0.0, z) - labv * z) / n
    return outer, inner


def handwritten(kind, lib, X, y, Xv, yv):
    """``outer_grad`` and ``inner_hvp`` for :func:`objectives`, written with ``lib``
    (NumPy, or ``jax.numpy`` for JAX arrays)."""
    n = X.shape[0]

    def mixed(x, w, v, lam):
        return lib.reshape(lam * lib.sum(w * v), (1,))

    if kind == "ridge":
        def outer_grad(x, w):
            return lib.zeros(1), Xv.T @ (Xv @ w - yv) / n

        def inner_hvp(x, w, v):
            lam = lib.exp(x[0])
            return mixed(x, w, v, lam), X.T @ (X @ v) / n + lam * v
        return outer_grad, inner_hvp
    labv = (yv > 0) * 1.0

    def sig(z):
        return 0.5 * (1.0 + lib.tanh(0.5 * z))

    def outer_grad(x, w):
        return lib.zeros(1), Xv.T @ (sig(Xv @ w) - labv) / n

    def inner_hvp(x, w, v):
        lam = lib.exp(x[0])
        s = sig(X @ w)
        return mixed(x, w, v, lam), X.T @ (s * (1 - s) * (X @ v)) / n + lam * v
    return outer_grad, inner_hvp


def inner_solution(kind, X, y, x):
    """``w*(x)`` to machine precision (Newton on the float64 problem)."""
    import autograd
    import autograd.numpy as anp

    _, inner = objectives(kind, anp, X, y, X, y)
    g = autograd.grad(inner, 1)
    H = autograd.hessian(inner, 1)
    w = np.zeros(X.shape[1])
    for _ in range(30):
        step = np.linalg.solve(H(x, w), g(x, w))
        w = w - step
        if np.linalg.norm(step) <= 1e-15 * max(1.0, np.linalg.norm(w)):
            break
    return w


def jaxopt_hypergradient(outer, inner):
    import jax
    from jaxopt.implicit_diff import custom_root
    from jaxopt.linear_solve import solve_cg

    grad_w = jax.grad(inner, 1)

    def optimality(w, x):
        return grad_w(x, w)

    def cg(matvec, b):
        return solve_cg(matvec, b, tol=RTOL, maxiter=10 * b.shape[0])

    @custom_root(optimality, solve=cg)
    def solver(w_init, x):
        return w_init  # w* is given: only its derivative is wanted

    return jax.jit(jax.grad(lambda x, w: outer(x, solver(w, x))))


def time_pairs(a, b, pairs):
    """Interleaved ``(a, b)`` timings: lists of seconds."""
    ta, tb = [], []
    for _ in range(pairs):
        for fn, acc in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return ta, tb


def first(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_case(kind, p, pairs, only=None):
    import autograd.numpy as anp
    import jax.numpy as jnp

    import diffsolve as ds

    X, y, Xv, yv = make_data(p)
    x = np.array([np.log(0.1)])
    w = inner_solution(kind, X, y, x)
    J = [jnp.asarray(a) for a in (X, y, Xv, yv)]
    j_outer, j_inner = objectives(kind, jnp, *J)
    a_outer, a_inner = objectives(kind, anp, X, y, Xv, yv)
    outer_grad, inner_hvp = handwritten(kind, np, X, y, Xv, yv)
    j_outer_grad, j_inner_hvp = handwritten(kind, jnp, *J)
    xj, wj = jnp.asarray(x), jnp.asarray(w)

    peer = jaxopt_hypergradient(j_outer, j_inner)
    ref, peer_first = first(lambda: peer(xj, wj).block_until_ready())
    ref = np.asarray(ref)
    variants = {
        "jax": lambda: ds.bilevel.hypergradient(j_outer, j_inner, xj, wj,
                                                rtol=RTOL).block_until_ready(),
        "autograd": lambda: ds.bilevel.hypergradient(a_outer, a_inner, x, w, rtol=RTOL),
        "handwritten": lambda: ds.bilevel.hypergradient(
            a_outer, a_inner, x, w, rtol=RTOL, outer_grad=outer_grad, inner_hvp=inner_hvp),
        "jax-handwritten": lambda: ds.bilevel.hypergradient(
            j_outer, j_inner, xj, wj, rtol=RTOL, outer_grad=j_outer_grad,
            inner_hvp=j_inner_hvp).block_until_ready(),
    }
    if only:
        variants = {k: v for k, v in variants.items() if k in only}
    row = {"kind": kind, "p": p, "jaxopt_first_s": peer_first, "variants": {}}
    for name, fn in variants.items():
        g, t_first = first(fn)
        err = float(np.linalg.norm(np.asarray(g) - ref) / np.linalg.norm(ref))
        t_peer, t_ds = time_pairs(lambda: peer(xj, wj).block_until_ready(), fn, pairs)
        ratios = [a / b for a, b in zip(t_peer, t_ds)]
        row["variants"][name] = {
            "first_s": t_first, "rel_diff_vs_jaxopt": err,
            "diffsolve_min_s": min(t_ds), "diffsolve_median_s": statistics.median(t_ds),
            "jaxopt_min_s": min(t_peer), "jaxopt_median_s": statistics.median(t_peer),
            "ratio_min": min(t_peer) / min(t_ds), "ratio_median": statistics.median(ratios),
        }
        v = row["variants"][name]
        print(f"{kind:>8} p={p:<5} {name:>15}: diffsolve {v['diffsolve_median_s'] * 1e3:8.3f} ms"
              f" (first {t_first * 1e3:8.1f} ms), jaxopt {v['jaxopt_median_s'] * 1e3:7.3f} ms"
              f" (first {peer_first * 1e3:7.1f} ms); ratio min {v['ratio_min']:.3f} median "
              f"{v['ratio_median']:.3f}; rel diff {err:.1e}", flush=True)
    return row


def solve_rows(repeats=3, maxiter=20):
    """``bilevel.solve`` with JAX arrays, called ``repeats`` times on the same functions
    (ridge, p = 100): the first call compiles, the later ones should not."""
    import warnings

    import jax.numpy as jnp

    import diffsolve as ds

    J = [jnp.asarray(a) for a in make_data(100)]
    outer, inner = objectives("ridge", jnp, *J)
    rows = {}
    for method in ("implicit", "penalty"):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                # a timing run: the short budget ends above atol, which warns each time
                warnings.simplefilter("ignore", ds.ConvergenceWarning)
                res = ds.bilevel.solve(outer, inner, jnp.asarray([np.log(0.1)]),
                                       jnp.zeros(100), method=method, maxiter=maxiter)
            times.append(time.perf_counter() - t0)
        rows[method] = {"seconds": times, "x": float(np.asarray(res.x)[0])}
        print(f"bilevel.solve JAX arrays {method:>9}, {maxiter} iterations: calls "
              + " ".join(f"{t:.3f}" for t in times) + " s", flush=True)
    return rows


def write_md(all_runs, path):
    lines = ["# Hypergradient speed: JAXopt (jit) ÷ diffsolve", "",
             "Implicit-cg at rtol 1e-10, float64, n = 500 samples; ratio above 1: diffsolve "
             "faster. Medians of interleaved pairs; first calls (compile / trace) apart.",
             "Paths: `jax` = JAX arrays, derivatives from jax.vjp; `jax-handwritten` = JAX "
             "arrays with jax.numpy outer_grad / inner_hvp; `autograd` = NumPy arrays, HIPS "
             "autograd; `handwritten` = NumPy arrays with NumPy outer_grad / inner_hvp. "
             "`before` is the code before issue 14 item 4 (`meta.diffsolve_from` in the JSON "
             "says which tree ran). The NumPy rows at p = 1000 swing by 10x or more with the "
             "load of the shared 2-core machine (BLAS threads); compare them within a run.",
             ""]
    for tag, run in all_runs.items():
        lines += [f"## {tag} ({run['meta']['date']}, load {run['meta']['loadavg_start']})", "",
                  "| problem | p | diffsolve path | diffsolve ms | JAXopt ms | ratio min | "
                  "ratio median | diffsolve first ms | JAXopt first ms |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in run["rows"]:
            for name, v in row["variants"].items():
                lines.append(
                    f"| {row['kind']} | {row['p']} | {name} | "
                    f"{v['diffsolve_median_s'] * 1e3:.3f} | {v['jaxopt_median_s'] * 1e3:.3f} | "
                    f"{v['ratio_min']:.3f} | {v['ratio_median']:.3f} | "
                    f"{v['first_s'] * 1e3:.1f} | {row['jaxopt_first_s'] * 1e3:.1f} |")
        lines.append("")
        if run.get("solve"):
            lines += ["`bilevel.solve` with JAX arrays (ridge, p = 100, 20 iterations), seconds "
                      "per call, same functions each call:", ""]
            for method, v in run["solve"].items():
                lines.append(f"- {method}: " + ", ".join(f"{t:.3f}" for t in v["seconds"]))
            lines.append("")
    path.write_text("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tag", default="after")
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--ps", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--kinds", nargs="+", default=["ridge", "logistic"])
    parser.add_argument("--variants", nargs="+", default=None,
                        help="only these diffsolve paths (jax, autograd, handwritten, "
                        "jax-handwritten)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--solve", action="store_true",
                        help="also time bilevel.solve with JAX arrays over repeated calls")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the diffsolve source tree to time (default: this checkout, "
                        "whatever an installed copy points to)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.root))
    import jax

    jax.config.update("jax_enable_x64", True)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "jax": jax.__version__, "loadavg_start": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "pairs": args.pairs, "rtol": RTOL}
    import diffsolve

    meta["diffsolve_from"] = str(Path(diffsolve.__file__).parent)
    rows = [run_case(k, p, args.pairs, args.variants) for k in args.kinds for p in args.ps]
    solve = solve_rows() if args.solve else None
    meta["loadavg_end"] = os.getloadavg()
    if args.no_write:
        return
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "speed_hypergradient.json"
    all_runs = json.loads(path.read_text()) if path.exists() else {}
    all_runs[args.tag] = {"meta": meta, "rows": rows, "solve": solve}
    path.write_text(json.dumps(all_runs, indent=2))
    write_md(all_runs, RESULTS / "speed_hypergradient.md")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
