"""A batch of 256 independent trajectories: diffsolve ``odeint`` vs diffrax under ``jit(vmap)``.

Run from the repository root (under ``flock /tmp/bench.lock`` on the shared machine)::

    python -m bench.bench_speed_ode_batch [--pairs 15] [--batch 256] [--tag before]

Issue 14, item 1. Three problems, each a Numba ``@njit`` field with its ``@njit`` VJP for
diffsolve and the same field in ``jax.numpy`` for diffrax:

* Lotka–Volterra (a=1.5, b=1, c=3, d=1), y0 = (1, 1) ± 10 %, t in [0, 10];
* Van der Pol, μ = 2 (non-stiff), y0 = (2, 0) ± 10 %, t in [0, 10];
* a 16-32-16 tanh MLP field (1072 parameters, seeded Glorot-like initialisation), y0 a
  seeded standard normal draw per trajectory, t in [0, 5].

51 output times each, float64, Tsitouras 5(4), rtol = 1e-6, atol = 1e-9, per-trajectory
steps (diffsolve ``batch_mode="per-trajectory"``; diffrax ``jax.vmap`` over one solve).
With ``--vectorized``: diffsolve ``batch_mode="vectorized"`` with the same three fields and
their VJPs written in NumPy for a (B, d) batch, one call per stage on the whole batch.
The controllers are the same PI rule: diffsolve's ``controller="pi"`` is Hairer's
``h_new = h · 0.9 E_n^(-0.7/5) E_(n-1)^(0.4/5)`` clipped to [0.2, 10] (Hairer & Wanner,
Solving ODEs II, §IV.2), which is diffrax's ``PIDController(pcoeff=0.4, icoeff=0.3)`` with
Tsit5's error order 5; both use the RMS norm of ``err / (atol + rtol max(|y_n|, |y_n+1|))``
and Hairer's initial step. The step counts of both are in the JSON.

Two measurements per problem:

* forward: all outputs ``ys`` (T, B, d);
* forward + gradient: the gradient of ``sum(ys)`` w.r.t. ``y0`` (B, d) and the parameters
  (diffsolve: ``diffsolve.vjp`` with the discrete adjoint; diffrax: ``jax.grad`` through
  the solve, its default ``RecursiveCheckpointAdjoint``, also a discrete adjoint).

Timed as interleaved pairs (peer call, diffsolve call) after one first call each; the first
calls (JIT compilation: XLA for diffrax, Numba for diffsolve's kernels and the fields, in a
fresh Numba cache unless ``--warm-cache``) are reported apart. Ratio = peer time ÷ diffsolve
time (above 1: diffsolve faster); min of the pair ratios' times and median of the ratios.
Results: ``bench/results/speed_ode_batch[_TAG].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from bench._common import numba_cache

RESULTS = Path(__file__).resolve().parent / "results"
RTOL, ATOL = 1e-6, 1e-9
N_OUT = 51
MLP_D, MLP_H = 16, 32
VDP_MU = 2.0


#: LV and VdP as in-place fields (``--inplace``)
INPLACE = False
#: diffsolve with ``batch_mode="vectorized"`` and NumPy fields / VJPs (``--vectorized``)
VECTORIZED = False
#: the same NumPy fields with the default ``batch_mode="per-trajectory"`` (``--numpy-loop``:
#: the "before" of ``--vectorized``, a Python loop over the trajectories)
NUMPY_LOOP = False
#: the NumPy fields and VJPs with ``--single`` / ``--shared`` (``--numpy-fields``)
NUMPY_FIELDS = False
#: one trajectory (the first row), diffrax without vmap (``--single``)
SINGLE = False
#: the (B, d) batch as one system, ``batch_mode="shared"``, diffrax on the (B, d) state
#: without vmap (``--shared``)
SHARED = False


def problems(B: int) -> dict:
    """The three problems: Numba field + VJP, JAX field, params, (B, d) y0, t_eval."""
    import jax.numpy as jnp

    from bench._ode_problems import (
        LV_PARAMS,
        get_problems,
        lv_nb_inplace,
        lv_np,
        lv_vjp_np,
        mlp_init,
        mlp_nb_factory,
        mlp_np_factory,
        mlp_unpack,
        mlp_vjp_np_factory,
        vdp_nb_inplace,
        vdp_np,
        vdp_vjp_np,
    )

    reg = get_problems()
    lv, vdp = reg["lotka_volterra"], reg["van_der_pol"]

    # one state (d,) or, for --shared, the (B, d) batch as one system
    def lv_jax(t, y, p):
        x, z = y[..., 0], y[..., 1]
        return jnp.stack([p[0] * x - p[1] * x * z, -p[2] * z + p[3] * x * z], axis=-1)

    def vdp_jax(t, y, p):
        x, z = y[..., 0], y[..., 1]
        return jnp.stack([z, p[0] * (1.0 - x * x) * z - x], axis=-1)

    def mlp_jax(t, y, p):
        W1, b1, W2, b2 = mlp_unpack(p, MLP_D, MLP_H)
        return jnp.tanh(y @ W1.T + b1) @ W2.T + b2

    mlp_nb, mlp_vjp = mlp_nb_factory(MLP_D, MLP_H)
    lv_f, lv_vjp = (lv_nb_inplace if INPLACE else lv.f_nb), lv.vjp_nb
    vdp_f, vdp_vjp = (vdp_nb_inplace if INPLACE else vdp.f_nb), vdp.vjp_nb
    if VECTORIZED or NUMPY_LOOP or NUMPY_FIELDS:  # the same fields in NumPy
        lv_f, lv_vjp = lv_np, lv_vjp_np
        vdp_f, vdp_vjp = vdp_np, vdp_vjp_np
        mlp_nb, mlp_vjp = mlp_np_factory(MLP_D, MLP_H), mlp_vjp_np_factory(MLP_D, MLP_H)
    y_mlp = np.random.default_rng(3).standard_normal((B, MLP_D))
    out = {
        "lotka_volterra": dict(f=lv_f, vjp=lv_vjp,
                               f_jax=lv_jax, p=LV_PARAMS.copy(),
                               y0=lv.batch_y0(B), t=np.linspace(0.0, 10.0, N_OUT)),
        "van_der_pol": dict(f=vdp_f, vjp=vdp_vjp,
                            f_jax=vdp_jax,
                            p=np.array([VDP_MU]), y0=vdp.batch_y0(B),
                            t=np.linspace(0.0, 10.0, N_OUT)),
        "mlp_16_32": dict(f=mlp_nb, vjp=mlp_vjp, f_jax=mlp_jax,
                          p=mlp_init(MLP_D, MLP_H, seed=2), y0=y_mlp,
                          t=np.linspace(0.0, 5.0, N_OUT)),
    }
    if SINGLE:  # one trajectory: each batch's first row, a state of shape (d,)
        out = {name: {**prob, "y0": prob["y0"][0].copy()} for name, prob in out.items()}
    return out


def diffrax_calls(prob: dict):
    """``(forward, gradient)``: jitted ``vmap`` of one diffrax solve, and its gradient."""
    import diffrax
    import jax
    import jax.numpy as jnp

    ts = jnp.asarray(prob["t"])
    term = diffrax.ODETerm(prob["f_jax"])
    ctrl = diffrax.PIDController(rtol=RTOL, atol=ATOL, pcoeff=0.4, icoeff=0.3)

    def solve(y0, p):
        sol = diffrax.diffeqsolve(term, diffrax.Tsit5(), ts[0], ts[-1], None, y0, args=p,
                                  saveat=diffrax.SaveAt(ts=ts), stepsize_controller=ctrl,
                                  max_steps=100_000)
        return sol.ys, sol.stats["num_steps"]

    # a batch of independent solves (vmap), or one system: one trajectory (--single) or
    # the (B, d) batch with one step size (--shared)
    batch = solve if (SINGLE or SHARED) else jax.vmap(solve, in_axes=(0, None))
    fwd = jax.jit(batch)
    grad = jax.jit(jax.grad(lambda Y, p: jnp.sum(batch(Y, p)[0]), argnums=(0, 1)))
    Y, P = jnp.asarray(prob["y0"]), jnp.asarray(prob["p"])

    def forward():
        ys, steps = jax.block_until_ready(fwd(Y, P))
        return np.asarray(ys), np.asarray(steps)

    def gradient():
        gy, gp = jax.block_until_ready(grad(Y, P))
        return np.asarray(gy), np.asarray(gp)

    return forward, gradient


def diffsolve_calls(prob: dict):
    """``(forward, gradient)`` of diffsolve's odeint on the (B, d) batch."""
    import diffsolve as ds
    from diffsolve.ode import odeint

    f, vjp, p, Y, t = prob["f"], prob["vjp"], prob["p"], prob["y0"], prob["t"]

    mode = "vectorized" if VECTORIZED else "shared" if SHARED else "per-trajectory"

    def forward():
        res = odeint(f, Y, t, p, rtol=RTOL, atol=ATOL, batch_mode=mode)
        # diffrax's vmap puts the batch first; one system keeps odeint's (T, ...) order
        return (res.ys if (SINGLE or SHARED) else np.swapaxes(res.ys, 0, 1)), res

    def gradient():
        res, pull = ds.vjp(odeint, f, Y, t, p, rtol=RTOL, atol=ATOL, vjp=vjp,
                           batch_mode=mode)
        gy, _, gp = pull(ys=np.ones_like(res.ys))
        return gy, gp

    return forward, gradient


