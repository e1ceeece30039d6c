"""Looking inside a network: per-layer shapes, sizes and multiply-adds, and every layer's output.

``summary(model, input_shape)`` walks a network through ``Layer.children``
(``serial``, ``residual`` and ``parallel`` are opened up; any other layer is a
row of its own) without running it: shapes and parameter shapes come from
each layer's ``init`` under ``jax.eval_shape``, and multiply-adds are counted
exactly from the ``conv_general_dilated`` and ``dot_general`` equations of
each layer's ``apply`` jaxpr (inference mode, one example).

``intermediates(model, params, state, x)`` runs a network once and returns the
output of every sub-layer keyed by its path (``"layer3/1/conv2"``), and
``feature_extractor(model, paths)`` is a ``Layer`` whose output is that dict
for chosen paths (a backbone's feature maps, say). Both see the sub-layers
that combinators apply through ``jaxconv.core.apply_child`` (``serial``,
``parallel``, ``residual`` and the library's blocks).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxconv.core import Layer, PyTree, normalize_shape, recording


class LayerInfo(NamedTuple):
    """One leaf layer as seen by ``walk``.

    Attributes:
      path: ``"/"``-joined keys of its params/state (``"layer1/res/body/block0/conv"``).
      layer: the leaf ``Layer``.
      input_shape, output_shape: with the batch dimension as given to ``walk``.
    """

    path: str
    layer: Layer
    input_shape: Any
    output_shape: Any


def init_shapes(layer: Layer, input_shape: Any) -> tuple[Any, Any, Any]:
    """``(output_shape, params, state)`` of ``layer.init`` on ``input_shape``, without computing.

    ``params`` and ``state`` hold ``jax.ShapeDtypeStruct`` leaves (shapes and
    dtypes only): ``init`` runs under ``jax.eval_shape``.
    """
    box = {}

    def run(key):
        out, params, state = layer.init(key, input_shape)
        box["out"] = out
        return params, state

    params, state = jax.eval_shape(run, jax.random.PRNGKey(0))
    return box["out"], params, state


def _walk(model: Layer, input_shape: Any, prefix: str, out: list) -> Any:
    """Appends ``model``'s leaves to ``out`` and returns its output shape."""
    kind = model.kind
    if not (model.children and kind in ("serial", "residual", "parallel")):
        shape, _, _ = init_shapes(model, input_shape)
        out.append(LayerInfo(prefix or model.kind, model, input_shape, shape))
        return shape
    shape, outs = input_shape, []
    for i, (name, child) in enumerate(model.children):
        path = f"{prefix}/{name}" if prefix else name
        if kind == "serial":
            shape = _walk(child, shape, path, out)
        elif kind == "parallel":
            outs.append(_walk(child, input_shape[i], path, out))
        elif name == "activation":  # residual: its activation sees the sum (the body's shape)
            outs[0] = _walk(child, outs[0], path, out)
        else:  # residual: body and shortcut both see the input; the body's shape is the output
            outs.append(_walk(child, input_shape, path, out))
    if kind == "parallel":
        return tuple(outs)
    return outs[0] if kind == "residual" else shape


def walk(model: Layer, input_shape: Any, prefix: str = "") -> list[LayerInfo]:
    """The leaf layers of ``model`` in execution order, with their input and output shapes.

    ``serial`` feeds each child the previous output; ``residual`` feeds its
    body and shortcut the same input; ``parallel`` feeds child ``i`` input
    ``i``. Other layers (with or without ``children``) are leaves. Nothing is
    computed: shapes come from ``init`` under ``jax.eval_shape``.
    """
    out: list[LayerInfo] = []
    _walk(model, input_shape, prefix, out)
    return out


