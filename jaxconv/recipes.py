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


def warmup_length(warmup_steps: int | float | None, total_steps: int, *, context: str) -> int:
    """Warmup steps from an int count (``>= 0``) or a float fraction of ``total_steps`` in ``(0, 1)``.

    ``None`` is 0. A fraction rounds to the nearest step, at least 1.

    Raises:
      ValueError: a negative count, a float outside ``(0, 1)``, or neither.
    """
    if warmup_steps is None:
        return 0
    if isinstance(warmup_steps, float):
        fraction = number(warmup_steps, "warmup_steps", context=context, minimum=0, maximum=1,
                          exclusive_minimum=True, exclusive_maximum=True)
        return max(1, round(fraction * total_steps))
    return integer(warmup_steps, "warmup_steps", context=context, minimum=0)


def with_warmup(schedule: optax.Schedule, warmup: int) -> optax.Schedule:
    """A linear warmup from 0 to ``schedule(0)`` over ``warmup`` steps, then ``schedule(t - warmup)``."""
    if not warmup:
        return schedule
    return optax.join_schedules([optax.linear_schedule(0.0, schedule(0), warmup), schedule], [warmup])


def learning_rate_schedule(name: str, lr: float, total_steps: int, *,
                           warmup_steps: int | float | None = None) -> optax.Schedule:
    """A learning-rate schedule over ``total_steps`` optimizer steps, with an optional warmup.

    - ``constant``: ``lr``.
    - ``cosine``: ``lr * (1 + cos(pi * t / T)) / 2``.
    - ``warmup_cosine``: linear from 0 to ``lr`` over the warmup (default
      ``T / 20``), then cosine decay to 0 at ``T``.
    - ``onecycle``: cosine ramp from ``lr / 25`` to ``lr`` over the first 30 %, then
      cosine decay to ``lr / 25 / 1e4`` (``optax.cosine_onecycle_schedule``).

    ``warmup_steps`` (an int count, or a float fraction of ``T`` in ``(0, 1)``)
    adds a warmup to any schedule: linear from 0 to the schedule's first value
    over ``W`` steps, then the schedule compressed into the ``T - W`` steps left
    (at least one). ``None`` or 0: no warmup (``warmup_cosine``: its default).
    ``total_steps`` below 1 counts as 1 (a run too short for a single step).

    Raises:
      ValueError: an unknown ``name``, a non-integer ``total_steps`` or a bad
        ``warmup_steps`` (see ``warmup_length``).
    """
    context = "learning_rate_schedule"
    choice(name, "schedule", SCHEDULES, context=context)
    total_steps = max(integer(total_steps, "total_steps", context=context), 1)
    warmup = warmup_length(warmup_steps, total_steps, context=context)
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup or max(1, total_steps // 20), total_steps)
    rest = max(total_steps - warmup, 1)
    if name == "constant":
        schedule = optax.constant_schedule(lr)
    elif name == "cosine":
        schedule = optax.cosine_decay_schedule(lr, rest)
    else:
        schedule = optax.cosine_onecycle_schedule(rest, lr)
    return with_warmup(schedule, warmup)


def make_optimizer(name: str, lr: float, *, schedule: str = "constant", total_steps: int = 1,
                   weight_decay: float = 0.0, momentum: float = 0.9,
                   warmup_steps: int | float | None = None) -> optax.GradientTransformation:
    """``sgd`` (with Nesterov momentum), ``adam`` or ``adamw`` on a learning-rate schedule.

    ``weight_decay`` is decoupled for ``adamw`` and added to the gradient
    (L2) for ``sgd`` and ``adam``. ``warmup_steps``: see ``learning_rate_schedule``.
    Gradient clipping and the EMA of the params are options of the training
    step (``fit(clip_norm=..., ema=...)``), not of the optimizer.

    Raises:
      ValueError: an unknown ``name`` or ``schedule``, ``lr <= 0``, a negative
        ``weight_decay``, a ``momentum`` outside ``[0, 1)`` or a bad ``warmup_steps``.
    """
    context = "make_optimizer"
    choice(name, "optimizer", OPTIMIZERS, context=context)
    number(lr, "lr", context=context, minimum=0, exclusive_minimum=True)
    number(weight_decay, "weight_decay", context=context, minimum=0)
    number(momentum, "momentum", context=context, minimum=0, maximum=1, exclusive_maximum=True)
    rate = learning_rate_schedule(schedule, lr, total_steps, warmup_steps=warmup_steps)
    if name == "adamw":
        return optax.adamw(rate, weight_decay=weight_decay)
    base = optax.sgd(rate, momentum=momentum, nesterov=True) if name == "sgd" else optax.adam(rate)
    if weight_decay:
        return optax.chain(optax.add_decayed_weights(weight_decay), base)
    return base
