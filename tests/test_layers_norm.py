"""BatchNorm (both modes, running statistics over several steps, PyTorch's options), LayerNorm,
GroupNorm and InstanceNorm: references, state layouts, the layer contract, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv as jc
from jaxconv.layers.norm import InstanceNorm
from tests.contract import check_layer_contract
from tests.torch_ref import import_torch


def rand(shape, seed=0, scale=1.0, shift=0.0):
    return (np.random.RandomState(seed).randn(*shape) * scale + shift).astype(np.float32)


def ref_batch_norm_steps(xs, momentum, eps, scale, bias):
    """float64 reference: outputs of each train step and the final running statistics."""
    c = xs[0].shape[-1]
    rm, rv = np.zeros(c), np.ones(c)
    outs = []
    for x in xs:
        x = x.astype(np.float64).reshape(-1, c)
        m = x.shape[0]
        mean, var = x.mean(0), x.var(0)
        outs.append((x - mean) / np.sqrt(var + eps) * scale + bias)
        rm = (1 - momentum) * rm + momentum * mean
        rv = (1 - momentum) * rv + momentum * var * m / (m - 1)
    return outs, rm, rv


def test_batch_norm_train_and_eval_over_several_steps():
    layer = jc.BatchNorm(momentum=0.3, epsilon=1e-3)
    shape = (4, 3, 5, 6)
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, *shape[1:]))
    assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), state) == {
        "mean": ((6,), jnp.float32), "var": ((6,), jnp.float32)}
    params = {"scale": jnp.linspace(0.5, 2.0, 6), "bias": jnp.linspace(-1.0, 1.0, 6)}
    xs = [rand(shape, seed=i, scale=1 + i, shift=i - 1.0) for i in range(3)]
    step = jax.jit(lambda p, s, x: layer.apply(p, s, x, train=True))
    outs = []
    for x in xs:
        y, state = step(params, state, x)
        outs.append(np.asarray(y).reshape(-1, 6))
    ref_outs, rm, rv = ref_batch_norm_steps(xs, 0.3, 1e-3, np.asarray(params["scale"]),
                                            np.asarray(params["bias"]))
    for y, r in zip(outs, ref_outs):
        np.testing.assert_allclose(y, r, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state["mean"], rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["var"], rv, rtol=1e-5, atol=1e-6)

    # Inference: running statistics, state returned unchanged.
    x = rand(shape, seed=9)
    y, new_state = layer.apply(params, state, x, train=False)
    assert new_state is state
    expected = ((x.astype(np.float64) - rm) / np.sqrt(rv + 1e-3) * np.asarray(params["scale"])
                + np.asarray(params["bias"]))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_batch_norm_matches_torch_over_steps():
    torch = import_torch()
    bn = torch.nn.BatchNorm2d(4)  # momentum 0.1, eps 1e-5: jaxconv's defaults
    layer = jc.BatchNorm()
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, 5, 5, 4))
    for i in range(3):
        x = rand((3, 4, 5, 5), seed=20 + i, scale=2.0, shift=0.5)  # NCHW
        yt = bn.train()(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
        y, state = layer.apply(params, state, x.transpose(0, 2, 3, 1), train=True)
        np.testing.assert_allclose(y, yt, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state["mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["var"], bn.running_var.numpy(), rtol=1e-5, atol=1e-6)
    x = rand((2, 4, 5, 5), seed=30)
    yt = bn.eval()(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
    y, _ = layer.apply(params, state, x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(y, yt, rtol=1e-4, atol=1e-5)


def test_batch_norm_axis_name_uses_global_batch():
    layer = jc.BatchNorm(axis_name="devices")
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, 3))
    x = rand((4, 5, 3), seed=1, shift=2.0)  # 4 "devices" x local batch 5
    ys, states = jax.vmap(lambda xi: layer.apply(params, state, xi, train=True),
                          axis_name="devices")(x)
    y_all, state_all = jc.BatchNorm().apply(params, state, x.reshape(20, 3), train=True)
    np.testing.assert_allclose(ys.reshape(20, 3), y_all, rtol=1e-5, atol=1e-5)
    for k in ("mean", "var"):
        np.testing.assert_allclose(states[k], np.broadcast_to(state_all[k], (4, 3)), rtol=1e-5)
    # One example per device is fine when the devices together have more than one.
    y1, _ = jax.vmap(lambda xi: layer.apply(params, state, xi, train=True),
                     axis_name="devices")(x[:, :1])
    assert np.all(np.isfinite(y1))


def test_batch_norm_bf16_compute_keeps_float32_statistics():
    layer = jc.serial(jc.Conv(8, 3, dtype=jnp.bfloat16), jc.BatchNorm(dtype=jnp.bfloat16))
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, 6, 6, 3))
    x = rand((2, 6, 6, 3), shift=100.0)  # a large mean: bf16 statistics would lose it
    y, new_state = layer.apply(params, state, x, train=True)
    assert y.dtype == jnp.bfloat16
    bn_state = new_state["batch_norm0"]
    assert bn_state["mean"].dtype == jnp.float32 and bn_state["var"].dtype == jnp.float32
    h, _ = layer.children[0][1].apply(params["conv0"], {}, x)
    h = np.asarray(h, np.float64).reshape(-1, 8)
    np.testing.assert_allclose(bn_state["mean"], 0.1 * h.mean(0), rtol=1e-3)
    np.testing.assert_allclose(np.asarray(y, np.float32).reshape(-1, 8).mean(0), 0, atol=0.05)


def test_batch_norm_contract_both_modes():
    check_layer_contract(jc.BatchNorm(), (-1, 4, 4, 3), train=False)
    check_layer_contract(jc.BatchNorm(use_scale=False), (-1, 5), train=True, check_vmap=False)


def test_batch_norm_errors():
    layer = jc.BatchNorm()
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, 1, 1, 4))
    with pytest.raises(ValueError) as err:
        layer.apply(params, state, np.ones((1, 1, 1, 4), np.float32), train=True)
    assert "more than 1 value per channel" in str(err.value)
    assert "got shape (1, 1, 1, 4)" in str(err.value)
    # A batch of one is fine in inference, and in training when it has spatial extent.
    layer.apply(params, state, np.ones((1, 1, 1, 4), np.float32), train=False)
    layer.apply(params, state, rand((1, 2, 2, 4)), train=True)
    with pytest.raises(ValueError, match=r"BatchNorm: expected input of shape \(N, \.\.\., 4\), "
                                         r"got \(2, 3\)"):
        layer.apply(params, state, np.ones((2, 3)), train=True)
    with pytest.raises(ValueError, match=r"BatchNorm: momentum must be a number >= 0 and <= 1, got 1.5"):
        jc.BatchNorm(momentum=1.5)
    with pytest.raises(ValueError, match="BatchNorm: epsilon must be a number > 0, got 0"):
        jc.BatchNorm(epsilon=0)
    with pytest.raises(ValueError, match="BatchNorm: expected input of rank >= 2"):
        layer.init(None, (-1,))


def test_layer_norm_matches_reference():
    x = rand((3, 4, 5, 6), seed=2, scale=3.0, shift=1.0)
    layer = jc.LayerNorm()
    params, state, _, _ = check_layer_contract(layer, (-1, 4, 5, 6))
    assert params["scale"].shape == (6,)
    params = {"scale": jnp.arange(1.0, 7.0), "bias": jnp.full((6,), 0.5)}
    y, _ = layer.apply(params, state, x)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, ref * np.arange(1.0, 7.0) + 0.5, rtol=1e-4, atol=1e-4)
    # Over all of an example, with element-wise affine.
    layer = jc.LayerNorm((1, 2, 3), use_bias=False)
    _, params, _ = layer.init(jax.random.PRNGKey(0), (-1, 4, 5, 6))
    assert params["scale"].shape == (4, 5, 6) and "bias" not in params
    w = rand((4, 5, 6), seed=4)
    y, _ = layer.apply({"scale": w}, {}, x)
    m, v = x64.mean((1, 2, 3), keepdims=True), x64.var((1, 2, 3), keepdims=True)
    np.testing.assert_allclose(y, (x64 - m) / np.sqrt(v + 1e-5) * w, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="LayerNorm: reduction_axes must be non-batch axes"):
        jc.LayerNorm(0).init(None, (-1, 4))


def ref_group_norm(x, groups, eps=1e-5):
    n, *spatial, c = x.shape
    g = x.astype(np.float64).reshape(n, -1, groups, c // groups)
    mean = g.mean((1, 3), keepdims=True)
    var = g.var((1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)


@pytest.mark.parametrize("groups", [1, 3, 6])
def test_group_norm_matches_reference(groups):
    x = rand((2, 4, 3, 6), seed=groups, scale=2.0, shift=-1.0)
    layer = jc.GroupNorm(groups)
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, 4, 3, 6))
    params = {"scale": jnp.linspace(0.5, 1.5, 6), "bias": jnp.linspace(0.0, 1.0, 6)}
    y, _ = layer.apply(params, state, x)
    ref = ref_group_norm(x, groups) * np.linspace(0.5, 1.5, 6) + np.linspace(0.0, 1.0, 6)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_group_norm_contract_torch_and_errors():
    check_layer_contract(jc.GroupNorm(2), (-1, 5, 4))
    torch = import_torch()
    x = rand((2, 6, 4, 5), seed=7)
    gn = torch.nn.GroupNorm(3, 6)
    yt = gn(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
    layer = jc.GroupNorm(3)
    _, params, _ = layer.init(jax.random.PRNGKey(0), (-1, 4, 5, 6))
    y, _ = layer.apply(params, {}, x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(y, yt, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError) as err:
        jc.GroupNorm(4).init(None, (-1, 8, 8, 6))
    assert "GroupNorm: num_groups=4 must divide the number of channels, got 6 channels" in str(
        err.value)
    with pytest.raises(ValueError, match="GroupNorm: num_groups must be an int >= 1, got 0"):
        jc.GroupNorm(0)


def test_batch_norm_constant_channels_have_tiny_variance():
    # Constant channels with large values: the centred second pass gives a variance of a few
    # float32 roundings of the mean (E[x^2] - E[x]^2 would give units here, of either sign),
    # so the running variance stays at its decayed old value and the output stays small.
    c = 64
    layer = jc.BatchNorm(epsilon=1e-5)
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, c))
    x = np.tile(np.float32(np.random.RandomState(0).uniform(-5000, 5000, c)), (257, 1))
    y, new_state = jax.jit(lambda p, s, v: layer.apply(p, s, v, train=True))(params, state, x)
    assert np.all(np.isfinite(y)) and np.abs(y).max() < 1
    np.testing.assert_allclose(new_state["var"], 0.9, atol=1e-4)  # 0.9 * 1 + 0.1 * ~0


def test_batch_norm_bf16_output_is_float32_math_rounded_once():
    # bf16 input and compute: the output must be the float64 result of the bf16 values rounded
    # to bf16 (within one bf16 ulp), also with an offset of 20 standard deviations, where a
    # multiply-add in bf16 (x * a + b with b = -mean * a) would lose about 5% to cancellation.
    layer = jc.BatchNorm(dtype=jnp.bfloat16)
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, 4, 4, 3))
    params = {"scale": jnp.asarray([1.0, 2.0, 0.5]), "bias": jnp.asarray([0.0, 1.0, -1.0])}
    x = jnp.asarray(rand((16, 4, 4, 3), seed=3, shift=20.0), jnp.bfloat16)
    y, _ = layer.apply(params, state, x, train=True)
    assert y.dtype == jnp.bfloat16
    x64 = np.asarray(x, np.float64).reshape(-1, 3)
    ref = ((x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5) * [1.0, 2.0, 0.5]
           + [0.0, 1.0, -1.0])
    err = np.abs(np.asarray(y, np.float64).reshape(-1, 3) - ref)
    assert np.all(err <= 2.0 ** -8 * np.abs(ref) + 2e-3), float(err.max())
    # Inference uses the same x * a + b with the running statistics.
    y_eval, _ = layer.apply(params, {"mean": jnp.full(3, 20.0), "var": jnp.full(3, 4.0)}, x)
    ref = (x64 - 20.0) / np.sqrt(4.0 + 1e-5) * [1.0, 2.0, 0.5] + [0.0, 1.0, -1.0]
    err = np.abs(np.asarray(y_eval, np.float64).reshape(-1, 3) - ref)
    assert np.all(err <= 2.0 ** -8 * np.abs(ref) + 2e-3), float(err.max())


# --------------------------------------------------------------------------
# PyTorch's options: momentum=None, track_running_stats=False; InstanceNorm. Their values
# against PyTorch are in test_layers_norm_torch.py; here: state layout, contract, errors.


def test_batch_norm_state_layout_per_option():
    def state_of(layer):
        _, _, state = layer.init(jax.random.PRNGKey(0), (-1, 4, 3))
        return jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), state)

    assert state_of(jc.BatchNorm()) == {"mean": ((3,), jnp.float32), "var": ((3,), jnp.float32)}
    assert state_of(jc.BatchNorm(momentum=None)) == {
        "mean": ((3,), jnp.float32), "var": ((3,), jnp.float32),
        "num_batches_tracked": ((), jnp.int32)}
    assert state_of(jc.BatchNorm(track_running_stats=False)) == {}
    assert state_of(InstanceNorm()) == {}
    assert state_of(InstanceNorm(track_running_stats=True)) == state_of(jc.BatchNorm())


def test_batch_norm_cumulative_average_equals_the_mean_of_the_batches():
    # momentum=None: after n batches the running mean is the plain mean of their means.
    layer = jc.BatchNorm(momentum=None, use_scale=False, use_bias=False)
    _, params, state = layer.init(None, (-1, 3))
    xs = [rand((6, 3), seed=i, shift=3.0 * i) for i in range(4)]
    step = jax.jit(lambda s, x: layer.apply(params, s, x, train=True))
    for x in xs:
        _, state = step(state, x)
    assert int(state["num_batches_tracked"]) == 4
    means = np.mean([x.astype(np.float64).mean(0) for x in xs], axis=0)
    np.testing.assert_allclose(state["mean"], means, rtol=1e-5, atol=1e-6)
    variances = np.mean([x.astype(np.float64).var(0, ddof=1) for x in xs], axis=0)
    np.testing.assert_allclose(state["var"], variances, rtol=1e-5)
    # Inference and an empty training batch leave the counter as it is.
    _, same = layer.apply(params, state, xs[0])
    _, empty = layer.apply(params, state, xs[0][:0], train=True)
    assert same is state and empty is state


def test_batch_norm_options_contract():
    # The shape of test_batch_norm_contract_both_modes: its compiled operations are reused.
    check_layer_contract(jc.BatchNorm(momentum=None), (-1, 4, 4, 3), train=True, check_vmap=False)
    # Without running statistics, inference normalises with the batch's own statistics.
    layer = jc.BatchNorm(track_running_stats=False, use_scale=False, use_bias=False)
    _, _, x, y = check_layer_contract(layer, (-1, 4, 4, 3), train=False)
    y_train, state = layer.apply({}, {}, x, train=True)
    np.testing.assert_array_equal(y, y_train)
    assert state == {}
    with pytest.raises(ValueError, match="BatchNorm: normalising with track_running_stats=False "
                                         "needs more than 1 value per channel"):
        layer.apply({}, {}, np.ones((1, 1, 1, 3)))


def test_instance_norm_contract_and_reference():
    layer = InstanceNorm(affine=True, track_running_stats=True)
    params, state, x, y = check_layer_contract(layer, (-1, 4, 4, 3), train=True)
    assert set(params) == {"scale", "bias"} and set(state) == {"mean", "var"}
    x64 = np.asarray(x, np.float64)
    mean, var = x64.mean((1, 2), keepdims=True), x64.var((1, 2), keepdims=True)
    np.testing.assert_allclose(y, (x64 - mean) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-5)


def test_instance_norm_errors():
    with pytest.raises(ValueError, match="InstanceNorm: momentum must be a number >= 0 and <= 1, "
                                         "got None"):
        InstanceNorm(momentum=None)
    with pytest.raises(ValueError, match="InstanceNorm: affine must be True or False, got 1"):
        InstanceNorm(affine=1)
    with pytest.raises(ValueError, match="InstanceNorm: epsilon must be a number > 0, got 0"):
        InstanceNorm(epsilon=0)
    with pytest.raises(ValueError, match="BatchNorm: track_running_stats must be True or False"):
        jc.BatchNorm(track_running_stats=None)
    with pytest.raises(ValueError, match=r"InstanceNorm: expected input of rank 3\.\.5 "
                                         r"\(N, \*spatial, C\), got shape \(-1, 4\)"):
        InstanceNorm().init(None, (-1, 4))
    layer = InstanceNorm(affine=True)
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, 4, 3))
    with pytest.raises(ValueError, match=r"InstanceNorm: expected input of shape "
                                         r"\(N, \*spatial, 3\) with 1 to 3 spatial axes, "
                                         r"got \(2, 4, 2\)"):
        layer.apply(params, state, np.ones((2, 4, 2)))
    with pytest.raises(ValueError, match=r"got \(2, 1, 1, 1, 1, 3\)"):
        layer.apply(params, state, np.ones((2, 1, 1, 1, 1, 3)))


@pytest.mark.parametrize("name, layer", [
    ("BatchNorm", jc.BatchNorm()), ("BatchNorm", jc.BatchNorm(track_running_stats=False)),
    ("LayerNorm", jc.LayerNorm()), ("GroupNorm", jc.GroupNorm(1)),
    ("InstanceNorm", InstanceNorm(track_running_stats=True)),
])
def test_complex_input_is_refused_by_name(name, layer):
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, 4, 2))
    x = (rand((2, 4, 2)) + 1j).astype(np.complex64)
    for train in (False, True):
        with pytest.raises(TypeError, match=f"{name}: expected a real input, got dtype complex64"):
            layer.apply(params, state, x, train=train)
