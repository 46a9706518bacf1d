"""train_direction_model on a family of problems: the steps visit the problems in turn, each
with its own Lanczos data; a short run lowers the loss on held-out problems (other grid
sizes, an obstacle layout the model never saw); argument errors name the function."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from bench.train_dcdm_weights import obstacle_mask, poisson2d
from diffsolve.linear import train_direction_model
from diffsolve.linear._operator import as_operator
from diffsolve.linear._train_direction import direction_loss, lanczos_ritz


def held_out_loss(model, A, grid, mask=None, n_rhs=24, seed=11):
    """Mean DCDM loss of ``model`` on right-hand sides built like the training data of a
    matrix the model was not trained on (seeded apart from training)."""
    op, _ = as_operator(A, np.zeros(A.shape[0]), "test")
    _, V = lanczos_ritz(op, min(A.shape[0], 60), seed=seed)
    rng = np.random.default_rng(seed)
    w = np.where(np.arange(V.shape[1]) < V.shape[1] // 2, 9.0, 1.0)
    b = V @ (rng.standard_normal((V.shape[1], n_rhs)) * w[:, None])
    b /= np.linalg.norm(b, axis=0)
    diagonal = A.diagonal() if model.coefficient_channel else None
    bound = model.astype("float64").on_grid(grid, mask, diagonal)
    return float(direction_loss(op, bound, b))


def test_family_visits_the_problems_in_turn():
    As = [poisson2d(8), poisson2d(5), poisson2d(6)]
    grids = [(8, 8), (5, 5), (6, 6)]
    seen = []
    out = train_direction_model(As, grids, channels=2, n_steps=7, batch_size=2, n_ritz=10,
                                progress=False, levels=2, lr=1e-3,
                                callback=lambda step, loss, model: seen.append(loss))
    assert len(out.loss_history) == 7 and seen == out.loss_history
    assert out.model.grid_shape == (8, 8)
    assert [v.shape for v in out.ritz_values] == [(10,), (10,), (10,)]
    assert out.model.metadata["trained_on"] == [
        "64 unknowns, grid (8, 8)", "25 unknowns, grid (5, 5)", "36 unknowns, grid (6, 6)"]
    # a family of one is the single problem, step for step
    one = train_direction_model([As[0]], [grids[0]], channels=2, n_steps=3, batch_size=2,
                                n_ritz=10, progress=False, seed=4)
    single = train_direction_model(As[0], grids[0], channels=2, n_steps=3, batch_size=2,
                                   n_ritz=10, progress=False, seed=4)
    assert one.loss_history == single.loss_history
    for k, v in single.model.params.items():
        np.testing.assert_array_equal(one.model.params[k], v)


def test_short_family_training_lowers_the_held_out_loss():
    """Trained on 12² and 20² Poisson, evaluated on 16² and 28² (never seen)."""
    As = [poisson2d(12), poisson2d(20)]
    kw = dict(channels=6, n_blocks=1, batch_size=8, n_ritz=60, progress=False, seed=2,
              levels="auto", shared_levels=True)
    before = train_direction_model(As, [(12, 12), (20, 20)], n_steps=1, lr=1e-9, **kw).model
    after = train_direction_model(As, [(12, 12), (20, 20)], n_steps=120, lr=3e-3, **kw).model
    for s in (16, 28):
        lb = held_out_loss(before, poisson2d(s), (s, s))
        la = held_out_loss(after, poisson2d(s), (s, s))
        assert np.isfinite(la) and la < 0.3 * lb, (s, lb, la)


def test_family_with_masks_generalises_to_an_unseen_layout():
    layouts = [obstacle_mask(16, seed=k) for k in range(3)]
    As = [poisson2d(16, m) for m in layouts]
    kw = dict(channels=6, n_blocks=1, batch_size=8, n_ritz=60, progress=False, seed=1,
              levels=2)
    before = train_direction_model(As, [(16, 16)] * 3, mask=layouts, n_steps=1, lr=1e-9,
                                   **kw).model
    after = train_direction_model(As, [(16, 16)] * 3, mask=layouts, n_steps=120, lr=3e-3,
                                  **kw).model
    assert after.mask_channel
    unseen = obstacle_mask(16, seed=7)
    assert not any(np.array_equal(unseen, m) for m in layouts)
    A = poisson2d(16, unseen)
    lb = held_out_loss(before, A, (16, 16), unseen)
    la = held_out_loss(after, A, (16, 16), unseen)
    assert la < 0.3 * lb, (lb, la)


def test_family_arguments_are_checked():
    A = poisson2d(4)
    with pytest.raises(ValueError, match="grid_shape must be a list of 2 grid shapes"):
        train_direction_model([A, A], (4, 4), progress=False)
    with pytest.raises(ValueError, match="mask must be None or a list of 2 masks"):
        train_direction_model([A, A], [(4, 4), (4, 4)], mask=np.ones((4, 4), bool),
                              progress=False)
    with pytest.raises(ValueError, match="empty list"):
        train_direction_model([], [], progress=False)
    with pytest.raises(ValueError, match=r"A\[1\] is \(16, 16\) but the grid \(5, 5\)"):
        train_direction_model([A, A], [(4, 4), (5, 5)], progress=False)
    with pytest.raises(ValueError, match="grids of one dimension"):
        train_direction_model([A, sp.eye(8).tocsr()], [(4, 4), (2, 2, 2)], progress=False)
    with pytest.raises(ValueError, match="all or none a mask"):
        train_direction_model([A, A], [(4, 4), (4, 4)], mask=[np.ones((4, 4), bool), None],
                              progress=False)


def test_family_in_two_array_libraries_is_refused():
    xps = pytest.importorskip("array_api_strict")
    A = poisson2d(4).toarray()
    with pytest.raises(ValueError, match="one array library"):
        train_direction_model([A, xps.asarray(A)], [(4, 4), (4, 4)], progress=False)
