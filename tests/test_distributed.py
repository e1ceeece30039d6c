"""Data-parallel and multi-process training (jaxconv.distributed, issue 8).

Multi-device checks run in subprocesses: the device count is fixed when JAX
starts (4 simulated CPU devices through ``XLA_FLAGS``), and a multi-process
run needs separate processes joined by ``jax.distributed.initialize`` on
loopback, with gloo CPU collectives. The worker is tests/distributed_worker.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

import jaxconv as jc
from jaxconv import distributed
from tests import distributed_worker as worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")
TOL = 1e-5


def _env(**extra):
    env = dict(os.environ)
    for name in ("XLA_FLAGS", distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        env.pop(name, None)
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), **extra)
    return env


# --------------------------------------------------------------------------
# Must show 1 (and 3): 4 simulated devices vs 1, in a subprocess.


@pytest.fixture(scope="module")
def sharded_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "report.json"
    proc = subprocess.run([sys.executable, WORKER, "sharded", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=240,
                          env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_four_devices_equal_one_device(sharded_report):
    r = sharded_report
    assert r["devices"] == 4
    assert "'data': 4" in r["params_sharding"] and "spec=P()" in r["params_sharding"]
    assert "spec=P()" in r["bn_state_sharding"]
    # BatchNorm ran in training mode: its running statistics moved away from their init.
    assert any("batch_norm" in k for k in r["bn_state_keys"]), r["bn_state_keys"]
    assert r["bn_state_moved"] > 1e-3
    assert r["all_reduce_ops"] >= 1  # the 4-device step is a distributed computation
    assert r["params_diff_4_vs_1"] <= TOL
    assert r["state_diff_4_vs_1"] <= TOL
    assert r["opt_state_diff_4_vs_1"] <= TOL
    assert r["params_diff_scan4_vs_1"] <= TOL
    assert r["params_diff_2_vs_1"] <= TOL
    assert r["params_diff_usermesh_vs_1"] <= TOL


@pytest.mark.slow
def test_batch_norm_with_a_large_offset_on_four_devices_equals_one(sharded_report):
    # Mean, then variance of the centred values: both global reductions over the sharded batch.
    # The float32 spacing at 1e4 is 1e-3: the two reduction orders give means a few of those
    # apart. Per-device statistics (8 examples each) would move the outputs by about 0.1.
    assert sharded_report["bn_offset_diff_4_vs_1"] <= 1e-2
    assert abs(sharded_report["bn_offset_y_std"] - 1) <= 0.01


@pytest.mark.slow
def test_checkpoint_from_four_devices_resumes_on_two(sharded_report):
    assert sharded_report["resume_diff_2_vs_1"] <= TOL


@pytest.mark.slow
def test_fit_with_mesh_equals_fit(sharded_report):
    r = sharded_report
    assert r["fit_params_diff"] <= TOL
    assert r["fit_history_diff"] <= 1e-4
    assert all(0.0 <= a <= 1.0 for a in r["fit_test_accuracy"])


@pytest.mark.slow
def test_cli_trains_on_four_devices(sharded_report):
    cli = sharded_report["cli"]
    assert cli["code"] == 0
    assert "backend cpu, 4 device(s), 1 process(es)" in cli["stdout"]
    assert "final test accuracy" in cli["stdout"]
    assert "batch 32" in cli["stdout"] and len(cli["metrics"]["history"]) == 1


# --------------------------------------------------------------------------
# Must show 3: clear errors.


@pytest.mark.slow
def test_indivisible_global_batch_is_a_value_error(sharded_report):
    errors = sharded_report["errors"]
    for case in ("shard_batch_10", "fit_batch_10"):  # jaxconv's own message
        msg = errors[case]
        assert msg is not None and msg.startswith("ValueError"), (case, msg)
        assert "global batch size 10 is not divisible by the 4 devices" in msg, msg
        assert "'data' axis" in msg and "multiple of 4" in msg
    assert errors["fit_batch_10"].startswith("ValueError: fit:")
    # The compiled step is the jax.jit function itself: an unsharded batch that
    # cannot be split meets JAX's own sharding check, a ValueError naming the sizes.
    for case, size in (("step_batch_10", 10), ("scan_batch_6", 6)):
        msg = errors[case]
        assert msg is not None and msg.startswith("IndivisibleError"), (case, msg)
        assert f"dimension size is {size}" in msg and "partitioned 4 times" in msg, msg


@pytest.mark.slow
def test_missing_data_axis_and_too_many_devices(sharded_report):
    errors = sharded_report["errors"]
    for case, where in (("step_no_data_axis", "make_train_step"), ("fit_no_data_axis", "fit"),
                        ("shard_no_data_axis", "batch_sharding")):
        msg = errors[case]
        assert msg.startswith(f"ValueError: {where}:"), msg
        assert "needs a 'data' axis" in msg and "('batch',)" in msg
    assert errors["too_many_devices"].startswith("ValueError: data_mesh: asked for 8 devices but only 4")
    assert "xla_force_host_platform_device_count" in errors["too_many_devices"]


def test_missing_data_axis_in_process():
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("batch",))
    with pytest.raises(ValueError, match=r"make_train_step: the mesh needs a 'data' axis .* \('batch',\)"):
        jc.make_train_step(worker.model(), worker.optimizer(), mesh=mesh)
    with pytest.raises(ValueError, match="evaluate|make_eval_step"):
        jc.evaluate(worker.model(), {}, {}, worker.data(4), mesh=mesh)
    with pytest.raises(TypeError, match="make_train_step: expected a jax.sharding.Mesh, got str"):
        jc.make_train_step(worker.model(), worker.optimizer(), mesh="data")


def test_check_mesh_and_batch_size_name_their_context():
    with pytest.raises(TypeError, match="my_step: expected a jax.sharding.Mesh, got str"):
        distributed.check_mesh("data", context="my_step")
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("batch",))
    with pytest.raises(ValueError, match="my_step: the mesh needs a 'data' axis"):
        distributed.check_batch_size(8, mesh, context="my_step")


def test_bad_device_counts_and_batches():
    with pytest.raises(ValueError, match="data_mesh: devices must be an int >= 1, got 0"):
        distributed.data_mesh(0)
    with pytest.raises(ValueError, match=r"data_mesh: asked for \d+ devices but only"):
        distributed.data_mesh(jax.device_count() + 1)
    with pytest.raises(ValueError, match="duplicates"):
        distributed.data_mesh([jax.devices()[0]] * 2)
    with pytest.raises(ValueError, match=r"same batch size on axis 0, got sizes \[3, 4\]"):
        distributed.shard_batch((np.zeros((4, 2)), np.zeros(3)), distributed.data_mesh(1))


def test_initialize_arguments(monkeypatch):
    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False  # nothing asked for: a single-process run
    with pytest.raises(ValueError, match=r"got \['coordinator_address'\] but not \['num_processes', 'process_id'\]"):
        distributed.initialize("127.0.0.1:1234")
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
    with pytest.raises(ValueError, match=r"but not \['process_id'\]"):
        distributed.initialize("127.0.0.1:1234")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "2")
    with pytest.raises(ValueError, match="initialize: process_id must be an int >= 0 and <= 1, got 2"):
        distributed.initialize("127.0.0.1:1234")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "one")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID must be an integer, got 'one'"):
        distributed.initialize("127.0.0.1:1234")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "0")
    with pytest.raises(ValueError, match="coordinator_address must be 'host:port', got 'localhost'"):
        distributed.initialize("localhost")


def test_cli_device_and_host_errors(monkeypatch, capsys, tmp_path):
    from jaxconv.cli import main

    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    too_many = jax.device_count() + 1
    assert main(["train", "--devices", str(too_many), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"jaxconv train: data_mesh: asked for {too_many} devices but only" in err
    assert main(["train", "--coordinator", "127.0.0.1:1234", "--num-processes", "2",
                 "--out", str(tmp_path)]) == 2
    assert "got ['coordinator_address', 'num_processes'] but not ['process_id']" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "metrics.json")


def test_callable_module_is_the_combinator():
    a, b = jc.Dense(2), jc.Dense(3)
    layer = jc.parallel(a, b)
    assert layer.kind == "parallel"
    out, _, _ = layer.init(jax.random.PRNGKey(0), ((-1, 4), (-1, 5)))
    assert out == ((-1, 2), (-1, 3))
    assert jc.distributed.data_mesh is distributed.data_mesh
    assert distributed.is_primary() and distributed.process_rows(8, distributed.data_mesh(1)) == slice(0, 8)
    assert distributed.barrier(distributed.data_mesh(1)) is None  # one process: nothing to wait for


# --------------------------------------------------------------------------
# Must show 2: two processes on loopback (jax.distributed, gloo CPU collectives).


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiprocess")
    port = _free_port()
    procs = []
    try:
        for pid in range(2):
            env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2",
                       JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                       JAX_PROCESS_ID=str(pid))
            log = open(out / f"log_{pid}.txt", "w")
            procs.append((subprocess.Popen([sys.executable, WORKER, "distributed", str(out)], cwd=ROOT,
                                           env=env, stdout=log, stderr=subprocess.STDOUT), log))
        codes = [p.wait(timeout=240) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
            log.close()
    logs = [(out / f"log_{pid}.txt").read_text()[-3000:] for pid in range(2)]
    assert codes == [0, 0], logs
    return out


def _load(path):
    with np.load(path) as f:
        return dict(f)


@pytest.mark.slow
def test_two_processes_equal_single_process(two_process_run):
    out = two_process_run
    infos = [json.loads((out / f"info_{pid}.json").read_text()) for pid in range(2)]
    for pid, info in enumerate(infos):
        assert (info["process_count"], info["device_count"], info["local_device_count"]) == (2, 4, 2)
        # Each process feeds its own half of every global batch of 32.
        assert info["rows"] == str(slice(16 * pid, 16 * pid + 16))
    p0, p1 = _load(out / "params_0.npz"), _load(out / "params_1.npz")
    assert p0.keys() == p1.keys()
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)  # identical on both processes

    single = worker.train_steps()
    reference = {f"steps/{k}": v for k, v in worker.flat(single.params).items()}
    reference.update({f"state/{k}": v for k, v in worker.flat(single.state).items()})
    reference.update({f"global/{k}": v for k, v in worker.flat(single.params).items()})
    ts_fit, history = worker.run_fit()
    reference.update({f"fit/{k}": v for k, v in worker.flat(ts_fit.params).items()})
    assert reference.keys() == p0.keys()
    worst = max(float(np.max(np.abs(p0[k].astype(np.float64) - reference[k]))) for k in p0)
    assert worst <= TOL, worst
    for h_multi, h_single in zip(infos[0]["history"], history):
        assert abs(h_multi["test_accuracy"] - h_single["test_accuracy"]) <= 1e-6
        assert abs(h_multi["train_loss"] - h_single["train_loss"]) <= 1e-4


@pytest.mark.slow
def test_two_processes_read_disjoint_halves_of_a_folder_and_train_as_one(two_process_run):
    root = str(two_process_run / "digits_png")
    single, batches = worker.folder_fit(root, shard=(0, 1))
    halves = [_load(two_process_run / f"folder_rows_{pid}.npz") for pid in range(2)]
    for i, (images, labels) in enumerate(batches):
        h0, h1 = (h[f"images_{i}"] for h in halves)
        assert len(h0) == len(h1) == worker.GLOBAL_BATCH // 2
        # Process 0 read the first half of the global batch, process 1 the second: disjoint rows
        # whose union, in order, is the global batch.
        np.testing.assert_array_equal(np.concatenate([h0, h1]), images)
        np.testing.assert_array_equal(np.concatenate([h[f"labels_{i}"] for h in halves]), labels)
    reference = worker.flat(single.params)
    for pid in range(2):
        params = _load(two_process_run / f"folder_params_{pid}.npz")
        assert params.keys() == reference.keys()
        worst = max(float(np.max(np.abs(params[k].astype(np.float64) - reference[k]))) for k in params)
        assert worst <= TOL, (pid, worst)


@pytest.mark.slow
def test_checkpoint_written_by_process_zero_only(two_process_run):
    # Each worker also reloads process 0's file after distributed.barrier and checks it
    # equals its own state (the run would have failed otherwise).
    written = sorted(f for f in os.listdir(two_process_run) if f.startswith("checkpoint"))
    assert written == ["checkpoint_by_process_0.npz"]
    ckpt = _load(two_process_run / written[0])
    fit_params = {k[len("fit/"):]: v for k, v in _load(two_process_run / "params_1.npz").items()
                  if k.startswith("fit/")}
    for k, v in fit_params.items():
        np.testing.assert_array_equal(ckpt[".params" + k], v)
