"""The train state: everything a run carries from one optimizer step to the next."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxconv.core import Layer, PyTree


class TrainState(NamedTuple):
    """Everything a training run carries from step to step (a pytree).

    Attributes:
      step: int32 scalar, number of optimizer steps taken.
      params: trainable parameters.
      state: non-trainable layer state (BatchNorm statistics).
      opt_state: the Optax optimizer state.
      key: PRNG key; step ``t`` uses ``fold_in(key, t)``, so a run resumed at
        step ``t`` draws the same randomness as an uninterrupted one.
    """

    step: Any
    params: PyTree
    state: PyTree
    opt_state: PyTree
    key: Any


def create_train_state(
    model: Layer, key: Any, input_shape: tuple[int, ...], optimizer: optax.GradientTransformation
) -> TrainState:
    """Initialises the model and the optimizer.

    Args:
      model: the network.
      key: PRNG key; split into an init key and the training key.
      input_shape: input shape including the batch dimension (may be ``-1``).
      optimizer: an Optax transformation.
    """
    input_shape = tuple(input_shape)

    def build(key):
        # One compiled program: eager initialisers would compile once per kernel shape.
        init_key, train_key = jax.random.split(key)
        _, params, state = model.init(init_key, input_shape)
        return TrainState(jnp.zeros((), jnp.int32), params, state, optimizer.init(params),
                          train_key)

    # It runs once, so on CPU it is compiled without LLVM's optimisations: the
    # compile time saved is much larger than the run time lost.
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jax.jit(build).lower(key).compile(compiler_options=options)(key)
