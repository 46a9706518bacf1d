"""The one validator module: option checks that every public solver shares.

Each public solver validates its options once, into a frozen settings dataclass, with the
checks below; its forward and backward rules read that object, so a default is written in
exactly one place. Every error names the function (``where``), the argument, what was
received and what would work. ``bool`` is rejected wherever a number is expected
(``maxiter=True`` is a bug, not one iteration).

Renamed options keep working for one release through :func:`renamed_options`, which
warns with a ``DeprecationWarning`` naming the new name.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping

__all__ = [
    "array_argument",
    "boolean",
    "callback",
    "choice",
    "choices",
    "finite_real",
    "float_array",
    "integer",
    "interval",
    "nonnegative_real",
    "optional_callable",
    "positive_int",
    "positive_real",
    "renamed_options",
    "same_library",
    "seed",
    "tolerances",
]


def _received(value) -> str:
    if isinstance(value, bool):
        return f"the bool {value!r}"
    if isinstance(value, (numbers.Number, str)) or value is None:
        return repr(value)
    return f"a {type(value).__module__}.{type(value).__qualname__}"


def _as_python_number(value):
    """A 0-d array or NumPy scalar as a Python number; anything else unchanged."""
    if hasattr(value, "shape") and tuple(getattr(value, "shape", ())) == () and \
            hasattr(value, "item") and not isinstance(value, bool):
        try:
            return value.item()
        except (TypeError, ValueError):  # a traced value, say: leave it to the caller's check
            return value
    return value


def integer(where: str, name: str, value, *, minimum: int = 0, allow_none: bool = False):
    """An ``int >= minimum`` (NumPy integers and 0-d integer arrays accepted), not a bool."""
    if value is None and allow_none:
        return None
    v = _as_python_number(value)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(
            f"{where}: {name} must be an integer >= {minimum}"
            f"{' or None' if allow_none else ''}, got {_received(value)}"
        )
    v = int(v)
    if v < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {v}")
    return v


def positive_int(where: str, name: str, value, *, allow_none: bool = False):
    """An ``int >= 1`` (see :func:`integer`)."""
    return integer(where, name, value, minimum=1, allow_none=allow_none)


def finite_real(where: str, name: str, value, *, allow_none: bool = False,
                minimum: float | None = None, strict: bool = False,
                maximum: float | None = None):
    """A finite real number as a Python float, optionally bounded; bools rejected."""
    if value is None and allow_none:
        return None
    v = _as_python_number(value)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        bound = ""
        if minimum is not None:
            bound = f" {'>' if strict else '>='} {minimum}"
        raise TypeError(f"{where}: {name} must be a finite real number{bound}"
                        f"{' or None' if allow_none else ''}, got {_received(value)}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{where}: {name} must be finite, got {v}")
    if minimum is not None and (v < minimum or (strict and v == minimum)):
        raise ValueError(f"{where}: {name} must be {'>' if strict else '>='} {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{where}: {name} must be <= {maximum}, got {v}")
    return v


def nonnegative_real(where: str, name: str, value, *, allow_none: bool = False):
    """A finite real ``>= 0``."""
    return finite_real(where, name, value, allow_none=allow_none, minimum=0.0)


def positive_real(where: str, name: str, value, *, allow_none: bool = False):
    """A finite real ``> 0``."""
    return finite_real(where, name, value, allow_none=allow_none, minimum=0.0, strict=True)


def interval(where: str, name: str, value, lo: float, hi: float, *, lo_open: bool = True,
             hi_open: bool = True, example: str = "") -> float:
    """A finite real in the interval from ``lo`` to ``hi`` (open or closed at each end)."""
    v = finite_real(where, name, value)
    ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{where}: {name} must be a number in {lb}{lo}, {hi}{rb}, got "
                         f"{value!r}{example}")
    return v


def tolerances(where: str, rtol, atol) -> tuple[float, float]:
    """``(rtol, atol)``, each finite and ``>= 0``.

    ``rtol = atol = 0`` is allowed and means a fixed budget: the solver runs exactly
    ``maxiter`` iterations (see :func:`diffsolve._status.report`).
    """
    return nonnegative_real(where, "rtol", rtol), nonnegative_real(where, "atol", atol)


def boolean(where: str, name: str, value) -> bool:
    """A ``bool`` (NumPy bools accepted), not an integer or a string."""
    v = _as_python_number(value)
    if not isinstance(v, (bool,)) and type(v).__name__ != "bool_":
        raise TypeError(f"{where}: {name} must be True or False, got {_received(value)}")
    return bool(v)


def choice(where: str, name: str, value, choices):
    """One of ``choices`` (compared with ``==``); the error lists the valid values."""
    if isinstance(value, str) or value is None or isinstance(value, (int, float)):
        for c in choices:
            if value == c and type(value) is type(c):
                return c
    raise ValueError(
        f"{where}: {name} must be one of {', '.join(repr(c) for c in choices)}; "
        f"got {_received(value)}"
    )


def choices(where: str, name: str, value, valid) -> tuple:
    """A tuple of names from ``valid`` (a single string counts as one name; ``None`` as none)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{where}: {name} must be a tuple of names from {list(valid)}, got "
                        f"{_received(value)}")
    unknown = [v for v in value if v not in valid]
    if unknown:
        raise ValueError(f"{where}: {name} {unknown} are not known; choose from {list(valid)}")
    return tuple(value)


