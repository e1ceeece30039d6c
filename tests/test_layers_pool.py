"""Pooling layers: the layer contract, agreement with the ops, and clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv as jc
from jaxconv import ops
from jaxconv.layers.pool import MaxUnpool
from jaxconv.ops.pool import max_unpool
from tests.contract import check_layer_contract, random_input

LAYERS = [
    (jc.MaxPool(2), (-1, 6, 7, 3), lambda x: ops.max_pool(x, 2)),
    (jc.MinPool(3, 1, "SAME"), (-1, 5, 3), lambda x: ops.min_pool(x, 3, 1, "SAME")),
    (jc.AvgPool((2, 3), (1, 2), 1, count_include_pad=False), (-1, 5, 6, 2),
     lambda x: ops.avg_pool(x, (2, 3), (1, 2), 1, count_include_pad=False)),
    (jc.GlobalAvgPool(), (-1, 4, 5, 3), ops.global_avg_pool),
    (jc.GlobalMaxPool(keepdims=True), (-1, 3, 4, 2, 2),
     lambda x: ops.global_max_pool(x, keepdims=True)),
    (jc.AdaptiveAvgPool((3, 2)), (-1, 7, 5, 2), lambda x: ops.adaptive_avg_pool(x, (3, 2))),
    (jc.AdaptiveMaxPool(2), (-1, 5, 3), lambda x: ops.adaptive_max_pool(x, 2)),
    (jc.MaxPool(3, 2, 1, dilation=(2, 1), ceil_mode=True), (-1, 9, 6, 2),
     lambda x: ops.max_pool(x, 3, 2, 1, dilation=(2, 1), ceil_mode=True)),
    (jc.AvgPool(2, 2, 1, False, ceil_mode=True, divisor_override=3), (-1, 5, 3),
     lambda x: ops.avg_pool(x, 2, 2, 1, False, ceil_mode=True, divisor_override=3)),
]

# Every new option and 1-D to 3-D: the declared shape (with a -1 batch and a concrete
# one) is the produced shape, traced without compiling (values: tests/test_ops_pool_torch.py).
OPTION_LAYERS = [
    (jc.MaxPool(3, 2, 1, ceil_mode=True), (-1, 6, 7, 2)),
    (jc.MaxPool((2, 3, 2), (1, 2, 3), 1, dilation=(2, 1, 2), ceil_mode=True), (-1, 5, 7, 8, 2)),
    (jc.MaxPool(3, 2, 1, return_indices=True), (-1, 9, 2)),
    (jc.MinPool((2, 3), 1, (1, 1), dilation=2, ceil_mode=True), (-1, 6, 7, 2)),
    (jc.MinPool(2, 2, 1, ceil_mode=True, return_indices=True), (-1, 5, 4, 2)),
    (jc.AvgPool(3, 2, 1, ceil_mode=True), (-1, 6, 5, 2)),
    (jc.AvgPool(3, 2, 1, False, ceil_mode=True), (-1, 5, 6, 7, 1)),
    (jc.AvgPool(2, 3, 1, ceil_mode=True, divisor_override=2), (-1, 8, 1)),
    (jc.AdaptiveMaxPool((2, 3), return_indices=True), (-1, 5, 7, 2)),
    (jc.serial(jc.MaxPool(3, 2, 1, ceil_mode=True, return_indices=True), MaxUnpool(3, 2, 1)),
     (-1, 6, 7, 2)),
    (jc.serial(jc.MaxPool(2, return_indices=True), MaxUnpool(2, output_size=(5, 6, 7))),
     (-1, 5, 6, 7, 2)),
]


@pytest.mark.parametrize("layer,shape", OPTION_LAYERS)
def test_new_options_declare_the_shape_they_produce(layer, shape):
    declared, params, state = layer.init(jax.random.PRNGKey(0), shape)
    concrete = layer.init(jax.random.PRNGKey(0), (2, *shape[1:]))[0]
    x = jax.ShapeDtypeStruct((2, *shape[1:]), jnp.float32)
    produced = jax.eval_shape(lambda x: layer.apply(params, state, x)[0], x)
    if isinstance(produced, tuple):  # (values, indices)
        assert [p.shape for p in produced] == list(concrete) and produced[1].dtype == jnp.int32
        declared, concrete = declared[0], concrete[0]
    else:
        assert produced.shape == concrete
    assert declared == (-1, *concrete[1:])


@pytest.mark.parametrize("layer,shape,op", LAYERS, ids=[layer.kind for layer, _, _ in LAYERS])
def test_contract_and_matches_op(layer, shape, op):
    params, state, x, y = check_layer_contract(layer, shape)
    assert params == {} and state == {}
    np.testing.assert_allclose(y, op(x), rtol=1e-6, atol=1e-6)


def test_declared_shapes_without_compute():
    assert jc.MaxPool(2).init(None, (-1, 32, 32, 12))[0] == (-1, 16, 16, 12)
    assert jc.AvgPool(3, 2, "SAME").init(None, (8, 9, 3))[0] == (8, 5, 3)
    assert jc.AdaptiveMaxPool((None, 1)).init(None, (-1, 7, 5, 4))[0] == (-1, 7, 1, 4)
    assert jc.GlobalAvgPool().init(None, (-1, 4, 4, 4, 16))[0] == (-1, 16)
    # Ceil mode adds the window that starts inside the input, not one starting in the padding.
    assert jc.MaxPool(3, 2, 1, ceil_mode=True).init(None, (-1, 6, 7, 1))[0] == (-1, 4, 4, 1)
    assert jc.AvgPool(2, 2, 1, ceil_mode=True).init(None, (-1, 5, 1))[0] == (-1, 3, 1)
    assert jc.MaxPool(2, 1, dilation=3).init(None, (-1, 7, 1))[0] == (-1, 4, 1)
    pair = jc.MaxPool(2, return_indices=True).init(None, (-1, 7, 9, 3))[0]
    assert pair == ((-1, 3, 4, 3), (-1, 3, 4, 3))
    assert MaxUnpool(2).init(None, pair)[0] == (-1, 6, 8, 3)
    assert MaxUnpool(2, output_size=(7, 9)).init(None, pair)[0] == (-1, 7, 9, 3)
    pair = jc.MaxPool(3, 2, 1, return_indices=True).init(None, (-1, 8, 10, 3))[0]
    assert MaxUnpool(3, 2, 1).init(None, pair)[0] == (-1, 7, 9, 3)
    assert MaxUnpool(3, 2, 1, output_size=(-1, 8, 10, 3)).init(None, pair)[0] == (-1, 8, 10, 3)


def test_in_serial():
    model = jc.serial(jc.MaxPool(2), jc.AdaptiveAvgPool(1), jc.Flatten())
    out, params, state = model.init(jax.random.PRNGKey(0), (-1, 8, 8, 3))
    assert out == (-1, 3)
    x = random_input((2, 8, 8, 3))
    y, _ = model.apply(params, state, x)
    np.testing.assert_allclose(y, ops.global_avg_pool(ops.max_pool(x, 2)), rtol=1e-6)


@pytest.mark.parametrize("make,words", [
    (lambda: jc.MaxPool(0), "MaxPool: window must be an int or a sequence of ints >= 1, got 0"),
    (lambda: jc.AvgPool(2, stride=(1, 0)), "AvgPool: stride must be an int or a sequence of ints >= 1, got (1, 0)"),
    (lambda: jc.MinPool(2, padding="full"), "MinPool: unknown padding 'full'"),
    (lambda: jc.AdaptiveAvgPool(0), "AdaptiveAvgPool: output_size must be positive ints or None"),
    (lambda: jc.AdaptiveMaxPool((3, -2)), "got (3, -2)"),
    (lambda: jc.AdaptiveMaxPool(3, return_indices=1), "AdaptiveMaxPool: return_indices must be"),
    (lambda: jc.MaxPool(2, dilation=(1, 0)), "MaxPool: dilation must be an int or a sequence of ints >= 1"),
    (lambda: jc.MinPool(2, ceil_mode="no"), "MinPool: ceil_mode must be True or False, got 'no'"),
    (lambda: jc.MaxPool(2, return_indices=None), "MaxPool: return_indices must be True or False"),
    (lambda: jc.AvgPool(2, divisor_override=-2), "AvgPool: divisor_override must be an int >= 1"),
    (lambda: MaxUnpool(2, padding="SAME"), "MaxUnpool: padding must be an int"),
    (lambda: MaxUnpool((2, 0)), "MaxUnpool: window must be an int or a sequence of ints >= 1"),
    (lambda: MaxUnpool(2, output_size="big"), "MaxUnpool: output_size must be an int or a sequence"),
])
def test_factory_errors(make, words):
    with pytest.raises(ValueError) as err:
        make()
    assert words in str(err.value)


@pytest.mark.parametrize("layer,shape,words", [
    (jc.MaxPool(2), (-1, 8), "MaxPool: expected input of rank 3, 4 or 5 (N, *spatial, C), got shape (-1, 8)"),
    (jc.MaxPool(5), (-1, 4, 6, 1), "MaxPool: window (5, 5) is larger than the padded input (4, 6)"),
    (jc.AvgPool((2, 2, 2)), (-1, 4, 6, 1), "AvgPool: window must be an int or a sequence of 2"),
    (jc.GlobalMaxPool(), (-1, 10), "GlobalMaxPool: expected input of rank 3, 4 or 5"),
    (jc.AdaptiveAvgPool((2, 2)), (-1, 5, 5, 5, 1), "AdaptiveAvgPool: output_size must be an int "
                                                   "or a sequence of 3 sizes"),
    (jc.MaxPool(2, 1, 2, dilation=3), (-1, 1, 1), "MaxPool: with dilation (3,) some windows read "
                                                  "only padding"),
    (MaxUnpool(2), (-1, 4, 4, 1), "MaxUnpool: expected a (values, indices) pair of shapes, as "
                                  "MaxPool(..., return_indices=True) gives"),
    (MaxUnpool(2), ((-1, 4, 4, 1), (-1, 4, 3, 1)), "MaxUnpool: indices must have the shape of the "
                                                   "values (-1, 4, 4, 1), got (-1, 4, 3, 1)"),
    (MaxUnpool(2, output_size=(9, 10)), ((-1, 4, 4, 1),) * 2,
     "MaxUnpool: output_size (9, 10) is out of range along spatial dimension 1: it must be > 6 and < 10"),
    (MaxUnpool(2), ((-1, 4, 1),) * 2 + ((-1, 4, 1),), "expected a (values, indices) pair"),
])
def test_init_errors(layer, shape, words):
    with pytest.raises(ValueError) as err:
        layer.init(jax.random.PRNGKey(0), shape)
    assert words in str(err.value)


def test_apply_wrong_rank_names_layer():
    _, p, s = jc.AdaptiveMaxPool(2).init(None, (-1, 4, 4, 1))
    with pytest.raises(ValueError, match="AdaptiveMaxPool: expected input of rank 3, 4 or 5"):
        jc.AdaptiveMaxPool(2).apply(p, s, np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"MaxPool: window \(5, 5\) is larger"):
        jc.MaxPool(5).apply({}, {}, np.zeros((1, 4, 4, 1)))


def test_jitted_gradient_through_every_pool():
    # Reverse mode under jit (a training step): reduce_window needs concrete init values.
    model = jc.serial(jc.MaxPool(2, 1, "SAME"), jc.MinPool(2, 1), jc.AvgPool(2, 1, 1),
                      jc.AdaptiveMaxPool(3), jc.AdaptiveAvgPool(2), jc.GlobalMaxPool())
    _, params, state = model.init(None, (-1, 6, 6, 2))
    x = random_input((2, 6, 6, 2))
    g = jax.jit(jax.grad(lambda x: model.apply(params, state, x)[0].sum()))(x)
    assert g.shape == x.shape and float(g.sum()) == pytest.approx(2 * 2)


# --- return_indices and MaxUnpool. ---


@pytest.mark.parametrize("layer,shape,op", [
    (jc.MaxPool(3, 2, 1, ceil_mode=True, return_indices=True), (-1, 6, 7, 2),
     lambda x: ops.max_pool(x, 3, 2, 1, ceil_mode=True, return_indices=True)),
    (jc.AdaptiveMaxPool((2, 3, 2), return_indices=True), (-1, 5, 4, 5, 2),
     lambda x: ops.adaptive_max_pool(x, (2, 3, 2), return_indices=True)),
], ids=["max", "adaptive"])
def test_return_indices_layers_output_the_op_pair_under_jit_vmap_grad(layer, shape, op):
    _, params, state = layer.init(None, shape)
    x = random_input((2, *shape[1:]))

    @jax.jit
    def run(x):
        pair = layer.apply(params, state, x)[0]
        batched = jax.vmap(lambda x: layer.apply(params, state, x)[0])(x[None])
        grad = jax.grad(lambda x: jnp.sum(jnp.sin(layer.apply(params, state, x)[0][0])))(x)
        return pair, batched, grad

    (values, indices), (vm_values, vm_indices), grad = run(x)
    want_values, want_indices = op(x)
    for got in ((values, indices), (vm_values[0], vm_indices[0])):
        np.testing.assert_array_equal(got[0], want_values)
        np.testing.assert_array_equal(got[1], want_indices)
    np.testing.assert_allclose(grad, jax.grad(lambda x: jnp.sum(jnp.sin(op(x)[0])))(x))


def segnet_block():
    """Pool with indices; work on the values while ``parallel`` carries the indices; unpool."""
    return jc.serial(jc.MaxPool(3, 2, 1, ceil_mode=True, return_indices=True),
                     jc.parallel(jc.serial(jc.LayerScale(0.5), jc.Relu()), jc.Identity()),
                     MaxUnpool(3, 2, 1, output_size=(7, 6)), jc.Relu())


def test_max_unpool_in_serial_keeps_the_layer_contract():
    params, state, x, y = check_layer_contract(segnet_block(), (-1, 7, 6, 3))
    values, indices = ops.max_pool(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    want = max_unpool(jax.nn.relu(values * 0.5), indices, 3, 2, 1, (7, 6))
    np.testing.assert_allclose(y, jax.nn.relu(want), rtol=1e-6)
    # Every positive maximum back in its place (scaled by the LayerScale), zeros elsewhere.
    kept = np.asarray(y) != 0
    np.testing.assert_allclose(np.asarray(y)[kept], 0.5 * np.asarray(x)[kept], rtol=1e-6)
    assert 0 < kept.sum() <= values.size


def test_max_unpool_on_an_empty_batch():
    model = segnet_block()
    out, params, state = model.init(jax.random.PRNGKey(0), (0, 7, 6, 3))
    assert out == (0, 7, 6, 3)
    y, _ = jax.jit(lambda x: model.apply(params, state, x))(jnp.zeros((0, 7, 6, 3)))
    assert y.shape == (0, 7, 6, 3)


def test_max_unpool_apply_errors_name_the_layer():
    layer = MaxUnpool(2)
    with pytest.raises(ValueError, match=r"MaxUnpool: expected a \(values, indices\) pair of arrays"):
        layer.apply({}, {}, jnp.zeros((1, 2, 2, 1)))
    with pytest.raises(ValueError, match="MaxUnpool: indices must have the shape of the values"):
        layer.apply({}, {}, (jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 1, 1), jnp.int32)))
    with pytest.raises(TypeError, match="MaxUnpool: indices must be integers"):
        layer.apply({}, {}, (jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 2, 1))))
