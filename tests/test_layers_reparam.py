"""Weight reparametrisations: SpectralNorm and WeightNorm against PyTorch, StdConv against NumPy.

PyTorch cross-checks run in float64: the same kernel, bias and (SpectralNorm)
power-iteration vectors are copied into torch's parametrized module
(``parametrizations.weight.original`` / ``_u`` / ``_v``; ``original0`` /
``original1``), then outputs, the stored vectors and the gradients
(``jax.vjp`` with a random cotangent against torch autograd, with respect to
the input and every param) are compared over steps in training and in
inference. StdConv, which PyTorch does not have, is compared to the float64
NumPy convolution of ``tests/oracle.py`` with a NumPy standardisation, the
kernel's gradient by the chain rule. Tolerance: 1e-10 (float64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv as jc
from jaxconv.layers.conv import StdConv
from jaxconv.layers.reparam import SpectralNorm, WeightNorm
from tests import oracle
from tests.contract import check_layer_contract
from tests.test_layers_norm_torch import case_params, torch_step, vjp_step
from tests.torch_ref import import_torch

TOL = dict(rtol=1e-10, atol=1e-10)
F64 = dict(param_dtype=jnp.float64)
# The contract tests wrap the same Conv(4, 3) on this shape: they share compiled operations.
CONTRACT_SHAPE = (-1, 5, 5, 2)


def to_torch_layout(a):
    """A jaxconv kernel-shaped array ``(*k, a, b)`` in PyTorch's weight layout ``(b, a, *k)``."""
    n = np.ndim(a)
    return np.transpose(np.asarray(a), (n - 1, n - 2, *range(n - 2)))


def assert_close(got, want, worst=0.0):
    """Asserts ``got == want`` within ``TOL``; returns the larger of ``worst`` and the difference."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, **TOL)
    return max(worst, float(np.max(np.abs(got - want), initial=0.0)))


def compare_grads(grads, torch_grads, kernel_keys, worst):
    """Compares jaxconv's grads to torch's; ``kernel_keys`` are in kernel layout in jaxconv."""
    assert set(grads) == set(torch_grads), (set(grads), set(torch_grads))
    for k, g in grads.items():
        g = to_torch_layout(g) if k in kernel_keys else np.asarray(g)
        worst = assert_close(g.reshape(torch_grads[k].shape), torch_grads[k], worst)
    return worst


# --------------------------------------------------------------------------
# SpectralNorm

# id -> (jaxconv layer, torch module, input shape (channels-last), SpectralNorm kwargs,
#        torch spectral_norm kwargs)
SPECTRAL_CASES = {
    "conv2d": (lambda: jc.Conv(4, (3, 2), padding=1, **F64),
               lambda t: t.nn.Conv2d(3, 4, (3, 2), padding=1), (2, 5, 4, 3), {}, {}),
    "conv1d-groups-3-iterations": (
        lambda: jc.Conv(6, 3, stride=2, padding="VALID", groups=2, **F64),
        lambda t: t.nn.Conv1d(4, 6, 3, stride=2, groups=2), (3, 9, 4),
        dict(n_power_iterations=3), dict(n_power_iterations=3)),
    "conv3d-no-bias-dim-1": (lambda: jc.Conv(2, 2, padding=0, use_bias=False, **F64),
                             lambda t: t.nn.Conv3d(3, 2, 2, bias=False), (2, 3, 4, 3, 3),
                             dict(dim=-2, epsilon=1e-6), dict(dim=1, eps=1e-6)),
    "conv_transpose2d": (
        lambda: jc.ConvTranspose(4, 3, stride=2, padding=1, output_padding=1, **F64),
        lambda t: t.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
        (2, 3, 5, 3), {}, {}),
    "dense": (lambda: jc.Dense(4, **F64), lambda t: t.nn.Linear(5, 4), (3, 5), {}, {}),
}


def spectral_torch_module(make_module, kwargs, params, state):
    """torch's spectral-normalised module holding ``params`` and the vectors of ``state``."""
    torch = import_torch()
    module = torch.nn.utils.parametrizations.spectral_norm(make_module(torch).double(), **kwargs)
    weight = module.parametrizations.weight
    with torch.no_grad():
        weight.original.copy_(torch.tensor(to_torch_layout(params["kernel"])))
        weight[0]._u.copy_(torch.tensor(np.asarray(state["u"])))
        weight[0]._v.copy_(torch.tensor(np.asarray(state["v"])))
        if "bias" in params:
            module.bias.copy_(torch.tensor(np.asarray(params["bias"])))
    tensors = {"kernel": weight.original}
    if "bias" in params:
        tensors["bias"] = module.bias
    return module, tensors


