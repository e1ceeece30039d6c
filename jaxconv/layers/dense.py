"""The fully connected layer."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxconv.core import Layer, cast_to, check_rank, normalize_shape
from jaxconv.validate import boolean, integer

default_kernel_init = jax.nn.initializers.lecun_normal()


def kernel_and_bias(key, kernel_shape, features, use_bias, kernel_init, bias_init, param_dtype):
    """``{"kernel": kernel_shape, "bias": (features,)}`` params (no bias without ``use_bias``)."""
    k_kernel, k_bias = jax.random.split(key)
    params = {"kernel": kernel_init(k_kernel, kernel_shape, param_dtype)}
    if use_bias:
        params["bias"] = bias_init(k_bias, (features,), param_dtype)
    return params


def Dense(
    features: int,
    *,
    use_bias: bool = True,
    kernel_init: Any = default_kernel_init,
    bias_init: Any = jax.nn.initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Layer:
    """Fully connected layer over the last axis: ``y = x @ kernel + bias``.

    Args:
      features: number of output features.
      use_bias: add a learned bias.
      kernel_init, bias_init: ``jax.nn.initializers`` functions.
      dtype: compute dtype (``None``: promote input and params).
      param_dtype: dtype of the stored parameters.

    Shapes: ``(N, ..., F_in) -> (N, ..., features)``; params ``kernel``
    ``(F_in, features)`` and ``bias`` ``(features,)``.
    """
    integer(features, "features", context="Dense", minimum=1)
    boolean(use_bias, "use_bias", context="Dense")

    def init(key, input_shape):
        shape = normalize_shape(input_shape, "Dense")
        check_rank(shape, "Dense", min_rank=2, layout="(batch, ..., features)")
        params = kernel_and_bias(key, (shape[-1], features), features, use_bias, kernel_init,
                                 bias_init, param_dtype)
        return shape[:-1] + (features,), params, {}

    def apply(params, state, x, *, key=None, train=False):
        kernel = params["kernel"]
        if jnp.ndim(x) < 2 or jnp.shape(x)[-1] != kernel.shape[0]:
            raise ValueError(
                f"Dense: expected input of shape (batch, ..., {kernel.shape[0]}), "
                f"got {tuple(jnp.shape(x))}")
        x, kernel = cast_to(dtype, x, kernel)
        y = jnp.matmul(x, kernel)
        if use_bias:
            y = y + params["bias"].astype(y.dtype)
        return y, state

    return Layer(init, apply, "dense")
