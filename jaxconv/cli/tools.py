"""``jaxconv summary``, ``jaxconv verify`` and ``jaxconv bench``."""

from __future__ import annotations

import argparse
import sys
import time

import jax

from jaxconv.bench import DEFAULT_SHAPES, QUICK_SHAPES, conv_bench_table, parse_shape, run_conv_bench
from jaxconv.models import INPUT_SHAPES, get_model
from jaxconv.structure import summary
from jaxconv.validate import int_tuple
from jaxconv.verify import format_report, verify


def cmd_summary(args: argparse.Namespace) -> int:
    shape = INPUT_SHAPES[args.model]
    if args.input_shape:
        try:
            shape = int_tuple([int(d) for d in args.input_shape.split(",")], "--input-shape",
                              context="jaxconv summary", minimum=1)
        except ValueError:
            print(f"jaxconv summary: --input-shape must be comma-separated ints >= 1 such as "
                  f"32,32,3, got {args.input_shape!r}", file=sys.stderr)
            return 2
    model = get_model(args.model, num_classes=args.num_classes, impl=args.impl)
    print(f"{args.model} ({args.num_classes} classes, conv impl {args.impl!r})")
    print(summary(model, (-1, *shape)))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
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
    try:
        shapes = [parse_shape(s) for s in args.shape] if args.shape else (
            QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    except ValueError as exc:
        print(f"jaxconv bench: {exc}", file=sys.stderr)
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
