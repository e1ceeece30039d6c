"""Fault injection on ``jaxconv train``: bad values, foreign run directories, a second writer, SIGKILL.

Every probe asserts how it ended (a one-line message naming the problem, exit
status 2, no traceback) and that nothing was lost: the files in the run
directory are still there byte for byte, and the checkpoints that survive a
kill load and equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import pytest

from jaxconv import checkpoint as ckpt
from jaxconv import rundir
from jaxconv.cli import main
from jaxconv.cli import training as cli_training
from tests.test_rundir import fake_run, snapshot

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def no_data(monkeypatch):
    """Loading a data set fails the test: the probes must end before any data is loaded."""

    def load_dataset(*args, **kwargs):
        raise AssertionError("a data set was loaded")

    monkeypatch.setattr(cli_training, "load_dataset", load_dataset)


def one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


BAD_VALUES = [
    (["--epochs", "0"], "jaxconv train: --epochs must be an int >= 1, got 0"),
    (["--epochs", "-1"], "jaxconv train: --epochs must be an int >= 1, got -1"),
    (["--batch-size", "0"], "jaxconv train: --batch-size must be an int >= 1, got 0"),
    (["--seed", str(2**70)], f"jaxconv train: --seed must be an int >= 0 and <= 4294967295, got {2**70}"),
    (["--seed", "-1"], "jaxconv train: --seed must be an int >= 0 and <= 4294967295, got -1"),
    (["--steps-per-call", "0"], "jaxconv train: --steps-per-call must be an int >= 1, got 0"),
    (["--microbatches", "0"], "jaxconv train: --microbatches must be an int >= 1, got 0"),
    (["--microbatches", "3"], "jaxconv train: --microbatches 3 must divide --batch-size 64"),
    (["--checkpoint-every", "0"], "jaxconv train: --checkpoint-every must be an int >= 1, got 0"),
    (["--keep", "0"], "jaxconv train: --keep must be an int >= 1, got 0"),
    (["--devices", "0"], "jaxconv train: --devices must be an int >= 1, got 0"),
    (["--num-processes", "0"], "jaxconv train: --num-processes must be an int >= 1, got 0"),
    (["--process-id", "2", "--num-processes", "2"], "jaxconv train: --process-id must be an int >= 0 and <= 1, got 2"),
    (["--lr", "0"], "jaxconv train: --lr must be a number > 0, got 0.0"),
    (["--lr", "nan"], "jaxconv train: --lr must be a number > 0, got nan"),
    (["--weight-decay", "-1"], "jaxconv train: --weight-decay must be a number >= 0, got -1.0"),
    (["--label-smoothing", "1"], "jaxconv train: --label-smoothing must be a number >= 0 and < 1, got 1.0"),
    (["--augment", "rotate"], "jaxconv train: augment: unknown item 'rotate'"),
    (["--augment", "crop:1,mixup:0"], "jaxconv train: augment: mixup alpha must be a finite number > 0, got '0'"),
    (["--augment", "cutout:0"], "jaxconv train: augment: cutout size must be an int >= 1, got '0'"),
    (["--warmup-steps", "-3"], "jaxconv train: --warmup-steps must be an int >= 0 or a fraction in (0, 1), got '-3'"),
    (["--warmup-steps", "1.0"], "jaxconv train: --warmup-steps must be an int >= 0 or a fraction in (0, 1), got '1.0'"),
    (["--clip-norm", "0"], "jaxconv train: --clip-norm must be a number > 0, got 0.0"),
    (["--ema", "1"], "jaxconv train: --ema must be a number > 0 and < 1, got 1.0"),
    (["--early-stopping", "0"], "jaxconv train: --early-stopping must be an int >= 1, got 0"),
]


@pytest.mark.parametrize("extra, message", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_train_values_are_one_line_before_anything_runs(tmp_path, capsys, no_data, extra, message):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *extra]) == 2
    assert one_line(capsys.readouterr().err).startswith(message)
    assert not out.exists()  # not even the output directory was created


@pytest.mark.parametrize("argv, message", [
    (["verify", "--cases", "0"], "jaxconv verify: --cases must be an int >= 1, got 0"),
    (["verify", "--seed", str(2**70)], "jaxconv verify: --seed must be an int >= 0 and <= 4294967295"),
    (["bench", "--rounds", "0"], "jaxconv bench: --rounds must be an int >= 1, got 0"),
    (["summary", "lenet5", "--num-classes", "0"], "jaxconv summary: --num-classes must be an int >= 1, got 0"),
    (["summary", "lenet5", "--input-shape", "32,0,3"], "jaxconv summary: --input-shape must be comma-separated"),
    (["export", "--batch", "0"], "jaxconv export: --batch must be 'dynamic' or an int >= 1, got '0'"),
])
def test_bad_values_of_the_other_commands(capsys, argv, message):
    assert main(argv) == 2
    assert one_line(capsys.readouterr().err).startswith(message)


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "x"], "jaxconv train: argument --epochs: invalid int value: 'x' (see jaxconv train --help)"),
    (["train", "--resume", "--overwrite"], "jaxconv train: argument --overwrite: not allowed with argument --resume"),
    (["train", "--optimizer", "lbfgs"], "jaxconv train: argument --optimizer: invalid choice: 'lbfgs'"),
])
def test_parse_errors_are_one_line_too(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert one_line(capsys.readouterr().err).startswith(message)


def test_an_output_path_that_is_a_file_is_refused(tmp_path, capsys, no_data):
    (tmp_path / "file").write_text("keep me")
    assert main(["train", "--out", str(tmp_path / "file")]) == 2
    assert one_line(capsys.readouterr().err) == f"jaxconv train: --out: {tmp_path}/file is a file, not a directory"
    assert main(["train", "--out", str(tmp_path / "file" / "run")]) == 2
    assert f"cannot create {tmp_path}/file/run: {tmp_path}/file is a file" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "keep me"


def test_a_directory_with_another_run_is_refused_without_resume_or_overwrite(tmp_path, capsys, no_data):
    fake_run(tmp_path)
    before = snapshot(tmp_path)
    assert main(["train", "--out", str(tmp_path)]) == 2
    message = one_line(capsys.readouterr().err)
    assert message.startswith(f"jaxconv train: --out: {tmp_path} holds another run (1 checkpoint(s) up to step 5")
    assert message.endswith("use --resume to continue it, --overwrite to replace it, or another --out")
    assert snapshot(tmp_path) == before


def test_overwrite_deletes_only_jaxconvs_files_and_refuses_when_unsure(tmp_path, capsys, monkeypatch):
    fake_run(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")

    def load_dataset(*args, **kwargs):  # stop right after the directory was claimed
        raise ValueError("stopped after the claim")

    monkeypatch.setattr(cli_training, "load_dataset", load_dataset)
    (tmp_path / "confusion_matrix.png").write_text("not a PNG: the user's")
    before = snapshot(tmp_path)
    assert main(["train", "--out", str(tmp_path), "--overwrite"]) == 2
    assert "confusion_matrix.png does not look like a file jaxconv wrote" in capsys.readouterr().err
    assert snapshot(tmp_path) == before  # nothing deleted

    (tmp_path / "confusion_matrix.png").unlink()
    assert main(["train", "--out", str(tmp_path), "--overwrite"]) == 2
    captured = capsys.readouterr()
    assert "--overwrite: removed 3 file(s) of the previous run" in captured.out
    assert "stopped after the claim" in captured.err
    assert snapshot(tmp_path) == {"notes.txt": b"mine"}


def test_ctrl_c_is_one_line_and_releases_the_directory(tmp_path, capsys, monkeypatch):
    def load_dataset(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_training, "load_dataset", load_dataset)
    assert main(["train", "--out", str(tmp_path)]) == 130
    assert one_line(capsys.readouterr().err) == "jaxconv train: interrupted"
    with rundir.locked(str(tmp_path), context="next"):  # free again
        pass


# --------------------------------------------------------------------------
# Real processes: a second writer while a training holds the directory, then SIGKILL and resume.

TRAIN = ["train", "--model", "intro_mlp", "--epochs", "3", "--batch-size", "32", "--checkpoint-every", "10",
         "--keep", "100", "--no-progress", "--no-plots"]


def start_training(out, cache) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               JAXCONV_COMPILATION_CACHE=str(cache))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "jaxconv", *TRAIN, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, prefix: str) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"the training never printed {prefix!r}: {lines} {proc.stderr.read()}")


def arrays_by_step(out) -> dict[int, dict]:
    return {step: ckpt.load_arrays(path)
            for step, path in ckpt.list_checkpoints(os.path.join(out, rundir.CHECKPOINTS))}


def assert_same_arrays(got: dict, want: dict, what: str) -> None:
    assert sorted(got) == sorted(want), what
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].tobytes() == want[name].tobytes(), (what, name)


@pytest.mark.slow
def test_second_writer_is_refused_then_sigkill_frees_the_directory_and_resume_is_bitwise(tmp_path, capsys):
    ref, run = tmp_path / "reference", tmp_path / "run"
    assert main([*TRAIN, "--out", str(ref)]) == 0  # the uninterrupted run
    reference = arrays_by_step(ref)
    capsys.readouterr()

    first = start_training(run, tmp_path / "cache")
    try:
        wait_for(first, "epoch   1/3")  # after its epoch-end checkpoint
        os.kill(first.pid, signal.SIGSTOP)  # frozen while it holds the lock
        before = snapshot(run)
        for extra in ([], ["--resume"], ["--overwrite"]):
            assert main([*TRAIN, "--out", str(run), *extra]) == 2, extra
            message = one_line(capsys.readouterr().err)
            assert message.startswith(f"jaxconv train: --out: {run} is in use by another run "
                                      f"(PID {first.pid} on host {socket.gethostname()}"), message
        assert snapshot(run) == before  # the second writers touched nothing
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()

    survivors = arrays_by_step(run)
    assert 44 in survivors  # the end of epoch 1
    for step, arrays in survivors.items():  # whatever the killed run wrote is intact and right
        assert_same_arrays(arrays, reference[step], f"checkpoint {step} after the kill")

    assert main([*TRAIN, "--out", str(run), "--resume"]) == 0  # gets the lock the kill released
    assert f"resumed from {run}/checkpoints/ckpt-" in capsys.readouterr().out
    resumed = arrays_by_step(run)
    assert sorted(resumed) == sorted(reference) and max(resumed) == 132
    for step, arrays in resumed.items():
        assert_same_arrays(arrays, reference[step], f"checkpoint {step} after resuming")
    ref_history, run_history = ([{k: v for k, v in record.items() if k != "seconds"}
                                 for record in json.loads((d / rundir.METRICS_FILE).read_text())["history"]]
                                for d in (ref, run))
    assert run_history == ref_history and len(run_history) == 3
