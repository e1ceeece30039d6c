"""Data loader fault injection: gzip bombs, absurd headers, non-regular files, mismatched splits;
image folders: truncated, corrupt and non-image files, decompression bombs, empty folders, FIFOs.

Every probe checks the error names the file and the problem, that memory stays
bounded by what the header declares, and that nothing was lost: the files are
unchanged and a good copy of the data set elsewhere still loads exactly.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from jaxconv import data
from jaxconv.data import (
    IDX_FILES,
    BadImageWarning,
    ImageError,
    Loader,
    image_folder,
    load_dataset,
    load_image,
    open_image,
    read_cifar_batch,
    read_idx,
)
from tests.imagefolder import random_folder, write_image
from tests.test_checkpoint_faults import read_in_thread
from tests.test_data import idx_bytes, write_cifar, write_gz, write_mnist

MiB = 1 << 20


def idx_header(dims) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)


def write_bomb(path, dims, payload_bytes: int) -> None:
    """A gzip file: an IDX header declaring ``dims``, then ``payload_bytes`` zeros (compressed ~1000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    zeros = bytes(MiB)
    with open(path, "wb") as f:
        f.write(packer.compress(idx_header(dims)))
        for start in range(0, payload_bytes, MiB):
            f.write(packer.compress(zeros[:min(MiB, payload_bytes - start)]))
        f.write(packer.flush())


def peak_while_failing(fn, match):
    """Peak traced allocation while ``fn()`` runs; it must raise a ValueError matching ``match``."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def good(tmp_path):
    """A good MNIST copy in its own directory: it must still load exactly after every probe."""
    arrays = write_mnist(str(tmp_path / "good"))
    return str(tmp_path / "good"), arrays


def assert_nothing_lost(good):
    root, arrays = good
    ds = load_dataset("mnist", root)
    np.testing.assert_array_equal(ds.train.images[..., 0], arrays["train_images"] / np.float32(255))
    np.testing.assert_array_equal(ds.test.labels, arrays["test_labels"])


def test_gzip_bomb_is_decompressed_no_further_than_its_header(tmp_path, good):
    """64 MiB of zeros after a header declaring 10 28x28 images: read 7840 bytes and one more."""
    root = str(tmp_path / "bomb")
    write_mnist(root)
    path = os.path.join(root, IDX_FILES["train_images"])
    write_bomb(path, (10, 28, 28), 10 * 28 * 28 + 64 * MiB)
    assert os.path.getsize(path) < MiB // 8
    before = open(path, "rb").read()
    peak = peak_while_failing(lambda: read_idx(path, ndim=3), r"longer than its header says: header "
                                                           r"\(10, 28, 28\) needs 7840 data bytes")
    assert peak < 8 * MiB, peak  # the whole stream would be 64 MiB
    with pytest.raises(ValueError, match=f"{path} is longer than its header says"):
        load_dataset("mnist", root)
    assert open(path, "rb").read() == before
    assert_nothing_lost(good)


def test_header_declaring_more_than_the_file_can_hold_allocates_nothing(tmp_path, good):
    """A 100-byte gzip whose header declares 60000 x 65535 x 65535 bytes is refused up front."""
    path = str(tmp_path / "absurd.gz")
    write_gz(path, idx_header((60000, 65535, 65535)) + bytes(16))
    peak = peak_while_failing(lambda: read_idx(path, ndim=3),
                              rf"{path} is truncated or corrupt: header \(60000, 65535, 65535\) needs "
                              rf"{60000 * 65535 * 65535} data bytes, more than {os.path.getsize(path)} bytes "
                              "of gzip can hold")
    assert peak < MiB, peak
    assert_nothing_lost(good)


def test_a_large_but_honest_header_is_still_read(tmp_path):
    """The ratio bound is no tighter than deflate: 4 MiB of zeros in a ~4 kB gzip read back."""
    path = str(tmp_path / "zeros.gz")
    write_bomb(path, (4, 1024, 1024), 4 * MiB)
    assert os.path.getsize(path) * 1000 < 4 * MiB
    out = read_idx(path, ndim=3)
    assert out.shape == (4, 1024, 1024) and not out.any()


def test_fifo_directory_and_device_named_like_idx_files(tmp_path, good):
    root = str(tmp_path / "odd")
    write_mnist(root)
    fifo = os.path.join(root, IDX_FILES["train_images"])
    os.remove(fifo)
    os.mkfifo(fifo)
    error = read_in_thread(lambda: load_dataset("mnist", root), fifo)
    assert isinstance(error, ValueError) and f"read_idx: {fifo} is not a regular file" in str(error)
    os.remove(fifo)
    os.mkdir(fifo)
    with pytest.raises(ValueError, match=f"{fifo} is not a regular file"):
        load_dataset("mnist", root)
    os.rmdir(fifo)
    os.symlink("/dev/zero", fifo)
    with pytest.raises(ValueError, match=f"{fifo} is not a regular file"):
        read_idx(fifo, ndim=3)
    assert_nothing_lost(good)


def test_cifar_device_link_fifo_and_oversized_batch(tmp_path, good):
    write_cifar(str(tmp_path))
    base = tmp_path / data.CIFAR_DIR
    batch = base / "data_batch_1.bin"
    batch.unlink()
    batch.symlink_to("/dev/zero")  # np.fromfile would read it forever
    with pytest.raises(ValueError, match=f"read_cifar_batch: {batch} is not a regular file"):
        load_dataset("cifar10", str(tmp_path))
    batch.unlink()
    os.mkfifo(batch)
    error = read_in_thread(lambda: read_cifar_batch(str(batch)), str(batch))
    assert isinstance(error, ValueError) and "is not a regular file" in str(error)
    batch.unlink()
    with open(batch, "wb") as f:  # sparse: 10,001 records' worth of size, nothing written
        f.truncate(10_001 * 3073)
    peak = peak_while_failing(lambda: read_cifar_batch(str(batch)),
                              r"has 30733073 bytes; expected a positive multiple of 3073 .* at most "
                              r"10000 images")
    assert peak < MiB, peak
    assert_nothing_lost(good)


def replace_idx(root, name, array):
    write_gz(os.path.join(root, IDX_FILES[name]), idx_bytes(array))


def test_mismatched_or_empty_splits_name_the_file(tmp_path, good):
    root = str(tmp_path / "mixed")
    arrays = write_mnist(root)
    test_images = os.path.join(root, IDX_FILES["test_images"])
    replace_idx(root, "test_images", np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=rf"load_dataset\('mnist'\): {test_images} holds images of shape "
                                         r"\(32, 32, 1\) \(float32\), but .*train-images-idx3-ubyte.gz holds "
                                         r"\(28, 28, 1\) \(float32\): the train and test splits do not match"):
        load_dataset("mnist", root)
    replace_idx(root, "test_images", np.zeros((0, 28, 28), np.uint8))
    replace_idx(root, "test_labels", np.zeros((0,), np.uint8))
    with pytest.raises(ValueError, match=rf"{test_images} holds no examples"):
        load_dataset("mnist", root)
    replace_idx(root, "test_images", arrays["test_images"])
    replace_idx(root, "test_labels", np.asarray([1, 12, 3], np.uint8))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz holds label 12; expected labels < 10"):
        load_dataset("mnist", root)
    replace_idx(root, "test_labels", arrays["test_labels"])
    assert len(load_dataset("mnist", root).test.labels) == 3  # repaired: loads again
    assert_nothing_lost(good)


def test_read_idx_validates_ndim(tmp_path):
    for ndim in (0, True, 2.0):
        with pytest.raises(ValueError, match="read_idx: ndim must be an int >= 1 and <= 255"):
            read_idx(str(tmp_path / "x.gz"), ndim=ndim)


def test_gzip_with_a_damaged_stream_is_a_value_error(tmp_path, good):
    path = str(tmp_path / "bad.gz")
    payload = gzip.compress(idx_header((2, 3, 3)) + bytes(18))
    damaged = bytearray(payload)
    damaged[-6] ^= 0xFF  # the CRC-32 / length trailer
    open(path, "wb").write(bytes(damaged))
    with pytest.raises(ValueError, match=f"read_idx: {path} is not a complete gzip file"):
        read_idx(path, ndim=3)
    assert_nothing_lost(good)


# ---------------------------------------------------------------------------
# image folders: bad images, bombs, empty or odd folders


def png_header(width: int, height: int) -> bytes:
    """A PNG file that declares ``width x height`` 8-bit grayscale pixels and holds none."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(
        b"IEND", b"")


