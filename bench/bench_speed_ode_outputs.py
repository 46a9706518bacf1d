"""Dense output at many output times: ``odeint`` vs SciPy ``solve_ivp`` (issue 14, item 3).

Run from the repository root::

    python -m bench.bench_speed_ode_outputs --tag before   # speed_ode_outputs_before.json
    python -m bench.bench_speed_ode_outputs                # speed_ode_outputs.{json,md}

Side by side in one process, interleaved pairs (SciPy call, diffsolve call) repeated, with
the same plain NumPy ``f`` for both: ``solve_ivp(method="RK45", t_eval=...)`` and
``odeint(method="dopri5", controller="i")`` (the same tableau and step sequence), rtol =
atol = 1e-6, on t in [0, 10] with T output times spread evenly (T = 51 and T = 10⁵).
Cases:

* ``lv``: Lotka–Volterra, 2 components (odeint's small-state host-float loop);
* ``lv16``: 8 uncoupled Lotka–Volterra systems as one 16-component state (odeint's
  stage-kernel array loop).

Reported per case: the ratio SciPy time ÷ diffsolve time of each pair (above 1: diffsolve
is faster), its min and median, the median times, and the first diffsolve call apart (no
compilation is involved for a NumPy f: it is the one-off cost of generating the tableau's
host code). The largest difference between the two libraries' outputs is recorded as a
sanity check (both interpolate the same dense output of the same steps). Then, for
diffsolve alone (SciPy has no gradient), the forward + discrete-adjoint gradient with 10⁵
outputs and a hand-written NumPy ``vjp``, and the part of it spent on the ``t_eval``
cotangent (``ȳ_q · f(t_q, y_q)``: one f call per output, not vectorised).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp

from bench._ode_problems import LV_PARAMS, lv_np, machine_meta

RESULTS = Path(__file__).resolve().parent / "results"
TOL = 1e-6


def lv16(t, y, p):
    """8 uncoupled Lotka–Volterra systems as one 16-component state."""
    return lv_np(t, y.reshape((8, 2)), p).reshape(16)


def lv_vjp_np(t, y, p, v):
    """``(vᵀ ∂f/∂y, vᵀ ∂f/∂p)`` of :func:`lv_np` on one state or a stack ``(..., 2)``."""
    x, z, a, b = y[..., 0], y[..., 1], v[..., 0], v[..., 1]
    vy = np.empty_like(y)
    vy[..., 0] = a * (p[0] - p[1] * z) + b * p[3] * z
    vy[..., 1] = -a * p[1] * x + b * (-p[2] + p[3] * x)
    vp = np.array([np.sum(a * x), -np.sum(a * x * z), -np.sum(b * z), np.sum(b * x * z)])
    return vy, vp


def lv16_vjp(t, y, p, v):
    vy, vp = lv_vjp_np(t, y.reshape((8, 2)), p, v.reshape((8, 2)))
    return vy.reshape(16), vp


VJPS = {"lv": lv_vjp_np, "lv16": lv16_vjp}


def run_grad(name, f, y0, T, repeats) -> dict:
    """Forward + discrete-adjoint gradient (y0, t_eval, params) with T outputs, and the part
    of it spent on the t_eval cotangent (one f call per output)."""
    import diffsolve as ds
    from diffsolve.ode import _odeint, odeint

    t_eval = np.linspace(0.0, 10.0, T)
    W = np.random.default_rng(0).standard_normal((T, y0.shape[0]))
    spent = [0.0]
    inner = _odeint.t_eval_cotangent

    def timed_cotangent(*a, **k):
        t0 = time.perf_counter()
        out = inner(*a, **k)
        spent[0] += time.perf_counter() - t0
        return out

    def call():
        _, v = ds.vjp(odeint, f, y0, t_eval, LV_PARAMS, vjp=VJPS[name], method="dopri5",
                        controller="i", rtol=TOL, atol=TOL)
        return v(ys=W)

    call()
    times, cot = [], []
    _odeint.t_eval_cotangent = timed_cotangent
    try:
        for _ in range(repeats):
            spent[0] = 0.0
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
            cot.append(spent[0])
    finally:
        _odeint.t_eval_cotangent = inner
    return {"case": name, "T": T, "repeats": repeats,
            "fwd_grad_median_s": statistics.median(times), "fwd_grad_min_s": min(times),
            "t_eval_cotangent_median_s": statistics.median(cot)}


def _cases():
    y16 = (np.ones((8, 2)) * (1.0 + 0.05 * np.arange(8))[:, None]).reshape(16)
    return {"lv": (lv_np, np.array([1.0, 1.0])), "lv16": (lv16, y16)}


def run_case(name, f, y0, T, pairs) -> dict:
    from diffsolve.ode import odeint

    t_eval = np.linspace(0.0, 10.0, T)

    def fun(t, y):
        return f(t, y, LV_PARAMS)

    def scipy_call():
        return solve_ivp(fun, (0.0, 10.0), y0, method="RK45", t_eval=t_eval,
                         rtol=TOL, atol=TOL)

    def ds_call():
        return odeint(f, y0, t_eval, LV_PARAMS, method="dopri5", controller="i",
                      rtol=TOL, atol=TOL, throw=True)

    t0 = time.perf_counter()
    res = ds_call()
    first = time.perf_counter() - t0
    sol = scipy_call()
    ratios, ts_sp, ts_ds = [], [], []
    for _ in range(pairs):
        t0 = time.perf_counter()
        scipy_call()
        t1 = time.perf_counter()
        ds_call()
        t2 = time.perf_counter()
        ts_sp.append(t1 - t0)
        ts_ds.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
    ys = np.asarray(res.ys).reshape(T, -1)
    diff = float(np.max(np.abs(ys - sol.y.T)))
    return {"case": name, "n": int(y0.size), "T": T, "pairs": pairs,
            "n_steps": int(res.n_steps), "scipy_nfev": int(sol.nfev),
            "ratio_min": min(ratios), "ratio_median": statistics.median(ratios),
            "scipy_median_s": statistics.median(ts_sp),
            "diffsolve_median_s": statistics.median(ts_ds),
            "diffsolve_first_call_s": first,
            "diffsolve_us_per_output": 1e6 * statistics.median(ts_ds) / T,
            "max_abs_diff_vs_scipy": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", default="", help="suffix of the results files (e.g. before)")
    ap.add_argument("--pairs", type=int, default=7)
    args = ap.parse_args()
    meta = machine_meta()
    rows = []
    for name, (f, y0) in _cases().items():
        for T in (51, 100_000):
            pairs = args.pairs if T > 51 else 5 * args.pairs
            row = run_case(name, f, y0, T, pairs)
            rows.append(row)
            print(f"{name:5s} n={row['n']:3d} T={T:6d}: scipy/diffsolve min "
                  f"{row['ratio_min']:.3f} median {row['ratio_median']:.3f}  "
                  f"(scipy {1e3 * row['scipy_median_s']:.2f} ms, diffsolve "
                  f"{1e3 * row['diffsolve_median_s']:.2f} ms, first call "
                  f"{1e3 * row['diffsolve_first_call_s']:.2f} ms; |diff| "
                  f"{row['max_abs_diff_vs_scipy']:.1e})", flush=True)
    grads = []
    for name, (f, y0) in _cases().items():
        g = run_grad(name, f, y0, 100_000, 3)
        grads.append(g)
        print(f"{name:5s} T=100000 forward + gradient: median {g['fwd_grad_median_s']:.3f} s "
              f"(t_eval cotangent {g['t_eval_cotangent_median_s']:.3f} s)", flush=True)
    import os

    meta["loadavg_end"] = list(os.getloadavg())
    suffix = f"_{args.tag}" if args.tag else ""
    RESULTS.mkdir(exist_ok=True)
    out = {"meta": meta, "rtol": TOL, "atol": TOL, "rows": rows, "gradients": grads}
    before = RESULTS / "speed_ode_outputs_before.json"
    if not args.tag and before.exists():
        old = {(r["case"], r["T"]): r for r in json.loads(before.read_text())["rows"]}
        out["before_after"] = [
            {"case": r["case"], "T": r["T"],
             "before_ratio_median": old[(r["case"], r["T"])]["ratio_median"],
             "after_ratio_median": r["ratio_median"],
             "before_ratio_min": old[(r["case"], r["T"])]["ratio_min"],
             "after_ratio_min": r["ratio_min"]}
            for r in rows if (r["case"], r["T"]) in old]
        old_g = {g["case"]: g for g in json.loads(before.read_text()).get("gradients", [])}
        out["gradients_before_after"] = [
            {"case": g["case"], "T": g["T"],
             "before_s": old_g[g["case"]]["fwd_grad_median_s"],
             "after_s": g["fwd_grad_median_s"],
             "before_t_eval_cotangent_s": old_g[g["case"]]["t_eval_cotangent_median_s"],
             "after_t_eval_cotangent_s": g["t_eval_cotangent_median_s"]}
            for g in grads if g["case"] in old_g]
    (RESULTS / f"speed_ode_outputs{suffix}.json").write_text(json.dumps(out, indent=1))
    lines = ["# odeint dense output vs SciPy solve_ivp (RK45 / dopri5 + I controller, "
             f"rtol = atol = {TOL:g})", "",
             "Ratio = SciPy time ÷ diffsolve time per interleaved pair (above 1: diffsolve "
             "faster); same NumPy f.", "",
             "| case | n | T | steps | ratio min | ratio median | SciPy ms | diffsolve ms "
             "| diffsolve µs/output |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['n']} | {r['T']} | {r['n_steps']} | "
                     f"{r['ratio_min']:.3f} | {r['ratio_median']:.3f} | "
                     f"{1e3 * r['scipy_median_s']:.2f} | {1e3 * r['diffsolve_median_s']:.2f} | "
                     f"{r['diffsolve_us_per_output']:.2f} |")
    if "before_after" in out:
        lines += ["", "Before → after (median ratio, min ratio):", "",
                  "| case | T | before median | after median | before min | after min |",
                  "|---|---|---|---|---|---|"]
        for r in out["before_after"]:
            lines.append(f"| {r['case']} | {r['T']} | {r['before_ratio_median']:.3f} | "
                         f"{r['after_ratio_median']:.3f} | {r['before_ratio_min']:.3f} | "
                         f"{r['after_ratio_min']:.3f} |")
    lines += ["", "Forward + discrete-adjoint gradient (y0, t_eval, params; NumPy f and vjp) "
              "with 10⁵ outputs, median seconds (of which the t_eval cotangent, one f call "
              "per output):", "", "| case | fwd + grad s | t_eval cotangent s |",
              "|---|---|---|"]
    for g in grads:
        lines.append(f"| {g['case']} | {g['fwd_grad_median_s']:.3f} | "
                     f"{g['t_eval_cotangent_median_s']:.3f} |")
    if "gradients_before_after" in out:
        lines += ["", "| case | before fwd + grad s | after fwd + grad s | before t_eval cot. s "
                  "| after t_eval cot. s |", "|---|---|---|---|---|"]
        for g in out["gradients_before_after"]:
            lines.append(f"| {g['case']} | {g['before_s']:.3f} | {g['after_s']:.3f} | "
                         f"{g['before_t_eval_cotangent_s']:.3f} | "
                         f"{g['after_t_eval_cotangent_s']:.3f} |")
    lines += ["", f"Load average at start {meta['loadavg_start']}, end {meta['loadavg_end']}."]
    (RESULTS / f"speed_ode_outputs{suffix}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
