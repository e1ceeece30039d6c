"""Pooling layers: the layer contract, agreement with the ops, and clear errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxconv as jc
from jaxconv import ops
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
]


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
