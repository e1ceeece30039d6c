"""Element-wise activations and the (log-)softmax over the last axis.

All reuse ``jax.nn``; each is a parameterless layer whose output shape equals
its input shape.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from jaxconv.core import Layer


def elementwise(fn: Callable, kind: str) -> Layer:
    """Wraps a shape-preserving array function ``fn`` as a parameterless layer."""

    def init(key, input_shape):
        return tuple(input_shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return fn(x), state

    return Layer(init, apply, kind)


def Relu() -> Layer:
    """``max(x, 0)``."""
    return elementwise(jax.nn.relu, "relu")


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """``x if x >= 0 else negative_slope * x`` (PyTorch's default slope 0.01)."""
    if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool):
        raise TypeError(f"LeakyRelu: negative_slope must be a number, got {negative_slope!r}")
    return elementwise(partial(jax.nn.leaky_relu, negative_slope=negative_slope), "leaky_relu")


def Elu(alpha: float = 1.0) -> Layer:
    """``x if x > 0 else alpha * (exp(x) - 1)``."""
    return elementwise(partial(jax.nn.elu, alpha=alpha), "elu")


def Gelu(approximate: bool = False) -> Layer:
    """Gaussian error linear unit; exact (erf) by default, as in PyTorch."""
    return elementwise(partial(jax.nn.gelu, approximate=approximate), "gelu")


def Sigmoid() -> Layer:
    """``1 / (1 + exp(-x))``."""
    return elementwise(jax.nn.sigmoid, "sigmoid")


def Tanh() -> Layer:
    """Hyperbolic tangent."""
    return elementwise(jnp.tanh, "tanh")


def Softmax(axis: int = -1) -> Layer:
    """``exp(x_i) / sum_j exp(x_j)`` along ``axis``."""
    return elementwise(partial(jax.nn.softmax, axis=axis), "softmax")


def LogSoftmax(axis: int = -1) -> Layer:
    """``x_i - log(sum_j exp(x_j))`` along ``axis``."""
    return elementwise(partial(jax.nn.log_softmax, axis=axis), "log_softmax")
