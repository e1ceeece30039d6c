"""Checkpoints: round trips of every dtype, validation errors, atomic writes, keep-last-K."""

from __future__ import annotations

import hashlib
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxconv as jc
from jaxconv import checkpoint as ckpt


def sample_tree():
    return {
        "f32": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) / 7,
        "bf16": (jnp.arange(5, dtype=jnp.float32) / 3).astype(jnp.bfloat16),
        "f16": jnp.asarray([0.1, -2.5], jnp.float16),
        "i32": jnp.asarray([-3, 7], jnp.int32),
        "u8": np.asarray([0, 255], np.uint8),
        "bool": jnp.asarray([True, False]),
        "step": jnp.int32(12),
        "raw_key": jax.random.PRNGKey(42),
        "typed_key": jax.random.key(7),
        "typed_keys": jax.random.split(jax.random.key(3), 4),
        "empty": jnp.zeros((0, 3)),
        "nested": [np.float64(2.5), {"a": np.arange(3, dtype=np.int64)}],
        "scalar": 3,
    }


def assert_same(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
            assert y.dtype == x.dtype
            assert jax.random.key_impl(y) == jax.random.key_impl(x)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert type(np.asarray(x).dtype) is type(np.asarray(y).dtype)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        assert np.shape(x) == np.shape(y)
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()  # bitwise


def test_round_trip_every_dtype(tmp_path):
    tree = sample_tree()
    path = str(tmp_path / "t.safetensors")
    ckpt.save(path, tree, {"model": "digits_cnn", "config": {"lr": 0.003}})
    restored = ckpt.load(path, tree)
    assert_same(tree, restored)
    assert isinstance(restored["f32"], jax.Array)
    assert isinstance(restored["u8"], np.ndarray)
    assert restored["scalar"] == 3 and isinstance(restored["scalar"], int)
    # The typed keys still work as keys and draw the same numbers.
    assert np.array_equal(jax.random.normal(restored["typed_key"], (3,)),
                          jax.random.normal(tree["typed_key"], (3,)))
    meta = ckpt.read_metadata(path)
    assert meta["model"] == "digits_cnn" and meta["config"] == {"lr": 0.003}
    assert meta["versions"]["jax"] == jax.__version__


def test_files_are_plain_safetensors_with_path_names(tmp_path):
    from safetensors import safe_open

    path = str(tmp_path / "t.safetensors")
    ckpt.save(path, {"params": {"conv0": {"kernel": jnp.ones((3, 3, 1, 2))}}, "step": jnp.int32(1)})
    with safe_open(path, framework="np") as f:
        assert sorted(f.keys()) == ["params/conv0/kernel", "step"]
        assert f.get_tensor("params/conv0/kernel").shape == (3, 3, 1, 2)


def test_train_state_round_trip(tmp_path):
    model = jc.serial(jc.Conv(3, 3), jc.Relu(), jc.Flatten(), jc.Dense(4))
    opt = optax.adamw(1e-3)
    ts = jc.create_train_state(model, jax.random.PRNGKey(0), (-1, 5, 5, 1), opt)
    path = str(tmp_path / "ts.safetensors")
    ckpt.save(path, ts)
    names = [n for n, _ in ckpt.named_leaves(ts)]
    assert "params/conv0/kernel" in names and "key" in names and "step" in names
    restored = ckpt.load(path, ts)
    assert isinstance(restored, jc.TrainState)
    assert_same(ts, restored)


LEGACY = pathlib.Path(__file__).parent / "data" / "checkpoint_v1.safetensors"
LEGACY_FIT = {"seed": 0, "batch_size": 32, "steps_per_call": 1, "microbatches": 1, "n_train": 64,
              "epochs": 2, "step": 12, "epochs_done": 1,
              "history": [{"epoch": 1, "train_loss": 1.25, "train_accuracy": 0.5, "test_loss": 1.5,
                           "test_accuracy": 0.375, "seconds": 2.0}],
              "partial": {"loss": 2.5, "accuracy": 1.0, "steps": 2}}


def legacy_tree():
    """The tree ``tests/data/checkpoint_v1.safetensors`` holds (written by format 1, commit 2c4c06e)."""
    return {
        "params": {"conv0": {"kernel": jnp.arange(18, dtype=jnp.float32).reshape(3, 3, 1, 2) / 7,
                             "bias": jnp.asarray([0.5, -0.25], jnp.float32)},
                   "dense0": {"kernel": (jnp.arange(12, dtype=jnp.float32).reshape(4, 3) / 3
                                         ).astype(jnp.bfloat16)}},
        "step": jnp.int32(12),
        "key": jax.random.key(7),
        "raw_key": jax.random.PRNGKey(42),
        "counts": np.arange(3, dtype=np.int64),
    }


def test_format_1_checkpoints_still_load():
    from safetensors import safe_open

    with safe_open(str(LEGACY), framework="np") as f:
        assert f.metadata()["format"] == ckpt.LEGACY_FORMAT and "file_sha256" not in f.metadata()
    restored, meta = ckpt.load_with_metadata(str(LEGACY), legacy_tree())
    assert_same(legacy_tree(), restored)
    assert meta["fit"] == LEGACY_FIT
    assert meta["config"]["input_shape"] == [-1, 8, 8, 1]
    assert ckpt.is_complete(str(LEGACY))


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-1] + bytes([b[-1] ^ 0x01]), "is corrupt: its data fail the SHA-256 checksum"),
    (lambda b: b.replace(b"1.25", b"true", 1), r"metadata.fit.history\[0\].train_loss must be a number"),
    (lambda b: b.replace(b'{\\"config', b'[\\"config', 1), "has malformed metadata JSON"),
])
def test_format_1_damage_is_caught(tmp_path, damage, message):
    """Format 1 checksums the tensors only; a defect its header shows still counts as corruption."""
    path = tmp_path / "old.safetensors"
    data = LEGACY.read_bytes()
    path.write_bytes(damage(data))
    assert path.read_bytes() != data
    with pytest.raises(ckpt.CorruptCheckpointError, match=message):
        ckpt.load(str(path), legacy_tree())