def _size(tree: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def _subjaxprs(value: Any) -> Iterator[Any]:
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _subjaxprs(v)


def jaxpr_macs(jaxpr: Any) -> int:
    """Multiply-adds of the convolutions and matrix products in a jaxpr (recursively).

    ``conv_general_dilated``: output elements x kernel window x input features
    per group. ``dot_general``: output elements x contracted size. A ``scan``
    body counts ``length`` times, a ``cond`` its most expensive branch. A
    transposed convolution written with ``lhs_dilation`` counts every kernel
    tap, also those that meet the inserted zeros (what the hardware executes).
    """
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        out = eqn.outvars[0].aval.shape if eqn.outvars else ()
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec
            total += math.prod(out) * math.prod(rhs[d] for d in rhs_spec[1:])
        elif name == "dot_general":
            lhs = eqn.invars[0].aval.shape
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            total += math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
        else:
            subs = [j for v in eqn.params.values() for j in _subjaxprs(v)]
            if not subs:
                continue
            if name == "cond":
                total += max(jaxpr_macs(j) for j in subs)
            else:
                inner = sum(jaxpr_macs(j) for j in subs)
                total += inner * (eqn.params.get("length", 1) if name == "scan" else 1)
    return total


def layer_macs(layer: Layer, input_shape: Any) -> int:
    """Multiply-adds of one inference ``apply`` of ``layer`` on one example."""
    one = jax.tree_util.tree_map(lambda s: (1,) + tuple(s[1:]), input_shape,
                                 is_leaf=lambda s: isinstance(s, tuple) and all(
                                     isinstance(d, int) for d in s))
    _, params, state = init_shapes(layer, one)
    x = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), one,
                               is_leaf=lambda s: isinstance(s, tuple) and all(
                                   isinstance(d, int) for d in s))
    closed = jax.make_jaxpr(lambda p, s, x: layer.apply(p, s, x, train=False))(params, state, x)
    return jaxpr_macs(closed.jaxpr)


class Row(NamedTuple):
    name: str
    kind: str
    output_shape: Any
    params: int
    state: int
    macs: int


class ModelSummary(NamedTuple):
    """The result of ``summary``; ``str()`` gives the table.

    Attributes:
      rows: one ``Row`` per leaf layer.
      input_shape, output_shape: of the whole model.
      total_params, total_state: scalars in params / state.
      total_macs: multiply-adds per example (FLOPs are ``2 * total_macs``).
    """

    rows: list
    input_shape: Any
    output_shape: Any
    total_params: int
    total_state: int
    total_macs: int

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    def __str__(self) -> str:
        head = ("Layer", "Kind", "Output shape", "Params", "State", "MACs")
        body = [(r.name, r.kind, str(tuple(r.output_shape)), f"{r.params:,}", f"{r.state:,}",
                 f"{r.macs:,}") for r in self.rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
                  for i, h in enumerate(head)]
        right = (False, False, False, True, True, True)

        def fmt(cells):
            return "  ".join(c.rjust(w) if r else c.ljust(w)
                             for c, w, r in zip(cells, widths, right)).rstrip()

        rule = "-" * len(fmt(head))
        lines = [f"input {tuple(self.input_shape)} -> output {tuple(self.output_shape)}",
                 rule, fmt(head), rule, *(fmt(b) for b in body), rule,
                 f"Total params: {self.total_params:,}",
                 f"Total state:  {self.total_state:,}",
                 f"Multiply-adds per example: {self.total_macs:,} "
                 f"(FLOPs: {self.total_flops:,}; conv and matmul only)"]
        return "\n".join(lines)


