"""Dropout: keep-rate statistics, inverted scaling, identity in inference, key handling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv as jc
from tests.contract import check_layer_contract


@pytest.mark.parametrize("rate", [0.2, 0.7])
def test_keep_rate_and_inverse_scaling(rate):
    layer = jc.Dropout(rate)
    x = jnp.ones((200, 50, 10))  # 100,000 elements
    y, _ = layer.apply({}, {}, x, key=jax.random.PRNGKey(3), train=True)
    y = np.asarray(y, np.float64)
    kept = y != 0
    n = y.size
    # Binomial(n, 1 - rate): the kept fraction is within 5 standard deviations.
    sd = np.sqrt(rate * (1 - rate) / n)
    assert abs(kept.mean() - (1 - rate)) < 5 * sd
    np.testing.assert_allclose(y[kept], 1 / (1 - rate), rtol=1e-6)  # inverted scaling
    assert abs(y.mean() - 1.0) < 5 * sd / (1 - rate)  # unbiased in expectation


def test_identity_in_inference_and_rate_zero():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8))
    y, _ = jc.Dropout(0.5).apply({}, {}, x)  # train=False, no key needed
    assert y is x
    y, _ = jc.Dropout(0.0).apply({}, {}, x, train=True)
    assert y is x


def test_keys_give_independent_masks_and_serial_splits_the_key():
    x = jnp.ones((1000,))
    k = jax.random.PRNGKey(0)
    a, _ = jc.Dropout(0.5).apply({}, {}, x, key=k, train=True)
    b, _ = jc.Dropout(0.5).apply({}, {}, x, key=jax.random.PRNGKey(1), train=True)
    a2, _ = jc.Dropout(0.5).apply({}, {}, x, key=k, train=True)
    np.testing.assert_array_equal(a, a2)
    assert not np.array_equal(a, b)
    model = jc.fan_out(2)
    two = jc.serial(model, jc.parallel(jc.Dropout(0.5), jc.Dropout(0.5)))
    _, p, s = two.init(k, (-1, 1000))
    (ya, yb), _ = two.apply(p, s, x[None], key=k, train=True)
    assert not np.array_equal(ya, yb)


def test_gradient_is_masked_and_scaled():
    x = jnp.arange(1.0, 101.0)
    k = jax.random.PRNGKey(5)
    f = lambda v: jc.Dropout(0.25).apply({}, {}, v, key=k, train=True)[0].sum()  # noqa: E731
    g = jax.jit(jax.grad(f))(x)
    y, _ = jc.Dropout(0.25).apply({}, {}, x, key=k, train=True)
    np.testing.assert_allclose(g, np.where(np.asarray(y) != 0, 1 / 0.75, 0.0), rtol=1e-6)


def test_contract():
    check_layer_contract(jc.Dropout(0.3), (-1, 4, 3), train=True, check_vmap=False)
    check_layer_contract(jc.Dropout(0.3), (-1, 4, 3), train=False)


def test_errors():
    with pytest.raises(ValueError) as err:
        jc.Dropout(0.5).apply({}, {}, jnp.ones(3), train=True)
    assert "Dropout: train=True needs a PRNG key" in str(err.value)
    assert "got key=None" in str(err.value)
    for bad in (1.0, -0.1, "0.5", True):
        with pytest.raises(ValueError, match=r"Dropout: rate must be a number in \[0, 1\)"):
            jc.Dropout(bad)
