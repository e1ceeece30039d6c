"""Normalisation layers: BatchNorm (with running statistics in ``state``), LayerNorm, GroupNorm.

Conventions follow PyTorch (``epsilon=1e-5``, biased variance to normalise).
The three share one way of computing statistics, in float32 at least (also
when the compute ``dtype`` is bfloat16 or float16; float64 input stays
float64), with the result cast once to the compute dtype:

1. one read of ``x`` for independent reductions, ``mean = sum(x) / m``,
   ``min(x)`` and ``max(x)``; the mean is kept within that range (rounding or
   overflow could leave it), and the range picks a power of two ``s >= 1``
   with ``|x / s| < 1``;
2. a second read for the variance of the centred, exactly scaled values,
   ``v = sum((x / s - mean / s)**2) / m`` (``var = v * s**2``), which neither
   cancels (``E[x^2] - E[x]^2`` would, for a mean large against the standard
   deviation) nor overflows (``x**2`` would, from ``|x|`` about ``1e19``);
3. ``y = x * a + b``, one multiply-add per element, with the per-channel (or
   per-group) ``a = 1 / (s * sqrt(v + epsilon / s**2))`` and ``b = -mean * a``,
   which is ``(x - mean) / sqrt(var + epsilon)``.

The output and the statistics are finite for every finite input, and
accurate as long as ``sum(x)`` does not overflow (``|x|`` below the largest
float over ``m``) and ``1 / std`` is a normal float (``std`` below ``8.5e37``
in float32). A batch variance beyond the float32 range (a standard deviation
above about ``1.8e19``) is stored as the largest float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv import validate
from jaxconv.core import Layer, check_rank, compute_dtype, normalize_shape


def _check_norm_options(context: str, epsilon: Any, use_scale: Any, use_bias: Any) -> None:
    """Factory-time checks of the arguments every normalisation layer takes."""
    validate.number(epsilon, "epsilon", context=context, minimum=0, exclusive_minimum=True)
    validate.boolean(use_scale, "use_scale", context=context)
    validate.boolean(use_bias, "use_bias", context=context)


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


class Moments(NamedTuple):
    """Mean and variance of some values ``x``, the variance in exactly scaled units.

    Attributes:
      mean: the mean.
      scaled_var: ``var / 4**exponent``, below 64 (it cannot overflow).
      exponent: an int ``>= 0`` with ``|x / 2**exponent| < 4``.
    """

    mean: Any
    scaled_var: Any
    exponent: Any

    @property
    def inv_scale(self) -> Any:
        """``2**-exponent``, a normal (not subnormal) float in the dtype of ``mean``."""
        return jnp.ldexp(jnp.ones_like(self.mean), -self.exponent)

    @property
    def var(self) -> Any:
        """The variance, ``inf`` where it exceeds the dtype's range."""
        return jnp.ldexp(self.scaled_var, 2 * self.exponent)


def _saturate(x: Any) -> Any:
    """``x`` with infinities replaced by the largest finite value of its dtype."""
    big = jnp.finfo(x.dtype).max
    return jnp.clip(x, -big, big)


def _within_range(mean: Any, lowest: Any, highest: Any) -> Any:
    """``mean`` kept within ``[lowest, highest]``, the range of the values it averages.

    ``sum(x) / m`` can round past that range (a constant channel then gets a
    variance of its rounding), or overflow to ``inf`` (or ``nan``, from ``inf -
    inf``) near the largest float. The value is corrected (the midpoint where
    nothing is known); the derivative stays that of ``sum(x) / m``.
    """
    inside = jnp.where(mean < lowest, lowest, jnp.where(mean > highest, highest, mean))
    value = lax.stop_gradient(jnp.where(jnp.isnan(mean), lowest / 2 + highest / 2, inside))
    return value + jnp.where(jnp.isfinite(mean), mean - lax.stop_gradient(mean), 0)


