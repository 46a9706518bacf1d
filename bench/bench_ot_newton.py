"""Benchmark ``diffsolve.ot.sinkhorn_newton_sparse`` (SNS) against POT 0.9.7 and diffsolve's
own ``sinkhorn``: wall time to an L1 marginal error of 1e-9, side by side in one process.

Run from the repository root::

    python -m bench.bench_ot_newton            # full CPU run (~15 min on a busy machine)
    python -m bench.bench_ot_newton --quick    # smoke run, under a minute
    python -m bench.bench_ot_newton --gpu      # CuPy: SNS vs diffsolve sinkhorn, n <= 10 000

Problem (shared with ``bench/bench_sinkhorn.py``): two Gaussian point clouds in 2-D (``y``
shifted by 1), uniform weights, squared Euclidean cost normalised to max 1; n = m in
{500, 1000, 2000}, eps in {0.01, 0.002}. One error function for every method:
``diffsolve.ot._errors.marginal_error`` (L1, ``||P1 - a||_1 + ||P^T 1 - b||_1``) on the
returned plan; target 1e-9.

Methods:

* ``sns``: ``sinkhorn_newton_sparse(atol=1e-9, rtol=0)`` with its defaults (50 Sinkhorn warm-up
  iterations, Sinkhorn continued while its rate predicts 1e-9 within 500 more iterations,
  adaptive density). ``sns_newton_only``: the same with ``sinkhorn_switch=0`` (Tang et
  al.'s fixed warm-up, then Newton). Median of ``--repeats`` runs.
* ``ds_sinkhorn``: ``diffsolve.ot.sinkhorn(atol=1e-9, rtol=0)`` (plain, default kernel), median,
  capped by the same time budget as POT (``max_iter`` from a 50-iteration probe).
* POT: ``sinkhorn`` (kernel mode), ``sinkhorn_log``, ``sinkhorn_stabilized``,
  ``sinkhorn_epsilon_scaling``, ``greenkhorn``. POT stops on its own criterion (the L2
  column violation, weaker than L1); when its plan misses 1e-9 in L1 although POT stopped
  on that criterion, the run is repeated with ``stopThr`` ten times smaller (up to three
  times) and the time of the first run that reaches 1e-9 is reported. Every POT run is
  capped by a time budget (``--budget``, seconds): ``numItermax`` is set from the time
  per iteration of a short probe run, and a method that runs out of iterations is reported
  as "did not reach 1e-9 within X s" with the L1 error it had. Numerical warnings
  (under/overflow) and non-finite plans are recorded.
* JIT: SNS's first call on a small problem in a fresh Numba cache, reported apart.

Traces (error vs iterations and vs wall time, Sinkhorn vs SNS) for one case:
``ot_newton_error_vs_iters.png`` / ``ot_newton_error_vs_time.png``. The x axis counts
Sinkhorn iterations for Sinkhorn, and warm-up iterations plus Newton iterations for SNS.

Machine load (``os.getloadavg``) is recorded per case; on a shared machine absolute times
are noisy and the ratios (measured in one process, interleaved) are what to read. BLAS runs
single-threaded (``OPENBLAS_NUM_THREADS=1``, recorded) unless set otherwise: on busy cores
multi-threaded BLAS matrix-vector products (POT's kernel mode) slow down erratically.
Results: ``bench/results/ot_newton_cpu[_quick].json`` (``ot_newton_gpu.json`` with
``--gpu``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from bench._common import numba_cache
from bench._ot_problems import clouds, l1_error, timed

RESULTS = Path(__file__).resolve().parent / "results"
TOL = 1e-9
POT_METHODS = ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized", "sinkhorn_epsilon_scaling",
               "greenkhorn")
# iterations of the probe run that measures POT's time per iteration (an eps-scaling
# iteration is a whole inner Sinkhorn run; a Greenkhorn iteration updates one row or column)
PROBE_ITERS = {"sinkhorn": 10, "sinkhorn_log": 3, "sinkhorn_stabilized": 10,
               "sinkhorn_epsilon_scaling": 1, "greenkhorn": 2000}


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def _sns(a, b, C, eps, **kw):
    import diffsolve.ot

    kw.setdefault("tol", TOL)
    return _quiet(diffsolve.ot.sinkhorn_newton_sparse, a, b, C, eps, **kw)


def _sinkhorn(a, b, C, eps, **kw):
    import diffsolve.ot

    return _quiet(diffsolve.ot.sinkhorn, a, b, C, eps, **kw)


def _pot_once(a, b, C, eps, method, n_iter, stop):
    import ot

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(all="ignore"):
            P, log = ot.sinkhorn(a, b, C, eps, method=method, numItermax=n_iter, stopThr=stop,
                                 log=True)
    msgs = sorted({str(w.message)[:100] for w in caught})
    # some methods (stabilized, greenkhorn) do not report their iteration count
    return np.asarray(P), (int(log["niter"]) if "niter" in log else None), msgs


def _child(conn, fn, args):
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as err:  # report any failure to the parent instead of hanging
        conn.send(("error", repr(err)))
    finally:
        conn.close()


def in_subprocess(fn, args, timeout):
    """``(seconds, fn(*args))`` run in a forked process, or ``(None, None)`` if it takes
    longer than ``timeout`` seconds (the process is then terminated). Some POT methods
    ignore ``numItermax`` (``sinkhorn_epsilon_scaling`` runs its inner loops regardless),
    so a hard limit is the only way to keep the benchmark within its time budget."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    t0 = time.perf_counter()
    proc = ctx.Process(target=_child, args=(child, fn, args), daemon=True)
    proc.start()
    child.close()
    ready = parent.poll(timeout)
    elapsed = time.perf_counter() - t0
    if not ready:
        proc.terminate()
        proc.join()
        return None, None
    status, value = parent.recv()
    proc.join()
    if status != "ok":
        raise RuntimeError(value)
    return elapsed, value


