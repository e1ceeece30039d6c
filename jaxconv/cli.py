"""The ``jaxconv`` command line: ``train`` and friends."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence


def write_json_atomic(path: str, obj) -> None:
    """Writes JSON through a temporary file, fsync and a rename: never a half-written file."""
    from jaxconv.checkpoint import write_atomic

    write_atomic(path, json.dumps(obj, indent=2).encode())


DEFAULT_AUGMENT = {"digits": "crop:1", "mnist": "crop:2", "fashion_mnist": "crop:2,flip",
                   "cifar10": "crop:4,flip"}
PLOTS = {"history": "loss_accuracy.png", "filters": "filters.png",
         "feature_maps": "feature_maps.png", "confusion": "confusion_matrix.png"}


def _loss_fn(label_smoothing: float):
    import functools

    from jaxconv.losses import cross_entropy

    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")
    return functools.partial(cross_entropy, label_smoothing=label_smoothing) if label_smoothing else cross_entropy


def _build(config: dict):
    """Model, optimizer and loss of a run from its config (shared by train and evaluate)."""
    from jaxconv.models import get_model
    from jaxconv.train import make_optimizer

    model = get_model(config["model"], num_classes=config["num_classes"],
                      impl=config.get("impl", "auto"))
    optimizer = make_optimizer(config["optimizer"], config["lr"], schedule=config["schedule"],
                               total_steps=config["total_steps"], weight_decay=config["weight_decay"])
    return model, optimizer, _loss_fn(config["label_smoothing"])


def write_plots(out: str, model, params, state, history, test, num_classes: int) -> list[str]:
    """Writes the four PNGs of a run to ``out``; returns their paths."""
    from jaxconv import viz
    from jaxconv.train import predict

    paths = [viz.plot_history(history, os.path.join(out, PLOTS["history"]))]
    try:
        _, kernel = viz.first_conv(model, params)
        if kernel.ndim == 4:
            paths.append(viz.plot_filters(kernel, os.path.join(out, PLOTS["filters"])))
            paths.append(viz.plot_feature_maps(model, params, state, test.images[0],
                                               os.path.join(out, PLOTS["feature_maps"]),
                                               label=int(test.labels[0])))
    except ValueError as e:  # a model without a (top-level, 2-D) convolution
        print(f"skipping the filter plots: {e}")
    predictions = predict(model, params, state, test.images)
    matrix = viz.confusion_matrix(test.labels, predictions, num_classes)
    paths.append(viz.plot_confusion(matrix, os.path.join(out, PLOTS["confusion"])))
    return paths


def setup_devices(args: argparse.Namespace):
    """Joins a multi-process run if asked (before anything touches a device); returns the mesh.

    The mesh spans ``--devices`` devices (default: all of them, over all processes);
    ``None`` for a single device.
    """
    from jaxconv import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                        auto=args.auto_distributed)
    import jax

    if args.devices is None and jax.device_count() == 1:
        return None
    if args.devices == 1 and jax.process_count() == 1:
        return None
    mesh = distributed.data_mesh(args.devices)
    distributed.check_batch_size(args.batch_size, mesh, context="--batch-size")
    return mesh


def _check_resume_config(checkpoint_dir: str, config: dict) -> None:
    """Refuses to resume a run with options that differ from those it was started with."""
    from jaxconv.checkpoint import CorruptCheckpointError, list_checkpoints, read_metadata

    for _, path in reversed(list_checkpoints(checkpoint_dir)):
        try:
            old = read_metadata(path).get("config", {})
            break
        except CorruptCheckpointError:  # fit skips it too
            continue
    else:
        return
    changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in config.items() if k in old and old[k] != v]
    if changed:
        raise ValueError(f"--resume: {path} was written with other options ({'; '.join(changed)}); "
                         "use the same options or another --out")


def cmd_train(args: argparse.Namespace) -> int:
    try:
        mesh = setup_devices(args)
    except ValueError as err:
        print(f"jaxconv train: {err}", file=sys.stderr)
        return 2
    import jax

    from jaxconv import distributed

    from jaxconv.data import batches_per_epoch, load_dataset, parse_augment
    from jaxconv.train import NonFiniteLossError, fit

    for flag, value in (("--batch-size", args.batch_size), ("--steps-per-call", args.steps_per_call),
                        ("--microbatches", args.microbatches)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.batch_size % args.microbatches:
        raise ValueError(f"--microbatches {args.microbatches} must divide --batch-size "
                         f"{args.batch_size}")
    data = load_dataset(args.dataset, args.data_dir)
    epochs = args.epochs if args.epochs is not None else (30 if data.name == "digits" else 10)
    augment_spec = DEFAULT_AUGMENT[data.name] if args.augment == "auto" else args.augment
    augment = parse_augment(augment_spec)
    config = {
        "dataset": data.name, "model": args.model, "num_classes": data.num_classes,
        "input_shape": list(data.input_shape), "optimizer": args.optimizer, "lr": args.lr,
        "schedule": args.schedule, "weight_decay": args.weight_decay,
        "label_smoothing": args.label_smoothing, "augment": augment_spec, "epochs": epochs,
        "batch_size": args.batch_size, "seed": args.seed, "impl": args.impl,
        "steps_per_call": args.steps_per_call, "microbatches": args.microbatches,
        "total_steps": epochs * args.steps_per_call * batches_per_epoch(
            len(data.train.labels), args.batch_size, args.steps_per_call),
    }
    model, optimizer, loss_fn = _build(config)
    say = print if distributed.is_primary() else (lambda *a, **k: None)
    devices = 1 if mesh is None else mesh.devices.size
    say(f"jaxconv train: {args.model} on {data.name} "
        f"({len(data.train.labels)} train / {len(data.test.labels)} test), {epochs} epochs, "
        f"batch {args.batch_size}, {args.optimizer} lr {args.lr} ({args.schedule}), "
        f"label smoothing {args.label_smoothing}, augment {augment_spec}, seed {args.seed}, "
        f"conv impl {args.impl}, {args.steps_per_call} step(s) per call, "
        f"{args.microbatches} micro-batch(es) per step, "
        f"backend {jax.default_backend()}, {devices} device(s), {jax.process_count()} process(es)")
    checkpoint_dir = os.path.join(args.out, "checkpoints")
    if args.resume:
        _check_resume_config(checkpoint_dir, config)
    try:
        state, history = fit(model, optimizer, data.train, test=data.test, epochs=epochs,
                             batch_size=args.batch_size, loss_fn=loss_fn, seed=args.seed,
                             steps_per_call=args.steps_per_call, microbatches=args.microbatches,
                             progress=not args.no_progress, augment=augment,
                             checkpoint_dir=checkpoint_dir, checkpoint_every=args.checkpoint_every,
                             keep=args.keep, resume=args.resume, metadata={"config": config}, mesh=mesh)
    except NonFiniteLossError as e:
        print(f"jaxconv train: {e}", file=sys.stderr)
        return 1
    state = distributed.fetch(state)  # host copies: the plots below run on process 0 alone
    if not distributed.is_primary():  # process 0 reports and writes the outputs
        return 0
    final = history[-1]
    print(f"final test accuracy: {final['test_accuracy']:.4f}")
    from jaxconv.checkpoint import latest_checkpoint

    write_json_atomic(os.path.join(args.out, "metrics.json"), {
        "config": config, "history": history, "final_test_accuracy": final["test_accuracy"],
        "final_test_loss": final["test_loss"], "checkpoint": latest_checkpoint(checkpoint_dir),
    })
    print(f"wrote {os.path.join(args.out, 'metrics.json')}")
    if not args.no_plots:
        for path in write_plots(args.out, model, state.params, state.state, history, data.test,
                                data.num_classes):
            print(f"wrote {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import jax

    from jaxconv import checkpoint as ckpt
    from jaxconv.data import load_dataset
    from jaxconv.train import create_train_state, evaluate

    checkpoint_dir = os.path.join(args.out, "checkpoints")
    path = ckpt.latest_checkpoint(checkpoint_dir)
    if path is None:
        print(f"jaxconv evaluate: no checkpoint in {checkpoint_dir} (run `jaxconv train --out {args.out}`)",
              file=sys.stderr)
        return 1
    meta = ckpt.read_metadata(path)
    config = meta.get("config")
    if config is None:
        print(f"jaxconv evaluate: {path} has no run config (not written by `jaxconv train`)", file=sys.stderr)
        return 1
    model, optimizer, loss_fn = _build(config)
    like = create_train_state(model, jax.random.PRNGKey(0), tuple(config["input_shape"]), optimizer)
    ts = ckpt.load(path, like)
    data = load_dataset(config["dataset"], args.data_dir)
    result = evaluate(model, ts.params, ts.state, data.test, loss_fn=loss_fn)
    print(f"{path}: step {int(ts.step)}, {config['model']} on {config['dataset']}: "
          f"test loss {result['loss']:.4f}, test accuracy {result['accuracy']:.4f} "
          f"({len(data.test.labels)} examples)")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from jaxconv.models import INPUT_SHAPES, get_model
    from jaxconv.structure import summary

    if args.input_shape:
        try:
            shape = tuple(int(d) for d in args.input_shape.split(","))
        except ValueError:
            print(f"jaxconv summary: --input-shape must be comma-separated ints such as "
                  f"32,32,3, got {args.input_shape!r}", file=sys.stderr)
            return 2
    else:
        shape = INPUT_SHAPES[args.model]
    model = get_model(args.model, num_classes=args.num_classes, impl=args.impl)
    print(f"{args.model} ({args.num_classes} classes, conv impl {args.impl!r})")
    print(summary(model, (-1, *shape)))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import time

    import jax

    from jaxconv.verify import format_report, verify

    print(f"jaxconv verify: impl='patches' vs impl='lax' on {args.cases} random configurations "
          f"({args.dtype}, seed {args.seed}, backend {jax.default_backend()})", flush=True)
    start = time.perf_counter()

    def progress(done, total):
        if not args.quiet and (done % 25 == 0 or done == total):
            print(f"  {done}/{total} cases", flush=True)

    report = verify(args.cases, dtype=args.dtype, seed=args.seed, progress=progress)
    print(format_report(report))
    print(f"{report.cases} cases in {time.perf_counter() - start:.1f} s")
    return 0 if report.ok else 1


def cmd_bench(args: argparse.Namespace) -> int:
    import jax

    from jaxconv.bench import (DEFAULT_SHAPES, QUICK_SHAPES, conv_bench_table, parse_shape,
                               run_conv_bench)

    try:
        shapes = [parse_shape(s) for s in args.shape] if args.shape else (
            QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    bad = [i for i in impls if i not in ("lax", "patches", "auto")]
    if bad or not impls:
        print(f"jaxconv bench: --impls must list lax, patches or auto, got {args.impls!r}",
              file=sys.stderr)
        return 2
    modes = {"fwd": ("fwd",), "fwd+bwd": ("fwd+bwd",), "both": ("fwd", "fwd+bwd")}[args.mode]
    print(f"jaxconv bench: conv {', '.join(impls)} ({args.dtype}), {', '.join(modes)}, "
          f"median of {args.rounds} interleaved rounds; backend {jax.default_backend()} "
          f"({jax.devices()[0].device_kind}), jax {jax.__version__}", flush=True)
    rows = run_conv_bench(shapes, impls, dtype=args.dtype, modes=modes, rounds=args.rounds,
                          target_s=0.05 if args.quick else 0.2,
                          log=None if args.quiet else (lambda m: print(m, flush=True)))
    print(conv_bench_table(rows, baseline=impls[0]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from jaxconv.models import MODELS
    from jaxconv.train import OPTIMIZERS, SCHEDULES

    parser = argparse.ArgumentParser(prog="jaxconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (default: digits_cnn on digits)")
    train.add_argument("--dataset", default="digits", choices=["digits", "mnist", "fashion_mnist", "cifar10"])
    train.add_argument("--data-dir", default=None,
                       help="directory with the data set files (default $JAXCONV_DATA or ./data)")
    train.add_argument("--model", default="digits_cnn", choices=sorted(MODELS))
    train.add_argument("--optimizer", default="adamw", choices=list(OPTIMIZERS))
    train.add_argument("--lr", type=float, default=3e-3, help="(peak) learning rate")
    train.add_argument("--schedule", default="onecycle", choices=list(SCHEDULES))
    train.add_argument("--weight-decay", type=float, default=1e-4)
    train.add_argument("--label-smoothing", type=float, default=0.1)
    train.add_argument("--augment", default="auto",
                       help="'auto' (per data set), 'none', or a comma list of crop:P and flip")
    train.add_argument("--epochs", type=int, default=None, help="default 30 on digits, else 10")
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--impl", default="auto", choices=["auto", "lax", "patches"],
                       help="convolution implementation (default: auto, per backend and shape)")
    train.add_argument("--steps-per-call", type=int, default=1, metavar="K",
                       help="optimizer steps per compiled call (default 1)")
    train.add_argument("--microbatches", type=int, default=1, metavar="M",
                       help="split each batch into M micro-batches inside the step, one "
                            "update from their mean gradient (default 1; see make_train_step)")
    train.add_argument("--out", default="runs/latest", help="output directory")
    train.add_argument("--checkpoint-every", type=int, default=None,
                       help="also checkpoint every N steps (always at the end of each epoch)")
    train.add_argument("--keep", type=int, default=3, help="number of newest checkpoints kept")
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest complete checkpoint in --out")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    scale = train.add_argument_group(
        "devices and hosts", "data-parallel training over a device mesh; the multi-host settings "
        "default to the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID")
    scale.add_argument("--devices", type=int, default=None, metavar="N",
                       help="train on N devices (default: all; the batch must divide by N)")
    scale.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="address of process 0 of a multi-host run")
    scale.add_argument("--num-processes", type=int, default=None, metavar="P",
                       help="number of processes of a multi-host run")
    scale.add_argument("--process-id", type=int, default=None, metavar="I",
                       help="this process's index in [0, P)")
    scale.add_argument("--auto-distributed", action="store_true",
                       help="let JAX detect the cluster (Cloud TPU pod slice, SLURM, Open MPI, Kubernetes)")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="reload a training run and report its test accuracy")
    evaluate.add_argument("--out", default="runs/latest", help="the run's output directory")
    evaluate.add_argument("--data-dir", default=None, help="directory with the data set files")
    evaluate.set_defaults(func=cmd_evaluate)

    summ = sub.add_parser("summary", help="print a model's layers, shapes, parameter counts "
                                          "and multiply-adds")
    summ.add_argument("model", choices=sorted(MODELS))
    summ.add_argument("--input-shape", default=None,
                      help="input shape without the batch, e.g. 32,32,3 (default: the model's)")
    summ.add_argument("--num-classes", type=int, default=10)
    summ.add_argument("--impl", default="auto", help="convolution implementation (auto, lax, "
                                                     "patches); does not change the counts")
    summ.set_defaults(func=cmd_summary)

    verify = sub.add_parser(
        "verify", help="check impl='patches' against impl='lax' on random convolutions")
    verify.add_argument("--cases", type=int, default=100, help="number of random configurations")
    verify.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument("--quiet", action="store_true", help="no progress lines")
    verify.set_defaults(func=cmd_verify)

    bench = sub.add_parser("bench", help="time the convolution implementations side by side "
                                         "on this machine (forward, forward+backward)")
    bench.add_argument("--impls", default="lax,patches,auto",
                       help="comma-separated implementations; the first is the baseline")
    bench.add_argument("--mode", default="both", choices=["fwd", "fwd+bwd", "both"])
    bench.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    bench.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    bench.add_argument("--shape", action="append", default=None, metavar="N,H,CIN,COUT[,K[,PAD[,S]]]",
                       help="a layer to time (repeatable); default: the MNIST CNN's layers "
                            "and 64-256 channel layers")
    bench.add_argument("--quick", action="store_true", help="tiny shapes, a smoke test")
    bench.add_argument("--quiet", action="store_true", help="only the table")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad options, missing or corrupt data files
        print(f"jaxconv {args.command}: error: {e}", file=sys.stderr)
        return 2


def run() -> int:
    """The ``jaxconv`` program: process-wide settings first, then :func:`main`.

    Before JAX starts, freed host buffers are kept for reuse (no page faults
    per step, ``runtime.retain_host_memory``) and JAX's persistent compilation
    cache is turned on (``runtime.enable_compilation_cache``; directory
    ``$JAXCONV_COMPILATION_CACHE``, ``0`` for none). ``main`` alone, as the
    tests call it, changes neither.
    """
    from jaxconv import runtime

    runtime.retain_host_memory(warn=False)
    runtime.enable_compilation_cache()
    return main()


if __name__ == "__main__":
    sys.exit(run())
