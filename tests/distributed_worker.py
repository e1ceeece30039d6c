"""Subprocess worker for tests/test_distributed.py (not a test module itself).

Device counts are fixed when JAX starts, so the multi-device checks run in
fresh interpreters:

* ``python tests/distributed_worker.py sharded OUT.json`` — run with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=4``: trains on 4
  simulated CPU devices and on 1, and reports the differences and the error
  messages of the bad cases.
* ``python tests/distributed_worker.py distributed OUT_DIR`` — one process of a
  multi-process run; ``jaxconv.distributed.initialize`` reads the coordinator,
  process count and process id from the environment. Writes its final params
  to ``OUT_DIR/params_{process_id}.npz`` and, from process 0 only, a
  checkpoint ``checkpoint_by_process_0.npz``.

The training functions are also imported by the test to compute one-device
references in-process.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

GLOBAL_BATCH = 32
STEPS = 5


def model():
    """Conv -> BatchNorm -> ReLU -> Dropout -> MaxPool -> Dense: batch statistics and RNG."""
    import jaxconv as jc

    return jc.serial(jc.Conv(8, 3), jc.BatchNorm(), jc.Relu(), jc.Dropout(0.25), jc.MaxPool(2),
                     jc.Flatten(), jc.Dense(10))


def optimizer():
    import optax

    return optax.sgd(0.1, momentum=0.9)


def data(n=GLOBAL_BATCH * STEPS):
    """The first ``n`` digits training examples: ``(images (n, 8, 8, 1), labels (n,))``."""
    import jaxconv as jc

    train = jc.load_dataset("digits").train
    return train.images[:n], train.labels[:n]


_STEPS = {}


def make_step(mesh, steps_per_call):
    """One compiled step per (mesh, steps_per_call), shared by all runs of a worker."""
    import jaxconv as jc

    if (mesh, steps_per_call) not in _STEPS:
        _STEPS[mesh, steps_per_call] = jc.make_train_step(model(), optimizer(), steps_per_call=steps_per_call,
                                                          mesh=mesh)
    return _STEPS[mesh, steps_per_call]


def train_steps(mesh=None, *, steps_per_call=1, feed="global", ts=None, steps=STEPS):
    """``steps`` optimizer steps on consecutive global batches of ``GLOBAL_BATCH``.

    Args:
      mesh: ``None`` for the plain one-device step, else a data mesh.
      steps_per_call: run the steps as ``steps / steps_per_call`` compiled calls.
      feed: ``"global"`` (every process places the global batch, ``shard_batch``)
        or ``"local"`` (each process passes only its own rows, ``host_local_batch``).
      ts: start from this train state (e.g. a loaded checkpoint) instead of init.

    Returns:
      The final ``TrainState``.
    """
    import jax

    import jaxconv as jc
    from jaxconv import distributed

    net, opt = model(), optimizer()
    images, labels = data(GLOBAL_BATCH * steps)
    if ts is None:
        ts = jc.create_train_state(net, jax.random.PRNGKey(0), (-1, 8, 8, 1), opt)
    step = make_step(mesh, steps_per_call)
    if mesh is not None:
        ts = distributed.replicate(ts, mesh)
    per_call = GLOBAL_BATCH * steps_per_call
    for start in range(0, GLOBAL_BATCH * steps, per_call):
        batch = (images[start:start + per_call], labels[start:start + per_call])
        if steps_per_call > 1:
            batch = tuple(a.reshape((steps_per_call, GLOBAL_BATCH) + a.shape[1:]) for a in batch)
        if mesh is not None and feed == "global":
            batch = distributed.shard_batch(batch, mesh, steps_per_call=steps_per_call)
        elif mesh is not None:
            rows = distributed.process_rows(GLOBAL_BATCH, mesh)
            axis = 0 if steps_per_call == 1 else 1
            local = tuple(a[(slice(None),) * axis + (rows,)] for a in batch)
            batch = distributed.host_local_batch(local, mesh, steps_per_call=steps_per_call)
        ts, _ = step(ts, batch)
    return ts


def run_fit(mesh=None):
    """Two epochs of ``fit`` on 128 examples (batch 32), evaluated on 50 test examples."""
    import jaxconv as jc

    split = jc.load_dataset("digits")
    train = (split.train.images[:128], split.train.labels[:128])
    test = (split.test.images[:50], split.test.labels[:50])
    ts, history = jc.fit(model(), optimizer(), train, test=test, epochs=2, batch_size=GLOBAL_BATCH,
                         progress=False, log=None, mesh=mesh)
    return ts, history


def folder_fit(root, mesh=None, shard=None, batches=2):
    """One epoch of ``fit`` on the digits written as a PNG folder, fed by a ``Loader``.

    Returns the train state and this process's share of the first ``batches``
    global batches (``shard=None``: the process's own, by ``jax.process_index()``).
    """
    import jaxconv as jc

    folder = jc.data.image_folder(root, image_size=8, channels=1)
    loader = jc.data.Loader(folder.train, batch_size=GLOBAL_BATCH, seed=0, shard=shard)
    stream = loader.iterator({"epoch": 0, "position": 0}, epochs=1)
    try:
        read = [next(stream) for _ in range(batches)]
    finally:
        stream.close()
    ts, _ = jc.fit(model(), optimizer(), loader, epochs=1, progress=False, log=None, mesh=mesh)
    return ts, read


def flat(tree):
    """``{"a/b/c": np.ndarray}`` of a fetched tree."""
    import jax

    from jaxconv import distributed

    leaves = jax.tree_util.tree_leaves_with_path(distributed.fetch(tree))
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def max_diff(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys(), (fa.keys(), fb.keys())
    return max(float(np.max(np.abs(fa[k].astype(np.float64) - fb[k]))) for k in fa)


def error_of(fn):
    try:
        fn()
    except (ValueError, TypeError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def _training_report(mesh4):
    """Training on 4 devices (and 2, a user's mesh, a scan, a resumed checkpoint, fit) vs 1."""
    import jax

    from jaxconv import distributed

    report = {"devices": jax.device_count()}
    single = train_steps()
    sharded4 = train_steps(mesh4)
    report["params_sharding"] = str(sharded4.params["conv0"]["kernel"].sharding)
    report["bn_state_sharding"] = str(jax.tree_util.tree_leaves(sharded4.state)[0].sharding)
    report["params_diff_4_vs_1"] = max_diff(sharded4.params, single.params)
    report["state_diff_4_vs_1"] = max_diff(sharded4.state, single.state)
    report["opt_state_diff_4_vs_1"] = max_diff(sharded4.opt_state, single.opt_state)
    _, _, initial_state = model().init(jax.random.PRNGKey(0), (-1, 8, 8, 1))
    report["bn_state_moved"] = max_diff(single.state, initial_state)
    report["bn_state_keys"] = sorted(flat(single.state))
    # The compiled step really communicates: gradients and BatchNorm statistics are all-reduced.
    images, labels = data(GLOBAL_BATCH)
    hlo = make_step(mesh4, 1).lower(distributed.replicate(single, mesh4),
                                    distributed.shard_batch((images, labels), mesh4)).compile().as_text()
    report["all_reduce_ops"] = hlo.count("all-reduce(")
    # The same 5 steps as one compiled call (lax.scan), batch axis 1 sharded.
    scanned = train_steps(mesh4, steps_per_call=5)
    report["params_diff_scan4_vs_1"] = max_diff(scanned.params, single.params)
    # Two devices of four.
    report["params_diff_2_vs_1"] = max_diff(train_steps(distributed.data_mesh(2)).params, single.params)
    # A user's mesh from jax.make_mesh (axis types Explicit in recent JAX), with a second axis.
    user_mesh = jax.make_mesh((2, 2), ("data", "model"))
    report["params_diff_usermesh_vs_1"] = max_diff(train_steps(user_mesh).params, single.params)
    # A checkpoint written from the 4-device run loads on 2 devices and on 1: one more step agrees.
    saved = distributed.fetch(sharded4)
    more2 = train_steps(distributed.data_mesh(2), ts=saved, steps=1)
    more1 = train_steps(None, ts=jax.tree_util.tree_map(jax.numpy.asarray, saved), steps=1)
    report["resume_diff_2_vs_1"] = max_diff(more2.params, more1.params)
    # fit(mesh=...) equals fit() (training, BatchNorm state, evaluation).
    ts_fit1, hist1 = run_fit()
    ts_fit4, hist4 = run_fit(mesh4)
    report["fit_params_diff"] = max_diff(ts_fit4.params, ts_fit1.params)
    report["fit_history_diff"] = max(abs(h1[k] - h4[k]) for h1, h4 in zip(hist1, hist4)
                                     for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"))
    report["fit_test_accuracy"] = [h["test_accuracy"] for h in hist4]
    return report


def _batch_norm_offset_report(mesh4):
    """BatchNorm in training on a batch ``1e4 + N(0, 1)``: sharded over 4 devices vs 1.

    The mean and the variance of the centred values are reductions over the sharded batch
    axis, so the output and the running statistics must not depend on the device count.
    """
    import jax

    import jaxconv as jc
    from jaxconv import distributed

    layer = jc.BatchNorm()
    _, params, state = layer.init(jax.random.PRNGKey(0), (-1, 4, 4, 3))
    x = (1e4 + np.random.RandomState(0).randn(GLOBAL_BATCH, 4, 4, 3)).astype(np.float32)
    run = jax.jit(lambda p, s, v: layer.apply(p, s, v, train=True))
    y1, state1 = run(params, state, x)
    y4, state4 = run(distributed.replicate(params, mesh4), distributed.replicate(state, mesh4),
                     distributed.shard_batch(x, mesh4))
    y_std = float(np.asarray(y1, np.float64).reshape(-1, 3).std(0).min())
    return {"bn_offset_diff_4_vs_1": max_diff((y4, state4), (y1, state1)), "bn_offset_y_std": y_std}


def _cli_report(out_path):
    """The command line on 4 devices (process 0 writes metrics.json)."""
    import contextlib
    import io

    from jaxconv.cli import main

    cli_out = os.path.join(os.path.dirname(out_path), "cli_run")
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        code = main(["train", "--model", "intro_mlp", "--epochs", "1", "--batch-size", "32", "--devices", "4",
                     "--no-progress", "--out", cli_out])
    with open(os.path.join(cli_out, "metrics.json")) as f:
        return {"code": code, "stdout": text.getvalue(), "metrics": json.load(f)}


def _error_report(mesh4):
    """The messages of the bad cases: indivisible batches, a mesh without a "data" axis."""
    import jax
    from jax.sharding import Mesh

    import jaxconv as jc
    from jaxconv import distributed

    net, opt = model(), optimizer()
    images, labels = data(64)
    ts0 = jc.create_train_state(net, jax.random.PRNGKey(0), (-1, 8, 8, 1), opt)
    step4 = jc.make_train_step(net, opt, mesh=mesh4)
    no_data = Mesh(np.asarray(jax.devices()), ("batch",))
    return {
        "step_batch_10": error_of(lambda: step4(distributed.replicate(ts0, mesh4), (images[:10], labels[:10]))),
        "shard_batch_10": error_of(lambda: distributed.shard_batch((images[:10], labels[:10]), mesh4)),
        "fit_batch_10": error_of(lambda: jc.fit(net, opt, (images, labels), epochs=1, batch_size=10,
                                                progress=False, log=None, mesh=mesh4)),
        "scan_batch_6": error_of(lambda: jc.make_train_step(net, opt, steps_per_call=2, mesh=mesh4)(
            distributed.replicate(ts0, mesh4), (images[:12].reshape(2, 6, 8, 8, 1), labels[:12].reshape(2, 6)))),
        "step_no_data_axis": error_of(lambda: jc.make_train_step(net, opt, mesh=no_data)),
        "fit_no_data_axis": error_of(lambda: jc.fit(net, opt, (images, labels), epochs=1, batch_size=16,
                                                    progress=False, log=None, mesh=no_data)),
        "shard_no_data_axis": error_of(lambda: distributed.shard_batch((images, labels), no_data)),
        "too_many_devices": error_of(lambda: distributed.data_mesh(8)),
    }


def sharded(out_path):
    """The 4-device report (see the module docstring), written as JSON to ``out_path``."""
    from jaxconv import distributed

    mesh4 = distributed.data_mesh()
    report = _training_report(mesh4)
    report.update(_batch_norm_offset_report(mesh4))
    report["cli"] = _cli_report(out_path)
    report["errors"] = _error_report(mesh4)
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)


def _folder_report(out_dir, mesh, pid):
    """Trains from an image folder on the mesh; saves the params and the rows this process read."""
    from jaxconv import distributed
    from tests.imagefolder import write_digits_folder

    root = os.path.join(out_dir, "digits_png")
    if distributed.is_primary():
        write_digits_folder(root)
    distributed.barrier(mesh)  # the folder exists for every process
    ts, read = folder_fit(root, mesh)
    np.savez(os.path.join(out_dir, f"folder_params_{pid}.npz"), **flat(ts.params))
    np.savez(os.path.join(out_dir, f"folder_rows_{pid}.npz"),
             **{f"{kind}_{i}": a for i, (images, labels) in enumerate(read)
                for kind, a in (("images", images), ("labels", labels))})


def distributed(out_dir):
    from jaxconv import distributed

    # Reads JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; before any device use.
    assert distributed.initialize(initialization_timeout=60)
    import jax

    pid = jax.process_index()
    mesh = distributed.data_mesh()
    ts_global = train_steps(mesh, feed="global")
    ts_local = train_steps(mesh, feed="local")
    ts_fit, history = run_fit(mesh)
    arrays = {f"steps/{k}": v for k, v in flat(ts_local.params).items()}
    arrays.update({f"state/{k}": v for k, v in flat(ts_local.state).items()})
    arrays.update({f"global/{k}": v for k, v in flat(ts_global.params).items()})
    arrays.update({f"fit/{k}": v for k, v in flat(ts_fit.params).items()})
    np.savez(os.path.join(out_dir, f"params_{pid}.npz"), **arrays)
    with open(os.path.join(out_dir, f"info_{pid}.json"), "w") as f:
        json.dump({"process_count": jax.process_count(), "device_count": jax.device_count(),
                   "local_device_count": jax.local_device_count(), "mesh": str(mesh.shape),
                   "rows": str(distributed.process_rows(GLOBAL_BATCH, mesh)), "history": history}, f)
    _folder_report(out_dir, mesh, pid)
    checkpoint = os.path.join(out_dir, "checkpoint_by_process_0.npz")
    if distributed.is_primary():  # checkpoints are written once, by process 0
        np.savez(os.path.join(out_dir, f"checkpoint_by_process_{pid}.npz"), **flat(ts_fit))
    distributed.barrier(mesh)  # after it, every process can read what process 0 wrote
    with np.load(checkpoint) as f:
        loaded = dict(f)
    mine = flat(ts_fit)
    assert loaded.keys() == mine.keys() and all(np.array_equal(loaded[k], mine[k]) for k in mine)
    jax.distributed.shutdown()


if __name__ == "__main__":
    mode, target = sys.argv[1], sys.argv[2]
    {"sharded": sharded, "distributed": distributed}[mode](target)
