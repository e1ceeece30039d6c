"""Relu6, Hardswish, Hardsigmoid, Silu, Mish, Softplus and PRelu against PyTorch.

Values and gradients are compared in float64: the gradient as a
vector-Jacobian product with a random cotangent, ``jax.vjp`` against torch
autograd, with respect to the input and to the parameters. Inputs are random
normals scaled past every kink and threshold, with the kinks themselves
(-3, 0, 3, 6, Softplus thresholds) included exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.layers.activation import (
    Gelu,
    Hardsigmoid,
    Hardswish,
    LeakyRelu,
    Mish,
    PRelu,
    Relu6,
    Silu,
    Softmax,
    Softplus,
)
from tests.contract import check_layer_contract
from tests.torch_ref import import_torch

SHAPE = (2, 5, 4, 3)  # (N, H, W, C): shared by every case
KINKS = [-3.0, 0.0, 3.0, 6.0, 1.5, -1.0, 20.0, 25.0, -25.0]
TOL = dict(rtol=1e-12, atol=1e-14)


def kinked_input(seed: int = 0) -> np.ndarray:
    """Random ``SHAPE`` float64 input spread over [-12, 12], with ``KINKS`` as its first entries."""
    x = 4 * np.random.default_rng(seed).standard_normal(SHAPE)
    x.reshape(-1)[:len(KINKS)] = KINKS
    return x


def jax_vjp(fn, args, cotangent):
    """``fn(*args)`` and the gradient of ``<fn(*args), cotangent>`` w.r.t. each arg, by JAX."""

    @jax.jit
    def value_and_pullback(args, cotangent):
        y, pullback = jax.vjp(fn, *args)
        return y, pullback(cotangent)

    with jax.enable_x64(True):
        y, grads = value_and_pullback([jnp.asarray(a) for a in args], jnp.asarray(cotangent))
        return np.asarray(y), [np.asarray(g) for g in grads]


def torch_vjp(fn, args, cotangent):
    """As ``jax_vjp``, by torch autograd in float64 (arrays in, arrays out)."""
    torch = import_torch()
    leaves = [torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in args]
    y = fn(*leaves)
    y.backward(torch.tensor(np.asarray(cotangent, np.float64)))
    return y.detach().numpy(), [leaf.grad.numpy() for leaf in leaves]


def _layer_fn(layer, params):
    return lambda *args: layer.apply(params(*args[1:]), {}, args[0])[0]


# (our layer, PyTorch module name, module arguments, gradient rtol).
ELEMENTWISE = [
    (Relu6(), "ReLU6", (), 1e-12),
    (Hardswish(), "Hardswish", (), 1e-12),
    # PyTorch's float64 Hardsigmoid backward multiplies by a float32 1/6.
    (Hardsigmoid(), "Hardsigmoid", (), 1e-7),
    (Silu(), "SiLU", (), 1e-12),
    (Mish(), "Mish", (), 1e-12),
    (Softplus(), "Softplus", (), 1e-12),
    (Softplus(beta=2, threshold=3), "Softplus", (2, 3), 1e-12),  # linear from x > 1.5
    (Softplus(beta=0.5, threshold=-0.5), "Softplus", (0.5, -0.5), 1e-12),  # from x > -1
]


@pytest.mark.parametrize("layer, module, args, grad_rtol", ELEMENTWISE,
                         ids=[f"{m}{a}" for _, m, a, _ in ELEMENTWISE])
def test_elementwise_matches_pytorch(layer, module, args, grad_rtol):
    torch = import_torch()
    x = kinked_input()
    cotangent = np.random.default_rng(1).standard_normal(SHAPE)
    y, (dx,) = jax_vjp(_layer_fn(layer, lambda: {}), [x], cotangent)
    y_t, (dx_t,) = torch_vjp(getattr(torch.nn, module)(*args), [x], cotangent)
    np.testing.assert_allclose(y, y_t, **TOL)
    np.testing.assert_allclose(dx, dx_t, rtol=grad_rtol, atol=1e-14)


def test_kink_gradients_are_pytorchs():
    """At the kinks the (sub)gradient is PyTorch's one-sided choice."""
    x = np.array([[-3.0, 0.0, 3.0, 6.0]])

    def grad(layer, params=None):
        fn = _layer_fn(layer, lambda: params or {})
        return jax_vjp(fn, [x], np.ones_like(x))[1][0][0]

    np.testing.assert_array_equal(grad(Relu6()), [0, 0, 1, 0])
    np.testing.assert_array_equal(grad(Hardsigmoid()), [0, 1 / 6, 0, 0])
    np.testing.assert_array_equal(grad(Hardswish()), [0, 0.5, 1, 1])
    np.testing.assert_array_equal(grad(PRelu(), {"weight": np.array([0.25])}), [0.25, 0.25, 1, 1])


