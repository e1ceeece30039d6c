"""Data parallelism over many devices and hosts, with ``jax.sharding`` and ``jax.distributed``.

jaxconv does not ship its own distributed runtime: it builds a one-axis
device ``Mesh`` named ``"data"``, shards every batch along that axis, keeps
params, layer state and optimizer state replicated, and lets XLA's SPMD
partitioner (GSPMD) insert the collectives. A training step written for one
device is therefore the *same* computation on ``D`` devices:

* the loss is the mean over the **global** batch, so the gradient is the
  all-reduced mean of the per-device gradients;
* ``BatchNorm`` takes its mean and variance over the global batch (the
  reduction over a sharded axis becomes an all-reduce), so results do not
  depend on the device count;
* updated params come back replicated, identical on every device.

Typical use on one machine (all its GPUs)::

    mesh = jc.distributed.data_mesh()              # every device, axis "data"
    ts = jc.distributed.replicate(ts, mesh)        # params/state/opt_state on every device
    step = jc.make_train_step(model, opt, mesh=mesh)
    ts, metrics = step(ts, jc.distributed.shard_batch((x, y), mesh))

On several hosts, call :func:`initialize` first (before anything touches a
device), build the mesh over all global devices, and let each process feed
its own rows of the global batch (:func:`host_local_batch`, or
:func:`shard_batch` when every process holds the same global batch).
Checkpoints are written by process 0 only (:func:`is_primary`); a fetched,
replicated tree (:func:`fetch`) is plain NumPy and can be placed on a mesh of
any size again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxconv.core import PyTree
from jaxconv.validate import integer, is_int

DATA_AXIS = "data"

#: Environment variables read by :func:`initialize` when an argument is not given.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

_CPU_DEVICES_HINT = ("on a CPU-only machine, simulate devices with "
                     "XLA_FLAGS=--xla_force_host_platform_device_count=N "
                     "(set before JAX starts)")


# --------------------------------------------------------------------------
# Meshes and shardings.


def data_mesh(devices: int | Sequence[Any] | None = None, *, axis_name: str = DATA_AXIS) -> Mesh:
    """A one-dimensional device mesh for data parallelism.

    Args:
      devices: ``None`` for every device of every process (``jax.devices()``);
        an int ``N`` for ``N`` of them (with several processes, ``N`` must be a
        multiple of the process count and each process contributes
        ``N // process_count`` of its local devices); or an explicit sequence
        of devices.
      axis_name: name of the mesh axis the batch is sharded on.

    Returns:
      ``Mesh`` of shape ``{axis_name: D}``.

    Raises:
      ValueError: if ``devices`` asks for fewer than one, or more than the
        available, devices.
    """
    if devices is None:
        devs = list(jax.devices())
    elif is_int(devices):
        devs = _first_devices(integer(devices, "devices", context="data_mesh", minimum=1))
    else:
        devs = list(devices)
        if not devs:
            raise ValueError("data_mesh: devices must name at least one device, got an empty sequence")
        if len(set(devs)) != len(devs):
            raise ValueError(f"data_mesh: devices contains duplicates: {devs}")
    return Mesh(np.asarray(devs, dtype=object), (axis_name,))


def _first_devices(n: int) -> list[Any]:
    available = jax.devices()
    if n > len(available):
        raise ValueError(
            f"data_mesh: asked for {n} devices but only {len(available)} are available "
            f"({jax.default_backend()} backend); {_CPU_DEVICES_HINT}")
    processes = jax.process_count()
    if processes == 1:
        return list(available[:n])
    if n % processes:
        raise ValueError(
            f"data_mesh: the device count {n} must be a multiple of the process count {processes}, "
            "so that every process feeds the same number of devices")
    per_process = n // processes
    devs = []
    for p in range(processes):
        mine = [d for d in available if d.process_index == p]
        if per_process > len(mine):
            raise ValueError(
                f"data_mesh: asked for {per_process} devices per process but process {p} has {len(mine)}")
        devs.extend(mine[:per_process])
    return devs


def check_mesh(mesh: Any, *, context: str = "mesh", axis_name: str = DATA_AXIS) -> Mesh:
    """Returns ``mesh`` if it is a ``jax.sharding.Mesh`` with a ``axis_name`` axis, else raises.

    Raises:
      TypeError: ``mesh`` is not a ``Mesh``.
      ValueError: ``mesh`` has no ``axis_name`` axis.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{context}: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"{context}: the mesh needs a {axis_name!r} axis to shard the batch on, but its axes are "
            f"{tuple(mesh.axis_names)}; build one with jaxconv.distributed.data_mesh() or name an axis "
            f"{axis_name!r}")
    return mesh


