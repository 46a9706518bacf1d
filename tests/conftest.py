"""Shared fixtures: the ``xp`` namespace fixture (numpy, array_api_strict, cupy)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import numpy as np
import pytest


def _prefer_installed_diffsolve() -> None:
    """Test the installed diffsolve when the source tree next to the tests is not importable.

    pytest puts the repository root on ``sys.path`` (``tests`` is a package, and the tests
    import ``tests.helpers`` and ``bench``), so ``import diffsolve`` finds the source folder
    ``diffsolve/`` first. From a checkout with the editable install (``make test``) that is
    the installed package itself. From an unpacked sdist installed with ``pip install .``,
    the source folder lacks ``diffsolve.kernels`` (installed from ``kernels/`` through
    setup.cfg's ``package_dir``): import the installed package instead, with the root
    briefly off ``sys.path``; the later imports of ``tests`` and ``bench`` still see it.
    Run from an unpacked sdist, plain ``python -m pytest`` thus tests the installed package.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = os.path.join(root, "diffsolve", "__init__.py")
    if "diffsolve" in sys.modules or not os.path.exists(source):
        return
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    try:
        spec = importlib.util.find_spec("diffsolve")
        if spec is not None and spec.origin and not os.path.samefile(spec.origin, source):
            importlib.import_module("diffsolve")
            # the doctests (testpaths: diffsolve) then run on the installed modules, the same
            # code as the source folder's files, which pytest would otherwise refuse as an
            # import-path mismatch
            os.environ["PY_IGNORE_IMPORTMISMATCH"] = "1"
    finally:
        sys.path[:] = saved


_prefer_installed_diffsolve()


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
