"""Scale-out on Dask: batches of independent solves across a cluster, and one Sinkhorn
problem between point clouds too large for one machine.

``import diffsolve`` does not import Dask; ``import diffsolve.distributed`` does (the
``[distributed]`` extra: ``dask[array]`` and ``distributed``). The solver families stay
single-machine array-API code: this layer only maps them over Dask chunks (one batched
call per chunk, on the worker that holds the chunk, NumPy chunks on CPU workers and CuPy
chunks on GPU workers) and reduces block-pair partials in trees, so no solver has a second
code path. See ``docs/distributed.md``.
"""

from ._batched import compute, hypergradient, linear_solve, odeint, persist, sinkhorn, vjp
from ._dask import dask_modules as _dask_modules
from ._sharded import (
    PointCloudGradients,
    PointCloudOTResult,
    PointCloudSettings,
    sinkhorn_pointcloud,
)

_dask_modules()  # fail at import with the install line when Dask is missing

__all__ = [
    "PointCloudGradients",
    "PointCloudOTResult",
    "PointCloudSettings",
    "compute",
    "hypergradient",
    "linear_solve",
    "odeint",
    "persist",
    "sinkhorn",
    "sinkhorn_pointcloud",
    "vjp",
]