def run_spectral_case(case):
    """Four calls (train, train, eval, train) of both; returns the worst difference."""
    make_layer, make_module, shape, kwargs, torch_kwargs = SPECTRAL_CASES[case]
    layer = SpectralNorm(make_layer(), **kwargs)
    rs = np.random.RandomState(len(case))
    worst = 0.0
    with jax.enable_x64(True):
        out_shape, params, state = layer.init(jax.random.PRNGKey(3), shape)
        module, tensors = spectral_torch_module(make_module, torch_kwargs, params, state)
        vectors = module.parametrizations.weight[0]
        steps = {train: vjp_step(layer, train) for train in (False, True)}
        for train in (True, True, False, True):
            x, ct = rs.randn(*shape), rs.randn(*out_shape)
            y, grads, new_state = steps[train](params, state, x, ct)
            y_t, grads_t = torch_step(module, x, ct, train, tensors)
            worst = assert_close(y, y_t, worst)
            worst = compare_grads(grads, grads_t, ("kernel",), worst)
            worst = assert_close(new_state["u"], vectors._u.numpy(), worst)
            worst = assert_close(new_state["v"], vectors._v.numpy(), worst)
            if not train:
                assert all(np.array_equal(new_state[k], state[k]) for k in state)
            state = new_state
    return worst


@pytest.mark.parametrize("case", case_params(SPECTRAL_CASES))
def test_spectral_norm_matches_torch_over_steps(case):
    run_spectral_case(case)


def test_spectral_norm_init_and_contract():
    conv = jc.Conv(4, 3)
    layer = SpectralNorm(conv)
    params, state, x, y = check_layer_contract(layer, CONTRACT_SHAPE, train=True)
    _, conv_params, _ = conv.init(jax.random.PRNGKey(0), CONTRACT_SHAPE)
    for k in ("kernel", "bias"):  # the wrapped layer's own params, same key
        np.testing.assert_array_equal(params[k], conv_params[k])
    assert state["u"].shape == (4,) and state["v"].shape == (18,)
    assert state["u"].dtype == jnp.float32
    # After PyTorch's 15 power iterations at init: v = W^T u / |W^T u|, and u^T W v is
    # close to the largest singular value of W.
    w = to_torch_layout(np.asarray(params["kernel"], np.float64)).reshape(4, -1)
    u, v = np.asarray(state["u"], np.float64), np.asarray(state["v"], np.float64)
    np.testing.assert_allclose(v, w.T @ u / np.linalg.norm(w.T @ u), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(u), 1, rtol=1e-6)
    sigma, largest = u @ w @ v, np.linalg.svd(w, compute_uv=False)[0]
    assert 0.95 * largest <= sigma <= largest * (1 + 1e-6), (sigma, largest)
    # Inference returns the state unchanged; so does a training call on an empty batch.
    _, same = layer.apply(params, state, x)
    assert same is state
    empty, same = layer.apply(params, state, x[:0], train=True)
    assert empty.shape == (0,) + y.shape[1:] and same is state


# --------------------------------------------------------------------------
# WeightNorm

