"""``batch_mode="vectorized"``: a batch of independent trajectories advanced together, one
call of ``f`` on the whole batch per stage (diffsolve/ode/_vectorized.py) and the batched
discrete adjoint (diffsolve/ode/_vectorized_adjoint.py).

Each row must take exactly the steps of its own solve. For a field whose batched
evaluation is elementwise (the same floating-point operations per row as on one state) the
step times are bitwise those of ``batch_mode="per-trajectory"`` and the outputs agree to
1e-12; a field with matrix products (BLAS sums rows in another order) agrees to the
tolerance. Gradients: against the per-trajectory discrete adjoint and against central
differences on the frozen steps.
"""

from __future__ import annotations

import autograd.numpy as anp
import numpy as np
import pytest

import diffsolve as ds
from diffsolve import NotTraceableError
from diffsolve.ode import odeint

TOL = 1e-12


def lv(t, y, p):
    """Lotka–Volterra for one state (d,) or a batch (B, d)."""
    x, z = y[..., 0], y[..., 1]
    return np.stack([p[0] * x - p[1] * x * z, -p[2] * z + p[3] * x * z], axis=-1)


def lv_vjp(t, y, p, v):
    x, z = y[..., 0], y[..., 1]
    a, b = v[..., 0], v[..., 1]
    vy = np.stack([a * (p[0] - p[1] * z) + b * p[3] * z,
                   -a * p[1] * x + b * (-p[2] + p[3] * x)], axis=-1)
    vp = np.array([np.sum(a * x), -np.sum(a * x * z), -np.sum(b * z), np.sum(b * x * z)])
    return vy, vp


def lv_ag(t, y, p):
    x, z = y[..., 0], y[..., 1]
    return anp.stack([p[0] * x - p[1] * x * z, -p[2] * z + p[3] * x * z], axis=-1)


def forced(t, y, p):
    """Time-dependent: t is a scalar for one state, a (B, 1) column for a batch."""
    return -p[0] * y + np.sin(3.0 * t) * np.ones_like(y)


P_LV = np.array([1.5, 1.0, 3.0, 1.0])


def _batch(n_rows, seed=0):
    return 1.0 + 0.2 * np.random.default_rng(seed).uniform(-1, 1, (n_rows, 2))


def _same_solves(res, ref, exact_steps=True, atol=TOL):
    assert res.status == ref.status
    if exact_steps:
        assert (res.n_steps, res.n_accepted, res.n_rejected, res.nfe) == \
            (ref.n_steps, ref.n_accepted, ref.n_rejected, ref.nfe)
        for a, b in zip(res.ts, ref.ts):
            np.testing.assert_array_equal(a, b)
    else:
        # BLAS sums a batch's rows in another order than one row: the embedded error
        # estimate (a small difference of O(1) slopes) moves in its 4th digit, so the
        # steps differ slightly and the outputs agree to the tolerance
        assert abs(res.n_accepted - ref.n_accepted) <= 0.05 * ref.n_accepted
    np.testing.assert_allclose(res.ys, ref.ys, rtol=0, atol=atol)


@pytest.mark.parametrize("method", ["tsit5", "dopri5", "bs3"])
@pytest.mark.parametrize("controller", ["pi", "i"])
def test_rows_take_the_steps_of_their_own_solves(method, controller):
    Y0 = _batch(9)
    t = np.linspace(0.0, 8.0, 17)
    kw = dict(method=method, controller=controller, rtol=1e-7, atol=1e-10)
    res = odeint(lv, Y0, t, P_LV, batch_mode="vectorized", **kw)
    ref = odeint(lv, Y0, t, P_LV, **kw)
    _same_solves(res, ref)
    assert res.converged and res.ys.shape == (17, 9, 2)


