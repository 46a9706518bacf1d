"""Gradients of ``diffsolve.ode.odeint``: accuracy, cost and memory of the two adjoints.

Run from the repository root::

    python -m bench.bench_ode_gradients            # full (a few minutes on 2 cores)
    python -m bench.bench_ode_gradients --quick    # seconds

Loss: ``L = Σ W ⊙ ys`` over all 51 output times, W ~ N(0, 1) (seed 0); gradients with respect
to y0 and params through ``diffsolve.vjp``.

1. **Accuracy** (batch 1, LV / VdP / spiral MLP, dopri5 and tsit5, rtol = atol in {1e-6,
   1e-9}): the discrete adjoint against central finite differences of ``odeint`` replaying
   the forward's accepted steps (``step_ts=res.ts``: the frozen step sequence, the map the
   discrete adjoint differentiates exactly): in every coordinate of (y0, params) for LV and
   VdP (step 1e-6·max(1, |x_i|)) and along 4 random unit directions (step 1e-8) for the 254
   of the spiral MLP; max relative error reported; against finite differences of the adaptive solve
   (steps re-chosen per perturbation, for contrast); the backsolve adjoint against the
   discrete one and both against a tight reference (the discrete adjoint at rtol = atol =
   1e-12): relative errors ‖g − g_ref‖ / ‖g_ref‖. These gradients use the Numba field with
   its hand-written ``@njit`` VJP (``vjp=``), which agree with the autograd forms to ~1e-13.
2. **Cost**: median process CPU time (robust on the shared machine; all single-threaded) of
   the forward solve alone and of forward + backward, for the
   discrete and backsolve adjoints, plain autograd.numpy f (VJP traced by autograd) and
   Numba f with a hand-written ``@njit`` VJP; batch 1 and 64 (shared step size); peers:
   torchdiffeq ``odeint`` (backpropagation through the solver) and ``odeint_adjoint``
   (backsolve) on the same problem, float64, one thread.
3. **Memory**: tracemalloc peak of forward + discrete backward on LV, batch 64 (shared), for
   horizons t1 in {5, 20, 80} (~50 to ~800 accepted steps), with ``checkpoint_every`` in
   {1, 16} (states stored every k steps; the backward recomputes the others), and of the
   backsolve adjoint (t1 <= 20 only: it is slow under tracemalloc).

Results: ``bench/results/ode_gradients.json`` and ``ode_gradients.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np

from bench._ode_problems import get_problems, machine_meta, time_repeats

RESULTS = Path(__file__).resolve().parent / "results"


def _rel(a, b) -> float:
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def grads(prob, y0, t_eval, W, **kw):
    """(result, d L / d y0, d L / d params) through diffsolve.vjp, with the Numba field and
    its hand-written @njit VJP (the autograd field gives the same values, more slowly)."""
    import diffsolve as ds
    from diffsolve.ode import odeint

    res, vjp_fn = ds.vjp(odeint, prob.f_nb, y0, t_eval, prob.params, vjp=prob.vjp_nb, **kw)
    out = vjp_fn(ys=W)
    # one cotangent per positional array argument: y0, t_eval, params
    return res, np.asarray(out[0]), np.asarray(out[-1])


def loss_value(prob, y0, params, t_eval, W, **kw) -> float:
    """L at (y0, params), solved with the Numba field (same values as the autograd one to
    ~1e-13, and compiled, so the many finite-difference solves stay cheap)."""
    from diffsolve.ode import odeint

    res = odeint(prob.f_nb, y0, t_eval, params, **kw)
    return float(np.sum(W * np.asarray(res.ys)))


def fd_check(prob, y0, t_eval, W, kw, g, h_rel=1e-6, n_dirs=4) -> float:
    """Max relative error of g against central differences of L in (y0, params).

    Every coordinate when there are at most 10, else ``n_dirs`` random unit directions
    (seed 1): |g·v − (L(x + hv) − L(x − hv)) / 2h| / max(|fd|, ‖g‖·1e-3).
    """
    x0 = np.concatenate([y0, prob.params])
    d, n = y0.shape[0], x0.shape[0]
    if n <= 10:
        dirs = np.eye(n)
    else:
        dirs = np.random.default_rng(1).standard_normal((n_dirs, n))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    worst = 0.0
    for v in dirs:
        # a coordinate: relative step; a unit direction: absolute step 1e-8 (the spiral MLP
        # has weights up to ~340 and strong curvature: the O(h^2) truncation error measured
        # 4e-3 at h = 1e-5, 4e-5 at 1e-6, 4e-7 at 1e-7 and 1e-8 at 1e-8)
        h = h_rel * max(1.0, float(abs(x0 @ v))) if n <= 10 else 1e-8
        xp_, xm_ = x0 + h * v, x0 - h * v
        lp = loss_value(prob, xp_[:d], xp_[d:], t_eval, W, **kw)
        lm = loss_value(prob, xm_[:d], xm_[d:], t_eval, W, **kw)
        fd = (lp - lm) / (2 * h)
        worst = max(worst, abs(float(g @ v) - fd) / max(abs(fd), 1e-3 * np.linalg.norm(g)))
    return worst


def accuracy(prob, method, tol) -> dict:
    t_eval = prob.t_eval()
    W = np.random.default_rng(0).standard_normal((len(t_eval), prob.d))
    kw = {"method": method, "rtol": tol, "atol": tol, "throw": True}
    res, gy_d, gp_d = grads(prob, prob.y0, t_eval, W, adjoint="discrete", **kw)
    g_d = np.concatenate([gy_d, gp_d])
    fd_frozen = fd_check(prob, prob.y0, t_eval, W, dict(kw, step_ts=res.ts), g_d)
    fd_adaptive = fd_check(prob, prob.y0, t_eval, W, kw, g_d)
    _, gy_b, gp_b = grads(prob, prob.y0, t_eval, W, adjoint="backsolve", **kw)
    g_b = np.concatenate([gy_b, gp_b])
    _, gy_r, gp_r = grads(prob, prob.y0, t_eval, W, adjoint="discrete", method=method,
                          rtol=1e-12, atol=1e-12, throw=True)
    g_ref = np.concatenate([gy_r, gp_r])
    return {"problem": prob.name, "method": method, "tol": tol,
            "n_accepted": int(res.n_accepted), "n_params": int(prob.params.shape[0]),
            "discrete_vs_fd_frozen": fd_frozen,
            "discrete_vs_fd_adaptive": fd_adaptive,
            "backsolve_vs_discrete": _rel(g_b, g_d),
            "discrete_vs_tight": _rel(g_d, g_ref),
            "backsolve_vs_tight": _rel(g_b, g_ref)}


def cost(prob, B, tol, budget, quick=False) -> list[dict]:
    """Forward and forward+backward wall times, diffsolve and torchdiffeq."""
    import diffsolve as ds
    from diffsolve.ode import odeint

    t_eval = prob.t_eval()
    Y0 = prob.batch_y0(B)
    y0 = Y0 if B > 1 else Y0[0]
    W = np.random.default_rng(0).standard_normal((len(t_eval), *y0.shape))
    rows = []
    base = {"method": "dopri5", "rtol": tol, "atol": tol, "throw": True}
    if B > 1:
        base["batch_mode"] = "shared"
    variants = [("python f, autograd VJP", prob.f_ag, None),
                ("numba f, @njit VJP", prob.f_nb, prob.vjp_nb)][quick:]
    for label, f, vjp in variants:
        kw = dict(base) if vjp is None else dict(base, vjp=vjp)
        odeint(f, y0, t_eval, prob.params, **kw)  # compile / warm up
        _, _, res, t_fwd = time_repeats(
            lambda f=f, kw=kw: odeint(f, y0, t_eval, prob.params, **kw), budget_s=budget)
        for adjoint in ("discrete", "backsolve"):
            kwa = dict(kw, adjoint=adjoint)

            def fb(f=f, kwa=kwa):
                _, vjp_fn = ds.vjp(odeint, f, y0, t_eval, prob.params, **kwa)
                return vjp_fn(ys=W)

            t_fb, reps = _time_fb(fb, budget)
            rows.append({"problem": prob.name, "batch": B, "tol": tol,
                         "solver": "diffsolve dopri5", "f": label, "adjoint": adjoint,
                         "n_accepted": int(res.n_accepted), "forward_s": t_fwd,
                         "fwd_bwd_s": t_fb, "backward_over_forward": (t_fb - t_fwd) / t_fwd,
                         "repeats": reps})
    if not quick:
        rows.extend(torch_cost(prob, Y0 if B > 1 else Y0[0], t_eval, W, tol, budget, B))
    return rows


def _time_fb(fb, budget):
    """CPU seconds of forward + backward: one warm-up call, then the median of repeats, or
    the warm-up's successor alone when a call takes longer than 3 budgets."""
    fb()
    c0 = time.process_time()
    fb()
    one = time.process_time() - c0
    if one > 3 * budget:
        return one, 1
    _, reps, _, cpu = time_repeats(fb, budget_s=budget)
    return cpu, reps


