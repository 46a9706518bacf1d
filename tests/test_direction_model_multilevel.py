"""ConvDirectionModel with several pooling levels (a V-cycle): pooling/upsampling chain and
whole network vs naive loops, backward vs finite differences and torch autograd,
``levels=1`` bit-identical to the shipped one-level network, save/load, odd grids, 3-D,
argument errors."""

from __future__ import annotations

import json
import warnings
from itertools import product

import numpy as np
import pytest
import scipy.sparse as sp

from bench.train_dcdm_weights import poisson2d, poisson3d
from diffsolve.linear import (
    ConvDirectionModel,
    DirectionFallbackWarning,
    load_direction_model,
    pretrained_direction_model,
    solve,
    train_direction_model,
)
from diffsolve.linear._direction_model import (
    _avg_pool,
    _avg_pool_backward,
    _upsample,
    _upsample_backward,
    auto_levels,
    conv_same,
)
from tests.helpers import to_numpy
from tests.naive_conv import naive_conv_same


# ---------------------------------------------------------------------------------------
# naive references
# ---------------------------------------------------------------------------------------
def naive_pool(x, f):
    """Block means, one coarse cell at a time; cells past the grid count as zeros."""
    nb, c, *spatial = x.shape
    coarse = [-(-s // k) for s, k in zip(spatial, f)]
    out = np.zeros((nb, c, *coarse))
    for idx in product(*(range(n) for n in coarse)):
        acc = np.zeros((nb, c))
        for off in product(*(range(k) for k in f)):
            cell = tuple(i * k + o for i, k, o in zip(idx, f, off))
            if all(p < s for p, s in zip(cell, spatial)):
                acc += x[(slice(None), slice(None), *cell)]
        out[(slice(None), slice(None), *idx)] = acc / np.prod(f)
    return out


def naive_upsample(d, f, spatial):
    """Each fine cell takes the value of the coarse cell it lies in."""
    nb, c = d.shape[:2]
    out = np.zeros((nb, c, *spatial))
    for cell in product(*(range(s) for s in spatial)):
        src = tuple(p // k for p, k in zip(cell, f))
        out[(slice(None), slice(None), *cell)] = d[(slice(None), slice(None), *src)]
    return out


def stage_names(levels, shared=False):
    """Block names of the way down and up, written out independently of the library."""
    mid_in = ["level_in" if shared else f"level{lv}_in" for lv in range(1, levels)]
    mid_out = ["level_out" if shared else f"level{lv}_out" for lv in range(1, levels)]
    return ["fine_in", *mid_in], ["fine_out", *mid_out]


def naive_vcycle(params, x, n_blocks, levels, pool, shared=False):
    """The multi-level network written out with the naive convolution, pool and upsample."""

    def block(h, name):
        t = naive_conv_same(np.maximum(h, 0), params[name + ".w1"], params[name + ".b1"])
        return h + naive_conv_same(np.maximum(t, 0), params[name + ".w2"],
                                   params[name + ".b2"])

    def blocks(h, prefix):
        for i in range(n_blocks):
            h = block(h, f"{prefix}{i}")
        return h

    down, up = stage_names(levels, shared)
    h = naive_conv_same(x, params["in.w"], params["in.b"])
    skips = []
    for name in down:
        h = blocks(h, name)
        skips.append(h)
        h = naive_pool(h, pool)
    h = blocks(h, "coarse")
    for lv in reversed(range(levels)):
        h = blocks(skips[lv] + naive_upsample(h, pool, skips[lv].shape[2:]), up[lv])
    return naive_conv_same(h, params["out.w"], params["out.b"])


def one_level_reference(model, x):
    """The one-level network as it was before ``levels`` existed, from the same primitives
    in the same order (so float32 results must agree bit for bit)."""
    xp, P = np, model.params

    def cv(h, name, suffix=""):
        return conv_same(xp, h, P[f"{name}.w{suffix}"], P[f"{name}.b{suffix}"])

    def block(h, name):
        c = np.maximum(cv(np.maximum(h, np.float32(0)), name, "1"), np.float32(0))
        return h + cv(c, name, "2")

    h = cv(x, "in")
    for i in range(model.n_blocks):
        h = block(h, f"fine_in{i}")
    spatial = tuple(h.shape[2:])
    d = _avg_pool(xp, h, model.pool)
    for i in range(model.n_blocks):
        d = block(d, f"coarse{i}")
    h = h + _upsample(xp, d, model.pool, spatial)
    for i in range(model.n_blocks):
        h = block(h, f"fine_out{i}")
    return cv(h, "out")


def _model(dim=2, levels=2, **kw):
    kw.setdefault("channels", 3)
    kw.setdefault("n_blocks", 1)
    model = ConvDirectionModel(dim, dtype="float64", seed=1, levels=levels, **kw)
    # random, non-zero biases and second convolutions so every path is exercised
    rng = np.random.default_rng(5)
    model.params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in model.params.items()}
    return model


def _grid_x(r, grid):
    shape = (1, *grid) if len(grid) == 2 else grid
    return (r / np.sqrt(np.mean(r * r, axis=0))).T.reshape((r.shape[1], 1, *shape))


# ---------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, pool", [((2, 3, 1, 7, 5), (1, 2, 2)),
                                         ((1, 2, 3, 5, 6), (2, 2, 2)),
                                         ((1, 1, 1, 1, 3), (1, 2, 2))])
