"""Digits accuracy under the precision policies: ``jaxconv train --precision {f32,bf16,fp16}``.

Every run is ``python -m jaxconv train`` with the defaults (``digits_cnn``,
30 epochs, AdamW one-cycle, ...) and one ``--precision``, over seeds 0-4, each
a fresh process. The table gives the final test accuracy per seed, the mean,
the mean's difference from float32, the fp16 runs' final loss scale and the
wall time per run.

Usage::

    python benchmarks/digits_precision.py            # print the table
    python benchmarks/digits_precision.py --write    # also update benchmarks/RESULTS.md
    python benchmarks/digits_precision.py --seeds 2  # seeds 0-1 only
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

POLICIES = ("f32", "bf16", "fp16")
HEADING = "## Digits accuracy by precision policy (jaxconv train --precision)"


def train(policy: str, seed: int, directory: str) -> dict:
    """One ``jaxconv train`` run; its final accuracy, wall time and (fp16) loss scale."""
    out = os.path.join(directory, f"{policy}-{seed}")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jaxconv", "train", "--precision", policy, "--seed", str(seed),
                           "--no-progress", "--no-plots", "--out", out], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{policy} seed {seed} failed: {proc.stderr[-2000:]}")
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    scale = None
    if policy == "fp16":
        sys.path.insert(0, REPO_ROOT)
        from jaxconv import checkpoint

        scale = float(checkpoint.load_arrays(metrics["checkpoint"])["loss_scale/scale"])
    return {"accuracy": metrics["final_test_accuracy"], "wall": wall, "scale": scale}


def table(results: dict[str, list[dict]]) -> str:
    """The markdown section: settings, machine, one row per policy."""
    reference = sum(r["accuracy"] for r in results["f32"]) / len(results["f32"])
    rows = []
    for policy, runs in results.items():
        mean = sum(r["accuracy"] for r in runs) / len(runs)
        scales = sorted({r["scale"] for r in runs if r["scale"] is not None})
        rows.append([policy, ", ".join(f"{r['accuracy']:.4f}" for r in runs), f"{mean:.4f}",
                     f"{mean - reference:+.4f}", ", ".join(f"{s:g}" for s in scales) or "-",
                     f"{sum(r['wall'] for r in runs) / len(runs):.1f}"])
    info = machine_info()
    return "\n".join([
        HEADING, "",
        f"Measured by `python benchmarks/digits_precision.py`: `jaxconv train` defaults (digits_cnn, "
        f"30 epochs, AdamW one-cycle, label smoothing 0.1, crop:1) with `--precision POLICY --seed S` for "
        f"seeds 0-{len(results['f32']) - 1}, each a fresh process (wall time includes start-up and "
        "compilation; the persistent compilation cache as the runs leave it). bf16 and fp16 compute in "
        "bfloat16/float16 with float32 params, statistics and loss; fp16 scales the loss dynamically "
        "(initial scale 65536). The accuracies are deterministic; wall times on a shared machine "
        "(see the load average) are pessimistic.", "",
        describe_machine(info), "",
        markdown_table(["policy", "test accuracy per seed", "mean", "mean - f32", "final fp16 loss scale",
                        "wall per run (s)"], rows),
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        for policy in POLICIES:
            results[policy] = []
            for seed in range(args.seeds):
                results[policy].append(train(policy, seed, directory))
                print(f"{policy} seed {seed}: {results[policy][-1]}", flush=True)
    text = table(results)
    print(text)
    if args.write:
        write_section(RESULTS_MD, "digits-precision", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
