"""CPU: lax against patches over a grid of narrow 3x3 convolutions (the data behind ``impl="auto"``).

Forward+backward (input and kernel gradients) of one 3x3 convolution to 64
channels, float32, for SAME and VALID padding, batch sizes 32 and 128, spatial
sizes 8, 16 and 28 and 1, 8 and 32 input channels; then the whole training
step of the digits CNN (the network ``jaxconv train`` runs by default; batch
64, 8x8x1, Adam). Both implementations are timed in interleaved rounds in one
process. Prints the tables and writes the ``cpu-autotune`` section of
``benchmarks/RESULTS.md``::

    python benchmarks/cpu_autotune.py            # full grid
    python benchmarks/cpu_autotune.py --quick    # two small shapes, writes nothing
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import fmt, markdown_table, measure_interleaved  # noqa: E402
from cpu import training_cases  # noqa: E402


def grid(quick: bool):
    from jaxconv.bench import ConvShape

    batches, sizes, channels = ((8,), (8,), (1, 8)) if quick else ((32, 128), (8, 16, 28), (1, 8, 32))
    paddings = ("SAME",) if quick else ("SAME", "VALID")
    return [ConvShape(f"{n}x{s}x{s}x{c} {p}", n, s, c, 64, padding=p)
            for p, n, s, c in itertools.product(paddings, batches, sizes, channels)]


def digits_step(args) -> str:
    """The digits CNN's training step with each implementation: a markdown paragraph."""
    from jaxconv.models import digits_cnn

    batch = 8 if args.quick else 64
    cases = training_cases(batch, 8, ("lax", "patches"), peers=False,
                           model_fn=lambda impl: digits_cnn(impl=impl))
    stats = measure_interleaved(cases, rounds=args.rounds or (2 if args.quick else 7),
                                target_s=0.02 if args.quick else 0.2, log=print)
    lax_s = stats.get("jaxconv lax")
    rows = [[name, fmt(s.median * 1e3, 2), f"{s.spread:.0%}",
             f"{lax_s.median / s.median:.2f}x" if lax_s else "-"] for name, s in stats.items()]
    return (f"Training step of the digits CNN (`jaxconv.models.digits_cnn`, batch {batch}, "
            "8x8x1, float32, Adam), median of interleaved rounds:\n\n"
            + markdown_table(["implementation", "ms/step", "spread", "speed vs lax"], rows))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small shapes (smoke test)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--results", default=common.RESULTS_MD)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from jaxconv.bench import run_conv_bench

    info = common.machine_info()
    print(common.describe_machine(info), flush=True)
    rows = run_conv_bench(grid(args.quick), ("lax", "patches"), modes=("fwd+bwd",),
                          rounds=args.rounds or (2 if args.quick else 5),
                          target_s=0.02 if args.quick else 0.1, log=print)
    by_shape: dict[str, dict] = {}
    for r in rows:
        by_shape.setdefault(r["shape"].label, {"shape": r["shape"]})[r["impl"]] = r["stats"]
    table_rows = []
    for entry in by_shape.values():
        lax_s, pat_s = entry.get("lax"), entry.get("patches")
        if not (lax_s and pat_s):
            continue
        speed = lax_s.median / pat_s.median
        table_rows.append([entry["shape"].describe(), fmt(lax_s.median * 1e3, 2),
                           fmt(pat_s.median * 1e3, 2), f"{speed:.2f}x",
                           "patches" if speed > 1 else "lax"])
    table = markdown_table(["shape (3x3, float32)", "lax ms", "patches ms",
                            "patches speed vs lax", "faster"], table_rows)
    text = ("## CPU: lax vs patches over narrow convolutions (`benchmarks/cpu_autotune.py`)\n\n"
            f"{common.describe_machine(info)}\n\nForward+backward (input and kernel gradients), "
            "median of interleaved rounds:\n\n" + table + "\n\n" + digits_step(args))
    print("\n" + text, flush=True)
    if not (args.quick or args.no_write):
        common.write_section(args.results, "cpu-autotune", text)
        print(f"\nwrote the 'cpu-autotune' section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
