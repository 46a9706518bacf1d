"""What the benchmark scripts share: the cache/output options and a cold Numba cache."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path


def add_cache_and_output_args(parser, results_dir: Path) -> None:
    """``--warm-cache``, ``--no-gpu`` and ``--out-dir`` options."""
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="use Numba's normal on-disk cache (default: a fresh one, so the "
        "first call measures a cold JIT compile)",
    )
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU benchmark")
    parser.add_argument("--out-dir", type=Path, default=results_dir)


@contextlib.contextmanager
def numba_cache(warm: bool):
    """A fresh, temporary Numba cache for the block (unless ``warm``), so that first calls
    measure a cold JIT compile rather than a load from disk."""
    with tempfile.TemporaryDirectory(prefix="diffsolve-numba-cache-") as cache_dir:
        if not warm:
            if "numba" in sys.modules:
                print("warning: numba already imported; NUMBA_CACHE_DIR not applied")
            os.environ["NUMBA_CACHE_DIR"] = cache_dir
        yield
