"""The sharded point-cloud Sinkhorn on a Dask LocalCluster: time per iteration, total time
and peak memory per worker as n grows, against ``diffsolve.ot.sinkhorn`` where the cost
matrix fits in memory.

Set-up: ``n = m`` points uniform in the unit square (d = 2), uniform weights, squared
Euclidean cost, float64; a ``LocalCluster`` of 2 worker processes with 1 thread each
(``NUMBA_NUM_THREADS=1`` in the workers: Dask supplies the parallelism), the clouds cut
into 8 row blocks each (64 block-pair tasks per half-step). Time per iteration is measured
between the solver's own convergence checks (a callback timestamps them), so it excludes
the set-up and the final pass (row/column sums, cost, error), which are reported
separately. Memory: the resident set size (RSS) of every worker process, sampled every
50 ms by a thread of the client; the peak minus the idle RSS is the solve's own memory.

``ot.sinkhorn`` runs in this process on the dense cost (its construction not timed), with
its default kernel on NumPy (``"absorbed"``) and with ``kernel="lse"`` (the fused streaming
log-sum-exp, the same arithmetic as the sharded blocks); Numba uses both cores. Sizes up
to ``--dense-max`` are paired with the sharded run, interleaved over ``--repeats``
(min and median reported). OTT-JAX's online point cloud was tried: ott-jax 0.6.0 installs
without changing jax 0.10.2, but its online (``batch_size``) path fails with that jax
(``jax.interpreters.batching.is_vmappable`` no longer exists), so it is not compared.

Run: ``python -m bench.bench_dask_sharded`` (all sizes, ~10 minutes on 2 cores) or
``--sizes 4000 --repeats 1`` for a smoke run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BLOCKS = 8


class RssSampler:
    """Peak RSS of a set of processes, sampled by a background thread."""

    def __init__(self, pids, period=0.05):
        import psutil

        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.peak = dict.fromkeys(pids, 0)
        self.period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for pid, p in self.procs.items():
                try:
                    self.peak[pid] = max(self.peak[pid], p.memory_info().rss)
                except Exception:  # a process that ended: keep its last peak
                    pass
            time.sleep(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def clouds(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 2)), rng.random((n, 2))


def sharded_run(client, x, y, eps, rtol, maxiter, check_every):
    import dask.array as da

    import diffsolve.distributed as dd

    n = len(x)
    k = -(-n // BLOCKS)
    X = da.from_array(x, chunks=(k, 2))
    Y = da.from_array(y, chunks=(k, 2))
    pids = client.run(os.getpid)
    idle = {addr: _rss(pid) for addr, pid in pids.items()}
    stamps = []

    def callback(state):
        stamps.append((time.perf_counter(), state.n_iters))

    with RssSampler(list(pids.values())) as sampler:
        t0 = time.perf_counter()
        res = dd.sinkhorn_pointcloud(X, Y, eps, rtol=rtol, maxiter=maxiter,
                                     check_every=check_every, callback=callback)
        total = time.perf_counter() - t0
    iters = _per_iteration(stamps)
    last = stamps[-1][0] if stamps else t0
    return {
        "n": n, "eps": eps, "rtol": rtol, "n_iters": res.n_iters, "status": res.status.name,
        "error": res.error, "cost": res.cost, "total_s": total,
        "s_per_iter": iters,
        "final_pass_s": time.perf_counter() - last if stamps else None,
        "blocks": BLOCKS, "block_rows": k,
        "idle_rss_mb": [v / 2**20 for v in idle.values()],
        "peak_rss_mb": [v / 2**20 for v in sampler.peak.values()],
        "peak_minus_idle_mb": [(sampler.peak[pids[a]] - idle[a]) / 2**20 for a in pids],
        "dense_cost_mb": 8 * n * n / 2**20,
    }


def _per_iteration(stamps):
    """Median seconds per iteration between consecutive convergence checks."""
    iters = [(t1 - t0) / (n1 - n0) for (t0, n0), (t1, n1) in itertools.pairwise(stamps)
             if n1 > n0]
    return statistics.median(iters) if iters else None


def dense_cost(x, y):
    """``||x_i - y_j||^2`` with two (n, m) temporaries (not an (n, m, d) one)."""
    C = np.subtract.outer(x[:, 0], y[:, 0])
    C *= C
    for k in range(1, x.shape[1]):
        t = np.subtract.outer(x[:, k], y[:, k])
        t *= t
        C += t
    return C


def dense_run(x, y, eps, rtol, kernel):
    import psutil

    import diffsolve as ds

    n = len(x)
    C = dense_cost(x, y)
    a = np.full(n, 1.0 / n)
    base = psutil.Process().memory_info().rss
    stamps = []

    def callback(state):
        stamps.append((time.perf_counter(), state.n_iters))

    with RssSampler([os.getpid()]) as sampler:
        t0 = time.perf_counter()
        res = ds.ot.sinkhorn(a, a, C, eps, rtol=rtol, kernel=kernel, check_every=2,
                             callback=callback)
        total = time.perf_counter() - t0
    del C
    return {"n": n, "eps": eps, "kernel": kernel, "n_iters": int(res.n_iters),
            "status": res.status.name, "cost": float(res.cost), "total_s": total,
            "s_per_iter": _per_iteration(stamps),
            "peak_rss_mb": sampler.peak[os.getpid()] / 2**20,
            "rss_before_mb": base / 2**20}


def _rss(pid):
    import psutil

    return psutil.Process(pid).memory_info().rss


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000, 100000])
    parser.add_argument("--dense-max", type=int, default=20000)
    parser.add_argument("--absorbed-max", type=int, default=10000,
                        help="largest n for ot.sinkhorn's absorbed kernel (it holds C, "
                             "its kernel and the plan: 3 x 8 n^2 bytes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--eps-large", type=float, default=1.0,
                        help="eps above --dense-max: fewer iterations (the time per "
                             "iteration does not depend on eps)")
    parser.add_argument("--check-every-large", type=int, default=1,
                        help="check_every above --dense-max (each check is one wait for "
                             "the cluster, small next to an iteration there)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the .md and .png from the .json in --out-dir")
    parser.add_argument("--append", action="store_true",
                        help="add to the records of an earlier run in --out-dir (run the "
                             "largest size on its own)")
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.report_only:
        records = json.loads((args.out_dir / "dask_sharded.json").read_text())
        records["summary"] = summarise(records)
        (args.out_dir / "dask_sharded.json").write_text(json.dumps(records, indent=1))
        write_markdown(records["summary"], records["setup"], args.out_dir / "dask_sharded.md")
        plot(records["summary"], args.out_dir / "dask_sharded.png")
        return

    from dask.distributed import Client, LocalCluster

    records = {"sharded": [], "dense": [], "setup": {
        "workers": 2, "threads_per_worker": 1, "cores": os.cpu_count(),
        "blocks_per_cloud": BLOCKS, "eps": args.eps, "eps_large": args.eps_large,
        "dense_max": args.dense_max, "rtol": args.rtol, "d": 2}}
    previous = args.out_dir / "dask_sharded.json"
    if args.append and previous.exists():
        old = json.loads(previous.read_text())
        records["sharded"] = [r for r in old["sharded"] if r["n"] not in args.sizes]
        records["dense"] = [r for r in old["dense"] if r["n"] not in args.sizes]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, env={"NUMBA_NUM_THREADS": "1"}) as lc, \
            Client(lc) as client:
        client.run(lambda: __import__("diffsolve.distributed"))
        x, y = clouds(1000)
        sharded_run(client, x, y, args.eps, args.rtol, 20, 2)  # warm the workers' kernels
        for n in args.sizes:
            x, y = clouds(n)
            reps = args.repeats if n <= args.dense_max else 1
            eps = args.eps if n <= args.dense_max else args.eps_large
            every = 2 if n <= args.dense_max else args.check_every_large
            for rep in range(reps):
                r = sharded_run(client, x, y, eps, args.rtol, 1000, every)
                r["check_every"] = every
                r["repeat"] = rep
                records["sharded"].append(r)
                print(f"sharded n={n}: {r['n_iters']} it, {r['s_per_iter']:.3g} s/it, "
                      f"total {r['total_s']:.3g} s, peak RSS {max(r['peak_rss_mb']):.0f} MB "
                      f"(+{max(r['peak_minus_idle_mb']):.0f} MB over idle) {r['status']}",
                      flush=True)
                if n <= args.dense_max:
                    kernels = ("absorbed", "lse") if n <= args.absorbed_max else ("lse",)
                    for kernel in kernels:
                        d = dense_run(x, y, eps, args.rtol, kernel)
                        d["repeat"] = rep
                        records["dense"].append(d)
                        print(f"ot.sinkhorn({kernel}) n={n}: {d['n_iters']} it, "
                              f"{d['s_per_iter']:.3g} s/it, peak RSS {d['peak_rss_mb']:.0f} "
                              "MB", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(records)
    records["summary"] = summary
    (args.out_dir / "dask_sharded.json").write_text(json.dumps(records, indent=1))
    write_markdown(summary, records["setup"], args.out_dir / "dask_sharded.md")
    plot(summary, args.out_dir / "dask_sharded.png")


def summarise(records):
    out = []
    for n in sorted({r["n"] for r in records["sharded"]}):
        rs = [r for r in records["sharded"] if r["n"] == n]
        row = {"n": n, "eps": rs[0]["eps"], "runs": len(rs), "n_iters": rs[0]["n_iters"],
               "status": rs[0]["status"],
               "s_per_iter_min": min(r["s_per_iter"] for r in rs),
               "s_per_iter_median": statistics.median(r["s_per_iter"] for r in rs),
               "total_s_min": min(r["total_s"] for r in rs),
               "total_s_median": statistics.median(r["total_s"] for r in rs),
               "peak_rss_mb": max(max(r["peak_rss_mb"]) for r in rs),
               "peak_minus_idle_mb": max(max(r["peak_minus_idle_mb"]) for r in rs),
               "dense_cost_mb": rs[0]["dense_cost_mb"],
               "final_pass_s": min(r["final_pass_s"] for r in rs),
               "ns_per_entry_per_worker": min(r["s_per_iter"] for r in rs) * 2 / (2 * n * n)
               * 1e9}
        for kernel in ("absorbed", "lse"):
            ds_ = [d for d in records["dense"] if d["n"] == n and d["kernel"] == kernel]
            if ds_:
                row[f"dense_{kernel}_s_per_iter_min"] = min(d["s_per_iter"] for d in ds_)
                row[f"dense_{kernel}_s_per_iter_median"] = statistics.median(
                    d["s_per_iter"] for d in ds_)
                row[f"dense_{kernel}_peak_rss_mb"] = max(d["peak_rss_mb"] for d in ds_)
                row[f"dense_{kernel}_n_iters"] = ds_[0]["n_iters"]
        out.append(row)
    return out


def write_markdown(summary, setup, path):
    lines = [
        "# Sharded point-cloud Sinkhorn on Dask (bench/bench_dask_sharded.py)",
        "",
        f"LocalCluster: {setup['workers']} worker processes x {setup['threads_per_worker']} "
        f"thread on {setup['cores']} cores; {setup['blocks_per_cloud']} row blocks per cloud; "
        f"d = {setup['d']}, rtol = {setup['rtol']}, float64, points uniform in the unit "
        "square (costs in [0, 2]); checks every 2 iterations (every iteration for the sizes "
        "without a dense comparison). "
        "Seconds per iteration: min / median over the runs. RSS in MB (per worker: the "
        "largest of the two).",
        "",
        "| n = m | eps | runs | iterations | status | sharded s/it | sharded total s | "
        "final pass s | peak RSS per worker | over idle | dense C would be (MB) | "
        "ot.sinkhorn absorbed s/it | "
        "ot.sinkhorn lse s/it | ot.sinkhorn peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        missing = "does not fit" if r["n"] > setup.get("dense_max", 20000) else \
            "not run (3 n x n arrays)"
        dense = [f"{r[f'dense_{k}_s_per_iter_min']:.3g} / "
                 f"{r[f'dense_{k}_s_per_iter_median']:.3g}"
                 if f"dense_{k}_s_per_iter_min" in r else missing
                 for k in ("absorbed", "lse")]
        peaks = [f"{r[f'dense_{k}_peak_rss_mb']:.0f} ({k})" for k in ("absorbed", "lse")
                 if f"dense_{k}_peak_rss_mb" in r]
        peak = ", ".join(peaks) or "-"
        lines.append(
            f"| {r['n']} | {r['eps']} | {r['runs']} | {r['n_iters']} | {r['status']} | "
            f"{r['s_per_iter_min']:.3g} / {r['s_per_iter_median']:.3g} | "
            f"{r['total_s_min']:.3g} / {r['total_s_median']:.3g} | {r['final_pass_s']:.3g} | "
            f"{r['peak_rss_mb']:.0f} | "
            f"{r['peak_minus_idle_mb']:.0f} | {r['dense_cost_mb']:.0f} | {dense[0]} | "
            f"{dense[1]} | {peak} |")
    lines.append("")
    path.write_text("\n".join(lines))


def plot(summary, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the [bench] extra
        return
    ns = [r["n"] for r in summary]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].loglog(ns, [r["s_per_iter_min"] for r in summary], "o-", label="sharded (2 workers)")
    for k in ("absorbed", "lse"):
        pts = [(r["n"], r[f"dense_{k}_s_per_iter_min"]) for r in summary
               if f"dense_{k}_s_per_iter_min" in r]
        if pts:
            ax[0].loglog(*zip(*pts), "s--", label=f"ot.sinkhorn {k} (1 process)")
    ax[0].set_xlabel("n = m")
    ax[0].set_ylabel("seconds per iteration")
    ax[0].legend()
    ax[1].loglog(ns, [r["peak_rss_mb"] for r in summary], "o-", label="peak RSS per worker")
    ax[1].loglog(ns, [r["dense_cost_mb"] for r in summary], "k:", label="8 n m (dense C)")
    ax[1].set_xlabel("n = m")
    ax[1].set_ylabel("MB")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