def _pairs(peer, ours, pairs: int) -> dict:
    c0 = time.perf_counter()
    out_ds = ours()
    c1 = time.perf_counter()
    out_pe = peer()
    c2 = time.perf_counter()
    t_ds, t_pe = [], []
    for _ in range(pairs):
        a = time.perf_counter()
        peer()
        b = time.perf_counter()
        ours()
        c = time.perf_counter()
        t_pe.append(b - a)
        t_ds.append(c - b)
    ratios = [pe / d for pe, d in zip(t_pe, t_ds)]
    return {"pairs": pairs, "first_call_ds_s": c1 - c0, "first_call_peer_s": c2 - c1,
            "ds_ms_min": 1e3 * min(t_ds), "ds_ms_median": 1e3 * statistics.median(t_ds),
            "peer_ms_min": 1e3 * min(t_pe), "peer_ms_median": 1e3 * statistics.median(t_pe),
            "ratio_min_times": min(t_pe) / min(t_ds),
            "ratio_median": statistics.median(ratios)}, out_ds, out_pe


def run(B: int, pairs: int, only: list[str] | None) -> list[dict]:
    rows = []
    for name, prob in problems(B).items():
        if only and name not in only:
            continue
        pe_f, pe_g = diffrax_calls(prob)
        ds_f, ds_g = diffsolve_calls(prob)
        row, (ys_ds, res), (ys_pe, steps_pe) = _pairs(pe_f, ds_f, pairs)
        per_row = 1 if (SINGLE or SHARED) else B  # one system: its own step count
        row.update(problem=name, B=1 if SINGLE else B, kind="forward",
                   steps_ds_mean=res.stats.n_steps / per_row,
                   steps_peer_mean=float(np.mean(steps_pe)),
                   ys_max_abs_diff=float(np.max(np.abs(ys_ds - ys_pe))))
        rows.append(row)
        _print(row)
        row, (gy, gp), (gy_pe, gp_pe) = _pairs(pe_g, ds_g, pairs)
        g, g_pe = np.concatenate([gy.ravel(), gp]), np.concatenate([gy_pe.ravel(), gp_pe])
        row.update(problem=name, B=1 if SINGLE else B, kind="forward+gradient",
                   grad_rel_diff=float(np.linalg.norm(g - g_pe) / np.linalg.norm(g_pe)))
        rows.append(row)
        _print(row)
    return rows


