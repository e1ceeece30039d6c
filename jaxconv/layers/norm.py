"""Normalisation layers: BatchNorm (with running statistics in ``state``), LayerNorm, GroupNorm.

Statistics are always computed in (at least) float32, also when the compute
``dtype`` is bfloat16 or float16; the result is cast to the compute dtype.
Conventions follow PyTorch (``epsilon=1e-5``, biased variance to normalise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.core import Layer, check_rank, normalize_shape, positive_int


def _stat_dtype(x: Any) -> Any:
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _out_dtype(dtype: Any, x: Any, *params: Any) -> Any:
    return dtype if dtype is not None else jnp.result_type(x, *params)


def _check_epsilon(epsilon: Any, layer: str) -> None:
    if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or epsilon <= 0:
        raise ValueError(f"{layer}: epsilon must be a positive number, got {epsilon!r}")


def _affine_params(key, shape, use_scale, use_bias, scale_init, bias_init, param_dtype):
    k1, k2 = jax.random.split(key)
    params = {}
    if use_scale:
        params["scale"] = scale_init(k1, shape, param_dtype)
    if use_bias:
        params["bias"] = bias_init(k2, shape, param_dtype)
    return params


def _affine(y, params, bshape):
    if "scale" in params:
        y = y * params["scale"].astype(y.dtype).reshape(bshape)
    if "bias" in params:
        y = y + params["bias"].astype(y.dtype).reshape(bshape)
    return y


def _batch_moments(x, stat_dtype, axis_name):
    """Per-channel mean and biased variance of ``x`` over all axes but the last.

    ``E[x]`` and ``E[x^2]`` (in ``stat_dtype``, at least float32) are two
    independent reductions of ``x`` that a compiler can fuse into one read
    (XLA:GPU does); then ``var = max(E[x^2] - E[x]^2, 0)``, the clamp absorbing
    rounding below zero. With ``axis_name`` both moments are averaged over the
    mapped axis (one ``pmean``) before the variance is formed.
    """
    xs = x.astype(stat_dtype)
    mean = jnp.mean(xs, tuple(range(x.ndim - 1)))
    mean_sq = jnp.mean(jnp.square(xs), tuple(range(x.ndim - 1)))
    if axis_name is not None:
        mean, mean_sq = lax.pmean((mean, mean_sq), axis_name)
    return mean, jnp.maximum(mean_sq - jnp.square(mean), 0)


def BatchNorm(
    *,
    momentum: float = 0.1,
    epsilon: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    axis_name: Any = None,
    scale_init: Any = jax.nn.initializers.ones,
    bias_init: Any = jax.nn.initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Layer:
    """Batch normalisation over every axis but the last (channels).

    ``train=True``: normalise with the batch statistics and update the running
    ones; ``train=False``: normalise with the running statistics and return the
    state unchanged. Per channel, with ``m`` values per channel in the batch::

        mean = sum(x) / m,    var = sum((x - mean)**2) / m          (biased)
        y = (x - mean) / sqrt(var + epsilon) * scale + bias
        running_mean <- (1 - momentum) * running_mean + momentum * mean
        running_var  <- (1 - momentum) * running_var  + momentum * var * m / (m - 1)

    Computed as ``var = max(E[x^2] - E[x]^2, 0)`` from ``E[x]`` and ``E[x^2]``
    (float32 or wider; two independent reductions, which XLA:GPU fuses into one
    read of ``x``), and ``y = x * a + b`` with the per-channel
    ``a = scale / sqrt(var + epsilon)`` and ``b = bias - mean * a`` in float32
    (the multiply-add runs in float32 inside the element-wise pass and is cast
    once to the compute dtype). So the big tensor is read once for the
    statistics and once for the output, and the backward pass likewise.
    Numerical caveat: ``E[x^2] - E[x]^2`` cancels when ``|mean|`` is large
    against the standard deviation; in float32 the variance then carries an
    absolute error of about ``1e-7 * mean**2`` (e.g. ``1e-3`` at ``|mean| =
    100``), against ``1e-7 * var`` for the two-pass ``E[(x - mean)^2]``. This is
    Flax's default fast variance; it is harmless for activations of a
    normalised network, not for raw data with a large offset.

    This is PyTorch's convention exactly (``momentum=0.1`` is the weight of the
    new batch, unbiased variance in the running estimate); Flax/Keras' ``momentum``
    is ``1 - momentum`` here.

    Args:
      momentum: weight of the current batch in the running averages, in ``[0, 1]``.
      epsilon: added to the variance.
      use_scale, use_bias: learn a per-channel scale (init 1) and bias (init 0).
      axis_name: a mapped axis name (``pmap``/``shard_map``/``vmap``): the batch
        statistics are then averaged over that axis, so every device normalises
        with the statistics of the global batch (``m`` counts all devices' values).
        Under ``jit`` with a sharded batch (``jax.sharding``) none is needed:
        the statistics are already those of the global array.
      scale_init, bias_init: ``jax.nn.initializers`` functions.
      dtype: compute dtype of the output (statistics are float32 regardless).
      param_dtype: dtype of ``scale``/``bias``.

    Shapes: ``(N, ..., C) -> (N, ..., C)``; params ``scale``/``bias`` ``(C,)``;
    state ``{"mean": (C,), "var": (C,)}`` in float32, initialised to 0 and 1.
    Training needs more than one value per channel (``m > 1``).
    """
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) or not 0 <= momentum <= 1:
        raise ValueError(f"BatchNorm: momentum must be a number in [0, 1], got {momentum!r}")
    _check_epsilon(epsilon, "BatchNorm")

    def init(key, input_shape):
        shape = normalize_shape(input_shape, "BatchNorm")
        check_rank(shape, "BatchNorm", min_rank=2, layout="(N, ..., C)")
        c = shape[-1]
        params = _affine_params(key, (c,), use_scale, use_bias, scale_init, bias_init, param_dtype)
        state = {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}
        return shape, params, state

    def apply(params, state, x, *, key=None, train=False):
        c = state["mean"].shape[0]
        if jnp.ndim(x) < 2 or jnp.shape(x)[-1] != c:
            raise ValueError(f"BatchNorm: expected input of shape (N, ..., {c}), "
                             f"got {tuple(jnp.shape(x))}")
        x = jnp.asarray(x)
        out_dtype = _out_dtype(dtype, x, *params.values())
        stat = _stat_dtype(x)
        if train:
            m = 1
            for d in x.shape[:-1]:
                m *= d
            if axis_name is not None:
                m *= lax.axis_size(axis_name)
            if m <= 1:
                raise ValueError(
                    "BatchNorm: training needs more than 1 value per channel to compute batch "
                    f"statistics; expected an input with N * spatial > 1, got shape "
                    f"{tuple(x.shape)}")
            mean, var = _batch_moments(x, stat, axis_name)
            rm, rv = state["mean"], state["var"]
            new_state = {
                "mean": ((1 - momentum) * rm + momentum * mean).astype(rm.dtype),
                "var": ((1 - momentum) * rv + momentum * var * (m / (m - 1))).astype(rv.dtype),
            }
        else:
            mean, var = state["mean"].astype(stat), state["var"].astype(stat)
            new_state = state
        # Per channel: y = x * a + b, a = scale / sqrt(var + eps), b = bias - mean * a.
        a = lax.rsqrt(var + epsilon)
        if "scale" in params:
            a = a * params["scale"].astype(stat)
        b = -mean * a
        if "bias" in params:
            b = b + params["bias"].astype(stat)
        y = x.astype(stat) * a + b
        return y.astype(out_dtype), new_state

    return Layer(init, apply, "batch_norm")


def _norm_axes(reduction_axes: Any, rank: int, layer: str) -> tuple[int, ...]:
    axes = (reduction_axes,) if isinstance(reduction_axes, int) else tuple(reduction_axes)
    out = []
    for a in axes:
        if not isinstance(a, int) or isinstance(a, bool) or not -rank < a < rank or a % rank == 0:
            raise ValueError(f"{layer}: reduction_axes must be non-batch axes of the rank-{rank} "
                             f"input, got {reduction_axes!r}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise ValueError(f"{layer}: reduction_axes has repeated axes: {reduction_axes!r}")
    return tuple(sorted(out))


def _standardize(xs: Any, axes: tuple[int, ...], epsilon: float) -> Any:
    """``(xs - mean) / sqrt(var + epsilon)`` over ``axes`` (two-pass, biased variance)."""
    mean = jnp.mean(xs, axes, keepdims=True)
    var = jnp.mean(jnp.square(xs - mean), axes, keepdims=True)
    return (xs - mean) * lax.rsqrt(var + epsilon)


def LayerNorm(
    reduction_axes: int | Sequence[int] = -1,
    *,
    epsilon: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    scale_init: Any = jax.nn.initializers.ones,
    bias_init: Any = jax.nn.initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Layer:
    """Layer normalisation of each example over ``reduction_axes``::

        y = (x - mean) / sqrt(var + epsilon) * scale + bias

    with mean and biased variance over ``reduction_axes`` (default: the channel
    axis). ``scale``/``bias`` have the shape of the reduced axes (element-wise
    affine, as PyTorch's ``LayerNorm(normalized_shape)``; for PyTorch's
    ``LayerNorm([C, H, W])`` on NCHW use ``reduction_axes=(1, 2, 3)`` and
    transpose its ``(C, H, W)`` weight and bias to ``(H, W, C)``).

    Shapes: ``(N, ...) -> (N, ...)``. No state.
    """
    _check_epsilon(epsilon, "LayerNorm")
    if not isinstance(reduction_axes, int) and not (
            isinstance(reduction_axes, Sequence) and reduction_axes):
        raise ValueError(f"LayerNorm: reduction_axes must be an int or a non-empty sequence "
                         f"of ints, got {reduction_axes!r}")

    def init(key, input_shape):
        shape = normalize_shape(input_shape, "LayerNorm")
        check_rank(shape, "LayerNorm", min_rank=2, layout="(N, ...)")
        axes = _norm_axes(reduction_axes, len(shape), "LayerNorm")
        pshape = tuple(shape[a] for a in axes)
        params = _affine_params(key, pshape, use_scale, use_bias, scale_init, bias_init,
                                param_dtype)
        return shape, params, {}

    def apply(params, state, x, *, key=None, train=False):
        rank = jnp.ndim(x)
        if rank < 2:
            raise ValueError(f"LayerNorm: expected input of rank >= 2 (N, ...), "
                             f"got shape {tuple(jnp.shape(x))}")
        axes = _norm_axes(reduction_axes, rank, "LayerNorm")
        pshape = tuple(jnp.shape(x)[a] for a in axes)
        for p in params.values():
            if tuple(p.shape) != pshape:
                raise ValueError(f"LayerNorm: expected input whose axes {axes} have sizes "
                                 f"{tuple(p.shape)}, got shape {tuple(jnp.shape(x))}")
        out_dtype = _out_dtype(dtype, x, *params.values())
        xs = jnp.asarray(x).astype(_stat_dtype(x))
        y = _standardize(xs, axes, epsilon)
        bshape = tuple(jnp.shape(x)[a] if a in axes else 1 for a in range(rank))
        return _affine(y, params, bshape).astype(out_dtype), state

    return Layer(init, apply, "layer_norm")


def GroupNorm(
    num_groups: int = 32,
    *,
    epsilon: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    scale_init: Any = jax.nn.initializers.ones,
    bias_init: Any = jax.nn.initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Layer:
    """Group normalisation (Wu & He, 2018), as PyTorch's ``GroupNorm``.

    The ``C`` channels are split into ``num_groups`` contiguous groups of
    ``C // num_groups``; each example is normalised over its spatial axes and
    the channels of each group (biased variance), then a per-channel affine::

        y = (x - mean_g) / sqrt(var_g + epsilon) * scale[c] + bias[c]

    ``num_groups=1`` normalises over all of an example; ``num_groups=C`` is
    instance normalisation. Shapes: ``(N, ..., C) -> (N, ..., C)``; params
    ``scale``/``bias`` ``(C,)``. No state.
    """
    positive_int(num_groups, "num_groups", "GroupNorm")
    _check_epsilon(epsilon, "GroupNorm")

    def check_channels(c):
        if c % num_groups:
            raise ValueError(f"GroupNorm: num_groups={num_groups} must divide the number of "
                             f"channels, got {c} channels")

    def init(key, input_shape):
        shape = normalize_shape(input_shape, "GroupNorm")
        check_rank(shape, "GroupNorm", min_rank=2, layout="(N, ..., C)")
        check_channels(shape[-1])
        params = _affine_params(key, (shape[-1],), use_scale, use_bias, scale_init, bias_init,
                                param_dtype)
        return shape, params, {}

    def apply(params, state, x, *, key=None, train=False):
        shape = tuple(jnp.shape(x))
        if len(shape) < 2:
            raise ValueError(f"GroupNorm: expected input of rank >= 2 (N, ..., C), got {shape}")
        c = shape[-1]
        for p in params.values():
            if p.shape != (c,):
                raise ValueError(f"GroupNorm: expected input with {p.shape[0]} channels, "
                                 f"got shape {shape}")
        check_channels(c)
        out_dtype = _out_dtype(dtype, x, *params.values())
        xs = jnp.asarray(x).astype(_stat_dtype(x))
        g = xs.reshape(shape[:-1] + (num_groups, c // num_groups))
        axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)
        y = _standardize(g, axes, epsilon).reshape(shape)
        return _affine(y, params, (c,)).astype(out_dtype), state

    return Layer(init, apply, "group_norm")
