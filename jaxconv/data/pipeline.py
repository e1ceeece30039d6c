"""Batches of an image folder, read by Grain worker processes; sharded, seeded and resumable.

A ``Loader`` turns a ``FolderSplit`` into a stream of NumPy batches
``(images (b, H, W, C) float32, labels (b,) int32)``. The stream is a Grain
``MapDataset`` over batch numbers (``grain.MapDataset.range(...).map(...)``)
whose function reads, decodes, augments and normalises one batch; with
``workers > 0`` Grain runs it in that many worker processes
(``mp_prefetch``), each ``prefetch`` batches ahead, and hands the batches back
in order.

Every batch is a pure function of ``(seed, epoch, position, shard)``:

- epoch ``e`` visits the examples in a random order drawn from ``(seed, e)``
  (``epoch_order``; file order with ``shuffle=False``);
- global batch ``i`` is the positions ``[i * B, (i + 1) * B)`` of that order;
  shard ``p`` of ``P`` reads rows ``[p * B / P, (p + 1) * B / P)`` of it, the
  rows ``jaxconv.distributed.process_rows`` gives process ``p`` on a
  ``data_mesh``, so the shards' batches laid end to end are the global batch;
- example ``k``'s augmentation draws from a NumPy generator seeded with
  ``(seed, e, k)``.

So the worker count never changes the stream, and resuming needs only the
iterator's ``state``, ``{"epoch": e, "position": i}`` (the next global
batch): a small JSON-able dict to keep in a checkpoint's metadata.

Typical use, one process or many (each reads only its own rows)::

    folder = jaxconv.data.image_folder("photos", image_size=64, augment=jaxconv.data.Augment())
    loader = jaxconv.data.Loader(folder.train, batch_size=256, seed=0, workers=4)
    stream = loader.iterator(saved_state, epochs=30)      # saved_state: None or a stream.state
    for images, labels in stream:                          # loader.batches_per_epoch per epoch
        batch = jaxconv.distributed.host_local_batch((images, labels), mesh)
        ...
        metadata["data_state"] = stream.state

Unreadable images raise ``ImageError`` in the main process, naming the file
(also when a worker read it); with ``skip_bad_images`` each is replaced by the
next readable file (its own label) and reported once with a ``BadImageWarning``.
With ``workers > 0`` the worker processes are started with ``spawn``: a script
must create its iterators under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import grain
import jax
import numpy as np
from absl import flags
from grain.multiprocessing import SharedMemoryArray
from PIL import Image

from jaxconv.data.folder import BadImageWarning, FolderSplit
from jaxconv.data.images import ImageError, normalize, open_image, transform
from jaxconv.validate import boolean, integer

#: The label of the rows that pad the last batch when ``drop_remainder=False``.
PADDING_LABEL = -1
#: The most files tried in a row for one example with ``skip_bad_images``.
MAX_SUBSTITUTES = 64
_SHOWN = 10
_MAX_SEED = 2**32 - 1


def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch ``epoch``'s order of ``range(size)``: a permutation drawn from ``(seed, epoch)`` (4 or 8 bytes each)."""
    order = np.arange(size, dtype=np.int32 if size < 2**31 else np.int64)
    np.random.default_rng([seed, epoch, 1]).shuffle(order)
    return order


class Layout(NamedTuple):
    """Where the rows of this shard's batches come from.

    Attributes:
      size: examples in the split.
      batch_size: the global batch size ``B``.
      shard, shards: this shard's index ``p`` and the count ``P`` (``P`` divides ``B``).
      batches_per_epoch: ``size // B``, or ``ceil(size / B)`` with the last batch padded.
      shuffle: visit each epoch in a seeded random order.
      seed: seeds the order and the augmentation.
    """

    size: int
    batch_size: int
    shard: int
    shards: int
    batches_per_epoch: int
    shuffle: bool
    seed: int

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.shards

    def positions(self, batch: int) -> range:
        """The positions (in the epoch's order) of this shard's rows of global batch ``batch``."""
        start = batch * self.batch_size + self.shard * self.local_batch_size
        return range(start, start + self.local_batch_size)


