"""The Grain pipeline: seeded epochs, padding, resuming from a saved state, shards, worker processes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jaxconv import distributed
from jaxconv.data import PADDING_LABEL, Augment, ImageError, Loader, image_folder
from tests.imagefolder import random_folder, write_image

AUGMENT = Augment(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)


def id_folder(root, n: int, classes: int = 3):
    """``n`` 3x3 grayscale images whose every pixel is the image's id (0..n-1), class ``id % classes``."""
    for i in range(n):
        write_image(os.path.join(root, f"c{i % classes}", f"{i:03d}.png"), np.full((3, 3), i, np.uint8))
    return image_folder(root, image_size=3, channels=1, val_fraction=0)


def ids(images: np.ndarray) -> list[int]:
    return np.rint(images[:, 0, 0, 0] * 255).astype(int).tolist()


def stream(loader: Loader, state=None, epochs=None) -> list[tuple[np.ndarray, np.ndarray]]:
    with loader.iterator(state, epochs=epochs) as it:
        return list(it)


def test_each_epoch_is_a_seeded_permutation(tmp_path):
    folder = id_folder(str(tmp_path), 40)
    loader = Loader(folder.train, batch_size=8, seed=3)
    assert len(loader) == loader.batches_per_epoch == 5
    batches = stream(loader, epochs=2)
    assert len(batches) == 10 and all(x.shape == (8, 3, 3, 1) and y.dtype == np.int32 for x, y in batches)
    epochs = [sum((ids(x) for x, _ in batches[e * 5:(e + 1) * 5]), []) for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(40))
    assert epochs[0] != epochs[1] and epochs[0] != sorted(epochs[0])
    for x, y in batches:
        assert [i % 3 for i in ids(x)] == y.tolist()  # every image keeps its label
    assert epochs[0] == sum((ids(x) for x, _ in stream(Loader(folder.train, batch_size=8, seed=3))), [])
    assert epochs[0] != sum((ids(x) for x, _ in stream(Loader(folder.train, batch_size=8, seed=4))), [])
    in_order = sum((ids(x) for x, _ in stream(Loader(folder.train, batch_size=8, shuffle=False))), [])
    assert in_order == [int(os.path.basename(p)[:3]) for p in folder.train.files]


def test_last_batch_dropped_or_padded(tmp_path):
    folder = id_folder(str(tmp_path), 10)
    dropped = stream(Loader(folder.train, batch_size=4, seed=1))
    assert len(dropped) == 2 and len(set(sum((ids(x) for x, _ in dropped), []))) == 8
    padded = stream(Loader(folder.train, batch_size=4, shuffle=False, drop_remainder=False))
    assert len(padded) == 3
    x, y = padded[-1]
    assert y.tolist()[2:] == [PADDING_LABEL] * 2 and not x[2:].any()
    seen = sum((ids(x[y >= 0]) for x, y in padded), [])
    assert sorted(seen) == list(range(10))


def test_resume_from_a_saved_state_is_bitwise(tmp_path):
    """Consume k batches, save the state (through JSON), rebuild everything, continue: the same stream."""
    random_folder(str(tmp_path), {"a": 12, "b": 10}, size=(12, 10))

    def make_loader():
        folder = image_folder(str(tmp_path), image_size=8, val_fraction=0, augment=AUGMENT)
        return Loader(folder.train, batch_size=4, seed=7)

    full = stream(make_loader(), epochs=3)
    assert len(full) == 15  # 22 // 4 = 5 per epoch
    for k, expected_state in ((3, {"epoch": 0, "position": 3}), (5, {"epoch": 1, "position": 0}),
                              (9, {"epoch": 1, "position": 4})):
        with make_loader().iterator(epochs=3) as it:
            for _ in range(k):
                next(it)
            saved = json.dumps(it.state)
        assert json.loads(saved) == expected_state
        rest = stream(make_loader(), json.loads(saved), epochs=3)
        assert len(rest) == 15 - k
        for (x, y), (x_full, y_full) in zip(rest, full[k:]):
            np.testing.assert_array_equal(x, x_full)
            np.testing.assert_array_equal(y, y_full)
    finished = make_loader().iterator(epochs=1)
    assert len(list(finished)) == 5 and finished.state == {"epoch": 1, "position": 0}
    assert stream(make_loader(), finished.state, epochs=1) == []


