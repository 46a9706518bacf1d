"""``python -m diffsolve``: a short tour (``demo``) and what this installation can use (``info``).

    python -m diffsolve --version
    python -m diffsolve info     # versions, CPU threads, CUDA GPUs, optional frameworks
    python -m diffsolve demo     # solve and differentiate a 2-D Poisson problem
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import sys

# optional frameworks: import name -> distribution name
OPTIONAL: dict[str, str] = {
    "torch": "torch",
    "jax": "jax",
    "autograd": "autograd",
    "array_api_strict": "array-api-strict",
}


def _version(module_name: str, dist_name: str | None = None) -> str | None:
    """The version of an importable module, or None when it is not importable.

    The installed distribution's metadata is read first, so heavy frameworks are not
    imported just to print their version; a module without metadata is imported.
    """
    try:
        if importlib.util.find_spec(module_name) is None:
            return None
    except (ImportError, ValueError):
        return None
    if dist_name is not None:
        try:
            return importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        return getattr(importlib.import_module(module_name), "__version__", "unknown version")
    except Exception as exc:  # an installed but broken package
        return f"not importable ({type(exc).__name__}: {exc})"


def _cpu_lines() -> list[str]:
    n_cpu = os.cpu_count()
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        usable = n_cpu
    lines = [f"CPU cores          {n_cpu} ({usable} usable by this process)"]
    try:
        import numba

        lines.append(f"Numba threads      {numba.get_num_threads()} "
                     # numba.config sets its attributes at import, unseen by mypy
                     f"(NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS})")  # type: ignore[attr-defined]
    except Exception as exc:  # pragma: no cover - numba is a dependency
        lines.append(f"Numba threads      unavailable ({exc})")
    return lines


def _gpu_lines() -> list[str]:
    if importlib.util.find_spec("cupy") is None:
        return ["CUDA GPUs          none: CuPy not installed (pip install 'diffsolve[gpu]')"]
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no device, a broken CUDA install
        return [f"CUDA GPUs          none: no device ({type(exc).__name__}: {exc})"]
    if count == 0:
        return ["CUDA GPUs          none: no device"]
    lines = [f"CUDA GPUs          {count} (CuPy {cupy.__version__})"]
    for i in range(count):
        props = cupy.cuda.runtime.getDeviceProperties(i)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else name
        mem = props.get("totalGlobalMem", 0) / 2**30
        lines.append(f"  [{i}] {name}, {mem:.1f} GiB")
    return lines


def info() -> str:
    """What ``python -m diffsolve info`` prints."""
    from . import __version__

    lines = [
        f"diffsolve          {__version__}",
        f"python             {platform.python_version()} ({sys.executable})",
        f"platform           {platform.platform()}",
    ]
    for module, dist in (("numpy", "numpy"), ("scipy", "scipy"), ("numba", "numba")):
        lines.append(f"{module:<18} {_version(module, dist)}")
    lines += _cpu_lines()
    lines += _gpu_lines()
    lines.append("optional frameworks:")
    for module, dist in OPTIONAL.items():
        version = _version(module, dist)
        lines.append(f"  {module:<16} {version if version is not None else 'not installed'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="python -m diffsolve",
        description="diffsolve: differentiable solvers for NumPy and CuPy.")
    parser.add_argument("--version", action="version", version=f"diffsolve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="solve and differentiate a 2-D Poisson problem")
    demo.add_argument("--grid", type=int, default=64, help="interior grid points per side")
    demo.add_argument("--seed", type=int, default=0)
    sub.add_parser("info", help="print versions, CPU threads, CUDA GPUs and the optional "
                                "frameworks that can be imported")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(grid=args.grid, seed=args.seed)
    if args.command == "info":
        print(info())
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands first


if __name__ == "__main__":
    sys.exit(main())
