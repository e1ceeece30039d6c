"""Run directories: one run owns a directory, and holds it under a lock while it writes.

``jaxconv train --out DIR`` writes::

    DIR/.jaxconv.lock                         the lock of the run writing here (its PID and host)
    DIR/metrics.json                          config and per-epoch history
    DIR/loss_accuracy.png, filters.png, ...   the plots (``PLOTS``)
    DIR/best.safetensors                      the best epoch's checkpoint (``--save-best``)
    DIR/metrics.csv                           the history as CSV (``--csv``)
    DIR/tensorboard/events.out.tfevents.*     TensorBoard event files (``--tensorboard``)
    DIR/model.stablehlo, model.onnx           exported models (``jaxconv export``)
    DIR/predictions.csv                       ``jaxconv predict``'s table for a folder
    DIR/checkpoints/ckpt-<step>.safetensors   checkpoints (``fit(checkpoint_dir=...)``), with
                                              their own ``.jaxconv.lock``

The rules, shared by the command line and ``fit``:

- A writer holds the directory's lock (``locked``: ``fcntl.flock`` on the lock
  file) for as long as it writes. The kernel releases it when the process
  ends, however it ends (``SIGKILL`` included), so a lock never outlives its
  run; a second writer fails at once with ``DirectoryLockedError`` naming the
  holder's PID and host.
- A directory that holds another run's files is refused (``claim``) unless the
  new run continues it (resume) or replaces it explicitly (overwrite).
  Replacing deletes only files that jaxconv writes, by their names, and
  refuses when a file with such a name does not look like one of them.
  Nothing else in the directory is ever touched.
- Retention (``prune_checkpoints``) deletes only checkpoints older than the one
  just written, so a run never loses its newest checkpoints to stale ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import NamedTuple

from jaxconv.checkpoint import TMP_PREFIX, list_checkpoints
from jaxconv.validate import integer

LOCK_FILE = ".jaxconv.lock"
METRICS_FILE = "metrics.json"
CHECKPOINTS = "checkpoints"
PLOTS = {"history": "loss_accuracy.png", "filters": "filters.png",
         "feature_maps": "feature_maps.png", "confusion": "confusion_matrix.png"}
BEST_FILE = "best.safetensors"
CSV_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
EXPORTS = {"stablehlo": "model.stablehlo", "onnx": "model.onnx"}
PREDICTIONS_FILE = "predictions.csv"
_TOP_LEVEL = {METRICS_FILE, BEST_FILE, CSV_FILE, PREDICTIONS_FILE, *PLOTS.values(), *EXPORTS.values()}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EVENTS_PREFIX = "events.out.tfevents."


class RunDirectoryError(ValueError):
    """A directory that cannot serve the run as asked: another run's, not writable, a file."""


class DirectoryLockedError(RunDirectoryError):
    """Another process holds the directory's lock (it is writing there now)."""


# --------------------------------------------------------------------------
# Where a run may write


def check_output_dir(path: str, *, context: str) -> None:
    """Raises unless ``path`` is a writable directory, or one that can be created.

    Nothing is created: the nearest existing ancestor must be a writable directory.

    Raises:
      RunDirectoryError: ``path`` (or an ancestor) is a file, or not writable.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunDirectoryError(f"{context}: {path} is a file, not a directory")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise RunDirectoryError(f"{context}: cannot create {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == os.path.abspath(path) else f" (in {existing})"
        raise RunDirectoryError(f"{context}: {path} is not writable{where}")


# --------------------------------------------------------------------------
# The lock


def _holder(lock_path: str) -> str:
    """``PID 123 on host h (since ...)`` from a lock file, as its holder wrote it."""
    try:
        with open(lock_path) as f:
            info = json.load(f)
        return f"PID {info['pid']} on host {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # written at this very moment, or foreign
        return "PID and host not recorded yet"


def _acquire(fd: int, directory: str, *, context: str) -> None:
    """Takes the lock on the open lock file ``fd`` at once and records this process in it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(os.path.join(directory, LOCK_FILE))
        raise DirectoryLockedError(
            f"{context}: {directory} is in use by another run ({holder}); wait for it to finish "
            "or choose another directory") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


