"""The one array shim of diffsolve.

Everything that needs to know *which* array library is in use lives here: the array
namespace (from array-api-compat), devices, dense/sparse detection for SciPy and CuPy CSR
matrices, a stable log-sum-exp, dense and sparse factorisations, DLPack exchange with the
autodiff frameworks, and the dispatch of a kernel name to its Numba (NumPy input) or CuPy
(CuPy input) implementation. The rest of the package calls these helpers and the
``xp.*`` functions of the namespace they return, never numpy or cupy directly.

Nothing here copies data between host and device. Inputs that live on different devices
(NumPy together with CuPy) raise a ``TypeError`` that says how to fix the call.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

__all__ = [
    "CSR",
    "array_namespace",
    "as_csr",
    "device",
    "get_kernel",
    "is_array",
    "is_cupy",
    "is_linear_operator",
    "is_numpy",
    "is_sparse",
    "logsumexp",
]


# ---------------------------------------------------------------------------------------
# sparse matrices
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class CSR:
    """A CSR matrix given by its parts, whose ``data`` may be any framework's array.

    SciPy and CuPy sparse matrices cannot hold a torch tensor, a JAX array or an autograd
    box, so a differentiable sparse matrix is passed to the adapters as a ``CSR``: the
    pattern (``indices``, ``indptr``) is a constant and ``data`` is the differentiable leaf.
    Every diffsolve function accepts a ``CSR`` wherever it accepts a SciPy/CuPy CSR matrix,
    and the cotangent of a ``CSR`` argument is a ``CSR`` with the same pattern.

    Parameters
    ----------
    data : array, shape (nnz,)
        Stored values.
    indices : array of int, shape (nnz,)
        Column index of each stored value.
    indptr : array of int, shape (n_rows + 1,)
        Row pointers.
    shape : tuple of int
        ``(n_rows, n_cols)``.

    See Also
    --------
    diffsolve.to_torch : Differentiate a sparse matrix given as a ``CSR`` of tensors.
    diffsolve.linear.solve : Accepts a ``CSR`` wherever it accepts a SciPy CSR matrix.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> import diffsolve as ds
    >>> A = ds.CSR.from_sparse(sp.eye(3, format="csr") * 2.0)
    >>> ds.linear.solve(A, np.ones(3)).x
    array([0.5, 0.5, 0.5])
    """

    data: Any
    indices: Any
    indptr: Any
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 2:
            raise ValueError(f"diffsolve.CSR: shape must have two entries, got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        if len(self.indptr) != shape[0] + 1:
            raise ValueError(
                f"diffsolve.CSR: indptr has {len(self.indptr)} entries but shape {shape} needs "
                f"n_rows + 1 = {shape[0] + 1}"
            )
        if len(self.indices) != len(self.data):
            raise ValueError(
                f"diffsolve.CSR: data has {len(self.data)} entries but indices has "
                f"{len(self.indices)}; both must hold one entry per stored value"
            )

    @classmethod
    def from_sparse(cls, A: Any) -> CSR:
        """Parts of a SciPy or CuPy sparse matrix (converted to canonical CSR)."""
        A = as_csr(A)
        return cls(A.data, A.indices, A.indptr, A.shape)

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    @property
    def nnz(self) -> int:
        return len(self.data)

    def with_data(self, data: Any) -> CSR:
        """The same pattern with other stored values."""
        return CSR(data, self.indices, self.indptr, self.shape)

    def to_sparse(self) -> Any:
        """The SciPy (NumPy data) or CuPy (CuPy data) CSR matrix; no copy of the parts."""
        if is_cupy_array(self.data):
            import cupyx.scipy.sparse as csp

            return csp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)
        if not isinstance(self.data, np.ndarray):
            raise TypeError(
                "diffsolve.CSR.to_sparse: data is a "
                f"{type(self.data).__module__}.{type(self.data).__name__}; only NumPy and CuPy "
                "data make a SciPy/CuPy matrix (pass the CSR through diffsolve.to_torch / "
                "to_jax / to_autograd to use framework arrays)"
            )
        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)


def dense_to_csr(A, xp):
    """A dense NumPy/CuPy matrix as canonical CSR on the same device (``None`` otherwise)."""
    if is_numpy(xp):
        M = sp.csr_matrix(np.asarray(A))
    elif is_cupy(xp):
        import cupyx.scipy.sparse as csp

        M = csp.csr_matrix(A)
    else:
        return None
    M.sum_duplicates()
    M.sort_indices()
    return M


def is_cupy_sparse(A) -> bool:
    mod = sys.modules.get("cupyx.scipy.sparse")
    return mod is not None and isinstance(A, mod.spmatrix)


def is_sparse(A) -> bool:
    """True for SciPy sparse matrices/arrays, CuPy sparse matrices and :class:`CSR`."""
    return isinstance(A, CSR) or sp.issparse(A) or is_cupy_sparse(A)


def is_linear_operator(A) -> bool:
    """True for ``scipy.sparse.linalg.LinearOperator`` and CuPy's twin."""
    if isinstance(A, spla.LinearOperator):
        return True
    mod = sys.modules.get("cupyx.scipy.sparse.linalg")
    return mod is not None and isinstance(A, mod.LinearOperator)


