"""Dask worker preload: import the same diffsolve as the test process.

Run from an unpacked sdist, the repository root on the workers' ``sys.path`` holds the
source folder ``diffsolve/`` without ``diffsolve.kernels`` (installed from ``kernels/``), so
a worker would fail to import it; this makes the worker import the installed package, as
``tests/conftest.py`` does for the test process. From a checkout it changes nothing.
"""

from tests._installed import prefer_installed_diffsolve

prefer_installed_diffsolve()