def data_size(mesh: Mesh, axis_name: str = DATA_AXIS, *, context: str = "data_size") -> int:
    """Number of batch shards: the size of the mesh's ``"data"`` axis (``check_mesh`` first)."""
    return int(check_mesh(mesh, context=context, axis_name=axis_name).shape[axis_name])


def batch_sharding(mesh: Mesh, *, steps_per_call: int = 1, axis_name: str = DATA_AXIS) -> NamedSharding:
    """Sharding of a batch: its batch axis split over ``"data"``, everything else whole.

    The batch axis is axis 0, or axis 1 when ``steps_per_call > 1`` (the
    ``(K, batch, ...)`` layout of ``make_train_step(steps_per_call=K)``). Other
    mesh axes, if any, hold replicas.
    """
    check_mesh(mesh, context="batch_sharding", axis_name=axis_name)
    spec = PartitionSpec(axis_name) if steps_per_call == 1 else PartitionSpec(None, axis_name)
    return NamedSharding(mesh, spec)


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of params, layer state and optimizer state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, *, context: str = "batch",
                     axis_name: str = DATA_AXIS) -> None:
    """Raises a ``ValueError`` unless ``batch_size`` splits evenly over the ``"data"`` axis."""
    shards = data_size(mesh, axis_name, context=context)
    if batch_size % shards:
        below, above = batch_size // shards * shards, (batch_size // shards + 1) * shards
        nearest = f"{below} or {above}" if below else f"{above}"
        raise ValueError(
            f"{context}: the global batch size {batch_size} is not divisible by the {shards} devices "
            f"of the mesh's {axis_name!r} axis; use a multiple of {shards} (e.g. {nearest})")