def as_csr(A):
    """Canonical CSR form of a sparse matrix, on the device it is on (no host copy).

    Canonical means sorted indices and no duplicates, so that the pattern and the data
    array are well defined (the gradient of a sparse matrix is the gradient of its data).
    Returns the input itself when it already is canonical CSR.
    """
    if isinstance(A, CSR):
        return A.to_sparse()
    if sp.issparse(A):
        csr = A if A.format == "csr" else A.tocsr()
        if not isinstance(csr, sp.csr_matrix):
            csr = sp.csr_matrix(csr)
    elif is_cupy_sparse(A):
        csr = A if A.format == "csr" else A.tocsr()
    else:
        raise TypeError(f"as_csr: expected a sparse matrix, got {type(A).__name__}")
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()
    return csr


# ---------------------------------------------------------------------------------------
# namespaces and devices
# ---------------------------------------------------------------------------------------
def is_cupy_array(x) -> bool:
    return array_api_compat.is_cupy_array(x)


def is_array(x) -> bool:
    """True for any array the array API knows (NumPy, CuPy, array_api_strict, torch, JAX)."""
    return array_api_compat.is_array_api_obj(x)


def is_numpy_array(x) -> bool:
    """True for a NumPy ``ndarray`` or NumPy scalar (``np.float64(1.0)``), as
    ``array_api_compat.is_numpy_array``; a cheap test for hot paths (no namespace lookup)."""
    return isinstance(x, (np.ndarray, np.generic))


def _library(x) -> str:
    if is_sparse(x):
        data = x.data
        return _library(data)
    if is_linear_operator(x):
        return "cupy" if type(x).__module__.startswith("cupyx") else "numpy"
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    if array_api_compat.is_cupy_array(x):
        return "cupy"
    return type(x).__module__.split(".")[0]


def scaled_norm(xp, v) -> float:
    """The Euclidean norm of ``v`` as a host float, scaled by ``max|v|`` first so that
    entries beyond 1e154 (float64) do not overflow the squares: a diverging iterate is
    measured, not reported as ``inf``."""
    s = float(xp.max(xp.abs(v))) if math.prod(tuple(v.shape)) else 0.0
    if s == 0.0 or not math.isfinite(s):
        return s
    w = v / s
    return s * float(xp.sqrt(xp.sum(w * w)))


def content_checksum(v) -> int:
    """An exact checksum of a NumPy array's entries: ``sum_i w_i bits(v_i)`` modulo 2⁶⁴,
    the bits of each entry read as an unsigned integer and ``w_i`` irregular odd integers.

    Any change of one entry changes it (an odd weight is invertible modulo 2⁶⁴), however
    small the change, which a floating-point checksum would round away; permuting entries
    changes it too. One pass over the data (a compiled loop): for caches keyed on content,
    so that an array mutated in place is never a stale hit.
    """
    flat = np.ascontiguousarray(v).reshape(-1)
    unsigned = {8: np.uint64, 4: np.uint32, 2: np.uint16, 1: np.uint8}.get(flat.dtype.itemsize)
    bits = flat.view(unsigned) if unsigned is not None else flat.view(np.uint8)
    return int(get_kernel(np, "checksum.weighted_bit_sum")(bits))


