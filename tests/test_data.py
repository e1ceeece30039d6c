"""Data: IDX and CIFAR-10 readers on generated files, batching, on-device augmentation."""

from __future__ import annotations

import gzip
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import data
from jaxconv.data import (
    IDX_FILES,
    arrays,
    augmentation,
    epoch_batches,
    load_dataset,
    parse_augment,
    random_crop,
    random_flip,
)

RNG = np.random.default_rng(0)


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_gz(path, payload: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(payload)


def write_mnist(root, n_train=7, n_test=3, size=(28, 28)):
    os.makedirs(root, exist_ok=True)
    arrays = {
        "train_images": RNG.integers(0, 256, (n_train, *size), dtype=np.uint8),
        "train_labels": RNG.integers(0, 10, (n_train,), dtype=np.uint8),
        "test_images": RNG.integers(0, 256, (n_test, *size), dtype=np.uint8),
        "test_labels": RNG.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_gz(os.path.join(root, IDX_FILES[name]), idx_bytes(array))
    return arrays


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_loader_reads_generated_files_exactly(tmp_path, name):
    arrays = write_mnist(str(tmp_path))
    ds = load_dataset(name, str(tmp_path))
    assert ds.name == name and ds.num_classes == 10
    assert ds.train.images.shape == (7, 28, 28, 1) and ds.train.images.dtype == np.float32
    np.testing.assert_array_equal(ds.train.images[..., 0], arrays["train_images"] / np.float32(255))
    np.testing.assert_array_equal(ds.test.images[..., 0], arrays["test_images"] / np.float32(255))
    np.testing.assert_array_equal(ds.train.labels, arrays["train_labels"])
    assert ds.test.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.test.labels, arrays["test_labels"])


def test_idx_loader_finds_a_subdirectory_named_after_the_data_set(tmp_path):
    write_mnist(str(tmp_path / "fashion_mnist"))
    assert len(load_dataset("fashion_mnist", str(tmp_path)).train.labels) == 7


def test_missing_idx_files_name_the_files(tmp_path):
    write_mnist(str(tmp_path))
    os.remove(tmp_path / IDX_FILES["test_labels"])
    with pytest.raises(FileNotFoundError, match=r"missing t10k-labels-idx1-ubyte.gz in .*put the files "
                                                r"train-images-idx3-ubyte.gz, .*t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", str(tmp_path))


@pytest.mark.parametrize("corrupt, message", [
    (lambda raw, gz: gz[: len(gz) // 2], "not a complete gzip file"),
    (lambda raw, gz: b"this is not gzip at all", "not a complete gzip file"),
    (lambda raw, gz: gzip.compress(raw[:-5]), r"is truncated: header \(7, 28, 28\) needs 5488 data bytes, found 5483"),
    (lambda raw, gz: gzip.compress(raw + b"\0"), "longer than its header says"),
    (lambda raw, gz: gzip.compress(raw[:10]), "truncated inside its header"),
    (lambda raw, gz: gzip.compress(b"\x01\x02" + raw[2:]), "bad magic number"),
    (lambda raw, gz: gzip.compress(raw[:2] + b"\x0d" + raw[3:]), "element type 0x0d; expected 0x08"),
    (lambda raw, gz: gzip.compress(raw[:3] + b"\x02" + raw[4:]), "has 2 dimensions; expected 3"),
])
def test_corrupt_idx_files_are_rejected(tmp_path, corrupt, message):
    write_mnist(str(tmp_path))
    path = tmp_path / IDX_FILES["train_images"]
    gz = path.read_bytes()
    path.write_bytes(corrupt(gzip.decompress(gz), gz))
    with pytest.raises(ValueError, match=message):
        load_dataset("mnist", str(tmp_path))


def test_idx_count_mismatch_and_bad_labels(tmp_path):
    arrays = write_mnist(str(tmp_path))
    write_gz(tmp_path / IDX_FILES["train_labels"], idx_bytes(arrays["train_labels"][:5]))
    with pytest.raises(ValueError, match="has 7 images but .* has 5 labels"):
        load_dataset("mnist", str(tmp_path))
    labels = arrays["train_labels"].copy()
    labels[2] = 12
    write_gz(tmp_path / IDX_FILES["train_labels"], idx_bytes(labels))
    with pytest.raises(ValueError, match="holds label 12; expected labels < 10"):
        load_dataset("mnist", str(tmp_path))


def write_cifar(root, records=(4, 3, 2, 2, 1, 3)):
    base = os.path.join(root, data.CIFAR_DIR)
    os.makedirs(base, exist_ok=True)
    out = []
    for name, n in zip(data.CIFAR_TRAIN + data.CIFAR_TEST, records):
        labels = RNG.integers(0, 10, n, dtype=np.uint8)
        chw = RNG.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        with open(os.path.join(base, name), "wb") as f:
            for i in range(n):
                f.write(bytes([labels[i]]) + chw[i].tobytes())
        out.append((labels, chw))
    return out


def test_cifar_loader_reads_generated_files_exactly(tmp_path):
    parts = write_cifar(str(tmp_path))
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.train.images.shape == (12, 32, 32, 3) and ds.test.images.shape == (3, 32, 32, 3)
    labels = np.concatenate([p[0] for p in parts[:5]])
    np.testing.assert_array_equal(ds.train.labels, labels)
    chw = np.concatenate([p[1] for p in parts[:5]])
    # Pixel (y, x) of channel c comes from byte 1 + c * 1024 + y * 32 + x of the record.
    np.testing.assert_array_equal(ds.train.images, chw.transpose(0, 2, 3, 1) / np.float32(255))
    assert ds.train.images[0, 5, 7, 2] == np.float32(parts[0][1][0, 2, 5, 7]) / 255
    np.testing.assert_array_equal(ds.test.labels, parts[5][0])
    # root may also be the cifar-10-batches-bin directory itself.
    assert load_dataset("cifar10", str(tmp_path / data.CIFAR_DIR)).test.images.shape[0] == 3


def test_cifar_missing_truncated_and_bad_labels(tmp_path):
    write_cifar(str(tmp_path))
    base = tmp_path / data.CIFAR_DIR
    (base / "data_batch_3.bin").rename(base / "data_batch_3.tmp")
    with pytest.raises(FileNotFoundError, match=r"missing data_batch_3.bin in .*cifar-10-batches-bin"):
        load_dataset("cifar10", str(tmp_path))
    (base / "data_batch_3.tmp").rename(base / "data_batch_3.bin")
    raw = (base / "test_batch.bin").read_bytes()
    (base / "test_batch.bin").write_bytes(raw[:-100])
    with pytest.raises(ValueError, match=r"test_batch.bin has 9119 bytes; expected a positive multiple of 3073"):
        load_dataset("cifar10", str(tmp_path))
    (base / "test_batch.bin").write_bytes(bytes([11]) + raw[1:])
    with pytest.raises(ValueError, match="holds label 11; expected labels < 10"):
        load_dataset("cifar10", str(tmp_path))


def test_unknown_data_set_and_env_default(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown data set 'svhn'; expected one of \['cifar10', 'digits'"):
        load_dataset("svhn")
    monkeypatch.setenv("JAXCONV_DATA", str(tmp_path))
    write_mnist(str(tmp_path))
    assert len(load_dataset("mnist").test.labels) == 3


def test_digits_split_is_scikit_learns():
    """The embedded split equals scikit-learn's digits under the documented train_test_split."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_dataset("digits")
    assert ds.train.images.shape == (1437, 8, 8, 1) and ds.test.images.shape == (360, 8, 8, 1)
    assert ds.train.images.dtype == np.float32 and ds.train.labels.dtype == np.int32
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    x_tr, x_te, y_tr, y_te = train_test_split(images, bunch.target.astype(np.int32), test_size=0.2,
                                              stratify=bunch.target, random_state=0)
    for got, want in ((ds.train.images, x_tr), (ds.test.images, x_te),
                      (ds.train.labels, y_tr), (ds.test.labels, y_te)):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# batching


def test_epoch_batches_order_depends_only_on_the_key_and_start_skips():
    x = np.arange(20, dtype=np.float32).reshape(20, 1, 1, 1)
    y = np.arange(20, dtype=np.int32)
    key = jax.random.PRNGKey(3)
    full = [np.asarray(b[1]) for b in epoch_batches(key, x, y, 6)]
    assert len(full) == 3 and all(len(b) == 6 for b in full)
    assert len(set(np.concatenate(full))) == 18  # no repeats; 2 dropped
    again = [np.asarray(b[1]) for b in epoch_batches(key, x, y, 6)]
    assert all(np.array_equal(a, b) for a, b in zip(full, again))
    skipped = [np.asarray(b[1]) for b in epoch_batches(key, x, y, 6, start=2)]
    assert len(skipped) == 1 and np.array_equal(skipped[0], full[2])
    other = np.concatenate([np.asarray(b[1]) for b in epoch_batches(jax.random.PRNGKey(4), x, y, 6)])
    assert not np.array_equal(other, np.concatenate(full))
    stacked = list(epoch_batches(key, x, y, 3, steps_per_call=2))
    assert stacked[0][0].shape == (2, 3, 1, 1, 1)
    np.testing.assert_array_equal(np.asarray(stacked[0][1]).ravel(), full[0])
    with pytest.raises(ValueError, match="batch_size \\* steps_per_call = 21 exceeds the 20 examples"):
        next(epoch_batches(key, x, y, 21))


def test_epoch_batches_compile_once_for_every_item_and_epoch():
    """Items are gathered by one compiled program (not eager indexing, one dispatch per op)."""
    x = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1)
    y = np.arange(40, dtype=np.int32)
    before = arrays._take_item._cache_size(), arrays._epoch_order._cache_size()
    for epoch in range(3):
        for xb, yb in epoch_batches(jax.random.PRNGKey(epoch), x, y, 7):
            np.testing.assert_array_equal(np.asarray(xb).ravel(), np.asarray(yb))
    assert (arrays._take_item._cache_size(), arrays._epoch_order._cache_size()) == (
        before[0] + 1, before[1] + 1)


# ---------------------------------------------------------------------------
# augmentation


def test_random_crop_is_a_shift_of_each_image():
    images = jnp.asarray(RNG.random((16, 5, 6, 2)), jnp.float32)
    p = 2
    out = np.asarray(jax.jit(random_crop, static_argnums=2)(jax.random.PRNGKey(0), images, p))
    padded = np.pad(np.asarray(images), ((0, 0), (p, p), (p, p), (0, 0)))
    offsets = set()
    for i in range(len(images)):
        matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if np.array_equal(out[i], padded[i, dy:dy + 5, dx:dx + 6])]
        assert matches, f"image {i} is not a crop of its padded version"
        offsets.add(matches[0])
    assert len(offsets) > 3  # offsets differ between images
    np.testing.assert_array_equal(random_crop(jax.random.PRNGKey(0), images, 0), images)


def test_random_flip_mirrors_about_half():
    images = jnp.asarray(RNG.random((64, 4, 5, 3)), jnp.float32)
    out = np.asarray(jax.jit(random_flip)(jax.random.PRNGKey(1), images))
    mirrored = np.asarray(images)[:, :, ::-1]
    flipped = [np.array_equal(o, m) for o, m in zip(out, mirrored)]
    kept = [np.array_equal(o, i) for o, i in zip(out, np.asarray(images))]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48


def test_augmentation_composes_is_deterministic_and_validates():
    assert augmentation(0, False) is None and parse_augment("none") is None
    aug = parse_augment("crop:1,flip")
    images = jnp.asarray(RNG.random((8, 8, 8, 1)), jnp.float32)
    a = jax.jit(aug)(jax.random.PRNGKey(5), images)
    b = jax.jit(aug)(jax.random.PRNGKey(5), images)
    assert a.shape == images.shape and np.array_equal(a, b)
    assert not np.array_equal(a, jax.jit(aug)(jax.random.PRNGKey(6), images))
    with pytest.raises(ValueError, match="unknown item 'rotate'"):
        parse_augment("crop:1,rotate")
    with pytest.raises(ValueError, match="crop padding must be an int >= 0, got 'x'"):
        parse_augment("crop:x")
    with pytest.raises(ValueError, match="crop_padding must be an int >= 0, got -1"):
        augmentation(-1)
    with pytest.raises(ValueError, match=r"expected images \(N, H, W, C\), got shape \(8, 8\)"):
        aug(jax.random.PRNGKey(0), jnp.ones((8, 8)))