# --------------------------------------------------------------------------
# Placing trees and batches.


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Places every leaf of ``tree`` (e.g. a ``TrainState``) on every device of ``mesh``.

    Works with several processes too: every process must pass the same values
    (they do when created from the same seed, or loaded from the same
    checkpoint). Leaves already replicated on ``mesh`` are kept as they are.
    """
    sharding = replicated_sharding(check_mesh(mesh, context="replicate"))
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(lambda x: _replicate_global(x, sharding), tree)


def _replicate_global(x: Any, sharding: NamedSharding) -> Any:
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _replicate_global(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _batch_axis(steps_per_call: int) -> int:
    return 0 if steps_per_call == 1 else 1


def _leading_size(batch: PyTree, axis: int, context: str) -> int:
    sizes = {int(np.shape(x)[axis]) for x in jax.tree_util.tree_leaves(batch)}
    if len(sizes) != 1:
        raise ValueError(f"{context}: every array of a batch needs the same batch size on axis {axis}, "
                         f"got sizes {sorted(sizes)}")
    return sizes.pop()


def process_rows(global_batch_size: int, mesh: Mesh, *, axis_name: str = DATA_AXIS) -> slice:
    """The rows of a global batch that this process feeds (its devices' shards).

    With a mesh built by :func:`data_mesh`, each process owns one contiguous
    block of ``global_batch_size // process_count`` rows.

    Raises:
      ValueError: the batch is not divisible by the device count, or this
        process's devices hold non-contiguous rows (a hand-made mesh).
    """
    check_batch_size(global_batch_size, mesh, context="process_rows", axis_name=axis_name)
    sharding = NamedSharding(mesh, PartitionSpec(axis_name))
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    spans = sorted({(idx[0].start or 0, global_batch_size if idx[0].stop is None else idx[0].stop)
                    for idx in index_map.values()})
    start, stop = spans[0][0], spans[0][1]
    for lo, hi in spans[1:]:
        if lo != stop:
            raise ValueError(
                f"process_rows: process {jax.process_index()}'s devices hold non-contiguous rows "
                f"{spans} of the batch; order the mesh's devices by process (data_mesh does)")
        stop = hi
    return slice(start, stop)


def shard_batch(batch: PyTree, mesh: Mesh, *, steps_per_call: int = 1,
                axis_name: str = DATA_AXIS) -> PyTree:
    """Places a global batch on ``mesh``, split along the batch axis.

    Every process passes the *same* global batch (e.g. all hosts hold the
    whole data set and shuffle with the same key); each process transfers
    only its own rows (:func:`process_rows`), assembled into global arrays
    with ``jax.make_array_from_process_local_data``.

    Args:
      batch: pytree of arrays (e.g. ``(images, labels)``) with a common batch
        axis: axis 0, or axis 1 when ``steps_per_call > 1``.
      mesh: a mesh with a ``"data"`` axis.

    Raises:
      ValueError: the batch size is not divisible by the size of the ``"data"`` axis.
    """
    sharding = batch_sharding(mesh, steps_per_call=steps_per_call, axis_name=axis_name)
    axis = _batch_axis(steps_per_call)
    size = _leading_size(batch, axis, "shard_batch")
    check_batch_size(size, mesh, context="shard_batch", axis_name=axis_name)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    rows = process_rows(size, mesh, axis_name=axis_name)
    index = (slice(None),) * axis + (rows,)

    def place(x):
        return jax.make_array_from_process_local_data(sharding, np.asarray(x[index]), np.shape(x))

    return jax.tree_util.tree_map(place, batch)


def host_local_batch(local_batch: PyTree, mesh: Mesh, *, steps_per_call: int = 1,
                     axis_name: str = DATA_AXIS) -> PyTree:
    """Assembles a global batch from each process's own rows.

    Each process loads only its slice of the global batch (``B / P`` rows for
    ``P`` processes: rows :func:`process_rows` of the global batch) and
    passes it here; the result is a global array of ``B`` rows sharded over
    the ``"data"`` axis (``jax.make_array_from_process_local_data``). With one
    process this is :func:`shard_batch`.

    Raises:
      ValueError: the global batch size is not divisible by the device count.
    """
    sharding = batch_sharding(mesh, steps_per_call=steps_per_call, axis_name=axis_name)
    axis = _batch_axis(steps_per_call)
    local = _leading_size(local_batch, axis, "host_local_batch")
    shards = data_size(mesh, axis_name, context="host_local_batch")
    data_dim = list(mesh.axis_names).index(axis_name)
    me = jax.process_index()
    mine = {pos[data_dim] for pos, d in np.ndenumerate(mesh.devices) if d.process_index == me}
    if not mine or local % len(mine):
        raise ValueError(
            f"host_local_batch: process {me} holds {len(mine)} of the {shards} batch shards, "
            f"and its {local} local rows do not split evenly over them")
    global_size = local // len(mine) * shards
    check_batch_size(global_size, mesh, context="host_local_batch", axis_name=axis_name)

    def place(x):
        x = np.asarray(x)
        shape = x.shape[:axis] + (global_size,) + x.shape[axis + 1:]
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return jax.tree_util.tree_map(place, local_batch)


def fetch(tree: PyTree) -> PyTree:
    """Copies a (replicated) tree to host NumPy arrays, on every process.

    Use it to checkpoint: ``if is_primary(): checkpoint.save(path, fetch(ts))``.
    The result has no device layout, so it loads on any device count
    (``replicate(loaded, mesh)``).
    """
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            raise ValueError(
                "fetch: the array is sharded across processes; only replicated arrays "
                f"(params, state, opt_state) can be fetched on each host, got sharding {x.sharding}")
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)

    return jax.tree_util.tree_map(get, tree)


# --------------------------------------------------------------------------
# Processes.


_BARRIERS: dict[Any, Any] = {}


def barrier(mesh: Mesh) -> None:
    """Returns once every process of ``mesh`` has reached this call.

    A tiny all-reduce over the mesh's devices, so it needs nothing beyond the
    collectives training already uses. Call it after process 0 writes a
    checkpoint that the others may read next (e.g. ``resume``). A no-op with
    one process.
    """
    check_mesh(mesh, context="barrier")
    if jax.process_count() == 1:
        return
    if mesh not in _BARRIERS:
        _BARRIERS[mesh] = jax.jit(lambda x: x.sum(), out_shardings=replicated_sharding(mesh))
    shards = data_size(mesh)
    rows = process_rows(shards, mesh)  # one row per batch shard
    ones = host_local_batch(np.ones((rows.stop - rows.start,), np.int32), mesh)
    total = int(_BARRIERS[mesh](ones))
    if total != shards:
        raise RuntimeError(f"barrier: expected {shards} arrivals, got {total}")


def is_primary() -> bool:
    """True in process 0: the process that writes checkpoints, metrics and logs."""
    return jax.process_index() == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"initialize: environment variable {name} must be an integer, got {value!r}") from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    local_device_ids: Sequence[int] | None = None,
    initialization_timeout: int = 300,
) -> bool:
    """Joins a multi-process (multi-host) run: wraps ``jax.distributed.initialize``.

    Call it once per process, **before anything touches a device** (even
    ``jax.devices()``). Every argument left ``None`` is read from the
    environment: ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0),
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``. With none of them given and
    ``auto=True``, JAX detects the cluster itself (Cloud TPU pod slices,
    SLURM, Open MPI, Kubernetes). On CPU the cross-process collectives use
    gloo.

    Args:
      coordinator_address: ``"host:port"`` of process 0, reachable from all processes.
      num_processes: total number of processes.
      process_id: this process's index in ``[0, num_processes)``.
      auto: with nothing given, let JAX auto-detect the cluster.
      local_device_ids: restrict this process to these local devices.
      initialization_timeout: seconds to wait for all processes to connect.

    Returns:
      True if the distributed runtime was initialized (now or before), False
      when nothing asked for it (single-process run).

    Raises:
      ValueError: only some of the three settings are given, or they are invalid.
      RuntimeError: JAX was already started in this process.
    """
    if coordinator_address is None:
        coordinator_address = os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    settings = {"coordinator_address": coordinator_address, "num_processes": num_processes,
                "process_id": process_id}
    given = [k for k, v in settings.items() if v is not None]
    if jax.distributed.is_initialized():
        return True
    if not given and not auto:
        return False
    if given and len(given) < 3:
        missing = [k for k in settings if k not in given]
        raise ValueError(
            f"initialize: a multi-process run needs coordinator_address, num_processes and process_id; "
            f"got {given} but not {missing} (arguments, or environment variables "
            f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})")
    if given:
        _check_settings(coordinator_address, num_processes, process_id)
    # CPU cross-process collectives: gloo is JAX's default today; older versions had none.
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address, num_processes, process_id,
            local_device_ids=local_device_ids, initialization_timeout=initialization_timeout)
    except RuntimeError as err:
        raise RuntimeError(
            f"initialize: jax.distributed.initialize failed ({err}); call jaxconv.distributed.initialize "
            "first thing in the process, before any JAX computation or jax.devices()") from err
    return True


def _check_settings(coordinator_address: Any, num_processes: Any, process_id: Any) -> None:
    host, sep, port = str(coordinator_address).rpartition(":")
    if not isinstance(coordinator_address, str) or not sep or not host or not port.isdigit():
        raise ValueError(f"initialize: coordinator_address must be 'host:port', got {coordinator_address!r}")
    integer(num_processes, "num_processes", context="initialize", minimum=1)
    integer(process_id, "process_id", context="initialize", minimum=0, maximum=num_processes - 1)