def test_pool_upsample_chain_matches_naive(rng, shape, pool):
    """Three levels down and back up on odd sizes, and the adjoints of both operations."""
    x = rng.standard_normal(shape)
    shapes, got, want = [], x, x
    for _ in range(3):
        shapes.append(tuple(got.shape[2:]))
        got, want = _avg_pool(np, got, pool), naive_pool(want, pool)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    for s in reversed(shapes):
        coarse = got
        # also exact on equal inputs: upsampling only copies values
        np.testing.assert_array_equal(_upsample(np, got, pool, s), naive_upsample(got, pool, s))
        got, want = _upsample(np, got, pool, s), naive_upsample(want, pool, s)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
        # adjoints: <up(d), g> = <d, up*(g)> and <pool(h), e> = <h, pool*(e)>
        g = rng.standard_normal(got.shape)
        np.testing.assert_allclose(
            np.sum(got * g),
            np.sum(coarse * _upsample_backward(np, g, pool, tuple(coarse.shape[2:]))),
            rtol=1e-12)
        e = rng.standard_normal(coarse.shape)
        np.testing.assert_allclose(np.sum(_avg_pool(np, got, pool) * e),
                                   np.sum(got * _avg_pool_backward(np, e, pool, s)),
                                   rtol=1e-12)


@pytest.mark.parametrize("dim, grid, levels, shared", [
    (2, (7, 5), 3, False), (2, (3, 3), 4, False), (3, (3, 5, 4), 2, False),
    (2, (13, 10), 4, True), (3, (5, 3, 6), 3, True)])
