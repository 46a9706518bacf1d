"""Every public signature is fully annotated, and the annotations resolve at runtime.

"Public" is what the ``__all__`` lists export: functions, the solvers registered with
``custom_vjp`` (their forward rules carry the signature), and classes with their
constructors, public methods and properties. Resolving (``typing.get_type_hints``) proves
that no annotation names something that exists only for the type checker.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import importlib.util
import inspect
import typing

import pytest

import diffsolve
from diffsolve._autodiff import DifferentiableFunction

MODULES = ["diffsolve", "diffsolve.linear", "diffsolve.krylov", "diffsolve.ot", "diffsolve.ode",
           "diffsolve.implicit", "diffsolve.bilevel", "diffsolve.interop"]
# the Dask layer is an optional extra ([distributed]); typed like the rest where installed
if importlib.util.find_spec("dask") is not None:
    MODULES.append("diffsolve.distributed")

# members every class has from the language, not from diffsolve
_FOREIGN_BASES = (object, Exception, enum.Enum, int, tuple)


def _public_objects():
    seen = set()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            yield f"{module_name}.{name}", obj


def _own_members(cls):
    """Public methods and properties defined by diffsolve classes in ``cls``'s MRO."""
    members = {}
    for klass in reversed(cls.__mro__):
        if klass in _FOREIGN_BASES or not klass.__module__.startswith("diffsolve"):
            continue
        for attr, value in vars(klass).items():
            if attr.startswith("_") and attr not in ("__init__", "__call__"):
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            elif isinstance(value, property):
                value = value.fget
            elif isinstance(value, functools.cached_property):
                value = value.func
            if inspect.isfunction(value):
                members[attr] = value
    return members


def _callables():
    out = []
    for qualname, obj in _public_objects():
        if isinstance(obj, DifferentiableFunction):
            out.append((qualname, obj.fwd))
        elif inspect.isclass(obj):
            # a dataclass's generated __init__ included: its annotations are the fields'
            out.extend((f"{qualname}.{attr}", fn) for attr, fn in _own_members(obj).items())
        elif callable(obj):
            out.append((qualname, obj))
    return out


CALLABLES = _callables()
CLASSES = [(q, o) for q, o in _public_objects() if inspect.isclass(o)]


def test_the_public_surface_is_found():
    names = {q for q, _ in CALLABLES}
    # one of each kind: a solver, a function, a constructor, a method, a property
    for expected in ("diffsolve.ot.sinkhorn", "diffsolve.krylov.cg",
                     "diffsolve.linear.OmegaBandit.__init__",
                     "diffsolve.linear.OmegaBandit.load_state_dict",
                     "diffsolve.linear.OmegaBandit.omegas",
                     "diffsolve.implicit.custom_root", "diffsolve.to_torch"):
        assert expected in names, expected
    assert len(CALLABLES) > 60


@pytest.mark.parametrize("qualname, fn", CALLABLES, ids=[q for q, _ in CALLABLES])
def test_public_callable_is_fully_annotated(qualname, fn):
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    missing = [p.name for p in params if p.annotation is inspect.Parameter.empty]
    assert not missing, f"{qualname}: parameters without annotations: {missing}"
    assert sig.return_annotation is not inspect.Signature.empty, \
        f"{qualname}: no return annotation"
    hints = typing.get_type_hints(fn)  # raises if an annotation does not resolve
    assert "return" in hints
    assert {p.name for p in params} <= set(hints)


@pytest.mark.parametrize("qualname, fn", [(q, o) for q, o in _public_objects()
                                          if isinstance(o, DifferentiableFunction)],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_solver_forward_rule_returns_its_result_type(qualname, fn):
    # a registered solver's forward rule returns (result, residuals); calling the solver
    # returns the result, whose class the annotation must name
    ret = typing.get_type_hints(fn.fwd)["return"]
    assert typing.get_origin(ret) is tuple, f"{qualname}: {ret}"
    result_cls, _ = typing.get_args(ret)
    assert inspect.isclass(result_cls), f"{qualname}: {ret}"
    if fn.result_type is not None:
        assert issubclass(result_cls, fn.result_type), (qualname, result_cls, fn.result_type)


@pytest.mark.parametrize("qualname, cls", CLASSES, ids=[q for q, _ in CLASSES])
def test_public_class_annotations_resolve(qualname, cls):
    hints = typing.get_type_hints(cls)
    if dataclasses.is_dataclass(cls):
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields <= set(hints), f"{qualname}: unannotated fields {fields - set(hints)}"


def test_typing_aliases_exist_at_runtime():
    from diffsolve import _typing

    for name in _typing.__all__:
        assert hasattr(_typing, name), name
    # the callback alias is generic in the state it receives
    alias = _typing.Callback[diffsolve.krylov.KrylovState]
    assert typing.get_origin(alias) is not None


def test_adapters_keep_the_solver_signature():
    # functools.wraps: introspection (and therefore the type checker's view through the
    # ParamSpec) sees the solver's parameters on the adapted function
    adapted = diffsolve.to_autograd(diffsolve.linear.solve)
    assert list(inspect.signature(adapted).parameters) == \
        list(inspect.signature(diffsolve.linear.solve).parameters)
