"""Data sets held in memory: the embedded digits, MNIST-style IDX files, CIFAR-10 binary.

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
import math
import os
import zlib
from typing import BinaryIO, NamedTuple

import numpy as np

from jaxconv.data.files import open_regular, read_into
from jaxconv.validate import integer


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


DIGITS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "digits.npz")


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
_GZIP_MAX_RATIO = 1032  # deflate expands one compressed byte into at most about 1032 bytes


def _idx_dims(f: BinaryIO, path: str, ndim: int) -> tuple[int, ...]:
    """Reads and checks the IDX header (magic number, type, rank); returns the sizes it declares."""
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise ValueError(f"read_idx: {path} is not an IDX file (bad magic number {magic.hex()})")
    if magic[2] != _IDX_UBYTE:
        raise ValueError(
            f"read_idx: {path} has element type 0x{magic[2]:02x}; expected 0x08 (unsigned bytes)")
    if magic[3] != ndim:
        raise ValueError(f"read_idx: {path} has {magic[3]} dimensions; expected {ndim}")
    sizes = f.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise ValueError(f"read_idx: {path} is truncated inside its header")
    return tuple(int.from_bytes(sizes[i:i + 4], "big") for i in range(0, 4 * ndim, 4))


def _idx_data(f: BinaryIO, path: str, dims: tuple[int, ...], compressed: int) -> np.ndarray:
    """The data the header declares, decompressed a chunk at a time and never beyond it."""
    expected = math.prod(dims)
    if expected > _GZIP_MAX_RATIO * compressed:
        raise ValueError(
            f"read_idx: {path} is truncated or corrupt: header {dims} needs {expected} data bytes, "
            f"more than {compressed} bytes of gzip can hold")
    data = np.empty(expected, np.uint8)
    got = read_into(f, memoryview(data))
    if got < expected:
        raise ValueError(
            f"read_idx: {path} is truncated: header {dims} needs {expected} data bytes, found {got}")
    if f.read(1):
        raise ValueError(f"read_idx: {path} is longer than its header says: header {dims} needs "
                         f"{expected} data bytes, it holds more")
    return data.reshape(dims)


def read_idx(path: str, *, ndim: int) -> np.ndarray:
    """Reads one gzip-compressed IDX file of unsigned bytes.

    The IDX layout: two zero bytes, a type code (``0x08`` = uint8), the number
    of dimensions ``d``, ``d`` big-endian uint32 sizes, then the data in C order.
    The header is read first; the data are decompressed a chunk at a time and
    never beyond the size the header declares (plus one byte, to detect a
    longer file), and a header that declares more than the file can hold
    (deflate expands at most about 1032 times) is refused before anything is
    allocated.

    Args:
      path: the ``.gz`` file (a regular file).
      ndim: the expected number of dimensions (3 for images, 1 for labels).

    Returns:
      uint8 array with the sizes from the header.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: the file is not a regular file, not valid gzip, is truncated,
        has a wrong header, or holds more or fewer bytes than its header declares.
    """
    integer(ndim, "ndim", context="read_idx", minimum=1, maximum=255)
    try:
        with open_regular(path, "read_idx") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as f:
            dims = _idx_dims(f, path, ndim)
            return _idx_data(f, path, dims, os.fstat(raw.fileno()).st_size)
    except (OSError, EOFError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"read_idx: {path} is not a complete gzip file ({e})") from None


def _find_files(name: str, root: str, files: list[str]) -> str:
    """The first of ``root`` and ``root/name`` that holds all ``files``."""
    for directory in (root, os.path.join(root, name)):
        if all(os.path.exists(os.path.join(directory, f)) for f in files):
            return directory
    missing = [f for f in files if not os.path.exists(os.path.join(root, f))]
    raise FileNotFoundError(
        f"load_dataset({name!r}): missing {', '.join(missing)} in {root!r}; put the files "
        f"{', '.join(files)} in {root!r} (or {os.path.join(root, name)!r}) and pass root=/--data-dir")


def _check_labels(labels: np.ndarray, num_classes: int, path: str) -> np.ndarray:
    if labels.size and int(labels.max()) >= num_classes:
        raise ValueError(
            f"load_dataset: {path} holds label {int(labels.max())}; expected labels < {num_classes}")
    return labels.astype(np.int32)


def _check_splits(name: str, train: Split, test: Split, files: tuple[str, str]) -> None:
    """Both splits must hold examples, and images of one shape and dtype.

    ``files``: the train and test files the splits were read from, for the message.
    """
    for split, path in zip((train, test), files):
        if len(split.labels) == 0:
            raise ValueError(f"load_dataset({name!r}): {path} holds no examples")
    (x, y), (px, py) = (train.images, test.images), files
    if x.shape[1:] != y.shape[1:] or x.dtype != y.dtype or train.labels.dtype != test.labels.dtype:
        raise ValueError(
            f"load_dataset({name!r}): {py} holds images of shape {y.shape[1:]} ({y.dtype}), but "
            f"{px} holds {x.shape[1:]} ({x.dtype}): the train and test splits do not match")


def _idx_split(name: str, directory: str, part: str) -> Split:
    """One split: its images and labels files, checked against each other."""
    img_path = os.path.join(directory, IDX_FILES[f"{part}_images"])
    lbl_path = os.path.join(directory, IDX_FILES[f"{part}_labels"])
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lbl_path, ndim=1)
    if len(images) != len(labels):
        raise ValueError(
            f"load_dataset({name!r}): {img_path} has {len(images)} images but "
            f"{lbl_path} has {len(labels)} labels")
    return Split((images.astype(np.float32) / 255.0)[..., None], _check_labels(labels, 10, lbl_path))


def _idx_dataset(name: str, root: str) -> Dataset:
    directory = _find_files(name, root, list(IDX_FILES.values()))
    train, test = (_idx_split(name, directory, part) for part in ("train", "test"))
    _check_splits(name, train, test, (os.path.join(directory, IDX_FILES["train_images"]),
                                      os.path.join(directory, IDX_FILES["test_images"])))
    return Dataset(name, train, test, 10)


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
_CIFAR_MAX_RECORDS = 10_000  # every batch of the binary version holds 10,000 images


def read_cifar_batch(path: str) -> Split:
    """Reads one CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes.

    The pixels of a record are stored channel-major (1024 red, 1024 green,
    1024 blue, each 32x32 row-major); the result is ``(N, 32, 32, 3)`` float32.
    Only a regular file is read, and only after its size is checked.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: not a regular file, the size is not a multiple of 3073 bytes
        between 1 and 10,000 records, or a label is >= 10.
    """
    with open_regular(path, "read_cifar_batch") as f:
        size = os.fstat(f.fileno()).st_size
        if not 0 < size <= _CIFAR_MAX_RECORDS * _CIFAR_RECORD or size % _CIFAR_RECORD:
            raise ValueError(
                f"read_cifar_batch: {path} has {size} bytes; expected a positive multiple of "
                f"{_CIFAR_RECORD} (1 label byte + 3072 pixel bytes per image, at most "
                f"{_CIFAR_MAX_RECORDS} images): truncated or not CIFAR-10")
        raw = np.empty(size, np.uint8)
        if read_into(f, memoryview(raw)) != size or f.read(1):
            raise ValueError(f"read_cifar_batch: {path} changed size while being read")
    records = raw.reshape(-1, _CIFAR_RECORD)
    labels = _check_labels(records[:, 0], 10, path)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Split(images.astype(np.float32) / 255.0, labels)


def _cifar10(root: str) -> Dataset:
    base = root if os.path.basename(os.path.normpath(root)) == CIFAR_DIR else os.path.join(root, CIFAR_DIR)
    files = CIFAR_TRAIN + CIFAR_TEST
    missing = [f for f in files if not os.path.exists(os.path.join(base, f))]
    if missing:
        raise FileNotFoundError(
            f"load_dataset('cifar10'): missing {', '.join(missing)} in {base!r}; extract the binary "
            f"version (cifar-10-binary.tar.gz) so that {CIFAR_DIR}/ with {', '.join(files)} "
            "is inside root/--data-dir")
    parts = [read_cifar_batch(os.path.join(base, f)) for f in files]
    train = Split(np.concatenate([p.images for p in parts[:-1]]),
                  np.concatenate([p.labels for p in parts[:-1]]))
    _check_splits("cifar10", train, parts[-1], (os.path.join(base, CIFAR_TRAIN[0]),
                                                 os.path.join(base, CIFAR_TEST[0])))
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
