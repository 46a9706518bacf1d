"""A real ``dask.distributed.LocalCluster`` (2 worker processes, 1 thread each, with
nannies so that a killed worker restarts), started once for the directory and closed at
the end. Without Dask (the ``[distributed]`` extra) every test module here skips itself
(``pytest.importorskip`` at its top)."""

from __future__ import annotations

import os

import pytest

_PRELOAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker_preload.py")


@pytest.fixture(scope="session")
def cluster():
    # the dashboard on a free port (":0"): another cluster on this machine (a second CI job,
    # a notebook) may hold Dask's default 8787
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", preload=[_PRELOAD]) as lc:
        yield lc


@pytest.fixture(scope="session")
def client(cluster):
    from dask.distributed import Client

    with Client(cluster) as c:
        # the workers import diffsolve and load the cached Numba kernels once, up front
        c.run(_warm_up)
        yield c


def _warm_up():
    import diffsolve.distributed  # noqa: F401
    from diffsolve.kernels.cpu import ot, ot_blocks  # noqa: F401