def test_forward_matches_naive_vcycle(rng, dim, grid, levels, shared):
    """Odd sizes at every level, (3, 3) pooled past a single cell, shared levels."""
    model = _model(dim, levels, shared_levels=shared).on_grid(grid)
    r = rng.standard_normal((int(np.prod(grid)), 2))
    got = model.forward(r)
    want = naive_vcycle(model.params, _grid_x(r, grid), 1, levels, model.pool, shared)
    np.testing.assert_allclose(got, want.reshape(2, -1).T, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(model.forward(r, conv="kernel"), got, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("name", ["poisson2d-64", "poisson2d-64-obstacles"])
def test_levels_one_is_the_shipped_network_bit_for_bit(rng, name):
    model = pretrained_direction_model(name)
    assert model.levels == 1 and model.config()["levels"] == 1
    stages = ["fine_in", "coarse", "fine_out"]
    names = {"in.w", "in.b", "out.w", "out.b"} | {
        f"{s}{i}.{p}" for s in stages for i in range(model.n_blocks)
        for p in ("w1", "b1", "w2", "b2")}
    assert set(model.params) == names
    grid = (37, 50)  # odd and even sides
    mask = np.ones(grid, dtype=bool)
    bound = model.on_grid(grid, mask if model.mask_channel else None)
    r = rng.standard_normal((int(np.prod(grid)), 2)).astype(np.float32)
    x = bound._grid_input(r)
    np.testing.assert_array_equal(bound.forward_grid(x), one_level_reference(bound, x))
    # an explicit levels=1 model has the same initial weights as the default
    a, b = ConvDirectionModel(2, seed=4), ConvDirectionModel(2, seed=4, levels=1)
    assert list(a.params) == list(b.params)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


@pytest.mark.parametrize("dim, grid, levels, shared", [
    (2, (7, 6), 3, False), (3, (3, 5, 4), 2, False), (2, (6, 7), 4, True),
    (3, (3, 4, 5), 3, True)])
def test_backward_matches_finite_differences(rng, dim, grid, levels, shared):
    model = _model(dim, levels, n_blocks=2, shared_levels=shared).on_grid(grid)
    n = int(np.prod(grid))
    r = rng.standard_normal((n, 2))
    g = rng.standard_normal((n, 2))
    _, cache = model.forward(r, keep=True)
    grads = model.backward(cache, g)
    assert set(grads) == set(model.params)
    base = dict(model.params)
    eps = 1e-6
    for name in base:
        d = rng.standard_normal(base[name].shape)

        def f(t, name=name, d=d):
            model.params = dict(base, **{name: base[name] + t * d})
            return float(np.sum(g * model.forward(r)))

        fd = (f(eps) - f(-eps)) / (2 * eps)
        np.testing.assert_allclose(np.sum(grads[name] * d), fd, rtol=1e-6, atol=1e-8,
                                   err_msg=name)
    model.params = base


@pytest.mark.parametrize("dim, grid, levels, shared", [
    (2, (7, 6), 3, False), (3, (3, 5, 4), 2, False), (2, (9, 12), 4, True),
    (3, (5, 4, 6), 3, True)])
def test_backward_matches_torch_autograd(rng, dim, grid, levels, shared):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    n_blocks = 2
    model = _model(dim, levels, n_blocks=n_blocks, shared_levels=shared).on_grid(grid)
    n = int(np.prod(grid))
    r = rng.standard_normal((n, 2))
    g = rng.standard_normal((n, 2))
    _, cache = model.forward(r, keep=True)
    grads = model.backward(cache, g)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    pool = model.pool

    def conv(h, w, b):
        return F.conv3d(h, w, b, padding=tuple(k // 2 for k in w.shape[2:]))

    def blocks(h, prefix):
        for i in range(n_blocks):
            t = conv(torch.relu(h), tp[f"{prefix}{i}.w1"], tp[f"{prefix}{i}.b1"])
            h = h + conv(torch.relu(t), tp[f"{prefix}{i}.w2"], tp[f"{prefix}{i}.b2"])
        return h

    def pool_down(h):
        # zero padding at the high end to a multiple of the pooling factor, then the mean
        pad = []
        for s, f in zip(reversed(h.shape[2:]), reversed(pool)):
            pad += [0, -(-s // f) * f - s]
        return F.avg_pool3d(F.pad(h, pad), pool)

    def up(d, spatial):
        for axis, f in zip((2, 3, 4), pool):
            d = d.repeat_interleave(f, dim=axis)
        return d[..., :spatial[0], :spatial[1], :spatial[2]]

    down_names, up_names = stage_names(levels, shared)
    h = conv(torch.tensor(model._grid_input(r)), tp["in.w"], tp["in.b"])
    skips = []
    for name in down_names:
        h = blocks(h, name)
        skips.append(h)
        h = pool_down(h)
    h = blocks(h, "coarse")
    for lv in reversed(range(levels)):
        h = blocks(skips[lv] + up(h, skips[lv].shape[2:]), up_names[lv])
    out = conv(h, tp["out.w"], tp["out.b"])
    np.testing.assert_allclose(out.detach().numpy().reshape(2, -1).T, model.forward(r),
                               rtol=1e-11, atol=1e-11)
    out.backward(torch.tensor(g.T.reshape(out.shape)))
    for k, v in tp.items():
        np.testing.assert_allclose(grads[k], v.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=k)


def test_array_api_strict_matches_numpy(rng):
    xps = pytest.importorskip("array_api_strict")
    model = _model(levels=3).on_grid((9, 6))
    r = rng.standard_normal(54)
    got = model.to(xps.asarray(r))(xps.asarray(r))
    np.testing.assert_allclose(to_numpy(got), model(r), rtol=1e-12)


def test_save_load_round_trip(tmp_path, rng):
    model = _model(levels=3, mask=np.ones((5, 7), dtype=bool))
    path = tmp_path / "m.npz"
    model.save(path)
    back = load_direction_model(path)
    assert back.levels == 3 and back.config() == model.config()
    for k, v in model.params.items():
        np.testing.assert_array_equal(back.params[k], v)
    r = rng.standard_normal(35)
    np.testing.assert_array_equal(back.on_grid((5, 7), np.ones((5, 7), bool))(r), model(r))
    # a file written before `levels` existed (no such key in its config) is one level
    one = _model(levels=1)
    one.save(tmp_path / "one.npz")
    data = dict(np.load(tmp_path / "one.npz"))
    config = json.loads(str(data["config"]))
    del config["levels"]
    data["config"] = np.asarray(json.dumps(config))
    np.savez(tmp_path / "old.npz", **data)
    old = load_direction_model(tmp_path / "old.npz")
    assert old.levels == 1
    # a config that declares more levels than the file has weights for is refused
    config["levels"] = 2
    data["config"] = np.asarray(json.dumps(config))
    np.savez(tmp_path / "wrong.npz", **data)
    with pytest.raises(ValueError, match="declared architecture"):
        load_direction_model(tmp_path / "wrong.npz")


def test_auto_levels():
    assert [auto_levels((s, s)) for s in (5, 8, 16, 17, 64, 256)] == [1, 1, 1, 2, 3, 5]
    assert auto_levels((9, 40)) == 3 and auto_levels((4, 4, 33)) == 3
    assert ConvDirectionModel.auto_levels((64, 64), coarsest=4) == 4
    model = ConvDirectionModel(2, channels=2, levels="auto", grid_shape=(40, 40))
    assert model.levels == 3 and model.config()["levels"] == 3
    assert ConvDirectionModel(2, channels=2, levels=np.int64(2)).levels == 2
    assert "level2_out0.w1" in model.params and "level3_in0.w1" not in model.params
    mask = np.ones((20, 12), dtype=bool)
    assert ConvDirectionModel(2, channels=2, levels="auto", mask=mask).levels == 2


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "deep", None])
def test_bad_levels_are_refused(bad):
    with pytest.raises(ValueError) as info:
        ConvDirectionModel(2, levels=bad)
    msg = str(info.value)
    assert "diffsolve.linear.ConvDirectionModel" in msg and "levels" in msg
    assert repr(bad) in msg and "positive integer" in msg and "'auto'" in msg
    with pytest.raises(ValueError, match="train_direction_model: levels must be a positive"):
        train_direction_model(poisson2d(4), (4, 4), levels=bad, progress=False)


def test_auto_levels_needs_a_grid():
    with pytest.raises(ValueError, match=r"ConvDirectionModel: levels='auto' .* grid_shape="):
        ConvDirectionModel(2, levels="auto")
    with pytest.raises(ValueError, match="coarsest must be a positive integer, got 0"):
        auto_levels((8, 8), coarsest=0)


def test_training_and_solving_with_several_levels(rng):
    """A few steps of training decrease the loss; the model then solves on an odd grid."""
    A = poisson2d(18)
    out = train_direction_model(A, (18, 18), channels=4, levels="auto", n_steps=40,
                                batch_size=4, lr=3e-3, n_ritz=32, seed=0, progress=False)
    h = np.asarray(out.loss_history)
    assert out.model.levels == 2 and np.all(np.isfinite(h))
    assert h[-10:].mean() < 0.8 * h[:5].mean()
    # the 5-point Laplacian of a 13 x 11 grid (C order): odd sides at both levels
    grid = (13, 11)
    T = [sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m)) for m in grid]
    A2 = (sp.kron(T[0], sp.eye(grid[1])) + sp.kron(sp.eye(grid[0]), T[1])).tocsr()
    b = rng.standard_normal(143)
    with warnings.catch_warnings():
        # 40 steps make a poor model: handing over to CG is allowed, not converging is not
        warnings.simplefilter("ignore", DirectionFallbackWarning)
        res = solve(A2, b, method="dcdm", model=out.model.on_grid(grid), rtol=1e-6)
    assert res.converged
    assert np.linalg.norm(b - A2 @ res.x) <= 1e-6 * np.linalg.norm(b) * (1 + 1e-6)


def test_poisson3d_is_the_seven_point_stencil():
    """The 3-D benchmark matrix, against the stencil written out cell by cell (C order,
    Dirichlet walls: 6 on the diagonal, -1 to each neighbour inside the grid)."""
    s = 4
    ref = np.zeros((s**3, s**3))
    for i in range(s):
        for j in range(s):
            for k in range(s):
                row = (i * s + j) * s + k
                ref[row, row] = 6.0
                for di, dj, dk in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1),
                                   (0, 0, -1)):
                    a, b, c = i + di, j + dj, k + dk
                    if 0 <= a < s and 0 <= b < s and 0 <= c < s:
                        ref[row, (a * s + b) * s + c] = -1.0
    A = poisson3d(s)
    assert A.has_sorted_indices and A.nnz == int(np.count_nonzero(ref))
    np.testing.assert_array_equal(A.toarray(), ref)


