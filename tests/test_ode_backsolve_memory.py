"""What odeint's forward pass keeps for the backward rule: the backsolve adjoint stores only
y0 and the outputs (independent of the number of steps), the discrete adjoint every k-th
accepted state; backsolve still agrees with the discrete adjoint; regularisers refuse
backsolve."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import diffsolve as ds
from diffsolve.ode import odeint
from tests.lotka_volterra import lv, lv_jit

P = np.array([1.5, 1.0, 3.0, 1.0])
Y0 = np.array([1.0, 1.2])
T_EVAL = np.linspace(0.0, 2.0, 5)


def lv_vjp(t, y, p, v):
    vy = np.array([v[0] * (p[0] - p[1] * y[1]) + v[1] * p[3] * y[1],
                   -v[0] * p[1] * y[0] + v[1] * (-p[2] + p[3] * y[0])])
    vp = np.array([v[0] * y[0], -v[0] * y[0] * y[1], -v[1] * y[1], v[1] * y[0] * y[1]])
    return vy, vp


def lv_batch(t, y, p):
    x, z = y[:, 0], y[:, 1]
    return np.stack([p[0] * x - p[1] * x * z, -p[2] * z + p[3] * x * z], axis=1)


def lv_batch_vjp(t, y, p, v):
    x, z = y[:, 0], y[:, 1]
    vx, vz = v[:, 0], v[:, 1]
    vy = np.stack([vx * (p[0] - p[1] * z) + vz * p[3] * z,
                   -vx * p[1] * x + vz * (-p[2] + p[3] * x)], axis=1)
    vp = np.array([np.sum(vx * x), -np.sum(vx * x * z), -np.sum(vz * z), np.sum(vz * x * z)])
    return vy, vp


def residual_arrays(obj) -> list[np.ndarray]:
    """Every distinct NumPy array reachable from the residual object (no functions)."""
    seen: set[int] = set()
    found: dict[int, np.ndarray] = {}

    def walk(o):
        if id(o) in seen or callable(o):  # f, its VJP, rhs wrappers: no per-step data
            return
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            found[id(o)] = o
            if o.base is not None:
                walk(o.base)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
        elif dataclasses.is_dataclass(o) and not isinstance(o, type):
            for fld in dataclasses.fields(o):
                walk(getattr(o, fld.name))
        elif type(o).__module__.startswith("diffsolve") and hasattr(o, "__dict__"):
            for v in vars(o).values():
                walk(v)

    walk(obj)
    return list(found.values())


def residual_bytes(obj) -> int:
    return sum(a.nbytes for a in residual_arrays(obj))


def fixed_steps(n: int) -> np.ndarray:
    return np.linspace(T_EVAL[0], T_EVAL[-1], n + 1)


@pytest.mark.parametrize("f, kw", [(lv, {}), (lv, {"vjp": lv_vjp}),
                                   (lv_jit, {"vjp": lv_vjp})],
                         ids=["autograd", "python-vjp", "njit-f"])
def test_backsolve_residuals_do_not_grow_with_steps(f, kw):
    sizes = {}
    for n in (50, 500):
        res, fwd = odeint.fwd(f, Y0, T_EVAL, P, adjoint="backsolve", step_ts=fixed_steps(n), **kw)
        assert res.n_accepted == n and res.ts.shape == (n + 1,)  # the caller keeps ts
        (traj,) = fwd.trajs
        assert list(traj.states) == [0] and traj.all_states is None
        assert traj.ts.shape[0] == 0 and traj.errs.shape[0] == 0
        sizes[n] = residual_bytes(fwd)
    assert sizes[50] == sizes[500]
    # the discrete adjoint on the same runs holds every accepted state: grows ~10x
    disc = {n: residual_bytes(odeint.fwd(f, Y0, T_EVAL, P, step_ts=fixed_steps(n), **kw)[1])
            for n in (50, 500)}
    assert disc[500] - disc[50] >= 450 * Y0.nbytes
    assert sizes[500] < disc[500] / 5


def test_backsolve_residuals_of_a_shared_batch_are_outputs_and_y0():
    Y = 1.0 + 0.2 * np.random.default_rng(0).random((8, 2))
    kw = dict(batch_mode="shared", vjp=lv_batch_vjp, adjoint="backsolve")
    b = {n: residual_bytes(odeint.fwd(lv_batch, Y, T_EVAL, P, step_ts=fixed_steps(n), **kw)[1])
         for n in (50, 500)}
    assert b[50] == b[500]
    # outputs + y0 + the stage buffers and tableau: a few multiples of T·n, not N·n
    assert b[500] < 20 * (len(T_EVAL) + 1) * Y.nbytes


@pytest.mark.parametrize("k", [1, 4, 16])
def test_discrete_checkpoints_every_k_steps(k):
    for n in (64, 500):
        _, fwd = odeint.fwd(lv, Y0, T_EVAL, P, step_ts=fixed_steps(n), checkpoint_every=k)
        (traj,) = fwd.trajs
        assert sorted(traj.states) == list(range(0, n + 1, k))  # about n / k states
        assert len(traj.states) == n // k + 1


def test_compiled_discrete_keeps_all_states_only_with_k_1():
    _, fwd = odeint.fwd(lv_jit, Y0, T_EVAL, P, step_ts=fixed_steps(100), vjp=lv_vjp)
    assert fwd.trajs[0].all_states.shape == (101, 2)
    _, fwd = odeint.fwd(lv_jit, Y0, T_EVAL, P, step_ts=fixed_steps(100), vjp=lv_vjp,
                    checkpoint_every=10)
    assert fwd.trajs[0].all_states is None and len(fwd.trajs[0].states) == 11


@pytest.mark.parametrize("f", [lv, lv_jit], ids=["autograd", "njit-f"])
def test_backsolve_gradient_matches_discrete(f, rng):
    W = rng.standard_normal((len(T_EVAL), 2))
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-10, vjp=lv_vjp)
    res_b, vb = ds.vjp(odeint, f, Y0, T_EVAL, P, adjoint="backsolve", **kw)
    res_d, vd = ds.vjp(odeint, f, Y0, T_EVAL, P, checkpoint_every=8, **kw)
    np.testing.assert_array_equal(res_b.ys, res_d.ys)  # same forward solve
    for b, d in zip(vb(ys=W), vd(ys=W)):
        np.testing.assert_allclose(b, d, rtol=1e-6, atol=1e-9)


def test_backsolve_is_checkpoint_independent(rng):
    W = rng.standard_normal((len(T_EVAL), 2))
    g = [ds.vjp(odeint, lv, Y0, T_EVAL, P, adjoint="backsolve", checkpoint_every=k)[1](ys=W)
         for k in (1, 7)]
    for a, b in zip(*g):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kw", [dict(regularizers=("error",)),
                                dict(regularizers="stiffness"),
                                dict(regularizers=("error",), local_regularization="unbiased"),
                                dict(regularizers=("stiffness",), local_regularization="biased")])
def test_regularizers_refuse_backsolve(kw):
    with pytest.raises(ValueError, match=r"odeint.*regularizers.*adjoint='discrete'") as exc:
        odeint(lv, Y0, T_EVAL, P, adjoint="backsolve", **kw)
    if "local_regularization" in kw:
        assert "local_regularization" in str(exc.value)


def test_local_regularization_alone_needs_regularizers():
    with pytest.raises(ValueError, match="local_regularization='unbiased' needs regularizers"):
        odeint(lv, Y0, T_EVAL, P, adjoint="backsolve", local_regularization="unbiased")
