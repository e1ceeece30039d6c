"""Convolution layers: ``Conv``, ``ConvTranspose`` and ``StdConv`` (channels-last, 1-D to 3-D).

A layer checks its convolution arguments once, in its factory
(``jaxconv.ops.spec.conv_options``); ``init`` and each ``apply`` resolve them
against the shapes once (``resolve_conv``), and ``apply`` hands them to
``jaxconv.ops.conv.convolve``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxconv.core import Layer, cast_to, check_input, normalize_shape
from jaxconv.layers.dense import default_kernel_init, kernel_and_bias
from jaxconv.layers.norm import standardize
from jaxconv.ops.conv import convolve
from jaxconv.ops.spec import ConvOptions, check_spatial_rank, conv_options, resolve_conv, spatial_option
from jaxconv.validate import boolean, integer, number


def _check_features(features: Any, groups: int, context: str) -> int:
    integer(features, "features", context=context, minimum=1)
    if features % groups:
        raise ValueError(f"{context}: groups={groups} must divide features={features}")
    return features


def _shape_and_window(kernel_size: int | tuple[int, ...], input_shape: Any, context: str):
    """The input shape (checked) and the kernel's spatial size for it."""
    shape = normalize_shape(input_shape, context)
    nd = check_spatial_rank(shape, context)
    window = (kernel_size,) * nd if isinstance(kernel_size, int) else kernel_size
    if len(window) != nd:
        raise ValueError(
            f"{context}: kernel_size {kernel_size!r} has {len(window)} dimensions, but the input "
            f"shape {shape} has {nd} spatial dimensions")
    return shape, window


def _make_layer(options: ConvOptions, kind: str, features: int, kernel_size: Any, use_bias: bool,
                inits: tuple[Any, Any], dtype: Any, param_dtype: Any,
                transform_kernel: Callable[[Any], Any] | None = None) -> Layer:
    """The ``Layer`` of a convolution whose options are checked; ``kernel_size`` is checked here.

    ``transform_kernel``, when given, maps the stored kernel to the one that
    convolves (``StdConv``'s standardisation), before the cast to ``dtype``.
    """
    context, groups = options.context, options.groups
    kernel_size = spatial_option(kernel_size, "kernel_size", context=context)
    boolean(use_bias, "use_bias", context=context)

    def kernel_shape(window, in_channels):
        if options.op == "conv":
            return (*window, in_channels // groups, features)
        return (*window, features // groups, in_channels)

    def init(key, input_shape):
        shape, window = _shape_and_window(kernel_size, input_shape, context)
        k_shape = kernel_shape(window, shape[-1])
        _, out = resolve_conv(options, shape, k_shape)
        return out, kernel_and_bias(key, k_shape, features, use_bias, *inits, param_dtype), {}

    def apply(params, state, x, *, key=None, train=False):
        kernel = params["kernel"]
        in_channels = kernel.shape[-2] * groups if options.op == "conv" else kernel.shape[-1]
        check_input(x, (-1,) * (kernel.ndim - 1) + (in_channels,), context)
        if transform_kernel is not None:
            kernel = transform_kernel(kernel)
        x, kernel = cast_to(dtype, x, kernel)
        y = convolve(x, kernel, options)
        if use_bias:
            y = y + params["bias"].astype(y.dtype)
        return y, state

    return Layer(init, apply, kind)


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
    options = conv_options("conv", "Conv", stride=stride, padding=padding, dilation=dilation,
                           groups=groups, padding_mode=padding_mode, impl=impl,
                           precision=precision)
    _check_features(features, groups, "Conv")
    return _make_layer(options, "conv", features, kernel_size, use_bias, (kernel_init, bias_init),
                       dtype, param_dtype)


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
    options = conv_options("conv_transpose", "ConvTranspose", stride=stride, padding=padding,
                           dilation=dilation, output_padding=output_padding, groups=groups,
                           impl=impl, precision=precision)
    _check_features(features, groups, "ConvTranspose")
    return _make_layer(options, "conv_transpose", features, kernel_size, use_bias,
                       (kernel_init, bias_init), dtype, param_dtype)


def StdConv(
    features: int,
    kernel_size: Any,
    *,
    stride: Any = 1,
    padding: Any = "SAME",
    dilation: Any = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    use_bias: bool = True,
    epsilon: float = 1e-8,
    impl: str = "auto",
    precision: Any = None,
    kernel_init: Any = default_kernel_init,
    bias_init: Any = jax.nn.initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Layer:
    """Weight-standardised convolution (BiT's ``StdConv2d``), channels-last, 1-D to 3-D.

    A ``Conv`` whose kernel is standardised per output filter at each use::

        kernel[..., f] <- (kernel[..., f] - mean_f) / sqrt(var_f + epsilon)

    with the mean and the biased variance over the filter's ``(*kernel_size,
    C // groups)`` entries, ``epsilon`` inside the square root. The statistics
    are those of the normalisation layers (``jaxconv.layers.norm.standardize``:
    float32 at least, exact gradients through the mean and the variance); the
    standardised kernel is cast back to the kernel's dtype.

    ``epsilon=1e-8`` is timm's for its BiT ``ResNetV2`` models (their
    ``StdConv2d(..., eps=1e-8)`` standardises with ``batch_norm``: inside the
    square root, biased variance). The original BiT code uses ``1e-10`` and
    timm's ``StdConv2d`` class defaults to ``1e-6``: pass the one of the
    weights being ported. Their layers have no bias by default (pass
    ``use_bias=False``); this factory keeps ``Conv``'s defaults.

    Args:
      features, kernel_size, stride, padding, dilation, groups, padding_mode,
        use_bias, impl, precision, kernel_init, bias_init, dtype, param_dtype:
        as in ``Conv``.
      epsilon: added to each filter's variance, ``> 0``.

    Shapes: as ``Conv``, ``(N, *spatial, C) -> (N, *out_spatial, F)``; params
    ``kernel`` ``(*kernel_size, C // groups, F)``, stored unstandardised (as
    PyTorch's ``weight``, up to the axis permutation), and ``bias`` ``(F,)``.
    """
    options = conv_options("conv", "StdConv", stride=stride, padding=padding, dilation=dilation,
                           groups=groups, padding_mode=padding_mode, impl=impl,
                           precision=precision)
    _check_features(features, groups, "StdConv")
    number(epsilon, "epsilon", context="StdConv", minimum=0, exclusive_minimum=True)

    def standardized(kernel):
        return standardize(kernel, tuple(range(kernel.ndim - 1)), epsilon).astype(kernel.dtype)

    return _make_layer(options, "std_conv", features, kernel_size, use_bias,
                       (kernel_init, bias_init), dtype, param_dtype, standardized)
