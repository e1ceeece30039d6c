"""Pooling layers: windowed (max, average, min), global and adaptive.

All are parameterless and stateless, take channels-last input
``(N, *spatial, C)`` with 1 to 3 spatial dimensions, and compute their output
shape at ``init`` from the same shape rule the ops use (no computation runs).
"""

from __future__ import annotations

from typing import Any

from jaxconv.core import Layer, normalize_shape
from jaxconv.ops import pool as P
from jaxconv.ops.conv import check_padding_string


def _check_spec(value: Any, name: str, layer: str, *, none_ok: bool = False) -> None:
    """Factory-time validation of a window/stride/size spec (int or sequence of ints).

    With ``none_ok`` the whole value (stride) or single entries (output_size) may be None.
    """
    if none_ok and value is None:
        return
    items = value if isinstance(value, (tuple, list)) else (value,)
    good = [(isinstance(v, int) and not isinstance(v, bool) and v > 0) or (none_ok and v is None)
            for v in items]
    if not items or not all(good):
        raise ValueError(f"{layer}: {name} must be a positive int or a sequence of positive "
                         f"ints, got {value!r}")


def _window_layer(kind: str, layer: str, op_kind: str, window, stride, padding,
                  count_include_pad=True) -> Layer:
    _check_spec(window, "window", layer)
    _check_spec(stride, "stride", layer, none_ok=True)
    check_padding_string(padding, layer)

    def init(key, input_shape):
        shape = normalize_shape(input_shape, layer)
        *_, out = P.pool_geometry(shape, window, stride, padding, where=layer)
        return out, {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return P.window_pool(x, op_kind, window, stride, padding, count_include_pad,
                             where=layer), state

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
    if not isinstance(count_include_pad, bool):
        raise TypeError(f"AvgPool: count_include_pad must be a bool, got {count_include_pad!r}")
    return _window_layer("avg_pool", "AvgPool", "avg", window, stride, padding, count_include_pad)


def _global_layer(kind: str, layer: str, op_kind: str, keepdims: bool) -> Layer:
    if not isinstance(keepdims, bool):
        raise TypeError(f"{layer}: keepdims must be a bool, got {keepdims!r}")

    def init(key, input_shape):
        shape = normalize_shape(input_shape, layer)
        P.check_spatial_rank(shape, layer)
        middle = (1,) * (len(shape) - 2) if keepdims else ()
        return (shape[0], *middle, shape[-1]), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return P.global_pool(x, op_kind, keepdims, where=layer), state

    return Layer(init, apply, kind)


def GlobalAvgPool(keepdims: bool = False) -> Layer:
    """Mean over all spatial axes: ``(N, *spatial, C) -> (N, C)`` (``keepdims``: ``(N, 1.., C)``)."""
    return _global_layer("global_avg_pool", "GlobalAvgPool", "avg", keepdims)


def GlobalMaxPool(keepdims: bool = False) -> Layer:
    """Max over all spatial axes: ``(N, *spatial, C) -> (N, C)`` (``keepdims``: ``(N, 1.., C)``)."""
    return _global_layer("global_max_pool", "GlobalMaxPool", "max", keepdims)


def _adaptive_layer(kind: str, layer: str, op_kind: str, output_size: Any) -> Layer:
    _check_spec(output_size, "output_size", layer, none_ok=True)

    def init(key, input_shape):
        shape = normalize_shape(input_shape, layer)
        return P.adaptive_output_shape(shape, output_size, where=layer), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return P.adaptive_pool(x, output_size, op_kind, where=layer), state

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
