"""A worker killed in the middle of a batched solve or of a sharded Sinkhorn does not
change the result: Dask recomputes the lost tasks (the nanny restarts the worker)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

pytest.importorskip("dask.array")
pytest.importorskip("dask.distributed")

import dask.array as da
import numpy as np

import diffsolve as ds
import diffsolve.distributed as dd

from .test_sharded import _clouds, _cost, _dask


def slow_callback(state):
    # stretches every chunk task to about a second, so that a worker dies while busy
    time.sleep(0.01)


def _kill_a_busy_worker(client, prefix, timeout=30.0):
    """SIGKILL the process of a worker that is running a task whose key starts with
    ``prefix``; returns its pid."""
    pids = client.run(os.getpid)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for addr, keys in client.processing().items():
            if any(str(k).lstrip("('").startswith(prefix) for k in keys) and addr in pids:
                time.sleep(0.2)  # let the task get going
                os.kill(pids[addr], signal.SIGKILL)
                return pids[addr]
        time.sleep(0.02)
    raise AssertionError(f"no worker ever ran a {prefix} task")


def _wait_for_restart(client, killed):
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            pids = set(client.run(os.getpid).values())
        except OSError:  # the dying worker is still listed
            pids = set()
        if len(pids) == 2 and killed not in pids:
            return
        time.sleep(0.2)
    raise AssertionError("the nanny did not restart the killed worker")


def test_worker_killed_during_batched_solve(client):
    rng = np.random.default_rng(0)
    N, n = 8, 6
    C = rng.random((N, n, n))
    a = np.full((N, n), 1 / n)
    ref = ds.ot.sinkhorn(a, a, C, 0.1, check_every=1)
    res = dd.sinkhorn(da.from_array(a, chunks=(2, n)), da.from_array(a, chunks=(2, n)),
                      da.from_array(C, chunks=(2, n, n)), 0.1, callback=slow_callback,
                      check_every=1)
    futures = client.compute([res.cost, res.f, res.status])
    killed = _kill_a_busy_worker(client, "run_chunk")
    cost, f, status = client.gather(futures)
    np.testing.assert_array_equal(status, ref.status)
    np.testing.assert_allclose(cost, ref.cost, rtol=0, atol=1e-12)
    np.testing.assert_allclose(f, ref.f, rtol=0, atol=1e-12)
    _wait_for_restart(client, killed)


def test_worker_killed_during_sharded_sinkhorn(client):
    x, y, a, b = _clouds(n=30, m=24, seed=7)
    eps = 0.1
    ref = ds.ot.sinkhorn(a, b, _cost(x, y), eps, rtol=1e-10, kernel="lse", check_every=5)
    X, Y, A, B = _dask(x, y, a, b, kx=10, ky=8)
    out = {}

    def solve():
        out["res"] = dd.sinkhorn_pointcloud(X, Y, eps, A, B, rtol=1e-10, check_every=5)

    thread = threading.Thread(target=solve)
    thread.start()
    killed = _kill_a_busy_worker(client, "sinkhorn-softmin")
    thread.join(timeout=120)
    assert not thread.is_alive()
    res = out["res"]
    assert res.converged and res.n_iters == ref.n_iters
    np.testing.assert_allclose(res.f.compute(), ref.f, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.g.compute(), ref.g, rtol=0, atol=1e-12)
    assert abs(res.cost - ref.cost) < 1e-12
    _wait_for_restart(client, killed)
