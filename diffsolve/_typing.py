"""Type aliases for diffsolve's public signatures.

The names say what a parameter is; the checker sees what it can verify. Arrays are typed
as ``Any`` because no array-API protocol is yet shared by NumPy, CuPy, array-api-strict and
the frameworks' tensors (SciPy's array-API layer makes the same choice), so an annotation
``x: Array`` documents "any array-API array" without rejecting a valid one.

Every alias here exists at runtime, so ``typing.get_type_hints`` resolves the public
signatures (``from __future__ import annotations`` keeps them as strings until then).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import scipy.sparse
import scipy.sparse.linalg

from ._backend import CSR

__all__ = [
    "Array",
    "ArrayLike",
    "Callback",
    "DType",
    "HostArray",
    "Matrix",
    "Namespace",
    "Real",
    "Seed",
    "State",
]

#: Any array-API array: ``numpy.ndarray``, ``cupy.ndarray``, an array-api-strict array.
#: Solvers keep its namespace, device and (floating) dtype.
Array: TypeAlias = Any

#: An array, or a Python scalar that the function turns into a 0-d array of the other
#: arguments' namespace and dtype (e.g. an entropic ``eps`` or a box bound).
ArrayLike: TypeAlias = Array | float

#: A real number given as a Python scalar or a 0-d array (never ``bool``; the validators in
#: ``diffsolve._validate`` reject it).
Real: TypeAlias = float

#: A dtype of an array namespace (``xp.float32``) or its name (``"float32"``).
DType: TypeAlias = Any

#: An array-API namespace module, as returned by ``diffsolve._backend.array_namespace``.
Namespace: TypeAlias = Any

#: A seed for a random generator: ``None`` (fresh entropy), an integer, or a generator.
Seed: TypeAlias = Any

#: A linear operator ``A``: a dense 2-D array, a :class:`diffsolve.CSR`, a SciPy or CuPy
#: sparse matrix/array, a ``scipy.sparse.linalg.LinearOperator``, or (where the function says
#: so) a callable ``v -> A v``.
Matrix: TypeAlias = (
    Array
    | CSR
    | scipy.sparse.spmatrix
    | scipy.sparse.sparray
    | scipy.sparse.linalg.LinearOperator
    | Callable[[Array], Array]
)

#: The state object a solver passes to ``callback`` (``KrylovState``, ``OTState``, ...).
State = TypeVar("State")

#: ``callback(state) -> bool | None``: called once per iteration (or per check); returning
#: ``True`` stops the solve with ``Status.STOPPED``. Subscript with the state type:
#: ``Callback[KrylovState]``.
Callback: TypeAlias = Callable[[State], bool | None]

if TYPE_CHECKING:
    from numpy.typing import NDArray

    #: A NumPy array on the host (the few code paths that only run on NumPy).
    HostArray: TypeAlias = NDArray[Any]
else:
    HostArray = Any
