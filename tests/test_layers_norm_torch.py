"""BatchNorm and InstanceNorm against PyTorch in float64: outputs, running statistics, gradients.

Every mode over several steps that mix training and inference: affine on and
off, ``track_running_stats`` on and off, ``momentum=None`` (BatchNorm's
cumulative average and its ``num_batches_tracked``), 1-D, 2-D and 3-D, odd
sizes, inputs with a different scale and offset at each step. Gradients are
vector-Jacobian products with a random cotangent (``jax.vjp``) against torch
autograd, with respect to the input, ``scale`` and ``bias``.

The state is cast to float64 (the layers keep its dtype), so that the running
statistics are compared at float64 precision too. Tolerance: 1e-10, relative
and absolute (the sums run in different orders; the worst difference seen is
a few 1e-14).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv as jc
from jaxconv.layers.norm import InstanceNorm
from tests.torch_ref import import_torch

TOL = dict(rtol=1e-10, atol=1e-10)
BATCH, CHANNELS = 3, 5


def channels_first(a):
    return np.moveaxis(np.asarray(a), -1, 1)


def channels_last(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


def torch_step(module, x, ct, train, tensors):
    """``module`` in mode ``train`` on channels-last ``x`` with cotangent ``ct``: the output
    and the gradients of the input and of ``tensors`` (a dict of its parameters), channels-last."""
    torch = import_torch()
    module.train(train)
    module.zero_grad()
    xt = torch.tensor(channels_first(x), requires_grad=True)
    y = module(xt)
    y.backward(torch.tensor(channels_first(ct)))
    return channels_last(y), {"x": channels_last(xt.grad),
                              **{k: t.grad.numpy() for k, t in tensors.items()}}


def vjp_step(layer, train):
    """The same with ``layer``, jitted: ``(params, state, x, ct) -> (y, grads, new_state)``,
    the gradients with respect to ``x`` and the params."""
    @jax.jit
    def step(params, state, x, ct):
        y, pull, new_state = jax.vjp(
            lambda p, v: layer.apply(p, state, v, train=train), params, x, has_aux=True)
        g_params, g_x = pull(ct)
        return y, {"x": g_x, **g_params}, new_state

    return step


def torch_state(module):
    """The module's running statistics under jaxconv's state names."""
    if module.running_mean is None:
        return {}
    out = {"mean": module.running_mean.numpy(), "var": module.running_var.numpy()}
    if module.momentum is None:
        out["num_batches_tracked"] = module.num_batches_tracked.numpy()
    return out


def setup(layer, module, spatial, seed):
    """Float64 params (random when affine, copied into ``module``) and state of ``layer``."""
    torch = import_torch()
    module.double()
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, *spatial, CHANNELS))
    state = {k: a.astype(jnp.float64) if k != "num_batches_tracked" else a for k, a in state.items()}
    if module.weight is not None:
        rs = np.random.RandomState(seed)
        params = {"scale": rs.uniform(0.5, 2.0, CHANNELS), "bias": rs.randn(CHANNELS)}
        with torch.no_grad():
            module.weight.copy_(torch.tensor(params["scale"]))
            module.bias.copy_(torch.tensor(params["bias"]))
    assert set(params) == ({"scale", "bias"} if module.weight is not None else set())
    return {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}, state


def compare_steps(layer, module, spatial, modes, seed=0):
    """Runs both over ``modes`` (a sequence of ``train`` flags); returns the worst difference."""
    worst = 0.0
    with jax.enable_x64(True):
        params, state = setup(layer, module, spatial, seed)
        steps = {train: vjp_step(layer, train) for train in set(modes)}
        tensors = {} if module.weight is None else {"scale": module.weight, "bias": module.bias}
        rs = np.random.RandomState(seed + 1)
        for i, train in enumerate(modes):
            shape = (BATCH, *spatial, CHANNELS)
            x = rs.randn(*shape) * (1 + i) + 2.0 * (i - 1)
            ct = rs.randn(*shape)
            y_t, g_t = torch_step(module, x, ct, train, tensors)
            y, g, state = steps[train](params, state, x, ct)
            assert set(g) == set(g_t)
            pairs = [(np.asarray(y), y_t)] + [(np.asarray(g[k]), g_t[k]) for k in g_t]
            expected = torch_state(module)
            assert set(state) == set(expected), (set(state), set(expected))
            pairs += [(np.asarray(state[k]), expected[k]) for k in expected]
            for got, want in pairs:
                np.testing.assert_allclose(got, want, **TOL)
                worst = max(worst, float(np.max(np.abs(got - want), initial=0.0)))
    return worst


def case_params(cases):
    """The ids of ``cases``, the 3-D ones (the slowest to compile) marked ``slow``."""
    return [pytest.param(c, marks=pytest.mark.slow) if "3d" in c else c for c in sorted(cases)]


TRAIN_EVAL = (True, True, False, True, False)

# id -> (jaxconv layer, torch module factory, spatial shape, modes)
BATCH_NORM_CASES = {
    "2d-defaults": (lambda: jc.BatchNorm(), lambda t: t.nn.BatchNorm2d(CHANNELS), (5, 3),
                    TRAIN_EVAL),
    "1d-momentum-none-no-affine": (
        lambda: jc.BatchNorm(momentum=None, use_scale=False, use_bias=False),
        lambda t: t.nn.BatchNorm1d(CHANNELS, momentum=None, affine=False), (7,),
        (True, True, True, False, True, False)),
    "3d-momentum-none-eps": (
        lambda: jc.BatchNorm(momentum=None, epsilon=1e-3),
        lambda t: t.nn.BatchNorm3d(CHANNELS, momentum=None, eps=1e-3), (3, 2, 3), TRAIN_EVAL),
    "2d-no-running-stats": (
        lambda: jc.BatchNorm(track_running_stats=False, momentum=0.3),
        lambda t: t.nn.BatchNorm2d(CHANNELS, momentum=0.3, track_running_stats=False), (3, 4),
        (True, False, True)),
    "features-no-running-stats-no-affine": (
        lambda: jc.BatchNorm(track_running_stats=False, use_scale=False, use_bias=False),
        lambda t: t.nn.BatchNorm1d(CHANNELS, track_running_stats=False, affine=False), (),
        (False, True)),
}

INSTANCE_NORM_CASES = {
    "1d-defaults": (lambda: InstanceNorm(), lambda t: t.nn.InstanceNorm1d(CHANNELS), (7,),
                    (True, False)),
    "2d-affine": (lambda: InstanceNorm(affine=True),
                  lambda t: t.nn.InstanceNorm2d(CHANNELS, affine=True), (5, 3), (False, True)),
    "2d-affine-running-stats": (
        lambda: InstanceNorm(affine=True, track_running_stats=True, momentum=0.2),
        lambda t: t.nn.InstanceNorm2d(CHANNELS, affine=True, track_running_stats=True,
                                      momentum=0.2), (5, 3), TRAIN_EVAL),
    "3d-running-stats": (
        lambda: InstanceNorm(track_running_stats=True),
        lambda t: t.nn.InstanceNorm3d(CHANNELS, track_running_stats=True), (3, 2, 4),
        (True, True, False)),
    "1d-running-stats-affine-eps": (
        lambda: InstanceNorm(affine=True, track_running_stats=True, epsilon=1e-3),
        lambda t: t.nn.InstanceNorm1d(CHANNELS, affine=True, track_running_stats=True, eps=1e-3),
        (6,), (True, False, True, False)),
}


@pytest.mark.parametrize("case", case_params(BATCH_NORM_CASES))
def test_batch_norm_matches_torch(case):
    make_layer, make_module, spatial, modes = BATCH_NORM_CASES[case]
    compare_steps(make_layer(), make_module(import_torch()), spatial, modes, seed=len(case))


@pytest.mark.parametrize("case", case_params(INSTANCE_NORM_CASES))
def test_instance_norm_matches_torch(case):
    make_layer, make_module, spatial, modes = INSTANCE_NORM_CASES[case]
    compare_steps(make_layer(), make_module(import_torch()), spatial, modes, seed=len(case))


def test_one_spatial_element_is_refused_as_in_torch():
    # PyTorch refuses instance statistics of a single spatial element, also in eval mode
    # without running statistics; with them, eval mode is fine.
    torch = import_torch()
    x = np.ones((2, 1, 1, 3))
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        torch.nn.InstanceNorm2d(3).eval()(torch.tensor(channels_first(x)))
    with pytest.raises(ValueError, match="InstanceNorm: instance statistics need more than 1 "
                                         r"spatial element .* got shape \(-1, 1, 1, 3\)"):
        InstanceNorm().init(None, (-1, 1, 1, 3))
    layer = InstanceNorm(track_running_stats=True)
    _, params, state = layer.init(None, (-1, 1, 1, 3))
    y, _ = layer.apply(params, state, x)
    y_t = torch.nn.InstanceNorm2d(3, track_running_stats=True).double().eval()(
        torch.tensor(channels_first(x)))
    np.testing.assert_allclose(y, channels_last(y_t), rtol=1e-6)
    with pytest.raises(ValueError, match=r"got shape \(2, 1, 1, 3\)"):
        layer.apply(params, state, x, train=True)
