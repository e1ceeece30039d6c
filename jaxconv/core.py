"""The layer contract and the combinators that compose layers.

A layer is a pair of pure functions ::

    init(key, input_shape) -> (output_shape, params, state)
    apply(params, state, x, *, key=None, train=False) -> (y, new_state)

Shapes include the batch dimension, which may be ``-1`` (unknown) and then
propagates as ``-1``, or ``0`` (an empty batch, which gives an empty result).
``params`` is the trainable pytree, ``state`` the non-trainable one (``{}``
for stateless layers).

Combinators (``serial``, ``parallel``, ``fan_out``, ``fan_in_sum``,
``fan_in_concat``, ``residual``) build new layers out of existing ones; the
sub-layers' params and state are stored in dicts keyed by sub-layer name, so
checkpoint keys read like ``params/conv0/kernel``. A combinator applies its
sub-layers through :func:`apply_child`, which lets
``jaxconv.structure.intermediates`` see every sub-layer's output by path.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxconv.validate import integer, is_int

Shape = tuple[int, ...]
PyTree = Any
InitFn = Callable[..., tuple[Any, PyTree, PyTree]]
ApplyFn = Callable[..., tuple[Any, PyTree]]


class Layer(NamedTuple):
    """A layer: a pair of pure functions over parameter pytrees.

    Attributes:
      init: ``(key, input_shape) -> (output_shape, params, state)``.
      apply: ``(params, state, x, *, key=None, train=False) -> (y, new_state)``.
      kind: short lower-case name of the layer type (``"conv"``, ``"relu"``);
        ``serial`` names unnamed sub-layers ``f"{kind}{index}"``.
      children: for combinators, the ``(name, Layer)`` pairs they are built
        from (their params/state keys), so tools such as ``summary`` can walk a
        network; ``()`` for leaf layers.
    """

    init: InitFn
    apply: ApplyFn
    kind: str = "layer"
    children: tuple = ()


NamedLayer = Layer | tuple[str, Layer]


# --------------------------------------------------------------------------
# Shape helpers shared by all layers.


def normalize_shape(input_shape: Any, context: str) -> Shape:
    """Returns ``input_shape`` as a tuple of ints, or raises a clear error.

    The batch dimension (the first) may be ``-1`` (unknown), ``0`` (an empty
    batch) or positive; every other dimension must be positive.
    """
    if is_int(input_shape) or not isinstance(input_shape, Sequence):
        raise TypeError(
            f"{context}: input_shape must be a tuple of ints including the batch "
            f"dimension (e.g. (-1, 28, 28, 1)), got {input_shape!r}"
        )
    if not all(map(is_int, input_shape)):
        raise TypeError(f"{context}: input_shape entries must be ints, got {tuple(input_shape)!r}")
    shape = tuple(int(d) for d in input_shape)
    if any(d <= 0 for d in shape[1:]):
        raise ValueError(
            f"{context}: non-batch dimensions of input_shape must be positive, got {shape!r}")
    if shape and shape[0] < -1:
        raise ValueError(f"{context}: batch dimension must be >= 0 or -1, got {shape!r}")
    return shape


def check_rank(shape: Shape, context: str, *, min_rank: int, max_rank: int | None = None,
               layout: str = "") -> None:
    """Raises ``ValueError`` unless ``min_rank <= len(shape) <= max_rank``."""
    ok = len(shape) >= min_rank and (max_rank is None or len(shape) <= max_rank)
    if not ok:
        want = f"rank {min_rank}" if max_rank == min_rank else (
            f"rank >= {min_rank}" if max_rank is None else f"rank {min_rank}..{max_rank}")
        hint = f" {layout}" if layout else ""
        raise ValueError(
            f"{context}: expected input of {want}{hint}, got shape {tuple(shape)} (rank {len(shape)})"
        )


def check_input(x: Any, expected: Shape, context: str) -> None:
    """Checks an array against a shape whose ``-1`` entries match anything.

    Used by ``apply`` functions so that a user sees a message naming the layer,
    never a raw XLA shape error.
    """
    shape = tuple(jnp.shape(x))
    if len(shape) != len(expected) or any(
        e != -1 and e != s for e, s in zip(expected, shape)
    ):
        raise ValueError(f"{context}: expected input of shape {tuple(expected)}, got {shape}")


# --------------------------------------------------------------------------
# Naming and key splitting.


def _name_layers(layers: Sequence[NamedLayer], combinator: str) -> list[tuple[str, Layer]]:
    named, counts = [], {}
    for i, item in enumerate(layers):
        if isinstance(item, Layer):
            name = f"{item.kind}{counts.get(item.kind, 0)}"
            counts[item.kind] = counts.get(item.kind, 0) + 1
            layer = item
        elif (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
              and isinstance(item[1], Layer)):
            name, layer = item
        else:
            raise TypeError(
                f"{combinator}: argument {i} must be a Layer or a (name, Layer) pair, "
                f"got {type(item).__name__}: {item!r:.80}"
            )
        if any(name == n for n, _ in named):
            raise ValueError(f"{combinator}: duplicate layer name {name!r}")
        named.append((name, layer))
    return named


def split_key(key: Any, n: int) -> list[Any]:
    """Splits ``key`` into ``n`` keys, or returns ``n`` Nones when ``key`` is None."""
    if key is None:
        return [None] * n
    return [jax.random.fold_in(key, i) for i in range(n)]


def _init_children(key, named, shapes):
    keys = split_key(key, len(named))
    out_shapes, params, state = [], {}, {}
    for (name, layer), k, s in zip(named, keys, shapes):
        out, p, st = layer.init(k, s)
        out_shapes.append(out)
        params[name], state[name] = p, st
    return out_shapes, params, state


# --------------------------------------------------------------------------
# Applying sub-layers, and recording their outputs.


class _Recording:
    """Outputs of the sub-layers applied so far, keyed by path; the path being applied."""

    def __init__(self) -> None:
        self.outputs: dict[str, Any] = {}
        self.prefix = ""


_RECORDING: contextvars.ContextVar[_Recording | None] = contextvars.ContextVar(
    "jaxconv_recording", default=None)


def apply_child(name: str, layer: Layer, params: PyTree, state: PyTree, x: Any, *,
                key: Any = None, train: bool = False) -> tuple[Any, PyTree]:
    """``layer.apply(params, state, x, key=key, train=train)`` for the sub-layer ``name``.

    Combinators apply their sub-layers through it. It is exactly ``layer.apply``,
    except inside :func:`recording`, where it also records the sub-layer's
    output under its path (``"layer1/0/conv1"``: the names from the outermost
    combinator down). Nothing is stored anywhere else: the outputs belong to
    the trace that computes them, so recording works under ``jit``.
    """
    recording = _RECORDING.get()
    if recording is None:
        return layer.apply(params, state, x, key=key, train=train)
    outer = recording.prefix
    recording.prefix = f"{outer}{name}/"
    try:
        y, new_state = layer.apply(params, state, x, key=key, train=train)
    finally:
        recording.prefix = outer
    recording.outputs[outer + name] = y
    return y, new_state


@contextlib.contextmanager
def recording() -> Iterator[dict[str, Any]]:
    """Within the block, :func:`apply_child` records every sub-layer's output.

    Yields the ``{path: output}`` dict it fills, in the order the outputs are
    computed (a sub-layer's own sub-layers before it).
    """
    active = _Recording()
    token = _RECORDING.set(active)
    try:
        yield active.outputs
    finally:
        _RECORDING.reset(token)


# --------------------------------------------------------------------------
# Combinators.


def serial(*layers: NamedLayer) -> Layer:
    """Composes layers in sequence: ``serial(f, g)(x) = g(f(x))``.

    Args:
      *layers: ``Layer`` objects or ``(name, Layer)`` pairs. Unnamed layers are
        named ``f"{kind}{index}"`` with a per-kind counter (``conv0``, ``relu0``,
        ``conv1``...).

    Returns:
      A layer whose params and state are dicts keyed by sub-layer name.
    """
    named = _name_layers(layers, "serial")

    def init(key, input_shape):
        shape = tuple(input_shape)
        keys = split_key(key, len(named))
        params, state = {}, {}
        for (name, layer), k in zip(named, keys):
            shape, params[name], state[name] = layer.init(k, shape)
        return shape, params, state

    def apply(params, state, x, *, key=None, train=False):
        keys = split_key(key, len(named))
        new_state = {}
        for (name, layer), k in zip(named, keys):
            x, new_state[name] = apply_child(name, layer, params[name], state[name], x, key=k,
                                             train=train)
        return x, new_state

    return Layer(init, apply, "serial", tuple(named))


def parallel(*layers: NamedLayer) -> Layer:
    """Applies layer ``i`` to input ``i`` of a tuple; returns the tuple of outputs."""
    named = _name_layers(layers, "parallel")

    def init(key, input_shape):
        if not isinstance(input_shape, (tuple, list)) or len(input_shape) != len(named) or not all(
            isinstance(s, (tuple, list)) for s in input_shape
        ):
            raise ValueError(
                f"parallel: expected a tuple of {len(named)} input shapes, got {input_shape!r}")
        out_shapes, params, state = _init_children(key, named, input_shape)
        return tuple(out_shapes), params, state

    def apply(params, state, xs, *, key=None, train=False):
        if not isinstance(xs, (tuple, list)) or len(xs) != len(named):
            raise ValueError(f"parallel: expected a tuple of {len(named)} inputs, got {type(xs)}")
        keys = split_key(key, len(named))
        ys, new_state = [], {}
        for (name, layer), k, x in zip(named, keys, xs):
            y, new_state[name] = apply_child(name, layer, params[name], state[name], x, key=k,
                                             train=train)
            ys.append(y)
        return tuple(ys), new_state

    return Layer(init, apply, "parallel", tuple(named))


def fan_out(n: int) -> Layer:
    """Copies its input into a tuple of ``n`` identical outputs."""
    integer(n, "n", context="fan_out", minimum=1)

    def init(key, input_shape):
        return (tuple(input_shape),) * n, {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return (x,) * n, state

    return Layer(init, apply, "fan_out")


def _check_tuple_shapes(input_shape, layer):
    if not isinstance(input_shape, (tuple, list)) or not input_shape or not all(
        isinstance(s, (tuple, list)) for s in input_shape
    ):
        raise ValueError(f"{layer}: expected a tuple of input shapes, got {input_shape!r}")


def _merge_batch(shapes: Sequence[Shape], layer: str) -> int:
    batches = {s[0] for s in shapes if s[0] != -1}
    if len(batches) > 1:
        raise ValueError(f"{layer}: inputs have different batch sizes: {list(shapes)}")
    return batches.pop() if batches else -1


def fan_in_sum() -> Layer:
    """Sums a tuple of same-shaped inputs."""

    def init(key, input_shape):
        _check_tuple_shapes(input_shape, "fan_in_sum")
        shapes = [tuple(s) for s in input_shape]
        if any(s[1:] != shapes[0][1:] or len(s) != len(shapes[0]) for s in shapes):
            raise ValueError(f"fan_in_sum: all inputs must have the same shape, got {shapes}")
        return (_merge_batch(shapes, "fan_in_sum"),) + shapes[0][1:], {}, {}

    def apply(params, state, xs, *, key=None, train=False):
        shapes = [tuple(jnp.shape(x)) for x in xs]
        if any(s != shapes[0] for s in shapes):
            raise ValueError(f"fan_in_sum: all inputs must have the same shape, got {shapes}")
        return sum(xs[1:], xs[0]), state

    return Layer(init, apply, "fan_in_sum")


def fan_in_concat(axis: int = -1) -> Layer:
    """Concatenates a tuple of inputs along ``axis`` (default: channels)."""
    if not is_int(axis) or axis == 0:
        raise ValueError(f"fan_in_concat: axis must be a non-batch int axis, got {axis!r}")

    def init(key, input_shape):
        _check_tuple_shapes(input_shape, "fan_in_concat")
        shapes = [tuple(s) for s in input_shape]
        rank = len(shapes[0])
        ax = axis % rank
        for s in shapes:
            if len(s) != rank or any(a != b for i, (a, b) in enumerate(zip(s, shapes[0]))
                                     if i not in (0, ax)):
                raise ValueError(
                    f"fan_in_concat: inputs must agree except on axis {axis}, got {shapes}")
        out = list(shapes[0])
        out[0] = _merge_batch(shapes, "fan_in_concat")
        out[ax] = sum(s[ax] for s in shapes)
        return tuple(out), {}, {}

    def apply(params, state, xs, *, key=None, train=False):
        return jnp.concatenate(xs, axis=axis), state

    return Layer(init, apply, "fan_in_concat")


def residual(*layers: NamedLayer, shortcut: NamedLayer | None = None,
             activation: Layer | None = None) -> Layer:
    """``y = activation(body(x) + shortcut(x))``, with ``body = serial(*layers)``.

    Args:
      *layers: the residual branch, composed with ``serial``.
      shortcut: optional projection for the skip path (e.g. a 1x1 ``Conv``),
        or a ``(name, layer)`` pair to store it under another name than
        ``"shortcut"`` (a ported network's ``"downsample"``, say); identity
        when omitted.
      activation: optional layer applied to the sum (a ResNet block's final
        ReLU), stored as ``"activation"``.

    Params and state are ``{"body": ..., "shortcut": ..., "activation": ...}``
    (the last two only when given).
    """
    body = serial(*layers)
    children = [("body", body)]
    if shortcut is not None:
        children += _name_layers([("shortcut", shortcut) if isinstance(shortcut, Layer) else shortcut],
                                 "residual shortcut")
        if children[1][0] in ("body", "activation"):
            raise ValueError(f"residual: the shortcut cannot be named {children[1][0]!r} "
                             "(the name of another part of the block)")
    tail = [] if activation is None else _name_layers([("activation", activation)], "residual activation")

    def init(key, input_shape):
        params, state, shapes = {}, {}, []
        for (name, child), k in zip(children, split_key(key, 2)):
            out, params[name], state[name] = child.init(k, input_shape)
            shapes.append(tuple(out))
        skip = shapes[1] if len(shapes) > 1 else tuple(input_shape)
        if shapes[0][1:] != skip[1:]:
            raise ValueError(
                f"residual: the body's output shape {shapes[0]} does not match the shortcut's "
                f"{skip}; give a shortcut layer that projects the input"
            )
        out = shapes[0]
        for name, child in tail:
            out, params[name], state[name] = child.init(None, out)
        return out, params, state

    def apply(params, state, x, *, key=None, train=False):
        outs, new_state = [], {}
        for (name, child), k in zip(children, split_key(key, 2)):
            y, new_state[name] = apply_child(name, child, params[name], state[name], x, key=k,
                                             train=train)
            outs.append(y)
        y = outs[0] + (outs[1] if len(outs) > 1 else x)
        for name, child in tail:
            y, new_state[name] = apply_child(name, child, params[name], state[name], y, train=train)
        return y, new_state

    return Layer(init, apply, "residual", tuple(children + tail))


def count_params(params: PyTree) -> int:
    """Total number of scalars in a params pytree."""
    return sum(int(jnp.size(p)) for p in jax.tree_util.tree_leaves(params))


def compute_dtype(dtype: Any, *values: Any, at_least: Any = None) -> Any:
    """The dtype a layer computes in.

    Args:
      dtype: the dtype asked for, or ``None`` for the promotion of ``values``
        (arrays or dtypes, e.g. the input and the params).
      at_least: when given, the result is promoted with it too (statistics use
        ``at_least=jnp.float32``: float32 for bfloat16 input, float64 for float64).

    Returns:
      A NumPy dtype.
    """
    out = jnp.result_type(*values) if dtype is None else jnp.dtype(dtype)
    return out if at_least is None else jnp.promote_types(out, at_least)


def cast_to(dtype: Any, *arrays: Any) -> tuple[Any, ...]:
    """Casts arrays to the compute ``dtype``; with ``dtype=None`` promotes them together."""
    dtype = compute_dtype(dtype, *arrays)
    return tuple(jnp.asarray(a, dtype) for a in arrays)
