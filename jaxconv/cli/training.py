"""``jaxconv train`` and ``jaxconv evaluate`` (and the loading of a run that ``jaxconv export`` shares).

A run trains on a data set held in memory (``--dataset``) or on an image folder
read from disk (``--data DIR``, a ``jaxconv.data.Loader``); a folder run keeps
the folder's classes and preprocessing in its config (``config["folder"]``),
which ``jaxconv predict`` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax

from jaxconv import augment, distributed, rundir, viz
from jaxconv import checkpoint as ckpt
from jaxconv.callbacks import BestCheckpoint, CSVLogger, EarlyStopping, TensorBoard
from jaxconv.convert import transfer
from jaxconv.data import Augment, Loader, batches_per_epoch, image_folder, load_dataset
from jaxconv.losses import cross_entropy
from jaxconv.models import get_model
from jaxconv.recipes import make_optimizer
from jaxconv.rundir import BEST_FILE, CSV_FILE, TENSORBOARD_DIR
from jaxconv.train import (
    NonFiniteLossError,
    TrainState,
    create_train_state,
    evaluate,
    evaluate_loader,
    fit,
    make_eval_step,
    predict,
)

#: The data set of a converted run that has none (``jaxconv convert`` without ``--dataset``).
NO_DATASET = "none"
#: The ``dataset`` of a run trained on an image folder (``--data DIR``).
FOLDER_DATASET = "folder"
DEFAULT_AUGMENT = {"digits": "crop:1", "mnist": "crop:2", "fashion_mnist": "crop:2,flip",
                   "cifar10": "crop:4,flip", FOLDER_DATASET: "none"}
#: The batch size of ``jaxconv evaluate`` on an image folder's validation split.
EVAL_BATCH = 256


class TrainingData(NamedTuple):
    """What ``jaxconv train`` trains on: arrays in memory, or an image folder's ``Loader``s.

    Attributes:
      name: the data set (``FOLDER_DATASET`` for a folder).
      train, test: ``Split``s, or ``Loader``s (``test`` is ``None`` for a folder without a validation split).
      n_train, n_test: their sizes.
      folder: the ``ImageFolder`` (``None`` in memory).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    train: Any
    test: Any
    n_train: int
    n_test: int
    folder: Any = None


def folder_loaders(folder: Any, *, batch_size: int, seed: int, workers: int) -> tuple[Any, Any]:
    """The training ``Loader`` of an ``ImageFolder`` and its validation ``Loader`` (``None`` without one)."""
    train = Loader(folder.train, batch_size=batch_size, seed=seed, workers=workers)
    val = None if folder.val is None else Loader(folder.val, batch_size=batch_size, shuffle=False,
                                                      drop_remainder=False, workers=workers)
    return train, val


def open_folder(path: str, config: dict, *, augment: Any = None) -> Any:
    """The ``ImageFolder`` of a folder run's config (its size and channels); the classes must match."""
    folder = image_folder(path, image_size=tuple(config["image_size"]), channels=config["channels"],
                               augment=augment)
    if list(folder.classes) != config["folder"]["classes"]:
        raise ValueError(f"{path} has the classes {list(folder.classes)}, the run was trained on "
                         f"{config['folder']['classes']}")
    return folder


def load_training_data(args: argparse.Namespace) -> TrainingData:
    """``--dataset`` in memory, or the image folder ``--data`` (``--host-augment``: ``Augment()``)."""
    if args.data is None:
        ds = load_dataset(args.dataset, args.data_dir)
        return TrainingData(ds.name, ds.num_classes, ds.input_shape, ds.train, ds.test, len(ds.train.labels),
                            len(ds.test.labels))
    folder = image_folder(args.data, image_size=args.image_size, channels=args.channels,
                               augment=Augment() if args.host_augment else None)
    train, val = folder_loaders(folder, batch_size=args.batch_size, seed=args.seed, workers=args.workers)
    return TrainingData(FOLDER_DATASET, folder.num_classes, tuple(folder.input_shape), train, val,
                        len(folder.train), 0 if val is None else len(folder.val), folder)
