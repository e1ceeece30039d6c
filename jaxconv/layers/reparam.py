"""Weight reparametrisations that wrap a layer: ``SpectralNorm`` and ``WeightNorm``.

Each wraps a layer with a ``"kernel"`` param (``Conv``, ``ConvTranspose``,
``Dense``, ``StdConv``), computes the kernel it should use from its own
params (and state), and applies the wrapped layer through its own ``apply``
with that kernel substituted, via :func:`jaxconv.core.apply_child` under the
name ``"layer"`` (``jc.intermediates`` lists the wrapped layer's output at
``".../layer"``). The other params of the wrapped layer (``"bias"``) are kept
under their names, so a checkpoint reads like the wrapped layer's.

Axes: ``dim`` is an axis of the jaxconv kernel. A PyTorch weight has the
axes of a jaxconv kernel in the order ``(-1, -2, 0, 1, ...)``: ``Conv``'s
``(F, C // groups, *k)`` for ``(*k, C // groups, F)``, ``ConvTranspose``'s
``(C, F // groups, *k)`` for ``(*k, F // groups, C)``, ``Linear``'s
``(F, C)`` for ``Dense``'s ``(C, F)``. PyTorch's ``dim=0`` is therefore
``dim=-1`` here, its ``dim=1`` is ``dim=-2`` and its ``dim=2 + i`` is ``dim=i``
(spatial axis ``i``); the weights port by that axis permutation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxconv import validate
from jaxconv.core import Layer, apply_child

_HIGHEST = lax.Precision.HIGHEST


def _check_layer(layer: Any, context: str) -> Layer:
    if not isinstance(layer, Layer):
        raise TypeError(f"{context}: expected a Layer to wrap (e.g. Conv(16, 3)), "
                        f"got {type(layer).__name__}: {layer!r:.80}")
    return layer


def _check_dim(dim: Any, context: str, allow_none: bool) -> None:
    if not (validate.is_int(dim) or (allow_none and dim is None)):
        expected = "an int axis of the kernel" + (" or None" if allow_none else "")
        raise ValueError(f"{context}: dim must be {expected}, got {dim!r}")


def _init_kernel(layer: Layer, key: Any, input_shape: Any, dim: int | None, context: str):
    """The wrapped layer's ``init``, its ``"kernel"`` checked (rank >= 2, ``dim`` one of its axes)."""
    out, params, state = layer.init(key, input_shape)
    kernel = params.get("kernel") if isinstance(params, dict) else None
    if not hasattr(kernel, "ndim") or kernel.ndim < 2:
        raise ValueError(f"{context}: the wrapped layer (kind {layer.kind!r}) must have a "
                         f"'kernel' param of rank >= 2 (Conv, ConvTranspose, Dense), got params "
                         f"{jax.tree_util.tree_map(jnp.shape, params)}")
    if dim is not None and not -kernel.ndim <= dim < kernel.ndim:
        raise ValueError(f"{context}: dim must be an axis of the rank-{kernel.ndim} kernel "
                         f"{tuple(kernel.shape)}, got {dim}")
    return out, params, state


def _as_matrix(kernel: Any, dim: int) -> Any:
    """``kernel`` as PyTorch's ``(kernel.shape[dim], rest)`` matrix of its weight layout.

    Axis ``dim`` first, then the others in the order of PyTorch's weight
    (``-1, -2, 0, 1, ...`` of the jaxconv kernel), flattened.
    """
    n = kernel.ndim
    dim = dim % n
    torch_order = (n - 1, n - 2, *range(n - 2))
    perm = (dim, *(a for a in torch_order if a != dim))
    return jnp.transpose(kernel, perm).reshape(kernel.shape[dim], -1)


def _l2_normalize(x: Any, epsilon: float) -> Any:
    """``x / max(||x||, epsilon)`` (PyTorch's ``F.normalize``)."""
    return x / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(x))), epsilon)


def _power_iteration(matrix: Any, u: Any, v: Any, steps: int, epsilon: float) -> tuple[Any, Any]:
    """``steps`` rounds of ``u <- normalize(W v)``, ``v <- normalize(W^T u)``."""
    for _ in range(steps):
        u = _l2_normalize(jnp.matmul(matrix, v, precision=_HIGHEST), epsilon)
        v = _l2_normalize(jnp.matmul(u, matrix, precision=_HIGHEST), epsilon)
    return u, v


