"""Train the shipped DCDM weights: 2-D Poisson on 64² grids, without and with obstacles;
the multi-level Poisson and diffusion models.

    python -m bench.train_dcdm_weights [--which both|plain|obstacles|multilevel|diffusion]
                                       [--steps N] [--minutes M] [--gpu] [--out DIR]
                                       [--levels L] [--shared-levels] [--sizes 32,64]

``--which both`` (the default) writes ``diffsolve/linear/weights/dcdm_poisson2d_64.npz`` and
``dcdm_poisson2d_64_obstacles.npz`` (or into ``--out``) and the loss histories to
``bench/results/dcdm_training.json``; ``multilevel`` writes
``dcdm_poisson2d_multilevel.npz`` (shared levels, ``levels="auto"``, Poisson on 32², 64²,
128² in turn), ``diffusion`` ``dcdm_diffusion2d.npz`` (shared levels and the
coefficient channel, :func:`diffusion_family` on 32² and 64²) and ``poisson3d``
``dcdm_poisson3d_multilevel.npz`` (shared levels, 3-D Poisson on 16³ and 32³ in turn,
:func:`poisson3d`; the shipped file was written by ``bench/bench_dcdm_3d.py`` with the same
training call, 276 steps in a 40-minute budget),
with their histories in ``dcdm_training_<which>.json``. The problems are built by
:func:`poisson2d`, which the benchmark and the tests share: 5-point Laplacian on the fluid
cells of an ``s × s`` grid, Dirichlet walls at the domain boundary, homogeneous Neumann
faces at obstacles (the pressure Poisson system of a smoke simulation with solid obstacles,
Kaneda et al. 2023, section 4), by :func:`diffusion2d` (finite-volume ``-div(k grad u)``,
Dirichlet or Neumann walls) and by :func:`poisson3d` (7-point, Dirichlet walls).
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



def poisson3d(s, dtype=np.float64):
    """CSR 7-point Laplacian of an ``s × s × s`` grid with Dirichlet walls, C order (cell
    ``(i, j, k)`` is row ``(i s + j) s + k``): the 3-D pressure Poisson system of Kaneda et
    al. (2023) without obstacles."""
    T = sp.diags([-np.ones(s - 1), 2.0 * np.ones(s), -np.ones(s - 1)], [-1, 0, 1],
                 shape=(s, s), dtype=dtype)
    eye = sp.identity(s, dtype=dtype)
    A = (sp.kron(sp.kron(T, eye), eye) + sp.kron(sp.kron(eye, T), eye)
         + sp.kron(sp.kron(eye, eye), T)).tocsr()
    A.sum_duplicates()
    A.sort_indices()
    return A


def lognormal_field(s, sigma, seed=0, correlation=0.1):
    """``exp(sigma g)`` on an ``s × s`` grid, ``g`` a unit-variance Gaussian field smoothed
    with a Gaussian kernel of width ``correlation`` (a fraction of the side): the usual
    model of a heterogeneous permeability or conductivity."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal((s, s))
    k = np.fft.fftfreq(s)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    width = correlation * s
    g = np.real(np.fft.ifft2(np.fft.fft2(white) * np.exp(-2.0 * (np.pi * width) ** 2 * k2)))
    g = (g - g.mean()) / g.std()
    return np.exp(sigma * g)


WALLS = ("top", "bottom", "left", "right")


