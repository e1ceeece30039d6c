"""SeparableConv and SqueezeExcite against PyTorch, LayerScale against NumPy.

Float64, random inputs and params, odd sizes; values and gradients (a
vector-Jacobian product with a random cotangent, w.r.t. the input and every
parameter) against torch autograd, with PyTorch's weights ported by axis
permutation into the params ``init`` declares.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.layers.activation import Hardsigmoid, PRelu, Relu, Silu
from jaxconv.layers.blocks import LayerScale, SeparableConv, SqueezeExcite
from jaxconv.layers.reshape import Flatten
from tests.contract import check_layer_contract
from tests.test_layers_activation import jax_vjp, torch_vjp
from tests.torch_ref import import_torch

TOL = dict(rtol=1e-11, atol=1e-12)


def to_jax_kernel(weight):
    """A PyTorch conv weight ``(O, I, *k)`` as a jaxconv kernel ``(*k, I, O)``."""
    return np.moveaxis(np.asarray(weight), (0, 1), (-1, -2))


def channels_first(x):
    return np.moveaxis(x, -1, 1)


def check_against_torch(layer, x, params, torch_fn, torch_params):
    """``layer`` with ``params`` (a dict of arrays) against ``torch_fn(x_nchw, *torch_params)``.

    ``params`` must have the structure and shapes ``layer.init`` declares;
    ``torch_params[i]`` is the ``i``-th leaf of ``params`` (pytree order) in
    PyTorch's layout: a conv weight (``to_jax_kernel`` converts it) or a vector.
    """
    _, declared, state = layer.init(jax.random.PRNGKey(0), (-1, *x.shape[1:]))
    shapes = jax.tree_util.tree_map(np.shape, params)
    assert jax.tree_util.tree_map(np.shape, declared) == shapes
    leaves, treedef = jax.tree_util.tree_flatten(params)

    def fn(x, *leaves):
        return layer.apply(jax.tree_util.tree_unflatten(treedef, leaves), state, x)[0]

    cotangent = np.random.default_rng(7).standard_normal(jax.eval_shape(
        fn, x, *leaves).shape)
    y, grads = jax_vjp(fn, [x, *leaves], cotangent)

    def torch_nhwc(x, *ps):
        return torch_fn(x.movedim(-1, 1), *ps).movedim(1, -1)

    y_t, grads_t = torch_vjp(torch_nhwc, [x, *torch_params], cotangent)
    np.testing.assert_allclose(y, y_t, **TOL)
    np.testing.assert_allclose(grads[0], grads_t[0], **TOL)
    for g, g_t in zip(grads[1:], grads_t[1:]):
        g_t = to_jax_kernel(g_t) if g_t.ndim > 1 else g_t
        np.testing.assert_allclose(g, g_t, **TOL)


# (input shape, features, kernel_size, options): 1-D and 2-D, odd sizes, int and "SAME"
# padding, stride, dilation, channel multiplier, with and without bias.
SEPARABLE = [
    ((2, 9, 7, 3), 5, 3, dict(stride=2, padding=1, depth_multiplier=2)),
    ((2, 8, 11, 2), 3, (3, 5), dict(padding="SAME", dilation=(2, 1), use_bias=False)),
    ((3, 13, 4), 6, 4, dict(stride=3, padding=2, depth_multiplier=3, impl="patches")),
]


@pytest.mark.parametrize("shape, features, kernel_size, options", SEPARABLE)
def test_separable_conv_matches_pytorch(shape, features, kernel_size, options):
    torch = import_torch()
    nd, channels = len(shape) - 2, shape[-1]
    m, use_bias = options.get("depth_multiplier", 1), options.get("use_bias", True)
    conv = getattr(torch.nn.functional, f"conv{nd}d")
    rng = np.random.default_rng(0)
    window = (kernel_size,) * nd if isinstance(kernel_size, int) else kernel_size
    w_dw = rng.standard_normal((channels * m, 1, *window))
    w_pw = rng.standard_normal((features, channels * m) + (1,) * nd)
    b_pw = rng.standard_normal(features)
    padding = options.get("padding", "SAME")
    torch_padding = "same" if padding == "SAME" else padding

    def torch_fn(x, w_dw, w_pw, b_pw=None):
        y = conv(x, w_dw, stride=options.get("stride", 1), padding=torch_padding,
                 dilation=options.get("dilation", 1), groups=channels)
        return conv(y, w_pw, b_pw)

    params = {"depthwise": {"kernel": to_jax_kernel(w_dw)},
              "pointwise": {"kernel": to_jax_kernel(w_pw)}}
    if use_bias:
        params["pointwise"]["bias"] = b_pw
    torch_params = [w_dw, b_pw, w_pw] if use_bias else [w_dw, w_pw]  # pytree (sorted) order
    check_against_torch(SeparableConv(features, kernel_size, **options),
                        rng.standard_normal(shape), params,
                        lambda x, w_dw, *pw: torch_fn(x, w_dw, *pw[::-1]), torch_params)


# (input shape, factory arguments, squeeze channels, PyTorch activation, PyTorch gate):
# torchvision's defaults, MobileNetV3's and EfficientNet's pairs, a learned activation.
SQUEEZE = [
    ((2, 5, 7, 6), dict(squeeze_channels=3), 3, "ReLU", "Sigmoid"),
    ((2, 9, 8), dict(reduction=4, activation=Relu(), gate=Hardsigmoid), 2, "ReLU", "Hardsigmoid"),
    ((2, 3, 4, 5, 7), dict(squeeze_channels=3, activation=Silu), 3, "SiLU", "Sigmoid"),
    ((2, 6, 5, 4), dict(reduction=2, activation=PRelu()), 2, "PReLU", "Sigmoid"),
]


@pytest.mark.parametrize("shape, options, squeeze, activation, gate", SQUEEZE)
def test_squeeze_excite_matches_torchvision(shape, options, squeeze, activation, gate):
    """torchvision.ops.SqueezeExcitation's forward, written out in torch."""
    torch = import_torch()
    nd, channels = len(shape) - 2, shape[-1]
    conv = getattr(torch.nn.functional, f"conv{nd}d")
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((squeeze, channels) + (1,) * nd)
    w2 = rng.standard_normal((channels, squeeze) + (1,) * nd)
    b1, b2 = rng.standard_normal(squeeze), rng.standard_normal(channels)
    slope = rng.uniform(-1, 1, 1)
    learned = activation == "PReLU"

    def torch_se(x, *ps):
        slope, b1, w1, b2, w2 = ps if learned else (None, *ps)
        s = x.mean(tuple(range(2, x.ndim)), keepdim=True)
        s = conv(s, w1, b1)
        s = torch.nn.functional.prelu(s, slope) if learned else getattr(torch.nn, activation)()(s)
        return gate_fn(conv(s, w2, b2)) * x

    # PyTorch's float64 Hardsigmoid backward uses a float32 1/6 (3e-8 relative error), so
    # the reference spells out its definition; the module itself is checked in
    # test_layers_activation.
    gate_fn = getattr(torch.nn, gate)()
    if gate == "Hardsigmoid":
        gate_fn = lambda s: torch.nn.functional.relu6(s + 3) / 6  # noqa: E731

    params = {"fc1": {"kernel": to_jax_kernel(w1), "bias": b1}, "activation": {},
              "fc2": {"kernel": to_jax_kernel(w2), "bias": b2}, "scale_activation": {}}
    if learned:
        params["activation"] = {"weight": slope}
    torch_params = ([slope] if learned else []) + [b1, w1, b2, w2]  # pytree (sorted) order
    check_against_torch(SqueezeExcite(**options), rng.standard_normal(shape), params,
                        torch_se, torch_params)


