"""Does a multi-level direction network flatten DCDM's iteration count? (issue 16)

Run from the repository root (single-threaded BLAS, under the shared benchmark lock)::

    OPENBLAS_NUM_THREADS=1 flock /tmp/bench.lock python -m bench.bench_dcdm_multilevel
    python -m bench.bench_dcdm_multilevel --quick      # smoke test: 20 steps, 32², 64²

Models of :class:`~diffsolve.linear.ConvDirectionModel` are trained with the same budget
(same steps, batch, channels, blocks, learning-rate schedule, Lanczos data), on the CPU in
float32, on the plain 64² Poisson matrix of ``bench/train_dcdm_weights.py``
(:func:`~bench.train_dcdm_weights.train`, the script that trains the shipped weights), for
each training seed (``--train-seeds``, default 0 and 1) and architecture (``--levels``):

* ``levels=1``: the shipped architecture;
* ``levels="auto"``: pool until the coarsest side is at most 8 cells (3 levels at 64²), the
  comparison planned before any solve was run;
* ``levels=5``: pooled down to 2² at 64²; added after the first run, to see whether the
  growth of the count at 256² comes from the depth (the coarsest level of a 3-level model
  is 32² there). A diagnostic, not a selection: nothing is tuned on the problems below.

Then every model, bound to each grid, solves 2-D Poisson (Dirichlet walls) on 32², 64²,
128², 256² for Gaussian right-hand sides (seeds 0, 1, 2), and on 512² (``--big-sizes``)
for the first right-hand side with the first training seed's models, to ``rtol`` 1e-6,
next to unpreconditioned CG. Reported: DCDM iterations per model (median, min, max),
whether the CG fallback took over, CG iterations, and the wall time of a DCDM solve (a
shared 2-core machine, so times compare within a column only). Results:
``bench/results/dcdm_multilevel.json`` and ``.md`` (``--quick``: into ``--models``); the
trained models go to ``--models`` (default a temporary directory; they are not shipped).
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
from bench.train_dcdm_weights import poisson2d, train
from diffsolve.linear import ConvDirectionModel, DirectionFallbackWarning, load_direction_model

RESULTS = Path(__file__).resolve().parent / "results"
RTOL = 1e-6


def _solve(A, b, model, maxiter):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        res = ds.linear.solve(A, b, method="dcdm", model=model, rtol=RTOL, maxiter=maxiter)
        seconds = time.perf_counter() - t0
    fell = [str(w.message) for w in caught if issubclass(w.category, DirectionFallbackWarning)]
    rel = float(np.linalg.norm(b - A @ res.x) / np.linalg.norm(b))
    return {"n_iters": int(res.n_iters), "converged": bool(res.converged), "fallback": fell,
            "relative_residual": rel, "seconds": seconds}


def _summary(runs):
    its = [r["n_iters"] for r in runs]
    return {"median": statistics.median(its), "min": min(its), "max": max(its),
            "all_converged": all(r["converged"] for r in runs),
            "fallbacks": sum(bool(r["fallback"]) for r in runs),
            "seconds_median": statistics.median(r["seconds"] for r in runs)}


def _ints(text):
    return [int(v) for v in text.split(",") if v]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--n-blocks", type=int, default=2)
    ap.add_argument("--n-ritz", type=int, default=400)
    ap.add_argument("--levels", default="1,auto,5",
                    help="the architectures compared (comma-separated integers or 'auto')")
    ap.add_argument("--train-seeds", default="0,1", help="one model per seed and architecture")
    ap.add_argument("--sizes", default="32,64,128,256")
    ap.add_argument("--seeds", default="0,1,2", help="right-hand-side seeds")
    ap.add_argument("--big-sizes", default="512",
                    help="further grids, solved for the first right-hand side only, by the "
                         "models of the first training seed (slow on the CPU)")
    ap.add_argument("--maxiter", type=int, default=400)
    ap.add_argument("--models", default=None, help="directory for the trained models")
    ap.add_argument("--reuse", action="store_true",
                    help="load the models from --models instead of training them")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.sizes, args.seeds, args.n_ritz = 20, "32,64", "0", 50
    sizes, seeds, big = _ints(args.sizes), _ints(args.seeds), _ints(args.big_sizes)
    train_seeds = _ints(args.train_seeds)
    models_dir = Path(args.models or tempfile.mkdtemp(prefix="dcdm_multilevel_"))
    models_dir.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(),
            "env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS",
                                                    "NUMBA_NUM_THREADS")},
            "training": {"problem": "2-D Poisson 64^2 (bench/train_dcdm_weights.poisson2d)",
                         "steps": args.steps, "lr": args.lr, "lr_schedule":
                         "lr for 70 % of the steps, then lr/10", "batch": args.batch,
                         "channels": args.channels, "n_blocks": args.n_blocks,
                         "n_ritz": args.n_ritz, "seeds": train_seeds, "dtype": "float32",
                         "device": "cpu"},
            "rtol": RTOL, "maxiter": args.maxiter, "sizes": sizes, "rhs_seeds": seeds,
            "big_sizes": big, "quick": args.quick}
    variants = {f"levels={v}": (v if v == "auto" else int(v)) for v in args.levels.split(",")}
    models: dict[str, ConvDirectionModel] = {}
    info = {}
    for ts in train_seeds:
        for label, levels in variants.items():
            key = f"{label} seed {ts}"
            path = models_dir / f"dcdm_poisson2d_64_{label.replace('=', '')}_seed{ts}.npz"
            if args.reuse:
                model = load_direction_model(path)
                info[key] = dict(model.metadata)
            else:
                # minutes only bounds the run; the step count is the shared budget
                model, history, seconds, done = train(
                    "plain", args.steps, 600.0, False, ts, args.lr, args.batch,
                    args.channels, args.n_blocks, args.n_ritz, levels)
                tail = float(np.mean(history[-50:]))
                model.save(path, script="bench/bench_dcdm_multilevel.py", steps=done,
                           seconds=round(seconds, 1), final_loss_mean50=tail)
                info[key] = {"steps": done, "seconds": seconds, "final_loss_mean50": tail,
                             "loss_history": [float(v) for v in history]}
                print(f"{key}: {done} steps in {seconds:.0f} s, loss {tail:.4g}", flush=True)
            info[key].update({"levels": model.levels, "train_seed": ts,
                              "n_params": model.n_params, "file_bytes": path.stat().st_size,
                              "file": str(path)})
            models[key] = model
    rows = []
    for s in sizes + big:
        A = poisson2d(s)
        row: dict = {"grid": s, "n": s * s, "cg": [], "runs": {key: [] for key in models}}
        for seed in (seeds if s in sizes else seeds[:1]):
            b = np.random.default_rng(seed).standard_normal(s * s)
            cg = ds.linear.solve(A, b, method="cg", rtol=RTOL, maxiter=20 * s * s)
            row["cg"].append(int(cg.n_iters))
            for key, model in models.items():
                if s not in sizes and info[key]["train_seed"] != train_seeds[0]:
                    continue
                run = _solve(A, b, model.on_grid((s, s)), args.maxiter)
                row["runs"][key].append(run)
                print(f"{s}² rhs seed {seed} {key}: {run['n_iters']} it, "
                      f"{run['seconds']:.2f} s, fallback={bool(run['fallback'])}; "
                      f"CG {cg.n_iters}", flush=True)
        row["summary"] = {key: _summary(runs) for key, runs in row["runs"].items() if runs}
        row["summary"]["cg"] = {"median": statistics.median(row["cg"]),
                                "min": min(row["cg"]), "max": max(row["cg"])}
        rows.append(row)
    meta["loadavg_end"] = os.getloadavg()
    out = {"meta": meta, "models": info, "rows": rows}
    # a smoke test leaves the committed results alone
    where = models_dir if args.quick else RESULTS
    where.mkdir(exist_ok=True)
    with open(where / "dcdm_multilevel.json", "w") as f:
        json.dump(out, f, indent=1)
    with open(where / "dcdm_multilevel.md", "w") as f:
        f.write(markdown(out))
    print(markdown(out))


def _cell(summary, maxiter):
    med, lo, hi = summary["median"], summary["min"], summary["max"]
    text = f"{med:g} ({lo}–{hi})" if lo != hi else f"{med:g}"
    if not summary.get("all_converged", True):
        text += f", not all within {maxiter}"
    if summary.get("fallbacks"):
        text += f", CG fallback in {summary['fallbacks']}"
    return text


def markdown(out):
    meta, info = out["meta"], out["models"]
    keys = list(info)
    tr = meta["training"]
    lines = [f"DCDM iterations to rtol {meta['rtol']:g} on 2-D Poisson (Dirichlet walls), "
             f"Gaussian right-hand sides (seeds {meta['rhs_seeds']}; grids "
             f"{meta['big_sizes']}: the first only): median (min–max). Every model trained "
             f"on 64² with the same budget ({tr['steps']} Adam steps, batch {tr['batch']}, "
             f"{tr['channels']} channels, n_blocks {tr['n_blocks']}, {tr['n_ritz']} Ritz "
             "vectors, float32, CPU); 'seed' is the training seed. Wall times: a shared "
             "2-core machine, compare within a column only.",
             ""]
    grids = [f"{row['grid']}²" for row in out["rows"]]
    head = ["| | " + " | ".join(grids) + " |",
            "| --- | " + " | ".join("---" for _ in grids) + " |"]
    cg = " | ".join(_cell(row["summary"]["cg"], None) for row in out["rows"])
    lines += [*head, f"| CG | {cg} |"]
    for k in keys:
        lines.append(f"| DCDM {k} | " + " | ".join(
            _cell(row["summary"][k], meta["maxiter"]) if k in row["summary"] else "–"
            for row in out["rows"]) + " |")
    lines += ["", "Seconds per DCDM solve (median):", "", *head]
    for k in keys:
        lines.append(f"| DCDM {k} | " + " | ".join(
            f"{row['summary'][k]['seconds_median']:.2f}" if k in row["summary"] else "–"
            for row in out["rows"]) + " |")
    lines += ["", "| model | levels | parameters | file | training s | steps | "
              "final loss (mean of last 50 steps) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for k, v in info.items():
        lines.append(f"| {k} | {v['levels']} | {v['n_params']} | {v['file_bytes'] / 1e3:.0f} KB"
                     f" | {v.get('seconds', float('nan')):.0f} | {v.get('steps')} | "
                     f"{v.get('final_loss_mean50', float('nan')):.4g} |")
    lines += ["", f"Load average {meta['loadavg_start'][0]:.1f} at the start, "
              f"{meta['loadavg_end'][0]:.1f} at the end (2 cores); "
              f"OPENBLAS_NUM_THREADS={meta['env']['OPENBLAS_NUM_THREADS']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