def diffusion2d(coefficient, neumann=(), dtype=np.float64):
    """CSR finite-volume matrix of ``-div(k grad u)`` on an ``s × s`` cell grid, C order.

    Face coefficients are harmonic means of the two cells' ``k``; a Dirichlet wall face
    uses the wall cell's own ``k``; the walls named in ``neumann`` (of "top" = row 0,
    "bottom", "left" = column 0, "right") have no flux. ``k = 1`` with no Neumann wall is
    :func:`poisson2d`. Symmetric positive definite unless every wall is Neumann.
    """
    k = np.asarray(coefficient, dtype=np.float64)
    s = k.shape[0]
    if k.shape != (s, s) or not np.all(k > 0):
        raise ValueError(f"diffusion2d: coefficient must be a positive square field, got "
                         f"shape {k.shape}")
    unknown = set(neumann) - set(WALLS)
    if unknown or len(set(neumann)) == 4:
        raise ValueError(f"diffusion2d: neumann names at most three of {WALLS}, got {neumann}")
    idx = np.arange(s * s).reshape(s, s)
    rows, cols, vals = [], [], []
    diag = np.zeros((s, s))
    # interior faces between vertical and horizontal neighbours
    for a, b in (((slice(0, s - 1), slice(None)), (slice(1, s), slice(None))),
                 ((slice(None), slice(0, s - 1)), (slice(None), slice(1, s)))):
        face = 2.0 * k[a] * k[b] / (k[a] + k[b])
        diag[a] += face
        diag[b] += face
        rows += [idx[a].ravel(), idx[b].ravel()]
        cols += [idx[b].ravel(), idx[a].ravel()]
        vals += [-face.ravel(), -face.ravel()]
    for wall, cells in (("top", (0, slice(None))), ("bottom", (s - 1, slice(None))),
                        ("left", (slice(None), 0)), ("right", (slice(None), s - 1))):
        if wall not in neumann:
            diag[cells] += k[cells]
    rows.append(idx.ravel())
    cols.append(idx.ravel())
    vals.append(diag.ravel())
    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(s * s, s * s), dtype=dtype)
    A.sum_duplicates()
    A.sort_indices()
    return A

def diffusion_family(sizes, seed0=0):
    """``(name, s, A)`` of a training family of 2-D diffusion matrices: per grid side,
    constant coefficient with Dirichlet walls, with Neumann walls on one and on three
    sides, log-normal coefficient fields (σ = 0.5, 1.0, 1.5) with Dirichlet walls, and one
    (σ = 1.0) with Neumann walls on two sides; field seeds count up from ``seed0``."""
    problems = []
    seed = seed0
    rng = np.random.default_rng(seed0 + 12345)
    walls = list(WALLS)
    for s in sizes:
        plan = [(0.0, ()), (0.0, tuple(rng.choice(walls, 1, replace=False))),
                (0.0, tuple(rng.choice(walls, 3, replace=False))), (0.5, ()), (1.0, ()),
                (1.5, ()), (1.0, tuple(rng.choice(walls, 2, replace=False)))]
        for sigma, neumann in plan:
            k = lognormal_field(s, sigma, seed=seed) if sigma > 0 else np.ones((s, s))
            name = (f"{s}² σ={sigma:g}" + (f" Neumann {'+'.join(neumann)}" if neumann else "")
                    + f" (field seed {seed})")
            problems.append((name, s, diffusion2d(k, neumann=neumann)))
            seed += 1
    return problems


