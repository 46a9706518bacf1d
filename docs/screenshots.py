"""Check the built site in a real browser: headless Chromium screenshots of three pages.

``python docs/screenshots.py`` (after ``make docs``) serves ``docs/_build/html`` on
localhost, opens the landing page, one API page and one gallery page in headless Chromium
(Debian's ``chromium`` package) and writes ``docs/screenshots/*.png``. It fails (exit 1)
when a page did not render: a screenshot that is blank (too few colours, almost all white),
a page whose theme stylesheet was never requested, or a gallery page whose figure was
never requested from the server.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

DOCS = Path(__file__).resolve().parent
HTML = DOCS / "_build" / "html"
OUT = DOCS / "screenshots"

# (screenshot name, page, request paths that must have been served while it rendered)
PAGES = [
    ("landing", "index.html", ["pydata-sphinx-theme.css"]),
    ("api_sinkhorn", "api/generated/diffsolve.ot.sinkhorn.html", ["pydata-sphinx-theme.css"]),
    ("gallery_sinkhorn_vs_newton", "gallery/plot_sinkhorn_vs_newton.html",
     ["pydata-sphinx-theme.css", "sphx_glr_plot_sinkhorn_vs_newton_001.png"]),
]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the site and records every path the browser asked for."""

    requested: ClassVar[list[str]] = []

    def do_GET(self):
        type(self).requested.append(self.path)
        super().do_GET()

    def log_message(self, format, *args):
        pass  # the report lists what matters


def find_chromium() -> str:
    """The Chromium executable, or exit with how to install it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("screenshots: no Chromium found; install it (Debian: apt-get install chromium)")


def blank_reason(png: Path, min_colours: int = 64, min_ink: float = 0.02) -> str | None:
    """Why the screenshot looks blank, or None when it shows a rendered page."""
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.int32).reshape(-1, 3)
    colours = len(np.unique(pixels[:, 0] << 16 | pixels[:, 1] << 8 | pixels[:, 2]))
    ink = float(np.mean(pixels.sum(axis=1) < 3 * 235))
    if colours < min_colours:
        return f"only {colours} distinct colours (< {min_colours})"
    if ink < min_ink:
        return f"only {100 * ink:.1f}% of the pixels are not near-white"
    return None


def shrink(png: Path) -> None:
    """Rewrite the screenshot with a 128-colour palette: a third of the size, still legible."""
    with Image.open(png) as im:
        small = im.convert("RGB").quantize(colors=128)
    small.save(png, optimize=True)


def shoot(chromium: str, url: str, png: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
               f"--screenshot={png}", f"--window-size={width},{height}",
               "--virtual-time-budget=5000", url]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    """Take the screenshots and check them; 0 when every page rendered."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2000)
    args = parser.parse_args(argv)
    if not (HTML / "index.html").exists():
        sys.exit(f"screenshots: {HTML} has no index.html; build the site first (make docs)")
    chromium = find_chromium()
    OUT.mkdir(exist_ok=True)
    handler = functools.partial(_Handler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    failures = []
    try:
        for name, page, needed in PAGES:
            _Handler.requested.clear()
            png = OUT / f"{name}.png"
            url = f"http://127.0.0.1:{server.server_address[1]}/{page}"
            shoot(chromium, url, png, args.width, args.height)
            problems = [f"{n} was never requested" for n in needed
                        if not any(n in path for path in _Handler.requested)]
            reason = blank_reason(png)
            if reason:
                problems.append(reason)
            shrink(png)
            verdict = "ok" if not problems else "FAILED: " + "; ".join(problems)
            print(f"{png.relative_to(DOCS.parent)}  {page}  {verdict}")
            if problems:
                failures.append(name)
    finally:
        server.shutdown()
        server.server_close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
