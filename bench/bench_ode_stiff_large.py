"""Large sparse stiff ODEs: ``odeint`` (sparse LU or GMRES stage solves) vs SciPy Radau, BDF.

Run from the repository root::

    python -m bench.bench_ode_stiff_large            # all sizes (about 20 min on 2 cores)
    python -m bench.bench_ode_stiff_large --quick    # n = 1000 and N = 32, one tolerance

Problems (both reaction–diffusion semi-discretisations of the Brusselator):

* 1-D, Hairer & Wanner, *Solving ODEs II*, IV.1 ("BRUSS"): ``n`` interior grid points on
  [0, 1], α = 1/50, Dirichlet data u = 1, v = 3, u and v interleaved (``2n`` unknowns, a
  bandwidth-2 Jacobian), t ∈ [0, 10]; the field and pattern are
  :func:`bench.bench_ode_stiff.brusselator`. The sparse LU of ``I − hγJ`` of a banded
  matrix has no fill beyond the band: the direct solver costs O(n) per factorisation.
* 2-D, Hairer & Wanner II, IV.10: an ``N × N`` periodic grid, α = 0.1·N², u and v stacked
  (``2N²`` unknowns, a 5-point Laplacian per species plus the local coupling). Here the
  sparse LU fills in (nested-dissection-like orderings give O(N² log N) fill, O(N³) work),
  the case where a Krylov stage solve can pay off.

Solvers: ``odeint`` kvaerno5 with the sparse LU ("direct"), rodas5 (direct), kvaerno5 with
``linear_solver="gmres"`` and the Jacobi preconditioner, and on the 2-D grids kvaerno5 with
GMRES preconditioned by a user incomplete LU of ``I − cJ`` (``scipy.sparse.linalg.spilu``,
``drop_tol=1e-4``; Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed., §10.4);
SciPy ``solve_ivp`` Radau and BDF with ``jac_sparsity``. Every solver forms its Jacobian
by coloured finite differences of the same NumPy field. ``atol = rtol · 1e-3``, as
``bench_ode_stiff``'s Brusselator.

Reference solutions: ``odeint`` kvaerno5 (direct) at rtol 1e-10, atol 1e-13; a second
reference (SciPy Radau at rtol 1e-11 at n = 1000, else rodas5 at rtol 1e-10) is
computed and its distance to the first is stored (``meta.references``). Error: as
``bench_ode_stiff.scaled_error``: the largest relative error over output times and
components, each divided by ``|y_ref| + 1e-6 · max_t |y_ref|``.

Timing: runs are interleaved (each repeat runs every solver once, in turn); a solver whose
first run took less than 5 s is repeated (``--repeats``, default 3), the others run once.
Recorded: min and median wall time, median (and min) process CPU time, NFE (including the
Jacobians' evaluations), steps, success, status/message, the warnings a run raised (recorded
with ``warnings.catch_warnings(record=True)`` and printed again, never silenced), and for
the GMRES rows the number of Krylov products (counted by wrapping
``diffsolve.krylov._gmres.solve_gmres``; the count is not part of ``odeint``'s result).
Every run has a wall-time budget: the field raises when it is called after the budget is
spent, the run is recorded as ``timed_out``, and the solver is skipped at the tighter
tolerances of that size and at the larger sizes of the same family (a skip is recorded,
not hidden).

Results: ``bench/results/ode_stiff_large.json``, ``.md`` (tables, CPU time over SciPy
Radau and over BDF at equal accuracy, findings) and ``.png`` (work–precision panels).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy
import scipy.sparse as sp
from scipy.integrate import solve_ivp
from scipy.sparse.linalg import spilu

import diffsolve.krylov._gmres as _gmres_mod
from bench.bench_ode_stiff import brusselator, scaled_error
from diffsolve.ode import odeint

RESULTS = Path(__file__).resolve().parent / "results"
ATOL_SCALE = 1e-3
REPEAT_BELOW_S = 5.0


# ---------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------
def brusselator_2d(N, xnp=np):
    """The 2-D Brusselator on an N × N periodic grid (Hairer & Wanner II, IV.10): u and v
    stacked, a 5-point Laplacian coupling (the sparse LU of ``I − hγJ`` fills in). ``xnp``:
    the array module ``f`` computes with (``autograd.numpy`` for gradients).

    Returns ``(f, pattern, y0)``.
    """
    alpha = 0.1 * N ** 2

    def lap(w):
        return (xnp.roll(w, 1, 0) + xnp.roll(w, -1, 0) + xnp.roll(w, 1, 1)
                + xnp.roll(w, -1, 1) - 4.0 * w)

    def f(t, y, p):
        u = xnp.reshape(y[:N * N], (N, N))
        v = xnp.reshape(y[N * N:], (N, N))
        du = 1.0 + u * u * v - 4.4 * u + alpha * lap(u)
        dv = 3.4 * u - u * u * v + alpha * lap(v)
        return xnp.concatenate([xnp.reshape(du, (-1,)), xnp.reshape(dv, (-1,))])

    e = np.ones(N)
    T = sp.diags([e[:-1], e, e[:-1]], [-1, 0, 1]).tolil()
    T[0, -1] = T[-1, 0] = 1.0
    L = sp.kron(T, sp.identity(N)) + sp.kron(sp.identity(N), T)
    pattern = sp.bmat([[L, sp.identity(N * N)], [sp.identity(N * N), L]]).tocsr()
    x = np.arange(N) / N
    X, Y = np.meshgrid(x, x, indexing="ij")
    y0 = np.concatenate([(22 * Y * (1 - Y) ** 1.5).ravel(), (27 * X * (1 - X) ** 1.5).ravel()])
    return f, pattern, y0


def problem_1d(n, t1=10.0, n_out=6):
    f, y0, pattern = brusselator(n)
    return dict(name=f"bruss1d_n{n}", kind="1d", size=n, f=f, y0=y0, pattern=pattern,
                t=np.linspace(0.0, t1, n_out))


def problem_2d(N, t1=2.0, n_out=5):
    f, pattern, y0 = brusselator_2d(N)
    return dict(name=f"bruss2d_N{N}", kind="2d", size=N, f=f, y0=y0, pattern=pattern,
                t=np.linspace(0.0, t1, n_out))


# ---------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------
class BudgetExceeded(Exception):
    """Raised by the timed field once a run's wall-time budget is spent."""


