"""Crash safety: SIGKILL a training process at several points, resume, compare bitwise.

The child (``tests/resume_worker.py``) trains a tiny CNN for 24 steps with
augmentation, a one-cycle AdamW schedule and a checkpoint every 3 steps and at
each epoch end (8 steps), keeping 2. It is killed

1. soon after its mid-epoch checkpoint at step 6 (wherever it then is),
2. half-way through writing a checkpoint (its temporary file is half written),
3. soon after the epoch-end checkpoint at step 16,

and resumed each time; the final checkpoint must equal, byte for byte in every
tensor (params, optimizer state, step, key), that of an uninterrupted run. After
every kill, every checkpoint file in the directory must load.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxconv import checkpoint as ckpt

WORKER = pathlib.Path(__file__).with_name("resume_worker.py")
ROOT = WORKER.parent.parent
FINAL_STEP = 24


def start(directory, *extra):
    # The children share a persistent compilation cache (the reference run fills
    # it), so each resumed process starts in seconds instead of recompiling.
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(directory.parent / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return subprocess.Popen([sys.executable, str(WORKER), "--dir", str(directory), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def kill_after(proc, marker, timeout=120.0):
    """Reads the child's output until a line starting with ``marker``, then SIGKILLs it."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.startswith(marker):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
            return lines
    proc.kill()
    raise AssertionError(f"child never printed {marker!r}; output {lines}, stderr {proc.stderr.read()}")


def run_to_end(proc):
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert out.strip().endswith("done"), out
    return out


def assert_all_checkpoints_readable(directory):
    found = ckpt.list_checkpoints(str(directory))
    assert found, "no checkpoint written"
    for _, path in found:
        assert ckpt.is_complete(path), path
        arrays = ckpt.load_arrays(path)
        assert "params/conv0/kernel" in arrays and "opt_state/0/mu/conv0/kernel" in arrays
        assert ckpt.read_metadata(path)["fit"]["step"] == int(arrays["step"])
    return [s for s, _ in found]


def final_arrays(directory):
    path = ckpt.latest_checkpoint(str(directory))
    assert path == ckpt.checkpoint_path(str(directory), FINAL_STEP)
    return ckpt.load_arrays(path), ckpt.read_metadata(path)


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_is_bitwise_identical(tmp_path):
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    run_to_end(start(ref_dir))  # the uninterrupted run

    # 1. killed soon after the mid-epoch checkpoint of step 6.
    kill_after(start(run_dir), "saved 6")
    assert 6 in assert_all_checkpoints_readable(run_dir)

    # 2. resumed, then killed half-way through its second checkpoint write.
    lines = kill_after(start(run_dir, "--resume", "--hang-in-write", "2"), "in-write")
    hung_step = int(lines[-1].split()[1])
    temporaries = [p for p in os.listdir(run_dir) if p.startswith(ckpt.TMP_PREFIX)]
    assert temporaries, "the kill should have left a half-written temporary file"
    assert not os.path.exists(ckpt.checkpoint_path(str(run_dir), hung_step))
    assert_all_checkpoints_readable(run_dir)

    # 3. resumed (cleaning the temporary file), killed after the epoch-end checkpoint of step 16.
    kill_after(start(run_dir, "--resume"), "saved 16")
    assert not [p for p in os.listdir(run_dir) if p.startswith(ckpt.TMP_PREFIX)]
    assert_all_checkpoints_readable(run_dir)

    # 4. resumed to the end.
    run_to_end(start(run_dir, "--resume"))
    assert_all_checkpoints_readable(run_dir)

    got, got_meta = final_arrays(run_dir)
    want, want_meta = final_arrays(ref_dir)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].tobytes() == want[name].tobytes(), f"{name} differs after resuming"
    assert int(got["step"]) == FINAL_STEP
    # The per-epoch training metrics are the same too (the partial sums survive a resume).
    for a, b in zip(got_meta["fit"]["history"], want_meta["fit"]["history"]):
        assert a["train_loss"] == b["train_loss"] and a["train_accuracy"] == b["train_accuracy"]
    assert not np.array_equal(got["params/conv0/kernel"], np.zeros_like(got["params/conv0/kernel"]))


@pytest.mark.slow
def test_early_stopping_killed_and_resumed_stops_at_the_same_epoch(tmp_path):
    """EarlyStopping's patience counter lives in the checkpoints: a run SIGKILLed after the
    checkpoint of an epoch that did not improve, then resumed, stops where the uninterrupted one did."""
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    out = run_to_end(start(ref_dir, "--early-stopping"))
    waits = [tuple(map(int, line.split()[1::2])) for line in out.splitlines() if line.startswith("epoch ")]
    stopped = int(next(line.split()[1] for line in out.splitlines() if line.startswith("stopped ")))
    assert stopped < 12 and waits[-1] == (stopped, 2)  # patience 2 ran out before the last epoch
    # The first epoch that did not improve: killed right after its checkpoint, with wait 1 saved in it.
    epoch = next(e for e, w in waits if w == 1)
    kill_after(start(run_dir, "--early-stopping"), f"saved {epoch * 8}")
    meta = ckpt.read_metadata(ckpt.latest_checkpoint(str(run_dir)))
    assert meta["fit"]["epochs_done"] == epoch and meta["fit"]["callbacks"]["EarlyStopping"]["wait"] == 1
    resumed = run_to_end(start(run_dir, "--early-stopping", "--resume"))
    assert f"stopped {stopped}" in resumed
    got, want = ckpt.latest_checkpoint(str(run_dir)), ckpt.latest_checkpoint(str(ref_dir))
    assert os.path.basename(got) == os.path.basename(want) == f"ckpt-{stopped * 8:09d}.safetensors"
    a, b = ckpt.load_arrays(got), ckpt.load_arrays(want)
    assert all(a[name].tobytes() == b[name].tobytes() for name in b)
    assert ckpt.read_metadata(got)["fit"]["stopped"] is True
    # Resuming a stopped run trains no further.
    assert "stopped" in run_to_end(start(run_dir, "--early-stopping", "--resume"))
    assert ckpt.latest_checkpoint(str(run_dir)) == got