def test_training_and_solving_in_3d_with_shared_levels(rng):
    """The 3-D recipe of the benchmark, small: a shared multi-level model trained on 8³
    lowers its loss, then solves on 12³ (a deeper binding of the same weights)."""
    out = train_direction_model(poisson3d(8), (8, 8, 8), channels=4, levels="auto",
                                shared_levels=True, n_steps=30, batch_size=4, lr=3e-3,
                                n_ritz=32, seed=0, progress=False)
    h = np.asarray(out.loss_history)
    assert np.all(np.isfinite(h)) and h[-10:].mean() < 0.8 * h[:5].mean()
    A = poisson3d(12)
    b = rng.standard_normal(A.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DirectionFallbackWarning)
        res = solve(A, b, method="dcdm", model=out.model.on_grid((12, 12, 12)), rtol=1e-6)
    assert res.converged
    assert np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b) * (1 + 1e-6)


@pytest.mark.gpu
def test_cupy_matches_numpy(rng):
    cupy = pytest.importorskip("cupy")
    model = _model(levels=3, n_blocks=2).on_grid((11, 9))
    r = rng.standard_normal((99, 2))
    g = rng.standard_normal((99, 2))
    out, cache = model.forward(r, keep=True)
    grads = model.backward(cache, g)
    gpu = model.to(cupy.asarray(r))
    out_gpu, cache_gpu = gpu.forward(cupy.asarray(r), keep=True)
    grads_gpu = gpu.backward(cache_gpu, cupy.asarray(g))
    np.testing.assert_allclose(out_gpu.get(), out, rtol=1e-10, atol=1e-12)
    for k, v in grads.items():
        np.testing.assert_allclose(grads_gpu[k].get(), v, rtol=1e-9, atol=1e-11, err_msg=k)


