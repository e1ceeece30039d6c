"""The ``jaxconv`` command line: ``train`` and friends."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence


def write_json_atomic(path: str, obj) -> None:
    """Writes JSON through a temporary file and a rename: never a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def setup_devices(args: argparse.Namespace):
    """Joins a multi-process run if asked (before anything touches a device); returns the mesh.

    The mesh spans ``--devices`` devices (default: all of them, over all processes);
    ``None`` for a single device.
    """
    from jaxconv import parallel

    parallel.initialize(args.coordinator, args.num_processes, args.process_id,
                        auto=args.auto_distributed)
    import jax

    if args.devices is None and jax.device_count() == 1:
        return None
    if args.devices == 1 and jax.process_count() == 1:
        return None
    mesh = parallel.data_mesh(args.devices)
    parallel.check_batch_size(args.batch_size, mesh, where="--batch-size")
    return mesh


def cmd_train(args: argparse.Namespace) -> int:
    try:
        mesh = setup_devices(args)
    except ValueError as err:
        print(f"jaxconv train: {err}", file=sys.stderr)
        return 2
    import jax
    import optax

    from jaxconv.data import load_dataset
    from jaxconv.models import get_model
    from jaxconv.parallel import is_primary
    from jaxconv.train import fit

    data = load_dataset(args.dataset)
    model = get_model(args.model, num_classes=data.num_classes)
    optimizer = optax.adam(args.lr)
    say = print if is_primary() else (lambda *a, **k: None)
    devices = 1 if mesh is None else mesh.devices.size
    say(f"jaxconv train: {args.model} on {data.name} "
        f"({len(data.train.labels)} train / {len(data.test.labels)} test), "
        f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, seed {args.seed}, "
        f"backend {jax.default_backend()}, {devices} device(s), {jax.process_count()} process(es)")
    state, history = fit(model, optimizer, data.train, test=data.test, epochs=args.epochs,
                         batch_size=args.batch_size, seed=args.seed,
                         progress=not args.no_progress, mesh=mesh)
    if not is_primary():  # process 0 reports and writes the outputs
        return 0
    final = history[-1]
    print(f"final test accuracy: {final['test_accuracy']:.4f}")
    write_json_atomic(os.path.join(args.out, "metrics.json"), {
        "dataset": data.name, "model": args.model, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "history": history, "final_test_accuracy": final["test_accuracy"],
    })
    print(f"wrote {os.path.join(args.out, 'metrics.json')}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from jaxconv.models import INPUT_SHAPES, get_model
    from jaxconv.summary import summary

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


def build_parser() -> argparse.ArgumentParser:
    from jaxconv.models import MODELS

    parser = argparse.ArgumentParser(prog="jaxconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (default: digits_cnn on digits)")
    train.add_argument("--dataset", default="digits", choices=["digits"])
    train.add_argument("--model", default="digits_cnn", choices=sorted(MODELS))
    train.add_argument("--epochs", type=int, default=15)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default="runs/latest", help="output directory")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
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

    summ = sub.add_parser("summary", help="print a model's layers, shapes, parameter counts "
                                          "and multiply-adds")
    summ.add_argument("model", choices=sorted(MODELS))
    summ.add_argument("--input-shape", default=None,
                      help="input shape without the batch, e.g. 32,32,3 (default: the model's)")
    summ.add_argument("--num-classes", type=int, default=10)
    summ.add_argument("--impl", default="auto", help="convolution implementation (auto, lax, "
                                                     "patches); does not change the counts")
    summ.set_defaults(func=cmd_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
