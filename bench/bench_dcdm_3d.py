"""DCDM on 3-D Poisson: iterations and time against CG, IC(0)-PCG and PyAMG SA-PCG (issue 16).

Run from the repository root (single-threaded BLAS, under the shared benchmark lock)::

    OPENBLAS_NUM_THREADS=1 flock /tmp/bench.lock python -m bench.bench_dcdm_3d
    python -m bench.bench_dcdm_3d --quick       # smoke test: 20 training steps, 12³, 16³

A multi-level :class:`~diffsolve.linear.ConvDirectionModel` (``levels="auto"``,
``shared_levels=True``: the depth follows each grid with one set of weights for the levels
in between) is trained on the 7-point Poisson matrices of ``--train-sizes`` (default 16³;
several sides are visited in turn) by the recipe ``poisson3d`` of
``bench/train_dcdm_weights.py`` (float32, CPU, ``--steps`` Adam steps), then bound to
each grid of ``--sizes`` and run on Gaussian right-hand sides (``--seeds``) to the
smallest of ``--rtols``; iterations and time to each tolerance are read off that one run
(the iterates do not depend on the tolerance). Beside it, SciPy's ``cg`` unpreconditioned,
with IC(0) (the compiled factorisation of ``bench/bench_dcdm.py``) and with PyAMG's smoothed
aggregation V-cycle, each to every tolerance; set-up times apart. ``--models`` keeps the
trained model (default a temporary directory); the run with ``--train-sizes 16,32 --steps
300 --minutes 40`` wrote the shipped ``pretrained_direction_model("poisson3d-multilevel")``.

Results: ``bench/results/dcdm_3d[_<tag>].json`` and ``.md`` (``--quick``: into
``--models``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_dcdm import _dcdm_traced, _setup, _solve
from bench.train_dcdm_weights import poisson3d, train
from diffsolve.linear import load_direction_model

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = ("cg", "ic0-pcg", "amg-pcg")


def _ints(text):
    return [int(v) for v in text.split(",") if v]


def run(args, model):
    rtols = sorted((float(v) for v in args.rtols.split(",")), reverse=True)
    rows = []
    for s in _ints(args.sizes):
        A = poisson3d(s)
        row: dict = {"side": s, "n": int(A.shape[0]), "dcdm": [], "setup_s": {}}
        t0 = time.perf_counter()
        bound = model.on_grid((s, s, s))
        row["setup_s"]["dcdm"] = time.perf_counter() - t0
        preps = {}
        for m in PEERS:
            t0 = time.perf_counter()
            preps[m] = _setup(m, A, None, s)
            row["setup_s"][m] = time.perf_counter() - t0
        row.update({m: [] for m in PEERS})
        for seed in _ints(args.seeds):
            b = np.random.default_rng(seed).standard_normal(A.shape[0])
            traced, _ = _dcdm_traced(A, b, rtols, bound, args.maxiter)
            for v in traced.values():
                v.pop("history")
            row["dcdm"].append(traced)
            for m in PEERS:
                per = {}
                for rtol in rtols:
                    t0 = time.perf_counter()
                    x, its, _, _ = _solve(m, A, b, rtol, preps[m], maxiter=20 * A.shape[0])
                    seconds = time.perf_counter() - t0
                    rel = float(np.linalg.norm(b - A @ x) / np.linalg.norm(b))
                    per[f"{rtol:g}"] = {"iterations": its, "solve_s": seconds,
                                        "rel_residual": rel, "converged": rel <= rtol}
                row[m].append(per)
            d = traced[f"{rtols[-1]:g}"]
            print(f"{s}³ seed {seed}: dcdm {d['iterations']} it "
                  f"({'converged' if d['converged'] else 'NOT converged'}"
                  f"{', CG fallback' if d['fallback'] else ''}, {d['solve_s']:.2f} s); "
                  + ", ".join(f"{m} {row[m][-1][f'{rtols[-1]:g}']['iterations']}"
                              for m in PEERS), flush=True)
        rows.append(row)
    return rtols, rows


def _med(runs, rtol, key):
    return statistics.median(r[f"{rtol:g}"][key] for r in runs)


def markdown(out):
    rtols, rows = out["rtols"], out["rows"]
    t = out["training"]
    lines = ["# DCDM on 3-D Poisson (7-point, Dirichlet walls)", "",
             f"Model: `levels=\"auto\"`, `shared_levels=True`, {t['channels']} channels, "
             f"n_blocks {t['n_blocks']}, {t['parameters']} parameters, trained "
             f"{t['steps']} Adam steps (batch {t['batch']}, {t['n_ritz']} Ritz vectors, "
             f"float32, CPU, {t['seconds']:.0f} s) on cube sides "
             f"{t.get('train_sizes', [16])} in turn (`bench.train_dcdm_weights.train`, "
             "recipe `poisson3d`; kept in `--models`). "
             f"Right-hand sides: Gaussian, seeds {out['seeds']}; medians. DCDM maxiter "
             f"{out['maxiter']}, CG fallback as shipped. Machine: {out['machine']}, "
             "OPENBLAS_NUM_THREADS=1; a shared 2-core machine, so seconds compare within a "
             "row only.", ""]
    for rtol in rtols:
        lines += [f"## rtol {rtol:g}", "",
                  "| grid | n | DCDM iterations | CG | IC(0)-PCG | SA-AMG-PCG | "
                  "DCDM s | CG s | IC(0)-PCG s | AMG-PCG s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            d = r["dcdm"]
            conv = all(x[f"{rtol:g}"]["converged"] for x in d)
            fb = sum(x[f"{rtol:g}"]["fallback"] for x in d)
            note = ("" if conv else ", not all converged") + (f", fallback in {fb}" if fb
                                                               else "")
            lines.append(
                f"| {r['side']}³ | {r['n']} | {_med(d, rtol, 'iterations'):g}{note} | "
                + " | ".join(f"{_med(r[m], rtol, 'iterations'):g}" for m in PEERS) + " | "
                + f"{_med(d, rtol, 'solve_s'):.3g} | "
                + " | ".join(f"{_med(r[m], rtol, 'solve_s'):.3g}" for m in PEERS) + " |")
        lines.append("")
    lines += ["Set-up seconds (binding the model to the grid; IC(0) factorisation; AMG "
              "hierarchy):", "", "| grid | DCDM | IC(0) | AMG |", "|---|---|---|---|"]
    for r in rows:
        st = r["setup_s"]
        lines.append(f"| {r['side']}³ | {st['dcdm']:.3g} | {st['ic0-pcg']:.3g} | "
                     f"{st['amg-pcg']:.3g} |")
    first, last = rows[0], rows[-1]
    small = _med(first["dcdm"], rtols[-1], "iterations")
    large = _med(last["dcdm"], rtols[-1], "iterations")
    lines += ["", f"Iterations at {last['side']}³ ÷ at {first['side']}³ (rtol {rtols[-1]:g}): "
              f"{large / small:.2f} (target ≤ 1.5)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--n-blocks", type=int, default=2)
    ap.add_argument("--n-ritz", type=int, default=400)
    ap.add_argument("--sizes", default="16,32,48,64")
    ap.add_argument("--train-sizes", default="16",
                    help="cube sides of the training family, visited in turn")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--rtols", default="1e-4,1e-6")
    ap.add_argument("--maxiter", type=int, default=400)
    ap.add_argument("--models", default=None, help="where the trained model is kept")
    ap.add_argument("--reuse", action="store_true", help="load the model from --models")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.minutes, args.sizes, args.seeds = 20, 1.0, "12,16", "0"
    models = Path(args.models or tempfile.mkdtemp(prefix="dcdm3d-"))
    models.mkdir(parents=True, exist_ok=True)
    path = models / "dcdm_poisson3d_bench.npz"
    if args.reuse:
        model = load_direction_model(path)
        training = json.loads((models / "training.json").read_text())
    else:
        model, history, seconds, done = train(
            "poisson3d", args.steps, args.minutes, False, 0, args.lr, args.batch,
            args.channels, args.n_blocks, args.n_ritz, "auto", True,
            tuple(_ints(args.train_sizes)), False)
        model.save(path, problem=f"3-D Poisson {args.train_sizes} (cube sides)",
                   script="bench/bench_dcdm_3d.py", steps=done, device="cpu")
        training = {"steps": done, "seconds": seconds, "batch": args.batch,
                    "train_sizes": _ints(args.train_sizes),
                    "channels": args.channels, "n_blocks": args.n_blocks,
                    "n_ritz": args.n_ritz, "loss_history": history,
                    "parameters": int(model.n_params),
                    "file_bytes": os.path.getsize(path)}
        (models / "training.json").write_text(json.dumps(training))
    print(f"model: {training['steps']} steps, {training['seconds']:.0f} s, "
          f"{training['parameters']} parameters", flush=True)
    rtols, rows = run(args, model)
    out = {"rtols": rtols, "rows": rows, "training": training, "seeds": _ints(args.seeds),
           "maxiter": args.maxiter, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "loadavg": os.getloadavg()}
    dest = models if args.quick else RESULTS
    name = "dcdm_3d" + (f"_{args.tag}" if args.tag else "")
    (dest / f"{name}.json").write_text(json.dumps(out, indent=1, default=float))
    (dest / f"{name}.md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
