"""Building blocks of modern CNNs: separable convolution, squeeze-and-excitation, layer scale.

Each is a ``Layer`` whose parameter names and layouts follow the PyTorch
module it matches, so that weights port by an axis permutation (see each
factory's docstring). Channels are the last axis.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from jaxconv.core import Layer, cast_to, check_input, normalize_shape, serial
from jaxconv.layers.activation import Relu, Sigmoid, channelwise
from jaxconv.layers.conv import Conv
from jaxconv.layers.dense import default_kernel_init
from jaxconv.ops.pool import global_avg_pool
from jaxconv.ops.spec import IMPLS, check_spatial_rank, conv_options, resolve_conv, spatial_option
from jaxconv.validate import boolean, choice, exactly_one, int_tuple, integer, number


def SeparableConv(
    features: int,
    kernel_size: Any,
    *,
    stride: Any = 1,
    padding: Any = "SAME",
    dilation: Any = 1,
    depth_multiplier: int = 1,
    use_bias: bool = True,
    impl: str = "auto",
    precision: Any = None,
    kernel_init: Any = default_kernel_init,
    bias_init: Any = jax.nn.initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Layer:
    """Depthwise separable convolution: a depthwise ``Conv``, then a pointwise (1x1) ``Conv``.

    The depthwise convolution filters each of the ``C`` input channels on its
    own (``groups=C``) into ``depth_multiplier`` channels, with ``stride``,
    ``padding`` and ``dilation``; the pointwise one mixes the
    ``C * depth_multiplier`` channels into ``features``. As in Keras'
    ``SeparableConv2D``, only the pointwise convolution has a bias: a bias on
    the depthwise one would add a constant that the pointwise bias absorbs.
    In PyTorch this is ``nn.Sequential(nn.Conv2d(C, C * m, k, stride, padding,
    dilation, groups=C, bias=False), nn.Conv2d(C * m, features, 1))``.

    Args:
      features: output channels.
      kernel_size: the depthwise window: an int or one int per spatial dimension.
      stride, padding, dilation: of the depthwise convolution, as in ``Conv``.
      depth_multiplier: depthwise output channels per input channel.
      use_bias: a bias on the pointwise convolution.
      impl, precision, kernel_init, bias_init, dtype, param_dtype: as in ``Conv``.

    Shapes: ``(N, *spatial, C) -> (N, *out_spatial, features)``; params
    ``{"depthwise": {"kernel": (*kernel_size, 1, C * m)}, "pointwise":
    {"kernel": (1, ..., 1, C * m, features), "bias": (features,)}}``.
    """
    name = "SeparableConv"
    integer(features, "features", context=name, minimum=1)
    integer(depth_multiplier, "depth_multiplier", context=name, minimum=1)
    kernel_size = spatial_option(kernel_size, "kernel_size", context=name)
    options = conv_options("conv", name, stride=stride, padding=padding, dilation=dilation,
                           impl=impl, precision=precision)
    boolean(use_bias, "use_bias", context=name)
    common = dict(impl=impl, precision=precision, kernel_init=kernel_init, dtype=dtype,
                  param_dtype=param_dtype)

    def convs(channels):
        depthwise = Conv(channels * depth_multiplier, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=channels, use_bias=False, **common)
        pointwise = Conv(features, 1, use_bias=use_bias, bias_init=bias_init, **common)
        return serial(("depthwise", depthwise), ("pointwise", pointwise))

    def init(key, input_shape):
        shape = normalize_shape(input_shape, name)
        window = int_tuple(kernel_size, "kernel_size", context=name,
                           length=check_spatial_rank(shape, name))
        channels = shape[-1]
        # The depthwise convolution against the shape, so that errors name this layer.
        resolve_conv(options._replace(groups=channels), shape,
                     (*window, 1, channels * depth_multiplier))
        return convs(channels).init(key, shape)

    def apply(params, state, x, *, key=None, train=False):
        kernel = params["depthwise"]["kernel"]
        channels = kernel.shape[-1] // depth_multiplier
        check_input(x, (-1,) * (kernel.ndim - 1) + (channels,), name)
        return convs(channels).apply(params, state, x, key=key, train=train)

    return Layer(init, apply, "separable_conv")


def _as_layer(value: Any, arg: str, name: str) -> Layer:
    """``value`` if it is a ``Layer``, else what calling it without arguments returns."""
    made = value
    if callable(value) and not isinstance(value, Layer):
        try:
            made = value()
        except TypeError:  # not a factory: a plain function of x, say
            made = None
    if not isinstance(made, Layer):
        raise TypeError(
            f"{name}: {arg} must be a Layer or a layer factory callable without arguments "
            f"(e.g. Relu), got {value!r}")
    return made


def SqueezeExcite(
    squeeze_channels: int | None = None,
    *,
    reduction: int | None = None,
    activation: Any = Relu,
    gate: Any = Sigmoid,
    impl: str = "auto",
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Layer:
    """Squeeze-and-excitation: rescales channels by a gate computed from their spatial means.

    ``y = x * gate(fc2(activation(fc1(mean(x)))))``, the mean taken over the
    spatial axes and ``fc1``/``fc2`` 1x1 convolutions with biases, exactly
    ``torchvision.ops.SqueezeExcitation(C, squeeze_channels, activation,
    scale_activation=gate)``: MobileNetV3 uses ``gate=Hardsigmoid``,
    EfficientNet ``activation=Silu``.

    Args:
      squeeze_channels: channels between ``fc1`` and ``fc2``.
      reduction: instead of ``squeeze_channels``: ``max(1, C // reduction)``
        for ``C`` input channels. Give exactly one of the two.
      activation, gate: ``Layer`` objects, or factories such as ``Relu`` that
        make one when called without arguments.
      impl, dtype, param_dtype: of the two convolutions, as in ``Conv``.

    Shapes: ``(N, *spatial, C) -> (N, *spatial, C)``; params ``{"fc1":
    {"kernel": (1, ..., 1, C, S), "bias": (S,)}, "fc2": {"kernel": (1, ..., 1,
    S, C), "bias": (C,)}}`` plus ``"activation"`` and ``"scale_activation"``
    (``{}`` unless those layers have params), the names of torchvision's
    module; its ``fc1.weight`` ``(S, C, 1, 1)`` ports by moving its first two
    axes last, in reverse order.
    """
    name = "SqueezeExcite"
    given = exactly_one(squeeze_channels=squeeze_channels, reduction=reduction, context=name)
    integer(squeeze_channels if given == "squeeze_channels" else reduction, given, context=name, minimum=1)
    act = _as_layer(activation, "activation", name)
    gate_layer = _as_layer(gate, "gate", name)
    choice(impl, "impl", IMPLS, context=name)
    fc = partial(Conv, kernel_size=1, impl=impl, dtype=dtype, param_dtype=param_dtype)

    def excite(channels, squeeze):
        return serial(("fc1", fc(squeeze)), ("activation", act), ("fc2", fc(channels)),
                      ("scale_activation", gate_layer))

    def init(key, input_shape):
        shape = normalize_shape(input_shape, name)
        check_spatial_rank(shape, name)
        channels = shape[-1]
        squeeze = squeeze_channels or max(1, channels // reduction)
        pooled = (shape[0],) + (1,) * (len(shape) - 2) + (channels,)
        out, params, state = excite(channels, squeeze).init(key, pooled)
        if tuple(out) != pooled:
            raise ValueError(f"{name}: activation and gate must keep their input's shape; "
                             f"the gate's output has shape {tuple(out)}, not {pooled}")
        return shape, params, state

    def apply(params, state, x, *, key=None, train=False):
        kernel = params["fc1"]["kernel"]
        channels, squeeze = kernel.shape[-2:]
        check_input(x, (-1,) * (kernel.ndim - 1) + (channels,), name)
        scale, new_state = excite(channels, squeeze).apply(
            params, state, global_avg_pool(x, keepdims=True), key=key, train=train)
        x, scale = cast_to(dtype, x, scale)
        return x * scale, new_state

    return Layer(init, apply, "squeeze_excite")


def LayerScale(init_value: float = 1e-6, *, dtype: Any = None,
               param_dtype: Any = jnp.float32) -> Layer:
    """Learned per-channel scale ``y = x * scale`` (ConvNeXt's ``layer_scale``, timm's ``LayerScale``).

    Args:
      init_value: the initial value of every entry of ``scale``.
      dtype: compute dtype (``None``: promote input and ``scale``).
      param_dtype: dtype of the stored ``scale``.

    Shapes: ``(N, ..., C) -> (N, ..., C)``; params ``scale`` ``(C,)`` (timm's
    ``gamma``; torchvision's ConvNeXt stores it as ``(C, 1, 1)``, a reshape).
    """
    init_value = number(init_value, "init_value", context="LayerScale")
    return channelwise(jnp.multiply, "layer_scale", "LayerScale", "scale",
                       jax.nn.initializers.constant(init_value), None, dtype=dtype,
                       param_dtype=param_dtype)
