"""from_torch / from_jax fast paths: results and gradients unchanged.

``from_torch`` crosses NumPy arrays with ``torch.from_numpy`` / ``Tensor.numpy`` (DLPack
before) and converts ``params`` once per solve; the reference here is the DLPack path
written out, which must give the same numbers to 1e-12 (they are the same arithmetic).
"""

from __future__ import annotations

import numpy as np
import pytest

from diffsolve.ode import from_torch, odeint

torch = pytest.importorskip("torch")


def _field(t, y, p):
    W = p[:4].reshape((2, 2))
    return torch.tanh(y @ W.T + p[4:6]) * (1.0 + 0.1 * t)


def _dlpack_pair(f):
    """The previous from_torch: every array through DLPack, params converted per call."""

    def to_t(x):
        return None if x is None else torch.from_dlpack(np.ascontiguousarray(x))

    def back(t_):
        return np.from_dlpack(t_.detach().contiguous())

    def f_np(t, y, params):
        with torch.no_grad():
            return back(f(t, to_t(y), to_t(params)))

    def vjp_np(t, y, params, v):
        yt = to_t(y).detach().requires_grad_(True)
        pt = to_t(params).detach().requires_grad_(True)
        with torch.enable_grad():
            out = f(t, yt, pt)
            gy, gp = torch.autograd.grad(out, (yt, pt), grad_outputs=to_t(v))
        return back(gy), back(gp)

    return f_np, vjp_np


@pytest.fixture
def problem():
    rng = np.random.default_rng(3)
    p = rng.standard_normal(6)
    y0 = rng.standard_normal((3, 2))
    t = np.linspace(0.0, 1.5, 6)
    return p, y0, t


def test_from_torch_calls_match_dlpack_path(problem):
    p, y0, _ = problem
    f_new, vjp_new = from_torch(_field)
    f_old, vjp_old = _dlpack_pair(_field)
    v = np.linspace(-1.0, 1.0, 6).reshape(3, 2)
    np.testing.assert_allclose(f_new(0.3, y0, p), f_old(0.3, y0, p), rtol=1e-12, atol=1e-12)
    for (a, b) in zip(vjp_new(0.3, y0, p, v), vjp_old(0.3, y0, p, v)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_from_torch_sees_params_changed_in_place(problem):
    # params is converted once per array object; the view must follow in-place updates
    p, y0, _ = problem
    f_new, _ = from_torch(_field)
    before = f_new(0.0, y0, p).copy()
    p[4] += 1.0
    after = f_new(0.0, y0, p)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, _dlpack_pair(_field)[0](0.0, y0, p), rtol=1e-12)
    # a different params array (same values) gives the same, a changed one changes it
    q = p.copy()
    np.testing.assert_allclose(f_new(0.0, y0, q), after, rtol=1e-12)
    q[0] -= 0.5
    assert not np.allclose(f_new(0.0, y0, q), after)


def test_from_torch_read_only_and_strided_inputs(problem):
    p, y0, _ = problem
    f_new, _ = from_torch(_field)
    ro = y0.copy()
    ro.flags.writeable = False
    strided = np.asfortranarray(y0)
    ref = _dlpack_pair(_field)[0](0.0, y0, p)
    np.testing.assert_allclose(f_new(0.0, ro, p), ref, rtol=1e-12)
    np.testing.assert_allclose(f_new(0.0, strided, p), ref, rtol=1e-12)


@pytest.mark.parametrize("batch_mode", ["shared", "per-trajectory"])
def test_training_step_unchanged(problem, batch_mode):
    """A to_torch training step (loss and gradient) equals the DLPack path's to 1e-12."""
    import diffsolve as ds

    p, y0, t = problem
    if batch_mode == "per-trajectory":
        y0 = y0[0]
    ode = ds.to_torch(odeint)
    out = []
    for f_np, vjp_np in (from_torch(_field), _dlpack_pair(_field)):
        pt = torch.tensor(p, requires_grad=True)
        y0t = torch.tensor(y0, requires_grad=True)
        res = ode(f_np, y0t, torch.tensor(t), pt, vjp=vjp_np, rtol=1e-8, atol=1e-8,
                  batch_mode=batch_mode)
        loss = (res.ys ** 2).sum()
        loss.backward()
        out.append((float(loss.detach()), pt.grad.numpy().copy(), y0t.grad.numpy().copy()))
    (l1, gp1, gy1), (l2, gp2, gy2) = out
    assert abs(l1 - l2) <= 1e-12 * abs(l2)
    np.testing.assert_allclose(gp1, gp2, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gy1, gy2, rtol=1e-12, atol=1e-14)
    assert np.linalg.norm(gp1) > 0.0
