"""Losses and metrics, thin batch-mean wrappers over ``optax.losses``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: Any, labels: Any, *, label_smoothing: float = 0.0) -> Any:
    """Mean softmax cross-entropy between ``logits`` ``(N, K)`` and int ``labels`` ``(N,)``.

    ``-mean_n log softmax(logits_n)[labels_n]``; with ``label_smoothing = a`` the
    target is ``(1 - a) * onehot + a / K``.
    """
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
    """Fraction of rows whose arg-max equals the integer label."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)