class BatchReader:
    """The function Grain maps over batch numbers: ``epoch * batches_per_epoch + i`` -> one batch.

    Returns ``(images, labels, skipped)``: float32 ``(b, H, W, C)``, int32
    ``(b,)`` (padding rows: zeros and ``PADDING_LABEL``), and the
    ``(path, message)`` of every file skipped for this batch. With ``shared``
    (in worker processes) the images are written straight into a Grain
    ``SharedMemoryArray``, which reaches the main process without a copy.
    Each process calls it from one thread (it reuses a pixel buffer).
    """

    def __init__(self, split: FolderSplit, layout: Layout, *, shared: bool = False):
        self.split, self.layout, self.shared = split, layout, shared
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, epoch_order)
        self._pixels: np.ndarray | None = None  # uint8 rows, reused from batch to batch

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__, _order=None, _pixels=None)

    def source_index(self, position: int, epoch: int) -> int:
        """The example at ``position`` of ``epoch``'s order (drawn once per epoch in each process)."""
        if not self.layout.shuffle:
            return position
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.layout.size, self.layout.seed, epoch))
        return int(self._order[1][position])

    def example(self, index: int, epoch: int, skipped: list[tuple[str, str]]) -> tuple[np.ndarray, int]:
        """Example ``index``: uint8 ``(H, W, C)`` pixels and the label.

        With ``skip_bad_images`` the next readable file stands in for an
        unreadable one, whose ``(path, message)`` goes to ``skipped``.
        """
        split = self.split
        for attempt in range(min(len(split), MAX_SUBSTITUTES)):
            k = (index + attempt) % len(split)
            try:
                img = open_image(split.files[k], channels=split.preprocess.channels,
                                 max_pixels=split.preprocess.max_pixels)
            except ImageError as e:
                if not split.skip_bad_images:
                    raise
                skipped.append((split.files[k], str(e)))
                continue
            rng = None if split.augment is None else np.random.default_rng([self.layout.seed, epoch, k, 2])
            return transform(img, split.preprocess, split.augment, rng), int(split.labels[k])
        raise ImageError(f"Loader: {len(skipped)} files in a row from {split.files[index]} could not be read "
                         f"(the last: {skipped[-1][1]}); is the folder readable?")

    def __call__(self, number: int) -> tuple[np.ndarray, np.ndarray, tuple[tuple[str, str], ...]]:
        epoch, batch = divmod(int(number), self.layout.batches_per_epoch)
        pre = self.split.preprocess
        shape = (self.layout.local_batch_size, *pre.image_size, pre.channels)
        if self._pixels is None:
            self._pixels = np.empty(shape, np.uint8)
        labels = np.full(self.layout.local_batch_size, PADDING_LABEL, np.int32)
        skipped: list[tuple[str, str]] = []
        for row, position in enumerate(self.layout.positions(batch)):
            if position < self.layout.size:
                self._pixels[row], labels[row] = self.example(self.source_index(position, epoch), epoch, skipped)
        out = SharedMemoryArray(shape, np.float32) if self.shared else np.empty(shape, np.float32)
        normalize(self._pixels, pre, out=out)
        out[labels == PADDING_LABEL] = 0.0
        return out, labels, tuple(skipped)


def _allow_grain_workers() -> None:
    """Marks absl flags parsed (every flag keeps its default) if the program never parsed them.

    Grain 0.2.18 reads one of its absl flags when it starts worker processes,
    which raises in any program not started through ``absl.app``.
    """
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def init_worker(max_pixels: int, worker: int, workers: int) -> None:
    """Runs first in each worker process (which runs only the loader, so its settings surprise nobody).

    Pillow's own pixel limit becomes the loader's and its warning an error; JAX
    (imported with jaxconv, never used there) is kept to the CPU, so that a
    worker can never claim accelerator memory.
    """
    del worker, workers
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    jax.config.update("jax_platforms", "cpu")