def test_two_shards_read_disjoint_halves_of_every_global_batch(tmp_path):
    random_folder(str(tmp_path / "random"), {"a": 9, "b": 9}, size=(11, 13))
    folder = image_folder(str(tmp_path / "random"), image_size=6, val_fraction=0, augment=AUGMENT)
    global_stream = stream(Loader(folder.train, batch_size=6, seed=2), epochs=2)
    shards = [stream(Loader(folder.train, batch_size=6, seed=2, shard=(p, 2)), epochs=2) for p in range(2)]
    assert len(global_stream) == len(shards[0]) == len(shards[1]) == 6
    for (x, y), (x0, y0), (x1, y1) in zip(global_stream, *shards):
        assert x0.shape == (3, 6, 6, 3)
        np.testing.assert_array_equal(np.concatenate([x0, x1]), x)  # the union, in order, is the global batch
        np.testing.assert_array_equal(np.concatenate([y0, y1]), y)
    folder = id_folder(str(tmp_path / "ids"), 24)
    for p in range(2):
        loader = Loader(folder.train, batch_size=8, seed=5, shard=(p, 2))
        assert loader.local_batch_size == 4
        shards[p] = [ids(x) for x, _ in stream(loader, epochs=2)]
    for half0, half1 in zip(*shards):
        assert not set(half0) & set(half1)
    assert Loader(folder.train, batch_size=8).layout.shards == 1  # this process: index 0 of 1
    x, y = shards_batch = stream(Loader(folder.train, batch_size=8))[0]
    placed = distributed.host_local_batch(shards_batch, distributed.data_mesh(1))
    np.testing.assert_array_equal(np.asarray(placed[0]), x)


def batches_until_error(loader: Loader, epochs: int) -> tuple[list, str]:
    """The batches before the first ``ImageError``, and its message."""
    batches = []
    with pytest.raises(ImageError) as caught, loader.iterator(epochs=epochs) as it:
        for batch in it:
            batches.append(batch)
    return batches, str(caught.value)


@pytest.mark.slow
def test_worker_processes_give_the_same_stream_and_report_bad_files(tmp_path):
    """With 2 workers: bitwise the stream of the in-process reader, across epochs, until a corrupt file;
    its error reaches the main process as an ImageError naming it."""
    random_folder(str(tmp_path), {"a": 8, "b": 8}, size=(9, 9))
    broken = tmp_path / "b" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    folder = image_folder(str(tmp_path), image_size=6, val_fraction=0, augment=AUGMENT)
    # A seed whose first epoch leaves the corrupt file out (17 files, 4 batches of 4): the error comes later.
    seed = next(s for s in range(100)
                if len(batches_until_error(Loader(folder.train, batch_size=4, seed=s), 3)[0]) > 4)
    in_process, error = batches_until_error(Loader(folder.train, batch_size=4, seed=seed), 3)
    in_workers, worker_error = batches_until_error(Loader(folder.train, batch_size=4, seed=seed, workers=2), 3)
    assert len(in_process) == len(in_workers) > 4
    for (x, y), (xw, yw) in zip(in_process, in_workers):
        np.testing.assert_array_equal(x, xw)
        np.testing.assert_array_equal(y, yw)
    assert worker_error == error and f"cannot read image {broken}: not a PNG, JPEG, BMP or WebP image" in error


def test_loader_argument_and_state_errors(tmp_path):
    folder = id_folder(str(tmp_path), 10)
    with pytest.raises(ValueError, match="Loader: batch_size 11 exceeds the 10 images of the split"):
        Loader(folder.train, batch_size=11)
    with pytest.raises(ValueError, match="batch_size 5 must be divisible by the 2 shards"):
        Loader(folder.train, batch_size=5, shard=(0, 2))
    with pytest.raises(ValueError, match=r"Loader: shard index must be an int >= 0 and <= 1, got 2"):
        Loader(folder.train, batch_size=4, shard=(2, 2))
    with pytest.raises(ValueError, match=r"shard must be an \(index, count\) pair or None, got 3"):
        Loader(folder.train, batch_size=4, shard=3)
    with pytest.raises(TypeError, match="split must be a FolderSplit"):
        Loader((np.zeros((4, 3, 3, 1)), np.zeros(4)), batch_size=2)
    with pytest.raises(ValueError, match="Loader: workers must be an int >= 0, got -1"):
        Loader(folder.train, batch_size=2, workers=-1)
    loader = Loader(folder.train, batch_size=4)
    for state, message in (({"epoch": 0}, r"state must be a dict \{'epoch': e, 'position': i\}"),
                           ({"epoch": 0, "position": 2}, r"state\['position'\] must be an int >= 0 and <= 1"),
                           ({"epoch": -1, "position": 0}, r"state\['epoch'\] must be an int >= 0")):
        with pytest.raises(ValueError, match=message):
            loader.iterator(state)
    with pytest.raises(ValueError, match=r"Loader.iterator: epochs must be an int >= 3, got 2"):
        loader.iterator({"epoch": 2, "position": 1}, epochs=2)
