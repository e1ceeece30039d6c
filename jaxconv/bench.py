"""Convolution micro-benchmarks on the user's machine (``jaxconv bench``).

Times ``jaxconv.ops.conv`` for each implementation (``lax``, ``patches``,
``auto``) on a set of layer shapes, forward and forward+backward (the
gradients with respect to input and kernel), and prints a table with the
median time, the spread and the arithmetic rate.

Also the timing core shared with the scripts in ``benchmarks/``: cases are
warmed up (compilation), then timed in *interleaved* rounds -- every case runs
once per round, in turn -- so that a machine whose speed drifts (other jobs,
frequency scaling) affects all cases alike; the statistic is the median over
rounds, the spread ``(max - min) / median``.

A benchmark is never a unit test: nothing here asserts a time.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax

from jaxconv.ops import conv
from jaxconv.validate import integer

# --------------------------------------------------------------------------
# Timing core.


@dataclass
class Stats:
    """Per-call timings of one case, in seconds."""

    name: str
    samples: list[float] = field(default_factory=list)
    items_per_call: float = 1.0  # images (or other items) processed by one call
    flops_per_call: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def spread(self) -> float:
        """``(max - min) / median`` over the rounds (0 with a single sample)."""
        if len(self.samples) < 2:
            return 0.0
        return (max(self.samples) - min(self.samples)) / self.median

    @property
    def rate(self) -> float:
        """Items per second at the median."""
        return self.items_per_call / self.median if self.samples else math.nan

    @property
    def flops_rate(self) -> float:
        """FLOP/s at the median."""
        return self.flops_per_call / self.median if self.samples else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "median_s": self.median, "spread": self.spread,
                "samples_s": list(self.samples), "items_per_call": self.items_per_call,
                "rate": self.rate, "flops_per_call": self.flops_per_call}


def jax_sync(out: Any) -> None:
    """Waits for every array of the pytree ``out``."""
    jax.block_until_ready(out)


def no_sync(out: Any) -> None:
    """For synchronous work (PyTorch on CPU)."""


@dataclass
class Case:
    """One thing to time.

    Attributes:
      name: row label.
      run: zero-argument callable doing one unit of work (one training step,
        one convolution...) and returning something ``sync`` can wait on.
      sync: waits for ``run``'s result (``jax_sync``, ``no_sync``, a CUDA sync).
      items: items (images) processed by one call, for items/s.
      flops: floating-point operations of one call, for FLOP/s.
    """

    name: str
    run: Callable[[], Any]
    sync: Callable[[Any], None] = jax_sync
    items: float = 1.0
    flops: float = 0.0


def time_calls(case: Case, n: int) -> float:
    """Seconds per call over ``n`` back-to-back calls, synced once at the end."""
    start = time.perf_counter()
    out = None
    for _ in range(n):
        out = case.run()
    case.sync(out)
    return (time.perf_counter() - start) / n


def measure_interleaved(
    cases: Sequence[Case],
    *,
    rounds: int = 5,
    warmup: int = 2,
    target_s: float = 0.2,
    max_inner: int = 100,
    time_cap_s: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Stats]:
    """Times ``cases`` in interleaved rounds after a warm-up.

    Each case is warmed up with ``warmup`` synced calls (the first compiles);
    the number of calls per sample is chosen so that one sample takes about
    ``target_s``. Then, in each of ``rounds`` rounds, every case takes one
    sample in turn. A case that raises is dropped and reported through
    ``log``; the others go on. With ``time_cap_s``, no new round starts once
    the cap is exceeded (the first round always completes).

    Returns:
      ``{name: Stats}``, one per-call time per completed round.

    Raises:
      ValueError: ``rounds < 1`` (there would be no timings).
    """
    integer(rounds, "rounds", context="measure_interleaved", minimum=1)
    start = time.perf_counter()
    live: list[tuple[Case, int]] = []
    results: dict[str, Stats] = {}
    for case in cases:
        try:
            last = math.nan
            for _ in range(max(warmup, 1)):
                last = time_calls(case, 1)
        except Exception as exc:  # noqa: BLE001 - one broken case must not stop the others
            if log:
                log(f"  {case.name}: failed in warm-up: {type(exc).__name__}: {exc}")
            continue
        inner = int(min(max_inner, max(1, target_s / max(last, 1e-9))))
        live.append((case, inner))
        results[case.name] = Stats(case.name, [], case.items, case.flops)
    for r in range(rounds):
        for entry in list(live):
            case, inner = entry
            try:
                results[case.name].samples.append(time_calls(case, inner))
            except Exception as exc:  # noqa: BLE001
                if log:
                    log(f"  {case.name}: failed: {type(exc).__name__}: {exc}")
                live.remove(entry)
                results.pop(case.name, None)
        if time_cap_s is not None and time.perf_counter() - start > time_cap_s:
            if log and r + 1 < rounds:
                log(f"  time cap of {time_cap_s:.0f} s reached after {r + 1} round(s)")
            break
    return results


# --------------------------------------------------------------------------
# Formatting.


def fmt(value: float | None, digits: int = 0) -> str:
    """A number with thousands separators; ``-`` for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    """``a / b`` as ``1.23x``; ``-`` when either is missing."""
    if not a or not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}x"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table, columns padded for reading as text."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