class _KrylovCounter:
    """Counts GMRES products: wraps ``diffsolve.krylov._gmres.solve_gmres``, which the stage
    solver imports at each call (so the wrapper is what it gets)."""

    def __init__(self):
        self.products = 0
        self._orig = None

    def __enter__(self):
        self.products = 0
        self._orig = orig = _gmres_mod.solve_gmres

        def counted(*args, **kw):
            res = orig(*args, **kw)
            self.products += int(res.n_iters)
            return res

        _gmres_mod.solve_gmres = counted
        return self

    def __exit__(self, *exc):
        _gmres_mod.solve_gmres = self._orig


def _timed_field(f, budget):
    deadline = time.perf_counter() + budget

    def g(t, y, p=None):
        if time.perf_counter() > deadline:
            raise BudgetExceeded(f"wall-time budget of {budget:g} s spent")
        return f(t, y, p)

    return g


def ilu_preconditioner(drop_tol=1e-4, fill_factor=10.0):
    """A user preconditioner for ``odeint(..., linear_solver="gmres")``: ``M ≈ (I − cJ)⁻¹``
    by an incomplete LU (SuperLU's ILUTP, ``scipy.sparse.linalg.spilu``) of ``I − cJ``.
    ``calls`` counts the factorisations."""

    def prec(J, c):
        prec.calls += 1
        M = sp.identity(J.shape[0], format="csc") - c * sp.csc_matrix(J)
        return spilu(M, drop_tol=drop_tol, fill_factor=fill_factor).solve

    prec.calls = 0
    return prec