def test_array_path_equals_the_row_kernels(monkeypatch):
    # CuPy states run the array expressions instead of the row kernels: the same steps
    # and, to rounding of the dense outputs, the same outputs and gradients (run on NumPy)
    import diffsolve.ode._vectorized as V

    Y0 = _batch(7)
    t = np.linspace(0.0, 5.0, 150)  # several outputs inside most steps
    W = np.random.default_rng(4).standard_normal((150, 7, 2))
    res, pull = ds.vjp(odeint, lv, Y0, t, P_LV, vjp=lv_vjp, batch_mode="vectorized")
    grads = pull(ys=W)
    monkeypatch.setattr(V, "ROW_KERNELS", False)
    res2, pull2 = ds.vjp(odeint, lv, Y0, t, P_LV, vjp=lv_vjp, batch_mode="vectorized")
    _same_solves(res2, res, atol=1e-13)
    for g, g_ref in zip(pull2(ys=W), grads):
        np.testing.assert_allclose(g, g_ref, rtol=1e-11, atol=1e-12)


def rotation(t, y, p):
    """Rows (u, v, k) that rotate at their own rate k (k' = 0): a row's step count grows
    with k, so the rows of a batch finish at very different iterations."""
    u, v, k = y[..., 0], y[..., 1], y[..., 2]
    return np.stack([p[0] * k * v, -p[0] * k * u, 0.0 * k], axis=-1)


def rotation_vjp(t, y, p, w):
    u, v, k = y[..., 0], y[..., 1], y[..., 2]
    a, b = w[..., 0], w[..., 1]
    vy = np.stack([-b * p[0] * k, a * p[0] * k, p[0] * (a * v - b * u)], axis=-1)
    return vy, np.array([np.sum(a * k * v - b * k * u)])


@pytest.mark.parametrize("row_kernels", [True, False])
def test_finished_rows_leave_the_field_calls(monkeypatch, row_kernels):
    # once a fifth of the rows have finished, f sees the running rows only: the same steps,
    # outputs and gradients as every row's own solve
    import diffsolve.ode._vectorized as V

    monkeypatch.setattr(V, "ROW_KERNELS", row_kernels)
    rng = np.random.default_rng(7)
    n_rows = 12
    Y0 = np.column_stack([rng.standard_normal(n_rows), rng.standard_normal(n_rows),
                          np.geomspace(0.5, 30.0, n_rows)])
    t = np.linspace(0.0, 3.0, 31)
    p = np.array([1.0])
    sizes = []

    def counted(t_, y, p_):
        sizes.append(y.shape[0])
        return rotation(t_, y, p_)

    W = rng.standard_normal((31, n_rows, 3))
    res, pull = ds.vjp(odeint, counted, Y0, t, p, vjp=rotation_vjp, batch_mode="vectorized")
    ref, pull_ref = ds.vjp(odeint, rotation, Y0, t, p, vjp=rotation_vjp)
    _same_solves(res, ref, atol=1e-13 if row_kernels else 1e-12)
    assert min(sizes) < 0.8 * n_rows and sizes.count(n_rows) < len(sizes)
    for g, g_ref in zip(pull(ys=W), pull_ref(ys=W)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-12)


def test_backwards_in_time_and_time_dependent_field():
    Y0 = _batch(5)
    t = np.linspace(2.0, -1.0, 9)  # decreasing
    p = np.array([0.7])
    res = odeint(forced, Y0, t, p, batch_mode="vectorized")
    ref = odeint(forced, Y0, t, p)
    _same_solves(res, ref)


def test_first_step_and_the_output_at_the_initial_time():
    Y0 = _batch(4)
    t = np.array([0.0, 0.5, 3.0])
    res = odeint(lv, Y0, t, P_LV, batch_mode="vectorized", first_step=0.01)
    ref = odeint(lv, Y0, t, P_LV, first_step=0.01)
    _same_solves(res, ref)
    np.testing.assert_array_equal(res.ys[0], Y0)


def test_matrix_product_field_agrees_to_the_tolerance():
    rng = np.random.default_rng(1)
    W1, W2 = rng.standard_normal((8, 4)) / 2, rng.standard_normal((4, 8)) / 3

    def mlp(t, y, p):
        return np.tanh(y @ W1.T) @ W2.T

    Y0 = rng.standard_normal((16, 4))
    t = np.linspace(0.0, 2.0, 5)
    res = odeint(mlp, Y0, t, None, batch_mode="vectorized")
    ref = odeint(mlp, Y0, t, None)
    assert res.converged
    _same_solves(res, ref, exact_steps=False, atol=1e-6)