def torch_cost(prob, y0_np, t_eval, W, tol, budget, B) -> list[dict]:
    try:
        import torch
        import torchdiffeq
    except ImportError:
        return []
    torch.set_num_threads(1)
    f = prob.f_torch

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.as_tensor(prob.params, dtype=torch.float64))

        def forward(self, t, y):
            return f(t, y, self.p)

    field = Field()
    tt = torch.as_tensor(t_eval, dtype=torch.float64)
    Wt = torch.as_tensor(W, dtype=torch.float64)
    y0 = torch.as_tensor(y0_np, dtype=torch.float64)

    def fwd():
        with torch.no_grad():
            return torchdiffeq.odeint(field, y0, tt, rtol=tol, atol=tol, method="dopri5")

    _, _, _, t_fwd = time_repeats(fwd, budget_s=budget)
    rows = []
    for name, solver in (("backprop through solver", torchdiffeq.odeint),
                         ("odeint_adjoint (backsolve)", torchdiffeq.odeint_adjoint)):
        def fb(solver=solver):
            yy = y0.clone().requires_grad_(True)
            field.zero_grad()
            ys = solver(field, yy, tt, rtol=tol, atol=tol, method="dopri5")
            (ys * Wt).sum().backward()
            return yy.grad

        t_fb, reps = _time_fb(fb, budget)
        rows.append({"problem": prob.name, "batch": B, "tol": tol,
                     "solver": "torchdiffeq dopri5", "f": "torch", "adjoint": name,
                     "forward_s": t_fwd, "fwd_bwd_s": t_fb,
                     "backward_over_forward": (t_fb - t_fwd) / t_fwd, "repeats": reps})
    return rows