def encoded_image(fmt: str, size=(24, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("name, content, reason", [
    ("half.png", lambda: encoded_image("PNG")[:300], "corrupt or truncated"),
    ("half.jpg", lambda: encoded_image("JPEG")[:400], "corrupt or truncated"),
    ("half.webp", lambda: encoded_image("WEBP")[:60], "corrupt or truncated|not a PNG, JPEG, BMP or WebP image"),
    ("noise.jpg", lambda: np.random.default_rng(1).bytes(500), "not a PNG, JPEG, BMP or WebP image"),
    ("page.png", lambda: b"<html><body>404</body></html>", "not a PNG, JPEG, BMP or WebP image"),
    ("empty.bmp", lambda: b"", "not a PNG, JPEG, BMP or WebP image"),
])
def test_unreadable_images_name_the_file(tmp_path, name, content, reason):
    random_folder(str(tmp_path), {"a": 2, "b": 2})
    path = tmp_path / "b" / name
    path.write_bytes(content())
    folder = image_folder(str(tmp_path), image_size=8, val_fraction=0)
    message = rf"cannot read image {path}: ({reason})"
    with pytest.raises(ImageError, match=message):
        load_image(str(path), folder.preprocess)
    with pytest.raises(ImageError, match=message):
        list(Loader(folder.train, batch_size=5, shuffle=False))


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(9000, 9000))  # 81 megapixels declared in 57 bytes (Pillow would warn at 89)
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match=rf"cannot read image {bomb}: it declares 9000x9000 = 81000000 "
                                             r"pixels, more than max_pixels=67108864 \(refused as a possible "
                                             r"decompression bomb\)"):
            open_image(str(bomb))
        assert tracemalloc.get_traced_memory()[1] < MiB
    finally:
        tracemalloc.stop()
    # above max_pixels and Pillow's own limit: Pillow's DecompressionBombError, reported the same way
    bomb.write_bytes(png_header(20_000, 20_000))
    with pytest.raises(ImageError, match=rf"{bomb}: refused as a decompression bomb \(Image size"):
        open_image(str(bomb), max_pixels=10**12)
    small = write_image(str(tmp_path / "c" / "small.png"), np.zeros((40, 40), np.uint8))
    with pytest.raises(ImageError, match="declares 40x40 = 1600 pixels, more than max_pixels=1000"):
        Loader(image_folder(str(tmp_path), image_size=4, max_pixels=1000, val_fraction=0).train,
               batch_size=1).iterator().__next__()
    assert np.asarray(open_image(small, max_pixels=1600)).shape == (40, 40, 3)


