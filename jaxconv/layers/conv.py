"""Convolution layers."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxconv.core import Layer, cast_to, check_input, normalize_shape, positive_int
from jaxconv.ops.conv import PADDING_STRINGS, conv, conv_output_shape

default_kernel_init = jax.nn.initializers.lecun_normal()


def Conv(
    features: int,
    kernel_size: Any,
    *,
    stride: Any = 1,
    padding: Any = "SAME",
    dilation: Any = 1,
    groups: int = 1,
    use_bias: bool = True,
    impl: str = "lax",
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
      stride, padding, dilation, groups, impl, precision: as in ``jaxconv.ops.conv``.
      use_bias: add a learned per-channel bias.
      kernel_init, bias_init: ``jax.nn.initializers`` functions.
      dtype: compute dtype (``None``: promote input and params).
      param_dtype: dtype of the stored parameters.

    Shapes: ``(N, *spatial, C) -> (N, *out_spatial, F)``; params ``kernel``
    ``(*kernel_size, C // groups, F)`` and ``bias`` ``(F,)``.
    """
    positive_int(features, "features", "Conv")
    positive_int(groups, "groups", "Conv")
    if isinstance(kernel_size, int):
        positive_int(kernel_size, "kernel_size", "Conv")
    else:
        kernel_size = tuple(kernel_size)
        for k in kernel_size:
            positive_int(k, "kernel_size", "Conv")
    if features % groups:
        raise ValueError(f"Conv: groups={groups} must divide features={features}")
    # Validate the stride/dilation/padding spelling now, not at first use.
    for name, value in (("stride", stride), ("dilation", dilation)):
        if isinstance(value, bool) or not (isinstance(value, int) or isinstance(value, (tuple, list))):
            raise ValueError(f"Conv: {name} must be an int or a tuple of ints, got {value!r}")
        if isinstance(value, int) and value < 1:
            raise ValueError(f"Conv: {name} must be >= 1, got {value!r}")
    if isinstance(padding, str) and padding.upper() not in PADDING_STRINGS:
        raise ValueError(
            f"Conv: unknown padding {padding!r}; expected one of {PADDING_STRINGS}, "
            "an int, or a sequence of ints or (low, high) pairs")

    options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def kernel_shape(input_shape):
        nd = len(input_shape) - 2
        window = (kernel_size,) * nd if isinstance(kernel_size, int) else kernel_size
        return (*window, input_shape[-1] // groups, features)

    def init(key, input_shape):
        shape = normalize_shape(input_shape, "Conv")
        if len(shape) not in (3, 4, 5):
            raise ValueError(
                f"Conv: expected input of rank 3, 4 or 5 (N, *spatial, C), got shape {shape}")
        k_shape = kernel_shape(shape)
        out = conv_output_shape(shape, k_shape, where="Conv", **options)
        k_kernel, k_bias = jax.random.split(key)
        params = {"kernel": kernel_init(k_kernel, k_shape, param_dtype)}
        if use_bias:
            params["bias"] = bias_init(k_bias, (features,), param_dtype)
        return out, params, {}

    def apply(params, state, x, *, key=None, train=False):
        kernel = params["kernel"]
        nd = kernel.ndim - 2
        check_input(x, (-1,) * (nd + 1) + (kernel.shape[-2] * groups,), "Conv")
        x, kernel = cast_to(dtype, x, kernel)
        y = conv(x, kernel, impl=impl, precision=precision, **options)
        if use_bias:
            y = y + params["bias"].astype(y.dtype)
        return y, state

    return Layer(init, apply, "conv")
