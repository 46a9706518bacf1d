"""Regenerate ``bench/data/ode_moons.npz``, the classifier data of the ODE benchmarks.

Two interleaving half-moons in 2-D (the classic "two moons" construction, written here from
its definition: upper arc (cos s, sin s), lower arc (1 - cos s, 0.5 - sin s), s ~ U[0, pi]),
Gaussian noise 0.15, standardised with the training set's mean and standard deviation.
256 training and 512 test points, labels 0/1, seed 0, float64. Run from the repository root::

    python -m bench.data.make_ode_data
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "ode_moons.npz"


def two_moons(n: int, noise: float, rng: np.random.Generator):
    n0 = n // 2
    s0 = rng.uniform(0.0, np.pi, n0)
    s1 = rng.uniform(0.0, np.pi, n - n0)
    upper = np.stack([np.cos(s0), np.sin(s0)], axis=1)
    lower = np.stack([1.0 - np.cos(s1), 0.5 - np.sin(s1)], axis=1)
    X = np.concatenate([upper, lower]) + noise * rng.standard_normal((n, 2))
    y = np.concatenate([np.zeros(n0), np.ones(n - n0)])
    perm = rng.permutation(n)
    return X[perm], y[perm]


def make() -> dict:
    """The four arrays of the bundled file (deterministic: seed 0)."""
    rng = np.random.default_rng(0)
    X_train, y_train = two_moons(256, 0.15, rng)
    X_test, y_test = two_moons(512, 0.15, rng)
    mu, sd = X_train.mean(axis=0), X_train.std(axis=0)
    return {"X_train": (X_train - mu) / sd, "y_train": y_train,
            "X_test": (X_test - mu) / sd, "y_test": y_test}


def main() -> None:
    np.savez_compressed(OUT, **make())
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
