"""Option handling shared by the OT solvers: the deprecated names and the tolerance rule.

Every OT solver stops a problem when its marginal error is ``<= atol + rtol * sum(a)``
(``rtol`` relative to the total mass, so that rescaling ``a`` and ``b`` together rescales
the tolerance; for unit mass ``rtol`` is the absolute error). ``rtol = atol = 0`` is a
fixed budget: exactly ``maxiter`` iterations. The pre-contract names keep working for
one release with a ``DeprecationWarning``: ``max_iter=`` is ``maxiter=``; ``tol=`` was an
absolute error for the entropic solvers (``tol=x`` is ``atol=x, rtol=0``) and relative to
the mass for :func:`~diffsolve.ot.sparse_ot` / :func:`~diffsolve.ot.quadratic_ot`
(``tol=x`` is ``rtol=x``).
"""

from __future__ import annotations

import inspect

from .. import _validate as V
from .._status import warn_at_caller

__all__ = ["default_rtol", "legacy_options"]

#: the default ``rtol`` of the entropic solvers where the dtype allows it (float64)
RTOL = 1e-9
#: ``rtol = None`` is ``max(RTOL, EPS_FACTOR * eps)`` of the solve's dtype. The marginal
#: error of float32 Sinkhorn stalls at 2-7 eps32 (measured: n = 50-500, ε = 1-0.01, unit
#: mass, both kernels, 3000 iterations); 64 eps leaves a margin of 10 over that floor, so
#: the default stops where float32 can, rather than running out the budget and warning.
EPS_FACTOR = 64


def default_rtol(xp, dtype) -> float:
    """The dtype-aware default ``rtol``: ``1e-9`` in float64, ``64 eps`` (7.6e-6) in
    float32.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> default_rtol(xp, xp.float64), round(default_rtol(xp, xp.float32), 7)
    (1e-09, 7.6e-06)
    """
    return max(RTOL, EPS_FACTOR * float(xp.finfo(dtype).eps))


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def legacy_options(where: str, fn, deprecated: dict, values: dict, *, tol_is: str,
                   quiet: bool = False) -> dict:
    """Map the deprecated options in ``deprecated`` onto ``values`` (the new names).

    ``fn`` is the public forward function (its signature holds the defaults, so that an
    explicitly given new name can be told apart); ``tol_is`` is ``"atol"`` (``tol=x`` means
    ``atol=x, rtol=0``) or ``"rtol"`` (``tol=x`` means ``rtol=x``). ``quiet`` (a backward
    rule re-reading the call) maps without warning. Unknown names raise the ``TypeError``
    Python would, naming the valid options. Returns the updated ``values``.
    """
    out = dict(values)
    if not deprecated:
        return out
    known = {"tol", "max_iter"}
    unknown = {k: v for k, v in deprecated.items() if k not in known}
    if unknown:
        V.unexpected_options(where, unknown, [*_defaults(fn), "tol (deprecated)",
                                              "max_iter (deprecated)"])
    defaults = _defaults(fn)
    if "max_iter" in deprecated:
        if out["maxiter"] != defaults["maxiter"]:
            raise TypeError(f"{where}: got both max_iter= (deprecated) and maxiter=; pass "
                            "only maxiter=")
        if quiet:
            out["maxiter"] = deprecated["max_iter"]
        else:
            out["maxiter"] = V.renamed_options(where, {"max_iter": deprecated["max_iter"]},
                                               {"max_iter": "maxiter"})["maxiter"]
    if "tol" in deprecated:
        tol = deprecated["tol"]
        given = [n for n in ("rtol", "atol") if out[n] != defaults[n]]
        if given:
            raise TypeError(f"{where}: got both tol= (deprecated) and {'='.join(given)}=; "
                            "pass only rtol=/atol=")
        if tol_is == "atol":
            new, text = {"atol": tol, "rtol": 0.0}, "atol= (tol=x is atol=x, rtol=0)"
        else:
            new, text = {"rtol": tol}, "rtol= (tol=x is rtol=x: relative to sum(a))"
        if not quiet:
            warn_at_caller(f"{where}: tol= is deprecated and will be removed in the next "
                           f"release; use {text} instead", DeprecationWarning)
        out.update(new)
    return out
