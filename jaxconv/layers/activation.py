"""Activations: element-wise functions, the (log-)softmax, and ``PRelu``'s learned slopes.

The parameterless ones wrap ``jax.nn`` functions and keep the input shape.
Each matches the PyTorch module of the same name (``torch.nn.ReLU6``,
``Hardswish``, ``Softplus``...), in value and in gradient, so that a network
ported from PyTorch computes the same function; channels are the last axis.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from jaxconv.core import Layer, cast_to, check_rank, normalize_shape
from jaxconv.validate import boolean, integer, number


def elementwise(fn: Callable, kind: str, name: str) -> Layer:
    """Wraps a shape-preserving array function ``fn`` as a parameterless layer.

    Args:
      fn: ``x -> y`` with ``y.shape == x.shape``.
      kind: the layer's kind (``serial`` names it ``f"{kind}{index}"``).
      name: the factory's name, for error messages.
    """

    def init(key, input_shape):
        return normalize_shape(input_shape, name), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return fn(x), state

    return Layer(init, apply, kind)


def _check_channels(shape: tuple, channels: int | None, name: str) -> None:
    """Raises unless ``shape`` is ``(batch, ..., channels)`` (``None``: any channel count)."""
    check_rank(shape, name, min_rank=2, layout="(batch, ..., channels)")
    if channels is not None and shape[-1] != channels:
        raise ValueError(
            f"{name}: expected input of shape (batch, ..., {channels}), got {tuple(shape)}")


def channelwise(fn: Callable, kind: str, name: str, param: str, param_init: Callable,
                channels: int | None, *, dtype: Any, param_dtype: Any) -> Layer:
    """A layer ``y = fn(x, p)`` with one learned vector ``p`` over the last (channel) axis.

    Args:
      fn: ``(x, p) -> y`` with ``y.shape == x.shape``; ``p`` broadcasts over ``x``.
      kind, name: the layer's kind and the factory's name (for error messages).
      param: the key of ``p`` in ``params``.
      param_init: ``jax.nn.initializers``-style ``(key, shape, dtype) -> array``.
      channels: the length of ``p``: ``None`` takes the input's channel count
        at ``init``; ``1`` shares one value across any number of channels.
      dtype: compute dtype (``None``: promote input and ``p``).
      param_dtype: dtype of the stored ``p``.

    Shapes: ``(N, ..., C) -> (N, ..., C)``; params ``{param: (channels or C,)}``.
    """
    shared = channels == 1

    def init(key, input_shape):
        shape = normalize_shape(input_shape, name)
        _check_channels(shape, None if shared else channels, name)
        size = shape[-1] if channels is None else channels
        return shape, {param: param_init(key, (size,), param_dtype)}, {}

    def apply(params, state, x, *, key=None, train=False):
        p = params[param]
        _check_channels(jnp.shape(x), None if shared else p.shape[0], name)
        x, p = cast_to(dtype, x, p)
        return fn(x, p), state

    return Layer(init, apply, kind)


def Relu() -> Layer:
    """``max(x, 0)`` (``torch.nn.ReLU``; gradient 0 at 0)."""
    return elementwise(jax.nn.relu, "relu", "Relu")


def Relu6() -> Layer:
    """``min(max(x, 0), 6)`` (``torch.nn.ReLU6``; gradient 0 at 0 and at 6)."""
    return elementwise(jax.nn.relu6, "relu6", "Relu6")


def Hardsigmoid() -> Layer:
    """``relu6(x + 3) / 6`` (``torch.nn.Hardsigmoid``; gradient 0 at -3 and 3)."""
    return elementwise(jax.nn.hard_sigmoid, "hardsigmoid", "Hardsigmoid")


def Hardswish() -> Layer:
    """``x * relu6(x + 3) / 6`` (``torch.nn.Hardswish``, as in MobileNetV3)."""
    return elementwise(jax.nn.hard_swish, "hardswish", "Hardswish")


def Silu() -> Layer:
    """``x * sigmoid(x)``, also called Swish (``torch.nn.SiLU``)."""
    return elementwise(jax.nn.silu, "silu", "Silu")


def Mish() -> Layer:
    """``x * tanh(softplus(x))`` (``torch.nn.Mish``)."""
    return elementwise(jax.nn.mish, "mish", "Mish")


def _softplus(x: Any, beta: float, threshold: float) -> Any:
    """PyTorch's softplus: ``log(1 + exp(beta * x)) / beta``, or ``x`` where ``beta * x > threshold``."""
    scaled = x * beta
    return jnp.where(scaled > threshold, x, jax.nn.softplus(scaled) / beta)