def test_float32_state_keeps_its_dtype():
    Y0 = _batch(6).astype(np.float32)
    t = np.linspace(0.0, 2.0, 5)
    res = odeint(lv, Y0, t, P_LV.astype(np.float32), batch_mode="vectorized")
    ref = odeint(lv, Y0, t, P_LV.astype(np.float32))
    assert res.ys.dtype == np.float32 and res.converged
    np.testing.assert_allclose(res.ys, ref.ys, rtol=1e-5, atol=1e-5)


def blowup(t, y, p):
    return p[0] * y * y


def test_a_failing_row_is_reported_and_the_others_finish():
    # y' = y²: y0 = 1 blows up at t = 1, inside [0, 2]; y0 = 0.1 and -1 do not
    Y0 = np.array([[0.1], [1.0], [-1.0]])
    t = np.linspace(0.0, 2.0, 5)
    with pytest.warns(ds.ConvergenceWarning, match="trajectory 1"):
        res = odeint(blowup, Y0, t, np.array([1.0]), batch_mode="vectorized")
    with pytest.warns(ds.ConvergenceWarning, match="trajectory 1"):
        ref = odeint(blowup, Y0, t, np.array([1.0]))
    assert res.status == ref.status and not res.converged
    np.testing.assert_array_equal(res.ts[0], ref.ts[0])
    np.testing.assert_array_equal(res.ts[1], ref.ts[1])
    np.testing.assert_allclose(res.ys, ref.ys, atol=TOL)
    assert np.all(np.isnan(res.ys[3:, 1])) and np.all(np.isfinite(res.ys[:, [0, 2]]))
    # a cotangent on an output the failed row never reached: its gradients are NaN
    with pytest.warns(ds.ConvergenceWarning):
        _, pull = ds.vjp(odeint, blowup, Y0, t, np.array([1.0]), batch_mode="vectorized",
                         vjp=lambda t, y, p, v: (2 * p[0] * y * v,
                                                 np.array([np.sum(y * y * v)])))
    gy, _, gp = pull(ys=np.ones((5, 3, 1)))
    assert np.isnan(gy[1, 0]) and np.isnan(gp[0])
    assert np.all(np.isfinite(gy[[0, 2]]))


def test_max_steps_per_row_and_throw():
    Y0 = _batch(3)
    t = np.linspace(0.0, 10.0, 3)
    with pytest.warns(ds.ConvergenceWarning, match="max_steps=20"):
        res = odeint(lv, Y0, t, P_LV, batch_mode="vectorized", max_steps=20)
    with pytest.warns(ds.ConvergenceWarning, match="max_steps=20"):
        ref = odeint(lv, Y0, t, P_LV, max_steps=20)
    assert res.status == ref.status
    assert res.n_steps == ref.n_steps == 60
    with pytest.raises(ds.MaxIterationsError):
        odeint(lv, Y0, t, P_LV, batch_mode="vectorized", max_steps=20, throw=True)


def test_nonfinite_start_stops_that_row():
    Y0 = np.array([[1.0, 1.0], [np.inf, 1.0]])
    with pytest.raises(ValueError):  # y0 itself is checked first
        odeint(lv, Y0, [0.0, 1.0], P_LV, batch_mode="vectorized")

    def f(t, y, p):
        return np.where(y > 5.0, np.nan, -y)

    Y0 = np.array([[1.0], [6.0]])
    with pytest.warns(ds.ConvergenceWarning, match="trajectory 1"):
        res = odeint(f, Y0, [0.0, 1.0], None, batch_mode="vectorized")
    assert res.status == ds.Status.NONFINITE
    np.testing.assert_allclose(res.ys[-1, 0, 0], np.exp(-1.0), rtol=1e-5)


