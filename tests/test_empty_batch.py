"""Every layer exported by jaxconv on an empty batch (N = 0), in inference and in training.

An empty batch must give an empty result of the declared shape, the same in
every layer: ``init`` accepts a batch of 0 and declares it, ``apply`` (jitted)
returns ``(0, ...)`` arrays, leaves the state as it was (BatchNorm in
training: nothing to learn from) and has finite, zero gradients.

``CASES`` has one entry per layer factory exported by ``jaxconv`` (CamelCase
functions, and the combinators); ``test_every_exported_layer_has_a_case``
fails when a new layer is exported without one. To add a layer, add a line.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv as jc
from jaxconv.layers.conv import StdConv
from jaxconv.layers.norm import InstanceNorm
from jaxconv.layers.reparam import SpectralNorm, WeightNorm

IMAGE = (5, 5, 4)  # (H, W, C) of one example
FEATURES = (6,)
COMBINATORS = ("serial", "parallel", "fan_out", "fan_in_sum", "fan_in_concat", "residual")

# name -> () -> (layer, per-example input shape); a tuple of shapes is a tuple of inputs.
CASES = {
    "AdaptiveAvgPool": lambda: (jc.AdaptiveAvgPool(2), IMAGE),
    "AdaptiveMaxPool": lambda: (jc.AdaptiveMaxPool((2, 3)), IMAGE),
    "AvgPool": lambda: (jc.AvgPool(2, padding=1, count_include_pad=False), IMAGE),
    "BatchNorm": lambda: (jc.BatchNorm(), IMAGE),
    "Conv": lambda: (jc.Conv(3, 3, stride=2), IMAGE),
    "ConvTranspose": lambda: (jc.ConvTranspose(3, 3, stride=2), IMAGE),
    "Dense": lambda: (jc.Dense(3), FEATURES),
    "Dropout": lambda: (jc.Dropout(0.5), FEATURES),
    "DropPath": lambda: (jc.DropPath(0.5), IMAGE),
    "Elu": lambda: (jc.Elu(), FEATURES),
    "Flatten": lambda: (jc.Flatten(), IMAGE),
    "Gelu": lambda: (jc.Gelu(), FEATURES),
    "GlobalAvgPool": lambda: (jc.GlobalAvgPool(), IMAGE),
    "GlobalMaxPool": lambda: (jc.GlobalMaxPool(keepdims=True), IMAGE),
    "GroupNorm": lambda: (jc.GroupNorm(2), IMAGE),
    "Hardsigmoid": lambda: (jc.Hardsigmoid(), FEATURES),
    "Hardswish": lambda: (jc.Hardswish(), FEATURES),
    "Identity": lambda: (jc.Identity(), FEATURES),
    "InstanceNorm": lambda: (InstanceNorm(affine=True, track_running_stats=True), IMAGE),
    "Lambda": lambda: (jc.Lambda(lambda x: x[:, ::2] * 2), IMAGE),
    "LayerNorm": lambda: (jc.LayerNorm((1, 2, 3)), IMAGE),
    "LayerScale": lambda: (jc.LayerScale(0.1), IMAGE),
    "LeakyRelu": lambda: (jc.LeakyRelu(0.2), FEATURES),
    "LogSoftmax": lambda: (jc.LogSoftmax(), FEATURES),
    "MaxPool": lambda: (jc.MaxPool(2, stride=1), IMAGE),
    "MinPool": lambda: (jc.MinPool(2), IMAGE),
    "MaxUnpool": lambda: (jc.serial(jc.MaxPool(2, return_indices=True), jc.MaxUnpool(2)), IMAGE),
    "Mish": lambda: (jc.Mish(), FEATURES),
    "PRelu": lambda: (jc.PRelu(IMAGE[-1]), IMAGE),
    "PixelShuffle": lambda: (jc.PixelShuffle(2), IMAGE),
    "PixelUnshuffle": lambda: (jc.PixelUnshuffle(2), (4, 6, 3)),
    "Relu": lambda: (jc.Relu(), FEATURES),
    "Relu6": lambda: (jc.Relu6(), FEATURES),
    "Reshape": lambda: (jc.Reshape((-1, 4)), IMAGE),
    "SeparableConv": lambda: (jc.SeparableConv(3, 3, depth_multiplier=2), IMAGE),
    "Sigmoid": lambda: (jc.Sigmoid(), FEATURES),
    "Silu": lambda: (jc.Silu(), FEATURES),
    "Softmax": lambda: (jc.Softmax(), FEATURES),
    "Softplus": lambda: (jc.Softplus(beta=2.0), FEATURES),
    "SpectralNorm": lambda: (SpectralNorm(jc.Conv(3, 3, stride=2)), IMAGE),
    "SqueezeExcite": lambda: (jc.SqueezeExcite(2), IMAGE),
    "StdConv": lambda: (StdConv(3, 3, stride=2), IMAGE),
    "Tanh": lambda: (jc.Tanh(), FEATURES),
    "Upsample": lambda: (jc.Upsample(scale_factor=2, method="bilinear"), IMAGE),
    "WeightNorm": lambda: (WeightNorm(jc.ConvTranspose(3, 3, stride=2)), IMAGE),
    "serial": lambda: (jc.serial(jc.Conv(3, 3), jc.BatchNorm(), jc.Relu(), jc.Dropout(0.5),
                                 jc.MaxPool(2), jc.Flatten(), jc.Dense(2)), IMAGE),
    "parallel": lambda: (jc.parallel(jc.Dense(2), jc.BatchNorm()), (FEATURES, IMAGE)),
    "fan_out": lambda: (jc.fan_out(2), FEATURES),
    "fan_in_sum": lambda: (jc.fan_in_sum(), (FEATURES, FEATURES)),
    "fan_in_concat": lambda: (jc.fan_in_concat(), (IMAGE, IMAGE[:-1] + (2,))),
    "residual": lambda: (jc.residual(jc.Conv(4, 3), jc.BatchNorm(), shortcut=jc.Conv(4, 1)),
                         IMAGE),
}

# name -> reason, for layers that fail on an empty batch in code this file's owner does not
# own; each is a strict xfail, so it fails again once fixed and must then be removed here.
KNOWN_FAILURES: dict[str, str] = {}


def exported_layers() -> set[str]:
    """Names in ``jaxconv.__all__`` of layer factories: CamelCase functions and the combinators."""
    return {name for name in jc.__all__
            if name in COMBINATORS
            or (name[0].isupper() and inspect.isfunction(getattr(jc, name)))}


def test_every_exported_layer_has_a_case():
    missing = sorted(exported_layers() - set(CASES))
    assert not missing, f"add an empty-batch case to CASES for {missing}"
    assert set(CASES) <= set(jc.__all__), sorted(set(CASES) - set(jc.__all__))


def _with_batch(spec, n):
    """``spec`` (a shape, or a tuple of shapes) with batch dimension ``n`` in front."""
    if spec and isinstance(spec[0], tuple):
        return tuple(_with_batch(s, n) for s in spec)
    return (n,) + tuple(spec)


def _zeros(spec):
    if spec and isinstance(spec[0], tuple):
        return tuple(_zeros(s) for s in spec)
    return jnp.zeros(spec, jnp.float32)


def _case_params():
    for name in sorted(CASES):
        marks = ()
        if name in KNOWN_FAILURES:
            marks = pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[name])
        for train in (False, True):
            yield pytest.param(name, train, marks=marks, id=f"{name}-{'train' if train else 'eval'}")


@pytest.mark.parametrize("name,train", list(_case_params()))
def test_empty_batch(name, train):
    layer, spec = CASES[name]()
    declared_unknown, params, state = layer.init(jax.random.PRNGKey(0), _with_batch(spec, -1))
    declared, _, _ = layer.init(jax.random.PRNGKey(0), _with_batch(spec, 0))
    assert jax.tree_util.tree_map(lambda d: d, declared) == jax.tree_util.tree_map(
        lambda d: 0 if d == -1 else d, declared_unknown, is_leaf=lambda d: isinstance(d, int))

    @jax.jit
    def run(params, state, x):
        def total(p):
            y, new_state = layer.apply(p, state, x, key=jax.random.PRNGKey(1), train=train)
            leaves = jax.tree_util.tree_leaves(y)
            return sum(jnp.sum(leaf.astype(jnp.float32)) for leaf in leaves), (y, new_state)
        return jax.grad(total, has_aux=True)(params)

    grads, (y, new_state) = run(params, state, _zeros(_with_batch(spec, 0)))
    shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), y)
    assert shapes == declared, (shapes, declared)
    for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(a, b)
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
    for g in jax.tree_util.tree_leaves(grads):
        np.testing.assert_array_equal(g, np.zeros_like(g))


def test_batch_norm_training_on_an_empty_batch_keeps_its_statistics():
    # Eagerly too, with running statistics away from their initial values.
    layer = jc.BatchNorm(dtype=jnp.bfloat16)
    _, params, _ = layer.init(jax.random.PRNGKey(0), (-1, 3))
    state = {"mean": jnp.asarray([1.0, -2.0, 3.0]), "var": jnp.asarray([0.5, 2.0, 4.0])}
    y, new_state = layer.apply(params, state, jnp.zeros((0, 3)), train=True)
    assert y.shape == (0, 3) and y.dtype == jnp.bfloat16
    assert new_state is state
    # A batch of one value per channel is still refused in training (no variance to take).
    with pytest.raises(ValueError, match="BatchNorm: training needs more than 1 value per channel"):
        layer.apply(params, state, jnp.zeros((1, 3)), train=True)
