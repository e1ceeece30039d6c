"""Image files on the host: decoding with Pillow, and the transforms of the image-folder pipeline.

Decoding (``open_image``) reads PNG, JPEG, BMP and WebP files (by their
content, whatever their extension), applies the EXIF orientation, and converts
every mode to 8-bit RGB (``channels=3``) or 8-bit grayscale (``channels=1``):

- palette images through their colours (transparency dropped), RGBA / LA
  without their alpha channel, CMYK through Pillow's conversion, RGB to
  grayscale with ITU-R 601-2 luma (``L = 0.299 R + 0.587 G + 0.114 B``, as
  Pillow and torchvision's ``Grayscale`` compute it);
- 16-bit grayscale (``I;16``) scaled to 8 bits (``round(v / 257)``).

The image's size is read from its header and checked against ``max_pixels``
before any pixel is decoded (a small file can declare a huge image: a
decompression bomb). Pillow's own limit ``Image.MAX_IMAGE_PIXELS`` applies
first (it warns above it and refuses above twice it); the loader's worker
processes set it to ``max_pixels`` and make its warning an error, the main
process's setting is left as it is. Any failure raises ``ImageError`` naming
the file.

The transforms follow torchvision's definitions on PIL images:
``random_resized_crop_box`` is ``RandomResizedCrop.get_params`` (area
fraction uniform in ``scale``, log aspect ratio uniform in ``log(ratio)``,
ten attempts, then a centre crop clamped to ``ratio``); crops are resized with
Pillow's bilinear filter; ``color_jitter`` is ``ColorJitter`` (factors uniform
in ``[max(0, 1 - b), 1 + b]``, hue shift in ``[-h, h]``, the four adjustments
in a random order). Every random draw comes from the ``numpy`` generator passed
in, so a transform is a function of that generator's seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageEnhance

from jaxconv.data.files import NotRegularFileError, open_regular
from jaxconv.validate import boolean, choice, int_tuple, integer, number

#: File extensions listed as images (compared lower-case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: The Pillow decoders ``open_image`` may use.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
#: Default pixel limit of a decoded image: 8192 x 8192.
DEFAULT_MAX_PIXELS = 8192 * 8192
#: The ImageNet channel statistics torchvision's models are trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_EXIF_ORIENTATION = 0x0112
_ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


class ImageError(ValueError):
    """An image file that cannot be used: unreadable, not an image, corrupt, truncated or too large."""


class Preprocess(NamedTuple):
    """How every image becomes an array: size, channels, normalisation (JSON-able with ``_asdict``).

    Attributes:
      image_size: ``(H, W)`` of the arrays.
      channels: 3 (RGB) or 1 (grayscale).
      mean, std: per-channel normalisation of ``[0, 1]`` pixels: ``(x - mean) / std``.
      crop_fraction: without a random crop, the image is resized to cover
        ``image_size / crop_fraction`` (aspect kept) and its centre
        ``image_size`` is cut out (torchvision's evaluation ``Resize`` +
        ``CenterCrop``; 0.875 is the ImageNet convention, 1.0 keeps the most).
      max_pixels: larger images are refused before decoding.
    """

    image_size: tuple[int, int]
    channels: int = 3
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    crop_fraction: float = 1.0
    max_pixels: int = DEFAULT_MAX_PIXELS


class Augment(NamedTuple):
    """Host-side augmentation of training images, with torchvision's meanings.

    Attributes:
      scale: ``RandomResizedCrop``'s range of the crop's area fraction, or
        ``None`` for no random crop (the ``Preprocess`` resize and centre crop).
      ratio: the range of the crop's aspect ratio (width / height).
      flip: mirror left-right with probability 1/2.
      brightness, contrast, saturation: ``ColorJitter``'s strengths ``b``
        (factor uniform in ``[max(0, 1 - b), 1 + b]``; 0 is off).
      hue: ``ColorJitter``'s hue strength, in ``[0, 0.5]`` (0 is off).
    """

    scale: tuple[float, float] | None = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0


def _channel_stats(value: Any, name: str, channels: int, context: str, positive: bool) -> tuple[float, ...]:
    """A number, or one number per channel, as a tuple of ``channels`` floats."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"{context}: {name} must be a number or {channels} numbers (one per channel), "
                         f"got {value!r}")
    low = 0.0 if positive else None
    return tuple(number(v, name, context=context, minimum=low, exclusive_minimum=positive) for v in values)