# --------------------------------------------------------------------------
# Convolution micro-benchmarks.


@dataclass(frozen=True)
class ConvShape:
    """One convolution layer: input ``(batch, size, size, c_in)``, a ``k x k`` kernel to ``c_out``."""

    label: str
    batch: int
    size: int
    c_in: int
    c_out: int
    k: int = 3
    padding: str = "SAME"
    stride: int = 1

    @property
    def out_size(self) -> int:
        if self.padding == "VALID":
            return (self.size - self.k) // self.stride + 1
        return -(-self.size // self.stride)

    @property
    def flops(self) -> float:
        """Forward FLOPs (2 per multiply-add)."""
        return 2.0 * self.batch * self.out_size ** 2 * self.k ** 2 * self.c_in * self.c_out

    def describe(self) -> str:
        return (f"{self.batch}x{self.size}x{self.size}x{self.c_in} -> {self.c_out}, "
                f"{self.k}x{self.k} {self.padding}" + (f" /{self.stride}" if self.stride > 1 else ""))


#: The MNIST CNN's two convolutions and wider 64-256 channel layers.
DEFAULT_SHAPES: tuple[ConvShape, ...] = (
    ConvShape("mnist conv1", 128, 28, 1, 32, padding="VALID"),
    ConvShape("mnist conv2", 128, 26, 32, 64, padding="VALID"),
    ConvShape("wide 64", 32, 32, 64, 64),
    ConvShape("wide 128", 32, 16, 128, 128),
    ConvShape("wide 256", 32, 8, 256, 256),
)

#: Small shapes for a smoke run (``--quick``).
QUICK_SHAPES: tuple[ConvShape, ...] = (
    ConvShape("small a", 4, 12, 1, 8, padding="VALID"),
    ConvShape("small b", 4, 10, 8, 16),
)


def conv_cases(shape: ConvShape, impls: Sequence[str], *, dtype: Any = "float32",
               modes: Sequence[str] = ("fwd", "fwd+bwd"), seed: int = 0) -> list[Case]:
    """Cases timing ``jaxconv.ops.conv`` on ``shape`` for each impl and mode.

    ``fwd`` computes the convolution; ``fwd+bwd`` computes it and its
    gradients with respect to input and kernel (a ``jax.vjp`` with a fixed
    cotangent), i.e. the work of one layer in a training step. The FLOP count
    of ``fwd+bwd`` is three times the forward's.
    """
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, (shape.batch, shape.size, shape.size, shape.c_in), dtype)
    w = jax.random.normal(kw, (shape.k, shape.k, shape.c_in, shape.c_out), dtype) * 0.1
    g = jax.random.normal(kg, (shape.batch, shape.out_size, shape.out_size, shape.c_out), dtype)
    cases = []
    for impl in impls:
        def f(x, w, impl=impl):
            return conv(x, w, stride=shape.stride, padding=shape.padding, impl=impl)

        fwd = jax.jit(f)
        both = jax.jit(lambda x, w, g, f=f: jax.vjp(f, x, w)[1](g))
        for mode in modes:
            if mode == "fwd":
                cases.append(Case(f"{shape.label} {impl} fwd", lambda fwd=fwd: fwd(x, w),
                                  items=shape.batch, flops=shape.flops))
            elif mode == "fwd+bwd":
                cases.append(Case(f"{shape.label} {impl} fwd+bwd",
                                  lambda both=both: both(x, w, g),
                                  items=shape.batch, flops=3 * shape.flops))
            else:
                raise ValueError(f"conv_cases: unknown mode {mode!r}; expected 'fwd' or 'fwd+bwd'")
    return cases


