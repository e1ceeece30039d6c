"""Run directories: the lock between real processes, ownership, overwrite and retention.

Fault injection with real second processes: a process that holds a directory's
lock, then is SIGKILLed. Every test checks that nothing was lost (the files
that were there are still there, byte for byte) and that the message names
the problem.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np
import optax
import pytest

import jaxconv as jc
from jaxconv import checkpoint as ckpt
from jaxconv import rundir

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Takes the lock of argv[1], says so, and waits to be killed.
HOLDER = ("import sys, time\nfrom jaxconv import rundir\n"
          "with rundir.locked(sys.argv[1], context='holder'):\n"
          "    print('locked', flush=True)\n    time.sleep(600)\n")


def hold_lock(directory) -> subprocess.Popen:
    """A real second process that holds ``directory``'s lock until it is killed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline().strip()
    if line != "locked":
        proc.kill()
        raise AssertionError(f"the holder did not take the lock: {line!r} {proc.stderr.read()}")
    return proc


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def snapshot(directory) -> dict[str, bytes]:
    """Every file below ``directory`` (lock files aside) and its bytes."""
    root = pathlib.Path(directory)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != rundir.LOCK_FILE}


def fake_run(directory) -> None:
    """A run directory as ``jaxconv train`` leaves it (a checkpoint, metrics.json, a plot)."""
    checkpoints = pathlib.Path(directory, rundir.CHECKPOINTS)
    checkpoints.mkdir(parents=True)
    ckpt.save(str(checkpoints / "ckpt-000000005.safetensors"), {"w": np.arange(3.0)}, {"fit": {}})
    pathlib.Path(directory, rundir.METRICS_FILE).write_text(json.dumps({"config": {"model": "x"}}))
    pathlib.Path(directory, rundir.PLOTS["history"]).write_bytes(b"\x89PNG\r\n\x1a\n rest")


