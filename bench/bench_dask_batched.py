"""Batched solves on Dask against the single-process batched call on the same problems:
throughput, parallel efficiency and the per-task overhead.

Problems: (1) ``diffsolve.ot.sinkhorn`` on N = 1024 independent problems, n = m = 128,
random costs in [0, 1), eps = 0.05, rtol = 1e-9 (one batched call: the fused Numba
kernels over a (1024, 128, 128) batch); (2) ``diffsolve.ode.odeint`` on N = 1024 initial
states of a damped Duffing oscillator with shared parameters (Tsit5, rtol = 1e-6,
20 output times; the per-trajectory Python loop of odeint).

The inputs are persisted on the cluster before the timings (the data of a batch that
needs a cluster lives there); a timing covers building the lazy result on the client and
computing it.

Modes, interleaved over ``--repeats`` rounds (min and median reported): the single
process batched call with Numba on 1 thread and on all cores; a ``LocalCluster`` of 1 and
of 2 worker processes (1 thread each, ``NUMBA_NUM_THREADS=1``), the batch cut into 8
chunks (32 problems per task) and 32 chunks (8 per task). Only the costs / final states
and the statuses are gathered, as a user computing a loss would.

A third measurement isolates the overhead: N = 256 tiny problems (2 x 2 linear solves)
in 256 chunks on 1 and 2 workers; the time per task is then almost all Dask (client-side
graph building, scheduling, the worker's call, gathering).

Efficiency of W workers: ``T(1 process, 1 thread) / (W T(W workers))``. Per-task overhead:
``(T(1 worker) - T(1 process, 1 thread)) / tasks``: what Dask adds to each chunk
(scheduling, the worker's call, moving the chunk's inputs and outputs).

Run: ``python -m bench.bench_dask_batched`` (~3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def duffing(t, y, p):
    """Damped Duffing oscillator ``x'' = -p0 x' - p1 x - p2 x^3`` (NumPy, per trajectory)."""
    return np.array([y[1], -p[0] * y[1] - p[1] * y[0] - p[2] * y[0] ** 3])


def problems(N=1024, n=128, seed=0):
    rng = np.random.default_rng(seed)
    C = rng.random((N, n, n))
    a = np.full((N, n), 1.0 / n)
    y0 = rng.standard_normal((N, 2))
    return a, C, y0


def single(kind, a, C, y0, t, p):
    import diffsolve as ds

    t0 = time.perf_counter()
    if kind == "sinkhorn":
        res = ds.ot.sinkhorn(a, a, C, 0.05, rtol=1e-9)
        out = res.cost
    else:
        res = ds.ode.odeint(duffing, y0, t, p)
        out = res.ys[-1]
    return time.perf_counter() - t0, out


def on_cluster(a, C, y0, chunk):
    """The batch as Dask arrays persisted on the current cluster."""
    import dask
    import dask.array as da

    return dask.persist(da.from_array(a, chunks=(chunk, a.shape[1])),
                        da.from_array(C, chunks=(chunk, *C.shape[1:])),
                        da.from_array(y0, chunks=(chunk, 2)))


