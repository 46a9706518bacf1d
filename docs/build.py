"""Build the documentation site: ``python docs/build.py [--fast]``.

Warnings are errors in both modes (``-W --keep-going``: every warning is listed, then the
build fails). The full build runs every gallery script and embeds its figures; ``--fast``
builds the API reference and the guides and renders the gallery pages without running
them, which is what CI runs on every change.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
BUILD = DOCS / "_build"


def sphinx_command(fast: bool, jobs: str) -> list[str]:
    """The sphinx-build command line of one mode."""
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q",
           "-j", jobs, "-d", str(BUILD / "doctrees")]
    if fast:
        cmd += ["-D", "plot_gallery=0"]
    return [*cmd, str(DOCS), str(BUILD / "html")]


def main(argv: list[str] | None = None) -> int:
    """Run sphinx-build and report the wall time; the exit status is sphinx-build's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true",
                        help="do not run the gallery scripts (API reference and guides only)")
    parser.add_argument("-j", "--jobs", default="1",
                        help="sphinx-build's parallel jobs (default 1; 'auto' for all cores)")
    args = parser.parse_args(argv)
    cmd = sphinx_command(args.fast, args.jobs)
    # autosummary rewrites its pages on every build but never deletes one: a page left from a
    # name that is no longer public would be an orphan (a warning, hence a failed build)
    shutil.rmtree(DOCS / "api" / "generated", ignore_errors=True)
    env = dict(os.environ, MPLBACKEND="Agg")
    start = time.perf_counter()
    rc = subprocess.call(cmd, cwd=DOCS.parent, env=env)
    mode = "fast (gallery not run)" if args.fast else "full (gallery run)"
    verdict = "built" if rc == 0 else f"FAILED (exit {rc})"
    print(f"docs {mode}: {verdict} in {time.perf_counter() - start:.1f} s"
          f" -> {BUILD / 'html' / 'index.html'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