def test_layer_scale_against_numpy():
    rng = np.random.default_rng(2)
    x, scale, cotangent = (rng.standard_normal(s) for s in [(2, 5, 3, 7), (7,), (2, 5, 3, 7)])
    layer = LayerScale()
    y, (dx, dscale) = jax_vjp(lambda x, s: layer.apply({"scale": s}, {}, x)[0], [x, scale],
                              cotangent)
    np.testing.assert_allclose(y, x * scale, rtol=1e-15)
    np.testing.assert_allclose(dx, cotangent * scale, rtol=1e-15)
    np.testing.assert_allclose(dscale, (cotangent * x).sum((0, 1, 2)), rtol=1e-12)
    _, params, _ = LayerScale(0.1).init(jax.random.PRNGKey(0), (-1, 5, 3, 7))
    np.testing.assert_array_equal(params["scale"], np.full(7, 0.1, np.float32))


@pytest.mark.parametrize("layer, shape", [
    (SeparableConv(4, 3, stride=2, depth_multiplier=2), (-1, 7, 6, 3)),
    (SqueezeExcite(reduction=2), (-1, 7, 6, 3)),
    (LayerScale(), (-1, 7, 6, 3)),
], ids=["separable_conv", "squeeze_excite", "layer_scale"])
def test_contract(layer, shape):
    check_layer_contract(layer, shape)


def test_dtypes():
    x = jnp.ones((2, 5, 5, 4))
    for layer in (SeparableConv(3, 3, dtype=jnp.bfloat16), LayerScale(dtype=jnp.bfloat16),
                  SqueezeExcite(2, dtype=jnp.bfloat16)):
        _, params, state = layer.init(jax.random.PRNGKey(0), x.shape)
        assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
        y, _ = layer.apply(params, state, x)
        assert y.dtype == jnp.bfloat16, layer.kind


KEY = jax.random.PRNGKey(0)