def summary(model: Layer, input_shape: Any) -> ModelSummary:
    """Summarises ``model`` on ``input_shape`` (including the batch dimension, may be ``-1``).

    Returns:
      A ``ModelSummary``; ``print(summary(model, (-1, 32, 32, 3)))`` shows a table
      of layer names (the params/state paths), kinds, output shapes, parameter
      and state counts and multiply-adds per example, with totals. Nothing is
      computed: shapes come from ``init`` under ``jax.eval_shape`` and counts
      from the layers' jaxprs.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"summary: model must be a jaxconv Layer, got {type(model).__name__}")
    if not (isinstance(input_shape, (tuple, list)) and input_shape
            and isinstance(input_shape[0], (tuple, list))):
        input_shape = normalize_shape(input_shape, "summary")
    rows = []
    for info in walk(model, input_shape):
        _, params, state = init_shapes(info.layer, info.input_shape)
        rows.append(Row(info.path, info.layer.kind, info.output_shape, _size(params),
                        _size(state), layer_macs(info.layer, info.input_shape)))
    out, params, state = init_shapes(model, input_shape)
    return ModelSummary(rows, input_shape, out, _size(params), _size(state),
                        sum(r.macs for r in rows))


# --------------------------------------------------------------------------
# Every layer's output: intermediates and feature_extractor.


def _recorded(model: Layer, params: PyTree, state: PyTree, x: Any, *, key: Any,
              train: bool) -> tuple[dict[str, Any], PyTree]:
    """``({path: output}, new_state)`` of one ``model.apply``."""
    with recording() as outputs:
        _, new_state = model.apply(params, state, x, key=key, train=train)
    return dict(outputs), new_state


def _check_paths(paths: Any, context: str) -> tuple[str, ...] | None:
    if paths is None:
        return None
    paths = (paths,) if isinstance(paths, str) else tuple(paths)
    if not paths or not all(isinstance(p, str) for p in paths):
        raise ValueError(f"{context}: paths must be a non-empty sequence of layer paths "
                         f"such as 'layer1/0/conv1', got {paths!r}")
    return paths


def _select(outputs: dict[str, Any], paths: tuple[str, ...] | None, context: str) -> dict[str, Any]:
    if paths is None:
        return outputs
    unknown = [p for p in paths if p not in outputs]
    if unknown:
        raise ValueError(f"{context}: unknown layer path(s) {unknown}; the model's paths are: "
                         f"{', '.join(outputs) or '(none: the model has no sub-layers)'}")
    return {p: outputs[p] for p in paths}


def intermediates(model: Layer, params: PyTree, state: PyTree, x: Any, *,
                  paths: Iterable[str] | str | None = None, train: bool = False,
                  key: Any = None) -> dict[str, Any]:
    """The output of every sub-layer of ``model`` for input ``x``, keyed by path.

    One pure call of ``model.apply`` (it works under ``jit``, ``grad`` and
    ``vmap``). A path joins the names of the combinators' sub-layers from the
    outside in, as the params are keyed: ``"layer1/0/conv1"``; combinators
    have an entry of their own (``"layer1"``, ``"layer1/0"``), recorded after
    their sub-layers.

    Args:
      model, params, state: the network and its variables.
      x: the input, ``(N, *spatial, C)``.
      paths: only these paths (in this order); ``None`` for all of them.
      train, key: as for ``model.apply``.

    Returns:
      ``{path: output}``, in the order the outputs are computed, or in the
      order of ``paths`` (a dict returned through ``jit`` comes back with its
      keys sorted, as JAX flattens dicts).

    Raises:
      ValueError: a path the model does not have; the message lists the valid ones.
    """
    paths = _check_paths(paths, "intermediates")
    outputs, _ = _recorded(model, params, state, x, key=key, train=train)
    return _select(outputs, paths, "intermediates")


def _abstract_input(input_shape: Any) -> Any:
    """A float32 ``jax.ShapeDtypeStruct`` per array of ``input_shape`` (an unknown batch taken as 1)."""
    if input_shape and all(isinstance(d, int) for d in input_shape):
        shape = tuple(input_shape)
        return jax.ShapeDtypeStruct((1 if shape[0] == -1 else shape[0],) + shape[1:], jnp.float32)
    return tuple(_abstract_input(s) for s in input_shape)


def _shape_of(value: Any, batch: int) -> Any:
    if isinstance(value, (tuple, list)):
        return tuple(_shape_of(v, batch) for v in value)
    return (batch,) + tuple(value.shape[1:])


def feature_extractor(model: Layer, paths: Iterable[str] | str) -> Layer:
    """A ``Layer`` with ``model``'s params and state whose output is ``{path: output}``.

    ``init`` declares each path's output shape without computing anything (the
    model runs under ``jax.eval_shape``), and fails on a path the model does
    not have, listing the valid ones. ``apply`` returns the dict and the
    model's new state. Its params are ``model``'s, so a trained backbone's
    params load as they are.
    """
    paths = _check_paths(paths, "feature_extractor")

    def init(key, input_shape):
        out, params, state = model.init(key, input_shape)
        batch = normalize_shape(_first_shape(input_shape), "feature_extractor")[0]
        outputs = jax.eval_shape(lambda p, s, x: _recorded(model, p, s, x, key=None, train=False)[0],
                                 params, state, _abstract_input(input_shape))
        chosen = _select(outputs, paths, "feature_extractor")
        return {p: _shape_of(v, batch) for p, v in chosen.items()}, params, state

    def apply(params, state, x, *, key=None, train=False):
        outputs, new_state = _recorded(model, params, state, x, key=key, train=train)
        return _select(outputs, paths, "feature_extractor"), new_state

    return Layer(init, apply, "feature_extractor")


def _first_shape(input_shape: Any) -> Any:
    """The first array shape of a (possibly nested) input shape."""
    while input_shape and not isinstance(input_shape[0], int):
        input_shape = input_shape[0]
    return input_shape
