"""ConvDirectionModel(coefficient_channel=True): the matrix diagonal as an input channel with
Jacobi scaling on both sides. Forward against the formula written out, backward against
finite differences, A's own diagonal bound by linear.solve, invariance under scaling A,
training on a family of coefficient fields, argument errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse.linalg as spla

from bench.train_dcdm_weights import diffusion2d, lognormal_field, obstacle_mask, poisson2d
from diffsolve.linear import (
    ConvDirectionModel,
    load_direction_model,
    solve,
    train_direction_model,
)
from tests.test_direction_training_family import held_out_loss


def _model(**kw):
    kw.setdefault("channels", 3)
    kw.setdefault("n_blocks", 1)
    model = ConvDirectionModel(2, dtype="float64", seed=2, coefficient_channel=True, **kw)
    rng = np.random.default_rng(8)
    model.params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in model.params.items()}
    return model


@pytest.mark.parametrize("with_mask", [False, True])
def test_forward_is_the_jacobi_scaled_network_of_the_log_diagonal(rng, with_mask):
    s = 9
    mask = obstacle_mask(s, seed=3) if with_mask else None
    k = lognormal_field(s, 1.0, seed=4)
    A = diffusion2d(k) if mask is None else poisson2d(s, mask)
    d = A.diagonal()
    model = _model(levels=2, mask=mask).on_grid((s, s), mask, coefficient=d)
    assert model.params["in.w"].shape[1] == (3 if with_mask else 2)
    n = A.shape[0]
    r = rng.standard_normal((n, 2))
    # the formula written out: scale, normalise, scatter to the grid, channels, network
    v = r / np.sqrt(d)[:, None]
    v = v / np.sqrt(np.mean(v * v, axis=0))
    cells = np.zeros((2, s * s))
    where = np.flatnonzero(mask.ravel()) if with_mask else np.arange(s * s)
    cells[:, where] = v.T
    logd = np.zeros(s * s)
    logd[where] = np.log(d) - np.log(d).mean()
    channels = [cells.reshape(2, 1, 1, s, s)]
    if with_mask:
        channels.append(np.broadcast_to(mask.reshape(1, 1, 1, s, s).astype(float),
                                        (2, 1, 1, s, s)))
    channels.append(np.broadcast_to(logd.reshape(1, 1, 1, s, s), (2, 1, 1, s, s)))
    out = model.forward_grid(np.concatenate(channels, axis=1)).reshape(2, -1)[:, where].T
    np.testing.assert_allclose(model.forward(r), out / np.sqrt(d)[:, None], rtol=1e-12,
                               atol=1e-13)


def test_backward_matches_finite_differences(rng):
    s = 7
    A = diffusion2d(lognormal_field(s, 1.5, seed=1), neumann=("left",))
    model = _model(levels="auto", shared_levels=True, grid_shape=(s, s)).on_grid(
        (s, s), coefficient=A.diagonal())
    r = rng.standard_normal((s * s, 2))
    g = rng.standard_normal((s * s, 2))
    _, cache = model.forward(r, keep=True)
    grads = model.backward(cache, g)
    base = dict(model.params)
    for name in ("in.w", "in.b", "fine_in0.w1", "coarse0.w2", "out.w", "out.b"):
        d = rng.standard_normal(base[name].shape)

        def f(t, name=name, d=d):
            model.params = dict(base, **{name: base[name] + t * d})
            return float(np.sum(g * model.forward(r)))

        fd = (f(1e-6) - f(-1e-6)) / 2e-6
        np.testing.assert_allclose(np.sum(grads[name] * d), fd, rtol=1e-6, atol=1e-9,
                                   err_msg=name)
    model.params = base


def test_scaling_the_matrix_scales_the_direction_only(rng):
    s = 8
    A = diffusion2d(lognormal_field(s, 1.0, seed=2))
    model = _model(levels=2).on_grid((s, s))
    r = rng.standard_normal(s * s)
    q1 = model.on_grid((s, s), coefficient=A.diagonal())(r)
    q2 = model.on_grid((s, s), coefficient=7.0 * A.diagonal())(r)
    np.testing.assert_allclose(q2, q1 / np.sqrt(7.0), rtol=1e-10)


def _solve(*args, **kw):
    """solve, with the fallback warnings of an untrained model recorded (not silenced)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = solve(*args, **kw)
    return res, [str(w.message)[:120] for w in caught]


