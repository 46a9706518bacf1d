"""DCDM with the symmetric Gauss–Seidel smoother (``smoother="ssor"``) on issue 16's cases.

Run from the repository root (single-threaded BLAS, under the shared benchmark lock)::

    OPENBLAS_NUM_THREADS=1 flock /tmp/bench.lock python -m bench.bench_dcdm_smoothed
    python -m bench.bench_dcdm_smoothed --quick      # smoke test: small grids only
    python -m bench.bench_dcdm_smoothed --big        # adds 2-D 1024² and 3-D 96³, 128³

Every DCDM run uses a shipped model, unchanged: ``poisson2d-multilevel`` (constant
coefficient, Dirichlet walls, trained on 32², 64², 128²) on every 2-D case without
obstacles, ``poisson2d-64-obstacles`` (trained on 64², one layout) on unseen obstacle
layouts, ``poisson3d-multilevel`` (16³, 32³) in 3-D. The variable-coefficient and Neumann
cases are matrices the network never saw; the smoother reads them from A's entries.

Methods, all to ``rtol`` 1e-4 and 1e-6 from a Gaussian right-hand side (seeded):

* ``cg``, ``ic0-pcg`` (zero-fill incomplete Cholesky, ``bench.bench_dcdm``), ``amg-pcg``
  (PyAMG smoothed aggregation, one V-cycle) through SciPy's ``cg``;
* ``sgs-pcg``: ``diffsolve.linear.solve(method="ssor-cg")`` (ω = 1), the smoother alone
  as a preconditioner: what the network adds is the gap to this column;
* ``dcdm``: ``smoother=None``, the paper's method (its CG fallback marked ``fb``);
* ``dcdm+sgs``: ``smoother="ssor"``, each direction one two-level cycle.

Iterations and seconds per solve (median of ``--repeats``; preconditioner set-up and the
first call apart). Results: ``bench/results/dcdm_smoothed.json`` and ``.md``; plots
``dcdm_smoothed_sizes.png`` (iterations vs size) and ``dcdm_smoothed_residuals.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse.linalg as spla

import diffsolve as ds
from bench.bench_dcdm import ic0_preconditioner, scipy_cg_counted
from bench.train_dcdm_weights import (
    diffusion2d,
    lognormal_field,
    obstacle_mask,
    poisson2d,
    poisson3d,
)
from diffsolve.linear import DirectionFallbackWarning, pretrained_direction_model

RESULTS = Path(__file__).resolve().parent / "results"
RTOLS = (1e-4, 1e-6)
METHODS = ("cg", "ic0-pcg", "amg-pcg", "sgs-pcg", "dcdm", "dcdm+sgs")


def cases(quick, big):
    """``(group, name, A, grid, mask, model name)`` of every case."""
    ln, dif = lognormal_field, diffusion2d
    two, three = "poisson2d-multilevel", "poisson3d-multilevel"
    if quick:
        return [("table", "Poisson 32²", poisson2d(32), (32, 32), None, two),
                ("table", "log-normal σ=1.5, 32²", dif(ln(32, 1.5, seed=1000)), (32, 32),
                 None, two),
                ("3d", "Poisson 12³", poisson3d(12), (12,) * 3, None, three)]
    out = [("table", f"Poisson {s}²", poisson2d(s), (s, s), None, two)
           for s in (32, 96, 192, 256, 512)]
    out += [("table", f"log-normal σ=1.5, {s}²", dif(ln(s, 1.5, seed=seed)), (s, s), None, two)
            for s, seed in ((32, 1000), (96, 1001), (192, 1002))]
    out += [("table", "Neumann on three walls, 192²",
             dif(np.ones((192, 192)), neumann=("top", "left", "right")), (192, 192), None, two),
            ("table", "log-normal σ=1.0, Neumann left+top, 128²",
             dif(ln(128, 1.0, seed=1003), neumann=("left", "top")), (128, 128), None, two)]
    for s, seed in ((96, 11), (192, 12)):
        mask = obstacle_mask(s, seed=seed)
        out.append(("table", f"obstacles (unseen layout {seed}), {s}²", poisson2d(s, mask),
                    (s, s), mask, "poisson2d-64-obstacles"))
    out += [("2d", f"Poisson {s}²", poisson2d(s), (s, s), None, two) for s in (64, 128)]
    out += [("3d", f"Poisson {s}³", poisson3d(s), (s,) * 3, None, three)
            for s in (16, 32, 48, 64)]
    if big:
        out.append(("2d", "Poisson 1024²", poisson2d(1024), (1024, 1024), None, two))
        out += [("3d", f"Poisson {s}³", poisson3d(s), (s,) * 3, None, three) for s in (96, 128)]
    return out


def _scipy(A, b, rtol, M, maxiter):
    _, iterations, seconds, converged, rel = scipy_cg_counted(A, b, rtol, M, maxiter)
    return {"iterations": iterations, "seconds": seconds, "converged": converged,
            "rel_residual": rel}


def _diffsolve(A, b, rtol, maxiter, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        res = ds.linear.solve(A, b, rtol=rtol, maxiter=maxiter, **options)
        seconds = time.perf_counter() - t0
    fell = any(issubclass(w.category, DirectionFallbackWarning) for w in caught)
    return {"iterations": int(res.n_iters), "seconds": seconds, "converged": bool(res.converged),
            "fallback": fell,
            "rel_residual": float(np.linalg.norm(b - A @ res.x) / np.linalg.norm(b))}


def _history(A, b, run_one):
    """Relative true residual after every iteration of one run to 1e-6 (for the plot)."""
    bn = np.linalg.norm(b)
    hist: list[float] = []
    run_one(lambda x: hist.append(float(np.linalg.norm(b - A @ x) / bn)))
    return hist


def run_case(A, grid, mask, model, b, repeats, maxiter, dcdm_maxiter, skip, traces):
    """Every method on one matrix, both tolerances, median of ``repeats`` solves."""
    setup, preconditioner = {}, {}
    t0 = time.perf_counter()
    preconditioner["ic0-pcg"] = ic0_preconditioner(A)
    setup["ic0-pcg"] = time.perf_counter() - t0
    try:
        import pyamg

        t0 = time.perf_counter()
        preconditioner["amg-pcg"] = pyamg.smoothed_aggregation_solver(A).aspreconditioner(
            cycle="V")
        setup["amg-pcg"] = time.perf_counter() - t0
    except ImportError:  # the bench extra brings it; without it the column stays empty
        pass
    bound = model.on_grid(grid, mask)
    runners = {
        "cg": lambda rtol: _scipy(A, b, rtol, None, maxiter),
        "ic0-pcg": lambda rtol: _scipy(A, b, rtol, preconditioner["ic0-pcg"], maxiter),
        "amg-pcg": lambda rtol: _scipy(A, b, rtol, preconditioner["amg-pcg"], maxiter),
        "sgs-pcg": lambda rtol: _diffsolve(A, b, rtol, maxiter, method="ssor-cg"),
        "dcdm": lambda rtol: _diffsolve(A, b, rtol, dcdm_maxiter, method="dcdm", model=bound,
                                        smoother=None),
        "dcdm+sgs": lambda rtol: _diffsolve(A, b, rtol, maxiter, method="dcdm", model=bound,
                                            smoother="ssor"),
    }
    runs: dict = {}
    for method in METHODS:
        if method in skip or (method in ("ic0-pcg", "amg-pcg") and method not in preconditioner):
            continue
        for rtol in RTOLS:
            # DCDM is slow per iteration on the CPU: one solve where one takes seconds
            reps = 1 if method.startswith("dcdm") and A.shape[0] > 128 ** 2 else repeats
            got = [runners[method](rtol) for _ in range(reps)]
            best = got[0]
            best["seconds"] = statistics.median(g["seconds"] for g in got)
            best["repeats"] = reps
            runs.setdefault(method, {})[f"{rtol:g}"] = best
    history = {}
    if traces:
        history["cg"] = _history(A, b, lambda cb: spla.cg(A, b, rtol=1e-6, atol=0.0,
                                                          maxiter=maxiter, callback=cb))
        history["ic0-pcg"] = _history(A, b, lambda cb: spla.cg(
            A, b, rtol=1e-6, atol=0.0, maxiter=maxiter, M=preconditioner["ic0-pcg"],
            callback=cb))
        for label, options in (("sgs-pcg", {"method": "ssor-cg"}),
                               ("dcdm+sgs", {"method": "dcdm", "model": bound})):
            history[label] = _history(A, b, lambda cb, o=options: ds.linear.solve(
                A, b, rtol=1e-6, maxiter=maxiter, callback=lambda st: cb(st.x), **o))
    return {"setup_seconds": setup, "runs": runs, "history": history}


def markdown(out):
    def cell(row, method, rtol):
        run = row["runs"].get(method, {}).get(f"{rtol:g}")
        if run is None:
            return "–"
        text = str(run["iterations"])
        if run.get("fallback"):
            text += " fb"
        if not run["converged"]:
            text += " (not conv.)"
        return text

    def seconds(row, method, rtol):
        run = row["runs"].get(method, {}).get(f"{rtol:g}")
        return "–" if run is None else f"{run['seconds']:.3g}"

    lines = [
        "DCDM with and without the symmetric Gauss–Seidel smoother (`smoother=\"ssor\"`) "
        "against CG, IC(0)-PCG, SGS-PCG (`method=\"ssor-cg\"`, the smoother alone) and "
        "PyAMG SA-PCG. Shipped models only, unchanged (`poisson2d-multilevel`, "
        "`poisson2d-64-obstacles` on unseen layouts, `poisson3d-multilevel`); variable "
        "coefficients and Neumann walls are matrices the networks never saw. 'fb': DCDM "
        "fell back to (SGS-preconditioned) CG. Gaussian right-hand side, seed 0.", ""]
    for rtol in RTOLS:
        lines += [f"### Iterations to rtol {rtol:g}", "",
                  "| case | " + " | ".join(METHODS) + " | dcdm+sgs ÷ ic0-pcg |",
                  "| --- |" + " --- |" * (len(METHODS) + 1)]
        for row in out["rows"]:
            ic0 = row["runs"].get("ic0-pcg", {}).get(f"{rtol:g}")
            ours = row["runs"].get("dcdm+sgs", {}).get(f"{rtol:g}")
            ratio = f"{ours['iterations'] / ic0['iterations']:.2f}" if ic0 and ours else "–"
            lines.append(f"| {row['case']} | " + " | ".join(cell(row, m, rtol)
                                                            for m in METHODS) + f" | {ratio} |")
        lines.append("")
    lines += ["### Seconds per solve to rtol 1e-06 (2 shared CPU cores; set-up apart)", "",
              "| case | " + " | ".join(METHODS) + " | dcdm+sgs ÷ cg | IC(0) set-up | "
              "AMG set-up |", "| --- |" + " --- |" * (len(METHODS) + 3)]
    for row in out["rows"]:
        cg = row["runs"].get("cg", {}).get("1e-06")
        ours = row["runs"].get("dcdm+sgs", {}).get("1e-06")
        ratio = f"{ours['seconds'] / cg['seconds']:.1f}" if cg and ours else "–"
        st = row["setup_seconds"]
        lines.append(f"| {row['case']} | " + " | ".join(seconds(row, m, 1e-6) for m in METHODS)
                     + f" | {ratio} | {st.get('ic0-pcg', float('nan')):.3f} | "
                     f"{st.get('amg-pcg', float('nan')):.3f} |")
    lines.append("")
    flat = out.get("flatness", {})
    if flat:
        lines += ["### Iterations at the largest grid ÷ at the smallest (rtol 1e-06)", ""]
        for group, entry in flat.items():
            lines.append(f"- {group}: " + "; ".join(
                f"{m} {v['ratio']:.2f} ({v['smallest']} → {v['largest']})"
                for m, v in entry.items()))
        lines.append("")
    meta = out["meta"]
    lines.append(f"Machine: {meta['machine']}, {meta['cpu_count']} CPUs, load average "
                 f"{meta['loadavg_start'][0]:.1f} at the start, {meta['loadavg_end'][0]:.1f} "
                 f"at the end; OPENBLAS_NUM_THREADS={meta['env']['OPENBLAS_NUM_THREADS']}. "
                 "Iteration counts do not depend on the load; seconds do.")
    return "\n".join(lines) + "\n"


def flatness(rows):
    """Iterations to 1e-6 at the largest over the smallest grid of each Poisson series, over
    the issue's ranges (2-D from 64², 3-D from 32³; 16³ also, as a second 3-D entry)."""
    out = {}
    for group, smallest in (("2d", 64 ** 2), ("3d", 32 ** 3), ("3d", 16 ** 3)):
        cube = group == "3d"
        series = [r for r in rows if r["case"].startswith("Poisson ")
                  and ("³" in r["case"]) == cube and r["n"] >= smallest]
        series.sort(key=lambda r: r["n"])
        if len(series) < 2:
            continue
        entry = {}
        for method in ("dcdm", "dcdm+sgs", "ic0-pcg", "cg"):
            its = [r["runs"].get(method, {}).get("1e-06") for r in (series[0], series[-1])]
            if all(its):
                entry[method] = {"smallest": its[0]["iterations"],
                                 "largest": its[1]["iterations"],
                                 "ratio": its[1]["iterations"] / its[0]["iterations"]}
        out[f"{group} {series[0]['case']} → {series[-1]['case']}"] = entry
    return out


