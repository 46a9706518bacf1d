"""ConvDirectionModel: convolution kernels vs naive loops, forward vs a naive network,
backward vs torch autograd, save/load, masks, training and Lanczos data."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from diffsolve.kernels.cpu import conv as cpu_conv
from diffsolve.linear import (
    ConvDirectionModel,
    load_direction_model,
    pretrained_direction_model,
    train_direction_model,
)
from diffsolve.linear._direction_model import conv_same, conv_same_backward
from diffsolve.linear._operator import as_operator
from diffsolve.linear._train_direction import direction_loss, lanczos_ritz
from tests.helpers import poisson_2d, to_numpy
from tests.naive_conv import naive_conv_same, naive_network

SHAPES = [((2, 3, 1, 5, 4), (1, 3, 3)), ((1, 2, 3, 4, 5), (3, 3, 3)), ((1, 1, 1, 1, 1), (1, 3, 3)),
          ((2, 3, 2, 3, 37), (3, 1, 5)), ((1, 2, 1, 4, 9), (1, 1, 1))]


def _tol(dtype):
    return {"rtol": 1e-12, "atol": 1e-12} if dtype == np.float64 else {"rtol": 1e-4, "atol": 1e-5}


@pytest.mark.parametrize("xshape", [(1, 3, 1, 4, 40), (1, 3, 1, 128, 128), (2, 2, 4, 4, 64)])
def test_auto_choice_matches_naive_on_both_sides_of_its_threshold(rng, xshape):
    """conv_same(method="auto") picks the kernel for long rows and much work, im2col
    otherwise; both give the naive convolution."""
    from diffsolve.linear._direction_model import conv_same

    x = rng.standard_normal(xshape)
    w = rng.standard_normal((4, xshape[1], 1 if xshape[2] == 1 else 3, 3, 3))
    b = rng.standard_normal(4)
    np.testing.assert_allclose(conv_same(np, x, w, b, method="auto"), naive_conv_same(x, w, b),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("xshape, ks", SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cpu_kernel_matches_naive(rng, xshape, ks, dtype):
    x = rng.standard_normal(xshape).astype(dtype)
    w = rng.standard_normal((4, xshape[1], *ks)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    out = cpu_conv.conv_same(x, w, b, np.empty((xshape[0], 4, *xshape[2:]), dtype))
    assert out.dtype == dtype
    np.testing.assert_allclose(out, naive_conv_same(x, w, b), **_tol(dtype))


def test_cpu_kernel_rejects_bad_shapes(rng):
    x = np.zeros((1, 2, 1, 4, 4))
    with pytest.raises(ValueError, match="odd"):
        cpu_conv.conv_same(x, np.zeros((3, 2, 1, 2, 2)), np.zeros(3), np.zeros((1, 3, 1, 4, 4)))
    with pytest.raises(ValueError, match="out has shape"):
        cpu_conv.conv_same(x, np.zeros((3, 2, 1, 3, 3)), np.zeros(3), np.zeros((1, 2, 1, 4, 4)))


@pytest.mark.parametrize("xshape, ks", SHAPES[:2])
def test_array_api_conv_and_backward(xp, rng, xshape, ks):
    x = rng.standard_normal(xshape)
    w = rng.standard_normal((3, xshape[1], *ks))
    b = rng.standard_normal(3)
    want = naive_conv_same(x, w, b)
    for method in ("im2col", "kernel"):
        got = conv_same(xp, xp.asarray(x), xp.asarray(w), xp.asarray(b), method=method)
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-12, atol=1e-12)
    # backward: the adjoint identity <g, J(dx, dw, db)> = <gx, dx> + <gw, dw> + <gb, db>
    g = rng.standard_normal(want.shape)
    gx, gw, gb = conv_same_backward(xp, xp.asarray(x), xp.asarray(w), xp.asarray(g))
    dx, dw, db = (rng.standard_normal(a.shape) for a in (x, w, b))
    lhs = np.sum(g * (naive_conv_same(dx, w, np.zeros(3)) + naive_conv_same(x, dw, db)))
    rhs = (np.sum(to_numpy(gx) * dx) + np.sum(to_numpy(gw) * dw) + np.sum(to_numpy(gb) * db))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10)


@pytest.mark.gpu
@pytest.mark.parametrize("xshape, ks", SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_kernel_matches_cpu(rng, xshape, ks, dtype):
    cupy = pytest.importorskip("cupy")
    from diffsolve.kernels.cuda import conv as cuda_conv

    x = rng.standard_normal(xshape).astype(dtype)
    w = rng.standard_normal((4, xshape[1], *ks)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    want = cpu_conv.conv_same(x, w, b, np.empty((xshape[0], 4, *xshape[2:]), dtype))
    out = cupy.empty((xshape[0], 4, *xshape[2:]), dtype)
    got = cuda_conv.conv_same(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), out)
    np.testing.assert_allclose(got.get(), want, **_tol(dtype))


def _model(dim=2, **kw):
    kw.setdefault("channels", 3)
    kw.setdefault("n_blocks", 1)
    model = ConvDirectionModel(dim, dtype="float64", seed=1, **kw)
    # random, non-zero biases and second convolutions so every path is exercised
    rng = np.random.default_rng(5)
    model.params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in model.params.items()}
    return model


@pytest.mark.parametrize("dim, grid", [(2, (5, 7)), (3, (3, 4, 5))])
def test_forward_matches_naive_network(rng, dim, grid):
    model = _model(dim).on_grid(grid)
    r = rng.standard_normal((int(np.prod(grid)), 2))
    got = model.forward(r)
    x = (r / np.sqrt(np.mean(r * r, axis=0))).T.reshape((2, 1) + ((1, *grid) if dim == 2
                                                                 else grid))
    want = naive_network(model.params, x, 1, model.pool).reshape(2, -1).T
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    # the compiled kernel and the im2col GEMM agree on the whole network
    np.testing.assert_allclose(model.forward(r, conv="kernel"), got, rtol=1e-11, atol=1e-11)


def test_forward_in_array_api_strict_matches_numpy(rng):
    xps = pytest.importorskip("array_api_strict")
    model = _model().on_grid((6, 6))
    r = rng.standard_normal(36)
    strict = model.to(xps.asarray(r))
    got = strict(xps.asarray(r))
    np.testing.assert_allclose(to_numpy(got), model(r), rtol=1e-12)
    back = strict.to(r)  # and back to NumPy
    assert all(isinstance(v, np.ndarray) for v in back.params.values())
    np.testing.assert_array_equal(back(r), model(r))


def test_backward_matches_torch_autograd(rng):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    model = _model(channels=3, n_blocks=2).on_grid((6, 5))
    r = rng.standard_normal((30, 2))
    g = rng.standard_normal((30, 2))
    _, cache = model.forward(r, keep=True)
    grads = model.backward(cache, g)

    tp = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}

    def conv(h, w, b):
        return F.conv3d(h, w, b, padding=tuple(k // 2 for k in w.shape[2:]))

    x = torch.tensor(model._grid_input(r))
    # the same network in torch ops (relu, avg_pool3d, nearest upsampling)
    def block(h, name):
        t = conv(torch.relu(h), tp[name + ".w1"], tp[name + ".b1"])
        return h + conv(torch.relu(t), tp[name + ".w2"], tp[name + ".b2"])

    h = conv(x, tp["in.w"], tp["in.b"])
    for i in range(2):
        h = block(h, f"fine_in{i}")
    hp = F.pad(h, (0, 1, 0, 0))  # width 5 -> 6 (zero padding at the high end)
    d = F.avg_pool3d(hp, (1, 2, 2))
    for i in range(2):
        d = block(d, f"coarse{i}")
    up = d.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)[..., :6, :5]
    h = h + up
    for i in range(2):
        h = block(h, f"fine_out{i}")
    out = conv(h, tp["out.w"], tp["out.b"])
    np.testing.assert_allclose(out.detach().numpy().reshape(2, -1).T, model.forward(r),
                               rtol=1e-11, atol=1e-11)
    out.backward(torch.tensor(g.T.reshape(out.shape)))
    for k, v in tp.items():
        np.testing.assert_allclose(grads[k], v.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=k)


def test_mask_gathers_fluid_cells(rng):
    mask = np.ones((6, 6), dtype=bool)
    mask[2:4, 1:3] = False
    model = _model(mask=mask)
    assert model.mask_channel and model.n_unknowns == 32
    r = rng.standard_normal(32)
    grid = model._grid_input(r[:, None])
    assert grid.shape == (1, 2, 1, 6, 6)
    np.testing.assert_array_equal(grid[0, 1, 0], mask.astype(float))
    np.testing.assert_allclose(grid[0, 0, 0][mask], r / np.sqrt(np.mean(r * r)))
    assert np.all(grid[0, 0, 0][~mask] == 0)
    # output gather is the adjoint of the input scatter
    g = rng.standard_normal((32, 1))
    full = model._grid_output_backward(g)
    np.testing.assert_allclose(model._grid_output(full), g)
    with pytest.raises(ValueError, match="mask channel"):
        _model().on_grid((6, 6), mask)


def test_save_load_round_trip(tmp_path, rng):
    model = _model(mask=np.ones((4, 4), dtype=bool))
    path = tmp_path / "m.npz"
    model.save(path, note="test")
    back = load_direction_model(path)
    assert back.config() == model.config() and back.metadata["note"] == "test"
    for k, v in model.params.items():
        np.testing.assert_array_equal(back.params[k], v)
    r = rng.standard_normal(16)
    np.testing.assert_array_equal(back.on_grid((4, 4), np.ones((4, 4), bool))(r),
                                  model(r))
    bad = dict(np.load(path))
    bad["format_version"] = np.asarray(99)
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match="format version 99"):
        load_direction_model(tmp_path / "bad.npz")


def test_pretrained_models_load():
    for name in ("poisson2d-64", "poisson2d-64-obstacles"):
        model = pretrained_direction_model(name)
        assert model.dim == 2 and model.mask_channel == name.endswith("obstacles")
    with pytest.raises(ValueError, match="not shipped"):
        pretrained_direction_model("nope")


def test_lanczos_ritz_values_match_eigh():
    # a perturbed Laplacian: distinct eigenvalues, so one Lanczos run finds all of them
    A = (poisson_2d(6) + sp.diags(np.linspace(0.0, 0.5, 36))).tocsr()
    op, _ = as_operator(A, np.zeros(36), "test")
    vals, vecs = lanczos_ritz(op, 36, seed=0)
    np.testing.assert_allclose(vals, np.linalg.eigvalsh(A.toarray()), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(36), atol=1e-8)
    vals, vecs = lanczos_ritz(op, 10, seed=0)
    assert vecs.shape == (36, 10)
    # the extreme Ritz values converge first
    assert abs(vals[-1] - np.linalg.eigvalsh(A.toarray())[-1]) < 0.05


def test_loss_gradient_matches_finite_differences(rng):
    A = poisson_2d(5)
    op, _ = as_operator(A, np.zeros(25), "test")
    model = _model().on_grid((5, 5))
    b = rng.standard_normal((25, 3))
    b /= np.linalg.norm(b, axis=0)
    loss, cache, g = direction_loss(op, model, b, keep=True)
    grads = model.backward(cache, g)
    name = "fine_in0.w1"
    d = rng.standard_normal(model.params[name].shape)
    base = dict(model.params)

    def f(t):
        model.params = dict(base, **{name: base[name] + t * d})
        return float(direction_loss(op, model, b))

    fd = (f(1e-6) - f(-1e-6)) / 2e-6
    model.params = base
    np.testing.assert_allclose(np.sum(grads[name] * d), fd, rtol=1e-5)
    # scale invariance in q: the loss of 3·N equals the loss of N
    model.params = dict(base, **{"out.w": 3 * base["out.w"], "out.b": 3 * base["out.b"]})
    np.testing.assert_allclose(float(direction_loss(op, model, b)), float(loss), rtol=1e-10)


def test_training_decreases_the_loss():
    A = poisson_2d(8)
    out = train_direction_model(A, (8, 8), channels=4, n_steps=40, batch_size=4, lr=3e-3,
                                n_ritz=32, seed=0, progress=False)
    h = np.asarray(out.loss_history)
    assert len(h) == 40 and np.all(np.isfinite(h))
    assert h[-10:].mean() < 0.8 * h[:5].mean()
    assert out.model.grid_shape == (8, 8)


def test_training_is_seeded():
    A = poisson_2d(4)
    runs = [train_direction_model(A, (4, 4), channels=2, n_steps=3, batch_size=2, n_ritz=8,
                                  seed=3, progress=False).loss_history for _ in range(2)]
    assert runs[0] == runs[1]


def test_training_with_mask_and_progress_bar(capsys):
    mask = np.ones((6, 6), dtype=bool)
    mask[2:4, 2:4] = False
    from bench.train_dcdm_weights import poisson2d

    A = poisson2d(6, mask)
    out = train_direction_model(A, (6, 6), mask=mask, channels=2, n_steps=2, batch_size=2,
                                n_ritz=8, progress=True)
    assert out.model.mask_channel and len(out.loss_history) == 2
    with pytest.raises(ValueError, match="unknowns"):
        train_direction_model(sp.eye(30).tocsr(), (6, 6), mask=mask, progress=False)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dim must be 2 or 3"):
        ConvDirectionModel(dim=4)
    with pytest.raises(ValueError, match="channels"):
        ConvDirectionModel(channels=0)
    with pytest.raises(ValueError, match="not bound to a grid"):
        ConvDirectionModel()(np.zeros(16))
    with pytest.raises(ValueError, match="expected vectors of shape"):
        ConvDirectionModel(grid_shape=(4, 4))(np.zeros(15))


@pytest.mark.gpu
def test_training_on_cupy_matches_numpy():
    cupy = pytest.importorskip("cupy")
    import cupyx.scipy.sparse as csp

    A = (poisson_2d(8) + sp.diags(np.linspace(0.0, 0.3, 64))).tocsr()
    kw = {"channels": 3, "n_steps": 5, "batch_size": 4, "lr": 1e-3, "n_ritz": 24,
          "progress": False, "dtype": "float64"}
    cpu = train_direction_model(A, (8, 8), **kw)
    gpu = train_direction_model(csp.csr_matrix(A), (8, 8), **kw)
    assert isinstance(gpu.model.params["in.w"], cupy.ndarray)
    np.testing.assert_allclose(gpu.loss_history[0], cpu.loss_history[0], rtol=1e-6)
    np.testing.assert_allclose(gpu.loss_history, cpu.loss_history, rtol=1e-3)


@pytest.mark.parametrize("relu_in, relu_out, with_residual",
                         [(True, True, False), (False, False, True), (True, False, True),
                          (False, True, False)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_cpu_kernel_matches_naive(rng, relu_in, relu_out, with_residual, dtype):
    """conv_same_fused = relu?(residual + conv(relu?(x)) + b), against the naive loops."""
    x = rng.standard_normal((2, 3, 2, 5, 37)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    res = rng.standard_normal((2, 4, 2, 5, 37)).astype(dtype) if with_residual else None
    out = cpu_conv.conv_same_fused(x, w, b, np.empty_like(res if with_residual else
                                                          np.empty((2, 4, 2, 5, 37), dtype)),
                                   relu_in=relu_in, relu_out=relu_out, residual=res)
    want = naive_conv_same(np.maximum(x, 0) if relu_in else x, w, b)
    if with_residual:
        want = want + res
    if relu_out:
        want = np.maximum(want, 0)
    np.testing.assert_allclose(out, want, **_tol(dtype))
    # NaN propagates through the fused ReLUs, as through xp.maximum (never silently 0)
    x_nan = x.copy()
    x_nan[0, 0, 0, 0, 3] = np.nan
    got = cpu_conv.conv_same_fused(x_nan, w, b, np.empty((2, 4, 2, 5, 37), dtype),
                                   relu_in=relu_in, relu_out=relu_out, residual=res)
    assert np.isnan(got[0, :, 0, 0, 2:5]).all() and np.isfinite(got[1]).all()
    with pytest.raises(ValueError, match="residual has shape"):
        cpu_conv.conv_same_fused(x, w, b, np.empty((2, 4, 2, 5, 37), dtype),
                                 residual=np.empty((1, 4, 2, 5, 37), dtype))


@pytest.mark.parametrize("grid", [(40, 40), (48, 36)])
def test_fused_inference_matches_the_training_forward(grid):
    """The inference forward (fused blocks on the row kernel) and the taped forward of
    training (separate ReLUs and sums) give the same directions."""
    model = ConvDirectionModel(2, channels=4, n_blocks=2, levels="auto", shared_levels=True,
                               seed=3, dtype="float64").on_grid(grid)
    r = np.random.default_rng(0).standard_normal((grid[0] * grid[1], 2))
    fused = model.forward(r)
    taped, _ = model.forward(r, keep=True)
    np.testing.assert_allclose(fused, taped, rtol=1e-12, atol=1e-12)
    for conv in ("kernel", "im2col"):
        np.testing.assert_allclose(model.forward(r, conv=conv), taped, rtol=1e-12,
                                   atol=1e-12)
