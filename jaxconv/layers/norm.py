"""Normalisation layers: BatchNorm and InstanceNorm (running statistics in ``state``), LayerNorm,
GroupNorm; and :func:`standardize`, their statistics for other layers (``StdConv``'s kernel).

Conventions follow PyTorch (``epsilon=1e-5``, biased variance to normalise).
All share one way of computing statistics, in float32 at least (also
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
above about ``1.8e19``) is stored as the largest float32. Complex input is
refused with a ``TypeError``.
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
    params = {}
    if not (use_scale or use_bias):  # no params: no key needed
        return params
    k1, k2 = jax.random.split(key)
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
        """``2**-exponent``, a normal (not subnormal) float in the dtype of ``mean``.

        A Python int ``exponent`` (the running statistics: ``0``) gives a constant,
        with no bit manipulation in the program (ONNX has no operator for it).
        """
        if isinstance(self.exponent, int):
            return jnp.full_like(self.mean, 2.0 ** -self.exponent)
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


def standardize(x: Any, axes: int | Sequence[int], epsilon: float) -> Any:
    """``(x - mean) / sqrt(var + epsilon)`` with the mean and biased variance over ``axes``.

    The statistics of the normalisation layers (see the module docstring): two
    reads of ``x``, accurate for a mean far from zero, finite for every finite
    ``x``, with exact gradients through the mean and the variance.

    Args:
      x: a real array.
      axes: the axes to reduce (an int or a sequence of ints).
      epsilon: added to the variance, inside the square root.

    Returns:
      An array of the shape of ``x``, in its dtype promoted to float32 at least
      (float64 stays float64).
    """
    axes = (axes,) if validate.is_int(axes) else tuple(axes)
    axes = tuple(a % jnp.ndim(x) for a in axes)
    xs = jnp.asarray(x, compute_dtype(None, x, at_least=jnp.float32))
    return _normalize(xs, _moments(xs, axes), epsilon)


def _check_real(x: Any, context: str) -> None:
    """Raises ``TypeError`` for a complex ``x``: normalisation is defined for real values."""
    if jnp.iscomplexobj(x):
        raise TypeError(f"{context}: expected a real input, got dtype {jnp.result_type(x)}; "
                        "normalise the real and imaginary parts as separate channels")


def _check_input(x: Any, channels: int | None, context: str, max_rank: int | None = None) -> None:
    """Checks a real ``(N, ..., C)`` input (rank 3..``max_rank`` when given), ``C = channels``."""
    _check_real(x, context)
    shape = tuple(jnp.shape(x))
    c = "C" if channels is None else channels
    if max_rank is None:
        ok, layout = len(shape) >= 2, f"(N, ..., {c})"
    else:
        ok, layout = 3 <= len(shape) <= max_rank, f"(N, *spatial, {c}) with 1 to 3 spatial axes"
    if not ok or (channels is not None and shape[-1] != channels):
        raise ValueError(f"{context}: expected input of shape {layout}, got {shape}")


def _channels(params: Any, state: Any) -> int | None:
    """The channel count that the params or the running statistics fix (``None``: any)."""
    for tree, key in ((state, "mean"), (params, "scale"), (params, "bias")):
        if key in tree:
            return tree[key].shape[-1]
    return None


def _running_state(channels: int, track_running_stats: bool, momentum: float | None) -> dict:
    """Initial running statistics (mean 0, variance 1), a batch counter with ``momentum=None``."""
    if not track_running_stats:
        return {}
    state = {"mean": jnp.zeros((channels,), jnp.float32), "var": jnp.ones((channels,), jnp.float32)}
    if momentum is None:
        state["num_batches_tracked"] = jnp.zeros((), jnp.int32)
    return state


def _running_moments(state: Any, dtype: Any) -> Moments:
    """The running statistics as :class:`Moments` in ``dtype``, for inference."""
    return Moments(state["mean"].astype(dtype), state["var"].astype(dtype), 0)


def _update_running(state: Any, batch: Any, momentum: float | None) -> dict:
    """``running <- (1 - momentum) * running + momentum * batch`` for ``mean`` and ``var``.

    ``momentum=None``: the cumulative average, ``momentum = 1 / n`` with ``n``
    the updated ``num_batches_tracked``. A value beyond the range of the
    state's dtype is stored as its largest value.
    """
    new_state = dict(state)
    if momentum is None:
        count = state["num_batches_tracked"] + 1
        new_state["num_batches_tracked"] = count
        momentum = 1 / count.astype(state["mean"].dtype)
    for k in ("mean", "var"):
        new_state[k] = _saturate((1 - momentum) * state[k] + momentum * batch[k]).astype(state[k].dtype)
    return new_state


def _batch_moments(xs: Any, axis_name: Any, what: str) -> tuple[Moments, int]:
    """BatchNorm's batch moments of ``xs`` ``(N, ..., C)`` and the number of values per channel."""
    m = math.prod(xs.shape[:-1]) * (1 if axis_name is None else lax.axis_size(axis_name))
    if m <= 1:
        raise ValueError(
            f"BatchNorm: {what} needs more than 1 value per channel to compute batch "
            f"statistics; expected an input with N * spatial > 1, got shape {tuple(xs.shape)}")
    return _moments(xs, tuple(range(xs.ndim - 1)), axis_name), m