def _moments(x: Any, axes: tuple[int, ...], axis_name: Any = None) -> Moments:
    """Mean and biased variance of ``x`` over ``axes`` (dims kept), in two reads of ``x``.

    With ``axis_name`` (a mapped axis) the reductions also run over that axis
    (``psum``/``pmin``/``pmax``), so the moments are those of all the mapped values.
    """
    count = math.prod(x.shape[a] for a in axes)
    if axis_name is not None:
        count *= lax.axis_size(axis_name)

    def reduce(values, op, collective):
        out = op(values, axes, keepdims=True)
        return out if axis_name is None else collective(out, axis_name)

    # The range bounds the mean and picks the scale; no gradient flows through either.
    lowest = reduce(lax.stop_gradient(x), jnp.min, lax.pmin)
    highest = reduce(lax.stop_gradient(x), jnp.max, lax.pmax)
    mean = _within_range(reduce(x, jnp.sum, lax.psum) / count, lowest, highest)
    _, exponent = jnp.frexp(jnp.maximum(-lowest, highest))
    # At most maxexp - 2, so that 2**-exponent is a normal number (not flushed to zero).
    exponent = jnp.clip(exponent, 0, jnp.finfo(x.dtype).maxexp - 2)
    inv_scale = Moments(mean, None, exponent).inv_scale
    centered = x * inv_scale - mean * inv_scale
    return Moments(mean, reduce(jnp.square(centered), jnp.sum, lax.psum) / count, exponent)


def _multiplier_and_offset(moments: Moments, epsilon: float) -> tuple[Any, Any]:
    """``(a, b)`` with ``x * a + b = (x - mean) / sqrt(var + epsilon)``, finite for finite ``x``.

    ``a = inv_scale / sqrt(scaled_var + epsilon * inv_scale**2)`` and ``b = -mean * a``:
    ``|x * a|`` and ``|b|`` stay below ``4 / sqrt(tiny)`` (about ``4e19`` in float32). A
    standard deviation beyond the reciprocal of ``tiny`` (``8.5e37`` in float32) gives an
    ``a`` that underflows to 0, and a constant (finite) output.
    """
    inv = moments.inv_scale
    scaled_epsilon = jnp.maximum(epsilon * inv * inv, jnp.finfo(moments.scaled_var.dtype).tiny)
    rstd = lax.rsqrt(moments.scaled_var + scaled_epsilon)
    return inv * rstd, -(moments.mean * inv) * rstd


def _normalize(x: Any, moments: Moments, epsilon: float) -> Any:
    """``(x - mean) / sqrt(var + epsilon)``, as one multiply-add per element."""
    a, b = _multiplier_and_offset(moments, epsilon)
    return x * a + b


