"""Resizing layers: Upsample (``jaxconv.ops.sampling``), PixelShuffle and PixelUnshuffle.

All are parameterless and stateless, take channels-last input
``(N, *spatial, C)`` with 1 to 3 spatial dimensions, and compute their output
shape at ``init`` from the same shape rule the ops use (no computation runs).
``apply`` checks the input against the same rule, so a wrong shape fails with
a message naming the layer, never with a raw XLA error.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jaxconv.core import Layer, normalize_shape
from jaxconv.ops.sampling import (
    check_resize_args,
    pixel_shuffle,
    pixel_shuffle_output_shape,
    pixel_unshuffle,
    pixel_unshuffle_output_shape,
    resize,
    resize_output_shape,
)
from jaxconv.validate import integer


def Upsample(scale_factor: Any = None, size: Any = None, method: str = "nearest",
             align_corners: bool = False) -> Layer:
    """Resizes the spatial axes like ``torch.nn.Upsample`` (see ``jaxconv.ops.sampling``).

    Args:
      scale_factor: a positive number (every spatial axis) or one per axis; the
        output size is ``floor(n * scale_factor)`` and the coordinate mapping
        uses ``1 / scale_factor``, as in PyTorch.
      size: the output spatial size, an int or one int per axis. Give exactly
        one of ``scale_factor`` and ``size``.
      method: ``"nearest"``, ``"nearest-exact"``, ``"linear"`` (any rank),
        ``"bilinear"`` (2-D), ``"trilinear"`` (3-D) or ``"bicubic"`` (2-D).
      align_corners: for the linear and cubic methods only.

    Shapes: ``(N, *spatial, C) -> (N, *out_spatial, C)``.
    """
    check_resize_args(size, scale_factor, method, align_corners, context="Upsample")
    options = dict(size=size, scale_factor=scale_factor, method=method,
                   align_corners=align_corners)

    def init(key, input_shape):
        shape = normalize_shape(input_shape, "Upsample")
        return resize_output_shape(shape, **options, context="Upsample"), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        resize_output_shape(jnp.shape(x), **options, context="Upsample")
        return resize(x, **options), state

    return Layer(init, apply, "upsample")


def _pixel_layer(kind: str, layer: str, r: Any, output_shape, op) -> Layer:
    r = integer(r, "r", context=layer, minimum=1)

    def init(key, input_shape):
        return output_shape(normalize_shape(input_shape, layer), r, context=layer), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        output_shape(jnp.shape(x), r, context=layer)
        return op(x, r), state

    return Layer(init, apply, kind)


def PixelShuffle(r: int) -> Layer:
    """Channels to space like ``torch.nn.PixelShuffle(r)``, channels-last.

    ``(N, H, W, C * r**2) -> (N, H * r, W * r, C)``: output pixel
    ``(h * r + i, w * r + j)``, channel ``c`` comes from input channel
    ``c * r**2 + i * r + j`` (PyTorch's order, so ported weights give the same
    result). 1-D and 3-D inputs follow the same rule (``C * r**nd`` channels).
    """
    return _pixel_layer("pixel_shuffle", "PixelShuffle", r, pixel_shuffle_output_shape,
                        pixel_shuffle)


def PixelUnshuffle(r: int) -> Layer:
    """Space to channels like ``torch.nn.PixelUnshuffle(r)``, the inverse of ``PixelShuffle``.

    ``(N, H * r, W * r, C) -> (N, H, W, C * r**2)``; every spatial size must be
    divisible by ``r``.
    """
    return _pixel_layer("pixel_unshuffle", "PixelUnshuffle", r, pixel_unshuffle_output_shape,
                        pixel_unshuffle)
