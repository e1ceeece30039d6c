"""``jaxconv convert`` (torchvision weights into a run) and ``jaxconv train --init-from``."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
import safetensors.numpy

from jaxconv import checkpoint as ckpt
from jaxconv.cli import main
from jaxconv.cli.training import load_run
from jaxconv.convert import load_torch_state_dict
from jaxconv.models import resnet18
from tests.torchvision_ref import import_torchvision


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    """torchvision's resnet18 (random init, 1000 classes) as a .safetensors state dict."""
    model = import_torchvision().models.resnet18(weights=None)
    path = str(tmp_path_factory.mktemp("weights") / "resnet18.safetensors")
    safetensors.numpy.save_file({k: v.numpy() for k, v in model.state_dict().items()}, path)
    return path


def test_convert_writes_a_run_that_loads_with_the_converted_weights(resnet18_weights, tmp_path, capsys):
    out = str(tmp_path / "converted")
    assert main(["convert", "--model", "resnet18", "--torch", resnet18_weights, "--out", out,
                 "--input-shape", "64,64,3"]) == 0
    assert "resnet18 (1000 classes, input (64, 64, 3))" in capsys.readouterr().out
    run = load_run(out)
    assert run.config["model"] == "resnet18" and run.config["input_shape"] == [-1, 64, 64, 3]
    params, state = load_torch_state_dict(resnet18(1000), (-1, 64, 64, 3), resnet18_weights)
    jax.tree_util.tree_map(np.testing.assert_array_equal, run.train_state.params, params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, run.train_state.state, state)

    assert main(["evaluate", "--out", out]) == 1  # no data set to score it on
    assert "holds converted weights with no data set" in capsys.readouterr().err
    assert main(["convert", "--model", "resnet18", "--torch", resnet18_weights, "--out", out]) == 2
    assert "holds another run" in capsys.readouterr().err  # a run directory belongs to one run


def test_convert_rejects_bad_arguments_before_reading_anything(resnet18_weights, tmp_path, capsys):
    out = str(tmp_path / "x")
    for argv, words in [
        (["--torch", str(tmp_path / "missing.pth")], "--torch"),
        (["--torch", resnet18_weights, "--input-shape", "64,64"], "--input-shape must be an int or a sequence of 3"),
        (["--torch", resnet18_weights, "--num-classes", "0"], "--num-classes must be an int >= 1"),
    ]:
        assert main(["convert", "--model", "resnet18", "--out", out, *argv]) == 2
        assert words in capsys.readouterr().err
    assert not os.path.exists(out)


@pytest.mark.slow
def test_train_init_from_a_converted_run_replaces_what_does_not_fit(resnet18_weights, tmp_path, capsys):
    converted = str(tmp_path / "converted")
    assert main(["convert", "--model", "resnet18", "--torch", resnet18_weights, "--out", converted]) == 0
    out = str(tmp_path / "tuned")
    assert main(["train", "--model", "resnet18", "--init-from", converted, "--epochs", "1", "--batch-size", "128",
                 "--out", out, "--no-progress", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    # Digits are 8x8x1: the RGB stem and the 1000-class head start fresh, every other weight is taken.
    assert f"--init-from {converted}: every weight but conv1/kernel, fc/bias, fc/kernel (fresh)" in printed
    first = ckpt.load(ckpt.list_checkpoints(os.path.join(out, "checkpoints"))[0][1], load_run(out).train_state)
    source = load_run(converted).train_state
    assert first.params["layer4"]["1"]["body"]["conv2"]["kernel"].shape == (3, 3, 512, 512)
    moved = np.abs(np.asarray(first.params["layer4"]["1"]["body"]["conv2"]["kernel"])
                   - np.asarray(source.params["layer4"]["1"]["body"]["conv2"]["kernel"])).max()
    assert 0 < moved < 0.1  # fine-tuned from the converted weights, not from a fresh start
