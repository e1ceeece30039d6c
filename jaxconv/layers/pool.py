"""Pooling layers: windowed (max, average, min), global, adaptive, and max unpooling.

All are parameterless and stateless, take channels-last input
``(N, *spatial, C)`` with 1 to 3 spatial dimensions, and compute their output
shape at ``init`` from the same shape rule the ops use (no computation runs).
Options mean what they mean in PyTorch (``jaxconv.ops.pool``).

Max unpooling (SegNet-style decoders): ``MaxPool(..., return_indices=True)``
outputs a ``(values, indices)`` pair (and declares a pair of shapes), the
pair ``MaxUnpool`` takes. Between the two, ``parallel`` carries the indices
past the layers that work on the values::

    serial(Conv(64, 3), MaxPool(2, return_indices=True),
           parallel(serial(Conv(64, 3), Relu()), Identity()),  # values, indices
           MaxUnpool(2), Conv(3, 3))
"""

from __future__ import annotations

from typing import Any

from jaxconv.core import Layer, normalize_shape
from jaxconv.ops import pool as P
from jaxconv.ops.spec import check_spatial_rank
from jaxconv.validate import boolean


def _window_layer(kind: str, options: P.PoolOptions) -> Layer:
    context = options.context

    def init(key, input_shape):
        shape = normalize_shape(input_shape, context)
        out = P.pool_geometry(options, shape)[1]
        return ((out, out) if options.return_indices else out), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return P.window_pool(x, options), state

    return Layer(init, apply, kind)


def MaxPool(window: Any, stride: Any = None, padding: Any = "VALID", *, dilation: Any = 1,
            ceil_mode: bool = False, return_indices: bool = False) -> Layer:
    """Max pooling (PyTorch's ``MaxPool1d/2d/3d``); ``stride`` defaults to ``window``.

    Args and shapes as in ``jaxconv.ops.max_pool``: ``(N, *spatial, C) ->
    (N, *out_spatial, C)``, ``out = floor((n + low + high - span) / stride) + 1``
    (rounded up with ``ceil_mode``). The gradient reaches one element per window.

    With ``return_indices=True`` the output is the pair ``(values, indices)``
    (int32 flat indices into each input plane, PyTorch's) and ``init``
    declares the pair of their (equal) shapes: the input of ``MaxUnpool``.
    """
    return _window_layer("max_pool", P.pool_options(
        "max", window, stride, padding, dilation=dilation, ceil_mode=ceil_mode,
        return_indices=return_indices, context="MaxPool"))


def MinPool(window: Any, stride: Any = None, padding: Any = "VALID", *, dilation: Any = 1,
            ceil_mode: bool = False, return_indices: bool = False) -> Layer:
    """Min pooling; as ``MaxPool`` with ``min`` (PyTorch's ``-max_pool(-x)``)."""
    return _window_layer("min_pool", P.pool_options(
        "min", window, stride, padding, dilation=dilation, ceil_mode=ceil_mode,
        return_indices=return_indices, context="MinPool"))


def AvgPool(window: Any, stride: Any = None, padding: Any = "VALID",
            count_include_pad: bool = True, *, ceil_mode: bool = False,
            divisor_override: int | None = None) -> Layer:
    """Average pooling (PyTorch's ``AvgPool1d/2d/3d``); ``stride`` defaults to ``window``.

    ``count_include_pad=True`` (PyTorch's default) divides by the window's
    length including padding (with ``ceil_mode``, not past the right
    padding); ``False`` divides by the number of real (unpadded) positions in
    the window; ``divisor_override`` divides by that int instead.
    """
    return _window_layer("avg_pool", P.pool_options(
        "avg", window, stride, padding, ceil_mode=ceil_mode,
        count_include_pad=count_include_pad, divisor_override=divisor_override,
        context="AvgPool"))


