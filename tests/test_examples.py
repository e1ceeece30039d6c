"""The examples run as a user would run them, and say what they should."""

import os
import subprocess
import sys
from pathlib import Path


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
