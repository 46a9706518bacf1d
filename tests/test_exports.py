"""Public names: every family's ``__all__`` imports, and the classes the docstrings name exist.

The result, state and settings classes are what users annotate with and ``isinstance``
against; a docstring that says ``diffsolve.ot.OTResult`` must mean an importable name.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import pkgutil
import re

import pytest

import diffsolve

FAMILIES = ["diffsolve"] + [
    f"diffsolve.{name}"
    for name in ("bilevel", "implicit", "interop", "krylov", "linear", "ode", "ot")
]
# class-name endings of what a solver hands to its user: results, callback states, validated
# settings, diagnostics
PUBLIC_SUFFIXES = ("Result", "State", "Settings", "Info", "History", "Stats")
PACKAGE_DIR = pathlib.Path(diffsolve.__file__).parent


@pytest.mark.parametrize("family", FAMILIES)
def test_all_names_import(family):
    module = importlib.import_module(family)
    assert module.__all__, family
    assert len(set(module.__all__)) == len(module.__all__), f"{family}.__all__ repeats a name"
    for name in module.__all__:
        assert hasattr(module, name), f"{family}.__all__ lists {name!r}, which is not there"
        exec(f"from {family} import {name}", {})  # the import statement users write


@pytest.mark.parametrize("family", FAMILIES[1:])
def test_public_classes_exported_from_their_family(family):
    """A ``*Result`` / ``*State`` / ``*Settings`` / ``*Info`` class defined in a family's
    private modules is in that family's ``__all__``."""
    package = importlib.import_module(family)
    missing = []
    for info in pkgutil.iter_modules(package.__path__, family + "."):
        submodule = importlib.import_module(info.name)
        for name, obj in vars(submodule).items():
            if (inspect.isclass(obj) and obj.__module__ == info.name
                    and not name.startswith("_") and name.endswith(PUBLIC_SUFFIXES)):
                if name not in package.__all__:
                    missing.append(f"{info.name}.{name}")
    assert not missing, f"not exported from {family}: {missing}"


def _names_in_docstrings():
    pattern = re.compile(r"\bdiffsolve\.([a-z]\w*)\.([A-Z]\w*)")
    found = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        found.update(pattern.findall(path.read_text(encoding="utf-8")))
    return sorted(found)


DOCUMENTED = _names_in_docstrings()


def test_docstrings_name_classes():
    assert ("ot", "OTResult") in DOCUMENTED  # the scan sees the package's source


@pytest.mark.parametrize(("family", "name"), DOCUMENTED,
                         ids=[f"{f}.{n}" for f, n in DOCUMENTED])
def test_documented_names_resolve(family, name):
    module = importlib.import_module(f"diffsolve.{family}")
    assert hasattr(module, name), f"docstrings name diffsolve.{family}.{name}, which is not there"
    if name.endswith("Result"):
        assert name in module.__all__


@pytest.mark.parametrize("qualname", [
    "diffsolve.ot.OTResult", "diffsolve.ot.OTState", "diffsolve.ot.SparseOTResult",
    "diffsolve.ot.SNSResult", "diffsolve.ode.ODEResult", "diffsolve.ode.ODEState",
    "diffsolve.bilevel.BilevelResult", "diffsolve.bilevel.HypergradientInfo",
    "diffsolve.implicit.ImplicitSolveInfo", "diffsolve.linear.LinearSolveResult",
    "diffsolve.linear.LinearSolveState", "diffsolve.krylov.KrylovResult",
    "diffsolve.krylov.KrylovState", "diffsolve.SolverResult", "diffsolve.ValueResult",
])
def test_result_types(qualname):
    family, name = qualname.rsplit(".", 1)
    cls = getattr(importlib.import_module(family), name)
    assert inspect.isclass(cls)
