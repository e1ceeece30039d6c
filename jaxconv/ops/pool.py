"""Pooling ops over the spatial axes of channels-last arrays ``(N, *spatial, C)``.

1-D, 2-D and 3-D inputs (rank 3, 4, 5) are supported. Windowed pools take the
same ``padding`` spellings as convolution (``jaxconv.ops.spec.padding_pairs``)
and default ``stride`` to the window (PyTorch's convention). Adaptive pools use
PyTorch's bin rule: output index ``i`` of ``out`` covers input positions
``floor(i * n / out) <= j < ceil((i + 1) * n / out)``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv.ops.spec import Padding, check_spatial_rank, output_length, padding_pairs
from jaxconv.validate import boolean, choice, int_tuple, is_int


def pool_geometry(input_shape: Sequence[int], window: Any, stride: Any = None,
                  padding: Padding = "VALID", *, context: str = "pool"):
    """Validates a windowed pool and returns ``(window, stride, pads, out_shape)``.

    Args:
      input_shape: ``(N, *spatial, C)``; ``N`` may be ``-1``.
      window: int or one int per spatial dimension.
      stride: int, one int per dimension, or ``None`` (= ``window``).
      padding: any spelling accepted by ``padding_pairs``. Explicit pads must
        satisfy ``0 <= pad < window`` so that every window overlaps the input.

    Returns:
      ``window``, ``stride`` (tuples), ``pads`` (``(low, high)`` per dimension)
      and the output shape ``(N, *out_spatial, C)`` with
      ``out = floor((n + low + high - window) / stride) + 1``.
    """
    shape = tuple(input_shape)
    nd = check_spatial_rank(shape, context)
    window = int_tuple(window, "window", context=context, length=nd, minimum=1)
    stride = window if stride is None else int_tuple(stride, "stride", context=context, length=nd,
                                                     minimum=1)
    pads = padding_pairs(padding, shape[1:-1], window, stride, (1,) * nd, context=context)
    for k, (lo, hi) in zip(window, pads):
        if not (0 <= lo < k and 0 <= hi < k):
            raise ValueError(
                f"{context}: padding must be >= 0 and smaller than the window on each side "
                f"(every window must overlap the input); got pads {pads} for window {window}")
    out = tuple(output_length(n, k, s, p) for n, k, s, p in zip(shape[1:-1], window, stride, pads))
    if min(out) <= 0:
        padded = tuple(n + lo + hi for n, (lo, hi) in zip(shape[1:-1], pads))
        raise ValueError(
            f"{context}: window {window} is larger than the padded input {padded} "
            f"(input shape {shape}, padding {padding!r})")
    return window, stride, pads, (shape[0], *out, shape[-1])


def _valid_counts(sizes, window, stride, pads, out_sizes) -> np.ndarray:
    """Number of non-padding positions in each window, shape ``(*out_spatial,)``."""
    per_dim = []
    for n, k, s, (lo, _), o in zip(sizes, window, stride, pads, out_sizes):
        start = np.arange(o) * s - lo
        per_dim.append(np.minimum(start + k, n) - np.maximum(start, 0))
    counts = per_dim[0]
    for c in per_dim[1:]:
        counts = np.multiply.outer(counts, c)
    return counts


def _window_views(x, window):
    """One strided slice of ``x`` per window position, in row-major window order.

    For windows that tile ``x`` exactly (stride == window, sizes multiples of
    the window), view ``j`` holds element ``j`` of every window and has the
    output's shape. Strided slices (not a reshape) keep a batch axis that is
    sharded over a mesh untouched.
    """
    views = []
    for offsets in itertools.product(*(range(k) for k in window)):
        views.append(x[(slice(None), *(slice(o, None, k) for o, k in zip(offsets, window)),
                        slice(None))])
    return views


def _views_reduce(views, kind):
    return functools.reduce(jnp.maximum if kind == "max" else jnp.minimum, views)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _tiled_pool(x, kind, window):
    """Max/min over non-overlapping windows that tile ``x`` exactly (stride == window, no pad).

    Element-wise max/min of strided slices instead of ``lax.reduce_window``: on
    XLA:CPU the latter's derivative is ``select_and_scatter`` (or a
    pair-packing ``reduce_window``), which costs several times the forward
    pass. The custom JVP below gives the same derivative with element-wise ops
    only.
    """
    return _views_reduce(_window_views(x, window), kind)


@_tiled_pool.defjvp
def _tiled_pool_jvp(kind, window, primals, tangents):
    # reduce_window's derivative on XLA is a select over the window in
    # row-major order: keep the selected element ``s`` unless ``s >= e`` fails
    # for the next element ``e`` (``<=`` for min). So each window's whole
    # tangent comes from ONE element, the first extreme one on ties (and after
    # a NaN, the next element). The loop below runs that select over the
    # window positions with element-wise ops on arrays of the output's shape;
    # ``t -> dy`` is linear (static slices and selects), so its transpose, the
    # gradient, is selects and pads that XLA fuses: no scatter, no gather.
    (x,), (t,) = primals, tangents
    xs, ts = _window_views(x, window), _window_views(t, window)
    keep = lax.ge if kind == "max" else lax.le
    sel, dy = xs[0], ts[0]
    for xv, tv in zip(xs[1:], ts[1:]):
        swap = ~keep(sel, xv)
        sel = jnp.where(swap, xv, sel)
        dy = jnp.where(swap, tv, dy)
    return _views_reduce(xs, kind), dy


def tiled_pool_applies(window, stride, pads) -> bool:
    """Whether ``window_pool`` takes the strided-slice path: stride == window, no padding.

    Sizes that the window does not divide are fine: with no padding the pool
    drops the remainder (``out = floor(n / k)``), so it is sliced off first.
    """
    return tuple(stride) == tuple(window) and all(p == (0, 0) for p in pads)


def _reduce_window_pool(x, kind, window, stride, pads):
    """Max/min pool through ``lax.reduce_window`` (any stride and padding)."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        init = jnp.inf if kind == "min" else -jnp.inf
    else:
        info = jnp.iinfo(x.dtype)
        init = info.max if kind == "min" else info.min
    op = lax.max if kind == "max" else lax.min
    return lax.reduce_window(x, np.array(init, x.dtype), op, (1, *window, 1), (1, *stride, 1),
                             ((0, 0), *pads, (0, 0)))