def _timed_pot(a, b, C, eps, method, n_iter, stop):
    t0 = time.perf_counter()
    out = _pot_once(a, b, C, eps, method, n_iter, stop)
    return time.perf_counter() - t0, out


def pot_time_to_tol(a, b, C, eps, method, budget):
    """POT's ``method`` to an L1 error of 1e-9 within ``budget`` seconds (see the module
    docstring); returns a dict for the JSON."""
    probe = PROBE_ITERS[method]
    _, got = in_subprocess(_timed_pot, (a, b, C, eps, method, probe, 0.0), budget)
    if got is None:
        return {"budget_s": budget, "reached": False, "s": None, "l1_error": None,
                "reason": f"a {probe}-iteration probe did not finish within {budget:g} s"}
    t_probe = got[0]
    per_iter = t_probe / probe
    n_budget = max(probe, int(budget / per_iter))
    stop = TOL
    out = {"ms_per_iter": 1e3 * per_iter, "budget_s": budget, "iter_budget": n_budget}
    grow = 0
    for _attempt in range(6):
        _, got = in_subprocess(_timed_pot, (a, b, C, eps, method, n_budget, stop),
                               1.5 * budget + 5)
        if got is None:
            out.update(reached=False, s=None, reason=f"did not finish within {budget:g} s "
                                                     f"(terminated; {n_budget} iterations asked)")
            return out
        t, (P, it, msgs) = got
        finite = bool(np.all(np.isfinite(P)))
        err = l1_error(P, a, b) if finite else None
        numerical = [m for m in msgs if "umerical" in m or "overflow" in m.lower()
                     or "underflow" in m.lower() or "nan" in m.lower()]
        out.update({"s": t, "iters": it, "l1_error": err, "stopThr": stop, "warnings": msgs,
                    "numerically_ok": finite and not numerical})
        if err is not None and err <= TOL:
            out["reached"] = True
            return out
        if not finite:
            out.update(reached=False, reason="non-finite plan (under/overflow)")
            return out
        if t >= budget:
            out.update(reached=False, reason=f"did not reach 1e-9 within {budget:g} s "
                                             f"({it} iterations, L1 error {err:.2e})")
            return out
        # ran out of iterations? (for methods that do not report their count: it took at
        # least half the time the probe predicts for the whole iteration budget)
        capped = it >= n_budget - 1 if it is not None else t >= 0.5 * n_budget * per_iter
        if capped:
            if t < 0.5 * budget and grow < 3:
                # the probe overestimated the time per iteration (start-up costs): more
                # iterations fit in the budget
                n_budget = int(n_budget * 0.8 * budget / max(t, 1e-3))
                out["iter_budget"] = n_budget
                grow += 1
                continue
            out.update(reached=False, reason=f"did not reach 1e-9 within {budget:g} s "
                                             f"({it} iterations, L1 error {err:.2e})")
            return out
        stop /= 10  # POT stopped on its own, weaker criterion: tighten it
    out.update(reached=False, reason=f"stopped at L1 error {err:.2e} even with stopThr "
                                     f"{stop * 10:g}")
    return out


