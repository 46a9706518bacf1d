"""solve(method="dcdm"): convergence with the shipped and with poor models (fallback),
every kind of A, namespaces, gradients vs finite differences, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import diffsolve as ds
from bench.train_dcdm_weights import obstacle_mask, poisson2d
from diffsolve.linear import ConvDirectionModel, DirectionFallbackWarning, solve
from tests.helpers import central_difference, to_numpy


def _solve_recording(*args, **kwargs):
    """solve(), returning the result and the DirectionFallbackWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DirectionFallbackWarning)
        res = solve(*args, **kwargs)
    others = [w for w in caught if not issubclass(w.category, DirectionFallbackWarning)]
    assert not others, [str(w.message) for w in others]
    return res, [w for w in caught if issubclass(w.category, DirectionFallbackWarning)]


def _zero_model(grid, **kw):
    """A deliberately useless model: its output is identically zero."""
    model = ConvDirectionModel(2, channels=2, grid_shape=grid, **kw)
    model.params = dict(model.params, **{"out.w": model.params["out.w"] * 0})
    return model


@pytest.mark.parametrize("rtol", [1e-4, 1e-8])
def test_shipped_model_converges_without_fallback(rng, rtol):
    A = poisson2d(24)
    b = rng.standard_normal(A.shape[0])
    res, fell = _solve_recording(A, b, method="dcdm", rtol=rtol, maxiter=200)
    assert res.converged and not fell
    assert np.linalg.norm(b - A @ res.x) <= rtol * np.linalg.norm(b) * (1 + 1e-6)
    cg = solve(A, b, method="cg", rtol=rtol)
    assert res.n_iters < cg.n_iters


def test_shipped_obstacle_model_with_mask(rng):
    mask = obstacle_mask(32, seed=1)
    A = poisson2d(32, mask)
    model = ds.linear.pretrained_direction_model("poisson2d-64-obstacles").on_grid((32, 32),
                                                                                   mask)
    b = rng.standard_normal(A.shape[0])
    res, fell = _solve_recording(A, b, method="dcdm", model=model, rtol=1e-6, maxiter=300)
    assert res.converged and not fell
    assert np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b) * (1 + 1e-6)


@pytest.mark.parametrize("smoother, then", [(None, "continued with conjugate"),
                                             ("ssor", "continued with SGS-preconditioned")])
def test_useless_model_falls_back_to_cg_and_converges(rng, smoother, then):
    A = poisson2d(16)
    b = rng.standard_normal(256)
    with pytest.warns(DirectionFallbackWarning, match=f"iteration 0.*{then}"):
        res = solve(A, b, method="dcdm", model=_zero_model((16, 16)), rtol=1e-8,
                    smoother=smoother)
    assert res.converged
    np.testing.assert_allclose(A @ res.x, b, rtol=0, atol=1e-7 * np.linalg.norm(b))
    # the fallback from iteration 0 is (SGS-preconditioned) CG itself: the same count
    peer = solve(A, b, method="cg" if smoother is None else "ssor-cg", rtol=1e-8)
    assert abs(res.n_iters - peer.n_iters) <= 1, (res.n_iters, peer.n_iters)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_model_converges(rng, seed):
    """An untrained network: converges, with or without the CG fallback."""
    A = poisson2d(16)
    b = rng.standard_normal(256)
    model = ConvDirectionModel(2, channels=4, seed=seed, grid_shape=(16, 16))
    res, _ = _solve_recording(A, b, method="dcdm", model=model, rtol=1e-6, maxiter=2000)
    assert res.converged
    assert np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b) * (1 + 1e-6)


def test_stagnation_triggers_fallback(rng, monkeypatch):
    """A model that keeps returning the same direction stalls after one step."""
    A = poisson2d(12)
    b = rng.standard_normal(144)
    fixed = rng.standard_normal(144)
    model = ConvDirectionModel(2, channels=2, grid_shape=(12, 12))
    monkeypatch.setattr(ConvDirectionModel, "__call__", lambda self, r: fixed)
    with pytest.warns(DirectionFallbackWarning, match="stagnated"):
        # without the smoother: its sweeps alone would keep the residual falling
        res = solve(A, b, method="dcdm", model=model, rtol=1e-8, smoother=None)
    assert res.converged