def test_new_files_carry_a_checksum_of_the_whole_file(tmp_path):
    from safetensors import safe_open

    path = str(tmp_path / "t.safetensors")
    ckpt.save(path, {"w": jnp.ones(3)})
    with safe_open(path, framework="np") as f:
        header = f.metadata()
    assert header["format"] == ckpt.FORMAT == "jaxconv.checkpoint/2"
    data = bytearray(pathlib.Path(path).read_bytes())
    at = data.find(header["file_sha256"].encode())
    data[at:at + 64] = b"0" * 64
    assert hashlib.sha256(data).hexdigest() == header["file_sha256"]


@pytest.fixture
def saved(tmp_path):
    tree = {"params": {"dense0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros((2,))}},
            "key": jax.random.key(0)}
    path = str(tmp_path / "c.safetensors")
    ckpt.save(path, tree)
    return path, tree


def test_load_rejects_missing_key(saved):
    path, tree = saved
    like = {"params": {"dense1": tree["params"]["dense0"]}, "key": tree["key"]}
    with pytest.raises(ckpt.CheckpointError, match=r"no entry 'params/dense1/bias'.*unexpected.*params/dense0/bias"):
        ckpt.load(path, like)


def test_load_rejects_extra_entry(saved):
    path, tree = saved
    like = {"params": {"dense0": {"kernel": tree["params"]["dense0"]["kernel"]}}, "key": tree["key"]}
    with pytest.raises(ValueError, match=r"entry 'params/dense0/bias' that `like` lacks"):
        ckpt.load(path, like)


def test_load_rejects_wrong_shape(saved):
    path, tree = saved
    like = jax.tree.map(lambda x: x, tree)
    like["params"]["dense0"]["kernel"] = jnp.ones((3, 5))
    with pytest.raises(ValueError, match=r"'params/dense0/kernel' has shape \(3, 2\); expected \(3, 5\)"):
        ckpt.load(path, like)


def test_load_rejects_wrong_dtype(saved):
    path, tree = saved
    like = jax.tree.map(lambda x: x, tree)
    like["params"]["dense0"]["bias"] = jnp.zeros((2,), jnp.bfloat16)
    with pytest.raises(ValueError, match=r"'params/dense0/bias' has dtype float32; expected bfloat16"):
        ckpt.load(path, like)


def test_load_rejects_raw_key_for_typed_key(saved):
    path, tree = saved
    like = dict(tree, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"'key' is a typed PRNG key in the file but a plain array in `like`"):
        ckpt.load(path, like)


def test_load_accepts_shape_dtype_structs(saved):
    path, tree = saved
    like = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree["params"]),
            "key": tree["key"]}
    restored = ckpt.load(path, like)
    assert isinstance(restored["params"]["dense0"]["kernel"], jax.Array)
    assert np.array_equal(restored["params"]["dense0"]["kernel"], np.ones((3, 2)))


