"""Data sets and mini-batching.

``load_dataset("digits")`` is the embedded default: scikit-learn's bundled
8x8 handwritten digits (1,797 images), split 80/20 with
``train_test_split(test_size=0.2, stratify=y, random_state=0)``.
Images are float32 ``(N, H, W, C)`` in ``[0, 1]``; labels are int32 ``(N,)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Split(NamedTuple):
    images: np.ndarray  # (N, H, W, C) float32 in [0, 1]
    labels: np.ndarray  # (N,) int32


class Dataset(NamedTuple):
    name: str
    train: Split
    test: Split
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of a batch of unknown size: ``(-1, H, W, C)``."""
        return (-1,) + tuple(self.train.images.shape[1:])


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    labels = bunch.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=0)
    return Dataset("digits", Split(x_tr, y_tr), Split(x_te, y_te), 10)


LOADERS = {"digits": _digits}


def load_dataset(name: str, root: str | None = None) -> Dataset:
    """Loads a data set by name.

    Args:
      name: ``"digits"``.
      root: directory holding the files of on-disk data sets (unused by digits).
    """
    try:
        loader = LOADERS[name]
    except KeyError:
        raise ValueError(
            f"load_dataset: unknown data set {name!r}; expected one of {sorted(LOADERS)}") from None
    return loader() if name == "digits" else loader(root)


def epoch_batches(
    key: Any, images: Any, labels: Any, batch_size: int, *, steps_per_call: int = 1
) -> Iterator[tuple[Any, Any]]:
    """Yields shuffled ``(images, labels)`` mini-batches for one epoch.

    The permutation is drawn with ``jax.random.permutation(key, N)``, so the
    order depends only on ``key``. The last incomplete batch is dropped so that
    every batch has the same shape (one compilation). With ``steps_per_call=K``
    each item stacks ``K`` batches: ``(K, batch_size, ...)``.
    """
    n = images.shape[0]
    per_item = batch_size * steps_per_call
    if per_item > n:
        raise ValueError(
            f"epoch_batches: batch_size * steps_per_call = {per_item} exceeds the {n} examples")
    perm = jax.random.permutation(key, n)
    images, labels = jnp.asarray(images)[perm], jnp.asarray(labels)[perm]
    for start in range(0, n - per_item + 1, per_item):
        xb, yb = images[start:start + per_item], labels[start:start + per_item]
        if steps_per_call > 1:
            xb = xb.reshape((steps_per_call, batch_size) + xb.shape[1:])
            yb = yb.reshape((steps_per_call, batch_size) + yb.shape[1:])
        yield xb, yb


def batches_per_epoch(n: int, batch_size: int, steps_per_call: int = 1) -> int:
    return n // (batch_size * steps_per_call)
