"""One neural-ODE training step through the framework adapters vs torchdiffeq / diffrax.

Run from the repository root::

    python -m bench.bench_speed_training [--pairs 15] [--tag before]

The 2-50-2 tanh MLP "spiral" field (``bench/_ode_problems.py``), a batch of ``B`` initial
states (one step size for the batch: diffsolve ``batch_mode="shared"``, as torchdiffeq and
diffrax integrate a batched state), dopri5, rtol = atol = 1e-6, t in [0, 2] with 11 output
times, loss = mean squared distance of the trajectory to a fixed target, one
forward + backward:

* torch: ``to_torch(odeint)(f_np, y0, t, p, vjp=vjp_np)`` with ``f_np, vjp_np =
  from_torch(field)`` vs ``torchdiffeq.odeint(field, ...)`` (backpropagation through the
  solver, its default) with the same field;
* JAX: ``to_jax(odeint)`` with ``from_jax(field)`` vs ``diffrax.diffeqsolve(Dopri5(),
  PIDController(rtol, atol), SaveAt(ts=t))`` under ``jax.jit(jax.value_and_grad)``.

Timed as interleaved pairs (peer step, diffsolve step) in one process after one warm-up
call each (the warm-up, which includes jit compilation, is reported apart); ratio =
peer time / diffsolve time (above 1: diffsolve faster), min and median over pairs.
Results: ``bench/results/speed_training[_TAG].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from bench._ode_problems import get_problems, machine_meta, mlp_unpack

RESULTS = Path(__file__).resolve().parent / "results"
TOL = 1e-6
EAGER = False
#: diffsolve's step-size controller: "pi" (its default) or "i", the integral controller
#: torchdiffeq's dopri5 uses (the same error norm and tolerances; the PI controller takes
#: more, smoother steps on this field: 75 vs 59 accepted at B = 1, 83 vs 63 at B = 16)
CONTROLLER = "pi"
D, HIDDEN = 2, 50


def _setup(B: int):
    prob = get_problems()["spiral_mlp"]
    y0 = prob.batch_y0(B)
    t = np.linspace(0.0, 2.0, 11)
    target = np.zeros((t.shape[0], B, D))
    return prob.params.copy(), y0, t, target


def torch_rows(B: int, pairs: int) -> dict:
    import torch
    import torchdiffeq

    import diffsolve as ds
    from diffsolve.ode import from_torch, odeint

    p_np, y0_np, t_np, tgt_np = _setup(B)

    def field(t, y, p):
        W1, b1, W2, b2 = mlp_unpack(p, D, HIDDEN)
        return torch.tanh(y @ W1.T + b1) @ W2.T + b2

    p = torch.tensor(p_np, requires_grad=True)
    y0 = torch.tensor(y0_np)
    tt = torch.tensor(t_np)
    tgt = torch.tensor(tgt_np)
    f_np, vjp_np = from_torch(field)
    ode = ds.to_torch(odeint)

    def step_ds():
        p.grad = None
        ys = ode(f_np, y0, tt, p, method="dopri5", rtol=TOL, atol=TOL, vjp=vjp_np,
                 batch_mode="shared", controller=CONTROLLER).ys
        loss = ((ys - tgt) ** 2).mean()
        loss.backward()
        return float(loss.detach()), p.grad.numpy().copy()

    def step_peer():
        p.grad = None
        ys = torchdiffeq.odeint(lambda t, y: field(t, y, p), y0, tt, rtol=TOL, atol=TOL,
                                method="dopri5")
        loss = ((ys - tgt) ** 2).mean()
        loss.backward()
        return float(loss.detach()), p.grad.numpy().copy()

    return _pairs("torch", B, step_ds, step_peer, pairs)


def jax_rows(B: int, pairs: int) -> dict:
    import diffrax
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    import diffsolve as ds
    from diffsolve.ode import from_jax, odeint

    p_np, y0_np, t_np, tgt_np = _setup(B)

    def field(t, y, p):
        W1, b1, W2, b2 = mlp_unpack(p, D, HIDDEN)
        return jnp.tanh(y @ W1.T + b1) @ W2.T + b2

    p = jnp.asarray(p_np)
    y0 = jnp.asarray(y0_np)
    tt = jnp.asarray(t_np)
    tgt = jnp.asarray(tgt_np)
    f_np, vjp_np = from_jax(field)
    ode = ds.to_jax(odeint)

    def loss_ds(p):
        ys = ode(f_np, y0, tt, p, method="dopri5", rtol=TOL, atol=TOL, vjp=vjp_np,
                 batch_mode="shared", controller=CONTROLLER).ys
        return ((ys - tgt) ** 2).mean()

    # jitted like the diffrax step (the callbacks are traced once); --jax-eager: not jitted,
    # which re-traces to_jax's callbacks (and compiles them) at every step
    vg_ds = jax.value_and_grad(loss_ds) if EAGER else jax.jit(jax.value_and_grad(loss_ds))

    def step_ds():
        v, g = vg_ds(p)
        return float(v), np.asarray(g)

    term = diffrax.ODETerm(lambda t, y, args: field(t, y, args))

    @jax.jit
    @jax.value_and_grad
    def vg_peer(p):
        sol = diffrax.diffeqsolve(term, diffrax.Dopri5(), t0=0.0, t1=float(t_np[-1]),
                                  dt0=None, y0=y0, args=p, saveat=diffrax.SaveAt(ts=tt),
                                  stepsize_controller=diffrax.PIDController(rtol=TOL,
                                                                            atol=TOL),
                                  max_steps=100_000)
        return ((sol.ys - tgt) ** 2).mean()

    def step_peer():
        v, g = vg_peer(p)
        return float(v), np.asarray(g)

    return _pairs("jax-eager" if EAGER else "jax", B, step_ds, step_peer, pairs)


def _pairs(framework, B, step_ds, step_peer, pairs) -> dict:
    c0 = time.perf_counter()
    l_ds, g_ds = step_ds()
    c1 = time.perf_counter()
    l_pe, g_pe = step_peer()
    c2 = time.perf_counter()
    t_ds, t_pe = [], []
    for _ in range(pairs):
        a = time.perf_counter()
        step_peer()
        b = time.perf_counter()
        step_ds()
        c = time.perf_counter()
        t_pe.append(b - a)
        t_ds.append(c - b)
    ratios = [pe / d for pe, d in zip(t_pe, t_ds)]
    row = {"framework": framework, "B": B, "pairs": pairs,
           "first_call_ds_s": c1 - c0, "first_call_peer_s": c2 - c1,
           "ds_ms_min": 1e3 * min(t_ds), "ds_ms_median": 1e3 * statistics.median(t_ds),
           "peer_ms_min": 1e3 * min(t_pe), "peer_ms_median": 1e3 * statistics.median(t_pe),
           "ratio_min_times": min(t_pe) / min(t_ds), "ratio_median": statistics.median(ratios),
           "loss_ds": l_ds, "loss_peer": l_pe,
           "grad_rel_diff": float(np.linalg.norm(g_ds - g_pe) / np.linalg.norm(g_pe)),
           "grad_ds_fingerprint": [float(v) for v in g_ds[:4]]}
    print(f"{framework:<9} B={B:<4} diffsolve {row['ds_ms_min']:7.2f} / "
          f"{row['ds_ms_median']:7.2f} ms  peer {row['peer_ms_min']:7.2f} / "
          f"{row['peer_ms_median']:7.2f} ms  peer/ds min-times x{row['ratio_min_times']:.2f} "
          f"median x{row['ratio_median']:.2f}  (first call ds {row['first_call_ds_s']:.2f} s, "
          f"peer {row['first_call_peer_s']:.2f} s; grad rel diff {row['grad_rel_diff']:.1e})",
          flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--only", choices=["torch", "jax"], default=None)
    parser.add_argument("--tag", default="")
    parser.add_argument("--jax-eager", action="store_true",
                        help="the diffsolve JAX step not under jax.jit")
    parser.add_argument("--controller", choices=["pi", "i"], default="pi",
                        help="diffsolve's step-size controller (torchdiffeq's dopri5: 'i')")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch.set_num_threads for both torch steps (shared machine)")
    args = parser.parse_args(argv)
    global EAGER, CONTROLLER
    EAGER = args.jax_eager
    CONTROLLER = args.controller
    if args.only != "jax":
        import torch

        torch.set_num_threads(args.torch_threads)
    meta = machine_meta()
    meta.update(tol=TOL, tag=args.tag, jax_eager=EAGER, controller=CONTROLLER,
                torch_threads=args.torch_threads,
                loadavg_start=list(os.getloadavg()))
    rows = []
    for B in args.batch:
        if args.only in (None, "torch"):
            rows.append(torch_rows(B, args.pairs))
        if args.only in (None, "jax"):
            rows.append(jax_rows(B, args.pairs))
    meta["loadavg_end"] = list(os.getloadavg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"speed_training{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
