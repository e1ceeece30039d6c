"""Numerics of BatchNorm, LayerNorm, GroupNorm and InstanceNorm statistics.

Large offsets (``c + N(0, 1)``, ``|c|`` up to ``1e4``) in float32, inputs whose
squares overflow float32 (``|x|`` about ``1e19`` and up to the largest
float32), bfloat16 input (float32 accumulation), float64 input against NumPy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv as jc
from jaxconv.layers.norm import InstanceNorm

SHAPE = (32, 6, 6, 4)  # 1152 values per channel; 144 per example and group of 2 channels; 36 per
# example and channel
F32_MAX = float(np.finfo(np.float32).max)


def normal(shape, seed=0):
    return np.random.RandomState(seed).randn(*shape)


def apply(layer, x, *, train=True, state=None):
    """Runs ``layer`` (jitted) on ``x``; returns ``(y, new_state)`` as NumPy."""
    _, params, init_state = layer.init(jax.random.PRNGKey(0), (-1,) + x.shape[1:])
    run = jax.jit(lambda p, s, v: layer.apply(p, s, v, train=train))
    y, new_state = run(params, init_state if state is None else state, x)
    return np.asarray(y), jax.tree_util.tree_map(np.asarray, new_state)


def normalized_groups(y, layer_name):
    """``y`` as rows of values that the layer normalised together."""
    if layer_name == "BatchNorm":
        return y.reshape(-1, y.shape[-1]).T  # one row per channel
    if layer_name == "LayerNorm":
        return y.reshape(y.shape[0], -1)  # one row per example
    if layer_name == "InstanceNorm":  # one row per (example, channel)
        return np.moveaxis(y, -1, 1).reshape(y.shape[0] * y.shape[-1], -1)
    n, *spatial, c = y.shape  # GroupNorm(2): one row per (example, group)
    return y.reshape(n, -1, 2, c // 2).transpose(0, 2, 1, 3).reshape(n * 2, -1)


def assert_standardized(y, name):
    """Each set of values the layer normalised together has mean 0 and std 1, within 1%."""
    rows = normalized_groups(np.asarray(y, np.float64), name)
    np.testing.assert_allclose(rows.mean(1), 0, atol=0.01)
    np.testing.assert_allclose(rows.std(1), 1, rtol=0.01)


def assert_running_statistics(state, x, *, rtol_mean, rtol_var):
    """BatchNorm's state after one training step from its init (momentum 0.1) on ``x``."""
    v = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    np.testing.assert_allclose(state["mean"], 0.1 * v.mean(0), rtol=rtol_mean)
    np.testing.assert_allclose(state["var"], 0.9 + 0.1 * v.var(0, ddof=1), rtol=rtol_var)