def run_conv_bench(
    shapes: Sequence[ConvShape] = DEFAULT_SHAPES,
    impls: Sequence[str] = ("lax", "patches"),
    *,
    dtype: Any = "float32",
    modes: Sequence[str] = ("fwd", "fwd+bwd"),
    rounds: int = 5,
    target_s: float = 0.2,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Times every (shape, impl, mode); one interleaved measurement per shape.

    Returns:
      One dict per row: ``shape`` (the ``ConvShape``), ``impl``, ``mode``,
      ``stats`` (``Stats``), ``gflops`` (GFLOP/s at the median).

    Raises:
      ValueError: ``rounds < 1`` (there would be no timings).
    """
    integer(rounds, "rounds", context="run_conv_bench", minimum=1)
    rows = []
    for shape in shapes:
        if log:
            log(f"  {shape.label}: {shape.describe()}")
        cases = conv_cases(shape, impls, dtype=dtype, modes=modes)
        stats = measure_interleaved(cases, rounds=rounds, target_s=target_s, log=log)
        for impl in impls:
            for mode in modes:
                s = stats.get(f"{shape.label} {impl} {mode}")
                if s is not None:
                    rows.append({"shape": shape, "impl": impl, "mode": mode, "stats": s,
                                 "gflops": s.flops_rate / 1e9})
    return rows


def conv_bench_table(rows: Sequence[dict[str, Any]], baseline: str = "lax") -> str:
    """Markdown table of ``run_conv_bench`` rows, with each impl's speed relative to ``baseline``."""
    base = {(r["shape"].label, r["mode"]): r["stats"].median for r in rows if r["impl"] == baseline}
    table = []
    for r in rows:
        s = r["stats"]
        ref = base.get((r["shape"].label, r["mode"]))
        table.append([r["shape"].label, r["shape"].describe(), r["impl"], r["mode"],
                      fmt(s.median * 1e3, 2), f"{s.spread:.0%}", fmt(r["gflops"], 1),
                      ratio(ref, s.median) if ref else "-"])
    return markdown_table(["layer", "shape", "impl", "pass", "ms (median)", "spread", "GFLOP/s",
                           f"speed vs {baseline}"], table)


def parse_shape(text: str) -> ConvShape:
    """``"N,H,C_in,C_out[,k[,padding[,stride]]]"`` -> ``ConvShape`` (square images and kernels)."""
    parts = [p.strip() for p in text.split(",")]
    if not 4 <= len(parts) <= 7:
        raise ValueError(
            f"jaxconv bench: --shape must be N,H,C_in,C_out[,k[,padding[,stride]]], got {text!r}")
    try:
        n, h, ci, co = (int(p) for p in parts[:4])
        k = int(parts[4]) if len(parts) > 4 else 3
        stride = int(parts[6]) if len(parts) > 6 else 1
    except ValueError:
        raise ValueError(
            f"jaxconv bench: --shape needs integer sizes (N,H,C_in,C_out[,k[,padding[,stride]]]), "
            f"got {text!r}") from None
    padding = parts[5].upper() if len(parts) > 5 else "SAME"
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"jaxconv bench: --shape padding must be SAME or VALID, got {parts[5]!r}")
    if min(n, h, ci, co, k, stride) < 1:
        raise ValueError(f"jaxconv bench: --shape sizes must be >= 1, got {text!r}")
    return ConvShape(f"{n}x{h}x{h}x{ci}->{co}", n, h, ci, co, k, padding, stride)
