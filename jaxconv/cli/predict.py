"""``jaxconv predict IMAGE_OR_DIR... --out RUN``: class probabilities of image files.

The run must have been trained on an image folder (``jaxconv train --data``):
its config holds the class names and the preprocessing (``config["folder"]``),
so each file goes through the evaluation transform the validation split had.
One line per image; for folder inputs also a CSV (``path,class,probability,top_k``).
Unreadable files are reported on stderr and make the exit status 1; the
others are still classified.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import checkpoint as ckpt
from jaxconv.cli.training import FOLDER_DATASET, LoadedRun, load_run
from jaxconv.data import ImageError, Preprocess, list_images, load_image, make_preprocess
from jaxconv.rundir import PREDICTIONS_FILE


def probabilities_fn(run: LoadedRun, batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """``images (n, H, W, C) -> class probabilities (n, K)`` in inference mode, one compiled batch size."""
    ts = run.train_state
    apply = jax.jit(lambda x: jax.nn.softmax(
        run.model.apply(ts.eval_params, ts.state, x, train=False)[0].astype(jnp.float32), axis=-1))

    def probabilities(images: np.ndarray) -> np.ndarray:
        n = len(images)
        padded = np.concatenate([images, np.zeros((batch_size - n, *images.shape[1:]), images.dtype)])
        return np.asarray(apply(padded))[:n]

    return probabilities


def read_images(paths: Sequence[str], pre: Preprocess) -> tuple[list[str], list[np.ndarray], list[str]]:
    """``(readable paths, their arrays, messages of the unreadable ones)``."""
    kept, arrays, errors = [], [], []
    for path in paths:
        try:
            arrays.append(load_image(path, pre))
            kept.append(path)
        except ImageError as e:  # its message names the file
            errors.append(str(e))
    return kept, arrays, errors


def classify(run: LoadedRun, paths: Sequence[str], batch_size: int) -> tuple[list[str], np.ndarray, list[str]]:
    """``(classified paths, probabilities (n, K), errors)`` of ``paths``, ``batch_size`` files at a time."""
    pre = make_preprocess(**run.config["folder"]["preprocess"], context="jaxconv predict")
    probabilities = probabilities_fn(run, batch_size)
    done, rows, errors = [], [], []
    for start in range(0, len(paths), batch_size):
        kept, arrays, bad = read_images(paths[start:start + batch_size], pre)
        errors += bad
        if kept:
            done += kept
            rows.append(probabilities(np.stack(arrays)))
    return done, np.concatenate(rows) if rows else np.zeros((0, run.config["num_classes"])), errors


def top_classes(probs: np.ndarray, classes: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable ``(class name, probability)`` of one image, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [(classes[i], float(probs[i])) for i in order]


def write_csv(path: str, rows: Sequence[tuple[str, list[tuple[str, float]]]]) -> None:
    """Writes ``path,class,probability,top_k`` rows atomically (``top_k``: ``name:p;name:p``)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "class", "probability", "top_k"])
    for image, top in rows:
        writer.writerow([image, top[0][0], f"{top[0][1]:.6f}", ";".join(f"{c}:{p:.6f}" for c, p in top)])
    ckpt.write_atomic(path, text.getvalue().encode())


def _load(args: argparse.Namespace) -> LoadedRun:
    run = load_run(args.out)
    if run.config.get("dataset") != FOLDER_DATASET:
        raise ValueError(f"{run.path} was not trained on an image folder (jaxconv train --data DIR): "
                         "it has no class names or preprocessing for image files")
    return run


def cmd_predict(args: argparse.Namespace) -> int:
    try:
        run = _load(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"jaxconv predict: {e}", file=sys.stderr)
        return 1
    classes = run.config["folder"]["classes"]
    groups = [(arg, list_images(arg)) for arg in args.inputs]
    paths = [p for _, found in groups for p in found]
    done, probs, errors = classify(run, paths, args.batch_size)
    results = {path: top_classes(p, classes, args.top_k) for path, p in zip(done, probs)}
    for path in done:
        print(f"{path}: " + ", ".join(f"{c} {p:.4f}" for c, p in results[path]))
    for arg, found in groups:
        if os.path.isdir(arg) and not found:
            errors.append(f"no image files in the folder {arg}")
    in_folders = [p for arg, found in groups if os.path.isdir(arg) for p in found if p in results]
    if in_folders:
        csv_path = args.csv or os.path.join(args.out, PREDICTIONS_FILE)
        write_csv(csv_path, [(p, results[p]) for p in in_folders])
        print(f"wrote {csv_path} ({len(in_folders)} images)")
    for message in errors:
        print(f"jaxconv predict: {message}", file=sys.stderr)
    return 1 if errors else 0
