"""``ConvDirectionModel``: the convolutional network of the Deep Conjugate Direction Method.

The network maps a residual on a regular 2-D or 3-D grid to a search direction that
approximates ``A⁻¹ r`` up to scale (Kaneda et al., "A Deep Conjugate Direction Method for
Iteratively Solving Linear Systems", ICML 2023, section 3.3). Architecture, as in the paper
but smaller: 3×3(×3) convolutions with 'same' zero padding, ReLU, residual blocks,
``levels`` successive 2×2(×2) average-pool levels (one by default) whose outputs are
upsampled (nearest) and added back to the level above (skip connections: a V-cycle), and a
linear output convolution. An optional second input channel carries the fluid mask (1 where
a cell is an unknown, 0 in solid/obstacle cells).

Everything is array-API code: the forward pass, and the backward pass used for training.
A convolution's input gradient is itself a convolution (with the filter flipped and its
channel axes swapped), so both go through :func:`conv_same`, which dispatches to the
compiled kernel of the backend (``kernels/cuda/conv.py`` on CuPy; on NumPy the im2col GEMM,
which measured faster than the Numba kernel ``kernels/cpu/conv.py``) or, for namespaces
without kernels, to the im2col product written with ``xp.matmul``. The filter gradient is
one GEMM against the im2col matrix. Hence training runs on NumPy and on CuPy from the same
code.

Layout: activations ``(batch, channels, D, H, W)``; a 2-D grid is ``D = 1`` with ``(1, 3, 3)``
filters and ``(1, 2, 2)`` pooling.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from itertools import product
from typing import Any, Literal, overload

import array_api_compat
import array_api_extra as xpx

from .. import _backend as B
from .._typing import Array, DType, Namespace

__all__ = ["ConvDirectionModel", "load_direction_model", "pretrained_direction_model"]

WHERE = "diffsolve.linear.ConvDirectionModel"
FORMAT_VERSION = 1
#: ``levels="auto"`` pools until no side of the coarsest level exceeds this many cells
AUTO_COARSEST = 8
_WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
PRETRAINED = {
    "poisson2d-64": "dcdm_poisson2d_64.npz",
    "poisson2d-64-obstacles": "dcdm_poisson2d_64_obstacles.npz",
    "poisson2d-multilevel": "dcdm_poisson2d_multilevel.npz",
    "poisson3d-multilevel": "dcdm_poisson3d_multilevel.npz",
}

# Which convolution the model uses on NumPy: "kernel" (the Numba row kernel), "im2col"
# (im2col + BLAS GEMM) or "auto": the kernel where rows are long and the work large, im2col
# otherwise. Measured single-threaded on the 2-core development machine (16 -> 16 channels,
# float32): the kernel is 1.7x faster at 256², 2.1x at 1024², 1.5x at 64³ and 1.4x on a
# 64² batch of 16, but im2col is faster at 64² batch 1 (0.6 vs 0.8 ms) and on a 16³ batch
# of 16 (58 vs 100 ms), where the kernel's per-row set-up dominates.
CPU_CONV = "auto"
KERNEL_MIN_WIDTH = 32
KERNEL_MIN_CELLS = 1 << 14


# ---------------------------------------------------------------------------------------
# array-API building blocks (forward and backward)
# ---------------------------------------------------------------------------------------
def _im2col(xp, x, ks):
    """``(C_in·K, B·P)`` matrix of the K shifted copies of ``x`` (B, C_in, D, H, W).

    The batch goes into the columns so that a convolution of the whole mini-batch is one
    GEMM (about 6x faster on NumPy than a batched matmul per sample, measured at 64²,
    batch 10, 16 channels).
    """
    nb, cin = x.shape[:2]
    spatial = tuple(x.shape[2:])
    xt = xp.permute_dims(x, (1, 0, 2, 3, 4))
    xpad = xpx.pad(xt, [(0, 0), (0, 0)] + [(k // 2, k // 2) for k in ks], xp=xp)
    cols = xp.stack([xpad[:, :, a:a + spatial[0], c:c + spatial[1], e:e + spatial[2]]
                     for a, c, e in product(*(range(k) for k in ks))], axis=1)
    return xp.reshape(cols, (cin * math.prod(ks), nb * math.prod(spatial)))


def _conv_im2col(xp, x, w, bias):
    """'same' convolution as one GEMM over the stacked shifted copies of ``x``."""
    nb = x.shape[0]
    spatial = tuple(x.shape[2:])
    cout = w.shape[0]
    cols = _im2col(xp, x, tuple(w.shape[2:]))
    out = xp.reshape(w, (cout, -1)) @ cols + bias[:, None]
    return xp.permute_dims(xp.reshape(out, (cout, nb, *spatial)), (1, 0, 2, 3, 4))


def conv_same(xp, x, w, bias, *, method=None):
    """``conv(x, w) + bias`` ('same' zero padding, stride 1) on ``(B, C, D, H, W)`` arrays.

    ``method``: "kernel" (the backend's compiled kernel), "im2col" (array-API GEMM), "auto"
    (on NumPy, the measured faster of the two for this shape) or None (the kernel where one
    exists; ``CPU_CONV`` on NumPy).
    """
    kernel = B.get_kernel(xp, "conv.conv_same")
    if kernel is None or _conv_method(xp, x, method) == "im2col":
        return _conv_im2col(xp, x, w, bias)
    out = xp.empty((x.shape[0], w.shape[0], *tuple(x.shape[2:])), dtype=x.dtype,
                   device=x.device)
    return kernel(B.contiguous(xp, x), B.contiguous(xp, w), B.contiguous(xp, bias), out)


def _conv_method(xp, x, method):
    """"kernel" or "im2col" for ``conv_same(..., method=method)`` on ``x``."""
    if method is None:
        method = CPU_CONV if B.is_numpy(xp) else "kernel"
    if method == "auto":
        cells = x.shape[0] * math.prod(tuple(x.shape[2:]))
        method = "kernel" if x.shape[-1] >= KERNEL_MIN_WIDTH and cells >= KERNEL_MIN_CELLS \
            else "im2col"
    return method


def conv_block_part(xp, x, w, bias, *, relu_in=False, relu_out=False, residual=None,
                    method=None):
    """``relu?(residual + conv(relu?(x), w) + bias)``: one pass of the NumPy row kernel where
    it is the chosen convolution (``kernels/cpu/conv.conv_same_fused``), else composed from
    :func:`conv_same` and array-API operations (the same values)."""
    if B.is_numpy(xp) and _conv_method(xp, x, method) == "kernel":
        fused = B.get_kernel(xp, "conv.conv_same_fused")
        out = xp.empty((x.shape[0], w.shape[0], *tuple(x.shape[2:])), dtype=x.dtype)
        return fused(B.contiguous(xp, x), B.contiguous(xp, w), B.contiguous(xp, bias), out,
                     relu_in=relu_in, relu_out=relu_out,
                     residual=None if residual is None else B.contiguous(xp, residual))
    y = conv_same(xp, _relu(xp, x) if relu_in else x, w, bias, method=method)
    if residual is not None:
        y = residual + y
    return _relu(xp, y) if relu_out else y


def conv_same_backward(xp, x, w, gout):
    """Gradients ``(gx, gw, gbias)`` of ``conv_same(x, w, bias)`` for the cotangent ``gout``.

    ``gx`` is the convolution of ``gout`` with the flipped filter whose channel axes are
    swapped (the adjoint of a stride-1 'same' correlation with odd filters); ``gw`` is
    ``gout`` times the transposed im2col matrix of ``x``.
    """
    w_adj = xp.flip(xp.permute_dims(w, (1, 0, 2, 3, 4)), axis=(2, 3, 4))
    zeros = xp.zeros((w.shape[1],), dtype=w.dtype, device=w.device)
    gx = conv_same(xp, gout, w_adj, zeros)
    cols = _im2col(xp, x, tuple(w.shape[2:]))
    gout2 = xp.reshape(xp.permute_dims(gout, (1, 0, 2, 3, 4)), (w.shape[0], -1))
    gw = xp.reshape(gout2 @ xp.matrix_transpose(cols), tuple(w.shape))
    gb = xp.sum(gout, axis=(0, 2, 3, 4))
    return gx, gw, gb


def _relu(xp, x):
    return xp.maximum(x, xp.zeros((), dtype=x.dtype))


def _padded_shape(spatial, factors):
    return tuple(-(-s // f) * f for s, f in zip(spatial, factors, strict=True))


def _avg_pool(xp, x, factors):
    """Mean over ``factors`` blocks; odd sizes are zero-padded at the high end."""
    nb, c = x.shape[:2]
    spatial = tuple(x.shape[2:])
    full = _padded_shape(spatial, factors)
    if full != spatial:
        x = xpx.pad(x, [(0, 0), (0, 0)] + [(0, f - s) for s, f in zip(spatial, full,
                                                                         strict=True)], xp=xp)
    coarse = tuple(s // f for s, f in zip(full, factors, strict=True))
    y = xp.reshape(x, (nb, c, coarse[0], factors[0], coarse[1], factors[1], coarse[2],
                       factors[2]))
    return xp.mean(y, axis=(3, 5, 7))


def _upsample(xp, d, factors, spatial):
    """Nearest-neighbour upsampling by ``factors``, cropped to ``spatial``."""
    nb, c = d.shape[:2]
    cs = tuple(d.shape[2:])
    y = xp.broadcast_to(d[:, :, :, None, :, None, :, None],
                        (nb, c, cs[0], factors[0], cs[1], factors[1], cs[2], factors[2]))
    y = xp.reshape(y, (nb, c, cs[0] * factors[0], cs[1] * factors[1], cs[2] * factors[2]))
    return y[:, :, :spatial[0], :spatial[1], :spatial[2]]


def _upsample_backward(xp, g, factors, coarse_shape):
    """Adjoint of :func:`_upsample`: block sums (the cropped cells contribute zero)."""
    nb, c = g.shape[:2]
    spatial = tuple(g.shape[2:])
    full = tuple(s * f for s, f in zip(coarse_shape, factors, strict=True))
    if full != spatial:
        g = xpx.pad(g, [(0, 0), (0, 0)] + [(0, f - s) for s, f in zip(spatial, full,
                                                                         strict=True)], xp=xp)
    y = xp.reshape(g, (nb, c, coarse_shape[0], factors[0], coarse_shape[1], factors[1],
                       coarse_shape[2], factors[2]))
    return xp.sum(y, axis=(3, 5, 7))


def _avg_pool_backward(xp, g, factors, spatial):
    """Adjoint of :func:`_avg_pool`: spread each coarse cotangent evenly over its block."""
    return _upsample(xp, g, factors, spatial) / math.prod(factors)


def _stage_names(levels, shared=False):
    """Block-name prefixes in forward order: the way down, the coarsest level, the way up.

    Level 0 (the grid) keeps the names of the one-level network ("fine_in", "fine_out") and
    the coarsest level is "coarse", so ``levels=1`` has exactly the parameter names of the
    weights shipped before ``levels`` existed; the levels in between are "level{l}_in" and
    "level{l}_out" (l = 1 is the first pooled level), or all "level_in" / "level_out" when
    they share their weights (``shared``).
    """
    down = ["fine_in"] + [("level_in" if shared else f"level{lv}_in") for lv in range(1, levels)]
    up = ["fine_out"] + [("level_out" if shared else f"level{lv}_out")
                         for lv in range(1, levels)]
    return down, "coarse", up


def auto_levels(grid_shape: tuple[int, ...], coarsest: int = AUTO_COARSEST) -> int:
    """Pooling levels after which no side of ``grid_shape`` exceeds ``coarsest`` cells.

    Each level halves every side (rounding up, as the zero-padded pooling does); at least one
    level. This is what ``levels="auto"`` resolves to on the grid a model is built for.

    Parameters
    ----------
    grid_shape : tuple of int
        The grid (2 or 3 positive sizes).
    coarsest : int
        Largest side allowed at the coarsest level (default 8).

    Returns
    -------
    int
        The number of levels, at least 1.

    Examples
    --------
    >>> from diffsolve.linear import ConvDirectionModel
    >>> auto = ConvDirectionModel.auto_levels
    >>> auto((64, 64)), auto((256, 256)), auto((9, 5))
    (3, 5, 1)
    """
    grid_shape = tuple(int(s) for s in grid_shape)
    if not isinstance(coarsest, int) or isinstance(coarsest, bool) or coarsest < 1:
        raise ValueError("diffsolve.linear.ConvDirectionModel.auto_levels: coarsest must be a "
                         f"positive integer, got {coarsest!r}")
    if not grid_shape or min(grid_shape) < 1:
        raise ValueError("diffsolve.linear.ConvDirectionModel.auto_levels: grid_shape must be "
                         f"positive sizes, got {grid_shape}")
    levels, side = 1, -(-max(grid_shape) // 2)
    while side > coarsest:
        levels += 1
        side = -(-side // 2)
    return levels


def _check_levels(levels, grid_shape, where, shared_levels=False):
    """``levels`` as a positive int (``"auto"`` resolved on ``grid_shape``), or a clear error.

    With ``shared_levels`` the depth follows every grid the model meets, so ``"auto"`` stays
    ``"auto"``; a fixed depth must be at least 2 (one level has nothing to share).
    """
    if not isinstance(shared_levels, bool):
        raise ValueError(f"{where}: shared_levels must be True or False, got {shared_levels!r}")
    if shared_levels:
        if isinstance(levels, str) and levels == "auto":
            return "auto"
        if not isinstance(levels, numbers.Integral) or isinstance(levels, bool) or levels < 2:
            raise ValueError(f"{where}: shared_levels=True needs levels='auto' (the depth "
                             "follows the grid) or an integer levels >= 2 (the levels between "
                             f"the grid and the coarsest share their weights), got {levels!r}")
        return int(levels)
    if isinstance(levels, str) and levels == "auto":
        if grid_shape is None:
            raise ValueError(f"{where}: levels='auto' chooses the depth from the grid, but no "
                             "grid was given; pass grid_shape= (or mask=), or an integer "
                             "levels such as 1, 2 or 3")
        return auto_levels(grid_shape)
    if not isinstance(levels, numbers.Integral) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"{where}: levels must be a positive integer (1 = one pooling level, "
                         f"the shipped architecture) or 'auto', got {levels!r}")
    return int(levels)


def _to_host(x):
    """A NumPy copy of a parameter, from any namespace (CuPy explicitly via ``.get()``)."""
    if B.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_numpy_array(x):
        return x
    return B.host_namespace().from_dlpack(x)  # other host libraries (array_api_strict)


def _asarray_on(xp, x, device):
    """``x`` in namespace ``xp`` on ``device``; other namespaces go through a host copy."""
    if B.is_cupy(xp) and B.is_cupy_array(x):
        return x
    try:
        if B.array_namespace(x).__name__ == xp.__name__:
            return x
    except TypeError:
        pass
    host = _to_host(x)
    if B.is_cupy(xp):
        return xp.asarray(host)
    return xp.asarray(host, device=device)


# ---------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------
class ConvDirectionModel:
    """Convolutional direction network for :func:`diffsolve.linear.solve` (``method="dcdm"``).

    Parameters
    ----------
    dim : {2, 3}
        Grid dimension (3×3 or 3×3×3 filters, 2×2 or 2×2×2 pooling).
    channels : int
        Feature channels of every hidden convolution (16 in the paper).
    n_blocks : int
        Residual blocks (two convolutions each) on every stage: each level on the way down
        (before its pooling), the coarsest level, each level on the way up (after the
        upsampled coarser features are added to the level's skip connection).
    mask : bool array of the grid's shape, optional
        Fluid mask of the grid the model is bound to (True: the cell is an unknown,
        False: solid/obstacle, excluded from the system). Giving it switches the mask
        input channel on and binds the grid (see :meth:`on_grid`).
    seed : int
        Seed of the (He) initialisation.
    mask_channel : bool, optional
        Whether the network has the mask input channel (default: whether ``mask`` is given).
        A model trained with a mask channel can be bound to other masks with :meth:`on_grid`.
    grid_shape : tuple of int, optional
        The grid the model is bound to; unknowns are its cells in C (row-major) order, or
        only the True cells of ``mask``. Without it :func:`~diffsolve.linear.solve` assumes
        a square (cubic) grid of all ``n`` unknowns.
    dtype : str
        Parameter dtype ("float32", the default, or "float64").
    like : array, optional
        Create the parameters in this array's namespace and device (default NumPy).
    levels : int or "auto"
        Number of successive 2×2(×2) average-pool levels (a V-cycle of depth ``levels``).
        ``1`` (the default) is the architecture of the shipped weights. ``"auto"`` pools
        until no side of the coarsest level of the bound grid exceeds 8 cells
        (:meth:`auto_levels`) and needs ``grid_shape`` or ``mask``; it is resolved once, so
        the model keeps that depth on other grids. Parameters of level 0 (the grid) are
        named ``fine_in{i}`` / ``fine_out{i}``, of the coarsest level ``coarse{i}``, of the
        levels in between ``level{l}_in{i}`` / ``level{l}_out{i}``.
    shared_levels : bool
        Every level between the grid and the coarsest uses the same blocks (parameters
        ``level_in{i}`` / ``level_out{i}``), like a multigrid cycle that applies one
        smoother on every level. With ``levels="auto"`` the depth is then chosen anew on
        every grid the model runs on (:meth:`auto_levels` of that grid: 3 at 64², 5 at
        256², 7 at 1024²), so the coarsest level always sees at most 8 cells per side, as
        in training; with an integer ``levels`` (at least 2) the depth is fixed. The
        parameter count does not depend on the depth.
    coefficient_channel : bool
        Give the network the matrix diagonal ``d`` (bound with :meth:`on_grid`, or by
        :func:`~diffsolve.linear.solve` from ``A`` itself): the network then maps the
        Jacobi-scaled residual ``d^{-1/2} r`` to ``d^{-1/2} N(d^{-1/2} r, log d)``, with
        ``log d`` (centred on its mean) as an extra input channel, so one model can serve
        variable coefficients and Neumann or Dirichlet walls (they change the diagonal of
        the wall cells). Both scalings are fixed diagonal maps, so the direction stays a
        function of the residual alone and the backward rule only rescales the cotangent.

    See Also
    --------
    diffsolve.linear.train_direction_model : Train the model on your matrices.
    diffsolve.linear.pretrained_direction_model : The shipped models.
    diffsolve.linear.load_direction_model : Load a saved model.
    diffsolve.linear.solve : ``method="dcdm"`` solves with the model.

    Notes
    -----
    The input residual is divided by its root-mean-square before the first convolution,
    so that the same weights see inputs of the same scale on every grid size; the solver's
    line search makes the output scale irrelevant.

    With one level a cell's direction depends on about 25 cells around it, which is why the
    iteration count grows with the grid; every further level doubles that reach for a
    quarter (an eighth in 3-D) of the previous level's cost. Odd sizes are zero-padded at
    the high end before pooling and the upsampled result is cropped back, at every level.

    Examples
    --------
    >>> import numpy as np
    >>> from diffsolve.linear import ConvDirectionModel
    >>> model = ConvDirectionModel(dim=2, channels=4, n_blocks=1, grid_shape=(8, 8))
    >>> model(np.ones(64)).shape
    (64,)
    >>> deep = ConvDirectionModel(dim=2, channels=4, levels="auto", grid_shape=(40, 40))
    >>> deep.levels, deep(np.ones(1600)).shape
    (3, (1600,))
    """

    # tuple of int once bound (_bind); the grid methods run only on a bound model
    grid_shape: Any

    def __init__(self, dim: int = 2, channels: int = 16, n_blocks: int = 1,
                 mask: Array | None = None, seed: int = 0, *, mask_channel: bool | None = None,
                 grid_shape: tuple[int, ...] | None = None, dtype: str = "float32",
                 like: Array | None = None, levels: int | str = 1,
                 shared_levels: bool = False, coefficient_channel: bool = False) -> None:
        if dim not in (2, 3):
            raise ValueError(f"{WHERE}: dim must be 2 or 3, got {dim!r}")
        for name, value in (("channels", channels), ("n_blocks", n_blocks)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{WHERE}: {name} must be a positive integer, got {value!r}")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"{WHERE}: dtype must be 'float32' or 'float64', got {dtype!r}")
        self.levels = _check_levels(
            levels, grid_shape if grid_shape is not None else
            (tuple(mask.shape) if mask is not None else None), WHERE, shared_levels)
        self.shared_levels = shared_levels
        self.dim = dim
        self.channels = channels
        self.n_blocks = n_blocks
        self.mask_channel = bool(mask is not None if mask_channel is None else mask_channel)
        if not isinstance(coefficient_channel, bool):
            raise ValueError(f"{WHERE}: coefficient_channel must be True or False, got "
                             f"{coefficient_channel!r}")
        self.coefficient_channel = coefficient_channel
        self.seed = seed
        self.metadata: dict[str, Any] = {}
        self.kernel = (1, 3, 3) if dim == 2 else (3, 3, 3)
        self.pool = (1, 2, 2) if dim == 2 else (2, 2, 2)
        hxp = B.host_namespace()
        rng = B.host_rng(seed)
        params = {}
        n_in = 1 + int(self.mask_channel) + int(coefficient_channel)
        taps = math.prod(self.kernel)

        def he(cout, cin, gain=1.0):
            std = gain * math.sqrt(2.0 / (cin * taps))
            return rng.standard_normal((cout, cin, *self.kernel)) * std

        params["in.w"] = he(channels, n_in)
        params["in.b"] = hxp.zeros(channels)
        # creation order = forward order, so levels=1 draws the same initial weights as the
        # one-level network did for the same seed; shared levels: each name once
        down, coarse, up = _stage_names(2 if self.shared_levels else self.levels,
                                        self.shared_levels)
        for level in [*down, coarse, *reversed(up)]:
            for i in range(n_blocks):
                params[f"{level}{i}.w1"] = he(channels, channels)
                params[f"{level}{i}.b1"] = hxp.zeros(channels)
                # small second convolution: every block starts close to the identity
                params[f"{level}{i}.w2"] = he(channels, channels, gain=0.1)
                params[f"{level}{i}.b2"] = hxp.zeros(channels)
        params["out.w"] = he(1, channels, gain=0.5)
        params["out.b"] = hxp.zeros(1)
        self.params = {k: hxp.asarray(v, dtype=getattr(hxp, dtype)) for k, v in params.items()}
        self.xp = hxp
        if like is not None:
            self._move_params(B.array_namespace(like, where=WHERE), B.device(like))
        self.grid_shape = None
        self.mask = None
        self._gather = None
        self._dscale = None
        self._coefficient = None
        self._coef_grid = None
        if grid_shape is not None or mask is not None:
            # mask is not None when grid_shape is (the condition above)
            self._bind(grid_shape if grid_shape is not None else
                       tuple(mask.shape), mask)  # type: ignore[union-attr]

    # ----- parameters, devices, dtypes ------------------------------------------------
    @property
    def dtype(self) -> DType:
        return self.params["in.w"].dtype

    @property
    def n_params(self) -> int:
        """Number of trainable scalars."""
        return sum(math.prod(p.shape) for p in self.params.values())

    def config(self) -> dict[str, Any]:
        """The architecture (what :meth:`save` writes besides the weights)."""
        return {"dim": self.dim, "channels": self.channels, "n_blocks": self.n_blocks,
                "mask_channel": self.mask_channel, "seed": self.seed, "levels": self.levels,
                "shared_levels": self.shared_levels,
                "coefficient_channel": self.coefficient_channel}

    auto_levels = staticmethod(auto_levels)

    def depth(self, grid_shape: tuple[int, ...] | None = None) -> int:
        """Pooling levels the network applies on ``grid_shape`` (default: the bound grid).

        ``levels`` itself, except for ``shared_levels=True`` with ``levels="auto"``, where it
        is :meth:`auto_levels` of the grid.
        """
        if self.levels != "auto":
            return int(self.levels)
        grid = self.grid_shape if grid_shape is None else grid_shape
        if grid is None:
            raise ValueError(f"{WHERE}: levels='auto' with shared_levels chooses the depth "
                             "from the grid; pass grid_shape or bind the model (on_grid)")
        return auto_levels(tuple(grid))

    def _copy(self):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.params = dict(self.params)
        new.metadata = dict(self.metadata)
        return new

    def _move_params(self, xp, device):
        self.params = {k: _asarray_on(xp, v, device) for k, v in self.params.items()}
        self.xp = xp

    def to(self, like: Array) -> ConvDirectionModel:
        """A copy whose parameters (and bound mask) live in ``like``'s namespace and device.

        This is the one place where a model's weights move between host and GPU.
        """
        xp = B.array_namespace(like, where=f"{WHERE}.to")
        device = B.device(like)
        new = self._copy()
        new._move_params(xp, device)
        if new.grid_shape is not None:
            mask = None if new.mask is None else _asarray_on(xp, new.mask, device)
            coefficient = (None if new._coefficient is None
                           else _asarray_on(xp, new._coefficient, device))
            new._bind(new.grid_shape, mask, coefficient)
        return new

    def astype(self, dtype: DType) -> ConvDirectionModel:
        """A copy with parameters cast to ``dtype`` ("float32" or "float64")."""
        xp = self.xp
        new = self._copy()
        new.params = {k: xp.astype(v, getattr(xp, dtype)) for k, v in self.params.items()}
        return new

    def namespace_matches(self, xp: Namespace, device: Any) -> bool:
        p = self.params["in.w"]
        return (B.is_numpy(xp) == B.is_numpy(self.xp) and B.is_cupy(xp) == B.is_cupy(self.xp)
                and xp.__name__ == self.xp.__name__ and str(B.device(p)) == str(device))

    # ----- grid binding -----------------------------------------------------------------
    def _bind(self, grid_shape, mask, coefficient=None):
        grid_shape = tuple(int(s) for s in grid_shape)
        if len(grid_shape) != self.dim or min(grid_shape) < 1:
            raise ValueError(f"{WHERE}: grid_shape must be {self.dim} positive sizes for a "
                             f"dim={self.dim} model, got {grid_shape}")
        xp = self.xp
        self.grid_shape = grid_shape
        self.mask = None
        self._gather = None
        if mask is not None:
            if not self.mask_channel:
                raise ValueError(f"{WHERE}: this model has no mask channel (it was built "
                                 "without mask); build or train it with a mask, or drop mask")
            if tuple(mask.shape) != grid_shape:
                raise ValueError(f"{WHERE}: mask has shape {tuple(mask.shape)} but the grid "
                                 f"is {grid_shape}")
            mask = _asarray_on(xp, mask, B.device(self.params["in.w"]))
            flat = xp.reshape(xp.astype(mask, xp.bool), (-1,))
            n_fluid = int(xp.sum(xp.astype(flat, xp.int64)))
            if n_fluid == 0:
                raise ValueError(f"{WHERE}: mask has no True (fluid) cell")
            self.mask = xp.astype(mask, xp.bool)
            # gather indices of the unknowns, and for each cell the index of its unknown in
            # [values..., 0] (solid cells read the appended zero): scatter as a gather
            self._gather = xp.nonzero(flat)[0]
            rank = xp.cumulative_sum(xp.astype(flat, xp.int64)) - 1
            self._scatter = xp.where(flat, rank, xp.full_like(rank, n_fluid))
        elif self.mask_channel:
            self._scatter = None
        self._coefficient = None
        self._dscale = None
        self._coef_grid = None
        if coefficient is not None:
            self._bind_coefficient(coefficient)

    def _bind_coefficient(self, coefficient):
        """The matrix diagonal: its ``d^{-1/2}`` scaling and the centred ``log d`` channel."""
        if not self.coefficient_channel:
            raise ValueError(f"{WHERE}: this model has no coefficient channel (it was built "
                             "without coefficient_channel=True); drop coefficient, or build "
                             "and train a model with coefficient_channel=True")
        xp = self.xp
        n = self.n_unknowns
        d = _asarray_on(xp, coefficient, B.device(self.params["in.w"]))
        if tuple(d.shape) != (n,):
            raise ValueError(f"{WHERE}: coefficient must be the matrix diagonal, one value per "
                             f"unknown: shape ({n},) for the grid {self.grid_shape}, got "
                             f"{tuple(d.shape)}")
        d = xp.astype(d, xp.float64)
        if not bool(xp.all(d > 0)) or not bool(xp.all(xp.isfinite(d))):
            raise ValueError(f"{WHERE}: coefficient (the matrix diagonal) must be positive and "
                             "finite everywhere, as the diagonal of a symmetric positive "
                             f"definite matrix is; got values in [{float(xp.min(d))!r}, "
                             f"{float(xp.max(d))!r}]")
        self._coefficient = d
        # kept in the weights' dtype, so the per-iteration casts in forward are no-ops
        self._dscale = xp.astype(xp.reshape(1.0 / xp.sqrt(d), (-1, 1)), self.dtype)
        logd = xp.log(d)
        # centred, so a matrix scaled by a constant gives the same input
        self._coef_grid = xp.astype(
            self._grid_output_backward((logd - xp.mean(logd))[:, None]), self.dtype)

    def _need_coefficient(self):
        if self._dscale is None:
            raise ValueError(f"{WHERE}: this model has a coefficient channel but no matrix "
                             "diagonal is bound; bind it with model.on_grid(grid_shape, mask, "
                             "coefficient=A.diagonal()) (diffsolve.linear.solve binds A's own)")

    @property
    def n_unknowns(self) -> int | None:
        """Unknowns of the bound grid (fluid cells), or None when unbound."""
        if self.grid_shape is None:
            return None
        return math.prod(self.grid_shape) if self._gather is None else self._gather.shape[0]

    def on_grid(self, grid_shape: tuple[int, ...], mask: Array | None = None,
                coefficient: Array | None = None) -> ConvDirectionModel:
        """A copy bound to ``grid_shape`` (and fluid ``mask``), sharing the weights.

        The convolutions do not depend on the grid size, so a model trained on 64² can be
        bound to 128² or 256² (or to another obstacle layout with a mask-channel model).
        A model with ``coefficient_channel`` also takes the matrix diagonal
        (``coefficient``, one value per unknown).
        """
        new = self._copy()
        new._bind(grid_shape, mask, coefficient)
        return new

    # ----- vectors <-> grids ------------------------------------------------------------
    def _grid_input(self, v):
        """``(n, B)`` unknowns -> ``(B, C_in, D, H, W)`` network input (RMS-normalised)."""
        xp = self.xp
        nb = v.shape[1]
        rms = xp.sqrt(xp.mean(v * v, axis=0))
        rms = xp.where(rms > 0, rms, xp.ones_like(rms))
        v = v / rms
        shape3 = (1, *self.grid_shape) if self.dim == 2 else self.grid_shape
        cols = xp.matrix_transpose(v)
        if self._gather is not None:
            padded = xp.concat([cols, xp.zeros((nb, 1), dtype=v.dtype, device=v.device)],
                               axis=1)
            cols = xp.take(padded, self._scatter, axis=1)
        grid = xp.reshape(cols, (nb, 1, *shape3))
        if self.mask_channel:
            if self.mask is not None:
                m = xp.astype(xp.reshape(self.mask, (1, 1, *shape3)), v.dtype)
            else:
                m = xp.ones((1, 1, *shape3), dtype=v.dtype, device=v.device)
            grid = xp.concat([grid, xp.broadcast_to(m, grid.shape)], axis=1)
        if self.coefficient_channel:
            c = xp.astype(self._coef_grid, v.dtype, copy=False)
            grid = xp.concat([grid, xp.broadcast_to(c, (nb, 1, *shape3))], axis=1)
        return grid

    def _grid_output(self, out):
        """``(B, 1, D, H, W)`` network output -> ``(n, B)`` unknowns."""
        xp = self.xp
        flat = xp.reshape(out, (out.shape[0], -1))
        if self._gather is not None:
            flat = xp.take(flat, self._gather, axis=1)
        return xp.matrix_transpose(flat)

    def _grid_output_backward(self, g):
        """Adjoint of :meth:`_grid_output`: ``(n, B)`` -> ``(B, 1, D, H, W)``."""
        xp = self.xp
        nb = g.shape[1]
        cols = xp.matrix_transpose(g)
        if self._gather is not None:
            padded = xp.concat([cols, xp.zeros((nb, 1), dtype=g.dtype, device=g.device)],
                               axis=1)
            cols = xp.take(padded, self._scatter, axis=1)
        shape3 = (1, *self.grid_shape) if self.dim == 2 else self.grid_shape
        return xp.reshape(cols, (nb, 1, *shape3))

    # ----- the network ------------------------------------------------------------------
    @overload
    def forward_grid(self, x: Array, *, keep: Literal[False] = False,
                     conv: str | None = None) -> Array: ...
    @overload
    def forward_grid(self, x: Array, *, keep: Literal[True],
                     conv: str | None = None) -> tuple[Array, dict[str, Any]]: ...
    def forward_grid(self, x: Array, *, keep: bool = False,
                     conv: str | None = None) -> Array | tuple[Array, dict[str, Any]]:
        """Network on grid input ``x`` (B, C_in, D, H, W) -> (B, 1, D, H, W).

        With ``keep=True`` also returns what :meth:`backward_grid` needs.
        """
        xp, P = self.xp, self.params
        tape: list[Any] | None = [] if keep else None

        def cv(inp, name):
            return conv_same(xp, inp, P[name + ".w"], P[name + ".b"], method=conv)

        def block(h, name):
            if not keep:
                # inference: the block in two fused passes (ReLUs and the residual sum
                # inside the convolution where the row kernel runs)
                c = conv_block_part(xp, h, P[name + ".w1"], P[name + ".b1"], relu_in=True,
                                    relu_out=True, method=conv)
                return conv_block_part(xp, c, P[name + ".w2"], P[name + ".b2"], residual=h,
                                       method=conv)
            a = _relu(xp, h)
            t = conv_same(xp, a, P[name + ".w1"], P[name + ".b1"], method=conv)
            c = _relu(xp, t)
            y = h + conv_same(xp, c, P[name + ".w2"], P[name + ".b2"], method=conv)
            if keep:
                tape.append((name, a, c))  # type: ignore[union-attr]  # a list when keep
            return y

        levels = self.depth(tuple(x.shape[2:])[3 - self.dim:])
        down, coarse, up = _stage_names(levels, self.shared_levels)
        h = cv(x, "in")
        skips = []
        shapes = []  # spatial shape of every level, the grid first and the coarsest last
        for name in down:
            for i in range(self.n_blocks):
                h = block(h, f"{name}{i}")
            skips.append(h)
            shapes.append(tuple(h.shape[2:]))
            h = _avg_pool(xp, h, self.pool)
        shapes.append(tuple(h.shape[2:]))
        for i in range(self.n_blocks):
            h = block(h, f"{coarse}{i}")
        for lv in reversed(range(levels)):
            h = skips[lv] + _upsample(xp, h, self.pool, shapes[lv])
            for i in range(self.n_blocks):
                h = block(h, f"{up[lv]}{i}")
        out = cv(h, "out")
        if keep:
            return out, {"x": x, "h": h, "blocks": tape, "shapes": shapes, "levels": levels}
        return out

    def backward_grid(self, cache: dict[str, Any], gout: Array) -> dict[str, Array]:
        """Parameter gradients for the cotangent ``gout`` of :meth:`forward_grid`'s output."""
        xp, P = self.xp, self.params
        grads: dict[str, Array] = {}
        # the blocks are undone in the reverse order of the forward pass; a shared block
        # appears once per level and its gradients add up
        tape = list(cache["blocks"])

        def accumulate(key, g):
            grads[key] = grads[key] + g if key in grads else g

        def block_back(g, name):
            taped, a, c = tape.pop()
            assert taped == name, (taped, name)
            gc, gw2, gb2 = conv_same_backward(xp, c, P[name + ".w2"], g)
            gt = xp.where(c > 0, gc, xp.zeros_like(gc))
            ga, gw1, gb1 = conv_same_backward(xp, a, P[name + ".w1"], gt)
            for key, value in (("w2", gw2), ("b2", gb2), ("w1", gw1), ("b1", gb1)):
                accumulate(f"{name}.{key}", value)
            return g + xp.where(a > 0, ga, xp.zeros_like(ga))

        levels = cache["levels"]
        down, coarse, up = _stage_names(levels, self.shared_levels)
        shapes = cache["shapes"]
        gh, grads["out.w"], grads["out.b"] = conv_same_backward(xp, cache["h"], P["out.w"], gout)
        gskips = []  # cotangent of each level's skip (the sum is linear in both terms)
        for lv in range(levels):
            for i in reversed(range(self.n_blocks)):
                gh = block_back(gh, f"{up[lv]}{i}")
            gskips.append(gh)
            gh = _upsample_backward(xp, gh, self.pool, shapes[lv + 1])
        for i in reversed(range(self.n_blocks)):
            gh = block_back(gh, f"{coarse}{i}")
        for lv in reversed(range(levels)):
            gh = gskips[lv] + _avg_pool_backward(xp, gh, self.pool, shapes[lv])
            for i in reversed(range(self.n_blocks)):
                gh = block_back(gh, f"{down[lv]}{i}")
        _, grads["in.w"], grads["in.b"] = conv_same_backward(xp, cache["x"], P["in.w"], gh)
        # a shared level the grid was too small to reach gets a zero gradient
        return {k: grads[k] if k in grads else xp.zeros_like(P[k]) for k in P}

    def _check_vectors(self, r):
        if self.grid_shape is None:
            raise ValueError(f"{WHERE}: the model is not bound to a grid; use "
                             "model.on_grid(grid_shape, mask) (or grid_shape= when building it)")
        n = self.n_unknowns
        if r.ndim not in (1, 2) or r.shape[0] != n:
            raise ValueError(f"{WHERE}: expected vectors of shape ({n},) or ({n}, k) for the "
                             f"grid {self.grid_shape}, got {tuple(r.shape)}")

    @overload
    def forward(self, r: Array, *, keep: Literal[False] = False,
                conv: str | None = None) -> Array: ...
    @overload
    def forward(self, r: Array, *, keep: Literal[True],
                conv: str | None = None) -> tuple[Array, dict[str, Any]]: ...
    def forward(self, r: Array, *, keep: bool = False,
                conv: str | None = None) -> Array | tuple[Array, dict[str, Any]]:
        """Directions for the columns of ``r`` (n, B); with ``keep`` also the tape."""
        scale = None
        if self.coefficient_channel:
            self._need_coefficient()
            # Jacobi scaling on both sides: the network sees D^{-1/2} A D^{-1/2}'s residual
            scale = self.xp.astype(self._dscale, r.dtype, copy=False)
            r = r * scale
        x = self._grid_input(r)
        if keep:
            out, cache = self.forward_grid(x, keep=True, conv=conv)
        else:
            out, cache = self.forward_grid(x, conv=conv), None
        q = self._grid_output(out)
        if scale is not None:
            q = q * scale
        return (q, cache) if keep else q

    def backward(self, cache: dict[str, Any], g: Array) -> dict[str, Array]:
        """Parameter gradients for the cotangent ``g`` (n, B) of :meth:`forward`'s output."""
        if self.coefficient_channel:
            self._need_coefficient()
            g = g * self.xp.astype(self._dscale, g.dtype, copy=False)
        return self.backward_grid(cache, self._grid_output_backward(g))

    def __call__(self, r: Array) -> Array:
        """The direction ``N(r)`` for a residual ``r`` of shape (n,) or (n, k).

        ``r`` is cast to the model's dtype and the result back to ``r``'s dtype.
        """
        xp = self.xp
        self._check_vectors(r)
        vec = r.ndim == 1
        v = xp.astype(r[:, None] if vec else r, self.dtype)
        q = xp.astype(self.forward(v), r.dtype)
        return q[:, 0] if vec else q

    # ----- persistence ------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], **metadata: Any) -> None:
        """Write the weights and architecture to a versioned ``.npz`` (host copy)."""
        hxp = B.host_namespace()
        meta = dict(self.metadata)
        meta.update(metadata)
        arrays = {f"param/{k}": _to_host(v) for k, v in self.params.items()}
        arrays["format_version"] = hxp.asarray(FORMAT_VERSION)
        arrays["config"] = hxp.asarray(json.dumps(self.config()))
        arrays["metadata"] = hxp.asarray(json.dumps(meta, default=str))
        hxp.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *,
             like: Array | None = None) -> ConvDirectionModel:
        """Read a model written by :meth:`save` (optionally straight into ``like``'s device)."""
        hxp = B.host_namespace()
        with hxp.load(path, allow_pickle=False) as data:
            version = int(data["format_version"])
            if version != FORMAT_VERSION:
                raise ValueError(f"{WHERE}.load: {path} has format version {version}; this "
                                 f"diffsolve reads version {FORMAT_VERSION}")
            config = json.loads(str(data["config"]))
            meta = json.loads(str(data["metadata"])) if "metadata" in data else {}
            params = {k[len("param/"):]: hxp.asarray(data[k]) for k in data.files
                      if k.startswith("param/")}
        dtype = str(params["in.w"].dtype)
        # files written before the multi-level network have no "levels": one level
        model = cls(config["dim"], config["channels"], config["n_blocks"], seed=config["seed"],
                    mask_channel=config["mask_channel"], dtype=dtype,
                    levels=config.get("levels", 1),
                    shared_levels=config.get("shared_levels", False),
                    coefficient_channel=config.get("coefficient_channel", False))
        if set(params) != set(model.params):
            raise ValueError(f"{WHERE}.load: {path} does not hold the parameters of its "
                             "declared architecture")
        for k, v in params.items():
            if tuple(v.shape) != tuple(model.params[k].shape):
                raise ValueError(f"{WHERE}.load: parameter {k} has shape {tuple(v.shape)}, "
                                 f"expected {tuple(model.params[k].shape)}")
        model.params = params
        model.metadata = meta
        return model.to(like) if like is not None else model


def load_direction_model(path: str | os.PathLike[str], *,
                         like: Array | None = None) -> ConvDirectionModel:
    """Load a :class:`ConvDirectionModel` saved with :meth:`ConvDirectionModel.save`.

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` file written by :meth:`ConvDirectionModel.save`.
    like : array, optional
        Put the weights on this array's namespace and device (default: NumPy).

    Returns
    -------
    ConvDirectionModel
        The model, with the architecture, weights and grid binding that were saved.

    See Also
    --------
    diffsolve.linear.ConvDirectionModel : The model class and its ``save``.
    diffsolve.linear.pretrained_direction_model : The shipped models.
    diffsolve.linear.train_direction_model : Train a model on your own matrices.

    Examples
    --------
    >>> import os, tempfile
    >>> from diffsolve.linear import ConvDirectionModel, load_direction_model
    >>> model = ConvDirectionModel(dim=2, channels=4, n_blocks=1, seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> model.save(path)
    >>> load_direction_model(path).config() == model.config()
    True
    """
    return ConvDirectionModel.load(path, like=like)


def pretrained_direction_model(name: str = "poisson2d-64", *,
                               like: Array | None = None) -> ConvDirectionModel:
    """A shipped pretrained model.

    Parameters
    ----------
    name : {"poisson2d-64", "poisson2d-64-obstacles", "poisson2d-multilevel", \
"poisson3d-multilevel"}
        5-point Poisson (Dirichlet walls) on 64² grids, trained by
        ``bench/train_dcdm_weights.py``; the obstacle model has a mask channel (bind the
        mask with :meth:`ConvDirectionModel.on_grid`). ``"poisson2d-multilevel"`` has shared
        levels with ``levels="auto"`` (its depth follows the grid) and was trained on 32²,
        64² and 128² (``--which multilevel``): its iteration count stays nearly flat from
        64² to 512², where the one-level models' grows; it is what ``model=None`` in
        :func:`~diffsolve.linear.solve` loads.
        ``"poisson3d-multilevel"``: the same architecture in 3-D (7-point Poisson,
        Dirichlet walls), trained on 16³ and 32³ in turn (276 steps on a CPU,
        ``python -m bench.bench_dcdm_3d --train-sizes 16,32 --steps 300 --minutes 40``):
        19–23 iterations to ``rtol=1e-6`` from 16³ to 128³. Bind it to a cube with
        ``.on_grid((m, m, m))``.
    like : array, optional
        Put the weights on this array's namespace/device.

    Returns
    -------
    ConvDirectionModel
        The trained network, ready for ``solve(A, b, method="dcdm", model=...)``.

    See Also
    --------
    diffsolve.linear.load_direction_model : Load a model you saved.
    diffsolve.linear.train_direction_model : Train a model on your own matrices.
    diffsolve.linear.solve : ``method="dcdm"`` uses the model.

    Examples
    --------
    >>> from diffsolve.linear import pretrained_direction_model
    >>> pretrained_direction_model().dim
    2
    """
    if name not in PRETRAINED:
        raise ValueError(f"diffsolve.linear.pretrained_direction_model: name={name!r} is not "
                         f"shipped; choose one of {sorted(PRETRAINED)}")
    return ConvDirectionModel.load(os.path.join(_WEIGHTS_DIR, PRETRAINED[name]), like=like)