def window_pool(x, kind, window, stride=None, padding="VALID", count_include_pad=True, *,
                context="pool"):
    """Shared body of the windowed pools; ``kind`` is ``"max"``, ``"min"`` or ``"avg"``.

    ``context`` names the caller in error messages (a layer passes its own name).
    Max/min pools whose windows tile the input (``tiled_pool_applies``) take a
    strided-slice path with the same values and derivatives as
    ``lax.reduce_window`` (including ties: the first extreme element of a
    window in row-major order gets its gradient); the others use
    ``lax.reduce_window``.
    """
    choice(kind, "kind", ("max", "min", "avg"), context=context)
    x = jnp.asarray(x)
    window, stride, pads, out_shape = pool_geometry(x.shape, window, stride, padding,
                                                    context=context)
    dims, strides = (1, *window, 1), (1, *stride, 1)
    full_pads = ((0, 0), *pads, (0, 0))
    if kind in ("max", "min"):
        if tiled_pool_applies(window, stride, pads):
            used = tuple(o * k for o, k in zip(out_shape[1:-1], window))
            if used != x.shape[1:-1]:
                x = x[(slice(None), *(slice(0, u) for u in used), slice(None))]
            return _tiled_pool(x, kind, window)
        return _reduce_window_pool(x, kind, window, stride, pads)
    # Average: accumulate in at least float32 (bf16/f16 sums lose digits), then cast back.
    out_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    acc = jnp.promote_types(out_dtype, jnp.float32)
    sums = lax.reduce_window(x.astype(acc), np.array(0, acc), lax.add, dims, strides, full_pads)
    if count_include_pad:
        y = sums / float(np.prod(window))
    else:
        counts = _valid_counts(x.shape[1:-1], window, stride, pads, out_shape[1:-1])
        y = sums / jnp.asarray(counts[None, ..., None], acc)
    return y.astype(out_dtype)


def max_pool(x: Any, window: Any, stride: Any = None, padding: Padding = "VALID") -> Any:
    """Max over each window.

    Args:
      x: ``(N, *spatial, C)`` with 1 to 3 spatial dimensions.
      window: int or one int per spatial dimension.
      stride: defaults to ``window`` (a 2x2 window moves by 2).
      padding: ``"VALID"`` (default), ``"SAME"``, ``"SAME_LOWER"``, an int, per-dimension
        ints or ``(low, high)`` pairs. Padded positions never win (they are ``-inf``).

    Returns:
      ``(N, *out_spatial, C)`` with ``out = floor((n + low + high - window) / stride) + 1``.
    """
    return window_pool(x, "max", window, stride, padding, True, context="max_pool")


