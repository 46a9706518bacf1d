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
  (Its figures are in the commit that added it; the default run leaves it out.)
* ``shared``: ``levels="auto"`` with ``shared_levels=True``, so the depth follows the grid
  (3 at 64², 6 at 512²) with one set of weights for the levels in between;
* ``family``: the same architecture trained on 32², 64², 128² in turn (depths 2, 3, 4),
  the same number of steps.

Then every model, bound to each grid, solves 2-D Poisson (Dirichlet walls) on 32², 64²,
128², 256² for Gaussian right-hand sides (seeds 0, 1, 2), and on 512² (``--big-sizes``)
for the first right-hand side with the first training seed's models, to ``rtol`` 1e-6,
next to unpreconditioned CG and the shipped one-level model (``--no-shipped`` leaves it
out; it was trained longer, on a GPU, so it is a reference, not part of the comparison).
``--reuse`` solves again with the models saved in ``--models``. Reported: DCDM iterations
per model (median, min, max), whether the CG fallback took over, CG iterations, and the wall
time of a DCDM solve (a shared 2-core machine, so times compare within a column only).
Results:
``bench/results/dcdm_multilevel.json`` and ``.md`` (``--quick``: into ``--models``); the
trained models go to ``--models`` (default a temporary directory; they are not shipped).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import diffsolve as ds
from bench.train_dcdm_weights import poisson2d, train
from diffsolve.linear import (
    ConvDirectionModel,
    DirectionFallbackWarning,
    load_direction_model,
    pretrained_direction_model,
)
from diffsolve.linear._direction_model import _WEIGHTS_DIR, PRETRAINED

RESULTS = Path(__file__).resolve().parent / "results"
RTOL = 1e-6
FAMILY = (32, 64, 128)