def SpectralNorm(
    layer: Layer,
    *,
    n_power_iterations: int = 1,
    epsilon: float = 1e-12,
    dim: int | None = None,
) -> Layer:
    """Spectral normalisation of a layer's kernel, as ``torch.nn.utils.parametrizations.spectral_norm``.

    The wrapped layer convolves (or multiplies) with ``kernel / sigma``, where
    ``sigma = u^T W v`` estimates the largest singular value of ``W``, the
    kernel as PyTorch's matrix: axis ``dim`` as rows, the other axes flattened
    in the order of PyTorch's weight layout (so ``u`` and ``v`` are PyTorch's
    ``_u`` and ``_v`` buffers, entry for entry). ``u`` and ``v`` live in the
    state; with ``train=True`` they are first refined by ``n_power_iterations``
    rounds of the power method (``u <- W v / ||W v||``, ``v <- W^T u / ||W^T u||``,
    norms at least ``epsilon``) and stored; with ``train=False`` the stored ones
    are used and the state is returned unchanged. Gradients flow through
    ``sigma`` with ``u`` and ``v`` held constant, as in PyTorch. An empty batch
    leaves the state unchanged.

    At ``init`` the wrapped layer is initialised with the same key (its params
    are those it would have alone), ``u`` and ``v`` are drawn from a standard
    normal, normalised and refined by 15 power iterations, as PyTorch does.

    Args:
      layer: the layer to wrap; it must have a ``"kernel"`` param (``Conv``,
        ``ConvTranspose``, ``Dense``, ``StdConv``) and no state.
      n_power_iterations: power-method rounds per training call, ``>= 1``.
      epsilon: the smallest norm the power method divides by, ``> 0``.
      dim: the kernel axis of the output channels (see the module docstring):
        ``None`` picks PyTorch's default, ``-2`` for ``ConvTranspose`` (PyTorch's
        ``dim=1``) and ``-1`` otherwise (PyTorch's ``dim=0``).

    Shapes: those of ``layer``. Params: those of ``layer`` (``"kernel"`` stored
    unnormalised, PyTorch's ``parametrizations.weight.original``); state
    ``{"u": (kernel.shape[dim],), "v": (kernel.size // kernel.shape[dim],)}`` in
    the kernel's dtype.
    """
    name = "SpectralNorm"
    layer = _check_layer(layer, name)
    validate.integer(n_power_iterations, "n_power_iterations", context=name, minimum=1)
    epsilon = validate.number(epsilon, "epsilon", context=name, minimum=0, exclusive_minimum=True)
    _check_dim(dim, name, allow_none=True)
    axis = (-2 if layer.kind == "conv_transpose" else -1) if dim is None else dim

    def init(key, input_shape):
        out, params, state = _init_kernel(layer, key, input_shape, axis, name)
        if jax.tree_util.tree_leaves(state):
            raise ValueError(f"{name}: the wrapped layer must have no state, got state "
                             f"{jax.tree_util.tree_map(jnp.shape, state)}")
        matrix = _as_matrix(params["kernel"], axis)
        k_u, k_v = jax.random.split(jax.random.fold_in(key, 1))
        u = _l2_normalize(jax.random.normal(k_u, matrix.shape[:1], matrix.dtype), epsilon)
        v = _l2_normalize(jax.random.normal(k_v, matrix.shape[1:], matrix.dtype), epsilon)
        u, v = _power_iteration(matrix, u, v, 15, epsilon)
        return out, params, {"u": u, "v": v}

    def apply(params, state, x, *, key=None, train=False):
        kernel = params["kernel"]
        matrix = _as_matrix(kernel, axis)
        u, v = state["u"], state["v"]
        new_state = state
        if train and jnp.size(x) > 0:
            u, v = _power_iteration(lax.stop_gradient(matrix), u, v, n_power_iterations, epsilon)
            new_state = {"u": u.astype(state["u"].dtype), "v": v.astype(state["v"].dtype)}
        u, v = lax.stop_gradient(u), lax.stop_gradient(v)
        sigma = jnp.matmul(u, jnp.matmul(matrix, v, precision=_HIGHEST), precision=_HIGHEST)
        normalized = {**params, "kernel": kernel / sigma.astype(kernel.dtype)}
        y, _ = apply_child("layer", layer, normalized, {}, x, key=key, train=train)
        return y, new_state

    return Layer(init, apply, "spectral_norm")


def _norm_except(v: Any, dim: int | None) -> Any:
    """The 2-norm of ``v`` over every axis but ``dim`` (all axes for ``None``), dims kept."""
    axes = tuple(a for a in range(v.ndim) if dim is None or a != dim % v.ndim)
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))


def WeightNorm(layer: Layer, *, dim: int | None = -1) -> Layer:
    """Weight normalisation of a layer's kernel, as ``torch.nn.utils.parametrizations.weight_norm``.

    The kernel is reparametrised by a magnitude ``g`` and a direction ``v``::

        kernel = v * (g / ||v||)

    with the 2-norm over every axis of ``v`` but ``dim`` (over all axes for
    ``dim=None``), and the wrapped layer applied with that kernel. ``init``
    initialises the wrapped layer (same key) and sets ``v`` to its kernel and
    ``g`` to its norm, so the initial kernel is the wrapped layer's.

    Args:
      layer: the layer to wrap; it must have a ``"kernel"`` param (``Conv``,
        ``ConvTranspose``, ``Dense``, ``StdConv``).
      dim: the kernel axis that keeps one norm per entry; ``-1`` (the default)
        is the output channels of ``Conv`` and ``Dense`` (PyTorch's default
        ``dim=0``; for ``ConvTranspose`` both are its input channels, see the
        module docstring); ``None``: one norm for the whole kernel (PyTorch's
        ``dim=None``). Note that PyTorch's ``dim=-1`` is not jaxconv's.

    Shapes: those of ``layer``. Params: ``{"g", "v"}`` plus the wrapped
    layer's params but ``"kernel"`` (``"bias"``); ``v`` has the kernel's shape,
    ``g`` the kernel's rank with size 1 on every axis but ``dim`` (PyTorch's
    ``original1`` and ``original0``, ported by the kernel's axis permutation).
    State: the wrapped layer's.
    """
    name = "WeightNorm"
    layer = _check_layer(layer, name)
    _check_dim(dim, name, allow_none=True)

    def init(key, input_shape):
        out, params, state = _init_kernel(layer, key, input_shape, dim, name)
        rest = {k: p for k, p in params.items() if k != "kernel"}
        kernel = params["kernel"]
        return out, {"g": _norm_except(kernel, dim), "v": kernel, **rest}, state

    def apply(params, state, x, *, key=None, train=False):
        v = params["v"]
        kernel = v * (params["g"] / _norm_except(v, dim))
        inner = {"kernel": kernel, **{k: p for k, p in params.items() if k not in ("g", "v")}}
        return apply_child("layer", layer, inner, state, x, key=key, train=train)

    return Layer(init, apply, "weight_norm")