@contextlib.contextmanager
def locked(directory: str, *, context: str) -> Iterator[str]:
    """Holds ``directory``'s lock for the ``with`` block; creates the directory if needed.

    The lock file records this process's PID and host for the message a
    second writer gets; the record is cleared when the block ends. Yields
    the lock file's path.

    Raises:
      DirectoryLockedError: another process holds the lock (raised at once, no waiting).
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, directory, context=context)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # no stale holder left behind
    finally:
        os.close(fd)  # releases the lock (as the end of the process does, however it ends)


# --------------------------------------------------------------------------
# Ownership


class RunFiles(NamedTuple):
    """What a directory holds of a jaxconv run.

    Attributes:
      ours: paths of files jaxconv writes (metrics, plots, checkpoints, interrupted writes).
      unsure: paths that carry a jaxconv name but do not look like what jaxconv writes.
      checkpoints: ``[(step, path), ...]`` of the checkpoints, oldest first.
    """

    ours: list[str]
    unsure: list[str]
    checkpoints: list[tuple[int, str]]


def _looks_like(path: str, name: str) -> bool:
    """Whether the file at ``path``, named ``name``, looks like one jaxconv wrote.

    By content where the format says who wrote it (metrics, checkpoint, CSV,
    PNG, event file); an exported model by its name alone.
    """
    try:
        with open(path, "rb") as f:
            if name == METRICS_FILE:
                return "config" in json.load(f)
            if name == BEST_FILE:  # safetensors: an 8-byte header length, then the JSON header
                return f.read(9)[8:] == b"{"
            if name == CSV_FILE:
                return f.read(6) == b"epoch,"
            if name == PREDICTIONS_FILE:
                return f.read(5) == b"path,"
            if name.startswith(_EVENTS_PREFIX) or name in EXPORTS.values():
                return True
            return f.read(len(_PNG_SIGNATURE)) == _PNG_SIGNATURE
    except (OSError, ValueError, TypeError):
        return False


def _sort(names: list[str], directory: str) -> tuple[list[str], list[str]]:
    """Splits the paths of ``names`` (named like jaxconv's files) in ``directory`` into ``(ours, unsure)``."""
    ours, unsure = [], []
    for name in names:
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or os.path.islink(path):
            unsure.append(path)
        elif name.startswith(TMP_PREFIX) or name.startswith("ckpt-") or _looks_like(path, name):
            ours.append(path)
        else:
            unsure.append(path)
    return ours, unsure


def run_files(directory: str) -> RunFiles:
    """The files of a jaxconv run in ``directory`` (a run directory, see the module docstring)."""
    if not os.path.isdir(directory):
        return RunFiles([], [], [])
    entries = os.listdir(directory)
    named = [e for e in entries if e in _TOP_LEVEL or e.startswith(TMP_PREFIX)]
    ours, unsure = _sort(named, directory)
    events = os.path.join(directory, TENSORBOARD_DIR)
    if os.path.isdir(events) and not os.path.islink(events):
        more, doubtful = _sort(os.listdir(events), events)
        ours, unsure = ours + more, unsure + [p for p in doubtful if not p.startswith(TMP_PREFIX)]
    checkpoint_dir = os.path.join(directory, CHECKPOINTS)
    checkpoints = list_checkpoints(checkpoint_dir) if os.path.isdir(checkpoint_dir) else []
    if os.path.isdir(checkpoint_dir):
        names = [os.path.basename(p) for _, p in checkpoints]
        names += [e for e in os.listdir(checkpoint_dir) if e.startswith(TMP_PREFIX)]
        more, doubtful = _sort(names, checkpoint_dir)
        ours, unsure = ours + more, unsure + doubtful
    elif os.path.lexists(checkpoint_dir):
        unsure.append(checkpoint_dir)
    return RunFiles(ours, unsure, checkpoints)


def describe(files: RunFiles) -> str:
    """``3 checkpoint(s) up to step 660, metrics.json, 4 plot(s)``: a run's files in a phrase."""
    parts = []
    if files.checkpoints:
        parts.append(f"{len(files.checkpoints)} checkpoint(s) up to step {files.checkpoints[-1][0]}")
    names = [os.path.basename(p) for p in files.ours]
    if METRICS_FILE in names:
        parts.append(METRICS_FILE)
    plots = sum(name in PLOTS.values() for name in names)
    if plots:
        parts.append(f"{plots} plot(s)")
    parts += [f"{p} (not written by jaxconv?)" for p in files.unsure]
    return ", ".join(parts) or "temporary files of an interrupted write"


def claim(directory: str, *, resume: bool, overwrite: bool, context: str) -> list[str]:
    """Makes ``directory`` this run's, as asked; returns the paths it deleted.

    A directory without a run's files is taken as it is. One that holds a run
    is continued with ``resume`` (the caller checks that the run's options
    match), replaced with ``overwrite`` (jaxconv's files in it are deleted,
    anything else is left), and refused otherwise. Call it with the lock held.

    Raises:
      RunDirectoryError: the directory holds a run and neither ``resume`` nor
        ``overwrite`` is set; or ``overwrite`` is set and a file with a jaxconv
        name does not look like one that jaxconv wrote (nothing is deleted then).
    """
    files = run_files(directory)
    if resume or not (files.ours or files.unsure):
        return []
    if not overwrite:
        raise RunDirectoryError(
            f"{context}: {directory} holds another run ({describe(files)}); use --resume to "
            "continue it, --overwrite to replace it, or another --out")
    if files.unsure:
        raise RunDirectoryError(
            f"{context}: --overwrite: {files.unsure[0]} does not look like a file jaxconv wrote, so "
            f"nothing in {directory} was deleted; move it away or choose another --out")
    for path in files.ours:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    with contextlib.suppress(OSError):  # only if it is now empty
        os.rmdir(os.path.join(directory, TENSORBOARD_DIR))
    return files.ours


def check_fresh(checkpoint_dir: str, *, context: str) -> None:
    """Raises if ``checkpoint_dir`` already holds checkpoints (a new run would mix with them).

    Raises:
      RunDirectoryError: naming the directory, its newest checkpoint and the ways on.
    """
    found = list_checkpoints(checkpoint_dir)
    if found:
        raise RunDirectoryError(
            f"{context}: {checkpoint_dir} holds {len(found)} checkpoint(s) of another run (newest: "
            f"{os.path.basename(found[-1][1])}); pass resume=True to continue it, or use another directory")


def prune_checkpoints(checkpoint_dir: str, step: int, keep: int | None) -> list[str]:
    """Deletes the checkpoints older than the newest ``keep`` up to ``step``; returns their paths.

    Checkpoints after ``step`` (left by an earlier attempt of this run that
    got further, e.g. a corrupt one that resuming skipped) are neither counted
    nor deleted: the run overwrites them when it gets there.
    """
    if keep is None:
        return []
    keep = integer(keep, "keep", context="prune_checkpoints", minimum=1)
    old = [path for s, path in list_checkpoints(checkpoint_dir) if s <= step][:-keep]
    for path in old:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return old