def _solve(A, b, model, maxiter):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        res = ds.linear.solve(A, b, method="dcdm", model=model, rtol=RTOL, maxiter=maxiter,
                              smoother=None)  # the network alone
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
    ap.add_argument("--levels", default="1,auto,shared,family",
                    help="the architectures compared (comma-separated integers, 'auto', "
                         "'shared', 'family')")
    ap.add_argument("--train-seeds", default="0,1", help="one model per seed and architecture")
    ap.add_argument("--sizes", default="32,64,128,256")
    ap.add_argument("--seeds", default="0,1,2", help="right-hand-side seeds")
    ap.add_argument("--big-sizes", default="512",
                    help="further grids, solved for the first right-hand side only, by the "
                         "models of the first training seed (slow on the CPU)")
    ap.add_argument("--huge-sizes", default="1024",
                    help="further grids, for the first right-hand side, solved only by the "
                         "first training seed's shared-level models (the others stall at 512²)")
    ap.add_argument("--maxiter", type=int, default=400)
    ap.add_argument("--models", default=None, help="directory for the trained models")
    ap.add_argument("--reuse", action="store_true",
                    help="load the models from --models instead of training them")
    ap.add_argument("--shipped", action=argparse.BooleanOptionalAction, default=True,
                    help="also solve with the shipped one-level model (trained longer, on a "
                         "GPU), for reference")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.sizes, args.seeds, args.n_ritz = 20, "32,64", "0", 50
    sizes, seeds, big = _ints(args.sizes), _ints(args.seeds), _ints(args.big_sizes)
    huge = _ints(args.huge_sizes)
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
            "big_sizes": big, "huge_sizes": huge, "quick": args.quick}
    # label -> (levels, shared_levels, training grid sides)
    named = {"shared": ("levels=auto shared", ("auto", True, (64,))),
             "family": ("levels=auto shared, 32²+64²+128²", ("auto", True, FAMILY))}
    variants = dict(named[v] if v in named else
                    (f"levels={v}", (v if v == "auto" else int(v), False, (64,)))
                    for v in args.levels.split(","))
    models: dict[str, ConvDirectionModel] = {}
    info = {}
    previous = {}
    if args.reuse and (RESULTS / "dcdm_multilevel.json").exists():
        # the training records (loss histories) of the reused models, from the run that
        # trained them
        with open(RESULTS / "dcdm_multilevel.json") as f:
            previous = json.load(f)["models"]
    for ts in train_seeds:
        for label, (levels, shared, train_sizes) in variants.items():
            key = f"{label} seed {ts}"
            stem = re.sub(r"[^A-Za-z0-9]+", "_", label)
            path = models_dir / f"dcdm_poisson2d_64_{stem}_seed{ts}.npz"
            if args.reuse:
                model = load_direction_model(path)
                old = previous.get(key, {})
                info[key] = old if old.get("file") == str(path) else dict(model.metadata)
            else:
                # minutes only bounds the run; the step count is the shared budget
                model, history, seconds, done = train(
                    "plain", args.steps, 600.0, False, ts, args.lr, args.batch,
                    args.channels, args.n_blocks, args.n_ritz, levels, shared, train_sizes)
                tail = float(np.mean(history[-50:]))
                model.save(path, script="bench/bench_dcdm_multilevel.py", steps=done,
                           seconds=round(seconds, 1), final_loss_mean50=tail)
                info[key] = {"steps": done, "seconds": seconds, "final_loss_mean50": tail,
                             "loss_history": [float(v) for v in history]}
                print(f"{key}: {done} steps in {seconds:.0f} s, loss {tail:.4g}", flush=True)
            info[key].update({"levels": model.levels, "shared_levels": model.shared_levels,
                              "train_sizes": list(train_sizes), "train_seed": ts,
                              "n_params": model.n_params, "file_bytes": path.stat().st_size,
                              "file": str(path)})
            models[key] = model
    if args.shipped:
        key = "shipped poisson2d-64"
        model = pretrained_direction_model("poisson2d-64")
        path = Path(_WEIGHTS_DIR) / PRETRAINED["poisson2d-64"]
        info[key] = {"levels": model.levels, "train_seed": None, "n_params": model.n_params,
                     "file_bytes": path.stat().st_size, "file": str(path),
                     "steps": model.metadata.get("steps"),
                     "seconds": model.metadata.get("seconds"),
                     "device": model.metadata.get("device"),
                     "final_loss_last_step": model.metadata.get("final_loss")}
        models[key] = model
    rows = []
    for s in sizes + big + huge:
        A = poisson2d(s)
        row: dict = {"grid": s, "n": s * s, "cg": [], "runs": {key: [] for key in models}}
        for seed in (seeds if s in sizes else seeds[:1]):
            b = np.random.default_rng(seed).standard_normal(s * s)
            cg = ds.linear.solve(A, b, method="cg", rtol=RTOL, maxiter=20 * s * s)
            row["cg"].append(int(cg.n_iters))
            for key, model in models.items():
                if s not in sizes and info[key]["train_seed"] not in (None, train_seeds[0]):
                    continue
                if s in huge and not info[key].get("shared_levels"):
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
             f"{meta['big_sizes'] + meta.get('huge_sizes', [])}: the first only; "
             f"{meta.get('huge_sizes', [])}: shared-level models only): median (min–max). "
             "Every model but the shipped one (a reference: trained longer, on a GPU) trained "
             "on 64² (the family model on 32², 64², 128² in turn) with the same step "
             f"budget ({tr['steps']} Adam steps, batch {tr['batch']}, "
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
    lines += ["", "| model | levels | training grids | parameters | file | training s | steps "
              "| final loss (mean of last 50 steps) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, v in info.items():
        loss = v.get("final_loss_mean50")
        levels = (f"{v['levels']}, shared (depth {ConvDirectionModel.auto_levels((64, 64))} "
                  f"at 64², {ConvDirectionModel.auto_levels((1024, 1024))} at 1024²)"
                  if v.get("shared_levels") else v["levels"])
        grids = "+".join(f"{g}²" for g in v.get("train_sizes", [64]))
        lines.append(f"| {k} | {levels} | {grids} | {v['n_params']} | "
                     f"{v['file_bytes'] / 1e3:.0f} KB"
                     f" | {v.get('seconds', float('nan')):.0f} ({v.get('device', 'cpu')}) | "
                     f"{v.get('steps')} | {'–' if loss is None else f'{loss:.4g}'} |")
    lines += ["", f"Load average {meta['loadavg_start'][0]:.1f} at the start, "
              f"{meta['loadavg_end'][0]:.1f} at the end (2 cores); "
              f"OPENBLAS_NUM_THREADS={meta['env']['OPENBLAS_NUM_THREADS']}."
              + (f" {meta['note']}" if meta.get("note") else ""), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
