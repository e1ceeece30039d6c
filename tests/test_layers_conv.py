"""Conv and ConvTranspose layers: contract, options, dtypes, PyTorch porting, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv as jc
from tests.contract import check_layer_contract, random_input
from tests.torch_ref import import_torch


@pytest.mark.parametrize("layer, shape, impl", [
    (lambda i: jc.Conv(4, 3, impl=i), (2, 9, 3), "auto"),
    (lambda i: jc.Conv(6, (3, 2), stride=2, padding="SAME_LOWER", dilation=(1, 2), groups=3,
                       padding_mode="reflect", impl=i), (2, 7, 8, 3), "patches"),
    (lambda i: jc.Conv(4, 2, padding=((1, 0), 1, (0, -1)), padding_mode="circular", impl=i),
     (2, 4, 5, 3, 2), "lax"),
    (lambda i: jc.ConvTranspose(6, (3, 3), stride=(2, 1), padding="SAME", dilation=2, groups=2,
                                impl=i), (2, 4, 5, 4), "patches"),
    (lambda i: jc.ConvTranspose(2, 2, stride=2, padding="VALID", use_bias=False, impl=i),
     (2, 3, 2, 3, 1), "lax"),
])
def test_layer_contract(layer, shape, impl):
    check_layer_contract(layer(impl), shape)


def test_conv_transpose_output_shape_and_params():
    layer = jc.ConvTranspose(8, 3, stride=2, padding=1, output_padding=1, groups=2)
    out, params, state = layer.init(jax.random.PRNGKey(0), (-1, 7, 5, 4))
    assert out == (-1, 14, 10, 8)
    assert params["kernel"].shape == (3, 3, 4, 4)  # (*k, F // groups, C)
    assert params["bias"].shape == (8,) and state == {}


def test_depthwise_conv_with_channel_multiplier():
    layer = jc.Conv(6, 3, groups=3)
    out, params, _ = layer.init(jax.random.PRNGKey(0), (-1, 8, 8, 3))
    assert out == (-1, 8, 8, 6) and params["kernel"].shape == (3, 3, 1, 6)


@pytest.mark.parametrize("factory", [jc.Conv, jc.ConvTranspose])
def test_bf16_compute_with_f32_params(factory):
    layer = factory(8, 3, dtype=jnp.bfloat16, param_dtype=jnp.float32, impl="patches")
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, 6, 6, 4))
    assert params["kernel"].dtype == jnp.float32 and params["bias"].dtype == jnp.float32
    x = random_input((2, 6, 6, 4))
    y, _ = jax.jit(layer.apply)(params, state, x)
    assert y.dtype == jnp.bfloat16
    y32, _ = factory(8, 3, impl="lax").apply(params, state, x)
    np.testing.assert_allclose(np.asarray(y, np.float32), y32, rtol=5e-2, atol=5e-2)
    grads = jax.jit(jax.grad(
        lambda p: jnp.sum(layer.apply(p, state, x)[0].astype(jnp.float32))))(params)
    assert grads["kernel"].dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(grads["kernel"])))


def test_initializers_use_bias_and_param_dtype():
    layer = jc.Conv(5, 3, use_bias=False, kernel_init=jax.nn.initializers.ones,
                    param_dtype=jnp.float16)
    _, params, _ = layer.init(jax.random.PRNGKey(0), (-1, 5, 5, 2))
    assert set(params) == {"kernel"} and params["kernel"].dtype == jnp.float16
    assert bool(jnp.all(params["kernel"] == 1))
    layer = jc.ConvTranspose(5, 3, bias_init=jax.nn.initializers.constant(0.5))
    _, params, _ = layer.init(jax.random.PRNGKey(0), (-1, 5, 5, 2))
    assert bool(jnp.all(params["bias"] == 0.5))


def test_port_pytorch_layers_by_axis_permutation():
    torch = import_torch()
    torch.manual_seed(0)
    conv_t = torch.nn.Conv2d(3, 6, 5, stride=2, padding=2, groups=3, padding_mode="replicate",
                             dtype=torch.float64)
    tconv_t = torch.nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1,
                                       dilation=1, dtype=torch.float64)
    x = np.random.default_rng(0).standard_normal((2, 3, 11, 9))
    with torch.no_grad():
        want = tconv_t(conv_t(torch.tensor(x))).permute(0, 2, 3, 1).numpy()
    model = jc.serial(
        jc.Conv(6, 5, stride=2, padding=2, groups=3, padding_mode="replicate"),
        jc.ConvTranspose(4, 3, stride=2, padding=1, output_padding=1))
    params = {
        "conv0": {"kernel": conv_t.weight.detach().permute(2, 3, 1, 0).numpy(),
                  "bias": conv_t.bias.detach().numpy()},
        "conv_transpose0": {"kernel": tconv_t.weight.detach().permute(2, 3, 1, 0).numpy(),
                            "bias": tconv_t.bias.detach().numpy()},
    }
    with jax.enable_x64(True):
        out_shape, p0, state = model.init(jax.random.PRNGKey(0), (-1, 11, 9, 3))
        assert jax.tree_util.tree_map(np.shape, p0) == jax.tree_util.tree_map(np.shape, params)
        y, _ = jax.jit(model.apply)(jax.tree_util.tree_map(jnp.asarray, params), state,
                                    jnp.asarray(x.transpose(0, 2, 3, 1)))
        assert y.shape == want.shape == (2, *out_shape[1:])
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("call, words", [
    (lambda: jc.Conv(4, 3, padding_mode="mirror"), ["Conv: unknown padding_mode 'mirror'"]),
    (lambda: jc.Conv(4, 3, impl="cudnn"), ["Conv: unknown impl 'cudnn'"]),
    (lambda: jc.Conv(4, 3, padding="FULL"), ["Conv: unknown padding 'FULL'"]),
    (lambda: jc.Conv(4, 3, stride=0), ["Conv: stride must be an int or a sequence of ints >= 1, got 0"]),
    (lambda: jc.Conv(4, 3, dilation=(1, 0)), ["Conv: dilation must be an int or a sequence of ints >= 1, got (1, 0)"]),
    (lambda: jc.Conv(5, 3, groups=2), ["Conv: groups=2 must divide features=5"]),
    (lambda: jc.Conv(4, 0), ["Conv: kernel_size must be an int or a sequence of ints >= 1, got 0"]),
    (lambda: jc.ConvTranspose(4, 3, output_padding=-1),
     ["ConvTranspose: output_padding must be an int or a sequence of ints >= 0, got -1"]),
    (lambda: jc.ConvTranspose(4, 3, groups=0), ["ConvTranspose: groups must be an int >= 1, got 0"]),
])
def test_factory_errors(call, words):
    with pytest.raises(ValueError) as info:
        call()
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("layer, shape, words", [
    (jc.Conv(4, 3, groups=2), (-1, 8, 8, 3), ["Conv: groups=2 must divide the 3 input channels"]),
    (jc.Conv(4, 9, padding="VALID"), (-1, 8, 8, 3),
     ["Conv: kernel of size (9, 9)", "larger than the padded input (8, 8)"]),
    (jc.Conv(4, (3, 3)), (-1, 8, 3), ["Conv: kernel_size (3, 3) has 2 dimensions",
                                      "has 1 spatial dimensions"]),
    (jc.Conv(4, 3), (-1, 8), ["Conv: expected input of rank 3, 4 or 5", "got shape (-1, 8)"]),
    (jc.Conv(4, 3, padding=4, padding_mode="reflect"), (-1, 4, 4, 1),
     ["Conv: padding_mode='reflect' needs padding smaller than the input size"]),
    (jc.Conv(4, 3, stride=(1, 2, 3)), (-1, 8, 8, 3),
     ["Conv: stride must be an int or a sequence of 2 ints >= 1, got (1, 2, 3)"]),
    (jc.ConvTranspose(4, 3, stride=2, output_padding=2), (-1, 5, 5, 3),
     ["ConvTranspose: output_padding must be smaller than stride or dilation"]),
    (jc.ConvTranspose(4, 3, groups=2), (-1, 5, 5, 3),
     ["ConvTranspose: groups=2 must divide the 3 input channels"]),
])
def test_init_errors(layer, shape, words):
    with pytest.raises(ValueError) as info:
        layer.init(jax.random.PRNGKey(0), shape)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_apply_rejects_wrong_channels():
    for layer, name in ((jc.Conv(4, 3), "Conv"), (jc.ConvTranspose(4, 3), "ConvTranspose")):
        _, params, state = layer.init(jax.random.PRNGKey(0), (-1, 6, 6, 3))
        with pytest.raises(ValueError, match=rf"{name}: expected input of shape \(-1, -1, -1, 3\), "
                                             r"got \(2, 6, 6, 5\)"):
            layer.apply(params, state, jnp.ones((2, 6, 6, 5)))
