"""Data loader fault injection: gzip bombs, absurd headers, non-regular files, mismatched splits.

Every probe checks the error names the file and the problem, that memory stays
bounded by what the header declares, and that nothing was lost: the files are
unchanged and a good copy of the data set elsewhere still loads exactly.
"""

from __future__ import annotations

import gzip
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from jaxconv import data
from jaxconv.data import IDX_FILES, load_dataset, read_cifar_batch, read_idx
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
