"""Digits from an image folder vs in memory: ``jaxconv train --data DIR`` against ``jaxconv train``.

The embedded digits are written as 8-bit grey PNG files (``tests/imagefolder.py``:
``train/<label>/<index>.png`` and the test split as ``val/``), then each seed
trains twice with the ``jaxconv train`` defaults (``digits_cnn``, 30 epochs,
AdamW one-cycle, label smoothing 0.1, device augmentation crop:1): once on the
arrays in memory, once on the folder through ``jaxconv.data.Loader``
(``--data DIR --image-size 8 --channels 1 --augment crop:1``, no worker
process). The two differ in the data order (the Loader's seeded shuffle) and
in the pixels (PNG rounding, within 0.5/255). The table gives the final test
(val) accuracy per seed, the means and their difference, which should be
within 0.005.

Usage::

    python benchmarks/folder_digits.py            # print the table
    python benchmarks/folder_digits.py --write    # also update benchmarks/RESULTS.md
    python benchmarks/folder_digits.py --seeds 2  # seeds 0-1 only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from common import REPO_ROOT, RESULTS_MD, describe_machine, machine_info, markdown_table, write_section

HEADING = "## Digits from a PNG folder vs in memory (jaxconv train --data)"
TOLERANCE = 0.005
FOLDER_ARGS = ("--image-size", "8", "--channels", "1", "--augment", "crop:1")


def train(folder: str | None, seed: int, directory: str) -> dict:
    """One ``jaxconv train`` run (on ``folder`` when given); its final accuracy and wall time."""
    out = os.path.join(directory, f"{'folder' if folder else 'memory'}-{seed}")
    data = ["--data", folder, *FOLDER_ARGS] if folder else []
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jaxconv", "train", *data, "--seed", str(seed), "--no-progress",
                           "--no-plots", "--out", out], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"seed {seed} ({out}) failed: {proc.stderr[-2000:]}")
    with open(os.path.join(out, "metrics.json")) as f:
        return {"accuracy": json.load(f)["final_test_accuracy"], "wall": wall}


def table(results: dict[str, list[dict]]) -> str:
    """The markdown section: settings, machine, one row per path, the verdict."""
    means = {name: sum(r["accuracy"] for r in runs) / len(runs) for name, runs in results.items()}
    rows = [[name, ", ".join(f"{r['accuracy']:.4f}" for r in runs), f"{means[name]:.4f}",
             f"{sum(r['wall'] for r in runs) / len(runs):.1f}"] for name, runs in results.items()]
    gap = means["image folder (Loader)"] - means["in memory"]
    seeds = len(results["in memory"])
    return "\n".join([
        HEADING, "",
        f"Measured by `python benchmarks/folder_digits.py`: the embedded digits written as 8-bit grey PNG "
        f"files (train/ and the test split as val/), `jaxconv train` defaults (digits_cnn, 30 epochs, AdamW "
        f"one-cycle, label smoothing 0.1, crop:1) for seeds 0-{seeds - 1}, each a fresh process: in memory, "
        f"and on the folder with `--data DIR {' '.join(FOLDER_ARGS)}` (Loader, no worker process; its own "
        "seeded order, pixels rounded to 8 bits). Test accuracy = the val folder's for the folder runs.", "",
        describe_machine(machine_info()), "",
        markdown_table(["data", "test accuracy per seed", "mean", "wall per run (s)"], rows), "",
        f"- mean(folder) - mean(memory) = {gap:+.4f} "
        f"({'within' if abs(gap) <= TOLERANCE else 'OUTSIDE'} {TOLERANCE})",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    sys.path.insert(0, REPO_ROOT)
    from tests.imagefolder import write_digits_folder

    results: dict[str, list[dict]] = {"in memory": [], "image folder (Loader)": []}
    with tempfile.TemporaryDirectory() as directory:
        folder = os.path.join(directory, "digits")
        write_digits_folder(folder)
        for seed in range(args.seeds):
            results["in memory"].append(train(None, seed, directory))
            results["image folder (Loader)"].append(train(folder, seed, directory))
            print(f"seed {seed}: memory {results['in memory'][-1]}, folder {results['image folder (Loader)'][-1]}",
                  flush=True)
    text = table(results)
    print(text)
    if args.write:
        write_section(RESULTS_MD, "folder-digits", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
