"""Dropout and DropPath: mask statistics, inverted scaling, shared masks, identity in
inference, key handling, dtypes and errors, against NumPy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv as jc
from jaxconv.layers.dropout import Dropout, DropPath
from tests.contract import check_layer_contract


def assert_kept_fraction(kept, rate):
    """The kept fraction of ``kept.size`` Bernoulli(1 - rate) draws is within 5 standard deviations."""
    sd = np.sqrt(rate * (1 - rate) / kept.size)
    assert abs(kept.mean() - (1 - rate)) < 5 * sd, (kept.mean(), 1 - rate, sd)


@pytest.mark.parametrize("rate", [0.2, 0.7])
def test_keep_rate_and_inverse_scaling(rate):
    layer = Dropout(rate)
    x = jnp.ones((200, 50, 10))  # 100,000 elements
    y, _ = layer.apply({}, {}, x, key=jax.random.PRNGKey(3), train=True)
    y = np.asarray(y, np.float64)
    kept = y != 0
    assert_kept_fraction(kept, rate)
    np.testing.assert_allclose(y[kept], 1 / (1 - rate), rtol=1e-6)  # inverted scaling
    sd = np.sqrt(rate * (1 - rate) / y.size)
    assert abs(y.mean() - 1.0) < 5 * sd / (1 - rate)  # unbiased in expectation


def test_mask_is_one_bernoulli_draw_per_element():
    """The mask is ``bernoulli(key, 1 - rate, x.shape)``: the same draw as ever for a given key."""
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 7, 5))
    key = jax.random.PRNGKey(9)
    y, _ = Dropout(0.4).apply({}, {}, x, key=key, train=True)
    mask = np.asarray(jax.random.bernoulli(key, 0.6, x.shape))
    np.testing.assert_allclose(y, np.where(mask, np.asarray(x) / 0.6, 0), rtol=1e-6)


@pytest.mark.parametrize("dims, same", [((1, 2), (-3, -2)), ((1,), (-3,)), ((0, 3), (3, 0))])
def test_broadcast_dims_share_one_mask(dims, same):
    """One mask value per index of the other axes (``(1, 2)``: per (example, channel))."""
    rate, shape = 0.3, (40, 6, 5, 8)
    x = jax.random.uniform(jax.random.PRNGKey(0), shape, minval=1, maxval=2)
    key = jax.random.PRNGKey(4)
    y, _ = Dropout(rate, dims).apply({}, {}, x, key=key, train=True)
    ratio = np.asarray(y, np.float64) / np.asarray(x, np.float64)
    first = ratio[tuple(slice(0, 1) if a in dims else slice(None) for a in range(4))]
    np.testing.assert_allclose(ratio, np.broadcast_to(first, shape), rtol=1e-6)  # shared
    kept = first != 0
    assert_kept_fraction(kept, rate)
    np.testing.assert_allclose(first[kept], 1 / (1 - rate), rtol=1e-6)
    y_same, _ = Dropout(rate, same).apply({}, {}, x, key=key, train=True)
    np.testing.assert_array_equal(y_same, y)  # negative or reordered axes: same mask


def test_drop_path_drops_whole_examples():
    """Each example is kept whole, scaled by 1 / (1 - rate), with probability 1 - rate."""
    rate, shape = 0.3, (4000, 3, 2, 2)
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    key = jax.random.PRNGKey(5)
    y, _ = DropPath(rate).apply({}, {}, x, key=key, train=True)
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    kept = np.abs(y).reshape(len(y), -1).max(1) != 0
    assert_kept_fraction(kept, rate)
    # torchvision.ops.stochastic_depth(x, rate, "row", True): x * mask[:, None...] / (1 - rate)
    np.testing.assert_allclose(y, x * kept[:, None, None, None] / (1 - rate), rtol=1e-6)
    mask = np.asarray(jax.random.bernoulli(key, 1 - rate, (len(x), 1, 1, 1)))
    np.testing.assert_array_equal(kept, mask.ravel())


@pytest.mark.parametrize("layer", [Dropout(0.5), Dropout(0.5, (1,)), DropPath(0.5)],
                         ids=["dropout", "dropout-bcast", "drop_path"])
def test_identity_in_inference_and_rate_zero(layer):
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8))
    y, _ = layer.apply({}, {}, x)  # train=False, no key needed
    assert y is x
    y, _ = Dropout(0.0).apply({}, {}, x, train=True)
    assert y is x
    y, _ = DropPath(0.0).apply({}, {}, x, train=True)
    assert y is x


def test_keys_give_independent_masks_and_serial_splits_the_key():
    x = jnp.ones((1000,))
    k = jax.random.PRNGKey(0)
    a, _ = Dropout(0.5).apply({}, {}, x, key=k, train=True)
    b, _ = Dropout(0.5).apply({}, {}, x, key=jax.random.PRNGKey(1), train=True)
    a2, _ = Dropout(0.5).apply({}, {}, x, key=k, train=True)
    np.testing.assert_array_equal(a, a2)
    assert not np.array_equal(a, b)
    two = jc.serial(jc.fan_out(2), jc.parallel(Dropout(0.5), DropPath(0.5)))
    _, p, s = two.init(k, (-1, 1000))
    (ya, yb), _ = two.apply(p, s, jnp.ones((64, 1000)), key=k, train=True)
    assert not np.array_equal(ya[:, 0] != 0, yb[:, 0] != 0)


@pytest.mark.parametrize("layer", [Dropout(0.25), DropPath(0.25)], ids=["dropout", "drop_path"])
def test_gradient_is_masked_and_scaled(layer):
    x = jnp.arange(1.0, 101.0).reshape(50, 2)
    k = jax.random.PRNGKey(5)
    f = lambda v: layer.apply({}, {}, v, key=k, train=True)[0].sum()  # noqa: E731
    g = jax.jit(jax.grad(f))(x)
    y, _ = layer.apply({}, {}, x, key=k, train=True)
    np.testing.assert_allclose(g, np.where(np.asarray(y) != 0, 1 / 0.75, 0.0), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_input_keeps_its_dtype(dtype):
    x = jnp.ones((8, 16), dtype)
    for layer in (Dropout(0.5), DropPath(0.5)):
        y, _ = layer.apply({}, {}, x, key=jax.random.PRNGKey(0), train=True)
        assert y.dtype == dtype
        assert set(np.unique(np.asarray(y, np.float32))) <= {0.0, 2.0}


@pytest.mark.parametrize("layer, train", [
    (Dropout(0.3), True), (Dropout(0.3), False), (Dropout(0.3, (1,)), True),
    (DropPath(0.3), True), (DropPath(0.3), False)])
def test_contract(layer, train):
    check_layer_contract(layer, (-1, 4, 3), train=train)


@pytest.mark.parametrize("call, error, words", [
    (lambda: Dropout(0.5).apply({}, {}, jnp.ones(3), train=True), ValueError,
     "Dropout: train=True needs a PRNG key; call apply(params, state, x, key="),
    (lambda: DropPath(0.5).apply({}, {}, jnp.ones((2, 3)), train=True), ValueError,
     "DropPath: train=True needs a PRNG key"),
    (lambda: Dropout(0.5).apply({}, {}, jnp.ones(3, jnp.int32), key=jax.random.PRNGKey(0),
                                train=True), TypeError,
     "Dropout: expected a floating-point input, got dtype int32"),
    (lambda: Dropout(0.5).apply({}, {}, jnp.ones(3, bool)), TypeError,
     "Dropout: expected a floating-point input, got dtype bool"),
    (lambda: DropPath(0.5).apply({}, {}, jnp.ones((2, 3), jnp.uint8)), TypeError,
     "DropPath: expected a floating-point input, got dtype uint8"),
    (lambda: Dropout(1.0), ValueError, "Dropout: rate must be a number >= 0 and < 1, got 1.0"),
    (lambda: Dropout(-0.1), ValueError, "Dropout: rate must be a number >= 0 and < 1, got -0.1"),
    (lambda: Dropout("0.5"), ValueError, "Dropout: rate must be a number >= 0 and < 1, got '0.5'"),
    (lambda: Dropout(True), ValueError, "Dropout: rate must be a number >= 0 and < 1, got True"),
    (lambda: DropPath(1), ValueError, "DropPath: rate must be a number >= 0 and < 1, got 1"),
    (lambda: Dropout(0.5, 1.5), ValueError,
     "Dropout: broadcast_dims must be an int or a sequence of ints, got 1.5"),
    (lambda: Dropout(0.5, (1, 3)).init(None, (-1, 4, 5)), ValueError,
     "Dropout: broadcast_dims (1, 3) out of range for an input of rank 3"),
    (lambda: Dropout(0.5, (1, -2)).init(None, (-1, 4, 5)), ValueError,
     "Dropout: broadcast_dims (1, -2) name the same axis twice for an input of rank 3"),
    (lambda: Dropout(0.5, (2,)).apply({}, {}, jnp.ones((2, 3))), ValueError,
     "Dropout: broadcast_dims (2,) out of range for an input of rank 2"),
    (lambda: DropPath(0.5).init(None, ()), ValueError,
     "DropPath: expected input of rank >= 1 (batch, ...), got shape () (rank 0)"),
    (lambda: Dropout(0.5).init(None, 4), TypeError, "Dropout: input_shape must be a tuple"),
])
def test_errors(call, error, words):
    with pytest.raises(error) as err:
        call()
    assert words in str(err.value)
