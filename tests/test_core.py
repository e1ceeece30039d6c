"""The layer contract and the combinators (jaxconv/core.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv as jc
from tests.contract import check_layer_contract, random_input


def test_serial_names_and_nests_params():
    model = jc.serial(jc.Conv(4, 3), jc.Relu(), ("head", jc.serial(jc.Flatten(), jc.Dense(3))), jc.Identity())
    out, params, state = model.init(jax.random.PRNGKey(0), (-1, 6, 6, 2))
    assert out == (-1, 3)
    assert list(params) == ["conv0", "relu0", "head", "identity0"]
    assert params["conv0"]["kernel"].shape == (3, 3, 2, 4)
    assert list(params["head"]) == ["flatten0", "dense0"]
    assert params["head"]["dense0"]["kernel"].shape == (6 * 6 * 4, 3)
    assert state == {"conv0": {}, "relu0": {}, "head": {"flatten0": {}, "dense0": {}},
                     "identity0": {}}
    names = [name for name, _ in model.children]
    assert names == ["conv0", "relu0", "head", "identity0"]


def test_serial_per_kind_counter():
    model = jc.serial(jc.Dense(3), jc.Relu(), jc.Dense(3), jc.Relu(), jc.Dense(2))
    _, params, _ = model.init(jax.random.PRNGKey(0), (-1, 5))
    assert list(params) == ["dense0", "relu0", "dense1", "relu1", "dense2"]


def test_serial_contract():
    model = jc.serial(jc.Conv(4, 3), jc.Relu(), jc.MaxPool(2), jc.Flatten(), jc.Dense(3))
    check_layer_contract(model, (2, 8, 8, 1))


def test_serial_rejects_duplicate_names_and_non_layers():
    with pytest.raises(ValueError, match="duplicate layer name 'a'"):
        jc.serial(("a", jc.Relu()), ("a", jc.Tanh()))
    with pytest.raises(TypeError, match="serial: argument 1 must be a Layer"):
        jc.serial(jc.Relu(), "relu")


def test_parallel_fan_out_and_fan_in():
    model = jc.serial(jc.fan_out(2), jc.parallel(jc.Dense(4), jc.Dense(4)), jc.fan_in_sum())
    check_layer_contract(model, (3, 5))
    _, params, _ = model.init(jax.random.PRNGKey(0), (-1, 5))
    assert list(params["parallel0"]) == ["dense0", "dense1"]
    x = random_input((3, 5))
    y, _ = model.apply(params, model.init(jax.random.PRNGKey(0), (-1, 5))[2], x)
    p = params["parallel0"]
    expected = x @ p["dense0"]["kernel"] + p["dense0"]["bias"] + x @ p["dense1"]["kernel"] + p["dense1"]["bias"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_fan_in_concat_shapes():
    model = jc.serial(jc.fan_out(2), jc.parallel(jc.Conv(3, 1), jc.Conv(5, 1)), jc.fan_in_concat())
    out, _, _ = model.init(jax.random.PRNGKey(0), (-1, 4, 4, 2))
    assert out == (-1, 4, 4, 8)
    check_layer_contract(model, (2, 4, 4, 2))


def test_fan_in_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="fan_in_sum: all inputs must have the same shape"):
        jc.fan_in_sum().init(None, ((-1, 3), (-1, 4)))
    with pytest.raises(ValueError, match="fan_in_concat: inputs must agree except on axis -1"):
        jc.fan_in_concat().init(None, ((-1, 3, 2), (-1, 4, 2)))
    with pytest.raises(ValueError, match="parallel: expected a tuple of 2 input shapes"):
        jc.parallel(jc.Relu(), jc.Relu()).init(None, (-1, 3))


def test_residual_identity_and_projection():
    block = jc.residual(jc.Dense(4), jc.Relu(), jc.Dense(4))
    params, state, x, y = check_layer_contract(block, (2, 4))
    body, _ = jc.serial(jc.Dense(4), jc.Relu(), jc.Dense(4)).apply(params["body"], state["body"], x)
    np.testing.assert_allclose(y, body + x, rtol=1e-6)

    proj = jc.residual(jc.Conv(6, 3), shortcut=jc.Conv(6, 1))
    out, params, _ = proj.init(jax.random.PRNGKey(0), (-1, 5, 5, 2))
    assert out == (-1, 5, 5, 6) and set(params) == {"body", "shortcut"}
    with pytest.raises(ValueError, match="residual: the body's output shape .* does not match"):
        jc.residual(jc.Conv(6, 3)).init(jax.random.PRNGKey(0), (-1, 5, 5, 2))


def test_key_is_split_between_sub_layers():
    seen = []

    def record(tag):
        def init(key, shape):
            return shape, {}, {}

        def apply(params, state, x, *, key=None, train=False):
            seen.append((tag, key))
            return x, state
        return jc.Layer(init, apply, "rec")

    model = jc.serial(record("a"), record("b"))
    _, p, s = model.init(jax.random.PRNGKey(0), (-1, 2))
    model.apply(p, s, jnp.ones((1, 2)), key=jax.random.PRNGKey(3))
    (_, ka), (_, kb) = seen
    assert not np.array_equal(np.asarray(ka), np.asarray(kb))
    seen.clear()
    model.apply(p, s, jnp.ones((1, 2)))
    assert [k for _, k in seen] == [None, None]


def test_init_rejects_bad_input_shape():
    with pytest.raises(TypeError, match="Dense: input_shape must be a tuple of ints"):
        jc.Dense(3).init(jax.random.PRNGKey(0), 5)
    with pytest.raises(ValueError, match=r"Dense: non-batch dimensions of input_shape must be positive, got \(-1, 0\)"):
        jc.Dense(3).init(jax.random.PRNGKey(0), (-1, 0))


def test_lax_scan_over_layer():
    model = jc.serial(jc.Dense(4), jc.Tanh())
    _, params, state = model.init(jax.random.PRNGKey(0), (-1, 4))
    xs = random_input((3, 2, 4))

    def body(carry, x):
        y, _ = model.apply(params, state, x + carry)
        return y, y.sum()

    carry, sums = jax.lax.scan(body, jnp.zeros((2, 4)), xs)
    assert carry.shape == (2, 4) and sums.shape == (3,)


def test_residual_shortcut_can_be_named():
    block = jc.residual(jc.Conv(6, 3), shortcut=("downsample", jc.Conv(6, 1)))
    out, params, _ = block.init(jax.random.PRNGKey(0), (-1, 5, 5, 2))
    assert out == (-1, 5, 5, 6) and set(params) == {"body", "downsample"}
    with pytest.raises(ValueError, match="cannot be named 'body'"):
        jc.residual(jc.Conv(6, 3), shortcut=("body", jc.Conv(6, 1)))
    with pytest.raises(TypeError, match="residual shortcut: argument 0 must be a Layer"):
        jc.residual(jc.Conv(6, 3), shortcut=("downsample", "conv"))


def test_residual_activation_applies_to_the_sum():
    block = jc.residual(jc.Dense(3), shortcut=("downsample", jc.Dense(3)), activation=jc.Relu())
    params, state, x, y = check_layer_contract(block, (4, 5))
    assert set(params) == {"body", "downsample", "activation"}
    body, _ = block.children[0][1].apply(params["body"], state["body"], x)
    skip, _ = block.children[1][1].apply(params["downsample"], state["downsample"], x)
    np.testing.assert_allclose(y, np.maximum(body + skip, 0), rtol=1e-6)
    with pytest.raises(ValueError, match="cannot be named 'activation'"):
        jc.residual(jc.Dense(3), shortcut=("activation", jc.Dense(3)))