LAYERS = {
    "BatchNorm": lambda: jc.BatchNorm(),
    "LayerNorm": lambda: jc.LayerNorm((1, 2, 3)),
    "GroupNorm": lambda: jc.GroupNorm(2),
    "InstanceNorm": lambda: InstanceNorm(),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("offset", [1e4, -1e4, 3e3])
def test_large_offset_normalizes_to_mean_0_std_1(name, offset):
    # One-pass E[x^2] - E[x]^2 gives a standard deviation of about 0.37 at an offset of 1e4.
    x = (offset + normal(SHAPE, seed=1)).astype(np.float32)
    y, state = apply(LAYERS[name](), x)
    assert_standardized(y, name)
    if name == "BatchNorm":
        assert_running_statistics(state, x, rtol_mean=1e-6, rtol_var=1e-3)


def test_batch_norm_large_offset_over_a_mapped_axis_equals_the_global_batch():
    # 4 "devices" of 8 examples each (vmap with axis_name): psum/pmax reductions.
    x = (1e4 + normal(SHAPE, seed=2)).astype(np.float32)
    mapped = jc.BatchNorm(axis_name="devices")
    _, params, state = mapped.init(jax.random.PRNGKey(0), (-1,) + SHAPE[1:])
    ys, states = jax.jit(jax.vmap(lambda xi: mapped.apply(params, state, xi, train=True),
                                  axis_name="devices"))(x.reshape((4, 8) + SHAPE[1:]))
    y, state_all = apply(jc.BatchNorm(), x)
    np.testing.assert_allclose(np.asarray(ys).reshape(SHAPE), y, atol=1e-4)
    for k in ("mean", "var"):
        np.testing.assert_allclose(states[k], np.broadcast_to(state_all[k], (4, SHAPE[-1])),
                                   rtol=1e-6)


def test_batch_norm_large_offset_in_micro_batches():
    # Micro-batches threaded through lax.scan (as a micro-batched train step does) equal a loop.
    layer = jc.BatchNorm()
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1,) + SHAPE[1:])
    micro = (1e4 + normal((4, 8) + SHAPE[1:], seed=3)).astype(np.float32)

    def body(s, xb):
        y, s = layer.apply(params, s, xb, train=True)
        return s, y

    final, ys = jax.jit(lambda s, xs: jax.lax.scan(body, s, xs))(state, micro)
    for xb, yb in zip(micro, np.asarray(ys)):
        assert_standardized(yb, "BatchNorm")
        state = jax.jit(lambda s, v: layer.apply(params, s, v, train=True)[1])(state, xb)
    for k in ("mean", "var"):
        np.testing.assert_allclose(final[k], state[k], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_squares_beyond_float32_stay_finite_and_exact(name):
    # |x| about 1e19: x**2 overflows float32 (the one-pass variance gave NaN statistics). The
    # standard deviation (1e19) and variance (1e38) are representable, so the result is exact.
    x = (1e19 * normal(SHAPE, seed=4)).astype(np.float32)
    layer = LAYERS[name]()
    y, state = apply(layer, x)
    assert np.all(np.isfinite(y))
    assert_standardized(y, name)
    if name == "BatchNorm":
        assert_running_statistics(state, x, rtol_mean=1e-5, rtol_var=1e-5)
        y_eval, _ = apply(layer, x, train=False, state=state)
        assert np.all(np.isfinite(y_eval))
    # Gradients (about 1 / std) are finite too.
    _, params, init_state = layer.init(jax.random.PRNGKey(0), (-1,) + SHAPE[1:])
    grad = jax.jit(jax.grad(lambda v: jnp.sum(jnp.sin(
        layer.apply(params, init_state, v, train=True)[0]))))(x)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("largest", [F32_MAX / 2048, F32_MAX])
def test_any_finite_input_gives_finite_results(name, largest):
    # Up to the largest float32, with constant channels, examples and groups: the output and the
    # statistics are finite; a variance beyond float32 is stored as the largest float32. While
    # sum(x) does not overflow (|x| below F32_MAX / 2048 here), the result is also exact.
    rs = np.random.RandomState(5)
    x = (rs.uniform(-1, 1, SHAPE) * largest).astype(np.float32)
    x[:4] = largest  # whole examples constant
    x[4:8] = rs.uniform(-1e-30, 1e-30, (4,) + SHAPE[1:])  # and tiny ones
    x[..., 0] = largest  # a constant channel (and constant values in group 0)
    x[..., 1] = -largest
    y, state = apply(LAYERS[name](), x)
    assert np.all(np.isfinite(y))
    rows = normalized_groups(y.astype(np.float64), name)
    varied = rows.std(1) > 0.5
    if largest < F32_MAX:
        assert varied.sum() >= 2
        np.testing.assert_allclose(rows[varied].std(1), 1, rtol=0.01)
        np.testing.assert_allclose(rows[varied].mean(1), 0, atol=0.01)
    if name == "BatchNorm":
        assert all(np.all(np.isfinite(v)) for v in state.values())
        np.testing.assert_allclose(state["mean"][:2], [0.1 * largest, -0.1 * largest], rtol=1e-5)
        np.testing.assert_allclose(state["var"][:2], 0.9, rtol=1e-6)  # constant channels
        np.testing.assert_allclose(state["var"][2:], F32_MAX, rtol=1e-6)  # saturated


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_bfloat16_input_accumulates_in_float32(name):
    # Offset 100 with 1152 values per channel: bfloat16 (8 bits of mantissa) sums would be off
    # by several units; float32 accumulation gets the statistics of the bfloat16 values right.
    layer = {"BatchNorm": jc.BatchNorm(dtype=jnp.bfloat16),
             "LayerNorm": jc.LayerNorm((1, 2, 3), dtype=jnp.bfloat16),
             "GroupNorm": jc.GroupNorm(2, dtype=jnp.bfloat16),
             "InstanceNorm": InstanceNorm(dtype=jnp.bfloat16)}[name]
    x = jnp.asarray(100 + normal(SHAPE, seed=6), jnp.bfloat16)
    y, state = apply(layer, x)
    assert y.dtype == jnp.bfloat16
    x64 = np.asarray(x, np.float64)
    if name == "BatchNorm":
        assert_running_statistics(state, x64, rtol_mean=1e-6, rtol_var=1e-4)
    groups = normalized_groups(x64, name)
    ref = (groups - groups.mean(1, keepdims=True)) / np.sqrt(groups.var(1, keepdims=True) + 1e-5)
    out = normalized_groups(y.astype(np.float64), name)
    np.testing.assert_allclose(out, ref, rtol=2.0 ** -8, atol=2e-3)  # one bfloat16 rounding
    # Every reduction in the computation runs in float32.
    _, params, init_state = layer.init(jax.random.PRNGKey(0), (-1,) + SHAPE[1:])
    jaxpr = jax.make_jaxpr(lambda v: layer.apply(params, init_state, v, train=True))(x)
    reductions = [e for e in jaxpr.jaxpr.eqns if e.primitive.name.startswith("reduce_")]
    assert reductions and all(e.invars[0].aval.dtype == jnp.float32 for e in reductions)


def reference_float64(name, x, eps=1e-5):
    """NumPy float64 output of the layer with its initial params (scale 1, bias 0)."""
    groups = normalized_groups(x, name)
    ref = (groups - groups.mean(1, keepdims=True)) / np.sqrt(groups.var(1, keepdims=True) + eps)
    if name == "BatchNorm":
        return ref.T.reshape(x.shape)
    if name == "LayerNorm":
        return ref.reshape(x.shape)
    if name == "InstanceNorm":
        return np.moveaxis(ref.reshape(x.shape[0], x.shape[-1], *x.shape[1:-1]), 1, -1)
    n, *spatial, c = x.shape
    return ref.reshape(n, 2, -1, c // 2).transpose(0, 2, 1, 3).reshape(x.shape)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_float64_matches_numpy(name):
    with jax.enable_x64(True):
        x = 1e8 + 3.0 * normal(SHAPE, seed=7)  # an offset float32 could not resolve
        y, state = apply(LAYERS[name](), x)
        assert y.dtype == np.float64
        # The float64 spacing at 1e8 is 1.5e-8: both means are within a few of those.
        np.testing.assert_allclose(y, reference_float64(name, x), rtol=1e-7, atol=1e-7)
        if name == "BatchNorm":  # the state is float32
            assert_running_statistics(state, x, rtol_mean=1e-6, rtol_var=1e-6)
