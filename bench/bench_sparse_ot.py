"""Benchmark ``diffsolve.ot.sparse_ot`` / ``quadratic_ot`` against POT's ``ot.smooth``.

Run from the repository root::

    python -m bench.bench_sparse_ot            # full: n in {100, 200, 500, 1000}
    python -m bench.bench_sparse_ot --quick    # n in {100, 200}, under a minute

Problem: two Gaussian point clouds in 2-D (the second shifted by 0.5), squared-Euclidean
cost normalised to max 1, uniform weights, n = m. Both libraries maximise the same
smoothed dual or semi-dual (POT's ``reg`` is our ``gamma``, ``max_nz`` our ``k``) with
L-BFGS, side by side in one process, interleaved:

* POT: ``ot.smooth.smooth_ot_semi_dual`` / ``smooth_ot_dual`` with
  ``reg_type="sparsity_constrained"`` (``"l2"`` for quadratic OT), default
  ``stopThr=1e-9`` (SciPy's ``tol``), ``numItermax`` raised to 2000;
* diffsolve: ``sparse_ot(...)`` at its default ``rtol=1e-6`` (L1 marginal violation
  relative to the mass; L-BFGS, then Newton steps on the support), and ``rtol=1e-9`` as a
  second point.

Reported per case: median wall time of ``--repeats`` runs, the maximised objective of
each (POT: ``-res.fun``), their difference, the L1 marginal error of each plan (the one
shared error function ``diffsolve.ot._errors.marginal_error``), iterations, whether the
sparsity constraint binds, and the implicit backward (``diffsolve.vjp`` with cotangents
on ``plan`` and ``cost``) against one forward solve. The first call (Numba compile or
cache load) is timed apart. Machine load (``os.getloadavg``) is recorded: on a shared
machine absolute times are noisy, the interleaved ratios less so.

Results: ``bench/results/sparse_ot_cpu.json`` and ``sparse_ot_cpu.png``.
"""

from __future__ import annotations

import os

# One BLAS thread for both libraries, set before NumPy loads OpenBLAS: SciPy's L-BFGS-B
# calls BLAS on tiny vectors every iteration, and on a shared 2-core machine OpenBLAS's
# spinning threads made each call ~10 ms instead of ~0.1 ms (measured), for POT and
# diffsolve alike. Numba's kernels keep their own threads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402 - after the BLAS thread settings
import contextlib  # noqa: E402 - after the BLAS thread settings
import io  # noqa: E402 - after the BLAS thread settings
import json  # noqa: E402 - after the BLAS thread settings
import platform  # noqa: E402 - after the BLAS thread settings
import statistics  # noqa: E402 - after the BLAS thread settings
import time  # noqa: E402 - after the BLAS thread settings
import warnings  # noqa: E402 - after the BLAS thread settings
from pathlib import Path  # noqa: E402 - after the BLAS thread settings

import numpy as np  # noqa: E402 - after the BLAS thread settings

from bench._common import add_cache_and_output_args, numba_cache  # noqa: E402 - after the BLAS thread settings
from bench._ot_problems import timed  # noqa: E402 - after the BLAS thread settings

RESULTS = Path(__file__).resolve().parent / "results"


def cloud_problem(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) + 0.5
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    C /= C.max()
    return np.full(n, 1.0 / n), np.full(n, 1.0 / n), C


def run_pot(a, b, C, k, gamma, formulation):
    import ot

    solve = ot.smooth.smooth_ot_semi_dual if formulation == "semi-dual" else \
        ot.smooth.smooth_ot_dual
    reg_type = "l2" if k is None else "sparsity_constrained"
    # POT 0.9.7 prints a shape in its sparse projection and passes SciPy's deprecated disp
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        G, log = solve(a, b, C, gamma, reg_type=reg_type, max_nz=k, log=True,
                       numItermax=2000)
    return G, -float(log["res"].fun), int(log["res"].nit)


def run_ours(a, b, C, k, gamma, formulation, tol):
    import diffsolve.ot as dot

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if k is None:
            return dot.quadratic_ot(a, b, C, gamma, formulation=formulation, rtol=tol,
                                    maxiter=2000)
        return dot.sparse_ot(a, b, C, k, gamma, formulation=formulation, rtol=tol,
                             maxiter=2000)