def train(which, steps, minutes, gpu, seed, lr, batch, channels, n_blocks, n_ritz, levels=1,
          shared_levels=False, sizes=(64,), coefficient_channel=False):
    """Train one model; several ``sizes`` train on that family of grids (visited in turn).

    ``which``: "plain" or "obstacles" (Poisson, :func:`poisson2d`), "diffusion" (the
    :func:`diffusion_family` of ``sizes``), or "poisson3d" (:func:`poisson3d`).
    """
    from diffsolve.linear import train_direction_model

    As, grids, masks = [], [], []
    dim = 3 if which == "poisson3d" else 2
    if which == "diffusion":
        problems = [(s, None, A) for _, s, A in diffusion_family(sizes)]
    elif which == "poisson3d":
        problems = [(s, None, poisson3d(s)) for s in sizes]
    else:
        problems = []
        for s in sizes:
            mask = obstacle_mask(s, seed=seed) if which == "obstacles" else None
            problems.append((s, mask, poisson2d(s, mask)))
    for s, mask, A in problems:
        if gpu:
            import cupyx.scipy.sparse as csp

            A = csp.csr_matrix(A)
            if mask is not None:
                import cupy

                mask = cupy.asarray(mask)
        As.append(A)
        grids.append((s,) * dim)
        masks.append(mask)
    family = len(problems) > 1
    t0 = time.perf_counter()
    out = train_direction_model(As if family else As[0], grids if family else grids[0],
                                mask=(masks if which == "obstacles" else None) if family
                                else masks[0], channels=channels, n_blocks=n_blocks,
                                levels=levels, shared_levels=shared_levels,
                                coefficient_channel=coefficient_channel, n_steps=steps,
                                batch_size=batch, n_ritz=n_ritz,
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
    ap.add_argument("--shared-levels", action="store_true",
                    help="the levels between the grid and the coarsest share their weights "
                         "(with --levels auto the depth then follows every grid)")
    ap.add_argument("--sizes", default="64",
                    help="grid sides of the training family (comma-separated), visited in turn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--which", default="both",
                    choices=["plain", "obstacles", "both", "multilevel", "diffusion",
                             "poisson3d"],
                    help="both: the two one-level Poisson models; multilevel: Poisson on "
                         "32², 64², 128² with shared levels (levels auto); diffusion: the "
                         "diffusion family on 32², 64² with shared levels and the coefficient "
                         "channel")
    ap.add_argument("--out", default=WEIGHTS)
    ap.add_argument("--quick", action="store_true", help="a few steps, for a smoke test")
    args = ap.parse_args(argv)
    levels = args.levels if args.levels == "auto" else int(args.levels)
    if args.quick:
        args.steps, args.minutes = 20, 1.0
    os.makedirs(args.out, exist_ok=True)
    report = {}
    kinds = ["plain", "obstacles"] if args.which == "both" else [args.which]
    sizes = tuple(int(v) for v in args.sizes.split(","))
    for which in kinds:
        # the recipes of the named multi-level models (their own levels and family)
        recipe = {"multilevel": ("plain", "auto", True, (32, 64, 128), False),
                  "diffusion": ("diffusion", "auto", True, (32, 64), True),
                  "poisson3d": ("poisson3d", "auto", True, (16, 32), False)}.get(
                      which, (which, levels, args.shared_levels, sizes, False))
        kind, lv, shared, train_sizes, coefficient = recipe
        model, history, seconds, done = train(kind, args.steps, args.minutes, args.gpu,
                                              args.seed, args.lr, args.batch, args.channels,
                                              args.n_blocks, args.n_ritz, lv, shared,
                                              train_sizes, coefficient)
        name = {"plain": "dcdm_poisson2d_64.npz", "obstacles": "dcdm_poisson2d_64_obstacles.npz",
                "multilevel": "dcdm_poisson2d_multilevel.npz",
                "diffusion": "dcdm_diffusion2d.npz",
                "poisson3d": "dcdm_poisson3d_multilevel.npz"}[which]
        problem = {"multilevel": "2-D Poisson 32^2, 64^2, 128^2",
                   "diffusion": "2-D diffusion family 32^2, 64^2 (bench.train_dcdm_weights."
                                "diffusion_family)",
                   "poisson3d": "3-D Poisson 16^3, 32^3"}.get(which,
                                                              f"2-D Poisson 64^2 ({which})")
        model.save(os.path.join(args.out, name), problem=problem,
                   script="bench/train_dcdm_weights.py", steps=done, lr=args.lr,
                   batch=args.batch, seconds=round(seconds, 1), levels=model.levels,
                   device="gpu" if args.gpu else "cpu")
        report[which] = {"steps": done, "seconds": seconds, "lr": args.lr,
                         "levels": model.levels,
                         "batch": args.batch, "loss_history": history,
                         "device": "gpu" if args.gpu else "cpu",
                         "loadavg": os.getloadavg()}
    os.makedirs(RESULTS, exist_ok=True)
    tag = ("" if args.which in ("both", "plain", "obstacles") else f"_{args.which}") + \
        ("_gpu" if args.gpu else "")
    with open(os.path.join(RESULTS, f"dcdm_training{tag}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
