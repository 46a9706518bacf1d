"""The ODE benchmarks' problem definitions agree across their forms; quick modes run."""

from __future__ import annotations

import json

import autograd
import autograd.numpy as anp
import numpy as np
import pytest

from bench import _ode_problems as P


@pytest.fixture(scope="module")
def problems():
    return P.get_problems()


@pytest.mark.parametrize("name", ["lotka_volterra", "van_der_pol", "spiral_mlp"])
def test_forms_agree(problems, name):
    prob = problems[name]
    Y = prob.batch_y0(5)
    ref = prob.f_ag(0.3, Y, prob.params)
    assert ref.shape == Y.shape
    np.testing.assert_allclose(prob.f_np(0.3, Y, prob.params), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(prob.f_nb(0.3, Y, prob.params), ref, rtol=1e-12, atol=1e-12)
    for b in range(Y.shape[0]):  # one state at a time
        np.testing.assert_allclose(prob.f_nb(0.3, Y[b], prob.params), ref[b], rtol=1e-12,
                                   atol=1e-12)
    np.testing.assert_allclose(prob.scipy_fun(5)(0.3, Y.reshape(-1)), ref.reshape(-1),
                               rtol=1e-12, atol=1e-12)
    torch = pytest.importorskip("torch")
    field = prob.torch_fun()
    out = field(0.3, torch.as_tensor(Y, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    assert field.nfe == 1


@pytest.mark.parametrize("name", ["lotka_volterra", "van_der_pol", "spiral_mlp"])
def test_numba_vjp_matches_autograd(problems, name):
    prob = problems[name]
    Y = prob.batch_y0(4)
    V = np.random.default_rng(3).standard_normal(Y.shape)
    gy = autograd.grad(lambda y: anp.sum(prob.f_ag(0.0, y, prob.params) * V))(Y)
    gp = autograd.grad(lambda p: anp.sum(prob.f_ag(0.0, Y, p) * V))(prob.params)
    vy, vp = prob.vjp_nb(0.0, Y, prob.params, V)
    np.testing.assert_allclose(vy, gy, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(vp, gp, rtol=1e-10, atol=1e-12)
    vy1, _ = prob.vjp_nb(0.0, Y[0], prob.params, V[0])
    np.testing.assert_allclose(vy1, gy[0], rtol=1e-10, atol=1e-12)


def test_mlp_numpy_vjp_matches_autograd():
    d, hidden = 2, 7
    p = P.mlp_init(d, hidden, seed=4)
    assert p.shape == (P.mlp_sizes(d, hidden),)
    f = P.mlp_ag_factory(d, hidden)
    vjp = P.mlp_vjp_np_factory(d, hidden)
    Y = np.random.default_rng(5).standard_normal((6, d))
    V = np.random.default_rng(6).standard_normal((6, d))
    vy, vp = vjp(0.0, Y, p, V)
    np.testing.assert_allclose(vy, autograd.grad(lambda y: anp.sum(f(0, y, p) * V))(Y),
                               rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(vp, autograd.grad(lambda q: anp.sum(f(0, Y, q) * V))(p),
                               rtol=1e-12, atol=1e-13)


def test_spiral_mlp_fits_the_spiral_field(problems):
    prob = problems["spiral_mlp"]
    Y = np.random.default_rng(0).uniform(-1.4, 1.4, size=(500, 2))
    Y = Y[np.linalg.norm(Y, axis=1) <= 2.0]
    err = np.abs(prob.f_np(0.0, Y, prob.params) - P.spiral_field(Y))
    assert err.max() < 0.1 * np.abs(P.spiral_field(Y)).max()


def test_reference_conserves_the_lotka_volterra_invariant(problems):
    prob = problems["lotka_volterra"]
    a, b, c, d = prob.params
    Y0 = prob.batch_y0(3)
    ys = P.reference_solution(prob, Y0, prob.t_eval())
    x, z = ys[..., 0], ys[..., 1]
    inv = d * x - c * np.log(x) + b * z - a * np.log(z)
    assert np.max(np.abs(inv - inv[0])) < 1e-10
    assert P.max_abs_error(ys, ys) == 0.0
    assert ys.shape == (prob.n_eval, 3, 2)


def test_batch_initial_states(problems):
    prob = problems["van_der_pol"]
    Y = prob.batch_y0(64)
    np.testing.assert_array_equal(Y[0], prob.y0)
    assert np.all(np.abs(Y - prob.y0) <= 0.1 * np.abs(prob.y0) + 1e-15)
    np.testing.assert_array_equal(prob.batch_y0(1), prob.y0[None])


def test_bundled_moons_match_their_generator():
    from bench.data import make_ode_data

    fresh = make_ode_data.make()
    with np.load(make_ode_data.OUT) as stored:
        assert set(stored.files) == set(fresh)
        for k, v in fresh.items():
            np.testing.assert_array_equal(stored[k], v)
    assert make_ode_data.OUT.stat().st_size < 200_000
    assert set(np.unique(fresh["y_train"])) == {0.0, 1.0}


def test_time_repeats_counts():
    calls = []
    med, reps, out, cpu = P.time_repeats(lambda: calls.append(1) or len(calls),
                                         min_repeats=3, max_repeats=5, budget_s=0.0)
    assert reps == 3 == len(calls) and out == 3 and med >= 0.0 and cpu >= 0.0


def _ode_available():
    try:
        from diffsolve.ode import odeint  # noqa: F401
    except ImportError:
        return False
    return True


needs_ode = pytest.mark.skipif(not _ode_available(), reason="diffsolve.ode not importable")


@pytest.mark.slow
@needs_ode
def test_forward_quick_runs(tmp_path):
    pytest.importorskip("matplotlib", reason="the benchmarks plot: the [bench] extra")
    from bench import bench_ode_forward

    out = bench_ode_forward.main(["--quick", "--out-dir", str(tmp_path)])
    data = json.loads((tmp_path / "ode_forward_quick.json").read_text())
    solvers = {r["solver"] for r in data["rows"]}
    assert {"scipy RK45", "scipy DOP853", "diffsolve dopri5", "diffsolve tsit5"} <= solvers
    assert not [r for r in data["rows"] if "failed" in r]
    assert out["step_sequence"] and (tmp_path / "ode_forward_quick.png").exists()


@pytest.mark.slow
@needs_ode
def test_gradients_quick_runs(tmp_path):
    pytest.importorskip("matplotlib", reason="the benchmarks plot: the [bench] extra")
    from bench import bench_ode_gradients

    out = bench_ode_gradients.main(["--quick", "--out-dir", str(tmp_path)])
    acc = out["accuracy"][0]
    # the discrete adjoint is the exact gradient of the frozen-step solve
    assert acc["discrete_vs_fd_frozen"] < 1e-6
    assert (tmp_path / "ode_gradients_quick.json").exists()


@pytest.mark.slow
@needs_ode
def test_regularization_quick_runs(tmp_path):
    pytest.importorskip("matplotlib", reason="the benchmarks plot: the [bench] extra")
    from bench import bench_ode_regularization

    out = bench_ode_regularization.main(["--quick", "--out-dir", str(tmp_path)])
    assert {s["task"] for s in out["summary"]} == {"spiral", "moons"}
    assert all(np.isfinite(r["test_loss"]) for r in out["runs"])
    assert (tmp_path / "ode_regularization_quick.png").exists()
