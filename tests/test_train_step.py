"""The step's factories: each returns a pure function, and make_train_step is their composition."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxconv as jc
from jaxconv.train import compile_step, loss_and_grad, microbatched, optimizer_step, repeated

RNG = np.random.default_rng(2)
IMAGES = RNG.random((16, 4, 4, 1), dtype=np.float32)
LABELS = (np.arange(16) % 2).astype(np.int32)
MODEL = jc.serial(jc.Flatten(), jc.Dense(2))
OPT = optax.sgd(0.1)


def fresh_state():
    return jc.create_train_state(MODEL, jax.random.PRNGKey(0), (-1, 4, 4, 1), OPT)


def test_make_train_step_is_a_jit_object_with_nothing_patched_on():
    step = jc.make_train_step(MODEL, OPT)
    assert type(step) is type(jax.jit(lambda x: x))
    assert not hasattr(step, "jitted")
    lowered = step.lower(fresh_state(), (IMAGES, LABELS))  # jax.jit's own API
    assert "dot_general" in lowered.as_text()


def test_the_composition_equals_make_train_step_bitwise():
    gradients = microbatched(loss_and_grad(MODEL), 2)
    composed = compile_step(repeated(optimizer_step(OPT, gradients), 2))
    batch = (IMAGES.reshape(2, 8, 4, 4, 1), LABELS.reshape(2, 8))
    a, ma = composed(fresh_state(), batch)
    b, mb = jc.make_train_step(MODEL, OPT, steps_per_call=2, microbatches=2)(fresh_state(), batch)
    for x, y in zip(jax.tree_util.tree_leaves((a, ma)), jax.tree_util.tree_leaves((b, mb))):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    assert int(a.step) == 2 and ma["loss"].shape == (2,)


def test_factories_pass_through_at_one_and_check_their_counts():
    gradients = loss_and_grad(MODEL)
    step = optimizer_step(OPT, gradients)
    assert microbatched(gradients, 1) is gradients and repeated(step, 1) is step
    for factory, arg, name in ((microbatched, gradients, "microbatched"), (repeated, step, "repeated")):
        with pytest.raises(ValueError, match=f"{name}: .* must be an int >= 1, got 0"):
            factory(arg, 0)
    _, params, state = MODEL.init(jax.random.PRNGKey(0), (-1, 4, 4, 1))
    grads, new_state, loss, acc = gradients(params, state, IMAGES, LABELS, jax.random.PRNGKey(1))
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    assert new_state == state and loss.shape == () and 0 <= float(acc) <= 1
    ref = jax.grad(lambda p: jc.cross_entropy(MODEL.apply(p, state, IMAGES)[0], LABELS))(params)
    np.testing.assert_allclose(grads["dense0"]["kernel"], ref["dense0"]["kernel"], rtol=1e-6)
    assert jnp.all(jnp.isfinite(grads["dense0"]["bias"]))