def test_a_second_writer_fails_at_once_naming_the_holder_and_sigkill_releases_the_lock(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(rundir.DirectoryLockedError) as err:
            with rundir.locked(str(tmp_path), context="second"):
                pass
        message = str(err.value)
        assert message.startswith(f"second: {tmp_path} is in use by another run")
        assert f"PID {holder.pid} on host {socket.gethostname()}" in message
    finally:
        kill(holder)
    # The kernel released the lock with the killed process: the next writer gets it at once.
    with rundir.locked(str(tmp_path), context="next") as path:
        assert json.loads(pathlib.Path(path).read_text())["pid"] == os.getpid()
    assert pathlib.Path(path).read_text() == ""  # released cleanly: no stale holder recorded


def test_fit_takes_the_same_lock_and_refuses_to_mix_runs(tmp_path):
    images = np.random.default_rng(0).random((32, 4, 4, 1), dtype=np.float32)
    train = (images, (images.sum(axis=(1, 2, 3)) > 8).astype(np.int32))
    model = jc.serial(jc.Flatten(), jc.Dense(2))

    def fit(**more):
        return jc.fit(model, optax.sgd(0.1), train, epochs=1, batch_size=16, progress=False, log=None,
                      checkpoint_dir=str(tmp_path), **more)

    first, _ = fit()
    written = snapshot(tmp_path)
    assert list(written) == ["ckpt-000000002.safetensors"]

    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(rundir.DirectoryLockedError, match=f"fit: {tmp_path} is in use by another run "
                                                              rf"\(PID {holder.pid} on host"):
            fit(resume=True)
    finally:
        kill(holder)
    with pytest.raises(rundir.RunDirectoryError, match=r"fit: .* holds 1 checkpoint\(s\) of another run "
                                                        r"\(newest: ckpt-000000002.safetensors\); pass "
                                                        "resume=True"):
        fit()  # a fresh run would mix its checkpoints (and their retention) with these
    assert snapshot(tmp_path) == written  # nothing lost
    again, _ = fit(resume=True)  # the lock is free again after the kill
    assert int(again.step) == int(first.step) == 2
    assert snapshot(tmp_path) == written


def test_claim_refuses_resumes_and_overwrites_only_jaxconvs_files(tmp_path):
    run = tmp_path / "run"
    fake_run(run)
    (run / "notes.txt").write_text("mine")
    (run / rundir.CHECKPOINTS / "README").write_text("mine too")
    before = snapshot(run)
    with pytest.raises(rundir.RunDirectoryError) as err:
        rundir.claim(str(run), resume=False, overwrite=False, context="--out")
    assert str(err.value) == (f"--out: {run} holds another run (1 checkpoint(s) up to step 5, metrics.json, "
                              "1 plot(s)); use --resume to continue it, --overwrite to replace it, or "
                              "another --out")
    assert rundir.claim(str(run), resume=True, overwrite=False, context="--out") == []
    assert snapshot(run) == before

    removed = rundir.claim(str(run), resume=False, overwrite=True, context="--out")
    assert sorted(os.path.relpath(p, run) for p in removed) == [
        "checkpoints/ckpt-000000005.safetensors", "loss_accuracy.png", "metrics.json"]
    assert snapshot(run) == {"checkpoints/README": b"mine too", "notes.txt": b"mine"}
    assert rundir.claim(str(run), resume=False, overwrite=False, context="--out") == []  # no run left


def test_overwrite_also_removes_the_recipe_and_export_files(tmp_path):
    fake_run(tmp_path)
    ckpt.save(str(tmp_path / rundir.BEST_FILE), {"w": np.arange(3.0)}, {"fit": {}})
    (tmp_path / rundir.CSV_FILE).write_text("epoch,train_loss\n1,0.5\n")
    (tmp_path / rundir.EXPORTS["stablehlo"]).write_bytes(b"serialized")
    events = tmp_path / rundir.TENSORBOARD_DIR
    events.mkdir()
    (events / "events.out.tfevents.1.host").write_bytes(b"events")
    (events / "my-notes.txt").write_text("mine")
    with pytest.raises(rundir.RunDirectoryError, match="my-notes.txt does not look like a file jaxconv wrote"):
        rundir.claim(str(tmp_path), resume=False, overwrite=True, context="--out")
    (events / "my-notes.txt").unlink()
    removed = rundir.claim(str(tmp_path), resume=False, overwrite=True, context="--out")
    assert {os.path.relpath(p, tmp_path) for p in removed} >= {
        "best.safetensors", "metrics.csv", "model.stablehlo", "tensorboard/events.out.tfevents.1.host"}
    assert snapshot(tmp_path) == {} and not events.exists()


@pytest.mark.parametrize("foreign", ["metrics.json", "filters.png", "checkpoints", "metrics.csv",
                                     "best.safetensors"])
def test_overwrite_refuses_when_a_jaxconv_name_is_not_jaxconvs_file(tmp_path, foreign):
    fake_run(tmp_path)
    target = tmp_path / foreign
    if target.is_dir():
        for child in target.iterdir():
            child.unlink()
        target.rmdir()
    target.write_text("a file of the user's that happens to have this name")
    before = snapshot(tmp_path)
    with pytest.raises(rundir.RunDirectoryError, match=f"--overwrite: {target} does not look like a file "
                                                       "jaxconv wrote, so nothing in .* was deleted"):
        rundir.claim(str(tmp_path), resume=False, overwrite=True, context="--out")
    assert snapshot(tmp_path) == before


def test_check_output_dir(tmp_path):
    rundir.check_output_dir(str(tmp_path / "new" / "deeper"), context="--out")  # can be created
    assert not (tmp_path / "new").exists()  # checking creates nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(rundir.RunDirectoryError, match=f"--out: {tmp_path}/file is a file, not a directory"):
        rundir.check_output_dir(str(tmp_path / "file"), context="--out")
    with pytest.raises(rundir.RunDirectoryError, match=f"cannot create {tmp_path}/file/run: "
                                                       f"{tmp_path}/file is a file"):
        rundir.check_output_dir(str(tmp_path / "file" / "run"), context="--out")


def test_retention_never_counts_checkpoints_past_the_current_step(tmp_path):
    for step in (2, 4, 6, 12):  # 12: left by an earlier attempt that got further (say, corrupt)
        ckpt.save(ckpt.checkpoint_path(str(tmp_path), step), {"step": np.int32(step)})
    removed = rundir.prune_checkpoints(str(tmp_path), 6, keep=1)
    assert [os.path.basename(p) for p in removed] == ["ckpt-000000002.safetensors", "ckpt-000000004.safetensors"]
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [6, 12]  # the newest of this run stays
    assert rundir.prune_checkpoints(str(tmp_path), 12, keep=None) == []
    with pytest.raises(ValueError, match="prune_checkpoints: keep must be an int >= 1, got 0"):
        rundir.prune_checkpoints(str(tmp_path), 12, keep=0)
