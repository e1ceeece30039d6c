"""Crash safety of a run on an image folder: SIGKILL at random points, resume, compare bitwise.

The child (``tests/resume_worker.py --folder``) trains 24 steps from a
``Loader`` (32 PNG images, batches of 4, host and device augmentation, a
checkpoint every 3 steps and at each epoch end, the validation split scored
every epoch). It is killed twice at random points (right after a randomly
chosen checkpoint, then a random time into the resumed run, wherever it is:
inside a step, a read, a checkpoint write) and resumed to the end; the final
checkpoint must equal an uninterrupted run's byte for byte in every tensor,
its history too (the Loader's stream restarts where the checkpoint left it).
The random points come from a seed shown in every failure message.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from jaxconv import checkpoint as ckpt
from tests.imagefolder import random_folder
from tests.test_resume import FINAL_STEP, assert_all_checkpoints_readable, final_arrays, kill_after, run_to_end, start


def kill_at_random_time(proc, delay):
    """SIGKILLs ``proc`` ``delay`` seconds after its first checkpoint (or when it ends first)."""
    line = proc.stdout.readline()
    assert line.startswith("saved"), (line, proc.stderr.read() if not line else "")
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_folder_run_sigkilled_at_random_points_resumes_bitwise(tmp_path):
    seed = random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    data = str(tmp_path / "images")
    random_folder(data, {c: 12 for c in "abcd"}, size=(11, 9))
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    folder = ("--folder", data)
    run_to_end(start(ref_dir, *folder))

    first = rng.choice([3, 6, 8, 9, 12])
    kill_after(start(run_dir, *folder), f"saved {first}")
    assert first in assert_all_checkpoints_readable(run_dir), seed
    kill_at_random_time(start(run_dir, *folder, "--resume"), rng.uniform(0.0, 1.5))
    steps = assert_all_checkpoints_readable(run_dir)
    assert max(steps) >= first, (seed, steps)

    run_to_end(start(run_dir, *folder, "--resume"))
    got, got_meta = final_arrays(run_dir)
    want, want_meta = final_arrays(ref_dir)
    assert sorted(got) == sorted(want), seed
    for name in want:
        assert got[name].tobytes() == want[name].tobytes(), f"{name} differs after resuming (seed {seed})"
    assert int(got["step"]) == FINAL_STEP
    assert got_meta["fit"]["history"] == [
        dict(r, seconds=g["seconds"]) for r, g in zip(want_meta["fit"]["history"], got_meta["fit"]["history"])
    ], seed
    assert got_meta["fit"]["data_state"] == want_meta["fit"]["data_state"] == {"epoch": 3, "position": 0}
    assert "test_accuracy" in want_meta["fit"]["history"][-1]
    assert ckpt.is_complete(ckpt.latest_checkpoint(str(run_dir)))