def _scaled_output(xs: Any, moments: Moments, params: Any, epsilon: float) -> Any:
    """``(xs - mean) / sqrt(var + epsilon) * scale + bias`` as one multiply-add per element."""
    a, b = _multiplier_and_offset(moments, epsilon)
    if "scale" in params:
        a, b = a * params["scale"].astype(a.dtype), b * params["scale"].astype(b.dtype)
    if "bias" in params:
        b = b + params["bias"].astype(b.dtype)
    return xs * a + b


def _statistics_apply(context: str, max_rank: int | None, track_running_stats: bool,
                      epsilon: float, dtype: Any, statistics: Any) -> Any:
    """The ``apply`` of BatchNorm and InstanceNorm: own or running statistics, then the affine.

    ``statistics(xs, state, train) -> (moments, new_state)`` computes the
    moments of the (non-empty) float32-or-wider input ``xs`` and the updated
    state; the running statistics normalise instead in inference when tracked.
    """
    def apply(params, state, x, *, key=None, train=False):
        _check_input(x, _channels(params, state), context, max_rank)
        out_dtype = compute_dtype(dtype, x, *params.values())
        own_statistics = train or not track_running_stats
        if own_statistics and jnp.size(x) == 0:  # an empty batch: nothing to normalise or learn
            return jnp.asarray(x, out_dtype), state
        xs = jnp.asarray(x, compute_dtype(None, x, at_least=jnp.float32))
        if own_statistics:
            moments, new_state = statistics(xs, state, train)
        else:
            moments, new_state = _running_moments(state, xs.dtype), state
        return _scaled_output(xs, moments, params, epsilon).astype(out_dtype), new_state

    return apply


def _check_momentum(momentum: Any, context: str, allow_none: bool) -> None:
    if momentum is None and allow_none:
        return
    validate.number(momentum, "momentum", context=context, minimum=0, maximum=1)


