"""Training on an image folder: ``fit`` with ``Loader``s and ``jaxconv train --data``.

The embedded digits written as PNG files (``tests/imagefolder.py``) train to
the in-memory run's accuracy under the same settings; a folder run's
checkpoints keep the loader's state; bad combinations are refused.
(benchmarks/folder_digits.py compares the two paths over seeds and 30 epochs.)
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxconv as jc
from jaxconv import checkpoint as ckpt
from jaxconv.cli import main
from jaxconv.data import Loader, image_folder
from jaxconv.recipes import make_optimizer
from jaxconv.train import fit
from tests.imagefolder import random_folder, write_digits_folder

ROOT = pathlib.Path(__file__).parent.parent
EPOCHS = 4
COMMON = ["--epochs", str(EPOCHS), "--no-progress", "--no-plots"]


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_digits_folder(str(root))
    return str(root)


def final_accuracy(out) -> float:
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)["final_test_accuracy"]


@pytest.mark.parametrize("seed", [1])
def test_folder_run_reaches_the_in_memory_accuracy(digits_dir, tmp_path, seed):
    memory, folder = str(tmp_path / "memory"), str(tmp_path / "folder")
    assert main(["train", "--out", memory, "--seed", str(seed), *COMMON]) == 0
    assert main(["train", "--data", digits_dir, "--image-size", "8", "--channels", "1", "--augment", "crop:1",
                 "--out", folder, "--seed", str(seed), *COMMON]) == 0
    got, want = final_accuracy(folder), final_accuracy(memory)
    assert want > 0.9 and abs(got - want) <= 0.02, (got, want)
    with open(os.path.join(folder, "metrics.json")) as f:
        config = json.load(f)["config"]
    assert config["dataset"] == "folder" and config["folder"]["classes"] == [str(i) for i in range(10)]
    assert config["input_shape"] == [-1, 8, 8, 1]
    # Every checkpoint keeps the loader's state: after the last epoch, the start of the next.
    meta = ckpt.read_metadata(ckpt.latest_checkpoint(os.path.join(folder, "checkpoints")))
    assert meta["fit"]["data_state"] == {"epoch": EPOCHS, "position": 0}


def tiny_folder(root):
    random_folder(str(root), {"a": 12, "b": 12}, size=(8, 8))
    return image_folder(str(root), image_size=8, val_fraction=0.25)


def test_fit_with_steps_per_call_skips_the_remainder_and_records_the_state(tmp_path):
    """18 train images, batch 4: 4 batches an epoch, K=3 trains 3 of them; each epoch starts afresh."""
    folder = tiny_folder(tmp_path / "data")
    train = Loader(folder.train, batch_size=4, seed=5)
    val = Loader(folder.val, batch_size=4, shuffle=False, drop_remainder=False)
    model = jc.serial(jc.Conv(2, 3), jc.Relu(), jc.Flatten(), jc.Dense(2))
    ts, history = fit(model, make_optimizer("sgd", 0.1), train, test=val, epochs=2, steps_per_call=3,
                      progress=False, log=None, checkpoint_dir=str(tmp_path / "ckpt"))
    assert int(ts.step) == 6 and len(history) == 2 and 0.0 <= history[-1]["test_accuracy"] <= 1.0
    meta = ckpt.read_metadata(ckpt.latest_checkpoint(str(tmp_path / "ckpt")))
    assert meta["fit"]["data_state"] == {"epoch": 1, "position": 3}


def test_fit_refuses_a_padded_training_loader_and_another_batch_size(tmp_path):
    folder = tiny_folder(tmp_path / "data")
    model = jc.serial(jc.Flatten(), jc.Dense(2))
    padded = Loader(folder.train, batch_size=4, drop_remainder=False)
    with pytest.raises(ValueError, match="drop_remainder=True"):
        fit(model, make_optimizer("sgd", 0.1), padded, epochs=1, progress=False, log=None)
    with pytest.raises(ValueError, match="differs from the Loader's batch_size 4"):
        fit(model, make_optimizer("sgd", 0.1), Loader(folder.train, batch_size=4), batch_size=8, epochs=1,
            progress=False, log=None)


@pytest.mark.parametrize("argv, message", [
    (["--image-size", "8"], "--image-size applies to an image folder"),
    (["--data", "{root}"], "--data needs --image-size"),
    (["--data", "{root}/missing", "--image-size", "8"], "is not a folder"),
    (["--data", "{root}", "--image-size", "8,x"], "--image-size"),
])
def test_train_refuses_bad_folder_options(tmp_path, capsys, argv, message):
    argv = [a.format(root=tmp_path) for a in argv]
    assert main(["train", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("steps_per_call", [1, 2])
def test_mesh_loader_batches_equal_a_one_device_run(tmp_path, steps_per_call):
    """With a one-device mesh the batches (stacked for K > 1) go through host_local_batch; the parameters match."""
    folder = tiny_folder(tmp_path / "data")
    model = jc.serial(jc.Conv(2, 3), jc.Relu(), jc.Flatten(), jc.Dense(2))
    results = []
    for mesh in (None, jc.distributed.data_mesh(1)):
        ts, _ = fit(model, make_optimizer("sgd", 0.1), Loader(folder.train, batch_size=4, seed=2), epochs=1,
                    progress=False, log=None, mesh=mesh, steps_per_call=steps_per_call)
        assert int(ts.step) == 4
        results.append(jax.tree_util.tree_leaves(jc.distributed.fetch(ts.params)))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_worker_processes_train_bitwise_as_the_main_process(tmp_path):
    """--workers 2 (Grain worker processes) and --workers 0 end with the same checkpoint, byte for byte."""
    data = str(tmp_path / "data")
    random_folder(data, {"a": 20, "b": 20, "c": 20}, size=(10, 9))
    final = []
    for workers in (0, 2):
        out = str(tmp_path / f"run{workers}")
        assert main(["train", "--data", data, "--image-size", "8", "--host-augment", "--workers", str(workers),
                     "--batch-size", "8", "--epochs", "2", "--out", out, "--no-progress", "--no-plots"]) == 0
        final.append(ckpt.load_arrays(ckpt.latest_checkpoint(os.path.join(out, "checkpoints"))))
    assert sorted(final[0]) == sorted(final[1])
    assert all(final[0][k].tobytes() == final[1][k].tobytes() for k in final[0])


def test_resuming_with_a_loader_of_another_seed_is_refused(tmp_path):
    folder = tiny_folder(tmp_path / "data")
    model = jc.serial(jc.Flatten(), jc.Dense(2))
    directory = str(tmp_path / "ckpt")
    fit(model, make_optimizer("sgd", 0.1), Loader(folder.train, batch_size=4, seed=1), epochs=1, progress=False,
        log=None, checkpoint_dir=directory)
    assert ckpt.read_metadata(ckpt.latest_checkpoint(directory))["fit"]["data_seed"] == 1
    with pytest.raises(ValueError, match="Loader of seed 1, this run's Loader has seed 2"):
        fit(model, make_optimizer("sgd", 0.1), Loader(folder.train, batch_size=4, seed=2), epochs=2,
            progress=False, log=None, checkpoint_dir=directory, resume=True)


@pytest.mark.slow
def test_cli_folder_run_on_two_devices_equals_one(tmp_path):
    """jaxconv train --data --devices 2 (two simulated CPU devices, the batch split over them) ends
    within float32 reduction-order noise of --devices 1, evaluating the val split on the mesh too."""
    data = str(tmp_path / "data")
    random_folder(data, {"a": 16, "b": 16}, size=(8, 8))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    params = []
    for devices in (1, 2):
        out = str(tmp_path / f"run{devices}")
        proc = subprocess.run([sys.executable, "-m", "jaxconv", "train", "--data", data, "--image-size", "8",
                               "--batch-size", "8", "--epochs", "2", "--devices", str(devices), "--out", out,
                               "--no-progress", "--no-plots"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"{devices} device(s)" in proc.stdout and "final test accuracy" in proc.stdout
        params.append(ckpt.load_arrays(ckpt.latest_checkpoint(os.path.join(out, "checkpoints"))))
    names = [k for k in params[0] if k.startswith("params/")]
    assert names
    for name in names:
        np.testing.assert_allclose(params[1][name], params[0][name], atol=1e-5, err_msg=name)