def min_pool(x: Any, window: Any, stride: Any = None, padding: Padding = "VALID") -> Any:
    """Min over each window; arguments and shapes as in ``max_pool``."""
    return window_pool(x, "min", window, stride, padding, True, context="min_pool")


def avg_pool(x: Any, window: Any, stride: Any = None, padding: Padding = "VALID",
             count_include_pad: bool = True) -> Any:
    """Mean over each window; arguments and shapes as in ``max_pool``.

    Args:
      count_include_pad: ``True`` (PyTorch's default) divides every window sum by
        ``prod(window)``, counting padded zeros; ``False`` divides by the number
        of input positions the window covers (TensorFlow's ``"SAME"`` average).

    Integer inputs give float32 results; sums are accumulated in at least float32.
    """
    boolean(count_include_pad, "count_include_pad", context="avg_pool")
    return window_pool(x, "avg", window, stride, padding, count_include_pad, context="avg_pool")


def global_pool(x, kind, keepdims=False, *, context="global_pool"):
    """Shared body of the global pools (``kind``: ``"max"`` or ``"avg"``)."""
    choice(kind, "kind", ("max", "avg"), context=context)
    boolean(keepdims, "keepdims", context=context)
    x = jnp.asarray(x)
    check_spatial_rank(x.shape, context)
    axes = tuple(range(1, x.ndim - 1))
    if kind == "max":
        return jnp.max(x, axis=axes, keepdims=keepdims)
    out_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    acc = jnp.promote_types(out_dtype, jnp.float32)
    return jnp.mean(x.astype(acc), axis=axes, keepdims=keepdims).astype(out_dtype)


def global_avg_pool(x: Any, keepdims: bool = False) -> Any:
    """Mean over all spatial axes: ``(N, *spatial, C) -> (N, C)`` (or ``(N, 1, ..., 1, C)``)."""
    return global_pool(x, "avg", keepdims, context="global_avg_pool")


def global_max_pool(x: Any, keepdims: bool = False) -> Any:
    """Max over all spatial axes: ``(N, *spatial, C) -> (N, C)`` (or ``(N, 1, ..., 1, C)``)."""
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


def adaptive_pool(x, output_size, kind, *, context="adaptive_pool"):
    """Shared body of the adaptive pools (``kind``: ``"max"`` or ``"avg"``)."""
    choice(kind, "kind", ("max", "avg"), context=context)
    x = jnp.asarray(x)
    out_shape = adaptive_output_shape(x.shape, output_size, context=context)
    if kind == "avg":
        out_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
        x = x.astype(jnp.promote_types(out_dtype, jnp.float32))
    # Separable: reduce one spatial axis at a time. Each bin is gathered as a
    # fixed-length row of indices; rows shorter than the longest bin repeat
    # their last index (harmless for max) and are masked out of the mean.
    for axis, (n, o) in enumerate(zip(x.shape[1:-1], out_shape[1:-1]), start=1):
        if n == o:
            continue
        start, end = adaptive_bins(n, o)
        length = int(np.max(end - start))
        offsets = np.arange(length)
        idx = np.minimum(start[:, None] + offsets, end[:, None] - 1)  # (o, length)
        g = jnp.take(x, jnp.asarray(idx.reshape(-1)), axis=axis)
        g = g.reshape(x.shape[:axis] + (o, length) + x.shape[axis + 1:])
        if kind == "max":
            x = jnp.max(g, axis=axis + 1)
        else:
            mask = (start[:, None] + offsets < end[:, None]).astype(np.float64)
            weights = mask / (end - start)[:, None]
            bshape = (1,) * axis + (o, length) + (1,) * (x.ndim - axis - 1)
            x = jnp.sum(g * jnp.asarray(weights.reshape(bshape), g.dtype), axis=axis + 1)
    return x.astype(out_dtype) if kind == "avg" else x


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


def adaptive_max_pool(x: Any, output_size: Any) -> Any:
    """Max over PyTorch's adaptive bins; arguments and shapes as in ``adaptive_avg_pool``."""
    return adaptive_pool(x, output_size, "max", context="adaptive_max_pool")
