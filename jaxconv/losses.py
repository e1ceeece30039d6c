"""Losses and metrics, thin batch-mean wrappers over ``optax.losses``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: Any, labels: Any, *, label_smoothing: float = 0.0) -> Any:
    """Mean softmax cross-entropy between ``logits`` ``(N, K)`` and ``labels``.

    ``labels`` are int class ids ``(N,)`` or probability targets ``(N, K)``
    (rows summing to 1, as mixup and cutmix make them):
    ``-mean_n sum_k targets_nk log softmax(logits_n)_k``, with
    ``targets = onehot(labels)`` for class ids. With ``label_smoothing = a``
    the target is ``(1 - a) * targets + a / K``.
    """
    if jnp.ndim(labels) == jnp.ndim(logits):
        return optax.losses.softmax_cross_entropy(logits, optax.smooth_labels(labels, label_smoothing)
                                                  if label_smoothing else labels).mean()
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        return optax.losses.softmax_cross_entropy(logits, targets).mean()
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def square_loss(outputs: Any, labels: Any) -> Any:
    """Mean over the batch of ``sum_k (onehot(labels)_k - outputs_k)^2 / 2``.

    The "total error" of the classic backpropagation walkthrough; ``labels``
    may be int class ids ``(N,)`` or targets shaped like ``outputs``.
    """
    targets = labels
    if jnp.ndim(labels) == jnp.ndim(outputs) - 1:
        targets = jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype)
    return optax.losses.l2_loss(outputs, targets).sum(axis=-1).mean()


def accuracy(logits: Any, labels: Any) -> Any:
    """Fraction of rows whose arg-max equals the label.

    ``labels`` are int class ids ``(N,)``, or probability targets ``(N, K)``
    whose arg-max is the label (the larger part of a mixup or cutmix pair).
    """
    if jnp.ndim(labels) == jnp.ndim(logits):
        labels = jnp.argmax(labels, axis=-1)
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
