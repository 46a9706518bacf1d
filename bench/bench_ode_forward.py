"""Forward ODE solves: ``diffsolve.ode.odeint`` against SciPy ``solve_ivp`` and torchdiffeq.

Run from the repository root::

    python -m bench.bench_ode_forward            # full grid (a few minutes on 2 cores)
    python -m bench.bench_ode_forward --quick    # one problem, one tolerance (seconds)

Problems (``bench/_ode_problems.py``): Lotka–Volterra, Van der Pol (mu = 1) and a 2-50-2 tanh
MLP "spiral" field, t in [0, 10], 51 output times; batch 1 and 512 (initial states within
±10 % of y0); rtol = atol in {1e-3, 1e-6, 1e-9}. Side by side in one process:

* diffsolve ``odeint`` with ``dopri5`` and ``tsit5`` (PI controller), each with the Numba
  ``@njit`` field (the fully compiled path), with the plain NumPy field that SciPy gets
  (``numpy``: Python calls f once per stage) and with the autograd.numpy field used for
  gradients (``autograd``); batch 512 in ``batch_mode="per-trajectory"`` (each trajectory its
  own step size; with a Python f that is a Python loop over the 512 trajectories, so it is
  measured at tol 1e-3 only) and ``"shared"`` (one step size, like the flattened peers);
* SciPy ``solve_ivp`` RK45 and DOP853 with a plain NumPy ``fun``: batch 512 as **one flattened
  1024-dimensional system** (one shared step size, error norm over all components), and
  RK45 as a **loop** over trajectories, timed on the first ``--loop-n`` and scaled to 512
  (marked ``estimated``);
* torchdiffeq ``dopri5`` (torchdiffeq 0.2.5 has no tsit5), the batch as one tensor (shared
  step), ``torch.set_num_threads(1)`` like the single-threaded peers.

Reported per case: NFE, accepted/rejected steps (SciPy: from ``nfev`` and the accepted
times; torchdiffeq exposes neither, so NFE only), max |y − y_ref| over output times against a
DOP853 solution at rtol = atol = 1e-13, median wall time and median process CPU time of
repeats (the first diffsolve call, which compiles, is reported apart as ``first_call_s``), and
time ratios against ``solve_ivp`` RK45 at the same tolerance. Every solver timed is
single-threaded, so on the shared 2-core machine the CPU-time ratios are the robust ones
(other processes steal wall time, not CPU time); both are recorded.

Step-sequence check: dopri5 with ``controller="i"`` against RK45 at every tolerance (batch 1):
number of accepted steps and max |Δt| between the accepted step times.

Results: ``bench/results/ode_forward.json`` and ``ode_forward.png`` (work–precision plots).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp

from bench._ode_problems import (
    get_problems,
    machine_meta,
    max_abs_error,
    reference_solution,
    time_repeats,
)

RESULTS = Path(__file__).resolve().parent / "results"
TOLS = (1e-3, 1e-6, 1e-9)
# scipy's RK45 / DOP853 cost per attempted step (FSAL: the last stage is the next f0) and
# the two evaluations before the first step (f0 and the initial-step probe).
_SCIPY_STAGES = {"RK45": 6, "DOP853": 12}


# ----------------------------------------------------------------------------- SciPy ---
def scipy_step_stats(prob, Y0, t_eval, method, tol) -> dict:
    """Accepted times and step counts of one solve_ivp run without t_eval (same steps)."""
    B = Y0.shape[0]
    fun = prob.scipy_fun(B if B > 1 else None)
    y0 = Y0.reshape(-1) if B > 1 else Y0[0]
    sol = solve_ivp(fun, (t_eval[0], t_eval[-1]), y0, method=method, rtol=tol, atol=tol)
    n_acc = len(sol.t) - 1
    attempts = (sol.nfev - 2) // _SCIPY_STAGES[method]
    return {"ts": sol.t, "n_accepted": n_acc, "n_rejected": int(attempts - n_acc),
            "nfe": int(sol.nfev)}


def run_scipy(prob, Y0, t_eval, ref, method, tol, budget) -> dict:
    B = Y0.shape[0]
    fun = prob.scipy_fun(B if B > 1 else None)
    y0 = Y0.reshape(-1) if B > 1 else Y0[0]

    def call():
        return solve_ivp(fun, (t_eval[0], t_eval[-1]), y0, method=method, t_eval=t_eval,
                         rtol=tol, atol=tol)

    call()  # warm-up
    med, reps, sol, cpu = time_repeats(call, budget_s=budget, max_repeats=15)
    st = scipy_step_stats(prob, Y0, t_eval, method, tol)
    ys = sol.y.T.reshape(len(t_eval), B, prob.d)
    return {"solver": f"scipy {method}", "mode": "flattened" if B > 1 else "single",
            "nfe": int(sol.nfev), "n_accepted": st["n_accepted"],
            "n_rejected": st["n_rejected"], "error": max_abs_error(ys, ref),
            "time_s": med, "cpu_s": cpu, "repeats": reps}


def run_scipy_loop(prob, Y0, t_eval, ref, method, tol, loop_n) -> dict:
    """RK45 one trajectory at a time over the first ``loop_n``; time scaled to the batch."""
    B = Y0.shape[0]
    fun = prob.scipy_fun(None)
    nfe = n_acc = n_rej = 0
    err = 0.0
    t0 = time.perf_counter()
    c0 = time.process_time()
    for b in range(loop_n):
        sol = solve_ivp(fun, (t_eval[0], t_eval[-1]), Y0[b], method=method, t_eval=t_eval,
                        rtol=tol, atol=tol)
        nfe += sol.nfev
        err = max(err, max_abs_error(sol.y.T, ref[:, b, :]))
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    for b in range(loop_n):
        st = scipy_step_stats(prob, Y0[b:b + 1], t_eval, method, tol)
        n_acc += st["n_accepted"]
        n_rej += st["n_rejected"]
    scale = B / loop_n
    return {"solver": f"scipy {method}", "mode": f"loop (timed on {loop_n}, scaled x{scale:g})",
            "estimated": True, "nfe": round(nfe * scale),
            "n_accepted": round(n_acc * scale), "n_rejected": round(n_rej * scale),
            "error": err, "time_s": elapsed * scale, "cpu_s": cpu * scale, "repeats": 1}


# ------------------------------------------------------------------------ torchdiffeq ---
def run_torchdiffeq(prob, Y0, t_eval, ref, method, tol, budget) -> dict | None:
    try:
        import torch
        import torchdiffeq
    except ImportError:
        return None
    torch.set_num_threads(1)
    field = prob.torch_fun()
    y0 = torch.as_tensor(Y0 if Y0.shape[0] > 1 else Y0[0], dtype=torch.float64)
    tt = torch.as_tensor(t_eval, dtype=torch.float64)

    def call():
        field.nfe = 0
        with torch.no_grad():
            return torchdiffeq.odeint(field, y0, tt, rtol=tol, atol=tol, method=method)

    call()  # warm-up
    med, reps, ys, cpu = time_repeats(call, budget_s=budget, max_repeats=15)
    return {"solver": f"torchdiffeq {method}", "mode": "batched tensor (shared step)",
            "nfe": int(field.nfe), "n_accepted": None, "n_rejected": None,
            "error": max_abs_error(ys.numpy(), ref), "time_s": med, "cpu_s": cpu,
            "repeats": reps}


# -------------------------------------------------------------------------- diffsolve ---
def _stat(stats, name):
    v = stats[name] if isinstance(stats, dict) else getattr(stats, name)
    return int(np.sum(np.asarray(v)))


def diffsolve_available() -> bool:
    try:
        from diffsolve.ode import odeint  # noqa: F401
    except ImportError:
        return False
    return True


def run_diffsolve(prob, Y0, t_eval, ref, method, tol, f_kind, budget, *,
                  batch_mode="per-trajectory", controller="pi") -> dict:
    from diffsolve.ode import odeint

    f = {"njit": prob.f_nb, "numpy": prob.f_np, "autograd": prob.f_ag}[f_kind]
    y0 = Y0 if Y0.shape[0] > 1 else Y0[0]
    # throw=True: a failed solve is a failed row (reported), never a timed NaN result
    kw = {"method": method, "rtol": tol, "atol": tol, "controller": controller,
          "throw": True}
    if Y0.shape[0] > 1:
        kw["batch_mode"] = batch_mode

    def call():
        return odeint(f, y0, t_eval, prob.params, **kw)

    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    c0 = time.process_time()
    t0 = time.perf_counter()
    res = call()
    second, second_cpu = time.perf_counter() - t0, time.process_time() - c0
    if second > 3 * budget:
        # a slow Python-driven solve: the second call (after any compile) is the measurement
        med, reps, cpu = second, 1, second_cpu
    else:
        med, reps, res, cpu = time_repeats(call, budget_s=budget, max_repeats=30)
    ys = np.asarray(res.ys)
    mode = "single" if Y0.shape[0] == 1 else batch_mode
    return {"solver": f"diffsolve {method}", "f": f_kind, "mode": mode,
            "controller": controller,
            "nfe": _stat(res.stats, "nfe"), "n_accepted": _stat(res.stats, "n_accepted"),
            "n_rejected": _stat(res.stats, "n_rejected"),
            "error": max_abs_error(ys, ref), "time_s": med, "cpu_s": cpu, "repeats": reps,
            "first_call_s": first, "compile_s": max(first - med, 0.0)}


def step_sequence_check(prob, tol) -> dict:
    """dopri5 + I controller against scipy RK45: accepted step times, batch 1."""
    from diffsolve.ode import odeint

    t_eval = prob.t_eval()
    st = scipy_step_stats(prob, prob.y0[None, :], t_eval, "RK45", tol)
    res = odeint(prob.f_ag, prob.y0, t_eval, prob.params, method="dopri5", rtol=tol,
                 atol=tol, controller="i", throw=True)
    ts = np.asarray(res.ts).reshape(-1)
    out = {"problem": prob.name, "tol": tol, "scipy_accepted": st["n_accepted"],
           "scipy_rejected": st["n_rejected"],
           "diffsolve_accepted": _stat(res.stats, "n_accepted"),
           "diffsolve_rejected": _stat(res.stats, "n_rejected"),
           "scipy_nfe": st["nfe"], "diffsolve_nfe": _stat(res.stats, "nfe")}
    if len(ts) == len(st["ts"]):
        out["max_abs_dt"] = float(np.max(np.abs(ts - st["ts"])))
        out["same_count"] = True
    else:
        n = min(len(ts), len(st["ts"]))
        out["same_count"] = False
        out["max_abs_dt_common_prefix"] = float(np.max(np.abs(ts[:n] - st["ts"][:n])))
    return out


# ------------------------------------------------------------------------------- main ---
def run_case(prob, B, tol, ref, Y0, args, have_ds) -> list[dict]:
    t_eval = prob.t_eval()
    budget = args.budget
    rows = [run_scipy(prob, Y0, t_eval, ref, "RK45", tol, budget),
            run_scipy(prob, Y0, t_eval, ref, "DOP853", tol, budget)]
    if B > 1 and args.loop_n > 0:
        rows.append(run_scipy_loop(prob, Y0, t_eval, ref, "RK45", tol, args.loop_n))
    td = run_torchdiffeq(prob, Y0, t_eval, ref, "dopri5", tol, budget)
    if td is not None:
        rows.append(td)
    if have_ds:
        modes = ("per-trajectory", "shared") if B > 1 else ("per-trajectory",)
        for method in ("dopri5", "tsit5"):
            for f_kind in ("njit", "numpy", "autograd"):
                for mode in modes:
                    if (B > 1 and mode == "per-trajectory" and f_kind != "njit"
                            and tol < 1e-3):
                        # a Python loop over 512 trajectories (minutes): measured at 1e-3 only
                        continue
                    try:
                        rows.append(run_diffsolve(prob, Y0, t_eval, ref, method, tol, f_kind,
                                                  budget, batch_mode=mode))
                    except Exception as exc:  # reported, not hidden: the row says why
                        rows.append({"solver": f"diffsolve {method}", "f": f_kind,
                                     "mode": mode, "failed": f"{type(exc).__name__}: {exc}"})
    base = next(r for r in rows if r["solver"] == "scipy RK45" and not r.get("estimated"))
    loop = next((r for r in rows if r.get("estimated")), None)
    for r in rows:
        if "time_s" in r:
            r["speedup_vs_rk45"] = base["time_s"] / r["time_s"]
            r["cpu_speedup_vs_rk45"] = base["cpu_s"] / max(r["cpu_s"], 1e-9)
            if loop is not None:
                r["speedup_vs_rk45_loop"] = loop["time_s"] / r["time_s"]
                r["cpu_speedup_vs_rk45_loop"] = loop["cpu_s"] / max(r["cpu_s"], 1e-9)
        r.update(problem=prob.name, batch=B, tol=tol)
    return rows


def print_rows(rows):
    for r in rows:
        if "failed" in r:
            print(f"  {r['solver']:<20} {r.get('f', ''):<7} {r['mode'][:16]:<16} FAILED "
                  f"{r['failed'][:80]}")
            continue
        acc = "-" if r["n_accepted"] is None else r["n_accepted"]
        rej = "-" if r["n_rejected"] is None else r["n_rejected"]
        print(f"  {r['solver']:<20} {r.get('f', ''):<7} {r['mode'][:16]:<16} "
              f"nfe={r['nfe']:<8} acc={acc!s:<7} rej={rej!s:<5} err={r['error']:.2e} "
              f"t={r['time_s'] * 1e3:9.3f} ms cpu={r['cpu_s'] * 1e3:9.3f} ms "
              f"x{r['speedup_vs_rk45']:7.2f} (cpu x{r['cpu_speedup_vs_rk45']:7.2f}) vs RK45",
              flush=True)


def plot(rows, path):
    """Work–precision panels: error against median CPU time, one line per solver set-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = sorted({r["problem"] for r in rows})
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(len(batches), len(probs), figsize=(5.5 * len(probs),
                                                                 4.5 * len(batches)),
                             squeeze=False)
    keys_all = sorted({(r["solver"], r.get("f", ""), r["mode"]) for r in rows
                       if "time_s" in r})
    cmap = plt.get_cmap("tab20")
    style = {k: (cmap(i % 20), "o-" if "diffsolve" in k[0] else "s--")
             for i, k in enumerate(keys_all)}
    for i, B in enumerate(batches):
        for j, pname in enumerate(probs):
            ax = axes[i][j]
            sel = [r for r in rows if r["problem"] == pname and r["batch"] == B
                   and "time_s" in r]
            for key in sorted({(r["solver"], r.get("f", ""), r["mode"]) for r in sel}):
                pts = sorted((r["tol"], r["cpu_s"], r["error"]) for r in sel
                             if (r["solver"], r.get("f", ""), r["mode"]) == key)
                label = " ".join(k for k in key if k)[:44]
                color, fmt = style[key]
                ax.loglog([p[1] for p in pts], [max(p[2], 1e-16) for p in pts], fmt,
                          color=color, label=label, ms=3, lw=1)
            ax.set_title(f"{pname}, batch {B} (points: tol 1e-3, 1e-6, 1e-9)", fontsize=9)
            ax.set_xlabel("median CPU time [s]")
            ax.set_ylabel("max |y - y_ref|")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=5, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="Lotka–Volterra only, tol 1e-6, batch 1 and 64, short budgets")
    parser.add_argument("--budget", type=float, default=0.6,
                        help="seconds of repeats per timed runner (median reported)")
    parser.add_argument("--loop-n", type=int, default=8,
                        help="trajectories timed in the RK45 loop (0: skip the loop)")
    parser.add_argument("--steps-only", action="store_true",
                        help="only the step-sequence check (dopri5 + I controller vs RK45)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    problems = get_problems()
    if args.steps_only:
        steps = [step_sequence_check(problems[n], tol) for n in problems for tol in TOLS]
        for s in steps:
            print("  step sequence:", s, flush=True)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "ode_forward_steps.json").write_text(json.dumps(
            {"meta": machine_meta(), "step_sequence": steps}, indent=1))
        return {"step_sequence": steps}
    if args.quick:
        names, batches, tols = ["lotka_volterra"], (1, 64), (1e-6,)
        args.budget = min(args.budget, 0.1)
        args.loop_n = min(args.loop_n, 2)
    else:
        names, batches, tols = list(problems), (1, 512), TOLS
    have_ds = diffsolve_available()
    if not have_ds:
        print("diffsolve.ode.odeint not importable: running the peers only")
    meta = machine_meta()
    meta.update(quick=args.quick, budget_s=args.budget, loop_n=args.loop_n,
                diffsolve_ode=have_ds)
    rows, steps = [], []
    for name in names:
        prob = problems[name]
        for B in batches:
            Y0 = prob.batch_y0(B)
            ref = reference_solution(prob, Y0, prob.t_eval())
            for tol in tols:
                print(f"{name} batch={B} tol={tol:g} load={os.getloadavg()[0]:.2f}",
                      flush=True)
                case = run_case(prob, B, tol, ref, Y0, args, have_ds)
                print_rows(case)
                rows.extend(case)
        if have_ds:
            for tol in tols:
                try:
                    s = step_sequence_check(prob, tol)
                except Exception as exc:
                    s = {"problem": name, "tol": tol,
                         "failed": f"{type(exc).__name__}: {exc}"}
                print("  step sequence:", s, flush=True)
                steps.append(s)
    meta["loadavg_end"] = list(os.getloadavg())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    out = {"meta": meta, "rows": rows, "step_sequence": steps}
    (args.out_dir / f"ode_forward{suffix}.json").write_text(json.dumps(out, indent=1))
    plot(rows, args.out_dir / f"ode_forward{suffix}.png")
    print(f"wrote {args.out_dir / f'ode_forward{suffix}.json'}")
    return out


if __name__ == "__main__":
    main()
