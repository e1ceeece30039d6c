"""PyTorch weights -> jaxconv params/state, from plain NumPy arrays (no torch import needed).

Layouts (PyTorch -> jaxconv, channels-last):

- ``Conv{1,2,3}d.weight`` ``(O, I // groups, *k)`` -> ``kernel`` ``(*k, I // groups, O)``
  (``OIHW -> HWIO``); depthwise ones (``groups = I``) included, ``(I, 1, *k)`` ->
  ``(*k, 1, I)``, and ``SqueezeExcite``'s 1x1 ``fc1``/``fc2`` ``(S, C, 1, 1)`` ->
  ``(1, 1, C, S)``.
- ``ConvTranspose{1,2,3}d.weight`` ``(C, F // groups, *k)`` -> ``kernel``
  ``(*k, F // groups, C)``: the layout of the convolution it transposes,
  the same axis permutation as for ``Conv``.
- ``Linear.weight`` ``(out, in)`` -> ``kernel`` ``(in, out)``. When the Linear
  follows ``torch.flatten`` of an NCHW feature map, its input columns are in
  ``(C, H, W)`` order, while ``jaxconv.Flatten`` of NHWC gives ``(H, W, C)``
  order: ``dense_kernel(w, flatten_from=(C, H, W))`` reorders the columns.
- ``BatchNorm*d`` ``weight, bias, running_mean, running_var`` -> params
  ``{"scale", "bias"}`` and state ``{"mean", "var"}`` (same momentum convention).
- ``GroupNorm``/``LayerNorm`` (over channels) ``weight, bias`` -> ``{"scale", "bias"}``.
- A parameter a module holds itself, such as ConvNeXt's ``layer_scale``
  ``(C, 1, 1)``, -> the one param of the layer named like it (``LayerScale``'s
  ``scale`` ``(C,)``), without the unit axes.

``load_torch_state_dict(model, input_shape, state_dict)`` does all of this for a
whole network, pairing jaxconv layers and PyTorch modules by name, the rest in
order (or by an explicit mapping), and detecting the Flatten -> Dense case from
the model's shapes. ``read_state_dict`` reads a ``.safetensors`` file (no torch
needed) or a ``.pt``/``.pth`` file (through ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from jaxconv.checkpoint import named_leaves
from jaxconv.core import Layer
from jaxconv.structure import init_shapes, walk


def _array(value: Any, name: str) -> np.ndarray:
    """``value`` (a NumPy array, array-like or torch tensor) as a real numeric NumPy array.

    Raises:
      ValueError: the values are complex (the imaginary parts would be lost) or
        not numbers (an object array, e.g. holding ``None``; strings).
    """
    if hasattr(value, "detach"):  # a torch tensor: accept it without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # NumPy cannot take it; float32 is exact
            value = value.float()
        value = value.numpy()
    array = np.asarray(value)
    if jnp.issubdtype(array.dtype, jnp.complexfloating):
        raise ValueError(f"convert: {name}: expected a real array, got dtype {array.dtype}; "
                         "jaxconv weights are real and the imaginary parts would be lost")
    if not any(jnp.issubdtype(array.dtype, kind) for kind in (jnp.floating, jnp.integer, jnp.bool_)):
        raise ValueError(f"convert: {name}: expected an array of numbers, got dtype {array.dtype} "
                         "(e.g. None or text entries)")
    return array


def _check_shape(value: np.ndarray, expected: Sequence[int], name: str) -> None:
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"convert: {name}: expected shape {tuple(expected)}, "
                         f"got {tuple(value.shape)}")


def _spatial_first(weight: Any, name: str) -> np.ndarray:
    w = _array(weight, name)
    if w.ndim not in (3, 4, 5):
        raise ValueError(f"convert: {name}: expected a rank 3, 4 or 5 convolution weight "
                         f"(O, I // groups, *kernel_size), got shape {tuple(w.shape)}")
    return np.transpose(w, (*range(2, w.ndim), 1, 0))


def conv_kernel(weight: Any, *, name: str = "conv weight") -> np.ndarray:
    """``Conv*d.weight`` ``(O, I // groups, *k)`` -> jaxconv kernel ``(*k, I // groups, O)``."""
    return _spatial_first(weight, name)


def conv_transpose_kernel(weight: Any, *, name: str = "conv_transpose weight") -> np.ndarray:
    """``ConvTranspose*d.weight`` ``(C, F // groups, *k)`` -> jaxconv kernel ``(*k, F // groups, C)``.

    ``C`` is the transposed convolution's input channels and ``F`` its output
    channels; the result is the kernel of the ``F -> C`` convolution whose
    adjoint it is, which is what ``jaxconv.ops.conv_transpose`` takes.
    """
    return _spatial_first(weight, name)


def dense_kernel(weight: Any, *, flatten_from: Sequence[int] | None = None,
                 name: str = "linear weight") -> np.ndarray:
    """``Linear.weight`` ``(out, in)`` -> jaxconv kernel ``(in, out)``.

    Args:
      weight: ``(out, in)``.
      flatten_from: the PyTorch feature-map shape ``(C, *spatial)`` whose
        ``torch.flatten`` fed this Linear (so ``in = C * prod(spatial)``). The
        columns are then permuted from PyTorch's ``(C, *spatial)`` order to
        jaxconv's ``(*spatial, C)`` order (``Flatten`` of channels-last input).
    """
    w = _array(weight, name)
    if w.ndim != 2:
        raise ValueError(f"convert: {name}: expected a rank-2 Linear weight (out, in), "
                         f"got shape {tuple(w.shape)}")
    if flatten_from is not None:
        chw = tuple(int(d) for d in flatten_from)
        if int(np.prod(chw)) != w.shape[1]:
            raise ValueError(
                f"convert: {name}: flatten_from={chw} has {int(np.prod(chw))} features, but "
                f"the weight has {w.shape[1]} inputs (shape {tuple(w.shape)})")
        w = w.reshape((w.shape[0], *chw))
        w = np.transpose(w, (0, *range(2, w.ndim), 1)).reshape(w.shape[0], -1)
    return w.T


def batch_norm(weight: Any, bias: Any, running_mean: Any, running_var: Any, *,
               name: str = "batch_norm") -> tuple[dict, dict]:
    """``BatchNorm*d`` tensors -> ``(params, state)`` = ``({"scale", "bias"}, {"mean", "var"})``."""
    arrays = [_array(v, f"{name}.{k}") for v, k in zip(
        (weight, bias, running_mean, running_var), ("weight", "bias", "running_mean",
                                                     "running_var"))]
    c = arrays[2].shape
    for a, k in zip(arrays, ("weight", "bias", "running_mean", "running_var")):
        _check_shape(a, c, f"{name}.{k}")
    return ({"scale": arrays[0], "bias": arrays[1]}, {"mean": arrays[2], "var": arrays[3]})


# --------------------------------------------------------------------------
# State-dict files.


_PICKLE_SUFFIXES = (".pt", ".pth")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        return safetensors.numpy.load_file(path)
    except safetensors.SafetensorError as e:
        raise ValueError(f"convert: {path}: not a readable safetensors file ({e})") from e


def _read_pickled(path: str) -> dict[str, Any]:
    """A ``torch.save``d state_dict, through ``torch.load(weights_only=True)`` only."""
    try:
        import torch  # optional: only .pt/.pth files need it
    except ImportError as e:
        raise ImportError(
            f"convert: {path} is a pickled PyTorch file, which jaxconv only reads through "
            "torch.load(weights_only=True): install torch, or convert the file to .safetensors "
            "(safetensors.torch.save_file(state_dict, ...))") from e
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # the weights-only unpickler's refusals, damaged files
        raise ValueError(
            f"convert: {path}: torch.load(weights_only=True) cannot read it (a damaged file, or a "
            "pickled object other than tensors, such as a whole module): save "
            "model.state_dict() instead, or convert it to .safetensors") from e
    if not isinstance(loaded, Mapping) or not all(isinstance(k, str) for k in loaded):
        raise ValueError(f"convert: {path}: expected a state_dict ({{name: tensor}}), "
                         f"got a {type(loaded).__name__}")
    return dict(loaded)


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """The tensors of a saved PyTorch ``state_dict``, in the file's order.

    Args:
      path: a ``.safetensors`` file (read with ``safetensors.numpy``; no torch
        needed; its tensors come sorted by name, not in the modules' order),
        or a ``.pt``/``.pth`` file written by ``torch.save``, read with
        ``torch.load(weights_only=True)`` when PyTorch is installed. jaxconv
        never unpickles a file itself.

    Returns:
      ``{name: array}``: NumPy arrays, or torch tensors from a ``.pt``/``.pth`` file.

    Raises:
      ValueError: another suffix, a damaged file, or a ``.pt`` file that does
        not hold a ``{name: tensor}`` mapping.
      ImportError: a ``.pt``/``.pth`` file without PyTorch installed.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix not in _PICKLE_SUFFIXES:
        raise ValueError(f"convert: {path}: expected a .safetensors, .pt or .pth state_dict file, "
                         f"got suffix {suffix!r}")
    return _read_pickled(path)


# --------------------------------------------------------------------------
# Whole networks.


def _torch_modules(state_dict: Mapping[str, Any]) -> list[tuple[str, dict]]:
    """Groups ``state_dict`` keys by module prefix, keeping PyTorch's order."""
    modules: dict[str, dict] = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        modules.setdefault(prefix, {})[leaf] = value
    return list(modules.items())


class _Module(NamedTuple):
    """One PyTorch module's tensors, paired with the jaxconv layer at ``path``."""

    path: str
    prefix: str
    tensors: Mapping[str, Any]


class _Leaf(NamedTuple):
    """A jaxconv layer with weights: its params path, PyTorch-style name and weights' shapes.

    ``flatten_from`` is PyTorch's ``(C, *spatial)`` of a feature map flattened
    straight into this layer (a Dense after Flatten), else ``None``.
    """

    path: str
    name: str
    params: Any
    state: Any
    flatten_from: tuple | None


# jaxconv param/state name -> PyTorch tensor name
_TORCH_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                "var": "running_var"}


