"""Benchmark ``diffsolve.linear.solve(method="cg")`` against SciPy's and CuPy's CG.

Run from the repository root::

    python -m bench.bench_linear_solve            # CPU, and GPU when CuPy sees one

Problem: the 2-D 5-point Poisson matrix on an m x m interior grid plus 1e-3·I (SPD), a
Gaussian right-hand side, ``rtol=1e-8``, no preconditioner: both sides run the same
Krylov iteration, so iteration counts must agree (to within a few from rounding) and
the time ratio measures the implementation. Reported, side by side in one process:

* ``first call``: diffsolve's first solve, which compiles (or loads from Numba's cache)
  the kernels; reported apart from the timed runs;
* the median of ``--repeats`` solves for diffsolve and the peer (SciPy ``cg`` on the CPU,
  ``cupyx.scipy.sparse.linalg.cg`` on the GPU), interleaved;
* ``k = 8`` right-hand sides: one batched diffsolve call against 8 peer calls;
* the adjoint: forward + backward through ``diffsolve.vjp`` over forward alone (the
  backward is one more CG solve, so about 2 is the floor).

Results go to ``bench/results/linear_solve_cpu.json`` / ``linear_solve_gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import scipy
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import diffsolve as ds

RESULTS = Path(__file__).resolve().parent / "results"


def poisson(m: int, shift: float = 1e-3):
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    A = (sp.kron(t, sp.eye(m)) + sp.kron(sp.eye(m), t) + shift * sp.eye(m * m)).tocsr()
    A.sum_duplicates()
    A.sort_indices()
    return A


def median_time(fn, repeats: int, sync=lambda: None) -> float:
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _scipy_cg(A, b, rtol):
    count = [0]

    def cb(_):
        count[0] += 1

    x, _info = spla.cg(A, b, rtol=rtol, atol=0.0, maxiter=100_000, callback=cb)
    return x, count[0]


def cpu_case(m: int, repeats: int, rtol: float) -> dict:
    rng = np.random.default_rng(0)
    A = poisson(m)
    n = A.shape[0]
    b = rng.standard_normal(n)
    t0 = time.perf_counter()
    res = ds.linear.solve(A, b, method="cg", rtol=rtol)
    first = time.perf_counter() - t0
    _, peer_iters = _scipy_cg(A, b, rtol)
    t_ds = median_time(lambda: ds.linear.solve(A, b, method="cg", rtol=rtol), repeats)
    t_peer = median_time(lambda: _scipy_cg(A, b, rtol), repeats)
    x_ref = spla.spsolve(A.tocsc(), b) if n <= 70_000 else _scipy_cg(A, b, 1e-12)[0]
    B = rng.standard_normal((n, 8))
    t_ds8 = median_time(lambda: ds.linear.solve(A, B, method="cg", rtol=rtol), max(3, repeats // 3))
    t_peer8 = median_time(lambda: [_scipy_cg(A, B[:, j], rtol) for j in range(8)],
                          max(3, repeats // 3))

    def fwd_bwd():
        _out, f_vjp = ds.vjp(ds.linear.solve, A, b, method="cg", rtol=rtol)
        f_vjp(x=b)

    t_fb = median_time(fwd_bwd, repeats)
    return {
        "m": m, "n": n, "nnz": int(A.nnz),
        "iterations": {"diffsolve": res.n_iters, "scipy": peer_iters},
        "max_abs_error_vs_reference": float(np.max(np.abs(res.x - x_ref))),
        "first_call_s": first,
        "solve_ms": {"diffsolve": t_ds * 1e3, "scipy": t_peer * 1e3},
        "speedup_vs_scipy": t_peer / t_ds,
        "k8_ms": {"diffsolve_batched": t_ds8 * 1e3, "scipy_8_calls": t_peer8 * 1e3},
        "k8_speedup_vs_scipy": t_peer8 / t_ds8,
        "forward_backward_over_forward": t_fb / t_ds,
    }


def gpu_case(m: int, repeats: int, rtol: float) -> dict:
    import cupy
    import cupyx.scipy.sparse as csp
    import cupyx.scipy.sparse.linalg as cspla

    sync = cupy.cuda.Device().synchronize
    rng = np.random.default_rng(0)
    A_host = poisson(m)
    A = csp.csr_matrix(A_host)
    b = cupy.asarray(rng.standard_normal(A.shape[0]))
    t0 = time.perf_counter()
    res = ds.linear.solve(A, b, method="cg", rtol=rtol)
    sync()
    first = time.perf_counter() - t0
    count = [0]

    def peer():
        count[0] = 0

        def cb(_):
            count[0] += 1

        return cspla.cg(A, b, rtol=rtol, atol=0.0, maxiter=100_000, callback=cb)

    peer()
    peer_iters = count[0]
    t_ds = median_time(lambda: ds.linear.solve(A, b, method="cg", rtol=rtol), repeats, sync)
    t_peer = median_time(peer, repeats, sync)
    B = cupy.asarray(rng.standard_normal((A.shape[0], 8)))
    t_ds8 = median_time(lambda: ds.linear.solve(A, B, method="cg", rtol=rtol), repeats, sync)
    t_peer8 = median_time(
        lambda: [cspla.cg(A, B[:, j], rtol=rtol, atol=0.0, maxiter=100_000) for j in range(8)],
        max(3, repeats // 2), sync)

    def fwd_bwd():
        _out, f_vjp = ds.vjp(ds.linear.solve, A, b, method="cg", rtol=rtol)
        f_vjp(x=b)

    t_fb = median_time(fwd_bwd, repeats, sync)
    cpu = ds.linear.solve(A_host, cupy.asnumpy(b), method="cg", rtol=rtol)
    return {
        "m": m, "n": int(A.shape[0]), "nnz": int(A.nnz),
        "iterations": {"diffsolve": res.n_iters, "cupyx": peer_iters},
        "max_abs_diff_vs_cpu_twin": float(cupy.max(cupy.abs(res.x - cupy.asarray(cpu.x)))),
        "first_call_s": first,
        "solve_ms": {"diffsolve": t_ds * 1e3, "cupyx": t_peer * 1e3},
        "speedup_vs_cupyx": t_peer / t_ds,
        "k8_ms": {"diffsolve_batched": t_ds8 * 1e3, "cupyx_8_calls": t_peer8 * 1e3},
        "k8_speedup_vs_cupyx": t_peer8 / t_ds8,
        "forward_backward_over_forward": t_fb / t_ds,
    }


def _gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rtol", type=float, default=1e-8)
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument("--gpu-only", action="store_true",
                        help="skip the CPU cases (and keep the CPU results file)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "numpy": np.__version__, "scipy": scipy.__version__, "rtol": args.rtol,
    }
    import numba

    meta["numba_threads"] = numba.get_num_threads()
    cases = [] if args.gpu_only else [cpu_case(m, args.repeats, args.rtol) for m in args.sizes]
    print(f"CPU ({meta['cpus']} cores, numba threads {meta['numba_threads']}); rtol {args.rtol}")
    print(f"{'m':>5} {'iters ds/scipy':>15} {'first s':>8} {'ds ms':>9} {'scipy ms':>9} "
          f"{'ratio':>6} {'k=8 ratio':>9} {'fwd+bwd/fwd':>11}")
    for c in cases:
        print(f"{c['m']:>5} {c['iterations']['diffsolve']:>7}/{c['iterations']['scipy']:<7} "
              f"{c['first_call_s']:>8.2f} {c['solve_ms']['diffsolve']:>9.2f} "
              f"{c['solve_ms']['scipy']:>9.2f} {c['speedup_vs_scipy']:>6.2f} "
              f"{c['k8_speedup_vs_scipy']:>9.2f} {c['forward_backward_over_forward']:>11.2f}")
    if cases:
        (RESULTS / "linear_solve_cpu.json").write_text(
            json.dumps({"meta": meta, "cases": cases}, indent=2))
    if args.no_gpu or not _gpu_available():
        print("GPU: no CUDA device visible to CuPy; GPU benchmark skipped")
        return
    import cupy

    gmeta = dict(meta, gpu=cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
                 cupy=cupy.__version__)
    gcases = [gpu_case(m, args.repeats, args.rtol) for m in [*args.sizes, 1024]]
    print(f"GPU {gmeta['gpu']}")
    print(f"{'m':>5} {'iters ds/cupyx':>15} {'first s':>8} {'ds ms':>9} {'cupyx ms':>9} "
          f"{'ratio':>6} {'k=8 ratio':>9} {'fwd+bwd/fwd':>11} {'|gpu-cpu|':>9}")
    for c in gcases:
        print(f"{c['m']:>5} {c['iterations']['diffsolve']:>7}/{c['iterations']['cupyx']:<7} "
              f"{c['first_call_s']:>8.2f} {c['solve_ms']['diffsolve']:>9.2f} "
              f"{c['solve_ms']['cupyx']:>9.2f} {c['speedup_vs_cupyx']:>6.2f} "
              f"{c['k8_speedup_vs_cupyx']:>9.2f} {c['forward_backward_over_forward']:>11.2f} "
              f"{c['max_abs_diff_vs_cpu_twin']:>9.1e}")
    (RESULTS / "linear_solve_gpu.json").write_text(json.dumps({"meta": gmeta, "cases": gcases},
                                                              indent=2))


if __name__ == "__main__":
    main()