def on_dask(kind, data, t, p):
    import dask

    import diffsolve.distributed as dd

    A, CC, Y0 = data
    t0 = time.perf_counter()
    if kind == "sinkhorn":
        res = dd.sinkhorn(A, A, CC, 0.05, rtol=1e-9)
        out, status = dask.compute(res.cost, res.status)
    else:
        res = dd.odeint(duffing, Y0, t, p)
        out, status = dask.compute(res.ys[-1], res.status)
    assert (status == 0).all()
    return time.perf_counter() - t0, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--N", type=int, default=1024)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import dask
    import numba
    from dask.distributed import Client, LocalCluster

    a, C, y0 = problems(args.N)
    t = np.linspace(0.0, 10.0, 20)
    p = np.array([0.1, 1.0, 0.5])
    cores = os.cpu_count()
    env = {"NUMBA_NUM_THREADS": "1"}
    clusters = {w: LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                                dashboard_address=None, env=env) for w in (1, 2)}
    clients = {w: Client(c, set_as_default=False) for w, c in clusters.items()}
    times: dict = {}
    refs = {}
    try:
        for kind in ("sinkhorn", "odeint"):
            # warm-up (JIT caches, imports) outside the timings
            refs[kind] = single(kind, a, C, y0, t, p)[1]
            data = {}
            for w, client in clients.items():
                with dask.config.set(scheduler=client):
                    for nchunks in (8, 32):
                        data[w, nchunks] = on_cluster(a, C, y0, args.N // nchunks)
                    on_dask(kind, data[w, 8], t, p)
            for rep in range(args.repeats):
                for threads in (1, cores):
                    numba.set_num_threads(threads)
                    dt, out = single(kind, a, C, y0, t, p)
                    times.setdefault((kind, f"1 process, {threads} thread(s)"), []).append(dt)
                numba.set_num_threads(cores)
                for w, client in clients.items():
                    for nchunks in (8, 32):
                        with dask.config.set(scheduler=client):
                            dt, out = on_dask(kind, data[w, nchunks], t, p)
                        # the same numbers as the single-process batched call
                        np.testing.assert_allclose(out, refs[kind], rtol=0, atol=1e-12)
                        key = (kind, f"{w} worker(s), {nchunks} chunks")
                        times.setdefault(key, []).append(dt)
                print(f"{kind} round {rep}: " + ", ".join(
                    f"{k[1]} {v[-1]:.3g}s" for k, v in times.items() if k[0] == kind),
                    flush=True)
        overhead = {}
        for w, client in clients.items():
            with dask.config.set(scheduler=client):
                overhead[w] = tiny_task_overhead(args.repeats)
            print(f"tiny tasks, {w} worker(s): {overhead[w]}", flush=True)
    finally:
        for c in clients.values():
            c.close()
        for c in clusters.values():
            c.close()
    summary = summarise(times, args.N)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "dask_batched.json").write_text(json.dumps(
        {"N": args.N, "cores": cores, "repeats": args.repeats, "tiny_task_overhead": overhead,
         "times": {f"{k[0]} | {k[1]}": v for k, v in times.items()}, "summary": summary},
        indent=1))
    write_markdown(summary, args, cores, args.out_dir / "dask_batched.md", overhead)
    plot(summary, args.out_dir / "dask_batched.png")


def summarise(times, N):
    out = []
    for kind in ("sinkhorn", "odeint"):
        base = min(times[(kind, "1 process, 1 thread(s)")])
        for (k, mode), v in times.items():
            if k != kind:
                continue
            row = {"kind": kind, "mode": mode, "min_s": min(v),
                   "median_s": statistics.median(v), "problems_per_s": N / min(v)}
            if "worker" in mode:
                w = int(mode.split()[0])
                nchunks = int(mode.split(", ")[1].split()[0])
                row["workers"] = w
                row["tasks"] = nchunks
                row["efficiency"] = base / (w * min(v))
                if w == 1:
                    row["overhead_per_task_ms"] = (min(v) - base) / nchunks * 1e3
            out.append(row)
    return out


def tiny_task_overhead(repeats, N=256):
    """Seconds per task for N tiny problems in N chunks (build + compute), min / median."""
    import dask
    import dask.array as da

    import diffsolve.distributed as dd

    A = np.array([[2.0, 1.0], [1.0, 3.0]])
    (b,) = dask.persist(da.ones((N, 2), chunks=(1, 2)))
    dd.compute(dd.linear_solve(A, b))  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dd.compute(dd.linear_solve(A, b))
        ts.append((time.perf_counter() - t0) / N)
    return {"tasks": N, "min_ms": min(ts) * 1e3, "median_ms": statistics.median(ts) * 1e3}


def write_markdown(summary, args, cores, path, overhead):
    lines = [
        "# Batched solves on Dask (bench/bench_dask_batched.py)",
        "",
        f"N = {args.N} problems; {cores} cores; {args.repeats} interleaved rounds, min / "
        "median seconds. Efficiency: T(1 process, 1 thread) / (W T(W workers)); overhead "
        "per task: (T(1 worker) - T(1 process, 1 thread)) / tasks.",
        "",
        "| problem | mode | min s | median s | problems/s | efficiency | overhead per "
        "task (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        eff = f"{r['efficiency']:.2f}" if "efficiency" in r else "-"
        ovh = f"{r['overhead_per_task_ms']:.1f}" if "overhead_per_task_ms" in r else "-"
        lines.append(f"| {r['kind']} | {r['mode']} | {r['min_s']:.3g} | "
                     f"{r['median_s']:.3g} | {r['problems_per_s']:.0f} | {eff} | {ovh} |")
    lines += ["", "Tiny tasks (256 chunks of one 2 x 2 linear solve; build + compute per task):",
              ""]
    for w, o in overhead.items():
        lines.append(f"- {w} worker(s): {o['min_ms']:.2f} ms min, {o['median_ms']:.2f} ms "
                     "median per task")
    lines.append("")
    path.write_text("\n".join(lines))


def plot(summary, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the [bench] extra
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kind in zip(axes, ("sinkhorn", "odeint")):
        rows = [r for r in summary if r["kind"] == kind]
        ax.barh([r["mode"] for r in rows], [r["problems_per_s"] for r in rows])
        ax.set_title(f"{kind}: problems per second (min time)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
