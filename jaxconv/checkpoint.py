"""Checkpoints: pytrees in safetensors files, written atomically, validated on load.

A pytree is stored as one safetensors tensor per leaf, named by its path in
the tree (``params/conv0/kernel``, ``opt_state/0/mu/conv0/kernel``, ``step``).
The header's text metadata holds a JSON document (the caller's metadata plus
library versions) and the implementation of every typed PRNG key leaf.
Nothing is ever pickled.

Writes are atomic: the bytes go to a temporary file in the destination
directory, which is flushed and ``fsync``-ed, renamed over the destination
(``os.replace``) and the directory is ``fsync``-ed. A reader, or a process
resumed after a crash at any instant, sees either the old file or the
complete new one, never a partial file under a checkpoint name.

``save_checkpoint`` / ``list_checkpoints`` / ``latest_checkpoint`` manage a
directory of numbered checkpoints ``ckpt-<step>.safetensors``, keeping the
newest ``keep``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

FORMAT = "jaxconv.checkpoint/1"
TMP_PREFIX = ".tmp-"
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.safetensors$")

# safetensors dtype names -> NumPy dtypes (JAX's bfloat16 is the ml_dtypes NumPy type).
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
    "C64": np.complex64,
}
_SUPPORTED = frozenset(np.dtype(d) for d in _DTYPES.values())


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not match the expected tree."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is truncated, not safetensors, or fails its checksum."""


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the entries in name order (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = arrays[name]
        h.update(f"{name}|{arr.dtype.name}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------
# Pytree <-> flat dict of named NumPy arrays


def _path_name(path: tuple) -> str:
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
            parts.append(str(entry.key))
        else:  # pragma: no cover - future key types
            parts.append(str(entry))
    return "/".join(parts) if parts else "value"


def _is_typed_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
    """``[(name, leaf), ...]`` in tree order; names are ``/``-joined paths.

    Raises:
      ValueError: two leaves map to the same name (e.g. a dict key containing ``/``).
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    named = [(_path_name(p), leaf) for p, leaf in leaves]
    seen = set()
    for name, _ in named:
        if name in seen:
            raise ValueError(f"checkpoint: two leaves of the tree share the name {name!r}")
        seen.add(name)
    return named


def _versions() -> dict[str, str]:
    import optax

    from jaxconv import __version__

    try:
        import jaxlib
        jaxlib_version = jaxlib.__version__
    except (ImportError, AttributeError):  # pragma: no cover
        jaxlib_version = "unknown"
    return {"jaxconv": __version__, "jax": jax.__version__, "jaxlib": jaxlib_version,
            "optax": optax.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0]}


def serialize(tree: Any, metadata: dict | None = None) -> bytes:
    """The safetensors bytes of ``tree`` (see ``save``)."""
    tensors, keys = {}, {}
    for name, leaf in named_leaves(tree):
        if _is_typed_key(leaf):
            keys[name] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        tensors[name] = np.asarray(jax.device_get(leaf), order="C")
        if tensors[name].dtype not in _SUPPORTED:
            raise TypeError(
                f"checkpoint.save: leaf {name!r} is not an array of a supported dtype "
                f"({type(leaf).__name__} of dtype {tensors[name].dtype}); supported: "
                f"{sorted(d.name for d in _SUPPORTED)}")
    meta = dict(metadata or {})
    meta.setdefault("versions", _versions())
    try:
        meta_json = json.dumps(meta, sort_keys=True)
    except TypeError as e:
        raise TypeError(f"checkpoint.save: metadata must be JSON-serialisable: {e}") from None
    header = {"format": FORMAT, "metadata": meta_json, "prng_keys": json.dumps(keys, sort_keys=True),
              "sha256": _digest(tensors)}
    try:
        return safetensors.numpy.save(tensors, metadata=header)
    except Exception as e:  # safetensors raises its own exception types
        raise TypeError(f"checkpoint.save: cannot store the tree: {e}") from None


# --------------------------------------------------------------------------
# Atomic file writes


def _write_bytes(f, data: bytes) -> None:
    f.write(data)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that ``path`` is never seen half-written.

    Temporary file in the same directory (same file system), ``fsync``, then
    ``os.replace`` onto ``path``, then ``fsync`` of the directory entry.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX, suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            _write_bytes(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def save(path: str, tree: Any, metadata: dict | None = None) -> None:
    """Saves a pytree of arrays to a safetensors file, atomically.

    Args:
      path: destination file (conventionally ``*.safetensors``).
      tree: pytree whose leaves are arrays (any dtype JAX uses, bfloat16
        included), NumPy/Python scalars, or PRNG keys (raw ``uint32`` keys are
        plain arrays; typed ``jax.random.key`` leaves are stored as their key
        data plus their implementation name).
      metadata: JSON-serialisable dict (model name, config, ...); library
        versions are added under ``"versions"`` unless given.
    """
    write_atomic(path, serialize(tree, metadata))


# --------------------------------------------------------------------------
# Reading


def _read(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with open(path, "rb") as f:
        data = f.read()
    try:
        entries = safetensors.deserialize(data)
    except Exception as e:  # SafetensorError: truncated, random bytes, bad header
        raise CorruptCheckpointError(
            f"checkpoint: {path} is not a readable safetensors file (truncated or corrupt): {e}") from None
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n]).get("__metadata__") or {}
    arrays = {}
    for name, spec in entries:
        if spec["dtype"] not in _DTYPES:
            raise CheckpointError(f"checkpoint: {path}: entry {name!r} has unsupported dtype {spec['dtype']}")
        dtype = np.dtype(_DTYPES[spec["dtype"]])
        arrays[name] = np.frombuffer(bytes(spec["data"]), dtype).reshape(spec["shape"])
    if "sha256" in header and _digest(arrays) != header["sha256"]:
        raise CorruptCheckpointError(f"checkpoint: {path} is corrupt: its data fail the SHA-256 checksum")
    return arrays, header


def _metadata(path: str, header: dict[str, str]) -> dict[str, Any]:
    try:
        return json.loads(header.get("metadata", "{}"))
    except json.JSONDecodeError as e:
        raise CorruptCheckpointError(f"checkpoint: {path} has malformed metadata: {e}") from None


def read_metadata(path: str) -> dict[str, Any]:
    """The metadata dict stored by ``save`` (raises ``CheckpointError`` if unreadable)."""
    return _metadata(path, _read(path)[1])


def load_arrays(path: str) -> dict[str, np.ndarray]:
    """All entries of a checkpoint as ``{name: array}`` (typed keys as their raw data)."""
    return _read(path)[0]


def load(path: str, like: Any) -> Any:
    """Loads a checkpoint into the structure of ``like`` (see ``load_with_metadata``)."""
    return load_with_metadata(path, like)[0]


def load_with_metadata(path: str, like: Any) -> tuple[Any, dict[str, Any]]:
    """Loads a checkpoint into the structure of ``like``; also returns its metadata dict.

    Every leaf of ``like`` (arrays, scalars, PRNG keys; values are ignored,
    ``jax.ShapeDtypeStruct`` works too) must be present in the file under its
    path name with the same shape and dtype, and the file must have no other
    entries.

    Returns:
      A tree with the structure of ``like``: JAX arrays where ``like`` has JAX
      arrays or ``ShapeDtypeStruct`` s (placed with their sharding when they
      have one), NumPy arrays
      where it has NumPy arrays, Python scalars for Python scalars, typed PRNG
      keys of the same implementation for typed keys.

    Raises:
      CorruptCheckpointError: unreadable file (truncated, random bytes, a
        failed SHA-256 checksum of the tensor data).
      CheckpointError (a ``ValueError``): a missing/unexpected entry, wrong
        shape, dtype or key type; the message names the first mismatching key.
    """
    arrays, header = _read(path)
    metadata = _metadata(path, header)
    try:
        key_impls = json.loads(header.get("prng_keys", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint: {path} has a malformed prng_keys header") from None
    named = named_leaves(like)
    expected = {name for name, _ in named}
    values = []
    for name, ref in named:
        if name not in arrays:
            extra = sorted(set(arrays) - expected)
            hint = f"; it has unexpected entries such as {extra[0]!r}" if extra else ""
            raise CheckpointError(
                f"checkpoint: {path} has no entry {name!r} (the tree structure differs){hint}")
        arr = arrays[name]
        typed = _is_typed_key(ref)
        if typed != (name in key_impls):
            def kind(is_key):
                return "a typed PRNG key" if is_key else "a plain array"
            raise CheckpointError(
                f"checkpoint: {path}: entry {name!r} is {kind(name in key_impls)} in the file "
                f"but {kind(typed)} in `like`")
        ref_shape = tuple(np.shape(jax.random.key_data(ref) if typed else ref))
        if typed:
            ref_dtype = np.dtype(np.uint32)
        elif hasattr(ref, "dtype"):
            ref_dtype = np.dtype(ref.dtype)
        else:
            ref_dtype = np.asarray(ref).dtype
        if arr.shape != ref_shape:
            raise CheckpointError(
                f"checkpoint: {path}: entry {name!r} has shape {arr.shape}; expected {ref_shape}")
        if arr.dtype != ref_dtype:
            raise CheckpointError(
                f"checkpoint: {path}: entry {name!r} has dtype {arr.dtype.name}; expected {ref_dtype.name}")
        if typed:
            impl = str(jax.random.key_impl(ref))
            if key_impls[name] != impl:
                raise CheckpointError(
                    f"checkpoint: {path}: entry {name!r} is a {key_impls[name]} key; expected {impl}")
            value = jax.random.wrap_key_data(jnp.asarray(arr), impl=impl)
        elif isinstance(ref, (jax.Array, jax.ShapeDtypeStruct)):
            sharding = getattr(ref, "sharding", None)
            value = jax.device_put(arr, sharding) if sharding is not None else jnp.asarray(arr)
        elif isinstance(ref, (bool, int, float, complex)):
            value = arr.item()
        else:
            value = np.array(arr)
        values.append(value)
    extra = [name for name in arrays if name not in expected]
    if extra:
        raise CheckpointError(
            f"checkpoint: {path} has an entry {extra[0]!r} that `like` lacks (the tree structure differs)")
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), values), metadata


# --------------------------------------------------------------------------
# A directory of numbered checkpoints


def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"ckpt-{int(step):09d}.safetensors")


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    """``[(step, path), ...]`` of the ``ckpt-<step>.safetensors`` files, oldest first."""
    if not os.path.isdir(directory):
        return []
    found = []
    for entry in os.listdir(directory):
        m = _CKPT_RE.match(entry)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, entry)))
    return sorted(found)


def is_complete(path: str) -> bool:
    """Cheap check that ``path`` is a whole safetensors file (header parses, size matches)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                return False
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return 8 + n + max(ends, default=0) == size
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def latest_checkpoint(directory: str) -> str | None:
    """The newest complete checkpoint in ``directory`` (``None`` if there is none)."""
    for _, path in reversed(list_checkpoints(directory)):
        if is_complete(path):
            return path
    return None


def remove_stale_temporaries(directory: str) -> list[str]:
    """Deletes temporary files left by a writer that was killed; returns their paths.

    Call only when no other process writes checkpoints to ``directory``.
    """
    removed = []
    if os.path.isdir(directory):
        for entry in os.listdir(directory):
            if entry.startswith(TMP_PREFIX):
                path = os.path.join(directory, entry)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed.append(path)
    return removed


def save_checkpoint(directory: str, step: int, tree: Any, metadata: dict | None = None,
                    *, keep: int | None = 3) -> str:
    """Saves ``tree`` as ``directory/ckpt-<step>.safetensors`` and keeps the newest ``keep``.

    Older checkpoints are deleted only after the new one is durably in place.
    ``keep=None`` keeps all. Returns the new file's path.
    """
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"save_checkpoint: keep must be an int >= 1 or None, got {keep!r}")
    path = checkpoint_path(directory, step)
    save(path, tree, metadata)
    if keep is not None:
        for _, old in list_checkpoints(directory)[:-keep]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old)
    return path