@pytest.mark.parametrize("kind", ["dense", "csr", "operator"])
def test_every_kind_of_matrix(rng, kind):
    A = poisson2d(16)
    b = rng.standard_normal(256)
    model = ConvDirectionModel(2, channels=4, seed=0)  # unbound: 16 x 16 inferred
    A_in = {"dense": A.toarray(), "csr": A, "operator": spla.aslinearoperator(A)}[kind]
    res, _ = _solve_recording(A_in, b, method="dcdm", model=model, rtol=1e-8, maxiter=1000)
    assert res.converged
    np.testing.assert_allclose(res.x, spla.spsolve(A.tocsc(), b), rtol=1e-6, atol=1e-8)


def test_namespaces(xp, rng):
    A = poisson2d(8).toarray()
    b = rng.standard_normal(64)
    A_x, b_x = xp.asarray(A), xp.asarray(b)
    model = ConvDirectionModel(2, channels=3, grid_shape=(8, 8)).to(b_x)
    res, _ = _solve_recording(A_x, b_x, method="dcdm", model=model, rtol=1e-8, maxiter=500)
    assert res.converged
    np.testing.assert_allclose(to_numpy(res.x), np.linalg.solve(A, b), rtol=1e-6, atol=1e-8)
    assert res.x.dtype == b_x.dtype


def test_float32_and_several_right_hand_sides(rng):
    A = poisson2d(16).astype(np.float32)
    B = rng.standard_normal((256, 3)).astype(np.float32)
    res, _ = _solve_recording(A, B, method="dcdm", rtol=1e-4)
    assert res.x.dtype == np.float32 and res.x.shape == (256, 3) and res.converged
    for j in range(3):
        assert np.linalg.norm(B[:, j] - A @ res.x[:, j]) <= 1e-4 * np.linalg.norm(B[:, j]) * 1.01


def test_x0_warm_start_and_callback(rng):
    A = poisson2d(16)
    b = rng.standard_normal(256)
    exact = spla.spsolve(A.tocsc(), b)
    seen = []
    res, _ = _solve_recording(A, b, method="dcdm", x0=exact + 1e-3 * rng.standard_normal(256),
                              rtol=1e-8, callback=seen.append)
    assert res.converged and len(seen) == res.n_iters
    cold, _ = _solve_recording(A, b, method="dcdm", rtol=1e-8)
    assert res.n_iters < cold.n_iters


@pytest.mark.parametrize("smoother", ["auto", None])
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_gradient_matches_finite_differences(rng, kind, smoother):
    A = poisson2d(5) + sp.diags(0.5 + rng.random(25))
    A = A.toarray() if kind == "dense" else A.tocsr()
    if kind == "sparse":
        A.sort_indices()
    b = rng.standard_normal(25)
    w = rng.standard_normal(25)
    model = ConvDirectionModel(2, channels=3, grid_shape=(5, 5), dtype="float64")
    opts = {"method": "dcdm", "model": model, "rtol": 1e-13, "maxiter": 2000,
            "smoother": smoother}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DirectionFallbackWarning)
        _, f_vjp = ds.vjp(solve, A, b, **opts)
        A_bar, b_bar = f_vjp(x=w)
        db = rng.standard_normal(25)
        if kind == "dense":
            # a symmetric perturbation on the grid's stencil: DCDM refuses other matrices
            dA = rng.standard_normal((25, 25)) * (A != 0)
            dA = dA + dA.T
            predicted = np.sum(A_bar * dA) + b_bar @ db
        else:
            dA = A.copy()
            dA.data = rng.standard_normal(A.nnz)
            dA = ((dA + dA.T) * 0.5).tocsr()
            dA.sort_indices()
            predicted = np.sum(A_bar.data * dA.data) + b_bar @ db

        def loss(t):
            return float(w @ solve(A + t * dA, b + t * db, **opts).x)

        fd = central_difference(loss, 0.0, 1.0, h=1e-6)
    np.testing.assert_allclose(predicted, fd, rtol=1e-6)


