"""Image folders: a class per subfolder, listed as torchvision's ``ImageFolder`` lists them.

Two layouts::

    root/train/<class>/**/<image>     root/<class>/**/<image>
    root/val/<class>/**/<image>       (val: a seeded fraction of each class)

With ``root/train`` present the first is used (``root/val`` is optional: without
it a fraction of ``train`` is held out); otherwise ``root`` itself is the tree.
Class names are the sorted names of the class folders (Python's string order,
as torchvision's ``find_classes``), taken from the training tree; label ``i``
is ``classes[i]``. Files are listed recursively inside each class folder,
sorted by folder path and then name (torchvision's ``make_dataset`` order),
following links to folders (a link back into the tree is visited once).
Names starting with ``.`` are skipped (``.DS_Store``, ``.ipynb_checkpoints``);
files at ``root`` level and folders next to ``train``/``val`` are not read.

Images are ``.png``, ``.jpg``, ``.jpeg``, ``.bmp`` and ``.webp`` files (any
case). Anything else inside a class folder, a special file, and a class folder
without images are errors that name them, or with ``skip_bad_images=True``
one ``BadImageWarning`` that counts and names them (an empty class keeps its
label, so labels stay the sorted folder names). A tree without any image is
always an error.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxconv.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    Augment,
    Preprocess,
    check_augment,
    make_preprocess,
)
from jaxconv.validate import boolean, integer, number

_SHOWN = 10  # bad entries named in one message


class BadImageWarning(UserWarning):
    """Files skipped because ``skip_bad_images=True``: not images, unreadable, or empty class folders."""


class FileTable:
    """A split's file paths, packed into one bytes blob with end offsets.

    Compact to hold and quick to send to worker processes, whatever the count.
    ``table[i]`` is the ``i``-th path, joined to ``root``.
    """

    def __init__(self, root: str, relative: Sequence[str]):
        encoded = [os.fsencode(p) for p in relative]
        self.root = root
        self._blob = b"".join(encoded)
        self._ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> str:
        start = int(self._ends[index - 1]) if index > 0 else 0
        return os.path.join(self.root, os.fsdecode(self._blob[start:int(self._ends[index])]))

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


@dataclasses.dataclass(frozen=True, eq=False)
class FolderSplit:
    """One split of an image folder: its files, their labels, and how to read them; ``len`` is its size.

    Attributes:
      files: the image paths (``FileTable``).
      labels: int32 ``(N,)`` class ids.
      preprocess: the size, channels and normalisation of every image.
      augment: host-side augmentation (training split only), or ``None``.
      skip_bad_images: replace an unreadable image by the next readable one,
        with a warning, instead of raising.
    """

    files: FileTable
    labels: np.ndarray
    preprocess: Preprocess
    augment: Augment | None
    skip_bad_images: bool

    def __len__(self) -> int:
        return len(self.labels)


class ImageFolder(NamedTuple):
    """What ``image_folder`` returns: the splits and the class names (keep them with a run)."""

    root: str
    classes: tuple[str, ...]
    train: FolderSplit
    val: FolderSplit | None
    preprocess: Preprocess

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """``(-1, H, W, C)``: the model's input shape."""
        return (-1, *self.preprocess.image_size, self.preprocess.channels)

    def metadata(self) -> dict[str, Any]:
        """JSON-able ``{"classes", "preprocess"}``: enough to label predictions and preprocess new images.

        ``make_preprocess(**metadata["preprocess"])`` rebuilds the ``Preprocess``.
        """
        return {"classes": list(self.classes),
                "preprocess": {k: list(v) if isinstance(v, tuple) else v
                               for k, v in self.preprocess._asdict().items()}}


def find_classes(directory: str) -> list[str]:
    """The sorted names of the (non-hidden) subfolders of ``directory``: the class names."""
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _classify(entry: os.DirEntry) -> str | None:
    """Why ``entry`` (not a folder) is not a usable image, or ``None`` if it is one."""
    if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
        return "not an image file (expected .png, .jpg, .jpeg, .bmp or .webp)"
    if not entry.is_file():
        return "not a regular file (a FIFO, device or dangling link)"
    return None


