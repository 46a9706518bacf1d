"""Per-step Python overhead of ``diffsolve.ode.odeint`` (plain Python f) vs SciPy RK45.

Run from the repository root::

    python -m bench.bench_ode_overhead                 # full grid (about a minute)
    python -m bench.bench_ode_overhead --quick         # LV, tol 1e-6 (seconds)
    python -m bench.bench_ode_overhead --tag before    # write ode_overhead_before.json

Side by side in one process, batch 1, t in [0, 10], 51 output times, rtol = atol in
{1e-3, 1e-6, 1e-9}, on Lotka–Volterra, Van der Pol (mu = 1) and the 2-50-2 tanh MLP
"spiral" field (``bench/_ode_problems.py``):

* ``scipy RK45``: ``solve_ivp(method="RK45")`` with the plain NumPy ``fun`` (``f_np``);
* ``diffsolve dopri5/i``: ``odeint(method="dopri5", controller="i")``: the same tableau and
  step sequence as RK45, so per-step times compare like for like;
* ``diffsolve tsit5/pi``: the default method and controller;

each diffsolve set-up with the same NumPy ``f_np`` SciPy gets (``numpy``) and with the
autograd.numpy field used for gradients (``autograd``).

Reported per case: attempted steps, NFE, median wall and process-CPU time of repeats, the
time per attempted step, and the **overhead per step** = time per step − (f evaluations per
step) × (median cost of one f call, timed apart on the initial state). The overhead is what
the solver itself spends per step (stage combinations, error norm, controller, dense
output, bookkeeping). Ratios ``RK45 time / diffsolve time`` on wall and CPU time; the machine
is shared, so CPU-time ratios are the robust ones; load recorded.

Results: ``bench/results/ode_overhead{_before,}.json`` (``--tag``), ``_quick`` for --quick.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import timeit
from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp

from bench._ode_problems import get_problems, machine_meta, time_repeats

RESULTS = Path(__file__).resolve().parent / "results"
TOLS = (1e-3, 1e-6, 1e-9)
SETUPS = (("dopri5", "i"), ("tsit5", "pi"))


def f_call_cost(f, t, y, p) -> tuple[float, float]:
    """Median (wall, CPU) seconds of one ``f(t, y, p)`` call."""
    n = 2000
    walls, cpus = [], []
    for _ in range(7):
        c0 = time.process_time()
        w = timeit.timeit(lambda: f(t, y, p), number=n)
        cpus.append((time.process_time() - c0) / n)
        walls.append(w / n)
    return statistics.median(walls), statistics.median(cpus)


def run_scipy(prob, t_eval, tol, budget, fcost) -> dict:
    fun = prob.scipy_fun(None)

    def call():
        return solve_ivp(fun, (t_eval[0], t_eval[-1]), prob.y0, method="RK45",
                         t_eval=t_eval, rtol=tol, atol=tol)

    call()
    wall, reps, sol, cpu = time_repeats(call, budget_s=budget, max_repeats=40)
    steps = (sol.nfev - 2) // 6  # attempted steps (FSAL: 6 f per step + 2 at the start)
    return _row("scipy RK45", "numpy", sol.nfev, steps, wall, cpu, reps, fcost)


def run_odeint(prob, t_eval, tol, budget, method, controller, f_kind, fcost) -> dict:
    from diffsolve.ode import odeint

    f = prob.f_np if f_kind == "numpy" else prob.f_ag

    def call():
        return odeint(f, prob.y0, t_eval, prob.params, method=method, rtol=tol, atol=tol,
                      controller=controller)

    call()
    wall, reps, res, cpu = time_repeats(call, budget_s=budget, max_repeats=40)
    st = res.stats
    return _row(f"diffsolve {method}/{controller}", f_kind, int(st.nfe), int(st.n_steps),
                wall, cpu, reps, fcost, ys=np.asarray(res.ys))


def _row(solver, f_kind, nfe, steps, wall, cpu, reps, fcost, ys=None) -> dict:
    fw, fc = fcost[f_kind]
    row = {"solver": solver, "f": f_kind, "nfe": int(nfe), "n_steps": int(steps),
           "time_s": wall, "cpu_s": cpu, "repeats": reps,
           "per_step_us": 1e6 * wall / steps, "per_step_cpu_us": 1e6 * cpu / steps,
           "f_call_us": 1e6 * fw, "f_call_cpu_us": 1e6 * fc,
           # solver time per step beyond its own f calls (nfe/steps includes the start-up)
           "overhead_per_step_us": 1e6 * (wall - nfe * fw) / steps,
           "overhead_per_step_cpu_us": 1e6 * (cpu - nfe * fc) / steps}
    if ys is not None:
        row["_ys"] = ys
    return row


def run_case(prob, tol, budget, fcost) -> list[dict]:
    t_eval = prob.t_eval()
    rows = [run_scipy(prob, t_eval, tol, budget, fcost)]
    for method, ctrl in SETUPS:
        for f_kind in ("numpy", "autograd"):
            rows.append(run_odeint(prob, t_eval, tol, budget, method, ctrl, f_kind, fcost))
    base = rows[0]
    for r in rows:
        r["speedup_vs_rk45"] = base["time_s"] / r["time_s"]
        r["cpu_speedup_vs_rk45"] = base["cpu_s"] / max(r["cpu_s"], 1e-12)
        r["overhead_ratio_vs_rk45_cpu"] = (base["overhead_per_step_cpu_us"]
                                           / max(r["overhead_per_step_cpu_us"], 1e-9))
        r.update(problem=prob.name, tol=tol)
        ys = r.pop("_ys", None)
        if ys is not None:  # a fingerprint of the result, to compare before/after runs
            r["ys_last"] = [float(v) for v in ys[-1].reshape(-1)]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Lotka–Volterra, tol 1e-6")
    parser.add_argument("--budget", type=float, default=0.5,
                        help="seconds of repeats per timed runner (median reported)")
    parser.add_argument("--tag", default="", help="suffix of the results file ('before')")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    problems = get_problems()
    names, tols = (["lotka_volterra"], (1e-6,)) if args.quick else (list(problems), TOLS)
    if args.quick:
        args.budget = min(args.budget, 0.1)
    meta = machine_meta()
    meta.update(quick=args.quick, budget_s=args.budget, tag=args.tag)
    rows = []
    for name in names:
        prob = problems[name]
        t0 = float(prob.t0)
        fcost = {"numpy": f_call_cost(prob.f_np, t0, prob.y0, prob.params),
                 "autograd": f_call_cost(prob.f_ag, t0, prob.y0, prob.params)}
        for tol in tols:
            print(f"{name} tol={tol:g} load={os.getloadavg()[0]:.2f} "
                  f"f(np)={fcost['numpy'][1] * 1e6:.2f}us f(ag)={fcost['autograd'][1] * 1e6:.2f}us",
                  flush=True)
            case = run_case(prob, tol, args.budget, fcost)
            for r in case:
                print(f"  {r['solver']:<19} {r['f']:<8} steps={r['n_steps']:<6} "
                      f"cpu={r['cpu_s'] * 1e3:8.2f} ms  per-step cpu={r['per_step_cpu_us']:6.1f}"
                      f" us  overhead cpu={r['overhead_per_step_cpu_us']:6.1f} us  "
                      f"x{r['cpu_speedup_vs_rk45']:.2f} cpu (wall x{r['speedup_vs_rk45']:.2f})"
                      " vs RK45", flush=True)
            rows.extend(case)
    meta["loadavg_end"] = list(os.getloadavg())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    suffix = ("_" + args.tag if args.tag else "") + ("_quick" if args.quick else "")
    path = args.out_dir / f"ode_overhead{suffix}.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