def make_preprocess(image_size: Any, *, channels: int = 3, mean: Any = 0.0, std: Any = 1.0,
                    crop_fraction: float = 1.0, max_pixels: int = DEFAULT_MAX_PIXELS,
                    context: str = "image_folder") -> Preprocess:
    """A checked ``Preprocess`` (also the way back from its ``_asdict()`` saved as JSON).

    Raises:
      ValueError: naming ``context`` and the argument.
    """
    size = int_tuple(image_size, "image_size", context=context, length=2, minimum=1)
    channels = choice(integer(channels, "channels", context=context, minimum=1), "channels", (1, 3),
                      context=context)
    return Preprocess(size, channels, _channel_stats(mean, "mean", channels, context, positive=False),
                      _channel_stats(std, "std", channels, context, positive=True),
                      number(crop_fraction, "crop_fraction", context=context, minimum=0, maximum=1,
                             exclusive_minimum=True),
                      integer(max_pixels, "max_pixels", context=context, minimum=1))


def _range(value: Any, name: str, context: str, minimum: float) -> tuple[float, float]:
    if not (isinstance(value, Sequence) and len(value) == 2):
        raise ValueError(f"{context}: augment.{name} must be a (low, high) pair, got {value!r}")
    low, high = (number(v, f"augment.{name}", context=context, minimum=minimum, exclusive_minimum=True)
                 for v in value)
    if low > high:
        raise ValueError(f"{context}: augment.{name} must have low <= high, got {value!r}")
    return low, high


def check_augment(augment: Any, *, context: str = "image_folder") -> Augment | None:
    """``augment`` (``None``, or an ``Augment`` with valid fields) in normal form.

    Raises:
      TypeError: ``augment`` is not an ``Augment``.
      ValueError: a field out of range, naming it.
    """
    if augment is None:
        return None
    if not isinstance(augment, Augment):
        raise TypeError(f"{context}: augment must be a jaxconv.data.Augment or None, got {type(augment).__name__}")
    scale = None if augment.scale is None else _range(augment.scale, "scale", context, 0.0)
    strengths = [number(getattr(augment, k), f"augment.{k}", context=context, minimum=0)
                 for k in ("brightness", "contrast", "saturation")]
    return Augment(scale, _range(augment.ratio, "ratio", context, 0.0),
                   boolean(augment.flip, "augment.flip", context=context), *strengths,
                   number(augment.hue, "augment.hue", context=context, minimum=0, maximum=0.5))


# --------------------------------------------------------------------------
# Decoding


def _eight_bit(img: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) grayscale image as an 8-bit ``L`` image: ``round(v / 257)``, clipped."""
    values = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257.0
    return Image.fromarray(np.rint(values).astype(np.uint8), "L")


def _convert(img: Image.Image, channels: int) -> Image.Image:
    """``img`` (any mode, loaded by the conversion) as 8-bit ``RGB`` or ``L``."""
    if img.mode.startswith("I"):
        img = _eight_bit(img)
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if channels == 3:
        return img.convert("RGB")
    return img.convert("L") if img.mode in ("L", "1", "LA", "La") else img.convert("RGB").convert("L")


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1-8) of ``img``; 1 (upright) when absent or unreadable."""
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block does not make the pixels unreadable
        return 1


def _oriented(img: Image.Image, orientation: int) -> Image.Image:
    """``img`` turned upright as its EXIF orientation tag says."""
    method = _ORIENT.get(orientation)
    return img if method is None else img.transpose(method)


