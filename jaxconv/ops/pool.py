"""Pooling ops over the spatial axes of channels-last arrays ``(N, *spatial, C)``."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import lax

from jaxconv.ops.conv import expand, padding_pairs


def _window(x, window, stride, padding, where):
    nd = x.ndim - 2
    if nd < 1:
        raise ValueError(f"{where}: expected input (N, *spatial, C), got shape {x.shape}")
    window = expand(window, nd, "window", where=where)
    stride = window if stride is None else expand(stride, nd, "stride", where=where)
    pads = padding_pairs(padding, x.shape[1:-1], window, stride, (1,) * nd, where=where)
    for size, k, (lo, hi) in zip(x.shape[1:-1], window, pads):
        if size + lo + hi < k:
            raise ValueError(
                f"{where}: window {window} is larger than the padded input "
                f"(input shape {x.shape}, padding {padding!r})")
    return (1, *window, 1), (1, *stride, 1), ((0, 0), *pads, (0, 0))


def max_pool(x: Any, window: Any, stride: Any = None, padding: Any = "VALID") -> Any:
    """Max over each window; ``stride`` defaults to ``window`` (PyTorch)."""
    x = jnp.asarray(x)
    dims, strides, pads = _window(x, window, stride, padding, "max_pool")
    return lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, pads)


def avg_pool(x: Any, window: Any, stride: Any = None, padding: Any = "VALID",
             count_include_pad: bool = True) -> Any:
    """Mean over each window; ``stride`` defaults to ``window``.

    With ``count_include_pad=False`` padded positions are left out of the count.
    """
    x = jnp.asarray(x)
    dims, strides, pads = _window(x, window, stride, padding, "avg_pool")
    sums = lax.reduce_window(x, 0.0, lax.add, dims, strides, pads)
    if count_include_pad:
        return sums / jnp.prod(jnp.array(dims))
    ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
    counts = lax.reduce_window(ones, 0.0, lax.add, dims, strides, pads)
    return sums / counts
