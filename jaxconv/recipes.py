"""Training recipes by name: the optimizers and learning-rate schedules of ``jaxconv train``.

The training core (``jaxconv.train``) takes any Optax transformation; this
module builds the few that the command line offers by name::

    optimizer = make_optimizer("adamw", 3e-3, schedule="onecycle", total_steps=660,
                               weight_decay=1e-4)
"""

from __future__ import annotations

import optax

from jaxconv.validate import choice, integer, number

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "onecycle")


def learning_rate_schedule(name: str, lr: float, total_steps: int, *,
                           warmup_steps: int | None = None) -> optax.Schedule:
    """A learning-rate schedule over ``total_steps`` optimizer steps.

    - ``constant``: ``lr``.
    - ``cosine``: ``lr * (1 + cos(pi * t / T)) / 2``.
    - ``warmup_cosine``: linear from 0 to ``lr`` over ``warmup_steps`` (default
      ``T / 20``), then cosine decay to 0.
    - ``onecycle``: cosine ramp from ``lr / 25`` to ``lr`` over the first 30 %, then
      cosine decay to ``lr / 25 / 1e4`` (``optax.cosine_onecycle_schedule``).

    ``total_steps`` below 1 counts as 1 (a run too short for a single step).

    Raises:
      ValueError: an unknown ``name``, a non-integer ``total_steps`` or a
        ``warmup_steps`` below 1.
    """
    context = "learning_rate_schedule"
    choice(name, "schedule", SCHEDULES, context=context)
    total_steps = max(integer(total_steps, "total_steps", context=context), 1)
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, total_steps)
    if name == "warmup_cosine":
        warmup = max(1, total_steps // 20) if warmup_steps is None else integer(
            warmup_steps, "warmup_steps", context=context, minimum=1)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total_steps)
    return optax.cosine_onecycle_schedule(total_steps, lr)


def make_optimizer(name: str, lr: float, *, schedule: str = "constant", total_steps: int = 1,
                   weight_decay: float = 0.0, momentum: float = 0.9) -> optax.GradientTransformation:
    """``sgd`` (with Nesterov momentum), ``adam`` or ``adamw`` on a learning-rate schedule.

    ``weight_decay`` is decoupled for ``adamw`` and added to the gradient
    (L2) for ``sgd`` and ``adam``.

    Raises:
      ValueError: an unknown ``name`` or ``schedule``, ``lr <= 0``, a negative
        ``weight_decay`` or a ``momentum`` outside ``[0, 1)``.
    """
    context = "make_optimizer"
    choice(name, "optimizer", OPTIMIZERS, context=context)
    number(lr, "lr", context=context, minimum=0, exclusive_minimum=True)
    number(weight_decay, "weight_decay", context=context, minimum=0)
    number(momentum, "momentum", context=context, minimum=0, maximum=1, exclusive_maximum=True)
    rate = learning_rate_schedule(schedule, lr, total_steps)
    if name == "adamw":
        return optax.adamw(rate, weight_decay=weight_decay)
    base = optax.sgd(rate, momentum=momentum, nesterov=True) if name == "sgd" else optax.adam(rate)
    if weight_decay:
        return optax.chain(optax.add_decayed_weights(weight_decay), base)
    return base