# -- gradients ------------------------------------------------------------------------
@pytest.mark.parametrize("vjp", [lv_vjp, None], ids=["vjp", "autograd"])
def test_batched_adjoint_matches_the_per_trajectory_adjoint(vjp):
    f = lv if vjp is not None else lv_ag
    Y0 = _batch(6)
    t = np.linspace(0.0, 4.0, 9)
    W = np.random.default_rng(2).standard_normal((9, 6, 2))
    _, pull = ds.vjp(odeint, f, Y0, t, P_LV, vjp=vjp, batch_mode="vectorized")
    _, pull_ref = ds.vjp(odeint, f, Y0, t, P_LV, vjp=vjp)
    for g, g_ref in zip(pull(ys=W), pull_ref(ys=W)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-11)


def test_batched_adjoint_matches_central_differences():
    # the discrete adjoint is the exact derivative with the step times frozen: the
    # perturbed solves replay each row's steps (step_ts, one row at a time)
    Y0 = _batch(3)
    t = np.linspace(0.0, 3.0, 7)
    res, pull = ds.vjp(odeint, lv, Y0, t, P_LV, vjp=lv_vjp, batch_mode="vectorized")
    W = np.random.default_rng(3).standard_normal(res.ys.shape)
    gy, _, gp = pull(ys=W)
    steps = list(res.ts)

    def loss(Y, q):
        return float(np.sum(W * odeint(lv, Y, t, q, step_ts=steps).ys))

    eps = 1e-6
    fd_p = [(loss(Y0, P_LV + eps * e) - loss(Y0, P_LV - eps * e)) / (2 * eps)
            for e in np.eye(4)]
    np.testing.assert_allclose(gp, fd_p, rtol=1e-6, atol=1e-7)
    fd_y = np.zeros_like(Y0)
    for b in range(3):
        for i in range(2):
            E = np.zeros_like(Y0)
            E[b, i] = eps
            fd_y[b, i] = (loss(Y0 + E, P_LV) - loss(Y0 - E, P_LV)) / (2 * eps)
    np.testing.assert_allclose(gy, fd_y, rtol=1e-6, atol=1e-7)


def test_backsolve_adjoint_works_row_by_row():
    Y0 = _batch(3)
    t = np.linspace(0.0, 2.0, 5)
    W = np.ones((5, 3, 2))
    _, pull = ds.vjp(odeint, lv, Y0, t, P_LV, vjp=lv_vjp, batch_mode="vectorized",
                     adjoint="backsolve")
    _, pull_ref = ds.vjp(odeint, lv, Y0, t, P_LV, vjp=lv_vjp, adjoint="backsolve")
    for g, g_ref in zip(pull(ys=W), pull_ref(ys=W)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)


def test_plain_numpy_field_without_vjp_is_refused_not_zero():
    Y0 = _batch(3)
    _, pull = ds.vjp(odeint, lv, Y0, [0.0, 1.0], P_LV, batch_mode="vectorized")
    with pytest.raises(NotTraceableError):
        pull(ys=np.ones((2, 3, 2)))


# -- the contract ------------------------------------------------------------------------
def test_a_field_that_is_not_row_wise_is_refused():
    def one_state(t, y, p):  # written for y of shape (2,): indexes rows, not components
        return np.stack([p[0] * y[0] - p[1] * y[0] * y[1],
                         -p[2] * y[1] + p[3] * y[0] * y[1]])

    with pytest.raises(ValueError, match="per-trajectory|shape"):
        odeint(one_state, _batch(2), [0.0, 1.0], P_LV, batch_mode="vectorized")

    def mixes_rows(t, y, p):
        return -y + np.mean(y, axis=0)

    with pytest.raises(ValueError, match="not row-wise"):
        odeint(mixes_rows, _batch(4), [0.0, 1.0], P_LV, batch_mode="vectorized")


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="kvaerno5"), "explicit methods"),
    (dict(method="auto"), "explicit methods"),
    (dict(regularizers=("error",)), "regularizers"),
    (dict(callback=lambda s: None), "callback"),
    (dict(checkpoint_every=4), "checkpoint_every"),
    (dict(step_ts=[np.linspace(0, 1, 5)] * 3), "step_ts"),
    (dict(jump_ts=[0.5]), "jump_ts"),
    (dict(rtol=0.0, atol=0.0), "fixed budget"),
])
def test_options_it_does_not_take_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        odeint(lv, _batch(3), [0.0, 1.0], P_LV, batch_mode="vectorized", **kwargs)


