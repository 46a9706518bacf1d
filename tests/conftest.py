"""Shared fixtures: the ``xp`` namespace fixture (numpy, array_api_strict, cupy)."""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest

from ._installed import prefer_installed_diffsolve

prefer_installed_diffsolve()


def _cuda_available() -> bool:
    try:
        cupy = importlib.import_module("cupy")
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, or no device: all mean "no GPU here"
        return False


CUDA = _cuda_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CuPy and a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(
    params=[
        "numpy",
        "array_api_strict",
        pytest.param("cupy", marks=pytest.mark.gpu),
    ]
)
def xp(request):
    """The array namespace under test, as array-api-compat wraps it."""
    if request.param == "numpy":
        import array_api_compat.numpy as xp_
    elif request.param == "cupy":
        if not CUDA:
            pytest.skip("needs CuPy and a CUDA device")
        import array_api_compat.cupy as xp_
    else:
        xp_ = pytest.importorskip("array_api_strict")
    return xp_


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


@pytest.fixture(autouse=True)
def _jax_x64():
    """Gradient checks run in float64; JAX needs that switched on."""
    try:
        jax = importlib.import_module("jax")
    except ImportError:
        yield
        return
    jax.config.update("jax_enable_x64", True)
    yield
