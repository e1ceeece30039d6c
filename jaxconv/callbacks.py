"""Callbacks for ``fit``: hooks at the end of steps and epochs that see the metrics and may stop the run.

A callback is any object with some of these methods (``Callback`` has them
all, doing nothing; ``fit`` calls those a callback has, in list order):

- ``on_fit_start(info)``: once, before the first step; ``info`` is a
  ``FitInfo`` (after a resume: the step it continues from and the history so far).
- ``on_step_end(step, metrics)``: for every optimizer step, with ``step`` the
  number of steps done (1-based) and ``metrics`` the batch's ``{"loss",
  "accuracy"}`` as floats. ``fit`` reads the metrics off the device every 10
  calls, at checkpoints and at the end of an epoch, and calls the hook for
  each step then; returning ``True`` stops the run there.
- ``on_epoch_end(epoch, record, train_state)``: after the epoch's evaluation,
  before its checkpoint; ``epoch`` is 1-based and ``record`` is the history
  entry (``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``,
  ``seconds``). Returning ``True`` stops the run after this epoch.
- ``on_fit_end(history)``: however ``fit`` ends (an exception included), to
  release files and writers.
- ``state()`` and ``restore(state)``: what the callback must carry over a
  resume, as a flat dict of numbers. ``fit`` stores every callback's state in
  each checkpoint's metadata (``metadata["fit"]["callbacks"]``, keyed by class
  name, ``_1``, ``_2``... for repeats) and restores it when it resumes, so a
  run killed and resumed stops at the same epoch as an uninterrupted one.

A run that a callback stopped is marked so in its checkpoints; resuming it
does nothing more.

Built in: ``EarlyStopping``, ``BestCheckpoint``, ``CSVLogger``, ``TensorBoard``.
Only the first process writes files (``FitInfo.primary``).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

from jaxconv import checkpoint as ckpt
from jaxconv.distributed import fetch
from jaxconv.rundir import BEST_FILE
from jaxconv.validate import choice, integer, number

MODES = ("min", "max")


class FitInfo(NamedTuple):
    """What ``fit`` tells its callbacks when it starts.

    Attributes:
      checkpoint_dir: ``fit``'s checkpoint directory, or ``None``.
      metadata: the metadata ``fit`` writes into its checkpoints (``config``...).
      epochs: the number of epochs of the run.
      steps_per_epoch: optimizer steps per epoch.
      step: the step the run starts from (0, or the resumed checkpoint's).
      history: the epochs' records so far (empty for a fresh run).
      resumed: whether the run continues from a checkpoint.
      primary: whether this process writes files (process 0).
    """

    checkpoint_dir: str | None
    metadata: dict
    epochs: int
    steps_per_epoch: int
    step: int
    history: list
    resumed: bool
    primary: bool = True


class Callback:
    """A callback that does nothing: subclass it and override the hooks you need."""

    def on_fit_start(self, info: FitInfo) -> None:
        pass

    def on_step_end(self, step: int, metrics: dict[str, float]) -> bool | None:
        return None

    def on_epoch_end(self, epoch: int, record: dict[str, float], train_state: Any) -> bool | None:
        return None

    def on_fit_end(self, history: list[dict[str, float]]) -> None:
        pass

    def state(self) -> dict[str, float]:
        return {}

    def restore(self, state: dict[str, float]) -> None:
        pass


def _name(value: Any, context: str) -> str:
    """``value`` if it is a string (the record entry a callback watches)."""
    if not isinstance(value, str):
        raise TypeError(f"{context}: monitor must be the name of a record entry such as 'test_loss', "
                        f"got {value!r}")
    return value


def monitored(record: dict[str, float], monitor: str, context: str) -> float:
    """The value of ``monitor`` in an epoch ``record``.

    Raises:
      ValueError: the record has no such entry (no test split for ``test_*``).
    """
    if monitor not in record:
        hint = " (fit has no test split)" if monitor.startswith("test_") else ""
        raise ValueError(f"{context}: the epoch record has no {monitor!r}{hint}; it has "
                         f"{sorted(k for k in record if k != 'epoch')}")
    return float(record[monitor])


def improves(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` (``mode`` ``"min"`` or ``"max"``)."""
    if best is None:
        return not math.isnan(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


class EarlyStopping(Callback):
    """Stops the run when ``monitor`` has not improved for ``patience`` epochs.

    An epoch improves when its value beats the best so far by more than
    ``min_delta`` (lower for ``mode="min"``, higher for ``"max"``). The best
    value and the count of epochs without improvement are part of the state.

    Attributes:
      best: the best value so far (``None`` before the first epoch).
      wait: epochs since the last improvement.
      stopped_epoch: the epoch after which it stopped the run (0: not stopped).
    """

    def __init__(self, monitor: str = "test_loss", patience: int = 5, mode: str = "min",
                 min_delta: float = 0.0):
        context = "EarlyStopping"
        self.monitor = _name(monitor, context)
        self.patience = integer(patience, "patience", context=context, minimum=1)
        self.mode = choice(mode, "mode", MODES, context=context)
        self.min_delta = number(min_delta, "min_delta", context=context, minimum=0)
        self.best, self.wait, self.stopped_epoch = None, 0, 0

    def on_epoch_end(self, epoch, record, train_state):
        value = monitored(record, self.monitor, "EarlyStopping")
        if improves(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return None

    def state(self):
        best = {} if self.best is None else {"best": self.best}
        return {**best, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def restore(self, state):
        self.best = state.get("best")
        self.wait, self.stopped_epoch = int(state.get("wait", 0)), int(state.get("stopped_epoch", 0))


class BestCheckpoint(Callback):
    """Keeps the train state of the best epoch so far in one file, apart from the rolling checkpoints.

    The file (``path``; default ``best.safetensors`` in ``fit``'s checkpoint
    directory, which retention never touches) is written atomically with
    ``jaxconv.checkpoint.save`` after every epoch that improves ``monitor``.
    It holds the whole train state (so it loads like any checkpoint), the
    run's metadata and ``metadata["best"] = {"monitor", "value", "epoch", "step"}``.
    A fresh run (not resumed) first removes such a file left by an earlier run.

    Attributes:
      path: the file (known once the run starts).
      best, epoch: the best value and its epoch (``None``, 0 before the first).
    """

    def __init__(self, path: str | None = None, *, monitor: str = "test_accuracy", mode: str = "max"):
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"BestCheckpoint: path must be a str, a path or None, got {type(path).__name__}")
        self.path = None if path is None else os.fspath(path)
        self.monitor = _name(monitor, "BestCheckpoint")
        self.mode = choice(mode, "mode", MODES, context="BestCheckpoint")
        self.best, self.epoch = None, 0
        self._metadata, self._primary = {}, True

    def on_fit_start(self, info):
        if self.path is None:
            if info.checkpoint_dir is None:
                raise ValueError("BestCheckpoint: give it a path, or fit a checkpoint_dir to write "
                                 f"{BEST_FILE} into")
            self.path = os.path.join(info.checkpoint_dir, BEST_FILE)
        self._metadata, self._primary = dict(info.metadata), info.primary
        if info.primary and not info.resumed and os.path.lexists(self.path):
            if not ckpt.is_complete(self.path):
                raise ValueError(f"BestCheckpoint: {self.path} exists and is not a checkpoint; move it "
                                 "away or choose another path")
            os.unlink(self.path)  # the best of an earlier run in this directory

    def on_epoch_end(self, epoch, record, train_state):
        value = monitored(record, self.monitor, "BestCheckpoint")
        if not improves(value, self.best, self.mode):
            return None
        self.best, self.epoch = value, epoch
        if self._primary:
            best = {"monitor": self.monitor, "value": value, "epoch": epoch, "step": int(train_state.step)}
            ckpt.save(self.path, fetch(train_state), dict(self._metadata, best=best))
        return None

    def state(self):
        return {} if self.best is None else {"best": self.best, "epoch": self.epoch}

    def restore(self, state):
        self.best, self.epoch = state.get("best"), int(state.get("epoch", 0))


def csv_text(rows: Sequence[dict[str, float]]) -> str:
    """The rows as CSV: a header of every key (in order of first appearance), one line per row."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class CSVLogger(Callback):
    """Writes the run's history to a CSV file, one line per epoch (``epoch``, ``train_loss``...).

    The whole file is rewritten atomically after every epoch from the history,
    so after a resume it holds exactly the epochs of the resumed history.
    """

    def __init__(self, path: str):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"CSVLogger: path must be a str or a path, got {type(path).__name__}")
        self.path = os.fspath(path)
        self._rows, self._primary = [], True

    def on_fit_start(self, info):
        self._rows, self._primary = list(info.history), info.primary

    def on_epoch_end(self, epoch, record, train_state):
        self._rows.append(dict(record))
        if self._primary:
            ckpt.write_atomic(self.path, csv_text(self._rows).encode())
        return None


def scalar_tag(name: str) -> str:
    """The TensorBoard tag of a record entry: ``train_loss`` -> ``train/loss``, ``seconds`` -> ``epoch/seconds``."""
    group, _, rest = name.partition("_")
    return f"{group}/{rest}" if rest else f"epoch/{name}"


class TensorBoard(Callback):
    """Writes every epoch's record as TensorBoard scalars (step = the epoch) to event files in ``logdir``.

    The writer is tensorboardX's (no TensorFlow; ``pip install 'jaxconv[tensorboard]'``).
    A run (re)starting after ``E`` finished epochs asks TensorBoard to purge
    the events of epochs above ``E`` that an earlier, interrupted attempt left
    in ``logdir`` (``purge_step``), so a resumed run's curves have no duplicates.
    Each start writes its own event file, named after the second it starts in,
    then ``E`` and the process: a restart within the same second neither
    overwrites the earlier file nor sorts before it.
    """

    def __init__(self, logdir: str):
        if not isinstance(logdir, (str, os.PathLike)):
            raise TypeError(f"TensorBoard: logdir must be a str or a path, got {type(logdir).__name__}")
        self.logdir = os.fspath(logdir)
        self._writer = None

    def on_fit_start(self, info):
        if not info.primary:
            return
        try:
            from tensorboardX import SummaryWriter  # an optional dependency, needed here only
        except ImportError:
            raise ImportError("TensorBoard: the event-file writer needs tensorboardX: "
                              "pip install 'jaxconv[tensorboard]'") from None
        done = len(info.history)
        self._writer = SummaryWriter(self.logdir, purge_step=done + 1,
                                     filename_suffix=f".{done:09d}.{os.getpid()}")

    def on_epoch_end(self, epoch, record, train_state):
        if self._writer is not None:
            for name, value in record.items():
                if name != "epoch":
                    self._writer.add_scalar(scalar_tag(name), float(value), global_step=epoch)
            self._writer.flush()
        return None

    def on_fit_end(self, history):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class CallbackList:
    """The callbacks of one ``fit``: calls their hooks in order and gathers their state."""

    def __init__(self, callbacks: Sequence[Any] | None):
        if callbacks is None:
            callbacks = ()
        if not isinstance(callbacks, (list, tuple)):
            raise TypeError(f"fit: callbacks must be a list or tuple, got {type(callbacks).__name__}")
        self.callbacks = list(callbacks)
        counts: dict[str, int] = {}
        self.names = []
        for cb in self.callbacks:
            name = type(cb).__name__
            self.names.append(name if name not in counts else f"{name}_{counts[name]}")
            counts[name] = counts.get(name, 0) + 1

    def _call(self, hook: str, *args: Any) -> bool:
        stop = False
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if method is not None and method(*args):
                stop = True
        return stop

    def fit_start(self, info: FitInfo) -> None:
        self._call("on_fit_start", info)

    def step_end(self, step: int, metrics: dict[str, float]) -> bool:
        return self._call("on_step_end", step, metrics)

    def epoch_end(self, epoch: int, record: dict[str, float], train_state: Any) -> bool:
        return self._call("on_epoch_end", epoch, record, train_state)

    def fit_end(self, history: list[dict[str, float]]) -> None:
        self._call("on_fit_end", history)

    def state(self) -> dict[str, dict[str, float]]:
        """``{name: state}`` of the callbacks that have a ``state`` method."""
        return {name: dict(cb.state()) for name, cb in zip(self.names, self.callbacks) if hasattr(cb, "state")}

    def restore(self, states: dict[str, dict[str, float]]) -> None:
        """Gives each callback its state from a checkpoint (those without one keep theirs)."""
        for name, cb in zip(self.names, self.callbacks):
            if name in states and hasattr(cb, "restore"):
                cb.restore(states[name])