def seed(where: str, value, *, name: str = "seed"):
    """``None``, a NumPy ``Generator`` or ``SeedSequence`` (kept), or an ``int >= 0``."""
    if value is None or hasattr(value, "bit_generator") or hasattr(value, "generate_state"):
        return value
    return integer(where, name, value, minimum=0)


def optional_callable(where: str, name: str, value, *, signature: str):
    """``None`` or a callable; the error shows the expected ``signature``."""
    if value is not None and not callable(value):
        raise TypeError(f"{where}: {name} must be None or a callable {signature}, got "
                        f"{_received(value)}")
    return value


def callback(where: str, value, *, name: str = "callback"):
    """``None`` or a callable ``callback(state) -> bool | None`` (``True`` stops)."""
    if value is not None and not callable(value):
        raise TypeError(
            f"{where}: {name} must be None or a callable taking the iteration state "
            f"(returning True stops the solve), got {_received(value)}"
        )
    return value


_FRAMEWORKS = ("torch", "jax", "jaxlib", "autograd")


def array_argument(where: str, name: str, x, *, is_array: Callable[[object], bool],
                   allow_frameworks: bool = False):
    """Reject what is not an array with an error that says how to pass one.

    Lists and tuples are refused (rather than converted) because conversion would pick a
    library and a device behind the caller's back. Framework tensors are refused unless
    ``allow_frameworks`` (functions that differentiate user code written in torch/JAX).
    """
    framework = type(x).__module__.split(".")[0]
    if is_array(x) and (allow_frameworks or framework not in _FRAMEWORKS):
        return x
    hint = (f"np.asarray({name})" if isinstance(x, (list, tuple, numbers.Number))
            else f"a NumPy or CuPy array (e.g. np.asarray({name}))")
    if framework in ("torch", "jax", "jaxlib", "autograd"):
        hint = (f"a NumPy/CuPy array; to differentiate through {framework}, wrap the solver "
                f"with diffsolve.to_{'jax' if framework.startswith('jax') else framework}(...)")
    raise TypeError(f"{where}: {name} must be an array, got {_received(x)}; pass {hint}")


