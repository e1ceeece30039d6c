"""The examples run as a user would run them, and say what they should."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_example(name, *args, timeout=300, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd or ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_intro_mlp_example_lowers_the_error():
    out = run_example("intro_mlp.py")
    assert "layers: ['dense0', 'sigmoid0', 'dense1', 'sigmoid1', 'dense2']" in out
    before, after = (float(v) for v in out.split("before ")[1].split(", after one step "))
    assert after < before


@pytest.mark.slow
def test_finetune_example_freezes_the_backbone_then_trains_all_layers():
    out = run_example("finetune.py", "--epochs", "1", timeout=900)
    assert "loaded torchvision's resnet18 state dict: 11,689,512 params" in out
    assert "new head (fresh initialisation): fc/bias, fc/kernel" in out
    frozen = next(line for line in out.splitlines() if line.startswith("frozen backbone"))
    assert frozen.endswith("(largest change of a backbone weight: 0)"), frozen
    tuned = next(line for line in out.splitlines() if line.startswith("all layers"))
    assert float(tuned.split("test accuracy ")[1].split()[0]) >= 0.8, tuned
