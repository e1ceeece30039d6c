"""Mixed-precision policies: the dtype a training step computes in, and dynamic loss scaling.

A policy keeps the parameters, the layer state and the optimizer state in
their own dtype (float32) and runs the model in a compute dtype:

- ``"f32"``: nothing is cast.
- ``"bf16"``: inside the step the input and the floating-point params are cast
  to bfloat16 and the model runs on them (every layer computes in the dtype of
  its input and params). Normalisation layers compute their statistics in
  float32 whatever the input, and keep their running statistics in float32;
  the logits are cast back to float32 before the loss (softmax included). The
  gradients arrive in float32, the dtype of the params (the transpose of the cast).
- ``"fp16"``: the same with float16, plus dynamic loss scaling as PyTorch's
  ``GradScaler`` does it: the loss is multiplied by a scale before the
  backward pass (so that small float16 gradients do not flush to zero) and
  the gradients are divided by it in float32. A step whose gradients are not
  all finite is skipped (params, layer state, optimizer state and EMA stay as
  they were) and the scale is halved; after ``growth_interval`` finite steps
  in a row it is doubled. The scale and its counter are a ``LossScaleState``
  in the train state (``TrainState.loss_scale``), so they are checkpointed.

Evaluation runs the model in the policy's compute dtype too.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxconv.core import PyTree
from jaxconv.validate import choice, integer, number


class DynamicLossScale(NamedTuple):
    """The settings of dynamic loss scaling (PyTorch ``GradScaler``'s defaults).

    Attributes:
      init_scale: the scale of the first step.
      growth_factor: the scale is multiplied by it after ``growth_interval``
        finite steps in a row.
      backoff_factor: the scale is multiplied by it after a non-finite step.
      growth_interval: finite steps in a row before the scale grows.
    """

    init_scale: float = 2.0 ** 16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000


class LossScaleState(NamedTuple):
    """The loss scale a step uses (a pytree of two scalars).

    Attributes:
      scale: float32 scalar, the current loss scale.
      good_steps: int32 scalar, finite steps since the scale last changed.
    """

    scale: Any
    good_steps: Any


class Policy(NamedTuple):
    """A mixed-precision policy.

    Attributes:
      name: ``"f32"``, ``"bf16"`` or ``"fp16"`` for the built-in ones.
      compute_dtype: the dtype the model runs in; ``None`` for no cast.
      loss_scale: dynamic loss scaling settings, or ``None`` for none.
    """

    name: str
    compute_dtype: Any = None
    loss_scale: DynamicLossScale | None = None


POLICIES = {
    "f32": Policy("f32"),
    "bf16": Policy("bf16", jnp.bfloat16),
    "fp16": Policy("fp16", jnp.float16, DynamicLossScale()),
}


def get_policy(policy: str | Policy | None, *, context: str = "get_policy") -> Policy:
    """The ``Policy`` named ``policy`` (``None`` is ``"f32"``); a ``Policy`` is checked and returned.

    Raises:
      ValueError: an unknown name, or loss scaling settings out of range.
      TypeError: neither a name nor a ``Policy``.
    """
    if policy is None:
        return POLICIES["f32"]
    if isinstance(policy, str):
        return POLICIES[choice(policy, "policy", tuple(POLICIES), context=context)]
    if not isinstance(policy, Policy):
        raise TypeError(f"{context}: policy must be one of {tuple(POLICIES)} or a Policy, "
                        f"got {type(policy).__name__}")
    if policy.loss_scale is not None:
        config = policy.loss_scale
        number(config.init_scale, "init_scale", context=context, minimum=0, exclusive_minimum=True)
        number(config.growth_factor, "growth_factor", context=context, minimum=1)
        number(config.backoff_factor, "backoff_factor", context=context, minimum=0, maximum=1,
               exclusive_minimum=True, exclusive_maximum=True)
        integer(config.growth_interval, "growth_interval", context=context, minimum=1)
    return policy


def cast_floating(tree: PyTree, dtype: Any) -> PyTree:
    """``tree`` with its floating-point leaves cast to ``dtype`` (other leaves unchanged)."""
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree)


def for_compute(policy: Policy, params: PyTree, x: Any) -> tuple[PyTree, Any]:
    """``(params, x)`` cast to the policy's compute dtype (unchanged without one)."""
    if policy.compute_dtype is None:
        return params, x
    return cast_floating(params, policy.compute_dtype), cast_floating(x, policy.compute_dtype)


def output_for_loss(policy: Policy, logits: Any) -> Any:
    """The model's output as the loss takes it: float32 under a compute dtype, else unchanged."""
    return logits if policy.compute_dtype is None else cast_floating(logits, jnp.float32)


def init_loss_scale(policy: Policy) -> LossScaleState | None:
    """The loss scale of a run's first step (``None`` for a policy without loss scaling)."""
    if policy.loss_scale is None:
        return None
    return LossScaleState(jnp.asarray(policy.loss_scale.init_scale, jnp.float32), jnp.zeros((), jnp.int32))


def all_finite(tree: PyTree) -> Any:
    """A bool scalar: whether every element of every leaf of ``tree`` is finite."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in leaves])) if leaves else jnp.asarray(True)


def next_loss_scale(config: DynamicLossScale, current: LossScaleState, finite: Any) -> LossScaleState:
    """The loss scale after a step whose gradients were all finite (``finite``) or not.

    Non-finite: the scale is multiplied by ``backoff_factor`` and the counter
    restarts. Finite: the counter grows; when it reaches ``growth_interval``
    the scale is multiplied by ``growth_factor`` (unless that overflows
    float32) and the counter restarts.
    """
    good = current.good_steps + 1
    grown = current.scale * config.growth_factor
    grow = finite & (good >= config.growth_interval)
    scale = jnp.where(finite, jnp.where(grow & jnp.isfinite(grown), grown, current.scale),
                      current.scale * config.backoff_factor)
    return LossScaleState(scale.astype(jnp.float32), jnp.where(finite & ~grow, good, 0).astype(jnp.int32))


def keep_if(finite: Any, new: PyTree, old: PyTree) -> PyTree:
    """Leaf by leaf, ``new`` where ``finite`` is true and ``old`` elsewhere (a skipped step)."""
    return jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
