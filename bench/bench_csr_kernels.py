"""Benchmark diffsolve's CSR matvec kernels against scipy (and cuSPARSE).

Run from the repository root::

    python -m bench.bench_csr_kernels            # CPU, and GPU when CuPy sees one
    python -m bench.bench_csr_kernels --help

Matrix: the 2-D 5-point Poisson (negative Laplacian) matrix on an m x m
interior grid, built with ``scipy.sparse.kron``; m = 512 gives
n = 262,144 rows and nnz = 1,308,672.

For each dtype and right-hand side (1-D ``x`` and 2-D ``x`` with k columns)
it reports

* the first call of diffsolve's kernel, which includes Numba's JIT compile.
  By default Numba's on-disk cache is pointed at a fresh temporary folder so
  that this is a true cold compile; ``--warm-cache`` uses the normal cache
  instead, and then the first call only loads machine code from disk;
* the median (and min, interquartile range) of ``--repeats`` timed calls
  after warm-up, for diffsolve's ``csr_matvec`` into a preallocated ``out``
  and for scipy's ``A @ x`` (which allocates its result: that is its API),
  interleaved call by call so that drift in machine load hits both alike;
* the ratio scipy_time / diffsolve_time (> 1 means diffsolve is faster) and
  the effective memory bandwidth of each, counting the CSR arrays and x read
  once and out written once.

Results go to ``bench/results/csr_kernels_cpu.json`` (and
``csr_kernels_gpu.json`` when a GPU is used: the CUDA twin against cupyx's
``A @ x``, which calls cuSPARSE, timed with CUDA events).
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
import scipy.sparse as sp

from bench._common import add_cache_and_output_args, numba_cache

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------
# Problem
# --------------------------------------------------------------------------


def poisson_2d(m: int, dtype=np.float64) -> sp.csr_array:
    """5-point Poisson matrix on an m x m interior grid (n = m**2), CSR."""
    t = sp.diags_array([-1.0, 2.0, -1.0], offsets=[-1, 0, 1], shape=(m, m), dtype=np.float64)
    eye = sp.eye_array(m, dtype=np.float64)
    a = (sp.kron(eye, t) + sp.kron(t, eye)).tocsr()
    a.sort_indices()
    return a.astype(dtype)


def traffic_bytes(a, k: int) -> int:
    """Bytes a matvec must move at least: CSR arrays and x read, out written."""
    n_rows, n_cols = a.shape
    val = a.data.itemsize
    return (
        a.data.nbytes
        + a.indices.nbytes
        + a.indptr.nbytes
        + n_cols * max(k, 1) * val
        + n_rows * max(k, 1) * val
    )


def summarize(times_s: list[float]) -> dict:
    """Median, min and interquartile range of a list of timings, in ms."""
    q = np.percentile(np.asarray(times_s) * 1e3, [25, 50, 75])
    return {
        "median_ms": float(q[1]),
        "min_ms": float(min(times_s) * 1e3),
        "iqr_ms": [float(q[0]), float(q[2])],
        "repeats": len(times_s),
    }


def print_table(rows: list[dict], title: str, ours: str, theirs: str) -> None:
    """Print the side-by-side table."""
    head = (
        f"{'dtype':<8} {'x':<10} {'first call s':>12} {ours + ' ms':>13} "
        f"{theirs + ' ms':>13} {theirs + '/' + ours:>15} {ours + ' GB/s':>13} "
        f"{theirs + ' GB/s':>13}"
    )
    print()
    print(title)
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['dtype']:<8} {r['x']:<10} {r['first_call_s']:>12.3f} "
            f"{r['diffsolve']['median_ms']:>13.3f} {r['reference']['median_ms']:>13.3f} "
            f"{r['ratio_reference_over_diffsolve']:>15.2f} "
            f"{r['diffsolve_GBps']:>13.1f} {r['reference_GBps']:>13.1f}"
        )


# --------------------------------------------------------------------------
# CPU
# --------------------------------------------------------------------------


def bench_cpu(args) -> dict:
    # Imported here, after main() may have pointed NUMBA_CACHE_DIR at a fresh
    # folder: Numba reads its configuration once, at import.
    import numba

    from diffsolve.kernels.cpu import _config
    from diffsolve.kernels.cpu import sparse as cpu_sparse

    rows = []
    for dtype_name in args.dtypes:
        dtype = np.dtype(dtype_name)
        a = poisson_2d(args.m, dtype)
        n = a.shape[0]
        rng = np.random.default_rng(0)
        for k in (None, args.k):
            x_shape = (n,) if k is None else (n, k)
            x = rng.standard_normal(x_shape).astype(dtype)
            out = np.empty(x_shape, dtype=dtype)
            kernel = cpu_sparse._csr_matvec_1d if k is None else cpu_sparse._csr_matvec_2d
            hits0, misses0 = _cache_counts(kernel)

            def ours(x=x, out=out, a=a):
                return cpu_sparse.csr_matvec(a.indptr, a.indices, a.data, x, out)

            def theirs(x=x, a=a):
                return a @ x

            t0 = time.perf_counter()
            ours()
            first_call = time.perf_counter() - t0
            hits1, misses1 = _cache_counts(kernel)

            # Same answer, up to rounding, before anything is timed.
            expected = theirs()
            tol = 1e-4 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(out, expected, rtol=tol, atol=tol * np.abs(expected).max())

            for _ in range(args.warmup):
                ours()
                theirs()
            t_ours, t_theirs = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                ours()
                t1 = time.perf_counter()
                theirs()
                t2 = time.perf_counter()
                t_ours.append(t1 - t0)
                t_theirs.append(t2 - t1)
            s_ours, s_theirs = summarize(t_ours), summarize(t_theirs)
            nbytes = traffic_bytes(a, 1 if k is None else k)
            rows.append(
                {
                    "dtype": dtype.name,
                    "x": "1-D" if k is None else f"2-D k={k}",
                    "k": k,
                    "first_call_s": first_call,
                    "first_call_numba_cache": {
                        "hits": hits1 - hits0,
                        "misses": misses1 - misses0,
                    },
                    "diffsolve": s_ours,
                    "reference": s_theirs,
                    "reference_name": "scipy A @ x",
                    "ratio_reference_over_diffsolve": s_theirs["median_ms"] / s_ours["median_ms"],
                    "bytes_moved": nbytes,
                    "diffsolve_GBps": nbytes / (s_ours["median_ms"] * 1e-3) / 1e9,
                    "reference_GBps": nbytes / (s_theirs["median_ms"] * 1e-3) / 1e9,
                }
            )

    a = poisson_2d(args.m)
    try:
        threading_layer = numba.threading_layer()
    except ValueError:  # no parallel region has run
        threading_layer = None
    return {
        "benchmark": "csr_matvec, diffsolve (Numba) vs scipy",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "matrix": {
            "kind": "2-D 5-point Poisson, scipy.sparse.kron",
            "grid": [args.m, args.m],
            "n": a.shape[0],
            "nnz": a.nnz,
            "index_dtype": a.indices.dtype.name,
        },
        "timing": {
            "clock": "time.perf_counter",
            "warmup_calls": args.warmup,
            "repeats": args.repeats,
            "statistic": "median",
            "first_call": (
                "cold JIT compile (fresh NUMBA_CACHE_DIR)"
                if not args.warm_cache
                else "Numba on-disk cache as found (compile on a miss, load on a hit)"
            ),
            "diffsolve_out": "preallocated",
            "scipy_out": "allocated by A @ x",
        },
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "cpu_affinity_count": _affinity_count(),
            "numba": numba.__version__,
            "numba_num_threads": numba.get_num_threads(),
            "numba_threading_layer": threading_layer,
            "numba_fastmath": _config.FASTMATH,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        },
        "results": rows,
    }


def _cache_counts(dispatcher) -> tuple[int, int]:
    """Total Numba on-disk cache hits and misses of a dispatcher so far."""
    stats = getattr(dispatcher, "stats", None)
    if stats is None:
        return 0, 0
    return sum(stats.cache_hits.values()), sum(stats.cache_misses.values())


def _affinity_count() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return None


# --------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------


def _gpu_available():
    """The cupy module when it sees a CUDA device, else None (with a reason)."""
    try:
        import cupy
    except ImportError as exc:
        return None, f"CuPy is not installed ({exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA runtime/driver errors of any kind
        return None, f"CuPy found no usable CUDA device ({exc})"
    if n == 0:
        return None, "CuPy sees no CUDA device"
    return cupy, ""


def bench_gpu(args, cupy) -> dict:
    import cupyx.scipy.sparse as cusp

    from diffsolve.kernels.cuda import sparse as cuda_sparse

    def event_time_ms(fn) -> float:
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return cupy.cuda.get_elapsed_time(start, stop)

    rows = []
    for dtype_name in args.dtypes:
        dtype = np.dtype(dtype_name)
        a_host = poisson_2d(args.m, dtype)
        a = cusp.csr_matrix(sp.csr_matrix(a_host))
        n = a.shape[0]
        rng = np.random.default_rng(0)
        for k in (None, args.k):
            x_shape = (n,) if k is None else (n, k)
            x = cupy.asarray(rng.standard_normal(x_shape).astype(dtype))
            out = cupy.empty(x_shape, dtype=dtype)

            def ours(x=x, out=out, a=a):
                return cuda_sparse.csr_matvec(a.indptr, a.indices, a.data, x, out)

            def theirs(x=x, a=a):
                return a @ x

            cupy.cuda.Device().synchronize()
            t0 = time.perf_counter()
            ours()
            cupy.cuda.Device().synchronize()
            first_call = time.perf_counter() - t0  # includes NVRTC (or its disk cache)

            expected = theirs()
            tol = 1e-4 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(
                cupy.asnumpy(out),
                cupy.asnumpy(expected),
                rtol=tol,
                atol=tol * float(cupy.abs(expected).max()),
            )
            for _ in range(args.warmup):
                ours()
                theirs()
            cupy.cuda.Device().synchronize()
            t_ours, t_theirs = [], []
            for _ in range(args.repeats):
                t_ours.append(event_time_ms(ours) * 1e-3)
                t_theirs.append(event_time_ms(theirs) * 1e-3)
            s_ours, s_theirs = summarize(t_ours), summarize(t_theirs)
            nbytes = traffic_bytes(a_host, 1 if k is None else k)
            rows.append(
                {
                    "dtype": dtype.name,
                    "x": "1-D" if k is None else f"2-D k={k}",
                    "k": k,
                    "first_call_s": first_call,
                    "diffsolve": s_ours,
                    "reference": s_theirs,
                    "reference_name": "cupyx.scipy.sparse A @ x (cuSPARSE)",
                    "ratio_reference_over_diffsolve": s_theirs["median_ms"] / s_ours["median_ms"],
                    "bytes_moved": nbytes,
                    "diffsolve_GBps": nbytes / (s_ours["median_ms"] * 1e-3) / 1e9,
                    "reference_GBps": nbytes / (s_theirs["median_ms"] * 1e-3) / 1e9,
                }
            )

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return {
        "benchmark": "csr_matvec, diffsolve CUDA twin (CuPy RawKernel) vs cupyx/cuSPARSE",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "matrix": {
            "kind": "2-D 5-point Poisson, scipy.sparse.kron",
            "grid": [args.m, args.m],
            "n": a_host.shape[0],
            "nnz": a_host.nnz,
        },
        "timing": {
            "clock": "CUDA events around each call",
            "warmup_calls": args.warmup,
            "repeats": args.repeats,
            "statistic": "median",
            "first_call": "wall clock with device synchronisation; includes NVRTC "
            "compile or CuPy's kernel-cache load",
        },
        "environment": {
            "device": name.decode() if isinstance(name, bytes) else name,
            "cupy": cupy.__version__,
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "cpu_count": os.cpu_count(),
        },
        "results": rows,
    }


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--m", type=int, default=512, help="interior grid size (n = m**2)")
    parser.add_argument("--k", type=int, default=4, help="columns of the 2-D x")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls (>= 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument(
        "--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"]
    )
    add_cache_and_output_args(parser, RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.repeats < 20:
        parser.error("--repeats must be at least 20")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    with numba_cache(args.warm_cache):
        cpu = bench_cpu(args)
    env = cpu["environment"]
    print(
        f"Poisson {args.m}x{args.m}: n = {cpu['matrix']['n']}, nnz = {cpu['matrix']['nnz']}; "
        f"numba {env['numba']} with {env['numba_num_threads']} threads "
        f"({env['numba_threading_layer']}), {env['cpu_count']} CPUs, "
        f"numpy {env['numpy']}, scipy {env['scipy']}"
    )
    print_table(
        cpu["results"],
        f"CPU csr_matvec, median of {args.repeats} calls (first call = JIT compile + one run)",
        "diffsolve",
        "scipy",
    )
    path = args.out_dir / "csr_kernels_cpu.json"
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
    print_table(
        gpu["results"],
        f"GPU csr_matvec on {gpu['environment']['device']}, median of {args.repeats} calls "
        "(CUDA events)",
        "diffsolve",
        "cuSPARSE",
    )
    path = args.out_dir / "csr_kernels_gpu.json"
    path.write_text(json.dumps(gpu, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