def one_case(n, k, gamma, formulation, repeats):
    import array_api_compat.numpy as xnp

    import diffsolve as ds
    import diffsolve.ot as dot
    from diffsolve.ot._errors import marginal_error

    a, b, C = cloud_problem(n)
    t_pot = t_ours = t_strict = 0.0
    pot = ours = strict = None
    tp, to, ts = [], [], []
    for _ in range(repeats):  # interleaved, so that load changes hit both alike
        t, pot = timed(lambda: run_pot(a, b, C, k, gamma, formulation), 1)
        tp.append(t)
        t, ours = timed(lambda: run_ours(a, b, C, k, gamma, formulation, 1e-6), 1)
        to.append(t)
        t, strict = timed(lambda: run_ours(a, b, C, k, gamma, formulation, 1e-9), 1)
        ts.append(t)
    t_pot, t_ours, t_strict = (statistics.median(x) for x in (tp, to, ts))
    G, pot_value, pot_nit = pot
    fn = dot.quadratic_ot if k is None else dot.sparse_ot
    args = (a, b, C, gamma) if k is None else (a, b, C, k, gamma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        _, f_vjp = ds.vjp(fn, *args, formulation=formulation, maxiter=2000)
        t_fwd = time.perf_counter() - t0
    w = np.random.default_rng(1).normal(size=C.shape)
    t_bwd, _ = timed(lambda: f_vjp(plan=w, cost=np.asarray(1.0)), max(1, repeats))

    def err(P):
        return float(marginal_error(xnp.asarray(P), xnp.asarray(a), xnp.asarray(b), xnp))

    return {
        "n": n, "k": k, "gamma": gamma, "formulation": formulation,
        "pot_s": t_pot, "ours_s": t_ours, "ours_tol1e-9_s": t_strict,
        "speedup": t_pot / t_ours, "speedup_tol1e-9": t_pot / t_strict,
        "pot_objective": pot_value, "ours_objective": float(ours.dual_value),
        "ours_tol1e-9_objective": float(strict.dual_value),
        "objective_diff": float(ours.dual_value) - pot_value,
        "objective_diff_tol1e-9": float(strict.dual_value) - pot_value,
        "pot_error_l1": err(G), "ours_error_l1": float(ours.error),
        "ours_tol1e-9_error_l1": float(strict.error),
        "ours_tol1e-9_converged": bool(strict.converged),
        "pot_iters": pot_nit, "ours_iters": int(ours.n_iters),
        "ours_converged": bool(ours.converged), "binding": bool(ours.binding),
        "plan_max_abs_diff": float(np.abs(G - ours.plan).max()),
        "max_nnz_per_column": int((ours.plan > 0).sum(axis=0).max()),
        "forward_for_vjp_s": t_fwd, "backward_s": t_bwd,
        "backward_over_forward": t_bwd / t_ours,
    }


def plot(cases, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(c["k"] or 0, c["gamma"], c["formulation"]) for c in cases})
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
    for ax, (k, gamma, form) in zip(axes[0], keys):
        sel = sorted((c for c in cases if (c["k"] or 0, c["gamma"], c["formulation"])
                      == (k, gamma, form)), key=lambda c: c["n"])
        ns = [c["n"] for c in sel]
        ax.loglog(ns, [c["pot_s"] for c in sel], "o-", label="POT ot.smooth")
        ax.loglog(ns, [c["ours_s"] for c in sel], "s-", label="diffsolve tol 1e-6")
        ax.loglog(ns, [c["ours_tol1e-9_s"] for c in sel], "^--", label="diffsolve tol 1e-9")
        ax.loglog(ns, [c["backward_s"] for c in sel], "x:", label="diffsolve backward")
        ax.set_title(f"{'quadratic' if k == 0 else f'k={k}'} γ={gamma} {form}", fontsize=8)
        ax.set_xlabel("n = m")
    axes[0][0].set_ylabel("seconds")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n in {100, 200}, one config each")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    add_cache_and_output_args(parser, RESULTS)
    args = parser.parse_args(argv)
    sizes = args.sizes or ([100, 200] if args.quick else [100, 200, 500, 1000])
    configs = [(2, 0.1), (5, 0.1), (20, 0.01), (None, 0.1)]  # k = 2 binds: a kink
    formulations = ["semi-dual", "dual"]
    if args.quick:
        configs, args.repeats = [(5, 0.1), (None, 0.1)], 1
    with numba_cache(args.warm_cache):
        import diffsolve.ot as dot

        a, b, C = cloud_problem(50, seed=3)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for form in formulations:
                dot.sparse_ot(a, b, C, 5, 0.1, formulation=form)
        first_call = time.perf_counter() - t0
        cases = []
        for n in sizes:
            for k, gamma in configs:
                for form in formulations:
                    reps = args.repeats if n <= 200 else 1
                    c = one_case(n, k, gamma, form, reps)
                    c["repeats"] = reps
                    c["load_after"] = os.getloadavg()[0]
                    cases.append(c)
                    print(f"n={n:5d} k={k} gamma={gamma} {form:9s} POT {c['pot_s']:.3f}s "
                          f"ours {c['ours_s']:.3f}s ({c['speedup']:.2f}x; tol 1e-9 "
                          f"{c['speedup_tol1e-9']:.2f}x) obj diff {c['objective_diff']:.1e} "
                          f"err POT {c['pot_error_l1']:.1e} ours {c['ours_error_l1']:.1e} "
                          f"binding {c['binding']} bwd/fwd {c['backward_over_forward']:.2f}",
                          flush=True)
    import ot
    import scipy

    meta = {
        "machine": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "loadavg_start_end": os.getloadavg(),
        "numpy": np.__version__, "scipy": scipy.__version__, "pot": ot.__version__,
        "first_call_compile_s": first_call, "warm_cache": args.warm_cache,
        "quick": args.quick,
        "note": "objectives are the maximised (semi-)dual values; errors the L1 marginal "
                "violation ||P1-a||_1 + ||P^T1-b||_1 of each returned plan",
    }
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    name = "sparse_ot_cpu_quick" if args.quick else "sparse_ot_cpu"
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "cases": cases}, indent=2))
    plot(cases, out / f"{name}.png")
    print(f"wrote {out / (name + '.json')}")


if __name__ == "__main__":
    main()