# What the recipe options write into a run directory (--save-best, --csv, --tensorboard).


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes JSON through a temporary file, fsync and a rename: never a half-written file."""
    ckpt.write_atomic(path, json.dumps(obj, indent=2).encode())


def build_run(config: dict, *, impl: str | None = None) -> tuple[Any, Any, Any]:
    """Model, optimizer and loss of a run from its config (shared by train, evaluate and export).

    ``impl`` overrides the config's convolution implementation (the params do not depend on it).
    """
    model = get_model(config["model"], num_classes=config["num_classes"], impl=impl or config.get("impl", "auto"))
    optimizer = make_optimizer(config["optimizer"], config["lr"], schedule=config["schedule"],
                               total_steps=config["total_steps"], weight_decay=config["weight_decay"],
                               warmup_steps=config.get("warmup_steps") or None)
    smoothing = config["label_smoothing"]
    loss_fn = functools.partial(cross_entropy, label_smoothing=smoothing) if smoothing else cross_entropy
    return model, optimizer, loss_fn


def run_config(args: argparse.Namespace, data: TrainingData) -> dict:
    """The options of a training run, as stored in its checkpoints and ``metrics.json``.

    A folder run adds the folder (``data``), ``image_size``, ``channels``,
    ``host_augment`` and ``folder`` (its classes and preprocessing).
    """
    epochs = args.epochs if args.epochs is not None else (30 if data.name == "digits" else 10)
    config = {
        "dataset": data.name, "model": args.model, "num_classes": data.num_classes,
        "input_shape": list(data.input_shape), "optimizer": args.optimizer, "lr": args.lr,
        "schedule": args.schedule, "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing,
        "augment": DEFAULT_AUGMENT[data.name] if args.augment == "auto" else args.augment,
        "epochs": epochs, "batch_size": args.batch_size, "seed": args.seed, "impl": args.impl,
        "steps_per_call": args.steps_per_call, "microbatches": args.microbatches,
        "total_steps": epochs * args.steps_per_call * batches_per_epoch(
            data.n_train, args.batch_size, args.steps_per_call),
        "warmup_steps": args.warmup_steps, "clip_norm": args.clip_norm or 0.0, "ema": args.ema or 0.0,
        "precision": args.precision, "early_stopping": args.early_stopping or 0, "monitor": args.monitor,
    }
    if data.folder is not None:
        config.update(data=os.path.abspath(args.data), image_size=list(data.folder.preprocess.image_size),
                      channels=args.channels, host_augment=args.host_augment, folder=data.folder.metadata())
    return config


def make_callbacks(args: argparse.Namespace, config: dict) -> list:
    """The callbacks the options ask for: early stopping, best checkpoint, CSV, TensorBoard."""
    mode = "max" if config["monitor"].endswith("accuracy") else "min"
    callbacks = []
    if config["early_stopping"]:
        callbacks.append(EarlyStopping(config["monitor"], config["early_stopping"], mode))
    if args.save_best:
        callbacks.append(BestCheckpoint(os.path.join(args.out, BEST_FILE), monitor=config["monitor"], mode=mode))
    if args.csv:
        callbacks.append(CSVLogger(os.path.join(args.out, CSV_FILE)))
    if args.tensorboard:
        callbacks.append(TensorBoard(os.path.join(args.out, TENSORBOARD_DIR)))
    return callbacks


def recipe_summary(config: dict) -> str:
    """``, warmup 100, clip-norm 1.0, ema 0.999, precision bf16``: the recipe options that are on."""
    parts = [f"warmup {config['warmup_steps']}" if config["warmup_steps"] else "",
             f"clip-norm {config['clip_norm']}" if config["clip_norm"] else "",
             f"ema {config['ema']}" if config["ema"] else "",
             f"precision {config['precision']}" if config["precision"] != "f32" else "",
             f"early stopping {config['early_stopping']} on {config['monitor']}" if config["early_stopping"] else ""]
    return "".join(f", {p}" for p in parts if p)


def write_plots(out: str, model, params, state, history, test, num_classes: int) -> list[str]:
    """Writes the four PNGs of a run to ``out``; returns their paths.

    ``test``: the in-memory test ``Split``; ``None`` (an image folder) leaves
    out the feature maps and the confusion matrix.
    """
    paths = [viz.plot_history(history, os.path.join(out, rundir.PLOTS["history"]))]
    try:
        _, kernel = viz.first_conv(model, params)
        if kernel.ndim == 4:
            paths.append(viz.plot_filters(kernel, os.path.join(out, rundir.PLOTS["filters"])))
            if test is not None:
                paths.append(viz.plot_feature_maps(model, params, state, test.images[0],
                                                   os.path.join(out, rundir.PLOTS["feature_maps"]),
                                                   label=int(test.labels[0])))
    except ValueError as e:  # a model without a (top-level, 2-D) convolution
        print(f"skipping the filter plots: {e}")
    if test is None:
        return paths
    predictions = predict(model, params, state, test.images)
    matrix = viz.confusion_matrix(test.labels, predictions, num_classes)
    paths.append(viz.plot_confusion(matrix, os.path.join(out, rundir.PLOTS["confusion"])))
    return paths


def setup_devices(args: argparse.Namespace):
    """Joins a multi-process run if asked (before anything touches a device); returns the mesh.

    The mesh spans ``--devices`` devices (default: all of them, over all processes);
    ``None`` for a single device.
    """
    distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                           auto=args.auto_distributed)
    if args.devices is None and jax.device_count() == 1:
        return None
    if args.devices == 1 and jax.process_count() == 1:
        return None
    mesh = distributed.data_mesh(args.devices)
    distributed.check_batch_size(args.batch_size, mesh, context="--batch-size")
    return mesh


def check_resume_config(checkpoint_dir: str, config: dict) -> None:
    """Refuses to resume a run with options that differ from those it was started with."""
    for _, path in reversed(ckpt.list_checkpoints(checkpoint_dir)):
        try:
            old = ckpt.read_metadata(path).get("config", {})
            break
        except ckpt.CorruptCheckpointError:  # fit skips it too
            continue
    else:
        return
    changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in config.items() if k in old and old[k] != v]
    if changed:
        raise ValueError(f"--resume: {path} was written with other options ({'; '.join(changed)}); "
                         "use the same options or another --out")


@contextlib.contextmanager
def owned_run_directory(args: argparse.Namespace) -> Iterator[list[str]]:
    """Holds ``--out`` for this run (process 0, which writes there); yields the paths ``--overwrite`` removed."""
    if not distributed.is_primary():
        yield []
        return
    with rundir.locked(args.out, context="--out"):
        yield rundir.claim(args.out, resume=args.resume, overwrite=args.overwrite, context="--out")


def _header(args: argparse.Namespace, config: dict, data: TrainingData, mesh) -> str:
    devices = 1 if mesh is None else mesh.devices.size
    name = data.name if data.folder is None else (f"the image folder {args.data} ({data.num_classes} classes, "
                                                  f"{args.workers} loader worker(s))")
    return (f"jaxconv train: {args.model} on {name} "
            f"({data.n_train} train / {data.n_test} test), {config['epochs']} epochs, "
            f"batch {args.batch_size}, {args.optimizer} lr {args.lr} ({args.schedule}), "
            f"label smoothing {args.label_smoothing}, augment {config['augment']}, seed {args.seed}, "
            f"conv impl {args.impl}, {args.steps_per_call} step(s) per call, "
            f"{args.microbatches} micro-batch(es) per step, "
            f"backend {jax.default_backend()}, {devices} device(s), {jax.process_count()} process(es)"
            + recipe_summary(config))


def _write_outputs(args: argparse.Namespace, config: dict, model, state, history, data: TrainingData) -> None:
    """``metrics.json`` and the plots of a finished run (process 0)."""
    final = history[-1]
    if "test_accuracy" in final:
        print(f"final test accuracy: {final['test_accuracy']:.4f}")
    if len(history) < config["epochs"]:
        print(f"stopped early after epoch {len(history)} of {config['epochs']}")
    metrics_path = os.path.join(args.out, rundir.METRICS_FILE)
    write_json_atomic(metrics_path, {
        "config": config, "history": history, "final_test_accuracy": final.get("test_accuracy"),
        "final_test_loss": final.get("test_loss"),
        "checkpoint": ckpt.latest_checkpoint(os.path.join(args.out, rundir.CHECKPOINTS)),
    })
    print(f"wrote {metrics_path}")
    if not args.no_plots:
        for path in write_plots(args.out, model, state.params, state.state, history,
                                data.test if data.folder is None else None, data.num_classes):
            print(f"wrote {path}")


def init_from(run_dir: str, config: dict[str, Any], model, optimizer) -> tuple[TrainState, list[str]]:
    """The train state ``fit`` would start from, with every weight the run in ``run_dir`` has for it.

    Params and layer state are taken where path and shape match
    (``jaxconv.convert.transfer``); the others, e.g. a classifier head for
    another number of classes, keep their fresh initialisation, whose key is
    the one ``fit`` would use for the run's seed. Returns the state and the
    paths of the params that kept their initialisation.
    """
    source = load_run(run_dir).train_state
    init_key = jax.random.split(jax.random.PRNGKey(config["seed"]))[0]
    ts = create_train_state(model, init_key, tuple(config["input_shape"]), optimizer,
                            ema=bool(config["ema"]), policy=config["precision"])
    params, kept = transfer(source.params, ts.params)
    state, _ = transfer(source.state, ts.state)
    ts = ts._replace(params=params, state=state, opt_state=optimizer.init(params),
                     ema=None if ts.ema is None else params)
    return ts, kept


def _initial_state(args: argparse.Namespace, config: dict, model, optimizer, say) -> TrainState | None:
    """``--init-from DIR``: the weights of the run in DIR (``None``: ``fit`` initialises)."""
    if not args.init_from:
        return None
    ts, kept = init_from(args.init_from, config, model, optimizer)
    say(f"--init-from {args.init_from}: every weight but {', '.join(kept) or 'none'} (fresh)")
    return ts


def cmd_train(args: argparse.Namespace) -> int:
    mesh = setup_devices(args)
    say = print if distributed.is_primary() else (lambda *a, **k: None)
    with owned_run_directory(args) as removed:
        if removed:
            say(f"--overwrite: removed {len(removed)} file(s) of the previous run in {args.out}")
        data = load_training_data(args)
        config = run_config(args, data)
        model, optimizer, loss_fn = build_run(config)
        say(_header(args, config, data, mesh))
        checkpoint_dir = os.path.join(args.out, rundir.CHECKPOINTS)
        if args.resume:
            check_resume_config(checkpoint_dir, config)
        augment_fn, mix = augment.build(config["augment"], data.num_classes)
        start = _initial_state(args, config, model, optimizer, say)
        try:
            state, history = fit(model, optimizer, data.train, test=data.test, epochs=config["epochs"],
                                 train_state=start,
                                 batch_size=args.batch_size, loss_fn=loss_fn, seed=args.seed,
                                 steps_per_call=args.steps_per_call, microbatches=args.microbatches,
                                 progress=not args.no_progress, augment=augment_fn, mix=mix,
                                 checkpoint_dir=checkpoint_dir, checkpoint_every=args.checkpoint_every,
                                 keep=args.keep, resume=args.resume, metadata={"config": config}, mesh=mesh,
                                 callbacks=make_callbacks(args, config), policy=config["precision"],
                                 ema=config["ema"] or None, clip_norm=config["clip_norm"] or None)
        except NonFiniteLossError as e:
            print(f"jaxconv train: {e}", file=sys.stderr)
            return 1
        state = distributed.fetch(state)  # host copies: the plots below run on process 0 alone
        if distributed.is_primary():  # process 0 reports and writes the outputs
            _write_outputs(args, config, model, state, history, data)
    return 0


class LoadedRun(NamedTuple):
    """A run's checkpoint loaded back: its path, config, model, loss and train state."""

    path: str
    config: dict
    model: Any
    loss_fn: Any
    train_state: TrainState


