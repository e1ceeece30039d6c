"""Convolution layers: ``Conv`` and ``ConvTranspose`` (channels-last, 1-D to 3-D)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxconv.core import Layer, cast_to, check_input, normalize_shape, positive_int
from jaxconv.layers.dense import default_kernel_init, kernel_and_bias
from jaxconv.ops.conv import (IMPLS, check_padding_mode, check_padding_string, conv,
                              conv_output_shape, conv_transpose, conv_transpose_output_shape)

def _check_spatial(value: Any, name: str, layer: str, minimum: int) -> None:
    """Factory-time check of an int / tuple-of-ints option (length is checked at init)."""
    items = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ValueError(f"{layer}: {name} must be an int or a tuple of ints, got {value!r}")
    if any(v < minimum for v in items):
        raise ValueError(f"{layer}: {name} must be >= {minimum}, got {value!r}")


def _check_options(layer, features, kernel_size, stride, padding, dilation, groups, impl):
    positive_int(features, "features", layer)
    positive_int(groups, "groups", layer)
    _check_spatial(kernel_size, "kernel_size", layer, 1)
    _check_spatial(stride, "stride", layer, 1)
    _check_spatial(dilation, "dilation", layer, 1)
    if features % groups:
        raise ValueError(f"{layer}: groups={groups} must divide features={features}")
    check_padding_string(padding, layer)
    if impl not in IMPLS:
        raise ValueError(f"{layer}: unknown impl {impl!r}; expected one of {IMPLS}")


def _window(kernel_size, shape, layer):
    shape = normalize_shape(shape, layer)
    if len(shape) not in (3, 4, 5):
        raise ValueError(
            f"{layer}: expected input of rank 3, 4 or 5 (N, *spatial, C), got shape {shape}")
    nd = len(shape) - 2
    window = (kernel_size,) * nd if isinstance(kernel_size, int) else tuple(kernel_size)
    if len(window) != nd:
        raise ValueError(
            f"{layer}: kernel_size {kernel_size!r} has {len(window)} dimensions, but the input "
            f"shape {shape} has {nd} spatial dimensions")
    return shape, window


def _apply(op, layer, in_channels, params, x, dtype, use_bias, **options):
    """Shared body of the conv layers' ``apply``: check, cast, convolve, add the bias."""
    kernel = params["kernel"]
    check_input(x, (-1,) * (kernel.ndim - 1) + (in_channels,), layer)
    x, kernel = cast_to(dtype, x, kernel)
    y = op(x, kernel, **options)
    if use_bias:
        y = y + params["bias"].astype(y.dtype)
    return y


def Conv(
    features: int,
    kernel_size: Any,
    *,
    stride: Any = 1,
    padding: Any = "SAME",
    dilation: Any = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    use_bias: bool = True,
    impl: str = "auto",
    precision: Any = None,
    kernel_init: Any = default_kernel_init,
    bias_init: Any = jax.nn.initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Layer:
    """N-D convolution layer (channels-last).

    Args:
      features: number of output channels ``F``.
      kernel_size: int (same size in every spatial dimension, whose count is
        taken from the input at init) or a tuple with one int per dimension.
      stride, padding, dilation, groups, padding_mode, precision: as in
        ``jaxconv.ops.conv``. ``groups == C`` with ``features = m * C`` is a
        depthwise convolution with channel multiplier ``m``.
      use_bias: add a learned per-channel bias.
      impl: ``"auto"`` (default: per backend, ``jaxconv.ops.autotune``),
        ``"lax"`` or ``"patches"``.
      kernel_init, bias_init: ``jax.nn.initializers`` functions.
      dtype: compute dtype (``None``: promote input and params), e.g.
        ``jnp.bfloat16`` with ``param_dtype=jnp.float32``.
      param_dtype: dtype of the stored parameters.

    Shapes: ``(N, *spatial, C) -> (N, *out_spatial, F)``; params ``kernel``
    ``(*kernel_size, C // groups, F)`` and ``bias`` ``(F,)``.
    """
    _check_options("Conv", features, kernel_size, stride, padding, dilation, groups, impl)
    check_padding_mode(padding_mode, "Conv")
    options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                   padding_mode=padding_mode)

    def init(key, input_shape):
        shape, window = _window(kernel_size, input_shape, "Conv")
        k_shape = (*window, shape[-1] // groups, features)
        if shape[-1] % groups:
            raise ValueError(
                f"Conv: groups={groups} must divide the {shape[-1]} input channels "
                f"(input shape {shape})")
        out = conv_output_shape(shape, k_shape, where="Conv", **options)
        return out, kernel_and_bias(key, k_shape, features, use_bias, kernel_init,
                                    bias_init, param_dtype), {}

    def apply(params, state, x, *, key=None, train=False):
        in_channels = params["kernel"].shape[-2] * groups
        return _apply(conv, "Conv", in_channels, params, x, dtype, use_bias,
                      impl=impl, precision=precision, **options), state

    return Layer(init, apply, "conv")


def ConvTranspose(
    features: int,
    kernel_size: Any,
    *,
    stride: Any = 1,
    padding: Any = "SAME",
    dilation: Any = 1,
    output_padding: Any = 0,
    groups: int = 1,
    use_bias: bool = True,
    impl: str = "auto",
    precision: Any = None,
    kernel_init: Any = default_kernel_init,
    bias_init: Any = jax.nn.initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Layer:
    """N-D transposed convolution layer (PyTorch's ``ConvTranspose``, channels-last).

    Args:
      features: number of output channels ``F``.
      kernel_size: int or one int per spatial dimension.
      stride, padding, dilation, output_padding, groups, precision: as in
        ``jaxconv.ops.conv_transpose`` (int padding ``p``: output
        ``(n - 1) * stride - 2p + dilation * (k - 1) + 1 + output_padding``;
        ``"SAME"``: ``n * stride``).
      use_bias, impl, kernel_init, bias_init, dtype, param_dtype: as in ``Conv``.

    Shapes: ``(N, *spatial, C) -> (N, *out_spatial, F)``; params ``kernel``
    ``(*kernel_size, F // groups, C)`` (the layout of the convolution it
    transposes; a PyTorch weight ``(C, F // groups, *k)`` converts by moving
    its two leading axes last, in reverse order) and ``bias`` ``(F,)``.
    """
    _check_options("ConvTranspose", features, kernel_size, stride, padding, dilation, groups,
                   impl)
    _check_spatial(output_padding, "output_padding", "ConvTranspose", 0)
    options = dict(stride=stride, padding=padding, dilation=dilation,
                   output_padding=output_padding, groups=groups)

    def init(key, input_shape):
        shape, window = _window(kernel_size, input_shape, "ConvTranspose")
        k_shape = (*window, features // groups, shape[-1])
        out = conv_transpose_output_shape(shape, k_shape, where="ConvTranspose", **options)
        return out, kernel_and_bias(key, k_shape, features, use_bias, kernel_init,
                                    bias_init, param_dtype), {}

    def apply(params, state, x, *, key=None, train=False):
        in_channels = params["kernel"].shape[-1]
        return _apply(conv_transpose, "ConvTranspose", in_channels, params, x, dtype, use_bias,
                      impl=impl, precision=precision, **options), state

    return Layer(init, apply, "conv_transpose")
