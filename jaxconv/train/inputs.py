"""Checks of the data that enters ``fit`` and ``evaluate``, on the host, once per data set."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxconv.core import Layer, PyTree
from jaxconv.data import Split


def check_split(data: Split | tuple[Any, Any], *, name: str, context: str) -> tuple[Any, Any]:
    """``(images, labels)`` of a split, after checking that it is one and not empty.

    Raises:
      ValueError: ``data`` is not an ``(images, labels)`` pair, their lengths
        differ, or it holds no example; the message names ``context`` and the split.
    """
    try:
        images, labels = data
    except (TypeError, ValueError):
        raise ValueError(f"{context}: {name} must be an (images, labels) pair, got "
                         f"{type(data).__name__}") from None
    if len(images) != len(labels):
        raise ValueError(f"{context}: {name} has {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError(f"{context}: {name} is empty (0 examples)")
    return images, labels


def check_same_shape(images: Any, other: Any, *, names: tuple[str, str], context: str) -> None:
    """Raises unless two splits' images have the same per-example shape.

    Raises:
      ValueError: ``fit: test images are (8, 8, 3) each, train images (8, 8, 1)``.
    """
    shape, other_shape = tuple(np.shape(images)[1:]), tuple(np.shape(other)[1:])
    if shape != other_shape:
        raise ValueError(f"{context}: {names[1]} images are {other_shape} each, {names[0]} images "
                         f"{shape}; both splits must have the model's input shape")


def output_shape(model: Layer, params: PyTree, state: PyTree, images: Any) -> tuple[int, ...]:
    """The shape of the model's output for one example of ``images``: ``(1, ..., K)`` for ``K`` classes.

    Found by abstract evaluation (``jax.eval_shape``): nothing is computed.
    """
    example = jax.ShapeDtypeStruct((1, *np.shape(images)[1:]), np.asarray(images[:1]).dtype)
    logits = jax.eval_shape(lambda p, s, x: model.apply(p, s, x, train=False)[0], params, state, example)
    return tuple(logits.shape)


def check_labels(labels: Any, output: tuple[int, ...], *, name: str, context: str) -> None:
    """Raises unless every class id in ``labels`` is a class of a model with output shape ``output``.

    Labels with one axis less than the output are class ids and must lie in
    ``[0, K)`` for ``K = output[-1]``; labels shaped like the output are
    targets (for a loss of your own, e.g. ``square_loss``) and are left alone.

    Raises:
      ValueError: naming the first bad label, its example and the class count.
    """
    labels = np.asarray(labels)
    num_classes = output[-1]
    if labels.ndim != len(output) - 1:
        return
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        index = bad[0]
        raise ValueError(
            f"{context}: {name} label {labels.reshape(-1)[index]} (example {index // max(labels[0].size, 1)}) "
            f"is not a class of the model, which has {num_classes} outputs: labels must be in "
            f"[0, {num_classes}); {bad.size} of {labels.size} are outside")
