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

__all__ = ["RTOL", "legacy_options"]

#: the default ``rtol`` of the entropic solvers where the dtype allows it (float64);
#: ``rtol = None`` is ``diffsolve._tolerance.default_rtol(xp, dtype, RTOL)``, 64 eps in
#: float32 (the measured floor of the float32 marginal error is in that module)
RTOL = 1e-9


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
