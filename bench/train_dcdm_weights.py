"""Train the shipped DCDM weights: 2-D Poisson on 64² grids, without and with obstacles.

    python -m bench.train_dcdm_weights [--steps N] [--minutes M] [--gpu] [--out DIR]
                                       [--levels L]

Writes ``diffsolve/linear/weights/dcdm_poisson2d_64.npz`` and
``dcdm_poisson2d_64_obstacles.npz`` (or into ``--out``) and the loss histories to
``bench/results/dcdm_training.json``. The problems are built by :func:`poisson2d`, which the
benchmark and the tests share: 5-point Laplacian on the fluid cells of an ``s × s`` grid,
Dirichlet walls at the domain boundary, homogeneous Neumann faces at obstacles (the pressure
Poisson system of a smoke simulation with solid obstacles, Kaneda et al. 2023, section 4).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import scipy.sparse as sp

WEIGHTS = os.path.join(os.path.dirname(__file__), "..", "diffsolve", "linear", "weights")
RESULTS = os.path.join(os.path.dirname(__file__), "results")


def obstacle_mask(s, seed=0, n_obstacles=None):
    """Fluid mask (True = unknown) of an ``s × s`` grid with random solid discs and boxes
    covering ~10-15 % of the cells, away from the walls so the fluid stays connected."""
    rng = np.random.default_rng(seed)
    mask = np.ones((s, s), dtype=bool)
    n_obstacles = n_obstacles if n_obstacles is not None else 4
    ii, jj = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    for _ in range(n_obstacles):
        rad = rng.uniform(0.06, 0.12) * s
        ci, cj = rng.uniform(0.2 * s, 0.8 * s, size=2)
        if rng.random() < 0.5:
            mask &= (ii - ci) ** 2 + (jj - cj) ** 2 > rad ** 2
        else:
            mask &= ~((abs(ii - ci) < rad) & (abs(jj - cj) < 0.6 * rad))
    return mask


def poisson2d(s, mask=None, dtype=np.float64):
    """CSR 5-point Laplacian on the True cells of ``mask`` (all cells when None), in C order.

    Diagonal: 4 minus the number of solid neighbours (Neumann faces at obstacles; the
    domain boundary counts as a Dirichlet wall); off-diagonal -1 between fluid neighbours.
    """
    if mask is None:
        mask = np.ones((s, s), dtype=bool)
    idx = -np.ones((s, s), dtype=np.int64)
    idx[mask] = np.arange(int(mask.sum()))
    rows, cols, vals = [], [], []
    diag = np.zeros(int(mask.sum()))
    for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        nbr = np.full((s, s), -2, dtype=np.int64)  # -2: outside the domain (Dirichlet)
        src_i = slice(max(di, 0), s + min(di, 0))
        dst_i = slice(max(-di, 0), s + min(-di, 0))
        src_j = slice(max(dj, 0), s + min(dj, 0))
        dst_j = slice(max(-dj, 0), s + min(-dj, 0))
        nbr[dst_i, dst_j] = idx[src_i, src_j]
        me = idx[mask]
        other = nbr[mask]
        diag += (other != -1)  # a fluid neighbour or a wall adds 1; a solid neighbour 0
        fluid = other >= 0
        rows.append(me[fluid])
        cols.append(other[fluid])
        vals.append(-np.ones(int(fluid.sum())))
    n = int(mask.sum())
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(diag)
    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n, n), dtype=dtype)
    A.sum_duplicates()
    A.sort_indices()
    return A


def train(which, steps, minutes, gpu, seed, lr, batch, channels, n_blocks, n_ritz, levels=1):
    from diffsolve.linear import train_direction_model

    s = 64
    mask = obstacle_mask(s, seed=seed) if which == "obstacles" else None
    A = poisson2d(s, mask)
    if gpu:
        import cupyx.scipy.sparse as csp

        A = csp.csr_matrix(A)
        if mask is not None:
            import cupy

            mask = cupy.asarray(mask)
    t0 = time.perf_counter()
    out = train_direction_model(A, (s, s), mask=mask, channels=channels, n_blocks=n_blocks,
                                levels=levels, n_steps=steps, batch_size=batch, n_ritz=n_ritz,
                                # Adam at lr for 70 % of the step or time budget, then lr/10
                                lr=lambda step: lr if (step < 0.7 * steps and time.perf_counter()
                                                       - t0 < 42 * minutes) else lr / 10,
                                seed=seed, progress=False, max_seconds=60 * minutes,
                                callback=lambda step, loss, model: step % 100 == 99 and print(
                                    f"{which}: {step + 1} steps, loss {loss:.4g}, "
                                    f"{time.perf_counter() - t0:.0f} s", flush=True))
    seconds = time.perf_counter() - t0
    model, history, done = out.model, out.loss_history, len(out.loss_history)
    return model, history, seconds, done


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--minutes", type=float, default=12.0, help="wall budget per model")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--n-blocks", type=int, default=2)
    ap.add_argument("--n-ritz", type=int, default=400)
    ap.add_argument("--levels", default="1",
                    help="pooling levels of the network: a positive integer or 'auto'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--which", default="both", choices=["plain", "obstacles", "both"])
    ap.add_argument("--out", default=WEIGHTS)
    ap.add_argument("--quick", action="store_true", help="a few steps, for a smoke test")
    args = ap.parse_args(argv)
    levels = args.levels if args.levels == "auto" else int(args.levels)
    if args.quick:
        args.steps, args.minutes = 20, 1.0
    os.makedirs(args.out, exist_ok=True)
    report = {}
    kinds = ["plain", "obstacles"] if args.which == "both" else [args.which]
    for which in kinds:
        model, history, seconds, done = train(which, args.steps, args.minutes, args.gpu,
                                              args.seed, args.lr, args.batch, args.channels,
                                              args.n_blocks, args.n_ritz, levels)
        name = "dcdm_poisson2d_64.npz" if which == "plain" else "dcdm_poisson2d_64_obstacles.npz"
        model.save(os.path.join(args.out, name), problem=f"2-D Poisson 64^2 ({which})",
                   script="bench/train_dcdm_weights.py", steps=done, lr=args.lr,
                   batch=args.batch, seconds=round(seconds, 1), levels=model.levels,
                   device="gpu" if args.gpu else "cpu")
        report[which] = {"steps": done, "seconds": seconds, "lr": args.lr,
                         "levels": model.levels,
                         "batch": args.batch, "loss_history": history,
                         "device": "gpu" if args.gpu else "cpu",
                         "loadavg": os.getloadavg()}
    os.makedirs(RESULTS, exist_ok=True)
    tag = "_gpu" if args.gpu else ""
    with open(os.path.join(RESULTS, f"dcdm_training{tag}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