def scan_images(directory: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Image files under ``directory``, in torchvision's order, and the ``(path, reason)`` of bad entries."""
    seen, per_folder, bad, stack = set(), [], [], [directory]
    while stack:
        folder = stack.pop()
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        names = []
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(entry.path)
                elif (reason := _classify(entry)) is None:
                    names.append(entry.name)
                else:
                    bad.append((entry.path, reason))
        per_folder.append((folder, sorted(names)))
    images = [os.path.join(folder, name) for folder, names in sorted(per_folder) for name in names]
    return images, sorted(bad)


def list_images(path: str) -> list[str]:
    """``path`` if it is a file, else the image files under the folder ``path`` (sorted, recursive).

    For ``jaxconv predict IMAGE_OR_DIR``; entries that are not images are left out.
    """
    return [path] if not os.path.isdir(path) else scan_images(path)[0]


def _tree(directory: str, classes: Sequence[str]) -> tuple[list[str], list[int], list[tuple[str, str]]]:
    """Paths, labels and bad entries of the class folders of ``directory`` (absent classes are empty)."""
    paths, labels, bad = [], [], []
    for label, name in enumerate(classes):
        folder = os.path.join(directory, name)
        if not os.path.isdir(folder):
            continue
        images, bad_here = scan_images(folder)
        if not images:
            bad_here.append((folder, "class folder without images"))
        paths += images
        labels += [label] * len(images)
        bad += bad_here
    return paths, labels, bad


def _report(bad: list[tuple[str, str]], skip: bool, where: str) -> None:
    """Raises (or, with ``skip``, warns) naming the bad entries of a tree."""
    if not bad:
        return
    shown = "; ".join(f"{path} ({reason})" for path, reason in bad[:_SHOWN])
    more = f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    if skip:
        warnings.warn(f"image_folder: skipping {len(bad)} entries under {where}: {shown}{more}",
                      BadImageWarning, stacklevel=4)
        return
    raise ValueError(f"image_folder: {len(bad)} entries under {where} are not usable images: {shown}{more}; "
                     "remove them, or pass skip_bad_images=True to skip them with a warning")


def _split(preprocess: Preprocess, augment: Augment | None, skip: bool, root: str,
           paths: list[str], labels: Sequence[int]) -> FolderSplit:
    prefix = len(os.path.join(root, ""))
    return FolderSplit(FileTable(root, [p[prefix:] for p in paths]), np.asarray(labels, np.int32).reshape(-1),
                       preprocess, augment, skip)


def hold_out(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` indices: ``round(fraction * n_c)`` images of each class ``c`` held out.

    Each class draws its own permutation from ``(seed, c)``, so a class's split
    does not depend on the others; both index lists stay in file order.
    """
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        count = math.floor(fraction * len(members) + 0.5)
        val.append(members[np.random.default_rng([seed, int(c)]).permutation(len(members))[:count]])
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), val), val


def _classes(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"image_folder: {directory} is not a folder")
    classes = find_classes(directory)
    if not classes:
        raise ValueError(f"image_folder: {directory} has no class folders; expected {directory}/<class>/<image> "
                         f"(or {directory}/train/<class>/<image> and {directory}/val/<class>/<image>)")
    return classes


def _val_classes(val_dir: str, classes: Sequence[str]) -> None:
    unknown = sorted(set(find_classes(val_dir)) - set(classes))
    if unknown:
        raise ValueError(f"image_folder: {val_dir} has class folders {unknown} that the training tree "
                         f"{os.path.dirname(val_dir)}/train does not have; the classes are {list(classes)}")


def _listed(directory: str, classes: Sequence[str], skip: bool) -> tuple[list[str], list[int]]:
    paths, labels, bad = _tree(directory, classes)
    if not paths:
        raise ValueError(f"image_folder: no images under {directory} (expected {directory}/<class>/<image>, "
                         "with .png, .jpg, .jpeg, .bmp or .webp files)")
    _report(bad, skip, directory)
    return paths, labels


def image_folder(root: str, *, image_size: int | tuple[int, int], channels: int = 3,
                 mean: float | Sequence[float] = 0.0, std: float | Sequence[float] = 1.0,
                 crop_fraction: float = 1.0, augment: Augment | None = None, val_fraction: float = 0.1,
                 split_seed: int = 0, skip_bad_images: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageFolder:
    """Lists an image folder (see the module docstring for the layouts and rules).

    Nothing is decoded here: ``Loader`` reads the images, in worker processes.

    Args:
      root: the folder.
      image_size: ``S`` or ``(H, W)``: the size of every image array.
      channels: 3 (RGB) or 1 (grayscale); every image is converted.
      mean, std: normalisation of ``[0, 1]`` pixels, one number or one per channel
        (``IMAGENET_MEAN``/``IMAGENET_STD`` for ImageNet-trained weights).
      crop_fraction: the evaluation transform's centre crop (see ``Preprocess``).
      augment: host-side augmentation of the training split (``Augment``), or ``None``.
      val_fraction: without a ``val`` folder, the fraction of each class held out
        for validation (0: no validation split).
      split_seed: seeds that hold-out.
      skip_bad_images: warn about and skip bad entries instead of raising.
      max_pixels: images declaring more pixels are refused before decoding.

    Returns:
      ``ImageFolder(root, classes, train, val, preprocess)``; ``val`` is ``None``
      when there is no validation split.

    Raises:
      FileNotFoundError: ``root`` is not a folder.
      ValueError: a bad argument; no class folder or no image; bad entries
        (unless ``skip_bad_images``); a ``val`` class that ``train`` lacks.
    """
    preprocess = make_preprocess(image_size, channels=channels, mean=mean, std=std,
                                 crop_fraction=crop_fraction, max_pixels=max_pixels)
    augment = check_augment(augment)
    fraction = number(val_fraction, "val_fraction", context="image_folder", minimum=0, maximum=1,
                      exclusive_maximum=True)
    seed = integer(split_seed, "split_seed", context="image_folder", minimum=0, maximum=2**32 - 1)
    skip = boolean(skip_bad_images, "skip_bad_images", context="image_folder")
    root = os.path.normpath(os.fspath(root))
    train_dir = os.path.join(root, "train")
    train_dir = train_dir if os.path.isdir(train_dir) else root
    classes = _classes(train_dir)
    paths, labels = _listed(train_dir, classes, skip)
    val_dir = os.path.join(root, "val")
    if train_dir != root and os.path.isdir(val_dir):
        _val_classes(val_dir, classes)
        train = _split(preprocess, augment, skip, root, paths, labels)
        val = _split(preprocess, None, skip, root, *_listed(val_dir, classes, skip))
    else:
        kept, held = hold_out(np.asarray(labels), fraction, seed)
        train = _split(preprocess, augment, skip, root, [paths[i] for i in kept], np.asarray(labels)[kept])
        val = _split(preprocess, None, skip, root, [paths[i] for i in held], np.asarray(labels)[held])
        val = val if len(val) else None
    return ImageFolder(root, tuple(classes), train, val, preprocess)