def _describe(error: Exception) -> str:
    """What went wrong reading an image, for a message that names the file."""
    if isinstance(error, Image.UnidentifiedImageError):
        return "not a PNG, JPEG, BMP or WebP image (Pillow cannot identify it)"
    if isinstance(error, Image.DecompressionBombError):
        return f"refused as a decompression bomb ({error})"
    if isinstance(error, NotRegularFileError):
        return "not a regular file (a directory, FIFO, device or dangling link)"
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, PermissionError | IsADirectoryError):
        return f"cannot be opened ({error.strerror})"
    return f"corrupt or truncated ({type(error).__name__}: {error})"


def open_image(path: str, *, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decodes the image file ``path`` into an upright 8-bit ``RGB`` (or ``L``) Pillow image.

    Raises:
      ImageError: ``path`` is missing, not a regular file, not a PNG/JPEG/BMP/WebP
        image, corrupt or truncated, or larger than ``max_pixels``; the message names it.
    """
    try:
        with open_regular(path, "open_image") as f, Image.open(f, formats=IMAGE_FORMATS) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(f"cannot read image {path}: it declares {width}x{height} = "
                                 f"{width * height} pixels, more than max_pixels={max_pixels} "
                                 "(refused as a possible decompression bomb)")
            return _oriented(_convert(img, channels), _orientation(img))
    except (ImageError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for broken files; all name the file
        raise ImageError(f"cannot read image {path}: {_describe(e)}") from None


# --------------------------------------------------------------------------
# Geometry


class Box(NamedTuple):
    """A crop: top row, left column, height, width (torchvision's ``i, j, h, w``)."""

    top: int
    left: int
    height: int
    width: int


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int,
                            scale: tuple[float, float], ratio: tuple[float, float]) -> Box:
    """torchvision's ``RandomResizedCrop.get_params`` for a ``width x height`` image.

    Up to ten draws of an area fraction (uniform in ``scale``) and an aspect
    ratio (log-uniform in ``ratio``); the first crop that fits is placed
    uniformly. If none fits, the centre crop of the largest size whose aspect
    ratio is clamped to ``ratio``.
    """
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return Box(int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return Box((height - h) // 2, (width - w) // 2, h, w)


def resized_crop(img: Image.Image, box: Box, size: tuple[int, int]) -> Image.Image:
    """Cuts ``box`` out of ``img`` and resizes it to ``size`` ``(H, W)`` (bilinear, antialiased)."""
    crop = img.crop((box.left, box.top, box.left + box.width, box.top + box.height))
    return crop.resize((size[1], size[0]), Image.Resampling.BILINEAR)


def center_box(width: int, height: int, size: tuple[int, int]) -> Box:
    """torchvision's ``CenterCrop`` box of ``size`` ``(H, W)`` in a ``width x height`` image."""
    h, w = size
    return Box(int(round((height - h) / 2.0)), int(round((width - w) / 2.0)), h, w)


def resize_center_crop(img: Image.Image, size: tuple[int, int], crop_fraction: float) -> Image.Image:
    """torchvision's ``CenterCrop(size)(Resize(int(S / crop_fraction))(img))``, for any ``size`` ``(H, W)``.

    The side that needs the larger scale becomes ``int(H / crop_fraction)`` (or
    ``int(W / crop_fraction)``), the other keeps the aspect ratio (truncated, as
    torchvision); then the centre ``size`` is cut out. An image that already has
    that size is returned unchanged.
    """
    width, height = img.size
    h, w = size
    if h * width >= w * height:  # the height needs the larger scale
        new_h = max(h, int(h / crop_fraction))
        new_w = max(w, int(width * new_h / height))
    else:
        new_w = max(w, int(w / crop_fraction))
        new_h = max(h, int(height * new_w / width))
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    box = center_box(new_w, new_h, size)
    if (box.width, box.height) == (new_w, new_h):
        return img
    return img.crop((box.left, box.top, box.left + box.width, box.top + box.height))


# --------------------------------------------------------------------------
# Colour


def adjust_hue(img: Image.Image, shift: float) -> Image.Image:
    """Rotates the hue of an RGB image by ``shift`` turns (in ``[-0.5, 0.5]``); grayscale is unchanged.

    As torchvision on PIL images: in Pillow's 8-bit HSV, ``H += int(shift * 255)`` modulo 256.
    """
    if img.mode != "RGB":
        return img
    h, s, v = img.convert("HSV").split()
    hue = (np.asarray(h, dtype=np.int32) + int(shift * 255)) % 256
    return Image.merge("HSV", (Image.fromarray(hue.astype(np.uint8), "L"), s, v)).convert("RGB")


_ADJUST = {
    "brightness": lambda img, f: ImageEnhance.Brightness(img).enhance(f),
    "contrast": lambda img, f: ImageEnhance.Contrast(img).enhance(f),
    "saturation": lambda img, f: ImageEnhance.Color(img).enhance(f),
    "hue": adjust_hue,
}


def jitter_params(rng: np.random.Generator, augment: Augment) -> list[tuple[str, float]]:
    """``ColorJitter.get_params``: the enabled adjustments, in a random order, with their factors."""
    order = rng.permutation(4)
    names = ("brightness", "contrast", "saturation", "hue")
    steps = []
    for k in order:
        strength = getattr(augment, names[k])
        if strength:
            low = -strength if names[k] == "hue" else max(0.0, 1.0 - strength)
            high = strength if names[k] == "hue" else 1.0 + strength
            steps.append((names[k], float(rng.uniform(low, high))))
    return steps


def color_jitter(img: Image.Image, steps: list[tuple[str, float]]) -> Image.Image:
    """Applies ``jitter_params``' adjustments in their order (Pillow's ``ImageEnhance``, as torchvision)."""
    for name, factor in steps:
        img = _ADJUST[name](img, factor)
    return img


# --------------------------------------------------------------------------
# One example


def transform(img: Image.Image, preprocess: Preprocess, augment: Augment | None,
              rng: np.random.Generator | None) -> np.ndarray:
    """An 8-bit image as a ``(H, W, C)`` uint8 array: crop/resize, then flip and colour jitter.

    ``augment=None`` is the evaluation transform (``resize_center_crop``); with
    ``augment``, ``rng`` draws (in this order) the crop, the flip and the jitter
    (each only if it is on).
    """
    size = preprocess.image_size
    if augment is None or augment.scale is None:
        img = resize_center_crop(img, size, preprocess.crop_fraction)
    else:
        img = resized_crop(img, random_resized_crop_box(rng, *img.size, augment.scale, augment.ratio), size)
    if augment is not None:
        if augment.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if augment.brightness or augment.contrast or augment.saturation or augment.hue:
            img = color_jitter(img, jitter_params(rng, augment))
    array = np.asarray(img, dtype=np.uint8)
    return array.reshape(size[0], size[1], preprocess.channels)


def normalize(images: np.ndarray, preprocess: Preprocess, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 images ``(..., C)`` as float32 ``(pixel / 255 - mean) / std`` (into ``out`` if given).

    Each channel's 256 values are computed once (float32) and looked up.
    """
    levels = np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)
    table = (levels - np.asarray(preprocess.mean, np.float32)) / np.asarray(preprocess.std, np.float32)
    out = np.empty(images.shape, np.float32) if out is None else out
    for c in range(images.shape[-1]):
        np.take(table[:, c], images[..., c], out=out[..., c], mode="clip")
    return out


def load_image(path: str, preprocess: Preprocess) -> np.ndarray:
    """One image file through the evaluation transform: float32 ``(H, W, C)``, normalised.

    What ``jaxconv predict`` feeds a model trained on an image folder (with that
    folder's ``Preprocess``).

    Raises:
      ImageError: the file cannot be read (see ``open_image``).
    """
    img = open_image(path, channels=preprocess.channels, max_pixels=preprocess.max_pixels)
    return normalize(transform(img, preprocess, None, None), preprocess)