def test_errors(rng):
    A = poisson2d(8)
    b = rng.standard_normal(64)
    with pytest.raises(ValueError, match="options of method='dcdm'"):
        solve(A, b, method="cg", model=ConvDirectionModel())
    with pytest.raises(ValueError, match="options of method='dcdm'"):
        solve(A, b, method="cg", smoother="ssor")
    with pytest.raises(ValueError, match="smoother must be one of 'auto', 'ssor', None; got "
                                         "'sgs'"):
        solve(A, b, method="dcdm", smoother="sgs")
    with pytest.raises(ValueError, match="smoother='ssor' relaxes with the entries of A, but A "
                                         "is a LinearOperator"):
        solve(spla.aslinearoperator(A), b, method="dcdm", smoother="ssor")
    with pytest.raises(ValueError, match="drop M"):
        solve(A, b, method="dcdm", M="jacobi")
    with pytest.raises(ValueError, match="grid"):
        solve(A, b, method="dcdm", model=ConvDirectionModel(grid_shape=(4, 4)))
    with pytest.raises(ValueError, match="not a square"):
        solve(sp.eye(10).tocsr(), np.ones(10), method="dcdm")
    with pytest.raises(TypeError, match="ConvDirectionModel"):
        solve(A, b, method="dcdm", model="poisson")
    with pytest.raises(ValueError, match="k must be >= 1"):
        solve(A, b, method="dcdm", k=0)
    with pytest.raises(TypeError, match="k must be an integer"):
        solve(A, b, method="dcdm", k=True)
    with pytest.raises(ValueError, match="symmetric"):
        solve(A + sp.triu(A, 1), b, method="dcdm")
    xps = pytest.importorskip("array_api_strict")
    with pytest.raises(ValueError, match="model.to"):
        solve(xps.asarray(A.toarray()), xps.asarray(b), method="dcdm",
              model=ConvDirectionModel(grid_shape=(8, 8)))


def test_not_converging_warns(rng):
    A = poisson2d(16)
    b = rng.standard_normal(256)
    with pytest.warns(ds.ConvergenceWarning, match="did not converge.*after 3 iterations"):
        res = solve(A, b, method="dcdm", rtol=1e-10, maxiter=3)
    assert not res.converged and res.info == 3
    assert res.status is ds.Status.MAX_ITERATIONS


def test_non_grid_matrices_are_refused(rng):
    """Reproduction (issue 11): the DCDM path ran any matrix with a square number of
    unknowns as a grid. A random SPD 64x64 matrix and the 3-D Poisson matrix of a 16³
    grid (4096 = 64² unknowns) are not the 5-point matrix of a square grid."""
    Q = rng.standard_normal((64, 64))
    spd = Q @ Q.T + 64 * np.eye(64)
    with pytest.raises(ValueError, match="5-point grid operator of a 8x8 grid.*not grid "
                                         "neighbours"):
        solve(spd, rng.standard_normal(64), method="dcdm")
    m = 16
    T = sp.diags_array([-1.0, 2.0, -1.0], offsets=[-1, 0, 1], shape=(m, m))
    eye = sp.eye_array(m)
    P3 = (sp.kron(sp.kron(T, eye), eye) + sp.kron(sp.kron(eye, T), eye)
          + sp.kron(sp.kron(eye, eye), T)).tocsr()
    with pytest.raises(ValueError, match="5-point grid operator of a 64x64 grid"):
        solve(P3, np.ones(m ** 3), method="dcdm")
    # an unbound model checks its inferred grid the same way
    with pytest.raises(ValueError, match="not bound to a grid.*not grid neighbours"):
        solve(spd, rng.standard_normal(64), method="dcdm", model=ConvDirectionModel())
    # ... and a LinearOperator is probed
    with pytest.raises(ValueError, match="not grid neighbours"):
        solve(spla.aslinearoperator(spd), rng.standard_normal(64), method="dcdm")
    # the 5-point matrix itself is accepted, dense or sparse
    A = poisson2d(8)
    for A_in in (A, A.toarray()):
        assert solve(A_in, np.ones(64), method="dcdm", rtol=1e-8).converged


@pytest.mark.gpu
def test_cupy_matches_numpy(rng):
    cupy = pytest.importorskip("cupy")
    import cupyx.scipy.sparse as csp

    A = poisson2d(32)
    b = rng.standard_normal(A.shape[0])
    res_cpu, _ = _solve_recording(A, b, method="dcdm", rtol=1e-9, maxiter=2000)
    res_gpu, _ = _solve_recording(csp.csr_matrix(A), cupy.asarray(b), method="dcdm", rtol=1e-9,
                                  maxiter=2000)
    assert res_gpu.converged and isinstance(res_gpu.x, cupy.ndarray)
    # float32 networks on two devices round differently: a few iterations apart at most
    assert abs(res_gpu.n_iters - res_cpu.n_iters) <= 3 + res_cpu.n_iters // 10
    np.testing.assert_allclose(res_gpu.x.get(), res_cpu.x, rtol=1e-5, atol=1e-7)


