"""The train state: everything a run carries from one optimizer step to the next."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxconv.core import Layer, PyTree
from jaxconv.precision import Policy, get_policy, init_loss_scale
from jaxconv.validate import boolean


class TrainState(NamedTuple):
    """Everything a training run carries from step to step (a pytree).

    Attributes:
      step: int32 scalar, number of optimizer steps taken.
      params: trainable parameters.
      state: non-trainable layer state (BatchNorm statistics).
      opt_state: the Optax optimizer state.
      key: PRNG key; step ``t`` uses ``fold_in(key, t)``, so a run resumed at
        step ``t`` draws the same randomness as an uninterrupted one.
      ema: the exponential moving average of ``params`` (same structure), or
        ``None`` without one (``make_train_step(ema_decay=...)``).
      loss_scale: the dynamic loss scale (``jaxconv.precision.LossScaleState``)
        of a policy that scales the loss (``"fp16"``), or ``None``.

    ``None`` fields hold no leaves: a train state without EMA or loss scaling
    has the same leaves (and checkpoint entries) as one of the five first fields.
    """

    step: Any
    params: PyTree
    state: PyTree
    opt_state: PyTree
    key: Any
    ema: PyTree = None
    loss_scale: Any = None

    @property
    def eval_params(self) -> PyTree:
        """The params evaluation and export use: the EMA when there is one, else ``params``."""
        return self.params if self.ema is None else self.ema


def create_train_state(
    model: Layer, key: Any, input_shape: tuple[int, ...], optimizer: optax.GradientTransformation,
    *, ema: bool = False, policy: str | Policy | None = None,
) -> TrainState:
    """Initialises the model and the optimizer.

    Args:
      model: the network.
      key: PRNG key; split into an init key and the training key.
      input_shape: input shape including the batch dimension (may be ``-1``).
      optimizer: an Optax transformation.
      ema: start an exponential moving average of the params (a copy of them).
      policy: a precision policy (``jaxconv.precision``); ``"fp16"`` adds its
        initial loss scale.
    """
    input_shape = tuple(input_shape)
    ema = boolean(ema, "ema", context="create_train_state")
    loss_scale = init_loss_scale(get_policy(policy, context="create_train_state"))

    def build(key):
        # One compiled program: eager initialisers would compile once per kernel shape.
        init_key, train_key = jax.random.split(key)
        _, params, state = model.init(init_key, input_shape)
        average = jax.tree_util.tree_map(jnp.copy, params) if ema else None
        return TrainState(jnp.zeros((), jnp.int32), params, state, optimizer.init(params),
                          train_key, average, loss_scale)

    # It runs once, so on CPU it is compiled without LLVM's optimisations: the
    # compile time saved is much larger than the run time lost.
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jax.jit(build).lower(key).compile(compiler_options=options)(key)
