"""Pooling layers: windowed (max, average, min), global and adaptive.

All are parameterless and stateless, take channels-last input
``(N, *spatial, C)`` with 1 to 3 spatial dimensions, and compute their output
shape at ``init`` from the same shape rule the ops use (no computation runs).
"""

from __future__ import annotations

from typing import Any

from jaxconv.core import Layer, normalize_shape
from jaxconv.ops import pool as P
from jaxconv.ops.spec import check_spatial_rank, parse_padding, spatial_option
from jaxconv.validate import boolean


def _window_layer(kind: str, context: str, op_kind: str, window, stride, padding,
                  count_include_pad=True) -> Layer:
    window = spatial_option(window, "window", context=context)
    stride = None if stride is None else spatial_option(stride, "stride", context=context)
    padding = parse_padding(padding, context)
    boolean(count_include_pad, "count_include_pad", context=context)

    def init(key, input_shape):
        shape = normalize_shape(input_shape, context)
        *_, out = P.pool_geometry(shape, window, stride, padding, context=context)
        return out, {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return P.window_pool(x, op_kind, window, stride, padding, count_include_pad,
                             context=context), state

    return Layer(init, apply, kind)


def MaxPool(window: Any, stride: Any = None, padding: Any = "VALID") -> Layer:
    """Max pooling; ``stride`` defaults to ``window`` (a 2x2 window moves by 2).

    Args and shapes as in ``jaxconv.ops.max_pool``: ``(N, *spatial, C) ->
    (N, *out_spatial, C)``, ``out = floor((n + low + high - window) / stride) + 1``.
    """
    return _window_layer("max_pool", "MaxPool", "max", window, stride, padding)


def MinPool(window: Any, stride: Any = None, padding: Any = "VALID") -> Layer:
    """Min pooling; as ``MaxPool`` with ``min``."""
    return _window_layer("min_pool", "MinPool", "min", window, stride, padding)


def AvgPool(window: Any, stride: Any = None, padding: Any = "VALID",
            count_include_pad: bool = True) -> Layer:
    """Average pooling; ``stride`` defaults to ``window``.

    ``count_include_pad=True`` (PyTorch's default) divides by the window size;
    ``False`` divides by the number of real (unpadded) positions in the window.
    """
    return _window_layer("avg_pool", "AvgPool", "avg", window, stride, padding, count_include_pad)


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


def _adaptive_layer(kind: str, context: str, op_kind: str, output_size: Any) -> Layer:
    output_size = P.check_output_size(output_size, context)

    def init(key, input_shape):
        shape = normalize_shape(input_shape, context)
        return P.adaptive_output_shape(shape, output_size, context=context), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return P.adaptive_pool(x, output_size, op_kind, context=context), state

    return Layer(init, apply, kind)


def AdaptiveAvgPool(output_size: Any) -> Layer:
    """Average pooling to a fixed ``output_size`` with PyTorch's bins (sizes need not divide).

    ``output_size``: an int (every spatial dimension) or one entry per dimension,
    ``None`` keeping that dimension. ``(N, *spatial, C) -> (N, *output_size, C)``.
    """
    return _adaptive_layer("adaptive_avg_pool", "AdaptiveAvgPool", "avg", output_size)


def AdaptiveMaxPool(output_size: Any) -> Layer:
    """Max pooling to a fixed ``output_size`` with PyTorch's bins; see ``AdaptiveAvgPool``."""
    return _adaptive_layer("adaptive_max_pool", "AdaptiveMaxPool", "max", output_size)