def test_one_state_is_refused():
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        odeint(lv, np.array([1.0, 1.0]), [0.0, 1.0], P_LV, batch_mode="vectorized")


@pytest.mark.gpu
def test_cupy_vectorized_matches_numpy():
    cupy = pytest.importorskip("cupy")
    Y0 = _batch(7)
    t = np.linspace(0.0, 3.0, 6)

    def lv_any(t, y, p):
        x, z = y[..., 0], y[..., 1]
        xp = cupy if isinstance(y, cupy.ndarray) else np
        return xp.stack([p[0] * x - p[1] * x * z, -p[2] * z + p[3] * x * z], axis=-1)

    res = odeint(lv_any, cupy.asarray(Y0), t, cupy.asarray(P_LV), batch_mode="vectorized")
    ref = odeint(lv_any, Y0, t, P_LV, batch_mode="vectorized")
    assert isinstance(res.ys, cupy.ndarray)
    np.testing.assert_allclose(res.ys.get(), ref.ys, rtol=1e-9, atol=1e-11)
    assert res.n_steps == ref.n_steps


def test_from_torch_field_on_the_whole_batch():
    torch = pytest.importorskip("torch")
    from diffsolve.ode import from_torch

    gen = torch.Generator().manual_seed(0)
    W1 = torch.randn(16, 4, generator=gen, dtype=torch.float64) / 4
    W2 = torch.randn(4, 16, generator=gen, dtype=torch.float64) / 4

    def field(t, y, p):  # t: a float for one state, a (B, 1) tensor for the batch
        return torch.tanh(y @ W1.T) @ W2.T * p[0] + 0.1 * torch.sin(torch.as_tensor(t))

    f, vjp = from_torch(field)
    _agrees_to_the_tolerance(f, vjp, np.random.default_rng(0).standard_normal((6, 4)),
                             np.linspace(0.0, 1.0, 5), np.array([1.3]))


def _agrees_to_the_tolerance(f, vjp, Y0, t, p):
    """Forward and gradients of the vectorised batch against the per-trajectory one, for
    a field with matrix products: the rows' steps differ from their own solves' in the
    error estimate's last digits, so the two agree to the tolerance (rtol 1e-6)."""
    res, pull = ds.vjp(odeint, f, Y0, t, p, vjp=vjp, batch_mode="vectorized")
    ref, pull_ref = ds.vjp(odeint, f, Y0, t, p, vjp=vjp)
    np.testing.assert_allclose(res.ys, ref.ys, atol=1e-6)
    W = np.random.default_rng(1).standard_normal(res.ys.shape)
    for g, g_ref in zip(pull(ys=W), pull_ref(ys=W)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)


@pytest.fixture
def jax_x64():
    jax = pytest.importorskip("jax")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", before)


def test_from_jax_field_and_to_autograd(jax_x64):
    import autograd
    import jax.numpy as jnp

    from diffsolve.ode import from_jax

    W = jnp.asarray(np.random.default_rng(0).standard_normal((4, 4)) / 3)

    def field(t, y, p):  # t: (B, 1) for the batch
        return jnp.tanh(y @ W.T) * p[0] + 0.1 * jnp.sin(t)

    f, vjp = from_jax(field)
    t = np.linspace(0.0, 1.0, 4)
    _agrees_to_the_tolerance(f, vjp, np.random.default_rng(1).standard_normal((5, 4)), t,
                             np.array([1.2]))

    # odeint inside an autograd program
    solve = ds.to_autograd(odeint)

    def loss(q, mode):
        return anp.sum(solve(lv_ag, _batch(4), t, q, batch_mode=mode).ys ** 2)

    g_vec = autograd.grad(loss)(P_LV, "vectorized")
    g_loop = autograd.grad(loss)(P_LV, "per-trajectory")
    np.testing.assert_allclose(g_vec, g_loop, rtol=1e-10)
