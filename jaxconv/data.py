"""Data sets, mini-batching and on-device augmentation.

``load_dataset("digits")`` is the embedded default: the 1,797 8x8 handwritten
digits of the UCI "Optical Recognition of Handwritten Digits" data set
(E. Alpaydin, C. Kaynak, 1998; CC BY 4.0), as bundled with scikit-learn,
split 80/20 as scikit-learn's ``train_test_split(test_size=0.2, stratify=y,
random_state=0)`` splits them. The split is stored in ``jaxconv/digits.npz``
(pixel values 0-16 as uint8, 47 kB), so loading needs neither scikit-learn nor
its import time; ``tests/test_data.py`` re-derives it with scikit-learn.
``"mnist"`` and ``"fashion_mnist"`` read the four standard IDX ``.gz`` files,
``"cifar10"`` the binary version (``cifar-10-batches-bin/``), from ``root``.
Images are float32 ``(N, H, W, C)`` in ``[0, 1]``; labels are int32 ``(N,)``.

Files are validated completely before anything is returned: a missing file
names the files to put where, a truncated or malformed file raises a
``ValueError`` naming the file and what is wrong; there is no partial load.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from functools import partial
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


# --------------------------------------------------------------------------
# digits (embedded)


DIGITS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.npz")


def _digits(root: str | None = None) -> Dataset:
    with np.load(DIGITS_FILE) as f:
        splits = [Split((f[f"{part}_images"].astype(np.float32) / 16.0)[..., None],
                        f[f"{part}_labels"].astype(np.int32)) for part in ("train", "test")]
    return Dataset("digits", *splits, 10)


# --------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_IDX_UBYTE = 0x08


def read_idx(path: str, *, ndim: int) -> np.ndarray:
    """Reads one gzip-compressed IDX file of unsigned bytes.

    The IDX layout: two zero bytes, a type code (``0x08`` = uint8), the number
    of dimensions ``d``, ``d`` big-endian uint32 sizes, then the data in C order.

    Args:
      path: the ``.gz`` file.
      ndim: the expected number of dimensions (3 for images, 1 for labels).

    Returns:
      uint8 array with the sizes from the header.

    Raises:
      ValueError: the file is not valid gzip, is truncated, has a wrong header,
        or holds more or fewer bytes than its header declares.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"read_idx: {path} is not a complete gzip file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"read_idx: {path} is not an IDX file (bad magic number {raw[:4].hex()})")
    if raw[2] != _IDX_UBYTE:
        raise ValueError(
            f"read_idx: {path} has element type 0x{raw[2]:02x}; expected 0x08 (unsigned bytes)")
    if raw[3] != ndim:
        raise ValueError(f"read_idx: {path} has {raw[3]} dimensions; expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"read_idx: {path} is truncated inside its header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise ValueError(
            f"read_idx: {path} is {what}: header {dims} needs {expected} data bytes, found {got}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _find_files(name: str, root: str, files: list[str]) -> str:
    """The first of ``root`` and ``root/name`` that holds all ``files``."""
    for directory in (root, os.path.join(root, name)):
        if all(os.path.isfile(os.path.join(directory, f)) for f in files):
            return directory
    missing = [f for f in files if not os.path.isfile(os.path.join(root, f))]
    raise FileNotFoundError(
        f"load_dataset({name!r}): missing {', '.join(missing)} in {root!r}; put the files "
        f"{', '.join(files)} in {root!r} (or {os.path.join(root, name)!r}) and pass root=/--data-dir")


def _check_labels(labels: np.ndarray, num_classes: int, path: str) -> np.ndarray:
    if labels.size and int(labels.max()) >= num_classes:
        raise ValueError(
            f"load_dataset: {path} holds label {int(labels.max())}; expected labels < {num_classes}")
    return labels.astype(np.int32)


def _idx_dataset(name: str, root: str) -> Dataset:
    directory = _find_files(name, root, list(IDX_FILES.values()))
    splits = []
    for part in ("train", "test"):
        img_path = os.path.join(directory, IDX_FILES[f"{part}_images"])
        lbl_path = os.path.join(directory, IDX_FILES[f"{part}_labels"])
        images = read_idx(img_path, ndim=3)
        labels = read_idx(lbl_path, ndim=1)
        if len(images) != len(labels):
            raise ValueError(
                f"load_dataset({name!r}): {img_path} has {len(images)} images but "
                f"{lbl_path} has {len(labels)} labels")
        images = (images.astype(np.float32) / 255.0)[..., None]
        splits.append(Split(images, _check_labels(labels, 10, lbl_path)))
    return Dataset(name, splits[0], splits[1], 10)


def _mnist(root: str) -> Dataset:
    return _idx_dataset("mnist", root)


def _fashion_mnist(root: str) -> Dataset:
    return _idx_dataset("fashion_mnist", root)


# --------------------------------------------------------------------------
# CIFAR-10, binary version

CIFAR_DIR = "cifar-10-batches-bin"
CIFAR_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR_TEST = ["test_batch.bin"]
_CIFAR_RECORD = 1 + 32 * 32 * 3


def read_cifar_batch(path: str) -> Split:
    """Reads one CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes.

    The pixels of a record are stored channel-major (1024 red, 1024 green,
    1024 blue, each 32x32 row-major); the result is ``(N, 32, 32, 3)`` float32.

    Raises:
      ValueError: the size is not a positive multiple of 3073 bytes or a label is >= 10.
    """
    raw = np.fromfile(path, np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise ValueError(
            f"read_cifar_batch: {path} has {raw.size} bytes; expected a positive multiple of "
            f"{_CIFAR_RECORD} (1 label byte + 3072 pixel bytes per image): truncated or not CIFAR-10")
    records = raw.reshape(-1, _CIFAR_RECORD)
    labels = _check_labels(records[:, 0], 10, path)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(images.astype(np.float32) / 255.0, labels)


def _cifar10(root: str) -> Dataset:
    base = root if os.path.basename(os.path.normpath(root)) == CIFAR_DIR else os.path.join(root, CIFAR_DIR)
    files = CIFAR_TRAIN + CIFAR_TEST
    missing = [f for f in files if not os.path.isfile(os.path.join(base, f))]
    if missing:
        raise FileNotFoundError(
            f"load_dataset('cifar10'): missing {', '.join(missing)} in {base!r}; extract the binary "
            f"version (cifar-10-binary.tar.gz) so that {CIFAR_DIR}/ with {', '.join(files)} "
            "is inside root/--data-dir")
    parts = [read_cifar_batch(os.path.join(base, f)) for f in files]
    train = Split(np.concatenate([p.images for p in parts[:-1]]),
                  np.concatenate([p.labels for p in parts[:-1]]))
    return Dataset("cifar10", train, parts[-1], 10)


LOADERS = {"digits": _digits, "mnist": _mnist, "fashion_mnist": _fashion_mnist, "cifar10": _cifar10}


def load_dataset(name: str, root: str | None = None) -> Dataset:
    """Loads a data set by name.

    Args:
      name: ``"digits"``, ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
      root: directory holding the files of on-disk data sets (unused by
        digits); defaults to ``$JAXCONV_DATA`` or ``./data``.

    Raises:
      ValueError: unknown name, or a malformed / truncated file.
      FileNotFoundError: a file is missing (the message says which files go where).
    """
    try:
        loader = LOADERS[name]
    except KeyError:
        raise ValueError(
            f"load_dataset: unknown data set {name!r}; expected one of {sorted(LOADERS)}") from None
    if name == "digits":
        return loader()
    return loader(root if root is not None else os.environ.get("JAXCONV_DATA", "data"))


# --------------------------------------------------------------------------
# Mini-batches


def epoch_batches(
    key: Any, images: Any, labels: Any, batch_size: int, *, steps_per_call: int = 1,
    start: int = 0,
) -> Iterator[tuple[Any, Any]]:
    """Yields shuffled ``(images, labels)`` mini-batches for one epoch.

    The permutation is drawn with ``jax.random.permutation(key, N)``, so the
    order depends only on ``key``. The last incomplete batch is dropped so that
    every batch has the same shape (one compilation). With ``steps_per_call=K``
    each item stacks ``K`` batches: ``(K, batch_size, ...)``. ``start`` skips
    the first ``start`` items (to resume in the middle of an epoch).
    """
    n = images.shape[0]
    per_item = batch_size * steps_per_call
    if per_item > n:
        raise ValueError(
            f"epoch_batches: batch_size * steps_per_call = {per_item} exceeds the {n} examples")
    order = _epoch_order(key, n, per_item)
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    for i in range(start, order.shape[0]):
        yield _take_item(images, labels, order, i, steps_per_call)


@partial(jax.jit, static_argnums=(1, 2))
def _epoch_order(key: Any, n: int, per_item: int) -> Any:
    """A permutation of ``range(n)`` as whole rows of ``per_item``: one index row per item."""
    n_items = n // per_item
    return jax.random.permutation(key, n)[:n_items * per_item].reshape(n_items, per_item)


@partial(jax.jit, static_argnums=(4,))
def _take_item(images: Any, labels: Any, order: Any, i: Any, steps_per_call: int) -> tuple[Any, Any]:
    """Item ``i``: the rows ``order[i]``, stacked ``(steps_per_call, batch, ...)`` when K > 1.

    One compiled program serves every item and epoch (eager indexing cost about
    1 ms of dispatch per batch, 1.5 s of a 15-epoch digits run).
    """
    idx = order[i]
    xb, yb = images[idx], labels[idx]
    if steps_per_call > 1:
        xb = xb.reshape((steps_per_call, -1) + xb.shape[1:])
        yb = yb.reshape((steps_per_call, -1) + yb.shape[1:])
    return xb, yb


def batches_per_epoch(n: int, batch_size: int, steps_per_call: int = 1) -> int:
    return n // (batch_size * steps_per_call)


# --------------------------------------------------------------------------
# On-device augmentation: pure functions of (key, images), usable under jit.


def random_crop(key: Any, images: Any, padding: int) -> Any:
    """Pads ``(N, H, W, C)`` images by ``padding`` zeros and crops a random ``H x W`` window.

    Each image gets its own offset ``(dy, dx)``, uniform in ``[0, 2 * padding]``
    (a translation by up to ``padding`` pixels in each direction).
    """
    if padding == 0:
        return images
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_flip(key: Any, images: Any) -> Any:
    """Mirrors each ``(N, H, W, C)`` image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def augmentation(crop_padding: int = 0, flip: bool = False) -> Callable[[Any, Any], Any] | None:
    """Builds ``augment(key, images) -> images`` (random crop, then random flip).

    Returns ``None`` when both are off. The result is pure and jittable; ``fit``
    applies it inside the compiled training step (training mode only).
    """
    if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
        raise ValueError(f"augmentation: crop_padding must be an int >= 0, got {crop_padding!r}")
    if not crop_padding and not flip:
        return None

    def augment(key, images):
        if images.ndim != 4:
            raise ValueError(
                f"augmentation: expected images (N, H, W, C), got shape {tuple(images.shape)}")
        k_crop, k_flip = jax.random.split(key)
        images = random_crop(k_crop, images, crop_padding)
        return random_flip(k_flip, images) if flip else images

    return augment


def parse_augment(spec: str) -> Callable[[Any, Any], Any] | None:
    """Parses an augmentation spec: ``"none"`` or a comma list of ``crop:P`` and ``flip``.

    ``"crop"`` alone means ``crop:4``. Example: ``"crop:4,flip"`` (CIFAR-10), ``"crop:1"`` (digits).
    """
    crop, flip = 0, False
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        name, _, arg = part.partition(":")
        if name == "none" and not arg:
            continue
        if name == "flip" and not arg:
            flip = True
        elif name == "crop":
            try:
                crop = int(arg) if arg else 4
            except ValueError:
                crop = -1
            if crop < 0:
                raise ValueError(f"augment: crop padding must be an int >= 0, got {arg!r} in {spec!r}")
        else:
            raise ValueError(
                f"augment: unknown item {part!r} in {spec!r}; expected 'none', 'flip' or 'crop:P'")
    return augmentation(crop, flip)