# ---------------------------------------------------------------------------------------
# shared levels
# ---------------------------------------------------------------------------------------
def test_shared_levels_have_one_set_of_weights_for_every_depth():
    model = ConvDirectionModel(2, channels=3, n_blocks=2, levels="auto", shared_levels=True)
    stages = ["fine_in", "level_in", "coarse", "level_out", "fine_out"]
    assert set(model.params) == {"in.w", "in.b", "out.w", "out.b"} | {
        f"{s}{i}.{p}" for s in stages for i in range(2) for p in ("w1", "b1", "w2", "b2")}
    fixed = ConvDirectionModel(2, channels=3, n_blocks=2, levels=5, shared_levels=True)
    assert fixed.n_params == model.n_params
    assert model.levels == "auto" and model.config()["shared_levels"] is True
    assert [model.depth(g) for g in [(8, 8), (64, 64), (256, 256), (1024, 1000)]] == \
        [1, 3, 5, 7]
    assert model.on_grid((64, 64)).depth() == 3 and fixed.on_grid((64, 64)).depth() == 5
    with pytest.raises(ValueError, match="levels='auto' with shared_levels"):
        model.depth()


@pytest.mark.parametrize("grid", [(40, 33), (70, 64), (9, 9)])
def test_shared_auto_depth_follows_the_grid(rng, grid):
    """levels='auto' with shared weights is, on every grid, the fixed-depth shared network of
    that grid's auto depth with the same weights."""
    auto = _model(2, "auto", shared_levels=True).on_grid(grid)
    depth = auto_levels(grid)
    r = rng.standard_normal((int(np.prod(grid)), 2))
    if depth == 1:
        # nothing to share: the one-level network of the same fine/coarse weights
        fixed = _model(2, 1)
        fixed.params = {k: v for k, v in auto.params.items() if not k.startswith("level_")}
    else:
        fixed = _model(2, depth, shared_levels=True)
        fixed.params = dict(auto.params)
    np.testing.assert_array_equal(auto.forward(r), fixed.on_grid(grid).forward(r))
    # the levels the grid does not reach get zero gradients, the others are used
    _, cache = auto.forward(r, keep=True)
    grads = auto.backward(cache, rng.standard_normal(r.shape))
    reached = depth > 1
    assert set(grads) == set(auto.params)
    assert (np.abs(grads["level_in0.w1"]).max() > 0) == reached


