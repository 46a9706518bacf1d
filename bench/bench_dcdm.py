"""Benchmark ``solve(method="dcdm")`` against CG, Jacobi-PCG, IC(0)-PCG and PyAMG-PCG.

Run from the repository root::

    python -m bench.bench_dcdm            # full: 64², 128², 256², with/without obstacles
    python -m bench.bench_dcdm --quick    # 64² only, rtol 1e-4
    python -m bench.bench_dcdm --gpu      # DCDM and CG on CuPy (needs a CUDA device)

Problems: 2-D pressure-Poisson matrices from ``bench/train_dcdm_weights.py`` (5-point
Laplacian on the fluid cells, Dirichlet walls, Neumann faces at obstacles), a Gaussian
right-hand side (seeded). The shipped models were trained at 64² only; at 128² and 256² the
same weights are bound to the larger grid (generalisation). Peers, all through SciPy's
``cg`` so that only the preconditioner differs:

* CG (no preconditioner), Jacobi-PCG (``M = diag(A)⁻¹``);
* IC(0)-PCG: zero-fill incomplete Cholesky written here (Numba), the preconditioner of the
  paper's comparison;
* AMG-PCG: PyAMG smoothed aggregation, one V-cycle as preconditioner.

Iterations and wall time to ``rtol`` 1e-4 and 1e-6 (DCDM on the CPU: capped at 250
iterations, 120 at 256², because its network is slow there; see ``maxiter`` in the JSON);
setup (IC factorisation, AMG
hierarchy, loading/binding the model) apart from the solve; the first DCDM call (which loads
Numba/BLAS paths) apart. Also the CPU convolution choice: Numba direct kernel vs im2col+BLAS.
Results: ``bench/results/dcdm_cpu.json`` (``dcdm_gpu.json``), plots ``dcdm_residuals.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import scipy
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numba import njit

import diffsolve as ds
from bench.train_dcdm_weights import obstacle_mask, poisson2d
from diffsolve.linear import DirectionFallbackWarning, pretrained_direction_model

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------
# IC(0): incomplete Cholesky with the sparsity of tril(A) (Meijerink & van der Vorst 1977)
# ---------------------------------------------------------------------------------------
@njit(cache=True)
def _ic0(indptr, indices, data):  # pragma: no cover - compiled
    n = indptr.shape[0] - 1
    out = data.copy()
    diag_pos = np.empty(n, dtype=np.int64)
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            if j == i:
                diag_pos[i] = p
            if j > i:
                continue
            # L_ij = (A_ij - sum_{m<j} L_im L_jm) / L_jj  (merge of the sorted rows i and j)
            s = out[p]
            pi, pj = indptr[i], indptr[j]
            while pi < p and pj < indptr[j + 1] and indices[pj] < j:
                ci, cj = indices[pi], indices[pj]
                if ci == cj:
                    s -= out[pi] * out[pj]
                    pi += 1
                    pj += 1
                elif ci < cj:
                    pi += 1
                else:
                    pj += 1
            if j == i:
                out[p] = np.sqrt(s) if s > 0 else 1.0
            else:
                out[p] = s / out[diag_pos[j]]
    return out, diag_pos


@njit(cache=True)
def _ic0_apply(indptr, indices, L, diag_pos, r):  # pragma: no cover - compiled
    n = r.shape[0]
    y = r.copy()
    for i in range(n):  # L y = r
        s = y[i]
        for p in range(indptr[i], diag_pos[i]):
            s -= L[p] * y[indices[p]]
        y[i] = s / L[diag_pos[i]]
    for i in range(n - 1, -1, -1):  # Lᵀ x = y (column sweep)
        y[i] /= L[diag_pos[i]]
        for p in range(indptr[i], diag_pos[i]):
            y[indices[p]] -= L[p] * y[i]
    return y


def ic0_preconditioner(A):
    low = sp.tril(A).tocsr()
    low.sort_indices()
    L, diag_pos = _ic0(low.indptr, low.indices, low.data)
    n = A.shape[0]
    return spla.LinearOperator((n, n), matvec=lambda r: _ic0_apply(
        low.indptr, low.indices, L, diag_pos, np.ascontiguousarray(r, dtype=np.float64)))


def scipy_cg_counted(A, b, rtol, M, maxiter):
    """SciPy's ``cg`` to ``rtol`` (atol 0), counting iterations:
    ``(x, iterations, seconds, converged, relative residual)``."""
    count = [0]

    def cb(_x):
        count[0] += 1

    t0 = time.perf_counter()
    x, info = spla.cg(A, b, rtol=rtol, atol=0.0, maxiter=maxiter, M=M, callback=cb)
    seconds = time.perf_counter() - t0
    return x, count[0], seconds, info == 0, float(np.linalg.norm(b - A @ x)
                                                  / np.linalg.norm(b))


# ---------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------
def _setup(method, A, mask, s):
    """The preconditioner / model for ``method`` (timed by the caller)."""
    if method == "cg":
        return None
    if method == "jacobi-pcg":
        inv = 1.0 / A.diagonal()
        return spla.LinearOperator(A.shape, matvec=lambda r: inv * r)
    if method == "ic0-pcg":
        return ic0_preconditioner(A)
    if method == "amg-pcg":
        import pyamg

        return pyamg.smoothed_aggregation_solver(A).aspreconditioner(cycle="V")
    if method == "dcdm":
        name = "poisson2d-64-obstacles" if mask is not None else "poisson2d-64"
        return pretrained_direction_model(name).on_grid((s, s), mask)
    raise ValueError(method)


def _solve(method, A, b, rtol, prep, history=False, maxiter=5000):
    """``(x, iterations, residual history or None, fell_back)``."""
    hist = [] if history else None
    bn = np.linalg.norm(b)
    if method == "dcdm":
        cb = (lambda state: hist.append(np.linalg.norm(b - A @ state.x) / bn)) if history \
            else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DirectionFallbackWarning)
            res = ds.linear.solve(A, b, method="dcdm", model=prep, rtol=rtol, maxiter=maxiter,
                                  callback=cb, smoother=None)  # the network alone
        fell = any(issubclass(w.category, DirectionFallbackWarning) for w in caught)
        return res.x, int(res.n_iters), hist, fell
    count = [0]

    def cb(x):
        count[0] += 1
        if history:
            hist.append(np.linalg.norm(b - A @ x) / bn)

    x, _info = spla.cg(A, b, rtol=rtol, atol=0.0, maxiter=maxiter, M=prep, callback=cb)
    return x, count[0], hist, False


METHODS = ["dcdm", "cg", "jacobi-pcg", "ic0-pcg", "amg-pcg"]


def _dcdm_traced(A, b, rtols, model, maxiter):
    """One DCDM run to the smallest rtol, timestamping every iterate: the iterates do not
    depend on the tolerance, so iterations and time to each larger rtol are read off the
    same run (the callback's residual norm is one sparse product per iteration, negligible
    next to the network)."""
    bn = np.linalg.norm(b)
    stamps, hist = [], []
    t0 = time.perf_counter()

    def cb(state):
        hist.append(float(np.linalg.norm(b - A @ state.x) / bn))
        stamps.append(time.perf_counter() - t0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = ds.linear.solve(A, b, method="dcdm", model=model, rtol=min(rtols),
                              maxiter=maxiter, callback=cb, smoother=None)  # the network alone
    fell = [str(w.message) for w in caught if issubclass(w.category, DirectionFallbackWarning)]
    at = int(re.search(r"iteration (\d+)", fell[0]).group(1)) if fell else None
    out = {}
    for rtol in rtols:
        k = next((i for i, h in enumerate(hist) if h <= rtol), None)
        out[f"{rtol:g}"] = {"iterations": (k + 1) if k is not None else len(hist),
                            "solve_s": stamps[k] if k is not None else stamps[-1],
                            "rel_residual": hist[k] if k is not None else hist[-1],
                            "converged": k is not None,
                            # the CG fallback counts for this tolerance only if it came first
                            "fallback": at is not None and (k is None or at <= k + 1),
                            "fallback_iteration": at,
                            "fallback_message": fell[0] if fell else None,
                            "maxiter": maxiter, "history": hist[:(k + 1) if k is not None
                                                                   else len(hist)]}
    return out, res


def run_problem(s, obstacles, rtols, repeats, seed=0, dcdm_maxiter=250):
    mask = obstacle_mask(s, seed=seed) if obstacles else None
    A = poisson2d(s, mask)
    b = np.random.default_rng(seed).standard_normal(A.shape[0])
    out = {"grid": s, "obstacles": obstacles, "n": A.shape[0], "methods": {}}
    for method in METHODS:
        t0 = time.perf_counter()
        prep = _setup(method, A, mask, s)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        _solve(method, A, b, 1e-1 if method == "dcdm" else 1e-2, prep)  # first call
        first = time.perf_counter() - t0
        entry = {"setup_s": setup, "first_call_s": first}
        if method == "dcdm":
            runs = [_dcdm_traced(A, b, rtols, prep, dcdm_maxiter)[0] for _ in range(repeats)]
            for rtol in rtols:
                key = f"{rtol:g}"
                entry[key] = runs[0][key]
                entry[key]["solve_s"] = statistics.median(r[key]["solve_s"] for r in runs)
                entry[key]["repeats"] = repeats
        else:
            for rtol in rtols:
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    x, iters, _, _ = _solve(method, A, b, rtol, prep)
                    times.append(time.perf_counter() - t0)
                rel = float(np.linalg.norm(b - A @ x) / np.linalg.norm(b))
                _, _, hist, _ = _solve(method, A, b, rtol, prep, history=True)
                entry[f"{rtol:g}"] = {"iterations": iters, "solve_s": statistics.median(times),
                                      "rel_residual": rel, "converged": rel <= rtol * 1.0001,
                                      "repeats": repeats, "history": hist}
        out["methods"][method] = entry
        print(f"{s}² {'obst' if obstacles else 'plain'} {method:10s} setup {setup:.3f}s  " +
              "  ".join(f"rtol {r:g}: {entry[f'{r:g}']['iterations']} it "
                        f"{entry[f'{r:g}']['solve_s']:.3f}s" for r in rtols), flush=True)
    return out


def conv_choice(repeats=5):
    """Numba direct convolution vs im2col + BLAS on the CPU, for the model's layers."""
    import array_api_compat.numpy as xp

    from diffsolve.kernels.cpu import conv as cpu_conv
    from diffsolve.linear import ConvDirectionModel
    from diffsolve.linear._direction_model import _conv_im2col

    rng = np.random.default_rng(0)
    res = {}
    for s, nb in ((64, 1), (64, 10), (256, 1)):
        x = rng.standard_normal((nb, 16, 1, s, s)).astype(np.float32)
        w = rng.standard_normal((16, 16, 1, 3, 3)).astype(np.float32)
        bias = np.zeros(16, np.float32)
        out = np.empty_like(x)
        cpu_conv.conv_same(x, w, bias, out)  # compile
        tk, ti = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            cpu_conv.conv_same(x, w, bias, out)
            tk.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _conv_im2col(xp, x, w, bias)
            ti.append(time.perf_counter() - t0)
        model = ConvDirectionModel(2, 16, 1, grid_shape=(s, s))
        r = rng.standard_normal((s * s, nb)).astype(np.float32)
        fk, fi = [], []
        for _ in range(max(2, repeats // 2)):
            t0 = time.perf_counter()
            model.forward(r, conv="kernel")
            fk.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            model.forward(r, conv="im2col")
            fi.append(time.perf_counter() - t0)
        key = f"{s}x{s}_batch{nb}"
        res[key] = {"conv16_numba_s": statistics.median(tk),
                    "conv16_im2col_s": statistics.median(ti),
                    "model_forward_numba_s": statistics.median(fk),
                    "model_forward_im2col_s": statistics.median(fi)}
        print("conv", key, {k: f"{v * 1e3:.2f} ms" for k, v in res[key].items()}, flush=True)
    return res


def targets(problems):
    """The issue's targets, evaluated on the measured iteration counts (an unconverged run
    counts as a miss, its iterations as a lower bound)."""
    def it(s, obst, method, rtol):
        for p in problems:
            if p["grid"] == s and p["obstacles"] == obst and f"{rtol:g}" in p["methods"][method]:
                e = p["methods"][method][f"{rtol:g}"]
                return e["iterations"], e["converged"]
        return None, None

    out = {}
    for obst in (False, True):
        for rtol in (1e-4, 1e-6):
            tag = f"{'obstacles' if obst else 'plain'}_rtol{rtol:g}"
            (d128, ok128), (c128, _), (i128, _) = (it(128, obst, m, rtol)
                                                   for m in ("dcdm", "cg", "ic0-pcg"))
            (d64, ok64), (d256, ok256) = it(64, obst, "dcdm", rtol), it(256, obst, "dcdm", rtol)
            if d128 is not None:
                out[tag + "_128_dcdm_lt_cg_over_3"] = {"dcdm": d128, "cg/3": c128 / 3,
                                                       "dcdm_converged": ok128,
                                                       "met": ok128 and d128 < c128 / 3}
                out[tag + "_128_dcdm_lt_ic0"] = {"dcdm": d128, "ic0": i128,
                                                 "dcdm_converged": ok128,
                                                 "met": ok128 and d128 < i128}
            if d256 is not None and d64 is not None:
                out[tag + "_256_le_1.5x_64"] = {"dcdm_256": d256, "dcdm_64": d64,
                                                "ratio": d256 / d64,
                                                "dcdm_256_converged": ok256,
                                                "met": ok256 and ok64 and d256 <= 1.5 * d64}
    return out


def plot(problems, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({p["grid"] for p in problems})
    fig, axes = plt.subplots(2, len(sizes), figsize=(4.2 * len(sizes), 7), squeeze=False)
    for p in problems:
        ax = axes[int(p["obstacles"]), sizes.index(p["grid"])]
        rtol = min(float(k) for k in p["methods"]["cg"] if k[0].isdigit())
        for m in METHODS:
            h = p["methods"][m][f"{rtol:g}"]["history"]
            ax.semilogy(np.arange(1, len(h) + 1), h, label=m, lw=1.5 if m == "dcdm" else 1)
        ax.set_title(f"{p['grid']}² {'with obstacles' if p['obstacles'] else 'no obstacles'}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("||b - Ax|| / ||b||")
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle("DCDM (shipped 64² weights) vs CG-family on 2-D pressure Poisson")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def gpu_run(sizes, rtols, repeats):
    import cupy
    import cupyx.scipy.sparse as csp

    out = []
    for s in sizes:
        for obstacles in (False, True):
            mask = obstacle_mask(s) if obstacles else None
            A = poisson2d(s, mask)
            b = np.random.default_rng(0).standard_normal(A.shape[0])
            Ag, bg = csp.csr_matrix(A), cupy.asarray(b)
            name = "poisson2d-64-obstacles" if obstacles else "poisson2d-64"
            t0 = time.perf_counter()
            model = pretrained_direction_model(name, like=bg).on_grid(
                (s, s), None if mask is None else cupy.asarray(mask))
            setup = time.perf_counter() - t0
            entry = {"grid": s, "obstacles": obstacles, "setup_s": setup}
            for method in ("dcdm", "cg"):
                kw = {"model": model} if method == "dcdm" else {}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DirectionFallbackWarning)
                    ds.linear.solve(Ag, bg, method=method, rtol=1e-2, **kw)  # warm-up
                    for rtol in rtols:
                        times = []
                        for _ in range(repeats):
                            cupy.cuda.Device().synchronize()
                            t0 = time.perf_counter()
                            res = ds.linear.solve(Ag, bg, method=method, rtol=rtol,
                                                  maxiter=20000, **kw)
                            cupy.cuda.Device().synchronize()
                            times.append(time.perf_counter() - t0)
                        entry[f"{method}_{rtol:g}"] = {"iterations": int(res.n_iters),
                                                       "solve_s": statistics.median(times),
                                                       "converged": bool(res.converged)}
            print("gpu", entry, flush=True)
            out.append(entry)
    return out


def retarget(path):
    """Recompute the targets of a results file (after a change to :func:`targets`)."""
    with open(path) as f:
        result = json.load(f)
    result["targets"] = targets(result["problems"])
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return result["targets"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="GPU timings only (CuPy)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    sizes = args.sizes or ([64] if args.quick else [64, 128, 256])
    rtols = [1e-4] if args.quick else [1e-4, 1e-6]
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "scipy": scipy.__version__,
            "loadavg_start": os.getloadavg(), "repeats": args.repeats,
            "rhs": "Gaussian, seed 0", "ic": "IC(0), zero fill, written in this script",
            "amg": "pyamg smoothed_aggregation_solver, V-cycle preconditioner",
            "env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                                                   "OMP_NUM_THREADS")}}
    if args.gpu:
        gpu = gpu_run(sizes, rtols, args.repeats)
        meta["loadavg_end"] = os.getloadavg()
        with open(args.out_dir / "dcdm_gpu.json", "w") as f:
            json.dump({"meta": meta, "problems": gpu}, f, indent=1)
        return
    # compile the IC(0) kernels first, so that the IC setup below is the factorisation only
    t0 = time.perf_counter()
    ic0_preconditioner(poisson2d(4)).matvec(np.ones(16))
    meta["ic0_jit_compile_or_cache_load_s"] = time.perf_counter() - t0
    problems = []
    for s in sizes:
        for obstacles in (False, True):
            # DCDM's network costs ~0.1-2 s per iteration on the shared 2-core CPU: one run
            # beyond 64², and an iteration cap at 256² (the GPU run has the full counts)
            problems.append(run_problem(
                s, obstacles, rtols, 1 if (s >= 256 or args.quick) else args.repeats,
                dcdm_maxiter=250 if s <= 128 else 120))
            with open(args.out_dir / "dcdm_cpu_partial.json", "w") as f:
                json.dump({"meta": meta, "problems": problems}, f)
    conv = conv_choice(3 if args.quick else 5)
    meta["loadavg_end"] = os.getloadavg()
    result = {"meta": meta, "conv_cpu": conv, "problems": problems,
              "targets": targets(problems)}
    name = "dcdm_cpu_quick" if args.quick else "dcdm_cpu"
    with open(args.out_dir / f"{name}.json", "w") as f:
        json.dump(result, f, indent=1)
    plot(problems, args.out_dir / f"{name.replace('cpu', 'residuals')}.png")
    (args.out_dir / "dcdm_cpu_partial.json").unlink(missing_ok=True)  # the run completed
    for k, v in result["targets"].items():
        print(k, v)


if __name__ == "__main__":
    main()