def sinkhorn_iter_budget(a, b, C, eps, budget):
    """Iterations of diffsolve's sinkhorn that fit in ``budget`` seconds (from a probe)."""
    t, _ = timed(lambda: _sinkhorn(a, b, C, eps, rtol=0, atol=0, maxiter=50), 1)
    return max(50, int(budget / (t / 50)))


def cpu_case(n, eps, repeats, budget, pot_methods):
    a, b, C = clouds(n)
    case = {"n": n, "eps": eps, "load": os.getloadavg()}
    for name, kw in (("sns", {}), ("sns_newton_only", {"sinkhorn_switch": 0})):
        t, r = timed(lambda kw=kw: _sns(a, b, C, eps, **kw), repeats)
        case[name] = {"s": t, "newton_iters": int(r.n_iters),
                      "sinkhorn_iters": int(r.n_sinkhorn), "cg_iters": int(r.n_cg),
                      "fallbacks": int(r.n_fallbacks), "converged": bool(r.converged),
                      "l1_error": l1_error(r.plan, a, b)}
    max_iter = sinkhorn_iter_budget(a, b, C, eps, budget)
    t, s = timed(lambda: _sinkhorn(a, b, C, eps, atol=TOL, rtol=0, maxiter=max_iter), 1)
    if t < budget / 4 and repeats > 1:  # repeat only the runs that are cheap to repeat
        t, s = timed(lambda: _sinkhorn(a, b, C, eps, atol=TOL, rtol=0, maxiter=max_iter), repeats)
    case["ds_sinkhorn"] = {"s": t, "iters": int(s.n_iters), "converged": bool(s.converged),
                           "l1_error": l1_error(s.plan, a, b), "iter_budget": max_iter,
                           "budget_s": budget}
    case["pot"] = {m: pot_time_to_tol(a, b, C, eps, m, budget) for m in pot_methods}
    t_sns = case["sns"]["s"]
    reached = {m: v["s"] for m, v in case["pot"].items() if v.get("reached")}
    case["speedup_vs_ds_sinkhorn"] = case["ds_sinkhorn"]["s"] / t_sns
    case["speedup_vs_pot"] = {m: (v["s"] / t_sns if v.get("reached") else None)
                              for m, v in case["pot"].items()}
    fastest = min(reached.values()) if reached else None
    # the target: SNS faster to 1e-9 than every POT method (one that never gets there within
    # its budget is slower by definition, as long as SNS itself got there within it)
    case["faster_than_every_pot_method"] = bool(
        case["sns"]["converged"] and case["sns"]["l1_error"] <= TOL
        and (fastest is None or t_sns < fastest)
        and all(v.get("reached") or t_sns < budget for v in case["pot"].values()))
    return case