def test_solve_binds_the_diagonal_of_a(rng):
    s = 12
    A = diffusion2d(lognormal_field(s, 1.5, seed=5), neumann=("top", "right"))
    b = rng.standard_normal(s * s)
    model = _model(levels=2).astype("float32").on_grid((s, s))
    res, w = _solve(A, b, method="dcdm", model=model, rtol=1e-8)
    ref, w_ref = _solve(A, b, method="dcdm",
                        model=model.on_grid((s, s), coefficient=A.diagonal()), rtol=1e-8)
    assert res.converged and res.n_iters == ref.n_iters and w == w_ref
    np.testing.assert_array_equal(res.x, ref.x)
    np.testing.assert_allclose(A @ res.x, b, atol=1e-6 * np.linalg.norm(b))
    # a diagonal bound for another matrix is replaced by A's own
    stale = model.on_grid((s, s), coefficient=np.ones(s * s))
    again, _ = _solve(A, b, method="dcdm", model=stale, rtol=1e-8)
    np.testing.assert_array_equal(again.x, res.x)
    # a LinearOperator has no diagonal: the bound one is used, or a clear error (and it has
    # no entries to smooth with, so both sides run without the smoother)
    op = spla.aslinearoperator(A)
    bound, _ = _solve(op, b, method="dcdm",
                      model=model.on_grid((s, s), coefficient=A.diagonal()), rtol=1e-8)
    unsmoothed, _ = _solve(A, b, method="dcdm", model=model, rtol=1e-8, smoother=None)
    np.testing.assert_allclose(bound.x, unsmoothed.x, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="LinearOperator, which has no diagonal"):
        solve(op, b, method="dcdm", model=model, rtol=1e-8)


def test_save_load_keeps_the_channel(tmp_path, rng):
    model = _model(levels=2)
    model.save(tmp_path / "c.npz")
    back = load_direction_model(tmp_path / "c.npz")
    assert back.coefficient_channel and back.config() == model.config()
    d = np.linspace(1.0, 3.0, 25)
    r = rng.standard_normal(25)
    np.testing.assert_array_equal(back.on_grid((5, 5), coefficient=d)(r),
                                  model.on_grid((5, 5), coefficient=d)(r))


def test_training_on_coefficient_fields_generalises_to_an_unseen_field():
    s = 16
    fields = [lognormal_field(s, 1.5, seed=k) for k in range(3)]
    As = [diffusion2d(kf) for kf in fields]
    kw = dict(channels=6, n_blocks=1, batch_size=8, n_ritz=60, progress=False, seed=1,
              levels=2, coefficient_channel=True)
    before = train_direction_model(As, [(s, s)] * 3, n_steps=1, lr=1e-9, **kw).model
    after = train_direction_model(As, [(s, s)] * 3, n_steps=120, lr=3e-3, **kw).model
    unseen = diffusion2d(lognormal_field(s, 1.5, seed=9), neumann=("left",))

    lb, la = held_out_loss(before, unseen, (s, s)), held_out_loss(after, unseen, (s, s))
    assert np.isfinite(la) and la < 0.3 * lb, (lb, la)