def plot(out, path_sizes, path_residuals):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, group, title in ((axes[0], "2d", "2-D Poisson"), (axes[1], "3d", "3-D Poisson")):
        series = sorted((r for r in out["rows"] if r["case"].startswith("Poisson")
                         and (("³" in r["case"]) == (group == "3d"))), key=lambda r: r["n"])
        for method in METHODS:
            pts = [(r["n"], r["runs"][method]["1e-06"]["iterations"]) for r in series
                   if method in r["runs"]]
            if pts:
                ax.loglog(*zip(*pts), "o-", label=method)
        ax.set_xlabel("unknowns")
        ax.set_ylabel("iterations to rtol 1e-6")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path_sizes, dpi=120)
    traced = [r for r in out["rows"] if r["history"]]
    if traced:
        fig, axes = plt.subplots(1, len(traced), figsize=(5.5 * len(traced), 4), squeeze=False)
        for ax, row in zip(axes[0], traced):
            for label, hist in row["history"].items():
                ax.semilogy(range(1, len(hist) + 1), hist, label=label)
            ax.set_title(row["case"], fontsize=9)
            ax.set_xlabel("iteration")
            ax.set_ylabel("||b − Ax|| / ||b||")
            ax.set_xscale("log")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path_residuals, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--big", action="store_true", help="add 1024², 96³ and 128³")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--maxiter", type=int, default=10000)
    ap.add_argument("--dcdm-maxiter", type=int, default=400,
                    help="cap of DCDM without the smoother (it is slow per iteration)")
    args = ap.parse_args(argv)
    meta = {"python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(),
            "env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")},
            "rtols": list(RTOLS), "quick": args.quick, "big": args.big,
            "maxiter": args.maxiter, "dcdm_maxiter": args.dcdm_maxiter}
    models = {}
    warm = poisson2d(8)
    ic0_preconditioner(warm)  # compile IC(0), SGS and the models' kernels before timing
    ds.linear.solve(warm, np.ones(64), method="ssor-cg")
    ds.linear.solve(warm, np.ones(64), method="dcdm")
    rows = []
    for group, name, A, grid, mask, model_name in cases(args.quick, args.big):
        if model_name not in models:
            models[model_name] = pretrained_direction_model(model_name)
        b = np.random.default_rng(0).standard_normal(A.shape[0])
        n = A.shape[0]
        # the unsmoothed network is minutes per solve on the largest grids, where it is known
        # to stall (bench/results/dcdm_multilevel.md): skipped there
        skip = {"dcdm"} if n > 512 ** 2 or (len(grid) == 3 and n > 64 ** 3) else set()
        traces = name in ("log-normal σ=1.5, 192²", "Neumann on three walls, 192²",
                          "Poisson 512²") or (args.quick and "log-normal" in name)
        t0 = time.perf_counter()
        got = run_case(A, grid, mask, models[model_name], b, args.repeats, args.maxiter,
                       args.dcdm_maxiter, skip, traces)
        row = {"group": group, "case": name, "n": n, "model": model_name, **got}
        rows.append(row)
        print(f"{name} ({time.perf_counter() - t0:.0f} s): " + ", ".join(
            f"{m} {r['1e-06']['iterations']}{' fb' if r['1e-06'].get('fallback') else ''}"
            for m, r in got["runs"].items()), flush=True)
    meta["loadavg_end"] = os.getloadavg()
    out = {"meta": meta, "rows": rows}
    out["flatness"] = flatness(rows)
    where = Path(tempfile.mkdtemp(prefix="dcdm_smoothed_")) if args.quick else RESULTS
    where.mkdir(exist_ok=True)
    with open(where / "dcdm_smoothed.json", "w") as f:
        json.dump(out, f, indent=1)
    with open(where / "dcdm_smoothed.md", "w") as f:
        f.write(markdown(out))
    plot(out, where / "dcdm_smoothed_sizes.png", where / "dcdm_smoothed_residuals.png")
    print(markdown(out))
    print(f"written to {where}")


if __name__ == "__main__":
    main()