def traces(n, eps, budget):
    """Error vs iterations and wall time: diffsolve sinkhorn (every 10 iterations, at most
    ``budget`` seconds) and SNS (after its warm-up and after each Newton step)."""
    a, b, C = clouds(n)
    sk_rows = []
    max_iter = sinkhorn_iter_budget(a, b, C, eps, budget)
    t0 = time.perf_counter()
    _sinkhorn(a, b, C, eps, atol=1e-11, rtol=0, maxiter=max_iter,
              callback=lambda st: sk_rows.append(
                  (st.n_iters, time.perf_counter() - t0, float(np.max(st.error)))))
    # the SNS warm-up is the same Sinkhorn: its time and error come from a 50-iteration run
    t_warm, w = timed(lambda: _sinkhorn(a, b, C, eps, atol=1e-11, rtol=0, maxiter=50), 1)
    rows = []
    t0 = time.perf_counter()
    # the Newton stage forced (sinkhorn_switch=0): the trace shows Newton's convergence even
    # where the default would let Sinkhorn finish
    res = _sns(a, b, C, eps, atol=1e-11, rtol=0, sinkhorn_switch=0,
               callback=lambda st: rows.append((st.n_iters, time.perf_counter() - t0,
                                                st.error)))
    t_newton0 = rows[0][1] if rows else 0.0
    sns_rows = [(int(res.n_sinkhorn), t_warm, float(w.error))]  # the warm-up's error
    # shift the Newton times so that they start after the separately timed warm-up
    first_newton = t_newton0 - (t_newton0 - t_warm if t_newton0 > t_warm else 0.0)
    sns_rows += [(int(res.n_sinkhorn) + it, t - t_newton0 + first_newton, e)
                 for it, t, e in rows]
    del w
    return {"n": n, "eps": eps, "sinkhorn": sk_rows, "sns": sns_rows,
            "sns_newton_iters": int(res.n_iters), "sns_warmup": int(res.n_sinkhorn)}


