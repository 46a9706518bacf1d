"""``python -m diffsolve``: ``--version``, ``info``, and usage errors."""

from __future__ import annotations

import subprocess
import sys

import diffsolve


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    # cwd away from the repository root, so that `-m diffsolve` finds the installed package
    # (from an unpacked sdist, the root's diffsolve/ source folder has no diffsolve.kernels)
    return subprocess.run([sys.executable, "-m", "diffsolve", *args], capture_output=True,
                          text=True, timeout=300, check=False, cwd=cwd)


def test_version(tmp_path):
    proc = _run("--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"diffsolve {diffsolve.__version__}"


def test_info(tmp_path):
    proc = _run("info", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    import numba
    import numpy
    import scipy

    assert f"diffsolve          {diffsolve.__version__}" in out
    for name, module in (("numpy", numpy), ("scipy", scipy), ("numba", numba)):
        assert f"{name:<18} {module.__version__}" in out
    assert "CPU cores" in out
    assert "Numba threads" in out
    assert "CUDA GPUs" in out  # a count, or "none: ..." with the reason
    for framework in ("torch", "jax", "autograd", "array_api_strict"):
        assert f"  {framework}" in out


def test_info_does_not_import_frameworks(tmp_path):
    # versions come from the installed metadata: torch and JAX are not imported for them
    code = ("import sys, diffsolve.__main__ as m; m.info(); "
            "print(sorted(k for k in ('torch', 'jax') if k in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_unknown_command_prints_usage_and_exits_2(tmp_path):
    proc = _run("no-such-command", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "usage: python -m diffsolve" in proc.stderr
    assert "no-such-command" in proc.stderr


def test_no_command_prints_usage_and_exits_2(tmp_path):
    proc = _run(cwd=tmp_path)
    assert proc.returncode == 2
    assert "usage: python -m diffsolve" in proc.stderr