def _take(module: _Module, key: str, expected: Any, torch_shape: Sequence[int] | None = None,
          convert: Callable[[np.ndarray], np.ndarray] | None = None) -> jax.Array:
    """The module's tensor ``key`` in jaxconv layout, with the shape and dtype of ``expected``.

    ``torch_shape``: the shape the tensor must have in PyTorch (default:
    ``expected.shape``); ``convert``: PyTorch layout -> jaxconv layout.
    """
    name = f"{module.prefix}.{key}" if module.prefix else key
    torch_shape = tuple(expected.shape if torch_shape is None else torch_shape)
    if key not in module.tensors:
        raise ValueError(f"convert: jaxconv layer {module.path!r} needs torch tensor {name!r} "
                         f"(shape {torch_shape}); the module has {sorted(module.tensors)}")
    raw = _array(module.tensors[key], name)
    if tuple(raw.shape) != torch_shape:
        raise ValueError(
            f"convert: {name}: expected shape {torch_shape} (for jaxconv "
            f"{module.path}, shape {tuple(expected.shape)}), got {tuple(raw.shape)}")
    out = raw if convert is None else convert(raw)
    _check_shape(out, expected.shape, f"{name} -> {module.path}")
    return jnp.asarray(out, expected.dtype)


def _kernel(module: _Module, kernel: Any, flatten_from: Sequence[int] | None) -> jax.Array:
    """A Conv (rank >= 3) or Dense kernel from the module's ``weight``."""
    k = kernel.shape
    if kernel.ndim >= 3:
        return _take(module, "weight", kernel, (k[-1], k[-2], *k[:-2]),
                     lambda a: conv_kernel(a, name=module.prefix))
    return _take(module, "weight", kernel, (k[1], k[0]), lambda a: dense_kernel(
        a, flatten_from=flatten_from, name=module.prefix))


