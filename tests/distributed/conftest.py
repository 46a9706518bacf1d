"""A real ``dask.distributed.LocalCluster`` (2 worker processes, 1 thread each, with
nannies so that a killed worker restarts), started once for the directory and closed at
the end; the whole directory is skipped when Dask is not installed."""

from __future__ import annotations

import pytest

pytest.importorskip("dask.array")
distributed = pytest.importorskip("dask.distributed")


@pytest.fixture(scope="session")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as lc:
        yield lc


@pytest.fixture(scope="session")
def client(cluster):
    with distributed.Client(cluster) as c:
        # the workers import diffsolve and load the cached Numba kernels once, up front
        c.run(_warm_up)
        yield c


def _warm_up():
    import diffsolve.distributed  # noqa: F401
    from diffsolve.kernels.cpu import ot, ot_blocks  # noqa: F401
