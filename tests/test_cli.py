"""The command line: ``jaxconv train`` and ``jaxconv evaluate`` on tiny settings."""

from __future__ import annotations

import json
import os

import matplotlib.image
import pytest

from jaxconv import checkpoint as ckpt
from jaxconv.cli import PLOTS, main


def test_train_writes_checkpoints_metrics_and_plots_then_evaluate_agrees(tmp_path, capsys):
    out = str(tmp_path / "run")
    rc = main(["train", "--epochs", "2", "--batch-size", "128", "--out", out, "--no-progress",
               "--checkpoint-every", "5", "--keep", "2", "--seed", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "digits_cnn on digits (1437 train / 360 test), 2 epochs, batch 128, adamw lr 0.003 (onecycle)" in printed
    assert "augment crop:1" in printed and "final test accuracy:" in printed

    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["config"]["model"] == "digits_cnn" and metrics["config"]["total_steps"] == 22
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    # 11 steps per epoch: checkpoints at 5, 10, 11 (epoch end), 15, 20, 22 (epoch end); keep 2.
    assert [s for s, _ in ckpt.list_checkpoints(os.path.join(out, "checkpoints"))] == [20, 22]
    assert metrics["checkpoint"].endswith("ckpt-000000022.safetensors")

    for name in PLOTS.values():
        path = os.path.join(out, name)
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and min(image.shape[:2]) > 200, (name, image.shape)

    assert main(["evaluate", "--out", out]) == 0
    line = capsys.readouterr().out
    assert "step 22, digits_cnn on digits" in line
    assert f"test accuracy {metrics['final_test_accuracy']:.4f} (360 examples)" in line


def test_train_resume_continues_from_the_checkpoint(tmp_path, capsys):
    out = str(tmp_path / "mlp")
    args = ["train", "--model", "intro_mlp", "--epochs", "1", "--batch-size", "256", "--out", out,
            "--no-progress", "--no-plots", "--optimizer", "sgd", "--schedule", "constant",
            "--label-smoothing", "0", "--augment", "none"]
    assert main(args) == 0
    first = json.load(open(os.path.join(out, "metrics.json")))
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "at step 5" in printed
    second = json.load(open(os.path.join(out, "metrics.json")))
    assert second["history"] == first["history"]
    assert not any(name.endswith(".png") for name in os.listdir(out))
    assert main(args + ["--resume", "--lr", "0.5"]) == 2
    assert "was written with other options (lr: 0.003 -> 0.5)" in capsys.readouterr().err


def test_train_impl_steps_per_call_and_microbatches(tmp_path, capsys):
    out = str(tmp_path / "spc")
    assert main(["train", "--epochs", "1", "--batch-size", "128", "--out", out, "--no-progress",
                 "--no-plots", "--impl", "patches", "--steps-per-call", "2",
                 "--microbatches", "4"]) == 0
    assert ("conv impl patches, 2 step(s) per call, 4 micro-batch(es) per step"
            in capsys.readouterr().out)
    config = json.load(open(os.path.join(out, "metrics.json")))["config"]
    # 1437 images: 5 calls of 2 x 128 per epoch, the rest dropped.
    assert (config["impl"], config["steps_per_call"], config["microbatches"],
            config["total_steps"]) == ("patches", 2, 4, 10)
    assert main(["evaluate", "--out", out]) == 0
    assert "step 10, digits_cnn on digits" in capsys.readouterr().out


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert main(["evaluate", "--out", str(tmp_path / "nothing")]) == 1
    assert "no checkpoint in" in capsys.readouterr().err
    assert main(["train", "--augment", "rotate", "--out", str(tmp_path)]) == 2
    assert "unknown item 'rotate'" in capsys.readouterr().err
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "missing train-images-idx3-ubyte.gz" in capsys.readouterr().err
    for flag in ("--steps-per-call", "--batch-size", "--microbatches"):
        assert main(["train", flag, "0", "--out", str(tmp_path)]) == 2
        assert f"jaxconv train: {flag} must be an int >= 1, got 0" in capsys.readouterr().err
    assert main(["train", "--microbatches", "3", "--out", str(tmp_path)]) == 2
    assert "--microbatches 3 must divide --batch-size 64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--optimizer", "lbfgs"])