def grain_batches(reader: BatchReader, first: int, stop: int, *, workers: int, prefetch: int) -> Any:
    """A Grain iterator over batch numbers ``[first, stop)`` of ``reader``.

    ``workers=0`` reads in this process (``prefetch`` batches ahead in a thread,
    or synchronously with ``prefetch=0``); otherwise ``workers`` spawned processes
    each keep ``max(prefetch, 1)`` batches ready.
    """
    threads = 1 if prefetch and not workers else 0
    stream = grain.MapDataset.range(first, stop).map(reader).to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch if threads else 0))
    if workers:
        _allow_grain_workers()
        stream = stream.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=max(prefetch, 1)),
            worker_init_fn=functools.partial(init_worker, reader.split.preprocess.max_pixels))
    return iter(stream)


class LoaderIterator:
    """An iterator over a ``Loader``'s batches, from a state to the end of an epoch (``Loader.iterator``).

    ``state`` is the position of the next batch, ``{"epoch": e, "position": i}``;
    ``Loader.iterator(state)`` continues from it, bitwise as this iterator would.
    The worker processes start with the first ``next`` and stop at the end; close
    the iterator (or use it as a context manager) to stop them early.

    Attributes:
      skipped: ``{path: message}`` of every file skipped so far (``skip_bad_images``).
    """

    def __init__(self, loader: Loader, first: int, stop: int):
        self._loader, self._next, self._stop = loader, first, stop
        self._reader = BatchReader(loader.split, loader.layout, shared=loader.workers > 0)
        self._grain: Any = None
        self.skipped: dict[str, str] = {}

    @property
    def state(self) -> dict[str, int]:
        epoch, position = divmod(self._next, self._loader.batches_per_epoch)
        return {"epoch": epoch, "position": position}

    def __iter__(self) -> LoaderIterator:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        if self._next >= self._stop:
            self.close()
            raise StopIteration
        if self._grain is None:
            self._grain = grain_batches(self._reader, self._next, self._stop, workers=self._loader.workers,
                                        prefetch=self._loader.prefetch)
        try:
            images, labels, skipped = next(self._grain)
        except BaseException:
            self.close()
            raise
        self._next += 1
        self._report(skipped)
        # Plain arrays (a worker's images are a view of shared memory, released with the last reference).
        return np.asarray(images), np.asarray(labels)

    def _report(self, skipped: tuple[tuple[str, str], ...]) -> None:
        new = {path: message for path, message in skipped if path not in self.skipped}
        if not new:
            return
        self.skipped.update(new)
        shown = "; ".join(list(new.values())[:_SHOWN])
        warnings.warn(f"Loader: skipped {len(new)} unreadable images ({len(self.skipped)} so far), each "
                      f"replaced by the next readable file: {shown}", BadImageWarning, stacklevel=3)

    def close(self) -> None:
        """Stops the worker processes (if any); the iterator then ends."""
        stream, self._grain, self._stop = self._grain, None, self._next
        if stream is not None:
            stream.close()

    def __enter__(self) -> LoaderIterator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit the modules may be gone
            pass


def _shard(shard: Any, batch_size: int) -> tuple[int, int]:
    """``(index, count)``: ``shard`` checked, or this process's ``(process_index, process_count)``."""
    if shard is None:
        index, count = jax.process_index(), jax.process_count()
    else:
        if not (isinstance(shard, tuple | list) and len(shard) == 2):
            raise ValueError(f"Loader: shard must be an (index, count) pair or None, got {shard!r}")
        count = integer(shard[1], "shard count", context="Loader", minimum=1)
        index = integer(shard[0], "shard index", context="Loader", minimum=0, maximum=count - 1)
    if batch_size % count:
        raise ValueError(f"Loader: batch_size {batch_size} must be divisible by the {count} shards "
                         "(each reads batch_size / count rows of every global batch)")
    return index, count