def test_load_rejects_truncated_file(saved):
    path, tree = saved
    data = pathlib.Path(path).read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 12, 3):
        pathlib.Path(path).write_bytes(data[:cut])
        with pytest.raises(ckpt.CheckpointError, match="not a readable safetensors file"):
            ckpt.load(path, tree)
        assert not ckpt.is_complete(path)


def test_load_detects_flipped_data_bytes_by_checksum(saved):
    path, tree = saved
    data = bytearray(pathlib.Path(path).read_bytes())
    data[-3] ^= 0x40  # inside the tensor data: the header still parses
    pathlib.Path(path).write_bytes(bytes(data))
    assert ckpt.is_complete(path)
    with pytest.raises(ckpt.CorruptCheckpointError, match="is corrupt: it fails its SHA-256 checksum"):
        ckpt.load(path, tree)


def test_load_rejects_random_bytes(tmp_path):
    path = tmp_path / "junk.safetensors"
    for seed in range(3):
        path.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        with pytest.raises(ValueError, match="truncated or corrupt"):
            ckpt.load(str(path), {"a": jnp.ones(2)})
        assert not ckpt.is_complete(str(path))


def test_save_rejects_bad_metadata_and_leaves(tmp_path):
    with pytest.raises(TypeError, match="metadata must be JSON-serialisable"):
        ckpt.save(str(tmp_path / "a.safetensors"), {"a": jnp.ones(2)}, {"f": object()})
    with pytest.raises(TypeError, match="leaf 'a' is not an array of a supported dtype"):
        ckpt.save(str(tmp_path / "b.safetensors"), {"a": "text"})
    assert not os.listdir(tmp_path)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "c.safetensors")
    old = {"a": jnp.zeros(1000)}
    ckpt.save(path, old)

    def broken_write(f, data):
        f.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_bytes", broken_write)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(path, {"a": jnp.ones(1000)})
    assert os.listdir(tmp_path) == ["c.safetensors"]  # no temporary file left behind
    assert np.array_equal(ckpt.load(path, old)["a"], np.zeros(1000))


def test_save_checkpoint_keeps_last_k(tmp_path):
    d = str(tmp_path / "ckpts")
    tree = {"w": jnp.ones(3)}
    for step in (5, 10, 15, 20):
        ckpt.save_checkpoint(d, step, jax.tree.map(lambda x, step=step: x * step, tree), keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(d)] == [15, 20]
    latest = ckpt.latest_checkpoint(d)
    assert latest.endswith("ckpt-000000020.safetensors")
    assert np.array_equal(ckpt.load(latest, tree)["w"], np.full(3, 20.0))
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        ckpt.save_checkpoint(d, 25, tree, keep=0)


def test_latest_checkpoint_skips_incomplete_files_and_temporaries(tmp_path):
    d = str(tmp_path)
    tree = {"w": jnp.ones(100)}
    good = ckpt.save_checkpoint(d, 1, tree, keep=None)
    broken = ckpt.checkpoint_path(d, 2)
    data = pathlib.Path(good).read_bytes()
    pathlib.Path(broken).write_bytes(data[:-10])
    stale = tmp_path / (ckpt.TMP_PREFIX + "abc.partial")
    stale.write_bytes(data[:20])
    assert ckpt.latest_checkpoint(d) == good
    assert ckpt.remove_stale_temporaries(d) == [str(stale)]
    assert ckpt.latest_checkpoint(str(tmp_path / "absent")) is None


def test_no_pickle_in_the_package():
    root = pathlib.Path(jc.__file__).parent
    for source in root.rglob("*.py"):
        text = source.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, source
        assert "cloudpickle" not in text and "import dill" not in text, source


DTYPES = [np.float32, np.float16, jnp.bfloat16, np.float64, np.int8, np.int32, np.int64, np.uint8,
          np.uint32, np.bool_]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 4), max_size=3)),
                min_size=1, max_size=5),
       st.integers(0, 2**31 - 1))
def test_round_trip_random_trees(tmp_path_factory, leaves, seed):
    rng = np.random.default_rng(seed)
    tree = {}
    for i, (dtype, shape) in enumerate(leaves):
        values = rng.normal(size=shape) * 100
        tree[f"layer{i}"] = {"w": np.asarray(values).astype(dtype), "nested": [np.asarray(values.size)]}
    path = str(tmp_path_factory.mktemp("h") / "t.safetensors")
    ckpt.save(path, tree)
    assert_same(tree, ckpt.load(path, tree))