def Softplus(beta: float = 1.0, threshold: float = 20.0) -> Layer:
    """Smooth ReLU ``log(1 + exp(beta * x)) / beta`` (``torch.nn.Softplus``).

    Where ``beta * x > threshold`` the output is ``x`` itself (gradient 1), as
    in PyTorch, which avoids evaluating the exponential where it is linear to
    float precision anyway.

    Args:
      beta: sharpness, a number > 0.
      threshold: the value of ``beta * x`` above which the layer is linear.
    """
    beta = number(beta, "beta", context="Softplus", minimum=0, exclusive_minimum=True)
    threshold = number(threshold, "threshold", context="Softplus")
    return elementwise(partial(_softplus, beta=beta, threshold=threshold), "softplus", "Softplus")


def _prelu(x: Any, weight: Any) -> Any:
    # ``x > 0`` (not ``>=``): the gradient at 0 is ``weight``, as in PyTorch.
    return jnp.where(x > 0, x, weight * x)


def PRelu(num_parameters: int = 1, init: float = 0.25, *, dtype: Any = None,
          param_dtype: Any = jnp.float32) -> Layer:
    """Leaky ReLU with learned negative slopes (``torch.nn.PReLU``).

    ``y = x if x > 0 else weight[c] * x`` for channel ``c`` (the last axis).

    Args:
      num_parameters: ``1`` (one slope shared by all channels) or the number of
        input channels ``C`` (one slope per channel).
      init: the initial slope (PyTorch's default 0.25).
      dtype: compute dtype (``None``: promote input and weight).
      param_dtype: dtype of the stored weight.

    Shapes: ``(N, ..., C) -> (N, ..., C)``; params ``weight`` ``(num_parameters,)``,
    the layout of PyTorch's ``PReLU.weight`` (it ports unchanged).
    """
    integer(num_parameters, "num_parameters", context="PRelu", minimum=1)
    init = number(init, "init", context="PRelu")
    return channelwise(_prelu, "prelu", "PRelu", "weight", jax.nn.initializers.constant(init),
                       num_parameters, dtype=dtype, param_dtype=param_dtype)


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """``x if x >= 0 else negative_slope * x`` (PyTorch's default slope 0.01)."""
    negative_slope = number(negative_slope, "negative_slope", context="LeakyRelu")
    return elementwise(partial(jax.nn.leaky_relu, negative_slope=negative_slope), "leaky_relu",
                       "LeakyRelu")


def Elu(alpha: float = 1.0) -> Layer:
    """``x if x > 0 else alpha * (exp(x) - 1)``."""
    alpha = number(alpha, "alpha", context="Elu")
    return elementwise(partial(jax.nn.elu, alpha=alpha), "elu", "Elu")


def Gelu(approximate: bool = False) -> Layer:
    """Gaussian error linear unit; exact (erf) by default, as in PyTorch."""
    approximate = boolean(approximate, "approximate", context="Gelu")
    return elementwise(partial(jax.nn.gelu, approximate=approximate), "gelu", "Gelu")


def Sigmoid() -> Layer:
    """``1 / (1 + exp(-x))``."""
    return elementwise(jax.nn.sigmoid, "sigmoid", "Sigmoid")


def Tanh() -> Layer:
    """Hyperbolic tangent."""
    return elementwise(jnp.tanh, "tanh", "Tanh")


def Softmax(axis: int = -1) -> Layer:
    """``exp(x_i) / sum_j exp(x_j)`` along ``axis``."""
    axis = integer(axis, "axis", context="Softmax")
    return elementwise(partial(jax.nn.softmax, axis=axis), "softmax", "Softmax")


def LogSoftmax(axis: int = -1) -> Layer:
    """``x_i - log(sum_j exp(x_j))`` along ``axis``."""
    axis = integer(axis, "axis", context="LogSoftmax")
    return elementwise(partial(jax.nn.log_softmax, axis=axis), "log_softmax", "LogSoftmax")
