"""Dense, activations and the structural layers: contract, values, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv as jc
from tests.contract import check_layer_contract, random_input

ACTIVATIONS = [
    (jc.Relu(), lambda x: np.maximum(x, 0)),
    (jc.LeakyRelu(0.2), lambda x: np.where(x >= 0, x, 0.2 * x)),
    (jc.Elu(), lambda x: np.where(x > 0, x, np.expm1(x))),
    (jc.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    (jc.Tanh(), np.tanh),
    (jc.Softmax(), lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)),
    (jc.LogSoftmax(), lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))),
]


@pytest.mark.parametrize("layer,reference", ACTIVATIONS, ids=lambda v: getattr(v, "kind", ""))
def test_activation_contract_and_values(layer, reference):
    _, _, x, y = check_layer_contract(layer, (3, 5))
    np.testing.assert_allclose(y, reference(np.asarray(x, np.float64)), rtol=1e-5, atol=1e-6)


def test_gelu_is_exact_erf_by_default():
    from math import erf
    _, _, x, y = check_layer_contract(jc.Gelu(), (2, 4))
    ref = [v * 0.5 * (1 + erf(v / np.sqrt(2))) for v in np.asarray(x, np.float64).ravel()]
    np.testing.assert_allclose(np.ravel(y), ref, rtol=1e-5, atol=1e-6)


def test_dense_contract_and_values():
    params, _, x, y = check_layer_contract(jc.Dense(7), (4, 3))
    np.testing.assert_allclose(y, x @ params["kernel"] + params["bias"], rtol=1e-5)
    assert params["kernel"].shape == (3, 7) and params["bias"].shape == (7,)


def test_dense_over_last_axis_of_higher_rank_input():
    check_layer_contract(jc.Dense(2), (2, 5, 3))


def test_dense_without_bias_and_with_dtypes():
    layer = jc.Dense(4, use_bias=False, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, 3))
    assert set(params) == {"kernel"} and params["kernel"].dtype == jnp.float32
    y, _ = layer.apply(params, state, jnp.ones((2, 3)))
    assert y.dtype == jnp.bfloat16


def test_dense_errors():
    with pytest.raises(ValueError, match="Dense: features must be an int >= 1, got 0"):
        jc.Dense(0)
    with pytest.raises(ValueError, match="Dense: features must be an int >= 1, got -3"):
        jc.Dense(-3)
    with pytest.raises(ValueError,
                       match=r"Dense: expected input of rank >= 2 \(batch, ..., features\), got shape \(5,\)"):
        jc.Dense(3).init(jax.random.PRNGKey(0), (5,))
    layer = jc.Dense(3)
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, 4))
    with pytest.raises(ValueError, match=r"Dense: expected input of shape \(batch, ..., 4\), got \(2, 5\)"):
        layer.apply(params, state, jnp.ones((2, 5)))


def test_flatten_reshape_identity_lambda():
    check_layer_contract(jc.Flatten(), (2, 3, 4, 5))
    _, _, x, y = check_layer_contract(jc.Reshape((4, -1)), (2, 3, 4, 5))
    assert y.shape == (2, 4, 15)
    _, _, x, y = check_layer_contract(jc.Identity(), (2, 3))
    np.testing.assert_array_equal(x, y)
    _, _, x, y = check_layer_contract(jc.Lambda(lambda v: v[:, ::2] * 2), (2, 6, 3))
    assert y.shape == (2, 3, 3)


def test_reshape_errors():
    with pytest.raises(ValueError, match="Reshape: shape must be positive ints with at most one -1"):
        jc.Reshape((-1, -1))
    with pytest.raises(ValueError,
                       match=r"Reshape: cannot reshape input of shape \(-1, 3, 4\) "
                             r"\(12 features\) to \(batch, \*\(5,\)\)"):
        jc.Reshape((5,)).init(None, (-1, 3, 4))


def test_losses_against_numpy():
    logits = random_input((5, 4))
    labels = jnp.array([0, 3, 1, 2, 3])
    lg = np.asarray(logits, np.float64)
    log_p = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    np.testing.assert_allclose(jc.cross_entropy(logits, labels),
                               -log_p[np.arange(5), labels].mean(), rtol=1e-5)
    onehot = np.eye(4)[labels]
    np.testing.assert_allclose(jc.square_loss(logits, labels),
                               (0.5 * ((onehot - lg) ** 2).sum(-1)).mean(), rtol=1e-5)
    np.testing.assert_allclose(jc.accuracy(logits, labels), np.mean(lg.argmax(-1) == labels))
    smooth = jc.cross_entropy(logits, labels, label_smoothing=0.1)
    targets = onehot * 0.9 + 0.1 / 4
    np.testing.assert_allclose(smooth, -(targets * log_p).sum(-1).mean(), rtol=1e-5)