def memory(horizons, every_list, B=64, tol=1e-6, backsolve_max_t1=20.0) -> list[dict]:
    """tracemalloc peak of forward + backward on LV (batch B, shared step)."""
    import diffsolve as ds
    from diffsolve.ode import odeint

    prob = get_problems()["lotka_volterra"]
    Y0 = prob.batch_y0(B)
    rows = []
    for t1 in horizons:
        t_eval = np.linspace(0.0, t1, 51)
        W = np.random.default_rng(0).standard_normal((51, B, 2))
        cases = [("discrete", e) for e in every_list]
        if t1 <= backsolve_max_t1:  # the Python-driven backsolve is slow under tracemalloc
            cases.append(("backsolve", 1))
        for adjoint, every in cases:
            kw = {"method": "dopri5", "rtol": tol, "atol": tol, "batch_mode": "shared",
                  "adjoint": adjoint, "checkpoint_every": every, "throw": True}
            res = odeint(prob.f_ag, Y0, t_eval, prob.params, **kw)
            tracemalloc.start()
            tracemalloc.reset_peak()
            res = odeint(prob.f_ag, Y0, t_eval, prob.params, **kw)
            _, peak_fwd = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            t0 = time.perf_counter()
            _, vjp_fn = ds.vjp(odeint, prob.f_ag, Y0, t_eval, prob.params, **kw)
            vjp_fn(ys=W)
            elapsed = time.perf_counter() - t0
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rows.append({"t1": t1, "batch": B, "adjoint": adjoint, "checkpoint_every": every,
                         "n_accepted": int(res.n_accepted), "peak_forward_bytes": peak_fwd,
                         "peak_fwd_bwd_bytes": peak, "fwd_bwd_s": elapsed,
                         "state_bytes": int(Y0.nbytes)})
            print(f"  t1={t1:<6g} {adjoint:<9} every={every:<3} steps={res.n_accepted:<5} "
                  f"peak fwd={peak_fwd / 1e6:7.2f} MB fwd+bwd={peak / 1e6:7.2f} MB "
                  f"({elapsed:.2f} s)", flush=True)
    return rows