def array_namespace(*xs, where: str = "diffsolve"):
    """The array-API namespace of the arrays in ``xs``.

    Sparse matrices count as arrays of their stored values (SciPy -> NumPy, CuPy sparse ->
    CuPy); LinearOperators count as the library they act on; ``None`` and Python scalars
    are ignored. Arrays from two libraries (for example NumPy with CuPy) raise a
    ``TypeError`` naming the calling function (``where``): diffsolve never moves data
    between host and device on its own.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve._backend import array_namespace
    >>> array_namespace(np.ones(3)).__name__
    'array_api_compat.numpy'
    """
    key = tuple(map(type, xs))
    known = _NAMESPACE_BY_TYPES.get(key)
    if known is not None:
        return known
    arrays: list[Any]
    libs: dict[str, Any]
    arrays, libs = [], {}
    type_decides = True
    for x in xs:
        if x is None or isinstance(x, (bool, int, float, complex)):
            continue
        if is_sparse(x):
            data = x.data
            arrays.append(data)
            libs.setdefault(_library(data), type(x).__name__)
            # SciPy sparse data is NumPy's and CuPy sparse data CuPy's, whatever the
            # instance; diffsolve's CSR holds either behind one type
            type_decides = type_decides and not isinstance(x, CSR)
        elif is_linear_operator(x):
            lib = _library(x)
            libs.setdefault(lib, type(x).__name__)
        elif is_array(x):
            if _library(x) == "dask":
                # a family solver would gather every chunk into one process (or fail deep in
                # a kernel): the chunk-wise twins live in diffsolve.distributed
                raise TypeError(
                    f"{where}: got a dask.array.Array; the family solvers run on one "
                    "machine's NumPy/CuPy arrays. For Dask inputs use the chunk-wise "
                    "functions of diffsolve.distributed (sinkhorn, linear_solve, odeint, "
                    "hypergradient, vjp, sinkhorn_pointcloud), or call x.compute() first "
                    "to solve on this machine"
                )
            arrays.append(x)
            libs.setdefault(_library(x), type(x).__name__)
        else:
            raise TypeError(
                f"{where}: expected arrays, got a {type(x).__module__}.{type(x).__name__}; "
                "pass NumPy/CuPy arrays, SciPy/CuPy sparse matrices or a LinearOperator"
            )
    if len(libs) > 1:
        found = ", ".join(f"{lib} ({name})" for lib, name in libs.items())
        raise TypeError(
            f"{where}: inputs live in different array libraries: {found}. diffsolve does "
            "not copy between host and device silently; move every input to one library "
            "first (e.g. cupy.asarray(x) for the GPU, or x.get() for the host)"
        )
    if not arrays:
        lib = next(iter(libs), "numpy")
        xp = _namespace_by_name(lib)
    else:
        xp = array_api_compat.array_namespace(*arrays)
    if type_decides:
        # every test above reads only the types (isinstance, the defining module), so the
        # answer is remembered per tuple of types: the hot paths call this on every solve
        if len(_NAMESPACE_BY_TYPES) >= 512:
            _NAMESPACE_BY_TYPES.clear()
        _NAMESPACE_BY_TYPES[key] = xp
    return xp


_NAMESPACE_BY_TYPES: dict[tuple, Any] = {}
#: the classes of NumPy's float32 / float64 dtypes (NumPy, CuPy and JAX arrays carry NumPy
#: dtypes; a class test tells them apart without a namespace call)
FLOAT_DTYPE_TYPES = (type(np.dtype("float32")), type(np.dtype("float64")))


def _namespace_by_name(lib: str):
    if lib == "cupy":
        import array_api_compat.cupy as xp
    else:
        import array_api_compat.numpy as xp  # type: ignore[no-redef]  # one of the two
    return xp


def is_numpy(xp) -> bool:
    return array_api_compat.is_numpy_namespace(xp)


def is_cupy(xp) -> bool:
    return array_api_compat.is_cupy_namespace(xp)


def is_jax(xp) -> bool:
    return array_api_compat.is_jax_namespace(xp)


def device(x):
    """The device an array (or the data of a sparse matrix) lives on."""
    if is_sparse(x):
        x = x.data
    return array_api_compat.device(x)










