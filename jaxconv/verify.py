"""Checking a convolution implementation against ``lax.conv_general_dilated``.

``verify`` draws random convolution configurations -- dims, sizes, stride,
every padding form, padding_mode, dilation, groups (incl. depthwise and a
channel multiplier), transposed convolutions with ``output_padding`` -- and
compares a candidate implementation with the lax one in value and in gradient
(the vector-Jacobian product for a random cotangent, with respect to the input
and the kernel). The default candidate is jaxconv's own ``impl="patches"``;
pass ``candidate=`` to check your own function (see
``examples/verify_custom_conv.py``).

Errors are relative: ``max|a - b| / max|b|`` per compared array. Tolerances:
``1e-12`` in float64, ``1e-5`` in float32 (contractions at
``Precision.HIGHEST``).

The same configuration generator, :func:`draw_case`, drives the hypothesis
tests: it takes a ``choose(options)`` callable, so a NumPy generator or a
hypothesis ``data.draw`` can make the choices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv.ops.conv import conv, conv_transpose
from jaxconv.ops.spec import PADDING_MODES, conv_output_shape, conv_transpose_output_shape
from jaxconv.validate import choice, integer

TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
OPTIONS = ("op", "dims", "stride", "padding", "padding_mode", "dilation", "groups",
           "output_padding")


class Case(NamedTuple):
    """One random convolution configuration.

    Attributes:
      op: ``"conv"`` or ``"conv_transpose"``.
      x_shape: ``(N, *spatial, C)``.
      kernel_shape: ``(*k, C // groups, F)`` for conv, ``(*k, F // groups, C)``
        for conv_transpose.
      kwargs: keyword arguments of ``jaxconv.ops.conv`` / ``conv_transpose``
        (without ``impl`` and ``precision``).
      tags: option name -> label, for the per-option error table.
    """

    op: str
    x_shape: tuple[int, ...]
    kernel_shape: tuple[int, ...]
    kwargs: dict[str, Any]
    tags: dict[str, str]


def _padding(choose: Callable[[Sequence[Any]], Any], nd: int):
    form = choose(("SAME", "SAME_LOWER", "VALID", "int", "per-dim", "pairs"))
    if form in ("SAME", "SAME_LOWER", "VALID"):
        return form, form
    if form == "int":
        return choose((0, 1, 2)), form
    if form == "per-dim":
        return tuple(choose((0, 1, 2)) for _ in range(nd)), form
    return tuple((choose((-1, 0, 1, 2)), choose((-1, 0, 1, 2))) for _ in range(nd)), "pairs"


def _draw_once(choose, ops, dims):
    op = choose(tuple(ops))
    nd = choose(tuple(dims))
    max_size = {1: 9, 2: 6, 3: 4}[nd]
    spatial = tuple(choose(tuple(range(1, max_size + 1))) for _ in range(nd))
    window = tuple(choose((1, 2, 3)) for _ in range(nd))
    stride = tuple(choose((1, 1, 2, 3)) for _ in range(nd))
    dilation = tuple(choose((1, 1, 2)) for _ in range(nd))
    groups, c_g, f_g = choose((1, 1, 2, 3)), choose((1, 2)), choose((1, 2))
    batch = choose((1, 2))
    padding, pad_tag = _padding(choose, nd)
    stride_arg = stride[0] if len(set(stride)) == 1 else stride
    dilation_arg = dilation[0] if len(set(dilation)) == 1 else dilation
    tags = {"op": op, "dims": f"{nd}-D", "padding": pad_tag,
            "stride": "1" if max(stride) == 1 else ">1",
            "dilation": "1" if max(dilation) == 1 else ">1",
            "groups": "1" if groups == 1 else ("depthwise" if c_g == 1 else "grouped")}
    if op == "conv":
        mode = choose(PADDING_MODES)
        x_shape = (batch, *spatial, groups * c_g)
        k_shape = (*window, c_g, groups * f_g)
        kwargs = dict(stride=stride_arg, padding=padding, dilation=dilation_arg, groups=groups,
                      padding_mode=mode)
        conv_output_shape(x_shape, k_shape, **kwargs)  # empty output, padding too wide for mode
        tags.update(padding_mode=mode, output_padding="-")
    else:
        out_pad = tuple(choose(tuple(range(max(s, d)))) for s, d in zip(stride, dilation))
        x_shape = (batch, *spatial, groups * c_g)
        k_shape = (*window, f_g, groups * c_g)
        kwargs = dict(stride=stride_arg, padding=padding, dilation=dilation_arg, groups=groups,
                      output_padding=out_pad)
        conv_transpose_output_shape(x_shape, k_shape, **kwargs)
        tags.update(padding_mode="zeros", output_padding="0" if max(out_pad) == 0 else ">0")
    return Case(op, x_shape, k_shape, kwargs, tags)


def draw_case(choose: Callable[[Sequence[Any]], Any], *, ops: Sequence[str] = ("conv",
              "conv_transpose"), dims: Sequence[int] = (1, 2, 3), tries: int = 50) -> Case:
    """A random valid configuration; ``choose(options)`` returns one of ``options``.

    Draws until the configuration is valid (output not empty, padding allowed
    for the mode), at most ``tries`` times.
    """
    for _ in range(tries):
        try:
            return _draw_once(choose, ops, dims)
        except ValueError:
            continue
    raise RuntimeError(f"draw_case: no valid configuration in {tries} tries")


def numpy_chooser(rng: np.random.Generator) -> Callable[[Sequence[Any]], Any]:
    """``choose`` for :func:`draw_case` backed by a NumPy generator."""
    return lambda options: options[int(rng.integers(len(options)))]


def relative_error(a: Any, b: Any) -> float:
    """``max|a - b| / max|b|`` in float64 (absolute error when ``b`` is all zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    err = float(np.max(np.abs(a - b))) if b.size else 0.0
    return err / scale if scale > 0 else err


def _reference(op: str) -> Callable[..., Any]:
    base = conv if op == "conv" else conv_transpose
    return functools.partial(base, impl="lax", precision=lax.Precision.HIGHEST)


def default_candidate(op: str) -> Callable[..., Any]:
    """jaxconv's ``impl="patches"`` for ``op``."""
    base = conv if op == "conv" else conv_transpose
    return functools.partial(base, impl="patches", precision=lax.Precision.HIGHEST)


def run_case(case: Case, candidate: Callable[..., Any], reference: Callable[..., Any], *,
             dtype: Any = jnp.float32, seed: int = 0) -> tuple[float, float]:
    """Compares ``candidate`` with ``reference`` on ``case``; returns (value, gradient) errors.

    Both are called as ``fn(x, kernel, **case.kwargs)`` inside one ``jit``;
    the gradient error is the worse of the input and kernel gradients of
    ``<cotangent, fn(x, kernel)>``.
    """
    rng = np.random.default_rng(seed)
    dtype = jnp.dtype(dtype)
    x = jnp.asarray(rng.standard_normal(case.x_shape), dtype)
    kernel = jnp.asarray(rng.standard_normal(case.kernel_shape), dtype)
    y_shape = jax.eval_shape(lambda a, b: reference(a, b, **case.kwargs), x, kernel).shape
    ct = jnp.asarray(rng.standard_normal(y_shape), dtype)

    @jax.jit
    def both(x, kernel, ct):
        out = []
        for fn in (candidate, reference):
            y, vjp = jax.vjp(lambda a, b, fn=fn: fn(a, b, **case.kwargs), x, kernel)
            out.append((y, *vjp(ct)))
        return out

    (y, gx, gk), (y_ref, gx_ref, gk_ref) = both(x, kernel, ct)
    value = relative_error(y, y_ref)
    grad = max(relative_error(gx, gx_ref), relative_error(gk, gk_ref))
    return value, grad


class Report(NamedTuple):
    """Outcome of :func:`verify`: ``rows`` are ``(option, label, cases, value, grad)``."""

    ok: bool
    cases: int
    tolerance: float
    worst_value: float
    worst_grad: float
    rows: list[tuple[str, str, int, float, float]]
    failures: list[tuple[Case, float, float]]


def verify(cases: int = 300, *, dtype: str = "float32", seed: int = 0,
           candidate: Callable[[str], Callable[..., Any]] | None = None,
           ops: Sequence[str] = ("conv", "conv_transpose"), dims: Sequence[int] = (1, 2, 3),
           progress: Callable[[int, int], None] | None = None) -> Report:
    """Draws ``cases`` configurations and compares a candidate with lax on each.

    Args:
      cases: number of random configurations (at least 1).
      dtype: ``"float32"`` or ``"float64"`` (float64 runs under ``jax.enable_x64``).
      seed: NumPy seed of the configurations and JAX seed of the data.
      candidate: ``candidate(op)`` returns the function to check for ``op``
        (``"conv"`` / ``"conv_transpose"``), called as ``fn(x, kernel, **kwargs)``
        with the keyword arguments of ``jaxconv.ops.conv`` / ``conv_transpose``.
        Default: jaxconv's ``impl="patches"``.
      ops, dims: restrict the drawn configurations.
      progress: optional ``progress(done, total)`` callback.

    Returns:
      A :class:`Report`; ``ok`` is False when any error exceeds the tolerance.

    Raises:
      ValueError: ``cases < 1`` (nothing would be checked) or an unknown ``dtype``.
    """
    integer(cases, "cases", context="verify", minimum=1)
    choice(dtype, "dtype", tuple(TOLERANCE), context="verify")
    candidate = candidate or default_candidate
    tol = TOLERANCE[dtype]
    rng = np.random.default_rng(seed)
    choose = numpy_chooser(rng)
    stats: dict[tuple[str, str], list[float]] = {}
    failures = []
    worst_v = worst_g = 0.0
    with jax.enable_x64(dtype == "float64"):
        for i in range(cases):
            case = draw_case(choose, ops=ops, dims=dims)
            v, g = run_case(case, candidate(case.op), _reference(case.op),
                            dtype=jnp.dtype(dtype), seed=seed + i)
            worst_v, worst_g = max(worst_v, v), max(worst_g, g)
            if not (v <= tol and g <= tol):
                failures.append((case, v, g))
            for option in OPTIONS:
                entry = stats.setdefault((option, case.tags[option]), [0, 0.0, 0.0])
                entry[0] += 1
                entry[1], entry[2] = max(entry[1], v), max(entry[2], g)
            if progress:
                progress(i + 1, cases)
    rows = [(o, label, n, v, g) for (o, label), (n, v, g) in
            sorted(stats.items(), key=lambda kv: (OPTIONS.index(kv[0][0]), kv[0][1]))]
    return Report(not failures, cases, tol, worst_v, worst_g, rows, failures)


def format_report(report: Report) -> str:
    """The per-option table of worst relative errors, as Markdown."""
    lines = ["| option | value | cases | worst value rel. err | worst grad rel. err |",
             "|---|---|---:|---:|---:|"]
    for option, label, n, v, g in report.rows:
        lines.append(f"| {option} | {label} | {n} | {v:.2e} | {g:.2e} |")
    lines.append(f"| **all** | | {report.cases} | {report.worst_value:.2e} | "
                 f"{report.worst_grad:.2e} |")
    verdict = "PASS" if report.ok else f"FAIL ({len(report.failures)} mismatches)"
    lines.append("")
    lines.append(f"{verdict}: tolerance {report.tolerance:g}")
    for case, v, g in report.failures[:10]:
        lines.append(f"  mismatch: {case.op} x{case.x_shape} k{case.kernel_shape} "
                     f"{case.kwargs} value {v:.2e} grad {g:.2e}")
    return "\n".join(lines)