# id -> (jaxconv layer, torch module, input shape, WeightNorm dim, torch weight_norm dim)
WEIGHT_NORM_CASES = {
    "conv2d": (lambda: jc.Conv(4, (2, 3), padding=(1, 0), **F64),
               lambda t: t.nn.Conv2d(3, 4, (2, 3), padding=(1, 0)), (2, 5, 6, 3), -1, 0),
    "conv1d-whole-kernel": (lambda: jc.Conv(3, 3, padding=1, groups=3, **F64),
                            lambda t: t.nn.Conv1d(3, 3, 3, padding=1, groups=3), (2, 7, 3),
                            None, None),
    "conv3d-dim-1": (lambda: jc.Conv(2, 2, padding="VALID", use_bias=False, **F64),
                     lambda t: t.nn.Conv3d(3, 2, 2, bias=False), (2, 3, 3, 4, 3), -2, 1),
    "conv_transpose1d": (lambda: jc.ConvTranspose(4, 3, stride=2, padding=1, **F64),
                         lambda t: t.nn.ConvTranspose1d(3, 4, 3, stride=2, padding=1),
                         (2, 5, 3), -1, 0),
    "dense-dim-1": (lambda: jc.Dense(4, **F64), lambda t: t.nn.Linear(5, 4), (3, 5), -2, 1),
}


def run_weight_norm_case(case):
    """One training and one inference call of both; returns the worst difference."""
    torch = import_torch()
    make_layer, make_module, shape, dim, torch_dim = WEIGHT_NORM_CASES[case]
    layer = WeightNorm(make_layer(), dim=dim)
    rs = np.random.RandomState(len(case))
    worst = 0.0
    with jax.enable_x64(True):
        out_shape, params, state = layer.init(jax.random.PRNGKey(1), shape)
        params["g"] = params["g"] * rs.uniform(0.5, 2.0, params["g"].shape)  # g != |v|
        module = torch.nn.utils.parametrizations.weight_norm(make_module(torch).double(),
                                                             dim=torch_dim)
        weight = module.parametrizations.weight
        tensors = {"g": weight.original0, "v": weight.original1}
        if "bias" in params:
            tensors["bias"] = module.bias
        with torch.no_grad():
            for k, t in tensors.items():
                value = to_torch_layout(params[k]) if k in ("g", "v") else np.asarray(params[k])
                t.copy_(torch.tensor(value.reshape(t.shape)))
        steps = {train: vjp_step(layer, train) for train in (False, True)}
        for train in (True, False):
            x, ct = rs.randn(*shape), rs.randn(*out_shape)
            y, grads, new_state = steps[train](params, state, x, ct)
            y_t, grads_t = torch_step(module, x, ct, train, tensors)
            worst = assert_close(y, y_t, worst)
            worst = compare_grads(grads, grads_t, ("g", "v"), worst)
            assert new_state == {}
    return worst


@pytest.mark.parametrize("case", case_params(WEIGHT_NORM_CASES))
def test_weight_norm_matches_torch(case):
    run_weight_norm_case(case)


def test_weight_norm_contract_and_initial_kernel():
    conv = jc.Conv(4, 3)
    params, state, x, y = check_layer_contract(WeightNorm(conv), CONTRACT_SHAPE)
    assert set(params) == {"g", "v", "bias"} and state == {}
    _, conv_params, _ = conv.init(jax.random.PRNGKey(0), CONTRACT_SHAPE)
    np.testing.assert_allclose(y, conv.apply(conv_params, {}, x)[0], rtol=1e-6, atol=1e-6)
    # Every dim reproduces the wrapped layer's initial kernel: v is it, g its norm.
    kernel = np.asarray(conv_params["kernel"], np.float64)
    for dim, axes in ((-1, (0, 1, 2)), (0, (1, 2, 3)), (None, (0, 1, 2, 3))):
        _, params, _ = WeightNorm(conv, dim=dim).init(jax.random.PRNGKey(0), CONTRACT_SHAPE)
        np.testing.assert_array_equal(params["v"], conv_params["kernel"])
        norm = np.sqrt(np.sum(kernel ** 2, axis=axes, keepdims=True))
        np.testing.assert_allclose(params["g"], norm, rtol=1e-6)
    _, params, _ = WeightNorm(jc.Dense(3, use_bias=False)).init(jax.random.PRNGKey(0), (-1, 4))
    assert set(params) == {"g", "v"} and params["g"].shape == (1, 3)