@pytest.mark.parametrize("bad", [1, 0, 2.5, "deep"])
def test_shared_levels_need_a_depth_to_share(bad):
    with pytest.raises(ValueError, match="shared_levels=True needs levels='auto'"):
        ConvDirectionModel(2, channels=2, levels=bad, shared_levels=True)
    with pytest.raises(ValueError, match="shared_levels must be True or False"):
        ConvDirectionModel(2, channels=2, levels=2, shared_levels="yes")


def test_shared_levels_save_load_and_train(tmp_path, rng):
    s = 20
    A = poisson2d(s)
    out = train_direction_model(A, (s, s), channels=4, n_blocks=1, levels="auto",
                                shared_levels=True, n_steps=3, batch_size=2, n_ritz=20,
                                progress=False, seed=3)
    model = out.model
    assert model.levels == "auto" and model.shared_levels and model.depth() == 2
    path = tmp_path / "shared.npz"
    model.save(path)
    back = load_direction_model(path)
    assert back.config() == model.config()
    r = rng.standard_normal(37 * 41).astype(np.float32)
    for grid in [(37, 41), (s, s)]:
        n = int(np.prod(grid))
        np.testing.assert_array_equal(back.on_grid(grid)(r[:n]), model.on_grid(grid)(r[:n]))
    assert back.on_grid((37, 41)).depth() == 3
