"""Dropout and stochastic depth (``DropPath``): random masks in training, identity in inference."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxconv.core import Layer, check_rank, normalize_shape
from jaxconv.validate import int_tuple, number


def _check_floating(x: Any, name: str) -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating-point input, got dtype {dtype}")


def _check_dims(dims: tuple[int, ...], rank: int, name: str) -> tuple[int, ...]:
    """``dims`` as non-negative axes of a rank-``rank`` input, or a clear error."""
    if any(not -rank <= d < rank for d in dims):
        raise ValueError(f"{name}: broadcast_dims {dims} out of range for an input of rank {rank}")
    axes = tuple(d % rank for d in dims)
    if len(set(axes)) != len(axes):
        raise ValueError(f"{name}: broadcast_dims {dims} name the same axis twice "
                         f"for an input of rank {rank}")
    return axes


def _masked(kind: str, name: str, rate: float, mask_shape: Callable) -> Layer:
    """A layer that keeps ``x`` where a random mask is 1, scaled by ``1 / (1 - rate)``.

    ``mask_shape(shape)`` gives the mask's shape for an input shape (the mask
    broadcasts over the input; each entry is 1 with probability ``1 - rate``),
    and raises on input shapes the layer does not take.
    """
    keep = 1.0 - rate

    def init(key, input_shape):
        shape = normalize_shape(input_shape, name)
        mask_shape(shape)
        return shape, {}, {}

    def apply(params, state, x, *, key=None, train=False):
        _check_floating(x, name)
        mask_dims = mask_shape(jnp.shape(x))
        if not train or rate == 0:
            return x, state
        if key is None:
            raise ValueError(
                f"{name}: train=True needs a PRNG key; call apply(params, state, x, "
                "key=jax.random.key(...), train=True), got key=None")
        x = jnp.asarray(x)
        mask = jax.random.bernoulli(key, keep, mask_dims)
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype)), state

    return Layer(init, apply, kind)


def _rate(rate: Any, name: str) -> float:
    return number(rate, "rate", context=name, minimum=0, maximum=1, exclusive_maximum=True)


def Dropout(rate: float, broadcast_dims: Sequence[int] = ()) -> Layer:
    """Inverted dropout: zeroes each element with probability ``rate`` in training.

    With ``train=True`` every element is kept independently with probability
    ``1 - rate`` and the kept ones are scaled by ``1 / (1 - rate)``, so the
    expected output equals the input; with ``train=False`` the layer is the
    identity (as ``torch.nn.Dropout``).

    Args:
      rate: probability of dropping an element, in ``[0, 1)``.
      broadcast_dims: axes along which one mask value is shared (negative
        axes count from the end). ``(1, 2)`` on ``(N, H, W, C)`` input drops
        whole channels, as ``torch.nn.Dropout2d`` does; ``(1,)`` on
        ``(N, L, C)`` is ``torch.nn.Dropout1d``.

    ``apply`` needs ``key`` (a ``jax.random`` key) when ``train=True``; inside
    ``serial`` the key is split across layers. The input must be floating
    point (``TypeError`` otherwise). Shapes: unchanged; no params/state.
    """
    rate = _rate(rate, "Dropout")
    is_empty = isinstance(broadcast_dims, (tuple, list)) and not broadcast_dims
    dims = () if is_empty else int_tuple(broadcast_dims, "broadcast_dims", context="Dropout")

    def mask_shape(shape):
        axes = _check_dims(dims, len(shape), "Dropout")
        return tuple(1 if i in axes else n for i, n in enumerate(shape))

    return _masked("dropout", "Dropout", rate, mask_shape)


def DropPath(rate: float) -> Layer:
    """Stochastic depth: drops whole examples of a residual branch in training.

    With ``train=True`` each example (index of the leading axis) is kept with
    probability ``1 - rate`` and scaled by ``1 / (1 - rate)``, or zeroed
    entirely; with ``train=False`` the layer is the identity. This is
    ``torchvision.ops.StochasticDepth(rate, mode="row")``, also known as
    ``DropPath``; put it at the end of a residual branch, before the sum.

    Args:
      rate: probability of dropping an example, in ``[0, 1)``.

    ``apply`` needs ``key`` when ``train=True``; the input must be floating
    point. Shapes: ``(N, ...)`` unchanged; no params/state.
    """
    rate = _rate(rate, "DropPath")

    def mask_shape(shape):
        check_rank(shape, "DropPath", min_rank=1, layout="(batch, ...)")
        return shape[:1] + (1,) * (len(shape) - 1)

    return _masked("drop_path", "DropPath", rate, mask_shape)
