"""The doctests of :mod:`diffsolve.distributed` need Dask (the ``[distributed]`` extra):
without it they are not collected."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("dask") else ["*.py"]
