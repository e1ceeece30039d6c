"""Callbacks in a digits run: EarlyStopping, BestCheckpoint, CSVLogger, TensorBoard (event file read back)."""

from __future__ import annotations

import csv
import os
import struct

import jax
import numpy as np
import optax
import pytest
from tensorboardX.proto import event_pb2

import jaxconv as jc
from jaxconv import checkpoint as ckpt
from jaxconv.callbacks import BestCheckpoint, Callback, CallbackList, CSVLogger, EarlyStopping, TensorBoard, improves
from jaxconv.train import fit

DIGITS = jc.load_dataset("digits")
EPOCHS = 12


def mlp():
    return jc.serial(jc.Flatten(), jc.Dense(16), jc.Relu(), jc.Dense(10))


def digits_fit(tmp_path, callbacks, **kw):
    kw = dict(dict(test=DIGITS.test, epochs=EPOCHS, batch_size=256, seed=0, progress=False, log=None,
                   checkpoint_dir=str(tmp_path / "ckpt"), keep=2), **kw)
    return fit(mlp(), optax.adam(3e-2), DIGITS.train, callbacks=callbacks, **kw)


# --------------------------------------------------------------------------
# Reading TensorBoard event files: TFRecord framing, masked CRC-32C, Event protos.


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for byte in data:
        c = CRC_TABLE[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path):
    """The payloads of a TFRecord file, each checked against its length and data CRCs."""
    data, records, at = open(path, "rb").read(), [], 0
    while at < len(data):
        header = data[at:at + 8]
        (length,), (length_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[at + 8:at + 12])
        assert length_crc == masked_crc(header), "bad length CRC"
        payload = data[at + 12:at + 12 + length]
        (data_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
        assert data_crc == masked_crc(payload), "bad data CRC"
        records.append(payload)
        at += 16 + length
    return records


def read_scalars(logdir):
    """``{tag: {step: value}}`` from every event file of ``logdir`` in file order, applying purges."""
    scalars = {}
    for name in sorted(os.listdir(logdir)):
        assert name.startswith("events.out.tfevents.")
        for payload in read_records(os.path.join(logdir, name)):
            event = event_pb2.Event.FromString(payload)
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                for steps in scalars.values():  # TensorBoard's purge: drop steps >= the restart's step
                    for step in [s for s in steps if s >= event.step]:
                        del steps[step]
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_tensorboard_restart_in_the_same_second_keeps_the_earlier_event_file(tmp_path, monkeypatch):
    # Event files are named after the second they start in: a resumed run starting in the
    # same second as the interrupted attempt must not overwrite that attempt's file.
    from tensorboardX import event_file_writer

    monkeypatch.setattr(event_file_writer, "time", type("Clock", (), {"time": staticmethod(lambda: 1.7e9)}))
    logdir = tmp_path / "tb"
    for done, epochs in ((0, range(1, 5)), (2, range(3, 6))):  # interrupted after 4, resumed after 2
        board = TensorBoard(str(logdir))
        board.on_fit_start(jc.callbacks.FitInfo(None, {}, 5, 1, done, [{}] * done, done > 0))
        for epoch in epochs:
            board.on_epoch_end(epoch, {"epoch": epoch, "loss": float(epoch + 10 * done)}, None)
        board.on_fit_end([])
    assert len(os.listdir(logdir)) == 2
    assert read_scalars(logdir)["epoch/loss"] == {1: 1.0, 2: 2.0, 3: 23.0, 4: 24.0, 5: 25.0}


def test_crc32c_matches_the_standard_check_value():
    assert crc32c(b"123456789") == 0xE3069283


# --------------------------------------------------------------------------


def waits(values, mode="max", min_delta=0.01):
    """EarlyStopping's patience counter after each epoch, replayed on a history's values."""
    best, wait, out = None, 0, []
    for value in values:
        if improves(value, best, mode, min_delta):
            best, wait = value, 0
        else:
            wait += 1
        out.append(wait)
    return out


def early_stopper():
    return EarlyStopping("test_accuracy", patience=3, mode="max", min_delta=0.01)


def test_a_digits_run_with_every_callback(tmp_path):
    stopper = early_stopper()
    best = BestCheckpoint(monitor="test_accuracy", mode="max")
    csv_path, logdir = tmp_path / "metrics.csv", tmp_path / "tb"
    ts, history = digits_fit(tmp_path, [stopper, best, CSVLogger(str(csv_path)), TensorBoard(str(logdir))])

    # EarlyStopping stopped where its rule says, before the last epoch.
    accuracies = [r["test_accuracy"] for r in history]
    assert stopper.stopped_epoch == len(history) == waits(accuracies).index(3) + 1 < EPOCHS
    assert int(ts.step) == len(history) * 5  # 1437 // 256 = 5 steps per epoch
    meta = ckpt.read_metadata(ckpt.latest_checkpoint(str(tmp_path / "ckpt")))
    assert meta["fit"]["stopped"] is True
    assert meta["fit"]["callbacks"]["EarlyStopping"] == {"best": stopper.best, "wait": 3,
                                                         "stopped_epoch": len(history)}

    # BestCheckpoint: the epoch of the highest test accuracy (not the last one), a whole train
    # state, outside retention.
    best_epoch = int(np.argmax(accuracies)) + 1
    assert best_epoch < len(history)
    path = tmp_path / "ckpt" / "best.safetensors"
    info = ckpt.read_metadata(str(path))["best"]
    assert info == {"monitor": "test_accuracy", "value": max(accuracies), "epoch": best_epoch,
                    "step": best_epoch * 5}
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path / "ckpt"))] == [len(history) * 5 - 5,
                                                                               len(history) * 5]
    restored = ckpt.load(str(path), ts)
    again = jc.evaluate(mlp(), restored.params, restored.state, DIGITS.test)
    assert again == {"loss": history[best_epoch - 1]["test_loss"], "accuracy": max(accuracies)}

    # CSVLogger: one row per epoch, the history's values.
    rows = list(csv.DictReader(open(csv_path)))
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(history) + 1))
    for row, record in zip(rows, history):
        assert float(row["test_accuracy"]) == record["test_accuracy"]
        assert float(row["train_loss"]) == record["train_loss"]

    # TensorBoard: the event file read back (framing, CRCs, protos) holds every epoch's scalars.
    scalars = read_scalars(logdir)
    assert {"train/loss", "train/accuracy", "test/loss", "test/accuracy", "epoch/seconds"} <= set(scalars)
    assert sorted(scalars["test/accuracy"]) == list(range(1, len(history) + 1))
    for record in history:
        assert scalars["test/loss"][record["epoch"]] == np.float32(record["test_loss"])