def _is_direct(module: _Module, layer_params: dict, layer_state: dict) -> bool:
    """Whether ``module`` is one parameter that a PyTorch module holds itself (not in a
    submodule, like ConvNeXt's ``layer_scale``), for a layer with exactly one param."""
    return (len(module.tensors) == 1 and set(module.tensors).isdisjoint(_TORCH_NAMES.values())
            and len(layer_params) == 1 and not layer_state)


def _convert_direct(module: _Module, layer_params: dict) -> dict:
    """A directly held parameter -> the layer's one param, dropping trailing unit axes
    (ConvNeXt's ``layer_scale`` ``(C, 1, 1)`` -> LayerScale's ``scale`` ``(C,)``)."""
    ((key, raw),) = module.tensors.items()
    ((param, expected),) = layer_params.items()
    units = max(0, len(np.shape(raw)) - expected.ndim)
    torch_shape = (*expected.shape, *(1,) * units)
    return {param: _take(module, key, expected, torch_shape,
                         lambda a: a.reshape(expected.shape))}


def _convert_leaf(module: _Module, leaf: _Leaf) -> tuple[dict, dict]:
    """Converts one PyTorch module's tensors to the structure of one jaxconv layer."""
    layer_params, layer_state = leaf.params, leaf.state
    if _is_direct(module, layer_params, layer_state):
        return _convert_direct(module, layer_params), {}
    params, state = {}, {}
    if "kernel" in layer_params:
        params["kernel"] = _kernel(module, layer_params["kernel"], leaf.flatten_from)
    elif "scale" in layer_params:
        params["scale"] = _take(module, "weight", layer_params["scale"])
    if "bias" in layer_params:
        params["bias"] = _take(module, "bias", layer_params["bias"])
    for name in ("mean", "var"):
        if name in layer_state:
            state[name] = _take(module, _TORCH_NAMES[name], layer_state[name])
    missing = (set(layer_params) - set(params)) | (set(layer_state) - set(state))
    if missing:
        raise ValueError(f"convert: cannot fill {sorted(missing)} of jaxconv layer "
                         f"{module.path!r} from torch module {module.prefix!r}")
    extra = set(module.tensors) - {_TORCH_NAMES[k] for k in (*params, *state)}
    if extra:
        raise ValueError(f"convert: torch module {module.prefix!r} has tensors {sorted(extra)} that "
                         f"jaxconv layer {module.path!r} has no place for (use_bias?)")
    return params, state