# ---------------------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------------------
def logsumexp(x, axis=None, keepdims=False, xp=None):
    """``log(sum(exp(x)))`` along ``axis`` without overflow or underflow.

    The maximum is shifted out first (a slice that is all ``-inf`` gives ``-inf``, a slice
    containing ``+inf`` gives ``+inf``), so any finite input is safe in float32 and float64.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve._backend import logsumexp
    >>> float(logsumexp(np.array([1000.0, 1000.0])))  # doctest: +ELLIPSIS
    1000.693147...
    """
    if xp is None:
        xp = array_namespace(x, where="diffsolve.logsumexp")
    m = xp.max(x, axis=axis, keepdims=True)
    # A slice of -inf (or a +inf) would give nan from inf - inf: shift by 0 there instead.
    m_safe = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    s = xp.sum(xp.exp(x - m_safe), axis=axis, keepdims=True)
    # an all -inf slice has s == 0: its answer is -inf, without a log(0) warning
    empty = s == 0
    out = xp.where(empty, xp.full_like(s, -math.inf), xp.log(xp.where(empty, 1, s)) + m_safe)
    if not keepdims:
        if axis is None:
            out = xp.reshape(out, ())
        else:
            out = xp.squeeze(out, axis=axis)
    return out


# ---------------------------------------------------------------------------------------
# factorisations (the array API has no LU; these keep a factor for the adjoint solve)
# ---------------------------------------------------------------------------------------
#: LAPACK getrs by dtype character (see DenseLU.solve)
_GETRS: dict = {}


class DenseLU:
    """An LU factorisation of a dense square matrix, reusable for ``A x = b`` and ``Aᵀ x = b``.

    NumPy uses SciPy's LAPACK getrf/getrs; CuPy uses cuSOLVER through cupyx; any other
    standard namespace (array_api_strict) keeps ``A`` and calls ``xp.linalg.solve``.
    """

    _lu: Any  # the library's LU factors, or None where xp.linalg.solve is used
    rcond_estimate: float | None

    def __init__(self, A, xp):
        self.xp = xp
        self.A = A
        self.n = A.shape[0]
        if is_numpy(xp):
            import scipy.linalg as sla
            from scipy.linalg.lapack import get_lapack_funcs

            # LAPACK getrf directly: it returns its status (info > 0: an exactly zero pivot),
            # which the check below reads and reports as `singular`, with advice.
            # scipy.linalg.lu_factor would turn that status into a LinAlgWarning.
            An = np.asarray(A)
            getrf, getrs = get_lapack_funcs(("getrf", "getrs"), (An,))
            # kept by dtype in the module, not on the instance: a factor is pickled when
            # Dask moves a residual between workers, and LAPACK wrappers cannot be
            _GETRS.setdefault(An.dtype.char, getrs)
            lu, piv, info = getrf(An, overwrite_a=False)
            if info < 0:  # pragma: no cover - an illegal argument: a bug, not a matrix
                raise ValueError(f"LAPACK getrf: illegal value in argument {-info}")
            self._lu = (lu, piv)
            self._solve = sla.lu_solve
            pivots = np.abs(np.diagonal(lu))
        elif is_cupy(xp):
            import cupy
            import cupyx.scipy.linalg as csla

            # cupyx has no status-returning LU: its RuntimeWarning on an exactly zero pivot
            # reaches the caller, beside the `singular` status the check below reports
            self._lu = csla.lu_factor(A, check_finite=False)
            self._solve = csla.lu_solve
            pivots = cupy.abs(cupy.diagonal(self._lu[0]))
        else:
            self._lu = None
            pivots = None
        if pivots is not None:
            scale = float(pivots.max()) if pivots.size else 0.0
            small = float(pivots.min()) if pivots.size else 0.0
            eps = float(xp.finfo(A.dtype).eps)
            self.rcond_estimate = small / scale if scale > 0 else 0.0
            self.singular = not (scale > 0 and small > eps * scale * 0.5)
        else:
            self.rcond_estimate = None
            self.singular = False

    def solve(self, b, trans: bool = False):
        if self._lu is not None:
            # LAPACK getrs directly for a right-hand side of the factor's dtype:
            # scipy.linalg.lu_solve adds ~15 µs of checks per call, the cost of a small
            # solve itself (the stiff ODE methods solve thousands of small systems)
            lu = self._lu[0]
            getrs = _GETRS.get(lu.dtype.char) if isinstance(lu, np.ndarray) else None
            if getrs is not None and type(b) is np.ndarray and b.dtype == lu.dtype \
                    and b.ndim in (1, 2) and b.shape[0] == self.n:
                x, info = getrs(self._lu[0], self._lu[1], b, trans=1 if trans else 0)
                if info == 0:
                    return x
            return self._solve(self._lu, b, trans=1 if trans else 0, check_finite=False)
        xp = self.xp
        A = xp.matrix_transpose(self.A) if trans else self.A
        try:
            if b.ndim == 1:
                return xp.linalg.solve(A, b[:, None])[:, 0]
            return xp.linalg.solve(A, b)
        except np.linalg.LinAlgError:
            self.singular = True
            return None


