"""Dropout."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxconv.core import Layer


def Dropout(rate: float) -> Layer:
    """Inverted dropout: zeroes each element with probability ``rate`` in training.

    With ``train=True`` every element is kept independently with probability
    ``1 - rate`` and the kept ones are scaled by ``1 / (1 - rate)``, so the
    expected output equals the input; with ``train=False`` the layer is the
    identity (as ``torch.nn.Dropout``).

    Args:
      rate: probability of dropping an element, in ``[0, 1)``.

    ``apply`` needs ``key`` (a ``jax.random`` key) when ``train=True``; inside
    ``serial`` the key is split across layers. Shapes: unchanged; no params/state.
    """
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
        raise ValueError(f"Dropout: rate must be a number in [0, 1), got {rate!r}")
    keep = 1.0 - rate

    def init(key, input_shape):
        return tuple(input_shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        if not train or rate == 0:
            return x, state
        if key is None:
            raise ValueError(
                "Dropout: train=True needs a PRNG key; call apply(params, state, x, "
                "key=jax.random.key(...), train=True), got key=None")
        x = jnp.asarray(x)
        mask = jax.random.bernoulli(key, keep, x.shape)
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype)), state

    return Layer(init, apply, "dropout")
