"""Writes image folders for the tests and benchmarks: the embedded digits as PNG files, random images.

The digits are 8x8 ints ``v`` in ``0..16`` (held in memory as ``v / 16``);
a PNG stores them as 8-bit grayscale ``round(v * 255 / 16)`` (``digits_to_uint8``),
so 16 is white (255) and the folder path reads them back as exactly
``round(v * 255 / 16) / 255``, within ``0.5 / 255`` of ``v / 16``.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from jaxconv.data import load_dataset


def digits_to_uint8(images: np.ndarray) -> np.ndarray:
    """In-memory digits ``v / 16`` (float32, ``(..., 1)``) as the uint8 pixels of their PNG files."""
    values = np.rint(np.asarray(images, np.float64)[..., 0] * 16.0)
    return np.rint(values * 255.0 / 16.0).astype(np.uint8)


def digit_file(root: str, part: str, label: int, index: int) -> str:
    """The PNG path of example ``index`` of split ``part`` (``train``/``val``): its index is its name."""
    return os.path.join(root, part, str(label), f"{index:05d}.png")


def write_digits_folder(root: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writes ``load_dataset("digits")`` as ``root/{train,val}/<label>/<index>.png``.

    Returns:
      ``{"train": (images, labels), "val": (images, labels)}`` of the in-memory
      data set (``val`` is its test split).
    """
    ds = load_dataset("digits")
    splits = {"train": (ds.train.images, ds.train.labels), "val": (ds.test.images, ds.test.labels)}
    for part, (images, labels) in splits.items():
        for index, (pixels, label) in enumerate(zip(digits_to_uint8(images), labels)):
            path = digit_file(root, part, int(label), index)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(pixels, "L").save(path)
    return splits


def write_image(path: str, pixels: np.ndarray, **save_args) -> str:
    """Saves uint8 ``(H, W)`` or ``(H, W, 3)`` pixels to ``path`` (format from the extension)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path, **save_args)
    return path


def random_folder(root: str, counts: dict[str, int], *, size: tuple[int, int] = (6, 5), ext: str = ".png",
                  seed: int = 0, **save_args) -> dict[str, np.ndarray]:
    """Writes ``counts[c]`` random RGB images ``c/<i>.<ext>`` under ``root``; ``{path: pixels}``."""
    rng = np.random.default_rng(seed)
    written = {}
    for name, count in counts.items():
        for i in range(count):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            written[write_image(os.path.join(root, name, f"{i:04d}{ext}"), pixels, **save_args)] = pixels
    return written
