"""The machinery shared by the batched entry points: one task per chunk of the batch, the
result fields assembled from the chunks as Dask arrays, and the chunk-wise backward pass.

A *chunk task* runs one family call on one chunk of the leading batch dimension and
returns ``(fields, ctx)``: the result's arrays for that chunk, and (for
:func:`diffsolve.distributed.vjp`) a :class:`ChunkContext` with what the backward rule
needs (the chunk's arguments, result and residuals). The fields of the lazy result read
the chunk tasks; the backward tasks read the same tasks, so the residuals are reused
while the workers hold them (persisted) and recomputed from the graph when they do not
(a released or lost key is recomputed by Dask).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import _backend as B
from .._autodiff import BackwardContext
from ._dask import dask_modules, is_dask_array


@dataclass(frozen=True)
class Field:
    """How one result field is assembled from the chunks.

    ``axis``: the batch axis to concatenate along, or ``None`` for a field that the family
    sums over the batch (ODE regularisers and step counts): then the chunk values are
    summed by a tree reduction. ``shape(k)``: the field's shape for a chunk of ``k``
    problems. ``kind``: ``"float"`` (the problem's dtype), ``"int"`` or ``"bool"``.
    """

    axis: int | None
    shape: Callable[[int], tuple]
    kind: str = "float"


@dataclass(frozen=True)
class Grad:
    """A cotangent output: the positional argument's name and whether it is batched
    (chunked like the batch, concatenated) or shared (summed over the chunks)."""

    name: str
    batched: bool
    shape: tuple
    dtype: Any
    #: False for a sparse argument: its cotangent is a sparse matrix of the argument's
    #: pattern, returned as a ``dask.delayed`` (a Dask array has no sparse chunks here)
    dense: bool = True


@dataclass
class ChunkContext:
    """What the backward task of one chunk reads: one :class:`BackwardContext` per family
    call made by the chunk (one for a batched call, one per problem for a loop)."""

    fn: Any
    contexts: list
    # how the chunk's cotangents map onto each call's (see Spec.split_cotangents)
    layout: Any = None


@dataclass
class Spec:
    """A batched family call: what the chunk tasks run and how their outputs assemble."""

    where: str
    fn: Any
    result_type: type
    fields: dict
    constants: dict
    run: Callable          # run(batched_blocks, shared, want_vjp) -> (fields, ctx)
    back: Callable | None  # back(ctx, cot_blocks) -> {grad name: array}
    grads: list = field(default_factory=list)
    fixed_budget: bool = False
    throw: bool = False
    dtype: Any = None
    meta: Any = None


def run_chunk(run, blocks, shared, want_vjp):
    """The chunk task (on a worker)."""
    return run(list(blocks), list(shared), want_vjp)


def back_chunk(back, part, cots):
    """The backward task of one chunk (on the worker that holds ``part`` if it still
    does)."""
    return back(part[1], cots)


def build(spec: Spec, batched: list, shared: list, chunks: tuple, *, want_vjp: bool,
          persist: bool):
    """The lazy result of ``spec`` over ``batched`` (Dask arrays rechunked to ``chunks``
    along axis 0, whole along the others) and ``shared`` arguments; returns ``(result,
    parts)``."""
    da, dask = dask_modules()
    blocks = [x.rechunk((chunks, *tuple(-1 for _ in x.shape[1:]))).to_delayed().ravel()
              for x in batched]
    shared_d = [_shared(x) for x in shared]
    task = dask.delayed(run_chunk, pure=False)
    parts = [task(spec.run, [blk[i] for blk in blocks], shared_d, want_vjp)
             for i in range(len(chunks))]
    if persist:
        parts = list(dask.persist(*parts))
    fields = {}
    for name, fld in spec.fields.items():
        dtype = _dtype(fld.kind, spec.dtype)
        meta = _meta(spec.meta, len(fld.shape(1)), dtype)
        if fld.axis is None:
            pieces = [da.from_delayed(p[0][name], shape=fld.shape(k), dtype=dtype,
                                      meta=meta) for p, k in zip(parts, chunks)]
            fields[name] = da.stack(pieces).sum(axis=0, split_every=8)
        else:
            fields[name] = _field_array(parts, name, fld, chunks, dtype, meta)
    from ._batched import batched_type

    cls = spec.result_type
    if hasattr(cls, "__dataclass_fields__"):
        cls = batched_type(cls)
    result = cls(**fields, **spec.constants)
    object.__setattr__(result, "_distributed", spec)
    return result, parts


def field_of(part, name):
    """One field of a chunk task's output (a task of the field arrays)."""
    return part[0][name]


def _field_array(parts, name, fld, chunks, dtype, meta):
    """The Dask array of one field: block ``i`` along ``fld.axis`` is a task reading chunk
    task ``i``'s output (written as one graph layer: no per-chunk array to concatenate)."""
    da, _ = dask_modules()
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    shape = fld.shape(1)
    key = f"{name}-{tokenize([p.key for p in parts], name)}"
    dsk: dict = {}
    for i, p in enumerate(parts):
        block = (key, *(i if ax == fld.axis else 0 for ax in range(len(shape))))
        dsk[block] = (field_of, p.key, name)
    out_chunks = tuple(tuple(chunks) if ax == fld.axis else (int(shape[ax]),)
                       for ax in range(len(shape)))
    graph = HighLevelGraph.from_collections(key, dsk, dependencies=parts)
    return da.Array(graph, key, chunks=out_chunks, dtype=dtype, meta=meta)


def backward(spec: Spec, parts: list, chunks: tuple, cotangents: dict):
    """The chunk-wise backward pass: one task per chunk on the chunk's pair, cotangents of
    shared arguments summed by a tree reduction. Returns ``{grad name: dask array}``."""
    da, dask = dask_modules()
    per_chunk: list[dict] = [{} for _ in chunks]
    for name, cot in cotangents.items():
        if cot is None:
            continue
        fld = spec.fields[name]
        if fld.axis is None:
            cot_d = _shared(cot)
            for d in per_chunk:
                d[name] = cot_d
            continue
        if not is_dask_array(cot):
            cot = da.from_array(cot, chunks=cot.shape)
        full = tuple(-1 for _ in cot.shape)
        rc = (*full[:fld.axis], chunks, *full[fld.axis + 1:])
        blocks = cot.rechunk(rc).to_delayed().ravel()
        for d, blk in zip(per_chunk, blocks):
            d[name] = blk
    task = dask.delayed(back_chunk, pure=False)
    outs = [task(spec.back, p, c) for p, c in zip(parts, per_chunk)]
    grads = {}
    for g in spec.grads:
        meta = _meta(spec.meta, len(g.shape), g.dtype)
        if g.batched:
            pieces = [da.from_delayed(o[g.name], shape=(k, *g.shape[1:]), dtype=g.dtype,
                                      meta=meta) for o, k in zip(outs, chunks)]
            grads[g.name] = da.concatenate(pieces, axis=0)
        else:
            total = _tree_sum([o[g.name] for o in outs])
            grads[g.name] = da.from_delayed(total, shape=g.shape, dtype=g.dtype, meta=meta) \
                if g.dense else total
    return grads


def _add(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def _tree_sum(parts, fan=8):
    """The sum of delayed cotangents by a tree of fan-in ``fan`` (dense or sparse)."""
    _, dask = dask_modules()
    add = dask.delayed(_add, pure=True)
    while len(parts) > 1:
        parts = [add(*parts[i:i + fan]) if len(parts[i:i + fan]) > 1 else parts[i]
                 for i in range(0, len(parts), fan)]
    return parts[0]


def context(fn, args, kwargs, want_vjp):
    """Call ``fn`` (throw=False: the client decides) and keep what the backward needs."""
    args, kwargs, _ = fn.bind(args, kwargs)
    result, residuals = fn.fwd(*args, **kwargs)
    ctx = BackwardContext(args, kwargs, result, residuals) if want_vjp else None
    return result, residuals, ctx


def _shared(x):
    _, dask = dask_modules()
    if is_dask_array(x):
        return x.rechunk(tuple(-1 for _ in x.shape)).to_delayed().ravel()[0] if x.ndim \
            else x.to_delayed().ravel()[0]
    if B.is_array(x):
        return dask.delayed(x, pure=True)
    return x


def _dtype(kind, dtype):
    return {"float": dtype, "int": "int64", "bool": "bool"}[kind]


def _meta(meta, ndim, dtype):
    xp = B.array_namespace(meta)
    return xp.empty((0,) * ndim, dtype=getattr(xp, str(dtype)) if isinstance(dtype, str)
                    else dtype)


def batch_chunks(where, batched: list) -> tuple:
    """The common chunking of the leading axis: the first batched argument's, which the
    others are rechunked to (same batch size required)."""
    sizes = {int(x.shape[0]) for x in batched}
    if len(sizes) != 1:
        raise ValueError(f"{where}: the batched arguments have different batch sizes "
                         f"{sorted(sizes)} along their leading axis; give every batched "
                         "argument the same leading dimension")
    return tuple(int(c) for c in batched[0].chunks[0])


def worst(xp, statuses, device):
    """Per-problem statuses as an int64 array on the chunk's device."""
    return xp.asarray([int(s) for s in statuses], dtype=xp.int64, device=device)


def flags(xp, values, device):
    return xp.asarray([bool(v) for v in values], dtype=xp.bool, device=device)


def numbers(xp, values, dtype, device):
    return xp.asarray([math.nan if v is None else float(v) for v in values], dtype=dtype,
                      device=device)
