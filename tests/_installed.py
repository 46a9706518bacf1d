"""Which diffsolve the tests import: the installed one when the source folder is not importable.

Used by ``tests/conftest.py`` in the test process and by ``tests/distributed``'s Dask workers
(as a worker preload), which are separate processes that inherit the test process's
``sys.path`` but not its imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys


def prefer_installed_diffsolve() -> None:
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