def _set(tree: dict, path: str, value: dict) -> None:
    """Puts ``value`` at ``path`` of ``tree`` (``""``: the root, a model that is one layer)."""
    if not path:
        tree.update(value)
        return
    keys = path.split("/")
    for k in keys[:-1]:
        tree = tree[k]
    tree[keys[-1]] = value


def _torch_name(model: Layer, path: str) -> str:
    """The PyTorch-style name of the layer at ``path``: ``"."`` for ``"/"``, and without the
    ``body`` key of a ``residual``, whose layers are named like those of a ``serial``."""
    names, layer = [], model
    for key in path.split("/"):
        if not (layer.kind == "residual" and key == "body"):
            names.append(key)
        layer = dict(layer.children).get(key, layer)
    return ".".join(names)


def _split(leaf: _Leaf) -> list[_Leaf]:
    """A layer whose params are sub-layers' dicts (``SqueezeExcite``'s ``fc1``/``fc2``,
    ``SeparableConv``'s ``depthwise``/``pointwise``) as one leaf per sub-layer with weights."""
    if not leaf.params or not all(isinstance(v, dict) for v in leaf.params.values()):
        return [leaf]
    out = []
    for key, params in leaf.params.items():
        sub = _Leaf(f"{leaf.path}/{key}".lstrip("/"), f"{leaf.name}.{key}".lstrip("."), params,
                    leaf.state.get(key, {}), None)
        if jax.tree_util.tree_leaves((sub.params, sub.state)):
            out.extend(_split(sub))
    return out