def plots(trace, out_dir, suffix):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, label, fname in ((0, "iterations (Sinkhorn; SNS: warm-up + Newton)", "iters"),
                              (1, "wall time [s]", "time")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, style in (("sinkhorn", "-"), ("sns", "o-")):
            rows = trace[name]
            if rows:
                ax.semilogy([r[key] for r in rows], [max(r[2], 1e-16) for r in rows], style,
                            label={"sinkhorn": "diffsolve sinkhorn",
                                   "sns": "SNS (sinkhorn_switch=0)"}[name],
                            markersize=3)
        if key == 0:
            ax.set_xscale("log")  # SNS's Newton steps sit just after its 50 warm-up iterations
        ax.axhline(TOL, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(label)
        ax.set_ylabel("L1 marginal error")
        ax.set_title(f"n = {trace['n']}, eps = {trace['eps']}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / f"ot_newton_error_vs_{fname}{suffix}.png", dpi=120)
        plt.close(fig)


def gpu_run(sizes, eps_list, repeats, out_dir):
    import cupy

    sync = cupy.cuda.Device().synchronize
    cases = []
    meta = {"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
            "cupy": cupy.__version__, "tol": TOL}
    for n in sizes:
        a, b, C = clouds(n, xp=cupy)
        for eps in eps_list:
            case = {"n": n, "eps": eps}
            _sns(a, b, C, eps, maxiter=1)  # compile the CUDA kernels for this dtype
            t, r = timed(lambda a=a, b=b, C=C, eps=eps: _sns(a, b, C, eps), repeats, sync)
            case["sns"] = {"s": t, "newton_iters": int(r.n_iters),
                           "sinkhorn_iters": int(r.n_sinkhorn), "converged": bool(r.converged),
                           "l1_error": l1_error(r.plan, a, b)}
            t, s = timed(lambda a=a, b=b, C=C, eps=eps: _sinkhorn(a, b, C, eps, atol=TOL, rtol=0,
                                                                   maxiter=100_000),
                         repeats, sync)
            case["ds_sinkhorn"] = {"s": t, "iters": int(s.n_iters),
                                   "converged": bool(s.converged),
                                   "l1_error": l1_error(s.plan, a, b)}
            case["speedup_vs_ds_sinkhorn"] = case["ds_sinkhorn"]["s"] / case["sns"]["s"]
            print(json.dumps(case), flush=True)
            cases.append(case)
            # written after every case: a run cut short by a time limit keeps what it measured
            (out_dir / "ot_newton_gpu.json").write_text(
                json.dumps({"meta": meta, "cases": cases}, indent=2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--eps", type=float, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds allowed to each POT method per case")
    parser.add_argument("--gpu", action="store_true", help="run the CuPy benchmark only")
    parser.add_argument("--warm-cache", action="store_true",
                        help="use Numba's on-disk cache (default: a fresh one, so the first "
                        "call measures a cold JIT compile)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--trace-only", action="store_true",
                        help="keep the cases of an earlier run's JSON; redo the traces/plots")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.gpu:
        gpu_run(args.sizes or [2000, 5000, 10000], args.eps or [0.01, 0.002],
                args.repeats or 2, args.out_dir)
        return
    quick = args.quick
    sizes = args.sizes or ([200] if quick else [500, 1000, 2000])
    eps_list = args.eps or ([0.002] if quick else [0.01, 0.002])
    repeats = args.repeats or (1 if quick else 3)
    budget = args.budget or (1.0 if quick else 20.0)
    pot_methods = POT_METHODS
    with numba_cache(args.warm_cache):
        import numba
        import ot

        import diffsolve.ot  # noqa: F401

        a, b, C = clouds(60)
        t_jit, _ = timed(lambda: _sns(a, b, C, 0.01), 1)
        # compile the remaining paths too (Sinkhorn chunks from warm starts, the Newton
        # stage, float64 kernels on bigger problems), so no case below pays JIT time
        t_rest, _ = timed(lambda: (_sns(a, b, C, 0.002), _sns(a, b, C, 0.002, sinkhorn_switch=0),
                                   _sns(*clouds(200), 0.002)), 1)
        t_warm, _ = timed(lambda: _sns(a, b, C, 0.01), 1)
        meta = {"machine": platform.machine(), "cpus": os.cpu_count(),
                "numpy": np.__version__, "pot": ot.__version__, "tol": TOL, "quick": quick,
                "budget_s": budget, "repeats": repeats,
                "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
                "numba_threads": numba.get_num_threads(), "load_start": os.getloadavg(),
                "jit_first_call_s": t_jit, "jit_other_paths_s": t_rest,
                "second_call_s": t_warm}
        print(json.dumps(meta), flush=True)
        suffix = "_quick" if quick else ""
        out_json = args.out_dir / f"ot_newton_cpu{suffix}.json"
        cases, trace = [], None
        if args.trace_only:
            earlier = json.loads(out_json.read_text()) if out_json.exists() else {}
            cases = earlier.get("cases", [])
            # the cases keep the conditions they were measured under
            meta = {**earlier.get("meta", meta), "trace_rerun_load": os.getloadavg()}
        else:
            for n in sizes:
                for eps in eps_list:
                    case = cpu_case(n, eps, repeats, budget, pot_methods)
                    print(json.dumps(case), flush=True)
                    cases.append(case)
                    # written after every case: a run cut short keeps what it measured
                    out_json.write_text(json.dumps({"meta": meta, "cases": cases}, indent=2))
        trace = traces(sizes[-1] if quick else 1000, 0.002, budget)
        if not args.trace_only:
            meta["load_end"] = os.getloadavg()
    out_json.write_text(json.dumps({"meta": meta, "cases": cases, "trace": trace}, indent=2))
    plots(trace, args.out_dir, suffix)
    for c in cases:
        pot = ", ".join(f"{m} {v['s']:.2f}s" if v.get("reached") else f"{m} --"
                        for m, v in c["pot"].items())
        print(f"n={c['n']} eps={c['eps']}: SNS {c['sns']['s']:.2f}s "
              f"({c['sns']['newton_iters']} Newton) | ds sinkhorn {c['ds_sinkhorn']['s']:.2f}s "
              f"({c['ds_sinkhorn']['iters']} it) | POT {pot} | target met: "
              f"{c['faster_than_every_pot_method']}")


if __name__ == "__main__":
    main()
