"""Benchmark diffsolve's SOR sweeps against PyAMG (and the CUDA multicolour sweep).

Run from the repository root::

    python -m bench.bench_sor_sweep            # CPU, and GPU when CuPy sees one
    python -m bench.bench_sor_sweep --help

Problem: the 2-D 5-point Poisson matrix on an m x m interior grid (m = 512:
n = 262,144, nnz = 1,308,672), float64, b = ones, 20 forward SOR sweeps with
omega = 1.5 starting from x = 0.

CPU, sequential (the headline comparison):

* diffsolve's ``sor_sweep`` (Numba, one thread: ``numba.set_num_threads(1)``)
  against PyAMG's C++ ``sor(A, x, b, omega, iterations=20, sweep='forward')``;
  both compute the same iterates (the max abs difference is reported);
* the first call, which includes Numba's JIT compile (by default into a fresh
  temporary ``NUMBA_CACHE_DIR``, so a true cold compile), is reported apart;
* median (and min, IQR) of ``--repeats`` timed runs of 20 sweeps each, the
  two libraries interleaved run by run; ratio PyAMG / diffsolve (> 1 means
  diffsolve is faster).

CPU, multicolour (reported separately, because it is a different iteration):
``sor_sweep_multicolor`` on the natural-order greedy colouring (red-black
here), with 1 and ``--threads`` threads. It is checked against a sequential
sweep in colour order (``sor_sweep`` on the permuted matrix ``P A P^T``), and
the relative residual after 20 sweeps of each ordering is reported, since the
ordering changes how fast SOR converges.

GPU (when CuPy and a CUDA device are present): the CUDA multicolour sweep on
``--gpu-m``² (default 1024²) with the same red-black colouring, timed with
CUDA events, against the CPU sequential and multicolour sweeps on the same
matrix; plus the GPU's own Jones--Plassmann colouring (colour count, time,
and the sweep time with it).

Results go to ``bench/results/sor_sweep_cpu.json`` (and ``sor_sweep_gpu.json``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy

from bench._common import add_cache_and_output_args, numba_cache
from bench.bench_csr_kernels import (
    _affinity_count,
    _cache_counts,
    _gpu_available,
    poisson_2d,
    summarize,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def rel_residual(a, b, x) -> float:
    """``||b - A x|| / ||b||``."""
    return float(np.linalg.norm(b - a @ x) / np.linalg.norm(b))


def time_runs(fns: dict, reset, repeats: int, warmup: int) -> dict:
    """Time each callable of `fns` `repeats` times, interleaved run by run.

    `reset` is called (untimed) before every run, so each run starts from the
    same state.
    """
    for _ in range(warmup):
        for fn in fns.values():
            reset()
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            reset()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: summarize(t) for name, t in times.items()}


def permuted(a, order):
    """``P A P^T`` for the row order `order`, as canonical CSR."""
    p = a[order][:, order].tocsr()
    p.sort_indices()
    return p


# --------------------------------------------------------------------------
# CPU
# --------------------------------------------------------------------------


def bench_cpu(args) -> dict:
    # Imported here, after main() may have pointed NUMBA_CACHE_DIR at a fresh
    # folder: Numba reads its configuration once, at import.
    import numba
    import pyamg
    from pyamg.relaxation.relaxation import sor

    from diffsolve.kernels.cpu import _config
    from diffsolve.kernels.cpu import relaxation as relax

    a = poisson_2d(args.m)
    n = a.shape[0]
    diag = a.diagonal()
    b = np.ones(n)
    omega, sweeps = args.omega, args.sweeps
    ours_x = np.zeros(n)
    theirs_x = np.zeros(n)

    # ---- sequential: diffsolve vs PyAMG, one thread -------------------------
    max_threads = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(1)

    def ours():
        for _ in range(sweeps):
            relax.sor_sweep(a.indptr, a.indices, a.data, diag, b, ours_x, omega)

    def theirs():
        sor(a, theirs_x, b, omega, iterations=sweeps, sweep="forward")

    def reset():
        ours_x[:] = 0
        theirs_x[:] = 0

    hits0, misses0 = _cache_counts(relax._sor_sweep_1d)
    t0 = time.perf_counter()
    relax.sor_sweep(a.indptr, a.indices, a.data, diag, b, ours_x, omega)
    first_call = time.perf_counter() - t0
    hits1, misses1 = _cache_counts(relax._sor_sweep_1d)

    reset()
    ours()
    theirs()
    max_abs_diff = float(np.abs(ours_x - theirs_x).max())
    rel_diff = max_abs_diff / float(np.abs(theirs_x).max())
    if rel_diff > 1e-12:
        raise AssertionError(f"diffsolve and PyAMG iterates differ: relative {rel_diff:.3e}")
    residual_natural = rel_residual(a, b, ours_x)

    stats = time_runs({"diffsolve": ours, "pyamg": theirs}, reset, args.repeats, args.warmup)
    s_ours, s_theirs = stats["diffsolve"], stats["pyamg"]
    sequential = {
        "diffsolve": s_ours,
        "reference": s_theirs,
        "reference_name": f"pyamg {pyamg.__version__} sor(sweep='forward'), C++",
        "ms_per_sweep_diffsolve": s_ours["median_ms"] / sweeps,
        "ms_per_sweep_reference": s_theirs["median_ms"] / sweeps,
        "ratio_reference_over_diffsolve": s_theirs["median_ms"] / s_ours["median_ms"],
        "first_call_s": first_call,
        "first_call_numba_cache": {"hits": hits1 - hits0, "misses": misses1 - misses0},
        "max_abs_diff_vs_reference": max_abs_diff,
        "max_rel_diff_vs_reference": rel_diff,
        "relative_residual_after_sweeps": residual_natural,
        "numba_threads": 1,
    }

    # ---- multicolour: a different iteration, parallel -------------------------
    t0 = time.perf_counter()
    colors = relax.greedy_coloring(a.indptr, a.indices)
    color_ptr, color_rows = relax.color_groups(colors)
    coloring_s = time.perf_counter() - t0  # includes greedy_coloring's JIT on a cold cache
    n_colors = len(color_ptr) - 1
    mc_x = np.zeros(n)

    def multicolor():
        for _ in range(sweeps):
            relax.sor_sweep_multicolor(
                a.indptr, a.indices, a.data, diag, b, mc_x, omega, color_ptr, color_rows
            )

    def reset_mc():
        mc_x[:] = 0

    threads = min(args.threads, max_threads)
    numba.set_num_threads(threads)
    hits0, misses0 = _cache_counts(relax._sor_sweep_multicolor_1d)
    t0 = time.perf_counter()
    relax.sor_sweep_multicolor(
        a.indptr, a.indices, a.data, diag, b, mc_x, omega, color_ptr, color_rows
    )
    mc_first_call = time.perf_counter() - t0
    hits1, misses1 = _cache_counts(relax._sor_sweep_multicolor_1d)

    # The same iteration sequentially: sor_sweep on P A P^T in colour order.
    reset_mc()
    multicolor()
    ap = permuted(a, color_rows)
    seq_colour_x = np.zeros(n)
    for _ in range(sweeps):
        relax.sor_sweep(ap.indptr, ap.indices, ap.data, ap.diagonal(), b[color_rows],
                        seq_colour_x, omega)
    mc_vs_seq = float(np.abs(mc_x[color_rows] - seq_colour_x).max())
    residual_colour = rel_residual(a, b, mc_x)

    mc_stats = {}
    for t in sorted({1, threads}):
        numba.set_num_threads(t)
        mc_stats[str(t)] = time_runs({"mc": multicolor}, reset_mc, args.repeats, args.warmup)["mc"]
    numba.set_num_threads(max_threads)
    multicolour = {
        "coloring": "greedy, natural row order (kernels.cpu.relaxation.greedy_coloring)",
        "n_colors": n_colors,
        "coloring_plus_groups_s": coloring_s,
        "first_call_s": mc_first_call,
        "first_call_numba_cache": {"hits": hits1 - hits0, "misses": misses1 - misses0},
        "by_threads": {
            t: {**s, "ms_per_sweep": s["median_ms"] / sweeps} for t, s in mc_stats.items()
        },
        "speedup_vs_diffsolve_sequential": {
            t: s_ours["median_ms"] / s["median_ms"] for t, s in mc_stats.items()
        },
        "max_abs_diff_vs_sequential_in_colour_order": mc_vs_seq,
        "relative_residual_after_sweeps": residual_colour,
        "relative_residual_after_sweeps_natural_order": residual_natural,
    }

    try:
        threading_layer = numba.threading_layer()
    except ValueError:  # no parallel region has run
        threading_layer = None
    return {
        "benchmark": "SOR sweeps, diffsolve (Numba) vs PyAMG (C++)",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "matrix": {
            "kind": "2-D 5-point Poisson, scipy.sparse.kron",
            "grid": [args.m, args.m],
            "n": n,
            "nnz": a.nnz,
            "dtype": a.dtype.name,
            "index_dtype": a.indices.dtype.name,
        },
        "problem": {
            "sweeps_per_run": sweeps,
            "omega": omega,
            "direction": "forward",
            "x0": "zeros",
            "b": "ones",
        },
        "timing": {
            "clock": "time.perf_counter",
            "unit": f"one run = {sweeps} sweeps from x = 0 (reset untimed)",
            "warmup_runs": args.warmup,
            "repeats": args.repeats,
            "statistic": "median",
            "first_call": (
                "one sweep including cold JIT compile (fresh NUMBA_CACHE_DIR)"
                if not args.warm_cache
                else "one sweep, Numba on-disk cache as found"
            ),
        },
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "cpu_affinity_count": _affinity_count(),
            "numba": numba.__version__,
            "numba_max_threads": max_threads,
            "numba_threading_layer": threading_layer,
            "numba_fastmath": _config.FASTMATH,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "pyamg": pyamg.__version__,
        },
        "sequential": sequential,
        "multicolor": multicolour,
    }


def print_cpu(cpu: dict) -> None:
    seq, mc = cpu["sequential"], cpu["multicolor"]
    sweeps = cpu["problem"]["sweeps_per_run"]
    m = cpu["matrix"]
    print(
        f"\nPoisson {m['grid'][0]}x{m['grid'][1]}: n = {m['n']}, nnz = {m['nnz']}; "
        f"{sweeps} forward SOR sweeps, omega = {cpu['problem']['omega']}, "
        f"median of {cpu['timing']['repeats']} runs"
    )
    head = f"{'kernel':<44} {'threads':>7} {'ms/run':>9} {'ms/sweep':>9} {'vs PyAMG':>9}"
    print(head)
    print("-" * len(head))
    ref = seq["reference"]["median_ms"]
    print(f"{'PyAMG sor (C++)':<44} {1:>7} {ref:>9.2f} {ref / sweeps:>9.3f} {1.0:>9.2f}")
    ours = seq["diffsolve"]["median_ms"]
    print(
        f"{'diffsolve sor_sweep':<44} {1:>7} {ours:>9.2f} {ours / sweeps:>9.3f} "
        f"{ref / ours:>9.2f}"
    )
    for t, s in mc["by_threads"].items():
        name = f"diffsolve sor_sweep_multicolor ({mc['n_colors']} colours)"
        print(
            f"{name:<44} {t:>7} {s['median_ms']:>9.2f} {s['ms_per_sweep']:>9.3f} "
            f"{ref / s['median_ms']:>9.2f}"
        )
    print(
        f"\nfirst call (JIT + 1 sweep): sor_sweep {seq['first_call_s']:.2f} s, "
        f"multicolour {mc['first_call_s']:.2f} s"
    )
    print(
        f"iterates: max |diffsolve - PyAMG| = {seq['max_abs_diff_vs_reference']:.3e} "
        f"(relative {seq['max_rel_diff_vs_reference']:.3e}); "
        f"max |multicolour - sequential in colour order| = "
        f"{mc['max_abs_diff_vs_sequential_in_colour_order']:.3e}"
    )
    print(
        f"relative residual after {sweeps} sweeps: natural order "
        f"{mc['relative_residual_after_sweeps_natural_order']:.4e}, "
        f"colour order {mc['relative_residual_after_sweeps']:.4e}"
    )


# --------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------


def bench_gpu(args, cupy) -> dict:
    import numba

    from diffsolve.kernels.cpu import relaxation as relax
    from diffsolve.kernels.cuda import relaxation as cuda_relax

    a = poisson_2d(args.gpu_m)
    n = a.shape[0]
    diag = a.diagonal()
    b = np.ones(n)
    omega, sweeps = args.omega, args.sweeps
    color_ptr, color_rows = relax.color_groups(relax.greedy_coloring(a.indptr, a.indices))

    indptr_d, indices_d = cupy.asarray(a.indptr), cupy.asarray(a.indices)
    data_d, diag_d, b_d = cupy.asarray(a.data), cupy.asarray(diag), cupy.asarray(b)
    rows_d = cupy.asarray(color_rows)
    x_d = cupy.zeros(n)

    def gpu_run(ptr=color_ptr, rows=rows_d):
        for _ in range(sweeps):
            cuda_relax.sor_sweep_multicolor(
                indptr_d, indices_d, data_d, diag_d, b_d, x_d, omega, ptr, rows
            )

    def event_time_ms(fn) -> float:
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return cupy.cuda.get_elapsed_time(start, stop)

    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    gpu_run()
    cupy.cuda.Device().synchronize()
    first_call = time.perf_counter() - t0  # includes NVRTC (or its disk cache)

    # Same iteration on the CPU (multicolour, same colouring).
    x_cpu = np.zeros(n)
    for _ in range(sweeps):
        relax.sor_sweep_multicolor(
            a.indptr, a.indices, a.data, diag, b, x_cpu, omega, color_ptr, color_rows
        )
    x_d[...] = 0
    gpu_run()
    max_abs_diff = float(np.abs(cupy.asnumpy(x_d) - x_cpu).max())

    def timed_gpu(fn):
        for _ in range(args.warmup):
            x_d[...] = 0
            fn()
        out = []
        for _ in range(args.repeats):
            x_d[...] = 0
            cupy.cuda.Device().synchronize()
            out.append(event_time_ms(fn) * 1e-3)
        return summarize(out)

    s_gpu = timed_gpu(gpu_run)

    # CPU timings on the same matrix for reference.
    x_seq = np.zeros(n)

    def cpu_seq():
        for _ in range(sweeps):
            relax.sor_sweep(a.indptr, a.indices, a.data, diag, b, x_seq, omega)

    def cpu_mc():
        for _ in range(sweeps):
            relax.sor_sweep_multicolor(
                a.indptr, a.indices, a.data, diag, b, x_cpu, omega, color_ptr, color_rows
            )

    def reset():
        x_seq[:] = 0
        x_cpu[:] = 0

    numba.set_num_threads(1)
    s_seq = time_runs({"seq": cpu_seq}, reset, args.repeats, args.warmup)["seq"]
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    s_mc = time_runs({"mc": cpu_mc}, reset, args.repeats, args.warmup)["mc"]

    # The GPU's own parallel colouring.
    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    colors_d = cuda_relax.greedy_coloring(indptr_d, indices_d)
    gptr, grows = cuda_relax.color_groups(colors_d)
    cupy.cuda.Device().synchronize()
    gpu_coloring_s = time.perf_counter() - t0
    s_gpu_jp = timed_gpu(lambda: gpu_run(gptr, grows))
    x_d[...] = 0
    gpu_run(gptr, grows)
    residual_jp = rel_residual(a, b, cupy.asnumpy(x_d))

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return {
        "benchmark": "multicolour SOR sweeps, diffsolve CUDA twin vs Numba CPU",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "matrix": {
            "kind": "2-D 5-point Poisson, scipy.sparse.kron",
            "grid": [args.gpu_m, args.gpu_m],
            "n": n,
            "nnz": a.nnz,
            "dtype": "float64",
        },
        "problem": {"sweeps_per_run": sweeps, "omega": omega, "x0": "zeros", "b": "ones"},
        "timing": {
            "gpu_clock": "CUDA events around each run of sweeps",
            "cpu_clock": "time.perf_counter",
            "warmup_runs": args.warmup,
            "repeats": args.repeats,
            "statistic": "median",
        },
        "environment": {
            "device": name.decode() if isinstance(name, bytes) else name,
            "cupy": cupy.__version__,
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
            "numba": numba.__version__,
            "numba_max_threads": numba.config.NUMBA_NUM_THREADS,
            "cpu_count": os.cpu_count(),
        },
        "red_black": {
            "n_colors": len(color_ptr) - 1,
            "gpu": {**s_gpu, "ms_per_sweep": s_gpu["median_ms"] / sweeps},
            "gpu_first_call_s": first_call,
            "cpu_sequential_1_thread": {**s_seq, "ms_per_sweep": s_seq["median_ms"] / sweeps},
            "cpu_multicolor_all_threads": {**s_mc, "ms_per_sweep": s_mc["median_ms"] / sweeps},
            "speedup_gpu_vs_cpu_sequential": s_seq["median_ms"] / s_gpu["median_ms"],
            "speedup_gpu_vs_cpu_multicolor": s_mc["median_ms"] / s_gpu["median_ms"],
            "max_abs_diff_gpu_vs_cpu_multicolor": max_abs_diff,
        },
        "gpu_jones_plassmann": {
            "n_colors": len(gptr) - 1,
            "coloring_plus_groups_s": gpu_coloring_s,
            "sweeps": {**s_gpu_jp, "ms_per_sweep": s_gpu_jp["median_ms"] / sweeps},
            "relative_residual_after_sweeps": residual_jp,
        },
    }


def print_gpu(gpu: dict) -> None:
    rb, jp = gpu["red_black"], gpu["gpu_jones_plassmann"]
    sweeps = gpu["problem"]["sweeps_per_run"]
    m = gpu["matrix"]["grid"][0]
    print(
        f"\nGPU {gpu['environment']['device']}, Poisson {m}x{m}, {sweeps} sweeps, "
        f"median of {gpu['timing']['repeats']} runs"
    )
    head = f"{'kernel':<52} {'ms/run':>9} {'ms/sweep':>9}"
    print(head)
    print("-" * len(head))
    rows = [
        ("CPU sor_sweep (1 thread)", rb["cpu_sequential_1_thread"]),
        ("CPU sor_sweep_multicolor red-black (all threads)", rb["cpu_multicolor_all_threads"]),
        ("CUDA sor_sweep_multicolor red-black", rb["gpu"]),
        (f"CUDA sor_sweep_multicolor JP ({jp['n_colors']} colours)", jp["sweeps"]),
    ]
    for name, s in rows:
        print(f"{name:<52} {s['median_ms']:>9.3f} {s['median_ms'] / sweeps:>9.4f}")
    print(
        f"max |GPU - CPU multicolour| = {rb['max_abs_diff_gpu_vs_cpu_multicolor']:.3e}; "
        f"GPU colouring {jp['coloring_plus_groups_s'] * 1e3:.1f} ms"
    )


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--m", type=int, default=512, help="CPU interior grid size (n = m**2)")
    parser.add_argument("--gpu-m", type=int, default=1024, help="GPU interior grid size")
    parser.add_argument("--sweeps", type=int, default=20, help="sweeps per timed run")
    parser.add_argument("--omega", type=float, default=1.5)
    parser.add_argument("--threads", type=int, default=2, help="threads of the multicolour sweep")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs (>= 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    add_cache_and_output_args(parser, RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.repeats < 10:
        parser.error("--repeats must be at least 10")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    with numba_cache(args.warm_cache):
        cpu = bench_cpu(args)
        print_cpu(cpu)
        path = args.out_dir / "sor_sweep_cpu.json"
        path.write_text(json.dumps(cpu, indent=2) + "\n")
        print(f"\nwrote {path}")

        if args.no_gpu:
            print("GPU benchmark skipped (--no-gpu)")
            return 0
        cupy, reason = _gpu_available()
        if cupy is None:
            print(f"No GPU found: {reason}; GPU benchmark skipped")
            return 0
        gpu = bench_gpu(args, cupy)
    print_gpu(gpu)
    path = args.out_dir / "sor_sweep_gpu.json"
    path.write_text(json.dumps(gpu, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
