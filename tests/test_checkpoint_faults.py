"""Checkpoint fault injection: flipped bytes anywhere, truncation, odd JSON, non-regular files.

Every probe checks that the failure is a ``CheckpointError`` naming the file
and the problem, and that nothing was lost: a good checkpoint written next to
the damaged one still loads and equals what was written.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import threading
import tracemalloc
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv import checkpoint as ckpt

FIT = {"seed": 0, "batch_size": 32, "steps_per_call": 1, "microbatches": 1, "n_train": 64,
       "epochs": 2, "step": 4, "epochs_done": 1,
       "history": [{"epoch": 1, "train_loss": 1.25, "train_accuracy": 0.5, "seconds": 2.0}],
       "partial": {"loss": 2.5, "accuracy": 1.0, "steps": 2}}
ZEROS = "0" * 64


def tree(scale=1.0):
    return {"params": {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) * scale},
            "step": jnp.int32(4), "key": jax.random.key(0)}


def assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


@pytest.fixture
def run(tmp_path):
    """A directory with a good checkpoint (step 1) and the one under test (step 2)."""
    good = ckpt.save_checkpoint(str(tmp_path), 1, tree(1.0), {"fit": FIT}, keep=None)
    probe = ckpt.save_checkpoint(str(tmp_path), 2, tree(2.0), {"fit": FIT}, keep=None)
    return good, probe


def assert_nothing_lost(good):
    restored, meta = ckpt.load_with_metadata(good, tree())
    assert_same(restored, tree(1.0))
    assert meta["fit"] == FIT


def assert_refused(path, match, error=ckpt.CheckpointError, readers=None):
    """Every reader fails with ``error`` naming the file and matching ``match``."""
    readers = readers or (ckpt.read_metadata, ckpt.load_arrays, lambda p: ckpt.load(p, tree()))
    for read in readers:
        with pytest.raises(error) as err:
            read(path)
        assert str(path) in str(err.value)
        assert re.search(match, str(err.value)), str(err.value)


def split(path):
    """``(header dict, data bytes)`` of a safetensors file."""
    blob = pathlib.Path(path).read_bytes()
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def seal(header: str | bytes, data: bytes) -> bytes:
    """A checksum-valid file: the documented SHA-256 with its 64 digits read as 0, filled in."""
    raw = header.encode() if isinstance(header, str) else header
    raw += b" " * (-len(raw) % 8)
    blob = bytearray(len(raw).to_bytes(8, "little") + raw + data)
    at = blob.find(f'"file_sha256":"{ZEROS}"'.encode()) + len('"file_sha256":"')
    blob[at:at + 64] = hashlib.sha256(blob).hexdigest().encode()
    return bytes(blob)


def reseal(path, edit):
    """Rewrites ``path`` with ``edit(header)`` applied and a valid checksum (a crafted file)."""
    header, data = split(path)
    header["__metadata__"]["file_sha256"] = ZEROS
    edit(header)
    text = json.dumps(header, separators=(",", ":")) if isinstance(header, dict) else header
    pathlib.Path(path).write_bytes(seal(text, data))


def test_reseal_makes_files_that_load(run):
    """The crafting helper itself: an unchanged header resealed loads (so the probes below mean something)."""
    good, probe = run
    reseal(probe, lambda h: None)
    assert_same(ckpt.load(probe, tree()), tree(2.0))


def test_every_flipped_bit_is_caught(run):
    """One flipped bit anywhere (length prefix, header, metadata, checksum, tensors) is refused."""
    good, probe = run
    blob = pathlib.Path(probe).read_bytes()
    fd = os.open(probe, os.O_WRONLY)
    try:
        for i in range(len(blob)):
            for bit in (0x01, 0x80):
                os.pwrite(fd, bytes([blob[i] ^ bit]), i)
                with pytest.raises(ckpt.CorruptCheckpointError) as err:
                    ckpt.read_metadata(probe)
                assert probe in str(err.value), (i, bit)
                os.pwrite(fd, blob[i:i + 1], i)
    finally:
        os.close(fd)
    assert_same(ckpt.load(probe, tree()), tree(2.0))  # restored byte for byte: it loads again
    assert_nothing_lost(good)


@pytest.mark.parametrize("old, new", [
    (b'\\"train_loss\\": 1.25', b'\\"train_loss\\": 1.75'),  # a changed loss in the history
    (b'\\"history\\"', b'\\"histosy\\"'),  # a changed key would silently drop the history
    (b'\\"steps\\": 2', b'\\"steps\\": 3'),  # the partial epoch
])
def test_changed_metadata_values_fail_the_checksum(run, old, new):
    good, probe = run
    blob = pathlib.Path(probe).read_bytes()
    assert blob.count(old) == 1
    pathlib.Path(probe).write_bytes(blob.replace(old, new))
    assert_refused(probe, "is corrupt: it fails its SHA-256 checksum", ckpt.CorruptCheckpointError)
    assert_nothing_lost(good)


def test_truncated_and_extended_files(run):
    good, probe = run
    blob = pathlib.Path(probe).read_bytes()
    for cut in reversed(range(len(blob))):  # shorter and shorter
        os.truncate(probe, cut)
        with pytest.raises(ckpt.CorruptCheckpointError, match="not a readable safetensors file"):
            ckpt.read_metadata(probe)
        assert not ckpt.is_complete(probe)
    pathlib.Path(probe).write_bytes(blob + b"\0")
    assert_refused(probe, rf"has {len(blob) + 1} bytes, its header declares {len(blob)}",
                   ckpt.CorruptCheckpointError)
    assert ckpt.latest_checkpoint(os.path.dirname(probe)) == good
    assert_nothing_lost(good)


def metadata_edit(meta_json):
    def edit(header):
        header["__metadata__"]["metadata"] = meta_json
    return edit


def fit_edit(**fields):
    return metadata_edit(json.dumps({"fit": dict(FIT, **fields)}))


def header_edit(**strings):
    def edit(header):
        header["__metadata__"].update(strings)
    return edit


# Checksum-valid files whose JSON has types jaxconv never writes: CheckpointError, never
# AttributeError/TypeError/IndexError/KeyError, and the message names the field.
ODD_METADATA = [
    (metadata_edit("[1, 2]"), r"metadata must be an object, got \[1, 2\] \(list\)"),
    (metadata_edit("{"), r"has malformed metadata JSON"),
    (metadata_edit("[" * 100_000 + "]" * 100_000), r"has malformed metadata JSON"),
    (metadata_edit('{"big": 1' + "0" * 5000 + "}"), r"has malformed metadata JSON"),
    (fit_edit(history="abc"), r"metadata.fit.history must be a list, got 'abc' \(str\)"),
    (fit_edit(history=[1]), r"metadata.fit.history\[0\] must be an object, got 1 \(int\)"),
    (fit_edit(history=[{"train_loss": "0.5"}]), r"metadata.fit.history\[0\].train_loss must be a number"),
    (fit_edit(partial={"loss": 0.0, "accuracy": 0.0}), r"metadata.fit.partial lacks the field 'steps'"),
    (fit_edit(partial={"loss": True, "accuracy": 0.0, "steps": 0}), r"metadata.fit.partial.loss must be a number"),
    (fit_edit(partial=[]), r"metadata.fit.partial must be an object, got \[\] \(list\)"),
    (fit_edit(step=1.5), r"metadata.fit.step must be an int, got 1.5 \(float\)"),
    (fit_edit(epochs_done=None), r"metadata.fit.epochs_done must be an int, got None"),
    (metadata_edit('{"fit": 3}'), r"metadata.fit must be an object"),
    (metadata_edit('{"versions": {"jax": 1}}'), r"metadata.versions.jax must be a string"),
    (metadata_edit('{"config": {"input_shape": "x"}}'), r"metadata.config.input_shape must be a list"),
    (header_edit(prng_keys="[]"), r"prng_keys must be an object"),
    (header_edit(prng_keys='{"key": 5}'), r"prng_keys.key must be a string"),
    (header_edit(prng_keys='{"nope": "threefry2x32"}'), r"prng_keys names 'nope', which is not an entry"),
    (header_edit(format="jaxconv.checkpoint/9"), r"has format 'jaxconv.checkpoint/9'"),
]


@pytest.mark.parametrize("edit, match", ODD_METADATA)
def test_odd_json_types_in_checksum_valid_metadata(run, edit, match):
    good, probe = run
    reseal(probe, edit)
    readers = [lambda p: ckpt.load(p, tree())]
    if "prng_keys" not in match:  # read_metadata does not look at the key types
        readers.append(ckpt.read_metadata)
    assert_refused(probe, match, readers=readers)
    assert_nothing_lost(good)


def entry_edit(name, **fields):
    def edit(header):
        header[name].update(fields)
    return edit


def replace_header(value):
    def edit(header):
        header.clear()
        header["x"] = value
    return edit


ODD_LAYOUT = [
    (entry_edit("step", dtype=5), r"entry 'step' has unsupported dtype 5 \(int\)"),
    (entry_edit("step", dtype="F8_E4M3"), r"entry 'step' has unsupported dtype 'F8_E4M3'"),
    (entry_edit("params/w", shape="x"), r"entry 'params/w' has shape 'x'"),
    (entry_edit("params/w", shape=[-2, -3]), r"entry 'params/w' has shape \[-2, -3\]"),
    (entry_edit("params/w", shape=[3, 3]), r"entry 'params/w' spans 24 bytes; its shape \[3, 3\] of F32 needs 36"),
    (entry_edit("step", data_offsets=[True, 4]), r"entry 'step' has data_offsets \[True, 4\]"),
    (entry_edit("step", data_offsets=[4, 0]), r"entry 'step' has data_offsets \[4, 0\]"),
    (entry_edit("step", extra=1), r"entry 'step' is \{"),
    (lambda h: h.update(step=[1, 2]), r"entry 'step' is \[1, 2\] \(list\)"),
    (lambda h: h["__metadata__"].update(metadata=5), r"header __metadata__ of .* not a map of strings"),
]


@pytest.mark.parametrize("edit, match", ODD_LAYOUT)
def test_odd_layout_in_checksum_valid_headers(run, edit, match):
    good, probe = run
    reseal(probe, edit)
    assert_refused(probe, match)
    assert_nothing_lost(good)


def test_header_that_is_not_an_object_has_duplicate_keys_or_is_not_utf8(run):
    good, probe = run
    header, data = split(probe)
    header["__metadata__"]["file_sha256"] = ZEROS
    text = json.dumps(header, separators=(",", ":"))
    step = '"step":' + json.dumps(header["step"], separators=(",", ":"))
    for raw, match in [
        (text.replace(step, step + "," + step), "a key appears twice"),
        ("[" + text + "]", r"its header is \[\{.*\(list\)"),
        (text.encode().replace(b'"step"', b'"st\xffp"'), "its header is not JSON"),
    ]:
        pathlib.Path(probe).write_bytes(seal(raw, data))
        assert_refused(probe, match, ckpt.CorruptCheckpointError)
    assert_nothing_lost(good)


def test_overlapping_entries_are_refused(run):
    good, probe = run
    header, data = split(probe)

    def overlap(h):
        first = min((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
        h[first]["data_offsets"] = [1, 1 + h[first]["data_offsets"][1]]
    reseal(probe, overlap)
    assert_refused(probe, "overlapping entries or a gap", ckpt.CorruptCheckpointError)
    assert_nothing_lost(good)


def peak_bytes(fn):
    """Peak traced allocation while ``fn()`` runs (it must raise a CheckpointError)."""
    tracemalloc.start()
    try:
        with pytest.raises(ckpt.CheckpointError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_declared_sizes_are_checked_before_anything_is_allocated(run):
    """A header declaring 2**62 bytes of header, or a terabyte tensor, allocates nothing of that size."""
    good, probe = run
    blob = pathlib.Path(probe).read_bytes()
    pathlib.Path(probe).write_bytes((2**62).to_bytes(8, "little") + blob[8:])
    assert peak_bytes(lambda: ckpt.load(probe, tree())) < 1 << 20
    assert_refused(probe, "cannot hold the header its first 8 bytes declare", ckpt.CorruptCheckpointError)

    header, data = split(good)
    header = {"huge": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]},
              "__metadata__": header["__metadata__"]}
    header["__metadata__"]["file_sha256"] = ZEROS
    pathlib.Path(probe).write_bytes(seal(json.dumps(header, separators=(",", ":")), data))
    assert peak_bytes(lambda: ckpt.load(probe, tree())) < 1 << 20
    size = os.path.getsize(probe)
    assert_refused(probe, rf"it has {size} bytes, its header declares {size - len(data) + 2**42}",
                   ckpt.CorruptCheckpointError)
    assert_nothing_lost(good)


def odd_entries(directory):
    """A directory, a FIFO, a link to /dev/zero and a dangling link, all named like checkpoints."""
    paths = {kind: ckpt.checkpoint_path(directory, step)
             for kind, step in (("directory", 5), ("FIFO", 6), ("device", 7), ("dangling", 8))}
    os.mkdir(paths["directory"])
    os.mkfifo(paths["FIFO"])
    os.symlink("/dev/zero", paths["device"])
    os.symlink(os.path.join(directory, "absent"), paths["dangling"])
    return paths


def read_in_thread(read, fifo):
    """Runs ``read()`` in a thread; a FIFO reader still blocked after 30 s is released and fails."""
    box = {}

    def target():
        try:
            read()
        except Exception as e:  # noqa: BLE001 - the test inspects it
            box["error"] = e
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():  # open one writer end so that the blocked reader returns
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"reading {fifo} blocked")
    return box.get("error")


def test_non_regular_files_named_like_checkpoints(tmp_path):
    directory = str(tmp_path)
    good = ckpt.save_checkpoint(directory, 1, tree(1.0), {"fit": FIT}, keep=None)
    paths = odd_entries(directory)
    with pytest.warns(ckpt.CheckpointWarning) as caught:
        assert ckpt.list_checkpoints(directory) == [(1, good)]
    text = " ".join(str(w.message) for w in caught)
    for words in ("is a directory", "is a FIFO (named pipe)", "is a symbolic link to a character device",
                  "cannot be read"):
        assert words in text
    with pytest.warns(ckpt.CheckpointWarning):
        assert ckpt.latest_checkpoint(directory) == good
    for kind, words in (("directory", "is a directory"), ("FIFO", "is a FIFO"),
                        ("device", "is a symbolic link to a character device"),
                        ("dangling", "cannot read")):
        path = paths[kind]
        error = read_in_thread(lambda path=path: ckpt.load(path, tree()), paths["FIFO"])
        assert isinstance(error, ckpt.CheckpointError) and not isinstance(error, ckpt.CorruptCheckpointError)
        assert path in str(error) and words in str(error), str(error)
        assert not ckpt.is_complete(path)
    assert_nothing_lost(good)


def test_a_file_replaced_by_a_fifo_after_the_check_is_not_waited_on(tmp_path, monkeypatch):
    """The descriptor is opened non-blocking and checked again (``path`` may change in between)."""
    good = ckpt.save_checkpoint(str(tmp_path), 1, tree(1.0), {"fit": FIT})
    fifo = str(tmp_path / "ckpt-000000002.safetensors")
    os.mkfifo(fifo)
    real_stat, regular = os.stat, os.stat(good)
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: regular if p == fifo else real_stat(p, *a, **k))
    error = read_in_thread(lambda: ckpt.load(fifo, tree()), fifo)
    assert isinstance(error, ckpt.CheckpointError)
    assert f"{fifo} is a FIFO (named pipe), not a regular file; it is not read" in str(error)
    monkeypatch.undo()
    assert_nothing_lost(good)


def test_pruning_and_cleanup_leave_non_regular_entries_alone(tmp_path):
    directory = str(tmp_path)
    paths = odd_entries(directory)
    os.mkdir(tmp_path / (ckpt.TMP_PREFIX + "dir"))
    os.mkfifo(tmp_path / (ckpt.TMP_PREFIX + "fifo"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ckpt.CheckpointWarning)
        for step in (1, 2, 3):
            ckpt.save_checkpoint(directory, step, tree(step), {"fit": FIT}, keep=2)
        assert ckpt.list_checkpoints(directory) == [(s, ckpt.checkpoint_path(directory, s)) for s in (2, 3)]
    with pytest.warns(ckpt.CheckpointWarning) as caught:
        assert ckpt.remove_stale_temporaries(directory) == []
    assert sorted(str(w.message).split(", which ")[1] for w in caught) == [
        "is a FIFO (named pipe), not a regular file", "is a directory, not a regular file"]
    for path in paths.values():
        assert os.path.lexists(path)
    assert os.path.isdir(tmp_path / (ckpt.TMP_PREFIX + "dir"))
    assert_same(ckpt.load(ckpt.checkpoint_path(directory, 3), tree()), tree(3))


def test_save_refuses_metadata_it_could_not_read_back(tmp_path):
    path = str(tmp_path / "c.safetensors")
    for meta, match in [({"fit": dict(FIT, history="abc")}, "metadata.fit.history must be a list"),
                        ({"versions": {"jax": 1}}, "metadata.versions.jax must be a string")]:
        with pytest.raises(TypeError, match=match):
            ckpt.save(path, tree(), meta)
    assert not os.listdir(tmp_path)
    ckpt.save(path, tree(), {"fit": dict(FIT, extra_field=[1, "x"]), "config": {"input_shape": (-1, 8)}})
    assert ckpt.read_metadata(path)["config"]["input_shape"] == [-1, 8]