def run_diffsolve(prob, method, rtol, budget, linear_solver="direct", preconditioner=None,
                  atol=None):
    g = _timed_field(prob["f"], budget)
    kw = {}
    if linear_solver != "direct":
        kw = dict(linear_solver=linear_solver, preconditioner=preconditioner)
    atol = rtol * ATOL_SCALE if atol is None else atol
    with _KrylovCounter() as kc:
        t0, c0 = time.perf_counter(), time.process_time()
        res = odeint(g, prob["y0"], prob["t"], None, method=method, rtol=rtol, atol=atol,
                     jac_sparsity=prob["pattern"], max_steps=200_000, **kw)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    extra = {"status": res.status.name, "message": str(res.message)}
    if linear_solver == "gmres":
        extra["krylov_products"] = kc.products
    return dict(ys=np.asarray(res.ys), wall=wall, cpu=cpu, nfe=int(res.stats.nfe),
                steps=int(res.stats.n_steps), success=bool(res.converged), **extra)


def run_scipy(prob, method, rtol, budget):
    g = _timed_field(prob["f"], budget)
    t0, c0 = time.perf_counter(), time.process_time()
    # dense output at the output times (as odeint's), so that sol.t holds the steps
    sol = solve_ivp(lambda t, y: g(t, y), (prob["t"][0], prob["t"][-1]), prob["y0"],
                    method=method, rtol=rtol, atol=rtol * ATOL_SCALE, dense_output=True,
                    jac_sparsity=prob["pattern"])
    ys = sol.sol(prob["t"]).T if sol.success else \
        np.full((len(prob["t"]), len(prob["y0"])), np.nan)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dict(ys=ys, wall=wall, cpu=cpu, nfe=int(sol.nfev), steps=int(sol.t.shape[0]) - 1,
                success=bool(sol.success), status=f"scipy status {sol.status}",
                message=str(sol.message))


#: the ILU rows share one counting preconditioner per run (created per call)
def _ilu_run(prob, rtol, budget):
    prec = ilu_preconditioner()
    out = run_diffsolve(prob, "kvaerno5", rtol, budget, "gmres", prec)
    out["ilu_factorisations"] = prec.calls
    return out


SOLVERS_1D = {
    "diffsolve kvaerno5": lambda prob, rtol, b: run_diffsolve(prob, "kvaerno5", rtol, b),
    "diffsolve rodas5": lambda prob, rtol, b: run_diffsolve(prob, "rodas5", rtol, b),
    "diffsolve kvaerno5 gmres+jacobi": lambda prob, rtol, b: run_diffsolve(
        prob, "kvaerno5", rtol, b, "gmres", "jacobi"),
    "scipy Radau": lambda prob, rtol, b: run_scipy(prob, "Radau", rtol, b),
    "scipy BDF": lambda prob, rtol, b: run_scipy(prob, "BDF", rtol, b),
}
SOLVERS_2D = {
    "diffsolve kvaerno5": SOLVERS_1D["diffsolve kvaerno5"],
    "diffsolve kvaerno5 gmres+jacobi": SOLVERS_1D["diffsolve kvaerno5 gmres+jacobi"],
    "diffsolve kvaerno5 gmres+ilu": _ilu_run,
    "scipy Radau": SOLVERS_1D["scipy Radau"],
    "scipy BDF": SOLVERS_1D["scipy BDF"],
}
ALL_SOLVERS = list(dict.fromkeys([*SOLVERS_1D, *SOLVERS_2D]))


