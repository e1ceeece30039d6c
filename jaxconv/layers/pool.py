"""Pooling layers."""

from __future__ import annotations

from typing import Any

import jax

from jaxconv.core import Layer, normalize_shape
from jaxconv.ops import pool as pool_ops


def _pool_layer(op, kind, name, window, stride, padding, **kwargs) -> Layer:
    def init(key, input_shape):
        shape = normalize_shape(input_shape, name)
        if len(shape) < 3:
            raise ValueError(
                f"{name}: expected input (N, *spatial, C) of rank >= 3, got shape {shape}")
        probe = (1,) + shape[1:]
        out = jax.eval_shape(
            lambda x: op(x, window, stride, padding, **kwargs),
            jax.ShapeDtypeStruct(probe, "float32")).shape
        return (shape[0],) + tuple(out[1:]), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return op(x, window, stride, padding, **kwargs), state

    return Layer(init, apply, kind)


def MaxPool(window: Any, stride: Any = None, padding: Any = "VALID") -> Layer:
    """Max pooling; ``stride`` defaults to ``window`` (a 2x2 window moves by 2)."""
    return _pool_layer(pool_ops.max_pool, "max_pool", "MaxPool", window, stride, padding)


def AvgPool(window: Any, stride: Any = None, padding: Any = "VALID",
            count_include_pad: bool = True) -> Layer:
    """Average pooling; ``stride`` defaults to ``window``."""
    return _pool_layer(pool_ops.avg_pool, "avg_pool", "AvgPool", window, stride, padding,
                       count_include_pad=count_include_pad)