def float_array(where: str, name: str, x, *, min_ndim: int = 0, max_ndim: int | None = None,
                allow_empty: bool = False, finite: bool = True,
                allow_frameworks: bool = False):
    """The one dtype / size / finiteness policy for array inputs of every family.

    * float32 and float64 arrays are used as they are (the dtype is kept);
    * integer arrays are promoted to float64 (NumPy's default float; on CuPy on the device,
      no host copy), as ``np.linalg.solve`` does;
    * float16, bool and complex arrays raise a ``TypeError``: float16 cannot resolve the
      default tolerances and the compiled kernels have no half-precision path;
    * lists, tuples, scalars, framework tensors raise a ``TypeError`` (see
      :func:`array_argument`); wrong ``ndim`` and (unless ``allow_empty``) size 0 raise a
      ``ValueError``; with ``finite=True``, NaN or inf entries raise a ``ValueError``.

    Read-only and non-contiguous arrays are accepted; solvers never write into inputs.
    ``allow_frameworks=True`` admits torch / JAX arrays under the same policy (for functions
    that differentiate user code written in those frameworks). Returns the (possibly
    promoted) array.
    """
    from . import _backend as B

    array_argument(where, name, x, is_array=B.is_array, allow_frameworks=allow_frameworks)
    shape = tuple(int(s) for s in x.shape)
    if x.ndim < min_ndim or (max_ndim is not None and x.ndim > max_ndim):
        want = (f"{min_ndim}" if max_ndim == min_ndim else
                f"at least {min_ndim}" if max_ndim is None else f"{min_ndim} to {max_ndim}")
        raise ValueError(f"{where}: {name} must have {want} dimension(s), got shape {shape}")
    xp = None
    # NumPy, CuPy and JAX arrays carry NumPy dtypes: float32 / float64 are told by the
    # dtype's class (no namespace call, which costs microseconds on JAX arrays)
    if type(x.dtype) not in B.FLOAT_DTYPE_TYPES:
        xp = B.array_namespace(x, where=where)
        if xp.isdtype(x.dtype, ("signed integer", "unsigned integer")):
            x = xp.astype(x, xp.float64)
        elif x.dtype not in (xp.float32, xp.float64):
            raise TypeError(
                f"{where}: {name} has dtype {x.dtype}; diffsolve works in float32 or float64 "
                "(integers are promoted to float64); convert it, e.g. "
                f"{name}.astype(np.float64)"
            )
    if not allow_empty and math.prod(shape) == 0:
        raise ValueError(f"{where}: {name} has shape {shape} with no entries; pass a "
                         "non-empty problem")
    if finite:
        xp = B.array_namespace(x, where=where) if xp is None else xp
        if not bool(xp.all(xp.isfinite(x))):
            raise ValueError(f"{where}: {name} contains NaN or inf; pass finite values")
    return x


def same_library(where: str, **arrays):
    """The array namespace of ``arrays``; a ``TypeError`` naming the argument that comes
    from another library (nothing is converted between libraries or devices)."""
    from . import _backend as B

    names = list(arrays)
    libs = {n: type(a).__module__.split(".")[0] for n, a in arrays.items()}
    first = names[0]
    for n in names[1:]:
        if libs[n] != libs[first]:
            raise TypeError(
                f"{where}: {n} is a {libs[n]} array but {first} is a {libs[first]} array; pass "
                "all of them from one library (NumPy with autograd.numpy functions, torch "
                "tensors with torch functions, JAX arrays with jax.numpy functions); "
                "diffsolve does not convert between them"
            )
    return B.array_namespace(*arrays.values(), where=where)


def renamed_options(where: str, kwargs: dict, renames: Mapping[str, str]) -> dict:
    """Move deprecated option names in ``kwargs`` to their new names, with a warning.

    ``renames`` maps old name -> new name. Giving both raises a ``TypeError``. Returns a
    new dict.
    """
    out = dict(kwargs)
    for old, new in renames.items():
        if old not in out:
            continue
        if new in out:
            raise TypeError(f"{where}: got both {old}= (deprecated) and {new}=; pass only {new}=")
        from ._status import warn_at_caller

        warn_at_caller(f"{where}: {old}= is deprecated and will be removed in the next "
                       f"release; use {new}= instead", DeprecationWarning)
        out[new] = out.pop(old)
    return out


def unexpected_options(where: str, kwargs: dict, valid) -> None:
    """Raise the ``TypeError`` Python would, naming the function and the valid options."""
    if kwargs:
        bad = ", ".join(sorted(kwargs))
        raise TypeError(f"{where}: unexpected keyword argument(s) {bad}; valid options are "
                        f"{', '.join(sorted(valid))}")