def test_three_dimensional_grid(rng):
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(6, 6))
    eye = sp.eye(6)
    A = (sp.kron(sp.kron(t, eye), eye) + sp.kron(sp.kron(eye, t), eye)
         + sp.kron(sp.kron(eye, eye), t)).tocsr()
    A.sort_indices()
    b = rng.standard_normal(216)
    model = ConvDirectionModel(3, channels=3, seed=0)  # unbound: the 6³ cube is inferred
    res, _ = _solve_recording(A, b, method="dcdm", model=model, rtol=1e-8)
    assert res.converged
    np.testing.assert_allclose(A @ res.x, b, atol=1e-7 * np.linalg.norm(b))


def test_framework_adapters(rng):
    """to_autograd and to_torch give the gradient of the core vjp (the model is a plain
    keyword argument, not differentiated)."""
    import autograd
    import autograd.numpy as anp

    torch = pytest.importorskip("torch")
    A = poisson2d(5).toarray() + np.diag(0.5 + rng.random(25))
    b, w = rng.standard_normal(25), rng.standard_normal(25)
    opts = {"method": "dcdm", "rtol": 1e-12, "maxiter": 2000,
            "model": ConvDirectionModel(2, channels=3, grid_shape=(5, 5), dtype="float64")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DirectionFallbackWarning)
        _, f_vjp = ds.vjp(solve, A, b, **opts)
        rA, rb = f_vjp(x=w)
        ag = ds.to_autograd(solve)
        gA, gb = autograd.grad(lambda A_, b_: anp.sum(w * ag(A_, b_, **opts).x),
                               argnum=(0, 1))(A, b)
        At = torch.tensor(A, requires_grad=True)
        bt = torch.tensor(b, requires_grad=True)
        (ds.to_torch(solve)(At, bt, **opts).x * torch.tensor(w)).sum().backward()
    for got_A, got_b in ((gA, gb), (At.grad.numpy(), bt.grad.numpy())):
        np.testing.assert_allclose(got_A, rA, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(got_b, rb, rtol=1e-8, atol=1e-12)


def test_shipped_3d_model_beats_ic0_iterations_on_a_cube_it_never_saw():
    """The shipped 3-D shared-level model (trained on 16³ and 32³) on 40³, a grid it never
    saw: at most 30 iterations to 1e-6 (21 when committed; IC(0)-PCG needs 38 and CG 119
    there), without the CG fallback."""
    from bench.train_dcdm_weights import poisson3d

    model = ds.linear.pretrained_direction_model("poisson3d-multilevel")
    assert model.dim == 3 and model.shared_levels and model.levels == "auto"
    A = poisson3d(40)
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    res, fell = _solve_recording(A, b, method="dcdm", model=model.on_grid((40, 40, 40)),
                                 rtol=1e-6, maxiter=200, smoother=None)
    assert res.converged and not fell
    assert np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b) * (1 + 1e-6)
    assert res.n_iters <= 30, res.n_iters


def test_shipped_multilevel_model_keeps_the_count_flat():
    """The shipped shared-level model (trained on 32², 64², 128²) on 256², a grid it never
    saw: at most 30 iterations to 1e-6 (23 when committed; the one-level model needs 55),
    and within 1.6x of its count at 64² (15 when committed: 1.53x)."""
    model = ds.linear.pretrained_direction_model("poisson2d-multilevel")
    assert model.shared_levels and model.levels == "auto"
    counts = {}
    for s in (64, 256):
        A = poisson2d(s)
        b = np.random.default_rng(0).standard_normal(s * s)
        res, fell = _solve_recording(A, b, method="dcdm", model=model.on_grid((s, s)),
                                     rtol=1e-6, maxiter=200, smoother=None)
        assert res.converged and not fell
        assert np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b) * (1 + 1e-6)
        counts[s] = res.n_iters
    assert counts[256] <= 30 and counts[256] <= 1.6 * counts[64], counts


