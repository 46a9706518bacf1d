"""Per-call set-up and threads under load (issue 14, item 5): peer ÷ diffsolve ratios.

Run from the repository root::

    python -m bench.bench_speed_setup                 # writes bench/results/speed_setup.*
    python -m bench.bench_speed_setup --label before  # tag the figures (e.g. an old tree)

Rows (all in one process; first calls, which include Numba's compile, are reported apart):

* ``sor``: ``linear.solve(A, b, method="sor", omega=1.5, rtol=0, atol=0, maxiter=20)`` on
  the 512² 5-point Poisson matrix against PyAMG's ``relaxation.sor`` (20 forward sweeps),
  and against diffsolve's bare sweep kernel (20 ``sor_sweep`` calls): the public call's
  set-up is ``public / kernel - 1``. ``prepared``: the same solve through
  ``linear.prepare(A, ...)`` once and ``solver.solve(b)`` per call (validation, SOR data
  and Krylov set-up made once), whose set-up is ``prepared / kernel - 1``.
* ``cg``: ``linear.solve(A, b, method="cg", rtol=1e-8)`` on the 24² Poisson matrix
  (n = 576) against ``scipy.sparse.linalg.cg`` (same rtol), and against the compiled CG
  loop alone, and ``linear.prepare(A, method="cg", rtol=1e-8).solve(b)``; idle, then with
  ``--load`` busy processes spinning on the cores.
* ``lse``: one iteration of ``ot.sinkhorn(kernel="lse")`` at n = 500 (50 iterations of a
  fixed budget, ÷ 50), idle and busy, with Numba's default thread count and with one
  thread (the ratio one-thread ÷ default is what a busy machine costs the default).

* ``f32``: ``ot.sinkhorn`` in float32 (n = 500, ε = 1 and 0.05) with the default ``rtol``
  against ``rtol=1e-9`` (the default before the dtype-aware rule): iterations, whether it
  converged or warned, and the time.

Timings are the min and median of ``--repeats`` interleaved rounds (each round runs
every contender once); ratios are peer ÷ diffsolve (> 1: diffsolve faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _rounds(fns: dict, repeats: int, inner: int = 1) -> dict:
    """Interleaved timings: ``{name: [seconds per call, ...]}``."""
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - t0) / inner)
    return times


def _summary(times: dict, ours: str) -> dict:
    out: dict = {}
    for name, ts in times.items():
        out[name] = {"min_ms": 1e3 * min(ts), "median_ms": 1e3 * statistics.median(ts)}
    pairs = [(name, ours) for name in times if name != ours]
    if "prepared" in times:
        pairs += [(name, "prepared") for name in times if name not in (ours, "prepared")]
    for num, den in pairs:
        out[f"{num}/{den}"] = {
            "min": out[num]["min_ms"] / out[den]["min_ms"],
            "median": out[num]["median_ms"] / out[den]["median_ms"],
        }
    return out


class _Load:
    """``n`` busy-looping child processes for the duration of a ``with`` block."""

    def __init__(self, n: int):
        self.n = n
        self.procs: list = []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      for _ in range(self.n)]
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def bench_sor(repeats: int) -> dict:
    import numpy as np
    import pyamg.relaxation.relaxation as amg

    import diffsolve as ds
    from bench.bench_csr_kernels import poisson_2d
    from diffsolve.kernels.cpu import relaxation

    A = poisson_2d(512).tocsr()
    b = np.ones(A.shape[0])
    diag = A.diagonal()

    def public():
        return ds.linear.solve(A, b, method="sor", omega=1.5, rtol=0, atol=0, maxiter=20)

    solver = ds.linear.prepare(A, method="sor", omega=1.5, rtol=0, atol=0, maxiter=20)

    def prepared():
        return solver.solve(b)

    def kernel():
        x = np.zeros_like(b)
        for _ in range(20):
            relaxation.sor_sweep(A.indptr, A.indices, A.data, diag, b, x, 1.5)
        return x

    def pyamg():
        x = np.zeros_like(b)
        amg.sor(A, x, b, 1.5, iterations=20, sweep="forward")
        return x

    t0 = time.perf_counter()
    res = public()
    first = time.perf_counter() - t0
    kernel()
    pyamg()
    diff = float(np.max(np.abs(res.x - pyamg())))
    assert np.array_equal(prepared().x, res.x)
    out = _summary(_rounds({"diffsolve": public, "prepared": prepared, "kernel": kernel,
                            "pyamg": pyamg}, repeats), "diffsolve")
    out.update(first_call_s=first, max_abs_diff_vs_pyamg=diff, n=A.shape[0], nnz=A.nnz)
    return out


def bench_cg(repeats: int, load: int) -> dict:
    import numpy as np
    import scipy.sparse.linalg as spla

    import diffsolve as ds
    from bench.bench_csr_kernels import poisson_2d
    from diffsolve.kernels.cpu import krylov

    A = poisson_2d(24).tocsr()
    b = np.ones(A.shape[0])
    tol = 1e-8 * float(np.linalg.norm(b))

    def public():
        return ds.linear.solve(A, b, method="cg", rtol=1e-8)

    def kernel():
        x = np.zeros_like(b)
        return krylov.cg_solve_csr(A.indptr, A.indices, A.data, b, x, None, tol,
                                   10 * A.shape[0], 1e-15)

    def scipy_cg():
        return spla.cg(A, b, rtol=1e-8)

    solver = ds.linear.prepare(A, method="cg", rtol=1e-8)

    def prepared():
        return solver.solve(b)

    t0 = time.perf_counter()
    res = public()
    first = time.perf_counter() - t0
    kernel()
    scipy_cg()
    assert np.array_equal(prepared().x, res.x)
    fns = {"diffsolve": public, "prepared": prepared, "kernel": kernel, "scipy": scipy_cg}
    out = {"first_call_s": first, "n": A.shape[0], "n_iters": res.n_iters,
           "idle": _summary(_rounds(fns, repeats, inner=20), "diffsolve")}
    with _Load(load):
        out["busy"] = _summary(_rounds(fns, repeats, inner=20), "diffsolve")
    out["busy"]["load_processes"] = load
    return out


def bench_lse(repeats: int, load: int) -> dict:
    import numba
    import numpy as np

    import diffsolve as ds

    n, iters = 500, 50
    rng = np.random.default_rng(0)
    x, y = rng.random((n, 2)), rng.random((n, 2))
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    a = np.full(n, 1.0 / n)

    def run():
        return ds.ot.sinkhorn(a, a, C, 0.05, kernel="lse", rtol=0, atol=0, maxiter=iters)

    threads = numba.get_num_threads()

    def one_thread():
        numba.set_num_threads(1)
        try:
            return run()
        finally:
            numba.set_num_threads(threads)

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    for _ in range(3):  # warm-up: 300 kernel calls, trials of both thread counts included
        run()
    one_thread()
    fns = {"diffsolve": run, "one_thread": one_thread}
    out: dict = {"first_call_s": first, "n": n, "numba_threads": threads}
    for state in ("idle", "busy"):
        if state == "busy":
            with _Load(load):
                times = _rounds(fns, repeats)
        else:
            times = _rounds(fns, repeats)
        per_iter = {k: [t / iters for t in v] for k, v in times.items()}
        out[state] = _summary(per_iter, "diffsolve")
    return out


def bench_f32() -> dict:
    import warnings

    import numpy as np

    import diffsolve as ds

    n = 500
    rng = np.random.default_rng(0)
    x, y = rng.random((n, 2)), rng.random((n, 2))
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1).astype(np.float32)
    a = np.full(n, 1.0 / n, dtype=np.float32)
    out: dict = {"n": n}
    for eps in (1.0, 0.05):
        for name, opts in (("default", {}), ("rtol=1e-9", {"rtol": 1e-9})):
            with warnings.catch_warnings(record=True) as caught:
                # recorded, not silenced: whether the solve warns is what is measured
                warnings.simplefilter("always")
                t0 = time.perf_counter()
                res = ds.ot.sinkhorn(a, a, C, eps, **opts)
                seconds = time.perf_counter() - t0
            out[f"eps={eps} {name}"] = {
                "n_iters": int(res.n_iters), "converged": bool(res.converged),
                "error": float(res.error), "tolerance": float(res.tolerance),
                "warned": any(issubclass(w.category, ds.ConvergenceWarning) for w in caught),
                "seconds": seconds}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--load", type=int, default=2, help="busy processes (default 2)")
    parser.add_argument("--label", default="after")
    parser.add_argument("--rows", default="sor,cg,lse,f32")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    import diffsolve

    rows = args.rows.split(",")
    result: dict = {
        "label": args.label,
        "diffsolve_path": str(Path(diffsolve.__file__).parent),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_at_start": os.getloadavg()},
    }
    if "sor" in rows:
        result["sor"] = bench_sor(args.repeats)
    if "cg" in rows:
        result["cg"] = bench_cg(args.repeats, args.load)
    if "lse" in rows:
        result["lse"] = bench_lse(args.repeats, args.load)
    if "f32" in rows:
        result["f32"] = bench_f32()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"speed_setup_{args.label}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
