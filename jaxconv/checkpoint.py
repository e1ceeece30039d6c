"""Checkpoints: pytrees in safetensors files, written atomically, verified on load.

A pytree is stored as one safetensors tensor per leaf, named by its path in
the tree (``params/conv0/kernel``, ``opt_state/0/mu/conv0/kernel``, ``step``).
The header's text metadata holds a JSON document (the caller's metadata plus
library versions), the implementation of every typed PRNG key leaf, and a
SHA-256 checksum of the whole file: the length prefix, the header (metadata
included) and the tensor data, with the 64 hex digits of the checksum itself
read as ``0``. Nothing is ever pickled.

Reading trusts nothing the checksum has not covered. Only regular files are
opened (a FIFO could block forever, a device never end, a directory is no
checkpoint); the header is read first, the file must be exactly as long as
the header declares, and nothing beyond that is read or allocated. The
metadata fields jaxconv writes itself (``versions``; ``fit`` with the run
settings, ``history`` and the ``partial`` epoch; the command line's
``config``) are type-checked. Every failure is a ``CheckpointError`` naming the
file and what is wrong; a damaged file (truncated, not safetensors, a failed
checksum) raises its subclass ``CorruptCheckpointError``. Files of the
previous format (``jaxconv.checkpoint/1``, whose checksum covers the tensor
data only) still load; as nothing verifies their header, any defect found in
it counts as corruption.

Writes are atomic: the bytes go to a temporary file in the destination
directory, which is flushed and ``fsync``-ed, renamed over the destination
(``os.replace``) and the directory is ``fsync``-ed. A reader, or a process
resumed after a crash at any instant, sees either the old file or the
complete new one, never a partial file under a checkpoint name.

``save_checkpoint`` / ``list_checkpoints`` / ``latest_checkpoint`` manage a
directory of numbered checkpoints ``ckpt-<step>.safetensors``, keeping the
newest ``keep``; entries with such names that are not regular files are
skipped with a ``CheckpointWarning``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import os
import re
import stat
import sys
import tempfile
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from jaxconv.validate import integer, is_int
from jaxconv.version import __version__

FORMAT = "jaxconv.checkpoint/2"
LEGACY_FORMAT = "jaxconv.checkpoint/1"
TMP_PREFIX = ".tmp-"
MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.safetensors$")
_CHECKSUM_KEY = "file_sha256"
_CHECKSUM_RE = re.compile(rb'"file_sha256"\s*:\s*"([0-9a-f]{64})"')
_UNSET_CHECKSUM = b"0" * 64

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


class CheckpointWarning(UserWarning):
    """A file named like a checkpoint was skipped (not a regular file)."""


def _error(path: str, what: str, *, verified: bool = False) -> CheckpointError:
    """The error for a defect of ``path``: corruption unless the file checksum held."""
    return (CheckpointError if verified else CorruptCheckpointError)(f"checkpoint: {path} {what}")


# --------------------------------------------------------------------------
# Metadata schema: the types of the fields jaxconv writes itself. Other fields
# are free; a listed field may be absent unless it is ``required``.


class _Object(NamedTuple):
    fields: dict
    required: tuple = ()


class _ListOf(NamedTuple):
    item: Any


class _MapOf(NamedTuple):
    value: Any


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


_KINDS = {"int": ("an int", is_int), "number": ("a number", _is_number),
          "str": ("a string", lambda v: isinstance(v, str)), "bool": ("a bool", lambda v: isinstance(v, bool))}

_METADATA_SCHEMA = _Object({
    "versions": _MapOf("str"),
    "config": _Object({
        "dataset": "str", "model": "str", "num_classes": "int", "input_shape": _ListOf("int"),
        "optimizer": "str", "lr": "number", "schedule": "str", "weight_decay": "number",
        "label_smoothing": "number", "augment": "str", "epochs": "int", "batch_size": "int",
        "seed": "int", "impl": "str", "steps_per_call": "int", "microbatches": "int",
        "total_steps": "int", "warmup_steps": "number", "clip_norm": "number", "ema": "number",
        "precision": "str", "early_stopping": "int", "monitor": "str"}),
    "fit": _Object({
        "seed": "int", "batch_size": "int", "steps_per_call": "int", "microbatches": "int",
        "n_train": "int", "epochs": "int", "step": "int", "epochs_done": "int",
        "policy": "str", "ema": "number", "clip_norm": "number", "stopped": "bool",
        "callbacks": _MapOf(_MapOf("number")),
        "history": _ListOf(_MapOf("number")),
        "partial": _Object({"loss": "number", "accuracy": "number", "steps": "int"},
                           required=("loss", "accuracy", "steps"))}),
    "best": _Object({"monitor": "str", "value": "number", "epoch": "int", "step": "int"},
                    required=("monitor", "value", "epoch", "step")),
})


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({type(value).__name__})"


def _schema_problem(value: Any, spec: Any, where: str) -> str | None:
    """How ``value`` differs from ``spec`` (``None`` if it conforms), naming the field."""
    if isinstance(spec, str):
        name, check = _KINDS[spec]
        return None if check(value) else f"{where} must be {name}, got {_describe(value)}"
    if isinstance(spec, _ListOf):
        if not isinstance(value, list):
            return f"{where} must be a list, got {_describe(value)}"
        items = [(f"{where}[{i}]", v, spec.item) for i, v in enumerate(value)]
    elif not isinstance(value, dict):
        return f"{where} must be an object, got {_describe(value)}"
    elif isinstance(spec, _MapOf):
        items = [(f"{where}.{k}", v, spec.value) for k, v in value.items()]
    else:
        missing = [k for k in spec.required if k not in value]
        if missing:
            return f"{where} lacks the field {missing[0]!r}"
        items = [(f"{where}.{k}", value[k], s) for k, s in spec.fields.items() if k in value]
    return next(filter(None, (_schema_problem(v, s, w) for w, v, s in items)), None)


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

    try:
        import jaxlib
        jaxlib_version = jaxlib.__version__
    except (ImportError, AttributeError):  # pragma: no cover
        jaxlib_version = "unknown"
    return {"jaxconv": __version__, "jax": jax.__version__, "jaxlib": jaxlib_version,
            "optax": optax.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0]}


def _tensor_digest(arrays: dict[str, np.ndarray]) -> str:
    """The format-1 checksum: SHA-256 over the entries in name order (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = arrays[name]
        h.update(f"{name}|{arr.dtype.name}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _checksum_at(data: bytes | bytearray, header_size: int) -> int | None:
    """Offset of the file checksum's 64 digits, ``None`` unless the header has exactly one."""
    found = list(_CHECKSUM_RE.finditer(data, 8, 8 + header_size))
    return found[0].start(1) if len(found) == 1 else None


def _file_digest(data: bytes | bytearray, at: int) -> bytes:
    """SHA-256 (hex) of ``data`` with the 64 checksum digits at ``data[at:]`` read as ``0``."""
    view = memoryview(data)
    h = hashlib.sha256(view[:at])
    h.update(_UNSET_CHECKSUM)
    h.update(view[at + len(_UNSET_CHECKSUM):])
    return h.hexdigest().encode()


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
    problem = _schema_problem(json.loads(meta_json), _METADATA_SCHEMA, "metadata")
    if problem:  # refused now rather than unreadable when it is loaded
        raise TypeError(f"checkpoint.save: {problem}")
    header = {"format": FORMAT, "metadata": meta_json, "prng_keys": json.dumps(keys, sort_keys=True),
              _CHECKSUM_KEY: _UNSET_CHECKSUM.decode()}
    try:
        data = safetensors.numpy.save(tensors, metadata=header)
    except Exception as e:  # safetensors raises its own exception types
        raise TypeError(f"checkpoint.save: cannot store the tree: {e}") from None
    at = _checksum_at(data, int.from_bytes(data[:8], "little"))
    view = memoryview(data)
    return b"".join((view[:at], _file_digest(data, at), view[at + len(_UNSET_CHECKSUM):]))


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
# Reading: regular files only, bounded by the sizes the header declares


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


def _irregularity(path: str, mode: int) -> str | None:
    """Why ``path`` (of file mode ``mode``, from ``stat`` or ``lstat``) is not read; ``None`` if regular."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for is_kind, name in _FILE_KINDS if is_kind(mode)), "a special file")
    link = "a symbolic link to " if os.path.islink(path) and not stat.S_ISLNK(mode) else ""
    return f"is {link}{kind}, not a regular file"


def _open_regular(path: str) -> tuple[int, int]:
    """A read-only descriptor of the regular file ``path``, and its size.

    The kind of file is checked before opening (opening a FIFO blocks, a device
    never ends) and again on the descriptor, opened non-blocking in case
    ``path`` was replaced in between.
    """
    try:
        problem = _irregularity(path, os.stat(path).st_mode)
        if problem is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise CheckpointError(f"checkpoint: cannot read {path}: {e.strerror or e}") from e
    if problem is None:
        info = os.fstat(fd)
        problem = _irregularity(path, info.st_mode)
        if problem is None:
            return fd, info.st_size
        os.close(fd)
    raise CheckpointError(f"checkpoint: {path} {problem}; it is not read")


class _Entry(NamedTuple):
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(is_int(v) and v >= 0 for v in value)


def _entry_problem(spec: Any) -> str | None:
    """What is wrong with one tensor entry of a header (``None`` if nothing)."""
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        return f"is {_describe(spec)}, not {{dtype, shape, data_offsets}}"
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        return f"has unsupported dtype {_describe(dtype)}; supported: {sorted(_DTYPES)}"
    if not _int_list(shape):
        return f"has shape {_describe(shape)}; expected a list of ints >= 0"
    if not _int_list(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        return f"has data_offsets {_describe(offsets)}; expected [begin, end] with 0 <= begin <= end"
    nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
    if offsets[1] - offsets[0] != nbytes:
        return f"spans {offsets[1] - offsets[0]} bytes; its shape {shape} of {dtype} needs {nbytes}"
    return None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key appears twice")
    return out


def _parse_header(path: str, raw: bytes) -> tuple[dict, dict[str, _Entry], int]:
    """The header as JSON, its tensor entries, and the data size they declare (checked to tile it)."""
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:
        raise _error(path, f"is not a readable safetensors file: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise _error(path, f"is not a readable safetensors file: its header is {_describe(header)}")
    entries = {}
    for name, spec in header.items():
        if name == "__metadata__":  # checked once the checksum has held (see _header_strings)
            continue
        problem = _entry_problem(spec)
        if problem:
            raise _error(path, f"is not a readable safetensors file: entry {name!r} {problem}")
        entries[name] = _Entry(np.dtype(_DTYPES[spec["dtype"]]), tuple(spec["shape"]),
                               *spec["data_offsets"])
    size = 0
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != size:
            raise _error(path, f"is not a readable safetensors file: entry {name!r} starts at data "
                               f"byte {entry.begin}, expected {size} (overlapping entries or a gap)")
        size = entry.end
    return header, entries, size


def _read_into(f, path: str, view: memoryview) -> None:
    """Fills ``view`` from ``f``; a short read means the file shrank while being read."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise _error(path, f"was truncated while being read ({got} of {len(view)} bytes)")
        got += n


def _read_file(path: str) -> tuple[bytearray, dict, dict[str, _Entry]]:
    """The whole file, its parsed header and entries; reads no more than the header declares."""
    fd, size = _open_regular(path)
    try:
        with os.fdopen(fd, "rb") as f:
            prefix = f.read(8)
            header_size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 0 <= header_size <= min(size - 8, MAX_HEADER_BYTES):
                raise _error(path, f"is not a readable safetensors file (truncated or corrupt): its "
                                   f"{size} bytes cannot hold the header its first 8 bytes declare")
            raw = bytearray(header_size)
            _read_into(f, path, memoryview(raw))
            header, entries, data_size = _parse_header(path, bytes(raw))
            if 8 + header_size + data_size != size:
                raise _error(path, f"is not a readable safetensors file (truncated or corrupt): it "
                                   f"has {size} bytes, its header declares {8 + header_size + data_size}")
            data = bytearray(size)
            data[:8], data[8:8 + header_size] = prefix, raw
            _read_into(f, path, memoryview(data)[8 + header_size:])
            if f.read(1):
                raise _error(path, "grew while being read")
    except OSError as e:
        raise CheckpointError(f"checkpoint: cannot read {path}: {e.strerror or e}") from e
    return data, header, entries


class _Contents(NamedTuple):
    arrays: dict[str, np.ndarray]
    strings: dict[str, str]  # the header's text metadata
    verified: bool  # the file checksum covers the header too (the current format)


def _header_strings(path: str, header: dict, verified: bool) -> dict[str, str]:
    """The header's ``__metadata__``, checked to be strings with a known format."""
    strings = header.get("__metadata__", {})
    if not isinstance(strings, dict) or not all(isinstance(v, str) for v in strings.values()):
        raise _error(path, f"has a header __metadata__ of {_describe(strings)}, not a map of strings",
                     verified=verified)
    fmt = strings.get("format")
    if verified and fmt != FORMAT:
        raise _error(path, f"has format {fmt!r}; this version reads {FORMAT!r} and {LEGACY_FORMAT!r}",
                     verified=True)
    if not verified and fmt != LEGACY_FORMAT:
        raise _error(path, "is corrupt: its file checksum is damaged" if fmt == FORMAT else
                     f"has no jaxconv checksum (format {fmt!r}): it is not a jaxconv checkpoint, or "
                     "its header is damaged")
    return strings


def _arrays(data: bytearray, entries: dict[str, _Entry], start: int) -> dict[str, np.ndarray]:
    """The entries as arrays viewing ``data`` (copied where a view would be misaligned)."""
    arrays = {}
    for name, entry in entries.items():
        arr = np.frombuffer(data, entry.dtype, count=math.prod(entry.shape),
                            offset=start + entry.begin).reshape(entry.shape)
        arrays[name] = arr if arr.flags.aligned else arr.copy()
    return arrays


def _read(path: str) -> _Contents:
    """Reads and verifies ``path``: the file checksum (or, format 1, the tensor checksum)."""
    data, header, entries = _read_file(path)
    header_size = int.from_bytes(data[:8], "little")
    at = _checksum_at(data, header_size)
    verified = at is not None
    if verified and _file_digest(data, at) != data[at:at + len(_UNSET_CHECKSUM)]:
        raise _error(path, "is corrupt: it fails its SHA-256 checksum (the file changed after it "
                           "was written)")
    strings = _header_strings(path, header, verified)
    arrays = _arrays(data, entries, 8 + header_size)
    if not verified and strings.get("sha256") != _tensor_digest(arrays):
        raise _error(path, "is corrupt: its data fail the SHA-256 checksum")
    return _Contents(arrays, strings, verified)


def _json_field(path: str, contents: _Contents, field: str) -> Any:
    try:
        return json.loads(contents.strings.get(field, "{}"))
    except (ValueError, RecursionError) as e:
        raise _error(path, f"has malformed {field} JSON ({e})", verified=contents.verified) from None


def _metadata(path: str, contents: _Contents) -> dict[str, Any]:
    metadata = _json_field(path, contents, "metadata")
    problem = _schema_problem(metadata, _METADATA_SCHEMA, "metadata")
    if problem:
        raise _error(path, f"has invalid metadata: {problem}", verified=contents.verified)
    return metadata


def _key_impls(path: str, contents: _Contents) -> dict[str, str]:
    """``{entry name: PRNG implementation}`` of the typed key leaves."""
    impls = _json_field(path, contents, "prng_keys")
    problem = _schema_problem(impls, _MapOf("str"), "prng_keys")
    if not problem:
        unknown = [name for name in impls if name not in contents.arrays]
        problem = f"prng_keys names {unknown[0]!r}, which is not an entry" if unknown else None
    if problem:
        raise _error(path, f"has an invalid header: {problem}", verified=contents.verified)
    return impls


def read_metadata(path: str) -> dict[str, Any]:
    """The metadata dict stored by ``save``, after verifying the whole file.

    Raises:
      CorruptCheckpointError: a damaged file (see ``load_with_metadata``).
      CheckpointError: not a regular file, or metadata of the wrong types.
    """
    return _metadata(path, _read(path))


def load_arrays(path: str) -> dict[str, np.ndarray]:
    """All entries of a checkpoint as ``{name: array}`` (typed keys as their raw data)."""
    return _read(path).arrays


def load(path: str, like: Any) -> Any:
    """Loads a checkpoint into the structure of ``like`` (see ``load_with_metadata``)."""
    return load_with_metadata(path, like)[0]


def _check_names(path: str, names: list[str], arrays: dict[str, np.ndarray]) -> None:
    """The file's entries must be exactly ``names``; the message names the first difference."""
    extra = sorted(set(arrays) - set(names))
    for name in names:
        if name not in arrays:
            hint = f"; it has unexpected entries such as {extra[0]!r}" if extra else ""
            raise CheckpointError(
                f"checkpoint: {path} has no entry {name!r} (the tree structure differs){hint}")
    if extra:
        raise CheckpointError(
            f"checkpoint: {path} has an entry {extra[0]!r} that `like` lacks (the tree structure differs)")


def _kind(is_key: bool) -> str:
    return "a typed PRNG key" if is_key else "a plain array"


def _restore(path: str, name: str, arr: np.ndarray, ref: Any, impl: str | None) -> Any:
    """The leaf ``ref`` of ``like`` from its entry ``arr`` (``impl``: the file's key type)."""
    typed = _is_typed_key(ref)
    if typed != (impl is not None):
        raise CheckpointError(f"checkpoint: {path}: entry {name!r} is {_kind(not typed)} in the file "
                              f"but {_kind(typed)} in `like`")
    ref_shape = tuple(np.shape(jax.random.key_data(ref) if typed else ref))
    ref_dtype = np.dtype(np.uint32 if typed else getattr(ref, "dtype", None) or np.asarray(ref).dtype)
    if arr.shape != ref_shape:
        raise CheckpointError(
            f"checkpoint: {path}: entry {name!r} has shape {arr.shape}; expected {ref_shape}")
    if arr.dtype != ref_dtype:
        raise CheckpointError(
            f"checkpoint: {path}: entry {name!r} has dtype {arr.dtype.name}; expected {ref_dtype.name}")
    if typed:
        expected = str(jax.random.key_impl(ref))
        if impl != expected:
            raise CheckpointError(f"checkpoint: {path}: entry {name!r} is a {impl} key; expected {expected}")
        return jax.random.wrap_key_data(jnp.asarray(arr), impl=expected)
    if isinstance(ref, (jax.Array, jax.ShapeDtypeStruct)):
        sharding = getattr(ref, "sharding", None)
        return jax.device_put(arr, sharding) if sharding is not None else jnp.asarray(arr)
    if isinstance(ref, (bool, int, float, complex)):
        return arr.item()
    return np.array(arr)


def load_with_metadata(path: str, like: Any) -> tuple[Any, dict[str, Any]]:
    """Loads a checkpoint into the structure of ``like``; also returns its metadata dict.

    Every leaf of ``like`` (arrays, scalars, PRNG keys; values are ignored,
    ``jax.ShapeDtypeStruct`` works too) must be present in the file under its
    path name with the same shape and dtype, and the file must have no other
    entries.

    Returns:
      A tree with the structure of ``like``: JAX arrays where ``like`` has JAX
      arrays or ``ShapeDtypeStruct`` s (placed with their sharding when they
      have one), NumPy arrays where it has NumPy arrays, Python scalars for
      Python scalars, typed PRNG keys of the same implementation for typed keys.

    Raises:
      CorruptCheckpointError: a damaged file: truncated or longer than its
        header declares, not safetensors, a failed SHA-256 checksum (of the
        whole file; of the tensor data for format 1), or a format-1 header
        whose metadata do not parse.
      CheckpointError (a ``ValueError``): not a regular file (a directory,
        FIFO, device; nothing is read from it), metadata whose jaxconv fields
        have the wrong types, a missing/unexpected entry, wrong shape, dtype
        or key type. Every message names the file and the first problem.
    """
    contents = _read(path)
    metadata, key_impls = _metadata(path, contents), _key_impls(path, contents)
    named = named_leaves(like)
    _check_names(path, [name for name, _ in named], contents.arrays)
    values = [_restore(path, name, contents.arrays[name], ref, key_impls.get(name))
              for name, ref in named]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), values), metadata