def test_a_bound_model_refuses_a_matrix_of_another_grid(rng):
    """Binding a model states the grid; a matrix that couples non-neighbours of that grid
    (a dense SPD matrix, a 3-D Laplacian of as many unknowns, a masked grid's matrix with
    a long-range coupling) is refused, its own grid's matrix accepted."""
    model = ConvDirectionModel(2, channels=2, grid_shape=(8, 8))
    b = rng.standard_normal(64)
    M = rng.standard_normal((64, 64))
    with pytest.raises(ValueError, match=r"model bound to the grid \(8, 8\).*couples"):
        solve(M @ M.T + 64 * np.eye(64), b, method="dcdm", model=model)
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(4, 4))
    eye = sp.eye(4)
    lap3 = (sp.kron(sp.kron(t, eye), eye) + sp.kron(sp.kron(eye, t), eye)
            + sp.kron(sp.kron(eye, eye), t)).tocsr()  # 4³ = 64 unknowns, not an 8x8 grid
    with pytest.raises(ValueError, match="not grid neighbours"):
        solve(lap3, b, method="dcdm", model=model)
    res, _ = _solve_recording(poisson2d(8), b, method="dcdm", model=model, rtol=1e-8)
    assert res.converged
    # masked: the fluid cells' matrix passes, a coupling across the obstacle does not
    mask = obstacle_mask(16, seed=2)
    masked = ConvDirectionModel(2, channels=2, mask=mask)
    A = poisson2d(16, mask)
    n = A.shape[0]
    bm = rng.standard_normal(n)
    res, _ = _solve_recording(A, bm, method="dcdm", model=masked, rtol=1e-8)
    assert res.converged
    far = sp.coo_matrix(([-0.1, -0.1], ([0, n - 1], [n - 1, 0])), shape=(n, n))
    with pytest.raises(ValueError, match=r"grid \(16, 16\) and a mask.*2 pairs"):
        solve((A + far).tocsr(), bm, method="dcdm", model=masked)


def _ic0_pcg_iterations(A, b, rtol):
    from bench.bench_dcdm import ic0_preconditioner

    count = [0]
    _, info = spla.cg(A, b, rtol=rtol, atol=0.0, maxiter=5000, M=ic0_preconditioner(A),
                      callback=lambda _x: count.__setitem__(0, count[0] + 1))
    assert info == 0
    return count[0]


@pytest.mark.parametrize("case", ["log-normal", "neumann"])
def test_smoother_beats_ic0_on_matrices_the_model_never_saw(case):
    """The shipped Poisson model (constant coefficient, Dirichlet walls) with the SGS
    smoother on a log-normal coefficient field (σ = 1.5, contrast ~1e4) and on Neumann
    walls: fewer iterations to 1e-6 than IC(0)-PCG, without the fallback. When committed,
    at 64²: log-normal 35 (IC(0)-PCG 58, SGS-PCG 68; without the smoother the model
    falls back to CG and misses 400), Neumann 39 (IC(0)-PCG 84, SGS-PCG 99, no smoother
    82)."""
    from bench.train_dcdm_weights import diffusion2d, lognormal_field

    s = 64
    if case == "log-normal":
        A = diffusion2d(lognormal_field(s, 1.5, seed=2024))
    else:
        A = diffusion2d(np.ones((s, s)), neumann=("top", "left", "right"))
    b = np.random.default_rng(3).standard_normal(s * s)
    model = ds.linear.pretrained_direction_model("poisson2d-multilevel").on_grid((s, s))
    res, fell = _solve_recording(A, b, method="dcdm", model=model, rtol=1e-6, maxiter=400)
    assert res.converged and not fell
    assert np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b) * (1 + 1e-6)
    ic0 = _ic0_pcg_iterations(A, b, 1e-6)
    assert res.n_iters < ic0, (res.n_iters, ic0)
    # the network matters: the smoother alone (SGS-preconditioned CG) needs more
    sgs = solve(A, b, method="ssor-cg", rtol=1e-6)
    assert res.n_iters < 0.6 * sgs.n_iters, (res.n_iters, sgs.n_iters)


def test_smoother_keeps_the_count_flat():
    """The shipped shared-level model with the smoother (the default for a matrix): at most
    16 iterations to 1e-6 on 64² and 256² Poisson, 256² within 1.5x of 64² (10 and 13 when
    committed; 15 and 23 without the smoother)."""
    model = ds.linear.pretrained_direction_model("poisson2d-multilevel")
    counts = {}
    for s in (64, 256):
        A = poisson2d(s)
        b = np.random.default_rng(0).standard_normal(s * s)
        res, fell = _solve_recording(A, b, method="dcdm", model=model.on_grid((s, s)),
                                     rtol=1e-6, maxiter=200)
        assert res.converged and not fell
        counts[s] = res.n_iters
    assert max(counts.values()) <= 16 and counts[256] <= 1.5 * counts[64], counts