class SparseLU:
    """A direct sparse solve, reusable for ``A x = b`` and ``Aᵀ x = b``.

    NumPy: SuperLU (``scipy.sparse.linalg.splu``), factorised once, its factor reused by the
    adjoint. CuPy: cuSOLVER's on-device sparse QR solve (``cupyx...spsolve``) per right-hand
    side, since cupyx's ``splu`` factorises on the host and diffsolve copies nothing between
    host and device behind the user's back.
    """

    def __init__(self, A, xp):
        self.xp = xp
        self.A = A
        self.singular = False
        if is_numpy(xp):
            try:
                self._lu = spla.splu(A.tocsc(), permc_spec="COLAMD")
            except RuntimeError as err:  # SuperLU: "Factor is exactly singular"
                if "singular" not in str(err).lower():
                    raise
                self.singular = True
                self._lu = None
        else:
            self._lu = None

    def solve(self, b, trans: bool = False):
        if self._lu is not None:
            return self._lu.solve(np.asarray(b), trans="T" if trans else "N")
        import cupyx.scipy.sparse.linalg as cspla

        A = self.A.T.tocsr() if trans else self.A
        if b.ndim == 1:
            return cspla.spsolve(A, b)
        import cupy

        return cupy.stack([cspla.spsolve(A, b[:, j]) for j in range(b.shape[1])], axis=1)


# ---------------------------------------------------------------------------------------
# kernel dispatch
# ---------------------------------------------------------------------------------------
_KERNEL_PACKAGES = {"numpy": "diffsolve.kernels.cpu", "cupy": "diffsolve.kernels.cuda"}


def get_kernel(xp, name: str):
    """The compiled kernel ``name`` ("module.function") for the namespace ``xp``.

    NumPy inputs get the Numba kernel from ``diffsolve.kernels.cpu``, CuPy inputs the CUDA
    twin with the same signature from ``diffsolve.kernels.cuda``. Other namespaces have no
    compiled kernels and get ``None``, so callers fall back to standard array-API code.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> from diffsolve._backend import get_kernel
    >>> get_kernel(xp, "sparse.csr_matvec").__name__
    'csr_matvec'
    """
    if is_numpy(xp):
        package = _KERNEL_PACKAGES["numpy"]
    elif is_cupy(xp):
        package = _KERNEL_PACKAGES["cupy"]
    else:
        return None
    # solvers look kernels up per call (ODE steppers, Sinkhorn): an import_module per lookup
    # cost microseconds there, so resolved kernels are remembered
    key = (package, name)
    kernel = _KERNEL_CACHE.get(key)
    if kernel is None:
        kernel = _KERNEL_CACHE[key] = _resolve_kernel(package, name)
    return kernel


_KERNEL_CACHE: dict = {}


def _resolve_kernel(package: str, name: str):
    module_name, _, func_name = name.rpartition(".")
    if not module_name:
        raise ValueError(f"get_kernel: name must be 'module.function', got {name!r}")
    module = importlib.import_module(f"{package}.{module_name}")
    try:
        return getattr(module, func_name)
    except AttributeError:
        raise ValueError(
            f"get_kernel: {package}.{module_name} has no kernel {func_name!r}"
        ) from None