def plot(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    mem = out["memory"]
    for adjoint, every in sorted({(r["adjoint"], r["checkpoint_every"]) for r in mem}):
        sel = sorted((r["n_accepted"], r["peak_fwd_bwd_bytes"]) for r in mem
                     if r["adjoint"] == adjoint and r["checkpoint_every"] == every)
        lab = f"{adjoint}" + (f", checkpoint every {every}" if adjoint == "discrete" else "")
        axes[0].loglog([s[0] for s in sel], [s[1] / 1e6 for s in sel], "o-", label=lab)
    axes[0].set_xlabel("accepted steps")
    axes[0].set_ylabel("tracemalloc peak, forward + backward [MB]")
    axes[0].set_title("LV, batch 64 (shared step), rtol = atol = 1e-6")
    axes[0].legend(fontsize=7)
    axes[0].grid(True, which="both", alpha=0.3)
    acc = out["accuracy"]
    labels = [f"{r['problem'][:6]} {r['method']} {r['tol']:g}" for r in acc]
    x = np.arange(len(acc))
    for k, key in enumerate(("discrete_vs_fd_frozen", "discrete_vs_fd_adaptive",
                             "backsolve_vs_discrete")):
        axes[1].bar(x + 0.27 * (k - 1), [max(r[key], 1e-17) for r in acc], 0.27, label=key)
    axes[1].set_yscale("log")
    axes[1].set_xticks(x, labels, rotation=70, fontsize=6)
    axes[1].set_ylabel("relative gradient difference")
    axes[1].legend(fontsize=7)
    axes[1].grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    problems = get_problems()
    meta = machine_meta()
    meta["quick"] = args.quick
    if args.quick:
        acc_cases = [("lotka_volterra", "dopri5", 1e-6)]
        cost_cases = [("lotka_volterra", 1, 1e-6)]
        horizons, every_list = (2.0, 4.0), (1, 8)
        args.budget = min(args.budget, 0.1)
    else:
        acc_cases = [(p, m, tol) for p in problems for m in ("dopri5", "tsit5")
                     for tol in (1e-6, 1e-9)]
        cost_cases = [(p, B, 1e-6) for p in problems for B in (1, 64)]
        horizons, every_list = (5.0, 20.0, 80.0), (1, 16)
    out = {"meta": meta, "accuracy": [], "cost": [], "memory": []}
    print("accuracy", flush=True)
    for pname, method, tol in acc_cases:
        r = accuracy(problems[pname], method, tol)
        print(f"  {pname:<15} {method} tol={tol:g} steps={r['n_accepted']:<5} "
              f"disc/FD(frozen)={r['discrete_vs_fd_frozen']:.1e} "
              f"disc/FD(adaptive)={r['discrete_vs_fd_adaptive']:.1e} "
              f"back/disc={r['backsolve_vs_discrete']:.1e} "
              f"disc/tight={r['discrete_vs_tight']:.1e} back/tight={r['backsolve_vs_tight']:.1e}",
              flush=True)
        out["accuracy"].append(r)
    print(f"cost (load {os.getloadavg()[0]:.2f})", flush=True)
    for pname, B, tol in cost_cases:
        rows = cost(problems[pname], B, tol, args.budget, quick=args.quick)
        for r in rows:
            print(f"  {pname:<15} B={B:<3} {r['solver']:<18} {r['f']:<24} {r['adjoint']:<27} "
                  f"fwd={r['forward_s'] * 1e3:8.2f} ms fwd+bwd={r['fwd_bwd_s'] * 1e3:8.2f} ms "
                  f"bwd/fwd={r['backward_over_forward']:.2f}", flush=True)
        out["cost"].extend(rows)
    print("memory", flush=True)
    out["memory"] = memory(horizons, every_list, B=8 if args.quick else 64,
                           backsolve_max_t1=0.0 if args.quick else 20.0)
    meta["loadavg_end"] = list(os.getloadavg())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (args.out_dir / f"ode_gradients{suffix}.json").write_text(json.dumps(out, indent=1))
    plot(out, args.out_dir / f"ode_gradients{suffix}.png")
    return out


if __name__ == "__main__":
    main()
