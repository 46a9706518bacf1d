"""One direction model for variable coefficients and wall types it was not trained on? (issue 16)

Run from the repository root (single-threaded BLAS, under the shared benchmark lock)::

    OPENBLAS_NUM_THREADS=1 flock /tmp/bench.lock python -m bench.bench_dcdm_coefficients
    python -m bench.bench_dcdm_coefficients --quick      # smoke test: a few steps, small grids

Two models of :class:`~diffsolve.linear.ConvDirectionModel` with the same architecture
(16 channels, ``n_blocks=2``, ``levels="auto"`` with shared levels, so the depth follows
the grid) and the same training budget (``--steps`` Adam steps of batch 16, lr 1e-3 then
1e-4, float32, CPU), trained on the same family of 2-D diffusion matrices
(:func:`~bench.train_dcdm_weights.diffusion_family`) on 32², 64² and 128² grids
(``--train-sizes``), visited in turn:
constant coefficient with Dirichlet walls, with Neumann walls (one to three walls), and
log-normal coefficient fields (:func:`~bench.train_dcdm_weights.lognormal_field`, σ = 0.5,
1.0, 1.5; correlation length 0.1 of the side), field seeds 0, 1, … They differ only in the
input:

* ``coefficient``: ``coefficient_channel=True``, the network sees the Jacobi-scaled
  residual and ``log diag(A)`` (centred);
* ``no coefficient``: the residual alone (the ablation).

The test problems are new fields (seeds from 1000) and grid sizes: log-normal σ = 1.5 on
32², 96², 192² (Dirichlet), constant coefficient with Neumann walls on three sides at 192²,
log-normal σ = 1.0 with Neumann left and top walls at 128², plain Poisson at 256². Each is
solved to ``rtol`` 1e-6 for Gaussian right-hand sides (two seeds up to 96², one above) by
both models, by unpreconditioned CG, IC(0)-PCG (``bench.bench_dcdm.ic0_preconditioner``)
and PyAMG smoothed-aggregation PCG (SciPy's ``cg``; set-up time apart). Reported: iterations,
whether DCDM's CG fallback took over, seconds per solve (a shared 2-core machine). Results:
``bench/results/dcdm_coefficients.json`` and ``.md`` (``--quick``: a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import diffsolve as ds
from bench.bench_dcdm import ic0_preconditioner, scipy_cg_counted
from bench.train_dcdm_weights import diffusion2d, diffusion_family, lognormal_field
from diffsolve.linear import DirectionFallbackWarning, train_direction_model

RESULTS = Path(__file__).resolve().parent / "results"
RTOL = 1e-6


def test_problems(quick):
    """``(name, s, A)`` of the held-out problems (fields and sizes not trained on)."""
    if quick:
        return [("log-normal σ=1.5, 24²", 24, diffusion2d(lognormal_field(24, 1.5, 1000))),
                ("Neumann on three walls, 40²", 40,
                 diffusion2d(np.ones((40, 40)), neumann=("top", "left", "right")))]
    return [
        ("log-normal σ=1.5, 32²", 32, diffusion2d(lognormal_field(32, 1.5, seed=1000))),
        ("log-normal σ=1.5, 96²", 96, diffusion2d(lognormal_field(96, 1.5, seed=1001))),
        ("log-normal σ=1.5, 192²", 192, diffusion2d(lognormal_field(192, 1.5, seed=1002))),
        ("Neumann on three walls, 192²", 192,
         diffusion2d(np.ones((192, 192)), neumann=("top", "left", "right"))),
        ("log-normal σ=1.0, Neumann left+top, 128²", 128,
         diffusion2d(lognormal_field(128, 1.0, seed=1003), neumann=("left", "top"))),
        ("Poisson, 256²", 256, diffusion2d(np.ones((256, 256)))),
    ]


def _dcdm(A, b, model, s, maxiter):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        res = ds.linear.solve(A, b, method="dcdm", model=model.on_grid((s, s)), rtol=RTOL,
                              maxiter=maxiter, smoother=None)  # the network alone
        seconds = time.perf_counter() - t0
    fell = [str(w.message) for w in caught if issubclass(w.category, DirectionFallbackWarning)]
    rel = float(np.linalg.norm(b - A @ res.x) / np.linalg.norm(b))
    return {"n_iters": int(res.n_iters), "converged": bool(res.converged),
            "fallback": bool(fell), "relative_residual": rel, "seconds": seconds}


def _scipy_cg(A, b, M, maxiter):
    _, iterations, seconds, converged, rel = scipy_cg_counted(A, b, RTOL, M, maxiter)
    return {"n_iters": iterations, "converged": converged, "relative_residual": rel,
            "seconds": seconds}


def _train(problems, coefficient, args, seed):
    t0 = time.perf_counter()
    steps = args.steps
    out = train_direction_model(
        [A for _, _, A in problems], [(s, s) for _, s, _ in problems], channels=args.channels,
        n_blocks=args.n_blocks, levels="auto", shared_levels=True,
        coefficient_channel=coefficient, n_steps=steps, batch_size=args.batch,
        n_ritz=args.n_ritz, seed=seed, progress=False,
        lr=lambda k: args.lr if k < 0.7 * steps else args.lr / 10,
        callback=lambda k, loss, m: k % 100 == 99 and print(
            f"coefficient={coefficient}: {k + 1} steps, loss {loss:.4g}, "
            f"{time.perf_counter() - t0:.0f} s", flush=True))
    return out, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--n-blocks", type=int, default=2)
    ap.add_argument("--n-ritz", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--train-sizes", default="32,64,128",
                    help="grid sides of the training family (7 problems each)")
    ap.add_argument("--maxiter", type=int, default=8000)
    ap.add_argument("--models", default=None, help="directory for the trained models")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    sizes = tuple(int(v) for v in args.train_sizes.split(","))
    if args.quick:
        args.steps, args.n_ritz, args.channels, sizes = 12, 40, 4, (16, 24)
    models_dir = Path(args.models or tempfile.mkdtemp(prefix="dcdm_coefficients_"))
    models_dir.mkdir(parents=True, exist_ok=True)
    family = diffusion_family(sizes)
    meta = {"python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(),
            "env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS",
                                                    "NUMBA_NUM_THREADS")},
            "training": {"family": [name for name, _, _ in family], "steps": args.steps,
                         "lr": args.lr, "lr_schedule": "lr for 70 % of the steps, then lr/10",
                         "batch": args.batch, "channels": args.channels,
                         "n_blocks": args.n_blocks, "n_ritz": args.n_ritz,
                         "levels": "auto, shared", "seed": args.seed, "dtype": "float32",
                         "sizes": list(sizes),
                         "device": "cpu"},
            "rtol": RTOL, "maxiter": args.maxiter, "quick": args.quick}
    models, info = {}, {}
    for label, coefficient in (("coefficient", True), ("no coefficient", False)):
        out, seconds = _train(family, coefficient, args, args.seed)
        path = models_dir / f"dcdm_diffusion2d_{label.replace(' ', '_')}.npz"
        tail = float(np.mean(out.loss_history[-50:]))
        out.model.save(path, script="bench/bench_dcdm_coefficients.py",
                       steps=len(out.loss_history), seconds=round(seconds, 1),
                       final_loss_mean50=tail)
        models[label] = out.model
        info[label] = {"coefficient_channel": coefficient, "seconds": seconds,
                       "steps": len(out.loss_history), "final_loss_mean50": tail,
                       "n_params": out.model.n_params, "file_bytes": path.stat().st_size,
                       "file": str(path),
                       "loss_history": [float(v) for v in out.loss_history]}
        print(f"{label}: {len(out.loss_history)} steps in {seconds:.0f} s, loss {tail:.4g}",
              flush=True)
    rows = []
    ic0_preconditioner(diffusion2d(np.ones((4, 4))))  # compile the IC(0) kernels first
    for name, s, A in test_problems(args.quick):
        row: dict = {"problem": name, "grid": s, "runs": {}, "setup_seconds": {}}
        t0 = time.perf_counter()
        ic0 = ic0_preconditioner(A)
        row["setup_seconds"]["ic0-pcg"] = time.perf_counter() - t0
        try:
            import pyamg

            t0 = time.perf_counter()
            amg = pyamg.smoothed_aggregation_solver(A).aspreconditioner(cycle="V")
            row["setup_seconds"]["amg-pcg"] = time.perf_counter() - t0
        except ImportError:  # the bench extra brings it; without it the column is empty
            amg = None
        for seed in ((0, 1) if s <= 96 else (0,)):
            b = np.random.default_rng(seed).standard_normal(s * s)
            runs = {"cg": _scipy_cg(A, b, None, args.maxiter),
                    "ic0-pcg": _scipy_cg(A, b, ic0, args.maxiter)}
            if amg is not None:
                runs["amg-pcg"] = _scipy_cg(A, b, amg, args.maxiter)
            for label, model in models.items():
                runs[f"dcdm {label}"] = _dcdm(A, b, model, s, args.maxiter)
            for key, run in runs.items():
                row["runs"].setdefault(key, []).append(run)
            print(f"{name} rhs {seed}: " + ", ".join(
                f"{k} {v['n_iters']}{' (fallback)' if v.get('fallback') else ''}"
                for k, v in runs.items()), flush=True)
        rows.append(row)
    meta["loadavg_end"] = os.getloadavg()
    out_json = {"meta": meta, "models": info, "rows": rows}
    where = models_dir if args.quick else RESULTS
    where.mkdir(exist_ok=True)
    with open(where / "dcdm_coefficients.json", "w") as f:
        json.dump(out_json, f, indent=1)
    with open(where / "dcdm_coefficients.md", "w") as f:
        f.write(markdown(out_json))
    print(markdown(out_json))


def markdown(out):
    meta, info, rows = out["meta"], out["models"], out["rows"]
    tr = meta["training"]
    keys = list(rows[0]["runs"])
    lines = [f"Iterations to rtol {meta['rtol']:g} (median over the right-hand sides; "
             "'fb': DCDM's CG fallback took over) on held-out 2-D diffusion problems. Both "
             f"DCDM models: {tr['channels']} channels, n_blocks {tr['n_blocks']}, levels "
             f"{tr['levels']}, trained {tr['steps']} Adam steps (batch {tr['batch']}, "
             f"{tr['n_ritz']} Ritz vectors, float32, CPU) on the same {len(tr['family'])} "
             f"problems ({', '.join(f'{s}²' for s in tr.get('sizes', []))}; constant, "
             "Neumann-walled and log-normal coefficients); only the coefficient input "
             "differs.", "",
             "| problem | " + " | ".join(keys) + " |",
             "| --- | " + " | ".join("---" for _ in keys) + " |"]
    for row in rows:
        cells = []
        for k in keys:
            runs = row["runs"][k]
            med = statistics.median(r["n_iters"] for r in runs)
            text = f"{med:g}"
            if not all(r["converged"] for r in runs):
                text += " (not converged)"
            if any(r.get("fallback") for r in runs):
                text += " fb"
            cells.append(text)
        lines.append(f"| {row['problem']} | " + " | ".join(cells) + " |")
    lines += ["", "Seconds per solve (median; set-up apart: IC(0) and AMG set-up below):", "",
              "| problem | " + " | ".join(keys) + " | IC(0) set-up | AMG set-up |",
              "| --- | " + " | ".join("---" for _ in keys) + " | --- | --- |"]
    for row in rows:
        cells = [f"{statistics.median(r['seconds'] for r in row['runs'][k]):.3f}"
                 for k in keys]
        setup = row["setup_seconds"]
        lines.append(f"| {row['problem']} | " + " | ".join(cells) +
                     f" | {setup.get('ic0-pcg', float('nan')):.3f} | "
                     f"{setup.get('amg-pcg', float('nan')):.3f} |")
    lines += ["", "| model | parameters | file | training s | steps | final loss |",
              "| --- | --- | --- | --- | --- | --- |"]
    for k, v in info.items():
        lines.append(f"| {k} | {v['n_params']} | {v['file_bytes'] / 1e3:.0f} KB | "
                     f"{v['seconds']:.0f} | {v['steps']} | {v['final_loss_mean50']:.4g} |")
    lines += ["", f"Load average {meta['loadavg_start'][0]:.1f} at the start, "
              f"{meta['loadavg_end'][0]:.1f} at the end (2 cores; another benchmark may "
              f"share them); OPENBLAS_NUM_THREADS={meta['env']['OPENBLAS_NUM_THREADS']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