class Loader:
    """Batches of a ``FolderSplit`` through Grain (see the module docstring).

    Args:
      split: ``image_folder(...).train`` or ``.val``.
      batch_size: the global batch size ``B``; each shard yields ``B / count`` rows.
      seed: an int in ``[0, 2**32 - 1]``; seeds the shuffle and the augmentation.
      shuffle: a new seeded order every epoch (``False``: file order).
      drop_remainder: drop the last incomplete global batch (training). With
        ``False`` (evaluation) it is padded to ``B`` rows of zeros labelled
        ``PADDING_LABEL`` (-1): leave those rows out of metrics.
      workers: worker processes (0: read in this process).
      prefetch: batches each worker keeps ready (with no worker: read ahead in a
        thread; 0: read synchronously).
      shard: ``(index, count)``; ``None`` for ``(jax.process_index(), jax.process_count())``.

    Memory does not grow with the data beyond the split's packed file list and,
    with ``shuffle``, each process's order of the current epoch (4 bytes an image).

    Raises:
      TypeError: ``split`` is not a ``FolderSplit``.
      ValueError: a bad argument, ``batch_size`` larger than the split (with
        ``drop_remainder``) or not divisible by the shard count.
    """

    def __init__(self, split: FolderSplit, *, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_remainder: bool = True, workers: int = 0, prefetch: int = 2,
                 shard: tuple[int, int] | None = None):
        if not isinstance(split, FolderSplit):
            raise TypeError(f"Loader: split must be a FolderSplit (image_folder(...).train or .val), "
                            f"got {type(split).__name__}")
        size = integer(batch_size, "batch_size", context="Loader", minimum=1)
        drop = boolean(drop_remainder, "drop_remainder", context="Loader")
        index, count = _shard(shard, size)
        batches = len(split) // size if drop else math.ceil(len(split) / size)
        if batches < 1:
            raise ValueError(f"Loader: batch_size {size} exceeds the {len(split)} images of the split; "
                             "use a smaller batch or drop_remainder=False")
        self.split = split
        self.layout = Layout(len(split), size, index, count, batches,
                             boolean(shuffle, "shuffle", context="Loader"),
                             integer(seed, "seed", context="Loader", minimum=0, maximum=_MAX_SEED))
        self.workers = integer(workers, "workers", context="Loader", minimum=0)
        self.prefetch = integer(prefetch, "prefetch", context="Loader", minimum=0)

    @property
    def batches_per_epoch(self) -> int:
        return self.layout.batches_per_epoch

    @property
    def local_batch_size(self) -> int:
        """Rows of every batch this shard yields: ``batch_size / count``."""
        return self.layout.local_batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch

    def iterator(self, state: Mapping[str, int] | None = None, *, epochs: int | None = None) -> LoaderIterator:
        """Batches from ``state`` (default: the start of epoch 0) to the end of epoch ``epochs - 1``.

        ``epochs`` defaults to one epoch: the end of ``state``'s epoch.

        Raises:
          ValueError: ``state`` is not ``{"epoch": e, "position": i}`` with
            ``0 <= i < batches_per_epoch``, or ``epochs <= e`` (a state at the
            start of epoch ``epochs`` gives an empty iterator).
        """
        epoch, position = self._check_state(state)
        stop = epoch + 1 if epochs is None else integer(epochs, "epochs", context="Loader.iterator",
                                                        minimum=epoch if position == 0 else epoch + 1)
        first = epoch * self.batches_per_epoch + position
        return LoaderIterator(self, first, max(stop * self.batches_per_epoch, first))

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.iterator()

    def _check_state(self, state: Mapping[str, int] | None) -> tuple[int, int]:
        if state is None:
            return 0, 0
        if not isinstance(state, Mapping) or set(state) != {"epoch", "position"}:
            raise ValueError("Loader.iterator: state must be a dict {'epoch': e, 'position': i} "
                             f"(a LoaderIterator's state), got {state!r}")
        epoch = integer(state["epoch"], "state['epoch']", context="Loader.iterator", minimum=0)
        position = integer(state["position"], "state['position']", context="Loader.iterator", minimum=0,
                           maximum=self.batches_per_epoch - 1)
        return epoch, position
