"""CPU: lax against patches over a grid of narrow 3x3 convolutions (the data behind ``impl="auto"``).

Forward+backward (input and kernel gradients) of one 3x3 convolution to 64
channels, float32, for SAME and VALID padding, batch sizes 32 and 128, spatial
sizes 8, 16 and 28 and 1, 8 and 32 input channels; both implementations timed in interleaved rounds
in one process. Prints a table and writes the ``cpu-autotune`` section of
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
from common import fmt, markdown_table  # noqa: E402


def grid(quick: bool):
    from jaxconv.bench import ConvShape

    batches, sizes, channels = ((8,), (8,), (1, 8)) if quick else ((32, 128), (8, 16, 28), (1, 8, 32))
    paddings = ("SAME",) if quick else ("SAME", "VALID")
    return [ConvShape(f"{n}x{s}x{s}x{c} {p}", n, s, c, 64, padding=p)
            for p, n, s, c in itertools.product(paddings, batches, sizes, channels)]


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
            "median of interleaved rounds:\n\n" + table)
    print("\n" + text, flush=True)
    if not (args.quick or args.no_write):
        common.write_section(args.results, "cpu-autotune", text)
        print(f"\nwrote the 'cpu-autotune' section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