def test_empty_class_folders_and_trees_without_images(tmp_path):
    random_folder(str(tmp_path), {"a": 3, "c": 2})
    (tmp_path / "b" / "nested").mkdir(parents=True)
    with pytest.raises(ValueError, match=rf"image_folder: 1 entries under {tmp_path} are not usable images: "
                                         rf"{tmp_path}/b \(class folder without images\); remove them, or pass "
                                         "skip_bad_images=True"):
        image_folder(str(tmp_path), image_size=4)
    with pytest.warns(BadImageWarning, match=rf"skipping 1 entries under {tmp_path}: {tmp_path}/b \(class folder "
                                             r"without images\)"):
        folder = image_folder(str(tmp_path), image_size=4, skip_bad_images=True, val_fraction=0)
    assert folder.classes == ("a", "b", "c") and folder.train.labels.tolist() == [0, 0, 0, 2, 2]
    empty = tmp_path / "empty"
    (empty / "x").mkdir(parents=True)
    (empty / "x" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=rf"image_folder: no images under {empty} \(expected {empty}/<class>/<image>"):
        image_folder(str(empty), image_size=4, skip_bad_images=True)
    flat = tmp_path / "flat"
    write_image(str(flat / "a.png"), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match=rf"image_folder: {flat} has no class folders; expected {flat}/<class>/"):
        image_folder(str(flat), image_size=4)