class Interrupt(Callback):
    """Raises at the end of epoch ``at`` (before its checkpoint), as a crash would."""

    def __init__(self, at):
        self.at = at

    def on_epoch_end(self, epoch, record, train_state):
        if epoch == self.at:
            raise KeyboardInterrupt


def test_interrupted_and_resumed_run_stops_at_the_same_epoch_and_logs_no_duplicates(tmp_path):
    def callbacks(*extra):
        return [early_stopper(), CSVLogger(str(tmp_path / "b.csv")), TensorBoard(str(tmp_path / "tb")), *extra]

    full, full_history = digits_fit(tmp_path / "a", callbacks()[:1])
    stop = len(full_history)
    # Interrupted in the epoch after the first one that did not improve: the checkpoint it
    # resumes from holds wait = 1 (without it, the resumed run would stop later).
    at = waits([r["test_accuracy"] for r in full_history]).index(1) + 2
    assert at <= stop
    with pytest.raises(KeyboardInterrupt):
        digits_fit(tmp_path / "b", callbacks(Interrupt(at)))
    meta = ckpt.read_metadata(ckpt.latest_checkpoint(str(tmp_path / "b" / "ckpt")))
    assert meta["fit"]["epochs_done"] == at - 1 and meta["fit"]["callbacks"]["EarlyStopping"]["wait"] == 1
    resumed, history = digits_fit(tmp_path / "b", callbacks(), resume=True)
    assert len(history) == stop
    assert all(np.asarray(x).tobytes() == np.asarray(y).tobytes()
               for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)))
    rows = list(csv.DictReader(open(tmp_path / "b.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, stop + 1))
    # The interrupted attempt wrote epoch `at` to TensorBoard; the resumed writer purged it.
    scalars = read_scalars(tmp_path / "tb")
    assert sorted(scalars["test/accuracy"]) == list(range(1, stop + 1))
    assert scalars["test/accuracy"][at] == np.float32(history[at - 1]["test_accuracy"])
    assert len(os.listdir(tmp_path / "tb")) == 2


class StopAtStep(Callback):
    def __init__(self, step):
        self.step, self.seen = step, []

    def on_step_end(self, step, metrics):
        self.seen.append(step)
        assert set(metrics) == {"loss", "accuracy"} and isinstance(metrics["loss"], float)
        return step == self.step


def test_a_step_hook_sees_every_step_and_can_stop_the_run(tmp_path):
    cb = StopAtStep(7)
    ts, history = digits_fit(tmp_path, [cb], checkpoint_dir=None)
    # Metrics are read at the end of epoch 1 (step 5) and of epoch 2, where the stop takes effect.
    assert cb.seen == list(range(1, 11)) and int(ts.step) == 10 and len(history) == 2


def test_callback_arguments_and_missing_entries(tmp_path):
    with pytest.raises(ValueError, match="EarlyStopping: patience must be an int >= 1, got 0"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="EarlyStopping: unknown mode 'up'; expected one of \\('min', 'max'\\)"):
        EarlyStopping(mode="up")
    with pytest.raises(TypeError, match="BestCheckpoint: monitor must be the name of a record entry"):
        BestCheckpoint(monitor=3)
    with pytest.raises(TypeError, match="fit: callbacks must be a list or tuple, got EarlyStopping"):
        CallbackList(EarlyStopping())
    with pytest.raises(ValueError, match=r"EarlyStopping: the epoch record has no 'test_loss' \(fit has no test"):
        digits_fit(tmp_path, [EarlyStopping()], test=None, epochs=1)
    with pytest.raises(ValueError, match="BestCheckpoint: give it a path, or fit a checkpoint_dir"):
        digits_fit(tmp_path, [BestCheckpoint()], checkpoint_dir=None, epochs=1)
    assert CallbackList([EarlyStopping(), EarlyStopping(), Callback()]).names == [
        "EarlyStopping", "EarlyStopping_1", "Callback"]