@pytest.mark.parametrize("num_parameters", [1, SHAPE[-1]])
def test_prelu_matches_pytorch(num_parameters):
    torch = import_torch()
    x = kinked_input(2)
    weight = np.random.default_rng(3).uniform(-1, 1, num_parameters)
    cotangent = np.random.default_rng(4).standard_normal(SHAPE)
    layer = PRelu(num_parameters)
    y, (dx, dw) = jax_vjp(_layer_fn(layer, lambda w: {"weight": w}), [x, weight], cotangent)

    def torch_prelu(xt, wt):  # channels-last in and out; PyTorch's channels are axis 1
        return torch.nn.functional.prelu(xt.permute(0, 3, 1, 2), wt).permute(0, 2, 3, 1)

    y_t, (dx_t, dw_t) = torch_vjp(torch_prelu, [x, weight], cotangent)
    np.testing.assert_allclose(y, y_t, **TOL)
    np.testing.assert_allclose(dx, dx_t, **TOL)
    np.testing.assert_allclose(dw, dw_t, rtol=1e-12, atol=1e-12)
    module = torch.nn.PReLU(num_parameters)  # PyTorch's default init and layout port as they are
    _, params, _ = layer.init(jax.random.PRNGKey(0), (-1, *SHAPE[1:]))
    np.testing.assert_array_equal(params["weight"], module.weight.detach().numpy())


@pytest.mark.parametrize("layer", [Relu6(), Hardswish(), Hardsigmoid(), Silu(), Mish(), Softplus(),
                                   PRelu(), PRelu(3)], ids=lambda layer: layer.kind)
def test_contract(layer):
    check_layer_contract(layer, (-1, 4, 3))


def test_prelu_dtypes_and_kind():
    layer = PRelu(3, init=0.1, dtype=jnp.bfloat16)
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, 4, 3))
    assert params["weight"].dtype == jnp.float32 and params["weight"].shape == (3,)
    y, _ = layer.apply(params, state, -jnp.ones((2, 4, 3)))
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), -0.1, rtol=1e-2)


@pytest.mark.parametrize("call, error, words", [
    (lambda: Softplus(beta=0), ValueError, "Softplus: beta must be a number > 0, got 0"),
    (lambda: Softplus(threshold="20"), ValueError, "Softplus: threshold must be a number, got '20'"),
    (lambda: PRelu(0), ValueError, "PRelu: num_parameters must be an int >= 1, got 0"),
    (lambda: PRelu(2.0), ValueError, "PRelu: num_parameters must be an int >= 1, got 2.0"),
    (lambda: PRelu(init=None), ValueError, "PRelu: init must be a number, got None"),
    (lambda: LeakyRelu("0.1"), ValueError, "LeakyRelu: negative_slope must be a number"),
    (lambda: Gelu(approximate=1), ValueError, "Gelu: approximate must be True or False, got 1"),
    (lambda: Softmax(axis=1.0), ValueError, "Softmax: axis must be an int, got 1.0"),
    (lambda: Relu6().init(None, 5), TypeError, "Relu6: input_shape must be a tuple of ints"),
    (lambda: Mish().init(None, (-1, 0)), ValueError,
     "Mish: non-batch dimensions of input_shape must be positive"),
    (lambda: PRelu(3).init(jax.random.PRNGKey(0), (-1, 5, 4)), ValueError,
     r"PRelu: expected input of shape (batch, ..., 3), got (-1, 5, 4)"),
    (lambda: PRelu().init(jax.random.PRNGKey(0), (-1,)), ValueError,
     "PRelu: expected input of rank >= 2 (batch, ..., channels), got shape (-1,) (rank 1)"),
    (lambda: PRelu(3).apply({"weight": jnp.ones(3)}, {}, jnp.ones((2, 4))), ValueError,
     "PRelu: expected input of shape (batch, ..., 3), got (2, 4)"),
])
def test_errors(call, error, words):
    with pytest.raises(error) as err:
        call()
    assert words in str(err.value)