def test_non_image_files_are_named_or_skipped_with_a_count(tmp_path):
    random_folder(str(tmp_path), {"a": 2, "b": 2})
    for i in range(12):
        (tmp_path / "a" / f"notes{i:02d}.txt").write_text("x")
    (tmp_path / "b" / ".DS_Store").write_bytes(b"\0")  # hidden: never listed
    with pytest.raises(ValueError, match=rf"12 entries under {tmp_path} are not usable images: "
                                         rf"{tmp_path}/a/notes00.txt \(not an image file \(expected .png, .jpg, "
                                         r".jpeg, .bmp or .webp\)\); .*notes09.txt .*; and 2 more; remove them"):
        image_folder(str(tmp_path), image_size=4)
    with pytest.warns(BadImageWarning, match=r"skipping 12 entries .*notes00.txt .*; and 2 more") as caught:
        folder = image_folder(str(tmp_path), image_size=4, skip_bad_images=True, val_fraction=0)
    assert len(caught) == 1 and len(folder.train) == 4


def test_fifos_and_link_loops_never_hang(tmp_path):
    random_folder(str(tmp_path), {"a": 2, "b": 2})
    os.mkfifo(tmp_path / "a" / "pipe.png")
    os.symlink(tmp_path / "b", tmp_path / "b" / "loop")  # b/loop/loop/... is b again
    with pytest.raises(ValueError, match=rf"{tmp_path}/a/pipe.png \(not a regular file"):
        image_folder(str(tmp_path), image_size=4)
    os.remove(tmp_path / "a" / "pipe.png")
    folder = image_folder(str(tmp_path), image_size=4, val_fraction=0)
    assert len(folder.train) == 4  # the loop's files once
    victim = folder.train.files[0]
    os.remove(victim)
    os.mkfifo(victim)  # a file replaced by a FIFO after listing: refused, not read
    error = read_in_thread(lambda: next(iter(Loader(folder.train, batch_size=2, shuffle=False))), victim)
    assert isinstance(error, ImageError) and f"cannot read image {victim}: not a regular file" in str(error)


def test_skip_bad_images_uses_the_next_readable_file_and_warns_once(tmp_path):
    for i in range(6):
        write_image(str(tmp_path / "a" / f"{i}.png"), np.full((2, 2), i, np.uint8))
    (tmp_path / "a" / "2.png").write_bytes(b"truncated")
    folder = image_folder(str(tmp_path), image_size=2, channels=1, val_fraction=0, skip_bad_images=True)
    loader = Loader(folder.train, batch_size=3, shuffle=False)
    message = rf"Loader: skipped 1 unreadable images \(1 so far\), each replaced by the next readable file: " \
              rf"cannot read image {tmp_path}/a/2.png"
    with pytest.warns(BadImageWarning, match=message) as caught, loader.iterator(epochs=2) as it:
        seen = [np.rint(x[:, 0, 0, 0] * 255).astype(int).tolist() for x, _ in it]
    assert seen == [[0, 1, 3], [3, 4, 5]] * 2  # 2.png read as 3.png, every epoch
    assert len(caught) == 1 and list(it.skipped) == [f"{tmp_path}/a/2.png"]
    for i in range(6):
        (tmp_path / "a" / f"{i}.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"Loader: 6 files in a row from .*/a/0.png could not be read"):
        next(iter(loader))


def test_a_file_removed_after_listing_is_named(tmp_path):
    random_folder(str(tmp_path), {"a": 3})
    folder = image_folder(str(tmp_path), image_size=4, val_fraction=0)
    os.remove(folder.train.files[1])
    with pytest.raises(ImageError, match=rf"cannot read image {folder.train.files[1]}: no such file"):
        list(Loader(folder.train, batch_size=3, shuffle=False))