def _batch_statistics(xs: Any, state: Any, momentum: float, axis_name: Any):
    """BatchNorm's batch moments of ``xs`` ``(N, ..., C)`` and its updated running statistics."""
    m = math.prod(xs.shape[:-1]) * (1 if axis_name is None else lax.axis_size(axis_name))
    if m <= 1:
        raise ValueError(
            "BatchNorm: training needs more than 1 value per channel to compute batch "
            f"statistics; expected an input with N * spatial > 1, got shape {tuple(xs.shape)}")
    moments = _moments(xs, tuple(range(xs.ndim - 1)), axis_name)
    batch = {"mean": moments.mean.reshape(-1), "var": moments.var.reshape(-1) * (m / (m - 1))}
    new_state = {k: _saturate((1 - momentum) * state[k] + momentum * batch[k]).astype(state[k].dtype)
                 for k in ("mean", "var")}
    return moments, new_state


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

    The statistics take two reads of ``x`` (the mean, then the variance of the
    centred values; see the module docstring), the output a third (one
    multiply-add per element, ``scale`` and ``bias`` folded in); all in float32
    (or wider), cast once to the compute dtype. They are accurate for
    a mean far from zero (``c + N(0, 1)`` with ``|c| = 1e4`` normalises to
    mean 0 and standard deviation 1) and finite for every finite input.

    This is PyTorch's convention exactly (``momentum=0.1`` is the weight of the
    new batch, unbiased variance in the running estimate); Flax/Keras' ``momentum``
    is ``1 - momentum`` here.

    Args:
      momentum: weight of the current batch in the running averages, in ``[0, 1]``.
      epsilon: added to the variance, ``> 0``.
      use_scale, use_bias: learn a per-channel scale (init 1) and bias (init 0).
      axis_name: a mapped axis name (``pmap``/``shard_map``/``vmap``): the batch
        statistics are then reduced over that axis too, so every device normalises
        with the statistics of the global batch (``m`` counts all devices' values).
        Under ``jit`` with a sharded batch (``jax.sharding``) none is needed:
        the statistics are already those of the global array.
      scale_init, bias_init: ``jax.nn.initializers`` functions.
      dtype: compute dtype of the output (statistics are float32 regardless).
      param_dtype: dtype of ``scale``/``bias``.

    Shapes: ``(N, ..., C) -> (N, ..., C)``; params ``scale``/``bias`` ``(C,)``;
    state ``{"mean": (C,), "var": (C,)}`` in float32, initialised to 0 and 1.
    Training needs more than one value per channel (``m > 1``), except that an
    empty batch (``N = 0``) gives an empty output and leaves the state unchanged.
    """
    validate.number(momentum, "momentum", context="BatchNorm", minimum=0, maximum=1)
    _check_norm_options("BatchNorm", epsilon, use_scale, use_bias)

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
        out_dtype = compute_dtype(dtype, x, *params.values())
        if train and jnp.size(x) == 0:  # an empty batch: nothing to normalise or to learn from
            return jnp.asarray(x, out_dtype), state
        xs = jnp.asarray(x, compute_dtype(None, x, at_least=jnp.float32))
        if train:
            moments, new_state = _batch_statistics(xs, state, momentum, axis_name)
        else:
            moments = Moments(state["mean"].astype(xs.dtype), state["var"].astype(xs.dtype), 0)
            new_state = state
        # One multiply-add per element: the affine params are folded into a and b.
        a, b = _multiplier_and_offset(moments, epsilon)
        if "scale" in params:
            a, b = a * params["scale"].astype(a.dtype), b * params["scale"].astype(b.dtype)
        if "bias" in params:
            b = b + params["bias"].astype(b.dtype)
        return (xs * a + b).astype(out_dtype), new_state

    return Layer(init, apply, "batch_norm")


def _norm_axes(reduction_axes: Any, rank: int, context: str) -> tuple[int, ...]:
    axes = (reduction_axes,) if validate.is_int(reduction_axes) else tuple(reduction_axes)
    out = []
    for a in axes:
        if not validate.is_int(a) or not -rank < a < rank or a % rank == 0:
            raise ValueError(f"{context}: reduction_axes must be non-batch axes of the rank-{rank} "
                             f"input, got {reduction_axes!r}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise ValueError(f"{context}: reduction_axes has repeated axes: {reduction_axes!r}")
    return tuple(sorted(out))


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
    _check_norm_options("LayerNorm", epsilon, use_scale, use_bias)
    if not validate.is_int(reduction_axes) and not (
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
        out_dtype = compute_dtype(dtype, x, *params.values())
        xs = jnp.asarray(x, compute_dtype(None, x, at_least=jnp.float32))
        y = _normalize(xs, _moments(xs, axes), epsilon)
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
    validate.integer(num_groups, "num_groups", context="GroupNorm", minimum=1)
    _check_norm_options("GroupNorm", epsilon, use_scale, use_bias)

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
        out_dtype = compute_dtype(dtype, x, *params.values())
        xs = jnp.asarray(x, compute_dtype(None, x, at_least=jnp.float32))
        g = xs.reshape(shape[:-1] + (num_groups, c // num_groups))
        axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)
        y = _normalize(g, _moments(g, axes), epsilon).reshape(shape)
        return _affine(y, params, (c,)).astype(out_dtype), state

    return Layer(init, apply, "group_norm")