def _weighted_layers(model: Layer, input_shape: tuple) -> list[_Leaf]:
    """The leaf layers with params or state, in execution order."""
    leaves, flatten_origin = [], None
    for info in walk(model, input_shape):
        _, p, s = init_shapes(info.layer, info.input_shape)
        if info.layer.kind == "flatten" and len(info.input_shape) > 2:
            flatten_origin = tuple(info.input_shape[1:])
            continue
        if jax.tree_util.tree_leaves((p, s)):
            origin = None
            if flatten_origin is not None and "kernel" in p and p["kernel"].ndim == 2:
                origin = (flatten_origin[-1], *flatten_origin[:-1])
            path = "" if info.layer is model else info.path  # a model that is one layer: the root
            leaves += _split(_Leaf(path, _torch_name(model, path), p, s, origin))
            flatten_origin = None
        elif tuple(info.output_shape) != tuple(info.input_shape):
            flatten_origin = None
    return leaves


def _pair_by_name(leaves: list[_Leaf], modules: list[tuple[str, dict]]
                  ) -> tuple[list[tuple[_Leaf, _Module]], list[_Leaf], list[tuple[str, dict]]]:
    """Pairs each layer whose PyTorch-style name is a module's prefix (or the key of a tensor
    a module holds itself); returns the pairs and the unpaired layers and modules, in order."""
    left = {prefix: dict(tensors) for prefix, tensors in modules}
    pairs, unpaired = [], []
    for leaf in leaves:
        prefix, _, key = leaf.name.rpartition(".")
        if leaf.name in left:
            pairs.append((leaf, _Module(leaf.path, leaf.name, left.pop(leaf.name))))
        elif key in left.get(prefix, {}) and key not in _TORCH_NAMES.values():
            pairs.append((leaf, _Module(leaf.path, prefix, {key: left[prefix].pop(key)})))
        else:
            unpaired.append(leaf)
    return pairs, unpaired, [(p, left[p]) for p, _ in modules if left.get(p)]


def _pair_by_order(leaves: list[_Leaf], modules: list[tuple[str, dict]], ordered: bool,
                   ) -> list[tuple[_Leaf, _Module]]:
    """Pairs the layers and modules that names did not pair, in order."""
    paths, prefixes = [leaf.path for leaf in leaves], [m for m, _ in modules]
    if leaves and not ordered:
        raise ValueError(
            f"convert: jaxconv layers {paths} have no torch module of the same name, and a "
            f".safetensors file does not keep the modules' order (its tensors are sorted by "
            f"name; unpaired modules: {prefixes}); pass mapping={{jaxconv_path: torch_prefix}}")
    if len(modules) != len(leaves):
        raise ValueError(
            f"convert: the jaxconv model has {len(leaves)} layers with weights {paths} that no "
            f"torch module name matches, but the state_dict has {len(modules)} such modules "
            f"{prefixes}; pass mapping={{jaxconv_path: torch_prefix}}")
    return [(leaf, _Module(leaf.path, prefix, tensors))
            for leaf, (prefix, tensors) in zip(leaves, modules)]


def _pair_by_mapping(leaves: list[_Leaf], modules: list[tuple[str, dict]],
                     mapping: Mapping[str, str]) -> list[tuple[_Leaf, _Module]]:
    """Pairs each layer with the module ``mapping`` names for its path."""
    by_prefix = dict(modules)
    paths = {leaf.path: leaf for leaf in leaves}
    unknown = set(mapping) - set(paths)
    if unknown:
        raise ValueError(f"convert: mapping names jaxconv layers {sorted(unknown)} that "
                         f"have no weights; expected some of {sorted(paths)}")
    unmapped = set(paths) - set(mapping)
    if unmapped:
        raise ValueError(f"convert: jaxconv layers {sorted(unmapped)} are missing from mapping")
    for path, prefix in mapping.items():
        if prefix not in by_prefix:
            raise ValueError(f"convert: torch module {prefix!r} (for {path!r}) is not in "
                             f"the state_dict; it has {sorted(by_prefix)}")
    return [(paths[path], _Module(path, prefix, by_prefix[prefix]))
            for path, prefix in mapping.items()]


def _pair(leaves: list[_Leaf], modules: list[tuple[str, dict]],
          mapping: Mapping[str, str] | None, ordered: bool) -> list[tuple[_Leaf, _Module]]:
    """Pairs each weighted jaxconv layer with its torch module: by ``mapping``, else by name,
    then the rest in order."""
    if mapping is not None:
        return _pair_by_mapping(leaves, modules, mapping)
    pairs, leaves, modules = _pair_by_name(leaves, modules)
    return pairs + _pair_by_order(leaves, modules, ordered)


