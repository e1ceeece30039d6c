"""Training and evaluation on a ``jaxconv.data.Loader``: image folders streamed from disk.

- ``LoaderBatches``: the training batches of every epoch from one resumable
  ``LoaderIterator`` (``steps_per_call`` batches stacked per compiled call);
- ``evaluate_loader``: mean loss and accuracy over a ``Loader``'s batches, the
  padding rows (label ``PADDING_LABEL``) left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from jax.sharding import Mesh

from jaxconv.core import PyTree
from jaxconv.data import PADDING_LABEL, Loader
from jaxconv.distributed import host_local_batch


def check_train_loader(loader: Loader, *, context: str) -> None:
    """Raises unless ``loader`` drops its last incomplete batch (no padding rows in training)."""
    if loader.batches_per_epoch != len(loader.split) // loader.layout.batch_size:
        raise ValueError(f"{context}: a training Loader must have drop_remainder=True "
                         "(its padding rows would be trained on)")


def _stacked(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """``K`` batches as one ``(K, B, ...)`` pair."""
    return np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])


class LoaderBatches:
    """The batches ``fit`` trains on from a ``Loader``, one stream for the whole run.

    Item ``i`` of epoch ``e`` is the loader's batches ``[i * K, (i + 1) * K)``
    of that epoch (one batch when ``K = steps_per_call`` is 1, else stacked to
    ``(K, B, ...)``); when ``K`` does not divide the loader's batches per epoch
    the remainder is not read. The stream is made once and re-made only where
    it is not already at the batch asked for (the first epoch, a resume, an
    epoch after a remainder), so its worker processes live across epochs.

    Attributes:
      state: the stream's state (``{"epoch", "position"}``: the next batch),
        kept in each checkpoint's metadata as ``data_state``.
    """

    def __init__(self, loader: Loader, *, steps_per_call: int, epochs: int, mesh: Mesh | None):
        self.loader, self.steps_per_call, self.epochs, self.mesh = loader, steps_per_call, epochs, mesh
        self._stream: Any = None

    @property
    def state(self) -> dict[str, int] | None:
        return None if self._stream is None else self._stream.state

    def epoch(self, epoch: int, first_item: int) -> Iterator[tuple[Any, Any]]:
        """The items ``first_item, ...`` of ``epoch`` (placed on ``mesh`` when there is one)."""
        k = self.steps_per_call
        wanted = {"epoch": epoch, "position": first_item * k}
        if self.state != wanted:
            self.close()
            self._stream = self.loader.iterator(wanted, epochs=self.epochs)
        for _ in range(first_item, self.loader.batches_per_epoch // k):
            batch = next(self._stream) if k == 1 else _stacked([next(self._stream) for _ in range(k)])
            if self.mesh is not None:
                batch = host_local_batch(batch, self.mesh, steps_per_call=k)
            yield batch

    def close(self) -> None:
        """Stops the stream's worker processes."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()


def evaluate_loader(eval_step: Callable, params: PyTree, state: PyTree, loader: Loader, *,
                    mesh: Mesh | None = None) -> dict[str, float]:
    """Mean loss and accuracy over one pass of ``loader`` (``shuffle=False, drop_remainder=False``).

    Rows labelled ``PADDING_LABEL`` are masked out. ``eval_step`` is
    ``make_eval_step``'s; with a ``mesh`` each process's rows are assembled
    into the global batch (``host_local_batch``).
    """
    loss_sum, correct_sum = 0.0, 0.0
    with loader.iterator() as stream:
        for images, labels in stream:
            mask = (labels != PADDING_LABEL).astype(np.float32)
            batch = (images, np.where(labels == PADDING_LABEL, 0, labels).astype(np.int32), mask)
            if mesh is not None:
                batch = host_local_batch(batch, mesh)
            loss, correct = eval_step(params, state, *batch)
            loss_sum += float(loss)
            correct_sum += float(correct)
    count = len(loader.split)  # every process sees the global sums
    return {"loss": loss_sum / count, "accuracy": correct_sum / count}
