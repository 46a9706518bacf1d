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
autograd.numpy field used for gradients (``autograd``); and ``dopri5/i [array path]``:
the same solve forced onto the stage-kernel loop (``_integrate.HOST_MAX_N = 0``), which is
what every state took before the small-state host-float path existed: the before/after
comparison in one process, under the same load.

Reported per case: attempted steps, NFE, median wall and process-CPU time of repeats, the
time per attempted step, and the **overhead per step** = time per step − (f evaluations per
step) × (median cost of one f call, timed apart on the initial state). The overhead is what
the solver itself spends per step (stage combinations, error norm, controller, dense
output, bookkeeping). Ratios ``RK45 time / diffsolve time`` on wall and CPU time; the machine
is shared, so CPU-time ratios are the robust ones; load recorded.

Results: ``bench/results/ode_overhead{_before,}.json`` (``--tag``; ``_quick`` for --quick)
and a bar chart ``.png`` beside each; a run without ``--tag`` also pairs its rows with
``ode_overhead_before.json`` (``before_after``: per-step overhead and ratios before and
after, and whether the final state is bit-identical).
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


def run_odeint(prob, t_eval, tol, budget, method, controller, f_kind, fcost,
               array_path=False) -> dict:
    from diffsolve.ode import _integrate, odeint

    if array_path:  # the stage-kernel loop every state took before the host-float path
        saved, _integrate.HOST_MAX_N = _integrate.HOST_MAX_N, 0
        try:
            row = run_odeint(prob, t_eval, tol, budget, method, controller, f_kind, fcost)
        finally:
            _integrate.HOST_MAX_N = saved
        row["solver"] += " [array path]"
        return row

    f = prob.f_np if f_kind == "numpy" else prob.f_ag

    def call():
        return odeint(f, prob.y0, t_eval, prob.params, method=method, rtol=tol, atol=tol,
                      controller=controller, throw=True)

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
    rows.append(run_odeint(prob, t_eval, tol, budget, "dopri5", "i", "numpy", fcost,
                           array_path=True))
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


def compare_before(rows, before_path: Path) -> list[dict]:
    """Before/after pairs (same problem, tol, solver, f) from an earlier run's JSON."""
    if not before_path.exists():
        return []
    before = json.loads(before_path.read_text())["rows"]
    key = lambda r: (r["problem"], r["tol"], r["solver"], r["f"])  # noqa: E731
    old = {key(r): r for r in before}
    out = []
    for r in rows:
        b = old.get(key(r))
        if b is None:
            continue
        out.append({"problem": r["problem"], "tol": r["tol"], "solver": r["solver"],
                    "f": r["f"], "n_steps_before": b["n_steps"], "n_steps_after": r["n_steps"],
                    "same_result": b.get("ys_last") == r.get("ys_last"),
                    "overhead_per_step_cpu_us_before": b["overhead_per_step_cpu_us"],
                    "overhead_per_step_cpu_us_after": r["overhead_per_step_cpu_us"],
                    "cpu_speedup_vs_rk45_before": b["cpu_speedup_vs_rk45"],
                    "cpu_speedup_vs_rk45_after": r["cpu_speedup_vs_rk45"]})
    return out


def plot(rows, pairs, path):
    """Per-step CPU overhead (solver time beyond f) and CPU speed-up vs RK45, per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["problem"], r["tol"]) for r in rows}, key=lambda c: (c[0], -c[1]))
    labels = [f"{p[:6]} {t:g}" for p, t in cases]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    series = [("scipy RK45", "numpy", "RK45", None)]
    series += [(f"diffsolve {m}/{c}", fk, f"{m}/{c} {fk}", None) for m, c in SETUPS
               for fk in ("numpy", "autograd")]
    series.append(("diffsolve dopri5/i [array path]", "numpy", "dopri5/i numpy, array path "
                   "(= before, same run)", None))
    width = 0.8 / (len(series) + 1)
    x = np.arange(len(cases))
    for k, (solver, fk, lab, _) in enumerate(series):
        sel = {(r["problem"], r["tol"]): r for r in rows
               if r["solver"] == solver and r["f"] == fk}
        axes[0].bar(x + k * width, [sel[c]["overhead_per_step_cpu_us"] for c in cases],
                    width, label=lab)
        axes[1].bar(x + k * width, [sel[c]["cpu_speedup_vs_rk45"] for c in cases], width,
                    label=lab)
    if pairs:  # the same set-up before this change (dopri5/i, numpy f)
        sel = {(p["problem"], p["tol"]): p for p in pairs
               if p["solver"] == "diffsolve dopri5/i" and p["f"] == "numpy"}
        k = len(series)
        axes[0].bar(x + k * width, [sel[c]["overhead_per_step_cpu_us_before"]
                                    if c in sel else 0 for c in cases], width,
                    label="dopri5/i numpy BEFORE (earlier run)", color="0.6", hatch="//")
        axes[1].bar(x + k * width, [sel[c]["cpu_speedup_vs_rk45_before"]
                                    if c in sel else 0 for c in cases], width,
                    label="dopri5/i numpy BEFORE (earlier run)", color="0.6", hatch="//")
    axes[1].axhline(2.0, color="k", ls="--", lw=1, label="target 2x")
    axes[0].set_ylabel("CPU time per step beyond f calls [us]")
    axes[1].set_ylabel("CPU-time speed-up vs solve_ivp RK45")
    for ax in axes:
        ax.set_xticks(x + 0.4 - width / 2)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    axes[1].legend(fontsize=6)
    fig.suptitle("odeint (Python f, batch 1) vs scipy RK45: per-step overhead", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    pairs = [] if args.tag else compare_before(rows, args.out_dir / "ode_overhead_before.json")
    for p in pairs:
        if p["f"] == "numpy":
            print(f"  {p['problem']:<15} {p['tol']:<6g} {p['solver']:<19} overhead/step cpu "
                  f"{p['overhead_per_step_cpu_us_before']:5.1f} -> "
                  f"{p['overhead_per_step_cpu_us_after']:5.1f} us, vs RK45 "
                  f"x{p['cpu_speedup_vs_rk45_before']:.2f} -> "
                  f"x{p['cpu_speedup_vs_rk45_after']:.2f}, same result: {p['same_result']}")
    path.write_text(json.dumps({"meta": meta, "rows": rows, "before_after": pairs}, indent=1))
    plot(rows, pairs, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return rows


if __name__ == "__main__":
    main()