def load_run(out: str, *, which: str = "latest", impl: str | None = None) -> LoadedRun:
    """Loads the newest checkpoint of the run in ``out`` (``which="best"``: its ``best.safetensors``).

    Raises:
      FileNotFoundError: no such checkpoint; ValueError: one without a run config.
    """
    if which == "best":
        path = os.path.join(out, BEST_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {BEST_FILE} in {out} (train with --save-best)")
    else:
        checkpoint_dir = os.path.join(out, rundir.CHECKPOINTS)
        path = ckpt.latest_checkpoint(checkpoint_dir)
        if path is None:
            raise FileNotFoundError(f"no checkpoint in {checkpoint_dir} (run `jaxconv train --out {out}`)")
    config = ckpt.read_metadata(path).get("config")
    if config is None:
        raise ValueError(f"{path} has no run config (not written by `jaxconv train`)")
    model, optimizer, loss_fn = build_run(config, impl=impl)
    like = create_train_state(model, jax.random.PRNGKey(0), tuple(config["input_shape"]), optimizer,
                              ema=bool(config.get("ema")), policy=config.get("precision", "f32"))
    return LoadedRun(path, config, model, loss_fn, ckpt.load(path, like))


def evaluate_folder(run: LoadedRun, *, workers: int = 0) -> tuple[dict[str, float], int]:
    """``(metrics, examples)`` of a folder run on its folder's validation split.

    Raises:
      ValueError: the folder has no validation split, or other classes.
    """
    config, ts = run.config, run.train_state
    folder = open_folder(config["data"], config)
    if folder.val is None:
        raise ValueError(f"the image folder {config['data']} has no validation split to evaluate on")
    loader = Loader(folder.val, batch_size=min(EVAL_BATCH, len(folder.val)), shuffle=False,
                    drop_remainder=False, workers=workers, shard=(0, 1))
    eval_step = make_eval_step(run.model, run.loss_fn, policy=config.get("precision", "f32"))
    return evaluate_loader(eval_step, ts.eval_params, ts.state, loader), len(folder.val)


def cmd_evaluate(args: argparse.Namespace) -> int:
    try:
        run = load_run(args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"jaxconv evaluate: {e}", file=sys.stderr)
        return 1
    config, ts = run.config, run.train_state
    if config["dataset"] == FOLDER_DATASET:
        result, count = evaluate_folder(run)
        print(f"{run.path}: step {int(ts.step)}, {config['model']} on the image folder {config['data']}: "
              f"val loss {result['loss']:.4f}, val accuracy {result['accuracy']:.4f} ({count} examples)")
        return 0
    if config["dataset"] == NO_DATASET:
        print(f"jaxconv evaluate: {run.path} holds converted weights with no data set to evaluate on "
              "(give `jaxconv convert` a --dataset)", file=sys.stderr)
        return 1
    data = load_dataset(config["dataset"], args.data_dir)
    result = evaluate(run.model, ts.eval_params, ts.state, data.test, loss_fn=run.loss_fn,
                      policy=config.get("precision", "f32"))
    print(f"{run.path}: step {int(ts.step)}, {config['model']} on {config['dataset']}: "
          f"test loss {result['loss']:.4f}, test accuracy {result['accuracy']:.4f} "
          f"({len(data.test.labels)} examples)")
    return 0