def BatchNorm(
    *,
    momentum: float | None = 0.1,
    epsilon: float = 1e-5,
    track_running_stats: bool = True,
    use_scale: bool = True,
    use_bias: bool = True,
    axis_name: Any = None,
    scale_init: Any = jax.nn.initializers.ones,
    bias_init: Any = jax.nn.initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Layer:
    """Batch normalisation over every axis but the last (channels), as PyTorch's ``BatchNorm{1,2,3}d``.

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
      momentum: weight of the current batch in the running averages, in ``[0, 1]``;
        ``None``: the cumulative moving average, ``momentum = 1 / n`` for the
        ``n``-th training batch (the state then counts them in ``num_batches_tracked``).
      epsilon: added to the variance, ``> 0``.
      track_running_stats: keep running statistics; ``False``: no state, and the
        batch statistics normalise in both modes (as in PyTorch).
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
    state ``{"mean": (C,), "var": (C,)}`` in float32, initialised to 0 and 1, plus
    ``"num_batches_tracked"`` (an int32 scalar, initially 0) with
    ``momentum=None``; ``{}`` with ``track_running_stats=False``. The update keeps
    the state's dtypes (a float64 state stays float64). Batch statistics need
    more than one value per channel (``m > 1``), except that an empty batch
    (``N = 0``) gives an empty output and leaves the state unchanged.
    """
    _check_momentum(momentum, "BatchNorm", allow_none=True)
    validate.boolean(track_running_stats, "track_running_stats", context="BatchNorm")
    _check_norm_options("BatchNorm", epsilon, use_scale, use_bias)

    def init(key, input_shape):
        shape = normalize_shape(input_shape, "BatchNorm")
        check_rank(shape, "BatchNorm", min_rank=2, layout="(N, ..., C)")
        c = shape[-1]
        params = _affine_params(key, (c,), use_scale, use_bias, scale_init, bias_init, param_dtype)
        return shape, params, _running_state(c, track_running_stats, momentum)

    def statistics(xs, state, train):
        what = "training" if train else "normalising with track_running_stats=False"
        moments, m = _batch_moments(xs, axis_name, what)
        if not (train and track_running_stats):
            return moments, state
        batch = {"mean": moments.mean.reshape(-1), "var": moments.var.reshape(-1) * (m / (m - 1))}
        return moments, _update_running(state, batch, momentum)

    apply = _statistics_apply("BatchNorm", None, track_running_stats, epsilon, dtype, statistics)
    return Layer(init, apply, "batch_norm")


def _instance_running_update(state: Any, moments: Moments, count: int, momentum: float) -> dict:
    """The running statistics after a batch: the examples' moments averaged, as PyTorch does."""
    channels = moments.mean.shape[-1]
    unbiased = moments.var.reshape(-1, channels) * (count / (count - 1))
    batch = {"mean": jnp.mean(moments.mean.reshape(-1, channels), axis=0),
             "var": jnp.mean(unbiased, axis=0)}
    return _update_running(state, batch, momentum)


def _check_spatial_size(shape: Any, context: str) -> int:
    count = math.prod(shape[1:-1])
    if count <= 1:
        raise ValueError(f"{context}: instance statistics need more than 1 spatial element per "
                         f"example and channel, got shape {tuple(shape)}")
    return count


def InstanceNorm(
    *,
    affine: bool = False,
    track_running_stats: bool = False,
    momentum: float = 0.1,
    epsilon: float = 1e-5,
    scale_init: Any = jax.nn.initializers.ones,
    bias_init: Any = jax.nn.initializers.zeros,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> Layer:
    """Instance normalisation, as PyTorch's ``InstanceNorm{1,2,3}d`` (channels-last).

    Each example and channel is normalised over the spatial axes (biased
    variance), then, with ``affine``, a per-channel scale and bias::

        y[n, ..., c] = (x[n, ..., c] - mean[n, c]) / sqrt(var[n, c] + epsilon) * scale[c] + bias[c]

    With ``track_running_stats`` the state keeps running statistics, updated
    with ``train=True`` only from the examples' statistics averaged over the
    batch (``running_var`` from the unbiased variances, ``S / (S - 1)`` times
    the biased ones for ``S`` spatial elements) and used to normalise with
    ``train=False``; without (the default), the example's own statistics
    normalise in both modes. The statistics are those of ``BatchNorm`` (see the
    module docstring).

    Args:
      affine: learn a per-channel ``scale`` (init 1) and ``bias`` (init 0).
      track_running_stats: keep running statistics in the state.
      momentum: weight of the current batch in the running averages, in ``[0, 1]``
        (PyTorch's ``InstanceNorm`` takes ``None`` to mean 0: pass 0).
      epsilon: added to the variance, ``> 0``.
      scale_init, bias_init: ``jax.nn.initializers`` functions.
      dtype: compute dtype of the output (statistics are float32 at least).
      param_dtype: dtype of ``scale``/``bias``.

    Shapes: ``(N, *spatial, C) -> (N, *spatial, C)`` with 1 to 3 spatial axes,
    more than one spatial element wherever the example's statistics are used;
    params ``scale``/``bias`` ``(C,)`` with ``affine``, else ``{}``; state
    ``{"mean": (C,), "var": (C,)}`` (float32, 0 and 1) with ``track_running_stats``,
    else ``{}``. An empty batch gives an empty output and leaves the state unchanged.
    """
    name = "InstanceNorm"
    validate.boolean(affine, "affine", context=name)
    validate.boolean(track_running_stats, "track_running_stats", context=name)
    _check_momentum(momentum, name, allow_none=False)
    _check_norm_options(name, epsilon, True, True)

    def init(key, input_shape):
        shape = normalize_shape(input_shape, name)
        check_rank(shape, name, min_rank=3, max_rank=5, layout="(N, *spatial, C)")
        if not track_running_stats:
            _check_spatial_size(shape, name)
        c = shape[-1]
        params = _affine_params(key, (c,), affine, affine, scale_init, bias_init, param_dtype)
        return shape, params, _running_state(c, track_running_stats, momentum)

    def statistics(xs, state, train):
        count = _check_spatial_size(xs.shape, name)
        moments = _moments(xs, tuple(range(1, xs.ndim - 1)))
        if not (train and track_running_stats):
            return moments, state
        return moments, _instance_running_update(state, moments, count, momentum)

    apply = _statistics_apply(name, 5, track_running_stats, epsilon, dtype, statistics)
    return Layer(init, apply, "instance_norm")


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
        _check_real(x, "LayerNorm")
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
        y = standardize(x, axes, epsilon)
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
        _check_real(x, "GroupNorm")
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
        g = jnp.reshape(x, shape[:-1] + (num_groups, c // num_groups))
        axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)
        y = standardize(g, axes, epsilon).reshape(shape)
        return _affine(y, params, (c,)).astype(out_dtype), state

    return Layer(init, apply, "group_norm")