def _global_layer(kind: str, context: str, op_kind: str, keepdims: bool) -> Layer:
    boolean(keepdims, "keepdims", context=context)

    def init(key, input_shape):
        shape = normalize_shape(input_shape, context)
        check_spatial_rank(shape, context)
        middle = (1,) * (len(shape) - 2) if keepdims else ()
        return (shape[0], *middle, shape[-1]), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return P.global_pool(x, op_kind, keepdims, context=context), state

    return Layer(init, apply, kind)


def GlobalAvgPool(keepdims: bool = False) -> Layer:
    """Mean over all spatial axes: ``(N, *spatial, C) -> (N, C)`` (``keepdims``: ``(N, 1.., C)``)."""
    return _global_layer("global_avg_pool", "GlobalAvgPool", "avg", keepdims)


def GlobalMaxPool(keepdims: bool = False) -> Layer:
    """Max over all spatial axes: ``(N, *spatial, C) -> (N, C)`` (``keepdims``: ``(N, 1.., C)``)."""
    return _global_layer("global_max_pool", "GlobalMaxPool", "max", keepdims)


def _adaptive_layer(kind: str, context: str, op_kind: str, output_size: Any,
                    return_indices: bool = False) -> Layer:
    output_size = P.check_output_size(output_size, context)
    boolean(return_indices, "return_indices", context=context)

    def init(key, input_shape):
        shape = normalize_shape(input_shape, context)
        out = P.adaptive_output_shape(shape, output_size, context=context)
        return ((out, out) if return_indices else out), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return P.adaptive_pool(x, output_size, op_kind, return_indices=return_indices,
                               context=context), state

    return Layer(init, apply, kind)


def AdaptiveAvgPool(output_size: Any) -> Layer:
    """Average pooling to a fixed ``output_size`` with PyTorch's bins (sizes need not divide).

    ``output_size``: an int (every spatial dimension) or one entry per dimension,
    ``None`` keeping that dimension. ``(N, *spatial, C) -> (N, *output_size, C)``.
    """
    return _adaptive_layer("adaptive_avg_pool", "AdaptiveAvgPool", "avg", output_size)


def AdaptiveMaxPool(output_size: Any, return_indices: bool = False) -> Layer:
    """Max pooling to a fixed ``output_size`` with PyTorch's bins; see ``AdaptiveAvgPool``.

    With ``return_indices=True`` the output is ``(values, indices)``, as for ``MaxPool``.
    """
    return _adaptive_layer("adaptive_max_pool", "AdaptiveMaxPool", "max", output_size,
                           return_indices)


def _pair(value: Any, what: str, context: str) -> tuple[Any, Any]:
    """``value`` as a ``(values, indices)`` pair, or a clear error."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(
            f"{context}: expected a (values, indices) pair of {what}, as "
            f"MaxPool(..., return_indices=True) gives, got {value!r:.120}")
    return value[0], value[1]


def MaxUnpool(window: Any, stride: Any = None, padding: Any = 0, output_size: Any = None) -> Layer:
    """Max unpooling (PyTorch's ``MaxUnpool1d/2d/3d``): the op ``jaxconv.ops.max_unpool``.

    Takes the ``(values, indices)`` pair of ``MaxPool(..., return_indices=True)``
    (input shape: the pair of their shapes) and returns zeros with each value
    at its index: ``(N, *spatial, C) -> (N, *out_spatial, C)``, per dimension
    ``out = (n - 1) * stride + window - low - high`` unless ``output_size``
    (an int, one int per spatial dimension, or the pooled input's shape
    ``(N, *spatial, C)``) is given, within ``stride`` of that.
    """
    options = P.unpool_options(window, stride, padding, output_size, context="MaxUnpool")
    context = options.context

    def init(key, input_shape):
        values, indices = _pair(input_shape, "shapes", context)
        values = normalize_shape(values, context)
        if normalize_shape(indices, context) != values:
            raise ValueError(f"{context}: indices must have the shape of the values {values}, "
                             f"got {tuple(indices)}")
        return P.unpool_output_shape(options, values), {}, {}

    def apply(params, state, inputs, *, key=None, train=False):
        values, indices = _pair(inputs, "arrays", context)
        return P.unpool(values, indices, options), state

    return Layer(init, apply, "max_unpool")