def test_the_program_caches_compilations(tmp_path):
    """``python -m jaxconv`` (cli.run) turns on the compilation cache; ``main`` alone does not."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cache = tmp_path / "cache"
    env = dict(os.environ, JAXCONV_COMPILATION_CACHE=str(cache), JAX_PLATFORMS="cpu",
               PYTHONPATH=root)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "jaxconv", "train", "--model", "intro_mlp",
                           "--epochs", "1", "--batch-size", "256", "--no-progress", "--no-plots",
                           "--out", str(tmp_path / "run")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "final test accuracy" in proc.stdout
    assert any(files for _, _, files in os.walk(cache)), "nothing was cached"
    import jax

    assert main(["summary", "intro_mlp"]) == 0
    assert not jax.config.jax_compilation_cache_dir  # main in this process left JAX alone


def test_train_with_the_recipe_then_export_both_formats(tmp_path, capsys):
    """Recipe options and callbacks through the command line, then `jaxconv export` of the run."""
    import numpy as np
    import onnxruntime

    from jaxconv import export
    from jaxconv.cli.training import load_run
    from jaxconv.data import load_dataset

    out = str(tmp_path / "recipe")
    assert main(["train", "--epochs", "3", "--batch-size", "256", "--out", out, "--no-progress", "--no-plots",
                 "--augment", "crop:1,cutout:2,mixup:0.2,cutmix:1.0", "--ema", "0.9", "--clip-norm", "1",
                 "--warmup-steps", "0.2", "--precision", "bf16", "--early-stopping", "1",
                 "--monitor", "train_loss", "--save-best", "--csv", "--tensorboard"]) == 0
    printed = capsys.readouterr().out
    assert ("warmup 0.2, clip-norm 1.0, ema 0.9, precision bf16, early stopping 1 on train_loss" in printed)
    config = json.load(open(os.path.join(out, "metrics.json")))["config"]
    assert (config["warmup_steps"], config["ema"], config["precision"]) == (0.2, 0.9, "bf16")
    for name in ("best.safetensors", "metrics.csv", "tensorboard"):
        assert os.path.exists(os.path.join(out, name)), name
    arrays = ckpt.load_arrays(ckpt.latest_checkpoint(os.path.join(out, "checkpoints")))
    assert "ema/conv0/kernel" in arrays and "params/conv0/kernel" in arrays

    assert main(["evaluate", "--out", out]) == 0
    assert f"test accuracy {json.load(open(os.path.join(out, 'metrics.json')))['final_test_accuracy']:.4f}" in (
        capsys.readouterr().out)

    run = load_run(out, impl="lax")
    images = load_dataset("digits").test.images[:7]
    want = np.asarray(run.model.apply(run.train_state.ema, run.train_state.state, images)[0])
    assert main(["export", "--out", out]) == 0
    assert "model.stablehlo: digits_cnn (EMA params of" in capsys.readouterr().out
    got = np.asarray(export.load(os.path.join(out, "model.stablehlo")).call(images))
    assert np.abs(got - want).max() <= 1e-6
    assert main(["export", "--out", out, "--format", "onnx", "--checkpoint", "best"]) == 0
    session = onnxruntime.InferenceSession(os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"])
    best = load_run(out, which="best", impl="lax").train_state
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    np.testing.assert_allclose(logits, run.model.apply(best.ema, best.state, images)[0], rtol=1e-5, atol=1e-5)
    assert main(["export", "--out", str(tmp_path / "none")]) == 1
    assert "no checkpoint in" in capsys.readouterr().err
