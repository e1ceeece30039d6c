"""Digits accuracy: ``jaxconv train`` defaults over seeds 0-4 vs scikit-learn baselines.

All models use the same split as ``jaxconv.load_dataset("digits")`` (scikit-learn's
8x8 digits, ``train_test_split(test_size=0.2, stratify=y, random_state=0)``).
Baselines: an RBF-kernel SVC and an MLP (``MLPClassifier``, one hidden layer
of 100, seeds 0-4), on the flattened pixels scaled to [0, 1].
Each ``jaxconv train`` run is a fresh process (``python -m jaxconv train --seed S``),
so its wall time includes start-up and compilation.

Usage::

    python benchmarks/digits_baselines.py            # baselines and the 5 jaxconv runs
    python benchmarks/digits_baselines.py --no-cnn   # baselines only
    python benchmarks/digits_baselines.py --write    # also update benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HEADING = "## Digits accuracy (jaxconv train defaults)"
SEEDS = range(5)
HERE = os.path.dirname(os.path.abspath(__file__))


def sklearn_baselines(train, test) -> list[tuple[str, list[float], float]]:
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    x_tr, y_tr = train.images.reshape(len(train.labels), -1), train.labels
    x_te, y_te = test.images.reshape(len(test.labels), -1), test.labels
    rows = []
    for name, make, seeds in (
        ("scikit-learn SVC(kernel='rbf') (defaults, deterministic)", lambda s: SVC(kernel="rbf"), [0]),
        ("scikit-learn SVC(kernel='rbf', C=10)", lambda s: SVC(kernel="rbf", C=10), [0]),
        ("scikit-learn MLPClassifier(100, max_iter=2000)",
         lambda s: MLPClassifier((100,), max_iter=2000, random_state=s), list(SEEDS)),
    ):
        accs, start = [], time.perf_counter()
        for s in seeds:
            accs.append(float(make(s).fit(x_tr, y_tr).score(x_te, y_te)))
        rows.append((name, accs, (time.perf_counter() - start) / len(seeds)))
    return rows


def jaxconv_runs() -> list[tuple[int, float, float, float]]:
    """``[(seed, test accuracy, wall s, CPU s), ...]`` for ``jaxconv train`` with defaults."""
    root = os.path.dirname(HERE)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    runs = []
    for seed in SEEDS:
        with tempfile.TemporaryDirectory() as out:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "jaxconv", "train", "--seed", str(seed), "--out", out,
                            "--no-progress"], check=True, env=env, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            with open(os.path.join(out, "metrics.json")) as f:
                acc = json.load(f)["final_test_accuracy"]
        runs.append((seed, acc, wall, cpu))
        print(f"seed {seed}: test accuracy {acc:.4f}, wall {wall:.1f} s, CPU {cpu:.1f} s", flush=True)
    return runs


def table(baselines, runs) -> str:
    import jax
    import sklearn

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        HEADING, "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by "
        "`python benchmarks/digits_baselines.py`; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
        f"(load average {load:.1f} at the end: the machine was shared, so wall times are pessimistic); "
        f"Python {platform.python_version()}, jax {jax.__version__} ({jax.default_backend()}), "
        f"scikit-learn {sklearn.__version__}.",
        "",
        "Split: scikit-learn digits, `train_test_split(test_size=0.2, stratify=y, random_state=0)` "
        "(1437 train / 360 test).",
        "",
    ]
    if runs:
        lines += [
            "`jaxconv train` defaults: `digits_cnn` (Conv 32 3x3, ReLU, Conv 64 3x3, ReLU, MaxPool 2, "
            "Dense 128, ReLU, Dense 10), AdamW (lr 3e-3 peak, weight decay 1e-4), one-cycle schedule, "
            "label smoothing 0.1, random-crop augmentation (pad 1 = shifts of up to 1 pixel), "
            "30 epochs, batch 64. Wall time is the whole process (start-up, compilation, "
            "training, checkpoints, plots), with the `jaxconv` program's persistent compilation "
            "cache as it finds it: from the second seed on (or from the first, if an earlier run "
            "filled it) the compiled steps load from the cache instead of compiling.",
            "",
            "| seed | test accuracy | wall (s) | CPU (s) |",
            "|---:|---:|---:|---:|",
        ]
        lines += [f"| {s} | {a:.4f} | {w:.1f} | {c:.1f} |" for s, a, w, c in runs]
        accs = [r[1] for r in runs]
        lines += [f"| **mean** | **{np.mean(accs):.4f}** (std {np.std(accs):.4f}) | "
                  f"{np.mean([r[2] for r in runs]):.1f} | {np.mean([r[3] for r in runs]):.1f} |", ""]
    lines += ["| baseline (same split) | test accuracy (per seed) | mean | fit time (s) |",
              "|---|---|---:|---:|"]
    for name, accs, seconds in baselines:
        lines.append(f"| {name} | {', '.join(f'{a:.4f}' for a in accs)} | {np.mean(accs):.4f} | {seconds:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-cnn", action="store_true", help="only the scikit-learn baselines")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(HERE))
    from jaxconv.data import load_dataset

    data = load_dataset("digits")
    baselines = sklearn_baselines(data.train, data.test)
    runs = [] if args.no_cnn else jaxconv_runs()
    text = table(baselines, runs)
    print(text)
    if args.write:
        from common import RESULTS_MD, write_section

        write_section(RESULTS_MD, "digits", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
