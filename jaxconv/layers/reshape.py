"""Structural layers: Flatten, Reshape, Identity and Lambda."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxconv.core import Layer, normalize_shape
from jaxconv.validate import int_tuple


def Flatten() -> Layer:
    """Flattens every non-batch dimension: ``(N, *dims) -> (N, prod(dims))``."""

    def init(key, input_shape):
        shape = normalize_shape(input_shape, "Flatten")
        if len(shape) < 1:
            raise ValueError(f"Flatten: expected an input with a batch dimension, got {shape}")
        return (shape[0], math.prod(shape[1:])), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        shape = jnp.shape(x)
        if not shape:
            raise ValueError(f"Flatten: expected an input with a batch dimension, got shape {shape}")
        # The size is explicit: a -1 is ambiguous for an empty batch.
        return jnp.reshape(x, (shape[0], math.prod(shape[1:]))), state

    return Layer(init, apply, "flatten")


def Reshape(shape: Sequence[int]) -> Layer:
    """Reshapes the non-batch dimensions to ``shape`` (one entry may be ``-1``)."""
    target = int_tuple(shape, "shape", context="Reshape")
    if not all(d > 0 or d == -1 for d in target) or target.count(-1) > 1:
        raise ValueError(
            f"Reshape: shape must be positive ints with at most one -1, got {shape!r}")

    def out_shape(in_shape):
        size = math.prod(in_shape[1:])
        known = math.prod(d for d in target if d != -1)
        if -1 in target:
            if size % known:
                raise ValueError(
                    f"Reshape: cannot reshape input of shape {in_shape} to (batch, *{target})")
            full = tuple(size // known if d == -1 else d for d in target)
        else:
            full = target
        if math.prod(full) != size:
            raise ValueError(
                f"Reshape: cannot reshape input of shape {in_shape} ({size} features) "
                f"to (batch, *{target}) ({math.prod(full)} features)")
        return (in_shape[0],) + full

    def init(key, input_shape):
        return out_shape(normalize_shape(input_shape, "Reshape")), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return jnp.reshape(x, out_shape(tuple(jnp.shape(x)))), state

    return Layer(init, apply, "reshape")


def Identity() -> Layer:
    """Returns its input unchanged."""

    def init(key, input_shape):
        return tuple(input_shape), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return x, state

    return Layer(init, apply, "identity")


def Lambda(fn: Callable, kind: str = "lambda") -> Layer:
    """Wraps a pure, parameterless array function ``fn(x) -> y`` as a layer.

    The output shape is inferred with ``jax.eval_shape`` (no computation runs);
    an unknown batch dimension is traced with a batch of one.
    """
    if not callable(fn):
        raise TypeError(f"Lambda: fn must be callable, got {fn!r}")

    def init(key, input_shape):
        shape = normalize_shape(input_shape, "Lambda")
        unknown = shape[0] == -1
        probe = ((1,) + shape[1:]) if unknown else shape
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct(probe, jnp.float32)).shape
        if unknown:
            out = (-1,) + tuple(out[1:])
        return tuple(out), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return fn(x), state

    return Layer(init, apply, kind)