def test_wrappers_apply_the_wrapped_layer_as_a_child():
    # apply_child: jc.intermediates sees the wrapped layer's output under "<path>/layer".
    model = jc.serial(("sn", SpectralNorm(jc.Conv(4, 3))), ("wn", WeightNorm(jc.Dense(2))))
    _, params, state = model.init(jax.random.PRNGKey(0), CONTRACT_SHAPE)
    outputs = jc.intermediates(model, params, state, jnp.ones((2,) + CONTRACT_SHAPE[1:]))
    assert list(outputs) == ["sn/layer", "sn", "wn/layer", "wn"]
    np.testing.assert_array_equal(outputs["wn/layer"], outputs["wn"])


# --------------------------------------------------------------------------
# StdConv


def standardized_np(kernel, eps):
    """NumPy weight standardisation per output filter (the last axis), biased variance."""
    k = np.asarray(kernel, np.float64)
    axes = tuple(range(k.ndim - 1))
    return (k - k.mean(axes)) / np.sqrt(k.var(axes) + eps)


def standardized_vjp_np(kernel, grad, eps):
    """The gradient with respect to ``kernel`` of ``sum(grad * standardized_np(kernel))``."""
    k = np.asarray(kernel, np.float64)
    axes = tuple(range(k.ndim - 1))
    centred = k - k.mean(axes)
    r = 1 / np.sqrt(k.var(axes) + eps)
    return r * (grad - grad.mean(axes)) - r ** 3 * centred * (grad * centred).mean(axes)


# id -> (StdConv kwargs, input shape, kernel size)
STD_CASES = {
    "2d-same-bias": (dict(features=4), (2, 6, 5, 3), (3, 3)),
    "1d-groups-stride-reflect": (dict(features=6, groups=2, stride=2, padding=2,
                                      padding_mode="reflect", epsilon=1e-4), (2, 9, 4), (3,)),
    "3d-dilation-no-bias": (dict(features=2, dilation=2, padding="VALID", use_bias=False,
                                 epsilon=1e-10), (1, 5, 6, 5, 2), (2, 2, 2)),
}


@pytest.mark.parametrize("case", case_params(STD_CASES))
def test_std_conv_matches_numpy(case):
    kwargs, shape, window = STD_CASES[case]
    kwargs = dict(kwargs)
    eps = kwargs.get("epsilon", 1e-8)
    layer = StdConv(kernel_size=window, **kwargs, **F64)
    rs = np.random.RandomState(len(case))
    with jax.enable_x64(True):
        out_shape, params, _ = layer.init(jax.random.PRNGKey(0), shape)
        params = {k: jnp.asarray(rs.randn(*p.shape) * 0.3 + 0.2) for k, p in params.items()}
        x, ct = rs.randn(*shape), rs.randn(*out_shape)
        y, grads, _ = vjp_step(layer, False)(params, {}, x, ct)
    nd = len(window)
    stride = (kwargs.get("stride", 1),) * nd
    dilation = (kwargs.get("dilation", 1),) * nd
    pairs = oracle.conv_pairs(kwargs.get("padding", "SAME"), shape[1:-1], window, stride, dilation)
    args = dict(stride=stride, pairs=pairs, dilation=dilation, groups=kwargs.get("groups", 1),
                mode=kwargs.get("padding_mode", "zeros"))
    w_hat = standardized_np(params["kernel"], eps)
    ref = oracle.conv(x, w_hat, **args) + np.asarray(params.get("bias", 0.0))
    gx, gw_hat = oracle.conv_vjp(x, w_hat, ct, **args)
    assert_close(y, ref)
    assert_close(grads["x"], gx)
    assert_close(grads["kernel"], standardized_vjp_np(params["kernel"], gw_hat, eps))
    if "bias" in params:
        assert_close(grads["bias"], ct.sum(tuple(range(ct.ndim - 1))))


