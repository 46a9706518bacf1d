"""Small-``n`` Sinkhorn: per-iteration time of ``diffsolve.ot.sinkhorn`` against POT 0.9.7's
kernel-mode ``ot.sinkhorn`` and a bare NumPy loop of two matrix-vector products.

Run from the repository root (``OPENBLAS_NUM_THREADS=1`` is set here for both sides)::

    python -m bench.bench_sinkhorn_small            # full run, a few minutes
    python -m bench.bench_sinkhorn_small --quick    # smoke run
    python -m bench.bench_sinkhorn_small --tag before   # writes sinkhorn_small_before.json

Same problems as ``bench.bench_sinkhorn`` (Gaussian clouds, squared-Euclidean cost
normalised to max 1, uniform weights), n = m in {100, 200, 500, 1000},
eps in {0.05, 0.01, 0.002}. Measured in one process, interleaved:

* per iteration: each solver is run for ``K1`` and ``K2`` iterations with a tolerance it
  cannot reach; ``(t(K2) - t(K1)) / (K2 - K1)`` is the cost of one iteration with the
  set-up (input checks, kernel/plan construction, final error) taken out. Both wall time
  (``perf_counter``) and CPU time (``process_time``), medians of repeats. Solvers:
  diffsolve ``kernel="absorbed"`` (the NumPy default), diffsolve ``kernel="lse"``, POT
  ``ot.sinkhorn(method="sinkhorn")`` and a bare NumPy ``u = a / (K v); v = b / (K^T u)``.
* time to tolerance: diffsolve with POT's stopping rule (``error_measure="l2-pot"``,
  ``||P^T 1 - b||_2 <= 1e-9``) against POT's kernel mode with ``stopThr=1e-9``: whole calls,
  and the ratio (target: diffsolve <= 1.5x POT).

Machine load (``os.getloadavg``) is recorded per case. ``--burn N`` runs N busy-loop
processes alongside (started and stopped by this script) to measure on a loaded machine,
as on the shared 2-core box where ``bench.bench_sinkhorn`` was first run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from bench._ot_problems import clouds, l1_error

RESULTS = Path(__file__).resolve().parent / "results"
TOL = 1e-9


def _ours(a, b, C, eps, **kw):
    import diffsolve.ot

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return diffsolve.ot.sinkhorn(a, b, C, eps, **kw)


def _pot(a, b, C, eps, n_iter, stop):
    import ot

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P, log = ot.sinkhorn(a, b, C, eps, method="sinkhorn", numItermax=n_iter,
                             stopThr=stop, log=True)
    return P, int(log.get("niter", n_iter))


def _bare(a, b, C, eps, k):
    K = np.exp(-C / eps)
    v = np.ones_like(b)
    for _ in range(k):
        u = a / (K @ v)
        v = b / (K.T @ u)
    return u[:, None] * K * v[None, :]


def _clock(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def per_iteration(solvers, k1, k2, repeats):
    """Median (wall, cpu) seconds per iteration of each solver, interleaved repeats."""
    samples = {name: ([], []) for name in solvers}
    for _ in range(repeats):
        for name, run in solvers.items():
            w1, c1 = _clock(lambda run=run: run(k1))
            w2, c2 = _clock(lambda run=run: run(k2))
            samples[name][0].append((w2 - w1) / (k2 - k1))
            samples[name][1].append((c2 - c1) / (k2 - k1))
    return {name: {"wall_us": 1e6 * statistics.median(w), "cpu_us": 1e6 * statistics.median(c)}
            for name, (w, c) in samples.items()}


def case(n, eps, repeats, quick):
    a, b, C = clouds(n)
    out = {"n": n, "eps": eps, "load": os.getloadavg()}
    k1, k2 = (10, 60) if quick else (20, 220)
    solvers = {
        "ours_absorbed": lambda k: _ours(a, b, C, eps, rtol=0, atol=0, maxiter=k,
                                         kernel="absorbed"),
        # the fused LSE loop costs milliseconds per iteration: a quarter of the iterations
        "ours_lse": lambda k: _ours(a, b, C, eps, rtol=0, atol=0, maxiter=max(k // 4, 1),
                                    kernel="lse"),
        "pot_kernel": lambda k: _pot(a, b, C, eps, k, 0.0),
        "bare_numpy": lambda k: _bare(a, b, C, eps, k),
    }
    per = per_iteration(solvers, k1, k2, repeats)
    per["ours_lse"] = {k: 4 * v for k, v in per["ours_lse"].items()}
    pot = per["pot_kernel"]
    for _name, d in per.items():
        d["wall_vs_pot"] = d["wall_us"] / pot["wall_us"]
        d["cpu_vs_pot"] = d["cpu_us"] / pot["cpu_us"]
    out["per_iteration"] = per
    # time to tolerance, POT's stopping rule on both sides, interleaved repeats
    walls = {"ours": [], "pot": []}
    cpus = {"ours": [], "pot": []}
    res = {}
    for _ in range(repeats):
        w, c = _clock(lambda: res.__setitem__("ours", _ours(
            a, b, C, eps, error_measure="l2-pot", atol=TOL, rtol=0)))
        walls["ours"].append(w)
        cpus["ours"].append(c)
        w, c = _clock(lambda: res.__setitem__("pot", _pot(a, b, C, eps, 10_000, TOL)))
        walls["pot"].append(w)
        cpus["pot"].append(c)
    r, (P, it) = res["ours"], res["pot"]
    tt = {
        "ours": {"wall_s": statistics.median(walls["ours"]),
                 "cpu_s": statistics.median(cpus["ours"]), "iters": int(r.n_iters),
                 "converged": bool(r.converged), "l1_error": l1_error(r.plan, a, b)},
        "pot_kernel": {"wall_s": statistics.median(walls["pot"]),
                       "cpu_s": statistics.median(cpus["pot"]), "iters": it,
                       "l1_error": l1_error(P, a, b)},
    }
    tt["ratio_wall"] = tt["ours"]["wall_s"] / tt["pot_kernel"]["wall_s"]
    tt["ratio_cpu"] = tt["ours"]["cpu_s"] / tt["pot_kernel"]["cpu_s"]
    out["time_to_tol"] = tt
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two sizes, few repeats")
    parser.add_argument("--tag", default="", help="results file suffix, e.g. 'before'")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--burn", type=int, default=0,
                        help="busy-loop processes to run alongside (a loaded machine)")
    args = parser.parse_args(argv)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(args.burn)]
    try:
        run(args)
    finally:
        for p in burners:
            p.terminate()
            p.wait()


def run(args):
    import ot

    import diffsolve.ot  # noqa: F401

    a, b, C = clouds(200)  # JIT / first-call warm-up, not in the figures
    t0 = time.perf_counter()
    for kernel in ("absorbed", "lse"):
        _ours(a, b, C, 0.05, kernel=kernel)
    jit_s = time.perf_counter() - t0
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "pot": ot.__version__, "tol": TOL,
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
            "first_calls_s": jit_s, "load_start": os.getloadavg(), "quick": args.quick,
            "busy_loop_processes": args.burn}
    sizes = args.sizes or ((100, 500) if args.quick else (100, 200, 500, 1000))
    eps_list = (0.05, 0.01) if args.quick else (0.05, 0.01, 0.002)
    repeats = args.repeats or (3 if args.quick else 5)
    cases = []
    print(f"{'n':>5} {'eps':>6} | us/iter wall: {'absorbed':>9} {'lse':>9} {'POT':>8} "
          f"{'bare':>8} {'abs/POT':>7} | to tol: {'ours s':>8} {'POT s':>8} {'it':>4} "
          f"{'POT it':>6} {'ratio':>6}")
    for n in sizes:
        for eps in eps_list:
            c = case(n, eps, repeats, args.quick)
            cases.append(c)
            p, t = c["per_iteration"], c["time_to_tol"]
            print(f"{n:>5} {eps:>6} | {'':>13} {p['ours_absorbed']['wall_us']:>9.1f} "
                  f"{p['ours_lse']['wall_us']:>9.1f} {p['pot_kernel']['wall_us']:>8.1f} "
                  f"{p['bare_numpy']['wall_us']:>8.1f} "
                  f"{p['ours_absorbed']['wall_vs_pot']:>7.2f} | {'':>7} "
                  f"{t['ours']['wall_s']:>8.4f} {t['pot_kernel']['wall_s']:>8.4f} "
                  f"{t['ours']['iters']:>4} {t['pot_kernel']['iters']:>6} "
                  f"{t['ratio_wall']:>6.2f}", flush=True)
    meta["load_end"] = os.getloadavg()
    stem = "sinkhorn_small" + (f"_{args.tag}" if args.tag else "") + (
        "_quick" if args.quick else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps({"meta": meta, "cases": cases},
                                                          indent=2))


if __name__ == "__main__":
    main()
