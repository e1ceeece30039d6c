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


def cmd_train(args: argparse.Namespace) -> int:
    import jax
    import optax

    from jaxconv.data import load_dataset
    from jaxconv.models import get_model
    from jaxconv.train import fit

    data = load_dataset(args.dataset)
    model = get_model(args.model, num_classes=data.num_classes)
    optimizer = optax.adam(args.lr)
    print(f"jaxconv train: {args.model} on {data.name} "
          f"({len(data.train.labels)} train / {len(data.test.labels)} test), "
          f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, seed {args.seed}, "
          f"backend {jax.default_backend()}")
    state, history = fit(model, optimizer, data.train, test=data.test, epochs=args.epochs,
                         batch_size=args.batch_size, seed=args.seed,
                         progress=not args.no_progress)
    final = history[-1]
    print(f"final test accuracy: {final['test_accuracy']:.4f}")
    write_json_atomic(os.path.join(args.out, "metrics.json"), {
        "dataset": data.name, "model": args.model, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "history": history, "final_test_accuracy": final["test_accuracy"],
    })
    print(f"wrote {os.path.join(args.out, 'metrics.json')}")
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
    train.set_defaults(func=cmd_train)

    verify = sub.add_parser(
        "verify", help="check impl='patches' against impl='lax' on random convolutions")
    verify.add_argument("--cases", type=int, default=100, help="number of random configurations")
    verify.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    verify.add_argument("--seed", type=int, default=0)
    verify.add_argument("--quiet", action="store_true", help="no progress lines")
    verify.set_defaults(func=cmd_verify)

    summ = sub.add_parser("summary", help="print a model's layers, shapes, parameter counts "
                                          "and multiply-adds")
    summ.add_argument("model", choices=sorted(MODELS))
    summ.add_argument("--input-shape", default=None,
                      help="input shape without the batch, e.g. 32,32,3 (default: the model's)")
    summ.add_argument("--num-classes", type=int, default=10)
    summ.add_argument("--impl", default="auto", help="convolution implementation (auto, lax, "
                                                     "patches); does not change the counts")
    summ.set_defaults(func=cmd_summary)
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
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
