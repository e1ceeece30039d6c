"""Pooling ops over the spatial axes of channels-last arrays ``(N, *spatial, C)``, as in PyTorch.

1-D, 2-D and 3-D inputs (rank 3, 4, 5) are supported.

Windowed pools (``max_pool``, ``min_pool``, ``avg_pool``) take the same
``padding`` spellings as convolution (``jaxconv.ops.spec.padding_pairs``) and
default ``stride`` to the window (PyTorch's convention). Along each spatial
dimension of size ``n``, with pads ``(low, high)`` and a window spanning
``span = (window - 1) * dilation + 1`` elements, the output size is PyTorch's:
``floor((n + low + high - span) / stride) + 1``, or with ``ceil_mode=True``
``ceil(...) + 1``, less one when that last window would start in the right
padding (at or past ``n + low`` in the padded input).

Adaptive pools use PyTorch's bin rule: output index ``i`` of ``out`` covers
input positions ``floor(i * n / out) <= j < ceil((i + 1) * n / out)``.

Max-type pools (``max_pool``, ``min_pool``, ``adaptive_max_pool``,
``global_max_pool``) pick ONE element per window, as PyTorch's kernels do:
scanning the window's input elements in row-major order (padding never
counts), the first maximum (minimum), or the last NaN when the window holds a
NaN; when every element is ``-inf`` (``+inf``), the first one. That element
is the result, the only one the gradient reaches, and, with
``return_indices=True``, its index: ``h * W + w`` (2-D; ``w`` in 1-D,
``d * H * W + h * W + w`` in 3-D) into its ``(N, C)`` input plane, exactly
PyTorch's indices (int32, channels-last). ``max_unpool`` puts values back at
such indices (PyTorch's ``max_unpool``).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv.ops.spec import Padding, check_spatial_rank, padding_pairs, parse_padding, spatial_option
from jaxconv.validate import boolean, choice, int_tuple, integer, is_int

__all__ = ["POOL_KINDS", "PoolOptions", "Windows", "Bins", "pool_options", "pool_output_length",
           "pool_geometry", "extreme_pool", "mean_pool", "window_pool", "max_pool", "min_pool",
           "avg_pool", "global_pool",
           "global_avg_pool", "global_max_pool", "check_output_size", "adaptive_output_shape",
           "adaptive_bins", "adaptive_pool", "adaptive_avg_pool", "adaptive_max_pool",
           "UnpoolOptions", "unpool_options", "unpool_output_shape", "unpool", "max_unpool"]

POOL_KINDS = ("max", "min", "avg")


# --------------------------------------------------------------------------
# One spatial axis of a pool: which input positions each output reads.


class Windows(NamedTuple):
    """One spatial axis of a windowed pool.

    Window ``i`` (of ``out``) reads the ``window`` positions
    ``i * stride - low + a * dilation`` (``a < window``) of an axis of ``size``
    elements; ``high`` is the declared right padding (the average's divisor
    counts padding up to it, ceil mode's last window may reach past it).
    """

    size: int
    window: int
    stride: int
    dilation: int
    low: int
    high: int
    out: int

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """``(positions, valid)``, both ``(out, window)``: where each window element reads, and
        whether that is inside the input (elsewhere it is padding)."""
        positions = (np.arange(self.out)[:, None] * self.stride - self.low
                     + np.arange(self.window) * self.dilation)
        return positions, (positions >= 0) & (positions < self.size)

    def lengths(self, count_include_pad: bool) -> np.ndarray:
        """PyTorch's average divisor along this axis: each window's length, clipped to the
        right padding (``count_include_pad``) or to the input."""
        start = np.arange(self.out) * self.stride - self.low
        end = np.minimum(start + self.window, self.size + self.high)
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, self.size)
        return end - start


class Bins(NamedTuple):
    """One spatial axis of an adaptive pool: ``out`` bins over ``size`` elements (``adaptive_bins``)."""

    size: int
    out: int

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """``(positions, valid)``, ``(out, longest bin)``; a shorter bin's extra entries read padding."""
        start, end = adaptive_bins(self.size, self.out)
        offsets = np.arange(int(np.max(end - start)))
        valid = offsets < (end - start)[:, None]
        return np.where(valid, start[:, None] + offsets, -1), valid

    def lengths(self, count_include_pad: bool = True) -> np.ndarray:
        """Each bin's length (an average's divisor; there is no padding to count)."""
        start, end = adaptive_bins(self.size, self.out)
        return end - start


# --------------------------------------------------------------------------
# Evaluating a pool axis by axis. Element ``a`` of every window along an axis
# is one array, a strided slice of the (padded) input; a pool reduces these
# arrays element-wise, one spatial axis at a time.


def _fill(op: str, dtype: Any) -> Any:
    """What padding holds for ``op``: its identity (``-inf`` for max, ``0`` for sum)."""
    if op == "sum":
        return np.array(0, dtype)
    if jnp.issubdtype(dtype, jnp.inexact):
        return np.array(-np.inf if op == "max" else np.inf, dtype)
    info = jnp.iinfo(dtype)
    return np.array(info.min if op == "max" else info.max, dtype)


def _candidates(x, axis: int, positions: np.ndarray, fill) -> list:
    """``x`` read at each column of ``positions`` along ``axis``: one array per window element.

    Positions outside ``[0, n)`` read ``fill``. Evenly spaced columns (every
    windowed pool, evenly divided adaptive bins) are strided slices; others
    (uneven adaptive bins) are gathered.
    """
    low = max(0, -int(positions.min()))
    high = max(0, int(positions.max()) + 1 - x.shape[axis])
    if low or high:
        widths = [(0, 0, 0)] * x.ndim
        widths[axis] = (low, high, 0)
        x = lax.pad(x, jnp.asarray(fill, x.dtype), widths)
    views = []
    for column in positions.T + low:
        step = int(column[1] - column[0]) if len(column) > 1 else 1
        if step > 0 and np.array_equal(column, column[0] + step * np.arange(len(column))):
            views.append(lax.slice_in_dim(x, int(column[0]), int(column[-1]) + 1, step, axis))
        else:
            views.append(jnp.take(x, jnp.asarray(column), axis=axis))
    return views


_REDUCE = {"max": jnp.max, "min": jnp.min, "sum": jnp.sum}
_COMBINE = {"max": jnp.maximum, "min": jnp.minimum, "sum": jnp.add}


def _tile_length(plan) -> int | None:
    """The window length if ``plan``'s windows tile its axis (consecutive and disjoint, no
    padding read; elements past the last window unread), else ``None``."""
    positions, _ = plan.table()
    out, length = positions.shape
    tiles = out * length <= plan.size and np.array_equal(
        positions, np.arange(out * length).reshape(out, length))
    return length if tiles else None


def _reduce_axis(x, axis: int, plan, op: str):
    """Max, min or sum of every window of ``plan`` along ``axis`` (padding is ``op``'s identity)."""
    length = _tile_length(plan)
    if length is not None:
        # The windows tile the axis: one reduction over a reshaped axis.
        out = plan.out
        tiles = lax.slice_in_dim(x, 0, out * length, axis=axis)
        tiles = tiles.reshape(x.shape[:axis] + (out, length) + x.shape[axis + 1:])
        return _REDUCE[op](tiles, axis=axis + 1)
    positions, _ = plan.table()
    return functools.reduce(_COMBINE[op], _candidates(x, axis, positions, _fill(op, x.dtype)))


def _pool_values(x, op: str, plans):
    """``op`` (max, min or sum) over the windows of ``plans``, one per spatial axis."""
    for axis, plan in enumerate(plans, start=1):
        x = _reduce_axis(x, axis, plan, op)
    return x


class _Pick(NamedTuple):
    """A window's element picked so far: its value, whether it is an input element (``None``:
    always; else a static mask), and its flat index in the plane (``None``: not tracked)."""

    value: Any
    valid: Any
    index: Any


def _pick(left: _Pick, right: _Pick, kind: str) -> _Pick:
    """PyTorch's scan step: ``right`` (later in the window) replaces ``left`` if it is an input
    element and ``left`` is not, or it is greater (less for min), or it is NaN."""
    take = (jnp.greater if kind == "max" else jnp.less)(right.value, left.value)
    if jnp.issubdtype(right.value.dtype, jnp.inexact):
        take = take | jnp.isnan(right.value)
    if left.valid is not None:
        take = take | ~left.valid
    if right.valid is not None:
        take = take & right.valid
    valid = None if left.valid is None or right.valid is None else left.valid | right.valid
    index = None if left.index is None else jnp.where(take, right.index, left.index)
    return _Pick(jnp.where(take, right.value, left.value), valid, index)


def _pick_axis(x, index, axis: int, plan, kind: str, plane_stride: int):
    """Picks one element per window of ``plan`` along ``axis`` (``_pick``); returns its value and,
    if ``index`` (the flat index of the axes after ``axis``) is given, its flat index."""
    positions, valid = plan.table()
    column_shape = (-1,) + (1,) * (x.ndim - axis - 1)  # (out,) broadcast along ``axis``
    views = _candidates(x, axis, positions, _fill(kind, x.dtype))
    sub = [None] * len(views) if index is None else _candidates(index, axis, positions, 0)
    best = None
    for a, (value, inner) in enumerate(zip(views, sub)):
        mask = None if valid[:, a].all() else valid[:, a].reshape(column_shape)
        flat = None if inner is None else inner + jnp.asarray(
            positions[:, a].reshape(column_shape) * plane_stride, jnp.int32)
        picked = _Pick(value, mask, flat)
        best = picked if best is None else _pick(best, picked, kind)
    return best.value, best.index


def _pick_pool(x, kind: str, plans, with_index: bool):
    """Max/min pool by explicit picks: ``(values, flat indices or None)``.

    The last spatial axis is reduced first: the row-major first maximum of a
    window is the first maximum among the first maxima of its rows (and the
    last NaN the last among the rows' last NaNs), so axis by axis gives
    PyTorch's pick. The values are selected input elements, so their
    derivative reaches only the picked element.
    """
    sizes = x.shape[1:-1]
    index = jnp.zeros(x.shape, jnp.int32) if with_index else None
    for axis in range(len(plans), 0, -1):
        x, index = _pick_axis(x, index, axis, plans[axis - 1], kind, math.prod(sizes[axis:]))
    return x, index


# The most elements per window that ``_tiled_pick`` compares one by one; larger tiling
# windows (a global pool over a large map) are picked axis by axis.
MAX_TILE_ELEMENTS = 64


def _tile_lengths(plans) -> tuple[int, ...] | None:
    """Each axis's window length if every axis's windows tile it (``_tile_length``) with at
    most ``MAX_TILE_ELEMENTS`` elements per window, else ``None``."""
    lengths = tuple(_tile_length(plan) for plan in plans)
    if None in lengths or math.prod(lengths) > MAX_TILE_ELEMENTS:
        return None
    return lengths


def _tiles(x, lengths):
    """``x`` ``(N, *spatial, C)`` as tiles ``(N, o1, l1, o2, l2, ..., C)`` of ``lengths``."""
    outs = [n // length for n, length in zip(x.shape[1:-1], lengths)]
    x = lax.slice(x, (0,) * x.ndim, (x.shape[0], *(o * k for o, k in zip(outs, lengths)),
                                     x.shape[-1]))
    for axis in range(len(lengths), 0, -1):  # one axis per reshape: sharding rules allow it
        x = x.reshape(*x.shape[:axis], outs[axis - 1], lengths[axis - 1], *x.shape[axis + 1:])
    return x


def _tiled_pick(x, kind: str, lengths):
    """Max/min pool of tiling windows in one pass: ``(values, picked element)``.

    The picked element is the window's row-major element number (int32), chosen
    by ``_pick`` over the window's elements in order (the same pick as
    ``_pick_pool``: first extremum, or last NaN).
    """
    tiles = _tiles(x, lengths)
    best = None
    for number, offsets in enumerate(itertools.product(*map(range, lengths))):
        where = (slice(None), *itertools.chain(*((slice(None), a) for a in offsets)), slice(None))
        picked = _Pick(tiles[where], None, jnp.int32(number))
        best = picked if best is None else _pick(best, picked, kind)
    return best.value, jnp.broadcast_to(best.index, best.value.shape)


def _tiled_tangent(dx, picked, lengths):
    """The tangent of a tiled pick: ``dx`` at each window's picked element (one fused pass, and
    its transpose, the gradient, one select of the broadcast output gradient)."""
    tiles = _tiles(dx, lengths)
    window_axes = tuple(range(2, 2 * len(lengths) + 1, 2))
    numbers = np.arange(math.prod(lengths)).reshape(lengths)
    numbers = np.expand_dims(numbers, tuple(range(0, 2 * len(lengths), 2)))
    mask = jnp.expand_dims(picked, window_axes) == numbers[None, ..., None]
    return jnp.sum(jnp.where(mask, tiles, jnp.zeros((), tiles.dtype)), axis=window_axes)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _extreme_values(x, kind: str, plans):
    """Max/min pool values by element-wise max/min (fast); derivatives follow ``_pick_pool``."""
    return _pool_values(x, kind, plans)


@_extreme_values.defjvp
def _extreme_values_jvp(kind, plans, primals, tangents):
    # The tangent of the picked element. Tiling windows (MaxPool(2) and the
    # like): the element number picked per window, then one select-and-sum.
    # Others: selects of strided slices, whose transpose (the gradient) is
    # selects and pads; no scatter (uneven adaptive bins gather, and their
    # gradient scatter-adds).
    (x,), (dx,) = primals, tangents
    lengths = _tile_lengths(plans)
    if lengths is None:
        return jax.jvp(lambda v: _pick_pool(v, kind, plans, False)[0], primals, tangents)
    values, picked = _tiled_pick(x, kind, lengths)
    return values, _tiled_tangent(dx, picked, lengths)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def extreme_pool(x, kind: str, plans, return_indices: bool = False):
    """Max or min pool over ``plans`` (``Windows`` or ``Bins``, one per spatial axis).

    Returns the values, or ``(values, indices)`` with ``return_indices``; see
    the module docstring for which element a window picks. Jitted: called
    eagerly, a pool compiles once per shape rather than once per element-wise op.
    """
    if return_indices:
        return _pick_pool(x, kind, plans, True)
    return _extreme_values(x, kind, plans)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def mean_pool(x, plans, count_include_pad: bool = True, divisor_override: int | None = None):
    """Average pool over ``plans`` (``Windows`` or ``Bins``) with PyTorch's divisor.

    Each window's sum is divided by ``divisor_override`` if given, else by the
    product over axes of ``plan.lengths(count_include_pad)``. Integer inputs
    give float32; sums are accumulated in at least float32. Jitted, as
    ``extreme_pool``.
    """
    out_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    acc = jnp.promote_types(out_dtype, jnp.float32)
    sums = _pool_values(x.astype(acc), "sum", plans)
    if divisor_override is not None:
        return (sums / jnp.asarray(divisor_override, acc)).astype(out_dtype)
    product = functools.reduce(np.multiply.outer, [p.lengths(count_include_pad) for p in plans])
    divisor = np.reshape(product, (1, *np.shape(product), 1))
    return (sums / jnp.asarray(divisor, acc)).astype(out_dtype)


# --------------------------------------------------------------------------
# Windowed pools: arguments, size rule, evaluation.


class PoolOptions(NamedTuple):
    """A windowed pool's arguments, checked and in normal form (see :func:`pool_options`)."""

    kind: str
    context: str
    window: int | tuple[int, ...]
    stride: int | tuple[int, ...] | None
    padding: str | int | tuple[Any, ...]
    dilation: int | tuple[int, ...]
    ceil_mode: bool
    count_include_pad: bool
    divisor_override: int | None
    return_indices: bool


def pool_options(kind: str, window: Any, stride: Any = None, padding: Padding = "VALID", *,
                 dilation: Any = 1, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override: int | None = None, return_indices: bool = False,
                 context: str = "pool") -> PoolOptions:
    """Checks a windowed pool's arguments before any shape is known (a layer's factory does this).

    ``kind`` is ``"max"``, ``"min"`` or ``"avg"``; ``dilation`` and
    ``return_indices`` belong to max/min, ``count_include_pad`` and
    ``divisor_override`` (an int ``>= 1``) to avg. Errors name ``context``.
    """
    choice(kind, "kind", POOL_KINDS, context=context)
    for name, flag in (("ceil_mode", ceil_mode), ("count_include_pad", count_include_pad),
                       ("return_indices", return_indices)):
        boolean(flag, name, context=context)
    dilation = spatial_option(dilation, "dilation", context=context)
    if divisor_override is not None:
        integer(divisor_override, "divisor_override", context=context, minimum=1)
    extreme_only = {"dilation": set(int_tuple(dilation, "dilation", context=context)) != {1},
                    "return_indices": return_indices}
    avg_only = {"count_include_pad": not count_include_pad,
                "divisor_override": divisor_override is not None}
    for name, used in (extreme_only if kind == "avg" else avg_only).items():
        if used:
            raise ValueError(f"{context}: {name} is not an option of {kind} pooling")
    return PoolOptions(
        kind, context, window=spatial_option(window, "window", context=context),
        stride=None if stride is None else spatial_option(stride, "stride", context=context),
        padding=parse_padding(padding, context), dilation=dilation, ceil_mode=ceil_mode,
        count_include_pad=count_include_pad, divisor_override=divisor_override,
        return_indices=return_indices)


def pool_output_length(n: int, window: int, stride: int, pads: tuple[int, int], dilation: int = 1,
                       ceil_mode: bool = False) -> int:
    """PyTorch's pooled size of one axis; ``<= 0`` when the window never fits.

    ``floor((n + low + high - span) / stride) + 1`` with ``span = (window - 1)
    * dilation + 1``; with ``ceil_mode`` the division rounds up, and a last
    window that would start at or past ``n + low`` (in the right padding) is
    dropped.
    """
    low, high = pads
    room = n + low + high - (window - 1) * dilation - 1
    out = (room + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= n + low:
        out -= 1
    return out


def _check_pads(pads, window, dilation, context: str) -> None:
    """Pads must be ``>= 0`` and smaller than the (dilated) window on each side."""
    for k, d, (low, high) in zip(window, dilation, pads):
        span = (k - 1) * d + 1
        if not (0 <= low < span and 0 <= high < span):
            dilated = "" if set(dilation) == {1} else f" (dilation {dilation})"
            raise ValueError(
                f"{context}: padding must be >= 0 and smaller than the window on each side "
                f"(every window must overlap the input); got pads {pads} for window "
                f"{window}{dilated}")


def pool_geometry(options: PoolOptions, input_shape: Sequence[int]
                  ) -> tuple[tuple[Windows, ...], tuple[int, ...]]:
    """Resolves checked options against ``input_shape`` ``(N, *spatial, C)`` (``N`` may be -1).

    Returns:
      ``(axes, output_shape)``: one :class:`Windows` per spatial axis, and
      ``(N, *out_spatial, C)`` with ``out`` from :func:`pool_output_length`.

    Raises:
      ValueError: wrong rank, per-dimension options of the wrong length, pads
        negative or not smaller than the window, a window larger than the
        padded input, or (with dilation) a window that reads only padding.
    """
    shape, context = tuple(input_shape), options.context
    nd = check_spatial_rank(shape, context)
    window = int_tuple(options.window, "window", context=context, length=nd, minimum=1)
    stride = window if options.stride is None else int_tuple(
        options.stride, "stride", context=context, length=nd, minimum=1)
    dilation = int_tuple(options.dilation, "dilation", context=context, length=nd, minimum=1)
    pads = padding_pairs(options.padding, shape[1:-1], window, stride, dilation, context=context)
    _check_pads(pads, window, dilation, context)
    axes = tuple(Windows(n, k, s, d, lo, hi, pool_output_length(n, k, s, (lo, hi), d,
                                                                options.ceil_mode))
                 for n, k, s, d, (lo, hi) in zip(shape[1:-1], window, stride, dilation, pads))
    if min(a.out for a in axes) <= 0:
        padded = tuple(n + lo + hi for n, (lo, hi) in zip(shape[1:-1], pads))
        raise ValueError(
            f"{context}: window {window} is larger than the padded input {padded} "
            f"(input shape {shape}, padding {options.padding!r})")
    if not all(a.table()[1].any(axis=1).all() for a in axes):
        raise ValueError(
            f"{context}: with dilation {dilation} some windows read only padding (input shape "
            f"{shape}, window {window}, pads {pads}); use less padding or dilation")
    return axes, (shape[0], *(a.out for a in axes), shape[-1])


def window_pool(x: Any, options: PoolOptions) -> Any:
    """Evaluates a windowed pool (:func:`pool_options`) on ``x``; the body of every windowed pool.

    Returns the ``(N, *out_spatial, C)`` result, or ``(values, indices)`` for
    a max/min pool with ``return_indices``.
    """
    x = jnp.asarray(x)
    axes, _ = pool_geometry(options, x.shape)
    if options.kind == "avg":
        return mean_pool(x, axes, options.count_include_pad, options.divisor_override)
    return extreme_pool(x, options.kind, axes, options.return_indices)


def max_pool(x: Any, window: Any, stride: Any = None, padding: Padding = "VALID", *,
             dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False) -> Any:
    """Max over each window (PyTorch's ``max_pool1d/2d/3d``, channels-last).

    Args:
      x: ``(N, *spatial, C)`` with 1 to 3 spatial dimensions.
      window: int or one int per spatial dimension.
      stride: defaults to ``window`` (a 2x2 window moves by 2).
      padding: ``"VALID"`` (default), ``"SAME"``, ``"SAME_LOWER"``, an int, per-dimension
        ints or ``(low, high)`` pairs; each pad smaller than the (dilated) window.
        Padded positions never win.
      dilation: spacing of the window's elements (int or one per dimension).
      ceil_mode: round the output size up (see the module docstring).
      return_indices: also return each maximum's flat index in its input plane.

    Returns:
      ``(N, *out_spatial, C)``, or ``(values, indices)`` (int32, same shape) with
      ``return_indices``. A window's value, gradient and index are one element
      of it: the first maximum in row-major order, the last NaN if any.
    """
    return window_pool(x, pool_options("max", window, stride, padding, dilation=dilation,
                                       ceil_mode=ceil_mode, return_indices=return_indices,
                                       context="max_pool"))


def min_pool(x: Any, window: Any, stride: Any = None, padding: Padding = "VALID", *,
             dilation: Any = 1, ceil_mode: bool = False, return_indices: bool = False) -> Any:
    """Min over each window: ``-max_pool(-x)`` in PyTorch; arguments and shapes as in ``max_pool``."""
    return window_pool(x, pool_options("min", window, stride, padding, dilation=dilation,
                                       ceil_mode=ceil_mode, return_indices=return_indices,
                                       context="min_pool"))


def avg_pool(x: Any, window: Any, stride: Any = None, padding: Padding = "VALID",
             count_include_pad: bool = True, *, ceil_mode: bool = False,
             divisor_override: int | None = None) -> Any:
    """Mean over each window (PyTorch's ``avg_pool1d/2d/3d``); arguments as in ``max_pool``.

    Args:
      count_include_pad: ``True`` (PyTorch's default) divides a window's sum by
        its length including padding, ``prod(window)`` except where a
        ``ceil_mode`` window reaches past the right padding (those positions
        do not count); ``False`` divides by the number of input positions the
        window covers (TensorFlow's ``"SAME"`` average).
      ceil_mode: round the output size up (see the module docstring).
      divisor_override: divide every sum by this int instead.

    Integer inputs give float32 results; sums are accumulated in at least float32.
    """
    return window_pool(x, pool_options("avg", window, stride, padding, ceil_mode=ceil_mode,
                                       count_include_pad=count_include_pad,
                                       divisor_override=divisor_override, context="avg_pool"))


# --------------------------------------------------------------------------
# Global and adaptive pools.


def global_pool(x, kind, keepdims=False, *, context="global_pool"):
    """Shared body of the global pools (``kind``: ``"max"`` or ``"avg"``)."""
    choice(kind, "kind", ("max", "avg"), context=context)
    boolean(keepdims, "keepdims", context=context)
    x = jnp.asarray(x)
    check_spatial_rank(x.shape, context)
    axes = tuple(range(1, x.ndim - 1))
    if kind == "max":
        y = extreme_pool(x, "max", tuple(Bins(n, 1) for n in x.shape[1:-1]))
        return y if keepdims else jnp.squeeze(y, axes)
    out_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    acc = jnp.promote_types(out_dtype, jnp.float32)
    return jnp.mean(x.astype(acc), axis=axes, keepdims=keepdims).astype(out_dtype)


def global_avg_pool(x: Any, keepdims: bool = False) -> Any:
    """Mean over all spatial axes: ``(N, *spatial, C) -> (N, C)`` (or ``(N, 1, ..., 1, C)``)."""
    return global_pool(x, "avg", keepdims, context="global_avg_pool")


def global_max_pool(x: Any, keepdims: bool = False) -> Any:
    """Max over all spatial axes: ``(N, *spatial, C) -> (N, C)`` (or ``(N, 1, ..., 1, C)``).

    The gradient reaches one element per channel, PyTorch's pick
    (``adaptive_max_pool`` to size 1): the first maximum, the last NaN if any.
    """
    return global_pool(x, "max", keepdims, context="global_max_pool")


def check_output_size(output_size: Any, context: str) -> Any:
    """Checks an adaptive pool's ``output_size`` before the number of dimensions is known.

    A positive int (every spatial dimension), or a sequence of positive ints
    and ``None`` (keep that dimension's size), one entry per spatial dimension.
    """
    sequence = isinstance(output_size, Sequence) and not isinstance(output_size, str)
    items = tuple(output_size) if sequence else (output_size,)
    if not items or not all(s is None or (is_int(s) and s > 0) for s in items):
        raise ValueError(
            f"{context}: output_size must be positive ints or None (an int for every spatial "
            f"dimension, or one entry per dimension), got {output_size!r}")
    return items if sequence else output_size


def adaptive_output_shape(input_shape: Sequence[int], output_size: Any, *,
                          context: str = "adaptive_pool") -> tuple[int, ...]:
    """``(N, *spatial, C) -> (N, *output_size, C)``; ``None`` entries keep the input size."""
    shape = tuple(input_shape)
    nd = check_spatial_rank(shape, context)
    sizes = check_output_size(output_size, context)
    if not isinstance(sizes, tuple):
        sizes = (sizes,) * nd
    if len(sizes) != nd:
        raise ValueError(
            f"{context}: output_size must be an int or a sequence of {nd} sizes for a "
            f"{nd}-D input (shape {shape}), got {output_size!r}")
    return (shape[0], *(n if s is None else s for s, n in zip(sizes, shape[1:-1])), shape[-1])


def adaptive_bins(n: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's bins: ``start[i] = floor(i * n / out)``, ``end[i] = ceil((i + 1) * n / out)``."""
    i = np.arange(out)
    return (i * n) // out, -((-(i + 1) * n) // out)


def adaptive_pool(x, output_size, kind, *, return_indices=False, context="adaptive_pool"):
    """Shared body of the adaptive pools (``kind``: ``"max"`` or ``"avg"``)."""
    choice(kind, "kind", ("max", "avg"), context=context)
    boolean(return_indices, "return_indices", context=context)
    x = jnp.asarray(x)
    out_shape = adaptive_output_shape(x.shape, output_size, context=context)
    plans = tuple(Bins(n, o) for n, o in zip(x.shape[1:-1], out_shape[1:-1]))
    if kind == "max":
        return extreme_pool(x, "max", plans, return_indices)
    if return_indices:
        raise ValueError(f"{context}: return_indices is not an option of avg pooling")
    return mean_pool(x, plans)


def adaptive_avg_pool(x: Any, output_size: Any) -> Any:
    """Average over PyTorch's adaptive bins (``adaptive_bins``) in each spatial dimension.

    Args:
      x: ``(N, *spatial, C)``.
      output_size: int (every dimension), or one entry per spatial dimension;
        ``None`` keeps that dimension's size. Sizes need not divide the input.

    Returns:
      ``(N, *output_size, C)``.
    """
    return adaptive_pool(x, output_size, "avg", context="adaptive_avg_pool")


def adaptive_max_pool(x: Any, output_size: Any, return_indices: bool = False) -> Any:
    """Max over PyTorch's adaptive bins; arguments and shapes as in ``adaptive_avg_pool``.

    As PyTorch's ``adaptive_max_pool1d/2d/3d``: each bin picks one element (the
    first maximum in row-major order, the last NaN if any), which alone gets
    the gradient; ``return_indices`` also returns its flat index in the input
    plane (int32), as ``max_pool`` does.
    """
    return adaptive_pool(x, output_size, "max", return_indices=return_indices,
                         context="adaptive_max_pool")


# --------------------------------------------------------------------------
# Max unpooling.


class UnpoolOptions(NamedTuple):
    """``max_unpool``'s arguments, checked before any shape is known (see :func:`unpool_options`)."""

    context: str
    window: int | tuple[int, ...]
    stride: int | tuple[int, ...] | None
    padding: int | tuple[Any, ...]
    output_size: int | tuple[int, ...] | None


def unpool_options(window: Any, stride: Any = None, padding: Any = 0, output_size: Any = None, *,
                   context: str = "max_unpool") -> UnpoolOptions:
    """Checks ``max_unpool``'s arguments: those of the max pool it inverts, and ``output_size``.

    ``padding`` is an int, one int per dimension or ``(low, high)`` pairs (a
    string cannot be inverted without the pooled input's size: give
    ``output_size``). ``output_size`` is ``None``, an int, one int per spatial
    dimension, or the pooled input's whole shape ``(N, *spatial, C)``.
    """
    padding = parse_padding(padding, context)
    if isinstance(padding, str):
        raise ValueError(f"{context}: padding must be an int, a sequence of ints or of (low, high) "
                         f"pairs, got {padding!r}; to undo 'SAME' padding give output_size")
    if output_size is not None:
        int_tuple(output_size, "output_size", context=context, minimum=-1)
    return UnpoolOptions(
        context, window=spatial_option(window, "window", context=context),
        stride=None if stride is None else spatial_option(stride, "stride", context=context),
        padding=padding, output_size=output_size)


def _unpool_sizes(options: UnpoolOptions, sizes: Sequence[int], default: Sequence[int],
                  stride: Sequence[int]) -> tuple[int, ...]:
    """The requested ``output_size`` (spatial), checked to lie strictly within a stride of
    ``default`` (PyTorch's rule: the max pool of that size gives ``sizes``)."""
    context, nd, wanted = options.context, len(default), options.output_size
    if is_int(wanted):
        wanted = (wanted,) * nd
    wanted = tuple(wanted)
    if len(wanted) == nd + 2:
        wanted = wanted[1:-1]
    if len(wanted) != nd or min(wanted) < 1:
        raise ValueError(f"{context}: output_size must be an int, {nd} ints >= 1 or a shape "
                         f"(N, *spatial[{nd}], C), got {options.output_size!r}")
    for i, (want, d, s) in enumerate(zip(wanted, default, stride)):
        if not d - s < want < d + s:
            raise ValueError(
                f"{context}: output_size {wanted} is out of range along spatial dimension {i}: "
                f"it must be > {d - s} and < {d + s} (pooled size {sizes[i]}, default output "
                f"{tuple(default)})")
    return wanted


def unpool_output_shape(options: UnpoolOptions, input_shape: Sequence[int]) -> tuple[int, ...]:
    """``(N, *spatial, C) -> (N, *out_spatial, C)``, PyTorch's ``MaxUnpool`` size rule.

    Per dimension the default is ``(n - 1) * stride + window - low - high``;
    an explicit ``output_size`` must be within ``stride`` of it (exclusive).
    """
    shape, context = tuple(input_shape), options.context
    nd = check_spatial_rank(shape, context)
    window = int_tuple(options.window, "window", context=context, length=nd, minimum=1)
    stride = window if options.stride is None else int_tuple(
        options.stride, "stride", context=context, length=nd, minimum=1)
    pads = padding_pairs(options.padding, shape[1:-1], window, stride, (1,) * nd, context=context)
    default = tuple((n - 1) * s + k - lo - hi
                    for n, k, s, (lo, hi) in zip(shape[1:-1], window, stride, pads))
    if min(min(p) for p in pads) < 0 or min(default) < 1:
        raise ValueError(f"{context}: padding {options.padding!r} must be >= 0 and leave an output "
                         f"(default output size {default} for input shape {shape})")
    sizes = default if options.output_size is None else _unpool_sizes(
        options, shape[1:-1], default, stride)
    return (shape[0], *sizes, shape[-1])


def _scatter_plane(x, indices, out_shape, mode: str):
    """Puts ``x`` at ``indices`` of zero planes ``(N, prod(out_spatial), C)``.

    ``mode``: ``"set"`` or ``"add"``. Indices outside the plane are dropped.
    """
    n, channels, plane = x.shape[0], x.shape[-1], math.prod(out_shape[1:-1])
    flat_x = x.reshape(n, math.prod(x.shape[1:-1]), channels)
    flat_i = indices.reshape(flat_x.shape)
    flat_i = jnp.where((flat_i >= 0) & (flat_i < plane), flat_i, plane)  # negatives would wrap
    rows = jnp.arange(n)[:, None, None]
    cols = jnp.arange(channels)[None, None, :]
    target = jnp.zeros((n, plane, channels), x.dtype).at[rows, flat_i, cols]
    y = target.set(flat_x, mode="drop") if mode == "set" else target.add(flat_x, mode="drop")
    return y.reshape((n, *out_shape[1:-1], channels))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _unpool_values(x, indices, out_shape):
    return _scatter_plane(x, indices, out_shape, "set")


@_unpool_values.defjvp
def _unpool_values_jvp(out_shape, primals, tangents):
    # PyTorch's backward reads the output gradient at each value's index (a
    # gather), also where two values share an index; the linear map whose
    # transpose is that gather is the scatter-add.
    x, indices = primals
    return (_unpool_values(x, indices, out_shape),
            _scatter_plane(tangents[0], indices, out_shape, "add"))


_unpool_jit = jax.jit(_unpool_values, static_argnums=(2,))


def unpool(x: Any, indices: Any, options: UnpoolOptions) -> Any:
    """Evaluates checked ``max_unpool`` options (:func:`unpool_options`): the body of ``max_unpool``."""
    x, indices = jnp.asarray(x), jnp.asarray(indices)
    out_shape = unpool_output_shape(options, x.shape)
    if indices.shape != x.shape:
        raise ValueError(f"{options.context}: indices must have the shape of the values "
                         f"{x.shape}, got {indices.shape}")
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise TypeError(f"{options.context}: indices must be integers, got {indices.dtype}")
    return _unpool_jit(x, indices, out_shape)


def max_unpool(x: Any, indices: Any, window: Any, stride: Any = None, padding: Any = 0,
               output_size: Any = None) -> Any:
    """Partial inverse of ``max_pool``: PyTorch's ``max_unpool1d/2d/3d``, channels-last.

    Args:
      x: pooled values ``(N, *spatial, C)``.
      indices: their flat indices in the output plane, ``x``'s shape, as
        ``max_pool(..., return_indices=True)`` returns them.
      window, stride, padding: those of the max pool (``stride`` defaults to
        ``window``; ``padding`` an int, ints or ``(low, high)`` pairs).
      output_size: ``None`` for ``(n - 1) * stride + window - low - high`` per
        dimension, else an int, one int per dimension or the pooled input's
        shape ``(N, *spatial, C)``; within ``stride`` of that default.

    Returns:
      ``(N, *out_spatial, C)``: zeros, with ``x`` at ``indices``. Indices
      outside the plane are dropped (PyTorch raises); values sharing an index
      are equal when they come from a max pool, and one of them is kept. The
      gradient of each value is the output gradient at its index.
    """
    return unpool(x, indices, unpool_options(window, stride, padding, output_size,
                                             context="max_unpool"))