def test_errors(rng):
    plain = ConvDirectionModel(2, channels=2)
    with pytest.raises(ValueError, match="no coefficient channel"):
        plain.on_grid((4, 4), coefficient=np.ones(16))
    model = ConvDirectionModel(2, channels=2, coefficient_channel=True)
    with pytest.raises(ValueError, match=r"shape \(16,\) for the grid \(4, 4\), got \(4, 4\)"):
        model.on_grid((4, 4), coefficient=np.ones((4, 4)))
    with pytest.raises(ValueError, match="positive and finite"):
        model.on_grid((4, 4), coefficient=np.r_[np.ones(15), 0.0])
    with pytest.raises(ValueError, match="positive and finite"):
        model.on_grid((4, 4), coefficient=np.r_[np.ones(15), np.nan])
    with pytest.raises(ValueError, match="no matrix diagonal is bound"):
        model.on_grid((4, 4))(rng.standard_normal(16))
    with pytest.raises(ValueError, match="coefficient_channel must be True or False"):
        ConvDirectionModel(2, coefficient_channel=1)


def test_diffusion2d_is_the_finite_volume_operator():
    """The benchmark's problem generator: Poisson for k = 1, harmonic face means, Neumann
    walls remove the wall face, symmetric positive definite."""
    s = 6
    np.testing.assert_array_equal(diffusion2d(np.ones((s, s))).toarray(),
                                  poisson2d(s).toarray())
    k = lognormal_field(s, 1.0, seed=3)
    A = diffusion2d(k, neumann=("left",)).toarray()
    np.testing.assert_array_equal(A, A.T)
    assert np.linalg.eigvalsh(A).min() > 0
    i, j = 2 * s + 3, 2 * s + 4  # cells (2, 3) and (2, 4): horizontal neighbours
    np.testing.assert_allclose(-A[i, j], 2 * k[2, 3] * k[2, 4] / (k[2, 3] + k[2, 4]))
    # cell (2, 0) on the Neumann left wall: faces to (1, 0), (3, 0), (2, 1) only
    c = 2 * s
    faces = [2 * k[2, 0] * k[r, q] / (k[2, 0] + k[r, q]) for r, q in ((1, 0), (3, 0), (2, 1))]
    np.testing.assert_allclose(A[c, c], sum(faces))
    # cell (0, 3) on the Dirichlet top wall: the row sum is its own k, the wall face
    np.testing.assert_allclose(A[3].sum(), k[0, 3])
    with pytest.raises(ValueError, match="at most three"):
        diffusion2d(k, neumann=("top", "bottom", "left", "right"))


@pytest.mark.gpu
def test_cupy_matches_numpy_with_shared_levels_and_coefficient(rng):
    cupy = pytest.importorskip("cupy")
    import cupyx.scipy.sparse as csp

    s = 19
    A = diffusion2d(lognormal_field(s, 1.2, seed=6), neumann=("bottom",))
    model = _model(levels="auto", shared_levels=True).on_grid((s, s),
                                                             coefficient=A.diagonal())
    r = rng.standard_normal((s * s, 2))
    g = rng.standard_normal((s * s, 2))
    out, cache = model.forward(r, keep=True)
    grads = model.backward(cache, g)
    gpu = model.to(cupy.asarray(r))
    out_gpu, cache_gpu = gpu.forward(cupy.asarray(r), keep=True)
    grads_gpu = gpu.backward(cache_gpu, cupy.asarray(g))
    np.testing.assert_allclose(out_gpu.get(), out, rtol=1e-10, atol=1e-12)
    for k, v in grads.items():
        np.testing.assert_allclose(grads_gpu[k].get(), v, rtol=1e-9, atol=1e-11, err_msg=k)
    # the solve binds the CuPy matrix's own diagonal
    b = rng.standard_normal(s * s)
    cpu, _ = _solve(A, b, method="dcdm", model=model, rtol=1e-8)
    on_gpu, _ = _solve(csp.csr_matrix(A), cupy.asarray(b), method="dcdm", model=gpu,
                       rtol=1e-8)
    assert on_gpu.converged and abs(on_gpu.n_iters - cpu.n_iters) <= 2
    np.testing.assert_allclose(on_gpu.x.get(), cpu.x, rtol=1e-6, atol=1e-8)
