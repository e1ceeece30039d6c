"""Shared checks of the layer contract , used by every layer test."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxconv as jc


def random_input(shape, key=0, dtype=jnp.float32):
    return jax.random.normal(jax.random.PRNGKey(key), shape, dtype)


def check_layer_contract(layer: jc.Layer, input_shape, *, batch: int = 2, train: bool = False,
                         key_needed: bool = False, check_vmap: bool = True):
    """Asserts the contract for ``layer`` on ``input_shape`` (which includes the batch dim).

    - init with a ``-1`` batch declares ``-1`` and the same other dims as a concrete batch;
    - the shape ``init`` declares equals the shape ``apply`` produces;
    - ``apply`` works under ``jit``, ``grad`` (w.r.t. params and input; eager and
      jitted, which take different code paths) and ``vmap``.

    Returns ``(params, state, x, y)`` for further checks.
    """
    concrete = (batch,) + tuple(input_shape[1:])
    unknown = (-1,) + tuple(input_shape[1:])
    out_unknown, params, state = layer.init(jax.random.PRNGKey(0), unknown)
    out_concrete, _, _ = layer.init(jax.random.PRNGKey(0), concrete)
    assert out_unknown[0] == -1, out_unknown
    assert tuple(out_unknown[1:]) == tuple(out_concrete[1:])
    assert out_concrete[0] == batch
    x = random_input(concrete)
    rng = jax.random.PRNGKey(1) if key_needed or train else None
    y, new_state = layer.apply(params, state, x, key=rng, train=train)
    assert tuple(y.shape) == tuple(out_concrete), (y.shape, out_concrete)
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)

    jit_apply = jax.jit(lambda p, s, x, k: layer.apply(p, s, x, key=k, train=train))
    y_jit, _ = jit_apply(params, state, x, rng)
    np.testing.assert_allclose(np.asarray(y_jit, np.float32), np.asarray(y, np.float32),
                               rtol=1e-5, atol=1e-5)

    def scalar(p, x):
        out, _ = layer.apply(p, state, x, key=rng, train=train)
        return jnp.sum(jnp.sin(out.astype(jnp.float32)))

    g_params, g_x = jax.grad(scalar, argnums=(0, 1))(params, x)
    g_params_jit, g_x_jit = jax.jit(jax.grad(scalar, argnums=(0, 1)))(params, x)
    np.testing.assert_allclose(np.asarray(g_x_jit, np.float32), np.asarray(g_x, np.float32),
                               rtol=1e-4, atol=1e-5)
    assert jax.tree_util.tree_structure(g_params) == jax.tree_util.tree_structure(params)
    assert g_x.shape == x.shape
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves((g_params, g_x)))

    if check_vmap:
        # vmap over a leading axis of inputs, each a batch of its own.
        xs = jnp.stack([x, x * 0.5])
        ys, _ = jax.vmap(lambda xi: layer.apply(params, state, xi, key=rng, train=train))(xs)
        assert ys.shape == (2,) + tuple(out_concrete)
        np.testing.assert_allclose(np.asarray(ys[0], np.float32), np.asarray(y, np.float32),
                                   rtol=1e-5, atol=1e-5)
    return params, state, x, y