# --------------------------------------------------------------------------
# A directory of numbered checkpoints


def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"ckpt-{int(step):09d}.safetensors")


def _skip(path: str, problem: str) -> None:
    warnings.warn(f"checkpoint: skipping {path}, which {problem}", CheckpointWarning, stacklevel=3)


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    """``[(step, path), ...]`` of the ``ckpt-<step>.safetensors`` files, oldest first.

    Entries with such names that are not regular files (directories, FIFOs,
    links to devices, broken links) are left out with a ``CheckpointWarning``.
    """
    if not os.path.isdir(directory):
        return []
    found = []
    for entry in os.listdir(directory):
        m = _CKPT_RE.match(entry)
        if not m:
            continue
        path = os.path.join(directory, entry)
        try:
            problem = _irregularity(path, os.stat(path).st_mode)
        except OSError as e:
            problem = f"cannot be read ({e.strerror or e})"
        if problem:
            _skip(path, problem)
        else:
            found.append((int(m.group(1)), path))
    return sorted(found)


def is_complete(path: str) -> bool:
    """Cheap check that ``path`` is a whole safetensors file (header parses, size matches).

    Only the header is read; the checksum is verified by ``load``.
    """
    try:
        fd, size = _open_regular(path)
        with os.fdopen(fd, "rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            if not 0 < header_size <= min(size - 8, MAX_HEADER_BYTES):
                return False
            _, _, data_size = _parse_header(path, f.read(header_size))
        return 8 + header_size + data_size == size
    except (OSError, CheckpointError):
        return False


def latest_checkpoint(directory: str) -> str | None:
    """The newest complete checkpoint in ``directory`` (``None`` if there is none)."""
    for _, path in reversed(list_checkpoints(directory)):
        if is_complete(path):
            return path
    return None


def remove_stale_temporaries(directory: str) -> list[str]:
    """Deletes temporary files left by a writer that was killed; returns their paths.

    Only regular files are deleted (anything else named like a temporary is
    left alone, with a ``CheckpointWarning``). Call only when no other process
    writes checkpoints to ``directory``.
    """
    removed = []
    if os.path.isdir(directory):
        for entry in os.listdir(directory):
            path = os.path.join(directory, entry)
            if not entry.startswith(TMP_PREFIX):
                continue
            with contextlib.suppress(FileNotFoundError):
                problem = _irregularity(path, os.lstat(path).st_mode)
                if problem:
                    _skip(path, problem)
                    continue
                os.unlink(path)
                removed.append(path)
    return removed


def save_checkpoint(directory: str, step: int, tree: Any, metadata: dict | None = None,
                    *, keep: int | None = 3) -> str:
    """Saves ``tree`` as ``directory/ckpt-<step>.safetensors`` and keeps the newest ``keep``.

    Older checkpoints are deleted only after the new one is durably in place.
    ``keep=None`` keeps all. Returns the new file's path.
    """
    if keep is not None:
        integer(keep, "keep", context="save_checkpoint", minimum=1)
    path = checkpoint_path(directory, step)
    save(path, tree, metadata)
    if keep is not None:
        for _, old in list_checkpoints(directory)[:-keep]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old)
    return path