def test_std_conv_contract_dtype_and_scale_invariance():
    layer = StdConv(4, 3)
    params, _, x, y = check_layer_contract(layer, CONTRACT_SHAPE)
    assert y.dtype == jnp.float32
    # Standardised per filter: a kernel scaled and shifted per filter gives the same output.
    scaled = dict(params, kernel=params["kernel"] * jnp.arange(1.0, 5.0) + jnp.arange(4.0))
    np.testing.assert_allclose(layer.apply(scaled, {}, x)[0], y, rtol=1e-4, atol=1e-4)
    # The standardised kernel keeps the params' dtype (statistics in float32).
    bf16 = StdConv(4, 3, param_dtype=jnp.bfloat16)
    _, params, _ = bf16.init(jax.random.PRNGKey(0), CONTRACT_SHAPE)
    out = jax.eval_shape(lambda p, v: bf16.apply(p, {}, v)[0], params, x.astype(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16


# --------------------------------------------------------------------------
# Factory and init errors


@pytest.mark.parametrize("call, error, words", [
    (lambda: SpectralNorm(jc.Conv), TypeError, "SpectralNorm: expected a Layer to wrap"),
    (lambda: SpectralNorm(jc.Conv(2, 3), n_power_iterations=0), ValueError,
     "SpectralNorm: n_power_iterations must be an int >= 1, got 0"),
    (lambda: SpectralNorm(jc.Conv(2, 3), epsilon=0.0), ValueError,
     "SpectralNorm: epsilon must be a number > 0, got 0.0"),
    (lambda: SpectralNorm(jc.Conv(2, 3), dim=1.0), ValueError,
     "SpectralNorm: dim must be an int axis of the kernel or None, got 1.0"),
    (lambda: WeightNorm("conv"), TypeError, "WeightNorm: expected a Layer to wrap"),
    (lambda: WeightNorm(jc.Dense(2), dim="0"), ValueError,
     "WeightNorm: dim must be an int axis of the kernel or None, got '0'"),
    (lambda: StdConv(4, 3, epsilon=-1.0), ValueError,
     "StdConv: epsilon must be a number > 0, got -1.0"),
    (lambda: StdConv(5, 3, groups=2), ValueError, "StdConv: groups=2 must divide features=5"),
    (lambda: StdConv(4, 3, padding_mode="mirror"), ValueError,
     "StdConv: unknown padding_mode 'mirror'"),
])
def test_factory_errors(call, error, words):
    with pytest.raises(error) as err:
        call()
    assert words in str(err.value)


def test_init_errors():
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="SpectralNorm: dim must be an axis of the rank-4 kernel "
                                         r"\(3, 3, 2, 4\), got 4"):
        SpectralNorm(jc.Conv(4, 3), dim=4).init(key, (-1, 5, 5, 2))
    with pytest.raises(ValueError, match="WeightNorm: the wrapped layer \\(kind 'relu'\\) must "
                                         "have a 'kernel' param of rank >= 2"):
        WeightNorm(jc.Relu()).init(key, (-1, 3))
    stateful = jc.Layer(lambda k, s: (s, {"kernel": jnp.ones((3, 3))}, {"count": jnp.zeros(())}),
                        lambda p, st, x, key=None, train=False: (x @ p["kernel"], st))
    with pytest.raises(ValueError, match=r"SpectralNorm: the wrapped layer must have no state, "
                                         r"got state \{'count': \(\)\}"):
        SpectralNorm(stateful).init(key, (-1, 3))
    with pytest.raises(ValueError, match=r"StdConv: expected input of shape \(-1, -1, -1, 3\), "
                                         r"got \(2, 4, 4, 2\)"):
        layer = StdConv(4, 3)
        _, params, _ = layer.init(key, (-1, 4, 4, 3))
        layer.apply(params, {}, jnp.zeros((2, 4, 4, 2)))