def _call_recording(run, prob, rtol, budget):
    """One run with its warnings recorded (and printed again) and a spent budget caught."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            out = run(prob, rtol, budget)
            out["timed_out"] = False
        except BudgetExceeded as e:
            out = dict(ys=None, wall=time.perf_counter() - t0, cpu=time.process_time() - c0,
                       nfe=-1, steps=-1, success=False, status="TIMED_OUT",
                       message=str(e), timed_out=True)
    out["warnings"] = [f"{w.category.__name__}: {w.message}" for w in rec]
    for w in rec:  # shown, not swallowed
        print(f"  warning ({prob['name']}, rtol={rtol:.0e}): {w.category.__name__}: "
              f"{w.message}", file=sys.stderr, flush=True)
    return out


def references(prob, second: str, budget):
    """The reference (kvaerno5 at rtol 1e-10) and its distance to a second one."""
    t0 = time.perf_counter()
    res = odeint(prob["f"], prob["y0"], prob["t"], None, method="kvaerno5", rtol=1e-10,
                 atol=1e-13, jac_sparsity=prob["pattern"], max_steps=500_000)
    if not res.converged:
        raise RuntimeError(f"reference solve failed on {prob['name']}: {res.message}")
    ref = np.asarray(res.ys)
    info = dict(reference="diffsolve kvaerno5 rtol=1e-10 atol=1e-13",
                reference_s=time.perf_counter() - t0, reference_steps=int(res.stats.n_steps))
    t0 = time.perf_counter()
    try:
        if second == "radau":
            g = _timed_field(prob["f"], budget)
            sol = solve_ivp(lambda t, y: g(t, y), (prob["t"][0], prob["t"][-1]), prob["y0"],
                            method="Radau", rtol=1e-11, atol=1e-14, t_eval=prob["t"],
                            jac_sparsity=prob["pattern"])
            ok, ref2, name2 = sol.success, sol.y.T, "scipy Radau rtol=1e-11 atol=1e-14"
        else:
            r2 = odeint(_timed_field(prob["f"], budget), prob["y0"], prob["t"], None,
                        method="rodas5", rtol=1e-10, atol=1e-13,
                        jac_sparsity=prob["pattern"], max_steps=500_000)
            ok, ref2, name2 = r2.converged, np.asarray(r2.ys), \
                "diffsolve rodas5 rtol=1e-10 atol=1e-13"
        info.update(check=name2, check_s=time.perf_counter() - t0, check_ok=bool(ok),
                    check_vs_reference=scaled_error(ref2, ref) if ok else float("nan"))
    except BudgetExceeded as e:
        info.update(check=second, check_s=time.perf_counter() - t0, check_ok=False,
                    check_vs_reference=float("nan"), check_message=str(e))
    print(f"{prob['name']}: reference {info['reference_s']:.1f}s; {info['check']} differs by "
          f"{info['check_vs_reference']:.2e} ({info['check_s']:.1f}s)", flush=True)
    return ref, info


def bench_problem(prob, solvers, rtols, repeats, budget, ref, given_up):
    """Rows of one problem. ``given_up`` (solver -> why) holds the solvers that ran out of
    budget on a smaller size of the same family; they are skipped here (and recorded)."""
    rows = []
    for rtol in rtols:
        outs: dict = {s: [] for s in solvers}
        for rep in range(repeats):
            for solver, run in solvers.items():
                if solver in given_up:
                    continue
                if rep > 0 and (not outs[solver] or outs[solver][0]["wall"] >= REPEAT_BELOW_S
                                or not outs[solver][0]["success"]):
                    continue  # slow or failed: one run is the record
                outs[solver].append(_call_recording(run, prob, rtol, budget))
        for solver in solvers:
            o = outs[solver]
            if not o:
                rows.append(dict(problem=prob["name"], kind=prob["kind"], size=prob["size"],
                                 unknowns=len(prob["y0"]), solver=solver, rtol=rtol,
                                 skipped=True, success=False, timed_out=False,
                                 error=float("nan"), time_min=float("nan"),
                                 time_median=float("nan"), cpu_median=float("nan"),
                                 cpu_min=float("nan"), nfe=-1, steps=-1, repeats=0,
                                 status="SKIPPED", warnings=[],
                                 message=f"not run: {given_up[solver]}"))
                print(f"{prob['name']:14s} rtol={rtol:7.0e} {solver:32s} skipped", flush=True)
                continue
            last = o[-1]
            if last["timed_out"]:
                given_up[solver] = (f"ran out of its {budget:g} s budget on {prob['name']} "
                                    f"at rtol={rtol:.0e}")
            walls = [x["wall"] for x in o]
            cpus = [x["cpu"] for x in o]
            err = scaled_error(last["ys"], ref) if last["ys"] is not None else float("nan")
            row = dict(problem=prob["name"], kind=prob["kind"], size=prob["size"],
                       unknowns=len(prob["y0"]), solver=solver, rtol=rtol, skipped=False,
                       error=err, time_min=min(walls), time_median=statistics.median(walls),
                       cpu_median=statistics.median(cpus), cpu_min=min(cpus),
                       repeats=len(o), budget_s=budget,
                       **{k: v for k, v in last.items() if k not in ("ys", "wall", "cpu")})
            rows.append(row)
            kp = f" krylov={row['krylov_products']}" if "krylov_products" in row else ""
            print(f"{prob['name']:14s} rtol={rtol:7.0e} {solver:32s} err={err:9.2e} "
                  f"t_min={row['time_min']:8.3f}s cpu={row['cpu_median']:8.3f}s "
                  f"nfe={row['nfe']:7d} steps={row['steps']:5d} ok={row['success']} "
                  f"{row['status']}{kp}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------
def equal_accuracy_ratios(rows, baseline):
    """CPU time of each row over ``baseline``'s at the same error, ``baseline``'s
    work–precision curve (log median CPU time vs log error) interpolated log–log at the
    row's error; NaN outside the baseline's range of errors (no extrapolation)."""
    out = []
    for prob in dict.fromkeys(r["problem"] for r in rows):
        base = sorted((r["error"], r["cpu_median"]) for r in rows
                      if r["problem"] == prob and r["solver"] == baseline and r["success"]
                      and np.isfinite(r["error"]) and r["error"] > 0)
        if len(base) < 2:
            continue
        le = np.log([b[0] for b in base])
        lt = np.log([b[1] for b in base])
        for r in rows:
            if r["problem"] != prob or r["solver"] == baseline or not r["success"] or \
                    not (np.isfinite(r["error"]) and r["error"] > 0):
                continue
            x = np.log(r["error"])
            inside = le[0] <= x <= le[-1]
            ratio = float(r["cpu_median"] / np.exp(np.interp(x, le, lt))) if inside \
                else float("nan")
            out.append(dict(problem=prob, solver=r["solver"], rtol=r["rtol"],
                            error=r["error"], ratio=ratio, baseline=baseline))
    return out


def _fmt(x, spec):
    return "" if x is None or (isinstance(x, float) and not np.isfinite(x)) else \
        format(x, spec)


def write_markdown(path, rows, meta, findings):
    lines = ["# Large sparse stiff ODEs: odeint (sparse LU / GMRES) vs SciPy Radau, BDF", "",
             f"Machine: {meta['machine']}, {meta['cores']} cores shared; NumPy "
             f"{meta['numpy']}, SciPy {meta['scipy']}. {meta['command']}. Wall time "
             f"{meta['total_s']:.0f} s.", "",
             "Error: max relative error over outputs and components against the reference "
             "(`bench_ode_stiff.scaled_error`). atol = rtol·1e-3. Times: min and median "
             "wall over interleaved repeats (3 where a run takes < 5 s, else 1) and median "
             "process CPU time. NFE includes the coloured finite-difference Jacobians. "
             "`time / X` columns: CPU median over X's at the same rtol (not equal "
             "accuracy; see below).", "", "## References", "",
             "| problem | reference | s | check | check vs reference | s |",
             "|---|---|---|---|---|---|"]
    for name, info in meta["references"].items():
        verdict = _fmt(info["check_vs_reference"], ".1e") or \
            f"not computed: {info.get('check_message', 'failed')}"
        lines.append(f"| {name} | {info['reference']} | {info['reference_s']:.1f} | "
                     f"{info['check']} | {verdict} | "
                     f"{info['check_s']:.1f} |")
    lines.append("")
    for prob in dict.fromkeys(r["problem"] for r in rows):
        pr = [r for r in rows if r["problem"] == prob]
        lines += [f"## {prob} ({pr[0]['unknowns']} unknowns, budget {pr[0].get('budget_s', 0):g}"
                  " s per run)", "",
                  "| rtol | solver | error | wall min (s) | wall median (s) | CPU median (s) "
                  "| NFE | steps | Krylov products | ok | status | time / Radau | "
                  "time / BDF |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in pr:
            def base(s, r=r, pr=pr):
                b = next((x for x in pr if x["rtol"] == r["rtol"] and x["solver"] == s), None)
                ok = b is not None and b["success"] and r["success"]
                return r["cpu_median"] / b["cpu_median"] if ok else float("nan")
            lines.append(
                f"| {r['rtol']:.0e} | {r['solver']} | {_fmt(r['error'], '.2e')} | "
                f"{_fmt(r['time_min'], '.3f')} | {_fmt(r['time_median'], '.3f')} | "
                f"{_fmt(r['cpu_median'], '.3f')} | {r['nfe'] if r['nfe'] >= 0 else ''} | "
                f"{r['steps'] if r['steps'] >= 0 else ''} | {r.get('krylov_products', '')} | "
                f"{r['success']} | {r['status']} | {_fmt(base('scipy Radau'), '.2f')} | "
                f"{_fmt(base('scipy BDF'), '.2f')} |")
        notes = [r for r in pr if r["warnings"] or not r["success"]]
        for r in notes:
            msg = r["message"].replace("\n", " ")
            w = "; ".join(sorted(set(r["warnings"])))[:300]
            lines.append(f"\n- rtol {r['rtol']:.0e}, {r['solver']}: {r['status']}: "
                         f"{msg[:300]}" + (f" Warnings: {w}" if w else ""))
        lines.append("")
    for baseline in ("scipy Radau", "scipy BDF"):
        ratios = equal_accuracy_ratios(rows, baseline)
        lines += [f"## CPU time over {baseline} at equal accuracy", "",
                  f"{baseline}'s work–precision curve (median CPU time vs error) interpolated "
                  "log–log at each run's error; blank where the error lies outside the "
                  f"range {baseline} reached (no extrapolation).", "",
                  "| problem | solver | rtol | error | time / " + baseline.split()[-1] + " |",
                  "|---|---|---|---|---|"]
        for q in ratios:
            lines.append(f"| {q['problem']} | {q['solver']} | {q['rtol']:.0e} | "
                         f"{q['error']:.1e} | {_fmt(q['ratio'], '.2f')} |")
        lines.append("")
    if findings:
        lines += ["## Findings", "", findings, ""]
    path.write_text("\n".join(lines))


def plot(path, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = list(dict.fromkeys(r["problem"] for r in rows))
    ncol = min(3, len(probs))
    nrow = -(-len(probs) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.5 * ncol, 3.8 * nrow), squeeze=False)
    for ax, prob in zip(axes.ravel(), probs):
        for solver in ALL_SOLVERS:
            pts = [r for r in rows if r["problem"] == prob and r["solver"] == solver
                   and r["success"] and np.isfinite(r["error"])]
            if pts:  # one colour per solver in every panel
                ax.loglog([r["cpu_median"] for r in pts], [r["error"] for r in pts], "o-",
                          label=solver, color=f"C{ALL_SOLVERS.index(solver)}")
            out = [r for r in rows if r["problem"] == prob and r["solver"] == solver
                   and r.get("timed_out")]
            for r in out:  # a spent budget: a cross at the budget, on the x axis' right
                ax.axvline(r["cpu_median"], color="grey", lw=0.5, ls=":")
        ax.set_title(f"{prob} ({next(r['unknowns'] for r in rows if r['problem'] == prob)})")
        ax.set_xlabel("CPU time (s), median")
        ax.set_ylabel("max rel. error")
    for ax in axes.ravel()[len(probs):]:
        ax.set_visible(False)
    for ax in axes.ravel()[:len(probs)]:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="n = 1000 and N = 32 only, rtol 1e-6, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n1d", type=int, nargs="*", default=[1000, 10_000, 100_000])
    parser.add_argument("--n2d", type=int, nargs="*", default=[32, 64, 128])
    parser.add_argument("--t2d", type=float, default=2.0, help="end time of the 2-D runs")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--findings", type=Path, default=None,
                        help="a Markdown paragraph of findings to put in the report")
    parser.add_argument("--report-only", type=Path, default=None,
                        help="rewrite the .md and .png from this JSON without running")
    args = parser.parse_args(argv)
    findings = args.findings.read_text() if args.findings is not None else ""
    if args.report_only is not None:
        data = json.loads(args.report_only.read_text())
        stem = args.report_only.with_suffix("")
        write_markdown(stem.with_suffix(".md"), data["rows"], data["meta"],
                       findings or data["meta"].get("findings", ""))
        plot(stem.with_suffix(".png"), data["rows"])
        return
    start = time.perf_counter()
    repeats = 1 if args.quick else args.repeats
    n1d = [1000] if args.quick else args.n1d
    n2d = [32] if args.quick else args.n2d
    plan = []
    for n in n1d:
        # the budget per run grows with the size; fewer tolerances at n = 1e5 (Radau alone
        # would spend the whole 20 minutes at 1e-8)
        rtols = [1e-6] if args.quick else ([1e-4, 1e-6] if n >= 100_000
                                           else [1e-4, 1e-6, 1e-8])
        budget = 120.0 if n >= 100_000 else 40.0
        # the second reference: Radau at rtol 1e-11 costs 30x the first at n = 1000 and
        # more on the larger and the 2-D problems: rodas5 (another method) there
        plan.append((problem_1d(n), SOLVERS_1D, rtols, budget,
                     "radau" if n <= 1000 else "rodas5"))
    for N in n2d:
        rtols = [1e-6] if args.quick else [1e-4, 1e-6]
        plan.append((problem_2d(N, args.t2d), SOLVERS_2D, rtols, 60.0 if N <= 64 else 120.0,
                     "rodas5"))
    rows, refs = [], {}
    given_up: dict = {"1d": {}, "2d": {}}  # per family: a timeout skips the larger sizes
    meta = dict(machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
                cores=len(os.sched_getaffinity(0)), numpy=np.__version__,
                scipy=scipy.__version__,
                command="python -m bench.bench_ode_stiff_large" + (" --quick" if args.quick
                                                                  else ""),
                references=refs, atol="rtol * 1e-3", t2d=args.t2d, findings=findings,
                krylov_products="counted by wrapping diffsolve.krylov._gmres.solve_gmres "
                                "(not in odeint's result)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "ode_stiff_large" + ("_quick" if args.quick else "")
    for prob, solvers, rtols, budget, second in plan:
        ref, refs[prob["name"]] = references(prob, second, budget=300.0)
        rows += bench_problem(prob, solvers, rtols, repeats, budget, ref,
                              given_up[prob["kind"]])
        meta["total_s"] = time.perf_counter() - start
        # written after each problem: a run cut short keeps what it measured
        (args.out_dir / f"{stem}.json").write_text(json.dumps(dict(meta=meta, rows=rows),
                                                              indent=1))
    write_markdown(args.out_dir / f"{stem}.md", rows, meta, findings)
    try:
        plot(args.out_dir / f"{stem}.png", rows)
    except ImportError:
        print("matplotlib missing: no plot")
    print(f"total {meta['total_s']:.0f} s")


if __name__ == "__main__":
    main()