@pytest.mark.parametrize("call, error, words", [
    (lambda: SeparableConv(0, 3), ValueError, "SeparableConv: features must be an int >= 1, got 0"),
    (lambda: SeparableConv(4, (3, 0)), ValueError,
     "SeparableConv: kernel_size must be an int or a sequence of ints >= 1, got (3, 0)"),
    (lambda: SeparableConv(4, 3, stride=0), ValueError, "SeparableConv: stride must be"),
    (lambda: SeparableConv(4, 3, depth_multiplier=0), ValueError,
     "SeparableConv: depth_multiplier must be an int >= 1, got 0"),
    (lambda: SeparableConv(4, 3, padding="FULL"), ValueError, "SeparableConv: unknown padding 'FULL'"),
    (lambda: SeparableConv(4, 3, impl="cudnn"), ValueError, "SeparableConv: unknown impl 'cudnn'"),
    (lambda: SeparableConv(4, 3, use_bias=1), ValueError,
     "SeparableConv: use_bias must be True or False, got 1"),
    (lambda: SeparableConv(4, (3, 3)).init(KEY, (-1, 9, 3)), ValueError,
     "SeparableConv: kernel_size must be an int or a sequence of 1 ints, got (3, 3)"),
    (lambda: SeparableConv(4, 3, stride=(1, 2, 3)).init(KEY, (-1, 9, 9, 3)), ValueError,
     "SeparableConv: stride must be an int or a sequence of 2 ints >= 1, got (1, 2, 3)"),
    (lambda: SeparableConv(4, 3, padding=(1, 1, 1)).init(KEY, (-1, 9, 9, 3)), ValueError,
     "SeparableConv: padding must be 'SAME', 'SAME_LOWER', 'VALID', an int, or a sequence of 2"),
    (lambda: SeparableConv(4, 5, padding="VALID").init(KEY, (-1, 3, 9, 3)), ValueError,
     "SeparableConv: kernel of size (5, 5) (dilation (1, 1)) is larger than the padded input"),
    (lambda: SeparableConv(4, 3).init(KEY, (-1, 3)), ValueError,
     "SeparableConv: expected input of rank 3, 4 or 5 (N, *spatial, C), got shape (-1, 3)"),
    (lambda: SeparableConv(4, 3).apply(
        {"depthwise": {"kernel": jnp.ones((3, 3, 1, 3))}}, {}, jnp.ones((2, 9, 7, 4))), ValueError,
     "SeparableConv: expected input of shape (-1, -1, -1, 3), got (2, 9, 7, 4)"),
    (lambda: SqueezeExcite(), ValueError,
     "SqueezeExcite: give exactly one of squeeze_channels and reduction, got "
     "squeeze_channels=None and reduction=None"),
    (lambda: SqueezeExcite(4, reduction=4), ValueError, "give exactly one of"),
    (lambda: SqueezeExcite(0), ValueError, "SqueezeExcite: squeeze_channels must be an int >= 1"),
    (lambda: SqueezeExcite(reduction=1.5), ValueError,
     "SqueezeExcite: reduction must be an int >= 1, got 1.5"),
    (lambda: SqueezeExcite(2, activation=jax.nn.relu), TypeError,
     "SqueezeExcite: activation must be a Layer or a layer factory callable without arguments"),
    (lambda: SqueezeExcite(2, gate="sigmoid"), TypeError, "SqueezeExcite: gate must be a Layer"),
    (lambda: SqueezeExcite(2, impl="xla"), ValueError, "SqueezeExcite: unknown impl 'xla'"),
    (lambda: SqueezeExcite(2).init(KEY, (-1, 4)), ValueError,
     "SqueezeExcite: expected input of rank 3, 4 or 5 (N, *spatial, C), got shape (-1, 4)"),
    (lambda: SqueezeExcite(2, gate=Flatten()).init(KEY, (-1, 5, 5, 4)), ValueError,
     "SqueezeExcite: activation and gate must keep their input's shape; the gate's output has "
     "shape (-1, 4), not (-1, 1, 1, 4)"),
    (lambda: SqueezeExcite(2).apply({"fc1": {"kernel": jnp.ones((1, 1, 4, 2))}}, {},
                                    jnp.ones((2, 5, 5, 3))), ValueError,
     "SqueezeExcite: expected input of shape (-1, -1, -1, 4), got (2, 5, 5, 3)"),
    (lambda: LayerScale("1e-6"), ValueError, "LayerScale: init_value must be a number, got '1e-6'"),
    (lambda: LayerScale().init(KEY, (-1,)), ValueError,
     "LayerScale: expected input of rank >= 2 (batch, ..., channels), got shape (-1,) (rank 1)"),
    (lambda: LayerScale().apply({"scale": jnp.ones(4)}, {}, jnp.ones((2, 3))), ValueError,
     "LayerScale: expected input of shape (batch, ..., 4), got (2, 3)"),
])
def test_errors(call, error, words):
    with pytest.raises(error) as err:
        call()
    assert words in str(err.value)