def _print(row: dict) -> None:
    extra = (f"steps ds/peer {row['steps_ds_mean']:.1f}/{row['steps_peer_mean']:.1f}, "
             f"|ys diff| {row['ys_max_abs_diff']:.1e}") if row["kind"] == "forward" else \
        f"grad rel diff {row['grad_rel_diff']:.1e}"
    print(f"{row['problem']:<15} {row['kind']:<16} B={row['B']:<4} diffsolve "
          f"{row['ds_ms_min']:8.2f} / {row['ds_ms_median']:8.2f} ms  diffrax "
          f"{row['peer_ms_min']:8.2f} / {row['peer_ms_median']:8.2f} ms  peer/ds "
          f"min-times x{row['ratio_min_times']:.2f} median x{row['ratio_median']:.2f}  "
          f"(first call ds {row['first_call_ds_s']:.2f} s, peer "
          f"{row['first_call_peer_s']:.2f} s; {extra})", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--only", nargs="+", default=None,
                        choices=["lotka_volterra", "van_der_pol", "mlp_16_32"])
    parser.add_argument("--tag", default="")
    parser.add_argument("--inplace", action="store_true",
                        help="LV and VdP as in-place @njit fields f(t, y, p, out) (one "
                        "state each) instead of the fields returning a new array")
    parser.add_argument("--before", type=Path, default=None,
                        help="a JSON file this script wrote from the code before the change "
                        "(run from a copy of that tree): kept in the results and set "
                        "beside the new rows in the Markdown table")
    parser.add_argument("--warm-cache", action="store_true",
                        help="Numba's normal on-disk cache (default: a fresh one, so the "
                        "first call measures a cold compile of diffsolve's kernels)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--vectorized", action="store_true",
                      help="diffsolve with batch_mode='vectorized': NumPy fields and VJPs "
                      "called once per stage on the whole (B, d) batch")
    mode.add_argument("--numpy-loop", action="store_true",
                      help="the same NumPy fields with the default "
                      "batch_mode='per-trajectory' (one solve per trajectory)")
    mode.add_argument("--single", action="store_true",
                      help="one trajectory (the first row of each batch) with the @njit "
                      "fields; diffrax jit of one solve")
    mode.add_argument("--shared", action="store_true",
                      help="the (B, d) batch as one system (batch_mode='shared', one step "
                      "size, the error norm over the batch) with the @njit fields; diffrax "
                      "jit of one solve of the (B, d) state")
    parser.add_argument("--numpy-fields", action="store_true",
                        help="with --single / --shared: the fields and VJPs in NumPy "
                        "instead of @njit")
    args = parser.parse_args(argv)
    if args.numpy_fields and not (args.single or args.shared):
        parser.error("--numpy-fields goes with --single or --shared")
    global INPLACE, VECTORIZED, NUMPY_LOOP, SINGLE, SHARED, NUMPY_FIELDS
    NUMPY_FIELDS = args.numpy_fields
    INPLACE = args.inplace
    VECTORIZED = args.vectorized
    NUMPY_LOOP = args.numpy_loop
    SINGLE = args.single
    SHARED = args.shared
    with numba_cache(args.warm_cache):
        import jax

        jax.config.update("jax_enable_x64", True)
        from bench._ode_problems import machine_meta

        meta = machine_meta()
        meta.update(rtol=RTOL, atol=ATOL, tag=args.tag, warm_cache=args.warm_cache,
                    inplace=INPLACE, vectorized=VECTORIZED, numpy_loop=NUMPY_LOOP,
                    single=SINGLE, shared=SHARED, numpy_fields=NUMPY_FIELDS,
                    jax=jax.__version__, numba_threads=_numba_threads())
        rows = run(args.batch, args.pairs, args.only)
    meta["loadavg_end"] = list(os.getloadavg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"speed_ode_batch{'_' + args.tag if args.tag else ''}.json"
    out = {"meta": meta, "rows": rows}
    if args.before is not None:
        out["before"] = json.loads(args.before.read_text())
    path.write_text(json.dumps(out, indent=1))
    path.with_suffix(".md").write_text(markdown(out))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return rows


def markdown(out: dict) -> str:
    """The results table: per problem and measurement, before → after."""
    before = {(r["problem"], r["kind"]): r for r in out.get("before", {}).get("rows", [])}
    meta = out["meta"]
    title = ("One trajectory vs diffrax `jit`" if meta.get("single") else
             "A batch as one system (`batch_mode=\"shared\"`) vs diffrax `jit`"
             if meta.get("shared") else
             "A batch of independent trajectories vs diffrax `jit(vmap)`")
    lines = [
        f"# {title} (issue 14)",
        "",
        "`python -m bench.bench_speed_ode_batch` — B = {}, Tsit5, rtol = {:g}, atol = {:g}, "
        "PI controller on both sides, float64, 51 outputs; Numba threads: {}; "
        "interleaved pairs ({} per row). Ratio = diffrax time ÷ diffsolve time (> 1: "
        "diffsolve faster). Times in ms, min / median over the pairs.{}".format(
            out["rows"][0]["B"], meta["rtol"], meta["atol"], meta["numba_threads"],
            out["rows"][0]["pairs"], _fields_note(meta)),
        "",
        "| problem | measured | before: diffsolve | before: ratio min / median | "
        "after: diffsolve | diffrax | after: ratio min / median | steps ds / diffrax | "
        "first call ds / diffrax (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        b = before.get((r["problem"], r["kind"]))
        steps = (f"{r['steps_ds_mean']:.1f} / {r['steps_peer_mean']:.1f}"
                 if r["kind"] == "forward" else "")
        lines.append(
            f"| {r['problem']} | {r['kind']} | "
            + (f"{_ms(b['ds_ms_min'])} / {_ms(b['ds_ms_median'])} | "
               f"{b['ratio_min_times']:.2f} / {b['ratio_median']:.2f} | " if b else "— | — | ")
            + f"{_ms(r['ds_ms_min'])} / {_ms(r['ds_ms_median'])} | "
            f"{_ms(r['peer_ms_min'])} / {_ms(r['peer_ms_median'])} | "
            f"**{r['ratio_min_times']:.2f}** / **{r['ratio_median']:.2f}** | {steps} | "
            f"{r['first_call_ds_s']:.2f} / {r['first_call_peer_s']:.2f} |")
    lines.append("")
    return "\n".join(lines)


def _ms(x: float) -> str:
    """Milliseconds with three significant digits below 10 ms (one trajectory: 0.19)."""
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def _fields_note(meta: dict) -> str:
    fields = "NumPy" if meta.get("numpy_fields") else "`@njit`"
    if meta.get("single"):
        return (" `--single`: ONE trajectory (the first row of each batch; the B above is 1), "
                f"the {fields} field and VJP; diffrax: `jit` of one solve, no `vmap`.")
    if meta.get("shared"):
        return (" `--shared`: the (B, d) batch as ONE system (`batch_mode=\"shared\"`: one "
                f"step size, the error norm over the whole batch; the {fields} fields on the "
                "(B, d) array); diffrax: `jit` of one solve of the (B, d) state, no `vmap`.")
    if meta.get("vectorized"):
        return (" diffsolve: `--vectorized`, `batch_mode=\"vectorized\"` with the fields and "
                "VJPs in NumPy for a (B, d) batch (one call per stage on the whole batch); "
                "'before': the same NumPy fields with the default per-trajectory batch "
                "(`--numpy-loop`).")
    if meta.get("numpy_loop"):
        return (" diffsolve: `--numpy-loop`, the fields and VJPs in NumPy with the default "
                "`batch_mode=\"per-trajectory\"` (one Python-driven solve per trajectory).")
    return ""


def _numba_threads() -> int:
    import numba

    return int(numba.get_num_threads())


if __name__ == "__main__":
    main()