def contiguous(xp, x):
    """A C-contiguous version of ``x`` (no copy when it already is), for the kernels."""
    if is_numpy(xp):
        return np.ascontiguousarray(x)
    if is_cupy(xp):
        import cupy

        return cupy.ascontiguousarray(x)
    return x


def contiguous_copy(xp, x):
    """A C-contiguous copy of ``x`` that the in-place kernels may overwrite."""
    if is_numpy(xp):
        return np.array(x, order="C", copy=True)
    if is_cupy(xp):
        import cupy

        return cupy.array(x, order="C", copy=True)
    return xp.asarray(x, copy=True)


# ---------------------------------------------------------------------------------------
# DLPack exchange with autodiff frameworks (zero copy; the array stays on its device)
# ---------------------------------------------------------------------------------------
def from_dlpack(x, on_cuda: bool):
    """A NumPy (host) or CuPy (CUDA) view of a framework array through DLPack."""
    if on_cuda:
        import cupy

        return cupy.from_dlpack(x)
    return np.from_dlpack(x)


def dlpack_exportable(x):
    """``x`` ready to be taken by ``torch.from_dlpack`` without a copy where possible.

    NumPy refuses to export read-only arrays through DLPack, and SciPy sometimes returns
    them (broadcast views); those, and only those, are copied (on the host, no device move).
    """
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        return x.copy()
    if isinstance(x, np.generic):
        return np.asarray(x)
    return x


def host_numpy(x):
    """A NumPy array of a host array (NumPy, or anything that is already on the host)."""
    if is_cupy_array(x):
        raise TypeError(
            "diffsolve: a CuPy array reached a host-only code path; diffsolve does not copy "
            "device arrays to the host silently"
        )
    return np.asarray(x)


@contextlib.contextmanager
def finite_operands_product(xp):
    """Around a matrix product whose operands the caller has checked to be finite.

    NumPy reports the floating-point flags a BLAS call leaves set, and OpenBLAS kernels can
    leave the "invalid" flag set on finite operands (lanes read past the data; numpy/numpy
    issue #24067): a spurious ``RuntimeWarning: invalid value encountered in matmul``. With
    finite operands no operation of the product is invalid, so that one flag is ignored
    here; overflow is still reported. Other namespaces: nothing to do.
    """
    if is_numpy(xp):
        with np.errstate(invalid="ignore"):
            yield
    else:
        yield


def host_vector(x):
    """A small array of per-row diagnostics (error norms, flags) as a NumPy array, copied
    explicitly: CuPy with one ``.get()``, the synchronisation an adaptive batched step
    needs once per step (the batched form of reading one error norm); NumPy as is."""
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def report_floats(x) -> list[float]:
    """The entries of a small 1-D JAX array of diagnostics as Python floats, in one
    transfer (``jax.device_get`` plus ``float`` per entry costs 15 µs more per call; the
    compiled paths read their whole report this way, explicitly)."""
    return np.asarray(x).tolist()


def isfinite_all(xp, x) -> bool:
    """True when every entry of ``x`` is finite (one number synchronised on the GPU)."""
    if x.shape and math.prod(x.shape) == 0:
        return True
    return bool(xp.all(xp.isfinite(x)))


def promote_real_floating(*dtypes):
    """The real floating dtype two inputs promote to (integers promote to float64).

    Works on dtypes of any library (NumPy, CuPy, JAX, torch via their NumPy names), since
    only the dtype names are compared.
    """
    names = [_as_numpy_dtype(d) for d in dtypes]
    result = np.result_type(*names)
    return result if np.issubdtype(result, np.floating) else np.dtype(np.float64)


def _as_numpy_dtype(dtype):
    try:
        return np.dtype(dtype)
    except TypeError:  # torch dtypes are named "torch.float64"
        return np.dtype(str(dtype).replace("torch.", ""))


# ---------------------------------------------------------------------------------------
# host-side controllers (bandits, schedules): tiny state that lives on the CPU whatever
# backend the solves run on
# ---------------------------------------------------------------------------------------
def host_namespace():
    """The array-API namespace for host-side bookkeeping (array_api_compat.numpy)."""
    import array_api_compat.numpy as xp

    return xp


def host_rng(seed):
    """A seeded random generator on the host (``numpy.random.Generator``)."""
    return np.random.default_rng(seed)
