"""Child process of ``test_resume.py``: a tiny training run that checkpoints often.

Prints ``saved <step>`` after every checkpoint. With ``--hang-in-write N`` the
N-th checkpoint write of this process stops half-way through writing its
temporary file, prints ``in-write <step>`` and sleeps, so that the parent can
SIGKILL it in the middle of a write. With ``--early-stopping`` it trains up to
12 epochs under ``EarlyStopping`` and prints ``epoch <E> wait <W>`` at every
epoch end (before that epoch's checkpoint), then ``stopped <E>`` at the end.
With ``--folder DIR`` it trains on the image folder DIR (``test_resume_folder.py``
writes it) through ``jaxconv.data.Loader``s, host augmentation on, the
validation split evaluated after each epoch.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def synthetic():
    """256 random 8x8 grey images (no data set to load) and no test split."""
    rng = np.random.default_rng(0)
    images = rng.random((256, 8, 8, 1), dtype=np.float32)
    return (images, (images.sum(axis=(1, 2, 3)) * 7).astype(np.int32) % 10), None


def folder_loaders(root):
    """The image folder's training Loader (32 images, batches of 4: 8 an epoch) and validation Loader."""
    from jaxconv.data import Augment, Loader, image_folder

    folder = image_folder(root, image_size=8, channels=1, augment=Augment(), val_fraction=1 / 3)
    return (Loader(folder.train, batch_size=4, seed=11),
            Loader(folder.val, batch_size=4, shuffle=False, drop_remainder=False))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--hang-in-write", type=int, default=0)
    parser.add_argument("--early-stopping", action="store_true")
    parser.add_argument("--folder", default=None)
    args = parser.parse_args()

    import jaxconv as jc
    from jaxconv import checkpoint as ckpt
    from jaxconv.callbacks import Callback, EarlyStopping
    from jaxconv.data import augmentation
    from jaxconv.recipes import make_optimizer
    from jaxconv.train import fit

    writes = {"n": 0, "step": None}
    real_save_checkpoint = ckpt.save_checkpoint
    real_write_bytes = ckpt._write_bytes

    def save_checkpoint(directory, step, tree, metadata=None, *, keep=3):
        writes["n"] += 1
        writes["step"] = step
        path = real_save_checkpoint(directory, step, tree, metadata, keep=keep)
        print(f"saved {step}", flush=True)
        return path

    def write_bytes(f, data):
        if writes["n"] == args.hang_in_write:
            f.write(data[: len(data) // 2])
            f.flush()
            print(f"in-write {writes['step']}", flush=True)
            time.sleep(600)
        real_write_bytes(f, data)

    ckpt.save_checkpoint = save_checkpoint
    ckpt._write_bytes = write_bytes

    train, test = synthetic() if args.folder is None else folder_loaders(args.folder)
    model = jc.serial(jc.Conv(4, 3), jc.Relu(), jc.MaxPool(2), jc.Flatten(), jc.Dense(10))
    epochs, batch = (12 if args.early_stopping else 3), (32 if args.folder is None else None)
    optimizer = make_optimizer("adamw", 3e-3, schedule="onecycle", total_steps=epochs * 8, weight_decay=1e-4)
    callbacks = []
    if args.early_stopping:
        stopper = EarlyStopping("train_loss", patience=2, min_delta=0.02)

        class Report(Callback):
            def on_epoch_end(self, epoch, record, train_state):
                print(f"epoch {epoch} wait {stopper.wait}", flush=True)

        callbacks = [stopper, Report()]
    _, history = fit(model, optimizer, train, test=test, epochs=epochs, batch_size=batch, seed=3,
                     augment=augmentation(1, flip=True), progress=False, log=None,
                     checkpoint_dir=args.dir, checkpoint_every=3, keep=2, resume=args.resume,
                     callbacks=callbacks)
    if args.early_stopping:
        print(f"stopped {len(history)}", flush=True)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