def load_torch_state_dict(model: Layer, input_shape: Sequence[int],
                          state_dict: Mapping[str, Any] | str | os.PathLike,
                          mapping: Mapping[str, str] | None = None,
                          ) -> tuple[Any, Any]:
    """Builds jaxconv ``(params, state)`` for ``model`` from a PyTorch ``state_dict``.

    Args:
      model: the jaxconv network matching the PyTorch one.
      input_shape: jaxconv input shape ``(N, *spatial, C)`` (``N`` may be ``-1``).
      state_dict: ``{name: array}`` (NumPy arrays or torch tensors), or the path
        of a ``.safetensors``, ``.pt`` or ``.pth`` file (see ``read_state_dict``).
        ``num_batches_tracked`` entries are ignored.
      mapping: ``{jaxconv_path: torch_module_prefix}`` (e.g.
        ``{"conv0": "conv1", "dense0": "fc1"}``) for every jaxconv layer with
        params or state (``SqueezeExcite``'s are ``path/fc1`` and ``path/fc2``).

    Without ``mapping``, a layer whose path, with ``"."`` for ``"/"`` and
    without ``residual``'s ``body`` key, is the prefix of a module
    (``features/2/body/conv/0/0`` and ``features.2.conv.0.0``), or the key of a
    parameter a module holds itself (ConvNeXt's ``layer_scale``), is paired
    with it; the remaining layers and modules are paired in order (which a
    ``.safetensors`` file does not keep). A ``Dense`` whose input comes from
    ``Flatten`` of a feature map gets its columns permuted from PyTorch's
    ``(C, H, W)`` flatten order automatically.

    Returns:
      ``(params, state)`` with the structure, shapes and dtypes of ``model.init``.

    Raises:
      ValueError: on a missing/extra module or tensor, a shape mismatch (naming
        the tensor, the expected and the received shape), or a tensor that is
        complex or not numeric (naming the tensor).
    """
    input_shape, ordered = tuple(input_shape), True
    if isinstance(state_dict, (str, os.PathLike)):
        ordered = not os.fspath(state_dict).lower().endswith(".safetensors")
        state_dict = read_state_dict(state_dict)
    _, like_params, like_state = init_shapes(model, input_shape)
    pairs = _pair(_weighted_layers(model, input_shape), _torch_modules(state_dict), mapping,
                  ordered)
    params = jax.tree_util.tree_map(lambda a: None, like_params)
    state = jax.tree_util.tree_map(lambda a: None, like_state)
    for leaf, module in pairs:
        new_p, new_s = _convert_leaf(module, leaf)
        if new_p:
            _set(params, leaf.path, new_p)
        if new_s:
            _set(state, leaf.path, new_s)
    return params, state


def transfer(source: Any, target: Any) -> tuple[Any, list[str]]:
    """``target`` with every leaf that ``source`` has at the same path and shape taken from it.

    The way to start a model from another one's weights when its head differs
    (a pretrained backbone with a new classifier): the leaves whose path or
    shape differ keep ``target``'s values (its fresh initialisation).

    Args:
      source: a params (or state) pytree of nested dicts, e.g. converted weights.
      target: the pytree to fill, e.g. ``model.init(...)``'s params.

    Returns:
      ``(tree, kept)``: the filled tree (dtypes of ``target``) and the
      ``"/"``-joined paths of the leaves that kept ``target``'s values.
    """
    from_source = dict(named_leaves(source))
    leaves, treedef = jax.tree_util.tree_flatten(target)
    out, kept = [], []
    for (name, _), leaf in zip(named_leaves(target), leaves):
        found = from_source.get(name)
        if found is None or np.shape(found) != np.shape(leaf):
            kept.append(name)
            out.append(leaf)
        else:
            out.append(jnp.asarray(found, dtype=jnp.result_type(leaf)))
    return jax.tree_util.tree_unflatten(treedef, out), kept
