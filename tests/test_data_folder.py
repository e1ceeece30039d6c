"""Image folders: listing and class order (against torchvision), decoding every mode, the transforms
(against torchvision's functional ops on PIL images), and the digits written as PNG files."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from jaxconv import data
from jaxconv.data import Augment, Loader, image_folder, load_image, make_preprocess
from jaxconv.data import images as im
from tests.imagefolder import digits_to_uint8, random_folder, write_digits_folder, write_image
from tests.torchvision_ref import import_torchvision

RNG = np.random.default_rng(0)


def folder_arrays(split, **loader_args):
    """Every image and label of ``split`` through the pipeline, in file order."""
    xs, ys = zip(*Loader(split, batch_size=16, shuffle=False, drop_remainder=False, prefetch=0, **loader_args))
    x, y = np.concatenate(xs), np.concatenate(ys)
    return x[y >= 0], y[y >= 0]


def test_digits_folder_reads_back_the_in_memory_digits(tmp_path):
    """Written as PNG (pixel round(v * 255 / 16)), the folder gives the in-memory digits back."""
    splits = write_digits_folder(str(tmp_path))
    folder = image_folder(str(tmp_path), image_size=8, channels=1)
    assert folder.classes == tuple(str(d) for d in range(10)) and folder.input_shape == (-1, 8, 8, 1)
    for part, split in (("train", folder.train), ("val", folder.val)):
        images, labels = splits[part]
        order = np.asarray([int(os.path.basename(p)[:-4]) for p in split.files])  # the names are the indices
        assert sorted(order) == list(range(len(labels)))
        np.testing.assert_array_equal(split.labels, labels[order])
        x, y = folder_arrays(split)
        np.testing.assert_array_equal(y, labels[order])
        assert x.dtype == np.float32 and x.shape == images.shape
        want = digits_to_uint8(images[order])[..., None] / np.float32(255)
        np.testing.assert_array_equal(x, want)  # exactly the uint8 mapping
        assert np.abs(x - images[order]).max() <= 0.5 / 255 + 1e-7  # and within half a step of v / 16


def test_classes_and_file_order_are_torchvisions(tmp_path):
    torchvision = import_torchvision()
    for rel in ["b/2.png", "b/10.png", "B/x.jpg", "a/sub/z.png", "a/sub 2/y.png", "a/c.PNG", "a/sub/a.bmp",
                "10/q.webp", "2/q.png"]:
        pixels = RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8)
        path = os.path.join(tmp_path, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(pixels).save(path, format={".png": "PNG", ".jpg": "JPEG", ".bmp": "BMP",
                                                   ".webp": "WEBP"}[os.path.splitext(rel)[1].lower()])
    folder = image_folder(str(tmp_path), image_size=4, val_fraction=0)
    reference = torchvision.datasets.ImageFolder(str(tmp_path))
    assert list(folder.classes) == reference.classes == ["10", "2", "B", "a", "b"]
    assert folder.val is None
    assert list(zip(folder.train.files, folder.train.labels.tolist())) == reference.samples


def test_train_val_layout_and_hidden_entries(tmp_path):
    random_folder(str(tmp_path / "train"), {"cat": 3, "dog": 2})
    random_folder(str(tmp_path / "val"), {"dog": 2})
    random_folder(str(tmp_path / "train" / ".ipynb_checkpoints"), {"x": 1})
    (tmp_path / "train" / "cat" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "README.md").write_text("files at the root are not read")
    folder = image_folder(str(tmp_path), image_size=3)
    assert folder.classes == ("cat", "dog")
    assert folder.train.labels.tolist() == [0, 0, 0, 1, 1] and folder.val.labels.tolist() == [1, 1]
    assert all("/val/dog/" in p for p in folder.val.files)
    random_folder(str(tmp_path / "val"), {"cow": 1})
    with pytest.raises(ValueError, match=r"val has class folders \['cow'\] that the training tree .* does not "
                                         r"have; the classes are \['cat', 'dog'\]"):
        image_folder(str(tmp_path), image_size=3)


def test_held_out_fraction_is_seeded_and_per_class(tmp_path):
    random_folder(str(tmp_path), {"a": 10, "b": 7, "c": 1})
    folder = image_folder(str(tmp_path), image_size=3, val_fraction=0.3, split_seed=5)
    again = image_folder(str(tmp_path), image_size=3, val_fraction=0.3, split_seed=5)
    other = image_folder(str(tmp_path), image_size=3, val_fraction=0.3, split_seed=6)
    assert list(again.val.files) == list(folder.val.files) != list(other.val.files)
    assert np.bincount(folder.val.labels, minlength=3).tolist() == [3, 2, 0]  # round(0.3 * n) per class
    train, val = set(folder.train.files), set(folder.val.files)
    assert not train & val and len(train | val) == 18
    assert list(folder.train.files) == sorted(train)  # file order kept


def encoded(img: Image.Image, fmt: str, **args) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **args)
    buffer.seek(0)
    return Image.open(buffer)


@pytest.mark.parametrize("make, channels, expected", [
    # palette with a transparent index: its colours, alpha dropped
    (lambda: Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P").convert("P"), 3, None),
    (lambda: Image.fromarray(np.full((2, 2, 4), [10, 20, 30, 0], np.uint8), "RGBA"), 3, [10, 20, 30]),
    (lambda: Image.fromarray(np.full((2, 2, 2), [77, 0], np.uint8), "LA"), 3, [77, 77, 77]),
    (lambda: Image.fromarray(np.full((2, 2), 65535 // 3, np.uint16)), 1, [85]),  # 16-bit: round(v / 257)
    (lambda: Image.fromarray(np.full((2, 2), 65535, np.uint16)), 3, [255, 255, 255]),
    (lambda: Image.fromarray(np.full((2, 2, 3), [255, 0, 0], np.uint8)), 1, [76]),  # 601-2 luma of red
    (lambda: Image.new("1", (2, 2), 1), 3, [255, 255, 255]),
])
def test_every_mode_becomes_8_bit_rgb_or_grayscale(tmp_path, make, channels, expected):
    img = make()
    if img.mode == "P":
        img.putpalette([1, 2, 3, 40, 50, 60, 200, 100, 0] + [0] * 759)
        img.info["transparency"] = 1
        expected = None
    path = str(tmp_path / "x.png")
    img.save(path, **({"transparency": 1} if img.mode == "P" else {}))
    out = im.open_image(path, channels=channels)
    assert out.mode == ("RGB" if channels == 3 else "L") and out.size == (2, 2)
    pixels = np.asarray(out).reshape(4, channels)
    if expected is None:  # the palette colours, the transparent one included
        assert pixels.tolist() == [[1, 2, 3], [40, 50, 60], [200, 100, 0], [40, 50, 60]]
    else:
        assert (pixels == expected).all(), pixels


def test_cmyk_jpeg_and_exif_orientation(tmp_path):
    rgb = Image.fromarray(np.tile(np.array([[0, 255]], np.uint8)[:, :, None], (16, 8, 3)).reshape(16, 16, 3))
    cmyk = str(tmp_path / "cmyk.jpg")
    rgb.convert("CMYK").save(cmyk, quality=100)
    np.testing.assert_allclose(np.asarray(im.open_image(cmyk), np.float64),
                               np.asarray(Image.open(cmyk).convert("RGB"), np.float64))
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, 0] = 255  # top-left marked
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: turn 90 degrees clockwise to view
    path = write_image(str(tmp_path / "o.png"), pixels, exif=exif)
    upright = np.asarray(im.open_image(path))
    assert upright.shape == (3, 2, 3) and upright[0, 1].tolist() == [255, 255, 255] and upright.sum() == 765


def test_preprocess_round_trips_through_metadata_and_load_image_matches_the_loader(tmp_path):
    random_folder(str(tmp_path), {"a": 2, "b": 2}, size=(9, 13))
    folder = image_folder(str(tmp_path), image_size=(6, 8), mean=data.IMAGENET_MEAN, std=data.IMAGENET_STD,
                          crop_fraction=0.875, val_fraction=0)
    meta = folder.metadata()
    assert meta["classes"] == ["a", "b"]
    assert make_preprocess(**meta["preprocess"]) == folder.preprocess
    x, _ = folder_arrays(folder.train)
    for i, path in enumerate(folder.train.files):
        np.testing.assert_array_equal(load_image(path, folder.preprocess), x[i])
    assert x.shape == (4, 6, 8, 3)
    assert data.list_images(str(tmp_path)) == list(folder.train.files)
    assert data.list_images(folder.train.files[0]) == [folder.train.files[0]]


# ---------------------------------------------------------------------------
# the transforms against torchvision


def test_random_resized_crop_box_matches_torchvisions_rule():
    torchvision = import_torchvision()
    import torch

    rng = np.random.default_rng(1)
    for _ in range(200):
        box = im.random_resized_crop_box(rng, 40, 30, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= box.top <= 30 - box.height and 0 <= box.left <= 40 - box.width
        assert 0.08 * 1200 * 0.9 <= box.height * box.width <= 1200
        assert 3 / 4 * 0.8 <= box.width / box.height <= 4 / 3 * 1.2
    get_params = torchvision.transforms.RandomResizedCrop.get_params
    for width, height, ratio in ((40, 10, (3 / 4, 4 / 3)), (10, 40, (3 / 4, 4 / 3)), (20, 20, (0.5, 2.0))):
        # an area fraction above 1 never fits: the ten attempts fail and the centre crop is taken
        ours = im.random_resized_crop_box(rng, width, height, (2.0, 3.0), ratio)
        assert tuple(ours) == get_params(torch.zeros(3, height, width), [2.0, 3.0], list(ratio))


def test_resized_crop_center_crop_and_flip_match_torchvision():
    torchvision = import_torchvision()
    functional = torchvision.transforms.functional
    img = Image.fromarray(RNG.integers(0, 256, (23, 31, 3), dtype=np.uint8))
    box = im.Box(3, 5, 14, 20)
    np.testing.assert_array_equal(np.asarray(im.resized_crop(img, box, (9, 7))),
                                  np.asarray(functional.resized_crop(img, 3, 5, 14, 20, [9, 7])))
    reference = functional.center_crop(functional.resize(img, 16), [16, 16])
    np.testing.assert_array_equal(np.asarray(im.resize_center_crop(img, (16, 16), 1.0)), np.asarray(reference))
    reference = functional.center_crop(functional.resize(img, 20), [16, 16])  # 16 / 0.8 = 20
    np.testing.assert_array_equal(np.asarray(im.resize_center_crop(img, (16, 16), 0.8)), np.asarray(reference))


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_color_jitter_matches_torchvision(mode):
    torchvision = import_torchvision()
    functional = torchvision.transforms.functional
    img = Image.fromarray(RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)).convert(mode)
    steps = [("hue", -0.3), ("contrast", 1.7), ("brightness", 0.6), ("saturation", 0.2), ("hue", 0.45)]
    reference = img
    for name, factor in steps:
        reference = getattr(functional, f"adjust_{name}")(reference, factor)
    np.testing.assert_array_equal(np.asarray(im.color_jitter(img, steps)), np.asarray(reference))


def test_jitter_params_follow_color_jitters_ranges():
    rng = np.random.default_rng(2)
    augment = Augment(brightness=0.4, contrast=1.5, saturation=0.0, hue=0.1)
    orders = set()
    for _ in range(300):
        steps = im.jitter_params(rng, augment)
        names = [name for name, _ in steps]
        assert sorted(names) == ["brightness", "contrast", "hue"]  # saturation 0: off
        orders.add(tuple(names))
        factors = dict(steps)
        assert 0.6 <= factors["brightness"] <= 1.4 and 0.0 <= factors["contrast"] <= 2.5
        assert -0.1 <= factors["hue"] <= 0.1
    assert len(orders) == 6  # every order of the three


def test_augmented_examples_are_crops_flips_and_stay_in_range(tmp_path):
    random_folder(str(tmp_path), {"a": 8}, size=(20, 24))
    folder = image_folder(str(tmp_path), image_size=8, val_fraction=0,
                          augment=Augment(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1))
    x, _ = folder_arrays(folder.train)
    again, _ = folder_arrays(folder.train)
    other, _ = folder_arrays(folder.train, seed=1)
    assert x.shape == (8, 8, 8, 3) and 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x, again)
    assert not np.array_equal(x, other)


def test_argument_errors_name_the_argument(tmp_path):
    random_folder(str(tmp_path), {"a": 2})
    cases = [
        (dict(image_size=0), r"image_folder: image_size must be an int or a sequence of 2 ints >= 1, got 0"),
        (dict(image_size=4, channels=2), r"image_folder: unknown channels 2; expected one of \(1, 3\)"),
        (dict(image_size=4, mean=(0.5, 0.5)), r"mean must be a number or 3 numbers \(one per channel\)"),
        (dict(image_size=4, std=0.0), r"image_folder: std must be a number > 0"),
        (dict(image_size=4, crop_fraction=0.0), r"crop_fraction must be a number > 0 and <= 1"),
        (dict(image_size=4, val_fraction=1.0), r"val_fraction must be a number >= 0 and < 1"),
        (dict(image_size=4, augment=Augment(scale=(0.5, 0.1))), r"augment.scale must have low <= high"),
        (dict(image_size=4, augment=Augment(hue=0.6)), r"augment.hue must be a number >= 0 and <= 0.5"),
        (dict(image_size=4, skip_bad_images=1), r"skip_bad_images must be True or False"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            image_folder(str(tmp_path), **kwargs)
    with pytest.raises(TypeError, match="augment must be a jaxconv.data.Augment or None, got dict"):
        image_folder(str(tmp_path), image_size=4, augment={"flip": True})
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        image_folder(str(tmp_path / "missing"), image_size=4)
